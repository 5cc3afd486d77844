//! Token buckets, as GCRA (see [`lb_common::RateBucket`]).
//!
//! A VIP level (global, frontend, pool) is one bucket shared by all CPUs plus
//! a per-CPU cache of tokens. A SYN spends a cached token with no shared write;
//! an empty cache takes `batch` tokens from the shared bucket with one
//! compare-and-swap. The limit therefore holds for the VIP as a whole, wherever
//! the SYNs land, with at most `batch - 1` tokens per CPU in flight.
//! Sources are tracked one GCRA each in an LRU map.
//!
//! With trust on (`XdpConfig::trust_ns`), an untrusted SYN may draw a level
//! only down to half its burst (`lb_common::untrusted_tau`); below that, a
//! SYN whose source is trusted takes single tokens from the shared bucket,
//! never through a CPU's cache, so no reserve token is ever cached where an
//! untrusted SYN could spend it.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{untrusted_tau, BucketCache, RateBucket, SourceBucket};

use crate::atomic;

/// The time for one packet's decisions, read at most once and only when a
/// bucket needs it (a SYN served from a CPU's cached tokens needs none).
///
/// It is the coarse monotonic clock, which advances once a tick (4 ms at
/// HZ=250): reading it costs about a quarter of `bpf_ktime_get_ns` in a VM
/// (measured: 15 ns of a ~130 ns SYN decision). Rates hold on average;
/// refills arrive in tick-sized steps.
pub struct Clock(u64);

impl Clock {
    /// Not read yet.
    #[inline(always)]
    pub const fn new() -> Self {
        Self(0)
    }

    /// Nanoseconds since boot, coarse.
    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        if self.0 == 0 {
            // SAFETY: the helper has no preconditions.
            self.0 = unsafe { bpf_ktime_get_coarse_ns() };
        }
        self.0
    }
}

/// Compare-and-swap attempts before a contended take gives up (and the SYN
/// is dropped). With two CPUs a second failure is already rare.
const CAS_TRIES: usize = 4;

/// Takes up to `want` tokens from a GCRA at `tat` and returns how many it got.
///
/// # Safety
/// `tat` must point into a live map value.
#[inline(always)]
unsafe fn take(tat: *mut u64, interval: u64, tau: u64, want: u64, clock: &mut Clock) -> u64 {
    let now = clock.now();
    for _ in 0..CAS_TRIES {
        let old = unsafe { atomic::load(tat) };
        let base = if old > now { old } else { now };
        // Room before the bucket is empty: tokens exist while base < now + tau.
        let limit = now + tau;
        if base >= limit {
            return 0;
        }
        let room = limit - base;
        if room < interval {
            return 0;
        }
        // One token fits. Divide (tens of cycles) only when more are wanted
        // and more might fit: never on the per-source path, once per batch
        // on a VIP level.
        let n = if want == 1 || room < 2 * interval {
            1
        } else {
            match room.checked_div(interval) {
                Some(avail) if avail < want => avail,
                _ => want,
            }
        };
        if unsafe { atomic::compare_exchange(tat, old, base + n * interval) } {
            return n;
        }
    }
    0
}

/// How a VIP level decided a SYN.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No token: drop.
    Refused,
    /// A token any SYN could have had.
    Admitted,
    /// A token of the half of the burst kept for trusted sources.
    Reserve,
}

/// Admits one SYN through a VIP level, or refuses it. With `trust_on`, an
/// untrusted SYN stops at half the burst; `trusted` says (once asked, and
/// it is asked only then) whether this SYN's source may go below.
///
/// # Safety
/// Both pointers must point into live map values: `bucket` into the shared
/// `buckets` array, `cache` into this CPU's slot of `bucket_cache`.
#[inline(always)]
pub unsafe fn admit(
    bucket: *mut RateBucket,
    cache: *mut BucketCache,
    clock: &mut Clock,
    trust_on: bool,
    trusted: &mut impl FnMut(&mut Clock) -> bool,
) -> Verdict {
    let (interval, tau, batch, generation) = unsafe {
        let b = &*bucket;
        (b.interval_ns, b.tau_ns, b.batch, u64::from(b.generation))
    };
    if interval == 0 {
        return Verdict::Admitted;
    }
    // The cache is this CPU's alone, so it uses plain loads and stores, not
    // locked instructions (they were a fifth of the SYN path's cost). The
    // program can be re-entered on one CPU mid-update; then a cached token
    // may be spent twice or a batch lost, an error bounded by the batch size.
    // What must never happen, a decrement wrapping to 2^64 - 1 and admitting
    // everything, cannot: `t - 1` is only stored after reading `t > 0`.
    let tokens = unsafe { &raw mut (*cache).tokens };
    let cached_gen = unsafe { &raw mut (*cache).generation };
    unsafe {
        // New limits: tokens taken under the old ones are void.
        if read_volatile(cached_gen) != generation {
            write_volatile(tokens, 0);
            write_volatile(cached_gen, generation);
        }
        let t = read_volatile(tokens);
        if t > 0 {
            write_volatile(tokens, t - 1);
            return Verdict::Admitted;
        }
    }
    let want = u64::from(if batch == 0 { 1 } else { batch });
    let open_tau = if trust_on {
        untrusted_tau(tau, interval)
    } else {
        tau
    };
    let tat = unsafe { &raw mut (*bucket).tat_ns };
    let got = unsafe { take(tat, interval, open_tau, want, clock) };
    if got > 0 {
        // The cache was empty; keep the rest of the batch.
        unsafe { write_volatile(tokens, got - 1) };
        return Verdict::Admitted;
    }
    if open_tau < tau && trusted(clock) && unsafe { take(tat, interval, tau, 1, clock) } == 1 {
        return Verdict::Reserve;
    }
    Verdict::Refused
}

/// Gives back a token [`admit`] took, when a later level refused the SYN.
///
/// # Safety
/// As for [`admit`].
#[inline(always)]
pub unsafe fn refund(bucket: *mut RateBucket, cache: *mut BucketCache) {
    unsafe {
        if (*bucket).interval_ns != 0
            && read_volatile(&raw const (*cache).generation) == u64::from((*bucket).generation)
        {
            let tokens = &raw mut (*cache).tokens;
            write_volatile(tokens, read_volatile(tokens) + 1);
        }
    }
}

/// Admits one SYN from a source whose bucket is at `src`.
///
/// # Safety
/// `src` must point into a live `sources` map value.
#[inline(always)]
pub unsafe fn admit_source(
    src: *mut SourceBucket,
    interval: u64,
    tau: u64,
    clock: &mut Clock,
) -> bool {
    unsafe { take(&raw mut (*src).tat_ns, interval, tau, 1, clock) == 1 }
}
