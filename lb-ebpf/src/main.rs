//! The XDP data plane of `lb`: per-CPU SYN rate limiting in front of the
//! kernel's TCP stack.
//!
//! For every packet, [`parse`] decides what it is. Anything but a TCP SYN to
//! a configured VIP is passed and counted by reason in this CPU's slot of
//! `counters`, with no other map lookup. A SYN to a VIP must pass, in order,
//! the per-source limit, then the global, frontend and pool `maxConnRate`
//! buckets ([`limit`]); the first empty bucket drops it and the drop is
//! counted by reason in the VIP's per-CPU `vip_stats`. Nothing is ever
//! `XDP_ABORTED`: what cannot be parsed is passed.
//!
//! With `[xdp] trustSeconds` on, half of each VIP level's burst is kept for
//! sources the daemon saw complete a TCP handshake lately (`trusted`,
//! written by userspace at accept): a flood from spoofed addresses, which
//! no per-source limit sees, then takes at most the other half and the
//! refill it wins, and known clients keep connecting. The `trusted` map is
//! read only for a SYN that a level would refuse otherwise.
//!
//! With `[xdp] overflow` set to `rst` or `drop`, a SYN to a VIP whose pool
//! is saturated (`pool_state`, kept by userspace) is refused before the
//! levels: answered with a RST ([`rst`], `XDP_TX`) or dropped, and counted
//! as `overflow`. It is checked first because such a SYN would be refused
//! by the proxy anyway, and should not spend rate tokens that admissible
//! SYNs need once the pool has room again. With `pass` (the default) the
//! pool's state is not even read.
//!
//! Maps are BTF maps so `bpftool map dump` prints field names. Userspace
//! (`lb-userspace`, module `xdp`) owns every write except the buckets' and
//! sources' state and the counters.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features, reason = "atomic intrinsics; see atomic.rs")]

mod atomic;
mod limit;
mod parse;
mod rst;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    overflow, BucketCache, PacketCounters, PoolState, RateBucket, SourceBucket, SourceKey,
    TrustedSource, VipCounters, VipKey, VipValue, XdpConfig, BPF_F_MMAPABLE, MAX_BUCKETS,
    MAX_SOURCES, MAX_TRUSTED, MAX_VIPS,
};
use limit::{Clock, Verdict};
use parse::{Parsed, Syn};

/// Process-wide XDP settings (per-source limit, overflow action). One
/// entry; written by userspace, read on each SYN to a VIP. Shared, not
/// per-CPU.
#[btf_map(name = "config")]
static CONFIG: Array<XdpConfig, 1> = Array::new();

/// VIP (address, port, family) → its stats slot and bucket indexes. Written by
/// userspace at start and reload; looked up only for SYNs. A miss means the
/// SYN is not for us: pass. Sized for [`MAX_VIPS`] frontends.
#[btf_map(name = "vips")]
static VIPS: HashMap<VipKey, VipValue, { MAX_VIPS as usize }> = HashMap::new();

/// Shared GCRA buckets: index 0 global, then one per frontend, then one per
/// pool (`lb_common::bucket`). Userspace writes the limits; the program moves
/// `tat_ns` with compare-and-swap. Shared by all CPUs, so the rate holds for
/// the whole VIP.
#[btf_map(name = "buckets")]
static BUCKETS: Array<RateBucket, { MAX_BUCKETS as usize }> = Array::new();

/// Per-CPU token caches for `buckets` (same index). Only the program writes
/// them; a generation mismatch with the bucket empties a cache.
#[btf_map(name = "bucket_cache")]
static BUCKET_CACHE: PerCpuArray<BucketCache, { MAX_BUCKETS as usize }> = PerCpuArray::new();

/// Per-source GCRA state (IPv4 /32, IPv6 /64). LRU, so a flood of spoofed
/// sources evicts the oldest instead of failing inserts. Only the program
/// writes it; shared by all CPUs.
#[btf_map(name = "sources")]
static SOURCES: LruHashMap<SourceKey, SourceBucket, { MAX_SOURCES as usize }> = LruHashMap::new();

/// Sources that completed a TCP handshake, and when the daemon last saw
/// one (`CLOCK_MONOTONIC` ns). LRU. Only userspace writes it, at accept;
/// the program reads it for a SYN that only a level's reserve can admit.
#[btf_map(name = "trusted")]
static TRUSTED: LruHashMap<SourceKey, TrustedSource, { MAX_TRUSTED as usize }> = LruHashMap::new();

