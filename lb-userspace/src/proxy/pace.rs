//! `rateLimitSessions`: accept pacing. Each level that limits the axis
//! (global, frontend, the pool's profile) has one [`RateGate`] shared by
//! every worker; a worker waits until all gates of its frontend allow a
//! connection before it accepts the next one. Nothing is refused: the
//! connections wait in the kernel's accept backlog.
//!
//! A gate is a GCRA ("theoretical arrival time") in one atomic, moved by
//! compare-and-swap, as the XDP buckets are: a worker on any CPU takes from
//! it without a lock. Its burst is 1/20 s of its rate (at least 1).

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

/// One shared rate.
#[derive(Debug)]
pub struct RateGate {
    /// When the next token is due, ns since `epoch`.
    tat_ns: AtomicU64,
    interval_ns: u64,
    tau_ns: u64,
    epoch: Instant,
}

impl RateGate {
    /// A gate admitting `rate` per second (must be > 0).
    #[must_use]
    pub fn new(rate: u64) -> Self {
        let interval_ns = (1_000_000_000 / rate.max(1)).max(1);
        let burst = (rate / 20).max(1);
        Self {
            tat_ns: AtomicU64::new(0),
            interval_ns,
            tau_ns: interval_ns.saturating_mul(burst - 1),
            epoch: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// How long until a token is free (zero: now).
    #[must_use]
    pub fn wait(&self) -> Duration {
        let now = self.now_ns();
        let tat = self.tat_ns.load(Relaxed).max(now);
        Duration::from_nanos((tat - now).saturating_sub(self.tau_ns))
    }

    /// Takes a token (may overdraw by what concurrent takers took since
    /// `wait` said yes: bounded by the number of workers).
    pub fn take(&self) {
        let now = self.now_ns();
        let mut cur = self.tat_ns.load(Relaxed);
        loop {
            let next = cur.max(now) + self.interval_ns;
            match self
                .tat_ns
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
            {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }
}

/// Waits until every gate allows one more connection, then takes from
/// each. Returns whether it had to wait.
pub async fn admit(gates: &[&RateGate]) -> bool {
    let mut waited = false;
    loop {
        let wait = gates.iter().map(|g| g.wait()).max().unwrap_or_default();
        if wait.is_zero() {
            for g in gates {
                g.take();
            }
            return waited;
        }
        waited = true;
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_allows_its_burst_then_its_rate() {
        let g = RateGate::new(1000);
        // Burst: 50 tokens at once.
        for _ in 0..50 {
            assert!(g.wait().is_zero());
            g.take();
        }
        let w = g.wait();
        assert!(w > Duration::ZERO && w <= Duration::from_millis(1), "{w:?}");
    }
}
