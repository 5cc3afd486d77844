//! Shared TLS session ticket keys, read from a file (or the cluster's
//! Redis) and rotated without a restart.
//!
//! A resumed TLS session skips the certificate and key exchange, but only if
//! the server that receives the ticket can decrypt it. With several workers
//! per `lb` and several `lb` nodes behind one address, every one of them must
//! hold the same ticket keys: they come from one file copied to every node,
//! or in cluster mode from Redis ([`super::farm`]), and [`Ticketer`] (a
//! [`rustls::server::ProducesTickets`]) encrypts and decrypts the tickets of
//! TLS 1.3 and TLS 1.2 with them. Where the keys come from is a
//! [`KeySource`]; this module has the file one, [`FileKeys`].
//!
//! # File format
//!
//! UTF-8 text, one key per line; lines that are blank or whose first
//! non-blank character is `#` are ignored. A key line is two hex fields
//! (upper or lower case) separated by spaces or tabs:
//!
//! ```text
//! # NAME (16 bytes, 32 hex digits)  KEY (AES-256-GCM, 32 bytes, 64 hex digits)
//! 5f0c1d6a0e9b4e2f8a7c3b1d2e4f6a8b 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
//! ```
//!
//! The name is sent in the clear at the start of every ticket and tells which
//! key decrypts it; names must be unique in the file. The FIRST key encrypts
//! new tickets; every listed key decrypts. A file holds 1 to [`MAX_KEYS`]
//! keys, and must not be readable or writable by group or others (mode 0600
//! or 0400): [`load`] refuses it otherwise.
//!
//! # Rotation
//!
//! [`rotate`] (the command `lb tls rotate-keys FILE`) puts a fresh random key
//! first and keeps the previous ones, up to `keep` keys in all, writing the
//! file atomically (a 0600 temp file in the same directory, then a rename);
//! it creates the file with one key if it does not exist, and gives the new
//! file the old one's owner. A running [`Ticketer`] notices the new file (inode, size, mtime or ctime changed)
//! within its check interval (1 s by default), from within `encrypt` and
//! `decrypt`, and switches to the new keys; a file that then fails to load
//! keeps the old keys and logs one warning. In a farm, rotate on one node and
//! copy the file to the others: until a node has the new file, it cannot
//! decrypt the tickets made with the new key and those clients simply do a
//! full handshake. In cluster mode the farm rotates once, in Redis
//! ([`super::farm`]), and no file is copied.
//!
//! rustls does not expire tickets by itself: the `lifetime` given to
//! [`Ticketer::from_file`] is only the hint sent to clients, and a ticket stays
//! usable as long as its key is in the file. With a rotation every `P` and
//! `keep` keys, a ticket lives at most `keep × P`; choose a lifetime of about
//! `(keep − 1) × P`.
//!
//! # Ticket format
//!
//! `name (16) || nonce (12, random) || AES-256-GCM(plaintext) || tag (16)`,
//! with the name as additional authenticated data. Random 96-bit nonces are
//! safe for far more tickets than one key encrypts between rotations.

use std::{
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError, RwLock,
    },
    time::{Duration, Instant},
};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

/// Length of a key name, in bytes (32 hex digits in the file).
pub const NAME_LEN: usize = 16;
/// Length of an AES-256-GCM key, in bytes (64 hex digits in the file).
pub const KEY_LEN: usize = 32;
/// Most keys a file may hold.
pub const MAX_KEYS: usize = 16;
/// The number of keys `lb tls rotate-keys` keeps unless told otherwise.
pub const DEFAULT_KEEP: usize = 3;
/// How often a [`Ticketer`] looks at its source for new keys.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often a ticket under a key name not in the set makes a [`Ticketer`]
/// look at its source at once (another node may have just rotated).
pub const UNKNOWN_KEY_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// The longest ticket lifetime TLS 1.3 allows (7 days, RFC 8446 4.6.1).
pub const MAX_LIFETIME: u32 = 7 * 24 * 60 * 60;

const TAG_LEN: usize = 16;
const ALLOWED_LINE: &str = "allowed: blank lines, `#` comments, and one key per line as \
                            `NAME KEY`: 32 hex digits, spaces or tabs, 64 hex digits";

