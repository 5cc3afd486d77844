//! `cargo xtask bench xdp`: what the XDP SYN limiter costs, as ratios against
//! peers measured in the same run, written to `bench/results/xdp.md`.
//!
//! 1. ns per packet through BPF_PROG_TEST_RUN (10 000 000 repeats, median of
//!    5): a SYN admitted, a SYN dropped, a non-SYN packet to the VIP and a SYN
//!    to no VIP, each beside the empty `XDP_PASS` program.
//! 2. CPU per dropped SYN during a bounded hping3 flood over a veth: the
//!    softirq time of the CPU that receives (on a veth, the sender's CPU,
//!    where hping3 is pinned) divided by packets sent, for our XDP program,
//!    nftables `ct state new ... limit rate over` in an inet input chain,
//!    nftables at the netdev ingress hook, and no protection at all.

use std::{fmt::Write as _, path::PathBuf, process::Stdio};

use anyhow::{bail, Context as _, Result};
use lb_common::programs;
use lb_tests::{
    harness::{pin_to_cpu, XdpHarness},
    lb::Lb,
    netns::{Listener, Netns, Topology},
    packet::{self, flags},
    report::{clk_tck, cpu_and_kernel, first_line, summarize, Summary},
    results::{self, Comparison, Results, Row},
};

const VIP: [u8; 4] = [10, 0, 0, 1];
const CLIENT: [u8; 4] = [192, 0, 2, 7];

struct Opts {
    out: PathBuf,
    quick: bool,
    /// Which parts to run: `packet`, `flood`, or both (default).
    part: Option<String>,
}

fn opts() -> Result<Opts> {
    let mut out = PathBuf::from("bench/results/xdp.md");
    let mut quick = false;
    let mut part = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(args.next().context("--out needs a path")?),
            "--quick" => quick = true,
            "--part" => match args.next().as_deref() {
                Some(p @ ("packet" | "flood")) => part = Some(p.to_owned()),
                other => bail!("--part {other:?}: allowed: packet, flood"),
            },
            other => bail!(
                "unknown argument `{other}`; allowed: --out PATH, --quick, --part packet|flood"
            ),
        }
    }
    Ok(Opts { out, quick, part })
}

fn fmt(s: Summary, unit: &str) -> String {
    format!("{:.1} {unit} ({:.1}–{:.1})", s.median, s.min, s.max)
}

// ---- part 1: ns per packet --------------------------------------------

/// Every bucket generous (10M/s, burst 10M): SYNs are admitted, through the
/// per-source lookup and all three levels, for all 10M repeats.
const ADMIT: &str = r#"
[global.limits]
maxConnRate = 10000000
[xdp]
mode = "off"
sourceSynRate = 10000000
sourceSynBurst = 10000000
[[frontend]]
name = "v"
listen = "10.0.0.1:80"
pool = "p"
[frontend.limits]
maxConnRate = 10000000
[[pool]]
name = "p"
profile = "x"
[profile.x]
maxConnRate = 10000000
"#;

/// One case of part 1: its id (for the JSON), its name, lb_xdp's ns per
/// packet and the empty program's beside it.
type PacketCase = (&'static str, &'static str, Summary, Summary);

