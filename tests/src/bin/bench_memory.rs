//! `bench_memory`: memory per idle TLS connection held by `lb`, HAProxy and
//! nginx, measured on this machine in one run, as ratios against HAProxy,
//! written to `bench/results/memory.md` (and `memory.json` beside it).
//!
//! All three serve the same ECDSA P-256 certificate (`lb cert gen`), TLS 1.3
//! only, X25519 only, TLS_AES_128_GCM_SHA256 only, proxy to the same plain
//! HTTP backend (nginx), and have every limit and timeout that could refuse
//! or close 10 000 connections raised or turned off. Each peer runs one
//! worker pinned to CPU 0; this program's client (rustls, one thread,
//! nonblocking sockets on epoll) and the backend run on CPU 1.
//!
//! An idle connection is what an idle keep-alive client costs: a full TLS
//! 1.3 handshake, one `GET /` answered (200, keep-alive), then nothing sent
//! or received while it is held open. A run starts a fresh peer, warms it
//! up (a few such connections opened and closed), reads the resident memory
//! of its process tree (VmRSS of /proc/PID/status, summed over the peer's
//! processes: nginx's master and worker), opens N idle connections, waits a
//! second, reads it again, checks that the peer closed none, and closes
//! them all (RST). Per connection = (after − before) / N, in KiB. N is
//! 10 000, five runs per peer (`--quick`: one run of 1000), interleaved
//! (the order rotates each round). Every process started here is a child
//! killed by pid when its run ends, also when it fails or is interrupted
//! (Ctrl-C), and the temporary directory is removed.
//!
//! `--hold PORT --pid PID` runs the client alone against a peer started by
//! hand: warm-up, N idle connections, the VmRSS of PID's process tree.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use lb_tests::peers::{
    argv, background_load, lb_bin, lb_version, make_cert, nginx_argv, port_free, shell_line,
    shown_path, tree_pids, Cert, Daemon, Scratch, CERT_NAME,
};
use lb_tests::results::{self, Comparison, Results, Row};
use lb_tests::tls::any_cert;
use lb_tests::{
    harness::pin_to_cpu,
    report::{cpu_and_kernel, first_line, fmt, ratio, summarize, Summary},
};
use rustls::{
    client::Resumption, crypto::aws_lc_rs as provider, pki_types::ServerName, ClientConfig,
    ClientConnection,
};

/// Where the peers run (one worker each).
const PEER_CPU: usize = 0;
/// Where the client and the backend run.
const CLIENT_CPU: usize = 1;
/// The plain HTTP backend every peer proxies to.
const BACKEND_PORT: u16 = 18481;
/// The certificate's name, also the client's SNI and Host.
/// Connections the client has between connect and response at once.
const IN_FLIGHT: usize = 64;
/// A connection not idle (answered) this long after its connect failed.
const CONN_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections opened and closed before the first reading.
const WARMUP_CONNS: usize = 16;
/// Wait after the last connection is idle (and after closing them all)
/// before reading the memory.
const SETTLE: Duration = Duration::from_secs(1);
/// Every idle, header and handshake timeout of the peers, in seconds: far
/// longer than a run.
const IDLE_SECS: u32 = 300;
/// The issue's target: lb's memory per idle TLS connection at most this
/// many times HAProxy's.
const TARGET_RATIO: f64 = 0.5;
/// Every peer's fd limit (lb and nginx's master inherit this program's;
/// HAProxy's `ulimit-n`, nginx's `worker_rlimit_nofile`).
const NOFILE: u32 = 20_000;
/// HAProxy's `maxconn`, nginx's `worker_connections`: room for 10 000
/// client connections and the backend ones, within `NOFILE`.
const MAXCONN: u32 = 12_000;
/// Busy % of a CPU before the run above which the report says it is unreliable.
const BACKGROUND_LIMIT: f64 = 5.0;
/// The one request of every connection.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: bench_memory\r\n\r\n";

/// Set by Ctrl-C: the run stops at the next check and everything it
/// started is stopped and removed on the way out.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails once Ctrl-C was pressed.
fn not_interrupted() -> Result<()> {
    ensure!(!INTERRUPTED.load(Ordering::Relaxed), "interrupted");
    Ok(())
}

// ---- options and plan ----------------------------------------------------

struct Opts {
    out: PathBuf,
    quick: bool,
    conns: Option<usize>,
    runs: Option<usize>,
    /// `--hold PORT --pid PID`: only the client, against a peer started by
    /// hand, measuring the process tree of PID.
    hold: Option<(u16, u32)>,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        out: PathBuf::from("bench/results/memory.md"),
        quick: false,
        conns: None,
        runs: None,
        hold: None,
    };
    let (mut port, mut pid) = (None, None);
    let mut args = std::env::args().skip(1);
    let value = |args: &mut std::iter::Skip<std::env::Args>, flag: &str| {
        args.next().with_context(|| format!("{flag} needs a value"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => o.out = PathBuf::from(value(&mut args, "--out")?),
            "--quick" => o.quick = true,
            "--conns" => o.conns = Some(value(&mut args, "--conns")?.parse().context("--conns N")?),
            "--runs" => o.runs = Some(value(&mut args, "--runs")?.parse().context("--runs N")?),
            "--hold" => port = Some(value(&mut args, "--hold")?.parse().context("--hold PORT")?),
            "--pid" => pid = Some(value(&mut args, "--pid")?.parse().context("--pid PID")?),
            other => bail!(
                "unknown argument `{other}`; allowed: --out PATH, --quick, --conns N, --runs N, \
                 or --hold PORT --pid PID [--conns N] (only the client, against a peer on \
                 127.0.0.1:PORT started by hand, measuring the process tree of PID)"
            ),
        }
    }
    match (port, pid) {
        (Some(port), Some(pid)) => o.hold = Some((port, pid)),
        (None, None) => {}
        _ => bail!("--hold PORT and --pid PID go together"),
    }
    if let Some(n) = o.conns {
        ensure!(n > 0, "--conns must be at least 1");
    }
    if let Some(n) = o.runs {
        ensure!(n > 0, "--runs must be at least 1");
    }
    Ok(o)
}

/// How often and how many.
struct Plan {
    runs: usize,
    conns: usize,
}

impl Plan {
    fn new(o: &Opts) -> Self {
        let (runs, conns) = if o.quick { (1, 1000) } else { (5, 10_000) };
        Self {
            runs: o.runs.unwrap_or(runs),
            conns: o.conns.unwrap_or(conns),
        }
    }
}

