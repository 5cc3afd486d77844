//! TLS termination as real clients see it: `curl` over HTTP/2 and HTTP/1.1
//! (ALPN) with `x-forwarded-proto: https` reaching the backend, the
//! certificate chosen by SNI (`openssl s_client`), an unknown name refused
//! with `unknownSni = "alert"`; certificate, key and ticket key files that
//! keep `lb` from starting, naming the file; the per-CPU handshake gate
//! (`maxActiveHandshakes`, BIG-IP's max active handshakes per TMM) driven by
//! ClientHellos that a rustls client builds and then never continues: over
//! the gate a fatal alert `internal_error` at once, or a wait with
//! `gate = "wait"`, a stalled handshake closed at `handshakeTimeout`, and
//! two handshakes in flight at once on two CPUs; TLS 1.2 and 1.3 sessions
//! resumed on another worker, on another `lb` process sharing the ticket key
//! file (also across `lb tls rotate-keys`) and not on one without it; and
//! `maxSslConn`. Every test checks which counter of `/api/status` moved.
//! The tests run one at a time: they pin clients to CPUs and time handshakes.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    backend::HttpBackend,
    client::{curl, free_addr, frontend_in, status, Reply},
    harness::pin_to_cpu,
    lb::{cert_gen, lb_cmd, Lb},
    tls::any_cert,
    unique_tag, ScratchDir,
};
use rustls::pki_types::ServerName;
use serde_json::Value;

/// The record lb sends over a limit: a fatal alert `internal_error`.
const ALERT: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];

/// Serializes the tests of this file (see the module comment).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn backend() -> HttpBackend {
    HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend")
}

/// `lb tls rotate-keys FILE`.
fn rotate_keys(file: &Path) {
    let (code, out, err) = lb_cmd(&["tls", "rotate-keys", &file.to_string_lossy()]).expect("lb");
    assert_eq!(code, 0, "lb tls rotate-keys: {out}{err}");
}

/// `tls = { ... }` for a pair.
fn tls_line((cert, key): &(PathBuf, PathBuf)) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    )
}

/// Starts lb on `[global] instance = NAME` + `global` lines, then `body`.
fn start(dir: &ScratchDir, file: &str, global: &str, body: &str) -> Lb {
    let config = format!(
        "[global]\ninstance = \"tls{}\"\n{global}\n[xdp]\nmode = \"off\"\n{body}",
        unique_tag()
    );
    Lb::start(None, &dir.join(file), &config).expect("lb starts")
}

/// lb with [`one_frontend`] for `lb.test` in `dir` (`lb.toml`), on fresh
/// ports: lb, its admin address and the frontend's.
fn start_web(dir: &ScratchDir, b: &HttpBackend, extra: &str) -> (Lb, SocketAddr, SocketAddr) {
    let pair = cert_gen(dir, "lb.test");
    let (admin, port) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let lb = start(
        dir,
        "lb.toml",
        "",
        &one_frontend(admin, port, &pair, b, extra),
    );
    (lb, admin, port)
}

/// One TLS frontend `web` on `port` (admin on `admin`), with `extra` lines
/// after it (`[frontend.limits]`, `[frontend.tlsOptions]`).
fn one_frontend(
    admin: SocketAddr,
    port: SocketAddr,
    pair: &(PathBuf, PathBuf),
    b: &HttpBackend,
    extra: &str,
) -> String {
    format!(
        r#"[admin]
listen = "{admin}"
[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
{tls}
{extra}
[[pool]]
name = "p"
backends = ["{b}"]
"#,
        tls = tls_line(pair),
        b = b.addr
    )
}

/// `curl -sk --resolve lb.test:PORT:127.0.0.1 ARGS https://lb.test:PORT/`.
fn https(port: SocketAddr, args: &[&str]) -> Reply {
    let resolve = format!("lb.test:{}:127.0.0.1", port.port());
    let mut all = vec!["-k", "--resolve", resolve.as_str()];
    all.extend_from_slice(args);
    curl(&format!("https://lb.test:{}/", port.port()), &all).expect("curl")
}

/// `frontends[web].tls`.
fn tls_of(admin: SocketAddr, frontend: &str) -> Value {
    frontend_in(&status(admin).expect("status"), frontend)["tls"].clone()
}

/// Polls `f` every 20 ms until it holds or `within` passes.
fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `openssl s_client` run on CPU `cpu` (taskset) against `port`: its exit
/// code and everything it printed. `linger`: how long its stdin stays open
/// (a TLS 1.3 client must stay to read the tickets sent after the
/// handshake). `args`: `-tls1_3`, `-sess_out FILE`, ...
fn s_client(
    cpu: usize,
    port: SocketAddr,
    sni: &str,
    args: &[&str],
    linger: Duration,
) -> (i32, String) {
    let mut child = Command::new("taskset")
        .args([
            "-c",
            &cpu.to_string(),
            "timeout",
            "10",
            "openssl",
            "s_client",
        ])
        .args(["-connect", &port.to_string(), "-servername", sni])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting openssl s_client");
    thread::sleep(linger);
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The `New, ...` or `Reused, ...` line of an s_client output.
fn session_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("New, ") || l.starts_with("Reused, "))
        .unwrap_or_else(|| panic!("no New/Reused line in:\n{out}"))
}

