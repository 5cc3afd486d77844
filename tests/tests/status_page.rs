//! The operator's status page (`GET /` on the admin listener) as a browser
//! shows it, with a real `lb` in front of real backends.
//!
//! It proves: the page is one self-contained HTML document (no external
//! asset) served as `text/html; charset=utf-8`; after traffic with refusals
//! has stopped, headless Chromium renders it and every number it shows
//! under a `data-metric` equals what `/api/status` says: the instance, its
//! uptime and configuration generation; per frontend its counters, and for
//! each of the nine axes the limit in force, the level that sets it and the
//! value at each level, and the refusals per `level/axis`; per pool its
//! `maxConn`, queue (`queued / depth`, timeout), the pool level's value of
//! each axis, refusals and backends up or down; per worker its TLS
//! handshakes and gate refusals; and, the page having refreshed on its own,
//! every rate it derives is 0 once nothing moves. The page knows no limits
//! of its own: each one it shows is the API's.
//!
//! The first test runs `lb` on loopback without XDP (no privileges) and
//! saves a screenshot at `target/status-page.png` for people to look at.
//! The second (root: a veth between two namespaces, `lb`'s XDP attached)
//! sends SYNs over a low `sourceSynRate` and a low pool `maxConnRate`, and
//! checks the XDP card (SYNs per VIP admitted and dropped by reason, packets
//! by verdict) against `/api/status`'s `xdp`; its screenshot is
//! `target/status-page-xdp.png`.
//!
//! Chromium comes from the Debian package `chromium` (`cargo xtask setup`).

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use lb_tests::{
    backend::HttpBackend,
    client::{curl, curl_in, dead_addr, free_addr, status, Reply},
    have_root, have_tool,
    lb::{lb_cmd, Lb},
    netns::{Forward, Topology},
    unique_tag, ScratchDir,
};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The longest one Chromium run may take before it is killed.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(90);

/// The levels of every axis, as `/api/status` names them.
const LEVELS: [&str; 3] = ["global", "frontend", "pool"];

/// One test at a time: each runs Chromium twice, the XDP one floods.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

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

/// The text the page shows under `key`.
fn text<'a>(m: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    m.get(key)
        .unwrap_or_else(|| panic!("the page shows no {key}"))
}

/// A number as the page shows it: `1,234`, or `off` / `–` for a 0 limit.
fn shown(m: &BTreeMap<String, String>, key: &str) -> u64 {
    let text = text(m, key);
    if text == "off" || text == "–" {
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

/// Seconds from the page's uptime: `4s`, `5m 3s`, `2h 5m`, `3d 4h`.
fn uptime_secs(text: &str) -> u64 {
    text.split_whitespace()
        .map(|part| {
            let (value, unit) = part.split_at(part.len() - 1);
            let value: u64 = value
                .parse()
                .unwrap_or_else(|_| panic!("uptime `{text}`: `{part}`"));
            value
                * match unit {
                    "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    "d" => 86_400,
                    _ => panic!("uptime `{text}`: unit `{unit}`"),
                }
        })
        .sum()
}

/// `/api/status` without what moves on its own (uptime), for comparing
/// two reads.
fn still(s: &Value) -> Value {
    let mut s = s.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("uptimeSeconds");
    }
    s
}

/// `/api/status` once nothing moves: no connection open, no waiter, and
/// two reads 300 ms apart equal but for the uptime (bounded: 15 s).
fn settled_status(admin: SocketAddr) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
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
        if idle && still(&s) == still(&prev) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the counters did not settle within 15 s:\n{s:#}"
        );
        prev = s;
    }
}

/// The page as Chromium renders it once nothing moves: `/api/status`
/// before (what it must show), its `data-metric` numbers, the DOM, and
/// `/api/status` after. Stray packets (ARP, IPv6 neighbour discovery) may
/// move the XDP packet counters while Chromium reads: then it reads again
/// (at most 3 times).
fn page_when_still(admin: SocketAddr) -> (Value, BTreeMap<String, String>, String, Value) {
    for attempt in 1..=3 {
        let want = settled_status(admin);
        let dom = chromium(&format!("http://{admin}/"), &["--dump-dom"]);
        let after = status(admin).expect("status");
        if still(&after) == still(&want) {
            let m = metrics(&dom);
            assert!(!m.is_empty(), "no data-metric in the rendered page:\n{dom}");
            eprintln!("the page shows {} numbers", m.len());
            return (want, m, dom, after);
        }
        eprintln!("attempt {attempt}: /api/status moved while Chromium read the page");
    }
    panic!("/api/status kept moving while Chromium read the page");
}

