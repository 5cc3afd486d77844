//! `cargo xtask bench tls`: TLS 1.3 handshakes terminated by `lb`, HAProxy
//! and nginx, measured in one run on this machine, as ratios against
//! HAProxy, written to `bench/results/tls.md`.
//!
//! All three serve the same ECDSA P-256 certificate (`lb cert gen`), TLS 1.3
//! only, X25519 only, TLS_AES_128_GCM_SHA256 only, and send the same number
//! of tickets after a full handshake (HAProxy's count, read from the wire,
//! is written into lb's `tickets`). Each peer runs one worker pinned to CPU
//! 0; this program's load client (rustls, one thread, `SLOTS` connections
//! at a time, nonblocking sockets on epoll) and the plain HTTP backend run
//! on CPU 1. Two loads, interleaved, N runs each:
//! - full: every connection a full handshake (the client keeps no ticket);
//! - resumed: every connection slot resumes with the newest ticket its
//!   previous connection received (each counted Full or Resumed by the
//!   client, and the share of resumed ones reported).
//!
//! A connection is done when the handshake is complete and the tickets the
//! peer sends after that kind of handshake have arrived; then the client
//! sends close_notify and closes. Per peer and load, median of N runs
//! (min–max): handshakes/s, the proxy process's CPU time per handshake
//! (utime + stime of the process tree from /proc/PID/stat) and CPU 0's
//! total busy time per handshake (/proc/stat). Every process started here
//! is a child killed by pid when the run ends, also when it fails.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use lb_tests::peers::{
    argv, background_load, busy_pct, cpu_ticks, lb_bin, lb_version, make_cert, nginx_argv,
    port_free, shell_line, shown_path, stat_fields, tree_pids, Cert, CpuTicks, Daemon, Scratch,
    CERT_NAME,
};
use lb_tests::tls::{any_cert, AnyCert};
use lb_tests::{
    harness::pin_to_cpu,
    report::{clk_tck, cpu_and_kernel, first_line, fmt, ratio, summarize},
    results::{self, Comparison, Results, Row},
};
use rustls::{
    client::{ClientSessionStore, Resumption, Tls12ClientSessionValue, Tls13ClientSessionValue},
    crypto::aws_lc_rs as provider,
    pki_types::ServerName,
    ClientConfig, ClientConnection, HandshakeKind, NamedGroup,
};

/// Where the proxies run (one worker each).
const PROXY_CPU: usize = 0;
/// Where the load client and the backend run.
const LOAD_CPU: usize = 1;
/// The plain HTTP backend every peer proxies to (used by the check request
/// only: the load sends no request).
const BACKEND_PORT: u16 = 18181;
/// Connections the load client keeps in flight.
const SLOTS: usize = 32;
/// The certificate's name, also the client's SNI.
/// A connection not done in this is counted failed and replaced.
const CONN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the ticket probe waits for more tickets after the last one.
const TICKET_WAIT: Duration = Duration::from_millis(300);
/// Busy % of a CPU before the run above which the report says it is unreliable.
const BACKGROUND_LIMIT: f64 = 5.0;
/// Tickets the newest-first client store keeps per slot.
const KEEP_TICKETS: usize = 4;

// ---- options and plan ----------------------------------------------------

struct Opts {
    out: PathBuf,
    quick: bool,
    /// `--load PORT [--resumed] [--secs S]`: only the load client, against
    /// a peer started by hand (for profiling it).
    load: Option<(u16, Load, f64)>,
}

fn opts() -> Result<Opts> {
    let mut out = PathBuf::from("bench/results/tls.md");
    let mut quick = false;
    let (mut port, mut load, mut secs) = (None, Load::Full, 10.0);
    let mut args = std::env::args().skip(1);
    let value = |args: &mut std::iter::Skip<std::env::Args>, flag: &str| {
        args.next().with_context(|| format!("{flag} needs a value"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(value(&mut args, "--out")?),
            "--quick" => quick = true,
            "--load" => port = Some(value(&mut args, "--load")?.parse().context("--load PORT")?),
            "--resumed" => load = Load::Resumed,
            "--secs" => secs = value(&mut args, "--secs")?.parse().context("--secs S")?,
            other => bail!(
                "unknown argument `{other}`; allowed: --out PATH, --quick, or --load PORT \
                 [--resumed] [--secs S] (only the load client, against 127.0.0.1:PORT)"
            ),
        }
    }
    Ok(Opts {
        out,
        quick,
        load: port.map(|p| (p, load, secs)),
    })
}

/// How long and how often.
struct Plan {
    runs: usize,
    secs: f64,
    warmup_secs: f64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                runs: 1,
                secs: 1.0,
                warmup_secs: 0.3,
            }
        } else {
            Self {
                runs: 5,
                secs: 4.0,
                warmup_secs: 1.0,
            }
        }
    }
}

/// A TLS-terminating peer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Haproxy,
    Nginx,
    Lb,
    /// lb with `tickets = 1`: what the OpenSSL peers send after a
    /// resumption. Resumed load only; not used for the targets.
    LbOneTicket,
}

impl Target {
    const ALL: [Self; 4] = [Self::Haproxy, Self::Nginx, Self::Lb, Self::LbOneTicket];

    fn name(self) -> &'static str {
        match self {
            Self::Haproxy => "HAProxy",
            Self::Nginx => "nginx",
            Self::Lb => "lb",
            Self::LbOneTicket => "lb, tickets = 1",
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::Haproxy => 18190,
            Self::Nginx => 18191,
            Self::Lb => 18192,
            Self::LbOneTicket => 18193,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The peers measured under a load.
    fn under(load: Load) -> &'static [Self] {
        match load {
            Load::Full => &[Self::Haproxy, Self::Nginx, Self::Lb],
            Load::Resumed => &Self::ALL,
        }
    }
}

/// What the client does on each connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Load {
    /// A full handshake (no ticket offered).
    Full,
    /// Resumes with a ticket from the slot's previous connection.
    Resumed,
}

impl Load {
    const BOTH: [Self; 2] = [Self::Full, Self::Resumed];

    fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Resumed => "resumed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

// ---- the configs -----------------------------------------------------------

fn backend_conf() -> String {
    format!(
        "# The backend: plain HTTP, answers the check request of each peer.\n\
         worker_processes 1;\n\
         worker_cpu_affinity {mask:b};\n\
         pid backend.pid;\n\
         error_log backend.error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n    \
             access_log off;\n    \
             server {{\n        \
                 listen 127.0.0.1:{BACKEND_PORT};\n        \
                 location / {{\n            \
                     default_type text/plain;\n            \
                     return 200 \"ok\";\n        \
                 }}\n    \
             }}\n\
         }}\n",
        mask = 1u32 << LOAD_CPU,
    )
}

fn haproxy_cfg(c: &Cert) -> String {
    format!(
        "global\n    \
             nbthread 1\n    \
             cpu-map 1/1 {PROXY_CPU}\n    \
             maxconn 4096\n    \
             # The same suite, group and version as lb's and nginx's configs.\n    \
             ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256\n    \
             ssl-default-bind-curves X25519\n    \
             ssl-default-bind-options ssl-min-ver TLSv1.3\n    \
             # tune.ssl.*: defaults (session cache of 20000 entries, tickets on).\n\
         \n\
         defaults\n    \
             mode http\n    \
             timeout connect 5s\n    \
             timeout client 60s\n    \
             timeout server 60s\n    \
             timeout http-request 10s\n\
         \n\
         frontend bench\n    \
             # {cert} is the certificate then its key.\n    \
             bind 127.0.0.1:{port} ssl crt {cert}\n    \
             default_backend be\n\
         \n\
         backend be\n    \
             server b1 127.0.0.1:{BACKEND_PORT}\n",
        port = Target::Haproxy.port(),
        cert = c.combined.display(),
    )
}

fn nginx_conf(c: &Cert) -> String {
    format!(
        "worker_processes 1;\n\
         worker_cpu_affinity {mask:b};\n\
         pid nginx.pid;\n\
         error_log nginx.error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    \
             access_log off;\n    \
             # As HAProxy's default: a shared session cache (TLS 1.3 resumes\n    \
             # with tickets, on by default; written here for the record).\n    \
             ssl_session_cache shared:SSL:10m;\n    \
             ssl_session_tickets on;\n    \
             upstream be {{\n        \
                 server 127.0.0.1:{BACKEND_PORT};\n        \
                 keepalive 16;\n    \
             }}\n    \
             server {{\n        \
                 listen 127.0.0.1:{port} ssl;\n        \
                 ssl_certificate {cert};\n        \
                 ssl_certificate_key {key};\n        \
                 ssl_protocols TLSv1.3;\n        \
                 ssl_ecdh_curve X25519;\n        \
                 ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;\n        \
                 location / {{\n            \
                     proxy_pass http://be;\n            \
                     proxy_http_version 1.1;\n            \
                     proxy_set_header Connection \"\";\n        \
                 }}\n    \
             }}\n\
         }}\n",
        mask = 1u32 << PROXY_CPU,
        port = Target::Nginx.port(),
        cert = c.cert.display(),
        key = c.key.display(),
    )
}

fn lb_toml(c: &Cert, t: Target, tickets: usize) -> String {
    format!(
        "[global]\n\
         instance = \"benchtls{n}{pid}\"\n\
         workers = 1\n\
         drainTimeout = \"1s\"\n\
         [xdp]\n\
         mode = \"off\"\n\
         [[frontend]]\n\
         name = \"bench\"\n\
         listen = \"127.0.0.1:{port}\"\n\
         pool = \"be\"\n\
         tls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\
         [frontend.tlsOptions]\n\
         versions = [\"1.3\"]\n\
         groups = [\"X25519\"]\n\
         cipherSuites = [\"TLS13_AES_128_GCM_SHA256\"]\n\
         # {why}\n\
         tickets = {tickets}\n\
         [[pool]]\n\
         name = \"be\"\n\
         profile = \"bench\"\n\
         backends = [\"127.0.0.1:{BACKEND_PORT}\"]\n\
         # No rate or handshake limit in the way (HAProxy and nginx set none):\n\
         # 0 turns each axis off. maxConn and maxSslConn stay at their defaults,\n\
         # far above the {SLOTS} connections of the load.\n\
         [profile.bench]\n\
         maxSslRate = 0\n\
         maxActiveHandshakes = 0\n\
         maxSessRate = 0\n\
         rateLimitSessions = 0\n\
         maxConnRate = 0\n",
        n = if t == Target::LbOneTicket { "1t" } else { "" },
        pid = std::process::id(),
        port = t.port(),
        cert = c.cert.display(),
        key = c.key.display(),
        why = if t == Target::LbOneTicket {
            "As many tickets as HAProxy and nginx send after a resumed handshake."
        } else {
            "As many tickets as HAProxy sends after a full handshake."
        },
    )
}

// ---- child processes -----------------------------------------------------

/// The backend and the peers, stopped in reverse order of starting.
#[derive(Default)]
struct Fleet {
    daemons: Vec<Daemon>,
    /// The pids of each peer's process tree (nginx: master and worker), by
    /// `Target::index`.
    trees: [Vec<u32>; 4],
    /// The command lines, for the report.
    cmdlines: Vec<(String, String)>,
}

impl Fleet {
    fn add(&mut self, what: String, d: Daemon) {
        self.cmdlines.push((what, d.cmdline.clone()));
        self.daemons.push(d);
    }

    fn last(&mut self) -> Result<&mut Daemon> {
        self.daemons.last_mut().context("no daemon started")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        while let Some(d) = self.daemons.pop() {
            drop(d);
        }
    }
}

/// Writes the configs, the certificate, and starts the backend and the
/// peers. `tickets` is what lb sends after a full handshake: found by
/// `probe` on HAProxy, started before lb.
fn start_fleet(dir: &Scratch) -> Result<(Fleet, Probes)> {
    for port in std::iter::once(BACKEND_PORT).chain(Target::ALL.map(Target::port)) {
        port_free(port)?;
    }
    let mut fleet = Fleet::default();
    let (cert, gen) = make_cert(&lb_bin("tls")?, dir)?;
    let gen_line = shell_line(&gen);
    fleet.cmdlines.push(("the certificate".into(), gen_line));

    let conf = dir.write("backend.conf", &backend_conf())?;
    let d = Daemon::spawn("backend", LOAD_CPU, &nginx_argv(dir, &conf, "backend"), dir)?;
    fleet.add("backend (nginx, plain HTTP)".into(), d);
    fleet.last()?.wait_ready(BACKEND_PORT, None)?;

    let cfg = dir.write("haproxy.cfg", &haproxy_cfg(&cert))?;
    let d = Daemon::spawn(
        "haproxy",
        PROXY_CPU,
        &argv(&["/usr/sbin/haproxy", "-f", &cfg.to_string_lossy(), "-db"]),
        dir,
    )?;
    fleet.trees[Target::Haproxy.index()] = vec![d.pid()];
    fleet.add("HAProxy".into(), d);
    fleet.last()?.wait_ready(Target::Haproxy.port(), None)?;

    let conf = dir.write("nginx.conf", &nginx_conf(&cert))?;
    let d = Daemon::spawn("nginx", PROXY_CPU, &nginx_argv(dir, &conf, "nginx"), dir)?;
    let nginx_pid = d.pid();
    fleet.add("nginx".into(), d);
    fleet.last()?.wait_ready(Target::Nginx.port(), None)?;
    fleet.trees[Target::Nginx.index()] = tree_pids(nginx_pid)?;
    ensure!(
        fleet.trees[Target::Nginx.index()].len() >= 2,
        "nginx (pid {nginx_pid}) has no worker process"
    );

    let mut probes = Probes::default();
    for t in [Target::Haproxy, Target::Nginx] {
        probes.0[t.index()] =
            Some(probe(t.port()).with_context(|| format!("probing {}", t.name()))?);
    }
    let tickets = probes.get(Target::Haproxy)?.tickets[Load::Full.index()];
    let after_resumed = probes.get(Target::Haproxy)?.tickets[Load::Resumed.index()];

    let bin = lb_bin("tls")?;
    for (t, name, file, n) in [
        (Target::Lb, "lb", "lb.toml", tickets),
        (
            Target::LbOneTicket,
            "lb-1ticket",
            "lb-1ticket.toml",
            after_resumed,
        ),
    ] {
        let toml = dir.write(file, &lb_toml(&cert, t, n))?;
        let d = Daemon::spawn(
            name,
            PROXY_CPU,
            &argv(&[&bin.to_string_lossy(), "run", "-c", &toml.to_string_lossy()]),
            dir,
        )?;
        fleet.trees[t.index()] = vec![d.pid()];
        fleet.add(t.name().into(), d);
        fleet.last()?.wait_ready(t.port(), Some(" ready"))?;
        probes.0[t.index()] =
            Some(probe(t.port()).with_context(|| format!("probing {}", t.name()))?);
    }
    Ok((fleet, probes))
}

/// One HTTPS request through curl: 200 with the backend's `ok`.
fn check_answers(t: Target) -> Result<()> {
    let url = format!("https://127.0.0.1:{}/", t.port());
    let out = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--tlsv1.3",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
        ])
        .args(["-w", "%{http_code} %{size_download}", &url])
        .output()
        .context("running curl")?;
    let got = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        got == "200 2",
        "{} at {url} did not answer 200 with the backend's 2-byte body: curl printed `{got}` {}",
        t.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

