//! Limit profiles as the daemon reads them. (The enforcement of each axis
//! comes with its own tests as it lands.)

use lb_tests::{client::free_addr, lb::Lb, unique_tag, ScratchDir};

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
    for (name, port, level) in [("by-profile", p1, "pool"), ("by-frontend", p2, "frontend")] {
        let url = format!("http://{port}/");
        let ok = curl(&url, &["-H", &header(8)]).expect("curl");
        assert_eq!(ok.status, 200, "an 8 KiB header fits in 16 KiB");
        let refused = curl(&url, &["-H", &header(20)]).expect("curl");
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
    assert_eq!(b.requests(), 2, "refused heads never reach the backend");
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