/// Per-CPU counts of every verdict by reason. One entry. Only the program
/// writes; `lb stats` sums the CPUs.
#[btf_map(name = "counters")]
static COUNTERS: PerCpuArray<PacketCounters, 1> = PerCpuArray::new();

/// Per-CPU, per-VIP SYN verdicts, indexed by `VipValue::vip_index`.
#[btf_map(name = "vip_stats")]
static VIP_STATS: PerCpuArray<VipCounters, { MAX_VIPS as usize }> = PerCpuArray::new();

/// `maxConn` accounting per level, indexed like `buckets` (global,
/// frontends, pools). Userspace maps it (`BPF_F_MMAPABLE`) and keeps the
/// counts with atomics; the program reads a pool's `saturated`.
#[btf_map(name = "pool_state")]
static POOL_STATE: Array<PoolState, { MAX_BUCKETS as usize }, BPF_F_MMAPABLE> = Array::new();

/// The SYN limiter, attached to the configured interfaces.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let Some(counters) = COUNTERS.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // SAFETY: a live map value; fields are only changed with atomics.
    let counters = unsafe { &mut *counters };
    match parse::parse(&ctx) {
        Parsed::NotIp => count(&raw mut counters.not_ip),
        Parsed::Malformed => count(&raw mut counters.malformed),
        Parsed::Fragment => count(&raw mut counters.fragment),
        Parsed::NotTcp => count(&raw mut counters.not_tcp),
        Parsed::TcpNotSyn => count(&raw mut counters.tcp_not_syn),
        Parsed::Syn(syn) => return on_syn(&ctx, &syn, counters),
    }
    XDP_PASS
}

/// Adds one to a counter in a map value (atomically: see `atomic`).
#[inline(always)]
fn count(p: *mut u64) {
    // SAFETY: every caller passes a field of a map value it just looked up.
    unsafe { atomic::inc(p) }
}