// ---- CPU accounting ------------------------------------------------------

/// utime + stime, in clock ticks, of these processes (all threads each).
fn ticks_of(pids: &[u32]) -> Result<u64> {
    let mut ticks = 0;
    for &p in pids {
        let f = stat_fields(p).with_context(|| format!("reading /proc/{p}/stat"))?;
        // utime is field 14, stime 15.
        ticks += f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    }
    Ok(ticks)
}

/// The counters read at both ends of a measured window.
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    proc: u64,
    cpu0: CpuTicks,
    cpu1: CpuTicks,
}

fn snapshot(pids: &[u32]) -> Result<Snapshot> {
    Ok(Snapshot {
        at: Instant::now(),
        proc: ticks_of(pids)?,
        cpu0: cpu_ticks(PROXY_CPU)?,
        cpu1: cpu_ticks(LOAD_CPU)?,
    })
}

// ---- the TLS client --------------------------------------------------------

/// A connection slot's ticket store: counts every TLS 1.3 ticket received
/// and, when `keep`, hands out the newest (each at most once).
#[derive(Debug, Default)]
struct TicketStore {
    keep: bool,
    received: AtomicUsize,
    tickets: Mutex<VecDeque<Tls13ClientSessionValue>>,
}

impl TicketStore {
    fn new(keep: bool) -> Arc<Self> {
        Arc::new(Self {
            keep,
            ..Self::default()
        })
    }

    fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

impl ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        // The client offers X25519 alone: no hint needed.
        None
    }

    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if self.keep {
            if let Ok(mut t) = self.tickets.lock() {
                t.push_back(value);
                while t.len() > KEEP_TICKETS {
                    t.pop_front();
                }
            }
        }
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        if !self.keep {
            return None;
        }
        self.tickets.lock().ok()?.pop_back()
    }
}

/// A client config: TLS 1.3, X25519, TLS13_AES_128_GCM_SHA256, tickets
/// into `store`.
fn client_config(store: Arc<TicketStore>, verifier: Arc<AnyCert>) -> Result<Arc<ClientConfig>> {
    let mut p = provider::default_provider();
    p.kx_groups = vec![provider::kx_group::X25519];
    p.cipher_suites = vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut c = ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("client protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    c.resumption = Resumption::store(store);
    Ok(Arc::new(c))
}

fn server_name() -> Result<ServerName<'static>> {
    ServerName::try_from(CERT_NAME).context("the server name")
}

/// What one peer negotiates, seen by a blocking client.
#[derive(Clone, Debug)]
struct Probe {
    version: String,
    suite: String,
    group: String,
    scheme: String,
    /// Tickets received after a full and after a resumed handshake (waiting
    /// `TICKET_WAIT` after the last one).
    tickets: [usize; 2],
    /// Whether the second connection resumed.
    resumed: bool,
}

#[derive(Default)]
struct Probes([Option<Probe>; 4]);

impl Probes {
    fn get(&self, t: Target) -> Result<&Probe> {
        self.0[t.index()]
            .as_ref()
            .with_context(|| format!("{} was not probed", t.name()))
    }
}

/// One blocking connection: the handshake, then every ticket that arrives
/// until `TICKET_WAIT` passes without one; returns the connection.
fn probe_one(port: u16, config: &Arc<ClientConfig>) -> Result<ClientConnection> {
    let mut sock = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = ClientConnection::new(Arc::clone(config), server_name()?)?;
    while tls.is_handshaking() {
        tls.complete_io(&mut sock).context("the handshake")?;
    }
    while tls.wants_write() {
        tls.write_tls(&mut sock)?;
    }
    sock.set_read_timeout(Some(TICKET_WAIT))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tls.read_tls(&mut sock) {
            Ok(0) => break,
            Ok(_) => {
                tls.process_new_packets()?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e).context("reading tickets"),
        }
    }
    tls.send_close_notify();
    let _ = tls.write_tls(&mut sock);
    Ok(tls)
}

/// A full handshake with the signature checked, then a resumption with its
/// ticket: what the peer negotiates and how many tickets it sends.
fn probe(port: u16) -> Result<Probe> {
    let store = TicketStore::new(true);
    let verifier = any_cert(true);
    let config = client_config(Arc::clone(&store), Arc::clone(&verifier))?;
    let first = probe_one(port, &config)?;
    let after_full = store.received();
    ensure!(
        first.handshake_kind() == Some(HandshakeKind::Full),
        "the first handshake was {:?}, not a full one without HelloRetryRequest",
        first.handshake_kind()
    );
    let second = probe_one(port, &config)?;
    let after_resumed = store.received() - after_full;
    let scheme = verifier
        .scheme()
        .map_or_else(|| "none".into(), |s| format!("{s:?}"));
    Ok(Probe {
        version: first
            .protocol_version()
            .map_or_else(|| "none".into(), |v| format!("{v:?}")),
        suite: first
            .negotiated_cipher_suite()
            .map_or_else(|| "none".into(), |s| format!("{:?}", s.suite())),
        group: first
            .negotiated_key_exchange_group()
            .map_or_else(|| "none".into(), |g| format!("{:?}", g.name())),
        scheme,
        tickets: [after_full, after_resumed],
        resumed: second.handshake_kind() == Some(HandshakeKind::Resumed),
    })
}

// ---- the load client -------------------------------------------------------

/// A syscall's fd result as an owned fd.
fn owned_fd(fd: i32, what: &str) -> Result<OwnedFd> {
    ensure!(fd >= 0, "{what}: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A nonblocking TCP connect to 127.0.0.1:`port` (usually in progress
/// when this returns).
fn connect_nonblocking(port: u16) -> Result<TcpStream> {
    // SAFETY: a plain fd-creating syscall.
    let fd = owned_fd(
        unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        },
        "socket",
    )?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: addr is a valid sockaddr_in of the size given.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_in>())?,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        ensure!(
            e.raw_os_error() == Some(libc::EINPROGRESS),
            "connecting to 127.0.0.1:{port}: {e}"
        );
    }
    let s = TcpStream::from(fd);
    s.set_nodelay(true)?;
    Ok(s)
}

/// epoll, edge-triggered.
struct Poller {
    ep: OwnedFd,
}

impl Poller {
    fn new() -> Result<Self> {
        // SAFETY: a plain fd-creating syscall.
        let ep = owned_fd(
            unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
            "epoll_create1",
        )?;
        Ok(Self { ep })
    }

