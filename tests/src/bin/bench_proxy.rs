//! `cargo xtask bench proxy`: keep-alive HTTP/1.1 proxying by `lb`, HAProxy
//! and nginx, measured in one run on this machine against the same two nginx
//! backends, as ratios against HAProxy, written to `bench/results/proxy.md`.
//!
//! Each peer runs one worker pinned to CPU 0; wrk, the backends and this
//! program's own constant-rate client run on CPU 1. Per peer, median of N
//! runs (min–max): requests/s at saturation (`wrk -t1 -c50`, also straight to
//! a backend for the proxy tax), the proxy process's CPU time per request
//! (utime + stime of the process tree from /proc/PID/stat) beside CPU 0's
//! total busy time per request (/proc/stat, so softirq work shows), and p50 /
//! p99 latency at two fixed rates, from an open-loop client that times each
//! request from its scheduled send time (no coordinated omission): half load,
//! the rate at which HAProxy keeps CPU 0 half busy (found by calibration, the
//! target's rate), and half of HAProxy's saturation rate, where this client
//! (dearer per request than wrk) brings CPU 1 close to saturation. Every
//! process started here is a child killed by pid when the run ends, also
//! when it fails.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use lb_tests::peers::{
    argv, background_load, busy_pct, cpu_ticks, lb_bin, lb_version, nginx_argv, port_free,
    shell_line, stat_fields, tree_pids, Daemon, Scratch,
};
use lb_tests::{
    harness::pin_to_cpu,
    report::{clk_tck, cpu_and_kernel, first_line, fmt, ratio, summarize, Summary},
    results::{self, Comparison, Results, Row},
};

/// Where the proxies run (one worker each).
const PROXY_CPU: usize = 0;
/// Where wrk, the backends and the constant-rate client run.
const LOAD_CPU: usize = 1;
const BACKEND_PORTS: [u16; 2] = [18081, 18082];
/// Connections of wrk and of the constant-rate client.
const CONNS: usize = 50;
/// The backends' response body: 100 bytes.
const BODY: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\
                    0123456789abcdefghijklmnopqrstuvwxyz01";
/// The load of the latency runs that the target is about: the rate at
/// which HAProxy keeps CPU 0 (its process and the kernel's work for it)
/// this busy, in %, found by calibration.
const TARGET_BUSY: f64 = 50.0;
/// The second latency rate, as a share of HAProxy's saturation rate.
const LATENCY_LOAD: f64 = 0.5;
/// Calibration steps (see `calibrate`).
const CALIBRATION_STEPS: usize = 3;
/// Busy % of a CPU before the run above which the report says it is unreliable.
const BACKGROUND_LIMIT: f64 = 5.0;
/// How long the constant-rate client sends before it starts recording.
const LATENCY_WARMUP: Duration = Duration::from_millis(500);

// ---- options and plan ----------------------------------------------------

struct Opts {
    out: PathBuf,
    quick: bool,
    /// `--load PORT --rate R --secs S`: only the constant-rate client.
    load: Option<(u16, f64, f64)>,
}

fn opts() -> Result<Opts> {
    let mut out = PathBuf::from("bench/results/proxy.md");
    let mut quick = false;
    let (mut port, mut rate, mut secs) = (None, None, 10.0);
    let mut args = std::env::args().skip(1);
    let value = |args: &mut std::iter::Skip<std::env::Args>, flag: &str| {
        args.next().with_context(|| format!("{flag} needs a value"))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(value(&mut args, "--out")?),
            "--quick" => quick = true,
            "--load" => port = Some(value(&mut args, "--load")?.parse().context("--load PORT")?),
            "--rate" => rate = Some(value(&mut args, "--rate")?.parse().context("--rate R")?),
            "--secs" => secs = value(&mut args, "--secs")?.parse().context("--secs S")?,
            other => bail!(
                "unknown argument `{other}`; allowed: --out PATH, --quick, \
                 or --load PORT --rate REQ_PER_S [--secs S] (only the constant-rate client)"
            ),
        }
    }
    let load = match (port, rate) {
        (Some(p), Some(r)) => Some((p, r, secs)),
        (None, None) => None,
        _ => bail!("--load and --rate go together"),
    };
    Ok(Opts { out, quick, load })
}

/// How long and how often.
struct Plan {
    runs: usize,
    wrk_secs: u32,
    latency_secs: f64,
    /// Each calibration step's run (see `calibrate`).
    calibration_secs: f64,
    warmup_secs: u32,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                runs: 1,
                wrk_secs: 2,
                latency_secs: 2.0,
                calibration_secs: 1.0,
                warmup_secs: 1,
            }
        } else {
            Self {
                runs: 5,
                wrk_secs: 10,
                latency_secs: 10.0,
                calibration_secs: 3.0,
                warmup_secs: 2,
            }
        }
    }
}

/// What a load is sent to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Haproxy,
    Nginx,
    Lb,
    /// Straight to backend 1, no proxy.
    Direct,
}

impl Target {
    const ALL: [Self; 4] = [Self::Haproxy, Self::Nginx, Self::Lb, Self::Direct];
    const PEERS: [Self; 3] = [Self::Haproxy, Self::Nginx, Self::Lb];

