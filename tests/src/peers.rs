//! What the benchmark tools (`lb-bench-*`) share: a scratch directory, the
//! peers they start and stop by pid ([`Daemon`]) and their process trees,
//! CPU time read from /proc, free ports, how lb's version and a path are
//! shown in a report, the `lb` binary they run and the certificate they
//! serve.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::report::first_line;

/// The run's temporary directory (`<tmp>/lb-bench-proxy-<pid>`): configs,
/// pid and log files. Removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates `<tmp>/<prefix>-<pid>`.
    ///
    /// # Errors
    /// The directory cannot be made.
    pub fn new(prefix: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// Writes `text` to `name` in it.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command line, kept as text for the report.
#[must_use]
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains([' ', ';', '\'', '"', '$']) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A process this program started (through `taskset`, which execs it: same
/// pid). Dropping it sends SIGTERM, then SIGKILL after 5 s, to that pid only.
pub struct Daemon {
    /// What it is, in messages.
    pub name: &'static str,
    child: Child,
    log: PathBuf,
    /// Its command line, for the report.
    pub cmdline: String,
}

impl Daemon {
    /// Starts `taskset -c CPU ARGV...` with stdout and stderr in `NAME.log`.
    ///
    /// # Errors
    /// It cannot be started.
    pub fn spawn(name: &'static str, cpu: usize, argv: &[String], dir: &Scratch) -> Result<Self> {
        let log = dir.0.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut full = vec!["taskset".to_owned(), "-c".to_owned(), cpu.to_string()];
        full.extend_from_slice(argv);
        let mut cmd = Command::new(&full[0]);
        cmd.args(&full[1..])
            .current_dir(&dir.0)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        // SAFETY: prctl is async-signal-safe; it only sets a flag of the child.
        // If this program dies without unwinding, the child gets SIGTERM.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {}", shell_line(&full)))?;
        Ok(Self {
            name,
            child,
            log,
            cmdline: shell_line(&full),
        })
    }

    /// Its pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 15 s) until `port` accepts and, if given, the log holds
    /// `needle`.
    ///
    /// # Errors
    /// It exited, or was not ready in time.
    pub fn wait_ready(&mut self, port: u16, needle: Option<&str>) -> Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready: {}\n{}",
                    self.name,
                    self.cmdline,
                    self.log_text()
                );
            }
            let listening = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            if listening && needle.is_none_or(|n| self.log_text().contains(n)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} not ready on {addr} after 15 s: {}\n{}",
            self.name,
            self.cmdline,
            self.log_text()
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("bench: {} ignored SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `a` to completion: its standard output; fails (with its output)
/// on a non-zero exit.
///
/// # Errors
/// `a` is empty, cannot start, or exits non-zero.
pub fn run(a: &[String]) -> Result<String> {
    let (first, rest) = a.split_first().context("empty command")?;
    let out = Command::new(first)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", shell_line(a)))?;
    ensure!(
        out.status.success(),
        "{} failed ({}): {}{}",
        shell_line(a),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Owned arguments.
#[must_use]
pub fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|&s| s.to_owned()).collect()
}

/// `nginx` in the foreground with its prefix in `dir` and config `conf`.
#[must_use]
pub fn nginx_argv(dir: &Scratch, conf: &Path, name: &str) -> Vec<String> {
    let prefix = format!("{}/", dir.0.display());
    argv(&[
        "/usr/sbin/nginx",
        "-g",
        "daemon off;",
        "-p",
        &prefix,
        "-e",
        &format!("{name}.error.log"),
        "-c",
        &conf.to_string_lossy(),
    ])
}

/// The fields of /proc/PID/stat after the command name: field 3 (state)
/// is index 0.
#[must_use]
pub fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // The state is a letter: count it as 0.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// One CPU's busy and softirq time, in clock ticks, from /proc/stat.
#[derive(Clone, Copy)]
pub struct CpuTicks {
    /// user + nice + system + irq + softirq.
    pub busy: u64,
    /// softirq.
    pub softirq: u64,
    /// busy + idle + iowait + steal.
    pub total: u64,
}

///
/// # Errors
/// /proc/stat cannot be read.
pub fn cpu_ticks(cpu: usize) -> Result<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let prefix = format!("cpu{cpu} ");
    let line = stat
        .lines()
        .find(|l| l.starts_with(&prefix))
        .with_context(|| format!("no cpu{cpu} line in /proc/stat"))?;
    // user nice system idle iowait irq softirq steal (guest is inside user).
    // Steal (the hypervisor ran something else) is wall time, not work here.
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    ensure!(v.len() == 8, "short cpu{cpu} line: {line}");
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    Ok(CpuTicks {
        busy,
        softirq: v[6],
        total: busy + v[3] + v[4] + v[7],
    })
}

/// Busy share of a CPU between two readings, in %.
#[must_use]
pub fn busy_pct(a: CpuTicks, b: CpuTicks) -> f64 {
    100.0 * (b.busy - a.busy) as f64 / (b.total - a.total).max(1) as f64
}

/// Busy % of CPU 0 and CPU 1 over one second before anything starts: other
/// work on this machine, which the figures cannot tell from the peers'.
///
/// # Errors
/// /proc/stat cannot be read.
pub fn background_load([proxy, load]: [usize; 2]) -> Result<[f64; 2]> {
    let before = [cpu_ticks(proxy)?, cpu_ticks(load)?];
    std::thread::sleep(Duration::from_secs(1));
    let after = [cpu_ticks(proxy)?, cpu_ticks(load)?];
    Ok([0, 1].map(|i| busy_pct(before[i], after[i])))
}

/// Fails naming the port when something already listens on it.
pub fn port_free(port: u16) -> Result<()> {
    TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .with_context(|| format!("127.0.0.1:{port} is taken (another bench run?)"))
}

/// The pids of `pid` and its descendants (nginx's worker is a child of its
/// master).
pub fn tree_pids(pid: u32) -> Result<Vec<u32>> {
    let mut all: Vec<(u32, u64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(p) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(f) = stat_fields(p) {
            // ppid is field 4.
            all.push((p, f.get(1).copied().unwrap_or(0)));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = u64::from(tree[i]);
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    Ok(tree)
}

/// lb's commit, and whether `lb-userspace/` has uncommitted changes.
#[must_use]
pub fn lb_version() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.to_string_lossy();
    let rev = first_line("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    let clean = Command::new("git")
        .args(["-C", &root, "diff", "--quiet", "HEAD", "--", "lb-userspace"])
        .status()
        .is_ok_and(|s| s.success());
    if clean {
        rev
    } else {
        format!("{rev} (with uncommitted changes in lb-userspace/)")
    }
}

/// `path` relative to the workspace root when it is inside it.
#[must_use]
pub fn shown_path(path: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match (std::fs::canonicalize(root), std::fs::canonicalize(path)) {
        (Ok(r), Ok(p)) => p.strip_prefix(&r).map_or(p.clone(), Path::to_path_buf),
        _ => path.to_path_buf(),
    }
}

/// The release `lb` a benchmark runs: `$LB_BIN`, or `target/release/lb`;
/// canonical, so the report's command lines show no `tests/..`.
///
/// # Errors
/// No binary there; the message says how to get one (`bench`: the
/// benchmark's name, for `cargo xtask bench NAME`).
pub fn lb_bin(bench: &str) -> Result<PathBuf> {
    let p = std::env::var_os("LB_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/lb"),
        PathBuf::from,
    );
    ensure!(
        p.exists(),
        "no lb binary at {}: run through `cargo xtask bench {bench}`, set LB_BIN, or \
         `cargo build --release -p lb-userspace --bin lb`",
        p.display()
    );
    Ok(std::fs::canonicalize(&p).unwrap_or(p))
}

/// The name the benchmarks' certificate is made for (and the SNI their
/// clients send).
pub const CERT_NAME: &str = "bench.test";

/// The certificate files `lb cert gen` (or [`make_rsa_cert`]) writes, and
/// the certificate and key in one PEM for HAProxy's `crt`.
pub struct Cert {
    /// `bench.test.pem`.
    pub cert: PathBuf,
    /// `bench.test.key`.
    pub key: PathBuf,
    /// Both, concatenated.
    pub combined: PathBuf,
}

/// `lb cert gen --name bench.test --dir DIR/cert` with `bin` (ECDSA
/// P-256), and the combined PEM; returns the command it ran too, for the
/// report.
///
/// # Errors
/// `lb cert gen` failed, or a file could not be read or written.
pub fn make_cert(bin: &Path, dir: &Scratch) -> Result<(Cert, Vec<String>)> {
    let to = cert_dir(dir)?;
    let a = argv(&[
        &bin.to_string_lossy(),
        "cert",
        "gen",
        "--name",
        CERT_NAME,
        "--dir",
        &to.to_string_lossy(),
    ]);
    run(&a)?;
    Ok((combine(&to)?, a))
}

/// A self-signed RSA certificate of `bits` for bench.test (and its SAN)
/// from `openssl req`, in the same files as [`make_cert`]'s; returns the
/// command too, for the report.
///
/// # Errors
/// `openssl` failed, or a file could not be read or written.
pub fn make_rsa_cert(dir: &Scratch, bits: u32) -> Result<(Cert, Vec<String>)> {
    let to = cert_dir(dir)?;
    let a = argv(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        &format!("rsa:{bits}"),
        "-nodes",
        "-keyout",
        &to.join(format!("{CERT_NAME}.key")).to_string_lossy(),
        "-out",
        &to.join(format!("{CERT_NAME}.pem")).to_string_lossy(),
        "-days",
        "30",
        "-subj",
        &format!("/CN={CERT_NAME}"),
        "-addext",
        &format!("subjectAltName=DNS:{CERT_NAME}"),
    ]);
    run(&a)?;
    Ok((combine(&to)?, a))
}

fn cert_dir(dir: &Scratch) -> Result<PathBuf> {
    let to = dir.0.join("cert");
    std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
    Ok(to)
}

/// The files in `to`, with the combined PEM written.
fn combine(to: &Path) -> Result<Cert> {
    let cert = to.join(format!("{CERT_NAME}.pem"));
    let key = to.join(format!("{CERT_NAME}.key"));
    let combined = to.join(format!("{CERT_NAME}.combined.pem"));
    let mut both = std::fs::read_to_string(&cert).context("reading the certificate")?;
    both.push_str(&std::fs::read_to_string(&key).context("reading the key")?);
    std::fs::write(&combined, both).context("writing the combined PEM")?;
    Ok(Cert {
        cert,
        key,
        combined,
    })
}