    /// Watches `fd` for input, output and hang-up, edge-triggered. Closing
    /// the fd removes it.
    fn add(&self, fd: i32, token: u64) -> Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: valid fds and event.
        let rc =
            unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut ev) };
        ensure!(rc == 0, "epoll_ctl: {}", std::io::Error::last_os_error());
        Ok(())
    }

    /// Waits up to `ms` for events; the tokens that are ready.
    fn wait(&self, ms: i32, out: &mut Vec<u64>) -> Result<()> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: evs has room for 64 events.
        let n = unsafe { libc::epoll_wait(self.ep.as_raw_fd(), evs.as_mut_ptr(), 64, ms) };
        out.clear();
        if n < 0 {
            let e = std::io::Error::last_os_error();
            ensure!(
                e.kind() == std::io::ErrorKind::Interrupted,
                "epoll_wait: {e}"
            );
            return Ok(());
        }
        out.extend(evs[..usize::try_from(n)?].iter().map(|ev| ev.u64));
        Ok(())
    }
}

/// One connection in flight.
struct Conn {
    sock: TcpStream,
    tls: ClientConnection,
    /// The store's ticket count when it started.
    tickets_before: usize,
    started: Instant,
}

/// A connection slot: its own config and ticket store, so a resumption
/// uses a ticket from this slot's previous connection.
struct Slot {
    config: Arc<ClientConfig>,
    store: Arc<TicketStore>,
    conn: Option<Conn>,
}

/// How a connection ended.
enum Outcome {
    /// Still going.
    Pending,
    /// Handshake and tickets done.
    Done(HandshakeKind),
}

impl Slot {
    fn start(&mut self, port: u16, poller: &Poller, token: u64) -> Result<()> {
        let sock = connect_nonblocking(port)?;
        poller.add(sock.as_raw_fd(), token)?;
        let tls = ClientConnection::new(Arc::clone(&self.config), server_name()?)?;
        self.conn = Some(Conn {
            sock,
            tls,
            tickets_before: self.store.received(),
            started: Instant::now(),
        });
        Ok(())
    }

    /// Moves the connection on as far as the socket allows. `want` is the
    /// number of tickets the peer sends after a full and after a resumed
    /// handshake.
    fn drive(&mut self, want: [usize; 2]) -> Result<Outcome> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(Outcome::Pending);
        };
        loop {
            while c.tls.wants_write() {
                match c.tls.write_tls(&mut c.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e).context("writing"),
                }
            }
            if !c.tls.is_handshaking() && !c.tls.wants_write() {
                let kind = c.tls.handshake_kind().context("no handshake kind")?;
                let got = self.store.received() - c.tickets_before;
                let need = want[usize::from(kind == HandshakeKind::Resumed)];
                if got >= need {
                    c.tls.send_close_notify();
                    let _ = c.tls.write_tls(&mut c.sock);
                    self.conn = None;
                    return Ok(Outcome::Done(kind));
                }
            }
            match c.tls.read_tls(&mut c.sock) {
                Ok(0) => bail!(
                    "the peer closed the connection {}",
                    if c.tls.is_handshaking() {
                        "during the handshake".to_owned()
                    } else {
                        format!(
                            "after {} of the tickets expected",
                            self.store.received() - c.tickets_before
                        )
                    }
                ),
                Ok(_) => {
                    c.tls.process_new_packets().context("TLS")?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(Outcome::Pending)
                }
                Err(e) => return Err(e).context("reading"),
            }
        }
    }
}

/// Failed connections: how many, and the first one's error.
#[derive(Default)]
struct Errors {
    n: u64,
    first: Option<String>,
}

impl Errors {
    fn add(&mut self, e: anyhow::Error) {
        self.n += 1;
        self.first.get_or_insert_with(|| format!("{e:#}"));
    }
}

/// What one load run measured.
struct LoadRun {
    /// Handshakes completed in the window.
    handshakes: u64,
    resumed: u64,
    per_s: f64,
    errors: u64,
    first_error: Option<String>,
    proc_us: f64,
    cpu0_us: f64,
    cpu0_softirq_us: f64,
    cpu0_pct: f64,
    cpu1_pct: f64,
    /// CPU 0 busy time outside the peer's process, in % of the window:
    /// other processes on the peer's CPU (or interrupt work while the peer
    /// was not running; softirq work done in the peer's system calls is
    /// counted in its stime here).
    cpu0_other_pct: f64,
}

/// Runs `load` against `port` from this thread with `SLOTS` connections:
/// `warmup` unrecorded (resumed: every slot gets its first ticket there),
/// then `secs` measured, then the connections in flight finish (at most
/// `CONN_TIMEOUT`). `pids`: the peer's processes, for its CPU time.
fn run_load(
    port: u16,
    load: Load,
    want: [usize; 2],
    warmup: f64,
    secs: f64,
    pids: &[u32],
) -> Result<LoadRun> {
    let poller = Poller::new()?;
    let mut slots = Vec::with_capacity(SLOTS);
    for _ in 0..SLOTS {
        let store = TicketStore::new(load == Load::Resumed);
        let config = client_config(Arc::clone(&store), any_cert(false))?;
        slots.push(Slot {
            config,
            store,
            conn: None,
        });
    }
    let t0 = Instant::now();
    let start_at = t0 + Duration::from_secs_f64(warmup);
    let end_at = start_at + Duration::from_secs_f64(secs);
    let give_up = end_at + CONN_TIMEOUT + Duration::from_secs(1);
    let (mut before, mut after) = (None::<Snapshot>, None::<Snapshot>);
    let (mut handshakes, mut resumed) = (0u64, 0u64);
    let mut errs = Errors::default();
    let mut ready = Vec::new();
    loop {
        let now = Instant::now();
        if before.is_none() && now >= start_at {
            before = Some(snapshot(pids)?);
        }
        if before.is_some() && after.is_none() && now >= end_at {
            after = Some(snapshot(pids)?);
        }
        let stopping = after.is_some();
        if stopping && slots.iter().all(|s| s.conn.is_none()) {
            break;
        }
        ensure!(
            now < give_up,
            "connections to 127.0.0.1:{port} still open {} s after the end",
            (give_up - end_at).as_secs()
        );
        ensure!(
            errs.n <= 1000 || handshakes * 10 > errs.n,
            "127.0.0.1:{port}: {} failed connections, {handshakes} handshakes; first: {}",
            errs.n,
            errs.first.unwrap_or_default()
        );
        // Connections past their time fail; idle slots start a connection.
        let mut start_failed = false;
        for (i, s) in slots.iter_mut().enumerate() {
            if s.conn
                .as_ref()
                .is_some_and(|c| now - c.started > CONN_TIMEOUT)
            {
                s.conn = None;
                errs.add(anyhow::anyhow!(
                    "a connection not done in {} s",
                    CONN_TIMEOUT.as_secs()
                ));
            }
            if s.conn.is_none() && !stopping {
                if let Err(e) = s.start(port, &poller, u64::try_from(i)?) {
                    errs.add(e);
                    start_failed = true;
                }
            }
        }
        if start_failed {
            // Do not spin on a peer that refuses connections.
            std::thread::sleep(Duration::from_millis(10));
        }
        poller.wait(10, &mut ready)?;
        let counting = before.is_some() && after.is_none();
        for &token in &ready {
            let s = &mut slots[usize::try_from(token)?];
            match s.drive(want) {
                Ok(Outcome::Pending) => continue,
                Ok(Outcome::Done(kind)) => {
                    if counting {
                        handshakes += 1;
                        resumed += u64::from(kind == HandshakeKind::Resumed);
                    }
                }
                Err(e) => {
                    s.conn = None;
                    errs.add(e);
                }
            }
            if !stopping {
                if let Err(e) = s.start(port, &poller, token) {
                    errs.add(e);
                }
            }
        }
    }
    let (Some(a), Some(b)) = (before, after) else {
        bail!("the run ended before its window");
    };
    ensure!(
        handshakes > 0,
        "no handshake completed at 127.0.0.1:{port}: {}",
        errs.first.unwrap_or_default()
    );
    ensure!(
        errs.n * 100 <= handshakes,
        "127.0.0.1:{port}: {} failed connections against {handshakes} handshakes; first: {}",
        errs.n,
        errs.first.unwrap_or_default()
    );
    let us_per = |ticks: u64| ticks as f64 / clk_tck() * 1e6 / handshakes as f64;
    Ok(LoadRun {
        handshakes,
        resumed,
        per_s: handshakes as f64 / (b.at - a.at).as_secs_f64(),
        errors: errs.n,
        first_error: errs.first,
        proc_us: us_per(b.proc.saturating_sub(a.proc)),
        cpu0_us: us_per(b.cpu0.busy - a.cpu0.busy),
        cpu0_softirq_us: us_per(b.cpu0.softirq - a.cpu0.softirq),
        cpu0_pct: busy_pct(a.cpu0, b.cpu0),
        cpu1_pct: busy_pct(a.cpu1, b.cpu1),
        cpu0_other_pct: 100.0
            * (b.cpu0.busy - a.cpu0.busy).saturating_sub(b.proc.saturating_sub(a.proc)) as f64
            / (b.cpu0.total - a.cpu0.total).max(1) as f64,
    })
}