/// The baseline for benchmarks: passes everything, touches nothing.
#[xdp]
pub fn lb_xdp_empty(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The floor of XDP's cost on an interface, for benchmarks: drops
/// everything, touches nothing. Never attached by `lb run`.
#[xdp]
pub fn lb_xdp_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

/// Decides one SYN to a possible VIP.
#[inline(always)]
fn on_syn(ctx: &XdpContext, syn: &Syn, counters: &mut PacketCounters) -> u32 {
    // SAFETY: the value is copied out at once; userspace may rewrite it.
    let Some(vip) = (unsafe { VIPS.get(syn.vip) }).copied() else {
        count(&raw mut counters.syn_not_vip);
        return XDP_PASS;
    };
    let Some(stats) = VIP_STATS.get_ptr_mut(vip.vip_index) else {
        count(&raw mut counters.syn_not_vip);
        return XDP_PASS;
    };
    // SAFETY: a live map value; fields are only changed with atomics.
    let stats = unsafe { &mut *stats };
    // Read once per SYN; a missing entry (impossible for an array) means
    // every setting off.
    let cfg = CONFIG.get(0).copied().unwrap_or_default();
    if cfg.overflow != overflow::PASS && pool_saturated(vip.pool_bucket) {
        if let Some(verdict) = refuse(ctx, syn, cfg.overflow) {
            count(&raw mut stats.overflow);
            return verdict;
        }
    }
    match admit(syn, &cfg, &vip, stats, &mut Clock::new()) {
        Verdict::Refused => XDP_DROP,
        Verdict::Admitted => {
            count(&raw mut stats.admitted);
            XDP_PASS
        }
        Verdict::Reserve => {
            count(&raw mut stats.admitted);
            count(&raw mut stats.admitted_trusted);
            XDP_PASS
        }
    }
}

/// Whether `source` completed a handshake within the last `window` ns.
#[inline(always)]
fn is_trusted(source: &SourceKey, window: u64, clock: &mut Clock) -> bool {
    // SAFETY: the value is copied out at once; userspace may rewrite it.
    match unsafe { TRUSTED.get(source) } {
        Some(t) => clock.now() < t.seen_ns.saturating_add(window),
        None => false,
    }
}

/// Whether userspace marks the pool at `index` (of `pool_state`) saturated:
/// at `maxConn` with its queue full.
#[inline(always)]
fn pool_saturated(index: u32) -> bool {
    match POOL_STATE.get_ptr(index) {
        // SAFETY: a live map value; userspace changes it with atomics, and
        // an aligned 8-byte load does not tear.
        Some(p) => unsafe { atomic::load(&raw const (*p).saturated) != 0 },
        None => false,
    }
}

/// The verdict for a SYN to a saturated pool under `overflow`; `None` to
/// take the normal path instead (`pass`, an unknown value, or a SYN the RST
/// cannot answer, see [`rst`]).
#[inline(always)]
fn refuse(ctx: &XdpContext, syn: &Syn, how: u32) -> Option<u32> {
    match how {
        overflow::DROP => Some(XDP_DROP),
        overflow::RST if rst::answer(ctx, syn) => Some(XDP_TX),
        _ => None,
    }
}

/// A VIP level's shared bucket and this CPU's cache of it; `None` when the
/// index is out of range (treated as a disabled level).
type Level = Option<(*mut RateBucket, *mut BucketCache)>;

#[inline(always)]
fn level(index: u32) -> Level {
    Some((
        BUCKETS.get_ptr_mut(index)?,
        BUCKET_CACHE.get_ptr_mut(index)?,
    ))
}

#[inline(always)]
fn level_admits(
    l: Level,
    clock: &mut Clock,
    trust_on: bool,
    trusted: &mut impl FnMut(&mut Clock) -> bool,
) -> Verdict {
    match l {
        // SAFETY: both pointers come from map lookups.
        Some((b, c)) => unsafe { limit::admit(b, c, clock, trust_on, trusted) },
        None => Verdict::Admitted,
    }
}

#[inline(always)]
fn level_refund(l: Level) {
    if let Some((b, c)) = l {
        // SAFETY: both pointers come from map lookups.
        unsafe { limit::refund(b, c) };
    }
}

/// Runs the levels in order: source, global, frontend, pool. The first that
/// refuses counts the drop under its own reason; earlier VIP levels get their
/// token back, since the SYN never passes. Each refusal bumps its counter
/// here, at a constant offset, which the verifier can follow. The verdict
/// is [`Verdict::Reserve`] when any level admitted from its reserve.
#[inline(always)]
fn admit(
    syn: &Syn,
    cfg: &XdpConfig,
    vip: &VipValue,
    stats: &mut VipCounters,
    clock: &mut Clock,
) -> Verdict {
    if !source_admits(syn, cfg, clock) {
        count(&raw mut stats.drop_source);
        return Verdict::Refused;
    }
    let trust_on = cfg.trust_ns != 0;
    // Looked up once, and only if a level is down to its reserve.
    let mut known: Option<bool> = None;
    let mut trusted = |clock: &mut Clock| {
        *known.get_or_insert_with(|| is_trusted(&syn.source, cfg.trust_ns, clock))
    };
    let global = level(lb_common::bucket::GLOBAL);
    let g = level_admits(global, clock, trust_on, &mut trusted);
    if g == Verdict::Refused {
        count(&raw mut stats.drop_global);
        return Verdict::Refused;
    }
    let frontend = level(vip.frontend_bucket);
    let f = level_admits(frontend, clock, trust_on, &mut trusted);
    if f == Verdict::Refused {
        level_refund(global);
        count(&raw mut stats.drop_frontend);
        return Verdict::Refused;
    }
    let pool = level(vip.pool_bucket);
    let p = level_admits(pool, clock, trust_on, &mut trusted);
    if p == Verdict::Refused {
        level_refund(global);
        level_refund(frontend);
        count(&raw mut stats.drop_pool);
        return Verdict::Refused;
    }
    if g == Verdict::Reserve || f == Verdict::Reserve || p == Verdict::Reserve {
        Verdict::Reserve
    } else {
        Verdict::Admitted
    }
}

#[inline(always)]
fn source_admits(syn: &Syn, cfg: &XdpConfig, clock: &mut Clock) -> bool {
    let (interval, tau) = (cfg.source_interval_ns, cfg.source_tau_ns);
    if interval == 0 {
        return true;
    }
    let key = &syn.source;
    if let Some(src) = SOURCES.get_ptr_mut(key) {
        // SAFETY: pointer from the lookup.
        return unsafe { limit::admit_source(src, interval, tau, clock) };
    }
    if tau < interval {
        return false;
    }
    // First SYN from this source: it spends one token of a full bucket. Two
    // CPUs racing here may each insert; the later insert wins, costing at most
    // one extra SYN.
    let fresh = SourceBucket {
        tat_ns: clock.now() + interval,
    };
    let _ = SOURCES.insert(key, fresh, 0);
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// License section required to use GPL-only helpers; the program's own code
/// is under the workspace license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
