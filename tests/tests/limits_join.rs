//! Shared pool accounting across processes (needs root): an `lb run --join`
//! started beside a running `lb` shares its pinned `pool_state` map and its
//! listening address, the two enforce one `maxConn`, and the joined one
//! takes the instance over (pins, XDP) when the old one exits. Also
//! `xdp.overflow = "rst"`: a saturated pool's VIP refuses connects in XDP.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    backend::HttpBackend,
    client::{curl_in, Reply},
    have_root,
    lb::Lb,
    netns::{Netns, Topology},
    ScratchDir,
};

const VIP: &str = "198.18.0.1:8080";

fn topo() -> Topology {
    Topology::new("lbj", &["198.18.0.2/24"], &["198.18.0.1/24"]).expect("namespaces")
}

fn config(instance: &str, iface: &str, admin: &str, backend: SocketAddr, extra: &str) -> String {
    format!(
        r#"[global]
instance = "{instance}"
drainTimeout = "10s"
[xdp]
iface = "{iface}"
mode = "driver"
{extra}
[admin]
listen = "{admin}"
[[frontend]]
name = "web"
listen = "{VIP}"
pool = "p"
[[pool]]
name = "p"
profile = "one"
backends = ["{backend}"]
queue = {{ depth = 5, timeout = "8s" }}
[profile.one]
maxConn = 1
"#
    )
}

