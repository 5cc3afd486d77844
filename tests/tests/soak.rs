//! Soak: a bounded run of mixed traffic with a reload every 3 s, after
//! which `lb` is back where it started and every connection and request is
//! accounted for:
//!
//! - memory (`VmRSS`) and open descriptors (`/proc/PID/fd`) return to their
//!   baseline, within stated allowances;
//! - no number in `/api/status` is negative or absurd (≥ 2^62);
//! - for every frontend, the counters add up: connections accepted = the
//!   connections the clients opened; HTTP requests = responses by class +
//!   requests whose client left before the answer; 5xx = refusals by axis;
//!   TCP connections proxied = connections echoed back.
//!
//! Traffic, from one thread per kind, each bounded by the run's deadline
//! and by socket timeouts: HTTP/1.1 keep-alive requests that return their
//! session cookie, one request per new connection without a cookie (new
//! sessions, over `maxSessRate`), h2c from h2load (12 streams at once, over
//! the pool's `maxConn` and queue), TLS handshakes with curl (HTTP/1.1 and
//! h2, a ticket key file), clients that leave mid-request (a whole head
//! sent, or half a head), and TCP connections echoed by a backend. Reloads
//! alternate between two valid files that differ in the profile's
//! `maxConn`, a live limit; each must move `generation` by one.
//!
//! The duration is `LB_SOAK_SECS` (default 60; `cargo xtask soak` runs 300).
//! `lb` runs with `[xdp] mode = "off"`: no privileges needed. The test
//! prints its figures on a `SOAK` line (`-- --nocapture`);
//! docs/reliability.md quotes them.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use lb_tests::{
    backend::{EchoBackend, HttpBackend},
    client::{curl, free_addr, frontend_in, status},
    lb::{cert_gen, Lb},
    unique_tag, ScratchDir,
};
use serde_json::Value;

/// How long one socket read or write may block: far above anything `lb`
/// takes here (the queue waits 100 ms), so a hang shows as an error.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two reloads.
const RELOAD_EVERY: Duration = Duration::from_secs(3);
/// The profile's `maxConn` of the two files the reloads alternate between.
const MAX_CONN: [u64; 2] = [3, 5];
/// Descriptors `lb` may hold beyond its baseline once idle: idle keep-alive
/// connections to the HTTP backend, pooled per worker. Requests in flight
/// to the pool never exceed its `maxConn` (at most 5 here), so a worker
/// never needs more than 5 backend connections at once; the baseline holds
/// those the warm-up left. Allowance: workers × 5.
const POOLED_PER_WORKER: u64 = 5;
/// Memory `lb` may keep beyond its baseline: the allocator keeps freed
/// pages (per-thread arenas for each worker), so RSS need not return to the
/// byte; a leak of a few hundred bytes per request would pass 16 MiB within
/// the first minute of this traffic (about 10^5 requests).
const RSS_ALLOWANCE_KIB: u64 = 16 * 1024;

/// Where everything listens.
#[derive(Clone, Copy)]
struct Addrs {
    admin: SocketAddr,
    web: SocketAddr,
    secure: SocketAddr,
    raw: SocketAddr,
    http_backend: SocketAddr,
    echo_backend: SocketAddr,
}

/// The config: `web` (HTTP, `maxSessRate = 50` at the frontend level) and
/// `secure` (TLS, a ticket key file) on pool `p`, whose profile `soak` has
/// `maxConn = max_conn` with a queue of 3 for 100 ms; `raw` (TCP) on pool
/// `echo` with the default profile.
fn config(tag: &str, a: &Addrs, pair: &(PathBuf, PathBuf), keys: &Path, max_conn: u64) -> String {
    format!(
        r#"[global]
instance = "soak{tag}"
drainTimeout = "2s"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "web"
listen = "{web}"
pool = "p"
[frontend.limits]
maxSessRate = 50
[[frontend]]
name = "secure"
listen = "{secure}"
pool = "p"
tls = {{ cert = "{cert}", key = "{key}" }}
[frontend.tlsOptions]
ticketKeys = "{keys}"
[[frontend]]
name = "raw"
listen = "{raw}"
mode = "tcp"
pool = "echo"
[[pool]]
name = "p"
profile = "soak"
backends = ["{hb}"]
queue = {{ depth = 3, timeout = "100ms" }}
[[pool]]
name = "echo"
backends = ["{eb}"]
[profile.soak]
maxConn = {max_conn}
"#,
        admin = a.admin,
        web = a.web,
        secure = a.secure,
        raw = a.raw,
        cert = pair.0.display(),
        key = pair.1.display(),
        keys = keys.display(),
        hb = a.http_backend,
        eb = a.echo_backend,
    )
}