    fn name(self) -> &'static str {
        match self {
            Self::Haproxy => "HAProxy",
            Self::Nginx => "nginx",
            Self::Lb => "lb",
            Self::Direct => "direct to backend 1 (no proxy)",
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::Haproxy => 18090,
            Self::Nginx => 18091,
            Self::Lb => 18092,
            Self::Direct => BACKEND_PORTS[0],
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

// ---- the configs -----------------------------------------------------------

fn backend_conf(port: u16, n: usize) -> String {
    format!(
        "# Backend {n} of 2 (the other differs only in its port and file names).\n\
         worker_processes 1;\n\
         worker_cpu_affinity {mask:b};\n\
         pid backend{n}.pid;\n\
         error_log backend{n}.error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    \
             access_log off;\n    \
             keepalive_timeout 75s;\n    \
             keepalive_requests 100000000;\n    \
             server {{\n        \
                 listen 127.0.0.1:{port};\n        \
                 location / {{\n            \
                     default_type text/plain;\n            \
                     return 200 \"{BODY}\";\n        \
                 }}\n    \
             }}\n\
         }}\n",
        mask = 1u32 << LOAD_CPU,
    )
}

fn haproxy_cfg() -> String {
    let [b1, b2] = BACKEND_PORTS;
    format!(
        "global\n    \
             nbthread 1\n    \
             cpu-map 1/1 {PROXY_CPU}\n    \
             maxconn 4096\n\
         \n\
         defaults\n    \
             mode http\n    \
             option http-keep-alive\n    \
             http-reuse always\n    \
             maxconn 4096\n    \
             timeout connect 5s\n    \
             timeout client 60s\n    \
             timeout server 60s\n    \
             timeout http-keep-alive 60s\n    \
             timeout http-request 10s\n\
         \n\
         frontend bench\n    \
             bind 127.0.0.1:{port}\n    \
             # lb adds these too: the same work on every request.\n    \
             option forwardfor\n    \
             http-request set-header X-Forwarded-Proto http\n    \
             default_backend be\n\
         \n\
         backend be\n    \
             balance roundrobin\n    \
             server b1 127.0.0.1:{b1}\n    \
             server b2 127.0.0.1:{b2}\n",
        port = Target::Haproxy.port(),
    )
}

fn nginx_conf() -> String {
    let [b1, b2] = BACKEND_PORTS;
    format!(
        "worker_processes 1;\n\
         worker_cpu_affinity {mask:b};\n\
         pid nginx.pid;\n\
         error_log nginx.error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    \
             access_log off;\n    \
             keepalive_timeout 60s;\n    \
             # The default, 1000, would close wrk's connections every 1000 requests.\n    \
             keepalive_requests 100000000;\n    \
             upstream be {{\n        \
                 server 127.0.0.1:{b1};\n        \
                 server 127.0.0.1:{b2};\n        \
                 keepalive 64;\n        \
                 keepalive_requests 100000000;\n    \
             }}\n    \
             server {{\n        \
                 listen 127.0.0.1:{port};\n        \
                 location / {{\n            \
                     proxy_pass http://be;\n            \
                     proxy_http_version 1.1;\n            \
                     proxy_set_header Connection \"\";\n            \
                     # lb adds these too: the same work on every request.\n            \
                     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n            \
                     proxy_set_header X-Forwarded-Proto $scheme;\n        \
                 }}\n    \
             }}\n\
         }}\n",
        mask = 1u32 << PROXY_CPU,
        port = Target::Nginx.port(),
    )
}

fn lb_toml() -> String {
    let [b1, b2] = BACKEND_PORTS;
    format!(
        "[global]\n\
         instance = \"benchproxy{pid}\"\n\
         workers = 1\n\
         drainTimeout = \"1s\"\n\
         [xdp]\n\
         mode = \"off\"\n\
         [[frontend]]\n\
         name = \"bench\"\n\
         listen = \"127.0.0.1:{port}\"\n\
         pool = \"be\"\n\
         [frontend.timeouts]\n\
         clientIdle = \"60s\"\n\
         [[pool]]\n\
         name = \"be\"\n\
         profile = \"bench\"\n\
         backends = [\"127.0.0.1:{b1}\", \"127.0.0.1:{b2}\"]\n\
         # HAProxy's and nginx's configs set no session cookie: neither\n\
         # does lb here (maxSessRate off). Every other axis is at its default.\n\
         [profile.bench]\n\
         maxSessRate = 0\n",
        pid = std::process::id(),
        port = Target::Lb.port(),
    )
}

// ---- child processes -----------------------------------------------------

/// The backends and the peers, stopped in reverse order of starting.
#[derive(Default)]
struct Fleet {
    daemons: Vec<Daemon>,
    /// The peers' pids, by `Target::index`.
    pids: [Option<u32>; 4],
    /// The backends' (nginx masters') pids.
    backend_pids: Vec<u32>,
    /// The command lines, for the report.
    cmdlines: Vec<(String, String)>,
}

impl Fleet {
    fn add(&mut self, what: String, d: Daemon, peer: Option<Target>) {
        if let Some(t) = peer {
            self.pids[t.index()] = Some(d.pid());
        }
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

/// Writes the configs and starts both backends and the three peers.
fn start_fleet(dir: &Scratch) -> Result<Fleet> {
    for port in BACKEND_PORTS
        .into_iter()
        .chain(Target::PEERS.map(Target::port))
    {
        port_free(port)?;
    }
    let mut fleet = Fleet::default();
    for (i, port) in BACKEND_PORTS.into_iter().enumerate() {
        let n = i + 1;
        let conf = dir.write(&format!("backend{n}.conf"), &backend_conf(port, n))?;
        let name = if n == 1 { "backend1" } else { "backend2" };
        let d = Daemon::spawn(name, LOAD_CPU, &nginx_argv(dir, &conf, name), dir)?;
        fleet.backend_pids.push(d.pid());
        fleet.add(format!("backend {n} (nginx)"), d, None);
        fleet.last()?.wait_ready(port, None)?;
    }
    let cfg = dir.write("haproxy.cfg", &haproxy_cfg())?;
    let d = Daemon::spawn(
        "haproxy",
        PROXY_CPU,
        &argv(&["/usr/sbin/haproxy", "-f", &cfg.to_string_lossy(), "-db"]),
        dir,
    )?;
    fleet.add("HAProxy".into(), d, Some(Target::Haproxy));
    fleet.last()?.wait_ready(Target::Haproxy.port(), None)?;

    let conf = dir.write("nginx.conf", &nginx_conf())?;
    let d = Daemon::spawn("nginx", PROXY_CPU, &nginx_argv(dir, &conf, "nginx"), dir)?;
    fleet.add("nginx".into(), d, Some(Target::Nginx));
    fleet.last()?.wait_ready(Target::Nginx.port(), None)?;

    let toml = dir.write("lb.toml", &lb_toml())?;
    let bin = lb_bin("proxy")?;
    let d = Daemon::spawn(
        "lb",
        PROXY_CPU,
        &argv(&[&bin.to_string_lossy(), "run", "-c", &toml.to_string_lossy()]),
        dir,
    )?;
    fleet.add("lb".into(), d, Some(Target::Lb));
    fleet
        .last()?
        .wait_ready(Target::Lb.port(), Some(" ready"))?;
    Ok(fleet)
}

/// One request through curl: 200 with the backends' 100-byte body.
fn check_answers(t: Target) -> Result<()> {
    let url = format!("http://127.0.0.1:{}/", t.port());
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--max-time", "5"])
        .args(["-w", "%{http_code} %{size_download}", &url])
        .output()
        .context("running curl")?;
    let got = String::from_utf8_lossy(&out.stdout).into_owned();
    let want = format!("200 {}", BODY.len());
    ensure!(
        got == want,
        "{} at {url} did not answer 200 with the {}-byte body: curl printed `{got}` {}",
        t.name(),
        BODY.len(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

// ---- CPU accounting ------------------------------------------------------

/// utime + stime, in clock ticks, of `pid` and its descendants (nginx's
/// worker is a child of its master). /proc/PID/stat sums all threads.
fn tree_ticks(pid: u32) -> Result<u64> {
    let mut ticks = 0;
    for p in tree_pids(pid)? {
        // utime is field 14, stime 15.
        let f = stat_fields(p).with_context(|| format!("reading /proc/{p}/stat"))?;
        ticks += f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    }
    Ok(ticks)
}

// ---- saturation: wrk -----------------------------------------------------

/// The exact wrk command for a target.
fn wrk_argv(t: Target, secs: u32) -> Vec<String> {
    argv(&[
        "taskset",
        "-c",
        &LOAD_CPU.to_string(),
        "timeout",
        "-k",
        "5",
        &(secs + 15).to_string(),
        "wrk",
        "-t1",
        &format!("-c{CONNS}"),
        &format!("-d{secs}s"),
        &format!("http://127.0.0.1:{}/", t.port()),
    ])
}

/// What one wrk run measured.
struct WrkRun {
    rps: f64,
    requests: u64,
    /// Non-2xx responses plus socket errors.
    bad: u64,
    /// Proxy process-tree CPU per request, µs (None: direct).
    proc_us: Option<f64>,
    cpu0_us: f64,
    cpu0_softirq_us: f64,
    cpu0_pct: f64,
    cpu1_pct: f64,
    /// Each backend's CPU per proxied request, µs.
    backend_us: Vec<f64>,
}

/// The first number after `key` in wrk's output.
fn wrk_number(text: &str, key: &str) -> Option<f64> {
    let after = &text[text.find(key)? + key.len()..];
    after
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

fn run_wrk(t: Target, secs: u32) -> Result<String> {
    lb_tests::peers::run(&wrk_argv(t, secs))
}

fn saturate(t: Target, pid: Option<u32>, backends: &[u32], secs: u32) -> Result<WrkRun> {
    let backend_ticks = || {
        backends
            .iter()
            .map(|&p| tree_ticks(p))
            .collect::<Result<Vec<_>>>()
    };
    let proc_before = pid.map(tree_ticks).transpose()?;
    let back_before = backend_ticks()?;
    let (c0, c1) = (cpu_ticks(PROXY_CPU)?, cpu_ticks(LOAD_CPU)?);
    let text = run_wrk(t, secs)?;
    let (c0b, c1b) = (cpu_ticks(PROXY_CPU)?, cpu_ticks(LOAD_CPU)?);
    let back_after = backend_ticks()?;
    let proc_after = pid.map(tree_ticks).transpose()?;

    // "  123456 requests in 10.00s, 30.00MB read"
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .with_context(|| format!("no request count in wrk's output:\n{text}"))?;
    let rps = wrk_number(&text, "Requests/sec:")
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let non2xx = wrk_number(&text, "Non-2xx or 3xx responses:").unwrap_or(0.0);
    let socket_errors: f64 = text
        .lines()
        .find(|l| l.contains("Socket errors:"))
        .map_or(0.0, |l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<f64>().ok())
                .sum()
        });
    let bad = (non2xx + socket_errors) as u64;
    ensure!(requests > 0, "wrk completed no requests:\n{text}");
    ensure!(
        bad * 100 <= requests,
        "{}: {bad} of {requests} requests failed (non-2xx or socket errors):\n{text}",
        t.name()
    );
    let us_per = |ticks: u64| ticks as f64 / clk_tck() * 1e6 / requests as f64;
    Ok(WrkRun {
        rps,
        requests,
        bad,
        proc_us: proc_before
            .zip(proc_after)
            .map(|(a, b)| us_per(b.saturating_sub(a))),
        cpu0_us: us_per(c0b.busy - c0.busy),
        cpu0_softirq_us: us_per(c0b.softirq - c0.softirq),
        cpu0_pct: busy_pct(c0, c0b),
        cpu1_pct: busy_pct(c1, c1b),
        backend_us: back_before
            .iter()
            .zip(&back_after)
            .map(|(a, b)| us_per(b.saturating_sub(*a)))
            .collect(),
    })
}

// ---- fixed rate: the open-loop client ------------------------------------

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` in a response head.
fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// Whether `buf` holds one whole response (Content-Length or chunked) on a
/// connection that carries one request at a time; fails unless it is a 200.
fn response_complete(buf: &[u8]) -> Result<bool> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(false);
    };
    let head = &buf[..end];
    ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "status: {}",
        String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or_default())
    );
    if let Some(cl) = header(head, "content-length") {
        let cl: usize = std::str::from_utf8(cl)?.parse()?;
        Ok(buf.len() - (end + 4) >= cl)
    } else if header(head, "transfer-encoding").is_some_and(|v| v.ends_with(b"chunked")) {
        Ok(buf[end + 2..].ends_with(b"\r\n0\r\n\r\n"))
    } else {
        bail!("a response with neither Content-Length nor chunked encoding")
    }
}

/// A syscall's fd result as an owned fd.
fn owned_fd(fd: i32, what: &str) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    ensure!(fd >= 0, "{what}: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// epoll, waited on with a nanosecond timeout (epoll_pwait2).
struct Poller {
    ep: std::os::fd::OwnedFd,
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

    fn add(&self, fd: i32, token: u64) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: valid fds and event.
        let rc =
            unsafe { libc::epoll_ctl(self.ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut ev) };
        ensure!(rc == 0, "epoll_ctl: {}", std::io::Error::last_os_error());
        Ok(())
    }

    fn remove(&self, fd: i32) {
        use std::os::fd::AsRawFd as _;
        // SAFETY: valid fds; a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.ep.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Waits until `until_ns` (CLOCK_MONOTONIC; at most 100 ms) or an event;
    /// returns the tokens that are ready.
    fn wait(&self, until_ns: Option<u64>, out: &mut Vec<u64>) -> Result<()> {
        use std::os::fd::AsRawFd as _;
        let wait_ns = until_ns.map_or(100_000_000, |u| {
            u.saturating_sub(lb::trust::monotonic_ns()).min(100_000_000)
        });
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: i64::try_from(wait_ns)?,
        };
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
        // SAFETY: evs has room for 64 events; no signal mask.
        let n = unsafe {
            libc::epoll_pwait2(
                self.ep.as_raw_fd(),
                evs.as_mut_ptr(),
                64,
                &raw const timeout,
                std::ptr::null(),
            )
        };
        out.clear();
        if n < 0 {
            let e = std::io::Error::last_os_error();
            ensure!(
                e.kind() == std::io::ErrorKind::Interrupted,
                "epoll_pwait2: {e}"
            );
            return Ok(());
        }
        out.extend(evs[..usize::try_from(n)?].iter().map(|ev| ev.u64));
        Ok(())
    }
}

/// A keep-alive client connection with at most one request in flight.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    len: usize,
    /// When the request in flight was due (ns).
    due: Option<u64>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        Ok(Self {
            s,
            buf: vec![0; 16 * 1024],
            len: 0,
            due: None,
        })
    }

    fn send(&mut self, due: u64) -> Result<()> {
        let n = self.s.write(REQUEST).context("sending a request")?;
        ensure!(n == REQUEST.len(), "a short write to an idle connection");
        self.due = Some(due);
        Ok(())
    }

    /// Reads what is there; returns the due time of the request whose
    /// response is now complete.
    fn receive(&mut self) -> Result<Option<u64>> {
        ensure!(
            self.len < self.buf.len(),
            "a response over {} bytes",
            self.buf.len()
        );
        match self.s.read(&mut self.buf[self.len..]) {
            Ok(0) => bail!("the proxy closed the connection"),
            Ok(n) => self.len += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e).context("reading a response"),
        }
        if !response_complete(&self.buf[..self.len])? {
            return Ok(None);
        }
        self.len = 0;
        let due = self.due.take().context("a response to no request")?;
        Ok(Some(due))
    }
}

/// What one fixed-rate run measured.
struct RateRun {
    p50_us: f64,
    p99_us: f64,
    /// Recorded responses over the time from the first recorded due time to
    /// the last response: below the rate when the peer fell behind.
    achieved: f64,
    errors: usize,
    first_error: Option<String>,
    /// CPU 0 and CPU 1 busy % during the run (set by the caller).
    cpu_pct: [f64; 2],
}

/// Sends `rate` requests/s for `secs` (after `LATENCY_WARMUP`, unrecorded)
/// over `CONNS` keep-alive connections from one thread, open loop: request
/// k is due at t0 + k / rate and goes out on the longest-idle connection
/// (if none is idle it waits, and its latency counts from its due time,
/// so a stall is not hidden by sending less: no coordinated omission).
fn fixed_rate(port: u16, rate: f64, secs: f64) -> Result<RateRun> {
    use std::os::fd::AsRawFd as _;
    // Timer wake-ups on time: the default slack is 50 µs.
    // SAFETY: prctl on the calling thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64) };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let poller = Poller::new()?;
    let mut conns = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let c = Conn::open(addr)?;
        poller.add(c.s.as_raw_fd(), u64::try_from(i)?)?;
        conns.push(c);
    }
    let mut idle: std::collections::VecDeque<usize> = (0..CONNS).collect();
    let t0 = lb::trust::monotonic_ns() + 1_000_000;
    let due = |k: u64| t0 + (k as f64 * 1e9 / rate) as u64;
    let record_from = t0 + u64::try_from(LATENCY_WARMUP.as_nanos())?;
    let end = record_from + (secs * 1e9) as u64;
    let give_up = end + 5_000_000_000;
    let mut lat = Vec::with_capacity((rate * secs) as usize + 1024);
    let (mut next, mut last_done) = (0u64, record_from);
    let (mut errors, mut first_error) = (0, None::<String>);
    let mut ready = Vec::new();
    loop {
        let now = lb::trust::monotonic_ns();
        while due(next) < end && due(next) <= now {
            let Some(i) = idle.pop_front() else { break };
            if let Err(e) = conns[i].send(due(next)) {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
                poller.remove(conns[i].s.as_raw_fd());
                continue;
            }
            next += 1;
        }
        let in_flight = conns.iter().filter(|c| c.due.is_some()).count();
        if due(next) >= end && in_flight == 0 {
            break;
        }
        ensure!(
            idle.len() + in_flight > 0,
            "every connection to {addr} failed: {}",
            first_error.unwrap_or_default()
        );
        ensure!(
            now < give_up,
            "{in_flight} responses from {addr} still missing 5 s after the last request was due"
        );
        let until = (due(next) < end && !idle.is_empty()).then(|| due(next));
        poller.wait(until, &mut ready)?;
        for &token in &ready {
            let i = usize::try_from(token)?;
            match conns[i].receive() {
                Ok(None) => {}
                Ok(Some(was_due)) => {
                    let done = lb::trust::monotonic_ns();
                    if was_due >= record_from {
                        lat.push(done - was_due);
                        last_done = done;
                    }
                    idle.push_back(i);
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                    poller.remove(conns[i].s.as_raw_fd());
                    conns[i].due = None;
                }
            }
        }
    }
    ensure!(
        !lat.is_empty(),
        "no request completed at {addr}: {}",
        first_error.unwrap_or_default()
    );
    lat.sort_unstable();
    let pct = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    Ok(RateRun {
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        achieved: lat.len() as f64 / ((last_done - record_from) as f64 / 1e9),
        errors,
        first_error,
        cpu_pct: [f64::NAN; 2],
    })
}

// ---- summaries -----------------------------------------------------------

/// Everything measured for one target, one entry per run.
#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    requests: u64,
    bad: u64,
    proc_us: Vec<f64>,
    cpu0_us: Vec<f64>,
    cpu0_softirq_us: Vec<f64>,
    cpu0_pct: Vec<f64>,
    cpu1_pct: Vec<f64>,
    backend1_us: Vec<f64>,
    backend2_us: Vec<f64>,
    /// The fixed-rate runs: [at the target's load, at `LATENCY_LOAD` of
    /// HAProxy's saturation].
    lat: [Lat; 2],
}

/// What the fixed-rate runs at one rate measured, one entry per run.
#[derive(Default)]
struct Lat {
    p50: Vec<f64>,
    p99: Vec<f64>,
    achieved: Vec<f64>,
    cpu0_pct: Vec<f64>,
    cpu1_pct: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
}

impl Lat {
    fn add(&mut self, r: RateRun) {
        self.p50.push(r.p50_us);
        self.p99.push(r.p99_us);
        self.achieved.push(r.achieved);
        self.cpu0_pct.push(r.cpu_pct[0]);
        self.cpu1_pct.push(r.cpu_pct[1]);
        self.errors += r.errors;
        if self.first_error.is_none() {
            self.first_error = r.first_error;
        }
    }
}

impl Samples {
    fn add_wrk(&mut self, r: WrkRun) {
        self.rps.push(r.rps);
        self.requests += r.requests;
        self.bad += r.bad;
        if let Some(us) = r.proc_us {
            self.proc_us.push(us);
        }
        self.cpu0_us.push(r.cpu0_us);
        self.cpu0_softirq_us.push(r.cpu0_softirq_us);
        self.cpu0_pct.push(r.cpu0_pct);
        self.cpu1_pct.push(r.cpu1_pct);
        self.backend1_us
            .push(r.backend_us.first().copied().unwrap_or(f64::NAN));
        self.backend2_us
            .push(r.backend_us.get(1).copied().unwrap_or(f64::NAN));
    }
}

fn med(v: &[f64]) -> f64 {
    summarize(v.to_vec()).median
}

/// The order of round `r`: rotated, so no target always runs first.
fn round_order<const N: usize>(targets: [Target; N], r: usize) -> [Target; N] {
    let mut t = targets;
    t.rotate_left(r % N);
    t
}

// ---- the report ----------------------------------------------------------

fn machine() -> String {
    format!(
        "{}- HAProxy: {}\n- nginx: {}\n- wrk: {}\n- lb: {}\n- date: {}\n",
        cpu_and_kernel(),
        first_line("/usr/sbin/haproxy", &["-v"]),
        first_line("/usr/sbin/nginx", &["-v"]),
        first_line("wrk", &["-v"]),
        lb_version(),
        first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    )
}

/// A chart row, none for a figure not measured (shown `–` in the tables).
fn row(name: &str, s: Summary) -> Option<Row> {
    (!s.median.is_nan()).then(|| Row::new(name, s))
}

/// The `- what: version` lines of the machine description, without the CPU
/// and the kernel (the combined report describes the machine itself) and
/// the date.
fn versions(machine: &str) -> Vec<(String, String)> {
    machine
        .lines()
        .filter_map(|l| l.strip_prefix("- ")?.split_once(": "))
        .filter(|(what, _)| !matches!(*what, "CPU" | "kernel" | "date"))
        .map(|(what, v)| (what.to_owned(), v.to_owned()))
        .collect()
}

struct Report<'a> {
    quick: bool,
    plan: &'a Plan,
    samples: &'a [Samples; 4],
    /// The fixed rates: [at the target's load, `LATENCY_LOAD` of HAProxy's
    /// saturation].
    rates: [f64; 2],
    /// The calibration's steps: (rate, CPU 0 busy %).
    calibration: &'a [(f64, f64)],
    fleet_cmds: &'a [(String, String)],
    configs_dir: &'a Path,
    elapsed: Duration,
    /// CPU 0 and CPU 1 busy % before the run (see `background_load`).
    background: [f64; 2],
    /// The machine description (see `machine`).
    machine: &'a str,
}

impl Report<'_> {
    fn s(&self, t: Target) -> &Samples {
        &self.samples[t.index()]
    }

    fn header(&self, md: &mut String) {
        let p = self.plan;
        let _ = writeln!(md, "# Proxy benchmark: lb, HAProxy, nginx\n");
        let _ = writeln!(
            md,
            "Written by `cargo xtask bench proxy{}` in {:.0} s. Keep-alive HTTP/1.1, each peer \
             with one worker pinned to CPU {PROXY_CPU}; wrk, the two nginx backends (100-byte \
             body) and the constant-rate client on CPU {LOAD_CPU}. Every figure is the median \
             of {} runs, range in brackets; ratios are against HAProxy in the same run. Runs \
             are interleaved (the order rotates each round).\n",
            if self.quick { " --quick" } else { "" },
            self.elapsed.as_secs_f64(),
            p.runs
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

    fn commands(&self, md: &mut String) {
        let p = self.plan;
        let _ = writeln!(
            md,
            "## Commands\n\n\
             The configs are in `{cfg}/` (`backend-nginx.conf` is backend 1; backend 2 differs \
             only in its port, {b2}, and file names). The run used a temporary directory, \
             removed afterwards; to rerun by hand, use any directory as nginx's prefix and for \
             the pid and log files. Started (each killed by pid at the end):\n\n```",
            cfg = self.configs_dir.display(),
            b2 = BACKEND_PORTS[1],
        );
        for (what, line) in self.fleet_cmds {
            let _ = writeln!(md, "# {what}\n{line}");
        }
        let _ = writeln!(
            md,
            "```\n\nSaturation ({} s warm-up per target first, not recorded), per run:\n\n```",
            p.warmup_secs
        );
        for line in self.wrk_lines() {
            let _ = writeln!(md, "{line}");
        }
        let _ = writeln!(
            md,
            "```\n\nFixed rates ({:.0} requests/s, the load of the target, and {:.0} requests/s = \
             {:.0}% of HAProxy's median saturation rate; this program's open-loop client: one \
             thread waiting in epoll_pwait2, {CONNS} keep-alive connections; request k is due at \
             k / rate and goes out on the longest-idle connection, its latency counted from its \
             due time; {:.1} s unrecorded warm-up, then {} s): first the calibration (once, {} s \
             a step, through HAProxy), then each rate, per run:\n\n```",
            self.rates[0],
            self.rates[1],
            LATENCY_LOAD * 100.0,
            LATENCY_WARMUP.as_secs_f64(),
            p.latency_secs,
            p.calibration_secs
        );
        for line in self.rate_lines() {
            let _ = writeln!(md, "{line}");
        }
        let _ = writeln!(md, "```\n");
    }

    /// The saturation runs' command lines.
    fn wrk_lines(&self) -> Vec<String> {
        Target::ALL
            .iter()
            .map(|&t| shell_line(&wrk_argv(t, self.plan.wrk_secs)))
            .collect()
    }

    /// The fixed-rate runs' command lines: the calibration's, then each
    /// rate's.
    fn rate_lines(&self) -> Vec<String> {
        let line = |t: Target, rate: f64, secs: f64| {
            format!(
                "taskset -c {LOAD_CPU} target/release/lb-bench-proxy --load {} --rate {rate:.0} \
                 --secs {secs}",
                t.port(),
            )
        };
        self.calibration
            .iter()
            .map(|&(rate, _)| line(Target::Haproxy, rate, self.plan.calibration_secs))
            .chain(self.rates.iter().flat_map(|&rate| {
                Target::PEERS
                    .iter()
                    .map(move |&t| line(t, rate, self.plan.latency_secs))
            }))
            .collect()
    }

    fn rps_table(&self, md: &mut String) {
        let h = med(&self.s(Target::Haproxy).rps);
        let _ = writeln!(
            md,
            "## Requests/s at saturation (wrk -t1 -c{CONNS}, {} s)\n\n\
             CPU {PROXY_CPU} / CPU {LOAD_CPU} busy: share of the run's wall time (from \
             /proc/stat). When CPU {LOAD_CPU} is near 100% the load generator and the backends, \
             not the proxy, set the rate.\n\n\
             | target | requests/s | vs HAProxy | CPU {PROXY_CPU} busy % | CPU {LOAD_CPU} busy % | \
             failed requests |\n|---|---|---|---|---|---|",
            self.plan.wrk_secs
        );
        for t in Target::ALL {
            let s = self.s(t);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} of {} |",
                t.name(),
                fmt(summarize(s.rps.clone()), 0),
                ratio(med(&s.rps), h),
                fmt(summarize(s.cpu0_pct.clone()), 0),
                fmt(summarize(s.cpu1_pct.clone()), 0),
                s.bad,
                s.requests
            );
        }
        let _ = writeln!(md);
    }

    fn cpu_table(&self, md: &mut String) {
        let h = self.s(Target::Haproxy);
        let _ = writeln!(
            md,
            "## CPU µs per request (during the saturation runs)\n\n\
             Process: utime + stime of the proxy's process tree (/proc/PID/stat fields 14 and \
             15, all threads; nginx: master and worker) over requests completed. CPU \
             {PROXY_CPU} total: all busy time of CPU {PROXY_CPU} (user, system, irq, softirq) \
             over requests completed, so the kernel's socket and loopback work done there shows \
             too. Backends: each backend nginx's CPU per request through the target (round \
             robin: about equal halves). Clock tick: {:.0} ms.\n\n\
             | target | process µs/req | vs HAProxy | CPU {PROXY_CPU} total µs/req | vs HAProxy \
             | of which softirq µs/req | backend 1 / backend 2 µs/req |\n\
             |---|---|---|---|---|---|---|",
            1000.0 / clk_tck()
        );
        for t in Target::ALL {
            let s = self.s(t);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.2} / {:.2} |",
                t.name(),
                fmt(summarize(s.proc_us.clone()), 2),
                ratio(med(&s.proc_us), med(&h.proc_us)),
                fmt(summarize(s.cpu0_us.clone()), 2),
                ratio(med(&s.cpu0_us), med(&h.cpu0_us)),
                fmt(summarize(s.cpu0_softirq_us.clone()), 2),
                med(&s.backend1_us),
                med(&s.backend2_us),
            );
        }
        let _ = writeln!(md);
    }

    /// The heading of fixed rate `i`.
    fn rate_title(&self, i: usize) -> String {
        if i == 0 {
            format!(
                "{:.0} requests/s (HAProxy's CPU {PROXY_CPU} {TARGET_BUSY:.0}% busy)",
                self.rates[0]
            )
        } else {
            format!(
                "{:.0} requests/s ({:.0}% of HAProxy's saturation rate)",
                self.rates[1],
                LATENCY_LOAD * 100.0
            )
        }
    }

    fn latency_table(&self, md: &mut String, i: usize) {
        let h = &self.s(Target::Haproxy).lat[i];
        let _ = writeln!(md, "## Latency at {}\n", self.rate_title(i));
        if i == 0 {
            let steps: Vec<String> = self
                .calibration
                .iter()
                .map(|(rate, busy)| format!("{rate:.0}/s: {busy:.0}%"))
                .collect();
            let _ = writeln!(
                md,
                "The load of the target: the rate at which HAProxy keeps its CPU half busy, \
                 as an operator sizes a proxy to run at half load. Found by running the \
                 client through HAProxy and scaling the rate by {TARGET_BUSY:.0}% over CPU \
                 {PROXY_CPU}'s busy % (steps: {}).\n",
                steps.join(", ")
            );
        } else {
            let busy1 = Target::PEERS
                .iter()
                .map(|&t| med(&self.s(t).lat[1].cpu1_pct))
                .fold(0.0, f64::max);
            let _ = writeln!(
                md,
                "Half of HAProxy's saturation rate (wrk). This client costs CPU {LOAD_CPU} more \
                 per request than wrk does: at this rate CPU {LOAD_CPU} (the client and the \
                 backends) was up to {busy1:.0}% busy.\n"
            );
        }
        let _ = writeln!(
            md,
            "From each request's scheduled send time to its whole response. Achieved: recorded \
             responses over the time from the first recorded due time to the last response \
             (below the rate when a peer fell behind).\n\n\
             | peer | p50 µs | vs HAProxy | p99 µs | vs HAProxy | achieved requests/s | \
             CPU {PROXY_CPU} / CPU {LOAD_CPU} busy % | failed connections |\n\
             |---|---|---|---|---|---|---|---|"
        );
        for t in Target::PEERS {
            let s = &self.s(t).lat[i];
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.0} / {:.0} | {}{} |",
                t.name(),
                fmt(summarize(s.p50.clone()), 0),
                ratio(med(&s.p50), med(&h.p50)),
                fmt(summarize(s.p99.clone()), 0),
                ratio(med(&s.p99), med(&h.p99)),
                fmt(summarize(s.achieved.clone()), 0),
                med(&s.cpu0_pct),
                med(&s.cpu1_pct),
                s.errors,
                s.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(md);
    }

    fn tax_table(&self, md: &mut String) {
        let d = med(&self.s(Target::Direct).rps);
        let _ = writeln!(
            md,
            "## Proxy tax (proxied requests/s over direct requests/s)\n\n\
             Direct: wrk straight to backend 1, so nothing runs on CPU {PROXY_CPU}; proxied, the \
             proxy has CPU {PROXY_CPU} to itself while wrk and both backends share CPU \
             {LOAD_CPU}.\n\n| peer | proxied / direct |\n|---|---|"
        );
        for t in Target::PEERS {
            let _ = writeln!(md, "| {} | {} |", t.name(), ratio(med(&self.s(t).rps), d));
        }
        let _ = writeln!(md);
    }

    fn findings(&self, md: &mut String) {
        let (h, n, l) = (
            self.s(Target::Haproxy),
            self.s(Target::Nginx),
            self.s(Target::Lb),
        );
        let cpu_ratio = med(&l.proc_us) / med(&h.proc_us);
        let met = cpu_ratio <= 1.0;
        let load_bound = Target::PEERS
            .iter()
            .any(|&t| med(&self.s(t).cpu1_pct) >= 95.0);
        let spread = Target::PEERS
            .iter()
            .map(|&t| {
                let r = summarize(self.s(t).rps.clone());
                (r.max - r.min) / r.median * 100.0
            })
            .fold(0.0, f64::max);
        let lat_cpu1 = |i: usize| {
            Target::PEERS
                .iter()
                .map(|&t| med(&self.s(t).lat[i].cpu1_pct))
                .fold(0.0, f64::max)
        };
        let (lh, ll, ln) = (&h.lat, &l.lat, &n.lat);
        let p99_met = med(&ll[0].p99) <= med(&lh[0].p99);
        let _ = writeln!(
            md,
            "## What this shows\n\n\
             At saturation lb served {:.0} requests/s, HAProxy {:.0} and nginx {:.0} (lb = {} \
             HAProxy, {} nginx). lb's process spent {:.2} µs of CPU per request, HAProxy \
             {:.2} µs and nginx {:.2} µs: lb = {cpu_ratio:.2}× HAProxy, so the target (lb's \
             CPU per request ≤ 1.0× HAProxy's) is **{}**. Counting all of CPU {PROXY_CPU} \
             (the kernel's work too) lb is at {} HAProxy.\n\n\
             At {} lb's p50/p99 was {:.0}/{:.0} µs against HAProxy's {:.0}/{:.0} µs and \
             nginx's {:.0}/{:.0} µs: the target (lb's p99 ≤ HAProxy's at half load) is \
             **{}**. At {} lb's p50/p99 was {:.0}/{:.0} µs, HAProxy's {:.0}/{:.0} µs, \
             nginx's {:.0}/{:.0} µs. {}{}{}{}",
            med(&l.rps),
            med(&h.rps),
            med(&n.rps),
            ratio(med(&l.rps), med(&h.rps)),
            ratio(med(&l.rps), med(&n.rps)),
            med(&l.proc_us),
            med(&h.proc_us),
            med(&n.proc_us),
            if met { "met" } else { "not met" },
            ratio(med(&l.cpu0_us), med(&h.cpu0_us)),
            self.rate_title(0),
            med(&ll[0].p50),
            med(&ll[0].p99),
            med(&lh[0].p50),
            med(&lh[0].p99),
            med(&ln[0].p50),
            med(&ln[0].p99),
            if p99_met { "met" } else { "not met" },
            self.rate_title(1),
            med(&ll[1].p50),
            med(&ll[1].p99),
            med(&lh[1].p50),
            med(&lh[1].p99),
            med(&ln[1].p50),
            med(&ln[1].p99),
            if load_bound {
                format!(
                    "CPU {LOAD_CPU} (wrk and the backends) was near saturation in at least one \
                     peer's run, so requests/s partly measures the load side; CPU per request \
                     is the figure that compares the proxies. "
                )
            } else {
                String::new()
            },
            [0, 1]
                .iter()
                .filter(|&&i| lat_cpu1(i) >= 80.0)
                .map(|&i| format!(
                    "At {:.0} requests/s CPU {LOAD_CPU} (the client and the backends) was up \
                     to {:.0}% busy, so those latencies include waiting for CPU {LOAD_CPU}, the \
                     same for every peer; their p99 figures mostly show that and vary from run \
                     to run. ",
                    self.rates[i],
                    lat_cpu1(i)
                ))
                .collect::<String>(),
            if spread > 15.0 {
                format!(
                    "Requests/s of one peer varied by up to {spread:.0}% between runs (max − min \
                     over median): read the medians and the same-run ratios, not single runs. "
                )
            } else {
                String::new()
            },
            if self.quick {
                "This was a quick run: its numbers are noise."
            } else {
                ""
            }
        );
        // No trailing blank from the empty optional sentences.
        md.truncate(md.trim_end().len());
        md.push_str("\n\n");
    }

    /// The JSON beside the report: the same medians and ranges as the
    /// tables, the targets as the findings state them.
    fn results(&self) -> Results {
        let rows = |targets: &[Target], v: fn(&Samples) -> &Vec<f64>| {
            targets
                .iter()
                .filter_map(|&t| row(t.name(), summarize(v(self.s(t)).clone())))
                .collect::<Vec<_>>()
        };
        let haproxy = || Some(Target::Haproxy.name().to_owned());
        let direct = med(&self.s(Target::Direct).rps);
        let latency = |p: &str, i: usize| format!("{p} latency at {}", self.rate_title(i));
        let comparisons = vec![
            Comparison {
                id: "proxy-rps".into(),
                title: format!(
                    "Keep-alive requests/s at saturation (wrk -t1 -c{CONNS}, {} s)",
                    self.plan.wrk_secs
                ),
                unit: "requests/s".into(),
                lower_is_better: false,
                baseline: haproxy(),
                rows: rows(&Target::ALL, |s| &s.rps),
            },
            Comparison {
                id: "proxy-cpu-per-request".into(),
                title: "Proxy process CPU µs per keep-alive request (utime + stime, saturation \
                        runs)"
                    .into(),
                unit: "µs".into(),
                lower_is_better: true,
                baseline: haproxy(),
                rows: rows(&Target::PEERS, |s| &s.proc_us),
            },
            Comparison {
                id: "proxy-p50".into(),
                title: latency("p50", 0),
                unit: "µs".into(),
                lower_is_better: true,
                baseline: haproxy(),
                rows: rows(&Target::PEERS, |s| &s.lat[0].p50),
            },
            Comparison {
                id: "proxy-p99".into(),
                title: latency("p99", 0),
                unit: "µs".into(),
                lower_is_better: true,
                baseline: haproxy(),
                rows: rows(&Target::PEERS, |s| &s.lat[0].p99),
            },
            Comparison {
                id: "proxy-p50-half-saturation".into(),
                title: latency("p50", 1),
                unit: "µs".into(),
                lower_is_better: true,
                baseline: haproxy(),
                rows: rows(&Target::PEERS, |s| &s.lat[1].p50),
            },
            Comparison {
                id: "proxy-p99-half-saturation".into(),
                title: latency("p99", 1),
                unit: "µs".into(),
                lower_is_better: true,
                baseline: haproxy(),
                rows: rows(&Target::PEERS, |s| &s.lat[1].p99),
            },
            Comparison {
                id: "proxy-tax".into(),
                title: "Proxy tax: proxied requests/s over direct requests/s (ratio of the \
                        medians, so no range)"
                    .into(),
                unit: "×".into(),
                lower_is_better: false,
                baseline: None,
                rows: Target::PEERS
                    .iter()
                    .filter_map(|&t| {
                        let r = med(&self.s(t).rps) / direct;
                        row(
                            t.name(),
                            Summary {
                                median: r,
                                min: r,
                                max: r,
                            },
                        )
                    })
                    .collect(),
            },
        ];
        let (h, l) = (self.s(Target::Haproxy), self.s(Target::Lb));
        let cpu_ratio = med(&l.proc_us) / med(&h.proc_us);
        let targets = vec![
            results::Target {
                what: "Proxy process CPU per keep-alive request vs HAProxy".into(),
                bound: "≤ 1.0×".into(),
                measured: format!(
                    "{cpu_ratio:.2}× (lb {:.2} µs, HAProxy {:.2} µs)",
                    med(&l.proc_us),
                    med(&h.proc_us)
                ),
                met: cpu_ratio <= 1.0,
            },
            results::Target {
                what: format!(
                    "p99 latency at half load, {:.0} requests/s (HAProxy's CPU {PROXY_CPU} \
                     {TARGET_BUSY:.0}% busy), vs HAProxy",
                    self.rates[0]
                ),
                bound: "≤ HAProxy's".into(),
                measured: format!(
                    "{} (lb {:.0} µs, HAProxy {:.0} µs); at {:.0}% of HAProxy's saturation \
                     rate {} (lb {:.0} µs, HAProxy {:.0} µs)",
                    ratio(med(&l.lat[0].p99), med(&h.lat[0].p99)),
                    med(&l.lat[0].p99),
                    med(&h.lat[0].p99),
                    LATENCY_LOAD * 100.0,
                    ratio(med(&l.lat[1].p99), med(&h.lat[1].p99)),
                    med(&l.lat[1].p99),
                    med(&h.lat[1].p99)
                ),
                met: med(&l.lat[0].p99) <= med(&h.lat[0].p99),
            },
        ];
        Results {
            bench: "proxy".into(),
            title: "Proxy benchmark: lb, HAProxy, nginx".into(),
            quick: self.quick,
            runs: self.plan.runs,
            comparisons,
            targets,
            versions: versions(self.machine),
            commands: self
                .fleet_cmds
                .iter()
                .map(|(_, line)| line.clone())
                .chain(self.wrk_lines())
                .chain(self.rate_lines())
                .collect(),
        }
    }

    fn render(&self) -> String {
        let mut md = String::new();
        self.header(&mut md);
        self.findings(&mut md);
        self.rps_table(&mut md);
        self.cpu_table(&mut md);
        self.latency_table(&mut md, 0);
        self.latency_table(&mut md, 1);
        self.tax_table(&mut md);
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
        ("backend1.conf", "backend-nginx.conf"),
    ] {
        std::fs::copy(dir.0.join(from), to.join(name))
            .with_context(|| format!("copying {from} to {}", to.display()))?;
    }
    Ok(())
}

