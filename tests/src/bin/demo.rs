//! `cargo xtask demo`: a tour of `lb` in network namespaces made here and
//! removed on exit (also on Ctrl-C or failure).
//!
//! The topology: a client namespace holds a legitimate client (198.18.0.3)
//! and a flooder (198.18.0.2); a veth pair joins it to the lb namespace,
//! which holds the VIP 198.18.0.1 (HTTP on :80, TLS on :443 with a
//! certificate from `lb cert gen`), `lb` with its XDP program attached in
//! native mode to that veth, two real HTTP backends (198.18.0.1:9001 and
//! :9002), and on a private address (10.77.0.1, on the namespace's loopback,
//! out of the client's reach) a `redis-server` for `[cluster]` (TLS sessions
//! and the farm's ticket keys) and the admin API, whose token is `demo`. A
//! forwarder on the host's 127.0.0.1:9100 (another free port if that one is
//! taken) reaches that admin API from the host, so an operator can open the
//! status page while the demo runs.
//!
//! The phases, each followed by a table of what was refused in that phase,
//! by `level/axis` and where (XDP: the pinned maps, read with `lb stats
//! --json`; the proxy: `/api/status`), and by what the real clients got:
//! 1. normal traffic: curl over HTTP and HTTPS, and an `openssl s_client`
//!    session saved, then resumed (`Reused`); nothing is refused, the ticket
//!    keys come from Redis;
//! 2. SYN floods with hping3, from one address and then from spoofed random
//!    sources, while the client keeps making requests: SYNs dropped in XDP
//!    by `xdp.sourceSynRate` and by the profile's `maxConnRate`;
//! 3. a handshake storm with h2load: 600 TLS clients at once, refused with
//!    fatal alerts by the per-CPU handshake gate (`maxActiveHandshakes`,
//!    shown per CPU); then a steady 400 new TLS connections/s for 2 s,
//!    whose full handshakes `maxSslRate` holds to 300/s (accepts paused);
//! 4. a profile change: `lb profile set demo maxConn=4` through the admin
//!    API, slow requests refused with 503 by `pool/maxConn`, then the
//!    profile set back and the same load served in full.
//!
//! At the end it prints its wall time (setup and build not counted) and
//! the status page and API URLs, waits for Enter when stdin is a terminal
//! (without one it goes on at once), and removes everything: the forwarder,
//! the backends, `lb` (SIGTERM, then waited for; its XDP program and pins
//! go with it), `redis-server`, the temp files, the namespaces and veths.

