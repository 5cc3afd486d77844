//! `cargo xtask bench flood`: how much of their calm rate real HTTPS clients
//! keep while a SYN flood hits the VIP, for `lb` and for HAProxy behind
//! nftables, measured in one run on this machine and written to
//! `bench/results/flood.md` (and `flood.json` beside it).
//!
//! Why: a proxy's answer to a SYN flood is not its own CPU time but what it
//! leaves to the clients that are not flooding. `lb` drops a flood in XDP,
//! per source (`[xdp] sourceSynRate`) and per VIP (the pool's `maxConnRate`);
//! the operator's recipe for HAProxy is an nftables rule in front of it. The
//! figure that compares them is the share of their calm throughput real
//! clients keep during the flood, each setup measured against itself.
//!
//! How: a client namespace and a server namespace joined by a veth; the VIP
//! 198.18.0.1:8443 and a plain HTTP nginx backend in the server namespace.
//! Setups, one at a time, the order rotating each round: `lb` (release
//! binary, TLS with an RSA-4096 certificate, XDP on the server's veth,
//! `sourceSynRate`, otherwise the default pool profile), `lb` with the
//! pool's `maxConnRate` off, and HAProxy (same certificate) behind an
//! nftables per-source meter, behind one global nftables limit, and with no
//! filter. Each runs one worker on CPU 0; nginx, `ab` and the flood run on
//! CPU 1. The veths' receive work runs in threaded NAPI (GRO on, TSO off,
//! so every packet takes that path, with XDP or without), the server side's
//! thread pinned to CPU 0 and the client side's to CPU 1, SCHED_FIFO as a
//! NIC's softirq preempts the process it interrupts: without that a veth
//! does a received packet's work on the sending CPU, and the server's whole
//! cost of the flood (XDP, nftables, the kernel's SYN handling) would land
//! on the load generator's CPU. SYN-ACKs to spoofed sources leave the
//! server and are dropped at its veth's egress, as if sent to the internet.
//!
//! Per round and setup: `ab` calm, `ab` during a flood from one (spoofed)
//! source, calm, `ab` during a flood from random sources, calm; `ab` opens a
//! new TLS connection per request, 4 at a time, the load a SYN flood hurts.
//! Kept = the flood phase's requests/s over the mean of the calm phases
//! before and after it. Each flood is 20 000 SYNs/s, bounded in count and
//! time, from this program's own generator (`--syn-flood`, run as a child in
//! the client namespace, about 4 µs of CPU a SYN): hping3 at `-i u20` spends
//! ten times that (a timer sleep per packet), which would take most of CPU 1
//! from `ab` whatever the server does. Every process started here is killed
//! by pid, the namespaces (and with them the nftables tables, the veths and
//! their NAPI threads) are removed, also when the run fails or is
//! interrupted. Without root it writes nothing and says why.
//!
//! Why RSA-4096: kept is a measure of the server only when the server is
//! what sets the rate. With the ECDSA P-256 certificate of the other
//! benchmarks, ab's side of a handshake (OpenSSL 3, about 1.1 ms of CPU a
//! request here) costs several times the server's (lb about 0.25 ms), so
//! CPU 1 saturated with CPU 0 half idle, and a setup kept what the flood
//! left of CPU 1, whatever the flood cost the server. An RSA signature is
//! expensive to make and cheap to check: the server's handshake (about
//! 5 ms of CPU) now outweighs ab's, CPU 0 is the one saturated, and the
//! flood's cost to the server is what the figure shows, as on a busy
//! server with many clients.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use lb_tests::{
    harness::pin_to_cpu,
    netns::{Netns, Topology},
    peers::{
        argv, background_load, busy_pct, cpu_ticks, lb_bin, make_rsa_cert, nginx_argv, run,
        shell_line, stat_fields, Cert, Daemon, Scratch, CERT_NAME,
    },
    report::{clk_tck, cpu_and_kernel, first_line, fmt, ratio, summarize},
    results::{self, Comparison, Results, Row},
};

/// Where the system under test runs (one worker), and the server veth's
/// receive work.
const SUT_CPU: usize = 0;
/// Where nginx, ab, the flood and the client veth's receive work run.
const LOAD_CPU: usize = 1;
const VIP_IP: &str = "198.18.0.1";
const PORT: u16 = 8443;
const CLIENT_IP: &str = "198.18.0.2";
/// The veth's subnet.
const SUBNET: &str = "198.18.0.0/24";
const BACKEND_PORT: u16 = 18280;
/// The one-source flood's (spoofed) address: outside the veth's subnet, so
/// the SYN-ACKs to it leave by the default route, as to the internet.
const FLOODER: &str = "203.0.113.7";
/// The nftables table that drops, on the server veth's way out, what goes
/// to an address outside the veth's subnet (SYN-ACKs to spoofed sources).
const SINK_TABLE: &str = "lbsink";
/// Per-source SYN rate and burst, for lb and for the nftables meter: above
/// what the real client (ab, one address) opens a second, a tenth of the
/// one-source flood.
const SOURCE_RATE: u32 = 2000;
/// The global nftables limit: lb's default pool `maxConnRate` (burst one
/// second's worth, as lb's).
const GLOBAL_RATE: u32 = 10_000;
/// SYNs a second of each flood: twice the pool's default budget, ten times
/// the per-source rate.
const FLOOD_RATE: u32 = 20_000;
/// ab's concurrency.
const CONC: u32 = 4;
/// The nftables table every filtered setup loads in the server namespace.
const NFT_TABLE: &str = "lbflood";
/// Priority of the NAPI threads (SCHED_FIFO).
const NAPI_PRIO: u32 = 50;
/// Busy % of a CPU before the run above which the report says it is unreliable.
const BACKGROUND_LIMIT: f64 = 5.0;
/// The row the others are compared against.
const BASELINE: &str = "HAProxy + nftables (per-source meter)";
/// The certificate's RSA key size (see the module's doc).
const RSA_BITS: u32 = 4096;

// ---- interruption ----------------------------------------------------------

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT and SIGTERM end the run between phases, through the guards.
fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

fn check_stop() -> Result<()> {
    ensure!(!STOP.load(Ordering::Relaxed), "interrupted: cleaning up");
    Ok(())
}

// ---- options and plan ------------------------------------------------------

struct Opts {
    out: PathBuf,
    quick: bool,
    /// `--syn-flood --from ADDR|random --rate R --secs S [--to IP:PORT]`:
    /// only the flood, from this namespace.
    flood: Option<SynFlood>,
}

fn opts() -> Result<Opts> {
    let mut out = PathBuf::from("bench/results/flood.md");
    let (mut quick, mut flood) = (false, false);
    let (mut from, mut to, mut rate, mut secs) = (None, None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match a.as_str() {
            "--out" => out = PathBuf::from(value("--out")?),
            "--quick" => quick = true,
            "--syn-flood" => flood = true,
            "--from" => {
                from = Some(match value("--from")?.as_str() {
                    "random" => None,
                    a => Some(a.parse::<Ipv4Addr>().context("--from ADDR|random")?),
                });
            }
            "--to" => to = Some(value("--to")?.parse().context("--to IP:PORT")?),
            "--rate" => rate = Some(value("--rate")?.parse().context("--rate SYNS_PER_S")?),
            "--secs" => secs = Some(value("--secs")?.parse().context("--secs S")?),
            other => bail!(
                "unknown argument `{other}`; allowed: --out PATH, --quick, or --syn-flood \
                 --from ADDR|random --rate SYNS_PER_S --secs S [--to IP:PORT] (only the flood)"
            ),
        }
    }
    let flood = if flood {
        Some(SynFlood {
            from: from.context("--syn-flood needs --from ADDR|random")?,
            to: to.unwrap_or(SocketAddrV4::new(VIP_IP.parse().context("the VIP")?, PORT)),
            rate: rate.context("--syn-flood needs --rate")?,
            secs: secs.context("--syn-flood needs --secs")?,
        })
    } else {
        ensure!(
            from.is_none() && to.is_none() && rate.is_none() && secs.is_none(),
            "--from, --to, --rate and --secs go with --syn-flood"
        );
        None
    };
    Ok(Opts { out, quick, flood })
}

/// How long and how often.
struct Plan {
    runs: usize,
    /// Seconds of each ab phase.
    secs: u32,
    /// Requests of the unrecorded warm-up after each setup starts.
    warmup: u32,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                runs: 1,
                secs: 1,
                warmup: 50,
            }
        } else {
            Self {
                runs: 5,
                secs: 5,
                warmup: 500,
            }
        }
    }
}

// ---- the setups ------------------------------------------------------------

/// What meets the flood.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Lb,
    LbNoTrust,
    LbOpen,
    NftMeter,
    NftGlobal,
    Haproxy,
}

