//! A rate shared by every worker: [`RateGate`], used for accept pacing
//! (`rateLimitSessions`, which waits) and for new sessions (`maxSessRate`,
//! which refuses).
//!
//! A gate is a GCRA ("theoretical arrival time") in one atomic, moved by
//! compare-and-swap, as the XDP buckets are: a worker on any CPU takes from
//! it without a lock. Its burst is 1/20 s of its rate (at least 1). The rate
//! can change at any time ([`RateGate::set_rate`]); 0 opens the gate.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

/// One shared rate.
#[derive(Debug)]
pub struct RateGate {
    /// When the next token is due, ns since `epoch`.
    tat_ns: AtomicU64,
    /// Nanoseconds per token; 0: open.
    interval_ns: AtomicU64,
    /// Burst as time.
    tau_ns: AtomicU64,
    epoch: Instant,
}

impl RateGate {
    /// A gate admitting `rate` per second (0: open).
    #[must_use]
    pub fn new(rate: u64) -> Self {
        let g = Self {
            tat_ns: AtomicU64::new(0),
            interval_ns: AtomicU64::new(0),
            tau_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        };
        g.set_rate(rate);
        g
    }

    /// Changes the rate (0: open). Tokens already spent stay spent.
    pub fn set_rate(&self, rate: u64) {
        if rate == 0 {
            self.interval_ns.store(0, Relaxed);
            return;
        }
        let interval = (1_000_000_000 / rate).max(1);
        let burst = (rate / 20).max(1);
        self.tau_ns
            .store(interval.saturating_mul(burst - 1), Relaxed);
        self.interval_ns.store(interval, Relaxed);
    }

    /// The rate per second (0: open).
    #[must_use]
    pub fn rate(&self) -> u64 {
        match self.interval_ns.load(Relaxed) {
            0 => 0,
            i => 1_000_000_000 / i,
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// How long until a token is free (zero: now).
    #[must_use]
    pub fn wait(&self) -> Duration {
        if self.interval_ns.load(Relaxed) == 0 {
            return Duration::ZERO;
        }
        let now = self.now_ns();
        let tat = self.tat_ns.load(Relaxed).max(now);
        Duration::from_nanos((tat - now).saturating_sub(self.tau_ns.load(Relaxed)))
    }

    /// Takes a token (may overdraw by what concurrent takers took since
    /// `wait` said yes: bounded by the number of workers).
    pub fn take(&self) {
        let interval = self.interval_ns.load(Relaxed);
        if interval == 0 {
            return;
        }
        let now = self.now_ns();
        let mut cur = self.tat_ns.load(Relaxed);
        loop {
            let next = cur.max(now) + interval;
            match self
                .tat_ns
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
            {
                Ok(_) => return,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Gives back a token taken for what did not happen after all (a
    /// connection accepted and found abandoned by its client): only a
    /// gate in debt gets it, never more than its burst.
    pub fn give_back(&self) {
        let interval = self.interval_ns.load(Relaxed);
        if interval == 0 {
            return;
        }
        let now = self.now_ns();
        let _ = self.tat_ns.fetch_update(Relaxed, Relaxed, |tat| {
            (tat > now).then(|| tat.saturating_sub(interval).max(now))
        });
    }
}

/// Takes one token from every gate if each has one now; takes nothing and
/// returns the index of the first gate without one otherwise.
pub fn try_take_all(gates: &[&RateGate]) -> Result<(), usize> {
    if let Some(i) = gates.iter().position(|g| !g.wait().is_zero()) {
        return Err(i);
    }
    for g in gates {
        g.take();
    }
    Ok(())
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
        g.set_rate(0);
        assert!(g.wait().is_zero(), "0 opens the gate");
        assert_eq!(g.rate(), 0);
        g.set_rate(10);
        assert_eq!(g.rate(), 10);
    }

    #[test]
    fn try_take_all_takes_from_every_gate_or_from_none() {
        let (a, b) = (RateGate::new(1), RateGate::new(0));
        assert_eq!(try_take_all(&[&a, &b]), Ok(()));
        assert_eq!(try_take_all(&[&b, &a]), Err(1), "a's one token is spent");
    }

    #[test]
    fn a_token_given_back_can_be_taken_again_but_adds_no_burst() {
        let g = RateGate::new(1);
        g.take();
        assert!(!g.wait().is_zero(), "the one token is spent");
        g.give_back();
        assert!(g.wait().is_zero(), "given back");
        g.give_back();
        g.take();
        assert!(
            !g.wait().is_zero(),
            "a give-back on a full gate adds nothing"
        );
    }
}
