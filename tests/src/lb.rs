//! A real `lb` process, started in a namespace and stopped on drop.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::netns::Netns;

/// The `lb` binary: `LB_BIN` (set by `cargo xtask`), else `target/debug/lb`.
///
/// # Panics
/// Neither exists.
#[must_use]
pub fn lb_bin() -> PathBuf {
    binary(
        "LB_BIN",
        "debug",
        "run through `cargo xtask test`, or build lb first",
    )
}

/// The optimized `lb`: `LB_RELEASE_BIN` (set by `cargo xtask test`), else
/// `target/release/lb`. For the tests that measure what `lb` costs against
/// what the machine can do (a handshake storm), where a debug build would
/// measure the debug build.
///
/// # Panics
/// Neither exists.
#[must_use]
pub fn release_bin() -> PathBuf {
    binary(
        "LB_RELEASE_BIN",
        "release",
        "run through `cargo xtask test`, or `cargo build --release -p lb-userspace --bin lb`",
    )
}

/// `$var`, else `target/<profile>/lb`; panics with `hint` if missing.
fn binary(var: &str, profile: &str, hint: &str) -> PathBuf {
    let p = std::env::var_os(var).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/{profile}/lb")),
        PathBuf::from,
    );
    assert!(p.exists(), "no lb binary at {}: {hint}", p.display());
    p
}

/// A running `lb run`. Dropping it SIGKILLs what is left of it.
pub struct Lb {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Lb {
    /// Writes `config` to a file and starts `lb run` on it in `ns` (or in
    /// this namespace), then waits until it logs `ready`.
    ///
    /// # Errors
    /// `lb` exited or did not get ready within 20 s; the error holds its log.
    pub fn start(ns: Option<&Netns>, config_path: &Path, config: &str) -> Result<Self> {
        Self::start_with(ns, config_path, config, &[])
    }

    /// As [`Lb::start`], with more arguments to `lb run` (e.g. `--join`).
    ///
    /// # Errors
    /// As [`Lb::start`].
    pub fn start_with(
        ns: Option<&Netns>,
        config_path: &Path,
        config: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_bin(&lb_bin(), ns, config_path, config, extra)
    }

    /// As [`Lb::start_with`], running the binary `bin`.
    ///
    /// # Errors
    /// As [`Lb::start`].
    pub fn start_bin(
        bin: &Path,
        ns: Option<&Netns>,
        config_path: &Path,
        config: &str,
        extra: &[&str],
    ) -> Result<Self> {
        std::fs::write(config_path, config)?;
        let mut cmd = match ns {
            Some(ns) => ns.cmd(&bin.to_string_lossy()),
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["run", "-c"])
            .arg(config_path)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting lb")?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().context("no stderr")?;
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let mut lb = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // Text logs say ` ready`, JSON ones `"message":"ready`.
            let log = lb.log();
            if log.contains(" ready") || log.contains("\"ready") {
                return Ok(lb);
            }
            if let Some(status) = lb.child.try_wait()? {
                std::thread::sleep(Duration::from_millis(100));
                bail!("lb exited ({status}) before ready:\n{}", lb.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("lb not ready after 20 s:\n{}", lb.log())
    }

    /// Everything `lb` wrote to stderr so far.
    #[must_use]
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits (up to 10 s) for the exit; returns the code.
    ///
    /// # Errors
    /// `lb` did not exit in time.
    pub fn stop(&mut self, signal: i32) -> Result<Option<i32>> {
        // The child is `nsenter`, which execs lb: same pid.
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "lb did not exit within 10 s of signal {signal}:\n{}",
            self.log()
        )
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `lb` as `nobody` (uid and gid 65534, no groups, no capabilities, none
/// inheritable, an empty bounding set), in `ns` if given: add the
/// subcommand and its arguments. Its temp dir is `/tmp`, where `lb` makes
/// that user's run directory.
#[must_use]
pub fn nobody_cmd(ns: Option<&Netns>) -> Command {
    let mut cmd = ns.map_or_else(|| Command::new("setpriv"), |n| n.cmd("setpriv"));
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=-all", "--bounding-set=-all"])
        .arg(lb_bin())
        .env("TMPDIR", "/tmp");
    cmd
}

/// Runs `lb ARGS` to completion; returns (exit code, stdout, stderr).
///
/// # Errors
/// `lb` could not be started.
pub fn lb_cmd(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(lb_bin()).args(args).output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `lb cert gen --name NAME --dir DIR`: a self-signed pair in `dir`;
/// returns (certificate, key).
///
/// # Panics
/// `lb cert gen` failed or wrote no pair.
#[must_use]
pub fn cert_gen(dir: &crate::ScratchDir, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let d = dir.join("");
    let (code, out, err) =
        lb_cmd(&["cert", "gen", "--name", name, "--dir", &d.to_string_lossy()]).expect("lb");
    assert_eq!(code, 0, "lb cert gen: {out}{err}");
    let (cert, key) = (
        dir.join(&format!("{name}.pem")),
        dir.join(&format!("{name}.key")),
    );
    assert!(cert.exists() && key.exists(), "{out}");
    (cert, key)
}
