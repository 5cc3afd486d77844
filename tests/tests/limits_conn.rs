//! `maxConn` and the pool queue, and `maxRetries` at each level, as a
//! client sees them: who waits, in which order, who gets 503 (with
//! `Retry-After` and `lb-limit: <level>/<axis>`), whose TCP connection is
//! closed, and which counter moved.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    backend::{EchoBackend, HttpBackend},
    client::{curl, free_addr, frontend_in, status, Reply},
    lb::Lb,
    unique_tag, ScratchDir,
};

fn backend() -> HttpBackend {
    HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend")
}

fn start_named(dir: &ScratchDir, instance: &str, body: &str) -> Lb {
    let config = format!("[global]\ninstance = \"{instance}\"\n{body}");
    Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts")
}

fn start(dir: &ScratchDir, body: &str) -> Lb {
    start_named(dir, &format!("conn{}", unique_tag()), body)
}

/// A curl on its own thread: the reply and when it came back.
fn curl_later(url: String) -> std::thread::JoinHandle<(Reply, Instant)> {
    std::thread::spawn(move || {
        let r = curl(&url, &[]).expect("curl");
        (r, Instant::now())
    })
}

fn pool_conns(admin: SocketAddr, pool: &str) -> serde_json::Value {
    let s = status(admin).expect("status");
    s["pools"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == pool))
        .map(|p| p["conns"].clone())
        .unwrap_or_default()
}

fn assert_refused(r: &Reply, limit: &str) {
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("lb-limit"), Some(limit), "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
}

#[test]
fn the_pool_queue_serves_waiters_in_order_and_answers_503_when_full_or_after_its_timeout() {
    let dir = ScratchDir::new("lb-conn");
    let b = backend();
    let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let instance = format!("conn{}", unique_tag());
    let mut lb = start_named(
        &dir,
        &instance,
        &format!(
            r#"[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
[[pool]]
name = "p"
profile = "one"
backends = ["{b}"]
queue = {{ depth = 2, timeout = "1500ms" }}
[profile.one]
maxConn = 1
"#,
            b = b.addr
        ),
    );
    let url = |path: &str| format!("http://{port}{path}");
    // One request holds the only slot for a second; two more queue.
    let holder = curl_later(url("/slow?ms=1000"));
    std::thread::sleep(Duration::from_millis(200));
    let second = curl_later(url("/slow?ms=1&who=second"));
    std::thread::sleep(Duration::from_millis(100));
    let third = curl_later(url("/slow?ms=1&who=third"));
    std::thread::sleep(Duration::from_millis(100));
    let conns = pool_conns(admin, "p");
    assert_eq!(
        (&conns["limit"], &conns["active"], &conns["queued"]),
        (&1.into(), &1.into(), &2.into()),
        "{conns}"
    );
    // The queue is full: refused at once.
    let t = Instant::now();
    let full = curl(&url("/"), &[]).expect("curl");
    assert_refused(&full, "pool/maxConn");
    assert!(t.elapsed() < Duration::from_millis(900), "not queued");
    let (h, _) = holder.join().expect("holder");
    let (s, s_at) = second.join().expect("second");
    let (th, t_at) = third.join().expect("third");
    assert_eq!((h.status, s.status, th.status), (200, 200, 200));
    assert!(s_at < t_at, "the older waiter is served first");

    // A waiter whose slot never frees in time gets 503 after the timeout.
    let long = curl_later(url("/slow?ms=3000"));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let timed_out = curl(&url("/"), &[]).expect("curl");
    let waited = t.elapsed();
    assert_refused(&timed_out, "pool/maxConn");
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(2700),
        "waited {waited:?}: the queue's timeout is 1.5 s"
    );
    assert_eq!(long.join().expect("long").0.status, 200);

    let f = frontend_in(&status(admin).expect("status"), "web");
    assert_eq!(f["refused"]["pool/maxConn"], 2, "{f}");
    assert_eq!(f["responses"]["5xx"], 2, "{f}");
    assert_eq!(b.requests(), 4, "refused requests never reach the backend");
    let conns = pool_conns(admin, "p");
    assert_eq!((&conns["active"], &conns["queued"]), (&0.into(), &0.into()));
    // `lb stats` names the refusals (here from the admin API: XDP is off).
    let (code, out, err) = lb_tests::lb::lb_cmd(&[
        "stats",
        "--instance",
        &instance,
        "--admin",
        &admin.to_string(),
    ])
    .expect("lb stats");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("pool/maxConn") && l.trim_end().ends_with(" 2")),
        "{out}"
    );
    assert!(out.contains("pool p: maxConn 1 active 0 queued 0"), "{out}");
    let log = lb.log();
    assert!(
        log.contains("refused by pool/maxConn: the pool is at maxConn and its queue is full"),
        "{log}"
    );
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