fn ns_per_packet(runs: usize, repeat: u32) -> Result<Vec<PacketCase>> {
    pin_to_cpu(0)?;
    // The same, but the pool allows 1 SYN per second: after the first, every
    // SYN passes source, global and frontend and is dropped by the pool.
    let drop_cfg = ADMIT.replace(
        "[profile.x]\nmaxConnRate = 10000000",
        "[profile.x]\nmaxConnRate = 1",
    );
    let syn = packet::v4_tcp(CLIENT, VIP, 80, flags::SYN);
    let ack = packet::v4_tcp(CLIENT, VIP, 80, flags::ACK);
    let other = packet::v4_tcp(CLIENT, [10, 0, 0, 9], 80, flags::SYN);
    let cases: [(&str, &str, &str, &[u8], u32); 4] = [
        (
            "syn-admitted",
            "SYN admitted (source + 3 levels)",
            ADMIT,
            &syn,
            2,
        ),
        (
            "syn-dropped",
            "SYN dropped (by the pool level)",
            &drop_cfg,
            &syn,
            1,
        ),
        ("non-syn", "non-SYN (ACK) to the VIP", ADMIT, &ack, 2),
        ("syn-no-vip", "SYN to no VIP", ADMIT, &other, 2),
    ];
    let mut rows = Vec::new();
    for (id, name, config, pkt, verdict) in cases {
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            // Fresh buckets each run: 10M repeats spend the 10M burst.
            let mut h = XdpHarness::new(config)?;
            // Interleaved, so drift hits both alike.
            let (v, d) = h.run_program(programs::XDP_LB, pkt, repeat)?;
            if v != verdict {
                bail!("{name}: verdict {v}, expected {verdict}");
            }
            ours.push(d.as_secs_f64() * 1e9);
            let (_, e) = h.run_program(programs::XDP_EMPTY, pkt, repeat)?;
            base.push(e.as_secs_f64() * 1e9);
        }
        rows.push((id, name, summarize(ours), summarize(base)));
    }
    Ok(rows)
}

// ---- part 2: CPU per dropped SYN ----------------------------------------

const LB_IP: &str = "198.18.0.1";
const FLOOD_IP: &str = "198.18.0.2";
const PORT: u16 = 8080;
/// The CPU hping3 runs on, and so the CPU that does the receive work.
const FLOOD_CPU: usize = 1;

/// Softirq jiffies of one CPU, from /proc/stat.
fn softirq_jiffies(cpu: usize) -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with(&format!("cpu{cpu} ")))
        .context("cpu line in /proc/stat")?;
    // cpuN user nice system idle iowait irq softirq ...
    line.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .context("softirq column")
}

/// Floods SYNs as fast as hping3 goes (`--flood`, which ignores `-c`) for
/// `secs` seconds from the client namespace, on FLOOD_CPU; SIGINT ends it and
/// makes it print its count. Returns (packets sent, softirq µs per packet on
/// that CPU).
fn flood_cost(client: &Netns, secs: u32) -> Result<(u64, f64)> {
    let before = softirq_jiffies(FLOOD_CPU)?;
    let out = client
        .cmd("taskset")
        .args([
            "-c",
            &FLOOD_CPU.to_string(),
            "timeout",
            "-s",
            "INT",
            &secs.to_string(),
        ])
        .args([
            "hping3",
            "-q",
            "-S",
            "-p",
            &PORT.to_string(),
            "-a",
            FLOOD_IP,
            "--flood",
            LB_IP,
        ])
        .output()?;
    let after = softirq_jiffies(FLOOD_CPU)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: u64 = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("hping3 printed no statistics:\n{text}"))?;
    let us = (after - before) as f64 / clk_tck() * 1e6 / sent.max(1) as f64;
    Ok((sent, us))
}

/// The four ways to meet a flood.
#[derive(Clone, Copy)]
enum Guard {
    PlainDrop,
    Xdp,
    XdpSource,
    NftConntrack,
    NftIngress,
    Nothing,
}

