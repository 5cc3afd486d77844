//! Fuzz target `xdp`: arbitrary bytes as packets through the XDP program,
//! run by the kernel with `BPF_PROG_TEST_RUN`. Needs root, and the eBPF
//! object embedded at build time (`LB_EBPF_OBJECT`, as `cargo xtask`
//! passes it).
//!
//! The real object is loaded once and configured from a config text the
//! way `lb run` does (`Plan::from_config`, `DataPlane::write`): an IPv4 VIP
//! `10.0.0.1:80` and an IPv6 VIP `[2001:db8::1]:443` on one pool, every
//! rate level on (per source, global, frontend, pool) and `[xdp] overflow =
//! "rst"`. Each input runs twice: as the packet it is (when it is at least
//! an Ethernet header long), and as the recipe for a well-formed
//! Ethernet (+ VLAN tags) / IPv4 or IPv6 (+ options or extension headers) /
//! TCP SYN, to a VIP or not, with fuzzed flags, options, lengths and
//! payload, so the fuzzer reaches the SYN paths. The top bit of the first
//! byte marks the VIPs' pool saturated for both runs (as the daemon does
//! at `maxConn` with a full queue), which sends SYNs down the RST path.
//!
//! Must hold for every packet:
//! - the verdict is `XDP_PASS`, `XDP_DROP` or `XDP_TX`, never
//!   `XDP_ABORTED`;
//! - exactly one counter moved, by one, and none went back (the packet
//!   counters and every VIP's, summed over CPUs): each verdict is counted
//!   once, so the VIP's verdicts add up to the SYNs sent to it;
//! - the counter is the one a model of the parser written here from
//!   lb-ebpf's rules predicts (not IP, malformed, fragment, not TCP, not a
//!   SYN, a SYN to no VIP, or a SYN to VIP n), and it fits the verdict:
//!   `PASS` for everything but a SYN to a VIP, which is `PASS` and
//!   admitted, `DROP` and dropped by one level, or, with its pool
//!   saturated, `TX` and counted as overflow exactly when the model says
//!   its lengths allow an answer;
//! - a `TX` packet is the RST|ACK answer: addresses and ports swapped,
//!   tags kept, no options, the acknowledgment number the model computes,
//!   and both checksums right.
#![no_main]

use std::{
    path::Path,
    sync::{Mutex, OnceLock},
};

use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions},
};
use lb::{
    config::Config,
    instance,
    xdp::{DataPlane, Plan},
};
use lb_common::{family, maps, programs, PacketCounters, PoolState, VipCounters};
use libfuzzer_sys::fuzz_target;

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

/// Longest packet run: an Ethernet frame of 1500 bytes with two tags.
const MAX_PACKET: usize = 1522;

const CONFIG: &str = r#"
[global.limits]
maxConnRate = 3000
[xdp]
mode = "off"
overflow = "rst"
sourceSynRate = 100
sourceSynBurst = 20
[[frontend]]
name = "v4"
listen = "10.0.0.1:80"
pool = "web"
[frontend.limits]
maxConnRate = 1000
[[frontend]]
name = "v6"
listen = "[2001:db8::1]:443"
pool = "web"
[frontend.limits]
maxConnRate = 1000
[[pool]]
name = "web"
profile = "edge"
[profile.edge]
maxConnRate = 1500
"#;

/// A VIP as the model matches it.
struct Vip {
    family: u8,
    /// IPv4: the first four bytes, the rest zero (as the `vips` key).
    addr: [u8; 16],
    /// Network byte order.
    port: [u8; 2],
    /// `vip_stats` index.
    index: u32,
    /// `pool_state` index.
    pool: u32,
}

/// Every counter, summed over CPUs.
#[derive(Clone, PartialEq, Eq)]
struct Snapshot {
    packets: [u64; 6],
    vips: Vec<[u64; 6]>,
}

const PACKET_FIELDS: [&str; 6] = [
    "not_ip",
    "malformed",
    "fragment",
    "not_tcp",
    "tcp_not_syn",
    "syn_not_vip",
];
const VIP_FIELDS: [&str; 6] = [
    "admitted",
    "drop_source",
    "drop_global",
    "drop_frontend",
    "drop_pool",
    "overflow",
];

