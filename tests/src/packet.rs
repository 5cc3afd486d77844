//! Packets built byte by byte for BPF_PROG_TEST_RUN fixtures. Checksums are
//! left zero: the XDP program does not read them. [`checksum`] checks the
//! ones the program writes.

/// TCP flag bits.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// 802.1Q and 802.1ad tag protocol ids.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ outer tag).
pub const TPID_8021AD: u16 = 0x88A8;

/// An Ethernet header (with VLAN tags, outermost first) for `ethertype`.
#[must_use]
pub fn eth(ethertype: u16, tags: &[u16]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    for (i, tpid) in tags.iter().enumerate() {
        p.extend_from_slice(&tpid.to_be_bytes());
        // PCP 0, VID 100 + i.
        p.extend_from_slice(&(100u16 + u16::try_from(i).unwrap_or(0)).to_be_bytes());
    }
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

/// A 20-byte TCP header (sequence number 1).
#[must_use]
pub fn tcp(sport: u16, dport: u16, flag_bits: u8) -> Vec<u8> {
    tcp_segment(sport, dport, flag_bits, 1, &[], &[])
}

/// A TCP segment: header with sequence number `seq` and `options` (padded
/// to 4 bytes with end-of-options), then `data`.
#[must_use]
pub fn tcp_segment(
    sport: u16,
    dport: u16,
    flag_bits: u8,
    seq: u32,
    options: &[u8],
    data: &[u8],
) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let doff = u8::try_from(5 + opts.len() / 4).unwrap_or(15);
    let mut t = Vec::with_capacity(20 + opts.len() + data.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes()); // ack
    t.push(doff << 4);
    t.push(flag_bits);
    t.extend_from_slice(&64_240u16.to_be_bytes()); // window
    t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    t.extend_from_slice(&opts);
    t.extend_from_slice(data);
    t
}

/// Typical SYN options, 12 bytes: MSS 1460, SACK permitted, window scale 7,
/// NOP.
pub const SYN_OPTIONS: [u8; 12] = [2, 4, 0x05, 0xB4, 4, 2, 3, 3, 7, 1, 0, 0];

/// The Internet checksum (RFC 1071) of `data`: over a header with its
/// checksum field filled in, 0 means the checksum is right.
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// An IPv4 header with `options` (padded to 4 bytes) carrying `payload`.
/// `frag` is the flags+offset field (0x2000 = more fragments).
#[must_use]
pub fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0); // end of options list
    }
    let ihl = 5 + opts.len() / 4;
    let total = ihl * 4 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.push(0x40 | u8::try_from(ihl).unwrap_or(15));
    p.push(0);
    p.extend_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.push(64);
    p.push(proto);
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&opts);
    p.extend_from_slice(payload);
    p
}

/// An IPv6 header, then extension headers `(type, 8-byte units after the
/// first 8)`, then `payload` of protocol `proto`.
#[must_use]
pub fn ipv6(src: [u8; 16], dst: [u8; 16], ext: &[(u8, u8)], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, len)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |e| e.0);
        body.push(next);
        body.push(*len);
        body.resize(body.len() + 6 + usize::from(*len) * 8, 0);
    }
    body.extend_from_slice(payload);
    let first = ext.first().map_or(proto, |e| e.0);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    p.push(first);
    p.push(64);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&body);
    p
}

/// IP protocol numbers.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 hop-by-hop options.
    pub const HOPOPTS: u8 = 0;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// IPv6 destination options.
    pub const DSTOPTS: u8 = 60;
}

/// Ethernet + IPv4 + TCP.
#[must_use]
pub fn v4_tcp(src: [u8; 4], dst: [u8; 4], dport: u16, flag_bits: u8) -> Vec<u8> {
    let mut p = eth(0x0800, &[]);
    p.extend(ipv4(
        src,
        dst,
        proto::TCP,
        &[],
        0,
        &tcp(40_000, dport, flag_bits),
    ));
    p
}

/// Ethernet + IPv6 (+ extension headers) + TCP.
#[must_use]
pub fn v6_tcp(
    src: [u8; 16],
    dst: [u8; 16],
    ext: &[(u8, u8)],
    dport: u16,
    flag_bits: u8,
) -> Vec<u8> {
    let mut p = eth(0x86DD, &[]);
    p.extend(ipv6(
        src,
        dst,
        ext,
        proto::TCP,
        &tcp(40_000, dport, flag_bits),
    ));
    p
}

/// An ARP request.
#[must_use]
pub fn arp() -> Vec<u8> {
    let mut p = eth(0x0806, &[]);
    p.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 10, 0, 0, 2]);
    p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
    p
}