/// Errors reading, checking or writing a ticket key file.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    /// The file's permissions let group or others at the keys.
    #[error(
        "ticket key file {path} is {access} by group or others (mode {mode:04o}); allowed: \
         0600 or 0400 (chmod 600 {path})",
        path = .path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// "readable", "writable" or "readable and writable".
        access: &'static str,
    },
    /// A line is neither blank, a comment, nor a key.
    #[error(
        "ticket key file {path}, line {line}: {reason}; {ALLOWED_LINE}",
        path = .path.display()
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The file holds no key.
    #[error(
        "ticket key file {path} has no key; allowed: 1 to {MAX_KEYS} lines `NAME KEY` \
         (create the file with `lb tls rotate-keys {path}`)",
        path = .path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file holds more than [`MAX_KEYS`] keys.
    #[error(
        "ticket key file {path} has {count} keys; allowed: 1 to {MAX_KEYS} (the first \
         encrypts, all decrypt)",
        path = .path.display()
    )]
    TooMany {
        /// The file.
        path: PathBuf,
        /// Keys found.
        count: usize,
    },
    /// The file is not UTF-8 text.
    #[error(
        "ticket key file {path} is not UTF-8 text (line {line}); allowed: `#` comments and \
         hex keys",
        path = .path.display()
    )]
    NotText {
        /// The file.
        path: PathBuf,
        /// 1-based line of the first invalid byte.
        line: usize,
    },
    /// [`rotate`] was asked to keep no key or too many.
    #[error("cannot keep {keep} ticket keys in {path}; allowed: 1 to {MAX_KEYS}", path = .path.display())]
    Keep {
        /// The file.
        path: PathBuf,
        /// The number asked for.
        keep: usize,
    },
    /// The ticket lifetime given to a [`Ticketer`] is out of range.
    #[error("ticket lifetime {lifetime} s for {keys}; allowed: 1 to {MAX_LIFETIME} s (7 days)")]
    Lifetime {
        /// Where the keys come from.
        keys: String,
        /// The lifetime asked for, in seconds.
        lifetime: u32,
    },
    /// The cluster's Redis could not be used for the farm's keys.
    #[error("ticket keys in {url}: {why}")]
    Redis {
        /// The Redis (URL without password) and key.
        url: String,
        /// What failed.
        why: String,
    },
    /// [`rotate`] could not give the new file the old file's owner.
    #[error(
        "cannot give the rotated ticket key file {path} its owner {uid}:{gid} back: {source}; \
         run `lb tls rotate-keys` as that user or as root",
        path = .path.display()
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// The old file's owner.
        uid: u32,
        /// The old file's group.
        gid: u32,
        /// The error.
        source: io::Error,
    },
    /// The system random generator failed.
    #[error("cannot draw random bytes for a ticket key for {path}", path = .path.display())]
    Random {
        /// The file.
        path: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{what} ticket key file {path}: {source}", path = .path.display())]
    Io {
        /// What was being done ("read", "write", ...).
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TicketKeyError + 'a {
    move |source| TicketKeyError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The bytes of one AES-256-GCM key, on the heap and zeroed when dropped.
/// Boxed so that moving a key (into a `Vec`, or a `Vec` growing) moves a
/// pointer and leaves no copy of the key behind; filled in place.
type Secret = Box<Zeroizing<[u8; KEY_LEN]>>;

fn new_secret() -> Secret {
    Box::new(Zeroizing::new([0u8; KEY_LEN]))
}

/// One key of a [`KeySet`]: its public name and its AES-256-GCM key. No
/// `Debug`: [`KeySet`]'s shows the names only.
struct TicketKey {
    name: [u8; NAME_LEN],
    /// Kept to write the key out again (rotation) and to copy it; the
    /// AES key schedule in `aead` is AWS-LC's, cleansed when it frees it.
    secret: Secret,
    aead: LessSafeKey,
}

impl TicketKey {
    fn new(name: [u8; NAME_LEN], secret: Secret) -> Option<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, &secret[..]).ok()?;
        Some(Self {
            name,
            secret,
            aead: LessSafeKey::new(unbound),
        })
    }

    /// A fresh random key; None if the system's random generator failed.
    fn random() -> Option<Self> {
        let mut name = [0u8; NAME_LEN];
        let mut secret = new_secret();
        aws_lc_rs::rand::fill(&mut name).ok()?;
        aws_lc_rs::rand::fill(&mut secret[..]).ok()?;
        Self::new(name, secret)
    }

    /// A copy of this key, in a buffer of its own (zeroed when dropped).
    fn copy(&self) -> Option<Self> {
        let mut secret = new_secret();
        secret.copy_from_slice(&self.secret[..]);
        Self::new(self.name, secret)
    }
}

/// The keys of one ticket key file, in file order: the first encrypts, all
/// decrypt. Its `Debug` shows the key names only.
pub struct KeySet {
    keys: Vec<TicketKey>,
}

impl KeySet {
    /// Number of keys (1 to [`MAX_KEYS`] for a loaded file).
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key (never true for a loaded file).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key names, in file order (the first is the encrypting key).
    pub fn names(&self) -> impl Iterator<Item = [u8; NAME_LEN]> + '_ {
        self.keys.iter().map(|k| k.name)
    }

    fn find(&self, name: &[u8]) -> Option<&TicketKey> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// The name of the encrypting key, in hex ("" for an empty set).
    #[must_use]
    pub fn encrypting(&self) -> String {
        self.keys.first().map_or_else(String::new, |k| hex(&k.name))
    }

    /// No key (a start for [`KeySet::rotated`]).
    #[must_use]
    pub fn empty() -> Self {
        Self { keys: Vec::new() }
    }

    /// One fresh random key; None if the system's random generator failed.
    #[must_use]
    pub fn fresh() -> Option<Self> {
        Some(Self {
            keys: vec![TicketKey::random()?],
        })
    }

    /// A copy of these keys.
    fn copy(&self) -> Option<Self> {
        Some(Self {
            keys: self
                .keys
                .iter()
                .map(TicketKey::copy)
                .collect::<Option<_>>()?,
        })
    }

    /// These keys after a rotation: a fresh random key first, then the
    /// previous ones, `keep` in all (`keep` is 1 to [`MAX_KEYS`]). None if
    /// the system's random generator failed.
    #[must_use]
    pub fn rotated(mut self, keep: usize) -> Option<Self> {
        self.keys.insert(0, TicketKey::random()?);
        self.keys.truncate(keep.clamp(1, MAX_KEYS));
        Some(self)
    }

    /// The keys in the key file format (module doc), header included; the
    /// text is zeroed when dropped. It is written into one buffer sized up
    /// front, so no partial copy is left behind by a reallocation.
    #[must_use]
    pub fn to_text(&self) -> Zeroizing<String> {
        const LINE: usize = 2 * NAME_LEN + 1 + 2 * KEY_LEN + 1;
        let mut out = Zeroizing::new(String::with_capacity(
            KEY_FILE_HEADER.len() + LINE * self.keys.len(),
        ));
        out.push_str(KEY_FILE_HEADER);
        for key in &self.keys {
            push_hex(&mut out, &key.name);
            out.push(' ');
            push_hex(&mut out, &key.secret[..]);
            out.push('\n');
        }
        out
    }
}

/// The header [`KeySet::to_text`] writes.
const KEY_FILE_HEADER: &str = "# lb TLS session ticket keys, written by `lb tls rotate-keys`; \
                               keep this file mode 0600.\n# One key per line: NAME (32 hex \
                               digits) KEY (AES-256-GCM, 64 hex digits).\n# The first key \
                               encrypts new tickets; every key listed decrypts.\n";

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| hex(&k.name)))
            .finish()
    }
}

/// `bytes` in lower-case hex (key names, never keys: see [`push_hex`]).
fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends `bytes` in lower-case hex to `out`, with no buffer in between.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Decodes `field` (exactly `out.len() * 2` hex digits) into `out`, or says
/// what is wrong with it (never quoting more than one non-hex character).
fn unhex(field: &str, what: &str, out: &mut [u8]) -> Result<(), String> {
    if let Some(bad) = field.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("{what} has a non-hex character {bad:?}"));
    }
    if field.len() != out.len() * 2 {
        return Err(format!(
            "{what} has {} hex digits, expected {}",
            field.len(),
            out.len() * 2
        ));
    }
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = field.get(2 * i..2 * i + 2).unwrap_or_default();
        *byte =
            u8::from_str_radix(pair, 16).map_err(|_| format!("{what} has a non-hex character"))?;
    }
    Ok(())
}