// ---- summaries -----------------------------------------------------------

/// Everything measured for one target under one load, one entry per run.
#[derive(Default)]
struct Samples {
    per_s: Vec<f64>,
    handshakes: u64,
    resumed: u64,
    errors: u64,
    first_error: Option<String>,
    proc_us: Vec<f64>,
    cpu0_us: Vec<f64>,
    cpu0_softirq_us: Vec<f64>,
    cpu0_pct: Vec<f64>,
    cpu1_pct: Vec<f64>,
    cpu0_other_pct: Vec<f64>,
}

impl Samples {
    fn add(&mut self, r: LoadRun) {
        self.per_s.push(r.per_s);
        self.handshakes += r.handshakes;
        self.resumed += r.resumed;
        self.errors += r.errors;
        if self.first_error.is_none() {
            self.first_error = r.first_error;
        }
        self.proc_us.push(r.proc_us);
        self.cpu0_us.push(r.cpu0_us);
        self.cpu0_softirq_us.push(r.cpu0_softirq_us);
        self.cpu0_pct.push(r.cpu0_pct);
        self.cpu1_pct.push(r.cpu1_pct);
        self.cpu0_other_pct.push(r.cpu0_other_pct);
    }

    fn resumed_pct(&self) -> f64 {
        100.0 * self.resumed as f64 / self.handshakes.max(1) as f64
    }
}

fn med(v: &[f64]) -> f64 {
    summarize(v.to_vec()).median
}

/// The order of round `r`: rotated, so no target always runs first.
fn round_order(targets: &[Target], r: usize) -> Vec<Target> {
    let mut t = targets.to_vec();
    let n = t.len();
    t.rotate_left(r % n);
    t
}

/// Samples by load, then target.
type AllSamples = [[Samples; 4]; 2];

// ---- the report ----------------------------------------------------------