/// The counter that moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moved {
    Packet(&'static str),
    Vip(usize, &'static str),
}

struct Xdp {
    plane: DataPlane,
    counters: PerCpuArray<MapData, PacketCounters>,
    vip_stats: PerCpuArray<MapData, VipCounters>,
    pool_state: Array<MapData, PoolState>,
    vips: Vec<Vip>,
    saturated: bool,
    last: Snapshot,
}

fn open(dir: &Path, name: &str) -> Map {
    let data = MapData::from_pin(dir.join(name)).unwrap_or_else(|e| panic!("open map {name}: {e}"));
    Map::from_map_data(data).unwrap_or_else(|e| panic!("map {name}: {e}"))
}

impl Xdp {
    fn load() -> Self {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the xdp target needs root (it loads BPF programs)"
        );
        let cfg = Config::parse(CONFIG, Path::new("fuzz-xdp.toml")).expect("the config");
        let plan = Plan::from_config(&cfg, 1);
        instance::ensure_bpffs().expect("bpffs");
        let mut plane = DataPlane::load().expect("load the embedded XDP object");
        plane.write(&plan).expect("write the maps");
        plane
            .program(programs::XDP_LB)
            .expect("the verifier accepts the program");
        // Pins only to open the maps from here; the open maps outlive them.
        let dir = instance::pin_dir(&format!("fuzz-xdp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the pin directory");
        plane.pin(&dir).expect("pin the maps");
        let counters = PerCpuArray::try_from(open(&dir, maps::COUNTERS)).expect("counters");
        let vip_stats = PerCpuArray::try_from(open(&dir, maps::VIP_STATS)).expect("vip_stats");
        let pool_state = Array::try_from(open(&dir, maps::POOL_STATE)).expect("pool_state");
        let _ = instance::remove_pins(&dir);
        let vips = plan
            .vips
            .iter()
            .map(|(k, v, _)| Vip {
                family: k.family,
                addr: k.addr,
                port: k.port_be.to_ne_bytes(),
                index: v.vip_index,
                pool: v.pool_bucket,
            })
            .collect();
        let mut x = Self {
            plane,
            counters,
            vip_stats,
            pool_state,
            vips,
            saturated: true,
            last: Snapshot {
                packets: [0; 6],
                vips: Vec::new(),
            },
        };
        x.saturate(false);
        x.last = x.snapshot();
        x
    }

    fn saturate(&mut self, on: bool) {
        if self.saturated == on {
            return;
        }
        for vip in &self.vips {
            let mut state = self.pool_state.get(&vip.pool, 0).expect("read pool_state");
            state.saturated = u64::from(on);
            self.pool_state
                .set(vip.pool, state, 0)
                .expect("write pool_state");
        }
        self.saturated = on;
    }

    fn snapshot(&self) -> Snapshot {
        let mut packets = [0; 6];
        for c in self.counters.get(&0, 0).expect("read counters").iter() {
            let f = [
                c.not_ip,
                c.malformed,
                c.fragment,
                c.not_tcp,
                c.tcp_not_syn,
                c.syn_not_vip,
            ];
            for (sum, v) in packets.iter_mut().zip(f) {
                *sum += v;
            }
        }
        let vips = self
            .vips
            .iter()
            .map(|vip| {
                let mut sums = [0; 6];
                for c in self
                    .vip_stats
                    .get(&vip.index, 0)
                    .expect("read vip_stats")
                    .iter()
                {
                    let f = [
                        c.admitted,
                        c.drop_source,
                        c.drop_global,
                        c.drop_frontend,
                        c.drop_pool,
                        c.overflow,
                    ];
                    for (sum, v) in sums.iter_mut().zip(f) {
                        *sum += v;
                    }
                }
                sums
            })
            .collect();
        Snapshot { packets, vips }
    }

    /// The one counter that moved since the last snapshot, by one.
    fn moved(&mut self, pkt: &[u8]) -> Moved {
        let now = self.snapshot();
        let mut moved = Vec::new();
        let mut diff = |before: u64, after: u64, what: Moved| {
            let d = after
                .checked_sub(before)
                .unwrap_or_else(|| panic!("{what:?} went back: {before} -> {after}"));
            if d > 0 {
                moved.push((what, d));
            }
        };
        for (i, name) in PACKET_FIELDS.iter().enumerate() {
            diff(self.last.packets[i], now.packets[i], Moved::Packet(name));
        }
        for (v, (before, after)) in self.last.vips.iter().zip(&now.vips).enumerate() {
            for (i, name) in VIP_FIELDS.iter().enumerate() {
                diff(before[i], after[i], Moved::Vip(v, name));
            }
        }
        self.last = now;
        match moved[..] {
            [(what, 1)] => what,
            _ => panic!("not exactly one counter moved by one: {moved:?} for {pkt:02x?}"),
        }
    }

    /// Runs one packet; checks verdict, counters and any answer.
    fn run(&mut self, pkt: &[u8]) {
        let class = classify(pkt, &self.vips);
        let mut out = vec![0; pkt.len() + 256];
        let r = {
            let prog = self.plane.program(programs::XDP_LB).expect("the program");
            prog.test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {} bytes: {e}", pkt.len()))
        };
        out.truncate(usize::try_from(r.data_size_out).expect("a size"));
        let verdict = r.return_value;
        assert!(
            matches!(verdict, XDP_PASS | XDP_DROP | XDP_TX),
            "verdict {verdict} (XDP_ABORTED is {XDP_ABORTED}) for {pkt:02x?}"
        );
        let moved = self.moved(pkt);
        let expect = |want: Moved| {
            assert_eq!(
                (verdict, moved),
                (XDP_PASS, want),
                "{class:?} for {pkt:02x?}"
            );
        };
        match class {
            Class::NotIp => expect(Moved::Packet("not_ip")),
            Class::Malformed => expect(Moved::Packet("malformed")),
            Class::Fragment => expect(Moved::Packet("fragment")),
            Class::NotTcp => expect(Moved::Packet("not_tcp")),
            Class::TcpNotSyn => expect(Moved::Packet("tcp_not_syn")),
            Class::Syn { vip: None, .. } => expect(Moved::Packet("syn_not_vip")),
            Class::Syn {
                vip: Some(v),
                l3,
                l4,
                ack,
            } => match (self.saturated, ack) {
                (true, Some(ack)) => {
                    assert_eq!(
                        (verdict, moved),
                        (XDP_TX, Moved::Vip(v, "overflow")),
                        "{class:?} to a saturated pool for {pkt:02x?}"
                    );
                    check_rst(pkt, &out, l3, l4, ack);
                }
                _ => {
                    let ok = match (verdict, moved) {
                        (XDP_PASS, Moved::Vip(w, "admitted")) => w == v,
                        (XDP_DROP, Moved::Vip(w, f)) => w == v && f.starts_with("drop_"),
                        _ => false,
                    };
                    assert!(
                        ok,
                        "verdict {verdict} counted as {moved:?} for {class:?} for {pkt:02x?}"
                    );
                }
            },
        }
    }
}

/// What the model says a packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    NotIp,
    Malformed,
    Fragment,
    NotTcp,
    TcpNotSyn,
    /// A SYN: to VIP `vip` (index into the VIP list) or none; where its IP
    /// and TCP headers are; the acknowledgment number of its RST answer, if
    /// its lengths allow one.
    Syn {
        vip: Option<usize>,
        l3: usize,
        l4: usize,
        ack: Option<u32>,
    },
}

fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// The parser's rules (lb-ebpf `parse.rs`), restated over a slice.
fn classify(p: &[u8], vips: &[Vip]) -> Class {
    if p.len() < 14 {
        return Class::Malformed;
    }
    let mut ethertype = be16(p, 12);
    let mut l3 = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88A8 {
            break;
        }
        if p.len() < l3 + 4 {
            return Class::Malformed;
        }
        ethertype = be16(p, l3 + 2);
        l3 += 4;
    }
    let (fam, src_len, dst, l4) = match ethertype {
        0x0800 => {
            if p.len() < l3 + 20 {
                return Class::Malformed;
            }
            let ihl = usize::from(p[l3] & 0x0F);
            if p[l3] >> 4 != 4 || ihl < 5 {
                return Class::Malformed;
            }
            if be16(p, l3 + 6) & 0x3FFF != 0 {
                return Class::Fragment;
            }
            if p[l3 + 9] != 6 {
                return Class::NotTcp;
            }
            (family::V4, 4, l3 + 16, l3 + ihl * 4)
        }
        0x86DD => {
            if p.len() < l3 + 7 {
                return Class::Malformed;
            }
            if p[l3] >> 4 != 6 {
                return Class::Malformed;
            }
            let mut next = p[l3 + 6];
            let mut at = l3 + 40;
            for _ in 0..4 {
                if !matches!(next, 0 | 43 | 60) {
                    break;
                }
                if p.len() < at + 2 {
                    return Class::Malformed;
                }
                next = p[at];
                at += (usize::from(p[at + 1]) + 1) * 8;
            }
            match next {
                6 => {}
                44 => return Class::Fragment,
                0 | 43 | 60 => return Class::Malformed,
                _ => return Class::NotTcp,
            }
            (family::V6, 16, l3 + 24, at)
        }
        _ => return Class::NotIp,
    };
    if l4 > 512 || p.len() < l4 + 20 {
        return Class::Malformed;
    }
    let flags = p[l4 + 13];
    if flags & 0x02 == 0 || flags & 0x10 != 0 {
        return Class::TcpNotSyn;
    }
    let mut addr = [0u8; 16];
    addr[..src_len].copy_from_slice(&p[dst..dst + src_len]);
    let port = [p[l4 + 2], p[l4 + 3]];
    let vip = vips
        .iter()
        .position(|v| v.family == fam && v.addr == addr && v.port == port);
    // The RST's acknowledgment (lb-ebpf `rst.rs`): sequence number plus
    // SYN, data and FIN; none when the IP length ends inside the TCP
    // header or the data offset is below 5.
    let ip_end = if fam == family::V4 {
        l3 + usize::from(be16(p, l3 + 2))
    } else {
        l3 + 40 + usize::from(be16(p, l3 + 4))
    };
    let hdr_len = usize::from(p[l4 + 12] >> 4) * 4;
    let data_start = l4 + hdr_len;
    let ack = (hdr_len >= 20 && ip_end >= data_start)
        .then(|| u32::try_from(ip_end - data_start).ok())
        .flatten()
        .map(|data| {
            be32(p, l4 + 4)
                .wrapping_add(1)
                .wrapping_add(data)
                .wrapping_add(u32::from(flags & 0x01))
        });
    Class::Syn { vip, l3, l4, ack }
}

