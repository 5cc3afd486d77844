//! One running `lb` per instance name: its lock, its pin directory on bpffs,
//! and the janitor that removes the pins if `lb` dies without cleaning up.
//!
//! The lock is an `flock` on `/run/lb/<instance>.lock` (for root), which the kernel
//! releases when the process dies however it dies, so a stale lock file never
//! blocks a restart. The janitor is a child process (`lb __janitor`) holding
//! the read end of a pipe whose write end only `lb` holds: when `lb` exits, even
//! by SIGKILL, the janitor reads EOF, takes the lock (if no new `lb` already
//! has) and removes the pins. The XDP program itself needs no janitor: its
//! bpf_links die with the process.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek as _, Write},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Errors of instance management.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another `lb` holds the instance.
    #[error(
        "instance `{instance}` is already running (pid {pid}); stop it first, set another \
         [global] instance, or start beside it with `lb run --join` to take over from it"
    )]
    Running {
        /// Instance name.
        instance: String,
        /// Pid recorded by the holder.
        pid: String,
    },
    /// A filesystem operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstanceError + 'a {
    move |source| InstanceError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// `/sys/fs/bpf/lb/<instance>`.
#[must_use]
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new(BPFFS).join("lb").join(instance)
}

/// Directory of the lock files: `/run/lb` for root, else a per-user
/// directory under the temp dir (an unprivileged `lb` runs without XDP but
/// still one per instance name).
fn run_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    match unsafe { libc::geteuid() } {
        0 => PathBuf::from("/run/lb"),
        uid => std::env::temp_dir().join(format!("lb-{uid}")),
    }
}

/// The key of the instance's session cookies (`maxSessRate`), shared by a
/// process and the one `--join`ed beside it.
#[must_use]
pub fn session_key_path(instance: &str) -> PathBuf {
    run_dir().join(format!("{instance}.session.key"))
}

/// The admin API token `lb` makes for the instance when `[admin]` names
/// none (mode 0600, removed when the instance stops): `lb profile set` on
/// the same host reads it.
#[must_use]
pub fn admin_token_path(instance: &str) -> PathBuf {
    run_dir().join(format!("{instance}.admin.token"))
}

/// The secret in `path` if `whole` accepts what it holds; else a new one
/// from `make`, written atomically with mode 0600 (the directory made if
/// missing). A process and the one `--join`ed beside it so share it.
///
/// # Errors
/// The file cannot be written, or `make` fails.
pub fn load_or_create_secret(
    path: &Path,
    whole: impl Fn(&[u8]) -> bool,
    make: impl FnOnce() -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Vec<u8>> {
    if let Ok(bytes) = fs::read(path) {
        if whole(&bytes) {
            return Ok(bytes);
        }
    }
    let secret = make()?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&secret)?;
    }
    fs::rename(&tmp, path)?;
    Ok(secret)
}

fn lock_path(instance: &str) -> PathBuf {
    run_dir().join(format!("{instance}.lock"))
}

/// The held lock of an instance; released on drop or process death.
pub struct InstanceLock {
    _file: File,
}

fn try_flock(file: &File) -> bool {
    // SAFETY: a valid open fd.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn open_lock(instance: &str) -> Result<File, InstanceError> {
    let dir = run_dir();
    fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let path = lock_path(instance);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("opening", &path))
}

/// Takes the instance, or says who has it.
///
/// # Errors
/// [`InstanceError::Running`] if another process holds it.
pub fn lock(instance: &str) -> Result<InstanceLock, InstanceError> {
    let mut file = open_lock(instance)?;
    if !try_flock(&file) {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(InstanceError::Running {
            instance: instance.to_owned(),
            pid: pid.trim().to_owned(),
        });
    }
    let path = lock_path(instance);
    file.set_len(0).map_err(io("truncating", &path))?;
    write!(file, "{}", std::process::id()).map_err(io("writing", &path))?;
    Ok(InstanceLock { _file: file })
}

/// Mounts bpffs on [`BPFFS`] unless it is mounted already.
///
/// # Errors
/// The mount failed (no privileges).
pub fn ensure_bpffs() -> Result<(), InstanceError> {
    let dir = Path::new(BPFFS);
    if is_bpffs(dir) {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    // SAFETY: constant NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(InstanceError::Io {
            what: "mounting bpffs on",
            path: dir.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn is_bpffs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the struct; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    #[expect(
        clippy::useless_conversion,
        reason = "statfs.f_type's width differs by architecture"
    )]
    let f_type = i64::from(st.f_type);
    rc == 0 && f_type == BPF_FS_MAGIC
}

/// Creates an empty pin directory, removing stale pins a dead run left.
///
/// # Errors
/// The directory could not be made.
pub fn fresh_pin_dir(instance: &str) -> Result<PathBuf, InstanceError> {
    let dir = pin_dir(instance);
    remove_pins(&dir)?;
    fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    Ok(dir)
}

/// Removes a pin directory and the pins in it, if it exists.
///
/// # Errors
/// A pin could not be removed.
pub fn remove_pins(dir: &Path) -> Result<(), InstanceError> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", dir)(e)),
        _ => Ok(()),
    }
}

/// Starts the janitor for `instance`. Keep the returned child (its stdin is
/// the pipe) alive for as long as the pins should live.
///
/// # Errors
/// The janitor could not be started.
pub fn spawn_janitor(instance: &str) -> Result<Child, InstanceError> {
    let exe = std::env::current_exe().map_err(io("locating", Path::new("/proc/self/exe")))?;
    Command::new(&exe)
        .args(["__janitor", "--instance", instance])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        // Its own process group: a Ctrl-C meant for `lb` does not reach it.
        .process_group(0)
        .spawn()
        .map_err(io("starting janitor", &exe))
}

/// The janitor's whole life: wait for the parent to go, then clean up after
/// it unless a new `lb` took the instance meanwhile.
pub fn run_janitor(instance: &str) {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() }.to_string();
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
    let Ok(mut file) = open_lock(instance) else {
        return;
    };
    // The pipe closes a moment before the dying lb's lock is released: wait
    // for the lock, unless another lb (a new pid in the lock file) holds it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !try_flock(&file) {
        let mut holder = String::new();
        let _ = file
            .rewind()
            .and_then(|()| file.read_to_string(&mut holder));
        let holder = holder.trim();
        if (!holder.is_empty() && holder != parent) || std::time::Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let dir = pin_dir(instance);
    if dir.exists() {
        let _ = remove_pins(&dir);
        eprintln!("lb janitor: removed pins of instance `{instance}` left by an exited lb");
    }
}