impl Setup {
    const ALL: [Self; 6] = [
        Self::Lb,
        Self::LbNoTrust,
        Self::LbOpen,
        Self::NftMeter,
        Self::NftGlobal,
        Self::Haproxy,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Lb => "lb",
            Self::LbNoTrust => "lb, trustSeconds = 0",
            Self::LbOpen => "lb, pool maxConnRate off",
            Self::NftMeter => BASELINE,
            Self::NftGlobal => "HAProxy + nftables (global limit)",
            Self::Haproxy => "HAProxy, no filter",
        }
    }

    fn what(self) -> String {
        match self {
            Self::Lb => format!(
                "XDP (driver mode): `sourceSynRate = {SOURCE_RATE}` (burst {SOURCE_RATE}); the \
                 default pool profile (`maxConnRate` 10 000/s, burst one second's worth); \
                 `trustSeconds` at its default (300): half of the burst is kept for sources \
                 that completed a handshake"
            ),
            Self::LbNoTrust => "as `lb`, but `[xdp] trustSeconds = 0`: every source may \
                 spend the whole pool budget, spoofed or not"
                .to_owned(),
            Self::LbOpen => format!(
                "as `lb`, but the pool's profile sets `maxConnRate = 0` (no per-VIP SYN \
                 budget): only `sourceSynRate = {SOURCE_RATE}`"
            ),
            Self::NftMeter => format!(
                "netdev ingress on the server's veth: SYNs to the VIP over {SOURCE_RATE}/s \
                 (burst {SOURCE_RATE}) from one source address dropped (a `meter`)"
            ),
            Self::NftGlobal => format!(
                "netdev ingress on the server's veth: SYNs to the VIP over {GLOBAL_RATE}/s \
                 (burst {GLOBAL_RATE}) dropped, whatever their source (`limit rate`)"
            ),
            Self::Haproxy => {
                "nothing in front: the kernel's SYN backlog and SYN cookies (`tcp_syncookies = \
                 1`)"
                .into()
            }
        }
    }

    fn is_lb(self) -> bool {
        matches!(self, Self::Lb | Self::LbNoTrust | Self::LbOpen)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The config file it runs on (saved beside the results).
    fn config_file(self) -> &'static str {
        match self {
            Self::Lb => "lb.toml",
            Self::LbNoTrust => "lb-no-trust.toml",
            Self::LbOpen => "lb-open.toml",
            _ => "haproxy.cfg",
        }
    }

    /// The nftables ruleset in front of HAProxy, and its file name.
    fn ruleset(self, iface: &str) -> Option<(&'static str, String)> {
        let rule = match self {
            Self::NftMeter => format!(
                "meter synflood size 65535 {{ ip saddr timeout 10s limit rate over \
                 {SOURCE_RATE}/second burst {SOURCE_RATE} packets }} counter drop"
            ),
            Self::NftGlobal => format!(
                "limit rate over {GLOBAL_RATE}/second burst {GLOBAL_RATE} packets counter drop"
            ),
            _ => return None,
        };
        let file = if self == Self::NftMeter {
            "nft-per-source.nft"
        } else {
            "nft-global.nft"
        };
        Some((
            file,
            format!(
                "# {}\ntable netdev {NFT_TABLE} {{\n  chain ingress {{\n    type filter hook \
                 ingress device \"{iface}\" priority 0;\n    ip daddr {VIP_IP} tcp dport {PORT} \
                 tcp flags & (syn|ack) == syn {rule}\n  }}\n}}\n",
                self.name()
            ),
        ))
    }
}

/// The order of round `r`: rotated, so no setup always runs first.
fn round_order(r: usize) -> [Setup; 6] {
    let mut s = Setup::ALL;
    s.rotate_left(r % Setup::ALL.len());
    s
}

// ---- the configs -------------------------------------------------------------

fn backend_conf() -> String {
    format!(
        "# The backend: plain HTTP in the server namespace, CPU {LOAD_CPU}.\n\
         worker_processes 1;\n\
         worker_cpu_affinity {mask:b};\n\
         pid backend.pid;\n\
         error_log backend.error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n    \
             access_log off;\n    \
             server {{\n        \
                 listen {VIP_IP}:{BACKEND_PORT};\n        \
                 location / {{\n            \
                     default_type text/plain;\n            \
                     return 200 \"ok\";\n        \
                 }}\n    \
             }}\n\
         }}\n",
        mask = 1u32 << LOAD_CPU,
    )
}

fn haproxy_cfg(c: &Cert) -> String {
    format!(
        "global\n    \
             nbthread 1\n    \
             cpu-map 1/1 {SUT_CPU}\n    \
             maxconn 4096\n\
         \n\
         defaults\n    \
             mode http\n    \
             timeout connect 5s\n    \
             timeout client 30s\n    \
             timeout server 30s\n    \
             timeout http-request 10s\n\
         \n\
         frontend flood\n    \
             # {cert} is the certificate then its key (openssl req).\n    \
             bind {VIP_IP}:{PORT} ssl crt {cert}\n    \
             default_backend be\n\
         \n\
         backend be\n    \
             server b1 {VIP_IP}:{BACKEND_PORT}\n",
        cert = c.combined.display(),
    )
}

fn lb_toml(setup: Setup, c: &Cert, iface: &str, instance: &str) -> String {
    let (profile_line, profile) = if setup == Setup::LbOpen {
        (
            "profile = \"open\"\n",
            "# Every axis at its default but the per-VIP SYN budget.\n\
             [profile.open]\n\
             maxConnRate = 0\n",
        )
    } else {
        (
            "# No profile: every axis at its default (maxConnRate 10000/s, \
             maxSslRate 2000/s, ...).\n",
            "",
        )
    };
    format!(
        "[global]\n\
         instance = \"{instance}\"\n\
         workers = 1\n\
         drainTimeout = \"1s\"\n\
         [xdp]\n\
         iface = \"{iface}\"\n\
         mode = \"driver\"\n\
         # Per source: above what the real client opens a second, a tenth of\n\
         # the one-source flood. The same rate as the nftables meter.\n\
         sourceSynRate = {SOURCE_RATE}\n\
         sourceSynBurst = {SOURCE_RATE}\n\
         {trust}\
         [[frontend]]\n\
         name = \"web\"\n\
         listen = \"{VIP_IP}:{PORT}\"\n\
         pool = \"p\"\n\
         tls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\
         [[pool]]\n\
         name = \"p\"\n\
         backends = [\"{VIP_IP}:{BACKEND_PORT}\"]\n\
         {profile_line}{profile}",
        cert = c.cert.display(),
        key = c.key.display(),
        trust = if setup == Setup::LbNoTrust {
            "# No source is trusted: the whole budget is open to spoofed SYNs.\n\
             trustSeconds = 0\n"
        } else {
            ""
        },
    )
}

// ---- commands in the namespaces -----------------------------------------------

/// `nsenter --net=/run/netns/NS -- ARGV...`: only the network namespace, so
/// `lb` still sees the host's bpffs.
fn in_ns(ns: &str, rest: &[&str]) -> Vec<String> {
    let mut a = argv(&["nsenter", &format!("--net=/run/netns/{ns}"), "--"]);
    a.extend(rest.iter().map(|&s| s.to_owned()));
    a
}

/// The commands run, in order, for the report.
#[derive(Default)]
struct Log(Vec<String>);

impl Log {
    fn run(&mut self, a: &[String]) -> Result<String> {
        self.note(a);
        run(a)
    }

    fn note(&mut self, a: &[String]) {
        self.note_line(shell_line(a));
    }

    /// Notes a line once (a command repeated each phase shows once).
    fn note_line(&mut self, line: String) {
        if !self.0.contains(&line) {
            self.0.push(line);
        }
    }
}

// ---- the network ---------------------------------------------------------------

/// The two namespaces and what this benchmark adds to them.
struct Net {
    /// Dropped first: the namespaces go with `topo`.
    sink: NftTable,
    topo: Topology,
    /// The client side's veth.
    client_if: String,
}

