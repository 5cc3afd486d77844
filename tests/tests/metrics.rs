//! `GET /metrics` on the admin listener, as Prometheus and an operator see
//! it, with a real `lb` (no XDP, no privileges) on loopback in front of real
//! backends.
//!
//! It proves: the answer is OpenMetrics text (its content type, `# TYPE`
//! before each family's samples, every sample line `name{labels} value`,
//! `# EOF` last); the counters equal what the clients saw (requests sent,
//! 503s refused by `pool/maxSessRate` and `pool/maxConn` under their level
//! and axis labels), the request latency histogram counts every request,
//! the queue wait histogram holds the one wait, in the right bucket; the
//! numbers equal `/api/status`'s for the same counters; profile PUTs and
//! SIGHUP reloads are counted by source and outcome and move the
//! generation; TLS handshakes are counted per CPU; with XDP off there are
//! no `lb_xdp_` series, and with XDP attached (root: a veth between two
//! namespaces) the SYN verdicts per VIP are those of the pinned maps, as
//! `lb stats` reads them.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use lb_tests::{
    backend::HttpBackend,
    client::{curl, curl_in, free_addr, frontend_in, status, Reply},
    have_root, have_tool,
    lb::{cert_gen, lb_cmd, Lb},
    netns::Topology,
    unique_tag, ScratchDir,
};
use serde_json::Value;

/// One test at a time: the queue test depends on timing.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn backend(name: &str) -> HttpBackend {
    HttpBackend::start(name, "127.0.0.1:0".parse().expect("addr"), None).expect("backend")
}

/// One sample: its name and labels.
type Key = (String, BTreeMap<String, String>);

/// A scrape, parsed: every sample, and the `# TYPE` of every family.
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<Key, f64>,
    types: BTreeMap<String, String>,
    text: String,
}

impl Scrape {
    /// The value of the sample `name{labels}` (exactly those labels).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// As [`Scrape::get`], a count that must be there.
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let v = self
            .get(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.text));
        assert!(
            v >= 0.0 && v.fract() == 0.0,
            "{name} {labels:?} = {v}: not a count"
        );
        // A whole, non-negative count of things seen in a test: exact.
        v as u64
    }

    /// Every sample named `name`.
    fn all(&self, name: &str) -> Vec<(&BTreeMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, l), v)| (l, *v))
            .collect()
    }
}

/// Parses one sample line: `name{k="v",...} value` or `name value`.
fn sample(line: &str) -> Result<(Key, f64), String> {
    let bad = |why: &str| format!("`{line}`: {why}");
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or_else(|| bad("no value"))?;
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad("not a metric name"));
    }
    let mut labels = BTreeMap::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let (k, r) = rest
                .split_once("=\"")
                .ok_or_else(|| bad("a label without =\""))?;
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad("not a label name"));
            }
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err(bad("an escape at the end")),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err(bad("an unterminated label value")),
                }
            };
            labels.insert(k.to_owned(), value);
            rest = &r[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or_else(|| bad("no space before the value"))?;
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().map_err(|e| bad(&format!("value: {e}")))?,
    };
    Ok(((name.to_owned(), labels), v))
}

/// `GET /metrics`, checked for the format and parsed.
fn scrape(admin: SocketAddr) -> Scrape {
    scrape_in(None, admin)
}

/// [`scrape`] from inside network namespace `ns`.
fn scrape_in(ns: Option<&str>, admin: SocketAddr) -> Scrape {
    let r = curl_in(ns, &format!("http://{admin}/metrics"), &[]).expect("curl");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{r:?}"
    );
    parse(&r.body)
}

