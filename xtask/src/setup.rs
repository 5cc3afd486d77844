//! `cargo xtask setup`: installs what a fresh machine lacks, skipping what is
//! there, so a second run takes seconds. Each step says what it checks; a
//! failure names the step and the command.
//!
//! What is needed and why (see shared/toolchain.md):
//! - apt: `llvm-22-dev`, `libpolly-22-dev` (bpf-linker links LLVM 22, the LLVM
//!   of the nightly toolchain), `bpftool` (map dumps, prog runs), `hping3`
//!   (SYN floods), `iproute2` (namespaces), `ethtool` (the flood benchmark's
//!   veth offloads), `openssl` (s_client, the flood benchmark's RSA
//!   certificate), `nftables` (counting SYNs that reach the stack, and the
//!   benchmark's peers), `curl`, `h2load`
//!   (nghttp2-client), `wrk` and `ab` (apache2-utils) (proxy and TLS tests,
//!   benchmarks), `nginx-light`
//!   and `haproxy` (benchmark peers; their services are not started),
//!   `redis-server` (the cluster tests start their own), `chromium` (the
//!   status page test renders the admin page headless and screenshots it);
//! - `rust-src` for the nightly toolchain (`-Z build-std=core`);
//! - `bpf-linker`, built with LLVM 22;
//! - `cargo-deny` (`lint` checks licenses, bans and sources against
//!   deny.toml).

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// Debian packages and a file each one installs (checked instead of asking
/// dpkg, which is slower).
const APT: &[(&str, &str)] = &[
    ("llvm-22-dev", "/usr/lib/llvm-22/bin/llvm-config"),
    ("libpolly-22-dev", "/usr/lib/llvm-22/lib/libPolly.a"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("hping3", "/usr/sbin/hping3"),
    ("iproute2", "/usr/sbin/ip"),
    ("nftables", "/usr/sbin/nft"),
    ("curl", "/usr/bin/curl"),
    ("util-linux", "/usr/bin/nsenter"),
    // The flood benchmark sets the veths' offloads (GRO on, TSO off).
    ("ethtool", "/usr/sbin/ethtool"),
    // `openssl s_client` in the TLS tests; the flood benchmark's RSA
    // certificate (`openssl req`).
    ("openssl", "/usr/bin/openssl"),
    // Real clients and peers of the proxy tests and benchmarks.
    ("nghttp2-client", "/usr/bin/h2load"),
    ("wrk", "/usr/bin/wrk"),
    ("apache2-utils", "/usr/bin/ab"),
    ("nginx-light", "/usr/sbin/nginx"),
    ("haproxy", "/usr/sbin/haproxy"),
    // The shared TLS session cache of the cluster tests (started by them).
    ("redis-server", "/usr/bin/redis-server"),
    // The font of the benchmark report's charts.
    (
        "fonts-dejavu-core",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    ),
    // The status page test loads the admin page in headless Chromium.
    ("chromium", "/usr/bin/chromium"),
];

fn quiet(cmd: &mut Command) -> Result<bool> {
    Ok(cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("starting {cmd:?}"))?
        .success())
}

fn step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask setup: {name}");
    let status = cmd
        .status()
        .with_context(|| format!("step `{name}`: cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("step `{name}` failed: {cmd:?} exited with {status}");
    }
    Ok(())
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT
        .iter()
        .filter(|(_, file)| !std::path::Path::new(file).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(
        "apt-get update",
        Command::new("apt-get").args(["update", "-q"]),
    )?;
    // Packages such as nginx and haproxy start a system service when
    // installed; a policy-rc.d that says "no" keeps them stopped (tests and
    // benchmarks start their own, on their own addresses).
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# written by cargo xtask setup during apt-get install\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .context("chmod /usr/sbin/policy-rc.d")?;
    }
    let installed = step(
        &format!("apt-get install {}", missing.join(" ")),
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    );
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    installed
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("step `rustup component list`: cannot run rustup")?;
    if !out.status.success() {
        bail!(
            "step `nightly toolchain`: rustup has no `nightly` toolchain ({}); \
             the eBPF crate needs it",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    step(
        "rustup component add rust-src --toolchain nightly",
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
}

fn bpf_linker() -> Result<()> {
    if quiet(Command::new("bpf-linker").arg("--version")).unwrap_or(false) {
        return Ok(());
    }
    let path = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    step(
        "cargo install bpf-linker (LLVM 22)",
        Command::new("cargo")
            .env("PATH", path)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
}

/// `cargo-deny`, for the license, ban and source checks of `lint`.
fn cargo_deny() -> Result<()> {
    if quiet(Command::new("cargo").args(["deny", "--version"])).unwrap_or(false) {
        return Ok(());
    }
    step(
        "cargo install cargo-deny",
        Command::new("cargo")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .args(["install", "cargo-deny", "--locked"]),
    )
}

/// Runs every step.
pub fn setup() -> Result<()> {
    apt()?;
    rust_src()?;
    bpf_linker()?;
    cargo_deny()
}