// ---- main ----------------------------------------------------------------

/// One fixed-rate run through `t`, with both CPUs' busy % while it ran.
fn rate_run(t: Target, rate: f64, secs: f64) -> Result<RateRun> {
    let before = [cpu_ticks(PROXY_CPU)?, cpu_ticks(LOAD_CPU)?];
    let mut run = fixed_rate(t.port(), rate, secs)
        .with_context(|| format!("fixed rate through {}", t.name()))?;
    let after = [cpu_ticks(PROXY_CPU)?, cpu_ticks(LOAD_CPU)?];
    run.cpu_pct = [0, 1].map(|i| busy_pct(before[i], after[i]));
    Ok(run)
}

/// The rate at which HAProxy keeps CPU 0 `TARGET_BUSY` % busy: from a
/// quarter of its saturation rate, each step runs the fixed-rate client
/// through HAProxy and scales the rate by `TARGET_BUSY` over the busy %
/// it measured (CPU time grows about linearly with the rate). Returns the
/// rate and each step's (rate, CPU 0 busy %).
fn calibrate(saturation: f64, secs: f64) -> Result<(f64, Vec<(f64, f64)>)> {
    let (mut rate, mut steps) = (0.25 * saturation, Vec::new());
    for _ in 0..CALIBRATION_STEPS {
        let run = rate_run(Target::Haproxy, rate, secs).context("calibrating the half load")?;
        let busy = run.cpu_pct[0];
        ensure!(
            busy > 0.0,
            "CPU {PROXY_CPU} was idle at {rate:.0} requests/s"
        );
        steps.push((rate, busy));
        // From what was achieved: the client may have fallen behind.
        rate = (run.achieved * TARGET_BUSY / busy).clamp((0.02 * saturation).max(1.0), saturation);
    }
    Ok((rate, steps))
}

