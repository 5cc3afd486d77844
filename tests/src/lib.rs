//! Helpers for `lb`'s integration tests, demo and benchmarks: real network
//! namespaces, a real `lb` process, and packets built byte by byte.
//!
//! Everything that creates kernel state (a namespace, a veth, a process) is an
//! RAII guard that removes it on drop, also when a test fails.

pub mod lb;
pub mod netns;
pub mod packet;

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
