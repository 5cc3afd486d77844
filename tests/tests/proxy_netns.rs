//! The whole path a real client takes: from a client namespace, over a veth
//! where `lb`'s XDP program is attached in native mode, to `lb`'s HTTP and
//! TCP frontends in the lb namespace, and on to two real HTTP backends.
//!
//! It proves that curl, h2load and wrk all get their answers through the
//! data plane and the proxy, spread over both backends; that every SYN they
//! sent was admitted by XDP and none dropped (`lb stats`), and `lb`'s own
//! counters (`/api/status`, read inside the lb namespace) agree with what
//! the backends saw; and that SIGTERM lets an in-flight request finish,
//! exits 0, and leaves no XDP program on the interface. Needs root.

use std::{
    net::SocketAddr,
    process::Output,
    time::{Duration, Instant},
};

use lb_tests::{
    backend::HttpBackend,
    client::{curl_in, frontend_in, h2load, Load},
    have_root, have_tool,
    lb::{lb_cmd, Lb},
    netns::{run_in, Topology},
    ScratchDir,
};
use serde_json::Value;

const VIP: &str = "198.18.0.1";
const CLIENT: &str = "198.18.0.3";
const CLIENT_2: &str = "198.18.0.2";
/// The admin listener, on the lb namespace's own loopback.
const ADMIN: &str = "127.0.0.1:9100";

/// Everything a test needs, torn down in reverse order on drop (lb first,
/// then the backends, then the namespaces).
struct Setup {
    lb: Lb,
    b1: HttpBackend,
    b2: HttpBackend,
    instance: String,
    t: Topology,
    _tmp: ScratchDir,
}

fn ready(test: &str) -> bool {
    if !have_root(test) {
        return false;
    }
    for tool in ["nsenter", "curl", "h2load", "wrk", "ip"] {
        assert!(
            have_tool(tool),
            "{test}: `{tool}` missing: run `cargo xtask setup`"
        );
    }
    true
}

/// The topology, two backends beside the VIP in the lb namespace, and `lb`
/// attached in driver mode with an HTTP frontend on :80 and a TCP one on
/// :81, both to the two backends.
fn setup(drain: &str) -> Setup {
    let tmp = ScratchDir::new("lb-pnet");
    let t = Topology::new(
        "lbp",
        &[&format!("{CLIENT}/24"), &format!("{CLIENT_2}/24")],
        &[&format!("{VIP}/24")],
    )
    .expect("namespaces");
    let at = |port: u16| -> SocketAddr { format!("{VIP}:{port}").parse().expect("addr") };
    let b1 = HttpBackend::start("b1", at(9001), Some(t.lbns.name())).expect("backend b1");
    let b2 = HttpBackend::start("b2", at(9002), Some(t.lbns.name())).expect("backend b2");
    let instance = format!("pnet{}", t.tag);
    let config = format!(
        r#"[global]
instance = "{instance}"
drainTimeout = "{drain}"
[global.limits]
maxConnRate = 0
[xdp]
iface = "{iface}"
mode = "driver"
[admin]
listen = "{ADMIN}"
[[frontend]]
name = "web"
listen = "{VIP}:80"
pool = "app"
[[frontend]]
name = "raw"
listen = "{VIP}:81"
mode = "tcp"
pool = "app"
[[pool]]
name = "app"
profile = "open"
backends = ["{VIP}:9001", "{VIP}:9002"]
[profile.open]
maxConnRate = 100000
"#,
        iface = t.iface
    );
    let lb = Lb::start(Some(&t.lbns), &tmp.join("lb.toml"), &config)
        .unwrap_or_else(|e| panic!("lb run:\n{config}\n{e:#}"));
    Setup {
        lb,
        b1,
        b2,
        instance,
        t,
        _tmp: tmp,
    }
}

impl Setup {
    fn client(&self) -> &str {
        self.t.client.name()
    }

