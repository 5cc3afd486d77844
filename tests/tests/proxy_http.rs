//! `mode = "http"` frontends with real clients (curl, h2load) and real
//! backends (hyper servers from `lb_tests::backend`) over loopback: the
//! balancing algorithms' distributions, health checks, retries, forwarding
//! headers, HTTP/2 from clients, 100 MB bodies with bounded memory,
//! timeouts (408, 504, idle close), sticky cookies and a graceful stop.
//! `lb` runs with `[xdp] mode = "off"`, so these need no privileges.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    backend::HttpBackend,
    client::{backend_in, curl, dead_addr, free_addr, frontend_in, h2load, status},
    lb::Lb,
    unique_tag, ScratchDir,
};

/// A running lb with its admin address and frontend URL.
struct Setup {
    lb: Lb,
    admin: SocketAddr,
    _dir: ScratchDir,
}

/// Starts lb on `body` (frontends, pools, profiles) plus a unique instance,
/// `mode = "off"` XDP and an admin listener.
fn start(body: &str) -> Setup {
    let dir = ScratchDir::new("lb-proxy");
    let admin = free_addr("127.0.0.1");
    let config = format!(
        "[global]\ninstance = \"px{}\"\ndrainTimeout = \"5s\"\n[xdp]\nmode = \"off\"\n\
         [admin]\nlisten = \"{admin}\"\n{body}",
        unique_tag()
    );
    let lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    Setup {
        lb,
        admin,
        _dir: dir,
    }
}

fn backends(names: &[&str]) -> Vec<HttpBackend> {
    names
        .iter()
        .map(|n| {
            HttpBackend::start(n, "127.0.0.1:0".parse().expect("addr"), None).expect("backend")
        })
        .collect()
}

fn frontend_status(admin: SocketAddr, name: &str) -> serde_json::Value {
    frontend_in(&status(admin).expect("status"), name)
}

fn backend_status(admin: SocketAddr, addr: SocketAddr) -> serde_json::Value {
    backend_in(&status(admin).expect("status"), addr)
}