/// The Internet checksum of `data` (0 over a header whose checksum is
/// right).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

/// `out` is the RST|ACK answer to the SYN `syn`.
fn check_rst(syn: &[u8], out: &[u8], l3: usize, l4: usize, ack: u32) {
    let v6 = syn[l3] >> 4 == 6;
    let (ip_len, src, alen) = if v6 { (40, 8, 16) } else { (20, 12, 4) };
    let dst = src + alen;
    let tcp = l3 + ip_len;
    let what = format!("RST for {syn:02x?}: {out:02x?}");
    assert_eq!(out.len(), tcp + 20, "length; {what}");
    assert_eq!(out[..6], syn[6..12], "Ethernet destination; {what}");
    assert_eq!(out[6..12], syn[..6], "Ethernet source; {what}");
    assert_eq!(out[12..l3], syn[12..l3], "ethertype and tags; {what}");
    assert_eq!(
        out[l3 + src..l3 + dst],
        syn[l3 + dst..l3 + dst + alen],
        "IP source; {what}"
    );
    assert_eq!(
        out[l3 + dst..l3 + dst + alen],
        syn[l3 + src..l3 + dst],
        "IP destination; {what}"
    );
    let mut pseudo = out[l3 + src..l3 + dst + alen].to_vec();
    if v6 {
        assert_eq!(out[l3], 0x60, "IPv6 version; {what}");
        assert_eq!(
            (be16(out, l3 + 4), out[l3 + 6]),
            (20, 6),
            "IPv6 length, next; {what}"
        );
        pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
    } else {
        assert_eq!(out[l3], 0x45, "IPv4 version, IHL; {what}");
        assert_eq!(
            (be16(out, l3 + 2), out[l3 + 9]),
            (40, 6),
            "IPv4 length, protocol; {what}"
        );
        assert_eq!(checksum(&out[l3..tcp]), 0, "IPv4 checksum; {what}");
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
    }
    let t = &out[tcp..];
    assert_eq!(t[..2], syn[l4 + 2..l4 + 4], "source port; {what}");
    assert_eq!(t[2..4], syn[l4..l4 + 2], "destination port; {what}");
    assert_eq!((be32(t, 4), be32(t, 8)), (0, ack), "seq, ack; {what}");
    assert_eq!((t[12], t[13]), (0x50, 0x14), "data offset, RST|ACK; {what}");
    pseudo.extend_from_slice(t);
    assert_eq!(checksum(&pseudo), 0, "TCP checksum; {what}");
}

/// Reads a recipe: bytes in order, zeros once they run out.
struct Recipe<'a>(&'a [u8]);

