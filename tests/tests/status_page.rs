//! The operator's status page (`GET /` on the admin listener) as a browser
//! shows it, with a real `lb` (no XDP, no privileges) on loopback in front of
//! real backends.
//!
//! It proves: the page is one self-contained HTML document (no external
//! asset) served as `text/html; charset=utf-8`; after traffic with refusals
//! has stopped, headless Chromium renders it and every number it shows
//! under a `data-metric` equals what `/api/status` (and, for the pools'
//! profile limits, `/api/profiles`) says: per frontend its counters, its
//! `maxConn` and refusals per `level/axis`; per pool its `maxConn`, queue,
//! limits, refusals and backends up or down; per worker its TLS handshakes
//! and gate refusals; and, the page having refreshed on its own, every rate
//! it derives is 0 once nothing moves. A second run saves a screenshot at
//! `target/status-page.png` for people to look at.
//!
//! Chromium comes from the Debian package `chromium` (`cargo xtask setup`).

use std::{
    collections::BTreeMap,
    io::Read as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use lb_tests::{
    backend::HttpBackend,
    client::{curl, dead_addr, free_addr, status, Reply},
    lb::{lb_cmd, Lb},
    unique_tag, ScratchDir,
};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The longest one Chromium run may take before it is killed.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(90);

/// Runs headless Chromium on `url` with a fresh profile directory and
/// `extra` flags; returns what it printed on stdout. A run past
/// [`CHROMIUM_DEADLINE`] is killed (its process group) and fails the test.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = ScratchDir::new("lb-chromium");
    let stderr_path = profile.join("stderr.txt");
    let user_data = profile.join("profile");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", user_data.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("chromium stderr file"))
        // Its own process group: its helpers (zygote, renderer) go with it.
        .process_group(0)
        .spawn()
        .expect("starting chromium");
    let pid = i32::try_from(child.id()).expect("pid");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    let deadline = Instant::now() + CHROMIUM_DEADLINE;
    let exit = loop {
        if let Some(s) = child.try_wait().expect("waiting for chromium") {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever is left of the group (helpers outliving the browser, or
    // all of it on a timeout).
    // SAFETY: signalling the process group of our own child.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let _ = child.wait();
    let out = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let Some(exit) = exit else {
        panic!(
            "chromium did not finish within {CHROMIUM_DEADLINE:?} on {url}; killed. stderr:\n{err}"
        );
    };
    assert!(exit.success(), "chromium {exit} on {url}; stderr:\n{err}");
    out
}

/// Undoes the HTML escaping of Chromium's serialisation.
fn unescape(s: &str) -> String {
    s.replace("&nbsp;", "\u{a0}")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// A dumped DOM without its `<script>` (whose source names `data-metric`).
fn without_script(dom: &str) -> String {
    let mut out = String::new();
    let mut rest = dom;
    while let Some(i) = rest.find("<script") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("</script>").expect("script ends");
        rest = &rest[i + end + "</script>".len()..];
    }
    out.push_str(rest);
    out
}

/// Every `data-metric="KEY"` element of a dumped DOM and its text. The page
/// puts nothing but the value inside such an element; a key shown twice
/// must show the same value.
fn metrics(dom: &str) -> BTreeMap<String, String> {
    const ATTR: &str = "data-metric=\"";
    let mut out = BTreeMap::new();
    let dom = without_script(dom);
    let mut rest = dom.as_str();
    while let Some(i) = rest.find(ATTR) {
        rest = &rest[i + ATTR.len()..];
        let end = rest.find('"').expect("attribute ends");
        let key = unescape(&rest[..end]);
        rest = &rest[end..];
        let text_start = rest.find('>').expect("tag ends") + 1;
        rest = &rest[text_start..];
        let text_end = rest.find('<').expect("text ends");
        let text = unescape(rest[..text_end].trim());
        rest = &rest[text_end..];
        if let Some(old) = out.insert(key.clone(), text.clone()) {
            assert_eq!(old, text, "{key} shown twice with two values");
        }
    }
    out
}

/// A number as the page shows it: `1,234`, or `off` for a 0 limit.
fn shown(metrics: &BTreeMap<String, String>, key: &str) -> u64 {
    let text = metrics
        .get(key)
        .unwrap_or_else(|| panic!("the page shows no {key}"));
    if text == "off" {
        return 0;
    }
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("{key} is `{text}`, not a number"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Checks the page shows `want` under `key`.
fn check(m: &BTreeMap<String, String>, key: &str, want: u64) {
    assert_eq!(shown(m, key), want, "{key}: the page and the API differ");
}

/// `/api/status` once nothing moves: no connection open, no waiter, and
/// two reads 300 ms apart equal (bounded: 10 s).
fn settled_status(admin: std::net::SocketAddr) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut prev = status(admin).expect("status");
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let s = status(admin).expect("status");
        let idle = s["frontends"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|f| n(&f["active"]) == 0)
            && s["pools"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|p| n(&p["conns"]["active"]) == 0 && n(&p["conns"]["queued"]) == 0);
        if idle && s == prev {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the counters did not settle within 10 s:\n{s:#}"
        );
        prev = s;
    }
}

/// `lb cert gen --name lb.test --dir DIR`.
fn cert_gen(dir: &ScratchDir) -> (PathBuf, PathBuf) {
    let d = dir.join("");
    let (code, out, err) = lb_cmd(&[
        "cert",
        "gen",
        "--name",
        "lb.test",
        "--dir",
        &d.to_string_lossy(),
    ])
    .expect("lb");
    assert_eq!(code, 0, "lb cert gen: {out}{err}");
    (dir.join("lb.test.pem"), dir.join("lb.test.key"))
}

/// Where the screenshot goes: the workspace's `target/`.
fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png")
}

#[test]
fn the_status_page_shows_what_api_status_says() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "no {CHROMIUM}: this test loads the page in headless Chromium; \
         run `cargo xtask setup` (it installs the Debian package chromium)"
    );
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let dir = ScratchDir::new("lb-page");
    let (cert, key) = cert_gen(&dir);
    let (web, secure, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    // `web` (HTTP) uses pool `api`: 2 new sessions a second, and a second
    // backend where nothing listens, found down by the first health check
    // (the next one is an hour away, so nothing moves while the page is
    // read). `secure` (TLS) uses pool `tight`: 1 request in flight, no
    // queue.
    let config = format!(
        r#"[global]
instance = "page{tag}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
[[frontend]]
name = "web"
listen = "{web}"
pool = "api"
[frontend.limits]
maxConn = 100
[[frontend]]
name = "secure"
listen = "{secure}"
pool = "tight"
tls = {{ cert = "{cert}", key = "{key}" }}
[[pool]]
name = "api"
profile = "small"
backends = ["{backend}", "{dead}"]
health = {{ kind = "tcp", interval = "1h", timeout = "1s", fall = 1 }}
[[pool]]
name = "tight"
profile = "one"
backends = ["{backend}"]
[profile.small]
maxSessRate = 2
maxRetries = 1
[profile.one]
maxConn = 1
maxSslRate = 500
"#,
        tag = unique_tag(),
        backend = b.addr,
        dead = dead_addr(),
        cert = cert.display(),
        key = key.display(),
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");

    // The page itself: one HTML file, nothing fetched from elsewhere.
    let page = curl(&format!("http://{admin}/"), &[]).expect("curl");
    assert_eq!(page.status, 200, "GET /: {page:?}");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{:?}",
        page.headers
    );
    assert!(page.body.contains("data-metric"), "{}", page.body);
    for external in ["src=\"http", "href=\"http", "url(http", "@import", "<link"] {
        assert!(
            !page.body.contains(external),
            "the page must not load `{external}...`"
        );
    }

    // The dead backend goes down at the first check.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(admin).expect("status")["pools"][0]["backends"][1]["up"] != false {
        assert!(Instant::now() < deadline, "the dead backend stays up");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Traffic: new sessions over 2/s on `web`, concurrent TLS requests
    // over `maxConn = 1` on `secure`.
    let replies: Vec<Reply> = (0..12)
        .map(|_| curl(&format!("http://{web}/"), &[]).expect("curl"))
        .collect();
    assert!(
        replies.iter().all(|r| r.status == 200 || r.status == 503),
        "{replies:?}"
    );
    assert!(replies.iter().any(|r| r.status == 503), "{replies:?}");
    let resolve = format!("lb.test:{}:127.0.0.1", secure.port());
    let url = format!("https://lb.test:{}/slow?ms=400", secure.port());
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (resolve, url) = (resolve.clone(), url.clone());
            std::thread::spawn(move || curl(&url, &["-k", "--resolve", &resolve]).expect("curl"))
        })
        .collect();
    for c in clients {
        let r = c.join().expect("client");
        assert!(r.status == 200 || r.status == 503, "{r:?}");
    }

    // Traffic stopped: what the API says now is what the page must show.
    let want = settled_status(admin);
    let profiles: Value = serde_json::from_str(
        &curl(&format!("http://{admin}/api/profiles"), &[])
            .expect("curl")
            .body,
    )
    .expect("profiles JSON");
    let dom = chromium(&format!("http://{admin}/"), &["--dump-dom"]);
    let m = metrics(&dom);
    assert!(!m.is_empty(), "no data-metric in the rendered page:\n{dom}");
    eprintln!("the page shows {} numbers", m.len());
    assert_eq!(
        m.get("page.state").map(String::as_str),
        Some("ok"),
        "the page read api/status"
    );
    assert_eq!(
        m.get("accounting").map(String::as_str),
        want["accounting"].as_str()
    );
    for k in ["active", "limit", "queued"] {
        check(&m, &format!("global.maxConn.{k}"), n(&want["global"][k]));
    }

    let frontends = want["frontends"].as_array().expect("frontends");
    let mut refused_total = 0;
    for f in frontends {
        let p = format!("frontend.{}.", f["name"].as_str().expect("name"));
        for k in [
            "requests",
            "accepted",
            "active",
            "retries",
            "noBackend",
            "backendFailed",
            "paced",
        ] {
            check(&m, &format!("{p}{k}"), n(&f[k]));
        }
        if f["mode"] == "http" {
            for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
                check(
                    &m,
                    &format!("{p}responses.{class}"),
                    n(&f["responses"][class]),
                );
            }
        }
        for k in ["clientIdle", "headerRead", "connect", "server"] {
            check(&m, &format!("{p}timeouts.{k}"), n(&f["timeouts"][k]));
        }
        check(&m, &format!("{p}maxConn.active"), n(&f["conns"]["active"]));
        check(&m, &format!("{p}maxConn.limit"), n(&f["conns"]["limit"]));
        // Every refusal the API counts, and 0 for every other level/axis
        // the page shows.
        let refused = f["refused"].as_object().expect("refused");
        for (k, v) in refused {
            check(&m, &format!("{p}refused.{k}"), n(v));
            refused_total += n(v);
        }
        let prefix = format!("{p}refused.");
        let shown_axes = m.keys().filter(|k| k.starts_with(&prefix)).count();
        assert!(shown_axes >= 24, "{p}: 8 axes x 3 levels, got {shown_axes}");
        for k in m.keys().filter(|k| k.starts_with(&prefix)) {
            if !refused.contains_key(&k[prefix.len()..]) {
                check(&m, k, 0);
            }
        }
        if f.get("tlsTickets").is_some() {
            for k in [
                "full",
                "resumedTls12",
                "resumedTls13",
                "resumptionMisses",
                "failed",
                "timeouts",
                "gateRefused",
                "ratePaused",
            ] {
                check(&m, &format!("{p}tls.{k}"), n(&f["tls"][k]));
            }
        }
    }
    assert!(refused_total > 0, "the traffic made refusals: {want:#}");

    for pool in want["pools"].as_array().expect("pools") {
        let name = pool["name"].as_str().expect("name");
        let p = format!("pool.{name}.");
        check(
            &m,
            &format!("{p}maxConn.active"),
            n(&pool["conns"]["active"]),
        );
        check(&m, &format!("{p}maxConn.limit"), n(&pool["conns"]["limit"]));
        check(&m, &format!("{p}queued"), n(&pool["conns"]["queued"]));
        let backends = pool["backends"].as_array().expect("backends");
        let up = backends.iter().filter(|b| b["up"] == true).count() as u64;
        check(&m, &format!("{p}backends.up"), up);
        check(&m, &format!("{p}backends.down"), backends.len() as u64 - up);
        for b in backends {
            let q = format!("{p}backend.{}.", b["address"].as_str().expect("address"));
            let state = if b["up"] == true { "up" } else { "down" };
            assert_eq!(m.get(&format!("{q}up")).map(String::as_str), Some(state));
            for k in [
                "weight",
                "active",
                "sent",
                "connects",
                "connectErrors",
                "checkFailures",
            ] {
                check(&m, &format!("{q}{k}"), n(&b[k]));
            }
        }
        // Pool-level refusals, summed over the pool's frontends.
        let ours: Vec<&Value> = frontends.iter().filter(|f| f["pool"] == name).collect();
        let prefix = format!("{p}refused.");
        for k in m.keys().filter(|k| k.starts_with(&prefix)) {
            let axis = &k[prefix.len()..];
            let sum = ours
                .iter()
                .map(|f| n(&f["refused"][format!("pool/{axis}")]))
                .sum();
            check(&m, k, sum);
        }
        // The profile's limits (maxConn is the API's, checked above).
        let profile = profiles
            .as_object()
            .expect("profiles")
            .values()
            .find(|v| {
                v["pools"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == name))
            })
            .unwrap_or_else(|| panic!("pool {name} has a profile: {profiles:#}"));
        for axis in [
            "maxRetries",
            "rateLimitSessions",
            "maxConnRate",
            "maxSessRate",
            "maxSslConn",
            "maxSslRate",
        ] {
            check(&m, &format!("{p}{axis}.limit"), n(&profile[axis]));
        }
        check(
            &m,
            &format!("{p}maxBufferSize.limit"),
            n(&profile["maxBufferSize"]) / 1024,
        );
    }

    let workers = want["workers"].as_array().expect("workers");
    check(&m, "workers", workers.len() as u64);
    let mut full = 0;
    for w in workers {
        let p = format!("worker.{}.", w["index"]);
        let t = &w["tls"];
        check(&m, &format!("{p}accepted"), n(&w["accepted"]));
        check(
            &m,
            &format!("{p}tls.resumed"),
            n(&t["resumedTls12"]) + n(&t["resumedTls13"]),
        );
        for k in [
            "full",
            "resumptionMisses",
            "failed",
            "timeouts",
            "gateRefused",
            "ratePaused",
        ] {
            check(&m, &format!("{p}tls.{k}"), n(&t[k]));
        }
        full += n(&t["full"]);
    }
    assert!(full > 0, "the TLS requests made full handshakes: {want:#}");
    check(&m, "workers.tls.full", full);

    // The page refreshed on its own: with nothing moving, every rate it
    // derives from two reads is 0 (before a second read it shows `…`).
    let rates: Vec<(&String, &String)> = m.iter().filter(|(k, _)| k.contains(".rate.")).collect();
    assert!(!rates.is_empty(), "the page shows rates");
    for (k, v) in rates {
        assert_eq!(v, "0", "{k}: nothing moves, yet the page shows {v}");
    }
    assert!(
        dom.contains("<svg class=\"spark\""),
        "the page draws its charts"
    );

    // A screenshot for people to look at.
    let png = screenshot_path();
    let _ = std::fs::remove_file(&png);
    chromium(
        &format!("http://{admin}/"),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1366,900",
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let dim = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!((dim(16), dim(20)), (1366, 900), "the window size");
    assert!(
        bytes.len() > 20_000,
        "a {} byte screenshot is too small to show the page",
        bytes.len()
    );
    eprintln!(
        "screenshot: {}",
        png.canonicalize().unwrap_or_else(|_| png.clone()).display()
    );

    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}