/// Parses the text of a key file (permissions already checked); `path`
/// names it in errors.
///
/// # Errors
/// A line is malformed, or there is no key or more than [`MAX_KEYS`].
pub fn parse(path: &Path, bytes: &[u8]) -> Result<KeySet, TicketKeyError> {
    let text = std::str::from_utf8(bytes).map_err(|e| TicketKeyError::NotText {
        path: path.to_owned(),
        line: 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
    })?;
    let mut keys: Vec<(usize, TicketKey)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let malformed = |reason: String| TicketKeyError::Malformed {
            path: path.to_owned(),
            line,
            reason,
        };
        let content = raw.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = content.split_ascii_whitespace().collect();
        let [name, secret] = fields[..] else {
            return Err(malformed(format!(
                "expected 2 fields (NAME KEY), found {}",
                fields.len()
            )));
        };
        let mut key_name = [0u8; NAME_LEN];
        unhex(name, "the key name", &mut key_name).map_err(malformed)?;
        // Decoded straight into the key's own (boxed, zeroing) buffer.
        let mut key = new_secret();
        unhex(secret, "the key", &mut key[..]).map_err(malformed)?;
        if let Some((first, _)) = keys.iter().find(|(_, k)| k.name == key_name) {
            return Err(malformed(format!(
                "the key name {} is already used on line {first}",
                hex(&key_name)
            )));
        }
        let key = TicketKey::new(key_name, key)
            .ok_or_else(|| malformed("AES-256-GCM refused the key".to_owned()))?;
        keys.push((line, key));
    }
    match keys.len() {
        0 => Err(TicketKeyError::Empty {
            path: path.to_owned(),
        }),
        count if count > MAX_KEYS => Err(TicketKeyError::TooMany {
            path: path.to_owned(),
            count,
        }),
        _ => Ok(KeySet {
            keys: keys.into_iter().map(|(_, k)| k).collect(),
        }),
    }
}

/// What identifies one version of the file: a rename (new inode), a write
/// (size, mtime) or a chmod (ctime) changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// Owner and group (kept by [`rotate`]).
    owner: (u32, u32),
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            owner: (meta.uid(), meta.gid()),
        }
    }
}

fn check_mode(path: &Path, meta: &fs::Metadata) -> Result<(), TicketKeyError> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let access = match (mode & 0o044 != 0, mode & 0o022 != 0) {
        (true, true) => "readable and writable",
        (true, false) => "readable",
        (false, true) => "writable",
        (false, false) => "accessible",
    };
    Err(TicketKeyError::Permissions {
        path: path.to_owned(),
        mode,
        access,
    })
}

/// Opens, checks and parses the file; the fingerprint is that of the open
/// file, so it is exactly the version parsed.
fn read_file(path: &Path) -> Result<(KeySet, Fingerprint), TicketKeyError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let meta = file.metadata().map_err(io_err("stat", path))?;
    check_mode(path, &meta)?;
    // The file's text is zeroed when dropped. `read_to_end` reserves the
    // file's length before it reads, so the buffer does not grow (a
    // reallocation would free a copy unzeroed) unless the file grows while
    // it is read.
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        usize::try_from(meta.size()).unwrap_or(0).min(1 << 16),
    ));
    file.read_to_end(&mut bytes).map_err(io_err("read", path))?;
    let keys = parse(path, &bytes)?;
    Ok((keys, Fingerprint::of(&meta)))
}

/// Reads the ticket key file at `path` (format in the [module doc](self)).
///
/// # Errors
/// The file cannot be read, group or others may read or write it, a line is
/// malformed, or it holds no key or more than [`MAX_KEYS`].
pub fn load(path: &Path) -> Result<KeySet, TicketKeyError> {
    read_file(path).map(|(keys, _)| keys)
}

/// `lb tls rotate-keys FILE`: puts a fresh random key first in the file and
/// keeps the previous keys, `keep` keys in all; creates the file (mode 0600)
/// with one key if it does not exist. The file is replaced atomically (a
/// 0600 temp file in the same directory, then a rename), so a reader sees
/// the old file or the new one. If `path` is a symlink, its target is
/// replaced.
///
/// The file is rewritten with a standard `#` header: other comments in it
/// are not kept. Two rotations at the same time do not corrupt the file, but
/// one of the new keys may be lost.
///
/// # Errors
/// `keep` is 0 or more than [`MAX_KEYS`], the existing file does not load
/// (see [`load`]: a file with a bad mode is refused rather than rewritten,
/// as its keys may have leaked), or the file cannot be written.
pub fn rotate(path: &Path, keep: usize) -> Result<(), TicketKeyError> {
    if keep == 0 || keep > MAX_KEYS {
        return Err(TicketKeyError::Keep {
            path: path.to_owned(),
            keep,
        });
    }
    let target = match fs::canonicalize(path) {
        Ok(real) => real,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_owned(),
        Err(e) => return Err(io_err("resolve", path)(e)),
    };
    let (old, owner) = match read_file(&target) {
        Ok((old, fingerprint)) => (old, Some(fingerprint.owner)),
        Err(TicketKeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            (KeySet { keys: Vec::new() }, None)
        }
        Err(e) => return Err(e),
    };
    let keys = old.rotated(keep).ok_or_else(|| TicketKeyError::Random {
        path: path.to_owned(),
    })?;
    write_atomically(&target, keys.to_text().as_bytes(), owner)
}

/// Writes `bytes` to a 0600 temp file beside `path` (owned by `owner`, if
/// given and not already ours), syncs it and renames it over `path`.
fn write_atomically(
    path: &Path,
    bytes: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), TicketKeyError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map_or_else(|| "keys".into(), |n| n.to_string_lossy());
    let mut suffix = [0u8; 6];
    aws_lc_rs::rand::fill(&mut suffix).map_err(|_| TicketKeyError::Random {
        path: path.to_owned(),
    })?;
    let tmp = dir.join(format!(".{file_name}.{}.tmp", hex(&suffix)));
    let written = write_new(&tmp, path, bytes, owner);
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // Make the rename durable; a failure here loses nothing that is not
    // already on disk, so it is not an error.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn write_new(
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), TicketKeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io_err("create", tmp))?;
    if let Some((uid, gid)) = owner {
        let meta = file.metadata().map_err(io_err("stat", tmp))?;
        if (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(|source| {
                TicketKeyError::Owner {
                    path: path.to_owned(),
                    uid,
                    gid,
                    source,
                }
            })?;
        }
    }
    file.write_all(bytes).map_err(io_err("write", tmp))?;
    file.sync_all().map_err(io_err("sync", tmp))?;
    fs::rename(tmp, path).map_err(io_err("replace", path))
}