/// What `measure` found: each target's samples, the two fixed rates
/// ([target load, `LATENCY_LOAD` of HAProxy's saturation]) and the
/// calibration's steps.
struct Measured {
    samples: [Samples; 4],
    rates: [f64; 2],
    calibration: Vec<(f64, f64)>,
}

fn measure(fleet: &Fleet, plan: &Plan) -> Result<Measured> {
    let mut samples: [Samples; 4] = Default::default();
    eprintln!("bench proxy: warm-up, {} s per target", plan.warmup_secs);
    for t in Target::ALL {
        run_wrk(t, plan.warmup_secs)?;
    }
    for r in 0..plan.runs {
        for t in round_order(Target::ALL, r) {
            eprintln!(
                "bench proxy: saturation, run {}/{}, {}",
                r + 1,
                plan.runs,
                t.name()
            );
            let run = saturate(t, fleet.pids[t.index()], &fleet.backend_pids, plan.wrk_secs)
                .with_context(|| format!("saturating {}", t.name()))?;
            samples[t.index()].add_wrk(run);
        }
    }
    let saturation = med(&samples[Target::Haproxy.index()].rps);
    ensure!(
        saturation >= 4.0,
        "HAProxy's saturation rate is {saturation}: nothing to measure at"
    );
    eprintln!("bench proxy: finding the rate that keeps CPU {PROXY_CPU} {TARGET_BUSY}% busy");
    let (target_rate, calibration) = calibrate(saturation, plan.calibration_secs)?;
    let rates = [target_rate, LATENCY_LOAD * saturation];
    for (i, &rate) in rates.iter().enumerate() {
        for r in 0..plan.runs {
            for t in round_order(Target::PEERS, r) {
                eprintln!(
                    "bench proxy: {rate:.0} requests/s, run {}/{}, {}",
                    r + 1,
                    plan.runs,
                    t.name()
                );
                let run = rate_run(t, rate, plan.latency_secs)?;
                samples[t.index()].lat[i].add(run);
            }
        }
    }
    Ok(Measured {
        samples,
        rates,
        calibration,
    })
}