impl Net {
    /// The namespaces, the veth, a default route out of the server side,
    /// and each side's receive work in a NAPI thread on its CPU.
    fn new(dir: &Scratch, log: &mut Log) -> Result<Self> {
        let topo = Topology::new(
            "lbfl",
            &[&format!("{CLIENT_IP}/24")],
            &[&format!("{VIP_IP}/24")],
        )?;
        let client_if = format!("vc{}", topo.tag);
        let (c, s, sif) = (
            topo.client.name().to_owned(),
            topo.lbns.name().to_owned(),
            topo.iface.clone(),
        );
        let (c, s, sif) = (c.as_str(), s.as_str(), &sif);
        // What Topology::new ran, for the report.
        for a in [
            argv(&["ip", "netns", "add", c]),
            argv(&["ip", "netns", "add", s]),
            argv(&[
                "ip", "link", "add", &client_if, "netns", c, "type", "veth", "peer", "name", sif,
                "netns", s,
            ]),
            in_ns(
                c,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{CLIENT_IP}/24"),
                    "dev",
                    &client_if,
                ],
            ),
            in_ns(
                s,
                &["ip", "addr", "add", &format!("{VIP_IP}/24"), "dev", sif],
            ),
            in_ns(c, &["ip", "link", "set", &client_if, "up"]),
            in_ns(s, &["ip", "link", "set", sif, "up"]),
            in_ns(c, &["ip", "link", "set", "lo", "up"]),
            in_ns(s, &["ip", "link", "set", "lo", "up"]),
        ] {
            log.note(&a);
        }
        // SYN-ACKs to spoofed sources leave by the default route and are
        // dropped at the veth's egress hook: the server builds and sends
        // them, as to the internet, and they do not cross back to the
        // client side (and its CPU).
        for a in [
            [
                "ip", "route", "add", "default", "via", CLIENT_IP, "dev", sif,
            ]
            .as_slice(),
            &[
                "sysctl",
                "-w",
                "net.ipv4.conf.all.rp_filter=0",
                &format!("net.ipv4.conf.{sif}.rp_filter=0"),
            ],
        ] {
            log.run(&in_ns(s, a))?;
        }
        let sink = dir.write(
            "nft-sink.nft",
            &format!(
                "# Every setup: what leaves the server for an address outside the veth's\n\
                 # subnet (SYN-ACKs to spoofed sources) is dropped on its way out.\n\
                 table netdev {SINK_TABLE} {{\n  chain egress {{\n    type filter hook egress \
                 device \"{sif}\" priority 0;\n    ip daddr != {SUBNET} counter drop\n  }}\n}}\n"
            ),
        )?;
        let sink = NftTable::load(s, SINK_TABLE, &sink, log)?;
        let net = Self {
            sink,
            topo,
            client_if,
        };
        for (ns, iface) in [(s, sif.as_str()), (c, net.client_if.as_str())] {
            // A veth hands a packet to its peer's NAPI (which can run in a
            // thread) only when the peer has XDP or GRO on and the packet
            // could be aggregated, which a TSO sender's are not; attaching
            // XDP turns TSO off on the peer. GRO on and TSO off on both
            // sides: every packet takes the NAPI path, with XDP (lb) or
            // without (HAProxy), in both directions.
            log.run(&in_ns(
                ns,
                &["ethtool", "-K", iface, "gro", "on", "tso", "off"],
            ))?;
            // `ip netns exec` mounts the namespace's own /sys for the write.
            log.run(&argv(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{iface}/threaded"),
            ]))?;
        }
        net.pin_napi(log)?;
        Ok(net)
    }

    fn client(&self) -> &Netns {
        &self.topo.client
    }

    fn server(&self) -> &Netns {
        &self.topo.lbns
    }

    fn iface(&self) -> &str {
        &self.topo.iface
    }

    /// Pins each side's NAPI threads (`napi/IFACE-N`) to its CPU at
    /// SCHED_FIFO; checked again after each setup starts (attaching XDP
    /// keeps a veth's NAPI when GRO is on, but this makes sure).
    fn pin_napi(&self, log: &mut Log) -> Result<()> {
        for (iface, cpu) in [(self.iface(), SUT_CPU), (self.client_if.as_str(), LOAD_CPU)] {
            let pids = napi_threads(iface)?;
            ensure!(
                !pids.is_empty(),
                "no NAPI thread for {iface} (threaded NAPI on a veth needs GRO on)"
            );
            // The report shows the lines with the thread's name for its pid.
            let pgrep = format!("$(pgrep '^napi/{iface}-')");
            log.note_line(format!("taskset -pc {cpu} {pgrep}"));
            log.note_line(format!("chrt -f -p {NAPI_PRIO} {pgrep}"));
            for pid in pids {
                let (pid, cpu, prio) = (pid.to_string(), cpu.to_string(), NAPI_PRIO.to_string());
                run(&argv(&["taskset", "-pc", &cpu, &pid]))?;
                run(&argv(&["chrt", "-f", "-p", &prio, &pid]))?;
            }
        }
        Ok(())
    }

    /// Whether an XDP program is attached to the server's veth.
    fn xdp_attached(&self) -> Result<bool> {
        let out = run(&in_ns(
            self.server().name(),
            &["ip", "-d", "link", "show", "dev", self.iface()],
        ))?;
        Ok(out.contains("prog/xdp"))
    }
}

/// utime + stime, in clock ticks, of the NAPI threads of `iface`.
fn napi_ticks(iface: &str) -> Result<u64> {
    Ok(napi_threads(iface)?
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0))
        .sum())
}

/// The pids of the kernel threads named `napi/IFACE-N`.
fn napi_threads(iface: &str) -> Result<Vec<u32>> {
    let prefix = format!("napi/{iface}-");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end().starts_with(&prefix) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// An nftables table (family netdev) in the server namespace; deleted on
/// drop (and with the namespace in any case).
struct NftTable {
    ns: String,
    name: &'static str,
}

impl NftTable {
    fn load(ns: &str, name: &'static str, file: &Path, log: &mut Log) -> Result<Self> {
        log.run(&in_ns(ns, &["nft", "-f", &file.to_string_lossy()]))?;
        Ok(Self {
            ns: ns.to_owned(),
            name,
        })
    }

    /// Packets its (one) rule's counter counted: the packets it dropped.
    fn dropped(&self) -> Result<u64> {
        let out = run(&in_ns(
            &self.ns,
            &["nft", "list", "table", "netdev", self.name],
        ))?;
        out.split("counter packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no counter in the ruleset:\n{out}"))
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = run(&in_ns(
            &self.ns,
            &["nft", "delete", "table", "netdev", self.name],
        ));
    }
}

/// Packets each veth could not hand to its peer (the peer's NAPI ring was
/// full): [client to server, server to client].
fn veth_drops(net: &Net) -> Result<[u64; 2]> {
    let dropped = |ns: &Netns, iface: &str| -> Result<u64> {
        let out = run(&in_ns(
            ns.name(),
            &["ip", "-j", "-s", "link", "show", "dev", iface],
        ))?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("ip -j -s link: {out}"))?;
        v[0]["stats64"]["tx"]["dropped"]
            .as_u64()
            .with_context(|| format!("no tx dropped for {iface}: {out}"))
    };
    Ok([
        dropped(net.client(), &net.client_if)?,
        dropped(net.server(), net.iface())?,
    ])
}

/// `TcpExt: SyncookiesSent` of the server namespace.
fn syncookies_sent(ns: &Netns) -> Result<u64> {
    let out = run(&in_ns(ns.name(), &["cat", "/proc/net/netstat"]))?;
    let mut lines = out.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if names.starts_with("TcpExt:") {
            return names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == "SyncookiesSent")
                .and_then(|(_, v)| v.parse().ok())
                .context("no SyncookiesSent in /proc/net/netstat");
        }
    }
    bail!("no TcpExt lines in /proc/net/netstat")
}

// ---- the system under test -------------------------------------------------------

/// A setup while it runs: the process (killed by pid on drop), its lb
/// instance, its nftables table.
struct Running {
    daemon: Daemon,
    instance: Option<String>,
    nft: Option<NftTable>,
}

/// Whether `pid` is alive (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// One HTTPS request from the client namespace: the status curl printed.
fn curl(net: &Net) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", net.client().name()))
        .args(["--", "curl", "-sk", "--max-time", "2", "-o", "/dev/null"])
        .args(["-w", "%{http_code}"])
        .arg(format!("https://{VIP_IP}:{PORT}/"))
        .output()
        .context("running curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits (up to 20 s) until the setup answers an HTTPS request with 200.
fn wait_serving(net: &Net, d: &Daemon) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        ensure!(
            alive(d.pid()),
            "{} exited before it served: {}\n{}",
            d.name,
            d.cmdline,
            d.log_text()
        );
        if curl(net)? == "200" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{} did not answer https://{VIP_IP}:{PORT}/ with 200 within 20 s: {}\n{}",
        d.name,
        d.cmdline,
        d.log_text()
    )
}

struct Ctx<'a> {
    net: &'a Net,
    /// This program, for `--syn-flood`.
    exe: &'a Path,
    bin: &'a Path,
    cert: &'a Cert,
    dir: &'a Scratch,
    plan: &'a Plan,
}

/// Starts a setup: its nftables table, then lb or HAProxy on CPU 0.
fn start(ctx: &Ctx, setup: Setup, log: &mut Log) -> Result<Running> {
    let s = ctx.net.server().name();
    let nft = match setup.ruleset(ctx.net.iface()) {
        Some((file, rules)) => Some(NftTable::load(
            s,
            NFT_TABLE,
            &ctx.dir.write(file, &rules)?,
            log,
        )?),
        None => None,
    };
    let (name, a, instance) = if setup.is_lb() {
        // The same name each run (lb stops before the next starts), so the
        // config and the `lb stats` line repeat exactly.
        let open = match setup {
            Setup::LbOpen => "o",
            Setup::LbNoTrust => "n",
            _ => "",
        };
        let instance = format!("bflood{open}{}", std::process::id());
        let toml = ctx.dir.write(
            setup.config_file(),
            &lb_toml(setup, ctx.cert, ctx.net.iface(), &instance),
        )?;
        let a = in_ns(
            s,
            &[
                &ctx.bin.to_string_lossy(),
                "run",
                "-c",
                &toml.to_string_lossy(),
            ],
        );
        ("lb", a, Some(instance))
    } else {
        let cfg = ctx.dir.write("haproxy.cfg", &haproxy_cfg(ctx.cert))?;
        let a = in_ns(
            s,
            &["/usr/sbin/haproxy", "-f", &cfg.to_string_lossy(), "-db"],
        );
        ("haproxy", a, None)
    };
    let daemon = Daemon::spawn(name, SUT_CPU, &a, ctx.dir)?;
    log.note_line(daemon.cmdline.clone());
    let running = Running {
        daemon,
        instance,
        nft,
    };
    wait_serving(ctx.net, &running.daemon)?;
    let attached = ctx.net.xdp_attached()?;
    ensure!(
        attached == setup.is_lb(),
        "{}: an XDP program is {}attached to {}",
        setup.name(),
        if attached { "" } else { "not " },
        ctx.net.iface()
    );
    ctx.net.pin_napi(log)?;
    Ok(running)
}