/// Counters of a [`Ticketer`], since it was built, and the keys in use.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketStats {
    /// Where the keys come from: `file`, `redis` or `process`.
    pub source: &'static str,
    /// The name (hex) of the key that encrypts new tickets. Names are sent
    /// in the clear in every ticket; all nodes of a farm show the same one.
    pub encrypting: String,
    /// Keys that decrypt.
    pub keys: usize,
    /// Tickets issued.
    pub encrypted: u64,
    /// Tickets decrypted (resumptions offered with a valid ticket).
    pub decrypted: u64,
    /// Tickets refused: too short, unknown key name, or bad tag.
    pub decrypt_failed: u64,
    /// Of `decrypt_failed`, those whose key name is not in the key set (a
    /// key rotated out, or a node with other keys).
    pub unknown_key: u64,
    /// New key sets taken from the source after the first.
    pub reloads: u64,
    /// New versions of the source refused (the old keys stayed in use).
    pub reload_failed: u64,
    /// Rotations this node made in the farm's Redis (cluster mode).
    pub rotations: u64,
}

/// What a [`KeySource`] found when looked at.
pub enum Poll {
    /// Nothing new (or the source could not be asked just now).
    Same,
    /// A new key set to use from now on.
    New(KeySet),
    /// A new version that is refused; the source has logged why.
    Refused,
}

/// Where a [`Ticketer`]'s keys come from: a file ([`FileKeys`]) or the
/// cluster's Redis ([`super::farm::FarmKeys`]).
pub trait KeySource: Send + Sync {
    /// `file` or `redis`.
    fn kind(&self) -> &'static str;
    /// Where exactly, for logs (a path, or a URL and key).
    fn describe(&self) -> String;
    /// Looks at the source; called at most once per check interval, from
    /// within a handshake, so it must be quick.
    fn poll(&self) -> Poll;
    /// Rotations this node made (a source that rotates by itself).
    fn rotations(&self) -> u64 {
        0
    }
}

/// The keys of a ticket key file, looked at again when it changes.
pub struct FileKeys {
    path: PathBuf,
    /// The version of the file last looked at (loaded or refused); `None`
    /// after it could not be found.
    seen: Mutex<Option<Fingerprint>>,
}

impl FileKeys {
    /// The file at `path` and the keys it holds now.
    ///
    /// # Errors
    /// See [`load`].
    pub fn open(path: impl Into<PathBuf>) -> Result<(Self, KeySet), TicketKeyError> {
        let path = path.into();
        let (keys, fingerprint) = read_file(&path)?;
        Ok((
            Self {
                path,
                seen: Mutex::new(Some(fingerprint)),
            },
            keys,
        ))
    }
}

impl KeySource for FileKeys {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    /// Loads the file if it changed since last looked at. A new version
    /// that fails to load logs one warning and is not retried until it
    /// changes again.
    fn poll(&self) -> Poll {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now = match fs::metadata(&self.path) {
            Ok(meta) => Fingerprint::of(&meta),
            Err(e) => {
                if seen.take().is_some() {
                    tracing::warn!(
                        file = %self.path.display(),
                        error = %e,
                        "ticket key file unreadable: keeping the keys loaded before"
                    );
                    return Poll::Refused;
                }
                return Poll::Same;
            }
        };
        if *seen == Some(now) {
            return Poll::Same;
        }
        match read_file(&self.path) {
            Ok((keys, fingerprint)) => {
                *seen = Some(fingerprint);
                Poll::New(keys)
            }
            Err(e) => {
                *seen = Some(now);
                tracing::warn!(
                    file = %self.path.display(),
                    error = %e,
                    "ticket key file not reloaded: keeping the keys loaded before"
                );
                Poll::Refused
            }
        }
    }
}

/// Keys of this process alone, for a frontend that shares none (no
/// `ticketKeys` file, not in cluster mode): a random key, replaced every
/// `every` with the previous one kept, so a ticket resumes for at least
/// `every`, on any worker of this process.
pub struct OwnKeys {
    every: Duration,
    next: Mutex<Instant>,
    keys: Mutex<KeySet>,
}

impl OwnKeys {
    /// Fresh keys, replaced every `every`, and the keys to start with.
    ///
    /// # Errors
    /// The system's random generator failed.
    pub fn new(every: Duration) -> Result<(Self, KeySet), TicketKeyError> {
        let random = || TicketKeyError::Random {
            path: PathBuf::from("(the keys of this process)"),
        };
        let keys = KeySet::fresh().ok_or_else(random)?;
        let copy = keys.copy().ok_or_else(random)?;
        let own = Self {
            every,
            next: Mutex::new(Instant::now() + every),
            keys: Mutex::new(copy),
        };
        Ok((own, keys))
    }
}

impl KeySource for OwnKeys {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn describe(&self) -> String {
        "the keys of this process".into()
    }

    fn poll(&self) -> Poll {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now < *next {
            return Poll::Same;
        }
        *next = now + self.every;
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(new) = keys.copy().and_then(|k| k.rotated(2)) else {
            return Poll::Same;
        };
        let Some(copy) = new.copy() else {
            return Poll::Same;
        };
        *keys = copy;
        Poll::New(new)
    }
}

