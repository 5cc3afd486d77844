//! Network namespaces and veth pairs made by a test, removed on drop.
//!
//! Commands run in a namespace through `nsenter --net=...`, which enters only
//! the network namespace: `ip netns exec` would also remount /sys and hide the
//! host's bpffs, where `lb` pins its maps. A [`Forward`] lets the host reach
//! a listener inside a namespace.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

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

    /// Whether an XDP program is attached to `iface` in the namespace.
    ///
    /// # Panics
    /// `ip link` failed (no such interface).
    #[must_use]
    pub fn xdp_attached(&self, iface: &str) -> bool {
        let out = self
            .run(&["ip", "-d", "link", "show", "dev", iface])
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }

    /// Runs `argv` inside the namespace; fails on a non-zero exit.
    ///
    /// # Errors
    /// The command failed.
    pub fn run(&self, argv: &[&str]) -> Result<Output> {
        let (first, rest) = argv.split_first().context("empty command")?;
        sh(self.cmd(first).args(rest))
    }
}

/// Moves the calling thread into the namespace called `name` (for sockets
/// made by the test itself). Use on a thread of its own.
///
/// # Errors
/// `setns` failed.
pub fn enter(name: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: a valid namespace fd; affects this thread only.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a new thread inside the namespace `name` and returns its
/// result.
///
/// # Errors
/// `setns` failed, `f` failed, or the thread panicked.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let owned = name.to_owned();
    std::thread::spawn(move || {
        enter(&owned)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {name} panicked"))?
}

/// The usual topology: a client namespace and an lb namespace joined by a
/// veth pair, `<prefix>c<tag>` and `<prefix>l<tag>`. The lb side's interface
/// (where XDP attaches) is `iface`.
pub struct Topology {
    /// The client side.
    pub client: Netns,
    /// The lb side.
    pub lbns: Netns,
    /// The lb side's veth.
    pub iface: String,
    /// The unique tag in every name.
    pub tag: String,
}

impl Topology {
    /// Builds it: `client_addrs` and `lb_addrs` in CIDR form.
    ///
    /// # Errors
    /// An `ip` command failed.
    pub fn new(prefix: &str, client_addrs: &[&str], lb_addrs: &[&str]) -> Result<Self> {
        let tag = crate::unique_tag();
        let client = Netns::new(&format!("{prefix}c{tag}"))?;
        let lbns = Netns::new(&format!("{prefix}l{tag}"))?;
        let iface = format!("vl{tag}");
        veth(
            &client,
            &format!("vc{tag}"),
            client_addrs,
            &lbns,
            &iface,
            lb_addrs,
        )?;
        Ok(Self {
            client,
            lbns,
            iface,
            tag,
        })
    }
}

/// A TCP listener inside a namespace that accepts and closes connections on
/// its own thread until dropped.
pub struct Listener {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU32>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Listener {
    /// Listens on `addr` inside the namespace `ns`; returns once bound.
    ///
    /// # Errors
    /// Entering the namespace or binding failed.
    pub fn spawn(ns: &str, addr: SocketAddr) -> Result<Self> {
        let (stop, accepted) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
        );
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, accepted, ns) = (Arc::clone(&stop), Arc::clone(&accepted), ns.to_owned());
            std::thread::spawn(move || -> Result<()> {
                let bound = enter(&ns).and_then(|()| {
                    let l = TcpListener::bind(addr)?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                });
                let l = match bound {
                    Ok(l) => {
                        let _ = bound_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(format!("{e:#}")));
                        return Err(e);
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    if l.accept().is_ok() {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    } else {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                Ok(())
            })
        };
        match bound_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop,
                accepted,
                thread: Some(thread),
            }),
            Ok(Err(e)) => bail!("listener on {addr} in {ns}: {e}"),
            Err(_) => bail!("listener thread for {addr} in {ns} died"),
        }
    }

    /// Connections accepted so far.
    #[must_use]
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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

/// Connections a [`Forward`] holds open, by number: both sockets of each.
type OpenConns = Arc<std::sync::Mutex<std::collections::BTreeMap<u64, [TcpStream; 2]>>>;

/// A TCP port on this host forwarded into a namespace, so a browser on the
/// host reaches a listener inside it: each accepted connection is joined
/// to `target` as seen from inside the namespace (a thread enters the
/// namespace to connect; the connected socket then works from any thread)
/// and bytes are copied both ways. Stops on drop, closing what is open.
pub struct Forward {
    /// Where it listens, on this host.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    open: OpenConns,
    thread: Option<JoinHandle<()>>,
}

impl Forward {
    /// Listens on the first of `listen` that can be bound, and forwards
    /// each connection to `target` inside the namespace `ns`.
    ///
    /// # Errors
    /// None of `listen` can be bound.
    pub fn start(listen: &[SocketAddr], ns: &str, target: SocketAddr) -> Result<Self> {
        let l = listen
            .iter()
            .find_map(|a| TcpListener::bind(a).ok())
            .with_context(|| format!("binding any of {listen:?}"))?;
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let open = OpenConns::default();
        let thread = {
            let (stop, open, ns) = (Arc::clone(&stop), Arc::clone(&open), ns.to_owned());
            std::thread::spawn(move || {
                let mut next = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((client, _)) => {
                            next += 1;
                            forward_one(next, client, &ns, target, &open);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(Self {
            addr,
            stop,
            open,
            thread: Some(thread),
        })
    }
}

/// Joins `client` to `target` inside `ns` on threads of its own, as
/// connection `id` of `open` while it lasts; a connect that fails closes
/// `client`.
fn forward_one(id: u64, client: TcpStream, ns: &str, target: SocketAddr, open: &OpenConns) {
    let (ns, open) = (ns.to_owned(), Arc::clone(open));
    std::thread::spawn(move || -> Result<()> {
        client.set_nonblocking(false)?;
        enter(&ns)?;
        let server = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        if let Ok(mut o) = open.lock() {
            o.insert(id, [client.try_clone()?, server.try_clone()?]);
        }
        let (mut c_read, mut s_write) = (client.try_clone()?, server.try_clone()?);
        let up = std::thread::spawn(move || {
            let _ = std::io::copy(&mut c_read, &mut s_write);
            let _ = s_write.shutdown(std::net::Shutdown::Write);
        });
        let (mut s_read, mut c_write) = (server, client);
        let _ = std::io::copy(&mut s_read, &mut c_write);
        let _ = c_write.shutdown(std::net::Shutdown::Write);
        let _ = up.join();
        if let Ok(mut o) = open.lock() {
            o.remove(&id);
        }
        Ok(())
    });
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(open) = self.open.lock() {
            for s in open.values().flatten() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}
