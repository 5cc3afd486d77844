//! The admin API's security and its command line, against a real `lb`
//! (no XDP, no privileges needed beyond writing its run directory):
//! - a config binding the admin API to a non-loopback address without a
//!   token is refused by `lb check`, naming the key and what is allowed;
//! - with no token in the config, `lb run` makes one (mode 0600) that a
//!   change must carry, and removes it when it stops;
//! - `lb profile show` and `lb profile set` read and change a profile live
//!   through the API, with the instance's token found on their own, and
//!   say clearly what is wrong with a bad assignment, profile or token;
//! - `lb top` shows the requests, refusals and pools the API counts;
//! - `--log-format json` writes one JSON object per log line.

use std::{net::SocketAddr, os::unix::fs::PermissionsExt as _, path::PathBuf, time::Duration};

use lb_tests::{
    backend::HttpBackend,
    client::{curl, free_addr},
    lb::{cert_gen, lb_cmd, Lb},
    unique_tag, ScratchDir,
};

/// Where `lb` keeps an instance's run files (as `lb::instance` does).
fn run_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    match unsafe { libc::geteuid() } {
        0 => PathBuf::from("/run/lb"),
        uid => std::env::temp_dir().join(format!("lb-{uid}")),
    }
}

fn config(instance: &str, admin: SocketAddr, listen: SocketAddr, backend: SocketAddr) -> String {
    format!(
        r#"[global]
instance = "{instance}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[profile.web]
maxConn = 100
maxSessRate = 0
[[frontend]]
name = "site"
listen = "{listen}"
pool = "api"
[[pool]]
name = "api"
profile = "web"
backends = ["{backend}"]
"#
    )
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token_and_tls() {
    let dir = ScratchDir::new("lb-admin");
    let path = dir.join("open.toml");
    let open = config(
        "adm",
        "0.0.0.0:9100".parse().expect("addr"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    std::fs::write(&path, &open).expect("write");
    let (code, _, err) = lb_cmd(&["check", "-c", &path.to_string_lossy()]).expect("lb check");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("admin.listen")
            && err.contains("not a loopback address")
            && err.contains("neither a token nor TLS")
            && err.contains("admin.tls"),
        "{err}"
    );
    let with_token = open.replace("[admin]\n", "[admin]\ntoken = \"s3cret\"\n");
    std::fs::write(&path, &with_token).expect("write");
    let (code, _, err) = lb_cmd(&["check", "-c", &path.to_string_lossy()]).expect("lb check");
    assert_eq!(code, 2, "a token alone travels in the clear: {err}");
    assert!(err.contains("no TLS is set"), "{err}");
    let with_tls = with_token.replace(
        "[admin]\n",
        "[admin]\ntls = { cert = \"a.pem\", key = \"a.key\" }\n",
    );
    std::fs::write(&path, with_tls).expect("write");
    let (code, out, err) = lb_cmd(&["check", "-c", &path.to_string_lossy()]).expect("lb check");
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn profiles_are_shown_and_changed_from_the_command_line_with_the_instances_token() {
    let dir = ScratchDir::new("lb-admin");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let instance = format!("adm{}", unique_tag());
    let (admin, listen) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let mut lb = Lb::start_with(
        None,
        &dir.join("lb.toml"),
        &config(&instance, admin, listen, b.addr),
        &["--log-format", "json"],
    )
    .expect("lb starts");

    // The token lb made: private, and needed for a change.
    let token_file = run_dir().join(format!("{instance}.admin.token"));
    let mode = std::fs::metadata(&token_file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", token_file.display());
    let put = curl(
        &format!("http://{admin}/api/profiles/web"),
        &["-X", "PUT", "--data", r#"{"maxConn": 1}"#],
    )
    .expect("curl");
    assert_eq!(put.status, 401, "a change without the token: {put:?}");

    let at = ["--admin", &admin.to_string(), "--instance", &instance];
    let lb_at = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&at);
        lb_cmd(&all).expect("lb")
    };
    let (code, out, err) = lb_at(&["profile", "show"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("profile web (pools: api)"), "{out}");
    assert!(out.contains("maxConn") && out.contains("100"), "{out}");
    assert!(
        out.contains("maxSessRate") && out.contains("0 (off)"),
        "{out}"
    );

    let (code, out, err) = lb_at(&["profile", "set", "web", "maxConn=7", "maxSessRate=40"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("maxConn") && out.contains(" 7\n"), "{out}");
    let (_, shown, _) = lb_at(&["profile", "show", "web"]);
    assert!(shown.contains(" 7\n") && shown.contains(" 40\n"), "{shown}");
    let put_log = lb.log();
    assert!(
        put_log.contains("PUT /api/profiles/web") && put_log.contains("limits applied"),
        "the change is logged: {put_log}"
    );

    // What is wrong is said, and nothing changes.
    for (args, says) in [
        (
            &["profile", "set", "web", "maxConn"][..],
            "allowed: axis=value",
        ),
        (
            &["profile", "set", "nope", "maxConn=1"][..],
            "no profile named `nope`; allowed: web",
        ),
        (&["profile", "set", "web", "maxConn=-1"][..], "maxConn"),
        (&["profile", "set", "web", "maxConns=5"][..], "maxConns"),
    ] {
        let (code, _, err) = lb_at(args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, _, err) = lb_at(&["profile", "set", "web", "maxConn=9", "--token", "wrong"]);
    assert_ne!(code, 0);
    assert!(err.contains("401"), "{err}");
    let (_, shown, _) = lb_at(&["profile", "show", "web"]);
    assert!(shown.contains(" 7\n"), "unchanged: {shown}");

    // lb top: the requests and the pool as the API counts them (no
    // session rate in the way).
    let (code, _, err) = lb_at(&["profile", "set", "web", "maxSessRate=0"]);
    assert_eq!(code, 0, "{err}");
    for _ in 0..3 {
        let r = curl(&format!("http://{listen}/"), &[]).expect("curl");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let (code, out, err) = lb_at(&["top", "--count", "2"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("site") && out.contains("api"), "{out}");
    let site = out
        .lines()
        .find(|l| l.starts_with("site"))
        .unwrap_or_default();
    assert_eq!(
        site.split_whitespace().nth(1),
        Some("3"),
        "3 requests: {out}"
    );
    assert!(out.contains("0/7"), "the pool's maxConn in force: {out}");

    // JSON logs: every line one object.
    let log = lb.log();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!token_file.exists(), "the token goes with the instance");
}

#[test]
fn the_admin_api_speaks_tls_when_configured() {
    let dir = ScratchDir::new("lb-admin-tls");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let (cert, key) = cert_gen(&dir, "admin.test");
    let instance = format!("admt{}", unique_tag());
    let (admin, listen) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let config = config(&instance, admin, listen, b.addr).replace(
        "[admin]\n",
        &format!(
            "[admin]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.display(),
            key.display()
        ),
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    let url = format!("https://admin.test:{}/api/status", admin.port());
    let resolve = format!("admin.test:{}:127.0.0.1", admin.port());
    let r = curl(
        &url,
        &["--cacert", &cert.to_string_lossy(), "--resolve", &resolve],
    )
    .expect("curl");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(&instance), "{}", r.body);
    let plain = curl(&format!("http://{admin}/api/status"), &["--max-time", "3"]).expect("curl");
    assert_ne!(
        plain.status, 200,
        "no plain HTTP on a TLS admin listener: {plain:?}"
    );
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}