/// A TLS-terminating peer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Lb,
    Haproxy,
    Nginx,
}

impl Peer {
    /// In the order of the report's rows.
    const ALL: [Self; 3] = [Self::Lb, Self::Haproxy, Self::Nginx];

    fn name(self) -> &'static str {
        match self {
            Self::Lb => "lb",
            Self::Haproxy => "HAProxy",
            Self::Nginx => "nginx",
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::Lb => 18490,
            Self::Haproxy => 18491,
            Self::Nginx => 18492,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Its config file in the scratch directory (and beside the report).
    fn config(self) -> &'static str {
        match self {
            Self::Lb => "lb.toml",
            Self::Haproxy => "haproxy.cfg",
            Self::Nginx => "nginx.conf",
        }
    }
}

// ---- the configs -----------------------------------------------------------

fn backend_conf() -> String {
    format!(
        "# The backend: plain HTTP, answers every peer's one request per connection.\n\
         worker_processes 1;\n\
         worker_cpu_affinity {mask:b};\n\
         worker_rlimit_nofile 20000;\n\
         pid backend.pid;\n\
         error_log backend.error.log warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n    \
             access_log off;\n    \
             keepalive_timeout {IDLE_SECS}s;\n    \
             keepalive_requests 1000000;\n    \
             server {{\n        \
                 listen 127.0.0.1:{BACKEND_PORT};\n        \
                 location / {{\n            \
                     default_type text/plain;\n            \
                     return 200 \"ok\";\n        \
                 }}\n    \
             }}\n\
         }}\n",
        mask = 1u32 << CLIENT_CPU,
    )
}

fn haproxy_cfg(c: &Cert) -> String {
    format!(
        "global\n    \
             nbthread 1\n    \
             cpu-map 1/1 {PEER_CPU}\n    \
             # Room for the client connections (and at most {IN_FLIGHT} backend ones)\n    \
             # within the fd limit all peers get, {NOFILE}: HAProxy warns that it\n    \
             # wants 2 fds per maxconn, which only a connection to a backend needs\n    \
             # (no strict-limits: a warning, not a refusal to start).\n    \
             maxconn {MAXCONN}\n    \
             ulimit-n {NOFILE}\n    \
             no strict-limits\n    \
             # The same suite, group and version as lb's and nginx's configs.\n    \
             ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256\n    \
             ssl-default-bind-curves X25519\n    \
             ssl-default-bind-options ssl-min-ver TLSv1.3\n    \
             # tune.*: defaults (bufsize 16384, session cache of 20000 entries).\n\
         \n\
         defaults\n    \
             mode http\n    \
             maxconn {MAXCONN}\n    \
             timeout connect 5s\n    \
             timeout client {IDLE_SECS}s\n    \
             timeout server {IDLE_SECS}s\n    \
             timeout http-request {IDLE_SECS}s\n    \
             timeout http-keep-alive {IDLE_SECS}s\n\
         \n\
         frontend bench\n    \
             # {cert} is the certificate then its key.\n    \
             bind 127.0.0.1:{port} ssl crt {cert}\n    \
             default_backend be\n\
         \n\
         backend be\n    \
             server b1 127.0.0.1:{BACKEND_PORT}\n",
        port = Peer::Haproxy.port(),
        cert = c.combined.display(),
    )
}

fn nginx_conf(c: &Cert) -> String {
    format!(
        "worker_processes 1;\n\
         worker_cpu_affinity {mask:b};\n\
         # Client and upstream connections, within the fd limit all peers get.\n\
         worker_rlimit_nofile {NOFILE};\n\
         pid nginx.pid;\n\
         error_log nginx.error.log warn;\n\
         events {{ worker_connections {MAXCONN}; }}\n\
         http {{\n    \
             access_log off;\n    \
             keepalive_timeout {IDLE_SECS}s;\n    \
             keepalive_requests 1000000;\n    \
             client_header_timeout {IDLE_SECS}s;\n    \
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
        mask = 1u32 << PEER_CPU,
        port = Peer::Nginx.port(),
        cert = c.cert.display(),
        key = c.key.display(),
    )
}

fn lb_toml(c: &Cert) -> String {
    format!(
        "[global]\n\
         instance = \"benchmem{pid}\"\n\
         workers = 1\n\
         drainTimeout = \"1s\"\n\
         [xdp]\n\
         mode = \"off\"\n\
         [[frontend]]\n\
         name = \"bench\"\n\
         listen = \"127.0.0.1:{port}\"\n\
         pool = \"be\"\n\
         tls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\
         # Nothing closes an idle connection during a run.\n\
         timeouts = {{ clientIdle = \"{IDLE_SECS}s\", headerRead = \"{IDLE_SECS}s\" }}\n\
         [frontend.tlsOptions]\n\
         versions = [\"1.3\"]\n\
         groups = [\"X25519\"]\n\
         cipherSuites = [\"TLS13_AES_128_GCM_SHA256\"]\n\
         handshakeTimeout = \"{IDLE_SECS}s\"\n\
         # tickets, sessionCache: defaults (2 tickets, as OpenSSL sends).\n\
         [[pool]]\n\
         name = \"be\"\n\
         profile = \"bench\"\n\
         backends = [\"127.0.0.1:{BACKEND_PORT}\"]\n\
         # No limit refuses or paces the connections (HAProxy and nginx set\n\
         # none): 0 turns each axis off. maxSslConn (default 5000) would\n\
         # refuse the 5001st TLS connection. maxConn stays at its default\n\
         # (20000; at pool level it counts requests in flight, at most {IN_FLIGHT}\n\
         # here), maxBufferSize at its default (128KB, a ceiling).\n\
         [profile.bench]\n\
         maxSslConn = 0\n\
         maxSslRate = 0\n\
         maxActiveHandshakes = 0\n\
         maxSessRate = 0\n\
         rateLimitSessions = 0\n\
         maxConnRate = 0\n",
        pid = std::process::id(),
        port = Peer::Lb.port(),
        cert = c.cert.display(),
        key = c.key.display(),
    )
}

// ---- processes -----------------------------------------------------------

/// The argv that starts `peer` with its config in `dir` (without taskset).
fn peer_argv(peer: Peer, dir: &Scratch) -> Result<Vec<String>> {
    let cfg = dir.0.join(peer.config());
    Ok(match peer {
        Peer::Lb => argv(&[
            &lb_bin("memory")?.to_string_lossy(),
            "run",
            "-c",
            &cfg.to_string_lossy(),
        ]),
        Peer::Haproxy => argv(&["/usr/sbin/haproxy", "-f", &cfg.to_string_lossy(), "-db"]),
        Peer::Nginx => nginx_argv(dir, &cfg, "nginx"),
    })
}

