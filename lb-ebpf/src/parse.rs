//! Packet parsing: Ethernet with up to two VLAN tags, IPv4 (with options) or
//! IPv6 (through hop-by-hop, routing and destination-options headers), TCP.
//!
//! Every read goes through [`ptr_at`], which checks the packet bounds, so a
//! truncated packet ends as [`Parsed::Malformed`] and is passed, never aborted.
//!
//! The IPv4 and IPv6 paths only produce an [`L3`]: offsets and masks, plain
//! numbers. One common path then reads the TCP header and the addresses and
//! builds the map keys. (When each family built its own keys, LLVM merged the
//! two paths' tails with registers holding a packet pointer on one path and
//! an address byte on the other, which the verifier rightly refuses.)

use aya_ebpf::programs::XdpContext;
use lb_common::{family, SourceKey, VipKey};

const ETH_HDR_LEN: usize = 14;
const VLAN_HDR_LEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// IPv6 extension headers walked before giving up (as malformed).
const MAX_IPV6_EXT: usize = 4;
/// Deepest IP header offset: Ethernet and two VLAN tags.
pub const MAX_L3_OFFSET: usize = ETH_HDR_LEN + 2 * VLAN_HDR_LEN;
/// Deepest TCP header offset we accept: keeps every offset small and bounded
/// for the verifier. Far past any real header stack (4 × 2 KB extensions are
/// refused as malformed instead).
pub const MAX_L4_OFFSET: usize = 512;
/// Length of the TCP header without options.
pub const TCP_HDR_LEN: usize = 20;
/// TCP flag bits (byte 13 of the header).
pub const TCP_FLAG_FIN: u8 = 0x01;
/// SYN.
pub const TCP_FLAG_SYN: u8 = 0x02;
/// RST.
pub const TCP_FLAG_RST: u8 = 0x04;
/// ACK.
pub const TCP_FLAG_ACK: u8 = 0x10;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;

/// What a packet is, as far as the SYN limiter cares.
pub enum Parsed {
    /// Not IPv4 or IPv6.
    NotIp,
    /// Truncated inside a header we need, or a nonsensical header field.
    Malformed,
    /// An IPv4 fragment or an IPv6 packet with a fragment header.
    Fragment,
    /// IP, not TCP.
    NotTcp,
    /// TCP, but not a connection request (no SYN, or SYN+ACK).
    TcpNotSyn,
    /// A TCP SYN (SYN set, ACK clear).
    Syn(Syn),
}

/// A SYN's map keys, and where its headers are (for [`crate::rst`], which
/// reads the rest again only on its rare path).
pub struct Syn {
    /// The `vips` key: destination address and port.
    pub vip: VipKey,
    /// The `sources` key: source /32 (IPv4) or /64 (IPv6).
    pub source: SourceKey,
    /// Offset of the IP header: after Ethernet and any VLAN tags
    /// (at most [`MAX_L3_OFFSET`]).
    pub l3: usize,
    /// Offset of the TCP header (at most [`MAX_L4_OFFSET`]); its 20 fixed
    /// bytes are in the packet.
    pub l4: usize,
}

/// Where a TCP segment's addresses and header are, and which address bytes
/// count.
struct L3 {
    family: u8,
    /// Offset of the IP header.
    ip: usize,
    /// Offset of the 16 bytes read as the source (IPv4: 4 used).
    src: usize,
    /// Offset of the 16 bytes read as the destination (IPv4: 4 used).
    dst: usize,
    /// Offset of the TCP header.
    l4: usize,
    /// Source bytes kept, as a mask over the two u64 halves.
    src_mask: [u64; 2],
    /// Destination bytes kept.
    dst_mask: [u64; 2],
}

/// A bounds-checked pointer to a `T` at `offset` bytes into the packet
/// ([`crate::rst`] also writes through it).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// A copy of the `N` bytes at `offset`, if they are all in the packet.
#[inline(always)]
pub fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    // SAFETY: bounds checked by `ptr_at`.
    ptr_at::<[u8; N]>(ctx, offset).map(|p| unsafe { *p })
}

