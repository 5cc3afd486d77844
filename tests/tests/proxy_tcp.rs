//! `mode = "tcp"` frontends as a client sees them, with a real `lb` (no XDP,
//! no privileges) on loopback and real echo backends that answer only after
//! the client has half-closed.
//!
//! It proves: bytes go through unchanged both ways and half-close is passed
//! on, over IPv4 and IPv6 listeners and many connections at once; a failed
//! backend connect is retried on another backend and counted, and with
//! `maxRetries = 0` the client is closed and `backendFailed` counts it; with
//! every backend down (health checks) a client is closed at once and counted
//! in `noBackend`, and the pool serves again once the backend comes back;
//! `sticky = "source"` keeps one client address on one backend; and a silent
//! connection is closed after `clientIdle` while a slow but live one is not.
//! Every number checked is one a user reads: the echoed bytes, EOF on the
//! socket, and the counters of `/api/status`.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use lb_tests::{
    backend::EchoBackend,
    client::{backend_in, frontend_in, status},
    lb::Lb,
    unique_tag, ScratchDir,
};
use serde_json::Value;

/// `n` distinct free ports on `ip`, all bound at once and then released
/// (so that none of them is handed out twice; tests run one at a time).
fn free_addrs(ip: &str, n: usize) -> Vec<SocketAddr> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((ip, 0)).expect("binding port 0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect()
}

/// A running `lb` with its admin address; the scratch dir lives as long.
struct Running {
    lb: Lb,
    admin: SocketAddr,
    _tmp: ScratchDir,
}

impl Running {
    /// Starts `lb` on `body` (frontends, pools, profiles) with `[xdp] mode =
    /// "off"`, its own instance name, an admin listener and a short drain.
    fn start(test: &str, admin: SocketAddr, body: &str) -> Self {
        let tmp = ScratchDir::new("lb-tcp");
        let config = format!(
            r#"[global]
instance = "tcp-{test}-{tag}"
drainTimeout = "2s"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
{body}"#,
            tag = unique_tag()
        );
        let lb = Lb::start(None, &tmp.join("lb.toml"), &config)
            .unwrap_or_else(|e| panic!("lb run:\n{config}\n{e:#}"));
        Self {
            lb,
            admin,
            _tmp: tmp,
        }
    }

    fn status(&self) -> Value {
        status(self.admin).unwrap_or_else(|e| panic!("/api/status: {e:#}\n{}", self.lb.log()))
    }

    /// The frontend called `name` in `/api/status`.
    fn frontend(&self, name: &str) -> Value {
        frontend_in(&self.status(), name)
    }

    /// The backend at `addr` in `/api/status`.
    fn backend(&self, addr: SocketAddr) -> Value {
        backend_in(&self.status(), addr)
    }

