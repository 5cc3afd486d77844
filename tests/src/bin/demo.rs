//! `cargo xtask demo`: the XDP SYN limiter at work, in two network
//! namespaces made here and removed on exit (also on Ctrl-C or failure).
//!
//! A client namespace holds a legitimate client (198.18.0.3) and a flooder
//! (198.18.0.2); the lb namespace holds the VIP 198.18.0.1:80, `lb` attached
//! in native XDP mode to its veth and proxying the VIP to two real HTTP
//! backends (198.18.0.1:9001 and :9002). The demo runs normal traffic (real
//! HTTP requests with curl), a single-source SYN flood while the client keeps
//! making requests, then a spoofed-source flood, and prints after each what
//! `lb` refused, by which level, from its pinned maps, and which backends
//! served the requests.

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use lb_tests::{
    backend::HttpBackend,
    client::curl_in,
    lb::{lb_bin, Lb},
    netns::{cmd_in, Topology},
};

const VIP: &str = "198.18.0.1";
const FLOODER: &str = "198.18.0.2";
const CLIENT: &str = "198.18.0.3";
const INSTANCE: &str = "demo";

fn config(iface: &str) -> String {
    format!(
        r#"# The demo's lb.toml
[global]
instance = "{INSTANCE}"

[xdp]
iface = "{iface}"
mode = "driver"
sourceSynRate = 200      # SYN/s from any one address
sourceSynBurst = 200

[[frontend]]
name = "web"
listen = "{VIP}:80"
pool = "api"

[[pool]]
name = "api"
profile = "demo"
backends = ["{VIP}:9001", "{VIP}:9002"]
health = {{ kind = "http", path = "/health", interval = "1s" }}

[profile.demo]
maxConnRate = 1000       # SYN/s to the pool, all sources together
"#
    )
}

fn stats() -> Result<String> {
    let out = Command::new(lb_bin())
        .args(["stats", "--instance", INSTANCE])
        .output()
        .context("lb stats")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn vip_json() -> Result<serde_json::Value> {
    let out = Command::new(lb_bin())
        .args(["stats", "--instance", INSTANCE, "--json"])
        .output()
        .context("lb stats --json")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["vips"][0].clone())
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

/// What one phase added to a VIP counter.
fn delta(now: &serde_json::Value, before: &serde_json::Value, key: &str) -> u64 {
    now[key].as_u64().unwrap_or(0) - before[key].as_u64().unwrap_or(0)
}

/// `n` HTTP requests with curl from the client address, each on a new
/// connection; prints how many got 200 within a second, and from whom.
fn requests(client_ns: &str, n: u32) -> Result<()> {
    let url = format!("http://{VIP}/");
    let mut ok = 0;
    let mut by_backend = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..n {
        let r = curl_in(
            Some(client_ns),
            &url,
            &["--interface", CLIENT, "--max-time", "1"],
        )?;
        if r.status == 200 {
            ok += 1;
            *by_backend.entry(r.backend().to_owned()).or_default() += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{ok}/{n} requests answered 200 within 1 s; served by {by_backend:?}");
    Ok(())
}

fn step(title: &str) {
    println!("\n=== {title}");
}

fn main() -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&interrupted);
        // hping3 and lb get the Ctrl-C too (same process group); this process
        // then unwinds and its guards remove lb, the namespaces and the pins.
        ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    let check = || -> Result<()> {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted: cleaning up");
        }
        Ok(())
    };
    step("topology: client namespace ── veth ── lb namespace (XDP on the lb side)");
    let t = Topology::new(
        "lbdemo",
        &[&format!("{FLOODER}/24"), &format!("{CLIENT}/24")],
        &[&format!("{VIP}/24")],
    )?;
    let (client, lbns, iface, tag) = (&t.client, &t.lbns, &t.iface, &t.tag);
    println!(
        "client {CLIENT} and flooder {FLOODER} in {}; VIP {VIP}:80 in {}",
        client.name(),
        lbns.name()
    );

    let dir = std::env::temp_dir().join(format!("lb-demo-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let cfg = config(iface);
    println!("{cfg}");
    let mut lb = Lb::start(Some(lbns), &dir.join("lb.toml"), &cfg)?;
    println!(
        "lb running (pid {}), maps pinned at /sys/fs/bpf/lb/{INSTANCE}/",
        lb.pid()
    );

    // Two real HTTP backends behind the VIP, in the lb namespace.
    let backends = [
        HttpBackend::start(
            "backend-1",
            format!("{VIP}:9001").parse()?,
            Some(lbns.name()),
        )?,
        HttpBackend::start(
            "backend-2",
            format!("{VIP}:9002").parse()?,
            Some(lbns.name()),
        )?,
    ];

    check()?;
    step("1. normal traffic: 20 HTTP requests from the client through lb");
    requests(client.name(), 20)?;
    println!("{}", stats()?);

    let before = vip_json()?;
    check()?;
    step("2. SYN flood from one address (30 000 SYNs, ~10 000/s) while the client connects");
    let flood_ns = client.name().to_owned();
    let flooder = std::thread::spawn(move || flood(&flood_ns, &["-a", FLOODER], 30_000));
    std::thread::sleep(Duration::from_millis(500));
    print!("client during the flood: ");
    requests(client.name(), 20)?;
    flooder
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    let v = vip_json()?;
    println!(
        "this phase, refused in XDP: {} SYNs by the per-source limit (xdp.sourceSynRate = 200/s), \
         {} by the pool's maxConnRate; {} admitted",
        delta(&v, &before, "drop_source"),
        delta(&v, &before, "drop_pool"),
        delta(&v, &before, "admitted")
    );
    let before = v;
    println!("{}", stats()?);

    check()?;
    step("3. SYN flood from random spoofed sources (30 000 SYNs): the pool's maxConnRate holds");
    flood(client.name(), &["--rand-source"], 30_000)?;
    let v = vip_json()?;
    println!(
        "this phase, refused in XDP: {} SYNs by the pool level (profile demo, maxConnRate = \
         1000/s), {} by source (spoofed sources that repeat); {} admitted",
        delta(&v, &before, "drop_pool"),
        delta(&v, &before, "drop_source"),
        delta(&v, &before, "admitted")
    );
    println!("{}", stats()?);

    step("the same counters, straight from the kernel:");
    let dump = Command::new("bpftool")
        .args([
            "map",
            "dump",
            "pinned",
            &format!("/sys/fs/bpf/lb/{INSTANCE}/vip_stats"),
        ])
        .output()?;
    let text = String::from_utf8_lossy(&dump.stdout);
    println!("bpftool map dump pinned /sys/fs/bpf/lb/{INSTANCE}/vip_stats (first entry):");
    for line in text.lines().take(22) {
        println!("{line}");
    }

    step("cleanup");
    println!(
        "the backends served {} and {} requests",
        backends[0].requests(),
        backends[1].requests()
    );
    drop(backends);
    let code = lb.stop(libc::SIGTERM)?;
    println!("lb exited ({code:?}); XDP detached, pins removed; namespaces go next");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
