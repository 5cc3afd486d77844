//! The atomic operations the data plane needs on map values.
//!
//! Per-CPU counters need them too: the program can be entered again on the
//! same CPU before a read-modify-write finishes (seen here as a per-CPU
//! counter that went down), so counters use `add`. (The per-CPU token caches
//! do not; see `limit::admit`.)
//!
//! `core::sync::atomic` has no read-modify-write operations on
//! `bpfel-unknown-none` (its target spec says `atomic-cas: false`), but the
//! intrinsics below compile to BPF's `lock xadd` and `cmpxchg`, which the
//! verifier accepts on map value pointers.

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

/// Reads `*p` once (no caching across calls). An aligned 8-byte load does not
/// tear on BPF; `atomic_load` itself has no BPF instruction selection.
///
/// # Safety
/// `p` must point into a live map value.
#[inline(always)]
pub unsafe fn load(p: *const u64) -> u64 {
    unsafe { core::ptr::read_volatile(p) }
}

/// Sets `*p` to `new` if it still holds `old`; true if it did.
///
/// # Safety
/// `p` must point into a live map value.
#[inline(always)]
pub unsafe fn compare_exchange(p: *mut u64, old: u64, new: u64) -> bool {
    let (_, swapped) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(p, old, new)
    };
    swapped
}

/// Adds `n` to `*p`.
///
/// # Safety
/// `p` must point into a live map value.
#[inline(always)]
pub unsafe fn add(p: *mut u64, n: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n) };
}

/// Adds one to a counter.
///
/// # Safety
/// `p` must point into a live map value.
#[inline(always)]
pub unsafe fn inc(p: *mut u64) {
    unsafe { add(p, 1) }
}