/// A peer started for one run: stopped (by pid) when dropped.
struct Running {
    daemon: Daemon,
    /// Its process tree.
    pids: Vec<u32>,
}

fn start_peer(peer: Peer, dir: &Scratch) -> Result<Running> {
    let name = match peer {
        Peer::Lb => "lb",
        Peer::Haproxy => "haproxy",
        Peer::Nginx => "nginx",
    };
    let mut daemon = Daemon::spawn(name, PEER_CPU, &peer_argv(peer, dir)?, dir)?;
    let needle = (peer == Peer::Lb).then_some(" ready");
    daemon.wait_ready(peer.port(), needle)?;
    let pids = tree_pids(daemon.pid())?;
    if peer == Peer::Nginx {
        ensure!(
            pids.len() >= 2,
            "nginx (pid {}) has no worker process",
            daemon.pid()
        );
    }
    Ok(Running { daemon, pids })
}

/// One HTTPS request through curl: 200 with the backend's `ok`.
fn check_answers(peer: Peer) -> Result<()> {
    let url = format!("https://127.0.0.1:{}/", peer.port());
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
        peer.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

// ---- memory ----------------------------------------------------------------

/// Resident memory of a process tree, in KiB (/proc/PID/status).
#[derive(Clone, Copy, Default, Debug)]
struct Rss {
    /// VmRSS: all resident pages.
    total: u64,
    /// RssAnon: the heap and other private memory.
    anon: u64,
}

fn rss_of(pids: &[u32]) -> Result<Rss> {
    let mut sum = Rss::default();
    for &p in pids {
        let path = format!("/proc/{p}/status");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("reading {path} (exited?)"))?;
        let kib = |key: &str| -> Result<u64> {
            let line = text
                .lines()
                .find(|l| l.starts_with(key))
                .with_context(|| format!("no {key} in {path}"))?;
            line[key.len()..]
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{path}: bad line `{line}`"))
        };
        sum.total += kib("VmRSS:")?;
        sum.anon += kib("RssAnon:")?;
    }
    Ok(sum)
}

// ---- the client ------------------------------------------------------------

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

    /// Watches `fd` for input, output and hang-up, edge-triggered.
    fn add(&self, fd: i32, token: u64) -> Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token,
        };
        // SAFETY: valid fds and event.
        let rc =
            unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut ev) };
        ensure!(
            rc == 0,
            "epoll_ctl ADD: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Stops watching `fd` (an idle connection is only checked at the end).
    fn remove(&self, fd: i32) -> Result<()> {
        let mut ev = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: valid fds and event.
        let rc =
            unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &raw mut ev) };
        ensure!(
            rc == 0,
            "epoll_ctl DEL: {}",
            std::io::Error::last_os_error()
        );
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

/// The client's TLS settings: TLS 1.3, X25519, TLS13_AES_128_GCM_SHA256,
/// no resumption (every connection a full handshake), any certificate.
fn client_config() -> Result<Arc<ClientConfig>> {
    let mut p = provider::default_provider();
    p.kx_groups = vec![provider::kx_group::X25519];
    p.cipher_suites = vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut c = ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("client protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(any_cert(false))
        .with_no_client_auth();
    c.resumption = Resumption::disabled();
    Ok(Arc::new(c))
}

/// Whether `buf` holds a whole response: a 200 head that keeps the
/// connection open and its body (Content-Length or chunked).
fn response_done(buf: &[u8]) -> Result<bool> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        ensure!(buf.len() < 16 * 1024, "a response head over 16 KiB");
        return Ok(false);
    };
    let head = std::str::from_utf8(&buf[..end]).context("a response head not in UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    ensure!(
        status.starts_with("HTTP/1.1 200"),
        "the response was `{status}`, not HTTP/1.1 200"
    );
    let (mut length, mut chunked) = (None, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => length = Some(v.parse::<usize>().context("Content-Length")?),
            "transfer-encoding" => chunked = v.ends_with("chunked"),
            "connection" => ensure!(!v.contains("close"), "the response closes the connection"),
            _ => {}
        }
    }
    let body = &buf[end + 4..];
    match (length, chunked) {
        (Some(n), _) => Ok(body.len() >= n),
        (None, true) => Ok(body.ends_with(b"0\r\n\r\n")),
        (None, false) => bail!("a response with neither Content-Length nor chunked body"),
    }
}

/// A connection between connect and its answered request.
struct Opening {
    sock: TcpStream,
    tls: ClientConnection,
    sent: bool,
    response: Vec<u8>,
    started: Instant,
}

impl Opening {
    fn start(port: u16, config: &Arc<ClientConfig>, poller: &Poller, token: u64) -> Result<Self> {
        let sock = connect_nonblocking(port)?;
        poller.add(sock.as_raw_fd(), token)?;
        let name = ServerName::try_from(CERT_NAME).context("the server name")?;
        Ok(Self {
            sock,
            tls: ClientConnection::new(Arc::clone(config), name)?,
            sent: false,
            response: Vec::new(),
            started: Instant::now(),
        })
    }

    /// Moves on as far as the socket allows: handshake, request, response.
    /// True once the response is complete.
    fn drive(&mut self) -> Result<bool> {
        loop {
            if !self.tls.is_handshaking() && !self.sent {
                self.tls
                    .writer()
                    .write_all(REQUEST)
                    .context("the request")?;
                self.sent = true;
            }
            while self.tls.wants_write() {
                match self.tls.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e).context("writing"),
                }
            }
            if self.sent {
                let mut buf = [0u8; 4096];
                loop {
                    match self.tls.reader().read(&mut buf) {
                        Ok(0) => bail!("the peer sent close_notify before the response"),
                        Ok(n) => self.response.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e).context("reading the response"),
                    }
                }
                if response_done(&self.response)? {
                    return Ok(true);
                }
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => bail!(
                    "the peer closed the connection {}",
                    if self.tls.is_handshaking() {
                        "during the handshake"
                    } else {
                        "before the response"
                    }
                ),
                Ok(_) => {
                    self.tls.process_new_packets().context("TLS")?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e).context("reading"),
            }
        }
    }
}