/// Saves a session from `from` and offers it to `to` (both with `version`,
/// `-tls1_2` or `-tls1_3`, from CPU `cpu_from`/`cpu_to`): the second
/// handshake's `New, ...` / `Reused, ...` line.
fn resume(
    dir: &ScratchDir,
    (from, cpu_from): (SocketAddr, usize),
    (to, cpu_to): (SocketAddr, usize),
    version: &str,
) -> String {
    let sess = dir.join(&format!("sess-{}.pem", unique_tag()));
    let sess = sess.to_string_lossy();
    let linger = Duration::from_millis(500);
    let (_, first) = s_client(
        cpu_from,
        from,
        "lb.test",
        &[version, "-sess_out", &sess],
        linger,
    );
    assert!(
        session_line(&first).starts_with("New, "),
        "the first handshake is full:\n{first}"
    );
    let (_, second) = s_client(cpu_to, to, "lb.test", &[version, "-sess_in", &sess], linger);
    session_line(&second).to_owned()
}

/// The subject line of the certificate s_client was shown, if any.
fn subject(out: &str) -> Option<&str> {
    out.lines().find(|l| l.starts_with("subject="))
}

/// A rustls client for `lb.test` that trusts anything.
fn rustls_client() -> rustls::ClientConnection {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(any_cert(false))
        .with_no_client_auth();
    let name = ServerName::try_from("lb.test").expect("a DNS name");
    rustls::ClientConnection::new(Arc::new(config), name).expect("client")
}

/// A real ClientHello, as the first flight of a TLS client.
fn client_hello() -> Vec<u8> {
    let mut conn = rustls_client();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("write_tls");
    }
    assert_eq!(hello.first(), Some(&0x16), "a handshake record");
    hello
}

/// Connects, sends a ClientHello and never continues (a stalled handshake).
fn stalled(port: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(port).expect("connect");
    s.write_all(&client_hello()).expect("send ClientHello");
    s
}

/// Reads whatever comes within `within`: the bytes, and whether the
/// connection then ended (EOF or reset) rather than stayed silent.
fn read_for(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (out, false)
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (out, true),
        }
    }
}

/// The first byte the server sends within `within` (None: nothing).
fn first_byte(s: &mut TcpStream, within: Duration) -> Option<u8> {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

/// A completed TLS connection (rustls), held open by the caller.
fn completed(port: SocketAddr) -> (rustls::ClientConnection, TcpStream) {
    let mut conn = rustls_client();
    let mut s = TcpStream::connect(port).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut s).expect("handshake");
    }
    while conn.wants_write() {
        conn.write_tls(&mut s).expect("the client Finished");
    }
    (conn, s)
}