use std::{
    collections::BTreeMap,
    fmt,
    io::IsTerminal as _,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use lb_tests::{
    backend::HttpBackend,
    client::curl_in,
    lb::{lb_bin, lb_cmd, Lb},
    netns::{cmd_in, run_in, Forward, Netns, Topology},
    ScratchDir,
};
use serde_json::Value;

const VIP: &str = "198.18.0.1";
const FLOODER: &str = "198.18.0.2";
const CLIENT: &str = "198.18.0.3";
/// On the lb namespace's loopback: Redis and the admin API.
const PRIVATE: &str = "10.77.0.1";
const REDIS_PORT: u16 = 6379;
const ADMIN_PORT: u16 = 9100;
const TOKEN: &str = "demo";
const INSTANCE: &str = "demo";
const SNI: &str = "demo.test";
/// The demo profile's `maxConn`, lowered in phase 4 and set back.
const MAX_CONN: u32 = 1000;

fn admin_addr() -> SocketAddr {
    SocketAddr::from(([10, 77, 0, 1], ADMIN_PORT))
}

fn config(iface: &str, cert: &Path, key: &Path) -> String {
    format!(
        r#"# The demo's lb.toml
[global]
instance = "{INSTANCE}"
drainTimeout = "2s"

[xdp]
iface = "{iface}"
mode = "driver"
sourceSynRate = 500          # SYN/s from any one address
sourceSynBurst = 1000

[admin]
listen = "{PRIVATE}:{ADMIN_PORT}"
token = "{TOKEN}"               # changes (lb profile set) need it

[cluster]
redis = "redis://{PRIVATE}:{REDIS_PORT}"   # TLS sessions and the ticket keys

[[frontend]]
name = "web"
listen = "{VIP}:80"
pool = "api"

[[frontend]]
name = "web-tls"
listen = "{VIP}:443"
pool = "api"
tls = {{ cert = "{cert}", key = "{key}" }}

[[pool]]
name = "api"
profile = "demo"
backends = ["{VIP}:9001", "{VIP}:9002"]
health = {{ kind = "http", path = "/health", interval = "1s" }}
queue = {{ depth = 8, timeout = "500ms" }}

[profile.demo]
maxConn = {MAX_CONN}              # requests in flight to the pool; then the queue
maxConnRate = 2000           # SYN/s to the pool's VIPs, in XDP
maxSslRate = 300             # full TLS handshakes/s
maxActiveHandshakes = 8      # TLS handshakes in flight, per CPU
"#,
        cert = cert.display(),
        key = key.display(),
    )
}

fn main() -> ExitCode {
    let started = Instant::now();
    let stop = match Stop::install() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("lb-demo: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let cleaned = "everything the demo made (namespaces, veths, lb, redis-server, backends, \
                   forwarder, temp files) is removed";
    match run(&stop, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if stop.is_set() => {
            eprintln!("\ninterrupted (Ctrl-C): {cleaned}");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("\nlb-demo failed: {e:#}\n{cleaned}");
            ExitCode::FAILURE
        }
    }
}

/// Builds everything, runs the phases, then takes it all down again in
/// order. On an early return the guards do the same, in reverse order of
/// creation.
fn run(stop: &Stop, started: Instant) -> Result<()> {
    step("topology");
    let t = Topology::new(
        "lbdemo",
        &[&format!("{CLIENT}/24"), &format!("{FLOODER}/24")],
        &[&format!("{VIP}/24")],
    )?;
    t.lbns
        .run(&["ip", "addr", "add", &format!("{PRIVATE}/32"), "dev", "lo"])?;
    println!(
        "{client}: client {CLIENT}, flooder {FLOODER}\n  │ veth\n{lbns}: VIP {VIP}:80 (HTTP) and \
         :443 (TLS), XDP on {iface}; backends {VIP}:9001, :9002;\n  {PRIVATE} (loopback): \
         redis-server :{REDIS_PORT}, admin API :{ADMIN_PORT}",
        client = t.client.name(),
        lbns = t.lbns.name(),
        iface = t.iface,
    );
    let dir = ScratchDir::new("lb-demo");
    let redis = Redis::start(&t.lbns)?;
    let (cert, key) = cert_gen(&dir)?;
    let cfg = config(&t.iface, &cert, &key);
    println!("\n{cfg}");
    let backends = [
        HttpBackend::start(
            "backend-1",
            format!("{VIP}:9001").parse()?,
            Some(t.lbns.name()),
        )?,
        HttpBackend::start(
            "backend-2",
            format!("{VIP}:9002").parse()?,
            Some(t.lbns.name()),
        )?,
    ];
    let mut lb = Running(Some(Lb::start(Some(&t.lbns), &dir.join("lb.toml"), &cfg)?));
    let forward = Forward::start(
        &[
            SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT)),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        ],
        t.lbns.name(),
        admin_addr(),
    )?;
    println!(
        "lb running (pid {}), maps pinned at /sys/fs/bpf/lb/{INSTANCE}/",
        lb.pid()
    );
    print_urls(forward.addr);

    let demo = Demo {
        client: t.client.name(),
        lbns: t.lbns.name(),
        dir: &dir,
        stop,
        lb: &lb,
        log_seen: std::cell::Cell::new(0),
    };
    demo.normal_traffic()?;
    demo.syn_flood()?;
    demo.handshake_storm()?;
    demo.profile_change()?;

    step(&format!(
        "done in {:.1} s (setup and build not counted)",
        started.elapsed().as_secs_f64()
    ));
    print_urls(forward.addr);
    wait_for_operator(stop);

    step("cleanup");
    drop(forward);
    println!(
        "forwarder closed; the backends served {} and {} requests",
        backends[0].requests(),
        backends[1].requests()
    );
    drop(backends);
    let exit = match lb.stop()? {
        Some(code) => format!("exit code {code}"),
        None => "by a signal".to_owned(),
    };
    println!("lb exited ({exit}): XDP detached, pins removed");
    redis.stop();
    println!("redis-server stopped");
    drop(dir);
    drop(t);
    println!("temp files, namespaces and veths removed");
    Ok(())
}