impl Guard {
    fn name(self) -> &'static str {
        match self {
            Self::PlainDrop => "a plain XDP_DROP program (the floor of XDP on this veth)",
            Self::Xdp => {
                "lb XDP, worst path (SYN passes source, global, frontend; dropped by the pool)"
            }
            Self::XdpSource => "lb XDP, one source flooding (SYN dropped by sourceSynRate)",
            Self::NftConntrack => {
                "nftables inet input: ct state new ... limit rate over 1/second drop"
            }
            Self::NftIngress => {
                "nftables netdev ingress: tcp syn ... limit rate over 1/second drop"
            }
            Self::Nothing => {
                "no protection (the kernel's own SYN handling, a listener on the port)"
            }
        }
    }

    /// Its row name in the JSON's chart.
    fn short(self) -> &'static str {
        match self {
            Self::PlainDrop => "plain XDP_DROP",
            Self::Xdp => "lb XDP, worst path",
            Self::XdpSource => "lb XDP, one source",
            Self::NftConntrack => "nftables conntrack",
            Self::NftIngress => "nftables netdev ingress",
            Self::Nothing => "no protection",
        }
    }

    fn ruleset(self, iface: &str) -> Option<String> {
        match self {
            Self::NftConntrack => Some(format!(
                "table inet lbbench {{\n  chain input {{\n    type filter hook input priority 0;\n    \
                 ct state new tcp dport {PORT} limit rate over 1/second drop\n  }}\n}}"
            )),
            Self::NftIngress => Some(format!(
                "table netdev lbbench {{\n  chain ingress {{\n    type filter hook ingress device \"{iface}\" \
                 priority 0;\n    tcp dport {PORT} tcp flags & (syn|ack) == syn limit rate over 1/second drop\n  }}\n}}"
            )),
            Self::PlainDrop | Self::Xdp | Self::XdpSource | Self::Nothing => None,
        }
    }
}

/// `lb`'s config for a setup: the worst path (every level checked, the
/// pool drops) or a per-source drop.
fn xdp_config(iface: &str, per_source: bool) -> String {
    let source_rate = if per_source { 1 } else { 10_000_000 };
    let pool_rate = if per_source { 10_000_000 } else { 1 };
    format!(
        r#"[global]
instance = "bench{}"
[xdp]
iface = "{iface}"
mode = "driver"
sourceSynRate = {source_rate}
sourceSynBurst = 1
[[frontend]]
name = "v"
listen = "{LB_IP}:{PORT}"
pool = "p"
[frontend.limits]
maxConnRate = 10000000
[[pool]]
name = "p"
profile = "x"
[global.limits]
maxConnRate = 10000000
[profile.x]
maxConnRate = {pool_rate}
"#,
        std::process::id()
    )
}