/// The value of `axis` as the page shows it (`maxBufferSize` in KiB).
fn as_shown(axis: &str, v: u64) -> u64 {
    if axis == "maxBufferSize" {
        v / 1024
    } else {
        v
    }
}

/// Everything the page shows whatever the configuration: the header, each
/// frontend (counters, limits, refusals), each pool (maxConn, queue,
/// limits, refusals, backends), each worker, and rates of 0.
fn check_page(m: &BTreeMap<String, String>, want: &Value, after: &Value) {
    assert_eq!(
        m.get("page.state").map(String::as_str),
        Some("ok"),
        "the page read api/status"
    );
    // The header: instance, uptime, generation.
    assert_eq!(Some(text(m, "instance")), want["instance"].as_str());
    check(m, "generation", n(&want["generation"]));
    let up = uptime_secs(text(m, "uptime"));
    assert!(
        (n(&want["uptimeSeconds"])..=n(&after["uptimeSeconds"])).contains(&up),
        "uptime {up} s: not between the reads before ({}) and after ({})",
        want["uptimeSeconds"],
        after["uptimeSeconds"]
    );
    assert_eq!(
        m.get("accounting").map(String::as_str),
        want["accounting"].as_str()
    );
    for k in ["active", "limit", "queued"] {
        check(m, &format!("global.maxConn.{k}"), n(&want["global"][k]));
    }

    let frontends = want["frontends"].as_array().expect("frontends");
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
            check(m, &format!("{p}{k}"), n(&f[k]));
        }
        if f["mode"] == "http" {
            for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
                check(
                    m,
                    &format!("{p}responses.{class}"),
                    n(&f["responses"][class]),
                );
            }
        }
        for k in ["clientIdle", "headerRead", "connect", "server"] {
            check(m, &format!("{p}timeouts.{k}"), n(&f["timeouts"][k]));
        }
        check(m, &format!("{p}maxConn.active"), n(&f["conns"]["active"]));
        check_limits(m, &p, f);
        // Every refusal the API counts, beside its level's limit; none
        // the API does not count.
        let refused = f["refused"].as_object().expect("refused");
        for (k, v) in refused {
            let key = format!("{p}refused.{k}");
            if n(v) > 0 {
                check(m, &key, n(v));
            } else {
                assert!(!m.contains_key(&key), "{key}: 0 refusals shown as a badge");
            }
        }
        let prefix = format!("{p}refused.");
        for k in m.keys().filter(|k| k.starts_with(&prefix)) {
            assert!(
                refused.contains_key(&k[prefix.len()..]),
                "{k}: shown, not in api/status"
            );
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
                "abandoned",
            ] {
                check(m, &format!("{p}tls.{k}"), n(&f["tls"][k]));
            }
        }
    }

    for pool in want["pools"].as_array().expect("pools") {
        check_pool(m, pool, frontends);
    }

    let workers = want["workers"].as_array().expect("workers");
    check(m, "workers", workers.len() as u64);
    let mut full = 0;
    for w in workers {
        let p = format!("worker.{}.", w["index"]);
        let t = &w["tls"];
        check(m, &format!("{p}accepted"), n(&w["accepted"]));
        check(
            m,
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
            "abandoned",
        ] {
            check(m, &format!("{p}tls.{k}"), n(&t[k]));
        }
        full += n(&t["full"]);
    }
    check(m, "workers.tls.full", full);

    // The page refreshed on its own: with nothing moving, every rate it
    // derives from two reads is 0 (before a second read it shows `…`).
    let rates: Vec<(&String, &String)> = m.iter().filter(|(k, _)| k.contains(".rate.")).collect();
    assert!(!rates.is_empty(), "the page shows rates");
    for (k, v) in rates {
        assert_eq!(v, "0", "{k}: nothing moves, yet the page shows {v}");
    }
}

