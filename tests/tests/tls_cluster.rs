//! Cluster mode: two `lb` nodes sharing a real Redis (`[cluster] redis`)
//! resume each other's TLS sessions, TLS 1.3 and 1.2, session ids and
//! tickets, with no shared key file: the ticket keys are the farm's, in
//! Redis. With Redis down they keep serving (full handshakes for session
//! ids, say so) and share again once it is back; the farm's keys rotate
//! once for the farm, by hand (`lb tls rotate-keys --redis`) or on a timer,
//! and a ticket made before a rotation still resumes on another node.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    client::{free_addr, frontend_in, status},
    have_tool,
    lb::{cert_gen, lb_cmd, Lb},
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

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a client offers resumption.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// TLS 1.3 (tickets).
    Tls13,
    /// TLS 1.2 with a ticket.
    Tls12Ticket,
    /// TLS 1.2 with a session id only (`-no_ticket`): the session cache.
    Tls12Id,
}

impl Kind {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Tls13 => &["-tls1_3"],
            Self::Tls12Ticket => &["-tls1_2"],
            Self::Tls12Id => &["-tls1_2", "-no_ticket"],
        }
    }
}

/// `openssl s_client` to `addr`, saving or reusing a session; the line
/// that says `New` or `Reused`.
fn s_client(addr: SocketAddr, kind: Kind, sess: &Path, save: bool) -> String {
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "openssl", "s_client", "-connect", &addr.to_string()])
        .args(kind.args())
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

/// A node: an `lb` with a TLS frontend at `port` and its admin API.
struct Node {
    lb: Lb,
    port: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    /// Starts node `name` in cluster mode on `redis`, with more `[cluster]`
    /// keys and `tlsOptions` lines.
    fn start(dir: &ScratchDir, name: &str, redis: &Redis, cluster: &str, options: &str) -> Self {
        let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
        let c = dir.join("lb.test.pem");
        let k = dir.join("lb.test.key");
        let config = format!(
            r#"[global]
instance = "cl{name}{tag}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[cluster]
redis = "{url}"
{cluster}
[[frontend]]
name = "web"
listen = "{port}"
mode = "tcp"
pool = "p"
tls = {{ cert = "{c}", key = "{k}" }}
[frontend.tlsOptions]
{options}
[[pool]]
name = "p"
backends = ["127.0.0.1:9"]
"#,
            url = redis.url(),
            c = c.display(),
            k = k.display(),
            tag = unique_tag()
        );
        let lb = Lb::start(None, &dir.join(&format!("{name}.toml")), &config).expect("lb starts");
        Self { lb, port, admin }
    }

    /// `tlsTickets` of the frontend in `/api/status`.
    fn tickets(&self) -> serde_json::Value {
        frontend_in(&status(self.admin).expect("status"), "web")["tlsTickets"].clone()
    }