fn load_only(port: u16, rate: f64, secs: f64) -> Result<()> {
    let r = fixed_rate(port, rate, secs)?;
    println!(
        "127.0.0.1:{port} at {rate:.0} requests/s for {secs} s: p50 {:.0} µs, p99 {:.0} µs, \
         achieved {:.0} requests/s, failed connections {}{}",
        r.p50_us,
        r.p99_us,
        r.achieved,
        r.errors,
        r.first_error
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    Ok(())
}

fn main() -> Result<()> {
    let o = opts()?;
    if let Some((port, rate, secs)) = o.load {
        return load_only(port, rate, secs);
    }
    let started = Instant::now();
    // Everything this program runs or starts inherits CPU 1, unless started
    // through `taskset -c 0`.
    pin_to_cpu(LOAD_CPU).context("pinning to CPU 1 (this needs 2 CPUs)")?;
    for tool in ["/usr/sbin/haproxy", "/usr/sbin/nginx", "/usr/bin/wrk"] {
        ensure!(
            Path::new(tool).exists(),
            "{tool} is missing: run `cargo xtask setup`"
        );
    }
    let plan = Plan::new(o.quick);
    let background = background_load([PROXY_CPU, LOAD_CPU])?;
    if background[0].max(background[1]) > BACKGROUND_LIMIT {
        eprintln!(
            "bench proxy: WARNING: CPU {PROXY_CPU} is {:.0}% and CPU {LOAD_CPU} {:.0}% busy before \
             the run: other processes will skew the figures",
            background[0], background[1]
        );
    }
    let dir = Scratch::new("lb-bench-proxy")?;
    eprintln!(
        "bench proxy: starting the backends and peers in {}",
        dir.0.display()
    );
    let fleet = start_fleet(&dir)?;
    for t in Target::ALL {
        check_answers(t)?;
    }
    let Measured {
        samples,
        rates,
        calibration,
    } = measure(&fleet, &plan)?;
    let cmds = fleet.cmdlines.clone();
    drop(fleet);

    let out_dir = o
        .out
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let configs_dir = out_dir.join("proxy-configs");
    copy_configs(&dir, &configs_dir)?;
    let machine = machine();
    let report = Report {
        quick: o.quick,
        plan: &plan,
        samples: &samples,
        rates,
        calibration: &calibration,
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
        "bench proxy: wrote {} and {}",
        o.out.display(),
        results::json_path(&o.out).display()
    );
    Ok(())
}