fn parse(text: &str) -> Scrape {
    assert!(text.ends_with("# EOF\n"), "no `# EOF` at the end:\n{text}");
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("# ") {
            if let Some(t) = c.strip_prefix("TYPE ") {
                let (name, ty) = t.split_once(' ').expect("`# TYPE name type`");
                assert!(
                    types.insert(name.to_owned(), ty.to_owned()).is_none(),
                    "family {name} twice"
                );
            }
            continue;
        }
        let (key, v) = sample(line).unwrap_or_else(|e| panic!("{e}\nin:\n{text}"));
        assert!(key.0.starts_with("lb_"), "{line}: not an lb_ metric");
        // The family was typed before its samples.
        let family = types
            .keys()
            .filter(|f| key.0.starts_with(f.as_str()))
            .max_by_key(|f| f.len());
        let Some(family) = family else {
            panic!("`{line}` before its family's # TYPE:\n{text}")
        };
        let suffix = &key.0[family.len()..];
        let allowed: &[&str] = match types[family].as_str() {
            "counter" => &["_total"],
            "gauge" => &[""],
            "histogram" => &["_bucket", "_sum", "_count"],
            t => panic!("{family}: unexpected type {t}"),
        };
        assert!(
            allowed.contains(&suffix),
            "`{line}` in a {} family",
            types[family]
        );
        assert!(
            samples.insert(key, v).is_none(),
            "`{line}`: the same series twice"
        );
    }
    Scrape {
        samples,
        types,
        text: text.to_owned(),
    }
}