    /// Polls until `cond` holds (20 s at most).
    fn wait_for(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:#}\nlb log:\n{}",
                self.status(),
                self.lb.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops `lb` with SIGTERM; it must exit 0.
    fn stop(mut self) {
        let code = self.lb.stop(libc::SIGTERM).expect("lb exits");
        assert_eq!(code, Some(0), "lb exit code; log:\n{}", self.lb.log());
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number `{key}` in {v:#}"))
}

/// `len` bytes of a pattern that differs per `seed` and does not repeat
/// with any power of two (251 is prime).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((i * 31 + seed * 7) % 251) as u8)
        .collect()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    s.set_write_timeout(Some(Duration::from_secs(20)))
        .expect("write timeout");
    s
}

/// Sends `data` through `addr`, half-closes, and reads to EOF; returns what
/// came back. (The echo backend answers only once it sees EOF.)
fn echo(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(data)
        .unwrap_or_else(|e| panic!("write to {addr}: {e}"));
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut back = Vec::with_capacity(data.len());
    s.read_to_end(&mut back)
        .unwrap_or_else(|e| panic!("read from {addr} after {} bytes: {e}", back.len()));
    back
}

/// Asserts two byte strings are equal without printing a MiB of bytes.
fn assert_same(what: &str, got: &[u8], sent: &[u8]) {
    let first_diff = got.iter().zip(sent).position(|(a, b)| a != b);
    assert!(
        got.len() == sent.len() && first_diff.is_none(),
        "{what}: sent {} bytes, got {} back, first difference at {first_diff:?}",
        sent.len(),
        got.len()
    );
}

/// Connects without sending anything and returns how the connection ended
/// (within `bound`): `Ok(n)` is the bytes read before EOF.
fn read_until_closed(addr: SocketAddr, bound: Duration) -> std::io::Result<usize> {
    let mut s = connect(addr);
    s.set_read_timeout(Some(bound)).expect("read timeout");
    let mut got = Vec::new();
    s.read_to_end(&mut got).map(|_| got.len())
}

#[test]
fn tcp_echo_with_half_close_over_ipv4_and_ipv6_with_concurrent_connections() {
    let echo_backend = EchoBackend::start("127.0.0.1:0".parse().expect("addr")).expect("echo");
    let v4 = free_addrs("127.0.0.1", 2);
    let v6 = free_addrs("::1", 1)[0];
    let (v4, admin) = (v4[0], v4[1]);
    let lb = Running::start(
        "echo",
        admin,
        &format!(
            r#"[[frontend]]
name = "v4"
listen = "{v4}"
mode = "tcp"
pool = "echo"
[[frontend]]
name = "v6"
listen = "{v6}"
mode = "tcp"
pool = "echo"
[[pool]]
name = "echo"
backends = ["{backend}"]
"#,
            backend = echo_backend.addr
        ),
    );

    // 8 clients at once, each 2 connections of 1 MiB: one per address family.
    const MIB: usize = 1024 * 1024;
    let clients: Vec<_> = (0..8u64)
        .map(|t| {
            std::thread::spawn(move || {
                for (k, addr) in [v4, v6].into_iter().enumerate() {
                    let sent = pattern(t * 2 + k as u64, MIB);
                    let got = echo(addr, &sent);
                    assert_same(&format!("client {t} via {addr}"), &got, &sent);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed (see its panic above)");
    }

    assert_eq!(
        echo_backend.connections(),
        16,
        "every connection reached the backend"
    );
    for name in ["v4", "v6"] {
        let f = lb.frontend(name);
        assert_eq!(num(&f, "accepted"), 8, "{name}: {f:#}");
        assert_eq!(num(&f, "requests"), 8, "{name}: {f:#}");
        assert_eq!(num(&f, "backendFailed"), 0, "{name}: {f:#}");
        assert_eq!(num(&f, "noBackend"), 0, "{name}: {f:#}");
    }
    let b = lb.backend(echo_backend.addr);
    assert_eq!(num(&b, "sent"), 16, "{b:#}");
    assert_eq!(num(&b, "connectErrors"), 0, "{b:#}");
    // Every connection has ended on lb's side too.
    lb.wait_for("no connection left open", |lb| {
        num(&lb.frontend("v4"), "active") == 0
            && num(&lb.frontend("v6"), "active") == 0
            && num(&lb.backend(echo_backend.addr), "active") == 0
    });
    lb.stop();
}

#[test]
fn failed_connects_are_retried_on_another_backend_and_counted() {
    let echo_backend = EchoBackend::start("127.0.0.1:0".parse().expect("addr")).expect("echo");
    // Two dead backends, two frontends, the admin: all distinct.
    let a = free_addrs("127.0.0.1", 5);
    let (dead, dead_only, retry_fe, noretry_fe, admin) = (a[0], a[1], a[2], a[3], a[4]);
    let lb = Running::start(
        "retry",
        admin,
        &format!(
            r#"[[frontend]]
name = "retry"
listen = "{retry_fe}"
mode = "tcp"
pool = "flaky"
[[frontend]]
name = "noretry"
listen = "{noretry_fe}"
mode = "tcp"
pool = "gone"
[[pool]]
name = "flaky"
algorithm = "roundrobin"
backends = ["{dead}", "{backend}"]
[[pool]]
name = "gone"
profile = "noretry"
backends = ["{dead_only}"]
[profile.noretry]
maxRetries = 0
"#,
            backend = echo_backend.addr
        ),
    );

    // Round robin sends about every other connection to the dead backend
    // first; each of those is retried on the live one. All 20 echo.
    for i in 0..20 {
        let sent = pattern(i, 64 * 1024);
        assert_same(&format!("connection {i}"), &echo(retry_fe, &sent), &sent);
    }
    assert_eq!(echo_backend.connections(), 20);
    let f = lb.frontend("retry");
    assert!(num(&f, "retries") > 0, "retries counted: {f:#}");
    assert_eq!(num(&f, "backendFailed"), 0, "{f:#}");
    assert_eq!(num(&f, "requests"), 20, "{f:#}");
    let d = lb.backend(dead);
    assert!(
        num(&d, "connectErrors") > 0,
        "dead backend's failures: {d:#}"
    );
    assert_eq!(
        num(&d, "connectErrors"),
        num(&f, "retries"),
        "each failed connect was retried once: {d:#} {f:#}"
    );
    let live = lb.backend(echo_backend.addr);
    assert_eq!(num(&live, "connectErrors"), 0, "{live:#}");

    // With no retries and no live backend, the client is accepted and then
    // closed without a byte.
    let got = read_until_closed(noretry_fe, Duration::from_secs(5));
    assert!(
        matches!(got, Ok(0)),
        "closed at once with no data (EOF), got {got:?}"
    );
    let f = lb.frontend("noretry");
    assert_eq!(num(&f, "accepted"), 1, "{f:#}");
    assert_eq!(num(&f, "backendFailed"), 1, "{f:#}");
    assert_eq!(num(&f, "retries"), 0, "maxRetries = 0: {f:#}");
    assert_eq!(num(&f, "noBackend"), 0, "a backend was tried: {f:#}");
    let d = lb.backend(dead_only);
    assert_eq!(num(&d, "connectErrors"), 1, "one attempt only: {d:#}");
    lb.stop();
}

#[test]
fn with_every_backend_down_clients_are_closed_at_once_until_one_comes_back() {
    let a = free_addrs("127.0.0.1", 3);
    let (backend, fe, admin) = (a[0], a[1], a[2]);
    let lb = Running::start(
        "down",
        admin,
        &format!(
            r#"[[frontend]]
name = "fe"
listen = "{fe}"
mode = "tcp"
pool = "p"
[[pool]]
name = "p"
backends = ["{backend}"]
health = {{ kind = "tcp", interval = "200ms", timeout = "200ms", fall = 1, rise = 1 }}
"#
        ),
    );
    let is_up = |lb: &Running| lb.backend(backend)["up"].as_bool();

    lb.wait_for("the dead backend marked down", |lb| {
        is_up(lb) == Some(false)
    });
    let got = read_until_closed(fe, Duration::from_secs(5));
    assert!(
        matches!(got, Ok(0)),
        "closed at once with no data (EOF), got {got:?}"
    );
    let f = lb.frontend("fe");
    assert_eq!(num(&f, "noBackend"), 1, "{f:#}");
    assert_eq!(num(&f, "retries"), 0, "{f:#}");
    assert_eq!(num(&f, "backendFailed"), 0, "nothing was tried: {f:#}");
    let b = lb.backend(backend);
    assert_eq!(
        num(&b, "sent"),
        0,
        "no connect tried to a down backend: {b:#}"
    );
    assert!(num(&b, "checkFailures") >= 1, "{b:#}");

    // The backend comes back on the same address.
    let echo_backend = EchoBackend::start(backend).expect("echo on the backend's address");
    lb.wait_for("the backend marked up again", |lb| is_up(lb) == Some(true));
    let sent = pattern(9, 100_000);
    assert_same("after the backend came back", &echo(fe, &sent), &sent);
    // (The backend also accepts the health checks' connects: count in lb.)
    assert!(echo_backend.connections() >= 1);
    let b = lb.backend(backend);
    assert_eq!(num(&b, "sent"), 1, "{b:#}");
    let f = lb.frontend("fe");
    assert_eq!(num(&f, "noBackend"), 1, "{f:#}");
    assert_eq!(num(&f, "backendFailed"), 0, "{f:#}");
    lb.stop();
}

#[test]
fn sticky_source_keeps_one_client_address_on_one_backend() {
    let b1 = EchoBackend::start("127.0.0.1:0".parse().expect("addr")).expect("echo 1");
    let b2 = EchoBackend::start("127.0.0.1:0".parse().expect("addr")).expect("echo 2");
    let a = free_addrs("127.0.0.1", 2);
    let (fe, admin) = (a[0], a[1]);
    let lb = Running::start(
        "sticky",
        admin,
        &format!(
            r#"[[frontend]]
name = "fe"
listen = "{fe}"
mode = "tcp"
pool = "p"
[[pool]]
name = "p"
algorithm = "roundrobin"
sticky = "source"
backends = ["{}", "{}"]
"#,
            b1.addr, b2.addr
        ),
    );
    for i in 0..10 {
        let sent = pattern(i, 4096);
        assert_same(&format!("connection {i}"), &echo(fe, &sent), &sent);
    }
    let counts = (b1.connections(), b2.connections());
    assert!(
        counts == (10, 0) || counts == (0, 10),
        "all 10 connections from 127.0.0.1 on one backend, got {counts:?}"
    );
    let sent: Vec<u64> = [b1.addr, b2.addr]
        .iter()
        .map(|&b| num(&lb.backend(b), "sent"))
        .collect();
    assert_eq!(sent.iter().sum::<u64>(), 10, "{sent:?}");
    assert!(sent.contains(&10), "/api/status agrees: {sent:?}");
    lb.stop();
}

#[test]
fn a_silent_connection_is_closed_after_client_idle_and_a_slow_one_is_not() {
    let echo_backend = EchoBackend::start("127.0.0.1:0".parse().expect("addr")).expect("echo");
    let a = free_addrs("127.0.0.1", 2);
    let (fe, admin) = (a[0], a[1]);
    let lb = Running::start(
        "idle",
        admin,
        &format!(
            r#"[[frontend]]
name = "fe"
listen = "{fe}"
mode = "tcp"
pool = "p"
timeouts = {{ clientIdle = "1s" }}
[[pool]]
name = "p"
backends = ["{}"]
"#,
            echo_backend.addr
        ),
    );

    // Silent: lb closes it (EOF), long before the 10 s bound.
    let got = read_until_closed(fe, Duration::from_secs(10));
    assert!(
        matches!(got, Ok(0)),
        "closed by lb with EOF within 10 s, got {got:?}"
    );
    let f = lb.frontend("fe");
    assert_eq!(num(&f["timeouts"], "clientIdle"), 1, "{f:#}");

    // Slow but never silent for long: a byte every 200 ms for 2.4 s (over
    // twice clientIdle in all) keeps it open, and the echo arrives whole.
    let mut s = connect(fe);
    let mut sent = Vec::new();
    for i in 0..12u8 {
        s.write_all(&[b'a' + i]).expect("write a byte");
        sent.push(b'a' + i);
        std::thread::sleep(Duration::from_millis(200));
    }
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut back = Vec::new();
    match s.read_to_end(&mut back) {
        Ok(_) => assert_same("slow connection", &back, &sent),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {
            panic!("the slow connection was reset: {e}")
        }
        Err(e) => panic!("reading the slow connection's echo: {e}"),
    }
    let f = lb.frontend("fe");
    assert_eq!(
        num(&f["timeouts"], "clientIdle"),
        1,
        "only the silent one timed out: {f:#}"
    );
    lb.stop();
}