    /// The name of the key that encrypts its tickets.
    fn encrypting(&self) -> String {
        self.tickets()["encrypting"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn stop(mut self) {
        assert_eq!(self.lb.stop(libc::SIGTERM).expect("exit"), Some(0));
    }
}

/// A scratch directory with a certificate from `lb cert gen`.
fn scratch() -> ScratchDir {
    for tool in ["redis-server", "openssl"] {
        assert!(have_tool(tool), "`{tool}` missing: run `cargo xtask setup`");
    }
    let dir = ScratchDir::new("lb-cluster");
    let _pair = cert_gen(&dir, "lb.test");
    dir
}

/// Makes handshakes on both nodes (keys are looked at from within a
/// handshake, at most once a second) until `done` holds, for up to 8 s.
fn until(a: &Node, b: &Node, dir: &ScratchDir, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(8);
    let scrap = dir.join("scrap.pem");
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 8 s");
        s_client(a.port, Kind::Tls13, &scrap, true);
        s_client(b.port, Kind::Tls13, &scrap, true);
    }
}

#[test]
fn two_nodes_sharing_redis_resume_each_others_sessions_and_survive_its_outage() {
    let dir = scratch();
    let redis_port = free_addr("127.0.0.1").port();
    let redis = Redis::start(redis_port);
    let a = Node::start(&dir, "a", &redis, "", "");
    let b = Node::start(&dir, "b", &redis, "", "");
    let sess = dir.join("s.pem");
    for kind in [Kind::Tls13, Kind::Tls12Ticket, Kind::Tls12Id] {
        assert!(
            s_client(a.port, kind, &sess, true).starts_with("New,"),
            "{kind:?}"
        );
        let again = s_client(b.port, kind, &sess, false);
        assert!(
            again.starts_with("Reused,"),
            "{kind:?}: a session from node a resumes on node b: {again}"
        );
    }
    let (ta, tb) = (a.tickets(), b.tickets());
    assert_eq!(ta["source"], "redis", "{ta}");
    assert_eq!(ta["encrypting"], tb["encrypting"], "one farm, one key");
    assert!(
        tb["decrypted"].as_u64() >= Some(2),
        "b decrypted a's tickets: {tb}"
    );

    // Redis goes away: both nodes go on. Session ids are not shared (full
    // handshakes, logged); tickets still are, under the keys each node has.
    drop(redis);
    assert!(s_client(a.port, Kind::Tls12Id, &sess, true).starts_with("New,"));
    let no_redis = s_client(b.port, Kind::Tls12Id, &sess, false);
    assert!(
        no_redis.starts_with("New,"),
        "served, not resumed: {no_redis}"
    );
    let tls = &frontend_in(&status(b.admin).expect("status"), "web")["tls"];
    assert!(
        tls["resumptionMisses"].as_u64() >= Some(1),
        "counted: {tls}"
    );
    assert!(
        a.lb.log().contains("cluster Redis unreachable")
            || b.lb.log().contains("cluster Redis unreachable"),
        "the outage is logged:\n{}\n{}",
        a.lb.log(),
        b.lb.log()
    );
    assert!(s_client(a.port, Kind::Tls13, &sess, true).starts_with("New,"));
    let ticket = s_client(b.port, Kind::Tls13, &sess, false);
    assert!(ticket.starts_with("Reused,"), "keys kept: {ticket}");

    // It comes back, empty, on the same port: the nodes take the new
    // farm's keys and share session ids again.
    let _redis = Redis::start(redis_port);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let saved = s_client(a.port, Kind::Tls12Id, &sess, true);
        let again = s_client(b.port, Kind::Tls12Id, &sess, false);
        if saved.starts_with("New,") && again.starts_with("Reused,") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not shared again: {saved} / {again}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let before = ta["encrypting"].as_str().unwrap_or_default().to_owned();
    until(&a, &b, &dir, "both nodes on the new farm's key", || {
        let key = a.encrypting();
        key != before && key == b.encrypting()
    });
    assert!(s_client(a.port, Kind::Tls13, &sess, true).starts_with("New,"));
    assert!(s_client(b.port, Kind::Tls13, &sess, false).starts_with("Reused,"));
    a.stop();
    b.stop();
}

#[test]
fn the_farm_rotates_its_ticket_keys_once_and_older_tickets_still_resume() {
    let dir = scratch();
    let redis = Redis::start(free_addr("127.0.0.1").port());

    // By hand: no timer, one command for the farm.
    let a = Node::start(&dir, "ra", &redis, "ticketRotation = \"0s\"", "");
    let b = Node::start(&dir, "rb", &redis, "ticketRotation = \"0s\"", "");
    let old = dir.join("old.pem");
    assert!(s_client(a.port, Kind::Tls13, &old, true).starts_with("New,"));
    let first = a.encrypting();
    let (code, out, err) =
        lb_cmd(&["tls", "rotate-keys", "--redis", &redis.url(), "--keep", "3"]).expect("lb");
    assert_eq!(code, 0, "{err}");
    let new = out
        .split_whitespace()
        .skip_while(|w| *w != "key")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(new.len(), 32, "the new key's name: {out}");
    assert_ne!(new, first);
    until(&a, &b, &dir, "both nodes encrypt with the new key", || {
        a.encrypting() == new && b.encrypting() == new
    });
    assert_eq!(a.tickets()["keys"], 2, "the old key still decrypts");
    let resumed = s_client(b.port, Kind::Tls13, &old, false);
    assert!(
        resumed.starts_with("Reused,"),
        "a ticket from before the rotation resumes on the other node: {resumed}"
    );
    let fresh = dir.join("fresh.pem");
    assert!(s_client(b.port, Kind::Tls13, &fresh, true).starts_with("New,"));
    assert!(s_client(a.port, Kind::Tls13, &fresh, false).starts_with("Reused,"));
    let writes = a.tickets()["rotations"].as_u64().unwrap_or(9)
        + b.tickets()["rotations"].as_u64().unwrap_or(9);
    assert_eq!(writes, 1, "one node made the set, neither rotated it");
    // Garbage in: refused with a message, nothing rotated.
    let (code, _, err) =
        lb_cmd(&["tls", "rotate-keys", "--redis", &redis.url(), "--keep", "0"]).expect("lb");
    assert_ne!(code, 0);
    assert!(err.contains("allowed: 1 to 16"), "{err}");
    a.stop();
    b.stop();

    // On a timer: every second, by one node for the farm. Tickets live
    // 2 s and 4 keys are kept, so a key outlives its tickets.
    let redis = Redis::start(free_addr("127.0.0.1").port());
    let timer = "ticketRotation = \"1s\"\nticketKeep = 4";
    let life = "sessionCache = { lifetime = \"2s\" }";
    let a = Node::start(&dir, "ta", &redis, timer, life);
    let b = Node::start(&dir, "tb", &redis, timer, life);
    let started = Instant::now();
    let mut seen = std::collections::HashSet::new();
    while started.elapsed() < Duration::from_secs(5) {
        let s = dir.join("t.pem");
        assert!(s_client(a.port, Kind::Tls13, &s, true).starts_with("New,"));
        let again = s_client(b.port, Kind::Tls13, &s, false);
        assert!(
            again.starts_with("Reused,"),
            "across a rotating farm: {again}"
        );
        seen.insert(a.encrypting());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rotations = a.tickets()["rotations"].as_u64().unwrap_or(0)
        + b.tickets()["rotations"].as_u64().unwrap_or(0);
    // The set was made (one write) before `started`; then at most one
    // rotation per second for the farm, where two nodes on their own timers
    // would make two.
    assert!(
        rotations >= 3 && (rotations as f64) <= elapsed + 2.0,
        "{rotations} rotations by the farm in {elapsed:.1} s"
    );
    assert!(seen.len() >= 2, "the encrypting key changed: {seen:?}");
    assert!(a.tickets()["keys"].as_u64() <= Some(4));
    a.stop();
    b.stop();

    // A config whose tickets outlive the keys is refused, naming why.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[cluster]\nredis = \"{}\"\nticketRotation = \"1m\"\nticketKeep = 2\n\
             [[frontend]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\npool = \"p\"\n\
             tls = {{ cert = \"c\", key = \"k\" }}\n[[pool]]\nname = \"p\"\n\
             backends = [\"127.0.0.1:9\"]\n",
            redis.url()
        ),
    )
    .expect("write");
    let (code, _, err) = lb_cmd(&["check", "--config", &bad.to_string_lossy()]).expect("lb check");
    assert_ne!(code, 0);
    assert!(
        err.contains("cluster.ticketRotation") && err.contains("ticketKeep"),
        "{err}"
    );
}