/// The first line of a command's output (stdout, then stderr) holding
/// `needle`, trimmed; `unknown` when none does.
fn line_with(cmd: &str, args: &[&str], needle: &str) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let t = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            t.lines()
                .find(|l| l.contains(needle))
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A package's version in the workspace's Cargo.lock.
fn locked_version(name: &str) -> String {
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let head = format!("name = \"{name}\"\n");
    text.find(&head)
        .and_then(|i| text[i + head.len()..].lines().next())
        .and_then(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or("unknown")
        .to_owned()
}

fn machine() -> String {
    format!(
        "{}- HAProxy: {} ({})\n- nginx: {} ({})\n- lb: {}, rustls {} on aws-lc-rs {}\n\
         - load client: this program, rustls {} on aws-lc-rs {}\n- date: {}\n",
        cpu_and_kernel(),
        first_line("/usr/sbin/haproxy", &["-v"]),
        line_with("/usr/sbin/haproxy", &["-vv"], "Running on OpenSSL"),
        first_line("/usr/sbin/nginx", &["-v"]),
        line_with("/usr/sbin/nginx", &["-V"], "built with OpenSSL"),
        lb_version(),
        locked_version("rustls"),
        locked_version("aws-lc-rs"),
        locked_version("rustls"),
        locked_version("aws-lc-rs"),
        first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}

struct Report<'a> {
    quick: bool,
    plan: &'a Plan,
    samples: &'a AllSamples,
    probes: &'a Probes,
    fleet_cmds: &'a [(String, String)],
    configs_dir: &'a Path,
    elapsed: Duration,
    /// CPU 0 and CPU 1 busy % before the run (see `background_load`).
    background: [f64; 2],
    /// The machine description (see `machine`).
    machine: &'a str,
}

impl Report<'_> {
    fn s(&self, l: Load, t: Target) -> &Samples {
        &self.samples[l.index()][t.index()]
    }

    fn tickets(&self, t: Target, l: Load) -> String {
        self.probes
            .get(t)
            .map_or_else(|_| "?".into(), |p| p.tickets[l.index()].to_string())
    }

    fn header(&self, md: &mut String) {
        let p = self.plan;
        let _ = writeln!(md, "# TLS handshake benchmark: lb, HAProxy, nginx\n");
        let _ = writeln!(
            md,
            "Written by `cargo xtask bench tls{}` in {:.0} s. TLS 1.3 handshakes terminated by \
             each peer with one worker pinned to CPU {PROXY_CPU}; this program's load client \
             and the plain HTTP backend on CPU {LOAD_CPU}. Same ECDSA P-256 certificate, \
             X25519 only, TLS_AES_128_GCM_SHA256 only, the same number of tickets after a full \
             handshake. Every figure is the median of {} runs of {} s, range in brackets; \
             ratios are against HAProxy in the same run. Runs are interleaved (the order \
             rotates each round, full and resumed loads alternate).\n",
            if self.quick { " --quick" } else { "" },
            self.elapsed.as_secs_f64(),
            p.runs,
            p.secs
        );
        if self.quick {
            let _ = writeln!(
                md,
                "**Quick run: too short to read anything into; it only proves the harness \
                 works.**\n"
            );
        }
        let _ = writeln!(md, "## Machine\n\n{}", self.machine);
        let [b0, b1] = self.background;
        let _ = writeln!(
            md,
            "Before the run, with nothing of this benchmark started, CPU {PROXY_CPU} was \
             {b0:.0}% and CPU {LOAD_CPU} {b1:.0}% busy{}\n",
            if b0.max(b1) > BACKGROUND_LIMIT {
                ": **other processes were using the CPUs, so these figures are unreliable**"
            } else {
                " (a quiet machine)."
            }
        );
    }

    fn findings(&self, md: &mut String) {
        let line = |l: Load| {
            let (h, n, lb) = (
                self.s(l, Target::Haproxy),
                self.s(l, Target::Nginx),
                self.s(l, Target::Lb),
            );
            let r = med(&lb.proc_us) / med(&h.proc_us);
            let met = r <= 0.6;
            (
                format!(
                    "**{} handshakes**: lb completed {:.0}/s, HAProxy {:.0}/s, nginx {:.0}/s. \
                     lb's process spent {:.1} µs of CPU per handshake, HAProxy {:.1} µs, nginx \
                     {:.1} µs: lb = {r:.2}× HAProxy ({} nginx), so the target (≤ 0.6× \
                     HAProxy) is **{}**. All of CPU {PROXY_CPU} (the kernel's TCP work too): \
                     lb {:.1} µs = {} HAProxy's {:.1} µs.",
                    match l {
                        Load::Full => "Full",
                        Load::Resumed => "Resumed",
                    },
                    med(&lb.per_s),
                    med(&h.per_s),
                    med(&n.per_s),
                    med(&lb.proc_us),
                    med(&h.proc_us),
                    med(&n.proc_us),
                    ratio(med(&lb.proc_us), med(&n.proc_us)),
                    if met { "met" } else { "not met" },
                    med(&lb.cpu0_us),
                    ratio(med(&lb.cpu0_us), med(&h.cpu0_us)),
                    med(&h.cpu0_us),
                ),
                met,
            )
        };
        let (full, full_met) = line(Load::Full);
        let (res, res_met) = line(Load::Resumed);
        let _ = writeln!(md, "## What this shows\n\n{full}\n\n{res}\n");
        let mut notes = Vec::new();
        notes.push(if full_met && res_met {
            "Both targets are met.".to_owned()
        } else if full_met || res_met {
            format!(
                "One target of two is met ({}).",
                if full_met { "full" } else { "resumed" }
            )
        } else {
            "Neither target is met.".to_owned()
        });
        let one = self.s(Load::Resumed, Target::LbOneTicket);
        let h = self.s(Load::Resumed, Target::Haproxy);
        notes.push(format!(
            "After a resumed handshake HAProxy sends {} ticket(s), nginx {}, lb {} (rustls \
             sends `tickets` after every handshake; OpenSSL at most one after a resumption). \
             With `tickets = {}` lb spent {:.1} µs per resumed handshake ({} HAProxy): that \
             row shows what the extra ticket costs; the target uses the lb row, whose \
             `tickets` matches the full-handshake count.",
            self.tickets(Target::Haproxy, Load::Resumed),
            self.tickets(Target::Nginx, Load::Resumed),
            self.tickets(Target::Lb, Load::Resumed),
            self.tickets(Target::LbOneTicket, Load::Full),
            med(&one.proc_us),
            ratio(med(&one.proc_us), med(&h.proc_us)),
        ));
        let not_all_resumed: Vec<String> = Target::ALL
            .iter()
            .map(|&t| (t, self.s(Load::Resumed, t)))
            .filter(|(_, s)| s.handshakes > 0 && s.resumed < s.handshakes)
            .map(|(t, s)| format!("{} {:.2}%", t.name(), s.resumed_pct()))
            .collect();
        if not_all_resumed.is_empty() {
            notes.push(
                "Every handshake of the resumed load resumed (counted by the client).".into(),
            );
        } else {
            notes.push(format!(
                "**Not every handshake of the resumed load resumed** (resumed share: {}); the \
                 others were full handshakes, counted in the same per-handshake figures.",
                not_all_resumed.join(", ")
            ));
        }
        let client_bound: Vec<String> = Load::BOTH
            .iter()
            .flat_map(|&l| Target::under(l).iter().map(move |&t| (l, t)))
            .filter(|&(l, t)| med(&self.s(l, t).cpu0_pct) < 90.0)
            .map(|(l, t)| {
                format!(
                    "{} {} (CPU {PROXY_CPU} {:.0}%, CPU {LOAD_CPU} {:.0}%)",
                    t.name(),
                    l.name(),
                    med(&self.s(l, t).cpu0_pct),
                    med(&self.s(l, t).cpu1_pct)
                )
            })
            .collect();
        if !client_bound.is_empty() {
            notes.push(format!(
                "CPU {PROXY_CPU} was not saturated in: {}. There the load client on CPU \
                 {LOAD_CPU} (which does the client's half of every handshake) set the pace, so \
                 handshakes/s understates that peer; CPU per handshake is the figure that \
                 compares the peers.",
                client_bound.join("; ")
            ));
        }
        let spread = Load::BOTH
            .iter()
            .flat_map(|&l| Target::under(l).iter().map(move |&t| (l, t)))
            .map(|(l, t)| {
                let r = summarize(self.s(l, t).proc_us.clone());
                (r.max - r.min) / r.median * 100.0
            })
            .fold(0.0, f64::max);
        if spread > 15.0 {
            notes.push(format!(
                "CPU per handshake of one peer varied by up to {spread:.0}% between runs (max − \
                 min over median): read the medians and the same-run ratios, not single runs."
            ));
        }
        let other = Load::BOTH
            .iter()
            .flat_map(|&l| Target::under(l).iter().map(move |&t| (l, t)))
            .flat_map(|(l, t)| self.s(l, t).cpu0_other_pct.iter().copied())
            .fold(0.0, f64::max);
        if other > 10.0 {
            notes.push(format!(
                "**In at least one run up to {other:.0}% of CPU {PROXY_CPU}'s time went to \
                 something other than the peer's process: other processes ran on the peer's \
                 CPU, so the CPU {PROXY_CPU} totals and handshakes/s of that run are \
                 skewed**; the process figures are the peer's own."
            ));
        }
        if self.quick {
            notes.push("This was a quick run: its numbers are noise.".into());
        }
        let _ = writeln!(md, "{}\n", notes.join(" "));
    }

    fn negotiated(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## What each peer negotiated\n\n\
             Probed before the runs by a blocking rustls client that verifies the handshake \
             signature: a full handshake, then a resumption with one of its tickets, each \
             followed by a {} ms wait for tickets. The load client then waits, on every \
             connection, for as many tickets as the peer sends after that kind of \
             handshake.\n\n\
             | peer | version | suite | group | signature | tickets after full | tickets after \
             resumed | resumes |\n|---|---|---|---|---|---|---|---|",
            TICKET_WAIT.as_millis()
        );
        for t in Target::ALL {
            if let Ok(p) = self.probes.get(t) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    t.name(),
                    p.version,
                    p.suite,
                    p.group,
                    p.scheme,
                    p.tickets[0],
                    p.tickets[1],
                    if p.resumed { "yes" } else { "**no**" }
                );
            }
        }
        let _ = writeln!(md);
    }

    fn table(&self, md: &mut String, l: Load) {
        let title = match l {
            Load::Full => "Full handshakes",
            Load::Resumed => "Resumed handshakes",
        };
        let what = match l {
            Load::Full => {
                "Every connection a full handshake: the client offers no ticket (it counts the \
                 tickets it receives and drops them)."
            }
            Load::Resumed => {
                "Every connection slot offers the newest ticket its previous connection \
                 received (the first connection of each slot, in the warm-up, is full). \
                 Resumed: share of the measured handshakes that the client saw resumed \
                 (PSK with X25519, psk_dhe_ke)."
            }
        };
        let h = self.s(l, Target::Haproxy);
        let _ = writeln!(
            md,
            "## {title}\n\n{what} Process: utime + stime of the peer's process tree \
             (/proc/PID/stat, all threads; nginx: master and worker) over handshakes \
             completed. CPU {PROXY_CPU} total: all busy time of CPU {PROXY_CPU} (user, system, \
             irq, softirq) over handshakes completed, so the kernel's TCP work shows too. \
             Clock tick: {:.0} ms.\n\n\
             | peer | handshakes/s | vs HAProxy | process µs/handshake | vs HAProxy | CPU \
             {PROXY_CPU} total µs/handshake | vs HAProxy | of which softirq µs | CPU \
             {PROXY_CPU} / CPU {LOAD_CPU} busy % | resumed | failed connections |\n\
             |---|---|---|---|---|---|---|---|---|---|---|",
            1000.0 / clk_tck()
        );
        for &t in Target::under(l) {
            let s = self.s(l, t);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} / {:.0} | {:.2}% | {} of {}{} |",
                t.name(),
                fmt(summarize(s.per_s.clone()), 0),
                ratio(med(&s.per_s), med(&h.per_s)),
                fmt(summarize(s.proc_us.clone()), 1),
                ratio(med(&s.proc_us), med(&h.proc_us)),
                fmt(summarize(s.cpu0_us.clone()), 1),
                ratio(med(&s.cpu0_us), med(&h.cpu0_us)),
                fmt(summarize(s.cpu0_softirq_us.clone()), 1),
                med(&s.cpu0_pct),
                med(&s.cpu1_pct),
                s.resumed_pct(),
                s.errors,
                s.handshakes + s.errors,
                s.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(md);
    }

    fn setup(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Setup\n\n\
             - **Certificate**: one ECDSA P-256 certificate from `lb cert gen --name \
             {CERT_NAME}`, served by all three (HAProxy gets the certificate and key \
             concatenated in one PEM).\n\
             - **Protocol**: TLS 1.3 only, X25519 only, TLS_AES_128_GCM_SHA256 only, on every \
             peer and in the client (HAProxy: `ssl-default-bind-ciphersuites`, \
             `ssl-default-bind-curves`, `ssl-min-ver TLSv1.3`; nginx: `ssl_protocols \
             TLSv1.3`, `ssl_ecdh_curve X25519`, `ssl_conf_command Ciphersuites`; lb: \
             `tlsOptions` `versions`, `groups`, `cipherSuites`).\n\
             - **Tickets**: HAProxy and nginx keep OpenSSL's default, {hf} ticket(s) after a \
             full handshake (neither has a setting for it); lb's `tickets` is set to the \
             count read from HAProxy at start, {lf}. After a resumption OpenSSL sends {hr}, \
             rustls `tickets` again: the `lb, tickets = 1` row isolates that.\n\
             - **Session cache**: HAProxy's default (`tune.ssl.cachesize` 20000), nginx \
             `ssl_session_cache shared:SSL:10m`, lb's default `sessionCache` (20000, TLS \
             1.2 session ids only). TLS 1.3 resumes with tickets in all three (each with \
             its own random ticket keys; lb without `ticketKeys`).\n\
             - **Limits**: lb's pool profile sets `maxSslRate`, `maxActiveHandshakes`, \
             `maxSessRate`, `rateLimitSessions` and `maxConnRate` to 0 (off), so no limit \
             paces or refuses the load; `maxConn` and `maxSslConn` stay at their defaults \
             (20000, 5000), far above the {SLOTS} connections in flight. lb runs with `[xdp] \
             mode = \"off\"` and one worker. HAProxy and nginx set no limit.\n\
             - **What a connection is**: the client connects, does the handshake, waits for \
             the tickets the peer sends after that kind of handshake, sends close_notify and \
             closes (the client closes first). No HTTP request is sent, so the backend is \
             idle during the runs (it answers the one check request sent through each peer \
             with curl before the runs).\n\
             - **Load client**: this program, pinned to CPU {LOAD_CPU}: one thread, {SLOTS} \
             connections in flight on nonblocking sockets and edge-triggered epoll, rustls \
             on aws-lc-rs with the same protocol settings, SNI `{CERT_NAME}`, certificate \
             accepted without a chain check and the server's handshake signature not \
             verified during the runs (the probe verifies it): that is client work, and \
             CPU {LOAD_CPU} is the bottleneck otherwise. A connection not done in {} s \
             counts as failed. Each run: {} s of unrecorded warm-up (in the resumed load \
             every slot gets its first ticket there), then {} s counted: handshakes \
             completed in the window, CPU counters read at both ends of it.\n",
            CONN_TIMEOUT.as_secs(),
            self.plan.warmup_secs,
            self.plan.secs,
            hf = self.tickets(Target::Haproxy, Load::Full),
            lf = self.tickets(Target::Lb, Load::Full),
            hr = self.tickets(Target::Haproxy, Load::Resumed),
        );
    }

    fn commands(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Commands\n\n\
             The configs are in `{cfg}/` (`backend-nginx.conf` is the backend; \
             `lb-1ticket.toml` is the `lb, tickets = 1` peer). They name the run's temporary \
             directory, removed afterwards, for the certificate files; to rerun by hand, \
             generate a certificate with `lb cert gen --name {CERT_NAME} --dir DIR`, \
             concatenate `{CERT_NAME}.pem` and `{CERT_NAME}.key` for HAProxy, and edit the \
             paths. Started (each killed by pid at the end):\n\n```",
            cfg = shown_path(self.configs_dir).display(),
        );
        for (what, line) in self.fleet_cmds {
            let _ = writeln!(md, "# {what}\n{line}");
        }
        let _ = writeln!(md, "```\n");
    }

    /// The JSON beside the report: the same medians and ranges as the
    /// tables, the targets as the findings state them.
    fn results(&self) -> Results {
        let mut comparisons = Vec::new();
        let mut targets = Vec::new();
        for l in Load::BOTH {
            let rows = |v: fn(&Samples) -> &Vec<f64>| {
                Target::under(l)
                    .iter()
                    .filter_map(|&t| {
                        let s = summarize(v(self.s(l, t)).clone());
                        (!s.median.is_nan()).then(|| Row::new(t.name(), s))
                    })
                    .collect::<Vec<_>>()
            };
            comparisons.push(Comparison {
                id: format!("tls-{}-cpu", l.name()),
                title: format!(
                    "Process CPU µs per {} TLS 1.3 handshake (utime + stime)",
                    l.name()
                ),
                unit: "µs".into(),
                lower_is_better: true,
                baseline: Some(Target::Haproxy.name().into()),
                rows: rows(|s| &s.proc_us),
            });
            comparisons.push(Comparison {
                id: format!("tls-{}-rate", l.name()),
                title: format!(
                    "{} TLS 1.3 handshakes/s ({SLOTS} connections in flight)",
                    match l {
                        Load::Full => "Full",
                        Load::Resumed => "Resumed",
                    }
                ),
                unit: "handshakes/s".into(),
                lower_is_better: false,
                baseline: Some(Target::Haproxy.name().into()),
                rows: rows(|s| &s.per_s),
            });
            let (h, lb) = (self.s(l, Target::Haproxy), self.s(l, Target::Lb));
            let r = med(&lb.proc_us) / med(&h.proc_us);
            targets.push(results::Target {
                what: format!("Process CPU per {} TLS handshake vs HAProxy", l.name()),
                bound: "≤ 0.6×".into(),
                measured: format!(
                    "{r:.2}× (lb {:.1} µs, HAProxy {:.1} µs)",
                    med(&lb.proc_us),
                    med(&h.proc_us)
                ),
                met: r <= 0.6,
            });
        }
        // The rate charts after both CPU charts.
        comparisons.sort_by_key(|c| c.id.ends_with("-rate"));
        Results {
            bench: "tls".into(),
            title: "TLS handshake benchmark: lb, HAProxy, nginx".into(),
            quick: self.quick,
            runs: self.plan.runs,
            comparisons,
            targets,
            // The machine's `- what: version` lines, without the CPU and the
            // kernel (the combined report describes the machine) and the date.
            versions: self
                .machine
                .lines()
                .filter_map(|l| l.strip_prefix("- ")?.split_once(": "))
                .filter(|(what, _)| !matches!(*what, "CPU" | "kernel" | "date"))
                .map(|(what, v)| (what.to_owned(), v.to_owned()))
                .collect(),
            commands: self
                .fleet_cmds
                .iter()
                .map(|(_, line)| line.clone())
                .collect(),
        }
    }

    fn render(&self) -> String {
        let mut md = String::new();
        self.header(&mut md);
        self.findings(&mut md);
        self.table(&mut md, Load::Full);
        self.table(&mut md, Load::Resumed);
        self.negotiated(&mut md);
        self.setup(&mut md);
        self.commands(&mut md);
        md
    }
}