/// The sum of every `name` sample whose labels include `with`.
fn sum_where(s: &Scrape, name: &str, with: &[(&str, &str)]) -> f64 {
    s.all(name)
        .into_iter()
        .filter(|(l, _)| {
            with.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

/// `/api/status` number at `path` as u64 (absent: 0).
fn at(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// A histogram's buckets never go down, and `+Inf` is its `_count`.
fn check_histogram(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> u64 {
    let count = s.count(&format!("{name}_count"), labels);
    let mut buckets: Vec<(f64, f64)> = s
        .all(&format!("{name}_bucket"))
        .into_iter()
        .filter(|(l, _)| {
            l.len() == labels.len() + 1
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(l, v)| {
            let le = l.get("le").expect("a bucket has `le`");
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a number")
            };
            (bound, v)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "{name} {labels:?}: buckets {buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name} {labels:?}: cumulative buckets go down: {buckets:?}"
    );
    assert_eq!(
        buckets.last().copied(),
        Some((f64::INFINITY, count as f64)),
        "{name} {labels:?}: +Inf is the count"
    );
    count
}

/// The cumulative count of bucket `le` of a histogram series.
fn bucket(s: &Scrape, name: &str, le: &str, labels: &[(&str, &str)]) -> u64 {
    let mut with = vec![("le", le)];
    with.extend_from_slice(labels);
    s.count(&format!("{name}_bucket"), &with)
}

fn refused(r: &Reply, limit: &str) -> bool {
    r.status == 503 && r.header("lb-limit") == Some(limit)
}

const TOKEN: &str = "metrics-test-token";

#[test]
fn metrics_count_what_clients_saw_and_match_api_status() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-metrics");
    let (ba, bq) = (backend("a"), backend("q"));
    let (web, q, admin) = (
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
        free_addr("127.0.0.1"),
    );
    let config = format!(
        r#"[global]
instance = "met{tag}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
token = "{TOKEN}"
[[frontend]]
name = "web"
listen = "{web}"
pool = "p"
[[frontend]]
name = "q"
listen = "{q}"
pool = "one"
[[pool]]
name = "p"
profile = "sessions"
backends = ["{a}"]
[[pool]]
name = "one"
profile = "one"
backends = ["{bq}"]
queue = {{ depth = 1, timeout = "3s" }}
[profile.sessions]
maxSessRate = 3
[profile.one]
maxConn = 1
"#,
        tag = unique_tag(),
        a = ba.addr,
        bq = bq.addr,
    );
    let config_path = dir.join("lb.toml");
    let mut lb = Lb::start(None, &config_path, &config).expect("lb starts");

    // Before any traffic: every family typed, zeros where nothing happened.
    let s = scrape(admin);
    assert_eq!(
        s.count("lb_frontend_requests_total", &[("frontend", "web")]),
        0
    );
    assert_eq!(s.types["lb_request_duration_seconds"], "histogram");
    assert_eq!(s.types["lb_frontend_connections_active"], "gauge");
    assert_eq!(s.count("lb_config_generation", &[]), 1);
    // A refusal series appears with the first refusal of its kind.
    assert!(s.all("lb_refusals_total").is_empty(), "{}", s.text);

    // `web`: new sessions over maxSessRate 3/s are refused with 503.
    const SENT: u64 = 30;
    let replies: Vec<Reply> = (0..SENT)
        .map(|_| curl(&format!("http://{web}/"), &[]).expect("curl"))
        .collect();
    let ok = replies.iter().filter(|r| r.status == 200).count() as u64;
    let sess_refused = replies
        .iter()
        .filter(|r| refused(r, "pool/maxSessRate"))
        .count() as u64;
    assert_eq!(
        ok + sess_refused,
        SENT,
        "each admitted or refused: {replies:?}"
    );
    assert!(
        ok >= 1 && sess_refused >= 1,
        "{ok} ok, {sess_refused} refused"
    );

    // `q`: one request holds the only slot, one waits in the queue for
    // it, a third finds the queue full.
    let url = format!("http://{q}/slow?ms=1000");
    let holder = {
        let url = url.clone();
        std::thread::spawn(move || curl(&url, &[]).expect("curl"))
    };
    std::thread::sleep(Duration::from_millis(200));
    let waiter = {
        let url = format!("http://{q}/");
        std::thread::spawn(move || curl(&url, &[]).expect("curl"))
    };
    std::thread::sleep(Duration::from_millis(150));
    let full = curl(&format!("http://{q}/"), &[]).expect("curl");
    assert!(refused(&full, "pool/maxConn"), "{full:?}");
    assert_eq!(holder.join().expect("holder").status, 200);
    assert_eq!(waiter.join().expect("waiter").status, 200);

    let s = scrape(admin);
    assert_eq!(s.types["lb_refusals"], "counter");
    let web_l = [("frontend", "web")];
    let q_l = [("frontend", "q")];
    // What the clients saw.
    assert_eq!(s.count("lb_frontend_requests_total", &web_l), SENT);
    assert_eq!(s.count("lb_frontend_connections_total", &web_l), SENT);
    assert_eq!(
        s.count(
            "lb_refusals_total",
            &[
                ("frontend", "web"),
                ("level", "pool"),
                ("axis", "maxSessRate")
            ]
        ),
        sess_refused
    );
    assert_eq!(
        s.count(
            "lb_frontend_responses_total",
            &[("frontend", "web"), ("class", "5xx")]
        ),
        sess_refused
    );
    assert_eq!(
        s.count(
            "lb_frontend_responses_total",
            &[("frontend", "web"), ("class", "2xx")]
        ),
        ok
    );
    assert_eq!(
        s.count(
            "lb_backend_requests_total",
            &[("pool", "p"), ("backend", &ba.addr.to_string())]
        ),
        ba.requests(),
        "refusals never reach the backend"
    );
    assert_eq!(ba.requests(), ok);
    assert_eq!(
        s.count(
            "lb_backend_up",
            &[("pool", "p"), ("backend", &ba.addr.to_string())]
        ),
        1
    );
    // Every request is in the latency histogram, each bucket cumulative.
    assert_eq!(
        check_histogram(&s, "lb_request_duration_seconds", &web_l),
        SENT
    );
    assert_eq!(check_histogram(&s, "lb_request_duration_seconds", &q_l), 3);
    assert_eq!(
        bucket(&s, "lb_request_duration_seconds", "0.25", &q_l),
        1,
        "only the refusal took under 0.25 s: the holder took 1 s, the waiter waited for it"
    );
    // The queue: one wait, of about 800 ms (the holder's 1 s less the
    // 200 ms before the waiter came), admitted; the full queue refused at
    // once, without queueing.
    assert_eq!(
        s.count(
            "lb_refusals_total",
            &[("frontend", "q"), ("level", "pool"), ("axis", "maxConn")]
        ),
        1
    );
    let admitted = [("pool", "one"), ("outcome", "admitted")];
    assert_eq!(
        check_histogram(&s, "lb_pool_queue_wait_seconds", &admitted),
        1
    );
    assert_eq!(
        bucket(&s, "lb_pool_queue_wait_seconds", "0.1", &admitted),
        0
    );
    assert_eq!(
        bucket(&s, "lb_pool_queue_wait_seconds", "2.5", &admitted),
        1
    );
    let waited = s
        .get("lb_pool_queue_wait_seconds_sum", &admitted)
        .expect("a sum");
    assert!((0.1..2.5).contains(&waited), "waited {waited} s");
    assert_eq!(
        check_histogram(
            &s,
            "lb_pool_queue_wait_seconds",
            &[("pool", "one"), ("outcome", "timeout")]
        ),
        0
    );
    assert_eq!(s.count("lb_pool_queue_length", &[("pool", "one")]), 0);
    assert_eq!(s.count("lb_pool_max_conn", &[("pool", "one")]), 1);
    // XDP is off: no XDP series at all.
    assert!(
        !s.text.contains("lb_xdp_"),
        "XDP series with XDP off:\n{}",
        s.text
    );

    // The same counters in /api/status (read after: nothing moved since).
    let st = status(admin).expect("status");
    for name in ["web", "q"] {
        let f = frontend_in(&st, name);
        let l = [("frontend", name)];
        for (metric, path) in [
            ("lb_frontend_connections_total", vec!["accepted"]),
            ("lb_frontend_requests_total", vec!["requests"]),
            ("lb_frontend_retries_total", vec!["retries"]),
            ("lb_frontend_no_backend_total", vec!["noBackend"]),
            ("lb_frontend_paced_total", vec!["paced"]),
        ] {
            assert_eq!(s.count(metric, &l), at(&f, &path), "{name} {metric}: {f}");
        }
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            assert_eq!(
                s.count(
                    "lb_frontend_responses_total",
                    &[("frontend", name), ("class", class)]
                ),
                at(&f, &["responses", class]),
                "{name} {class}: {f}"
            );
        }
        let refusals = f["refused"].as_object().expect("refused");
        for (key, n) in refusals {
            let (level, axis) = key.split_once('/').expect("level/axis");
            assert_eq!(
                s.count(
                    "lb_refusals_total",
                    &[("frontend", name), ("level", level), ("axis", axis)]
                ),
                n.as_u64().unwrap_or(0),
                "{name} {key}"
            );
        }
        let all = refusals.values().filter_map(Value::as_u64).sum::<u64>() as f64;
        assert_eq!(sum_where(&s, "lb_refusals_total", &l), all, "{name}: {f}");
    }
    for p in st["pools"].as_array().expect("pools") {
        let pool = p["name"].as_str().expect("name");
        for (metric, key) in [
            ("lb_pool_max_conn", "limit"),
            ("lb_pool_slots_active", "active"),
            ("lb_pool_queue_length", "queued"),
        ] {
            assert_eq!(s.count(metric, &[("pool", pool)]), at(p, &["conns", key]));
        }
        for b in p["backends"].as_array().expect("backends") {
            let addr = b["address"].as_str().expect("address");
            let l = [("pool", pool), ("backend", addr)];
            for (metric, key) in [
                ("lb_backend_requests_total", "sent"),
                ("lb_backend_connections_total", "connects"),
                ("lb_backend_connect_errors_total", "connectErrors"),
                ("lb_backend_check_failures_total", "checkFailures"),
                ("lb_backend_active", "active"),
            ] {
                assert_eq!(s.count(metric, &l), at(b, &[key]), "{metric} {b}");
            }
            assert_eq!(s.count("lb_backend_up", &l), u64::from(b["up"] == true));
        }
    }
    let accepted = st["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| at(w, &["accepted"]))
        .sum::<u64>() as f64;
    assert_eq!(sum_where(&s, "lb_worker_connections_total", &[]), accepted);

    // Changes: a profile PUT applied, one refused, a SIGHUP reload applied.
    let put = |body: &str| {
        curl(
            &format!("http://{admin}/api/profiles/sessions"),
            &[
                "-X",
                "PUT",
                "-H",
                &format!("Authorization: Bearer {TOKEN}"),
                "--data",
                body,
            ],
        )
        .expect("curl")
    };
    assert_eq!(put(r#"{"maxSessRate": 50}"#).status, 200);
    assert_eq!(put(r#"{"maxSessRate": "lots"}"#).status, 400);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(i32::try_from(lb.pid()).expect("pid"), libc::SIGHUP) };
    let reloaded = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        lb.log().contains("SIGHUP: configuration reloaded")
    });
    assert!(reloaded, "no reload logged:\n{}", lb.log());
    let s = scrape(admin);
    let change = |source: &str, outcome: &str| {
        s.count(
            "lb_config_reloads_total",
            &[("source", source), ("outcome", outcome)],
        )
    };
    assert_eq!(change("api", "ok"), 1);
    assert_eq!(change("api", "refused"), 1);
    assert_eq!(change("sighup", "ok"), 1);
    assert_eq!(change("sighup", "refused"), 0);
    assert_eq!(s.count("lb_config_generation", &[]), 3);

    // Anything but GET is refused.
    let post = curl(&format!("http://{admin}/metrics"), &["-X", "POST"]).expect("curl");
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn tls_handshakes_are_counted_per_cpu_as_api_status_counts_them() {
    let _serial = serial();
    let dir = ScratchDir::new("lb-metrics-tls");
    let b = backend("a");
    let (port, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let _pair = cert_gen(&dir, "lb.test");
    let config = format!(
        r#"[global]
instance = "mett{tag}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
token = "{TOKEN}"
[[frontend]]
name = "web"
listen = "{port}"
pool = "p"
tls = {{ cert = "{cert}", key = "{key}" }}
[[pool]]
name = "p"
backends = ["{b}"]
"#,
        tag = unique_tag(),
        cert = dir.join("lb.test.pem").display(),
        key = dir.join("lb.test.key").display(),
        b = b.addr,
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    let resolve = format!("lb.test:{}:127.0.0.1", port.port());
    const HTTPS: u64 = 5;
    for _ in 0..HTTPS {
        let r = curl(
            &format!("https://lb.test:{}/", port.port()),
            &["-k", "--resolve", &resolve],
        )
        .expect("curl");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let s = scrape(admin);
    let st = status(admin).expect("status");
    // Each curl is a new process: a full handshake each.
    assert_eq!(
        sum_where(&s, "lb_tls_handshakes_full_total", &[]),
        HTTPS as f64
    );
    assert_eq!(sum_where(&s, "lb_tls_handshakes_failed_total", &[]), 0.0);
    let workers = st["workers"].as_array().expect("workers");
    for w in workers {
        let cpu = w["cpu"]
            .as_u64()
            .map_or_else(|| "none".to_owned(), |c| c.to_string());
        // Workers sharing a CPU are summed under its label.
        let same_cpu = |key: &str| -> u64 {
            workers
                .iter()
                .filter(|o| o["cpu"] == w["cpu"])
                .map(|o| at(o, &["tls", key]))
                .sum()
        };
        let l = [("cpu", cpu.as_str())];
        for (metric, key) in [
            ("lb_tls_handshakes_full_total", "full"),
            ("lb_tls_handshakes_failed_total", "failed"),
            ("lb_tls_handshake_timeouts_total", "timeouts"),
            ("lb_tls_gate_refused_total", "gateRefused"),
            ("lb_tls_resumption_misses_total", "resumptionMisses"),
            ("lb_tls_rate_paused_total", "ratePaused"),
            ("lb_tls_handshakes_abandoned_total", "abandoned"),
        ] {
            assert_eq!(s.count(metric, &l), same_cpu(key), "{metric} cpu {cpu}");
        }
        for (kind, key) in [("tls12", "resumedTls12"), ("tls13", "resumedTls13")] {
            assert_eq!(
                s.count(
                    "lb_tls_handshakes_resumed_total",
                    &[("cpu", cpu.as_str()), ("kind", kind)]
                ),
                same_cpu(key),
                "resumed {kind} cpu {cpu}"
            );
        }
    }
    let f = frontend_in(&st, "web");
    assert_eq!(
        s.count("lb_tls_tickets_issued_total", &[("frontend", "web")]),
        at(&f, &["tlsTickets", "encrypted"]),
        "{f}"
    );
    assert_eq!(
        s.count("lb_frontend_requests_total", &[("frontend", "web")]),
        HTTPS
    );
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn xdp_verdicts_per_vip_are_read_from_the_pinned_maps() {
    let test = "xdp_verdicts_per_vip_are_read_from_the_pinned_maps";
    if !have_root(test) {
        return;
    }
    for tool in ["ip", "nsenter", "curl"] {
        assert!(
            have_tool(tool),
            "{test}: `{tool}` missing: run `cargo xtask setup`"
        );
    }
    let _serial = serial();
    const VIP: &str = "198.18.0.1";
    let dir = ScratchDir::new("lb-metrics-xdp");
    let t = Topology::new("lbm", &["198.18.0.2/24"], &[&format!("{VIP}/24")]).expect("namespaces");
    let instance = format!("metx{}", t.tag);
    let b = HttpBackend::start(
        "a",
        format!("{VIP}:9090").parse().expect("addr"),
        Some(t.lbns.name()),
    )
    .expect("backend");
    let admin: SocketAddr = "127.0.0.1:9100".parse().expect("admin");
    let config = format!(
        r#"[global]
instance = "{instance}"
[xdp]
iface = "{iface}"
mode = "driver"
[admin]
listen = "{admin}"
token = "{TOKEN}"
[[frontend]]
name = "web"
listen = "{VIP}:8080"
pool = "p"
[[pool]]
name = "p"
backends = ["{b}"]
"#,
        iface = t.iface,
        b = b.addr,
    );
    let mut lb = Lb::start(Some(&t.lbns), &dir.join("lb.toml"), &config).expect("lb starts");
    const SENT: u64 = 4;
    for _ in 0..SENT {
        let r = curl_in(Some(t.client.name()), &format!("http://{VIP}:8080/"), &[]).expect("curl");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let s = scrape_in(Some(t.lbns.name()), admin);
    let vip = format!("{VIP}:8080");
    // One SYN per connection, each admitted; nothing dropped.
    assert_eq!(
        s.count(
            "lb_xdp_syns_total",
            &[("vip", &vip), ("reason", "admitted")]
        ),
        SENT,
        "{}",
        s.text
    );
    assert_eq!(
        sum_where(&s, "lb_xdp_packets_total", &[("reason", "syn_admitted")]),
        SENT as f64
    );
    // The same numbers as `lb stats --json` reads from the pins.
    let (code, out, err) = lb_cmd(&["stats", "--instance", &instance, "--json"]).expect("lb stats");
    assert_eq!(code, 0, "{err}");
    let stats: Value = serde_json::from_str(&out).expect("stats JSON");
    let v = stats["vips"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["vip"] == vip.as_str()))
        .unwrap_or_else(|| panic!("no {vip} in {stats}"));
    for reason in [
        "admitted",
        "drop_source",
        "drop_global",
        "drop_frontend",
        "drop_pool",
        "overflow",
    ] {
        assert_eq!(
            s.count("lb_xdp_syns_total", &[("vip", &vip), ("reason", reason)]),
            at(v, &[reason]),
            "{reason}: {v}"
        );
    }
    assert_eq!(
        sum_where(&s, "lb_xdp_packets_total", &[("reason", "tcp_not_syn")]),
        at(&stats, &["packets", "tcp_not_syn"]) as f64,
        "nothing moved between the two reads: {stats}"
    );
    assert_eq!(
        s.count("lb_frontend_requests_total", &[("frontend", "web")]),
        SENT
    );
    assert_eq!(
        lb.stop(libc::SIGTERM).expect("exit"),
        Some(0),
        "{}",
        lb.log()
    );
}
