//! The answer of `[xdp] overflow = "rst"`: a SYN to a VIP whose pool is
//! saturated is turned, in place, into the TCP RST|ACK a closed port would
//! send (RFC 9293 §3.10.7.1: `SEQ=0, ACK=SEG.SEQ+SEG.LEN, CTL=RST,ACK`) and
//! bounced out of the interface it came in on (`XDP_TX`). The client fails
//! at once instead of retrying its SYN for seconds.
//!
//! The answer is written over the front of the SYN: the Ethernet header with
//! its addresses swapped (VLAN tags kept, so it leaves on the same VLAN), a
//! fresh IP header without options (IPv4 IHL 5, or IPv6 without extension
//! headers) and a fresh 20-byte TCP header without options; then the packet
//! is cut to that length. Every field the answer needs is read from the SYN
//! before anything is written, since the new headers may overlap the old TCP
//! header (IPv4 options, IPv6 extension headers), and every pointer written
//! through is bounds-checked before the first write, so a packet is either
//! answered whole or left untouched. Both checksums are computed from those
//! values in registers: there is no loop over packet bytes.
//!
//! A SYN whose lengths do not add up (an IP length shorter than its headers,
//! a TCP data offset below 5) is not answered: [`answer`] returns `false`
//! and the SYN takes the normal path, where the kernel judges it.

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::family;

use crate::parse::{
    bytes_at, ptr_at, Syn, IPPROTO_TCP, MAX_L3_OFFSET, MAX_L4_OFFSET, TCP_FLAG_ACK, TCP_FLAG_FIN,
    TCP_FLAG_RST, TCP_HDR_LEN,
};

const IPV4_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
/// TTL / hop limit of the answer (Linux's default).
const TTL: u8 = 64;
/// The answer's IPv4 total length.
const IPV4_TOTAL_LEN: u16 = (IPV4_HDR_LEN + TCP_HDR_LEN) as u16;
/// Version 4, IHL 5.
const IPV4_VERSION_IHL: u8 = 0x45;
/// Don't-fragment, high byte of the IPv4 flags and fragment offset.
const IPV4_DF_HI: u8 = 0x40;
/// Version 6, traffic class and flow label 0 (first byte).
const IPV6_VERSION: u8 = 0x60;
/// Data offset 5 (no options), high nibble of TCP byte 12.
const TCP_DOFF_5: u8 = 0x50;

/// What the answer needs from the SYN's TCP header.
struct SynTcp {
    /// Source port, network byte order.
    sport: [u8; 2],
    /// Destination port, network byte order.
    dport: [u8; 2],
    /// Sequence number.
    seq: u32,
    /// Header length from the data offset, options included.
    hdr_len: usize,
    /// Flags byte.
    flags: u8,
}

/// Rewrites the SYN in `ctx` into its RST|ACK answer, ready for `XDP_TX`.
/// `false`: not answered, the packet is untouched.
#[inline(always)]
pub fn answer(ctx: &XdpContext, syn: &Syn) -> bool {
    // Parse bounds these already; restating them keeps every offset below
    // small and bounded for the verifier.
    if syn.l3 > MAX_L3_OFFSET || syn.l4 > MAX_L4_OFFSET {
        return false;
    }
    let Some(tcp) = read_tcp(ctx, syn.l4) else {
        return false;
    };
    let len = if syn.vip.family == family::V4 {
        answer_v4(ctx, syn, &tcp)
    } else {
        answer_v6(ctx, syn, &tcp)
    };
    match len {
        Some(len) => {
            shrink(ctx, len);
            true
        }
        None => false,
    }
}

#[inline(always)]
fn read_tcp(ctx: &XdpContext, l4: usize) -> Option<SynTcp> {
    let h = bytes_at::<TCP_HDR_LEN>(ctx, l4)?;
    Some(SynTcp {
        sport: [h[0], h[1]],
        dport: [h[2], h[3]],
        seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        hdr_len: usize::from(h[12] >> 4) * 4,
        flags: h[13],
    })
}

/// IPv4: writes the answer; returns its length.
#[inline(always)]
fn answer_v4(ctx: &XdpContext, syn: &Syn, tcp: &SynTcp) -> Option<usize> {
    let ip = bytes_at::<IPV4_HDR_LEN>(ctx, syn.l3)?;
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let ip_end = syn.l3 + usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let ack = ack_of(tcp, syn.l4, ip_end)?;
    // The answer goes from the SYN's destination to its source.
    let ip_hdr = ipv4_header(dst, src);
    let tcp_hdr = tcp_rst(tcp, ack, sum_words(&dst) + sum_words(&src));
    let out = syn.l3 + IPV4_HDR_LEN;
    write(ctx, syn.l3, ip_hdr, out, tcp_hdr)?;
    Some(out + TCP_HDR_LEN)
}

/// IPv6: writes the answer; returns its length.
#[inline(always)]
fn answer_v6(ctx: &XdpContext, syn: &Syn, tcp: &SynTcp) -> Option<usize> {
    let [_, _, _, _, pl0, pl1, ..] = bytes_at::<8>(ctx, syn.l3)?;
    let src = bytes_at::<16>(ctx, syn.l3 + 8)?;
    let dst = bytes_at::<16>(ctx, syn.l3 + 24)?;
    let ip_end = syn.l3 + IPV6_HDR_LEN + usize::from(u16::from_be_bytes([pl0, pl1]));
    let ack = ack_of(tcp, syn.l4, ip_end)?;
    let ip_hdr = ipv6_header(&dst, &src);
    let tcp_hdr = tcp_rst(tcp, ack, sum_words(&dst) + sum_words(&src));
    let out = syn.l3 + IPV6_HDR_LEN;
    write(ctx, syn.l3, ip_hdr, out, tcp_hdr)?;
    Some(out + TCP_HDR_LEN)
}

