//! Packet fixtures through BPF_PROG_TEST_RUN: each packet, the verdict the XDP
//! program must give it, and the one counter that must move (read back from
//! the pinned maps, the way `lb stats` reads them).
//!
//! The `[xdp] overflow` fixtures also check the packet the program sends
//! back (a RST|ACK, checksums recomputed here).
//!
//! Needs root (loads BPF). Every fixture runs against the real embedded object.

use lb::stats::{Counters, Stats};
use lb_common::{bucket, VipCounters};
use lb_tests::{
    harness::{pin_to_cpu, XdpHarness},
    have_root,
    packet::{self, flags, proto},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const VIP4: [u8; 4] = [10, 0, 0, 1];
const VIP4_POOL: [u8; 4] = [10, 0, 0, 2];
const CLIENT4: [u8; 4] = [192, 0, 2, 7];
const CLIENT4_B: [u8; 4] = [192, 0, 2, 8];
const VIP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

/// Per-VIP budgets are tiny so "admitted, then dropped" takes a few packets;
/// no bucket refills measurably within a test (1 token per second). Trust
/// is off, so an untrusted source may take a whole burst (see
/// [`half_of_a_burst_is_kept_for_sources_that_completed_a_handshake`]).
const CONFIG: &str = r#"
[xdp]
mode = "off"
trustSeconds = 0
[[frontend]]
name = "v4"
listen = "10.0.0.1:80"
pool = "open"
[frontend.limits]
maxConnRate = 2
[[frontend]]
name = "v6"
listen = "[2001:db8::1]:443"
pool = "open"
[frontend.limits]
maxConnRate = 2
[[frontend]]
name = "pooled"
listen = "10.0.0.2:80"
pool = "tight"
[[pool]]
name = "open"
profile = "unlimited"
[[pool]]
name = "tight"
profile = "tight"
[profile.unlimited]
maxConnRate = 0
[profile.tight]
maxConnRate = 1
"#;

/// The harness plus fixture assertions.
struct Fixture(XdpHarness);

impl Fixture {
    fn new(config: &str) -> Self {
        pin_to_cpu(0).expect("pin to CPU 0");
        Self(XdpHarness::new(config).expect("load and configure the XDP program"))
    }

    fn stats(&self) -> Stats {
        self.0.stats().expect("read counters")
    }

    /// Runs `pkt`, asserts its verdict, and asserts that exactly one packet
    /// counter moved, by one: the one `field` picks.
    fn expect(&mut self, what: &str, pkt: &[u8], verdict: u32, field: fn(&Counters) -> u64) {
        self.expect_output(what, pkt, verdict, field);
    }

    /// As [`Self::expect`]; returns the packet as the program left it.
    fn expect_output(
        &mut self,
        what: &str,
        pkt: &[u8],
        verdict: u32,
        field: fn(&Counters) -> u64,
    ) -> Vec<u8> {
        let before = self.stats().total();
        let (got, out) = self.0.run_output(pkt).expect("run");
        let after = self.stats().total();
        assert_eq!(got, verdict, "{what}: verdict");
        assert_eq!(field(&after) - field(&before), 1, "{what}: its counter");
        assert_eq!(
            sum(&after) - sum(&before),
            1,
            "{what}: no other counter moved"
        );
        out
    }

    fn vip(&self, index: usize) -> VipCounters {
        self.stats().vips[index].total()
    }
}

fn sum(c: &Counters) -> u64 {
    c.not_ip
        + c.malformed
        + c.fragment
        + c.not_tcp
        + c.tcp_not_syn
        + c.syn_not_vip
        + c.syn_admitted
        + c.syn_dropped
        + c.syn_overflow
}

const fn admitted(c: &Counters) -> u64 {
    c.syn_admitted
}
const fn dropped(c: &Counters) -> u64 {
    c.syn_dropped
}
const fn overflowed(c: &Counters) -> u64 {
    c.syn_overflow
}

#[test]
fn syns_to_a_vip_are_admitted_until_the_bucket_is_empty_v4_and_v6() {
    if !have_root("syns_to_a_vip_are_admitted_until_the_bucket_is_empty_v4_and_v6") {
        return;
    }
    let mut f = Fixture::new(CONFIG);
    let syn4 = packet::v4_tcp(CLIENT4, VIP4, 80, flags::SYN);
    f.expect("IPv4 SYN 1", &syn4, XDP_PASS, admitted);
    f.expect("IPv4 SYN 2", &syn4, XDP_PASS, admitted);
    f.expect("IPv4 SYN 3, bucket empty", &syn4, XDP_DROP, dropped);
    let v4 = f.vip(0);
    assert_eq!((v4.admitted, v4.drop_frontend, v4.dropped()), (2, 1, 1));

    let syn6 = packet::v6_tcp(CLIENT6, VIP6, &[], 443, flags::SYN);
    f.expect("IPv6 SYN 1", &syn6, XDP_PASS, admitted);
    // Behind hop-by-hop, routing and destination-options headers.
    let syn6_ext = packet::v6_tcp(
        CLIENT6,
        VIP6,
        &[
            (proto::HOPOPTS, 0),
            (proto::ROUTING, 2),
            (proto::DSTOPTS, 1),
        ],
        443,
        flags::SYN,
    );
    f.expect(
        "IPv6 SYN behind extension headers",
        &syn6_ext,
        XDP_PASS,
        admitted,
    );
    f.expect("IPv6 SYN 3, bucket empty", &syn6, XDP_DROP, dropped);
    let v6 = f.vip(1);
    assert_eq!((v6.admitted, v6.drop_frontend), (2, 1));
    // The v4 VIP's drops did not touch the v6 VIP and vice versa.
    assert_eq!(f.vip(0).admitted, 2);
}

#[test]
fn pool_and_global_levels_drop_with_their_own_reason() {
    if !have_root("pool_and_global_levels_drop_with_their_own_reason") {
        return;
    }
    let mut f = Fixture::new(CONFIG);
    let syn = packet::v4_tcp(CLIENT4, VIP4_POOL, 80, flags::SYN);
    f.expect("pool SYN 1", &syn, XDP_PASS, admitted);
    f.expect("pool SYN 2, pool empty", &syn, XDP_DROP, dropped);
    let v = f.vip(2);
    assert_eq!((v.admitted, v.drop_pool, v.drop_frontend), (1, 1, 0));

    // Global 3/s over frontends of 2/s each. A SYN the frontend refuses
    // gives its global token back, so the v6 VIP still gets the last one.
    let global = CONFIG.replace("[xdp]", "[global.limits]\nmaxConnRate = 3\n[xdp]");
    let mut g = Fixture::new(&global);
    let syn4 = packet::v4_tcp(CLIENT4, VIP4, 80, flags::SYN);
    let syn6 = packet::v6_tcp(CLIENT6, VIP6, &[], 443, flags::SYN);
    g.expect("v4 1", &syn4, XDP_PASS, admitted);
    g.expect("v4 2", &syn4, XDP_PASS, admitted);
    g.expect("v4 3, frontend empty", &syn4, XDP_DROP, dropped);
    g.expect("v6 1, the refunded global token", &syn6, XDP_PASS, admitted);
    g.expect("v6 2, global empty", &syn6, XDP_DROP, dropped);
    assert_eq!(g.vip(0).drop_frontend, 1);
    assert_eq!((g.vip(1).drop_global, g.vip(1).drop_frontend), (1, 0));
}

#[test]
fn one_flooding_source_is_dropped_while_another_passes() {
    if !have_root("one_flooding_source_is_dropped_while_another_passes") {
        return;
    }
    let cfg = CONFIG.replace(
        "mode = \"off\"",
        "mode = \"off\"\nsourceSynRate = 1\nsourceSynBurst = 1",
    );
    let mut f = Fixture::new(&cfg);
    let from_a = packet::v4_tcp(CLIENT4, VIP4, 80, flags::SYN);
    let from_b = packet::v4_tcp(CLIENT4_B, VIP4, 80, flags::SYN);
    f.expect("source A 1", &from_a, XDP_PASS, admitted);
    f.expect("source A 2, its burst spent", &from_a, XDP_DROP, dropped);
    f.expect("source A 3", &from_a, XDP_DROP, dropped);
    f.expect("source B 1", &from_b, XDP_PASS, admitted);
    let v = f.vip(0);
    assert_eq!((v.admitted, v.drop_source, v.drop_frontend), (2, 2, 0));
    // IPv6 sources are keyed by /64: another host in the same /64 shares it.
    let mut same64 = CLIENT6;
    same64[15] = 99;
    let syn6 = |src| packet::v6_tcp(src, VIP6, &[], 443, flags::SYN);
    f.expect("v6 source 1", &syn6(CLIENT6), XDP_PASS, admitted);
    f.expect("v6 same /64", &syn6(same64), XDP_DROP, dropped);
    assert_eq!(f.vip(1).drop_source, 1);
}

#[test]
fn half_of_a_burst_is_kept_for_sources_that_completed_a_handshake() {
    if !have_root("half_of_a_burst_is_kept_for_sources_that_completed_a_handshake") {
        return;
    }
    // The v4 frontend: 4 SYN/s, a burst of 4, trust for 300 s.
    let cfg = CONFIG
        .replace("trustSeconds = 0", "trustSeconds = 300")
        .replacen("maxConnRate = 2", "maxConnRate = 4", 1);
    let mut f = Fixture::new(&cfg);
    let syn = |src| packet::v4_tcp(src, VIP4, 80, flags::SYN);
    // A source never seen to complete a handshake (a spoofed one) gets
    // half the burst.
    f.expect("untrusted 1", &syn(CLIENT4), XDP_PASS, admitted);
    f.expect("untrusted 2", &syn(CLIENT4), XDP_PASS, admitted);
    f.expect("untrusted 3, half spent", &syn(CLIENT4), XDP_DROP, dropped);
    // A source a worker accepted a connection from gets the other half.
    let now = lb::trust::monotonic_ns();
    f.0.trust(CLIENT4_B.into(), now).expect("trust B");
    f.expect("trusted 1, reserve", &syn(CLIENT4_B), XDP_PASS, admitted);
    f.expect("trusted 2, reserve", &syn(CLIENT4_B), XDP_PASS, admitted);
    f.expect("trusted 3, all spent", &syn(CLIENT4_B), XDP_DROP, dropped);
    let v = f.vip(0);
    assert_eq!((v.admitted, v.admitted_trusted, v.drop_frontend), (4, 2, 2));

    // Trust lapses `trustSeconds` after the last accept.
    let mut g = Fixture::new(&cfg);
    g.expect("untrusted 1", &syn(CLIENT4), XDP_PASS, admitted);
    g.expect("untrusted 2", &syn(CLIENT4), XDP_PASS, admitted);
    g.0.trust(CLIENT4_B.into(), now.saturating_sub(301_000_000_000))
        .expect("trust B long ago");
    g.expect("lapsed trust", &syn(CLIENT4_B), XDP_DROP, dropped);
    assert_eq!(g.vip(0).admitted_trusted, 0);
}

#[test]
fn vlan_tagged_syns_are_seen() {
    if !have_root("vlan_tagged_syns_are_seen") {
        return;
    }
    let mut f = Fixture::new(CONFIG);
    let ip = packet::ipv4(
        CLIENT4,
        VIP4,
        proto::TCP,
        &[],
        0,
        &packet::tcp(1, 80, flags::SYN),
    );
    let mut single = packet::eth(0x0800, &[packet::TPID_8021Q]);
    single.extend(&ip);
    let mut double = packet::eth(0x0800, &[packet::TPID_8021AD, packet::TPID_8021Q]);
    double.extend(&ip);
    f.expect("802.1Q SYN", &single, XDP_PASS, admitted);
    f.expect("QinQ SYN", &double, XDP_PASS, admitted);
    f.expect("QinQ SYN, bucket empty", &double, XDP_DROP, dropped);
}

#[test]
fn everything_that_is_not_a_syn_to_a_vip_passes_with_its_reason() {
    if !have_root("everything_that_is_not_a_syn_to_a_vip_passes_with_its_reason") {
        return;
    }
    let mut f = Fixture::new(CONFIG);
    for (name, bits) in [
        ("SYN-ACK", flags::SYN | flags::ACK),
        ("ACK", flags::ACK),
        ("RST", flags::RST),
        ("FIN", flags::FIN | flags::ACK),
    ] {
        f.expect(
            name,
            &packet::v4_tcp(CLIENT4, VIP4, 80, bits),
            XDP_PASS,
            |c| c.tcp_not_syn,
        );
        f.expect(
            name,
            &packet::v6_tcp(CLIENT6, VIP6, &[], 443, bits),
            XDP_PASS,
            |c| c.tcp_not_syn,
        );
    }
    f.expect(
        "SYN to a non-VIP port",
        &packet::v4_tcp(CLIENT4, VIP4, 81, flags::SYN),
        XDP_PASS,
        |c| c.syn_not_vip,
    );
    f.expect(
        "SYN to a non-VIP address",
        &packet::v4_tcp(CLIENT4, [10, 0, 0, 9], 80, flags::SYN),
        XDP_PASS,
        |c| c.syn_not_vip,
    );
    f.expect(
        "IPv6 SYN to a non-VIP port",
        &packet::v6_tcp(CLIENT6, VIP6, &[], 80, flags::SYN),
        XDP_PASS,
        |c| c.syn_not_vip,
    );

    let mut udp = packet::eth(0x0800, &[]);
    udp.extend(packet::ipv4(
        CLIENT4,
        VIP4,
        proto::UDP,
        &[],
        0,
        &[0, 53, 0, 80, 0, 8, 0, 0],
    ));
    f.expect("UDP", &udp, XDP_PASS, |c| c.not_tcp);
    let mut icmp = packet::eth(0x0800, &[]);
    icmp.extend(packet::ipv4(
        CLIENT4,
        VIP4,
        proto::ICMP,
        &[],
        0,
        &[8, 0, 0, 0, 0, 1, 0, 1],
    ));
    f.expect("ICMP", &icmp, XDP_PASS, |c| c.not_tcp);
    f.expect("ARP", &packet::arp(), XDP_PASS, |c| c.not_ip);

    // IPv4 fragments: first (more-fragments set) and a later one; IPv6 with
    // a fragment header.
    let seg = packet::tcp(1, 80, flags::SYN);
    for (name, frag) in [
        ("IPv4 first fragment", 0x2000),
        ("IPv4 later fragment", 0x0010),
    ] {
        let mut p = packet::eth(0x0800, &[]);
        p.extend(packet::ipv4(CLIENT4, VIP4, proto::TCP, &[], frag, &seg));
        f.expect(name, &p, XDP_PASS, |c| c.fragment);
    }
    f.expect(
        "IPv6 fragment header",
        &packet::v6_tcp(CLIENT6, VIP6, &[(proto::FRAGMENT, 0)], 443, flags::SYN),
        XDP_PASS,
        |c| c.fragment,
    );

    // No SYN was admitted or dropped by any of the above.
    assert_eq!(f.vip(0).admitted + f.vip(0).dropped(), 0);
}

#[test]
fn ipv4_options_are_skipped() {
    if !have_root("ipv4_options_are_skipped") {
        return;
    }
    let mut f = Fixture::new(CONFIG);
    // NOP, NOP, a 4-byte timestamp-ish option, 12 bytes in all: IHL 8.
    let opts = [1, 1, 0x44, 4, 5, 0, 1, 1, 1, 1, 1, 1];
    let mut p = packet::eth(0x0800, &[]);
    p.extend(packet::ipv4(
        CLIENT4,
        VIP4,
        proto::TCP,
        &opts,
        0,
        &packet::tcp(1, 80, flags::SYN),
    ));
    f.expect("SYN with IPv4 options", &p, XDP_PASS, admitted);
    // The port is read past the options: to port 81 it is no VIP.
    let mut q = packet::eth(0x0800, &[]);
    q.extend(packet::ipv4(
        CLIENT4,
        VIP4,
        proto::TCP,
        &opts,
        0,
        &packet::tcp(1, 81, flags::SYN),
    ));
    f.expect("SYN with options to a non-VIP port", &q, XDP_PASS, |c| {
        c.syn_not_vip
    });
}

#[test]
fn a_syn_truncated_at_every_header_boundary_passes_as_malformed() {
    if !have_root("a_syn_truncated_at_every_header_boundary_passes_as_malformed") {
        return;
    }
    let mut f = Fixture::new(CONFIG);
    let v4 = packet::v4_tcp(CLIENT4, VIP4, 80, flags::SYN);
    // BPF_PROG_TEST_RUN needs at least an Ethernet header (14 bytes).
    // 14: Ethernet only; 20: inside IPv4; 33: IPv4 minus one; 34: IPv4 only;
    // 40: inside TCP; 53: TCP minus one.
    for len in [14, 20, 33, 34, 40, 53] {
        f.expect(
            &format!("IPv4 SYN cut at {len}"),
            &v4[..len],
            XDP_PASS,
            |c| c.malformed,
        );
    }
    let v6 = packet::v6_tcp(CLIENT6, VIP6, &[(proto::HOPOPTS, 0)], 443, flags::SYN);
    // 30: inside IPv6; 54: IPv6 only; 58: inside the extension header;
    // 62: extension header only; 70: inside TCP; 81: TCP minus one.
    for len in [30, 54, 58, 62, 70, 81] {
        f.expect(
            &format!("IPv6 SYN cut at {len}"),
            &v6[..len],
            XDP_PASS,
            |c| c.malformed,
        );
    }
    let mut vlan = packet::eth(0x0800, &[packet::TPID_8021Q]);
    vlan.extend(packet::ipv4(
        CLIENT4,
        VIP4,
        proto::TCP,
        &[],
        0,
        &packet::tcp(1, 80, flags::SYN),
    ));
    // 16: inside the tag.
    f.expect("VLAN SYN cut inside the tag", &vlan[..16], XDP_PASS, |c| {
        c.malformed
    });
    // IHL below 5 makes no sense.
    let mut bad = v4.clone();
    bad[14] = 0x44;
    f.expect("IPv4 with IHL 4", &bad, XDP_PASS, |c| c.malformed);
    // The whole packet still works afterwards.
    f.expect("whole IPv4 SYN", &v4, XDP_PASS, admitted);
}

/// The `pool_state` slot of pool `i` (0-based, in config order).
fn pool_slot(i: u32) -> u32 {
    bucket::pool(i).expect("pool index in range")
}

/// [`CONFIG`] with `[xdp] overflow = "<action>"`.
fn with_overflow(action: &str) -> String {
    CONFIG.replace(
        "mode = \"off\"",
        &format!("mode = \"off\"\noverflow = \"{action}\""),
    )
}

/// Ethernet + IPv4 (with `ip_options`) + a TCP SYN from port 40000 with
/// sequence number `seq`, [`packet::SYN_OPTIONS`] and `data`.
fn syn4(dst: [u8; 4], ip_options: &[u8], seq: u32, data: &[u8]) -> Vec<u8> {
    let seg = packet::tcp_segment(40_000, 80, flags::SYN, seq, &packet::SYN_OPTIONS, data);
    let mut p = packet::eth(0x0800, &[]);
    p.extend(packet::ipv4(CLIENT4, dst, proto::TCP, ip_options, 0, &seg));
    p
}

/// Ethernet + IPv6 (+ `ext`) + a TCP SYN to port 443 with
/// [`packet::SYN_OPTIONS`].
fn syn6(ext: &[(u8, u8)], seq: u32) -> Vec<u8> {
    let seg = packet::tcp_segment(40_000, 443, flags::SYN, seq, &packet::SYN_OPTIONS, &[]);
    let mut p = packet::eth(0x86DD, &[]);
    p.extend(packet::ipv6(CLIENT6, VIP6, ext, proto::TCP, &seg));
    p
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Checks that `out` is the RST|ACK answer to the SYN `syn`, both with
/// their IP header at `l3`: Ethernet addresses swapped (the rest of the
/// Ethernet header and tags kept), IP addresses and ports swapped, no IP or
/// TCP options, `ack` acknowledged, both checksums right (computed here from
/// the bytes), and nothing after the TCP header.
fn assert_rst(what: &str, syn: &[u8], out: &[u8], l3: usize, ack: u32) {
    let v6 = out[l3] >> 4 == 6;
    let (ip_len, src, dst) = if v6 { (40, 8, 24) } else { (20, 12, 16) };
    let alen = dst - src;
    let tcp = l3 + ip_len;
    assert_eq!(out.len(), tcp + 20, "{what}: cut to the headers");
    assert_eq!(out[..6], syn[6..12], "{what}: Ethernet destination");
    assert_eq!(out[6..12], syn[..6], "{what}: Ethernet source");
    assert_eq!(out[12..l3], syn[12..l3], "{what}: ethertype and tags kept");
    assert_eq!(
        out[l3 + src..l3 + src + alen],
        syn[l3 + dst..l3 + dst + alen],
        "{what}: IP source is the VIP"
    );
    assert_eq!(
        out[l3 + dst..l3 + dst + alen],
        syn[l3 + src..l3 + src + alen],
        "{what}: IP destination is the client"
    );
    let syn_tcp = syn_l4(syn, l3);
    // Pseudo-header: addresses, then (IPv4) 0, proto, 16-bit length or
    // (IPv6) 32-bit length, 0 0 0, proto.
    let mut pseudo = out[l3 + src..l3 + src + 2 * alen].to_vec();
    if v6 {
        assert_eq!(out[l3], 0x60, "{what}: IPv6 version, class 0");
        assert_eq!(be16(out, l3 + 4), 20, "{what}: IPv6 payload length");
        assert_eq!(out[l3 + 6], proto::TCP, "{what}: next header TCP");
        assert_eq!(out[l3 + 7], 64, "{what}: hop limit");
        pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, proto::TCP]);
    } else {
        assert_eq!(out[l3], 0x45, "{what}: IPv4, IHL 5");
        assert_eq!(be16(out, l3 + 2), 40, "{what}: IPv4 total length");
        assert_eq!(out[l3 + 8], 64, "{what}: TTL");
        assert_eq!(out[l3 + 9], proto::TCP, "{what}: protocol TCP");
        assert_eq!(be16(out, l3 + 6) & 0x3FFF, 0, "{what}: not a fragment");
        assert_eq!(
            packet::checksum(&out[l3..l3 + 20]),
            0,
            "{what}: IPv4 header checksum"
        );
        pseudo.extend_from_slice(&[0, proto::TCP, 0, 20]);
    }
    let t = &out[tcp..];
    assert_eq!(t[..2], syn[syn_tcp + 2..syn_tcp + 4], "{what}: source port");
    assert_eq!(
        t[2..4],
        syn[syn_tcp..syn_tcp + 2],
        "{what}: destination port"
    );
    assert_eq!(be32(t, 4), 0, "{what}: seq 0");
    assert_eq!(be32(t, 8), ack, "{what}: ack");
    assert_eq!(t[12], 5 << 4, "{what}: data offset 5");
    assert_eq!(t[13], flags::RST | flags::ACK, "{what}: RST|ACK");
    pseudo.extend_from_slice(t);
    assert_eq!(packet::checksum(&pseudo), 0, "{what}: TCP checksum");
}