/// A [`rustls::server::ProducesTickets`] over the keys of a [`KeySource`],
/// picking up new keys without a restart. Share one (`Arc`) between the TLS
/// configs of all workers.
pub struct Ticketer {
    source: Box<dyn KeySource>,
    lifetime: u32,
    check_interval_ms: u64,
    keys: RwLock<Arc<KeySet>>,
    epoch: Instant,
    /// Milliseconds since `epoch` after which the next encrypt or decrypt
    /// looks at the source.
    next_check_ms: AtomicU64,
    /// Likewise for a ticket under an unknown key name.
    next_unknown_check_ms: AtomicU64,
    encrypted: AtomicU64,
    decrypted: AtomicU64,
    decrypt_failed: AtomicU64,
    unknown_key: AtomicU64,
    reloads: AtomicU64,
    reload_failed: AtomicU64,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticketer")
            .field("source", &self.source.describe())
            .field("lifetime", &self.lifetime)
            .field("keys", &*self.current())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Ticketer {
    /// Tickets under the keys of the file at `path`, announced to clients
    /// as valid for `lifetime` seconds. The file is looked at again at most
    /// once per second ([`DEFAULT_CHECK_INTERVAL`]).
    ///
    /// # Errors
    /// See [`load`]; also a lifetime of 0 or over [`MAX_LIFETIME`].
    pub fn from_file(path: impl Into<PathBuf>, lifetime: u32) -> Result<Arc<Self>, TicketKeyError> {
        Self::from_file_checking_every(path, lifetime, DEFAULT_CHECK_INTERVAL)
    }

    /// As [`Ticketer::from_file`], looking at the file at most once per
    /// `check_interval` (zero: on every ticket).
    ///
    /// # Errors
    /// See [`Ticketer::from_file`].
    pub fn from_file_checking_every(
        path: impl Into<PathBuf>,
        lifetime: u32,
        check_interval: Duration,
    ) -> Result<Arc<Self>, TicketKeyError> {
        let (source, keys) = FileKeys::open(path)?;
        Self::new(Box::new(source), keys, lifetime, check_interval)
    }

    /// Tickets under `keys`, then under what `source` gives, looked at at
    /// most once per `check_interval`; announced to clients as valid for
    /// `lifetime` seconds.
    ///
    /// # Errors
    /// A lifetime of 0 or over [`MAX_LIFETIME`].
    pub fn new(
        source: Box<dyn KeySource>,
        keys: KeySet,
        lifetime: u32,
        check_interval: Duration,
    ) -> Result<Arc<Self>, TicketKeyError> {
        if lifetime == 0 || lifetime > MAX_LIFETIME {
            return Err(TicketKeyError::Lifetime {
                keys: source.describe(),
                lifetime,
            });
        }
        let check_interval_ms = u64::try_from(check_interval.as_millis()).unwrap_or(u64::MAX);
        Ok(Arc::new(Self {
            source,
            lifetime,
            check_interval_ms,
            keys: RwLock::new(Arc::new(keys)),
            epoch: Instant::now(),
            next_check_ms: AtomicU64::new(check_interval_ms),
            next_unknown_check_ms: AtomicU64::new(0),
            encrypted: AtomicU64::new(0),
            decrypted: AtomicU64::new(0),
            decrypt_failed: AtomicU64::new(0),
            unknown_key: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_failed: AtomicU64::new(0),
        }))
    }

    /// The keys in use.
    #[must_use]
    pub fn keys(&self) -> Arc<KeySet> {
        self.current()
    }

    /// The counters so far and the keys in use.
    #[must_use]
    pub fn stats(&self) -> TicketStats {
        let keys = self.current();
        TicketStats {
            source: self.source.kind(),
            encrypting: keys.encrypting(),
            keys: keys.len(),
            encrypted: self.encrypted.load(Relaxed),
            decrypted: self.decrypted.load(Relaxed),
            decrypt_failed: self.decrypt_failed.load(Relaxed),
            unknown_key: self.unknown_key.load(Relaxed),
            reloads: self.reloads.load(Relaxed),
            reload_failed: self.reload_failed.load(Relaxed),
            rotations: self.source.rotations(),
        }
    }

    /// Looks at the source now and takes its keys if they changed since
    /// last looked at (e.g. on SIGHUP). Returns whether new keys are in
    /// use. A new version that is refused keeps the old keys.
    pub fn reload_if_changed(&self) -> bool {
        match self.source.poll() {
            Poll::Same => false,
            Poll::Refused => {
                self.reload_failed.fetch_add(1, Relaxed);
                false
            }
            Poll::New(keys) => {
                tracing::info!(
                    keys_from = %self.source.describe(),
                    keys = keys.len(),
                    encrypting = %keys.encrypting(),
                    "new ticket keys in use"
                );
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
                self.reloads.fetch_add(1, Relaxed);
                true
            }
        }
    }

    fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Looks at the source if the check interval has passed; one caller per
    /// interval does, the others go on with the keys they have. Returns
    /// whether new keys are in use.
    fn maybe_reload(&self) -> bool {
        self.reload_at_most_every(&self.next_check_ms, self.check_interval_ms)
    }

    /// As [`Self::maybe_reload`] with its own `next` check time and
    /// `interval` in milliseconds.
    fn reload_at_most_every(&self, next_ms: &AtomicU64, interval: u64) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = next_ms.load(Relaxed);
        if now < next {
            return false;
        }
        let after = now.saturating_add(interval);
        next_ms
            .compare_exchange(next, after, Relaxed, Relaxed)
            .is_ok()
            && self.reload_if_changed()
    }

    /// The key set holding the key named `name`: the one in use, or a new
    /// one if the source has it (looked for at most every
    /// [`UNKNOWN_KEY_CHECK_INTERVAL`]), so a node resumes a ticket another
    /// node made just after a rotation.
    fn keys_with(&self, name: &[u8]) -> Option<Arc<KeySet>> {
        let keys = self.current();
        if keys.find(name).is_some() {
            return Some(keys);
        }
        let interval = u64::try_from(UNKNOWN_KEY_CHECK_INTERVAL.as_millis()).unwrap_or(100);
        if !self.reload_at_most_every(&self.next_unknown_check_ms, interval) {
            return None;
        }
        Some(self.current()).filter(|keys| keys.find(name).is_some())
    }

