//! Live changes to the limits of a running `lb`, through the admin API
//! (`GET /api/profiles`, `PUT /api/profiles/NAME`) and SIGHUP: a profile
//! changed under load reaches every pool bound to it without one failed
//! request; a bad change (unknown profile, value out of range, unknown key,
//! no token) is refused with the reason and nothing changes; a changed
//! `maxConn` takes effect at once (a raised limit admits a refused request
//! and lets a queued waiter in); and SIGHUP applies a valid file (a pool
//! switched to another profile) but refuses an invalid one or one that
//! changes more than limits, keeping the limits in force. The tests run one
//! at a time: the load test would otherwise skew the timing of the others.

use std::{
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    backend::HttpBackend,
    client::{curl, free_addr, status, Reply},
    lb::Lb,
    unique_tag, ScratchDir,
};
use serde_json::Value;

/// Serializes the tests of this file (see the module comment).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The admin token of this file's configs.
const TOKEN: &str = "lb-live-token";

/// `PUT /api/profiles/NAME` with a JSON body and the admin token.
fn put_auth(admin: SocketAddr, name: &str, json: &str) -> Reply {
    put(
        admin,
        name,
        json,
        &["-H", &format!("Authorization: Bearer {TOKEN}")],
    )
}

/// `PUT /api/profiles/NAME` with a JSON body, plus `extra` curl arguments.
fn put(admin: SocketAddr, name: &str, json: &str, extra: &[&str]) -> Reply {
    let mut args = vec![
        "-X",
        "PUT",
        "--data",
        json,
        "-H",
        "Content-Type: application/json",
    ];
    args.extend_from_slice(extra);
    curl(&format!("http://{admin}/api/profiles/{name}"), &args).expect("curl PUT")
}