#[test]
fn https_serves_http1_and_h2_and_sni_picks_the_certificate() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-tls");
    let b = backend();
    let own = cert_gen(&dir, "lb.test");
    let other = cert_gen(&dir, "other.test");
    let (web, strict, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let sni = format!(
        "sni = [ {{ name = \"*.other.test\", cert = \"{}\", key = \"{}\" }} ]",
        other.0.display(),
        other.1.display()
    );
    let mut lb = start(
        &dir,
        "lb.toml",
        "",
        &format!(
            r#"[admin]
listen = "{admin}"
[[frontend]]
name = "web"
listen = "{web}"
pool = "p"
{tls}
[frontend.tlsOptions]
{sni}
[[frontend]]
name = "strict"
listen = "{strict}"
pool = "p"
{tls}
[frontend.tlsOptions]
{sni}
unknownSni = "alert"
[[pool]]
name = "p"
backends = ["{b}"]
"#,
            tls = tls_line(&own),
            b = b.addr
        ),
    );
    // ALPN: h2 and http/1.1, both served, the backend told it was https.
    let h2 = https(web, &["--http2"]);
    assert_eq!((h2.status, h2.version.as_str()), (200, "HTTP/2"), "{h2:?}");
    let h1 = https(web, &["--http1.1"]);
    assert_eq!(
        (h1.status, h1.version.as_str()),
        (200, "HTTP/1.1"),
        "{h1:?}"
    );
    for r in [&h2, &h1] {
        assert_eq!(r.backend(), "a", "{r:?}");
        assert_eq!(r.echoed("x-forwarded-proto"), ["https"], "{r:?}");
    }
    // Plain HTTP on the TLS port is not served.
    let plain = curl(&format!("http://{web}/"), &[]).expect("curl");
    assert_eq!(plain.status, 0, "{plain:?}");

    // SNI: the wildcard's certificate, else the frontend's own.
    let now = Duration::ZERO;
    let (code, out) = s_client(0, web, "x.other.test", &[], now);
    assert_eq!(code, 0, "{out}");
    let subj = subject(&out).unwrap_or_default().replace(' ', "");
    assert!(subj.contains("CN=other.test"), "{out}");
    for name in ["unknown.test", "lb.test"] {
        let (code, out) = s_client(0, web, name, &[], now);
        assert_eq!(code, 0, "{name}: {out}");
        let subj = subject(&out).unwrap_or_default().replace(' ', "");
        assert!(subj.contains("CN=lb.test"), "{name}: {out}");
    }
    // unknownSni = "alert": a name no certificate has fails the handshake.
    let (code, out) = s_client(0, strict, "unknown.test", &[], now);
    assert_ne!(code, 0, "{out}");
    assert_eq!(subject(&out), None, "no certificate shown: {out}");
    assert!(out.contains("alert"), "{out}");
    let (code, out) = s_client(0, strict, "x.other.test", &[], now);
    assert_eq!(code, 0, "a name the sni list has is served: {out}");
    let (code, out) = s_client(0, strict, "lb.test", &[], now);
    assert_eq!(
        code, 0,
        "the frontend's own certificate serves its names: {out}"
    );
    let subj = subject(&out).unwrap_or_default().replace(' ', "");
    assert!(subj.contains("CN=lb.test"), "{out}");
    assert!(
        wait_for(Duration::from_secs(2), || tls_of(admin, "strict")["failed"]
            == 1),
        "{}",
        tls_of(admin, "strict")
    );
    let s = status(admin).expect("status");
    let (w, st) = (frontend_in(&s, "web"), frontend_in(&s, "strict"));
    assert_eq!(w["tls"]["full"], 5, "2 curls, 3 s_clients: {w}");
    assert_eq!(w["tls"]["failed"], 1, "the plain HTTP request: {w}");
    assert_eq!(
        (&st["tls"]["full"], &st["tls"]["failed"]),
        (&2.into(), &1.into()),
        "{st}"
    );
    assert_eq!(w["responses"]["2xx"], 2, "{w}");
    assert_eq!(b.requests(), 2);
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn bad_certificates_and_key_files_refuse_to_start_naming_the_file() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-tls");
    let b = backend();
    let own = cert_gen(&dir, "lb.test");
    let other = cert_gen(&dir, "other.test");
    let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let try_start = |pair: &(PathBuf, PathBuf), extra: &str| -> String {
        let config = format!(
            "[global]\ninstance = \"tls{}\"\n[xdp]\nmode = \"off\"\n{}",
            unique_tag(),
            one_frontend(admin, port, pair, &b, extra)
        );
        match Lb::start(None, &dir.join("lb.toml"), &config) {
            Ok(mut lb) => {
                let _ = lb.stop(libc::SIGKILL);
                panic!("lb started with {pair:?} {extra}")
            }
            Err(e) => format!("{e:#}"),
        }
    };
    let refused_before_ready = |err: &str| {
        assert!(err.contains("before ready"), "{err}");
        assert!(!err.contains("exit status: 0"), "a non-zero exit: {err}");
        assert!(!err.contains(" ready ("), "never ready: {err}");
    };

    let missing = dir.join("missing.pem");
    let err = try_start(&(missing.clone(), own.1.clone()), "");
    refused_before_ready(&err);
    assert!(err.contains(&*missing.to_string_lossy()), "{err}");

    let err = try_start(&(own.0.clone(), other.1.clone()), "");
    refused_before_ready(&err);
    assert!(err.contains("do not match"), "{err}");
    assert!(
        err.contains(&*own.0.to_string_lossy()) && err.contains(&*other.1.to_string_lossy()),
        "{err}"
    );

    let keys = dir.join("tickets.keys");
    rotate_keys(&keys);
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let err = try_start(
        &own,
        &format!("[frontend.tlsOptions]\nticketKeys = \"{}\"", keys.display()),
    );
    refused_before_ready(&err);
    assert!(err.contains(&*keys.to_string_lossy()), "{err}");
    assert!(
        err.contains("readable by group or others (mode 0644); allowed: 0600 or 0400"),
        "{err}"
    );
    // A private key other users can read is refused, naming it.
    let open = cert_gen(&dir, "open.test");
    std::fs::set_permissions(&open.1, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let err = try_start(&open, "");
    refused_before_ready(&err);
    assert!(
        err.contains(&*open.1.to_string_lossy()) && err.contains("open to other users (mode 0644)"),
        "{err}"
    );
    // Nothing was left listening.
    assert!(TcpStream::connect(port).is_err(), "{port} is free");
}

#[test]
fn the_handshake_gate_refuses_over_max_active_handshakes_per_cpu() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-tls");
    let b = backend();
    let own = cert_gen(&dir, "lb.test");
    let limits = "[frontend.limits]\nmaxActiveHandshakes = 1";

    // One worker, one handshake in flight at most; stalled ones are
    // aborted after 1 s.
    let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let mut lb = start(
        &dir,
        "one.toml",
        "workers = 1",
        &one_frontend(
            admin,
            port,
            &own,
            &b,
            &format!("{limits}\n[frontend.tlsOptions]\nhandshakeTimeout = \"1s\""),
        ),
    );
    let sent = Instant::now();
    let mut first = stalled(port);
    thread::sleep(Duration::from_millis(50));
    let mut second = stalled(port);
    thread::sleep(Duration::from_millis(50));
    let mut third = stalled(port);
    assert_eq!(
        first_byte(&mut first, Duration::from_secs(2)),
        Some(0x16),
        "the first gets its ServerHello"
    );
    for (name, s) in [("second", &mut second), ("third", &mut third)] {
        let (got, ended) = read_for(s, Duration::from_secs(2));
        assert_eq!(got, ALERT, "{name}: a fatal alert internal_error");
        assert!(ended, "{name}: then closed");
    }
    let f = frontend_in(&status(admin).expect("status"), "web");
    assert_eq!(f["tls"]["gateRefused"], 2, "{f}");
    assert_eq!(f["refused"]["frontend/maxActiveHandshakes"], 2, "{f}");
    // While the first stalls, a real client is refused too...
    let r = https(port, &[]);
    assert_eq!(r.status, 0, "{r:?}");
    let logged = "refused by frontend/maxActiveHandshakes: too many TLS handshakes in flight \
                  on this CPU (fatal alert)";
    assert!(
        wait_for(Duration::from_secs(2), || lb.log().contains(logged)),
        "{}",
        lb.log()
    );
    // ...until handshakeTimeout closes the stalled one and frees the slot.
    let (_, ended) = read_for(&mut first, Duration::from_secs(3));
    let took = sent.elapsed();
    assert!(ended, "the stalled handshake is closed");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "closed after {took:?}: handshakeTimeout is 1 s"
    );
    assert!(wait_for(Duration::from_secs(1), || tls_of(admin, "web")
        ["timeouts"]
        == 1));
    assert_eq!(https(port, &[]).status, 200, "the slot is free again");
    let t = tls_of(admin, "web");
    assert_eq!(
        (&t["gateRefused"], &t["full"]),
        (&3.into(), &1.into()),
        "{t}"
    );
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));

    // Two workers: the gate is per CPU, so one handshake stalls on each of
    // CPUs 0 and 1 at once.
    if thread::available_parallelism().map_or(1, usize::from) >= 2 {
        let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
        let mut lb = start(
            &dir,
            "two.toml",
            "workers = 2",
            &one_frontend(admin, port, &own, &b, limits),
        );
        let on_cpu = |cpu: usize| {
            thread::spawn(move || {
                pin_to_cpu(cpu).expect("pin");
                let mut s = stalled(port);
                let first = first_byte(&mut s, Duration::from_secs(2));
                (s, first)
            })
            .join()
            .expect("client thread")
        };
        let (held0, on0) = on_cpu(0);
        let (held1, on1) = on_cpu(1);
        assert_eq!((on0, on1), (Some(0x16), Some(0x16)), "both in flight");
        let s = status(admin).expect("status");
        let accepted: Vec<&Value> = s["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .map(|w| &w["accepted"])
            .collect();
        assert_eq!(accepted, [&Value::from(1), &Value::from(1)], "{s:#}");
        let f = frontend_in(&s, "web");
        assert_eq!(f["tls"]["gateRefused"], 0, "{f}");
        // Closed before the stop: a handshake in flight holds lb's drain
        // until its handshakeTimeout.
        drop((held0, held1));
        assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
    } else {
        eprintln!("one CPU: the per-CPU part is skipped");
    }

    // gate = "wait": a handshake over the gate waits for the slot.
    let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let mut lb = start(
        &dir,
        "wait.toml",
        "workers = 1",
        &one_frontend(
            admin,
            port,
            &own,
            &b,
            &format!("{limits}\n[frontend.tlsOptions]\ngate = \"wait\""),
        ),
    );
    let mut held = stalled(port);
    assert_eq!(first_byte(&mut held, Duration::from_secs(2)), Some(0x16));
    let t = Instant::now();
    let waiter = thread::spawn(move || (https(port, &[]), Instant::now()));
    thread::sleep(Duration::from_millis(500));
    let dropped = Instant::now();
    drop(held);
    let (r, done) = waiter.join().expect("curl thread");
    assert_eq!(r.status, 200, "it waited, it was not refused: {r:?}");
    assert!(
        done >= dropped,
        "served after the stalled handshake left ({:?})",
        t.elapsed()
    );
    let f = frontend_in(&status(admin).expect("status"), "web");
    assert_eq!(f["tls"]["gateRefused"], 0, "{f}");
    assert_eq!(f["tls"]["full"], 1, "{f}");
    assert_eq!(f["refused"], serde_json::json!({}), "{f}");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn sessions_resume_across_workers_and_across_processes_sharing_a_key_file() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-tls");
    let b = backend();
    let own = cert_gen(&dir, "lb.test");
    let two_cpus = thread::available_parallelism().map_or(1, usize::from) >= 2;
    let cpu1 = usize::from(two_cpus);

    // Two workers, one rustls configuration: saved on CPU 0, resumed on 1.
    let (w, w_admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let mut lb_w = start(
        &dir,
        "w.toml",
        "workers = 2",
        &one_frontend(w_admin, w, &own, &b, ""),
    );
    for v in ["-tls1_2", "-tls1_3"] {
        let line = resume(&dir, (w, 0), (w, cpu1), v);
        let expect = if v == "-tls1_2" {
            "Reused, TLSv1.2"
        } else {
            "Reused, TLSv1.3"
        };
        assert!(line.starts_with(expect), "{v} on another worker: {line}");
    }
    let s = status(w_admin).expect("status");
    let t = &frontend_in(&s, "web")["tls"];
    assert_eq!(
        (&t["full"], &t["resumedTls12"], &t["resumedTls13"]),
        (&2.into(), &1.into(), &1.into()),
        "{t}"
    );
    assert_eq!(t["resumptionMisses"], 0, "{t}");
    if two_cpus {
        let workers = s["workers"].as_array().expect("workers");
        assert_eq!(workers[0]["tls"]["full"], 2, "full on CPU 0: {s:#}");
        let w1 = &workers[1]["tls"];
        assert_eq!(
            (&w1["resumedTls12"], &w1["resumedTls13"]),
            (&1.into(), &1.into()),
            "resumed on CPU 1: {s:#}"
        );
    }

    // Two processes sharing a ticket key file resume each other's sessions.
    let keys = dir.join("tickets.keys");
    rotate_keys(&keys);
    let shared = format!("[frontend.tlsOptions]\nticketKeys = \"{}\"", keys.display());
    let (a, a_admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let (bb, b_admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let mut lb_a = start(
        &dir,
        "a.toml",
        "",
        &one_frontend(a_admin, a, &own, &b, &shared),
    );
    let mut lb_b = start(
        &dir,
        "b.toml",
        "",
        &one_frontend(b_admin, bb, &own, &b, &shared),
    );
    for (v, expect) in [
        ("-tls1_2", "Reused, TLSv1.2"),
        ("-tls1_3", "Reused, TLSv1.3"),
    ] {
        let line = resume(&dir, (a, 0), (bb, 0), v);
        assert!(line.starts_with(expect), "{v} from A on B: {line}");
    }
    let t = tls_of(b_admin, "web");
    assert_eq!(
        (&t["full"], &t["resumedTls12"], &t["resumedTls13"]),
        (&0.into(), &1.into(), &1.into()),
        "{t}"
    );
    let tickets = &frontend_in(&status(b_admin).expect("status"), "web")["tlsTickets"];
    assert_eq!(tickets["decrypted"], 2, "{tickets}");

    // Without a shared file, another process cannot decrypt the ticket.
    let (c, c_admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let mut lb_c = start(&dir, "c.toml", "", &one_frontend(c_admin, c, &own, &b, ""));
    let line = resume(&dir, (w, 0), (c, 0), "-tls1_3");
    assert!(line.starts_with("New, TLSv1.3"), "W to C: {line}");
    let t = tls_of(c_admin, "web");
    assert_eq!(
        (&t["full"], &t["resumedTls13"], &t["resumptionMisses"]),
        (&1.into(), &0.into(), &1.into()),
        "a full handshake after an offered ticket is a miss: {t}"
    );
    let tickets = &frontend_in(&status(c_admin).expect("status"), "web")["tlsTickets"];
    assert_eq!(
        (&tickets["source"], &tickets["unknownKey"]),
        (&"process".into(), &1.into()),
        "{tickets}"
    );

    // Rotation while both run: a session saved before still resumes after.
    let before = |v: &str| {
        let sess = dir.join(&format!("before{v}.pem"));
        let (_, out) = s_client(
            0,
            a,
            "lb.test",
            &[v, "-sess_out", &sess.to_string_lossy()],
            Duration::from_millis(500),
        );
        assert!(session_line(&out).starts_with("New, "), "{out}");
        sess
    };
    let saved = [
        ("-tls1_2", before("-tls1_2")),
        ("-tls1_3", before("-tls1_3")),
    ];
    rotate_keys(&keys);
    thread::sleep(Duration::from_millis(1500));
    for (v, sess) in &saved {
        for (name, port) in [("A", a), ("B", bb)] {
            let (_, out) = s_client(
                0,
                port,
                "lb.test",
                &[v, "-sess_in", &sess.to_string_lossy()],
                Duration::from_millis(200),
            );
            assert!(
                session_line(&out).starts_with("Reused, "),
                "{v} saved before the rotation, on {name}: {out}"
            );
        }
    }
    for (name, admin) in [("A", a_admin), ("B", b_admin)] {
        let tickets = &frontend_in(&status(admin).expect("status"), "web")["tlsTickets"];
        assert_eq!(
            tickets["reloads"], 1,
            "{name} loaded the rotated file: {tickets}"
        );
    }
    // And a session made with the new key resumes on the other node.
    let line = resume(&dir, (bb, 0), (a, 0), "-tls1_3");
    assert!(
        line.starts_with("Reused, TLSv1.3"),
        "new key, B to A: {line}"
    );

    for lb in [&mut lb_w, &mut lb_a, &mut lb_b, &mut lb_c] {
        assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
    }
}

#[test]
fn max_ssl_conn_refuses_a_tls_connection_over_it_with_a_fatal_alert() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-tls");
    let b = backend();
    let own = cert_gen(&dir, "lb.test");
    let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let mut lb = start(
        &dir,
        "lb.toml",
        "",
        &one_frontend(admin, port, &own, &b, "[frontend.limits]\nmaxSslConn = 1"),
    );
    let held = completed(port);
    assert!(wait_for(Duration::from_secs(2), || tls_of(admin, "web")
        ["full"]
        == 1));
    let mut over = stalled(port);
    let (got, ended) = read_for(&mut over, Duration::from_secs(2));
    assert_eq!(got, ALERT, "a fatal alert internal_error");
    assert!(ended, "then closed");
    let f = frontend_in(&status(admin).expect("status"), "web");
    assert_eq!(f["refused"]["frontend/maxSslConn"], 1, "{f}");
    assert_eq!(f["tls"]["gateRefused"], 0, "{f}");
    let r = https(port, &[]);
    assert_eq!(r.status, 0, "curl is refused too: {r:?}");
    let logged = "refused by frontend/maxSslConn: too many TLS connections (fatal alert)";
    assert!(
        wait_for(Duration::from_secs(2), || lb.log().contains(logged)),
        "{}",
        lb.log()
    );
    drop(held);
    thread::sleep(Duration::from_millis(200));
    let r = https(port, &[]);
    assert_eq!(r.status, 200, "the slot came back: {r:?}");
    let f = frontend_in(&status(admin).expect("status"), "web");
    assert_eq!(f["refused"]["frontend/maxSslConn"], 2, "{f}");
    assert_eq!(f["tls"]["full"], 2, "{f}");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn bad_input_ends_only_its_own_connection() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-tls");
    let b = backend();
    let (mut lb, admin, port) =
        start_web(&dir, &b, "[frontend.tlsOptions]\nhandshakeTimeout = \"1s\"");
    // A client that stalls mid-handshake stays open meanwhile.
    let mut stall = stalled(port);
    // Garbage instead of a ClientHello: that connection ends, counted.
    let mut junk = TcpStream::connect(port).expect("connect");
    junk.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00])
        .expect("send");
    let (_, ended) = read_for(&mut junk, Duration::from_secs(3));
    assert!(ended, "the garbage connection is closed");
    // A ClientHello split into 5-byte segments is still a ClientHello.
    let hello = client_hello();
    let mut split = TcpStream::connect(port).expect("connect");
    split.set_nodelay(true).expect("nodelay");
    for chunk in hello.chunks(5) {
        split.write_all(chunk).expect("send");
        thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        first_byte(&mut split, Duration::from_secs(3)),
        Some(0x16),
        "a ServerHello for the split ClientHello"
    );
    // Others are served all along.
    assert_eq!(https(port, &[]).status, 200);
    let (_, closed) = read_for(&mut stall, Duration::from_secs(3));
    assert!(
        closed,
        "the stalled handshake is aborted at handshakeTimeout"
    );
    let t = tls_of(admin, "web");
    assert_eq!(t["failed"], 1, "the garbage: {t}");
    assert!(t["timeouts"].as_u64() >= Some(1), "the stall: {t}");
    drop(split);
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn sighup_puts_new_certificates_in_force_and_refuses_a_mismatched_key() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-tls");
    let b = backend();
    let pair = cert_gen(&dir, "lb.test");
    let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let mut lb = start(
        &dir,
        "lb.toml",
        "",
        &one_frontend(admin, port, &pair, &b, ""),
    );
    let serial_of = || {
        let (code, out) = s_client(0, port, "lb.test", &["-showcerts"], Duration::ZERO);
        assert_eq!(code, 0, "{out}");
        let pem: String = out
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
            .take_while(|l| !l.starts_with("-----END CERTIFICATE"))
            .collect();
        pem
    };
    let before = serial_of();
    // Overwrite the pair with a new one, SIGHUP: new handshakes get it.
    let other = ScratchDir::new("lb-tls-new");
    let fresh = cert_gen(&other, "lb.test");
    std::fs::copy(&fresh.0, &pair.0).expect("copy cert");
    std::fs::copy(&fresh.1, &pair.1).expect("copy key");
    let hup = |lb: &Lb| {
        // SAFETY: a plain kill(2) of our own child.
        unsafe { libc::kill(i32::try_from(lb.pid()).expect("pid"), libc::SIGHUP) };
    };
    hup(&lb);
    assert!(
        wait_for(Duration::from_secs(3), || lb
            .log()
            .contains("SIGHUP: configuration reloaded")),
        "{}",
        lb.log()
    );
    let after = serial_of();
    assert_ne!(before, after, "the new certificate is served");
    // A key that is not the certificate's: refused, the old pair stays.
    let stray = cert_gen(&other, "stray.test");
    std::fs::copy(&stray.1, &pair.1).expect("copy key");
    hup(&lb);
    assert!(
        wait_for(Duration::from_secs(3), || lb
            .log()
            .contains("reload refused")),
        "{}",
        lb.log()
    );
    assert!(lb.log().contains("do not match"), "{}", lb.log());
    assert_eq!(serial_of(), after, "the certificate in force stays");
    assert_eq!(https(port, &[]).status, 200);
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn cipher_suites_and_groups_are_what_the_frontend_allows() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-tls");
    let b = backend();
    let pair = cert_gen(&dir, "lb.test");
    let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let opts = "[frontend.tlsOptions]\nversions = [\"1.3\"]\n\
                cipherSuites = [\"TLS13_CHACHA20_POLY1305_SHA256\"]\ngroups = [\"secp384r1\"]";
    let mut lb = start(
        &dir,
        "lb.toml",
        "",
        &one_frontend(admin, port, &pair, &b, opts),
    );
    let (code, out) = s_client(
        0,
        port,
        "lb.test",
        &["-groups", "secp384r1"],
        Duration::ZERO,
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("TLS_CHACHA20_POLY1305_SHA256"),
        "the one suite: {out}"
    );
    let (code, out) = s_client(0, port, "lb.test", &["-groups", "X25519"], Duration::ZERO);
    assert_ne!(code, 0, "X25519 is not allowed here: {out}");
    let (code, out) = s_client(0, port, "lb.test", &["-tls1_2"], Duration::ZERO);
    assert_ne!(code, 0, "TLS 1.2 is not allowed here: {out}");
    assert!(tls_of(admin, "web")["failed"].as_u64() >= Some(2));
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

/// Reads one HTTP/1.1 response (head and `content-length` body) from a
/// TLS stream: its status and body.
fn response<S: std::io::Read>(s: &mut S) -> (u16, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("a response head");
        assert_eq!(n, 1, "the connection ended mid-head: {raw:?}");
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head}"));
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("the body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn an_idle_https_keep_alive_connection_serves_each_next_request_however_it_arrives() {
    // Over TLS, HTTP/1.1 is served one hyper connection at a time: between
    // requests the connection waits on its bare socket (parked). Each way
    // a next request can arrive must still be served on the same
    // connection: after a pause, pipelined behind another, with a body,
    // split across writes; and an idle one is still closed at clientIdle.
    let _serial = serial();
    let dir = ScratchDir::new("lb-tls-park");
    let b = backend();
    let (_lb, admin, port) = start_web(
        &dir,
        &b,
        "timeouts = { clientIdle = \"1s\", headerRead = \"5s\" }",
    );
    let (mut conn, mut sock) = completed(port);
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n\r\n");

    // One request, then another after a pause (parked in between).
    tls.write_all(get("/first").as_bytes()).expect("write");
    let (status, body) = response(&mut tls);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("GET /first"), "{body}");
    thread::sleep(Duration::from_millis(300));
    tls.write_all(get("/after-a-pause").as_bytes())
        .expect("write");
    let (status, body) = response(&mut tls);
    assert_eq!(
        (status, body.contains("GET /after-a-pause")),
        (200, true),
        "{body}"
    );

    // Two pipelined in one write: both answered, in order.
    tls.write_all(format!("{}{}", get("/one"), get("/two")).as_bytes())
        .expect("write");
    let (first, second) = (response(&mut tls), response(&mut tls));
    assert!(
        first.1.contains("GET /one") && second.1.contains("GET /two"),
        "{first:?} {second:?}"
    );

    // A body, sent after its head in a second write.
    tls.write_all(b"POST /upload HTTP/1.1\r\nHost: lb.test\r\ncontent-length: 5\r\n\r\n")
        .expect("write");
    thread::sleep(Duration::from_millis(100));
    tls.write_all(b"hello").expect("write");
    let (status, body) = response(&mut tls);
    assert_eq!((status, body.trim()), (200, "received 5"));

    // A head split across writes, with a pause in the middle.
    tls.write_all(b"GET /split HTTP/1.1\r\nHo").expect("write");
    thread::sleep(Duration::from_millis(300));
    tls.write_all(b"st: lb.test\r\n\r\n").expect("write");
    let (status, body) = response(&mut tls);
    assert_eq!((status, body.contains("GET /split")), (200, true), "{body}");
    assert_eq!(b.requests(), 6, "every request reached the backend once");

    // Idle past clientIdle: closed (close_notify, then EOF), and counted.
    let idle = Instant::now();
    let mut rest = Vec::new();
    let ended = tls.read_to_end(&mut rest);
    assert!(
        ended.is_ok() && rest.is_empty(),
        "a clean close with nothing more: {ended:?} {rest:?}"
    );
    assert!(
        idle.elapsed() >= Duration::from_millis(900) && idle.elapsed() < Duration::from_secs(4),
        "closed after {:?} (clientIdle 1s)",
        idle.elapsed()
    );
    let web = frontend_in(&lb_tests::client::status(admin).expect("status"), "web");
    assert_eq!(web["timeouts"]["clientIdle"].as_u64(), Some(1), "{web}");
    assert_eq!(web["responses"]["2xx"].as_u64(), Some(6), "{web}");
}
