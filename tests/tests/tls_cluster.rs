//! Cluster mode: two `lb` nodes sharing a real Redis (`[cluster] redis`)
//! resume each other's TLS sessions, TLS 1.3 and 1.2, with no shared key
//! file; with Redis down they keep serving with full handshakes, say so,
//! and share again once it is back.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    client::free_addr,
    have_tool,
    lb::{lb_cmd, Lb},
    unique_tag, ScratchDir,
};

/// A redis-server of the test's own, stopped on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `openssl s_client` to `addr` with TLS `version` (`tls1_2`/`tls1_3`),
/// saving or reusing a session; the line that says `New` or `Reused`.
fn s_client(addr: SocketAddr, version: &str, sess: &Path, save: bool) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "openssl", "s_client", "-connect", &addr.to_string()])
        .arg(format!("-{version}"))
        .arg(if save { "-sess_out" } else { "-sess_in" })
        .arg(sess)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("openssl");
    // Stay a moment, so the TLS 1.3 tickets sent after the handshake are
    // read and saved.
    std::thread::sleep(Duration::from_millis(if save { 500 } else { 100 }));
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("openssl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("New,") || l.starts_with("Reused,"))
        .unwrap_or("no handshake")
        .to_owned()
}

fn node(dir: &ScratchDir, name: &str, port: SocketAddr, redis: u16) -> Lb {
    let c = dir.join("lb.test.pem");
    let k = dir.join("lb.test.key");
    let config = format!(
        r#"[global]
instance = "cl{name}{tag}"
[xdp]
mode = "off"
[cluster]
redis = "redis://127.0.0.1:{redis}"
[[frontend]]
name = "web"
listen = "{port}"
mode = "tcp"
pool = "p"
tls = {{ cert = "{c}", key = "{k}" }}
[[pool]]
name = "p"
backends = ["127.0.0.1:9"]
"#,
        c = c.display(),
        k = k.display(),
        tag = unique_tag()
    );
    Lb::start(None, &dir.join(&format!("{name}.toml")), &config).expect("lb starts")
}

#[test]
fn two_nodes_sharing_redis_resume_each_others_sessions_and_survive_its_outage() {
    for tool in ["redis-server", "openssl"] {
        assert!(have_tool(tool), "`{tool}` missing: run `cargo xtask setup`");
    }
    let dir = ScratchDir::new("lb-cluster");
    let (code, _, err) = lb_cmd(&[
        "cert",
        "gen",
        "--name",
        "lb.test",
        "--dir",
        &dir.join("").to_string_lossy(),
    ])
    .expect("lb cert gen");
    assert_eq!(code, 0, "{err}");
    let redis_port = free_addr("127.0.0.1").port();
    let redis = Redis::start(redis_port);
    let (pa, pb) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let mut a = node(&dir, "a", pa, redis.port);
    let mut b = node(&dir, "b", pb, redis.port);
    let sess = dir.join("s.pem");
    for v in ["tls1_3", "tls1_2"] {
        assert!(s_client(pa, v, &sess, true).starts_with("New,"), "{v}");
        let again = s_client(pb, v, &sess, false);
        assert!(
            again.starts_with("Reused,"),
            "{v}: a session from node a resumes on node b: {again}"
        );
    }

    // Redis goes away: both nodes go on, with full handshakes.
    drop(redis);
    assert!(s_client(pa, "tls1_3", &sess, true).starts_with("New,"));
    let no_redis = s_client(pb, "tls1_3", &sess, false);
    assert!(
        no_redis.starts_with("New,"),
        "served, not resumed: {no_redis}"
    );
    assert!(
        a.log().contains("cluster Redis unreachable")
            || b.log().contains("cluster Redis unreachable"),
        "the outage is logged:\n{}\n{}",
        a.log(),
        b.log()
    );

    // It comes back on the same port: sessions are shared again.
    let _redis = Redis::start(redis_port);
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let saved = s_client(pa, "tls1_3", &sess, true);
        let again = s_client(pb, "tls1_3", &sess, false);
        if saved.starts_with("New,") && again.starts_with("Reused,") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not shared again: {saved} / {again}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(a.stop(libc::SIGTERM).expect("exit"), Some(0));
    assert_eq!(b.stop(libc::SIGTERM).expect("exit"), Some(0));
}