    /// `/api/status`, read with curl inside the lb namespace.
    fn status(&self) -> Value {
        let r = curl_in(
            Some(self.t.lbns.name()),
            &format!("http://{ADMIN}/api/status"),
            &[],
        )
        .expect("curl");
        assert_eq!(r.status, 200, "/api/status: {r:?}");
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("/api/status JSON: {e}: {r:?}"))
    }

    fn frontend(&self, name: &str) -> Value {
        frontend_in(&self.status(), name)
    }

    /// The SYN counters of one VIP from `lb stats --json`.
    fn vip_stats(&self, vip: &str) -> Value {
        let (code, out, err) =
            lb_cmd(&["stats", "--instance", &self.instance, "--json"]).expect("lb stats");
        assert_eq!(code, 0, "lb stats: {err}");
        let v: Value = serde_json::from_str(&out).expect("stats JSON");
        v["vips"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["vip"] == vip))
            .cloned()
            .unwrap_or_else(|| panic!("no VIP {vip} in {v:#}"))
    }

    /// `ip -n NS link show IFACE` on the lb side.
    fn link(&self) -> String {
        let out = std::process::Command::new("ip")
            .args(["-n", self.t.lbns.name(), "link", "show", &self.t.iface])
            .output()
            .expect("ip link");
        assert!(out.status.success(), "ip link: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number `{key}` in {v:#}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The request total wrk printed (`N requests in 2.00s, ...`).
fn wrk_requests(out: &str) -> u64 {
    out.lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no total:\n{out}"))
}

#[test]
fn curl_h2load_and_wrk_through_xdp_and_the_proxy_reach_both_backends() {
    let test = "curl_h2load_and_wrk_through_xdp_and_the_proxy_reach_both_backends";
    if !ready(test) {
        return;
    }
    let mut s = setup("2s");
    assert!(s.link().contains("xdp"), "XDP attached: {}", s.link());

    // 200 curl runs to the HTTP frontend, one new connection each.
    let mut by_backend = [0u32; 2];
    for i in 0..200 {
        let r = curl_in(Some(s.client()), &format!("http://{VIP}/n/{i}"), &[]).expect("curl");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        match r.backend() {
            "b1" => by_backend[0] += 1,
            "b2" => by_backend[1] += 1,
            other => panic!("request {i} answered by {other:?}: {r:?}"),
        }
        assert!(r.body.contains(&format!("GET /n/{i}")), "{r:?}");
    }
    assert!(
        by_backend[0] > 0 && by_backend[1] > 0,
        "both backends answered: {by_backend:?}"
    );
    // 20 more to the TCP frontend: the same backends, spliced byte for byte.
    let mut via_tcp = [0u32; 2];
    for i in 0..20 {
        let r = curl_in(Some(s.client()), &format!("http://{VIP}:81/t/{i}"), &[]).expect("curl");
        assert_eq!(r.status, 200, "tcp-mode request {i}: {r:?}");
        assert!(r.body.contains(&format!("GET /t/{i}")), "{r:?}");
        match r.backend() {
            "b1" => via_tcp[0] += 1,
            "b2" => via_tcp[1] += 1,
            other => panic!("tcp-mode request {i} answered by {other:?}: {r:?}"),
        }
    }
    assert!(
        via_tcp[0] > 0 && via_tcp[1] > 0,
        "tcp mode: both backends: {via_tcp:?}"
    );

    // h2load: 2000 requests on 10 connections, from the client namespace.
    let url = format!("http://{VIP}/load");
    let load: Load = run_in(s.client(), move || {
        h2load(&url, &["--h1", "-n", "2000", "-c", "10"])
    })
    .expect("h2load");
    assert_eq!(
        (load.succeeded, load.failed, load.status_2xx),
        (2000, 0, 2000),
        "h2load: {load:?}"
    );

    // wrk: 2 s on 10 connections.
    let out =
        s.t.client
            .cmd("timeout")
            .args(["60", "wrk", "-t1", "-c10", "-d2s"])
            .arg(format!("http://{VIP}/wrk"))
            .output()
            .expect("wrk");
    let wrk = text(&out);
    assert!(out.status.success(), "wrk: {wrk}");
    let wrk_total = wrk_requests(&wrk);
    assert!(wrk_total > 0, "wrk made requests:\n{wrk}");
    assert!(!wrk.contains("Non-2xx"), "wrk saw errors:\n{wrk}");
    assert!(
        !wrk.contains("Socket errors"),
        "wrk saw socket errors:\n{wrk}"
    );

    // The data plane admitted every SYN: at least one per curl run (200),
    // h2load connection (10) and wrk connection (10), and dropped none.
    let web = s.vip_stats(&format!("{VIP}:80"));
    assert!(num(&web, "admitted") >= 220, "{web:#}");
    assert_eq!(num(&web, "dropped"), 0, "{web:#}");
    let raw = s.vip_stats(&format!("{VIP}:81"));
    assert!(num(&raw, "admitted") >= 20, "{raw:#}");
    assert_eq!(num(&raw, "dropped"), 0, "{raw:#}");
    eprintln!(
        "{test}: curl by backend {by_backend:?}, tcp mode {via_tcp:?}, wrk {wrk_total} requests; \
         SYNs admitted :80 {}, :81 {}",
        web["admitted"], raw["admitted"]
    );

    // lb's counters agree with the clients and the backends.
    let http_requests = 200 + 2000 + wrk_total;
    let f = s.frontend("web");
    assert!(num(&f, "accepted") >= 220, "{f:#}");
    assert!(num(&f["responses"], "2xx") >= http_requests, "{f:#}");
    for class in ["4xx", "5xx"] {
        assert_eq!(num(&f["responses"], class), 0, "{class}: {f:#}");
    }
    assert_eq!(num(&f, "backendFailed"), 0, "{f:#}");
    let f = s.frontend("raw");
    assert_eq!(num(&f, "accepted"), 20, "{f:#}");
    assert_eq!(num(&f, "backendFailed"), 0, "{f:#}");
    let seen = s.b1.requests() + s.b2.requests();
    assert!(
        seen >= http_requests + 20,
        "backends saw {seen}, clients got {} answers",
        http_requests + 20
    );
    // Stop it the clean way: after a SIGKILL (what dropping `Lb` does) the
    // pins are left to `lb`'s janitor, which sometimes leaves them behind.
    let code = s.lb.stop(libc::SIGTERM).expect("lb exits");
    assert_eq!(code, Some(0), "exit code; log:\n{}", s.lb.log());
}

#[test]
fn sigterm_finishes_the_request_in_flight_and_leaves_no_xdp_program() {
    let test = "sigterm_finishes_the_request_in_flight_and_leaves_no_xdp_program";
    if !ready(test) {
        return;
    }
    let mut s = setup("10s");
    assert!(s.link().contains("xdp"), "XDP attached: {}", s.link());

    // A few requests on each frontend.
    for i in 0..10 {
        for port in [80, 81] {
            let r =
                curl_in(Some(s.client()), &format!("http://{VIP}:{port}/{i}"), &[]).expect("curl");
            assert_eq!(r.status, 200, ":{port} request {i}: {r:?}");
        }
    }
    assert_eq!(
        s.b1.requests() + s.b2.requests(),
        20,
        "the backends saw every request"
    );
    assert!(s.b1.requests() > 0 && s.b2.requests() > 0);

    // A slow request in flight when SIGTERM arrives still gets its answer.
    let before = s.b1.requests() + s.b2.requests();
    let slow = {
        let client = s.client().to_owned();
        std::thread::spawn(move || {
            curl_in(Some(&client), &format!("http://{VIP}/slow?ms=1500"), &[]).expect("curl")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.b1.requests() + s.b2.requests() == before {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached a backend"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let code = s.lb.stop(libc::SIGTERM).expect("lb exits");
    assert_eq!(code, Some(0), "exit code; log:\n{}", s.lb.log());
    let r = slow.join().expect("slow curl");
    assert_eq!(r.status, 200, "the in-flight request finished: {r:?}");

    // Nothing is left: no XDP program, no pins, no listener.
    let link = s.link();
    assert!(
        !link.contains("xdp"),
        "no XDP program after SIGTERM: {link}"
    );
    assert!(
        !std::path::Path::new("/sys/fs/bpf/lb")
            .join(&s.instance)
            .exists(),
        "pins removed"
    );
    let r = curl_in(
        Some(s.client()),
        &format!("http://{VIP}/"),
        &["--max-time", "5"],
    )
    .expect("curl");
    assert_eq!(r.exit, 7, "connection refused once lb is gone: {r:?}");
}
