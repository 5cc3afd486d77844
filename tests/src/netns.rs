//! Network namespaces and veth pairs made by a test, removed on drop.
//!
//! Commands run in a namespace through `nsenter --net=...`, which enters only
//! the network namespace: `ip netns exec` would also remount /sys and hide the
//! host's bpffs, where `lb` pins its maps.

use std::process::{Command, Output};

use anyhow::{bail, Context as _, Result};

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

fn sh(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

impl Netns {
    /// Creates `name` with `lo` up.
    ///
    /// # Errors
    /// `ip netns add` failed.
    pub fn new(name: &str) -> Result<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that will run inside the namespace.
    #[must_use]
    pub fn cmd(&self, program: &str) -> Command {
        cmd_in(&self.name, program)
    }

    /// Runs `argv` inside the namespace; fails on a non-zero exit.
    ///
    /// # Errors
    /// The command failed.
    pub fn run(&self, argv: &[&str]) -> Result<Output> {
        let (first, rest) = argv.split_first().context("empty command")?;
        sh(self.cmd(first).args(rest))
    }

    /// Enters this namespace on the calling thread (for sockets made by the
    /// test itself). Use on a thread of its own.
    ///
    /// # Errors
    /// `setns` failed.
    pub fn enter_on_this_thread(&self) -> Result<()> {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        // SAFETY: a valid namespace fd.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns {}: {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A command that will run inside the namespace called `name` (for threads
/// that cannot borrow the [`Netns`] guard).
#[must_use]
pub fn cmd_in(name: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{name}"))
        .arg("--")
        .arg(program);
    c
}

/// Links `a` and `b` with a veth pair: `a_if` in `a`, `b_if` in `b`, both up,
/// each given its addresses (CIDR). Removed with the namespaces.
///
/// # Errors
/// An `ip` command failed.
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_addrs: &[&str],
    b: &Netns,
    b_if: &str,
    b_addrs: &[&str],
) -> Result<()> {
    sh(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]))?;
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            ns.run(&["ip", "addr", "add", addr, "dev", ifname])?;
        }
        ns.run(&["ip", "link", "set", ifname, "up"])?;
    }
    Ok(())
}