/// The nine axes of frontend `f` (metric prefix `p`): the limit in force
/// and the level that sets it (`off` and no level when no level sets
/// one), and the value at each level.
fn check_limits(m: &BTreeMap<String, String>, p: &str, f: &Value) {
    let limits = f["limits"].as_object().expect("limits");
    assert_eq!(limits.len(), 9, "{p}: nine axes in api/status: {limits:?}");
    let shown_in_force = m
        .keys()
        .filter(|k| k.starts_with(&format!("{p}limit.")) && k.ends_with(".inForce"))
        .count();
    assert_eq!(shown_in_force, 9, "{p}: the page shows nine axes");
    for (axis, l) in limits {
        let k = format!("{p}limit.{axis}.");
        match l["level"].as_str() {
            Some(level) => {
                check(m, &format!("{k}inForce"), as_shown(axis, n(&l["inForce"])));
                assert_eq!(
                    m.get(&format!("{k}level")).map(String::as_str),
                    Some(level),
                    "{k}level"
                );
            }
            None => {
                assert_eq!(text(m, &format!("{k}inForce")), "off", "{k}inForce: {l}");
                assert!(!m.contains_key(&format!("{k}level")), "{k}level: {l}");
            }
        }
        for level in LEVELS {
            check(m, &format!("{k}{level}"), as_shown(axis, n(&l[level])));
        }
    }
}

/// One pool: `maxConn`, queue, the pool level's value of each axis (as
/// every frontend of the pool reports it), refusals summed over its
/// frontends, and its backends.
fn check_pool(m: &BTreeMap<String, String>, pool: &Value, frontends: &[Value]) {
    let name = pool["name"].as_str().expect("name");
    let p = format!("pool.{name}.");
    let conns = &pool["conns"];
    check(m, &format!("{p}conns.active"), n(&conns["active"]));
    check(m, &format!("{p}conns.limit"), n(&conns["limit"]));
    check(m, &format!("{p}maxConn.active"), n(&conns["active"]));
    check(m, &format!("{p}queued"), n(&conns["queued"]));
    check(m, &format!("{p}queue.depth"), n(&pool["queue"]["depth"]));
    let timeout = text(m, &format!("{p}queue.timeout"));
    let secs: f64 = timeout
        .parse()
        .unwrap_or_else(|_| panic!("{p}queue.timeout is `{timeout}`"));
    assert_eq!(
        (secs * 1000.0).round(),
        n(&pool["queue"]["timeoutMs"]) as f64,
        "{p}queue.timeout: {timeout} s"
    );
    let ours: Vec<&Value> = frontends.iter().filter(|f| f["pool"] == name).collect();
    check(m, &format!("{p}limit.maxConn"), n(&conns["limit"]));
    for f in &ours {
        for (axis, l) in f["limits"].as_object().expect("limits") {
            check(
                m,
                &format!("{p}limit.{axis}"),
                as_shown(axis, n(&l["pool"])),
            );
        }
    }
    let backends = pool["backends"].as_array().expect("backends");
    let up = backends.iter().filter(|b| b["up"] == true).count() as u64;
    check(m, &format!("{p}backends.up"), up);
    check(m, &format!("{p}backends.down"), backends.len() as u64 - up);
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
            check(m, &format!("{q}{k}"), n(&b[k]));
        }
    }
    // Pool-level refusals, summed over the pool's frontends.
    let prefix = format!("{p}refused.");
    let shown_axes = m.keys().filter(|k| k.starts_with(&prefix)).count();
    assert!(shown_axes >= 9, "{p}: the nine axes, got {shown_axes}");
    for k in m.keys().filter(|k| k.starts_with(&prefix)) {
        let axis = &k[prefix.len()..];
        let sum = ours
            .iter()
            .map(|f| n(&f["refused"][format!("pool/{axis}")]))
            .sum();
        check(m, k, sum);
    }
}

/// Saves what Chromium shows of the page at 1366x900 to `png` and checks
/// it is a PNG of that size with something in it.
fn screenshot(admin: SocketAddr, png: &Path) {
    let _ = std::fs::remove_file(png);
    chromium(
        &format!("http://{admin}/"),
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1366,900",
        ],
    );
    let bytes = std::fs::read(png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
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
        png.canonicalize()
            .unwrap_or_else(|_| png.to_path_buf())
            .display()
    );
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

