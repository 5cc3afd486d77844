//! Types shared by the XDP program (`lb-ebpf`) and the daemon (`lb-userspace`).
//!
//! Everything here is the *layout* of a BPF map key or value, or a name or size
//! both sides must agree on. Types are `#[repr(C)]`, `Copy`, made of fixed-width
//! integers with explicit padding, and each has a compile-time size assertion so
//! that layout drift between the kernel and userspace view fails to build.
//! Byte order is part of a field's name (`port_be`). With the `user` feature the
//! types implement `aya::Pod` so userspace can read and write them in maps.
#![no_std]

/// Map names as they appear in the eBPF object, and the file names of the pins
/// under `/sys/fs/bpf/lb/<instance>/`.
pub mod maps {
    /// [`crate::XdpConfig`] in a one-entry array.
    pub const CONFIG: &str = "config";
    /// [`crate::VipKey`] → [`crate::VipValue`].
    pub const VIPS: &str = "vips";
    /// Shared [`crate::RateBucket`]s, indexed by [`crate::bucket`].
    pub const BUCKETS: &str = "buckets";
    /// Per-CPU [`crate::BucketCache`]s, same index as `buckets`.
    pub const BUCKET_CACHE: &str = "bucket_cache";
    /// [`crate::SourceKey`] → [`crate::SourceBucket`], LRU.
    pub const SOURCES: &str = "sources";
    /// Per-CPU [`crate::PacketCounters`] in a one-entry array.
    pub const COUNTERS: &str = "counters";
    /// Per-CPU [`crate::VipCounters`], indexed by [`crate::VipValue::vip_index`].
    pub const VIP_STATS: &str = "vip_stats";

    /// [`crate::PoolState`] per level, indexed like `buckets`; mmap-able.
    pub const POOL_STATE: &str = "pool_state";
    /// [`crate::SourceKey`] → [`crate::TrustedSource`], LRU: sources that
    /// completed a TCP handshake, written by the daemon.
    pub const TRUSTED: &str = "trusted";

    /// Every map the daemon pins, in the order `lb stats` reads them.
    pub const ALL: [&str; 9] = [
        CONFIG,
        VIPS,
        BUCKETS,
        BUCKET_CACHE,
        SOURCES,
        COUNTERS,
        VIP_STATS,
        POOL_STATE,
        TRUSTED,
    ];
}

/// Names of the programs in the eBPF object.
pub mod programs {
    /// The SYN-limiting XDP program attached to interfaces.
    pub const XDP_LB: &str = "lb_xdp";
    /// An empty `XDP_PASS` program, the baseline of `cargo xtask bench xdp`.
    pub const XDP_EMPTY: &str = "lb_xdp_empty";
    /// A plain `XDP_DROP` program: the floor of a drop's cost on an
    /// interface, a peer in `cargo xtask bench xdp`.
    pub const XDP_DROP_ALL: &str = "lb_xdp_drop";
}

/// Most VIPs (frontend listen addresses) one instance can enforce on.
pub const MAX_VIPS: u32 = 256;
/// Most frontends (each has a bucket).
pub const MAX_FRONTENDS: u32 = 256;
/// Most pools (each has a bucket).
pub const MAX_POOLS: u32 = 256;
/// Size of `buckets` and `bucket_cache`: one global, then frontends, then pools.
pub const MAX_BUCKETS: u32 = 1 + MAX_FRONTENDS + MAX_POOLS;
/// Entries of the per-source LRU map. At ~100 bytes an entry this is ~6.5 MB of
/// kernel memory, enough to track every source of a large flood at once; the
/// least recently seen source is evicted first.
pub const MAX_SOURCES: u32 = 65_536;
/// Entries of the `trusted` LRU map (about 40 bytes each, ~2.6 MB). Only
/// sources that completed a handshake get in, so a spoofed flood cannot
/// evict them; the least recently seen goes first.
pub const MAX_TRUSTED: u32 = 65_536;

/// Index layout of the `buckets` and `bucket_cache` arrays.
pub mod bucket {
    use crate::{MAX_FRONTENDS, MAX_POOLS};

    /// The process-wide (`[global.limits]`) bucket.
    pub const GLOBAL: u32 = 0;

    /// Bucket index of frontend number `i` (0-based), if `i` is in range.
    #[must_use]
    pub const fn frontend(i: u32) -> Option<u32> {
        if i < MAX_FRONTENDS {
            Some(1 + i)
        } else {
            None
        }
    }

    /// Bucket index of pool number `i` (0-based), if `i` is in range.
    #[must_use]
    pub const fn pool(i: u32) -> Option<u32> {
        if i < MAX_POOLS {
            Some(1 + MAX_FRONTENDS + i)
        } else {
            None
        }
    }
}