    fn fail(&self) -> Option<Vec<u8>> {
        self.decrypt_failed.fetch_add(1, Relaxed);
        None
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.maybe_reload();
        let keys = self.current();
        let key = keys.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let body = ticket.get_mut(NAME_LEN + NONCE_LEN..)?;
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                body,
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        self.encrypted.fetch_add(1, Relaxed);
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        super::note_resumption_offer();
        self.maybe_reload();
        if cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return self.fail();
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let Some(keys) = self.keys_with(name) else {
            self.unknown_key.fetch_add(1, Relaxed);
            return self.fail();
        };
        let Some(key) = keys.find(name) else {
            return self.fail();
        };
        let Ok(nonce) = Nonce::try_assume_unique_for_key(nonce) else {
            return self.fail();
        };
        let mut plain = sealed.to_vec();
        let Ok(opened) = key.aead.open_in_place(nonce, Aad::from(name), &mut plain) else {
            return self.fail();
        };
        let len = opened.len();
        plain.truncate(len);
        self.decrypted.fetch_add(1, Relaxed);
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use rustls::server::ProducesTickets as _;

    use super::*;
    use crate::tls::testkit::{connect, tls_pair};

    /// A fresh directory under the temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let mut suffix = [0u8; 8];
            aws_lc_rs::rand::fill(&mut suffix).unwrap();
            let dir = std::env::temp_dir().join(format!("lb-tickets-{tag}-{}", hex(&suffix)));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn file(&self) -> PathBuf {
            self.0.join("ticket.keys")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write(path: &Path, text: &str, mode: u32) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    const NAME_A: &str = "000102030405060708090a0b0c0d0e0f";
    const KEY_A: &str = "101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f";

    #[test]
    fn round_trip() {
        let dir = TempDir::new("rt");
        let path = dir.file();
        write(
            &path,
            &format!("# comment\n\n  {NAME_A}\t{KEY_A}  \n"),
            0o600,
        );
        let t = Ticketer::from_file(&path, 3600).unwrap();
        assert!(t.enabled());
        assert_eq!(t.lifetime(), 3600);
        let ticket = t.encrypt(b"session state").unwrap();
        assert_eq!(ticket.len(), NAME_LEN + NONCE_LEN + 13 + TAG_LEN);
        assert_eq!(hex(&ticket[..NAME_LEN]), NAME_A);
        assert_eq!(t.decrypt(&ticket).unwrap(), b"session state");
        // Same plaintext, new nonce.
        assert_ne!(t.encrypt(b"session state").unwrap(), ticket);
        assert_eq!(t.decrypt(&t.encrypt(b"").unwrap()).unwrap(), b"");
        let stats = t.stats();
        assert_eq!((stats.encrypted, stats.decrypted), (3, 2));
        assert_eq!(stats.decrypt_failed, 0);
        // Debug shows names, never the key.
        let debug = format!("{t:?}");
        assert!(debug.contains(NAME_A), "{debug}");
        assert!(!debug.contains(KEY_A), "{debug}");
    }

    /// Every way lb may print a key set or a key file error: none shows a
    /// key, in hex (either case), base64 or as a byte array.
    #[test]
    fn debug_stats_and_errors_never_show_a_key() {
        const NAME_B: &str = "f0e0d0c0b0a090807060504030201000";
        const KEY_B: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let leaks = |what: &str, out: &str| {
            // KEY_A's bytes are 0x10..=0x2f.
            for key in [KEY_A, KEY_B] {
                let upper = key.to_ascii_uppercase();
                for shown in [&key[..16], &key[48..], &upper[..16]] {
                    assert!(!out.contains(shown), "{what} shows a key: {out}");
                }
            }
            for shown in ["EBESExQVFhcYGRob", "16, 17, 18, 19", "0x10, 0x11"] {
                assert!(!out.contains(shown), "{what} shows KEY_A: {out}");
            }
        };
        let path = Path::new("keys");
        let text = format!(
            "{NAME_A} {KEY_A}\n{NAME_B} {}\n",
            KEY_B.to_ascii_uppercase()
        );
        let keys = parse(path, text.as_bytes()).unwrap();
        assert_eq!(keys.len(), 2);
        for out in [format!("{keys:?}"), format!("{keys:#?}")] {
            assert!(out.contains(NAME_A) && out.contains(NAME_B), "{out}");
            leaks("KeySet's Debug", &out);
        }
        leaks("encrypting()", &keys.encrypting());
        let (own, _) = OwnKeys::new(Duration::from_secs(60)).unwrap();
        let t = Ticketer::new(Box::new(own), keys, 60, Duration::from_secs(60)).unwrap();
        leaks("Ticketer's Debug", &format!("{t:#?}"));
        leaks("stats", &serde_json::to_string(&t.stats()).unwrap());
        // A malformed key line names the line and the fault, never the key.
        for bad in [
            format!("{NAME_A} {KEY_A}0\n"),
            format!("{NAME_A} {}zz\n", &KEY_A[..62]),
            format!("{NAME_A} {KEY_A} {KEY_B}\n"),
            format!("{KEY_A} {KEY_B}\n"),
            format!("{NAME_A} {KEY_A}\n{NAME_A} {KEY_B}\n"),
        ] {
            let err = parse(path, bad.as_bytes()).unwrap_err();
            leaks("a parse error", &err.to_string());
            leaks("a parse error's Debug", &format!("{err:?}"));
        }
    }

    /// The key bytes live in one heap buffer each (zeroed when dropped):
    /// moving a key, or the set's `Vec` growing, leaves no copy behind.
    #[test]
    fn keys_stay_in_one_buffer_as_the_set_changes() {
        let mut keys = KeySet::fresh().unwrap();
        let at = |keys: &KeySet| -> Vec<*const u8> {
            keys.keys.iter().map(|k| k.secret.as_ptr()).collect()
        };
        let mut before = at(&keys);
        // Up to MAX_KEYS, then once more: the oldest key is dropped.
        for _ in 0..MAX_KEYS {
            keys = keys.rotated(MAX_KEYS).unwrap();
            let after = at(&keys);
            let kept = after.len() - 1;
            assert_eq!(after[1..], before[..kept], "a key moved in memory");
            before = after;
        }
        assert_eq!(keys.len(), MAX_KEYS);
        let copy = keys.copy().unwrap();
        for (a, b) in keys.keys.iter().zip(&copy.keys) {
            assert_eq!(a.secret[..], b.secret[..]);
            assert_ne!(
                a.secret.as_ptr(),
                b.secret.as_ptr(),
                "a copy has its own buffer"
            );
        }
    }

    /// The key file text is written into one buffer sized up front: had it
    /// grown, the reallocation would have freed a partial copy unzeroed.
    #[test]
    fn key_text_does_not_grow_while_written() {
        let mut keys = KeySet::empty();
        for n in 1..=MAX_KEYS {
            keys = keys.rotated(MAX_KEYS).unwrap();
            let text = keys.to_text();
            assert_eq!(text.len(), text.capacity(), "{n} keys");
            let back = parse(Path::new("text"), text.as_bytes()).unwrap();
            assert_eq!(
                back.names().collect::<Vec<_>>(),
                keys.names().collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn rotated_key_still_decrypts_and_dropped_key_does_not() {
        let dir = TempDir::new("rot");
        let path = dir.file();
        rotate(&path, 3).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let a = load(&path).unwrap();
        assert_eq!(a.len(), 1);
        let t_a = Ticketer::from_file_checking_every(&path, 3600, Duration::ZERO).unwrap();
        let ticket_a = t_a.encrypt(b"from A").unwrap();

        rotate(&path, 3).unwrap();
        let b = load(&path).unwrap();
        let names: Vec<_> = b.names().collect();
        assert_eq!(names.len(), 2);
        assert_eq!(names[1], a.names().next().unwrap(), "A is kept after B");
        let t_b = Ticketer::from_file(&path, 3600).unwrap();
        let ticket_b = t_b.encrypt(b"from B").unwrap();
        assert_eq!(ticket_b[..NAME_LEN], names[0], "B encrypts");
        assert_eq!(t_b.decrypt(&ticket_a).unwrap(), b"from A", "A decrypts");

        // keep=1: only a fresh key C remains, A and B tickets fail.
        rotate(&path, 1).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let t_c = Ticketer::from_file(&path, 3600).unwrap();
        assert_eq!(t_c.keys().len(), 1);
        assert_eq!(t_c.decrypt(&ticket_a), None);
        assert_eq!(t_c.decrypt(&ticket_b), None);
        let stats = t_c.stats();
        assert_eq!((stats.decrypt_failed, stats.unknown_key), (2, 2));
        // No temp file left behind.
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn keeps_at_most_keep_keys() {
        let dir = TempDir::new("keep");
        let path = dir.file();
        for _ in 0..5 {
            rotate(&path, 3).unwrap();
        }
        assert_eq!(load(&path).unwrap().len(), 3);
        let err = rotate(&path, 0).unwrap_err().to_string();
        assert!(err.contains("allowed: 1 to 16"), "{err}");
        assert!(rotate(&path, MAX_KEYS + 1).is_err());
        rotate(&path, MAX_KEYS).unwrap();
        assert_eq!(load(&path).unwrap().len(), 4);
    }

    #[test]
    fn tampered_ticket_fails() {
        let dir = TempDir::new("tamper");
        let path = dir.file();
        rotate(&path, 3).unwrap();
        let t = Ticketer::from_file(&path, 3600).unwrap();
        let ticket = t.encrypt(b"secret session").unwrap();
        for i in [0, NAME_LEN, NAME_LEN + NONCE_LEN, ticket.len() - 1] {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(t.decrypt(&bad), None, "byte {i} flipped");
        }
        assert_eq!(t.decrypt(&ticket[..ticket.len() - 1]), None);
        assert_eq!(t.decrypt(&ticket[..10]), None);
        assert_eq!(t.decrypt(&[]), None);
        let stats = t.stats();
        assert_eq!(stats.decrypt_failed, 7);
        assert_eq!(stats.unknown_key, 1, "only the flipped name is unknown");
        assert_eq!(t.decrypt(&ticket).unwrap(), b"secret session");
    }

    #[test]
    fn refuses_file_others_can_read() {
        let dir = TempDir::new("mode");
        let path = dir.file();
        write(&path, &format!("{NAME_A} {KEY_A}\n"), 0o644);
        let err = load(&path).unwrap_err().to_string();
        let p = path.display();
        assert_eq!(
            err,
            format!(
                "ticket key file {p} is readable by group or others (mode 0644); allowed: 0600 \
                 or 0400 (chmod 600 {p})"
            )
        );
        assert!(Ticketer::from_file(&path, 60).is_err());
        assert!(rotate(&path, 3).is_err(), "a leaked file is not rewritten");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o620)).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(
            err.contains("is writable by group or others (mode 0620)"),
            "{err}"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(load(&path).unwrap().len(), 1);
    }

    #[test]
    fn refuses_malformed_lines_naming_the_line() {
        let dir = TempDir::new("bad");
        let path = dir.file();
        let cases = [
            (
                format!("# keys\n{NAME_A} {KEY_A}\n{NAME_A}{KEY_A}\n"),
                3,
                "expected 2 fields",
            ),
            (format!("\n\n{NAME_A} {KEY_A} extra\n"), 3, "found 3"),
            (
                format!("{NAME_A}0 {KEY_A}\n"),
                1,
                "the key name has 33 hex digits",
            ),
            (
                format!("{NAME_A} {}\n", &KEY_A[..62]),
                1,
                "the key has 62 hex digits",
            ),
            (
                format!("# x\n{NAME_A} {}zz\n", &KEY_A[..62]),
                2,
                "non-hex character 'z'",
            ),
            (
                format!("{NAME_A} {KEY_A}\n#\n{NAME_A} {KEY_A}\n"),
                3,
                "already used on line 1",
            ),
        ];
        for (text, line, reason) in cases {
            write(&path, &text, 0o600);
            let err = load(&path).unwrap_err().to_string();
            assert!(err.contains(&format!(", line {line}: ")), "{err}");
            assert!(err.contains(reason), "{err}");
            assert!(err.contains("allowed:"), "{err}");
        }
        write(&path, "# nothing here\n\n", 0o600);
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("has no key"), "{err}");
        write(&path, "", 0o600);
        assert!(matches!(load(&path), Err(TicketKeyError::Empty { .. })));
        let many: String = (0..17).map(|i| format!("{i:032x} {KEY_A}\n")).collect();
        write(&path, &many, 0o600);
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("has 17 keys; allowed: 1 to 16"), "{err}");
        fs::write(&path, b"# ok\n\xff\n").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("not UTF-8 text (line 2)"), "{err}");
        let err = load(&dir.0.join("missing")).unwrap_err().to_string();
        assert!(err.starts_with("open ticket key file "), "{err}");
    }

    #[test]
    fn two_ticketers_on_one_file_share_tickets() {
        let dir = TempDir::new("farm");
        let path = dir.file();
        rotate(&path, 3).unwrap();
        rotate(&path, 3).unwrap();
        let node1 = Ticketer::from_file(&path, 3600).unwrap();
        let node2 = Ticketer::from_file(&path, 3600).unwrap();
        let t1 = node1.encrypt(b"one").unwrap();
        let t2 = node2.encrypt(b"two").unwrap();
        assert_eq!(node2.decrypt(&t1).unwrap(), b"one");
        assert_eq!(node1.decrypt(&t2).unwrap(), b"two");
    }

    #[test]
    fn picks_up_rotation_without_restart() {
        let dir = TempDir::new("live");
        let path = dir.file();
        rotate(&path, 3).unwrap();
        let t = Ticketer::from_file(&path, 3600).unwrap();
        let old = t.encrypt(b"old").unwrap();
        let first = t.keys().names().next().unwrap();

        // Within the check interval the old keys stay in use.
        t.next_check_ms.store(u64::MAX, Relaxed);
        rotate(&path, 3).unwrap();
        assert_eq!(t.encrypt(b"x").unwrap()[..NAME_LEN], first);
        // Once it has passed, the next ticket looks at the file.
        t.next_check_ms.store(0, Relaxed);
        let new = t.encrypt(b"new").unwrap();
        assert_ne!(new[..NAME_LEN], first);
        assert_eq!(t.keys().len(), 2);
        assert_eq!(t.decrypt(&old).unwrap(), b"old");
        assert_eq!(t.stats().reloads, 1);
        assert!(!t.reload_if_changed(), "unchanged file");

        // A bad version keeps the keys in use, once.
        let keys_before: Vec<_> = t.keys().names().collect();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!t.reload_if_changed());
        assert!(!t.reload_if_changed());
        assert_eq!(t.stats().reload_failed, 1);
        assert_eq!(t.keys().names().collect::<Vec<_>>(), keys_before);
        assert_eq!(t.decrypt(&new).unwrap(), b"new");
        // Fixed: loaded again.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(t.reload_if_changed());
        // Removed: keys kept, one failure.
        fs::remove_file(&path).unwrap();
        assert!(!t.reload_if_changed());
        assert!(!t.reload_if_changed());
        assert_eq!(t.stats().reload_failed, 2);
        assert_eq!(t.decrypt(&new).unwrap(), b"new");
        // Back: loaded.
        rotate(&path, 3).unwrap();
        assert!(t.reload_if_changed());
        assert_eq!(t.stats().reloads, 3);
    }

    #[test]
    fn a_ticket_under_a_key_not_yet_seen_makes_the_node_look_at_once() {
        let dir = TempDir::new("unknown");
        let path = dir.file();
        rotate(&path, 3).unwrap();
        let hour = Duration::from_secs(3600);
        let fast = Ticketer::from_file_checking_every(&path, 60, Duration::ZERO).unwrap();
        let slow = Ticketer::from_file_checking_every(&path, 60, hour).unwrap();
        rotate(&path, 3).unwrap();
        // `fast` already encrypts with the new key; `slow` would not look at
        // the file for an hour, but a ticket under a name it does not know
        // makes it look now.
        let ticket = fast.encrypt(b"just rotated").unwrap();
        assert_eq!(slow.decrypt(&ticket).unwrap(), b"just rotated");
        assert_eq!(slow.stats().reloads, 1);
        // A made-up name makes it look again at most every 100 ms.
        let mut forged = ticket.clone();
        forged[0] ^= 0xff;
        assert!(slow.decrypt(&forged).is_none());
        assert!(slow.decrypt(&forged).is_none());
        assert_eq!(slow.stats().unknown_key, 2);
    }

    #[test]
    fn own_keys_are_replaced_keeping_the_previous_one() {
        let (own, keys) = OwnKeys::new(Duration::ZERO).unwrap();
        let t = Ticketer::new(Box::new(own), keys, 60, Duration::from_secs(3600)).unwrap();
        let ticket = t.encrypt(b"own").unwrap();
        assert!(t.reload_if_changed(), "due at once");
        assert_eq!(t.keys().len(), 2);
        assert_eq!(
            t.decrypt(&ticket).unwrap(),
            b"own",
            "the previous key decrypts"
        );
        assert!(t.reload_if_changed());
        assert!(
            t.decrypt(&ticket).is_none(),
            "two replacements later it is gone"
        );
        // The unknown key name made it look once more (and, due at once,
        // replace again).
        let stats = t.stats();
        assert_eq!((stats.source, stats.keys, stats.reloads), ("process", 2, 3));
        let (own, keys) = OwnKeys::new(Duration::from_secs(3600)).unwrap();
        let t = Ticketer::new(Box::new(own), keys, 60, Duration::ZERO).unwrap();
        assert!(!t.reload_if_changed(), "not due");
    }

    #[test]
    fn zero_check_interval_looks_every_time() {
        let dir = TempDir::new("zero");
        let path = dir.file();
        rotate(&path, 3).unwrap();
        let t = Ticketer::from_file_checking_every(&path, 60, Duration::ZERO).unwrap();
        let before = t.keys().names().next().unwrap();
        rotate(&path, 3).unwrap();
        let ticket = t.encrypt(b"y").unwrap();
        assert_ne!(ticket[..NAME_LEN], before);
        assert!(Ticketer::from_file(&path, 0).is_err());
        assert!(Ticketer::from_file(&path, MAX_LIFETIME + 1).is_err());
    }

    #[test]
    fn rotation_keeps_the_files_owner() {
        // Only root can give a file to someone else.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = TempDir::new("owner");
        let path = dir.file();
        rotate(&path, 3).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        rotate(&path, 3).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(load(&path).unwrap().len(), 2);
    }

    #[test]
    fn rotate_through_symlink_replaces_target() {
        let dir = TempDir::new("link");
        let real = dir.0.join("real.keys");
        rotate(&real, 3).unwrap();
        let link = dir.0.join("link.keys");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        rotate(&link, 3).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(load(&real).unwrap().len(), 2);
    }

    /// A self-signed certificate for `localhost` and a client trusting it.
    #[test]
    fn rustls_resumes_on_another_node_with_the_same_file() {
        let dir = TempDir::new("rustls");
        let path = dir.file();
        rotate(&path, 3).unwrap();
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (builder, cert, key, client) = tls_pair(version);
            let mut node1 = builder.with_single_cert(vec![cert], key).unwrap();
            node1.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            let mut node2 = node1.clone();
            let t1 = Ticketer::from_file(&path, 3600).unwrap();
            let t2 = Ticketer::from_file(&path, 3600).unwrap();
            node1.ticketer = t1.clone();
            node2.ticketer = t2.clone();
            let (node1, node2) = (Arc::new(node1), Arc::new(node2));
            assert_eq!(connect(&node1, &client), rustls::HandshakeKind::Full);
            assert!(t1.stats().encrypted >= 1, "{version:?}");
            assert_eq!(
                connect(&node2, &client),
                rustls::HandshakeKind::Resumed,
                "{version:?}"
            );
            assert!(t2.stats().decrypted >= 1, "{version:?}");
        }
    }
}
