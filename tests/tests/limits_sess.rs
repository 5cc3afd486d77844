//! `maxSessRate`, new sessions per second, as clients see it with a real `lb`
//! (no XDP, no privileges) on loopback in front of real backends.
//!
//! It proves: each level (global, frontend, the pool's profile) refuses new
//! sessions over its rate with a 503 that names it in `lb-limit`, carries
//! `Retry-After: 1` and says why, and counts and logs the refusal under that
//! level; an admitted new session gets an `lb_session` cookie, and a request
//! that sends a valid one back is not a new session (no refusal, no new
//! cookie) while a tampered or garbage one counts as none; under a load well
//! above the rate the admitted new sessions per second stay within 5% of the
//! configured rate at 200/s and 2000/s; in `mode = "tcp"` every connection
//! is a new session and a refused one is closed without a backend connect.
//!
//! The tests run one at a time (a lock): the rate test loads the CPUs, and
//! the others bound what may be admitted by the time they took.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_tests::{
    backend::{EchoBackend, HttpBackend},
    client::{curl, free_addr, frontend_in, status, Reply},
    lb::Lb,
    unique_tag, ScratchDir,
};

/// One test at a time (see the module docs).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A unique instance name.
struct Instance(String);

impl Instance {
    fn new() -> Self {
        Self(format!("ses{}", unique_tag()))
    }
}

const WHY: &str = "too many new sessions per second";