/// Copies the generated configs beside the report.
fn copy_configs(dir: &Scratch, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for (from, name) in [
        ("haproxy.cfg", "haproxy.cfg"),
        ("nginx.conf", "nginx.conf"),
        ("lb.toml", "lb.toml"),
        ("lb-1ticket.toml", "lb-1ticket.toml"),
        ("backend.conf", "backend-nginx.conf"),
    ] {
        std::fs::copy(dir.0.join(from), to.join(name))
            .with_context(|| format!("copying {from} to {}", to.display()))?;
    }
    Ok(())
}

// ---- main ----------------------------------------------------------------

fn measure(fleet: &Fleet, probes: &Probes, plan: &Plan) -> Result<AllSamples> {
    let mut samples: AllSamples = Default::default();
    let one = |t: Target, l: Load, warmup: f64, secs: f64| {
        let p = probes.get(t)?;
        run_load(
            t.port(),
            l,
            p.tickets,
            warmup,
            secs,
            &fleet.trees[t.index()],
        )
        .with_context(|| format!("{} handshakes through {}", l.name(), t.name()))
    };
    eprintln!(
        "bench tls: warm-up, {} s per peer and load",
        plan.warmup_secs
    );
    for l in Load::BOTH {
        for &t in Target::under(l) {
            one(t, l, 0.0, plan.warmup_secs)?;
        }
    }
    for r in 0..plan.runs {
        for l in Load::BOTH {
            for t in round_order(Target::under(l), r) {
                let run = one(t, l, plan.warmup_secs, plan.secs)?;
                eprintln!(
                    "bench tls: run {}/{}, {}, {}: {:.0} handshakes/s, {:.1} µs CPU each \
                     (CPU 0 {:.0}%, of which outside the peer {:.0}%; CPU 1 {:.0}%), {} \
                     resumed of {}",
                    r + 1,
                    plan.runs,
                    l.name(),
                    t.name(),
                    run.per_s,
                    run.proc_us,
                    run.cpu0_pct,
                    run.cpu0_other_pct,
                    run.cpu1_pct,
                    run.resumed,
                    run.handshakes
                );
                samples[l.index()][t.index()].add(run);
            }
        }
    }
    Ok(samples)
}