/// `GET /api/profiles`, parsed.
fn profiles(admin: SocketAddr) -> Value {
    let r = curl(&format!("http://{admin}/api/profiles"), &[]).expect("curl");
    assert_eq!(r.status, 200, "GET /api/profiles: {r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

/// The `error` of a JSON error answer.
fn error_of(r: &Reply) -> String {
    let v: Value =
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no `error` string: {r:?}"))
        .to_owned()
}

/// The pool called `name` in an `/api/status` answer.
fn pool_in(status: &Value, name: &str) -> Value {
    status["pools"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no pool {name} in {status:#}"))
}

/// `conns.{field}` of pool `name` now.
fn pool_conns(admin: SocketAddr, name: &str, field: &str) -> u64 {
    pool_in(&status(admin).expect("status"), name)["conns"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("pool {name}: no conns.{field}"))
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

/// What wrk reported.
#[derive(Debug)]
struct Wrk {
    requests: u64,
    non_2xx: u64,
    socket_errors: String,
    text: String,
}

/// `wrk -t2 -c16 -dSECSs --latency URL` (killed after 30 s at most).
fn wrk(url: &str, secs: u64) -> Wrk {
    let out = Command::new("timeout")
        .args([
            "30",
            "wrk",
            "-t2",
            "-c16",
            &format!("-d{secs}s"),
            "--latency",
        ])
        .arg(url)
        .output()
        .expect("starting wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no total ({}):\n{text}", out.status));
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(0, |n| n.trim().parse().expect("a count"));
    let socket_errors = text
        .lines()
        .find(|l| l.trim().starts_with("Socket errors:"))
        .unwrap_or("")
        .trim()
        .to_owned();
    Wrk {
        requests,
        non_2xx,
        socket_errors,
        text,
    }
}

#[test]
fn a_profile_changed_under_load_reaches_every_bound_pool_with_no_failed_request() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-live");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let (fa, fb, fc, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    // maxSessRate = 0: wrk sends no session cookie, so every request would
    // start a session; this test is about maxConn and the buffers.
    let config = format!(
        r#"[global]
instance = "live{tag}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
token = "{TOKEN}"
[[frontend]]
name = "fa"
listen = "{fa}"
pool = "a"
[[frontend]]
name = "fb"
listen = "{fb}"
pool = "b"
[[frontend]]
name = "fc"
listen = "{fc}"
pool = "c"
[[pool]]
name = "a"
profile = "shared"
backends = ["{backend}"]
[[pool]]
name = "b"
profile = "shared"
backends = ["{backend}"]
[[pool]]
name = "c"
profile = "other"
backends = ["{backend}"]
[profile.shared]
maxConn = 20000
maxSessRate = 0
[profile.other]
maxConn = 333
maxSessRate = 0
"#,
        backend = b.addr,
        tag = unique_tag()
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    let before = profiles(admin);
    assert_eq!(before["shared"]["maxConn"], 20000, "{before:#}");
    assert_eq!(before["shared"]["pools"], serde_json::json!(["a", "b"]));
    for p in ["a", "b"] {
        assert_eq!(pool_conns(admin, p, "limit"), 20000);
    }

    let loads: Vec<_> = [fa, fb]
        .into_iter()
        .map(|f| thread::spawn(move || wrk(&format!("http://{f}/"), 6)))
        .collect();
    let changes = [
        (
            r#"{"maxConn": 500, "maxBufferSize": "64KB", "maxSessRate": 0}"#,
            500,
        ),
        (
            r#"{"maxConn": 1000, "maxBufferSize": "32KB", "maxSessRate": 0}"#,
            1000,
        ),
        (
            r#"{"maxConn": 1000, "maxBufferSize": "16KB", "maxRetries": 1, "maxSessRate": 0}"#,
            1000,
        ),
    ];
    let started = Instant::now();
    for (i, (json, max_conn)) in changes.iter().enumerate() {
        // Changes at 1, 2.5 and 4 s of the 6 s run.
        let at = Duration::from_millis(1000 + 1500 * i as u64);
        thread::sleep(at.saturating_sub(started.elapsed()));
        let r = put_auth(admin, "shared", json);
        assert_eq!(r.status, 200, "PUT {json}: {r:?}");
        let v: Value = serde_json::from_str(&r.body).expect("JSON");
        assert_eq!(v["applied"], "shared", "{v:#}");
        assert_eq!(v["profile"]["maxConn"], *max_conn, "{v:#}");
        // Applied at once, to both pools, while the load runs.
        let s = status(admin).expect("status");
        for p in ["a", "b"] {
            assert_eq!(pool_in(&s, p)["conns"]["limit"], *max_conn, "{s:#}");
        }
        assert!(
            loads.iter().all(|l| !l.is_finished()),
            "wrk ended before change {i}: the change was not made under load"
        );
    }
    for (load, f) in loads.into_iter().zip(["fa", "fb"]) {
        let w = load.join().expect("wrk thread");
        eprintln!("{f}: {} requests", w.requests);
        assert_eq!(w.non_2xx, 0, "{f}: non-2xx responses:\n{}", w.text);
        assert!(
            w.socket_errors.is_empty(),
            "{f}: {}:\n{}",
            w.socket_errors,
            w.text
        );
        assert!(w.requests >= 1000, "{f}: too few requests:\n{}", w.text);
    }

    let s = status(admin).expect("status");
    for p in ["a", "b"] {
        let pool = pool_in(&s, p);
        assert_eq!(pool["conns"]["limit"], 1000, "{pool:#}");
        assert_eq!(pool["conns"]["active"], 0, "{pool:#}");
    }
    assert_eq!(pool_in(&s, "c")["conns"]["limit"], 333, "{s:#}");
    let after = profiles(admin);
    let shared = &after["shared"];
    assert_eq!(shared["maxConn"], 1000, "{after:#}");
    assert_eq!(shared["maxRetries"], 1, "{after:#}");
    assert_eq!(shared["maxBufferSize"], 16 * 1024, "{after:#}");
    assert_eq!(shared["maxSessRate"], 0, "{after:#}");
    assert_eq!(shared["pools"], serde_json::json!(["a", "b"]), "{after:#}");
    assert_eq!(after["other"], before["other"], "the other profile stays");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

/// A config with profiles `a` (pool `pa`) and `b` (pool `pb`), and `token`
/// in `[admin]` when given.
fn two_profiles(admin: SocketAddr, backend: SocketAddr, token: Option<&str>) -> String {
    let (fa, fb) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let token = format!("token = \"{}\"\n", token.unwrap_or(TOKEN));
    format!(
        r#"[global]
instance = "live{tag}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
{token}[[frontend]]
name = "fa"
listen = "{fa}"
pool = "pa"
[[frontend]]
name = "fb"
listen = "{fb}"
pool = "pb"
[[pool]]
name = "pa"
profile = "a"
backends = ["{backend}"]
[[pool]]
name = "pb"
profile = "b"
backends = ["{backend}"]
[profile.a]
maxConn = 100
maxBufferSize = "32KB"
[profile.b]
maxConn = 200
"#,
        tag = unique_tag()
    )
}

#[test]
fn a_bad_change_is_refused_with_the_reason_and_nothing_changes() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-live");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let admin = free_addr("127.0.0.1");
    let mut lb = Lb::start(
        None,
        &dir.join("lb.toml"),
        &two_profiles(admin, b.addr, None),
    )
    .expect("lb starts");
    let before = profiles(admin);
    assert_eq!(before["a"]["maxConn"], 100, "{before:#}");
    let unchanged = |what: &str| {
        assert_eq!(profiles(admin), before, "after {what}: profiles changed");
        assert_eq!(pool_conns(admin, "pa", "limit"), 100, "after {what}");
        assert_eq!(pool_conns(admin, "pb", "limit"), 200, "after {what}");
    };

    let r = put_auth(admin, "nope", r#"{"maxConn": 5}"#);
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(error_of(&r), "no profile `nope`; profiles: a, b", "{r:?}");
    unchanged("an unknown profile");

    let r = put_auth(admin, "a", r#"{"maxConn": 2000000}"#);
    assert_eq!(r.status, 400, "{r:?}");
    let e = error_of(&r);
    assert!(e.contains("2000000") && e.contains("0..=1000000"), "{e}");
    unchanged("maxConn out of range");

    let r = put_auth(admin, "a", r#"{"maxConn": 5, "maxBufferSize": "1KB"}"#);
    assert_eq!(r.status, 400, "{r:?}");
    let e = error_of(&r);
    assert!(e.contains("16KB..=256KB"), "{e}");
    unchanged("maxBufferSize out of range");

    let r = put_auth(admin, "a", r#"{"maxConn": 5, "maxConns": 6}"#);
    assert_eq!(r.status, 400, "{r:?}");
    let e = error_of(&r);
    assert!(e.contains("maxConns"), "names the unknown key: {e}");
    unchanged("an unknown key");

    let r = put_auth(admin, "a", r#"{"maxConn": "#);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(error_of(&r).contains("profile `a`"), "{r:?}");
    unchanged("truncated JSON");

    for (method, path) in [
        ("POST", "/api/profiles"),
        ("DELETE", "/api/profiles"),
        ("DELETE", "/api/profiles/a"),
    ] {
        let r = curl(&format!("http://{admin}{path}"), &["-X", method]).expect("curl");
        assert_eq!(r.status, 405, "{method} {path}: {r:?}");
        assert!(error_of(&r).contains("PUT /api/profiles/NAME"), "{r:?}");
    }
    unchanged("wrong methods");

    // The control: a good change does change it.
    let r = put_auth(admin, "a", r#"{"maxConn": 5}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(pool_conns(admin, "pa", "limit"), 5);
    let now = profiles(admin);
    assert_eq!(now["a"]["maxConn"], 5, "{now:#}");
    assert_eq!(now["a"]["maxBufferSize"], 128 * 1024, "absent: default");
    assert_eq!(now["b"], before["b"], "{now:#}");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));

    // With a token, a change without it (or with another) is refused.
    let admin = free_addr("127.0.0.1");
    let mut lb = Lb::start(
        None,
        &dir.join("token.toml"),
        &two_profiles(admin, b.addr, Some("s3cret")),
    )
    .expect("lb starts");
    let before = profiles(admin);
    for extra in [
        &[][..],
        &["-H", "Authorization: Bearer wrong"][..],
        &["-H", "Authorization: s3cret"][..],
    ] {
        let r = put(admin, "a", r#"{"maxConn": 5}"#, extra);
        assert_eq!(r.status, 401, "{extra:?}: {r:?}");
        assert!(error_of(&r).contains("Authorization: Bearer"), "{r:?}");
        assert_eq!(profiles(admin), before, "{extra:?}: profiles changed");
        assert_eq!(pool_conns(admin, "pa", "limit"), 100, "{extra:?}");
    }
    let r = put(
        admin,
        "a",
        r#"{"maxConn": 5}"#,
        &["-H", "Authorization: Bearer s3cret"],
    );
    assert_eq!(r.status, 200, "with the token: {r:?}");
    assert_eq!(pool_conns(admin, "pa", "limit"), 5);
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn a_changed_max_conn_takes_effect_at_once_and_a_raised_one_lets_a_waiter_in() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-live");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let (f1, f2, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let config = format!(
        r#"[global]
instance = "live{tag}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
token = "{TOKEN}"
[[frontend]]
name = "f1"
listen = "{f1}"
pool = "held"
[[frontend]]
name = "f2"
listen = "{f2}"
pool = "queued"
[[pool]]
name = "held"
profile = "one"
backends = ["{backend}"]
[[pool]]
name = "queued"
profile = "oneq"
backends = ["{backend}"]
queue = {{ depth = 5, timeout = "5s" }}
[profile.one]
maxConn = 1
[profile.oneq]
maxConn = 1
"#,
        backend = b.addr,
        tag = unique_tag()
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");

    // No queue: over maxConn = 1 is a 503 until the limit is raised.
    let slow_url = format!("http://{f1}/slow?ms=2000");
    let slow = thread::spawn(move || curl(&slow_url, &["--max-time", "10"]).expect("curl"));
    assert!(
        wait_for(Duration::from_secs(3), || pool_conns(
            admin, "held", "active"
        ) == 1),
        "the slow request never took the slot"
    );
    let r = curl(&format!("http://{f1}/"), &["--max-time", "10"]).expect("curl");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("lb-limit"), Some("pool/maxConn"), "{r:?}");
    let p = put_auth(admin, "one", r#"{"maxConn": 5}"#);
    assert_eq!(p.status, 200, "{p:?}");
    assert_eq!(pool_conns(admin, "held", "limit"), 5);
    let r = curl(&format!("http://{f1}/"), &["--max-time", "10"]).expect("curl");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !slow.is_finished(),
        "the slow request ended first: the check proves nothing"
    );
    assert_eq!(slow.join().expect("slow").status, 200, "not cut");

    // Lowered under what is in flight: those finish, new ones are refused
    // until the count is under the new limit.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = format!("http://{f1}/slow?ms=1500");
            thread::spawn(move || curl(&url, &["--max-time", "10"]).expect("curl"))
        })
        .collect();
    assert!(
        wait_for(Duration::from_secs(3), || pool_conns(
            admin, "held", "active"
        ) == 2),
        "the slow requests never took their slots"
    );
    let p = put_auth(admin, "one", r#"{"maxConn": 1}"#);
    assert_eq!(p.status, 200, "{p:?}");
    let r = curl(&format!("http://{f1}/"), &["--max-time", "10"]).expect("curl");
    assert_eq!(r.status, 503, "2 in flight, limit 1: {r:?}");
    assert!(
        slow.iter().all(|s| !s.is_finished()),
        "the check proves nothing"
    );
    for s in slow {
        assert_eq!(
            s.join().expect("slow").status,
            200,
            "not cut by the lower limit"
        );
    }
    assert_eq!(pool_conns(admin, "held", "active"), 0);
    let r = curl(&format!("http://{f1}/"), &["--max-time", "10"]).expect("curl");
    assert_eq!(r.status, 200, "under the new limit again: {r:?}");

    // A queue: the waiter gets in as soon as the limit is raised, not when
    // the slow request gives its slot back (3 s).
    let slow_url = format!("http://{f2}/slow?ms=3000");
    let slow_started = Instant::now();
    let slow = thread::spawn(move || curl(&slow_url, &["--max-time", "10"]).expect("curl"));
    assert!(
        wait_for(Duration::from_secs(3), || pool_conns(
            admin, "queued", "active"
        ) == 1),
        "the slow request never took the slot"
    );
    let waiter = thread::spawn(move || {
        let t = Instant::now();
        let r = curl(&format!("http://{f2}/"), &["--max-time", "10"]).expect("curl");
        (r, t.elapsed())
    });
    assert!(
        wait_for(Duration::from_secs(2), || pool_conns(
            admin, "queued", "queued"
        ) == 1),
        "the second request is not waiting in the queue: {:#}",
        pool_in(&status(admin).expect("status"), "queued")
    );
    let p = put_auth(admin, "oneq", r#"{"maxConn": 2}"#);
    assert_eq!(p.status, 200, "{p:?}");
    let (r, took) = waiter.join().expect("waiter");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        took < Duration::from_millis(2500),
        "the waiter took {took:?}: it waited for the slow request's slot"
    );
    assert!(!slow.is_finished(), "the slow request ended first");
    assert_eq!(slow.join().expect("slow").status, 200);
    assert!(slow_started.elapsed() >= Duration::from_secs(3));
    let q = pool_in(&status(admin).expect("status"), "queued");
    assert_eq!(q["conns"]["queued"], 0, "{q:#}");
    assert_eq!(q["conns"]["active"], 0, "{q:#}");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

/// The SIGHUP test's config: pool `web` bound to `profile`, `campaign`'s
/// `maxConn` line as given, and the backends listed.
fn hup_config(
    tag: &str,
    admin: SocketAddr,
    front: SocketAddr,
    backends: &[SocketAddr],
    profile: &str,
    campaign: &str,
) -> String {
    let backends = backends
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[global]
instance = "live{tag}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
token = "{TOKEN}"
[[frontend]]
name = "web"
listen = "{front}"
pool = "web"
[[pool]]
name = "web"
profile = "{profile}"
backends = [{backends}]
[profile.normal]
maxConn = 20000
[profile.campaign]
{campaign}
"#
    )
}

fn sighup(lb: &Lb) {
    let pid = i32::try_from(lb.pid()).expect("pid");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0, "kill -HUP");
}

/// Rewrites the file, sends SIGHUP, and waits (5 s at most) for the log to
/// show one more line containing `outcome`; returns the new log lines.
fn reload(lb: &Lb, path: &Path, config: &str, outcome: &str) -> String {
    let count = |log: &str| log.matches(outcome).count();
    let before = lb.log();
    std::fs::write(path, config).expect("write config");
    sighup(lb);
    assert!(
        wait_for(Duration::from_secs(5), || count(&lb.log()) > count(&before)),
        "no new `{outcome}` within 5 s of SIGHUP:\n{}",
        lb.log()
    );
    lb.log()[before.len()..].to_owned()
}

#[test]
fn sighup_applies_a_valid_file_and_refuses_an_invalid_one_or_more_than_limits() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-live");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let (front, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let (tag, path) = (unique_tag(), dir.join("lb.toml"));
    let cfg = |backends: &[SocketAddr], profile: &str, campaign: &str| {
        hup_config(&tag, admin, front, backends, profile, campaign)
    };
    let mut lb = Lb::start(None, &path, &cfg(&[b.addr], "normal", "maxConn = 7")).expect("lb");
    assert_eq!(pool_conns(admin, "web", "limit"), 20000);
    let url = format!("http://{front}/");

    // The pool switches from `normal` to `campaign`.
    let new = reload(
        &lb,
        &path,
        &cfg(&[b.addr], "campaign", "maxConn = 7"),
        "SIGHUP: configuration reloaded",
    );
    assert!(!new.contains("reload refused"), "{new}");
    assert!(
        wait_for(Duration::from_secs(5), || pool_conns(admin, "web", "limit")
            == 7),
        "pool web's limit is {} after the reload",
        pool_conns(admin, "web", "limit")
    );
    let applied = profiles(admin);
    assert_eq!(applied["campaign"]["pools"], serde_json::json!(["web"]));
    assert_eq!(applied["normal"]["pools"], serde_json::json!([]));
    assert_eq!(curl(&url, &[]).expect("curl").status, 200);

    // Invalid files: refused with the reason; the limits stay.
    for (campaign, reason) in [
        ("maxConn = -1", "-1 is out of range"),
        ("maxConn = 9\nmaxConns = 3", "maxConns"),
    ] {
        let new = reload(
            &lb,
            &path,
            &cfg(&[b.addr], "campaign", campaign),
            "SIGHUP: reload refused",
        );
        assert!(
            new.contains(reason),
            "`{campaign}`: no `{reason}` in:\n{new}"
        );
        assert_eq!(
            profiles(admin),
            applied,
            "`{campaign}` changed the profiles"
        );
        assert_eq!(pool_conns(admin, "web", "limit"), 7, "`{campaign}`");
    }

    // More than limits (a backend added, along with a limit): refused whole.
    let other = free_addr("127.0.0.1");
    let new = reload(
        &lb,
        &path,
        &cfg(&[b.addr, other], "campaign", "maxConn = 9"),
        "SIGHUP: reload refused",
    );
    assert!(new.contains("only limits"), "{new}");
    assert_eq!(
        profiles(admin),
        applied,
        "a refused reload changed profiles"
    );
    assert_eq!(pool_conns(admin, "web", "limit"), 7);
    let s = status(admin).expect("status");
    assert_eq!(
        pool_in(&s, "web")["backends"].as_array().map(Vec::len),
        Some(1),
        "{s:#}"
    );
    for _ in 0..3 {
        assert_eq!(curl(&url, &[]).expect("curl").status, 200, "still serves");
    }
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}