fn cpu_per_drop(runs: usize, secs: u32) -> Result<Vec<(Guard, Summary, u64)>> {
    let t = Topology::new(
        "lbb",
        &[&format!("{FLOOD_IP}/24")],
        &[&format!("{LB_IP}/24")],
    )?;
    let (client, lbns, iface, tag) = (&t.client, &t.lbns, &t.iface, &t.tag);
    // Permanent neighbour entries both ways: no ARP during the floods (a plain
    // XDP_DROP would drop it, and its misses would slow the next setup).
    let mac = |ns: &Netns, dev: &str| -> Result<String> {
        let out = ns.run(&["ip", "-o", "link", "show", "dev", dev])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned)
            .with_context(|| format!("no MAC for {dev}: {text}"))
    };
    let client_if = format!("vc{tag}");
    let (lb_mac, client_mac) = (mac(lbns, iface)?, mac(client, &client_if)?);
    client.run(&[
        "ip",
        "neigh",
        "replace",
        LB_IP,
        "lladdr",
        &lb_mac,
        "dev",
        &client_if,
        "nud",
        "permanent",
    ])?;
    lbns.run(&[
        "ip",
        "neigh",
        "replace",
        FLOOD_IP,
        "lladdr",
        &client_mac,
        "dev",
        iface,
        "nud",
        "permanent",
    ])?;
    let dir = std::env::temp_dir().join(format!("lb-bench-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let mut results = Vec::new();
    for guard in [
        Guard::PlainDrop,
        Guard::Xdp,
        Guard::XdpSource,
        Guard::NftConntrack,
        Guard::NftIngress,
        Guard::Nothing,
    ] {
        let plain = match guard {
            Guard::PlainDrop => Some(PlainDrop::attach(lbns.name(), iface)?),
            _ => None,
        };
        // A listener on the VIP, so what passes meets the kernel's real SYN
        // handling: lb's own sockets when lb runs, else a plain one.
        let _server = match guard {
            Guard::Xdp | Guard::XdpSource => None,
            _ => Some(Listener::spawn(
                lbns.name(),
                format!("{LB_IP}:{PORT}").parse()?,
            )?),
        };
        let lb = match guard {
            Guard::Xdp | Guard::XdpSource => Some(Lb::start(
                Some(lbns),
                &dir.join("lb.toml"),
                &xdp_config(iface, matches!(guard, Guard::XdpSource)),
            )?),
            _ => None,
        };
        if let Some(rules) = guard.ruleset(iface) {
            let mut nft = lbns
                .cmd("nft")
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .spawn()?;
            std::io::Write::write_all(nft.stdin.as_mut().context("nft stdin")?, rules.as_bytes())?;
            if !nft.wait()?.success() {
                bail!("nft refused: {rules}");
            }
        }
        let (mut v, mut sent_total) = (Vec::new(), 0);
        for _ in 0..runs {
            let (sent, us) = flood_cost(client, secs)?;
            sent_total += sent;
            v.push(us);
        }
        results.push((guard, summarize(v), sent_total));
        if guard.ruleset(iface).is_some() {
            lbns.run(&["nft", "flush", "ruleset"])?;
        }
        if let Some(mut lb) = lb {
            lb.stop(libc::SIGTERM)?;
        }
        drop(plain);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(results)
}

/// `lb_xdp_drop` attached to the lb side's veth, from a thread inside the
/// lb namespace (interface indexes are per namespace), until dropped.
struct PlainDrop {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PlainDrop {
    fn attach(ns: &str, iface: &str) -> Result<Self> {
        let (ns, iface) = (ns.to_owned(), iface.to_owned());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let attached = lb_tests::netns::enter(&ns).and_then(|()| {
                let mut h = XdpHarness::new("[xdp]\nmode = \"off\"\n")?;
                h.attach(programs::XDP_DROP_ALL, &iface)?;
                Ok(h)
            });
            match attached {
                Ok(h) => {
                    let _ = ready_tx.send(Ok(()));
                    let _ = stop_rx.recv();
                    drop(h);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                }
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => bail!("attaching lb_xdp_drop: {e}"),
            Err(_) => bail!("the lb_xdp_drop thread died"),
        }
    }
}

impl Drop for PlainDrop {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- the report ----------------------------------------------------------

fn machine() -> String {
    format!(
        "{}- hping3: {}\n- nft: {}\n",
        cpu_and_kernel(),
        first_line("dpkg-query", &["-W", "-f=${Version}", "hping3"]),
        first_line("nft", &["--version"]),
    )
}

fn main() -> Result<()> {
    let o = opts()?;
    let (runs, repeat, secs) = if o.quick {
        (1, 1_000_000, 1)
    } else {
        (5, 10_000_000, 5)
    };
    let want = |p: &str| o.part.as_deref().is_none_or(|only| only == p);
    let per_packet = if want("packet") {
        eprintln!("bench xdp: ns per packet ({runs} × {repeat} repeats per case)");
        ns_per_packet(runs, repeat)?
    } else {
        Vec::new()
    };
    let per_drop = if want("flood") {
        eprintln!("bench xdp: CPU per dropped SYN ({runs} × {secs} s floods per setup)");
        cpu_per_drop(runs, secs)?
    } else {
        Vec::new()
    };

    let mut md = String::new();
    let _ = writeln!(md, "# XDP data plane benchmark\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench xdp{}`. Median of {runs} runs, range in brackets.\n",
        if o.quick { " --quick" } else { "" }
    );
    if o.quick {
        let _ = writeln!(
            md,
            "**Quick run: too short to read anything into; it only proves the harness works.**\n"
        );
    }
    let machine = machine();
    let _ = writeln!(md, "## Machine\n\n{machine}");
    let _ = writeln!(
        md,
        "## ns per packet (BPF_PROG_TEST_RUN, {repeat} repeats a run, CPU 0)\n\n\
         Each case beside the empty `XDP_PASS` program (`lb_xdp_empty` in the same object), \
         run interleaved with it.\n\n\
         | packet | lb_xdp | empty program | ratio |\n|---|---|---|---|"
    );
    for (_, name, ours, base) in &per_packet {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {:.2}× |",
            fmt(*ours, "ns"),
            fmt(*base, "ns"),
            ours.median / base.median
        );
    }
    let _ = writeln!(
        md,
        "\nTargets: non-SYN ≤ 2× the empty program; SYN decision (admit or drop, with the \
         per-source lookup) ≤ 6×.\n"
    );
    let _ = writeln!(
        md,
        "## CPU per dropped SYN (hping3 --flood over a veth, {secs} s a run)\n\n\
         Softirq time of CPU {FLOOD_CPU} (where hping3 runs; on a veth the receive work runs on \
         the sender's CPU) from /proc/stat, divided by SYNs sent. Resolution is one jiffy \
         ({:.0} ms) per run. On a veth XDP still pays for the skb the sender built; on a real NIC \
         it runs before any skb exists.\n\n\
         | setup | µs per SYN | vs lb XDP |\n|---|---|---|",
        1000.0 / clk_tck()
    );
    let xdp = per_drop
        .iter()
        .find(|r| matches!(r.0, Guard::Xdp))
        .map_or(1.0, |r| r.1.median);
    for (guard, s, sent) in &per_drop {
        let _ = writeln!(
            md,
            "| {} ({sent} SYNs) | {} | {:.2}× |",
            guard.name(),
            fmt(*s, "µs"),
            s.median / xdp
        );
    }
    let median_of = |g: fn(&Guard) -> bool| {
        per_drop
            .iter()
            .find(|r| g(&r.0))
            .map_or(f64::NAN, |r| r.1.median)
    };
    let ratio = |g: fn(&Guard) -> bool| {
        per_drop
            .iter()
            .find(|r| g(&r.0))
            .map_or(f64::NAN, |r| xdp / r.1.median)
    };
    let (vs_conntrack, vs_ingress) = (
        ratio(|g| matches!(g, Guard::NftConntrack)),
        ratio(|g| matches!(g, Guard::NftIngress)),
    );
    let _ = writeln!(
        md,
        "\nlb XDP per dropped SYN, worst path: {:.2}× the conntrack rule (target ≤ 0.5×), \
         {:.2}× the netdev ingress rule (target ≤ 1.1×), {:.2}× no protection, {:.2}× a plain \
         XDP_DROP. One source flooding (dropped by sourceSynRate): {:.2}× the netdev ingress \
         rule.\n\n\
         On a veth, native XDP turns each skb the sender built into an xdp_buff; a locally built \
         skb (kmalloc'd head, little headroom) is copied into a fresh page for it, which the \
         netdev hook never pays. The plain XDP_DROP row is that floor: what lb's program adds on \
         top of it is its own cost.\n",
        vs_conntrack,
        vs_ingress,
        ratio(|g| matches!(g, Guard::Nothing)),
        ratio(|g| matches!(g, Guard::PlainDrop)),
        median_of(|g| matches!(g, Guard::XdpSource))
            / median_of(|g| matches!(g, Guard::NftIngress)),
    );
    let commands = [
        "cargo xtask bench xdp".to_owned(),
        format!(
            "taskset -c {FLOOD_CPU} timeout -s INT {secs} hping3 -q -S -p {PORT} -a {FLOOD_IP} \
             --flood {LB_IP}"
        ),
        format!("bpftool prog run id ID data_in syn.bin repeat {repeat}"),
    ];
    let rulesets = [
        Guard::NftConntrack.ruleset("IFACE").unwrap_or_default(),
        Guard::NftIngress.ruleset("IFACE").unwrap_or_default(),
    ];
    let _ = writeln!(
        md,
        "## Rerun by hand\n\n\
         ```\n{}\n# one flood, as the harness runs it (client namespace, CPU {FLOOD_CPU}):\n{}\n\
         # one test run, with the object's program loaded by bpftool:\n{}\n```\n\n\
         Peer rulesets:\n\n```\n{}\n{}\n```",
        commands[0], commands[1], commands[2], rulesets[0], rulesets[1],
    );
    let results = Results {
        bench: "xdp".into(),
        title: "XDP data plane benchmark".into(),
        quick: o.quick,
        runs,
        comparisons: comparisons(&per_packet, &per_drop, repeat, secs),
        targets: targets(&per_packet, &per_drop, vs_conntrack, vs_ingress),
        versions: versions(&machine),
        commands: commands
            .into_iter()
            .chain(
                rulesets
                    .iter()
                    .map(|r| format!("nft -f - <<'EOF'\n{r}\nEOF")),
            )
            .collect(),
    };
    if let Some(parent) = o.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&o.out, &md)?;
    results::write(&o.out, &results)?;
    print!("{md}");
    eprintln!(
        "bench xdp: wrote {} and {}",
        o.out.display(),
        results::json_path(&o.out).display()
    );
    Ok(())
}

// ---- the JSON ------------------------------------------------------------

/// The `- what: version` lines of the machine description, without the
/// CPU and the kernel (the combined report describes the machine itself).
fn versions(machine: &str) -> Vec<(String, String)> {
    machine
        .lines()
        .filter_map(|l| l.strip_prefix("- ")?.split_once(": "))
        .filter(|(what, _)| !matches!(*what, "CPU" | "kernel"))
        .map(|(what, v)| (what.to_owned(), v.to_owned()))
        .collect()
}

/// One chart per packet case (lb_xdp beside the empty program run
/// interleaved with it, so each ratio is the table's), and one of CPU per
/// dropped SYN with lb's worst path as the baseline (the table's
/// `vs lb XDP` column).
fn comparisons(
    per_packet: &[PacketCase],
    per_drop: &[(Guard, Summary, u64)],
    repeat: u32,
    secs: u32,
) -> Vec<Comparison> {
    let mut out: Vec<Comparison> = per_packet
        .iter()
        .map(|(id, name, ours, base)| Comparison {
            id: format!("xdp-ns-per-packet-{id}"),
            title: format!("ns per packet, {name} (BPF_PROG_TEST_RUN, {repeat} repeats a run)"),
            unit: "ns".into(),
            lower_is_better: true,
            baseline: Some("empty program".into()),
            rows: vec![Row::new("lb_xdp", *ours), Row::new("empty program", *base)],
        })
        .collect();
    if !per_drop.is_empty() {
        out.push(Comparison {
            id: "xdp-cpu-per-dropped-syn".into(),
            title: format!(
                "Softirq CPU µs per SYN during a hping3 flood over a veth ({secs} s a run)"
            ),
            unit: "µs".into(),
            lower_is_better: true,
            baseline: Some(Guard::Xdp.short().into()),
            rows: per_drop
                .iter()
                .map(|(g, s, _)| Row::new(g.short(), *s))
                .collect(),
        });
    }
    out
}

fn targets(
    per_packet: &[PacketCase],
    per_drop: &[(Guard, Summary, u64)],
    vs_conntrack: f64,
    vs_ingress: f64,
) -> Vec<results::Target> {
    let target = |what: String, bound: f64, r: f64| results::Target {
        what,
        bound: format!("≤ {bound}×"),
        measured: format!("{r:.2}×"),
        met: r <= bound,
    };
    let mut out = Vec::new();
    for (id, name, ours, base) in per_packet {
        let bound = match *id {
            "non-syn" => 2.0,
            "syn-admitted" | "syn-dropped" => 6.0,
            _ => continue,
        };
        out.push(target(
            format!("XDP ns per packet, {name}, vs the empty program"),
            bound,
            ours.median / base.median,
        ));
    }
    if !per_drop.is_empty() {
        out.push(target(
            "XDP CPU per dropped SYN (worst path) vs nftables conntrack `limit rate`".into(),
            0.5,
            vs_conntrack,
        ));
        out.push(target(
            "XDP CPU per dropped SYN (worst path) vs nftables netdev ingress `limit rate`".into(),
            1.1,
            vs_ingress,
        ));
    }
    out
}
