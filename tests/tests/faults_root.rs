//! The fault that needs XDP, so root: `lb` SIGKILLed while it serves a
//! load through a veth with its program attached. The kernel drops the
//! program with the process (nothing stays attached, traffic passes
//! unfiltered: a client reaches a backend straight through the same
//! interface), the janitor removes the pins, and a new `lb` pins again and
//! serves. `lifecycle.rs`'s `sigkill_leaves_nothing_attached_or_pinned_and_a_new_lb_starts`
//! proves the same of an idle `lb`; this one adds the load, the traffic
//! through the interface and the new process serving. Without root it
//! prints why it skips. It prints its figures on a `FIGURES` line
//! (`-- --nocapture`); docs/reliability.md quotes them.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use lb_tests::{
    backend::HttpBackend,
    client::curl_in,
    have_root,
    lb::Lb,
    load::{quantile, Load, Req},
    netns::{Netns, Topology},
    ScratchDir,
};

const VIP: &str = "198.18.0.1:8080";
const BACKENDS: [&str; 2] = ["198.18.0.1:9001", "198.18.0.1:9002"];

fn config(instance: &str, iface: &str) -> String {
    format!(
        r#"[global]
instance = "{instance}"
drainTimeout = "2s"
[xdp]
iface = "{iface}"
mode = "driver"
[[frontend]]
name = "web"
listen = "{VIP}"
pool = "p"
[[pool]]
name = "p"
backends = ["{}", "{}"]
"#,
        BACKENDS[0], BACKENDS[1]
    )
}

/// What `ip -d link show` says of `iface`: whether an XDP program is on it.
fn xdp_attached(ns: &Netns, iface: &str) -> bool {
    let out = ns
        .run(&["ip", "-d", "link", "show", "dev", iface])
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

#[test]
fn sigkill_under_load_leaves_no_xdp_program_traffic_passes_and_a_new_lb_repins_and_serves() {
    let test =
        "sigkill_under_load_leaves_no_xdp_program_traffic_passes_and_a_new_lb_repins_and_serves";
    if !have_root(test) {
        return;
    }
    let tmp = ScratchDir::new("lb-faults-root");
    let t = Topology::new("lbf", &["198.18.0.2/24"], &["198.18.0.1/24"]).expect("namespaces");
    let backends: Vec<HttpBackend> = ["a", "b"]
        .iter()
        .zip(BACKENDS)
        .map(|(name, addr)| {
            HttpBackend::start(name, addr.parse().expect("addr"), Some(t.lbns.name()))
                .expect("backend")
        })
        .collect();
    let instance = format!("fkill{}", t.tag);
    let pins = Path::new("/sys/fs/bpf/lb").join(&instance);
    let (cfg, text) = (tmp.join("lb.toml"), config(&instance, &t.iface));
    let mut lb = Lb::start(Some(&t.lbns), &cfg, &text).expect("lb run");
    assert!(xdp_attached(&t.lbns, &t.iface) && pins.exists());

    // 4 clients in the client namespace, through the veth and XDP.
    let vip: SocketAddr = VIP.parse().expect("vip");
    let load = Load::start(
        Some(t.client.name()),
        vip,
        4,
        Duration::from_millis(2),
        &[Req::Get("/")],
    );
    std::thread::sleep(Duration::from_secs(1));
    let (killed, kill) = (load.started().elapsed(), Instant::now());
    lb.stop(libc::SIGKILL).expect("killed");
    // The kernel drops the bpf_link with the process: nothing attached.
    assert!(
        !xdp_attached(&t.lbns, &t.iface),
        "an XDP program is still attached after SIGKILL"
    );
    // Traffic passes: a client reaches a backend straight, through the
    // same interface.
    let direct = curl_in(
        Some(t.client.name()),
        &format!("http://{}/", BACKENDS[0]),
        &["--max-time", "2"],
    )
    .expect("curl");
    assert_eq!(
        (direct.status, direct.backend()),
        (200, "a"),
        "through {} with lb dead: {direct:?}",
        t.iface
    );
    // The janitor removes the dead process's pins.
    while pins.exists() {
        assert!(
            kill.elapsed() < Duration::from_secs(5),
            "pins of the killed lb still there 5 s after the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let unpinned = kill.elapsed();
    // A new lb takes the instance: attached, pinned, serving.
    let restart = Instant::now();
    let mut again = Lb::start(Some(&t.lbns), &cfg, &text).expect("lb run after SIGKILL");
    let ready = load.started().elapsed();
    let restart_took = restart.elapsed();
    assert!(xdp_attached(&t.lbns, &t.iface), "the new lb attached");
    for map in lb_common::maps::ALL {
        assert!(pins.join(map).exists(), "the new lb pinned {map}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let all = load.stop();

    let before: Vec<_> = all.iter().filter(|o| o.at + o.took < killed).collect();
    let gap: Vec<_> = all
        .iter()
        .filter(|o| o.at + o.took >= killed && o.at < ready)
        .collect();
    let after: Vec<_> = all.iter().filter(|o| o.at >= ready).collect();
    let slowest = all.iter().map(|o| o.took).max().unwrap_or_default();
    eprintln!(
        "FIGURES sigkill: {} requests before the kill (all 200), {} in the gap ({} failed at once, \
         slowest {}), {} after the new lb was ready (all 200, p99 {}); pins gone {} after the \
         kill (checked after the direct curl), new lb ready in {}",
        before.len(),
        gap.len(),
        gap.iter().filter(|o| o.status != 200).count(),
        ms(gap.iter().map(|o| o.took).max().unwrap_or_default()),
        after.len(),
        ms(quantile(
            &after.iter().map(|o| o.took).collect::<Vec<_>>(),
            0.99
        )),
        ms(unpinned),
        ms(restart_took)
    );
    assert!(before.len() >= 20 && after.len() >= 20, "too little load");
    for o in before.iter().chain(&after) {
        assert_eq!(o.status, 200, "{o:?}");
    }
    // No client hangs on the dead process: refused or reset at once.
    assert!(
        slowest < Duration::from_secs(1),
        "a request took {}",
        ms(slowest)
    );
    assert_eq!(again.stop(libc::SIGTERM).expect("exit"), Some(0));
    assert!(!xdp_attached(&t.lbns, &t.iface) && !pins.exists());
    drop(backends);
}
