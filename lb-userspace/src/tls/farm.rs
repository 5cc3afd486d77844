//! Cluster mode's ticket keys: the farm's key set lives in the cluster's
//! Redis, so every node encrypts tickets with the same key, decrypts with
//! the same keys, and the farm rotates once, not once per node.
//!
//! # In Redis
//!
//! - [`KEYS`] (`lb:tls:ticket-keys`): the key set, in the key file format
//!   of [`super::tickets`] (first key encrypts, all decrypt), so
//!   `redis-cli GET lb:tls:ticket-keys` prints a valid key file;
//! - [`ROTATED`] (`lb:tls:ticket-keys:rotated`): set by the node that made
//!   the last rotation (its host name and pid), expiring after
//!   `[cluster] ticketRotation`.
//!
//! # Rotation
//!
//! Every node looks at Redis at most once a second, from within a
//! handshake as for a key file ([`super::tickets::Ticketer`]). The first
//! node that finds [`ROTATED`] gone sets it again (`SET NX PX`), so only it
//! rotates: a fresh key first, then the previous ones, `ticketKeep` in all,
//! written in a `WATCH`/`MULTI` transaction so that two writers never lose
//! a key. The first node of a new farm creates the set the same way. The
//! other nodes take the new set within a second; until then they cannot
//! decrypt tickets made with the new key, and those few clients do a full
//! handshake. `lb tls rotate-keys --redis URL` rotates by hand (it leaves
//! the timer alone). A ticket stays usable while its key is in the set:
//! about `(ticketKeep − 1) × ticketRotation`, which the config check holds
//! against every frontend's session lifetime.
//!
//! # Redis down
//!
//! A node keeps the keys it last took, so resumption across nodes goes on
//! while Redis is away; no rotation happens until it returns. A node that
//! starts while Redis is down (or holds a key set it refuses) makes a key
//! of its own, logged: its tickets resume on that node only, until it takes
//! the farm's keys as soon as Redis answers. A set in Redis that does not
//! parse is refused with one warning and never overwritten by a rotation.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use zeroize::Zeroizing;

use super::{
    cluster::Redis,
    tickets::{self, KeySet, KeySource, Poll, TicketKeyError},
};

/// The Redis key holding the farm's ticket keys.
pub const KEYS: &str = "lb:tls:ticket-keys";
/// The Redis key that, while it exists, says the last rotation is recent.
pub const ROTATED: &str = "lb:tls:ticket-keys:rotated";

/// How long `lb tls rotate-keys --redis` waits for Redis.
const CLI_TIMEOUT: Duration = Duration::from_secs(5);

/// The text of a key set (it holds the keys), zeroed when dropped. A `GET`
/// reply is taken as the `Vec` redis parsed it into, not copied; redis's
/// own read and write buffers are not ours to wipe (docs/tls.md, Secrets).
type KeyText = Zeroizing<Vec<u8>>;

/// `GET` [`KEYS`], wrapped at once so that it is zeroed when dropped.
fn get_keys(c: &mut redis::Connection) -> redis::RedisResult<Option<KeyText>> {
    Ok(redis::cmd("GET")
        .arg(KEYS)
        .query::<Option<Vec<u8>>>(c)?
        .map(Zeroizing::new))
}

/// The farm's ticket keys in the cluster's Redis (module doc).
pub struct FarmKeys {
    redis: Arc<Redis>,
    /// Zero: no automatic rotation.
    rotation: Duration,
    keep: usize,
    /// The text of the set last taken or refused.
    seen: Mutex<Option<KeyText>>,
    rotations: AtomicU64,
    /// `host/pid`, written into [`ROTATED`].
    node: String,
}

impl FarmKeys {
    /// The farm's keys in `redis`, rotated every `rotation` (zero: only by
    /// hand), `keep` kept; and the keys to start with: the farm's, or one
    /// of this node's own if Redis does not give a usable set now.
    ///
    /// # Errors
    /// The system's random generator failed.
    pub fn open(
        redis: Arc<Redis>,
        rotation: Duration,
        keep: usize,
    ) -> Result<(Self, KeySet), TicketKeyError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let farm = Self {
            redis,
            rotation,
            keep: keep.clamp(1, tickets::MAX_KEYS),
            seen: Mutex::new(None),
            rotations: AtomicU64::new(0),
            node: format!("{}/{}", host.trim(), std::process::id()),
        };
        if let Poll::New(keys) = farm.poll() {
            return Ok((farm, keys));
        }
        tracing::warn!(
            redis = %farm.redis.url(),
            "no ticket keys from the cluster's Redis: this node uses a key of its own, so \
             its tickets resume on this node only until Redis gives the farm's keys"
        );
        let own = KeySet::fresh().ok_or_else(|| TicketKeyError::Redis {
            url: farm.describe(),
            why: "the system's random generator failed".into(),
        })?;
        Ok((farm, own))
    }

    /// Rotates if the last rotation has expired, creates the set if there
    /// is none, and returns the set's text now in Redis (or why it is
    /// refused).
    fn sync(&self, c: &mut redis::Connection) -> redis::RedisResult<Result<KeyText, String>> {
        let due = !self.rotation.is_zero()
            && redis::cmd("SET")
                .arg(ROTATED)
                .arg(&self.node)
                .arg("NX")
                .arg("PX")
                .arg(u64::try_from(self.rotation.as_millis()).unwrap_or(u64::MAX))
                .query::<Option<String>>(c)?
                .is_some();
        if !due {
            if let Some(text) = get_keys(c)? {
                return Ok(Ok(text));
            }
        }
        let (text, wrote) = match update(c, self.keep, due)? {
            Ok(done) => done,
            Err(why) => return Ok(Err(why)),
        };
        if wrote {
            self.rotations.fetch_add(1, Relaxed);
            tracing::info!(
                redis = %self.redis.url(),
                keep = self.keep,
                "rotated the farm's ticket keys"
            );
        }
        Ok(Ok(text))
    }
}

