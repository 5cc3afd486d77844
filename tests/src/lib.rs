//! Helpers for `lb`'s integration tests, demo and benchmarks: real network
//! namespaces, a real `lb` process, and packets built byte by byte.
//!
//! Everything that creates kernel state (a namespace, a veth, a process) is an
//! RAII guard that removes it on drop, also when a test fails.

pub mod backend;
pub mod client;
pub mod harness;
pub mod lb;
pub mod load;
pub mod netns;
pub mod packet;
pub mod peers;
pub mod report;
pub mod results;
pub mod storm;
pub mod tls;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

/// Whether this process is root. A test that needs root and is not run as
/// root prints why it skips; under `CI=true` it fails instead, since CI runs
/// as root and a skipped kernel test there would hide a broken one.
///
/// # Panics
/// Not root while `CI=true`.
#[must_use]
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{test}: needs root, and CI=true"
    );
    eprintln!("SKIPPED {test}: needs root (BPF, namespaces)");
    false
}

/// Pins the calling thread to `cpu`; the processes and threads it starts
/// afterwards inherit that. Returns the CPUs it could run on before, to
/// give back to [`pin_this_thread_to`].
///
/// # Panics
/// The kernel refuses (a CPU this process may not use).
pub fn pin_this_thread(cpu: usize) -> libc::cpu_set_t {
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is plain data; the calls read or fill `size` bytes.
    unsafe {
        assert_eq!(
            libc::sched_getaffinity(0, size, &raw mut set),
            0,
            "getaffinity"
        );
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(
            libc::sched_setaffinity(0, size, &raw const one),
            0,
            "pin to CPU {cpu}"
        );
    }
    set
}

/// Lets the calling thread run on `set` again.
pub fn pin_this_thread_to(set: &libc::cpu_set_t) {
    // SAFETY: as in pin_this_thread.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
    }
}

/// Whether a command is on PATH.
#[must_use]
pub fn have_tool(name: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A unique short tag for names of namespaces, links and instances:
/// pid plus a per-process counter, so parallel runs never collide.
#[must_use]
pub fn unique_tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connects from the local address `src` to `dst` (IPv4) with a 3 s timeout
/// and closes again; returns how long the connect took. (TCP retries a
/// dropped SYN after 1 s, so a dropped SYN shows as a slow connect.)
///
/// # Errors
/// The connect failed or timed out.
pub fn connect_from(src: &str, dst: SocketAddr) -> Result<Duration, String> {
    let start = Instant::now();
    // Bind the source address: std has no bind-before-connect, so use libc.
    // SAFETY: plain socket calls on a fresh fd, closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let sa = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        };
        let local = sa(src.parse().map_err(|e| format!("{e}"))?, 0);
        let SocketAddr::V4(d) = dst else {
            libc::close(fd);
            return Err("v4 only".into());
        };
        let remote = sa(*d.ip(), d.port());
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let tv = libc::timeval {
            tv_sec: 3,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let r = if libc::bind(fd, (&raw const local).cast(), len) != 0
            || libc::connect(fd, (&raw const remote).cast(), len) != 0
        {
            Err(std::io::Error::last_os_error().to_string())
        } else {
            Ok(start.elapsed())
        };
        libc::close(fd);
        r
    }
}

/// A temporary directory for config files, removed on drop.
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    /// Creates `<tmp>/<prefix>-<unique tag>`.
    ///
    /// # Panics
    /// The directory cannot be created.
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", unique_tag()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    /// A path inside it.
    #[must_use]
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
