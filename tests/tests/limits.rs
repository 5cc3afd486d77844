//! Limit profiles as the daemon reads them, `maxBufferSize` at each level,
//! and `rateLimitSessions` (accept pacing) at each level. The other axes
//! have their own files: `limits_conn` (maxConn, the queue, maxRetries),
//! `limits_sess` (maxSessRate), `limits_live` (live changes), `limits_join`
//! (shared accounting, overflow), `limits_xdp` (maxConnRate).

use lb_tests::{client::free_addr, lb::Lb, unique_tag, ScratchDir};

/// The rate tests measure against the clock: one at a time, so neither
/// starves the other of the two CPUs.
static RATE_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_rate_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    RATE_TESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn the_daemon_logs_once_each_axis_a_profile_disables_with_its_pools() {
    let dir = ScratchDir::new("lb-limits");
    let (p1, p2) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let config = format!(
        r#"[global]
instance = "lim{}"
[xdp]
mode = "off"
[[frontend]]
name = "a"
listen = "{p1}"
pool = "api"
[[frontend]]
name = "b"
listen = "{p2}"
pool = "batch"
[[pool]]
name = "api"
profile = "open"
backends = ["127.0.0.1:9"]
[[pool]]
name = "batch"
profile = "open"
backends = ["127.0.0.1:9"]
[profile.open]
maxConn = 0
maxSslRate = 0
maxRetries = 1
"#,
        unique_tag()
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    let log = lb.log();
    let lines = |axis: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("profile `open` disables {axis} (0)")))
            .collect::<Vec<_>>()
    };
    for axis in ["maxConn", "maxSslRate"] {
        let l = lines(axis);
        assert_eq!(l.len(), 1, "one line for {axis}:\n{log}");
        assert!(l[0].contains(r#"pools=["api", "batch"]"#), "{}", l[0]);
    }
    assert!(lines("maxRetries").is_empty(), "1 is not 0:\n{log}");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn a_request_head_over_max_buffer_size_gets_431_counted_by_level_and_axis() {
    use lb_tests::{
        backend::HttpBackend,
        client::{curl, frontend_in, status},
    };
    let dir = ScratchDir::new("lb-limits");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let (p1, p2, p3, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let config = format!(
        r#"[global]
instance = "lim{tag}"
[global.limits]
maxBufferSize = "32KB"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "by-global"
listen = "{p3}"
pool = "big"
[[frontend]]
name = "by-profile"
listen = "{p1}"
pool = "small"
[[frontend]]
name = "by-frontend"
listen = "{p2}"
pool = "big"
[frontend.limits]
maxBufferSize = "16KB"
[[pool]]
name = "small"
profile = "small"
backends = ["{backend}"]
[[pool]]
name = "big"
backends = ["{backend}"]
[profile.small]
maxBufferSize = "16KB"
"#,
        backend = b.addr,
        tag = unique_tag()
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    let header = |kb: usize| format!("x-big: {}", "a".repeat(kb * 1024));
    for (name, port, level, fits, over) in [
        ("by-profile", p1, "pool", 8, 20),
        ("by-frontend", p2, "frontend", 8, 20),
        ("by-global", p3, "global", 20, 40),
    ] {
        let url = format!("http://{port}/");
        let ok = curl(&url, &["-H", &header(fits)]).expect("curl");
        assert_eq!(ok.status, 200, "{name}: {fits} KiB fits");
        let refused = curl(&url, &["-H", &header(over)]).expect("curl");
        assert_eq!(refused.status, 431, "{refused:?}");
        let f = frontend_in(&status(admin).expect("status"), name);
        assert_eq!(f["refused"][format!("{level}/maxBufferSize")], 1, "{f}");
        assert_eq!(f["responses"]["4xx"], 1, "{f}");
    }
    let log = lb.log();
    assert!(
        log.contains("refused by pool/maxBufferSize: a request head over 16384 bytes (431)"),
        "{log}"
    );
    assert!(log.contains("refused by frontend/maxBufferSize"), "{log}");
    assert_eq!(b.requests(), 3, "refused heads never reach the backend");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

/// Opens connections to `addr` from `threads` threads, one request each
/// (`Connection: close`), as fast as lb takes them, until `until`.
fn connection_storm(addr: std::net::SocketAddr, threads: usize, until: std::time::Instant) -> u64 {
    use std::io::{Read as _, Write as _};
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut ok = 0u64;
                while std::time::Instant::now() < until {
                    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                    if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .is_ok()
                    {
                        let mut out = Vec::new();
                        if s.read_to_end(&mut out).is_ok() && out.starts_with(b"HTTP/1.1 200") {
                            ok += 1;
                        }
                    }
                }
                ok
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
}

#[test]
fn rate_limit_sessions_paces_accepts_within_five_percent_at_200_and_2000_per_second() {
    let _one = one_rate_test_at_a_time();
    use lb_tests::{
        backend::HttpBackend,
        client::{frontend_in, status},
    };
    use std::time::{Duration, Instant};
    let dir = ScratchDir::new("lb-limits");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let (p1, p2, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let config = format!(
        r#"[global]
instance = "lim{tag}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "slow"
listen = "{p1}"
pool = "paced"
[[frontend]]
name = "fast"
listen = "{p2}"
pool = "default"
[frontend.limits]
rateLimitSessions = 2000
[[pool]]
name = "paced"
profile = "paced"
backends = ["{backend}"]
[[pool]]
name = "default"
backends = ["{backend}"]
[profile.paced]
rateLimitSessions = 200
"#,
        backend = b.addr,
        tag = unique_tag()
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    let accepted = |name: &str| -> u64 {
        frontend_in(&status(admin).expect("status"), name)["accepted"]
            .as_u64()
            .expect("accepted")
    };
    for (name, port, rate, threads) in [("slow", p1, 200.0, 8), ("fast", p2, 2000.0, 32)] {
        let until = Instant::now() + Duration::from_secs(7);
        let storm = std::thread::spawn(move || connection_storm(port, threads, until));
        // Measure 5 s in the middle of the storm: the backlog is never empty.
        std::thread::sleep(Duration::from_secs(1));
        let (a0, t0) = (accepted(name), Instant::now());
        std::thread::sleep(Duration::from_secs(5));
        let (a1, t1) = (accepted(name), Instant::now());
        let served = storm.join().expect("storm");
        let measured = (a1 - a0) as f64 / (t1 - t0).as_secs_f64();
        eprintln!("{name}: {measured:.1} accepts/s against rateLimitSessions = {rate}");
        assert!(
            (measured - rate).abs() <= rate * 0.05,
            "{name}: {measured:.0} accepts/s, configured {rate}"
        );
        assert!(served > 0, "clients were served");
        let f = frontend_in(&status(admin).expect("status"), name);
        assert!(f["paced"].as_u64() > Some(0), "{f}");
        assert_eq!(f["responses"]["5xx"], 0, "pacing refuses nothing: {f}");
        assert!(
            f["refused"]
                .as_object()
                .is_none_or(serde_json::Map::is_empty),
            "{f}"
        );
    }
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn rate_limit_sessions_at_the_global_level_paces_every_frontend_together() {
    let _one = one_rate_test_at_a_time();
    use lb_tests::{
        backend::HttpBackend,
        client::{frontend_in, status},
    };
    use std::time::{Duration, Instant};
    let dir = ScratchDir::new("lb-limits");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let (p1, p2, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let config = format!(
        r#"[global]
instance = "lim{tag}"
[global.limits]
rateLimitSessions = 200
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "one"
listen = "{p1}"
pool = "p"
[[frontend]]
name = "two"
listen = "{p2}"
pool = "p"
[[pool]]
name = "p"
backends = ["{backend}"]
"#,
        backend = b.addr,
        tag = unique_tag()
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    let accepted = || -> u64 {
        let s = status(admin).expect("status");
        ["one", "two"]
            .iter()
            .map(|n| frontend_in(&s, n)["accepted"].as_u64().expect("accepted"))
            .sum()
    };
    let until = Instant::now() + Duration::from_secs(7);
    let storms: Vec<_> = [p1, p2]
        .into_iter()
        .map(|port| std::thread::spawn(move || connection_storm(port, 6, until)))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let (a0, t0) = (accepted(), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (a1, t1) = (accepted(), Instant::now());
    for s in storms {
        assert!(s.join().expect("storm") > 0, "clients were served");
    }
    let measured = (a1 - a0) as f64 / (t1 - t0).as_secs_f64();
    eprintln!("both frontends: {measured:.1} accepts/s against global rateLimitSessions = 200");
    assert!(
        (measured - 200.0).abs() <= 10.0,
        "{measured:.0} accepts/s for both frontends together, configured 200"
    );
    let s = status(admin).expect("status");
    for n in ["one", "two"] {
        assert!(frontend_in(&s, n)["paced"].as_u64() > Some(0), "{n} paced");
    }
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}