fn status_in(ns: &Netns, admin: &str) -> serde_json::Value {
    let r = curl_in(Some(ns.name()), &format!("http://{admin}/api/status"), &[]).expect("curl");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn pool_conns(ns: &Netns, admin: &str) -> (u64, u64) {
    let s = status_in(ns, admin);
    let c = &s["pools"][0]["conns"];
    (
        c["active"].as_u64().unwrap_or(99),
        c["queued"].as_u64().unwrap_or(99),
    )
}

fn curl_later(ns: String, path: &'static str) -> std::thread::JoinHandle<(Reply, Instant)> {
    std::thread::spawn(move || {
        let r = curl_in(Some(&ns), &format!("http://{VIP}{path}"), &[]).expect("curl");
        (r, Instant::now())
    })
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_joined_process_shares_one_max_conn_with_the_old_one_and_takes_over_when_it_exits() {
    if !have_root("a_joined_process_shares_one_max_conn") {
        return;
    }
    let t = topo();
    let dir = ScratchDir::new("lb-join");
    let b = HttpBackend::start(
        "a",
        "198.18.0.1:0".parse().expect("addr"),
        Some(t.lbns.name()),
    )
    .expect("backend");
    let instance = format!("join{}", t.tag);
    let (admin_a, admin_b) = ("127.0.0.1:9181", "127.0.0.1:9182");
    let mut old = Lb::start(
        Some(&t.lbns),
        &dir.join("a.toml"),
        &config(&instance, &t.iface, admin_a, b.addr, ""),
    )
    .expect("old lb");
    // Without --join a second process is refused, as before.
    let refused = Lb::start(
        Some(&t.lbns),
        &dir.join("c.toml"),
        &config(&instance, &t.iface, "127.0.0.1:9183", b.addr, ""),
    );
    let err = format!("{:#}", refused.err().expect("a second lb is refused"));
    assert!(err.contains("already running"), "{err}");
    let mut new = Lb::start_with(
        Some(&t.lbns),
        &dir.join("b.toml"),
        &config(&instance, &t.iface, admin_b, b.addr, ""),
        &["--join"],
    )
    .expect("joined lb");
    assert!(
        new.log().contains("joined the running instance"),
        "{}",
        new.log()
    );

    // A request through the old process holds the pool's one slot: the new
    // process sees it in the shared map.
    let client = t.client.name().to_owned();
    let held = curl_later(client.clone(), "/slow?ms=2500");
    wait_for("the slot taken", || pool_conns(&t.lbns, admin_a) == (1, 0));
    // Attached and bound, the old process holds no capability any more;
    // the joined one keeps what taking over needs.
    assert_eq!(
        status_in(&t.lbns, admin_a)["capabilities"],
        serde_json::json!([])
    );
    // Every thread of it: capabilities are per thread.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", old.pid())).expect("tasks");
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(str::trim)
            .unwrap_or("?")
            .to_owned();
        assert_eq!(
            eff,
            "0000000000000000",
            "thread {:?}: {status}",
            task.path()
        );
    }
    let kept = status_in(&t.lbns, admin_b)["capabilities"].to_string();
    assert!(
        kept.contains("CAP_BPF")
            && kept.contains("CAP_NET_ADMIN")
            && !kept.contains("CAP_NET_BIND_SERVICE"),
        "{kept}"
    );
    assert_eq!(
        pool_conns(&t.lbns, admin_b),
        (1, 0),
        "one count, two processes"
    );
    // The count is in the pinned map, with field names for bpftool (not
    // saturated: the queue has room).
    let dump = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(format!("/sys/fs/bpf/lb/{instance}/pool_state"))
        .output()
        .expect("bpftool");
    let dump: serde_json::Value = serde_json::from_slice(&dump.stdout).expect("bpftool JSON");
    let pool = dump
        .as_array()
        .and_then(|a| a.iter().find(|e| e["formatted"]["key"] == 257))
        .map(|e| e["formatted"]["value"].clone())
        .unwrap_or_default();
    assert_eq!(
        pool,
        serde_json::json!({"active": 1, "queued": 0, "limit": 1, "saturated": 0}),
        "pool_state slot 257 (the first pool)"
    );

    // The old process stops accepting and drains; new connections reach the
    // new one, which must wait for the old one's slot.
    let stopping = std::thread::spawn(move || {
        let code = old.stop(libc::SIGTERM).expect("old exits");
        (code, old.log())
    });
    std::thread::sleep(Duration::from_millis(300));
    let waiter = curl_later(client, "/slow?ms=1");
    wait_for("the new process's waiter queued", || {
        pool_conns(&t.lbns, admin_b) == (1, 1)
    });
    let (h, held_at) = held.join().expect("held");
    let (w, waited_at) = waiter.join().expect("waiter");
    assert_eq!((h.status, w.status), (200, 200), "{h:?} {w:?}");
    assert!(
        waited_at >= held_at,
        "the joined process admitted its request only after the old one's ended"
    );
    let (code, old_log) = stopping.join().expect("stopping");
    assert_eq!(code, Some(0), "{old_log}");

    // The new process owns the instance now: pins and XDP are its own.
    wait_for("the take-over", || {
        new.log().contains("owns the instance now")
    });
    let pins = std::path::Path::new("/sys/fs/bpf/lb").join(&instance);
    assert!(pins.join("pool_state").exists(), "{}", new.log());
    assert!(t.lbns.xdp_attached(&t.iface), "{}", new.log());
    let r = curl_in(Some(t.client.name()), &format!("http://{VIP}/"), &[]).expect("curl");
    assert_eq!(r.status, 200);
    assert_eq!(
        status_in(&t.lbns, admin_b)["capabilities"],
        serde_json::json!([]),
        "taken over: nothing kept"
    );

    // A process joined with the same config (the same admin address) waits
    // for the admin listener too, and serves it once the other has gone.
    let mut newer = Lb::start_with(
        Some(&t.lbns),
        &dir.join("b2.toml"),
        &config(&instance, &t.iface, admin_b, b.addr, ""),
        &["--join"],
    )
    .expect("a second joined lb with the same admin address");
    assert!(
        newer.log().contains("admin listener busy"),
        "{}",
        newer.log()
    );
    assert_eq!(new.stop(libc::SIGTERM).expect("exit"), Some(0));
    wait_for("the admin listener taken over", || {
        newer.log().contains("owns the instance now")
            && curl_in(
                Some(t.lbns.name()),
                &format!("http://{admin_b}/api/status"),
                &[],
            )
            .is_ok_and(|r| r.status == 200)
    });
    assert_eq!(newer.stop(libc::SIGTERM).expect("exit"), Some(0));
    assert!(!pins.exists(), "pins removed by the last owner");
    assert!(!t.lbns.xdp_attached(&t.iface));
}

#[test]
fn overflow_rst_refuses_connects_to_a_saturated_pool_in_xdp() {
    if !have_root("overflow_rst_refuses_connects") {
        return;
    }
    let t = topo();
    let dir = ScratchDir::new("lb-join");
    let b = HttpBackend::start(
        "a",
        "198.18.0.1:0".parse().expect("addr"),
        Some(t.lbns.name()),
    )
    .expect("backend");
    let instance = format!("ovf{}", t.tag);
    let admin = "127.0.0.1:9184";
    let text = config(&instance, &t.iface, admin, b.addr, "overflow = \"rst\"")
        .replace("queue = { depth = 5, timeout = \"8s\" }\n", "");
    let mut lb = Lb::start(Some(&t.lbns), &dir.join("lb.toml"), &text).expect("lb");
    // A veth delivers what XDP sends back (XDP_TX) only to a peer that runs
    // XDP itself (a NIC needs nothing of the kind): an empty program there.
    let peer = format!("vc{}", t.tag);
    let _peer_xdp = lb_tests::netns::run_in(t.client.name(), move || {
        let mut p = lb::xdp::DataPlane::load()?;
        p.attach_program(
            lb_common::programs::XDP_EMPTY,
            &peer,
            lb::config::XdpMode::Driver,
        )?;
        Ok(p)
    })
    .expect("an XDP program on the client's veth");
    let connect = |ns: &str| {
        lb_tests::netns::run_in(ns, || {
            let t0 = Instant::now();
            let r = std::net::TcpStream::connect_timeout(
                &VIP.parse().expect("vip"),
                Duration::from_secs(3),
            );
            Ok((r.map(drop).map_err(|e| e.kind()), t0.elapsed()))
        })
        .expect("in the client namespace")
    };
    assert!(
        connect(t.client.name()).0.is_ok(),
        "not saturated: connects"
    );
    // The pool's one slot taken and no queue: saturated.
    let held = curl_later(t.client.name().to_owned(), "/slow?ms=2000");
    wait_for("saturation", || pool_conns(&t.lbns, admin) == (1, 0));
    let (refused, took) = connect(t.client.name());
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "a RST from XDP"
    );
    assert!(
        took < Duration::from_millis(900),
        "at once, not a SYN retry: {took:?}"
    );
    // `lb stats` shows the pool's counts from the pinned map, saturated.
    let (code, out, err) =
        lb_tests::lb::lb_cmd(&["stats", "--instance", &instance]).expect("lb stats");
    assert_eq!(code, 0, "{err}");
    let pool_line: Vec<&str> = out
        .lines()
        .find(|l| l.trim_start().starts_with("pool #0"))
        .map(|l| l.split_whitespace().skip(2).collect())
        .unwrap_or_default();
    assert_eq!(
        pool_line,
        ["1", "1", "0", "1"],
        "limit active queued saturated:\n{out}"
    );
    assert_eq!(held.join().expect("held").0.status, 200);
    wait_for("the slot back", || pool_conns(&t.lbns, admin) == (0, 0));
    assert!(connect(t.client.name()).0.is_ok(), "connects again");
    let (code, out, err) =
        lb_tests::lb::lb_cmd(&["stats", "--instance", &instance, "--json"]).expect("lb stats");
    assert_eq!(code, 0, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert!(
        stats.to_string().contains("\"overflow\":1"),
        "one SYN refused by overflow: {stats}"
    );
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}