/// Where screenshots go: the workspace's `target/`.
fn target(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(name)
}

#[test]
fn the_status_page_shows_what_api_status_says() {
    let _serial = serial();
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
    // `web` (HTTP) uses pool `api`: 2 new sessions a second, a queue of 3
    // for 1.5 s, and a second backend where nothing listens, found down by
    // the first health check (the next one is an hour away, so nothing
    // moves while the page is read). `secure` (TLS) uses pool `tight`: 1
    // request in flight, no queue. Limits at every level: `maxConnRate`
    // and `maxRetries` set globally, `maxConn` and `maxSslRate` per
    // frontend, the rest by the profiles (named, or built in).
    let config = format!(
        r#"[global]
instance = "page{tag}"
[global.limits]
maxConnRate = 5000
maxRetries = 2
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
[frontend.limits]
maxSslRate = 300
[[pool]]
name = "api"
profile = "small"
backends = ["{backend}", "{dead}"]
health = {{ kind = "tcp", interval = "1h", timeout = "1s", fall = 1 }}
queue = {{ depth = 3, timeout = "1500ms" }}
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
    let (want, m, dom, after) = page_when_still(admin);
    check_page(&m, &want, &after);
    let refused: u64 = want["frontends"]
        .as_array()
        .expect("frontends")
        .iter()
        .flat_map(|f| f["refused"].as_object().expect("refused").values())
        .map(n)
        .sum();
    assert!(refused > 0, "the traffic made refusals: {want:#}");
    let full: u64 = want["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| n(&w["tls"]["full"]))
        .sum();
    assert!(full > 0, "the TLS requests made full handshakes: {want:#}");
    // Every level sets some axis here, so the page shows each level in force.
    for level in LEVELS {
        assert!(
            m.iter()
                .any(|(k, v)| k.ends_with(".level") && v.as_str() == level),
            "no axis shown in force at the {level} level"
        );
    }
    // No XDP here: no XDP card.
    assert!(
        !m.keys().any(|k| k.starts_with("xdp.")),
        "an XDP number without XDP: {m:?}"
    );
    assert!(
        !without_script(&dom).contains("<table class=\"xdp\""),
        "an XDP card"
    );
    assert!(
        without_script(&dom).contains("<svg class=\"spark\""),
        "the page draws its charts"
    );

    // A screenshot for people to look at.
    screenshot(admin, &target("status-page.png"));

    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

/// A process killed (by pid) and reaped when dropped, if still running.
struct Reaped(Child);

impl Reaped {
    /// Waits for the exit, at most `limit`; fails the test past it (the
    /// drop then kills it). The exit status does not matter: hping3 exits
    /// 1 when no reply came back.
    fn wait(&mut self, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.0.try_wait().expect("try_wait").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{what} still running after {limit:?}");
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `count` SYNs from the client namespace to `vip`, one every 5 ms,
/// by hping3 (bounded by count and by `timeout 20`); from the client's own
/// address, or from random ones.
fn syns(t: &Topology, vip: SocketAddr, count: u32, random_sources: bool) -> Reaped {
    let mut cmd = t.client.cmd("timeout");
    cmd.args(["20", "hping3", "-q", "-S", "-i", "u5000"])
        .args(["-p", &vip.port().to_string()])
        .args(["-c", &count.to_string()]);
    if random_sources {
        cmd.arg("--rand-source");
    }
    Reaped(
        cmd.arg(vip.ip().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("hping3"),
    )
}

#[test]
fn the_status_page_xdp_card_shows_the_syn_verdicts_of_api_status() {
    let test = "the_status_page_xdp_card_shows_the_syn_verdicts_of_api_status";
    if !have_root(test) {
        return;
    }
    for tool in ["ip", "nsenter", "curl", "hping3", "timeout"] {
        assert!(
            have_tool(tool),
            "{test}: `{tool}` missing: run `cargo xtask setup`"
        );
    }
    assert!(Path::new(CHROMIUM).exists(), "no {CHROMIUM}");
    let _serial = serial();
    const VIP: &str = "198.18.0.1";
    let dir = ScratchDir::new("lb-page-xdp");
    let t = Topology::new("lbp", &["198.18.0.2/24"], &[&format!("{VIP}/24")]).expect("namespaces");
    // Ports free on this host are free in the new namespace too.
    let port = |a: SocketAddr| a.port();
    let vip: SocketAddr = format!("{VIP}:{}", port(free_addr("127.0.0.1")))
        .parse()
        .expect("vip");
    let admin: SocketAddr = format!("127.0.0.1:{}", port(free_addr("127.0.0.1")))
        .parse()
        .expect("admin");
    let b = HttpBackend::start(
        "a",
        format!("{VIP}:{}", port(free_addr("127.0.0.1")))
            .parse()
            .expect("addr"),
        Some(t.lbns.name()),
    )
    .expect("backend");
    // One source may send 5 SYNs a second (10 at once); the pool admits
    // 20 new connections a second.
    let config = format!(
        r#"[global]
instance = "pagex{tag}"
[xdp]
iface = "{iface}"
mode = "driver"
sourceSynRate = 5
sourceSynBurst = 10
[admin]
listen = "{admin}"
[[frontend]]
name = "web"
listen = "{vip}"
pool = "p"
[[pool]]
name = "p"
profile = "slow"
backends = ["{b}"]
[profile.slow]
maxConnRate = 20
"#,
        tag = t.tag,
        iface = t.iface,
        b = b.addr,
    );
    let mut lb = Lb::start(Some(&t.lbns), &dir.join("lb.toml"), &config).expect("lb starts");
    // The browser and the test read the admin listener from this host.
    let fwd = Forward::start(
        &[SocketAddr::from(([127, 0, 0, 1], 0))],
        t.lbns.name(),
        admin,
    )
    .expect("forward");

    // Requests, admitted; then SYNs over the source's rate (dropped by
    // source), then from random sources over the pool's rate (dropped
    // by pool).
    for _ in 0..3 {
        let r = curl_in(Some(t.client.name()), &format!("http://{vip}/"), &[]).expect("curl");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let limit = Duration::from_secs(30);
    syns(&t, vip, 40, false).wait(limit, "hping3");
    syns(&t, vip, 60, true).wait(limit, "hping3");

    let (want, m, dom, after) = page_when_still(fwd.addr);
    check_page(&m, &want, &after);
    let x = &want["xdp"];
    assert!(
        x.is_object(),
        "XDP is attached: api/status has xdp: {want:#}"
    );
    let vips = x["vips"].as_array().expect("vips");
    let v = vips
        .iter()
        .find(|v| v["vip"] == vip.to_string().as_str())
        .unwrap_or_else(|| panic!("no {vip} in {x:#}"));
    assert!(n(&v["admitted"]) >= 3, "the requests were admitted: {v}");
    assert!(n(&v["drop_source"]) > 0, "sourceSynRate dropped: {v}");
    assert!(
        n(&v["drop_pool"]) > 0,
        "the pool's maxConnRate dropped: {v}"
    );
    // The XDP card: each VIP's verdicts, and the packets by reason.
    for v in vips {
        let p = format!("xdp.vip.{}.", v["vip"].as_str().expect("vip"));
        for k in [
            "admitted",
            "dropped",
            "drop_source",
            "drop_global",
            "drop_frontend",
            "drop_pool",
            "overflow",
        ] {
            check(&m, &format!("{p}{k}"), n(&v[k]));
            assert_eq!(
                m.get(&format!("{p}rate.{k}")).map(String::as_str),
                Some("0"),
                "{p}rate.{k}: nothing moves"
            );
        }
    }
    let packets = x["packets"].as_object().expect("packets");
    assert_eq!(packets.len(), 9, "{packets:?}");
    for (k, v) in packets {
        check(&m, &format!("xdp.packets.{k}"), n(v));
    }
    assert!(
        without_script(&dom).contains("<table class=\"xdp\""),
        "the XDP card"
    );

    // The screenshot during a short flood (3 s), so that its chart and
    // rates show something.
    let mut flood = syns(&t, vip, 600, true);
    screenshot(fwd.addr, &target("status-page-xdp.png"));
    flood.wait(limit, "hping3");
    drop(fwd);
    assert_eq!(
        lb.stop(libc::SIGTERM).expect("exit"),
        Some(0),
        "{}",
        lb.log()
    );
}