/// Offset of the TCP header of a fixture packet with its IP header at
/// `l3`: past IPv4 options, or past IPv6 extension headers.
fn syn_l4(syn: &[u8], l3: usize) -> usize {
    if syn[l3] >> 4 == 4 {
        return l3 + usize::from(syn[l3] & 0x0F) * 4;
    }
    let (mut next, mut at) = (syn[l3 + 6], l3 + 40);
    while [proto::HOPOPTS, proto::ROUTING, proto::DSTOPTS].contains(&next) {
        next = syn[at];
        at += (usize::from(syn[at + 1]) + 1) * 8;
    }
    at
}

#[test]
fn overflow_rst_answers_syns_to_a_saturated_pool_v4_v6_vlan() {
    if !have_root("overflow_rst_answers_syns_to_a_saturated_pool_v4_v6_vlan") {
        return;
    }
    let mut f = Fixture::new(&with_overflow("rst"));
    // VIP4 and VIP6 use pool 0 ("open"); VIP4_POOL uses pool 1.
    f.0.set_saturated(pool_slot(0), true).expect("saturate");

    let syn = syn4(VIP4, &[], 0x1234_5678, &[]);
    assert_eq!(syn.len(), 66, "a SYN with 12 option bytes");
    let out = f.expect_output("IPv4 SYN, MSS etc.", &syn, XDP_TX, overflowed);
    assert_eq!(out.len(), 54);
    assert_rst("IPv4", &syn, &out, 14, 0x1234_5679);

    // Sequence numbers wrap; IPv4 options are dropped from the answer.
    let opts = [1, 1, 0x44, 4, 5, 0, 1, 1, 1, 1, 1, 1];
    let syn = syn4(VIP4, &opts, u32::MAX, &[]);
    let out = f.expect_output("IPv4 SYN with IP options", &syn, XDP_TX, overflowed);
    assert_eq!(out.len(), 54);
    assert_rst("IPv4 with IP options", &syn, &out, 14, 0);

    // Data on the SYN is acknowledged too (ack = seq + 1 + 5).
    let syn = syn4(VIP4, &[], 1000, b"hello");
    let out = f.expect_output("IPv4 SYN with data", &syn, XDP_TX, overflowed);
    assert_rst("IPv4 with data", &syn, &out, 14, 1006);

    let syn = syn6(&[], 7);
    assert_eq!(syn.len(), 86);
    let out = f.expect_output("IPv6 SYN, MSS etc.", &syn, XDP_TX, overflowed);
    assert_eq!(out.len(), 74);
    assert_rst("IPv6", &syn, &out, 14, 8);

    // Behind extension headers, which the answer does not carry.
    let syn = syn6(&[(proto::HOPOPTS, 0), (proto::DSTOPTS, 1)], 7);
    let out = f.expect_output("IPv6 SYN behind ext headers", &syn, XDP_TX, overflowed);
    assert_eq!(out.len(), 74);
    assert_rst("IPv6 with extension headers", &syn, &out, 14, 8);

    // 802.1Q and QinQ: tags kept, the answer leaves on the same VLAN.
    for (name, tags) in [
        ("802.1Q", &[packet::TPID_8021Q][..]),
        ("QinQ", &[packet::TPID_8021AD, packet::TPID_8021Q][..]),
    ] {
        let seg = packet::tcp_segment(40_000, 80, flags::SYN, 41, &packet::SYN_OPTIONS, &[]);
        let mut syn = packet::eth(0x0800, tags);
        syn.extend(packet::ipv4(CLIENT4, VIP4, proto::TCP, &[], 0, &seg));
        let out = f.expect_output(name, &syn, XDP_TX, overflowed);
        let l3 = 14 + 4 * tags.len();
        assert_eq!(out.len(), l3 + 40);
        assert_rst(name, &syn, &out, l3, 42);
    }
    assert_eq!(f.vip(0).overflow, 5);
    assert_eq!(f.vip(1).overflow, 2);
    assert_eq!(f.vip(0).dropped() + f.vip(0).admitted, 0);

    // A SYN whose IPv4 length ends inside its TCP header cannot be
    // answered: it takes the normal path, and the kernel judges it.
    let mut short = syn4(VIP4, &[], 1, &[]);
    short[16..18].copy_from_slice(&30u16.to_be_bytes());
    let out = f.expect_output("IPv4 length short of TCP", &short, XDP_PASS, admitted);
    assert_eq!(out, short, "left untouched");

    // Not a SYN: passed as ever, however saturated the pool.
    f.expect(
        "ACK to a saturated VIP",
        &packet::v4_tcp(CLIENT4, VIP4, 80, flags::ACK),
        XDP_PASS,
        |c| c.tcp_not_syn,
    );
    // Another pool's VIP is not affected.
    let to_pool1 = syn4(VIP4_POOL, &[], 1, &[]);
    f.expect("SYN to an unsaturated pool", &to_pool1, XDP_PASS, admitted);

    // Room again: the normal path. The refused SYNs spent no rate tokens:
    // the frontend's maxConnRate = 2 has one left after the short SYN.
    f.0.set_saturated(pool_slot(0), false).expect("unsaturate");
    let syn = syn4(VIP4, &[], 1, &[]);
    f.expect("IPv4 SYN, pool has room", &syn, XDP_PASS, admitted);
    f.expect("IPv4 SYN, bucket empty", &syn, XDP_DROP, dropped);
    assert_eq!(f.vip(0).overflow, 5, "no more overflow counted");
}