impl Recipe<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// A TCP SYN built from `data` as a recipe (see the module docs).
fn syn_from(data: &[u8], vips: &[Vip]) -> Vec<u8> {
    let mut r = Recipe(data);
    // Bit 7 is the saturation bit, read by the caller.
    let ctl = r.byte();
    let v6 = ctl & 0x01 != 0;
    let tags = (ctl >> 1) & 0x03;
    let to_vip = ctl & 0x08 == 0;
    let flags = if ctl & 0x10 != 0 { r.byte() } else { 0x02 };
    let fuzz_ip_len = ctl & 0x20 != 0;
    let fuzz_doff = ctl & 0x40 != 0;
    let ip_words = usize::from(r.byte() % 11);
    let tcp_words = usize::from(r.byte() % 11);
    let src = r.take(16);
    let sport = r.take(2);
    let seq = r.take(4);
    let (dst, dport) = match vips.iter().find(|v| (v.family == family::V6) == v6) {
        Some(v) if to_vip => (v.addr.to_vec(), v.port.to_vec()),
        _ => (r.take(16), r.take(2)),
    };
    let ip_len = r.take(2);
    let doff = r.byte() & 0x0F;
    let tcp_opts = r.take(tcp_words * 4);

    let mut pkt = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (i, tpid) in match tags {
        0 => &[][..],
        1 => &[0x8100u16][..],
        2 => &[0x88A8, 0x8100][..],
        _ => &[0x8100, 0x8100][..],
    }
    .iter()
    .enumerate()
    {
        pkt.extend_from_slice(&tpid.to_be_bytes());
        pkt.extend_from_slice(&(100 + u16::try_from(i).unwrap_or(0)).to_be_bytes());
    }
    pkt.extend_from_slice(if v6 { &[0x86, 0xDD] } else { &[0x08, 0x00] });
    let l3 = pkt.len();

    let mut ip = Vec::new();
    let mut exts: Vec<u8> = Vec::new();
    if v6 {
        // Extension headers: hop-by-hop, routing, destination options,
        // fragment or something else, each 8 to 24 bytes.
        let kinds: Vec<(u8, u8)> = (0..ip_words % 5)
            .map(|_| {
                (
                    [0u8, 43, 60, 44, 17][usize::from(r.byte() % 5)],
                    r.byte() % 3,
                )
            })
            .collect();
        for (i, (_, len)) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).map_or(6, |k| k.0);
            exts.push(next);
            exts.push(*len);
            exts.resize(exts.len() + 6 + usize::from(*len) * 8, 0);
        }
        ip.extend_from_slice(&[0x60, 0, 0, 0, 0, 0]);
        ip.push(kinds.first().map_or(6, |k| k.0));
        ip.push(64);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&exts);
    } else {
        let opts = r.take(ip_words * 4);
        ip.push(0x40 | u8::try_from(5 + ip_words).unwrap_or(15));
        ip.extend_from_slice(&[0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
        ip.extend_from_slice(&src[..4]);
        ip.extend_from_slice(&dst[..4]);
        ip.extend_from_slice(&opts);
    }

    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport);
    tcp.extend_from_slice(&dport);
    tcp.extend_from_slice(&seq);
    tcp.extend_from_slice(&[0; 4]);
    let doff = if fuzz_doff {
        doff
    } else {
        u8::try_from(5 + tcp_words).unwrap_or(15)
    };
    tcp.push(doff << 4);
    tcp.push(flags);
    tcp.extend_from_slice(&[0xFA, 0xF0, 0, 0, 0, 0]);
    tcp.extend_from_slice(&tcp_opts);
    let room = MAX_PACKET.saturating_sub(l3 + ip.len() + tcp.len());
    tcp.extend_from_slice(&r.0[..r.0.len().min(room)]);

    // Lengths: right, or from the recipe.
    if v6 {
        let len = u16::try_from(exts.len() + tcp.len()).unwrap_or(u16::MAX);
        let len = if fuzz_ip_len { be16(&ip_len, 0) } else { len };
        ip[4..6].copy_from_slice(&len.to_be_bytes());
    } else {
        let len = u16::try_from(ip.len() + tcp.len()).unwrap_or(u16::MAX);
        let len = if fuzz_ip_len { be16(&ip_len, 0) } else { len };
        ip[2..4].copy_from_slice(&len.to_be_bytes());
    }
    pkt.extend_from_slice(&ip);
    pkt.extend_from_slice(&tcp);
    pkt
}

fn xdp() -> &'static Mutex<Xdp> {
    static XDP: OnceLock<Mutex<Xdp>> = OnceLock::new();
    XDP.get_or_init(|| Mutex::new(Xdp::load()))
}

fuzz_target!(|data: &[u8]| {
    let mut x = xdp()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    x.saturate(data.first().is_some_and(|b| b & 0x80 != 0));
    // BPF_PROG_TEST_RUN wants at least an Ethernet header.
    if data.len() >= 14 {
        x.run(&data[..data.len().min(MAX_PACKET)]);
    }
    let syn = syn_from(data, &x.vips);
    x.run(&syn);
});