/// Stops a setup (SIGTERM, SIGKILL after 5 s) and checks it left no XDP
/// program behind.
fn stop(ctx: &Ctx, r: Running) -> Result<()> {
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(5);
    while ctx.net.xdp_attached()? {
        ensure!(
            Instant::now() < deadline,
            "an XDP program is still attached to {} 5 s after lb stopped",
            ctx.net.iface()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// SYNs the setup's filter dropped so far: (per source, by a global
/// budget). lb: from `lb stats`; nftables: the rule's counter.
fn filter_drops(ctx: &Ctx, setup: Setup, r: &Running, log: &mut Log) -> Result<[u64; 2]> {
    if let Some(instance) = &r.instance {
        let out = log.run(&argv(&[
            &ctx.bin.to_string_lossy(),
            "stats",
            "--instance",
            instance,
            "--json",
        ]))?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("lb stats --json: {out}"))?;
        let vip = &v["vips"][0];
        let n = |k: &str| vip[k].as_u64().unwrap_or(0);
        return Ok([
            n("drop_source"),
            n("drop_global") + n("drop_frontend") + n("drop_pool"),
        ]);
    }
    let dropped = r
        .nft
        .as_ref()
        .map(NftTable::dropped)
        .transpose()?
        .unwrap_or(0);
    Ok(match setup {
        Setup::NftMeter => [dropped, 0],
        _ => [0, dropped],
    })
}

// ---- the load ------------------------------------------------------------------

/// What one ab run measured.
#[derive(Clone)]
struct AbRun {
    rps: f64,
    complete: u64,
    failed: u64,
    non2xx: u64,
    /// ab's `SSL/TLS Protocol` line.
    tls: String,
}

/// ab from the client namespace on CPU 1: a new TLS connection per request,
/// `CONC` at a time, for `secs` (or `n` requests), bounded by `timeout`.
fn ab_argv(client: &str, secs: Option<u32>, n: u32) -> Vec<String> {
    let limit = secs.map_or(60, |s| s + 30).to_string();
    let mut a = argv(&["taskset", "-c", &LOAD_CPU.to_string()]);
    a.extend(in_ns(client, &["timeout", "-k", "5", &limit, "ab", "-q"]));
    // -s above the phase: ab gives up on the whole run when one request
    // times out, and a dropped SYN is retried after 1, 3, 7 s.
    a.extend(argv(&["-s", "30", "-c", &CONC.to_string()]));
    if let Some(s) = secs {
        a.extend(argv(&["-t", &s.to_string()]));
    }
    a.extend(argv(&[
        "-n",
        &n.to_string(),
        &format!("https://{VIP_IP}:{PORT}/"),
    ]));
    a
}

fn ab(a: &[String]) -> Result<AbRun> {
    let (first, rest) = a.split_first().context("empty command")?;
    let out = Command::new(first)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .context("running ab")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |label: &str| text.lines().find_map(|l| l.strip_prefix(label));
    let field =
        |label: &str| -> Option<f64> { line(label)?.split_whitespace().next()?.parse().ok() };
    let rps = field("Requests per second:").with_context(|| {
        format!(
            "{} printed no rate ({}):\n{text}{}",
            shell_line(a),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let n = |label| field(label).unwrap_or(0.0) as u64;
    Ok(AbRun {
        rps,
        complete: n("Complete requests:"),
        failed: n("Failed requests:"),
        non2xx: n("Non-2xx responses:"),
        tls: line("SSL/TLS Protocol:").unwrap_or("").trim().to_owned(),
    })
}

/// The two floods.
#[derive(Clone, Copy)]
enum Flood {
    OneSource,
    RandomSources,
}

/// The flood from the client namespace on CPU 1: this program's own
/// generator (`--syn-flood`) at `FLOOD_RATE` for `secs`, bounded again by
/// `timeout`.
fn flood_argv(exe: &Path, client: &str, flood: Flood, secs: f64) -> Vec<String> {
    let mut a = argv(&["taskset", "-c", &LOAD_CPU.to_string()]);
    a.extend(in_ns(
        client,
        &[
            "timeout",
            "-s",
            "INT",
            "-k",
            "3",
            &format!("{:.1}", secs + 5.0),
            &exe.to_string_lossy(),
            "--syn-flood",
            "--from",
            match flood {
                Flood::OneSource => FLOODER,
                Flood::RandomSources => "random",
            },
            "--to",
            &format!("{VIP_IP}:{PORT}"),
            "--rate",
            &FLOOD_RATE.to_string(),
            "--secs",
            &format!("{secs:.1}"),
        ],
    ));
    a
}

/// A running flood (through `timeout`, which passes signals on); stopped
/// on drop.
struct Flooding {
    child: Option<Child>,
    line: String,
}

/// What a flood did: SYNs sent, over how many seconds, and the CPU seconds
/// the generator spent.
#[derive(Clone, Copy)]
struct FloodRun {
    sent: u64,
    secs: f64,
    cpu: f64,
}

impl Flooding {
    fn start(a: &[String]) -> Result<Self> {
        let (first, rest) = a.split_first().context("empty command")?;
        let child = Command::new(first)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", shell_line(a)))?;
        Ok(Self {
            child: Some(child),
            line: shell_line(a),
        })
    }

    /// Waits for the end and reads the generator's last line.
    fn finish(mut self) -> Result<FloodRun> {
        let child = self.child.take().context("the flood was already reaped")?;
        let out = child.wait_with_output().context("waiting for the flood")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.starts_with("sent "))
            .with_context(|| {
                format!(
                    "{} ({}) printed no count:\n{text}{}",
                    self.line,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
        // "sent N SYNs in S s, CPU C s"
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> Result<f64> {
            w.get(i)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("unexpected flood line: {line}"))
        };
        Ok(FloodRun {
            sent: num(1)? as u64,
            secs: num(4)?,
            cpu: num(7)?,
        })
    }
}

impl Drop for Flooding {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling our own child (timeout), not yet reaped;
            // timeout passes SIGINT on to the generator.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ---- the generator (`--syn-flood`) ---------------------------------------------

/// What `--syn-flood` sends.
struct SynFlood {
    /// One source address, or random ones (None).
    from: Option<Ipv4Addr>,
    to: SocketAddrV4,
    rate: u32,
    secs: f64,
}

/// SYNs sent in one `sendmmsg`, at most.
const BATCH: usize = 64;
/// IPv4 header (20) + TCP header with `SYN_OPTIONS` (32).
const SYN_LEN: usize = 52;

/// xorshift64: the random sources, ports and sequence numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A unicast address outside 0/8, 10/8, 127/8, 198.18/15 and 224/3.
    fn source(&mut self) -> [u8; 4] {
        loop {
            let a = (self.next() >> 16).to_be_bytes();
            let b = [a[4], a[5], a[6], a[7]];
            let reserved =
                matches!(b[0], 0 | 10 | 127 | 224..=255) || (b[0] == 198 && b[1] & 0xFE == 18);
            if !reserved {
                return b;
            }
        }
    }
}

/// A SYN (MSS, SACK, window scale) from `src`; the kernel fills in the IPv4
/// checksum, length and id (a raw socket with IP_HDRINCL).
fn syn(buf: &mut [u8; SYN_LEN], src: [u8; 4], to: SocketAddrV4, rng: &mut Rng) {
    let r = rng.next().to_be_bytes();
    buf[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, src[0], src[1], src[2], src[3], 0, 0, 0, 0,
    ]);
    buf[16..20].copy_from_slice(&to.ip().octets());
    let sport = 1024 + u16::from_be_bytes([r[0], r[1]]) % 60_000;
    let t = &mut buf[20..];
    t[..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&to.port().to_be_bytes());
    t[4..8].copy_from_slice(&r[2..6]);
    t[8..12].fill(0);
    t[12] = 8 << 4;
    t[13] = lb_tests::packet::flags::SYN;
    t[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    t[16..20].fill(0);
    t[20..].copy_from_slice(&lb_tests::packet::SYN_OPTIONS);
    let mut pseudo = [0u8; 12 + SYN_LEN - 20];
    pseudo[..4].copy_from_slice(&src);
    pseudo[4..8].copy_from_slice(&to.ip().octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&u16::try_from(SYN_LEN - 20).unwrap_or(0).to_be_bytes());
    pseudo[12..].copy_from_slice(t);
    let sum = lb_tests::packet::checksum(&pseudo);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
}

/// Sends `rate` SYNs a second to `to` for `secs` (and no more than
/// rate × secs), from a raw socket in batches of up to `BATCH` per
/// `sendmmsg`, paced every 2 ms: about 4 µs of CPU a SYN here (the
/// kernel's send path and the veth), where hping3, sleeping between
/// packets, spends over 40. Prints `sent N SYNs in S s, CPU C s`.
fn syn_flood(f: &SynFlood) -> Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: a plain fd-creating syscall; IPPROTO_RAW implies IP_HDRINCL.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(f.to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| {
                u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(1)
            });
    let mut rng = Rng(seed | 1);
    let total = (f64::from(f.rate) * f.secs) as u64;
    let mut bufs = [[0u8; SYN_LEN]; BATCH];
    let (start, mut sent) = (Instant::now(), 0u64);
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        if STOP.load(Ordering::Relaxed) || elapsed >= f.secs || sent >= total {
            break;
        }
        let due = ((elapsed * f64::from(f.rate)) as u64).min(total);
        let n = usize::try_from(due.saturating_sub(sent))?.min(BATCH);
        if n == 0 {
            std::thread::sleep(Duration::from_micros(2000));
            continue;
        }
        for b in &mut bufs[..n] {
            let src = f.from.map_or_else(|| rng.source(), |a| a.octets());
            syn(b, src, f.to, &mut rng);
        }
        let mut iov: Vec<libc::iovec> = bufs[..n]
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: SYN_LEN,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: an all-zero msghdr is valid (no name, no control).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (&raw const dst).cast_mut().cast();
                h.msg_hdr.msg_namelen =
                    u32::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap_or(16);
                h.msg_hdr.msg_iov = std::ptr::from_mut(v);
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: `msgs` points at `iov`, `bufs` and `dst`, all alive here.
        let r =
            unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), u32::try_from(n)?, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            // A full queue: count nothing, try again later.
            ensure!(
                matches!(
                    e.raw_os_error(),
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
                ),
                "sendmmsg: {e}"
            );
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        sent += u64::try_from(r)?;
    }
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: getrusage fills the struct it is given.
    let cpu = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &raw mut u);
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(u.ru_utime) + t(u.ru_stime)
    };
    println!("sent {sent} SYNs in {secs:.3} s, CPU {cpu:.3} s");
    Ok(())
}

/// One phase: ab for the plan's seconds, alone or during a flood.
struct Phase {
    ab: AbRun,
    /// What the flood did.
    flood: Option<FloodRun>,
    /// CPU 0 and CPU 1 busy % while ab ran.
    cpu: [f64; 2],
    /// The server veth's NAPI thread (the server's receive work: XDP,
    /// nftables, the kernel's TCP) while ab ran, in % of one CPU.
    rx_cpu: f64,
    /// SYNs the filter dropped (per source, by a global budget).
    dropped: [u64; 2],
    /// SYN cookies the server's kernel sent.
    cookies: u64,
    /// Packets lost between the veths: [to the server, to the client].
    ring: [u64; 2],
    /// Packets the server sent to spoofed addresses (SYN-ACKs, their
    /// retransmits), dropped at its egress.
    backscatter: u64,
}

fn phase(
    ctx: &Ctx,
    setup: Setup,
    r: &Running,
    flood: Option<Flood>,
    log: &mut Log,
) -> Result<Phase> {
    check_stop()?;
    let secs = ctx.plan.secs;
    let client = ctx.net.client().name();
    let (drops0, cookies0, ring0, back0) = (
        filter_drops(ctx, setup, r, log)?,
        syncookies_sent(ctx.net.server())?,
        veth_drops(ctx.net)?,
        ctx.net.sink.dropped()?,
    );
    // The flood starts 0.3 s before ab and ends 0.3 s after it.
    let flooding = match flood {
        Some(f) => {
            let a = flood_argv(ctx.exe, client, f, f64::from(secs) + 0.6);
            log.note(&a);
            let h = Flooding::start(&a)?;
            std::thread::sleep(Duration::from_millis(300));
            Some(h)
        }
        None => None,
    };
    let a = ab_argv(client, Some(secs), 1_000_000);
    log.note(&a);
    let (before, rx0, t0) = (
        [cpu_ticks(SUT_CPU)?, cpu_ticks(LOAD_CPU)?],
        napi_ticks(ctx.net.iface())?,
        Instant::now(),
    );
    let run = ab(&a)?;
    let (after, rx1, wall) = (
        [cpu_ticks(SUT_CPU)?, cpu_ticks(LOAD_CPU)?],
        napi_ticks(ctx.net.iface())?,
        t0.elapsed().as_secs_f64(),
    );
    let flood = flooding.map(Flooding::finish).transpose()?;
    let (drops1, cookies1, ring1, back1) = (
        filter_drops(ctx, setup, r, log)?,
        syncookies_sent(ctx.net.server())?,
        veth_drops(ctx.net)?,
        ctx.net.sink.dropped()?,
    );
    Ok(Phase {
        ab: run,
        flood,
        cpu: [0, 1].map(|i| busy_pct(before[i], after[i])),
        rx_cpu: 100.0 * rx1.saturating_sub(rx0) as f64 / clk_tck() / wall,
        dropped: [0, 1].map(|i| drops1[i].saturating_sub(drops0[i])),
        cookies: cookies1.saturating_sub(cookies0),
        ring: [0, 1].map(|i| ring1[i].saturating_sub(ring0[i])),
        backscatter: back1.saturating_sub(back0),
    })
}

/// Everything one round measured for one setup.
struct SetupRun {
    calm: [Phase; 3],
    one: Phase,
    random: Phase,
}

fn run_setup(ctx: &Ctx, setup: Setup, log: &mut Log) -> Result<SetupRun> {
    let r = start(ctx, setup, log)?;
    // Warm-up, not recorded: the first handshakes, the backend connection.
    let a = ab_argv(ctx.net.client().name(), None, ctx.plan.warmup);
    log.note(&a);
    ab(&a).context("warm-up")?;
    let calm0 = phase(ctx, setup, &r, None, log)?;
    let one = phase(ctx, setup, &r, Some(Flood::OneSource), log)?;
    let calm1 = phase(ctx, setup, &r, None, log)?;
    let random = phase(ctx, setup, &r, Some(Flood::RandomSources), log)?;
    let calm2 = phase(ctx, setup, &r, None, log)?;
    stop(ctx, r)?;
    Ok(SetupRun {
        calm: [calm0, calm1, calm2],
        one,
        random,
    })
}

// ---- samples ---------------------------------------------------------------------

/// One flood's figures for one setup, one entry per run.
#[derive(Default)]
struct FloodSamples {
    /// Requests/s during the flood.
    rps: Vec<f64>,
    /// % of the mean of the calm phases before and after.
    kept: Vec<f64>,
    /// SYNs/s the generator sent.
    syn_rate: Vec<f64>,
    /// The generator's CPU time over the flood's, in % of one CPU.
    gen_cpu: Vec<f64>,
    cpu0: Vec<f64>,
    cpu1: Vec<f64>,
    rx_cpu: Vec<f64>,
    sent: u64,
    dropped: [u64; 2],
    cookies: u64,
    ring: [u64; 2],
    backscatter: u64,
}

impl FloodSamples {
    fn add(&mut self, p: &Phase, calm_before: f64, calm_after: f64) {
        self.rps.push(p.ab.rps);
        self.kept
            .push(100.0 * p.ab.rps / ((calm_before + calm_after) / 2.0));
        if let Some(f) = p.flood {
            self.sent += f.sent;
            self.syn_rate.push(f.sent as f64 / f.secs);
            self.gen_cpu.push(100.0 * f.cpu / f.secs);
        }
        self.cpu0.push(p.cpu[0]);
        self.cpu1.push(p.cpu[1]);
        self.rx_cpu.push(p.rx_cpu);
        self.dropped[0] += p.dropped[0];
        self.dropped[1] += p.dropped[1];
        self.cookies += p.cookies;
        self.ring[0] += p.ring[0];
        self.ring[1] += p.ring[1];
        self.backscatter += p.backscatter;
    }
}

/// Picks one flood's figures.
type Pick = fn(&Samples) -> &FloodSamples;

/// Everything measured for one setup.
#[derive(Default)]
struct Samples {
    /// Mean of the three calm phases, per run.
    calm: Vec<f64>,
    calm_cpu0: Vec<f64>,
    calm_cpu1: Vec<f64>,
    calm_rx_cpu: Vec<f64>,
    /// Packets lost between the veths in the calm phases.
    calm_ring: [u64; 2],
    one: FloodSamples,
    random: FloodSamples,
    requests: u64,
    failed: u64,
    non2xx: u64,
    tls: String,
}

impl Samples {
    fn add(&mut self, r: &SetupRun) {
        let [c0, c1, c2] = [0, 1, 2].map(|i| r.calm[i].ab.rps);
        self.calm.push((c0 + c1 + c2) / 3.0);
        self.calm_cpu0
            .push(r.calm.iter().map(|p| p.cpu[0]).sum::<f64>() / 3.0);
        self.calm_cpu1
            .push(r.calm.iter().map(|p| p.cpu[1]).sum::<f64>() / 3.0);
        self.calm_rx_cpu
            .push(r.calm.iter().map(|p| p.rx_cpu).sum::<f64>() / 3.0);
        self.one.add(&r.one, c0, c1);
        self.random.add(&r.random, c1, c2);
        for p in &r.calm {
            self.calm_ring[0] += p.ring[0];
            self.calm_ring[1] += p.ring[1];
        }
        for p in r.calm.iter().chain([&r.one, &r.random]) {
            self.requests += p.ab.complete;
            self.failed += p.ab.failed;
            self.non2xx += p.ab.non2xx;
            if self.tls.is_empty() {
                self.tls.clone_from(&p.ab.tls);
            }
        }
    }
}

fn med(v: &[f64]) -> f64 {
    summarize(v.to_vec()).median
}

// ---- the report ------------------------------------------------------------------

fn lb_version() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.to_string_lossy();
    let rev = first_line("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    let clean = Command::new("git")
        .args(["-C", &root, "diff", "--quiet", "HEAD", "--"])
        .args(["lb-userspace", "lb-ebpf", "lb-common"])
        .status()
        .is_ok_and(|s| s.success());
    if clean {
        rev
    } else {
        format!("{rev} (with uncommitted changes in lb-userspace/, lb-ebpf/ or lb-common/)")
    }
}

fn versions() -> Vec<(String, String)> {
    vec![
        ("lb".into(), lb_version()),
        ("HAProxy".into(), first_line("/usr/sbin/haproxy", &["-v"])),
        (
            "nginx (backend)".into(),
            first_line("/usr/sbin/nginx", &["-v"]),
        ),
        ("nftables".into(), first_line("nft", &["--version"])),
        ("ab".into(), first_line("ab", &["-V"])),
        ("kernel".into(), first_line("uname", &["-r"])),
    ]
}

struct Report<'a> {
    quick: bool,
    plan: &'a Plan,
    samples: &'a [Samples; 6],
    commands: &'a [String],
    configs_dir: &'a Path,
    elapsed: Duration,
    background: [f64; 2],
}