/// Set by Ctrl-C; every phase and load loop looks at it. `lb`, hping3,
/// h2load and curl get the Ctrl-C too (same process group) and stop; this
/// process then unwinds and its guards remove the rest.
struct Stop(Arc<AtomicBool>);

impl Stop {
    fn install() -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        ctrlc::set_handler(move || set.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
        Ok(Self(flag))
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn check(&self) -> Result<()> {
        if self.is_set() {
            bail!("interrupted (Ctrl-C)");
        }
        Ok(())
    }
}

/// `lb` as the demo runs it: stopped with SIGTERM and waited for, on
/// [`Running::stop`] or on drop (SIGKILL if it does not exit in 10 s).
struct Running(Option<Lb>);

impl Running {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Lb::pid)
    }

    fn log(&self) -> String {
        self.0.as_ref().map(Lb::log).unwrap_or_default()
    }

    fn stop(&mut self) -> Result<Option<i32>> {
        match self.0.take() {
            Some(mut lb) => lb.stop(libc::SIGTERM),
            None => Ok(None),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// A `redis-server` in the lb namespace on the private address, without
/// persistence; SIGTERM (then SIGKILL after 5 s) by pid on stop or drop.
struct Redis(Option<Child>);

impl Redis {
    fn start(ns: &Netns) -> Result<Self> {
        let child = ns
            .cmd("redis-server")
            .args(["--bind", PRIVATE, "--port", &REDIS_PORT.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            // Its address is reachable from inside the lb namespace only.
            .args(["--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (cargo xtask setup installs it)")?;
        let redis = Self(Some(child));
        let addr = SocketAddr::from(([10, 77, 0, 1], REDIS_PORT));
        run_in(ns.name(), move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !pong(addr) {
                if Instant::now() > deadline {
                    bail!("redis-server does not answer PING on {addr} after 5 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })?;
        println!("redis-server on {addr}");
        Ok(redis)
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling our own child (nsenter execs redis-server:
            // same pid), not yet waited for, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Whether Redis at `addr` answers PING (from this thread's namespace).
fn pong(addr: SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 5];
    c.write_all(b"PING\r\n").is_ok() && c.read_exact(&mut reply).is_ok() && &reply == b"+PONG"
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `lb cert gen` for the demo's name: (certificate, key).
fn cert_gen(dir: &ScratchDir) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (code, _, err) = lb_cmd(&[
        "cert",
        "gen",
        "--name",
        SNI,
        "--dir",
        &dir.join("").to_string_lossy(),
    ])?;
    if code != 0 {
        bail!("lb cert gen failed: {err}");
    }
    Ok((dir.join("demo.test.pem"), dir.join("demo.test.key")))
}

fn step(title: &str) {
    println!("\n=== {title}");
}

fn print_urls(at: SocketAddr) {
    println!("status page: http://{at}/");
    println!("API:         http://{at}/api/status");
}

/// With a terminal, waits for Enter (or Ctrl-C) so the operator can look
/// at the status page; without one, returns at once.
fn wait_for_operator(stop: &Stop) {
    if !std::io::stdin().is_terminal() {
        println!("(no terminal: cleaning up now)");
        return;
    }
    println!("press Enter to clean up (lb, Redis, the backends and the namespaces go away)");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    while !stop.is_set() {
        if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            return;
        }
    }
}

/// What the phases need: where to run clients and `lb` commands, and
/// how much of `lb`'s log has been shown.
struct Demo<'a> {
    client: &'a str,
    lbns: &'a str,
    dir: &'a ScratchDir,
    stop: &'a Stop,
    lb: &'a Running,
    log_seen: std::cell::Cell<usize>,
}

impl Demo<'_> {
    fn normal_traffic(&self) -> Result<()> {
        self.stop.check()?;
        step("1. normal traffic: curl over HTTP and HTTPS, a TLS session resumed");
        let before = self.snapshot()?;
        println!("HTTP:  {}", self.requests(Proto::Http, 10, 20)?);
        println!("HTTPS: {}", self.requests(Proto::Https, 10, 20)?);
        let sess = self.dir.join("session.pem");
        println!(
            "openssl s_client -sess_out: {}",
            self.s_client(&sess, true)?
        );
        println!(
            "openssl s_client -sess_in:  {}",
            self.s_client(&sess, false)?
        );
        let after = self.snapshot()?;
        self.report(&before, &after);
        let (f, fb) = (
            frontend(&after.status, "web-tls"),
            frontend(&before.status, "web-tls"),
        );
        let cluster = &after.status["cluster"];
        println!(
            "TLS: {} full handshakes, {} resumed; tickets {} issued, {} decrypted, keys from {} \
             (encrypting key {}); Redis {} ({} calls, {} failed)",
            delta(&f, &fb, "/tls/full"),
            delta(&f, &fb, "/tls/resumedTls13") + delta(&f, &fb, "/tls/resumedTls12"),
            delta(&f, &fb, "/tlsTickets/encrypted"),
            delta(&f, &fb, "/tlsTickets/decrypted"),
            f["tlsTickets"]["source"].as_str().unwrap_or("?"),
            f["tlsTickets"]["encrypting"].as_str().unwrap_or("?"),
            if cluster["up"].as_bool() == Some(true) {
                "up"
            } else {
                "down"
            },
            cluster["calls"],
            cluster["errors"],
        );
        Ok(())
    }

    fn syn_flood(&self) -> Result<()> {
        for (title, extra) in [
            (
                "2a. SYN flood from one address (30 000 SYNs, ~10 000/s) while the client makes \
                 requests",
                &["-a", FLOODER][..],
            ),
            (
                "2b. SYN flood from random spoofed sources (30 000 SYNs): the pool's maxConnRate \
                 holds; the client's SYNs compete with the flood's for it",
                &["--rand-source"][..],
            ),
        ] {
            self.stop.check()?;
            step(title);
            let before = self.snapshot()?;
            let ns = self.client.to_owned();
            let flooder = std::thread::spawn(move || flood(&ns, extra, 30_000));
            std::thread::sleep(Duration::from_millis(300));
            let tally = self.requests(Proto::Http, 20, 50);
            flooder
                .join()
                .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
            println!("client during the flood, HTTP: {}", tally?);
            let after = self.snapshot()?;
            self.report(&before, &after);
        }
        Ok(())
    }

    fn handshake_storm(&self) -> Result<()> {
        let url = format!("https://{VIP}/");
        let storms: [(&str, &[&str]); 2] = [
            (
                "3a. handshake storm: 600 TLS clients at once (h2load), one handshake and one \
                 request each: the per-CPU handshake gate",
                &["-n", "600", "-c", "600"],
            ),
            (
                "3b. a steady 400 new TLS connections/s for 2 s (h2load -r): maxSslRate holds \
                 full handshakes to 300/s",
                &["-n", "800", "-c", "800", "-r", "4", "--rate-period", "10ms"],
            ),
        ];
        for (title, args) in storms {
            self.stop.check()?;
            step(title);
            let before = self.snapshot()?;
            let t0 = Instant::now();
            let load = self.h2load(&[&["--h1", "-t", "2", "-T", "10"], args].concat(), &url)?;
            let secs = t0.elapsed().as_secs_f64();
            let after = self.snapshot()?;
            println!("h2load ({secs:.1} s): {load}");
            self.report(&before, &after);
            println!("TLS handshakes per CPU (the gate is per CPU):");
            print_tls_per_cpu(&before, &after);
            let (f, fb) = (
                frontend(&after.status, "web-tls"),
                frontend(&before.status, "web-tls"),
            );
            let full = delta(&f, &fb, "/tls/full");
            #[expect(clippy::cast_precision_loss, reason = "a few thousand at most")]
            let rate = full as f64 / secs.max(0.001);
            println!(
                "full handshakes: {full} in {secs:.1} s ({rate:.0}/s; maxSslRate = 300/s); \
                 accepts paused {} times while that rate was spent (tls.ratePaused)",
                delta(&f, &fb, "/tls/ratePaused"),
            );
            if delta(&f, &fb, "/tls/ratePaused") > 0 && delta(&f, &fb, "/tls/gateRefused") > 0 {
                println!(
                    "(connections over the rate wait in the kernel's backlog; when a worker may \
                     accept again it takes those waiting at once, and the gate refuses what is \
                     over 8 in flight on its CPU)"
                );
            }
        }
        Ok(())
    }

    fn profile_change(&self) -> Result<()> {
        self.stop.check()?;
        step(
            "4. profile change: the pool's maxConn lowered live to 4 (its queue: 8 waiting, up \
             to 500 ms), then set back",
        );
        let load_args = ["--h1", "-n", "400", "-c", "40", "-t", "2", "-T", "10"];
        let url = format!("http://{VIP}/slow?ms=50");
        self.profile_set("maxConn=4")?;
        let before = self.snapshot()?;
        let (load, probe) = self.h2load_with_probe(&load_args, &url)?;
        let after = self.snapshot()?;
        println!("h2load, 40 clients, 400 requests of 50 ms: {load}");
        println!("a curl during that load: {probe}");
        self.report(&before, &after);

        self.stop.check()?;
        self.profile_set(&format!("maxConn={MAX_CONN}"))?;
        let before = self.snapshot()?;
        let load = self.h2load(&load_args, &url)?;
        let after = self.snapshot()?;
        println!("the same load again: {load}");
        self.report(&before, &after);
        Ok(())
    }

    /// The phase's refusals, then what `lb` logged about them (its log
    /// says `refused by <level>/<axis>` at most once a second per kind).
    fn report(&self, before: &Snapshot, after: &Snapshot) {
        print_refusals(before, after);
        let log = self.lb.log();
        let new = log.get(self.log_seen.get()..).unwrap_or("");
        self.log_seen.set(log.len());
        let warnings: Vec<String> = new.lines().filter_map(warning).collect();
        if !warnings.is_empty() {
            println!("lb's log (warnings):");
            for line in warnings.iter().take(4) {
                println!("  {line}");
            }
            if warnings.len() > 4 {
                println!("  ... {} more", warnings.len() - 4);
            }
        }
    }

    /// `/api/status` (through curl in the lb namespace) and the XDP
    /// counters (`lb stats --json`, from the pinned maps).
    fn snapshot(&self) -> Result<Snapshot> {
        let r = curl_in(
            Some(self.lbns),
            &format!("http://{}/api/status", admin_addr()),
            &["--max-time", "5"],
        )?;
        if r.status != 200 {
            bail!("/api/status answered {} ({})", r.status, r.body);
        }
        let status = serde_json::from_str(&r.body).context("/api/status is not JSON")?;
        let out = Command::new(lb_bin())
            .args(["stats", "--instance", INSTANCE, "--json"])
            .output()
            .context("lb stats --json")?;
        let xdp = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "lb stats --json: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        Ok(Snapshot { status, xdp })
    }

    /// `n` requests with curl from the client address, each on a new
    /// connection with a 3 s limit, `pause_ms` apart.
    fn requests(&self, proto: Proto, n: u32, pause_ms: u64) -> Result<Tally> {
        let resolve = format!("{SNI}:443:{VIP}");
        let (url, extra) = match proto {
            Proto::Http => (format!("http://{VIP}/"), vec![]),
            Proto::Https => (format!("https://{SNI}/"), vec!["-k", "--resolve", &resolve]),
        };
        let mut tally = Tally::default();
        for _ in 0..n {
            self.stop.check()?;
            let t0 = Instant::now();
            let r = curl_in(
                Some(self.client),
                &url,
                &[&["--interface", CLIENT, "--max-time", "3"], &extra[..]].concat(),
            )?;
            tally.add(r.status, r.backend(), t0.elapsed());
            std::thread::sleep(Duration::from_millis(pause_ms));
        }
        Ok(tally)
    }

    /// `openssl s_client` from the client to the TLS VIP, saving the
    /// session to `sess` or offering it; the line that says `New` or
    /// `Reused`.
    fn s_client(&self, sess: &Path, save: bool) -> Result<String> {
        let mut child = cmd_in(self.client, "timeout")
            .args([
                "5",
                "openssl",
                "s_client",
                "-connect",
                &format!("{VIP}:443"),
            ])
            .args(["-servername", SNI])
            .arg(if save { "-sess_out" } else { "-sess_in" })
            .arg(sess)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting openssl s_client")?;
        // Stay a moment, so the TLS 1.3 tickets sent after the handshake
        // are read and saved.
        std::thread::sleep(Duration::from_millis(if save { 500 } else { 200 }));
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("New,") || l.starts_with("Reused,"))
            .unwrap_or("no handshake")
            .to_owned())
    }

    /// h2load from the client namespace.
    fn h2load(&self, args: &[&str], url: &str) -> Result<Load> {
        h2load(self.client, args, url)
    }

    /// [`Demo::h2load`], with one curl made while it runs: what a single
    /// client saw (status and `lb-limit`).
    fn h2load_with_probe(&self, args: &[&str], url: &str) -> Result<(Load, String)> {
        std::thread::scope(|s| {
            let client = self.client;
            let load = s.spawn(move || h2load(client, args, url));
            std::thread::sleep(Duration::from_millis(300));
            let r = curl_in(
                Some(self.client),
                url,
                &["--interface", CLIENT, "--max-time", "2"],
            )?;
            let probe = match r.header("lb-limit") {
                Some(l) => format!("{} with lb-limit: {l}", r.status),
                None => format!("{} from {}", r.status, r.backend()),
            };
            let load = load
                .join()
                .map_err(|_| anyhow::anyhow!("the h2load thread panicked"))??;
            Ok((load, probe))
        })
    }

    /// `lb profile set demo ASSIGNMENT` in the lb namespace, as an operator
    /// types it; prints the command and the profile it shows after.
    fn profile_set(&self, assignment: &str) -> Result<()> {
        let admin = admin_addr().to_string();
        let args = [
            "profile",
            "set",
            "demo",
            assignment,
            "--admin",
            admin.as_str(),
            "--token",
            TOKEN,
        ];
        println!("$ lb {}", args.join(" "));
        let out = cmd_in(self.lbns, "timeout")
            .arg("10")
            .arg(lb_bin())
            .args(args)
            .output()
            .context("lb profile set")?;
        if !out.status.success() {
            bail!(
                "lb profile set failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            println!("  {line}");
        }
        Ok(())
    }
}

/// h2load in the namespace `ns`, bounded to 30 s.
fn h2load(ns: &str, args: &[&str], url: &str) -> Result<Load> {
    let out = cmd_in(ns, "timeout")
        .args(["30", "h2load"])
        .args(args)
        .arg(url)
        .output()
        .context("starting h2load (cargo xtask setup installs nghttp2-client)")?;
    Load::parse(&String::from_utf8_lossy(&out.stdout))
}

/// A WARN line of `lb`'s text log, shortened to its message, the
/// frontend and how many like it were not logged since the last one.
fn warning(line: &str) -> Option<String> {
    let (_, rest) = line.split_once(" WARN ")?;
    let rest = rest.split_once(": ").map_or(rest, |(_target, r)| r);
    let field = |k: &str| {
        rest.split(&format!(" {k}="))
            .nth(1)
            .and_then(|v| v.split(' ').next())
    };
    let message = rest.split(" frontend=").next().unwrap_or(rest);
    let mut out = message.to_owned();
    if let Some(f) = field("frontend") {
        out.push_str(&format!(" [frontend {}]", f.trim_matches('"')));
    }
    if let Some(n) = field("suppressed").filter(|n| *n != "0") {
        out.push_str(&format!(" (+{n} like it not logged)"));
    }
    Some(out)
}

/// Runs a bounded hping3 SYN flood in the namespace `ns`; `extra` adds flags.
fn flood(ns: &str, extra: &[&str], count: u32) -> Result<()> {
    let status = cmd_in(ns, "timeout")
        .args(["20", "hping3", "-q", "-S", "-p", "80", "-i", "u100"])
        .args(extra)
        .args(["-c", &count.to_string(), VIP])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    // hping3 exits 1 when no reply came back (spoofed sources); timeout(1)
    // exits 124 if hping3 outlived its bound.
    if !matches!(status.code(), Some(0 | 1)) {
        bail!("hping3 exited with {status}");
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Proto {
    Http,
    Https,
}

/// What curl requests got: count by status (0: no answer), how many
/// took over a second (a SYN dropped and retried by TCP), by backend.
#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, u32>,
    slow: u32,
    by_backend: BTreeMap<String, u32>,
}

impl Tally {
    fn add(&mut self, status: u16, backend: &str, took: Duration) {
        *self.by_status.entry(status).or_default() += 1;
        if status != 0 && took > Duration::from_secs(1) {
            self.slow += 1;
        }
        if !backend.is_empty() {
            *self.by_backend.entry(backend.to_owned()).or_default() += 1;
        }
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n: u32 = self.by_status.values().sum();
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(status, count)| match status {
                0 => format!("{count} × no answer within 3 s"),
                s => format!("{count} × {s}"),
            })
            .collect();
        write!(f, "{n} requests: {}", statuses.join(", "))?;
        if self.slow > 0 {
            write!(
                f,
                " ({} after more than 1 s: a SYN dropped, retried by TCP)",
                self.slow
            )?;
        }
        let served: Vec<String> = self
            .by_backend
            .iter()
            .map(|(b, c)| format!("{b} {c}"))
            .collect();
        if !served.is_empty() {
            write!(f, "; served by {}", served.join(", "))?;
        }
        Ok(())
    }
}

/// What h2load reported.
struct Load {
    total: u64,
    /// Responses by class: 2xx, 3xx, 4xx, 5xx.
    codes: [u64; 4],
    /// Requests with no response: the connection failed, was refused
    /// (a TLS alert) or timed out.
    errored: u64,
}

impl Load {
    fn parse(text: &str) -> Result<Self> {
        let number_before = |line: &str, word: &str| -> u64 {
            line.find(word)
                .and_then(|i| line[..i].split_whitespace().last()?.parse().ok())
                .unwrap_or(0)
        };
        let req = text
            .lines()
            .find(|l| l.starts_with("requests:"))
            .with_context(|| format!("h2load printed no totals:\n{text}"))?;
        let codes = text
            .lines()
            .find(|l| l.starts_with("status codes:"))
            .unwrap_or("");
        Ok(Self {
            total: number_before(req, "total"),
            codes: ["2xx", "3xx", "4xx", "5xx"].map(|c| number_before(codes, c)),
            errored: number_before(req, "errored") + number_before(req, "timeout"),
        })
    }
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests: {} × 2xx, {} × 5xx, {} with no response (connection failed or \
             refused with a TLS alert)",
            self.total, self.codes[0], self.codes[3], self.errored
        )
    }
}

/// `/api/status` and `lb stats --json` at one moment.
struct Snapshot {
    status: Value,
    xdp: Value,
}

/// What `b` adds to `a` at the JSON pointer `at` (0 where absent).
fn delta(b: &Value, a: &Value, at: &str) -> u64 {
    let n = |v: &Value| v.pointer(at).and_then(Value::as_u64).unwrap_or(0);
    n(b).saturating_sub(n(a))
}

/// The frontend called `name` in an `/api/status` answer (Null if none).
fn frontend(status: &Value, name: &str) -> Value {
    status["frontends"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The XDP reasons of `lb stats --json`, as level/axis, and what the
/// client saw.
const XDP_REASONS: [(&str, &str); 5] = [
    ("drop_source", "source/sourceSynRate"),
    ("drop_global", "global/maxConnRate"),
    ("drop_frontend", "frontend/maxConnRate"),
    ("drop_pool", "pool/maxConnRate"),
    ("overflow", "pool/maxConn (xdp.overflow)"),
];

/// What a client sees when the proxy refuses by `axis`.
fn client_sees(axis: &str) -> &'static str {
    match axis {
        "maxConn" | "maxSessRate" => "HTTP 503, Retry-After: 1",
        "maxActiveHandshakes" | "maxSslConn" => "TLS fatal alert",
        "maxBufferSize" => "HTTP 431",
        _ => "refused",
    }
}

/// Prints what was refused between `a` and `b`: XDP's SYN drops per VIP
/// and the proxy's refusals per frontend, by level/axis.
fn print_refusals(a: &Snapshot, b: &Snapshot) {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut admitted = Vec::new();
    for vip in b.xdp["vips"].as_array().into_iter().flatten() {
        let name = vip["vip"].as_str().unwrap_or("?");
        let old = a.xdp["vips"]
            .as_array()
            .and_then(|v| v.iter().find(|x| x["vip"] == vip["vip"]))
            .cloned()
            .unwrap_or(Value::Null);
        admitted.push(format!("{} to {name}", delta(vip, &old, "/admitted")));
        for (key, label) in XDP_REASONS {
            let n = delta(vip, &old, &format!("/{key}"));
            if n > 0 {
                rows.push([
                    label.to_owned(),
                    format!("XDP, {name}"),
                    n.to_string(),
                    "SYN dropped (its TCP retries)".to_owned(),
                ]);
            }
        }
    }
    for f in b.status["frontends"].as_array().into_iter().flatten() {
        let name = f["name"].as_str().unwrap_or("?");
        let old = frontend(&a.status, name);
        for (key, _) in f["refused"].as_object().into_iter().flatten() {
            let at = format!("/refused/{}", key.replace('~', "~0").replace('/', "~1"));
            let n = delta(f, &old, &at);
            if n > 0 {
                let axis = key.rsplit('/').next().unwrap_or(key);
                rows.push([
                    key.clone(),
                    format!("proxy, {name}"),
                    n.to_string(),
                    client_sees(axis).to_owned(),
                ]);
            }
        }
    }
    println!("refused this phase:");
    if rows.is_empty() {
        println!("  nothing");
    } else {
        println!(
            "  {:<30} {:<24} {:>8}  the client got",
            "level/axis", "where", "count"
        );
        for [what, at, n, sees] in rows {
            println!("  {what:<30} {at:<24} {n:>8}  {sees}");
        }
    }
    println!("SYNs admitted by XDP: {}", admitted.join(", "));
}

/// Prints each worker's (CPU's) TLS handshake counters for the phase:
/// the gate is per CPU, so this shows where it refused.
fn print_tls_per_cpu(a: &Snapshot, b: &Snapshot) {
    println!(
        "  {:<6} {:>6} {:>8} {:>12} {:>11} {:>7}",
        "CPU", "full", "resumed", "gateRefused", "ratePaused", "failed"
    );
    let old = a.status["workers"].as_array().cloned().unwrap_or_default();
    for (i, w) in b.status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let o = old.get(i).cloned().unwrap_or(Value::Null);
        let d = |k: &str| delta(w, &o, &format!("/tls/{k}"));
        let cpu = w["cpu"]
            .as_u64()
            .map_or_else(|| format!("w{i}"), |c| c.to_string());
        println!(
            "  {cpu:<6} {:>6} {:>8} {:>12} {:>11} {:>7}",
            d("full"),
            d("resumedTls13") + d("resumedTls12"),
            d("gateRefused"),
            d("ratePaused"),
            d("failed")
        );
    }
}