/// Address family tags used in keys.
pub mod family {
    /// IPv4.
    pub const V4: u8 = 4;
    /// IPv6.
    pub const V6: u8 = 6;
}

/// Process-wide XDP settings (`config` map, one entry). Written by userspace at
/// start and on reload, read by the XDP program on every SYN to a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpConfig {
    /// Per-source SYN limit: nanoseconds between tokens (1e9 / `sourceSynRate`);
    /// 0 disables the per-source limit.
    pub source_interval_ns: u64,
    /// Per-source burst as time: `sourceSynBurst` × `source_interval_ns`.
    pub source_tau_ns: u64,
    /// What to do with a SYN to a VIP whose pool is saturated
    /// ([`PoolState::saturated`]): one of [`overflow`]. Unknown values act
    /// as [`overflow::PASS`].
    pub overflow: u32,
    /// Always zero.
    pub _pad: u32,
    /// How long a source stays trusted after the daemon last saw it
    /// complete a TCP handshake (`trustSeconds`), ns; 0 turns trust off.
    /// While on, a SYN from a source not trusted may take a VIP level's
    /// tokens only down to half its burst ([`untrusted_tau`]); the other
    /// half is kept for trusted sources, so a flood from spoofed addresses
    /// cannot spend the budget the level's known clients need.
    pub trust_ns: u64,
}
const _: () = assert!(core::mem::size_of::<XdpConfig>() == 32);

/// The burst (as time, see [`RateBucket::tau_ns`]) an untrusted SYN may
/// draw a level down to: half of `tau`, unless half is less than one token
/// (a burst of 1 keeps no reserve).
#[must_use]
pub const fn untrusted_tau(tau: u64, interval: u64) -> u64 {
    let half = tau / 2;
    if half < interval {
        tau
    } else {
        half
    }
}

/// Value of the `trusted` map: when the daemon last accepted a connection
/// from the source (its TCP handshake completed, so the address is not
/// spoofed). Keyed like `sources` ([`SourceKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrustedSource {
    /// `CLOCK_MONOTONIC` at the accept, ns (the clock of
    /// `bpf_ktime_get_coarse_ns`). Trusted while `now < seen_ns +
    /// XdpConfig::trust_ns`.
    pub seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<TrustedSource>() == 8);

/// Values of [`XdpConfig::overflow`] (`[xdp] overflow`).
pub mod overflow {
    /// Leave the SYN to the rate levels and the proxy (which answers 503 or
    /// closes). The default.
    pub const PASS: u32 = 0;
    /// Answer the SYN at once with a TCP RST|ACK sent back out of the
    /// interface (`XDP_TX`); the kernel never sees the SYN.
    pub const RST: u32 = 1;
    /// Drop the SYN; the client retransmits it after its SYN timeout.
    pub const DROP: u32 = 2;
}

/// Key of the `vips` map: a frontend's listen address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// IPv6 address, or an IPv4 address in the first four bytes (rest zero),
    /// in network byte order.
    pub addr: [u8; 16],
    /// TCP port, network byte order.
    pub port_be: u16,
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Always zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// Value of the `vips` map: where a VIP's counters and buckets live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// Index into `vip_stats` (< [`MAX_VIPS`]).
    pub vip_index: u32,
    /// The frontend's bucket ([`bucket::frontend`]).
    pub frontend_bucket: u32,
    /// The pool's bucket ([`bucket::pool`]).
    pub pool_bucket: u32,
    /// Always zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<VipValue>() == 16);

/// A rate limit shared by all CPUs (`buckets` map), as a GCRA: `tat_ns` is the
/// theoretical arrival time, the instant at which the bucket would be full
/// again. Taking `n` tokens at `now` advances it to `max(tat, now) + n ×
/// interval`, allowed while that stays within `now + tau`. One
/// compare-and-swap takes a whole batch of tokens for a CPU's cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateBucket {
    /// Theoretical arrival time (ns, `bpf_ktime_get_ns` clock). Only the XDP
    /// program moves it; a new map starts at 0 (full), and userspace keeps it
    /// when it changes the limits (no fresh burst on a live change).
    pub tat_ns: u64,
    /// Nanoseconds per token (1e9 / rate); 0 disables this level.
    pub interval_ns: u64,
    /// Burst as time: burst × `interval_ns`.
    pub tau_ns: u64,
    /// Tokens a CPU takes from this bucket at once into its cache.
    pub batch: u32,
    /// Bumped by userspace on every write, so CPUs drop tokens cached under
    /// older limits.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<RateBucket>() == 32);

/// One CPU's cache of tokens taken from a [`RateBucket`] (`bucket_cache`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketCache {
    /// Tokens this CPU may still spend without touching the shared bucket.
    pub tokens: u64,
    /// The bucket generation the tokens were taken under (u64 so both fields
    /// are 8-byte atomics).
    pub generation: u64,
}
const _: () = assert!(core::mem::size_of::<BucketCache>() == 16);