impl Report<'_> {
    fn s(&self, t: Setup) -> &Samples {
        &self.samples[t.index()]
    }

    /// Median SYNs/s of a flood over every setup's runs.
    fn syn_rate(&self, f: fn(&Samples) -> &FloodSamples) -> f64 {
        med(&Setup::ALL
            .iter()
            .flat_map(|&t| f(self.s(t)).syn_rate.clone())
            .collect::<Vec<_>>())
    }

    fn header(&self, md: &mut String) {
        let p = self.plan;
        let _ = writeln!(
            md,
            "# SYN flood benchmark: lb vs HAProxy behind nftables\n\n\
             Written by `cargo xtask bench flood{}` in {:.0} s. Real clients (`ab -c {CONC}`, a \
             new TLS connection per request) against each setup, calm and during a SYN flood \
             (from the client namespace); kept = requests/s during the flood over the \
             mean of the calm phases just before and after it. Each figure is the median of {} \
             runs, range in brackets; ratios are against {BASELINE} in the same run. Runs are \
             interleaved (the order of the setups rotates each round), {} s per phase.\n",
            if self.quick { " --quick" } else { "" },
            self.elapsed.as_secs_f64(),
            p.runs,
            p.secs
        );
        if self.quick {
            let _ = writeln!(
                md,
                "**Quick run: too short to read anything into; it only proves the harness \
                 works.**\n"
            );
        }
        let mut machine = cpu_and_kernel();
        for (what, v) in versions() {
            if what != "kernel" {
                let _ = writeln!(machine, "- {what}: {v}");
            }
        }
        let _ = writeln!(
            machine,
            "- date: {}",
            first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
        );
        let _ = writeln!(md, "## Machine\n\n{machine}");
        let [b0, b1] = self.background;
        let _ = writeln!(
            md,
            "Before the run, with nothing of this benchmark started, CPU {SUT_CPU} was {b0:.0}% \
             and CPU {LOAD_CPU} {b1:.0}% busy{}\n",
            if b0.max(b1) > BACKGROUND_LIMIT {
                ": **other processes were using the CPUs, so these figures are unreliable**."
            } else {
                " (a quiet machine)."
            }
        );
    }

    fn findings(&self, md: &mut String) {
        let k = |t: Setup, f: fn(&Samples) -> &FloodSamples| med(&f(self.s(t)).kept);
        let (one, rnd): (Pick, Pick) = (|s| &s.one, |s| &s.random);
        let (r1, r2) = (self.syn_rate(one), self.syn_rate(rnd));
        let lb = self.s(Setup::Lb);
        let (met1, met2) = (
            target_met(k(Setup::Lb, one), k(Setup::NftMeter, one)),
            target_met(k(Setup::Lb, rnd), k(Setup::NftMeter, rnd)),
        );
        let nft = |t: Setup, f: Pick, i: usize| f(self.s(t)).dropped[i];
        let untrusting = self.s(Setup::LbNoTrust);
        let budget = if lb.random.dropped[1] > 0 {
            format!(
                "lb's pool budget ({GLOBAL_RATE} SYNs/s) dropped {} of the flood's {} SYNs; the \
                 real client completed handshakes before the flood, so its source is trusted \
                 and its SYNs may take the half of the budget no spoofed SYN can. With \
                 `trustSeconds = 0` the budget dropped {} of {} and the real client's SYNs with \
                 them (a dropped SYN is retried after 1 s, then 3 s): lb kept {:.0}%. The global \
                 nftables limit dropped {} and does that to HAProxy's clients.",
                lb.random.dropped[1],
                lb.random.sent,
                untrusting.random.dropped[1],
                untrusting.random.sent,
                k(Setup::LbNoTrust, rnd),
                nft(Setup::NftGlobal, rnd, 1)
            )
        } else {
            format!(
                "lb's pool budget ({GLOBAL_RATE} SYNs/s, burst as much) dropped none: the flood \
                 phase stayed within it (the global nftables limit dropped {}).",
                nft(Setup::NftGlobal, rnd, 1)
            )
        };
        let _ = write!(
            md,
            "## What this shows\n\n\
             During a one-source flood of about {r1:.0} SYNs/s lb kept **{:.0}%** of its calm \
             HTTPS rate, HAProxy behind the nftables per-source meter {:.0}%, behind one global \
             nftables limit {:.0}%, with no filter {:.0}% (lb with the pool's `maxConnRate` off: \
             {:.0}%). lb dropped {} of the flood's {} SYNs by source in XDP, the meter {} of \
             {}.\n\n\
             During a random-source flood of about {r2:.0} SYNs/s lb with the default pool \
             profile kept **{:.0}%**, HAProxy behind the per-source meter {:.0}%, behind the \
             global limit {:.0}%, with no filter {:.0}%; lb with the pool's `maxConnRate` off \
             kept {:.0}%. A spoofed source sends one SYN, so no per-source limit sees it. \
             {budget} Without a budget the flood reaches the kernel, whose SYN cookies answer \
             it without state.\n\n\
             Target (lb keeps ≥ 90% of its calm rate, and at least what HAProxy + nftables \
             with the per-source meter keeps): one-source flood **{}**, random-source flood \
             **{}**.",
            k(Setup::Lb, one),
            k(Setup::NftMeter, one),
            k(Setup::NftGlobal, one),
            k(Setup::Haproxy, one),
            k(Setup::LbOpen, one),
            lb.one.dropped[0],
            lb.one.sent,
            nft(Setup::NftMeter, one, 0),
            self.s(Setup::NftMeter).one.sent,
            k(Setup::Lb, rnd),
            k(Setup::NftMeter, rnd),
            k(Setup::NftGlobal, rnd),
            k(Setup::Haproxy, rnd),
            k(Setup::LbOpen, rnd),
            if met1 { "met" } else { "not met" },
            if met2 { "met" } else { "not met" },
        );
        let mut notes = Vec::new();
        // What a one-source SYN cost the server's receive work: the flood
        // phase's minus the calm phases', over the SYNs a second.
        let per_syn = |t: Setup| {
            let s = self.s(t);
            (med(&s.one.rx_cpu) - med(&s.calm_rx_cpu)) * 1e4 / r1.max(1.0)
        };
        let (c_lb, c_meter, c_none) = (
            per_syn(Setup::Lb),
            per_syn(Setup::NftMeter),
            per_syn(Setup::Haproxy),
        );
        let mut cost = format!(
            "What the one-source flood cost the server's receive work (its NAPI thread during \
             the flood, minus the calm phases', over the SYNs a second): lb (XDP drop) \
             {c_lb:.1} µs a SYN, the nftables meter {c_meter:.1} µs, no filter (the kernel's \
             SYN cookies) {c_none:.1} µs."
        );
        if (c_lb - c_meter).abs() < 0.2 * c_meter.abs().max(0.1) {
            cost.push_str(
                " On a veth XDP runs on the skb the sender already built (copied into a page \
                 first, see the XDP benchmark's CPU per dropped SYN), so it saves the server no \
                 more than a netdev-ingress nftables rule; on a NIC it runs before any skb \
                 exists.",
            );
        }
        let costs = [c_lb, c_meter, c_none];
        let (lo, hi) = (
            costs.iter().copied().fold(f64::MAX, f64::min),
            costs.iter().copied().fold(f64::MIN, f64::max),
        );
        if hi - lo < 0.2 * hi.abs().max(0.1) {
            cost.push_str(
                " Where the three costs are alike, what they share (the veth's hand-over of \
                 each packet to the receiving thread) outweighs the verdict.",
            );
        }
        notes.push(cost);
        if r2 < f64::from(GLOBAL_RATE) {
            notes.push(format!(
                "The random-source flood stayed under {GLOBAL_RATE} SYNs/s (the generator did \
                 not get enough of CPU {LOAD_CPU}), the pool's default budget and the global \
                 nftables limit, so neither could bite as they would at a higher rate."
            ));
        }
        if r1 < 2.0 * f64::from(SOURCE_RATE) {
            notes.push(format!(
                "The one-source flood stayed under twice the per-source rate \
                 ({SOURCE_RATE}/s): a good part of it passed the per-source limits."
            ));
        }
        let calm_max = Setup::ALL
            .iter()
            .map(|&t| med(&self.s(t).calm))
            .fold(0.0, f64::max);
        if calm_max > 0.5 * f64::from(SOURCE_RATE) {
            notes.push(format!(
                "The real client (one address) opened up to {calm_max:.0} connections a second, \
                 over half the per-source rate: during a burst its own SYNs may meet that limit."
            ));
        }
        let busy1 = Setup::ALL
            .iter()
            .flat_map(|&t| [med(&self.s(t).one.cpu1), med(&self.s(t).random.cpu1)])
            .fold(0.0, f64::max);
        let gen = Setup::ALL
            .iter()
            .flat_map(|&t| [med(&self.s(t).one.gen_cpu), med(&self.s(t).random.gen_cpu)])
            .fold(0.0, f64::max);
        let min_busy0 = Setup::ALL
            .iter()
            .map(|&t| med(&self.s(t).calm_cpu0))
            .fold(100.0, f64::min);
        if min_busy0 < 90.0 {
            notes.push(format!(
                "In a calm phase CPU {SUT_CPU} (the system under test) was as little as \
                 {min_busy0:.0}% busy: a setup with room on CPU {SUT_CPU} absorbs the flood's cost \
                 there without losing requests, and kept then says more about CPU {LOAD_CPU} \
                 than about the server."
            ));
        }
        if busy1 >= 95.0 {
            notes.push(format!(
                "CPU {LOAD_CPU} (ab, nginx, the generator) was up to {busy1:.0}% busy during the \
                 floods, so it, not the server, may have set the rate: what a setup kept is \
                 then partly what the generator left of CPU {LOAD_CPU} (its share was up to \
                 {gen:.0}% here, the same for every setup)."
            ));
        }
        let ring: u64 = Setup::ALL
            .iter()
            .map(|&t| {
                let s = self.s(t);
                s.one
                    .ring
                    .iter()
                    .chain(&s.random.ring)
                    .chain(&s.calm_ring)
                    .sum::<u64>()
            })
            .sum();
        if ring > 0 {
            notes.push(format!(
                "{ring} packets were lost between the veths (a NAPI ring full, see the floods' \
                 table): real clients' packets among them, retransmitted after 200 ms or more."
            ));
        }
        let failed: u64 = Setup::ALL.iter().map(|&t| self.s(t).failed).sum();
        let non2xx: u64 = Setup::ALL.iter().map(|&t| self.s(t).non2xx).sum();
        if failed + non2xx > 0 {
            notes.push(format!(
                "ab counted {failed} failed requests and {non2xx} non-2xx responses in all \
                 (per setup below)."
            ));
        }
        if self.quick {
            notes.push("This was a quick run: its numbers are noise.".into());
        }
        if !notes.is_empty() {
            let _ = write!(md, "\n\n{}", notes.join(" "));
        }
        let _ = writeln!(md, "\n");
    }

    fn kept_table(&self, md: &mut String) {
        let base = self.s(Setup::NftMeter);
        let _ = writeln!(
            md,
            "## Real clients' HTTPS requests/s, calm and during the floods\n\n\
             Calm: the mean of the three calm phases of a run. Kept: the flood phase over the \
             mean of the calm phases before and after it, in %.\n\n\
             | setup | calm requests/s | one-source flood: requests/s | kept % | vs baseline | \
             random-source flood: requests/s | kept % | vs baseline |\n\
             |---|---|---|---|---|---|---|---|"
        );
        for t in Setup::ALL {
            let s = self.s(t);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                t.name(),
                fmt(summarize(s.calm.clone()), 0),
                fmt(summarize(s.one.rps.clone()), 0),
                fmt(summarize(s.one.kept.clone()), 0),
                ratio(med(&s.one.kept), med(&base.one.kept)),
                fmt(summarize(s.random.rps.clone()), 0),
                fmt(summarize(s.random.kept.clone()), 0),
                ratio(med(&s.random.kept), med(&base.random.kept)),
            );
        }
        let _ = writeln!(md);
    }

    fn flood_table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## The floods\n\n\
             SYNs/s: what the generator sent over how long it ran; generator CPU: its own CPU \
             time over that (of CPU {LOAD_CPU}). Dropped: SYNs the filter dropped \
             during the flood phases, all runs (lb: `lb stats`, by source and by the pool's \
             `maxConnRate`; nftables: the rule's counter). SYN cookies: `TcpExt: \
             SyncookiesSent` of the server namespace. Backscatter: packets the server sent to \
             spoofed addresses (SYN-ACKs and their retransmits; dropped at the veth's egress). \
             Ring drops: packets a veth could not \
             hand to the other side's NAPI ring (full), to the server / to the client; any \
             there would hit real clients' packets too. Server receive work: CPU time of the \
             server veth's NAPI thread (XDP, nftables, the kernel's TCP and SYN cookies: what \
             the flood costs the server's kernel) over the phase, in % of CPU {SUT_CPU}. CPU \
             busy: while ab ran (/proc/stat); \
             CPU {SUT_CPU} holds the system under test and the server veth's receive work, CPU \
             {LOAD_CPU} ab, nginx, the generator and the client veth's receive work.\n\n\
             | setup | flood | SYNs/s | generator CPU % | SYNs sent | dropped per source | \
             dropped by a global budget | SYN cookies | backscatter | ring drops | server \
             receive work % | CPU {SUT_CPU} / CPU {LOAD_CPU} busy % |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for t in Setup::ALL {
            let s = self.s(t);
            for (what, f) in [("one source", &s.one), ("random sources", &s.random)] {
                let _ = writeln!(
                    md,
                    "| {} | {what} | {} | {:.1} | {} | {} | {} | {} | {} | {} / {} | {:.1} | {:.0} \
                     / {:.0} |",
                    t.name(),
                    fmt(summarize(f.syn_rate.clone()), 0),
                    med(&f.gen_cpu),
                    f.sent,
                    f.dropped[0],
                    f.dropped[1],
                    f.cookies,
                    f.backscatter,
                    f.ring[0],
                    f.ring[1],
                    med(&f.rx_cpu),
                    med(&f.cpu0),
                    med(&f.cpu1),
                );
            }
            let _ = writeln!(
                md,
                "| {} | none (calm) | – | – | – | – | – | – | – | {} / {} | {:.1} | {:.0} / {:.0} \
                 |",
                t.name(),
                s.calm_ring[0],
                s.calm_ring[1],
                med(&s.calm_rx_cpu),
                med(&s.calm_cpu0),
                med(&s.calm_cpu1),
            );
        }
        let _ = writeln!(
            md,
            "\nRequests ab completed, failed and non-2xx, all phases and runs:\n\n\
             | setup | completed | failed | non-2xx | TLS (ab) |\n|---|---|---|---|---|"
        );
        for t in Setup::ALL {
            let s = self.s(t);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                t.name(),
                s.requests,
                s.failed,
                s.non2xx,
                s.tls
            );
        }
        let _ = writeln!(md);
    }

    fn setup_section(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Setup\n\n\
             - **Network**: a client namespace ({CLIENT_IP}) and a server namespace ({VIP_IP}, \
             the VIP {VIP_IP}:{PORT}) joined by a veth. The server namespace's default route \
             leads out by the veth, and an nftables egress rule there (`nft-sink.nft`, the same \
             for every setup) drops what goes to an address outside the veth's subnet: \
             SYN-ACKs to spoofed addresses are built and sent, as to the internet, without \
             crossing back to the client namespace and its CPU. The one-source flood comes \
             from {FLOODER}, the random-source flood from addresses drawn for each SYN.\n\
             - **CPUs**: each system under test runs one worker on CPU {SUT_CPU} (`taskset -c \
             {SUT_CPU}`; HAProxy `nbthread 1`, lb `workers = 1`); the nginx backend (plain \
             HTTP, {VIP_IP}:{BACKEND_PORT}), ab and the flood run on CPU {LOAD_CPU}.\n\
             - **Receive work**: a veth does a received packet's work (XDP, nftables, the \
             kernel's TCP and SYN handling) on the CPU that sent it, so with the flood on CPU \
             {LOAD_CPU} the server's whole cost of the flood would land on the load \
             generator's CPU and the setups would be compared by how much they slow ab. \
             Instead each veth has GRO on and TSO off (a veth hands a packet to its peer's \
             NAPI only when the peer has XDP or GRO and the packet could be aggregated, which a \
             TSO sender's are not; attaching XDP turns TSO off on the peer, so without this \
             lb's receive work would move and HAProxy's stay) and threaded NAPI, the server side's thread pinned to CPU {SUT_CPU} and the \
             client side's to CPU {LOAD_CPU}, both SCHED_FIFO {NAPI_PRIO}, as a NIC's softirq \
             runs on the CPU it interrupts ahead of the process there. The flood's cost to \
             the server then lands on the server's CPU, as on a real machine. What stays on \
             CPU {LOAD_CPU} is the generator's own sending, the same for every setup.\n\
             - **Certificate**: one self-signed RSA-{RSA_BITS} certificate from `openssl req`, \
             served by lb and HAProxy alike; ab negotiates what each offers by default (the \
             TLS column above). RSA, not the ECDSA P-256 of the other benchmarks, so that the \
             server sets the rate: an RSA signature is expensive to make and cheap to check, \
             and the server's handshake (about 5 ms of CPU for RSA-4096 here; `openssl speed \
             rsa4096`: 4.8 ms a signature) outweighs ab's (OpenSSL 3: about 1.1 ms of CPU a \
             request, measured by hand). With ECDSA, lb's handshake costs about a quarter of \
             ab's: CPU {LOAD_CPU} saturated with CPU {SUT_CPU} half idle, and a setup kept what \
             the flood left of CPU {LOAD_CPU} (the generator's share, the same for every \
             setup), whatever the flood cost the server.\n\
             - **Per-source rate**: {SOURCE_RATE}/s with a burst of {SOURCE_RATE} for lb's \
             `sourceSynRate` and for the nftables meter alike: above what the real client (one \
             address) opens, a tenth of the one-source flood. A per-source limit the real \
             client met would measure the limit, not the flood; the findings say if the real \
             client came near it.\n\
             - **The flood**: {FLOOD_RATE} SYNs/s (twice the pool's default `maxConnRate`, ten \
             times the per-source rate) for each flood phase plus 0.6 s, bounded in count \
             and time, sent by this program's own generator (`--syn-flood`: a raw IPv4 \
             socket, up to {BATCH} SYNs per `sendmmsg`, paced every 2 ms; each SYN \
             carries MSS, SACK and window-scale options, a random source port and sequence \
             number). Not hping3: measured by hand on this machine over the same veth, \
             `hping3 -i u20 --rand-source` sent 14 000–17 000 SYNs/s and spent 72% of CPU \
             {LOAD_CPU} doing it (a timer sleep per packet), against 7% for this generator at \
             20 000/s, so ab would have lost most of its CPU to the flood whatever the server \
             did; `--flood` takes all of it. The generator's own share is in the floods' \
             table.\n"
        );
        let _ = writeln!(md, "The setups:\n");
        for t in Setup::ALL {
            let _ = writeln!(md, "- **{}**: {}.", t.name(), t.what());
        }
        let _ = writeln!(md);
    }

    fn commands_section(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Commands\n\n\
             The configs are in `{}/` (lb's and HAProxy's point at the certificate in the run's \
             temporary directory, removed afterwards: generate one with the `openssl req` line \
             below and concatenate `{CERT_NAME}.pem` and `{CERT_NAME}.key` for HAProxy). The \
             namespaces' names carry this run's tag. In order of first use (each process \
             started here was killed by pid at the end):\n\n```",
            self.configs_dir.display()
        );
        for line in self.commands {
            let _ = writeln!(md, "{line}");
        }
        let _ = writeln!(md, "```\n");
    }

    fn render(&self) -> String {
        let mut md = String::new();
        self.header(&mut md);
        self.findings(&mut md);
        self.kept_table(&mut md);
        self.flood_table(&mut md);
        self.setup_section(&mut md);
        self.commands_section(&mut md);
        md
    }

    /// The JSON beside the report: the same medians and ranges as the
    /// tables, the targets as the findings state them.
    fn results(&self) -> Results {
        let rows = |v: fn(&Samples) -> &Vec<f64>| {
            Setup::ALL
                .iter()
                .filter_map(|&t| {
                    let s = summarize(v(self.s(t)).clone());
                    (!s.median.is_nan()).then(|| Row::new(t.name(), s))
                })
                .collect::<Vec<_>>()
        };
        let (r1, r2) = (self.syn_rate(|s| &s.one), self.syn_rate(|s| &s.random));
        let comparisons = vec![
            Comparison {
                id: "flood-kept-one-source".into(),
                title: format!(
                    "Legitimate HTTPS requests/s kept during a one-source SYN flood \
                     (~{r1:.0} SYNs/s)"
                ),
                unit: "% of calm".into(),
                lower_is_better: false,
                baseline: Some(BASELINE.into()),
                rows: rows(|s| &s.one.kept),
            },
            Comparison {
                id: "flood-kept-random-sources".into(),
                title: format!(
                    "Legitimate HTTPS requests/s kept during a random-source SYN flood \
                     (~{r2:.0} SYNs/s)"
                ),
                unit: "% of calm".into(),
                lower_is_better: false,
                baseline: Some(BASELINE.into()),
                rows: rows(|s| &s.random.kept),
            },
            Comparison {
                id: "flood-calm-rps".into(),
                title: format!(
                    "Legitimate HTTPS requests/s without a flood (ab -c {CONC}, a new TLS \
                     connection per request)"
                ),
                unit: "requests/s".into(),
                lower_is_better: false,
                baseline: Some(BASELINE.into()),
                rows: rows(|s| &s.calm),
            },
        ];
        let target = |what: &str, f: fn(&Samples) -> &FloodSamples| {
            let (lb, base) = (
                summarize(f(self.s(Setup::Lb)).kept.clone()),
                med(&f(self.s(Setup::NftMeter)).kept),
            );
            results::Target {
                what: format!("Legitimate HTTPS requests/s kept during a {what} SYN flood"),
                bound: format!("lb ≥ 90% of calm, and ≥ {BASELINE}"),
                measured: format!(
                    "lb {:.0}% ({:.0}–{:.0}%), {BASELINE} {base:.0}%",
                    lb.median, lb.min, lb.max
                ),
                met: target_met(lb.median, base),
            }
        };
        Results {
            bench: "flood".into(),
            title: "SYN flood: legitimate HTTPS kept, lb vs HAProxy behind nftables".into(),
            quick: self.quick,
            runs: self.plan.runs,
            comparisons,
            targets: vec![
                target("one-source", |s| &s.one),
                target("random-source", |s| &s.random),
            ],
            versions: versions(),
            commands: self.commands.to_vec(),
        }
    }
}