/// `--load`: the probe, then the load client alone for `secs`.
fn load_only(port: u16, load: Load, secs: f64) -> Result<()> {
    let p = probe(port).with_context(|| format!("probing 127.0.0.1:{port}"))?;
    println!("127.0.0.1:{port}: {p:?}");
    let r = run_load(port, load, p.tickets, 0.5, secs, &[])?;
    println!(
        "{} handshakes: {:.0}/s, {} resumed of {}, {} failed{} (CPU 0 {:.0}%, CPU 1 {:.0}%)",
        load.name(),
        r.per_s,
        r.resumed,
        r.handshakes,
        r.errors,
        r.first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        r.cpu0_pct,
        r.cpu1_pct
    );
    Ok(())
}

fn main() -> Result<()> {
    let o = opts()?;
    let started = Instant::now();
    // Everything this program runs or starts inherits CPU 1, unless started
    // through `taskset -c 0`.
    pin_to_cpu(LOAD_CPU).context("pinning to CPU 1 (this needs 2 CPUs)")?;
    if let Some((port, load, secs)) = o.load {
        return load_only(port, load, secs);
    }
    for tool in ["/usr/sbin/haproxy", "/usr/sbin/nginx", "/usr/bin/curl"] {
        ensure!(
            Path::new(tool).exists(),
            "{tool} is missing: run `cargo xtask setup`"
        );
    }
    let plan = Plan::new(o.quick);
    let background = background_load([PROXY_CPU, LOAD_CPU])?;
    if background[0].max(background[1]) > BACKGROUND_LIMIT {
        eprintln!(
            "bench tls: WARNING: CPU {PROXY_CPU} is {:.0}% and CPU {LOAD_CPU} {:.0}% busy before \
             the run: other processes will skew the figures",
            background[0], background[1]
        );
    }
    let dir = Scratch::new("lb-bench-tls")?;
    eprintln!(
        "bench tls: starting the backend and peers in {}",
        dir.0.display()
    );
    let (fleet, probes) = start_fleet(&dir)?;
    for t in Target::ALL {
        check_answers(t)?;
    }
    let full = probes.get(Target::Haproxy)?.tickets[Load::Full.index()];
    for t in [Target::Nginx, Target::Lb] {
        let p = probes.get(t)?;
        if p.tickets[Load::Full.index()] != full {
            eprintln!(
                "bench tls: WARNING: {} sends {} tickets after a full handshake, HAProxy {full}",
                t.name(),
                p.tickets[Load::Full.index()]
            );
        }
    }
    let samples = measure(&fleet, &probes, &plan)?;
    let cmds = fleet.cmdlines.clone();
    drop(fleet);

    let out_dir = o
        .out
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let configs_dir = out_dir.join("tls-configs");
    copy_configs(&dir, &configs_dir)?;
    let machine = machine();
    let report = Report {
        quick: o.quick,
        plan: &plan,
        samples: &samples,
        probes: &probes,
        fleet_cmds: &cmds,
        configs_dir: &configs_dir,
        elapsed: started.elapsed(),
        background,
        machine: &machine,
    };
    let md = report.render();
    std::fs::write(&o.out, &md).with_context(|| format!("writing {}", o.out.display()))?;
    results::write(&o.out, &report.results())?;
    print!("{md}");
    eprintln!(
        "bench tls: wrote {} and {}",
        o.out.display(),
        results::json_path(&o.out).display()
    );
    Ok(())
}