#[test]
fn overflow_drop_drops_and_pass_passes() {
    if !have_root("overflow_drop_drops_and_pass_passes") {
        return;
    }
    let mut f = Fixture::new(&with_overflow("drop"));
    f.0.set_saturated(pool_slot(0), true).expect("saturate");
    let syn = syn4(VIP4, &[], 1, &[]);
    for i in 0..3 {
        let out = f.expect_output(&format!("IPv4 SYN {i}"), &syn, XDP_DROP, overflowed);
        assert_eq!(out, syn);
    }
    let syn6 = syn6(&[], 1);
    f.expect("IPv6 SYN", &syn6, XDP_DROP, overflowed);
    assert_eq!((f.vip(0).overflow, f.vip(0).dropped()), (3, 0));
    assert_eq!(f.vip(1).overflow, 1);
    f.0.set_saturated(pool_slot(0), false).expect("unsaturate");
    f.expect("IPv4 SYN, pool has room", &syn, XDP_PASS, admitted);

    // The default, pass: a saturated pool changes nothing here.
    let mut p = Fixture::new(CONFIG);
    p.0.set_saturated(pool_slot(0), true).expect("saturate");
    p.expect("pass: SYN 1", &syn, XDP_PASS, admitted);
    p.expect("pass: SYN 2", &syn, XDP_PASS, admitted);
    p.expect("pass: SYN 3, bucket empty", &syn, XDP_DROP, dropped);
    assert_eq!(p.vip(0).overflow, 0);
}