/// The answer's acknowledgment number: the SYN's sequence number plus the
/// sequence space it took (SYN, data, FIN). `None` when the IP length ends
/// inside the TCP header or the data offset is below 5.
#[inline(always)]
fn ack_of(tcp: &SynTcp, l4: usize, ip_end: usize) -> Option<u32> {
    let data_start = l4 + tcp.hdr_len;
    if tcp.hdr_len < TCP_HDR_LEN || ip_end < data_start {
        return None;
    }
    let data = u32::try_from(ip_end - data_start).ok()?;
    let fin = u32::from(tcp.flags & TCP_FLAG_FIN != 0);
    Some(tcp.seq.wrapping_add(1).wrapping_add(data).wrapping_add(fin))
}

/// Writes the IP header at `l3` and the TCP header at `l4`, and swaps the
/// Ethernet addresses. Every bound is checked before the first write.
#[inline(always)]
fn write<const N: usize>(
    ctx: &XdpContext,
    l3: usize,
    ip_hdr: [u8; N],
    l4: usize,
    tcp_hdr: [u8; TCP_HDR_LEN],
) -> Option<()> {
    let macs = ptr_at::<[u8; 12]>(ctx, 0)?.cast_mut();
    let ip = ptr_at::<[u8; N]>(ctx, l3)?.cast_mut();
    let tcp = ptr_at::<[u8; TCP_HDR_LEN]>(ctx, l4)?.cast_mut();
    // SAFETY: each pointer was checked by `ptr_at` to lie wholly inside the
    // packet, and nothing has moved the packet since; byte arrays have no
    // alignment requirement.
    unsafe {
        let m = *macs;
        *macs = [
            m[6], m[7], m[8], m[9], m[10], m[11], m[0], m[1], m[2], m[3], m[4], m[5],
        ];
        *ip = ip_hdr;
        *tcp = tcp_hdr;
    }
    Some(())
}

/// Cuts the packet to `len` bytes. If the kernel refuses, the answer is
/// still sent: its IP length fields make the rest trailing padding, which
/// receivers drop.
#[inline(always)]
fn shrink(ctx: &XdpContext, len: usize) {
    let have = ctx.data_end() - ctx.data();
    let Some(cut) = have.checked_sub(len).and_then(|c| i32::try_from(c).ok()) else {
        return;
    };
    if cut > 0 {
        // SAFETY: a helper call on this program's context; it invalidates
        // packet pointers, and none is used after it.
        let _ = unsafe { bpf_xdp_adjust_tail(ctx.ctx, -cut) };
    }
}

/// The answer's IPv4 header, its checksum filled in.
#[inline(always)]
fn ipv4_header(src: [u8; 4], dst: [u8; 4]) -> [u8; IPV4_HDR_LEN] {
    let [l0, l1] = IPV4_TOTAL_LEN.to_be_bytes();
    let mut h = [
        IPV4_VERSION_IHL,
        0,
        l0,
        l1,
        0,
        0,
        IPV4_DF_HI,
        0,
        TTL,
        IPPROTO_TCP,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let [c0, c1] = checksum(sum_words(&h)).to_be_bytes();
    h[10] = c0;
    h[11] = c1;
    h
}

/// The answer's IPv6 header.
#[inline(always)]
fn ipv6_header(src: &[u8; 16], dst: &[u8; 16]) -> [u8; IPV6_HDR_LEN] {
    let mut h = [0u8; IPV6_HDR_LEN];
    h[0] = IPV6_VERSION;
    // Payload length 20, high byte 0.
    h[5] = TCP_HDR_LEN as u8;
    h[6] = IPPROTO_TCP;
    h[7] = TTL;
    h[8..24].copy_from_slice(src);
    h[24..40].copy_from_slice(dst);
    h
}

/// The answer's TCP header: ports swapped, `seq` 0, `ack`, RST|ACK, no
/// options, window 0, checksummed with `addr_sum` (both addresses, summed
/// by [`sum_words`]) in the pseudo-header.
#[inline(always)]
fn tcp_rst(syn: &SynTcp, ack: u32, addr_sum: u32) -> [u8; TCP_HDR_LEN] {
    let [a0, a1, a2, a3] = ack.to_be_bytes();
    let mut h = [
        syn.dport[0],
        syn.dport[1],
        syn.sport[0],
        syn.sport[1],
        0,
        0,
        0,
        0,
        a0,
        a1,
        a2,
        a3,
        TCP_DOFF_5,
        TCP_FLAG_RST | TCP_FLAG_ACK,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    // Pseudo-header: addresses, protocol, TCP length (IPv4's 16-bit and
    // IPv6's 32-bit length sum the same).
    let pseudo = addr_sum + u32::from(IPPROTO_TCP) + TCP_HDR_LEN as u32;
    let [c0, c1] = checksum(pseudo + sum_words(&h)).to_be_bytes();
    h[16] = c0;
    h[17] = c1;
    h
}

/// Sum of `b` as big-endian 16-bit words (`N` even), not yet folded. At
/// most 30 words are ever summed, far from overflowing.
#[inline(always)]
fn sum_words<const N: usize>(b: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
        i += 2;
    }
    sum
}

/// The Internet checksum of a sum from [`sum_words`]: folded to 16 bits
/// with end-around carry, complemented.
#[inline(always)]
fn checksum(sum: u32) -> u16 {
    let s = (sum & 0xFFFF) + (sum >> 16);
    let s = (s & 0xFFFF) + (s >> 16);
    !(s as u16)
}