/// lb keeps at least 90% and at least what the baseline keeps.
fn target_met(lb: f64, baseline: f64) -> bool {
    lb >= 90.0 && lb >= baseline
}

/// Copies the configs beside the report.
fn copy_configs(dir: &Scratch, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut files = vec![
        ("backend.conf", "backend-nginx.conf"),
        ("haproxy.cfg", "haproxy.cfg"),
        ("nft-sink.nft", "nft-sink.nft"),
    ];
    for t in Setup::ALL {
        if t.is_lb() {
            files.push((t.config_file(), t.config_file()));
        }
        if let Some((f, _)) = t.ruleset("") {
            files.push((f, f));
        }
    }
    for (from, name) in files {
        std::fs::copy(dir.0.join(from), to.join(name))
            .with_context(|| format!("copying {from} to {}", to.display()))?;
    }
    Ok(())
}

// ---- main ------------------------------------------------------------------------

fn measure(ctx: &Ctx, log: &mut Log) -> Result<[Samples; 6]> {
    let mut samples: [Samples; 6] = Default::default();
    for r in 0..ctx.plan.runs {
        for t in round_order(r) {
            check_stop()?;
            eprintln!("bench flood: run {}/{}, {}", r + 1, ctx.plan.runs, t.name());
            let run = run_setup(ctx, t, log).with_context(|| t.name().to_owned())?;
            samples[t.index()].add(&run);
        }
    }
    Ok(samples)
}