/// A counter of frontend `name` in `/api/status`: `path` is e.g.
/// `["refused", "pool/maxSessRate"]`; absent counts as 0.
fn counter(admin: SocketAddr, name: &str, path: &[&str]) -> u64 {
    let f = frontend_in(&status(admin).expect("status"), name);
    path.iter().fold(&f, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// Waits (up to 3 s) until `lb`'s log holds `needle`.
fn log_shows(lb: &Lb, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if lb.log().contains(needle) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks a reply is either an admitted new session (200 with a fresh
/// `lb_session` cookie) or a refusal by `limit` in every detail.
fn check_new_session_reply(r: &Reply, limit: &str) {
    match r.status {
        200 => {
            assert!(r.cookie("lb_session").is_some(), "admitted: a cookie {r:?}");
            assert_eq!(r.header("lb-limit"), None, "{r:?}");
        }
        503 => {
            assert_eq!(r.header("lb-limit"), Some(limit), "{r:?}");
            assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
            assert_eq!(r.body, format!("lb: {WHY}\n"), "{r:?}");
            assert!(r.cookie("lb_session").is_none(), "no cookie on 503 {r:?}");
            assert_eq!(r.backend(), "", "a refusal never reaches a backend {r:?}");
        }
        _ => panic!("neither admitted nor refused: {r:?}"),
    }
}

#[test]
fn each_level_refuses_new_sessions_over_its_rate_and_names_itself() {
    let _serial = serial();
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let dir = ScratchDir::new("lb-sess");
    // The global level in one lb: it is shared by every frontend.
    let (pg, admin_g) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let inst_g = Instance::new();
    let global = format!(
        r#"[global]
instance = "{inst}"
[global.limits]
maxSessRate = 5
[xdp]
mode = "off"
[admin]
listen = "{admin_g}"
[[frontend]]
name = "g"
listen = "{pg}"
pool = "web"
[[pool]]
name = "web"
backends = ["{backend}"]
"#,
        backend = b.addr,
        inst = &inst_g.0
    );
    // The frontend and the pool level in another.
    let (pf, pp, admin_fp) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let inst_fp = Instance::new();
    let levels = format!(
        r#"[global]
instance = "{inst}"
[xdp]
mode = "off"
[admin]
listen = "{admin_fp}"
[[frontend]]
name = "f"
listen = "{pf}"
pool = "web"
[frontend.limits]
maxSessRate = 3
[[frontend]]
name = "p"
listen = "{pp}"
pool = "few"
[[pool]]
name = "web"
backends = ["{backend}"]
[[pool]]
name = "few"
profile = "few"
backends = ["{backend}"]
[profile.few]
maxSessRate = 4
"#,
        backend = b.addr,
        inst = &inst_fp.0
    );
    let mut lb_g = Lb::start(None, &dir.join("global.toml"), &global).expect("lb starts");
    let mut lb_fp = Lb::start(None, &dir.join("levels.toml"), &levels).expect("lb starts");
    let mut backend_requests = 0;
    for (lb, admin, name, port, level, rate) in [
        (&lb_g, admin_g, "g", pg, "global", 5.0),
        (&lb_fp, admin_fp, "f", pf, "frontend", 3.0),
        (&lb_fp, admin_fp, "p", pp, "pool", 4.0),
    ] {
        let limit = format!("{level}/maxSessRate");
        let url = format!("http://{port}/");
        let start = Instant::now();
        let replies: Vec<Reply> = (0..40).map(|_| curl(&url, &[]).expect("curl")).collect();
        let elapsed = start.elapsed().as_secs_f64();
        for r in &replies {
            check_new_session_reply(r, &limit);
        }
        let ok = replies.iter().filter(|r| r.status == 200).count() as u64;
        let refused = replies.iter().filter(|r| r.status == 503).count() as u64;
        eprintln!("{name}: {ok} admitted, {refused} refused in {elapsed:.2} s at {rate}/s");
        // Burst 1, then one per 1/rate s: never more than that in the time
        // the curls took.
        assert!(ok >= 1, "{name}: the first new session is admitted");
        assert!(
            ok as f64 <= 1.0 + rate * elapsed,
            "{name}: {ok} admitted in {elapsed:.2} s at {rate}/s"
        );
        assert!(refused > 0, "{name}: 40 curls in {elapsed:.2} s");
        backend_requests += ok;
        assert_eq!(
            b.requests(),
            backend_requests,
            "{name}: refusals stay in lb"
        );
        let f = frontend_in(&status(admin).expect("status"), name);
        assert_eq!(f["refused"][&limit], refused, "{name}: {f}");
        assert_eq!(
            f["refused"].as_object().map(serde_json::Map::len),
            Some(1),
            "{name}: only {limit} refused: {f}"
        );
        assert_eq!(f["responses"]["5xx"], refused, "{name}: {f}");
        assert_eq!(f["responses"]["2xx"], ok, "{name}: {f}");
        let line = format!("refused by {limit}: {WHY}");
        assert!(log_shows(lb, &line), "{name}: no `{line}`:\n{}", lb.log());
    }
    assert_eq!(lb_g.stop(libc::SIGTERM).expect("exit"), Some(0));
    assert_eq!(lb_fp.stop(libc::SIGTERM).expect("exit"), Some(0));
}

/// Changes the last hex digit of a cookie value's MAC.
fn tamper(cookie: &str) -> String {
    let mut s = cookie.to_owned();
    let last = s.pop().expect("not empty");
    s.push(if last == '0' { '1' } else { '0' });
    s
}

#[test]
fn a_valid_session_cookie_is_not_a_new_session_and_a_tampered_one_is() {
    let _serial = serial();
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let dir = ScratchDir::new("lb-sess");
    let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let inst = Instance::new();
    let config = format!(
        r#"[global]
instance = "{inst}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "one"
listen = "{port}"
pool = "web"
[frontend.limits]
maxSessRate = 1
[[pool]]
name = "web"
backends = ["{backend}"]
"#,
        backend = b.addr,
        inst = &inst.0
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    let url = format!("http://{port}/");
    let limit = "frontend/maxSessRate";

    let start = Instant::now();
    let first = curl(&url, &[]).expect("curl");
    assert_eq!(first.status, 200, "{first:?}");
    let set = first.header("set-cookie").expect("a Set-Cookie");
    let kv = first.cookie("lb_session").expect("lb_session").to_owned();
    assert_eq!(set, format!("{kv}; Path=/; HttpOnly"), "{first:?}");
    let value = kv.strip_prefix("lb_session=").expect("name=value");
    let (expiry, mac) = value.split_once('.').expect("<expiry>.<mac>");
    let expiry = u64::from_str_radix(expiry, 16).expect("hex expiry");
    assert!(u64::from_str_radix(mac, 16).is_ok(), "hex mac: {value}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        expiry > now && expiry <= now + 24 * 3600,
        "expiry {expiry}, now {now}"
    );

    // The session's own requests: never refused, never a new cookie.
    let with = format!("Cookie: lb_session={value}");
    for i in 0..20 {
        let r = curl(&url, &["-H", &with]).expect("curl");
        assert_eq!(r.status, 200, "request {i} with a valid cookie: {r:?}");
        assert!(r.cookie("lb_session").is_none(), "no new cookie: {r:?}");
        assert_eq!(r.backend(), "a", "{r:?}");
    }
    // Among other cookies, too.
    let mixed = format!("Cookie: a=1; lb_session={value}; b=2");
    let r = curl(&url, &["-H", &mixed]).expect("curl");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.cookie("lb_session").is_none(), "{r:?}");
    assert_eq!(counter(admin, "one", &["refused", limit]), 0);
    assert_eq!(counter(admin, "one", &["responses", "2xx"]), 22);

    // New sessions: one per second after the first.
    let without: Vec<Reply> = (0..20).map(|_| curl(&url, &[]).expect("curl")).collect();
    for r in &without {
        check_new_session_reply(r, limit);
    }
    let ok = without.iter().filter(|r| r.status == 200).count() as u64;
    let refused = without.iter().filter(|r| r.status == 503).count() as u64;
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!("without a cookie: {ok} admitted, {refused} refused, {elapsed:.2} s after the first");
    // 1 + elapsed tokens in all since the first request, which took one.
    assert!(
        (1 + ok) as f64 <= 1.0 + elapsed,
        "{ok} more admitted {elapsed:.2} s after the first at 1/s"
    );
    assert!(refused >= 15, "most of 20 are refused: {refused}");
    assert_eq!(counter(admin, "one", &["refused", limit]), refused);

    // A tampered or garbage cookie is no cookie: counted as new, so refused
    // while the gate is empty (or, had a token come due, given a new one).
    let mut tampered_refused = 0;
    for bad in [tamper(value), "garbage".to_owned(), format!("{value}0")] {
        let r = curl(&url, &["-H", &format!("Cookie: lb_session={bad}")]).expect("curl");
        check_new_session_reply(&r, limit);
        if r.status == 503 {
            tampered_refused += 1;
        }
    }
    assert!(tampered_refused >= 2, "forged cookies are new sessions");
    assert_eq!(
        counter(admin, "one", &["refused", limit]),
        refused + tampered_refused
    );
    // And the real one still passes, right after refusals.
    let r = curl(&url, &["-H", &with]).expect("curl");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.cookie("lb_session").is_none(), "{r:?}");
    assert_eq!(
        counter(admin, "one", &["refused", limit]),
        refused + tampered_refused
    );
    assert!(
        log_shows(&lb, &format!("refused by {limit}: {WHY}")),
        "{}",
        lb.log()
    );
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
    // Session cookies end with the instance: its key file is gone.
    assert!(
        !lb::instance::session_key_path(&inst.0).exists(),
        "the session key outlived the instance"
    );
}

/// What a [`paced_load`] got back.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: u64,
    refused: u64,
    other: u64,
}

/// Reads one HTTP/1.1 response (with a `content-length`) from a keep-alive
/// connection; returns its status, or None if the stream broke.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..head_end + len);
    Some(status)
}

/// `per_sec` requests a second without cookies (every one a new session)
/// from `threads` keep-alive HTTP/1.1 clients, evenly spaced, until `until`.
/// Paced rather than as fast as lb answers: lb keeps spare CPU, so a busy
/// machine does not starve it into missing tokens.
fn paced_load(addr: SocketAddr, threads: u32, per_sec: f64, until: Instant) -> Tally {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            std::thread::spawn(move || {
                let mut t = Tally::default();
                let interval = Duration::from_secs_f64(f64::from(threads) / per_sec);
                let mut next = start + interval.mul_f64(f64::from(i) / f64::from(threads));
                let mut conn: Option<(TcpStream, Vec<u8>)> = None;
                while Instant::now() < until {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else if now - next > Duration::from_millis(100) {
                        // Far behind: no catching up in a burst.
                        next = now;
                    }
                    next += interval;
                    if conn.is_none() {
                        let Ok(s) = TcpStream::connect(addr) else {
                            t.other += 1;
                            continue;
                        };
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let _ = s.set_nodelay(true);
                        conn = Some((s, Vec::new()));
                    }
                    let Some((s, buf)) = conn.as_mut() else {
                        continue;
                    };
                    let status = s
                        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                        .ok()
                        .and_then(|()| read_response(s, buf));
                    match status {
                        Some(200) => t.ok += 1,
                        Some(503) => t.refused += 1,
                        Some(_) => t.other += 1,
                        None => {
                            t.other += 1;
                            conn = None;
                        }
                    }
                }
                t
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("load thread"))
        .fold(Tally::default(), |a, b| Tally {
            ok: a.ok + b.ok,
            refused: a.refused + b.refused,
            other: a.other + b.other,
        })
}

#[test]
fn admitted_new_sessions_per_second_stay_within_five_percent_at_200_and_2000() {
    let _serial = serial();
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let dir = ScratchDir::new("lb-sess");
    let (p1, p2, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let inst = Instance::new();
    let config = format!(
        r#"[global]
instance = "{inst}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "slow"
listen = "{p1}"
pool = "capped"
[[frontend]]
name = "fast"
listen = "{p2}"
pool = "default"
[frontend.limits]
maxSessRate = 2000
[[pool]]
name = "capped"
profile = "capped"
backends = ["{backend}"]
[[pool]]
name = "default"
backends = ["{backend}"]
[profile.capped]
maxSessRate = 200
"#,
        backend = b.addr,
        inst = &inst.0
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    for (name, port, level, rate) in [
        ("slow", p1, "pool", 200.0),
        ("fast", p2, "frontend", 2000.0),
    ] {
        let limit = format!("{level}/maxSessRate");
        let read = || {
            let f = frontend_in(&status(admin).expect("status"), name);
            let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
            (n(&f["responses"]["2xx"]), n(&f["refused"][&limit]))
        };
        // Three times the rate, no cookies, for 7 s.
        let until = Instant::now() + Duration::from_secs(7);
        let load = std::thread::spawn(move || paced_load(port, 64, rate * 3.0, until));
        // Measure 5 s in the middle of the load.
        std::thread::sleep(Duration::from_secs(1));
        let ((ok0, ref0), t0) = (read(), Instant::now());
        std::thread::sleep(Duration::from_secs(5));
        let ((ok1, ref1), t1) = (read(), Instant::now());
        let load = load.join().expect("load thread");
        let secs = (t1 - t0).as_secs_f64();
        let measured = (ok1 - ok0) as f64 / secs;
        let offered = (ok1 - ok0 + ref1 - ref0) as f64 / secs;
        eprintln!(
            "{name}: {measured:.1} new sessions/s admitted of {offered:.0}/s offered, \
             maxSessRate = {rate} ({level}); clients saw {load:?}"
        );
        assert!(
            offered > rate * 1.5,
            "{name}: the load ({offered:.0}/s) must be well above the rate"
        );
        assert!(
            (measured - rate).abs() <= rate * 0.05,
            "{name}: {measured:.1} new sessions/s admitted, configured {rate}"
        );
        assert!(load.ok > 0 && load.refused > 0, "{name}: {load:?}");
        assert_eq!(load.other, 0, "{name}: only 200 and 503: {load:?}");
        let f = frontend_in(&status(admin).expect("status"), name);
        assert_eq!(
            f["refused"].as_object().map(serde_json::Map::len),
            Some(1),
            "{name}: only {limit} refused: {f}"
        );
        assert_eq!(f["responses"]["5xx"], f["refused"][&limit], "{name}: {f}");
    }
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

/// What one TCP client got back.
#[derive(Debug, PartialEq, Eq)]
enum Echo {
    /// Its byte came back.
    Echoed,
    /// The connection ended with nothing: a FIN (`true`) or a reset.
    Nothing(bool),
}

/// Connects, writes "x", half-closes and reads to the end.
fn echo_once(addr: SocketAddr) -> Echo {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // lb may have closed already: then the write or the shutdown fails.
    let _ = s.write_all(b"x");
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) if out == b"x" => Echo::Echoed,
        Ok(_) if out.is_empty() => Echo::Nothing(true),
        Err(e) if out.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
            Echo::Nothing(false)
        }
        other => panic!("neither echoed nor closed: {other:?}, read {out:?}"),
    }
}

#[test]
fn a_tcp_connection_over_max_sess_rate_is_closed_without_a_backend_connect() {
    let _serial = serial();
    let echo = EchoBackend::start("127.0.0.1:0".parse().expect("addr")).expect("echo");
    let dir = ScratchDir::new("lb-sess");
    let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let inst = Instance::new();
    let config = format!(
        r#"[global]
instance = "{inst}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "tcp"
listen = "{port}"
mode = "tcp"
pool = "echo"
[frontend.limits]
maxSessRate = 2
[[pool]]
name = "echo"
backends = ["{backend}"]
"#,
        backend = echo.addr,
        inst = &inst.0
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    let start = Instant::now();
    let got: Vec<Echo> = (0..20).map(|_| echo_once(port)).collect();
    let elapsed = start.elapsed().as_secs_f64();
    let echoed = got.iter().filter(|e| **e == Echo::Echoed).count() as u64;
    let fins = got.iter().filter(|e| **e == Echo::Nothing(true)).count() as u64;
    let nothing = 20 - echoed;
    eprintln!(
        "tcp: {echoed} echoed, {nothing} closed ({fins} by FIN, {} by reset) in {elapsed:.2} s",
        nothing - fins
    );
    assert!(echoed >= 1, "the first connection is admitted: {got:?}");
    assert!(
        echoed as f64 <= 1.0 + 2.0 * elapsed,
        "{echoed} admitted in {elapsed:.2} s at 2/s"
    );
    assert!(nothing > 0, "20 connections in {elapsed:.2} s: {got:?}");
    assert_eq!(
        counter(admin, "tcp", &["refused", "frontend/maxSessRate"]),
        nothing
    );
    assert_eq!(echo.connections(), echoed, "refused: no backend connect");
    assert!(
        log_shows(&lb, &format!("refused by frontend/maxSessRate: {WHY}")),
        "{}",
        lb.log()
    );
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}