/// What the clients saw, per frontend where it matters.
#[derive(Default)]
struct Seen {
    /// TCP connections the clients opened, by frontend name.
    conns: Mutex<BTreeMap<&'static str, u64>>,
    /// Responses by frontend and status.
    statuses: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Responses that named a limit (`lb-limit`), by frontend and axis.
    limits: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Requests whose whole head was sent before the client left.
    abandoned_after_head: AtomicU64,
    /// Clients that left in the middle of a request head.
    abandoned_in_head: AtomicU64,
    /// TCP connections whose bytes came back whole.
    echoed: AtomicU64,
    /// Client-side failures (no response where one was due), as text.
    errors: Mutex<Vec<String>>,
}

impl Seen {
    fn conn(&self, front: &'static str) {
        *lock(&self.conns).entry(front).or_default() += 1;
    }

    fn response(&self, front: &'static str, status: u16, limit: Option<String>) {
        *lock(&self.statuses).entry((front, status)).or_default() += 1;
        if let Some(l) = limit {
            *lock(&self.limits).entry((front, l)).or_default() += 1;
        }
    }

    fn error(&self, what: String) {
        lock(&self.errors).push(what);
    }

    fn statuses_of(&self, front: &str) -> u64 {
        lock(&self.statuses)
            .iter()
            .filter(|((f, _), _)| *f == front)
            .map(|(_, n)| n)
            .sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// One HTTP/1.1 response read off `s` (`buf` keeps what follows it).
struct Resp {
    status: u16,
    limit: Option<String>,
    cookie: Option<String>,
    close: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Resp> {
    let mut chunk = [0u8; 16 * 1024];
    let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>| -> std::io::Result<()> {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    };
    let (limit, close) = (
        header("lb-limit"),
        header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")),
    );
    let cookie = header("set-cookie").and_then(|c| c.split(';').next().map(str::to_owned));
    if let Some(len) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        while buf.len() < head_end + len {
            fill(s, buf)?;
        }
        buf.drain(..head_end + len);
    } else if header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
    {
        let end = loop {
            if let Some(i) = find(&buf[head_end - 2..], b"\r\n0\r\n\r\n") {
                break head_end - 2 + i + 7;
            }
            fill(s, buf)?;
        };
        buf.drain(..end);
    } else {
        return Err(std::io::Error::other("a response with no length"));
    }
    Ok(Resp {
        status,
        limit,
        cookie,
        close,
    })
}

/// HTTP/1.1 keep-alive: up to 20 requests a connection, sending back the
/// session cookie once one is set (a returning user: not a new session).
fn keep_alive(addr: SocketAddr, seen: &Seen, until: Instant) {
    let mut cookie: Option<String> = None;
    while Instant::now() < until {
        let Ok(mut s) = connect(addr) else {
            seen.error("keep-alive: connect failed".into());
            continue;
        };
        seen.conn("web");
        let mut buf = Vec::new();
        for i in 0..20 {
            let path = if i % 4 == 0 { "/slow?ms=5" } else { "/" };
            let c = cookie
                .as_ref()
                .map(|c| format!("cookie: {c}\r\n"))
                .unwrap_or_default();
            let req = format!("GET {path} HTTP/1.1\r\nhost: soak\r\n{c}\r\n");
            if let Err(e) = s.write_all(req.as_bytes()) {
                seen.error(format!("keep-alive write: {e}"));
                break;
            }
            match read_response(&mut s, &mut buf) {
                Ok(r) => {
                    seen.response("web", r.status, r.limit);
                    if r.cookie.is_some() {
                        cookie = r.cookie;
                    }
                    if r.close {
                        break;
                    }
                    if r.status == 503 {
                        // Refused: back off a little, as a client would.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                Err(e) => {
                    seen.error(format!("keep-alive read: {e}"));
                    break;
                }
            }
        }
    }
}

/// One `GET /` without a cookie on a new connection to `web`, counted in
/// `seen` (an error named by `who`); the response, if one came.
fn one_request(addr: SocketAddr, seen: &Seen, who: &str) -> Option<Resp> {
    let Ok(mut s) = connect(addr) else {
        seen.error(format!("{who}: connect failed"));
        return None;
    };
    seen.conn("web");
    let req = "GET / HTTP/1.1\r\nhost: soak\r\nconnection: close\r\n\r\n";
    let mut buf = Vec::new();
    match s
        .write_all(req.as_bytes())
        .and_then(|()| read_response(&mut s, &mut buf))
    {
        Ok(r) => {
            seen.response("web", r.status, r.limit.clone());
            Some(r)
        }
        Err(e) => {
            seen.error(format!("{who}: {e}"));
            None
        }
    }
}

/// One request per new connection, no cookie: every one a new session.
fn new_connections(addr: SocketAddr, seen: &Seen, until: Instant) {
    while Instant::now() < until {
        let _ = one_request(addr, seen, "new-conn");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Clients that leave mid-request: in turn a whole head for a response
/// 100 ms away (left after 20 ms), and half a head.
fn leavers(addr: SocketAddr, seen: &Seen, until: Instant) {
    let mut whole = true;
    while Instant::now() < until {
        let Ok(mut s) = connect(addr) else {
            seen.error("leaver: connect failed".into());
            continue;
        };
        seen.conn("web");
        let sent = if whole {
            s.write_all(b"GET /slow?ms=100 HTTP/1.1\r\nhost: soak\r\n\r\n")
        } else {
            s.write_all(b"GET / HTTP/1.1\r\nhost: so")
        };
        match sent {
            Ok(()) if whole => seen.abandoned_after_head.fetch_add(1, Relaxed),
            Ok(()) => seen.abandoned_in_head.fetch_add(1, Relaxed),
            Err(e) => {
                seen.error(format!("leaver write: {e}"));
                0
            }
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(s);
        whole = !whole;
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// A valid session cookie from `web` (tries until one request is admitted
/// under `maxSessRate`, up to `until`).
fn session_cookie(addr: SocketAddr, seen: &Seen, until: Instant) -> Option<String> {
    while Instant::now() < until {
        if let Some(cookie) = one_request(addr, seen, "cookie").and_then(|r| r.cookie) {
            return Some(cookie);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// h2c (prior knowledge) from h2load with a session cookie: one
/// connection, 40 requests, 12 streams at once, each answered after 20 ms:
/// over the pool's `maxConn` and queue, so some get 503 `pool/maxConn`.
/// Responses are counted by class from h2load's `status codes:` line.
fn h2c(addr: SocketAddr, seen: &Seen, until: Instant) {
    let Some(cookie) = session_cookie(addr, seen, until) else {
        return;
    };
    let url = format!("http://{addr}/slow?ms=20");
    while Instant::now() < until {
        let out = std::process::Command::new("timeout")
            .args(["30", "h2load", "-n", "40", "-c", "1", "-m", "12", "-H"])
            .arg(format!("cookie: {cookie}"))
            .arg(&url)
            .output();
        let text = match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => {
                seen.error(format!("h2load: {e}"));
                return;
            }
        };
        let Some(codes) = text.lines().find_map(|l| l.strip_prefix("status codes:")) else {
            seen.error(format!("h2load printed no status codes:\n{text}"));
            continue;
        };
        seen.conn("web");
        // `N 2xx, N 3xx, N 4xx, N 5xx`: counted as x00 of each class.
        let mut total = 0;
        for part in codes.split(',') {
            let mut w = part.split_whitespace();
            let (Some(n), Some(class)) = (w.next(), w.next()) else {
                continue;
            };
            let (Ok(n), Some(c)) = (n.parse::<u64>(), class.chars().next()) else {
                continue;
            };
            let status = u16::try_from(c.to_digit(10).unwrap_or(0) * 100).unwrap_or(0);
            *lock(&seen.statuses).entry(("web", status)).or_default() += n;
            total += n;
        }
        if total != 40 {
            seen.error(format!("h2load: {total} responses of 40:\n{text}"));
        }
    }
}

/// TLS: a new curl process a request, so a full handshake each, in turn
/// HTTP/1.1 and h2 (ALPN).
fn tls(addr: SocketAddr, seen: &Seen, until: Instant) {
    let mut h2 = false;
    while Instant::now() < until {
        let proto = if h2 { "--http2" } else { "--http1.1" };
        match curl(&format!("https://{addr}/slow?ms=5"), &["-k", proto]) {
            // 7: could not connect (never accepted).
            Ok(r) if r.exit == 7 => seen.error("curl: could not connect".into()),
            Ok(r) => {
                seen.conn("secure");
                if r.exit == 0 {
                    let limit = r.header("lb-limit").map(str::to_owned);
                    seen.response("secure", r.status, limit);
                } else {
                    seen.error(format!("curl exit {}", r.exit));
                }
            }
            Err(e) => seen.error(format!("curl: {e:#}")),
        }
        h2 = !h2;
    }
}

/// TCP: 1 KiB written, the write half shut, the echo read back whole.
fn tcp(addr: SocketAddr, seen: &Seen, until: Instant) {
    let data = vec![b'x'; 1024];
    while Instant::now() < until {
        let Ok(mut s) = connect(addr) else {
            seen.error("tcp: connect failed".into());
            continue;
        };
        seen.conn("raw");
        let mut back = Vec::new();
        let r = s
            .write_all(&data)
            .and_then(|()| s.shutdown(Shutdown::Write))
            .and_then(|()| s.read_to_end(&mut back));
        match r {
            Ok(_) if back == data => {
                seen.echoed.fetch_add(1, Relaxed);
            }
            Ok(n) => seen.error(format!("tcp: {n} bytes back of 1024")),
            Err(e) => seen.error(format!("tcp: {e}")),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Descriptors `pid` has open.
fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count() as u64
}

fn num(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not a counter (u64): {v}"))
}

/// Every number in `v` is ≥ 0 and < 2^62; the path of each offender.
fn absurd_numbers(v: &Value, path: &str, out: &mut Vec<String>) {
    const LIMIT: f64 = 4_611_686_018_427_387_904.0; // 2^62
    match v {
        Value::Number(n) => {
            let ok = match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => u < 1 << 62,
                (None, Some(_), _) => false, // negative
                (None, None, Some(f)) => (0.0..LIMIT).contains(&f),
                _ => false,
            };
            if !ok {
                out.push(format!("{path} = {n}"));
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                absurd_numbers(x, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                absurd_numbers(x, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// Sum of the 1xx..5xx responses of a frontend.
fn responses(f: &Value) -> u64 {
    ["1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|c| num(&f["responses"][c]))
        .sum()
}

fn refused(f: &Value) -> BTreeMap<String, u64> {
    f["refused"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), num(v))).collect())
        .unwrap_or_default()
}

/// Polls until `cond` holds (every 50 ms, up to `within`).
fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn soak_mixed_traffic_with_reloads_returns_to_baseline() {
    let secs: u64 = std::env::var("LB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = ScratchDir::new("lb-soak");
    let pair = cert_gen(&dir, "soak.test");
    let keys = dir.join("tickets.keys");
    std::fs::write(
        &keys,
        "5f0c1d6a0e9b4e2f8a7c3b1d2e4f6a8b \
         00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .expect("ticket keys");
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let backend =
        HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("http backend");
    let echo = EchoBackend::start("127.0.0.1:0".parse().expect("addr")).expect("echo backend");
    let a = Addrs {
        admin: free_addr("127.0.0.1"),
        web: free_addr("127.0.0.1"),
        secure: free_addr("127.0.0.1"),
        raw: free_addr("127.0.0.1"),
        http_backend: backend.addr,
        echo_backend: echo.addr,
    };
    let (tag, path) = (unique_tag(), dir.join("lb.toml"));
    let files = MAX_CONN.map(|m| config(&tag, &a, &pair, &keys, m));
    let mut lb = Lb::start(None, &path, &files[0]).expect("lb starts");
    let pid = lb.pid();
    let status_now = || status(a.admin).unwrap_or_else(|e| panic!("/api/status: {e:#}"));
    let workers = status_now()["workers"].as_array().map_or(1, Vec::len) as u64;

    // Warm-up: each kind of traffic once for a second, so the baseline
    // holds the runtime's, TLS's and the pool's first allocations.
    let warm = Arc::new(Seen::default());
    run_clients(&a, &warm, Instant::now() + Duration::from_secs(1));
    assert!(drained(a.admin), "connections still open after the warm-up");
    std::thread::sleep(Duration::from_millis(500));
    let (rss0, fds0) = (rss_kib(pid), fds(pid));
    let before = status_now();

    // The soak: clients on their threads, reloads from here.
    let seen = Arc::new(Seen::default());
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    let clients = {
        let (a2, seen) = (a, Arc::clone(&seen));
        std::thread::spawn(move || run_clients(&a2, &seen, until))
    };
    let mut reloads = 0u64;
    let mut gen = num(&before["generation"]);
    let mut rss_peak = rss0;
    while Instant::now() + RELOAD_EVERY < until {
        std::thread::sleep(RELOAD_EVERY);
        reloads += 1;
        let next = usize::from(reloads % 2 == 1);
        std::fs::write(&path, &files[next]).expect("write config");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(i32::try_from(pid).expect("pid"), libc::SIGHUP) };
        let moved = wait_for(Duration::from_secs(2), || {
            status(a.admin).is_ok_and(|s| s["generation"].as_u64() == Some(gen + 1))
        });
        assert!(
            moved,
            "reload {reloads} did not move the generation from {gen}\n{}",
            lb.log()
        );
        gen += 1;
        let s = status_now();
        assert_eq!(
            num(&s["pools"][0]["conns"]["limit"]),
            MAX_CONN[next],
            "reload {reloads}: the profile's maxConn is not in force"
        );
        rss_peak = rss_peak.max(rss_kib(pid));
    }
    clients.join().expect("client threads");
    let elapsed = t0.elapsed();

    // Drained: no connection, request or waiter left.
    assert!(
        drained(a.admin),
        "connections still open 10 s after the traffic stopped: {:#}",
        status_now()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (rss1, fds1) = (rss_kib(pid), fds(pid));
    let after = status_now();

    let mut bad = Vec::new();
    absurd_numbers(&after, "status", &mut bad);
    assert!(bad.is_empty(), "negative or absurd numbers: {bad:?}");

    // The soak's own counts: what `after` adds to `before`.
    let delta = |f: &str, get: &dyn Fn(&Value) -> u64| {
        get(&frontend_in(&after, f)) - get(&frontend_in(&before, f))
    };
    let refused_delta = |f: &str| {
        let (b, a) = (
            refused(&frontend_in(&before, f)),
            refused(&frontend_in(&after, f)),
        );
        a.into_iter()
            .map(|(k, v)| (k.clone(), v - b.get(&k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect::<BTreeMap<_, _>>()
    };
    let errors = lock(&seen.errors).clone();
    let conns = lock(&seen.conns).clone();
    let left = seen.abandoned_after_head.load(Relaxed);
    let mut summary = Vec::new();
    let mut failures = Vec::new();
    for f in ["web", "secure", "raw"] {
        let accepted = delta(f, &|v| num(&v["accepted"]));
        let requests = delta(f, &|v| num(&v["requests"]));
        let resp = delta(f, &responses);
        let c5 = delta(f, &|v| num(&v["responses"]["5xx"]));
        let c2 = delta(f, &|v| num(&v["responses"]["2xx"]));
        let failed = delta(f, &|v| {
            num(&v["noBackend"]) + num(&v["backendFailed"]) + num(&v["timeouts"]["server"])
        });
        let header_read = delta(f, &|v| num(&v["timeouts"]["headerRead"]));
        let refusals = refused_delta(f);
        let refused_sum: u64 = refusals.values().sum();
        let opened = conns.get(f).copied().unwrap_or(0);
        let fe = frontend_in(&after, f);
        if num(&fe["active"]) != 0 {
            failures.push(format!("{f}: active {} after the drain", fe["active"]));
        }
        // Every connection the clients opened was accepted, no more.
        if accepted != opened {
            failures.push(format!(
                "{f}: accepted {accepted} != connections the clients opened {opened}"
            ));
        }
        if failed != 0 || header_read != 0 {
            failures.push(format!(
                "{f}: noBackend + backendFailed + server timeouts {failed}, headerRead {header_read}: \
                 none expected with a healthy backend and no slow head"
            ));
        }
        if f == "raw" {
            // TCP: each accepted connection is one request; each was
            // echoed whole (nothing refused on this pool).
            let echoed = seen.echoed.load(Relaxed);
            if requests != accepted || requests != echoed + refused_sum {
                failures.push(format!(
                    "raw: requests {requests}, accepted {accepted}, echoed {echoed}, refused {refused_sum}"
                ));
            }
            summary.push(format!("raw: conns {accepted} echoed {echoed}"));
            continue;
        }
        // HTTP: requests = responses by class + requests whose client left
        // before the answer (only the leavers' whole heads may be that).
        let slack = if f == "web" { left } else { 0 };
        let gone = requests.checked_sub(resp).filter(|g| *g <= slack);
        if gone.is_none() {
            failures.push(format!(
                "{f}: requests {requests} - responses {resp} = {} not in 0..={slack}",
                i128::from(requests) - i128::from(resp),
            ));
        }
        // Every 5xx is a refusal by a named axis (503 + lb-limit).
        if c5 != refused_sum {
            failures.push(format!(
                "{f}: 5xx {c5} != refusals {refused_sum} {refusals:?}"
            ));
        }
        // What the clients read is what lb counted, but for the answers
        // to clients that had left.
        let read = seen.statuses_of(f);
        if !(read <= resp && resp <= read + slack) {
            failures.push(format!(
                "{f}: responses counted {resp}, read by the clients {read} (+ up to {slack} left)"
            ));
        }
        summary.push(format!(
            "{f}: conns {accepted} requests {requests} 2xx {c2} 5xx {c5} gone {} refused {refusals:?}",
            gone.unwrap_or(0)
        ));
    }
    let tls = &frontend_in(&after, "secure")["tls"];
    println!(
        "SOAK {secs}s ({:.1}s): {}; tls full {} failed {}; leavers {} whole head + {} half; \
         reloads {reloads} (generation {gen}); workers {workers}; \
         RSS {rss0} KiB -> peak {rss_peak} -> {rss1} KiB ({:+} KiB); fds {fds0} -> {fds1}; \
         client errors {}",
        elapsed.as_secs_f64(),
        summary.join("; "),
        tls["full"],
        tls["failed"],
        left,
        seen.abandoned_in_head.load(Relaxed),
        i128::from(rss1) - i128::from(rss0),
        errors.len(),
    );
    assert!(
        failures.is_empty(),
        "counters do not add up:\n{}\n{:#}",
        failures.join("\n"),
        after
    );
    assert!(
        errors.is_empty(),
        "client errors ({}): {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    assert!(
        fds1 <= fds0 + workers * POOLED_PER_WORKER,
        "descriptors {fds0} -> {fds1}: more than {} pooled backend connections",
        workers * POOLED_PER_WORKER
    );
    assert!(
        rss1 <= rss0 + RSS_ALLOWANCE_KIB,
        "RSS {rss0} KiB -> {rss1} KiB: more than {RSS_ALLOWANCE_KIB} KiB kept"
    );
    assert_eq!(lb.stop(libc::SIGTERM).expect("lb stops"), Some(0));
}

/// Every kind of client on a thread of its own until `until`.
fn run_clients(a: &Addrs, seen: &Arc<Seen>, until: Instant) {
    type Client = fn(SocketAddr, &Seen, Instant);
    let kinds: [(Client, SocketAddr); 6] = [
        (keep_alive, a.web),
        (new_connections, a.web),
        (leavers, a.web),
        (h2c, a.web),
        (tls, a.secure),
        (tcp, a.raw),
    ];
    let threads: Vec<_> = kinds
        .into_iter()
        .map(|(run, addr)| {
            let seen = Arc::clone(seen);
            std::thread::spawn(move || run(addr, &seen, until))
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread panicked");
    }
}

/// Waits (up to 10 s) until no frontend has a connection open and no pool
/// a request in flight or waiting.
fn drained(admin: SocketAddr) -> bool {
    wait_for(Duration::from_secs(10), || {
        status(admin).is_ok_and(|s| {
            let zero = |v: &Value| v.as_u64() == Some(0);
            s["frontends"]
                .as_array()
                .is_some_and(|f| f.iter().all(|f| zero(&f["active"])))
                && s["pools"].as_array().is_some_and(|p| {
                    p.iter()
                        .all(|p| zero(&p["conns"]["active"]) && zero(&p["conns"]["queued"]))
                })
        })
    })
}