fn main() -> Result<()> {
    let o = opts()?;
    if let Some(f) = &o.flood {
        catch_signals();
        return syn_flood(f);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        ensure!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "bench flood: needs root (network namespaces, XDP, nftables), and CI=true"
        );
        eprintln!(
            "bench flood: SKIPPED: needs root (network namespaces, XDP, nftables); wrote nothing"
        );
        return Ok(());
    }
    for tool in [
        "haproxy", "nginx", "ab", "nft", "ethtool", "chrt", "taskset", "curl", "nsenter", "openssl",
    ] {
        ensure!(
            lb_tests::have_tool(tool),
            "{tool} is missing: run `cargo xtask setup`"
        );
    }
    let started = Instant::now();
    catch_signals();
    // Everything this program runs inherits CPU 1, unless started through
    // `taskset -c 0`.
    pin_to_cpu(LOAD_CPU).context("pinning to CPU 1 (this needs 2 CPUs)")?;
    let plan = Plan::new(o.quick);
    let background = background_load([SUT_CPU, LOAD_CPU])?;
    if background[0].max(background[1]) > BACKGROUND_LIMIT {
        eprintln!(
            "bench flood: WARNING: CPU {SUT_CPU} is {:.0}% and CPU {LOAD_CPU} {:.0}% busy before \
             the run: other processes will skew the figures",
            background[0], background[1]
        );
    }
    let bin = lb_bin("flood")?;
    let dir = Scratch::new("lb-bench-flood")?;
    let mut log = Log::default();
    let (cert, gen) = make_rsa_cert(&dir, RSA_BITS)?;
    log.note(&gen);
    let net = Net::new(&dir, &mut log)?;
    let conf = dir.write("backend.conf", &backend_conf())?;
    let backend = Daemon::spawn(
        "backend",
        LOAD_CPU,
        &in_ns(
            net.server().name(),
            &nginx_argv(&dir, &conf, "backend")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        ),
        &dir,
    )?;
    log.note_line(backend.cmdline.clone());
    let exe = std::env::current_exe().context("this program's path")?;
    let ctx = Ctx {
        net: &net,
        exe: &exe,
        bin: &bin,
        cert: &cert,
        dir: &dir,
        plan: &plan,
    };
    eprintln!(
        "bench flood: {} setups × {} runs, {} s per phase, in {}",
        Setup::ALL.len(),
        plan.runs,
        plan.secs,
        dir.0.display()
    );
    let samples = measure(&ctx, &mut log)?;
    drop(backend);
    drop(net);

    let out_dir = o
        .out
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let configs_dir = out_dir.join("flood-configs");
    copy_configs(&dir, &configs_dir)?;
    let report = Report {
        quick: o.quick,
        plan: &plan,
        samples: &samples,
        commands: &log.0,
        configs_dir: &configs_dir,
        elapsed: started.elapsed(),
        background,
    };
    let md = report.render();
    std::fs::write(&o.out, &md).with_context(|| format!("writing {}", o.out.display()))?;
    results::write(&o.out, &report.results())?;
    print!("{md}");
    eprintln!(
        "bench flood: wrote {} and {}",
        o.out.display(),
        results::json_path(&o.out).display()
    );
    Ok(())
}