/// In one transaction: puts a fresh key first in the set (`rotate`), or
/// creates the set if there is none; returns the set's text and whether
/// this call wrote it. A set that does not parse is left alone (`Err`).
fn update(
    c: &mut redis::Connection,
    keep: usize,
    rotate: bool,
) -> redis::RedisResult<Result<(KeyText, bool), String>> {
    redis::transaction(c, &[KEYS], |c, pipe| {
        let old = get_keys(c)?;
        let base = match old {
            Some(text) if !rotate => return Ok(Some(Ok((text, false)))),
            Some(text) => match tickets::parse(Path::new(KEYS), &text) {
                Ok(keys) => keys,
                Err(e) => return Ok(Some(Err(e.to_string()))),
            },
            None => KeySet::empty(),
        };
        let Some(new) = base.rotated(keep) else {
            return Ok(Some(Err("the system's random generator failed".into())));
        };
        // The String's buffer, moved (not copied) into a zeroing Vec.
        let text: KeyText = Zeroizing::new(std::mem::take(&mut *new.to_text()).into_bytes());
        // None: another node wrote the set since WATCH; read it again.
        let done: Option<(String,)> = pipe.cmd("SET").arg(KEYS).arg(text.as_slice()).query(c)?;
        Ok(done.map(|_| Ok((text, true))))
    })
}

impl KeySource for FarmKeys {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn describe(&self) -> String {
        format!("{} key {KEYS}", self.redis.url())
    }

    fn poll(&self) -> Poll {
        let Some(now) = self.redis.call(|c| self.sync(c)) else {
            // Redis down or busy: keep the keys (Redis logs its outages).
            return Poll::Same;
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let text = match now {
            Ok(text) => text,
            Err(why) => {
                tracing::warn!(redis = %self.describe(), %why, "farm ticket keys not rotated");
                return Poll::Refused;
            }
        };
        if seen.as_deref().map(Vec::as_slice) == Some(text.as_slice()) {
            return Poll::Same;
        }
        let parsed = tickets::parse(Path::new(KEYS), &text);
        *seen = Some(text);
        match parsed {
            Ok(keys) => Poll::New(keys),
            Err(e) => {
                tracing::warn!(
                    redis = %self.describe(),
                    error = %e,
                    "farm ticket keys in Redis refused: keeping the keys in use"
                );
                Poll::Refused
            }
        }
    }

    fn rotations(&self) -> u64 {
        self.rotations.load(Relaxed)
    }
}

/// `lb tls rotate-keys --redis URL`: rotates the farm's keys now, keeping
/// `keep`; returns the new set. Every node takes it within a second.
///
/// # Errors
/// `keep` is out of range, Redis cannot be reached, or the set in it does
/// not parse.
pub fn rotate_now(url: &str, keep: usize) -> Result<KeySet, TicketKeyError> {
    let where_ = format!("{} key {KEYS}", super::cluster::redact(url));
    let fail = |why: String| TicketKeyError::Redis {
        url: where_.clone(),
        why,
    };
    if keep == 0 || keep > tickets::MAX_KEYS {
        return Err(fail(format!(
            "cannot keep {keep} keys; allowed: 1 to {}",
            tickets::MAX_KEYS
        )));
    }
    let client = redis::Client::open(url).map_err(|e| fail(e.to_string()))?;
    let mut c = super::cluster::open(&client, CLI_TIMEOUT).map_err(|e| fail(e.to_string()))?;
    let (text, _) = update(&mut c, keep, true)
        .map_err(|e| fail(e.to_string()))?
        .map_err(|why| fail(format!("{why}; not rotated")))?;
    tickets::parse(Path::new(KEYS), &text)
}