/// Opens a connection and waits until lb has accepted it.
fn hold(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    std::thread::sleep(Duration::from_millis(150));
    s
}

#[test]
fn connection_limits_at_the_global_and_frontend_levels_answer_503_naming_the_level() {
    let dir = ScratchDir::new("lb-conn");
    let b = backend();
    let (one, two, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let mut lb = start(
        &dir,
        &format!(
            r#"[global.limits]
maxConn = 2
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "one"
listen = "{one}"
pool = "p"
[frontend.limits]
maxConn = 1
[[frontend]]
name = "two"
listen = "{two}"
pool = "p"
[[pool]]
name = "p"
backends = ["{b}"]
"#,
            b = b.addr
        ),
    );
    let held_one = hold(one);
    assert_refused(
        &curl(&format!("http://{one}/"), &[]).expect("curl"),
        "frontend/maxConn",
    );
    let held_two = hold(two);
    let s = status(admin).expect("status");
    assert_eq!(s["global"]["active"], 2, "{s}");
    assert_refused(
        &curl(&format!("http://{two}/"), &[]).expect("curl"),
        "global/maxConn",
    );
    drop((held_one, held_two));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        curl(&format!("http://{one}/"), &[]).expect("curl").status,
        200,
        "slots come back when connections close"
    );
    let s = status(admin).expect("status");
    assert_eq!(frontend_in(&s, "one")["refused"]["frontend/maxConn"], 1);
    assert_eq!(frontend_in(&s, "two")["refused"]["global/maxConn"], 1);
    assert_eq!(b.requests(), 1);
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

/// Sends `x`, half-closes, reads to the end: what came back.
fn echo_once(addr: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.write_all(b"x");
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn tcp_connections_over_max_conn_are_closed_and_the_header_can_be_turned_off() {
    let dir = ScratchDir::new("lb-conn");
    let echo = EchoBackend::start("127.0.0.1:0".parse().expect("addr")).expect("echo");
    let b = backend();
    let (tf, tp, web, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let mut lb = start(
        &dir,
        &format!(
            r#"limitHeader = false
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "tf"
listen = "{tf}"
mode = "tcp"
pool = "echo"
[frontend.limits]
maxConn = 1
[[frontend]]
name = "tp"
listen = "{tp}"
mode = "tcp"
pool = "echo-one"
[[frontend]]
name = "web"
listen = "{web}"
pool = "http"
[frontend.limits]
maxConn = 1
[[pool]]
name = "echo"
backends = ["{e}"]
[[pool]]
name = "echo-one"
profile = "one"
backends = ["{e}"]
[[pool]]
name = "http"
backends = ["{b}"]
[profile.one]
maxConn = 1
"#,
            e = echo.addr,
            b = b.addr
        ),
    );
    for (name, addr, level) in [("tf", tf, "frontend"), ("tp", tp, "pool")] {
        let held = hold(addr);
        assert_eq!(echo_once(addr), b"", "{name}: closed without an answer");
        drop(held);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            echo_once(addr),
            b"x",
            "{name}: served once the slot is free"
        );
        let f = frontend_in(&status(admin).expect("status"), name);
        assert_eq!(f["refused"][format!("{level}/maxConn")], 1, "{f}");
    }
    assert_eq!(
        echo.connections(),
        4,
        "the two held connections and the two served ones; none refused"
    );
    // limitHeader = false: still 503 and Retry-After, no lb-limit.
    let _held = hold(web);
    let r = curl(&format!("http://{web}/"), &[]).expect("curl");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("lb-limit"), None, "{r:?}");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn max_retries_is_the_smallest_any_level_names() {
    let dir = ScratchDir::new("lb-conn");
    let (a, z, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    // Refused at once, and never one of this test's own free ports.
    let dead: Vec<String> = (2..6).map(|i| format!("\"127.0.0.{i}:1\"")).collect();
    let mut lb = start(
        &dir,
        &format!(
            r#"[global.limits]
maxRetries = 2
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "by-global"
listen = "{a}"
pool = "dead"
[[frontend]]
name = "by-frontend"
listen = "{z}"
pool = "dead"
[frontend.limits]
maxRetries = 0
[[pool]]
name = "dead"
profile = "many"
backends = [{}]
[profile.many]
maxRetries = 3
"#,
            dead.join(", ")
        ),
    );
    for (name, addr, retries) in [("by-global", a, 2), ("by-frontend", z, 0)] {
        let r = curl(&format!("http://{addr}/"), &[]).expect("curl");
        assert_eq!(r.status, 502, "{name}: {r:?}");
        let f = frontend_in(&status(admin).expect("status"), name);
        assert_eq!(f["retries"], retries, "{name}: {f}");
    }
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}