/// Key of the `sources` map: a client address (IPv4 /32 or IPv6 /64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    /// IPv4: the address in the first four bytes. IPv6: the /64 prefix in the
    /// first eight bytes. The rest is zero. Network byte order.
    pub addr: [u8; 16],
    /// [`family::V4`] or [`family::V6`].
    pub family: u8,
    /// Always zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SourceKey>() == 20);

/// Value of the `sources` map: the per-source GCRA (see [`RateBucket`]), whose
/// interval and burst come from [`XdpConfig`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceBucket {
    /// Theoretical arrival time, ns.
    pub tat_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SourceBucket>() == 8);

/// Per-CPU counts of every packet the XDP program passes without a SYN
/// decision, by reason (`counters`, one entry). A non-SYN packet is counted
/// here with no map lookup beyond this one. SYNs to VIPs are counted once, per
/// VIP, in [`VipCounters`]; `lb stats` sums those for its totals.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounters {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    pub not_ip: u64,
    /// Cut short inside a header, or a header field that makes no sense
    /// (IPv4 IHL < 5, more IPv6 extension headers than we walk).
    pub malformed: u64,
    /// IPv4 fragments and IPv6 packets with a fragment header.
    pub fragment: u64,
    /// IP but not TCP (UDP, ICMP, ...).
    pub not_tcp: u64,
    /// TCP without SYN, or SYN+ACK.
    pub tcp_not_syn: u64,
    /// A SYN to an address and port that is no VIP.
    pub syn_not_vip: u64,
}
const _: () = assert!(core::mem::size_of::<PacketCounters>() == 48);

/// Per-CPU, per-VIP SYN verdicts (`vip_stats`, indexed by `vip_index`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipCounters {
    /// SYNs admitted by every level.
    pub admitted: u64,
    /// Dropped by the per-source limit (`sourceSynRate`).
    pub drop_source: u64,
    /// Dropped by `[global.limits] maxConnRate`.
    pub drop_global: u64,
    /// Dropped by the frontend's `maxConnRate`.
    pub drop_frontend: u64,
    /// Dropped by the pool profile's `maxConnRate`.
    pub drop_pool: u64,
    /// Refused because the VIP's pool was saturated
    /// ([`PoolState::saturated`]), by the action `[xdp] overflow` names:
    /// answered with a RST ([`overflow::RST`]) or dropped
    /// ([`overflow::DROP`]). Checked before the rate levels, so these SYNs
    /// spend no rate tokens. Not part of [`Self::dropped`]: a RST is an
    /// answer, not a drop, and `lb stats` shows this count on its own line.
    pub overflow: u64,
    /// Of [`Self::admitted`]: SYNs that a level admitted from the half of
    /// its burst kept for trusted sources ([`XdpConfig::trust_ns`]), which
    /// an untrusted SYN would have been dropped by.
    pub admitted_trusted: u64,
}
const _: () = assert!(core::mem::size_of::<VipCounters>() == 56);

impl VipCounters {
    /// All drops by a rate limit, whatever the level. Excludes
    /// [`Self::overflow`].
    #[must_use]
    pub const fn dropped(&self) -> u64 {
        self.drop_source + self.drop_global + self.drop_frontend + self.drop_pool
    }
}

/// `maxConn` accounting of one level (`pool_state`, indexed like `buckets`:
/// global, frontends, pools). The daemon's workers (and a second `lb`
/// process started with `--join`) update it with atomics through a shared
/// mapping; XDP reads `saturated` of a VIP's pool.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolState {
    /// Slots taken: connections (TCP, and client connections at the global
    /// and frontend levels) or requests in flight to the pool (HTTP).
    pub active: u64,
    /// Waiting in the pool's queue.
    pub queued: u64,
    /// `maxConn` in force; 0 = not limited.
    pub limit: u64,
    /// 1 while at `limit` with the queue full: XDP applies `xdp.overflow`.
    pub saturated: u64,
}
const _: () = assert!(core::mem::size_of::<PoolState>() == 32);

/// `BPF_F_MMAPABLE`: the flag that lets userspace map an array's memory.
pub const BPF_F_MMAPABLE: usize = 1024;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `repr(C)`, `Copy`, made only of integers, with no
    // implicit padding (checked by the size assertions above), so every bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipValue {}
    unsafe impl aya::Pod for super::RateBucket {}
    unsafe impl aya::Pod for super::BucketCache {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SourceBucket {}
    unsafe impl aya::Pod for super::TrustedSource {}
    unsafe impl aya::Pod for super::PacketCounters {}
    unsafe impl aya::Pod for super::VipCounters {}
    unsafe impl aya::Pod for super::PoolState {}
}