/// Classifies one packet.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(et) = bytes_at::<2>(ctx, 12) else {
        return Parsed::Malformed;
    };
    let mut ethertype = u16::from_be_bytes(et);
    let mut offset = ETH_HDR_LEN;
    // Up to two tags: 802.1Q, or 802.1ad outer + 802.1Q inner (QinQ).
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = bytes_at::<2>(ctx, offset + 2) else {
            return Parsed::Malformed;
        };
        ethertype = u16::from_be_bytes(inner);
        offset += VLAN_HDR_LEN;
    }
    let l3 = match ethertype {
        ETH_P_IPV4 => ipv4(ctx, offset),
        ETH_P_IPV6 => ipv6(ctx, offset),
        _ => return Parsed::NotIp,
    };
    match l3 {
        Ok(l3) => tcp(ctx, &l3),
        Err(p) => p,
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<L3, Parsed> {
    // The fixed 20-byte header must be present before anything is read.
    let Some(hdr) = bytes_at::<20>(ctx, l3) else {
        return Err(Parsed::Malformed);
    };
    let ihl = usize::from(hdr[0] & 0x0F);
    if hdr[0] >> 4 != 4 || ihl < 5 {
        return Err(Parsed::Malformed);
    }
    // More-fragments set or a non-zero offset: the TCP header is either not
    // here or not whole; leave reassembly to the kernel.
    if u16::from_be_bytes([hdr[6], hdr[7]]) & 0x3FFF != 0 {
        return Err(Parsed::Fragment);
    }
    if hdr[9] != IPPROTO_TCP {
        return Err(Parsed::NotTcp);
    }
    // Four address bytes: the first u64 half, low four bytes in memory order.
    let four = u64::from_ne_bytes([0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
    Ok(L3 {
        family: family::V4,
        ip: l3,
        src: l3 + 12,
        dst: l3 + 16,
        l4: l3 + ihl * 4,
        src_mask: [four, 0],
        dst_mask: [four, 0],
    })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<L3, Parsed> {
    let Some([ver, ..]) = bytes_at::<1>(ctx, l3) else {
        return Err(Parsed::Malformed);
    };
    let Some([mut next]) = bytes_at::<1>(ctx, l3 + 6) else {
        return Err(Parsed::Malformed);
    };
    if ver >> 4 != 6 {
        return Err(Parsed::Malformed);
    }
    let mut offset = l3 + 40;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Some([n, len]) = bytes_at::<2>(ctx, offset) else {
                    return Err(Parsed::Malformed);
                };
                next = n;
                offset += (usize::from(len) + 1) * 8;
            }
            _ => break,
        }
    }
    match next {
        IPPROTO_TCP => Ok(L3 {
            family: family::V6,
            ip: l3,
            src: l3 + 8,
            dst: l3 + 24,
            l4: offset,
            // The /64 prefix of the source; all of the destination.
            src_mask: [u64::MAX, 0],
            dst_mask: [u64::MAX, u64::MAX],
        }),
        IPV6_FRAGMENT => Err(Parsed::Fragment),
        // Still an extension header after MAX_IPV6_EXT of them.
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => Err(Parsed::Malformed),
        _ => Err(Parsed::NotTcp),
    }
}

/// Reads 16 address bytes at `offset` and keeps the bytes `mask` selects.
#[inline(always)]
fn addr(ctx: &XdpContext, offset: usize, mask: [u64; 2]) -> Option<[u8; 16]> {
    let b = bytes_at::<16>(ctx, offset)?;
    let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15] = b;
    let lo = u64::from_ne_bytes([a0, a1, a2, a3, a4, a5, a6, a7]) & mask[0];
    let hi = u64::from_ne_bytes([a8, a9, a10, a11, a12, a13, a14, a15]) & mask[1];
    let [l0, l1, l2, l3, l4, l5, l6, l7] = lo.to_ne_bytes();
    let [h0, h1, h2, h3, h4, h5, h6, h7] = hi.to_ne_bytes();
    Some([
        l0, l1, l2, l3, l4, l5, l6, l7, h0, h1, h2, h3, h4, h5, h6, h7,
    ])
}

#[inline(always)]
fn tcp(ctx: &XdpContext, l3: &L3) -> Parsed {
    if l3.l4 > MAX_L4_OFFSET {
        return Parsed::Malformed;
    }
    // Require the whole fixed header, and read its fields from this copy.
    let Some(hdr) = bytes_at::<TCP_HDR_LEN>(ctx, l3.l4) else {
        return Parsed::Malformed;
    };
    let flags = hdr[13];
    if flags & TCP_FLAG_SYN == 0 || flags & TCP_FLAG_ACK != 0 {
        return Parsed::TcpNotSyn;
    }
    // The 16 bytes at each address offset lie before the end of the TCP
    // header (IPv4: src + 16 = l3 + 28 <= l4 + 8), so these reads only fail
    // on a packet already refused above.
    let (Some(src), Some(dst)) = (
        addr(ctx, l3.src, l3.src_mask),
        addr(ctx, l3.dst, l3.dst_mask),
    ) else {
        return Parsed::Malformed;
    };
    Parsed::Syn(Syn {
        vip: VipKey {
            addr: dst,
            port_be: u16::from_ne_bytes([hdr[2], hdr[3]]),
            family: l3.family,
            _pad: 0,
        },
        source: SourceKey {
            addr: src,
            family: l3.family,
            _pad: [0; 3],
        },
        l3: l3.ip,
        l4: l3.l4,
    })
}