/// Failed connections: how many, and the first one's error.
#[derive(Default, Clone, Debug)]
struct Errors {
    n: usize,
    first: Option<String>,
}

impl Errors {
    fn add(&mut self, e: &anyhow::Error) {
        self.n += 1;
        self.first.get_or_insert_with(|| format!("{e:#}"));
    }
}

/// Idle connections, held open: the TLS state is dropped (the peer cannot
/// tell), only the sockets are kept. Dropping closes them with an RST
/// (SO_LINGER 0: no TIME_WAIT piles up over the runs).
struct Held {
    socks: Vec<TcpStream>,
    errors: Errors,
    secs: f64,
}

impl Held {
    /// How many of them the peer has closed (or reset).
    fn closed_by_peer(&self) -> usize {
        self.socks
            .iter()
            .filter(|s| {
                let mut b = [0u8; 1];
                // SAFETY: a valid fd and a 1-byte buffer.
                let rc = unsafe {
                    libc::recv(
                        s.as_raw_fd(),
                        b.as_mut_ptr().cast(),
                        1,
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                rc == 0
                    || (rc < 0
                        && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
            })
            .count()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        for s in &self.socks {
            // SAFETY: a valid fd and option of the size given.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
    }
}

/// Opens `n` idle connections to 127.0.0.1:`port`, `IN_FLIGHT` at a time;
/// a failed one is counted and replaced (more than 1% failed: an error).
fn hold(port: u16, n: usize, config: &Arc<ClientConfig>) -> Result<Held> {
    let poller = Poller::new()?;
    let mut slots: Vec<Option<Opening>> = (0..IN_FLIGHT.min(n)).map(|_| None).collect();
    let mut held = Held {
        socks: Vec::with_capacity(n),
        errors: Errors::default(),
        secs: 0.0,
    };
    let t0 = Instant::now();
    let mut last_done = t0;
    let mut ready = Vec::new();
    let max_errors = n.div_ceil(100);
    while held.socks.len() < n {
        not_interrupted()?;
        let now = Instant::now();
        ensure!(
            now - last_done < CONN_TIMEOUT,
            "127.0.0.1:{port}: no connection answered in {} s ({} idle of {n}; {} failed{})",
            CONN_TIMEOUT.as_secs(),
            held.socks.len(),
            held.errors.n,
            held.errors
                .first
                .as_deref()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        );
        ensure!(
            held.errors.n <= max_errors,
            "127.0.0.1:{port}: {} connections failed ({} idle of {n}); first: {}",
            held.errors.n,
            held.socks.len(),
            held.errors.first.as_deref().unwrap_or_default()
        );
        // Late connections fail; free slots start one while more are needed.
        let in_flight = slots.iter().filter(|s| s.is_some()).count();
        let mut want = n - held.socks.len() - in_flight;
        for (i, s) in slots.iter_mut().enumerate() {
            if s.as_ref().is_some_and(|o| now - o.started > CONN_TIMEOUT) {
                *s = None;
                held.errors.add(&anyhow::anyhow!(
                    "a connection not answered in {} s",
                    CONN_TIMEOUT.as_secs()
                ));
                want += 1;
            }
            if s.is_none() && want > 0 {
                match Opening::start(port, config, &poller, u64::try_from(i)?) {
                    Ok(o) => {
                        *s = Some(o);
                        want -= 1;
                    }
                    Err(e) => {
                        held.errors.add(&e);
                        std::thread::sleep(Duration::from_millis(10));
                        break;
                    }
                }
            }
        }
        poller.wait(10, &mut ready)?;
        for &token in &ready {
            let slot = &mut slots[usize::try_from(token)?];
            let Some(o) = slot.as_mut() else { continue };
            match o.drive() {
                Ok(false) => {}
                Ok(true) => {
                    if let Some(o) = slot.take() {
                        poller.remove(o.sock.as_raw_fd())?;
                        held.socks.push(o.sock);
                        last_done = Instant::now();
                    }
                }
                Err(e) => {
                    *slot = None;
                    held.errors.add(&e);
                }
            }
        }
    }
    held.secs = t0.elapsed().as_secs_f64();
    Ok(held)
}

// ---- one run ---------------------------------------------------------------

/// What one run measured.
#[derive(Clone, Debug)]
struct RunResult {
    conns: usize,
    before: Rss,
    after: Rss,
    /// After all were closed (what the peer kept of them).
    closed: Rss,
    errors: Errors,
    open_secs: f64,
}

impl RunResult {
    fn per_conn(&self, f: impl Fn(&Rss) -> u64) -> f64 {
        (f(&self.after) as f64 - f(&self.before) as f64) / self.conns as f64
    }

    fn kib(&self) -> f64 {
        self.per_conn(|r| r.total)
    }

    fn anon_kib(&self) -> f64 {
        self.per_conn(|r| r.anon)
    }

    /// KiB per connection still resident after all were closed.
    fn kept_kib(&self) -> f64 {
        (self.closed.total as f64 - self.before.total as f64) / self.conns as f64
    }
}

/// Warm-up, then `n` idle connections held while the memory is read, then
/// closed. `pids`: the peer's process tree.
fn measure(port: u16, pids: &[u32], n: usize, config: &Arc<ClientConfig>) -> Result<RunResult> {
    drop(hold(port, WARMUP_CONNS, config).context("the warm-up")?);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_of(pids)?;
    let held = hold(port, n, config)?;
    std::thread::sleep(SETTLE);
    not_interrupted()?;
    let after = rss_of(pids)?;
    let closed_early = held.closed_by_peer();
    ensure!(
        closed_early == 0,
        "127.0.0.1:{port} closed {closed_early} of the {n} idle connections within {} s",
        SETTLE.as_secs()
    );
    let (errors, open_secs) = (held.errors.clone(), held.secs);
    drop(held);
    std::thread::sleep(SETTLE);
    let closed = rss_of(pids)?;
    Ok(RunResult {
        conns: n,
        before,
        after,
        closed,
        errors,
        open_secs,
    })
}

fn one_run(peer: Peer, dir: &Scratch, n: usize, config: &Arc<ClientConfig>) -> Result<RunResult> {
    let running = start_peer(peer, dir)?;
    check_answers(peer)?;
    let r = measure(peer.port(), &running.pids, n, config);
    let log = running.daemon.log_text();
    drop(running);
    r.with_context(|| {
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        format!(
            "{} idle connections to {}; its log ends:\n{}",
            n,
            peer.name(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })
}

/// `--hold`: the client alone against a peer started by hand.
fn hold_only(port: u16, pid: u32, n: usize) -> Result<()> {
    let pids = tree_pids(pid)?;
    let r = measure(port, &pids, n, &client_config()?)?;
    println!(
        "127.0.0.1:{port}, pids {pids:?}: {n} idle TLS connections in {:.1} s ({} failed), \
         VmRSS {} -> {} KiB: {:.1} KiB per connection (RssAnon {:.1}); {:.1} KiB per \
         connection still resident after closing them",
        r.open_secs,
        r.errors.n,
        r.before.total,
        r.after.total,
        r.kib(),
        r.anon_kib(),
        r.kept_kib()
    );
    Ok(())
}

// ---- the report ----------------------------------------------------------

/// The order of round `r`: rotated, so no peer always runs first.
fn round_order(r: usize) -> Vec<Peer> {
    let mut t = Peer::ALL.to_vec();
    let n = t.len();
    t.rotate_left(r % n);
    t
}

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

/// `(what, version)` of everything run.
fn versions() -> Vec<(String, String)> {
    vec![
        (
            "lb".into(),
            format!(
                "{}, rustls {} on aws-lc-rs {}, hyper {}, tokio {}",
                lb_version(),
                locked_version("rustls"),
                locked_version("aws-lc-rs"),
                locked_version("hyper"),
                locked_version("tokio")
            ),
        ),
        (
            "HAProxy".into(),
            format!(
                "{} ({})",
                first_line("/usr/sbin/haproxy", &["-v"]),
                line_with("/usr/sbin/haproxy", &["-vv"], "Running on OpenSSL")
            ),
        ),
        (
            "nginx".into(),
            format!(
                "{} ({})",
                first_line("/usr/sbin/nginx", &["-v"]),
                line_with("/usr/sbin/nginx", &["-V"], "built with OpenSSL")
            ),
        ),
        (
            "client".into(),
            format!(
                "this program, rustls {} on aws-lc-rs {}",
                locked_version("rustls"),
                locked_version("aws-lc-rs")
            ),
        ),
        ("libc".into(), first_line("/usr/bin/ldd", &["--version"])),
    ]
}

/// Every run of every peer, by `Peer::index`; and the rounds' lb / HAProxy
/// ratios.
#[derive(Default)]
struct AllRuns {
    runs: [Vec<RunResult>; 3],
    /// lb's KiB per connection over HAProxy's, per round.
    round_ratios: Vec<f64>,
}

impl AllRuns {
    fn of(&self, p: Peer) -> &[RunResult] {
        &self.runs[p.index()]
    }

    fn summary(&self, p: Peer, f: impl Fn(&RunResult) -> f64) -> Summary {
        summarize(self.of(p).iter().map(f).collect())
    }

    fn kib(&self, p: Peer) -> Summary {
        self.summary(p, RunResult::kib)
    }
}

struct Report<'a> {
    o: &'a Opts,
    plan: &'a Plan,
    all: &'a AllRuns,
    commands: &'a [(String, String)],
    configs_dir: &'a Path,
    elapsed: Duration,
    background: [f64; 2],
    versions: &'a [(String, String)],
}

impl Report<'_> {
    /// lb over HAProxy, medians; whether the target is met; as shown.
    fn target(&self) -> (f64, bool, String) {
        let r = self.all.kib(Peer::Lb).median / self.all.kib(Peer::Haproxy).median;
        let rounds = summarize(self.all.round_ratios.clone());
        let shown = if self.all.round_ratios.len() > 1 {
            format!("{r:.2}× ({:.2}–{:.2})", rounds.min, rounds.max)
        } else {
            format!("{r:.2}×")
        };
        (r, r <= TARGET_RATIO, shown)
    }

    fn header(&self, md: &mut String) {
        let p = self.plan;
        let _ = writeln!(
            md,
            "# Memory per idle TLS connection: lb, HAProxy, nginx\n\n\
             Written by `bench_memory{}` in {:.0} s. The resident memory (VmRSS) a peer's \
             processes gain while they hold {} idle TLS connections, over {}: each connection \
             a full TLS 1.3 handshake and one HTTP/1.1 keep-alive `GET /` answered, then held \
             open with nothing sent. Each peer runs one worker pinned to CPU {PEER_CPU}, a \
             fresh process each run; the client and the backend on CPU {CLIENT_CPU}. Every \
             figure is the median of {} runs, range in brackets; runs are interleaved (the \
             order rotates each round).\n",
            if self.o.quick { " --quick" } else { "" },
            self.elapsed.as_secs_f64(),
            p.conns,
            p.conns,
            p.runs
        );
        if self.o.quick {
            let _ = writeln!(
                md,
                "**Quick run: too few connections and runs to read anything into; it only \
                 proves the harness works.**\n"
            );
        }
        let _ = write!(md, "## Machine\n\n{}", cpu_and_kernel());
        for (what, v) in self.versions {
            let _ = writeln!(md, "- {what}: {v}");
        }
        let _ = writeln!(
            md,
            "- date: {}\n",
            first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        );
        let [b0, b1] = self.background;
        let _ = writeln!(
            md,
            "Before the run, with nothing of this benchmark started, CPU {PEER_CPU} was \
             {b0:.0}% and CPU {CLIENT_CPU} {b1:.0}% busy{}\n",
            if b0.max(b1) > BACKGROUND_LIMIT {
                ": other processes were running. Memory figures do not depend on CPU \
                 time, but a peer's allocator may behave differently when it is slower."
            } else {
                " (a quiet machine)."
            }
        );
    }

    fn findings(&self, md: &mut String) {
        let (lb, h, n) = (
            self.all.kib(Peer::Lb),
            self.all.kib(Peer::Haproxy),
            self.all.kib(Peer::Nginx),
        );
        let (_, met, shown) = self.target();
        let _ = writeln!(
            md,
            "## What this shows\n\n\
             Per idle TLS connection lb held {:.1} KiB, HAProxy {:.1} KiB, nginx {:.1} KiB: \
             lb = {shown} HAProxy's ({} nginx's), so the target (≤ {TARGET_RATIO}× HAProxy) \
             is **{}**.\n",
            lb.median,
            h.median,
            n.median,
            ratio(lb.median, n.median),
            if met { "met" } else { "not met" },
        );
        let mut notes = Vec::new();
        if !met {
            notes.push(format!(
                "lb would need {:.1} KiB or less per connection ({:.1} KiB less than now). \
                 See *Where lb's memory goes* below.",
                TARGET_RATIO * h.median,
                lb.median - TARGET_RATIO * h.median
            ));
        }
        let spread = Peer::ALL
            .iter()
            .map(|&p| {
                let s = self.all.kib(p);
                (s.max - s.min) / s.median.abs().max(0.1) * 100.0
            })
            .fold(0.0, f64::max);
        if spread > 10.0 {
            notes.push(format!(
                "One peer's figure varied by up to {spread:.0}% between runs (max − min over \
                 median): read the medians."
            ));
        }
        let failed: usize = self.all.runs.iter().flatten().map(|r| r.errors.n).sum();
        if failed > 0 {
            notes.push(format!(
                "{failed} connection(s) failed while opening and were replaced (first: {}); \
                 every run held its full count.",
                self.all
                    .runs
                    .iter()
                    .flatten()
                    .find_map(|r| r.errors.first.clone())
                    .unwrap_or_default()
            ));
        } else {
            notes.push(
                "No connection failed, and no peer closed an idle connection during any run."
                    .into(),
            );
        }
        let gave_back: Vec<&str> = Peer::ALL
            .iter()
            .filter(|&&p| {
                let kept = self.all.summary(p, RunResult::kept_kib).median;
                kept < 0.9 * self.all.kib(p).median
            })
            .map(|p| p.name())
            .collect();
        if gave_back.is_empty() {
            notes.push(
                "None of the three gave the memory of the closed connections back to the \
                 system within a second (kept after close ≈ per connection): their allocators \
                 keep it for the next connections, so a peer's RSS stays at its peak of idle \
                 connections."
                    .into(),
            );
        } else {
            notes.push(format!(
                "Gave most of the closed connections' memory back within a second: {}.",
                gave_back.join(", ")
            ));
        }
        if self.o.quick {
            notes.push("This was a quick run: its numbers are indicative only.".into());
        }
        let _ = writeln!(md, "{}\n", notes.join(" "));
    }

    fn table(&self, md: &mut String) {
        let h = self.all.kib(Peer::Haproxy).median;
        let _ = writeln!(
            md,
            "## Memory per idle TLS connection\n\n\
             KiB per connection = (VmRSS with the {n} connections held − VmRSS before) / {n}, \
             summed over the peer's processes (nginx: master and worker). Anonymous: the same \
             for RssAnon (heap and other private memory; the rest is shared memory such as \
             nginx's and HAProxy's session caches). Kept after close: VmRSS a second after the \
             client closed them all, over the reading before, per connection (memory the \
             allocator did not give back). Before: the peer's VmRSS after its warm-up.\n\n\
             | peer | KiB per connection | vs HAProxy | anonymous KiB | kept after close KiB | \
             before MiB | opened in s |\n|---|---|---|---|---|---|---|",
            n = self.plan.conns
        );
        for p in Peer::ALL {
            let s = self.all.kib(p);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                p.name(),
                fmt(s, 1),
                ratio(s.median, h),
                fmt(self.all.summary(p, RunResult::anon_kib), 1),
                fmt(self.all.summary(p, RunResult::kept_kib), 1),
                fmt(self.all.summary(p, |r| r.before.total as f64 / 1024.0), 1),
                fmt(self.all.summary(p, |r| r.open_secs), 1),
            );
        }
        let _ = writeln!(md, "\nEvery run:\n\n| run | peer | VmRSS before → with the connections → after close (KiB) | KiB per connection |\n|---|---|---|---|");
        for r in 0..self.plan.runs {
            for p in round_order(r) {
                if let Some(x) = self.all.of(p).get(r) {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} → {} → {} | {:.1} |",
                        r + 1,
                        p.name(),
                        x.before.total,
                        x.after.total,
                        x.closed.total,
                        x.kib()
                    );
                }
            }
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
             peer and in the client, which offers no ticket: every connection is a full \
             handshake. Each peer sends its default tickets (2) and keeps its default \
             session cache (HAProxy's `tune.ssl.cachesize` 20000, nginx `shared:SSL:10m`, \
             lb `sessionCache` 20000 for TLS 1.2 only).\n\
             - **An idle connection**: the handshake, one `GET /` over HTTP/1.1 keep-alive, \
             proxied to the backend (nginx, plain HTTP, on CPU {CLIENT_CPU}) and answered 200 \
             with a 2-byte body, then nothing: what an idle keep-alive client costs, with \
             whatever buffers the peer allocated for the first request and kept. The \
             client then drops its TLS state and keeps only the socket. Each peer keeps its \
             backend connections in its pool (lb: up to 256 idle, HAProxy: its idle \
             server connections, nginx: `keepalive 16`); at most {IN_FLIGHT} requests are \
             in flight at once, so that is at most {IN_FLIGHT} backend connections, in the \
             figures too.\n\
             - **A run**: a fresh peer process; one curl request and {WARMUP_CONNS} idle \
             connections opened and closed (warm-up); VmRSS read; {} connections opened, \
             {IN_FLIGHT} at a time, until all are idle; {} s wait; VmRSS read; every \
             connection checked still open (a peer that closed one fails the run); all \
             closed with an RST; {} s wait; VmRSS read; the peer stopped (SIGTERM by pid).\n\
             - **Limits and timeouts**: nothing may refuse or close a connection. lb: \
             `[xdp] mode = \"off\"`, one worker, `maxSslConn`, `maxSslRate`, \
             `maxActiveHandshakes`, `maxSessRate`, `rateLimitSessions` and `maxConnRate` \
             0 (off), `maxConn` and `maxBufferSize` at their defaults (20000 requests in \
             flight per pool, 128KB), `clientIdle`, `headerRead` and `handshakeTimeout` \
             {IDLE_SECS} s. HAProxy: `maxconn {MAXCONN}`, `ulimit-n {NOFILE}`, `no strict-limits` \
             (it warns that it would like 2 fds per connection: only a connection to the \
             backend needs the second), `timeout client`, `http-request`, `http-keep-alive` \
             {IDLE_SECS} s. nginx: `worker_connections {MAXCONN}`, `worker_rlimit_nofile \
             {NOFILE}`, `keepalive_timeout` and `client_header_timeout` {IDLE_SECS} s. \
             Every peer's fd limit is {NOFILE} (lb's inherited from this program).\n\
             - **Memory**: VmRSS and RssAnon of /proc/PID/status, summed over the peer's \
             process tree. Kernel memory (socket buffers, TCP state) is not counted.\n",
            self.plan.conns,
            SETTLE.as_secs(),
            SETTLE.as_secs(),
        );
    }

    fn commands(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Commands\n\n\
             The configs are in `{cfg}/` (`backend-nginx.conf` is the backend). They name \
             the run's temporary directory, removed afterwards, for the certificate files; \
             to rerun by hand, generate a certificate with `lb cert gen --name {CERT_NAME} \
             --dir DIR`, concatenate `{CERT_NAME}.pem` and `{CERT_NAME}.key` for HAProxy, \
             edit the paths, start the backend and one peer as below, and measure it with \
             the last line (PID: the peer's, or nginx's master). Each peer was started once \
             per run and killed by pid at its end.\n\n```",
            cfg = shown_path(self.configs_dir).display(),
        );
        for (what, line) in self.commands {
            let _ = writeln!(md, "# {what}\n{line}");
        }
        let _ = writeln!(md, "```\n");
    }

    fn render(&self, lb_note: &str) -> String {
        let mut md = String::new();
        self.header(&mut md);
        self.findings(&mut md);
        self.table(&mut md);
        if !lb_note.is_empty() {
            let _ = writeln!(md, "{lb_note}");
        }
        self.setup(&mut md);
        self.commands(&mut md);
        md
    }

    fn results(&self) -> Results {
        let (_, met, shown) = self.target();
        Results {
            bench: "memory".into(),
            title: "Memory per idle TLS connection".into(),
            quick: self.o.quick,
            runs: self.plan.runs,
            comparisons: vec![Comparison {
                id: "memory-idle-tls".into(),
                title: format!(
                    "Memory per idle TLS connection (RSS delta over {})",
                    self.plan.conns
                ),
                unit: "KiB".into(),
                lower_is_better: true,
                baseline: Some(Peer::Haproxy.name().into()),
                rows: Peer::ALL
                    .iter()
                    .map(|&p| Row::new(p.name(), self.all.kib(p)))
                    .collect(),
            }],
            targets: vec![results::Target {
                what: "Memory per idle TLS connection vs HAProxy".into(),
                bound: format!("≤ {TARGET_RATIO}×"),
                measured: shown,
                met,
            }],
            versions: self.versions.to_vec(),
            commands: self.commands.iter().map(|(_, l)| l.clone()).collect(),
        }
    }
}

/// Why lb holds what it holds per idle connection, when it misses the
/// target: what heaptrack showed and what prototypes of two changes
/// measured (both done by hand at lb 369c8f3, not by this program; the
/// recipe is in the text). Empty when the target is met.
fn lb_breakdown(all: &AllRuns) -> String {
    let lb = all.kib(Peer::Lb).median;
    let h = all.kib(Peer::Haproxy).median;
    if lb.is_nan() || h.is_nan() || lb <= TARGET_RATIO * h {
        return String::new();
    }
    format!(
        "## Where lb's memory goes\n\n\
         lb holds {lb:.1} KiB per idle connection here; the target allows {bound:.1} KiB. \
         What follows was measured by hand at lb 6750846 (2026-12-07, this machine), \
         before lb had its own TLS stream, not by this run: lb started under `heaptrack`, 4000 idle connections opened with this \
         program's `--hold`; heaptrack's peak (all 4000 held) divided by 4000. It came to \
         10.1 KiB of heap per connection, 11.0 KiB resident (VmRSS) in that run.\n\n\
         | what each idle connection holds | heap KiB | owner |\n|---|---|---|\n\
         | TLS read buffer: 4 KiB, zero-filled, kept while the connection lives (rustls's \
         `DeframerVecBuffer` never shrinks below one read) | 4.1 | rustls |\n\
         | the connection's tokio task: its future (1248 bytes) and tokio's header | 1.4 | \
         lb, tokio |\n\
         | the `TlsStream` (socket and `ServerConnection`), boxed | 1.2 | tokio-rustls, \
         rustls |\n\
         | AEAD key contexts, one each way | 1.2 | aws-lc |\n\
         | the connection core (`Acceptor`) | 0.6 | rustls |\n\
         | lb's `ConnState`, forwarding headers and service, the watchdog's timer, the \
         socket's registration, rustls's plaintext queues | 1.6 | lb, tokio, rustls |\n\n\
         How it came down from 23.1 KiB (2026-11-22), each measured with `--hold` at 4000 \
         connections:\n\n\
         - HTTP/1.1 over TLS is served one hyper `http1` connection at a time: when hyper \
         asks for the next request and no byte of one has arrived for 25 ms, lb's stream \
         wrapper answers end-of-stream, hyper's connection ends and hands the stream back, \
         and the connection waits on its bare socket with none of hyper's buffers (8 KiB \
         to read, 8 to write). See docs/architecture.md. Parking at once instead of after \
         100 ms gave 10.9 KiB here (full run, 2026-12-07) but cost a TLS keep-alive \
         request 47–53 µs of lb's CPU against 43–45 µs without parking (wrk -c20 over \
         HTTPS, three interleaved 5 s rounds each); with the delay it costs 38–42 µs \
         against 41–53 µs.\n\
         - The `Forwarded` header cache (one per connection) kept a clone of the last \
         `Host` value, a view into hyper's read buffer, and with it the whole buffer, \
         parked or not: it now keeps a copy. With parking, 22.8 → 12.1 KiB.\n\
         - The handshake, refusals and TCP serving are boxed futures, so the connection's \
         task keeps no room for them while it idles: 4560 → 1152 bytes of future (22.8 → \
         16.7 KiB before the `Host` fix; 12.1 → 11.0 after it).\n\n\
         - The TLS read buffer (the table's first row) is gone: lb's TLS stream \
         (`proxy/tls_stream.rs`) drives rustls's unbuffered API, reads and seals in \
         per-worker buffers, and holds bytes of its own only while they wait. Full run \
         (2026-12-07): 11.3 → 7.4 KiB, 0.49× HAProxy.\n\
         - Parking after 25 ms instead of 100: fewer connections hold hyper's buffers at \
         once while connections open, so the allocator's high-water mark is lower. Full \
         run (2026-12-07): 7.5 → 7.0 KiB; lb's CPU per TLS keep-alive request unchanged \
         (30.8–40.3 µs against 33.2–41.0, wrk -c20, three interleaved rounds).\n\n\
         HAProxy and nginx keep no I/O buffer on an idle keep-alive connection (HAProxy \
         sets `SSL_MODE_RELEASE_BUFFERS`, nginx calls `ngx_ssl_free_buffer`): what they \
         keep is mostly OpenSSL's per-connection state. lb keeps no I/O buffer either now; \
         what is left is the table's other rows: the task, rustls's connection state, the \
         AEAD keys, lb's per-connection state, and the allocator's share of buffers \
         freed by connections that parked.\n",
        bound = TARGET_RATIO * h
    )
}

/// The command line of this run, as given.
fn this_command(o: &Opts, me: &Path) -> String {
    let mut line = format!("{} --out {}", me.display(), o.out.display());
    if o.quick {
        line.push_str(" --quick");
    }
    if let Some(n) = o.conns {
        let _ = write!(line, " --conns {n}");
    }
    if let Some(n) = o.runs {
        let _ = write!(line, " --runs {n}");
    }
    line
}

/// Raises this process's fd limit to `NOFILE` (the peers inherit it) and
/// checks that it holds `n` connections.
fn raise_nofile(n: usize) -> Result<()> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit to fill.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) };
    ensure!(rc == 0, "getrlimit: {}", std::io::Error::last_os_error());
    let want = libc::rlim_t::from(NOFILE);
    ensure!(
        r.rlim_max >= want && usize::try_from(want)? > n + 1000,
        "the fd limit (hard {}) is under {NOFILE}, or {NOFILE} under {n} connections and a \
         thousand more: raise it (ulimit -n) or open fewer (--conns)",
        r.rlim_max
    );
    r.rlim_cur = want;
    // SAFETY: a valid rlimit, within the hard limit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const r) };
    ensure!(rc == 0, "setrlimit: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Copies the generated configs beside the report.
fn copy_configs(dir: &Scratch, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for (from, name) in [
        ("haproxy.cfg", "haproxy.cfg"),
        ("nginx.conf", "nginx.conf"),
        ("lb.toml", "lb.toml"),
        ("backend.conf", "backend-nginx.conf"),
    ] {
        std::fs::copy(dir.0.join(from), to.join(name))
            .with_context(|| format!("copying {from} to {}", to.display()))?;
    }
    Ok(())
}

// ---- main ----------------------------------------------------------------

fn main() -> Result<()> {
    let o = opts()?;
    let started = Instant::now();
    // Everything this program runs or starts inherits CPU 1, unless started
    // through `taskset -c 0`.
    pin_to_cpu(CLIENT_CPU).context("pinning to CPU 1 (this needs 2 CPUs)")?;
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed))
        .context("setting the Ctrl-C handler")?;
    let plan = Plan::new(&o);
    raise_nofile(plan.conns)?;
    if let Some((port, pid)) = o.hold {
        return hold_only(port, pid, plan.conns);
    }
    for tool in ["/usr/sbin/haproxy", "/usr/sbin/nginx", "/usr/bin/curl"] {
        ensure!(
            Path::new(tool).exists(),
            "{tool} is missing: run `cargo xtask setup`"
        );
    }
    for port in std::iter::once(BACKEND_PORT).chain(Peer::ALL.map(Peer::port)) {
        port_free(port)?;
    }
    let background = background_load([PEER_CPU, CLIENT_CPU])?;
    let dir = Scratch::new("lb-bench-memory")?;
    eprintln!("bench memory: configs and logs in {}", dir.0.display());
    let me = std::env::current_exe().map_or_else(|_| "bench_memory".into(), |p| shown_path(&p));
    let mut commands = vec![("this benchmark".to_owned(), this_command(&o, &me))];
    let (cert, gen) = make_cert(&lb_bin("memory")?, &dir)?;
    let gen_line = shell_line(&gen);
    commands.push(("the certificate".to_owned(), gen_line));
    dir.write("haproxy.cfg", &haproxy_cfg(&cert))?;
    dir.write("nginx.conf", &nginx_conf(&cert))?;
    dir.write("lb.toml", &lb_toml(&cert))?;
    let conf = dir.write("backend.conf", &backend_conf())?;
    let mut backend = Daemon::spawn(
        "backend",
        CLIENT_CPU,
        &nginx_argv(&dir, &conf, "backend"),
        &dir,
    )?;
    commands.push((
        "the backend (nginx, plain HTTP)".into(),
        backend.cmdline.clone(),
    ));
    backend.wait_ready(BACKEND_PORT, None)?;
    for p in Peer::ALL {
        let mut full = argv(&["taskset", "-c", &PEER_CPU.to_string()]);
        full.extend(peer_argv(p, &dir)?);
        commands.push((p.name().into(), shell_line(&full)));
    }
    commands.push((
        "measure one peer by hand: N idle connections to PORT, VmRSS of PID's tree".into(),
        format!(
            "{} --hold PORT --pid PID --conns {}",
            me.display(),
            plan.conns
        ),
    ));

    let config = client_config()?;
    let mut all = AllRuns::default();
    for r in 0..plan.runs {
        let mut kib = [f64::NAN; 3];
        for p in round_order(r) {
            not_interrupted()?;
            let run = one_run(p, &dir, plan.conns, &config)?;
            eprintln!(
                "bench memory: run {}/{}, {}: {} idle connections in {:.1} s, VmRSS {} -> {} \
                 KiB (anon {} -> {}), {:.1} KiB each; {} KiB after closing them",
                r + 1,
                plan.runs,
                p.name(),
                run.conns,
                run.open_secs,
                run.before.total,
                run.after.total,
                run.before.anon,
                run.after.anon,
                run.kib(),
                run.closed.total
            );
            kib[p.index()] = run.kib();
            all.runs[p.index()].push(run);
        }
        all.round_ratios
            .push(kib[Peer::Lb.index()] / kib[Peer::Haproxy.index()]);
    }
    drop(backend);

    let out_dir = o
        .out
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let configs_dir = out_dir.join("memory-configs");
    copy_configs(&dir, &configs_dir)?;
    let versions = versions();
    let report = Report {
        o: &o,
        plan: &plan,
        all: &all,
        commands: &commands,
        configs_dir: &configs_dir,
        elapsed: started.elapsed(),
        background,
        versions: &versions,
    };
    let md = report.render(&lb_breakdown(&all));
    std::fs::write(&o.out, &md).with_context(|| format!("writing {}", o.out.display()))?;
    results::write(&o.out, &report.results())?;
    print!("{md}");
    eprintln!(
        "bench memory: wrote {} and {}",
        o.out.display(),
        results::json_path(&o.out).display()
    );
    Ok(())
}