/// Polls until backend `addr` is up (or down), up to 10 s.
fn wait_up(admin: SocketAddr, addr: SocketAddr, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend_status(admin, addr)["up"] != up {
        assert!(
            Instant::now() < deadline,
            "backend {addr} never went {}",
            if up { "up" } else { "down" }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn roundrobin_follows_weights_within_one_percent_over_10000_requests() {
    let b = backends(&["a", "b", "c"]);
    let port = free_addr("127.0.0.1");
    let s = start(&format!(
        r#"[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
backends = [{{ address = "{}", weight = 1 }}, {{ address = "{}", weight = 2 }}, {{ address = "{}", weight = 3 }}]
"#,
        b[0].addr, b[1].addr, b[2].addr
    ));
    let load = h2load(
        &format!("http://{port}/"),
        &["--h1", "-n", "10000", "-c", "10", "-t", "1"],
    )
    .expect("h2load");
    assert_eq!(load.succeeded, 10_000, "{load:?}");
    assert_eq!(load.status_2xx, 10_000, "{load:?}");
    for (backend, weight) in b.iter().zip([1.0, 2.0, 3.0]) {
        let expected = 10_000.0 * weight / 6.0;
        let got = backend.requests() as f64;
        assert!(
            (got - expected).abs() <= expected * 0.01,
            "weight {weight}: {got} requests, expected {expected:.0} ± 1%"
        );
    }
    let f = frontend_status(s.admin, "web");
    assert_eq!(f["responses"]["2xx"], 10_000, "{f}");
    // Keep-alive to the backends: connections are reused, not opened per
    // request (10 client connections, at most one backend connection each
    // per backend).
    let opened: u64 = b
        .iter()
        .map(|x| {
            backend_status(s.admin, x.addr)["connects"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert!(
        opened <= 30,
        "{opened} backend connections for 10 000 requests"
    );
}

#[test]
fn maglev_keeps_each_key_on_one_backend_and_moves_only_the_removed_ones() {
    let b = backends(&["a", "b", "c"]);
    let port = free_addr("127.0.0.1");
    let s = start(&format!(
        r#"[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
algorithm = "maglev"
hashHeader = "X-User"
backends = ["{}", "{}", "{}"]
health = {{ kind = "http", path = "/health", interval = "100ms", timeout = "500ms", rise = 1, fall = 1 }}
"#,
        b[0].addr, b[1].addr, b[2].addr
    ));
    let url = format!("http://{port}/");
    let ask = |user: &str| {
        let r = curl(&url, &["-H", &format!("x-user: {user}")]).expect("curl");
        assert_eq!(r.status, 200, "{r:?}");
        r.backend().to_owned()
    };
    let users: Vec<String> = (0..90).map(|i| format!("user-{i}")).collect();
    let before: HashMap<&str, String> = users.iter().map(|u| (u.as_str(), ask(u))).collect();
    for u in users.iter().take(30) {
        assert_eq!(ask(u), before[u.as_str()], "key {u} changed backend");
    }
    for name in ["a", "b", "c"] {
        assert!(
            before.values().any(|v| v == name),
            "no key landed on {name}: {before:?}"
        );
    }
    // Take b out: only b's keys move.
    b[1].set_healthy(false);
    wait_up(s.admin, b[1].addr, false);
    let mut moved = 0;
    for u in &users {
        let now = ask(u);
        if before[u.as_str()] == "b" {
            assert_ne!(now, "b", "{u} still on the removed backend");
            moved += 1;
        } else {
            assert_eq!(now, before[u.as_str()], "{u} moved off a healthy backend");
        }
    }
    assert!(
        moved <= users.len() / 3 + users.len() / 10,
        "{moved} of {} keys moved",
        users.len()
    );
}

#[test]
fn leastconn_sends_new_requests_to_the_idle_backend() {
    let b = backends(&["a", "b"]);
    let port = free_addr("127.0.0.1");
    let _s = start(&format!(
        r#"[global.limits]
[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
algorithm = "leastconn"
backends = ["{}", "{}"]
"#,
        b[0].addr, b[1].addr
    ));
    let slow_url = format!("http://{port}/slow?ms=2000");
    let slow = std::thread::spawn(move || curl(&slow_url, &[]).expect("curl"));
    // Wait until the slow request is at a backend.
    let deadline = Instant::now() + Duration::from_secs(5);
    while b[0].requests() + b[1].requests() == 0 {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    let busy = if b[0].requests() == 1 { "a" } else { "b" };
    for _ in 0..5 {
        let r = curl(&format!("http://{port}/"), &[]).expect("curl");
        assert_eq!(r.status, 200);
        assert_ne!(
            r.backend(),
            busy,
            "a short request went to the busy backend"
        );
    }
    let r = slow.join().expect("slow thread");
    assert_eq!((r.status, r.backend()), (200, busy));
}

#[test]
fn health_checks_eject_a_backend_bring_it_back_and_all_down_is_503_at_once() {
    let b = backends(&["a", "b"]);
    let port = free_addr("127.0.0.1");
    let s = start(&format!(
        r#"[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
backends = ["{}", "{}"]
health = {{ kind = "http", path = "/health", interval = "100ms", timeout = "500ms", rise = 2, fall = 2 }}
"#,
        b[0].addr, b[1].addr
    ));
    let url = format!("http://{port}/");
    b[0].set_healthy(false);
    wait_up(s.admin, b[0].addr, false);
    for _ in 0..20 {
        let r = curl(&url, &[]).expect("curl");
        assert_eq!((r.status, r.backend()), (200, "b"), "{r:?}");
    }
    b[0].set_healthy(true);
    wait_up(s.admin, b[0].addr, true);
    let seen: Vec<String> = (0..10)
        .map(|_| curl(&url, &[]).expect("curl").backend().to_owned())
        .collect();
    assert!(
        seen.iter().any(|x| x == "a"),
        "a got no traffic back: {seen:?}"
    );
    // Both down: 503 with Retry-After, answered at once.
    b[0].set_healthy(false);
    b[1].set_healthy(false);
    wait_up(s.admin, b[0].addr, false);
    wait_up(s.admin, b[1].addr, false);
    let r = curl(&url, &[]).expect("curl");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    let f = frontend_status(s.admin, "web");
    assert!(f["noBackend"].as_u64() >= Some(1), "{f}");
    assert!(backend_status(s.admin, b[0].addr)["checkFailures"].as_u64() >= Some(4));
}

#[test]
fn a_refused_backend_is_retried_on_another_and_the_last_failure_is_502() {
    let b = backends(&["live"]);
    let dead = dead_addr();
    let (p1, p2) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let s = start(&format!(
        r#"[[frontend]]
name = "mixed"
listen = "{p1}"
pool = "mixed"
[[frontend]]
name = "gone"
listen = "{p2}"
pool = "gone"
[[pool]]
name = "mixed"
backends = ["{dead}", "{}"]
[[pool]]
name = "gone"
profile = "noretry"
backends = ["{dead}"]
[profile.noretry]
maxRetries = 0
"#,
        b[0].addr
    ));
    for _ in 0..20 {
        let r = curl(&format!("http://{p1}/"), &[]).expect("curl");
        assert_eq!((r.status, r.backend()), (200, "live"), "{r:?}");
    }
    let f = frontend_status(s.admin, "mixed");
    assert!(f["retries"].as_u64() >= Some(10), "{f}");
    assert!(backend_status(s.admin, dead)["connectErrors"].as_u64() >= Some(10));
    let r = curl(&format!("http://{p2}/"), &[]).expect("curl");
    assert_eq!(r.status, 502, "{r:?}");
    let g = frontend_status(s.admin, "gone");
    assert_eq!(g["backendFailed"], 1, "{g}");
    assert_eq!(g["retries"], 0, "maxRetries = 0: {g}");
}

#[test]
fn forwarding_headers_are_added_and_hop_by_hop_headers_removed() {
    let b = backends(&["a"]);
    let (p4, p6) = (free_addr("127.0.0.1"), free_addr("::1"));
    let _s = start(&format!(
        r#"[[frontend]]
name = "v4"
listen = "{p4}"
pool = "p"
[[frontend]]
name = "v6"
listen = "{p6}"
pool = "p"
[[pool]]
name = "p"
backends = ["{}"]
"#,
        b[0].addr
    ));
    let r = curl(
        &format!("http://{p4}/x?y=1"),
        &[
            "-H",
            "X-Forwarded-For: 203.0.113.9",
            "-H",
            "Connection: keep-alive, X-Secret",
            "-H",
            "X-Secret: 1",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
        ],
    )
    .expect("curl");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.echoed("x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"],
        "{}",
        r.body
    );
    assert_eq!(r.echoed("x-forwarded-proto"), ["http"]);
    assert_eq!(
        r.echoed("forwarded"),
        [format!("for=127.0.0.1;proto=http;host=\"{p4}\"").as_str()]
    );
    for gone in [
        "x-secret",
        "keep-alive",
        "connection",
        "proxy-authorization",
    ] {
        assert!(
            r.echoed(gone).is_empty(),
            "{gone} reached the backend: {}",
            r.body
        );
    }
    assert!(r.body.contains("GET /x?y=1"), "{}", r.body);
    let r = curl(&format!("http://{p6}/"), &["-g"]).expect("curl");
    assert_eq!(r.echoed("x-forwarded-for"), ["::1"]);
    assert_eq!(
        r.echoed("forwarded")[0].split(';').next(),
        Some("for=\"[::1]\"")
    );
}

#[test]
fn http2_clients_are_served_and_backends_get_http11() {
    let b = backends(&["a", "b"]);
    let port = free_addr("127.0.0.1");
    let s = start(&format!(
        r#"[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
backends = ["{}", "{}"]
"#,
        b[0].addr, b[1].addr
    ));
    let url = format!("http://{port}/h2");
    let r = curl(&url, &["--http2-prior-knowledge"]).expect("curl");
    assert_eq!((r.version.as_str(), r.status), ("HTTP/2", 200), "{r:?}");
    assert_eq!(r.echoed("version"), ["HTTP/1.1"], "{}", r.body);
    assert_eq!(r.echoed("host"), [port.to_string().as_str()], "{}", r.body);
    // h2load speaks h2c with prior knowledge to http:// URLs.
    let load = h2load(&url, &["-n", "2000", "-c", "4", "-m", "10"]).expect("h2load");
    assert_eq!((load.succeeded, load.status_2xx), (2000, 2000), "{load:?}");
    assert_eq!(b[0].requests() + b[1].requests(), 2001);
    let f = frontend_status(s.admin, "web");
    assert_eq!(f["responses"]["2xx"], 2001, "{f}");
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn hundred_megabyte_bodies_stream_both_ways_with_bounded_memory() {
    const SIZE: u64 = 100 * 1024 * 1024;
    let b = backends(&["a"]);
    let port = free_addr("127.0.0.1");
    let s = start(&format!(
        r#"[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
backends = ["{}"]
"#,
        b[0].addr
    ));
    let dir = ScratchDir::new("lb-body");
    let file = dir.join("upload.bin");
    // A sparse 100 MB file: reads as zeros, takes no disk.
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(SIZE))
        .expect("upload file");
    let r = curl(
        &format!("http://{port}/upload"),
        &["-T", &file.to_string_lossy()],
    )
    .expect("curl upload");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body.trim(), format!("received {SIZE}"));
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg(format!("http://{port}/bytes?n={SIZE}"))
        .output()
        .expect("curl download");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("200 {SIZE}"),
        "download through lb"
    );
    let peak = peak_rss_kib(s.lb.pid());
    assert!(
        peak > 0 && peak < 64 * 1024,
        "lb's peak RSS was {peak} KiB for 2 × 100 MB bodies: they are buffered, not streamed"
    );
}

/// Reads until EOF or `limit`; returns what arrived.
fn read_all(stream: &mut TcpStream, limit: Duration) -> String {
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn timeouts_answer_408_and_504_and_close_idle_connections() {
    let b = backends(&["a"]);
    let port = free_addr("127.0.0.1");
    let s = start(&format!(
        r#"[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
timeouts = {{ headerRead = "500ms", clientIdle = "1s" }}
[[pool]]
name = "p"
backends = ["{}"]
timeouts = {{ server = "500ms" }}
"#,
        b[0].addr
    ));
    // A head that never completes: 408, then close.
    let mut slow = TcpStream::connect(port).expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let answer = read_all(&mut slow, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 408"), "got {answer:?}");
    // A connection that says nothing: closed without a word.
    let mut idle = TcpStream::connect(port).expect("connect");
    assert_eq!(read_all(&mut idle, Duration::from_secs(10)), "");
    // A backend slower than `server`: 504.
    let r = curl(&format!("http://{port}/slow?ms=3000"), &[]).expect("curl");
    assert_eq!(r.status, 504, "{r:?}");
    // A backend that goes silent mid-body: the body is cut short (curl
    // reports a transfer error) after `server`.
    let r = curl(&format!("http://{port}/silent-body?ms=3000"), &[]).expect("curl");
    assert_eq!(r.status, 200, "{r:?}");
    assert_ne!(r.exit, 0, "the cut body must not look complete: {r:?}");
    assert!(
        r.body.starts_with("first") && !r.body.contains("late"),
        "{r:?}"
    );
    let f = frontend_status(s.admin, "web");
    let t = &f["timeouts"];
    assert!(t["headerRead"].as_u64() >= Some(1), "{f}");
    assert!(t["clientIdle"].as_u64() >= Some(1), "{f}");
    assert!(t["server"].as_u64() >= Some(2), "{f}");
    assert!(f["responses"]["4xx"].as_u64() >= Some(1), "{f}");
    // A keep-alive connection with finished requests is also closed after
    // clientIdle.
    let mut ka = TcpStream::connect(port).expect("connect");
    ka.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let answer = read_all(&mut ka, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[test]
fn a_sticky_cookie_keeps_a_client_on_its_backend_while_it_is_healthy() {
    let b = backends(&["a", "b"]);
    let port = free_addr("127.0.0.1");
    let s = start(&format!(
        r#"[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
sticky = "cookie"
backends = ["{}", "{}"]
health = {{ kind = "http", path = "/health", interval = "100ms", timeout = "500ms", rise = 1, fall = 1 }}
"#,
        b[0].addr, b[1].addr
    ));
    let url = format!("http://{port}/");
    let first = curl(&url, &[]).expect("curl");
    let cookie = first
        .cookie("lb_backend")
        .expect("a sticky cookie")
        .to_owned();
    assert!(cookie.starts_with("lb_backend="), "{cookie}");
    let home = first.backend().to_owned();
    for _ in 0..10 {
        let r = curl(&url, &["-H", &format!("Cookie: other=1; {cookie}")]).expect("curl");
        assert_eq!(r.backend(), home, "the cookie did not keep the backend");
        assert_eq!(r.cookie("lb_backend"), None, "no new cookie while it holds");
    }
    let without: Vec<String> = (0..4)
        .map(|_| curl(&url, &[]).expect("curl").backend().to_owned())
        .collect();
    assert!(without.iter().any(|x| *x != home), "{without:?}");
    // Its backend goes down: the client moves, with a new cookie.
    let (i, other) = if home == "a" { (0, "b") } else { (1, "a") };
    b[i].set_healthy(false);
    wait_up(s.admin, b[i].addr, false);
    let r = curl(&url, &["-H", &format!("Cookie: {cookie}")]).expect("curl");
    assert_eq!(r.backend(), other);
    assert!(r.cookie("lb_backend").is_some_and(|c| c != cookie));
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let b = backends(&["a"]);
    let port = free_addr("127.0.0.1");
    let mut s = start(&format!(
        r#"[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
backends = ["{}"]
"#,
        b[0].addr
    ));
    let slow: Vec<_> = (0..10)
        .map(|_| {
            let url = format!("http://{port}/slow?ms=1500");
            std::thread::spawn(move || curl(&url, &[]).expect("curl"))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while b[0].requests() < 10 {
        assert!(
            Instant::now() < deadline,
            "requests never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = i32::try_from(s.lb.pid()).expect("pid");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(200));
    let refused = curl(&format!("http://{port}/"), &[]).expect("curl");
    assert_eq!(
        refused.exit, 7,
        "a new connection after SIGTERM: {refused:?}"
    );
    for t in slow {
        let r = t.join().expect("client thread");
        assert_eq!(r.status, 200, "an in-flight request was lost: {r:?}");
    }
    assert_eq!(
        s.lb.stop(libc::SIGTERM).expect("exit"),
        Some(0),
        "{}",
        s.lb.log()
    );
}

#[test]
fn pools_with_protocol_h2_speak_http2_to_their_backends() {
    let b = backends(&["a"]);
    let port = free_addr("127.0.0.1");
    let _s = start(&format!(
        r#"[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
protocol = "h2"
backends = ["{}"]
"#,
        b[0].addr
    ));
    let url = format!("http://{port}/two?x=1");
    let r = curl(&url, &[]).expect("curl");
    assert_eq!((r.version.as_str(), r.status), ("HTTP/1.1", 200), "{r:?}");
    assert_eq!(r.echoed("version"), ["HTTP/2.0"], "{}", r.body);
    assert!(
        r.body.contains(&format!("GET http://{port}/two?x=1")),
        "{}",
        r.body
    );
    assert_eq!(r.echoed("x-forwarded-for"), ["127.0.0.1"]);
    // Many requests multiplex over the one backend connection.
    let load = h2load(&url, &["--h1", "-n", "500", "-c", "5"]).expect("h2load");
    assert_eq!((load.succeeded, load.status_2xx), (500, 500), "{load:?}");
}

#[test]
fn each_connection_is_accepted_by_the_worker_on_the_cpu_that_received_it() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus < 2 {
        eprintln!("SKIPPED: one CPU, nothing to steer between");
        return;
    }
    let b = backends(&["a"]);
    let port = free_addr("127.0.0.1");
    let s = start(
        &format!(
            r#"[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
backends = ["{}"]
"#,
            b[0].addr
        )
        .replace("[xdp]", "[global.limits]\n[xdp]"),
    );
    let accepted = || -> Vec<u64> {
        status(s.admin).expect("status")["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .map(|w| w["accepted"].as_u64().unwrap_or(0))
            .collect()
    };
    assert_eq!(accepted().len(), cpus, "one worker per CPU by default");
    for cpu in [0, 1, 0] {
        let before = accepted();
        // On loopback the SYN is received on the sender's CPU.
        for _ in 0..10 {
            let out = std::process::Command::new("taskset")
                .args(["-c", &cpu.to_string(), "curl", "-s", "-o", "/dev/null"])
                .arg(format!("http://{port}/"))
                .status()
                .expect("taskset curl");
            assert!(out.success());
        }
        let after = accepted();
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let mut expected = vec![0; cpus];
        expected[cpu] = 10;
        assert_eq!(
            delta, expected,
            "connections made on CPU {cpu} went to these workers"
        );
    }
}

/// A listening socket whose accept queue is full: SYNs to it are dropped,
/// so a connect to it hangs (as to a host that went silent).
struct Blackhole {
    fd: i32,
    addr: SocketAddr,
    _filler: TcpStream,
}

impl Blackhole {
    fn new() -> Self {
        // SAFETY: plain socket calls on a fresh fd with a valid sockaddr.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            assert_eq!(libc::bind(fd, std::ptr::from_ref(&sa).cast(), len), 0);
            assert_eq!(libc::listen(fd, 0), 0);
            let mut len2 = len;
            libc::getsockname(fd, std::ptr::from_mut(&mut sa).cast(), &raw mut len2);
            let addr = SocketAddr::from(([127, 0, 0, 1], u16::from_be(sa.sin_port)));
            // One connection fills a backlog of 0; later SYNs are dropped.
            let filler = TcpStream::connect(addr).expect("filler");
            Self {
                fd,
                addr,
                _filler: filler,
            }
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.fd) };
    }
}

#[test]
fn a_backend_that_never_answers_the_connect_times_out_and_is_retried() {
    let hole = Blackhole::new();
    let b = backends(&["live"]);
    let (p1, p2) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let s = start(&format!(
        r#"[[frontend]]
name = "web"
listen = "{p1}"
pool = "p"
[[frontend]]
name = "only-hole"
listen = "{p2}"
pool = "hole"
[[pool]]
name = "p"
backends = ["{}", "{}"]
timeouts = {{ connect = "300ms" }}
[[pool]]
name = "hole"
backends = ["{}"]
timeouts = {{ connect = "300ms" }}
"#,
        hole.addr, b[0].addr, hole.addr
    ));
    for _ in 0..4 {
        let r = curl(&format!("http://{p1}/"), &[]).expect("curl");
        assert_eq!((r.status, r.backend()), (200, "live"), "{r:?}");
    }
    let f = frontend_status(s.admin, "web");
    assert!(f["timeouts"]["connect"].as_u64() >= Some(1), "{f}");
    assert!(f["retries"].as_u64() >= Some(1), "{f}");
    // Nowhere else to go: 502 after the tries, each bounded by `connect`.
    let r = curl(&format!("http://{p2}/"), &[]).expect("curl");
    assert_eq!(r.status, 502, "{r:?}");
    let g = frontend_status(s.admin, "only-hole");
    assert_eq!(
        g["timeouts"]["connect"], 4,
        "1 try + 3 retries (maxRetries default): {g}"
    );
}

#[test]
fn a_request_lost_with_its_backend_is_replayed_only_if_idempotent_and_bodiless() {
    let b = backends(&["flaky", "good"]);
    b[0].set_dropping(true);
    let port = free_addr("127.0.0.1");
    let s = start(&format!(
        r#"[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
backends = ["{}", "{}"]
"#,
        b[0].addr, b[1].addr
    ));
    let url = format!("http://{port}/");
    for _ in 0..6 {
        let r = curl(&url, &[]).expect("curl");
        assert_eq!(
            (r.status, r.backend()),
            (200, "good"),
            "a GET was not replayed: {r:?}"
        );
    }
    let flaky_before = b[0].requests();
    assert!(flaky_before >= 3, "round robin sent GETs to flaky too");
    let statuses: Vec<u16> = (0..6)
        .map(|_| {
            curl(&url, &["--data-binary", "order=42"])
                .expect("curl")
                .status
        })
        .collect();
    let lost = b[0].requests() - flaky_before;
    assert!(lost >= 1, "no POST reached flaky: {statuses:?}");
    assert_eq!(
        statuses.iter().filter(|&&c| c == 502).count() as u64,
        lost,
        "each POST flaky took must be a 502, never sent twice: {statuses:?}"
    );
    // good answered the 6 GETs and every POST flaky did not take.
    assert_eq!(b[1].requests(), 6 + (6 - lost), "{statuses:?}");
    let f = frontend_status(s.admin, "web");
    assert!(f["backendFailed"].as_u64() >= Some(lost), "{f}");
}
