//! The limits in force, which change live: [`Live`] holds, for the global
//! level, every frontend and every pool, the value of each axis (atomics,
//! 0 = off at that level) and the enforcement state built on them (the
//! `maxConn` slots and queue, the accept-pacing and new-session gates).
//! [`Live::apply`] moves a running process to a new, validated config's
//! limits in place: workers read the new values on their next connection
//! or request, established connections are untouched.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use lb_common::bucket;

use super::{
    rate::RateGate,
    slots::{ConnLimit, Table},
    Axis, Level,
};
use crate::config::{Config, Limits};

/// One level's limits (global, a frontend, or a pool's profile).
#[derive(Debug)]
pub struct Scope {
    /// Which level.
    pub level: Level,
    /// Axis values in [`Axis::ALL`] order; 0: off here. For `maxRetries`
    /// see [`Live::max_retries`].
    values: [AtomicU64; 9],
    /// Whether `[global.limits]`/`[frontend.limits]` name `maxRetries`.
    retries_named: AtomicU64,
    /// `maxConn` (and, at pools, the queue).
    pub conns: Arc<ConnLimit>,
    /// `rateLimitSessions`.
    pub accept: RateGate,
    /// `maxSessRate`.
    pub sessions: RateGate,
    /// `maxSslConn`: concurrent TLS connections (this process).
    pub ssl_conns: Arc<ConnLimit>,
    /// `maxSslRate`: full TLS handshakes per second.
    pub ssl_rate: RateGate,
}

impl Scope {
    fn new(level: Level, tables: &[Arc<Table>; 2], index: usize) -> Self {
        Self {
            level,
            values: Default::default(),
            retries_named: AtomicU64::new(0),
            conns: Arc::new(ConnLimit::new(Arc::clone(&tables[0]), index, level)),
            accept: RateGate::new(0),
            sessions: RateGate::new(0),
            ssl_conns: Arc::new(ConnLimit::new(Arc::clone(&tables[1]), index, level)),
            ssl_rate: RateGate::new(0),
        }
    }

    /// The value of `axis` here (0: off).
    #[must_use]
    pub fn get(&self, axis: Axis) -> u64 {
        self.values[axis as usize].load(Relaxed)
    }

    /// Sets every axis from a table: a profile's (absent axis: default) or
    /// a level's (absent: off), and the queue in front of `maxConn`.
    fn set(&self, limits: &Limits, profile: bool, queue: (u64, Duration)) {
        for axis in Axis::ALL {
            let v = if profile {
                limits.profile(axis)
            } else {
                limits.level(axis)
            };
            self.values[axis as usize].store(v, Relaxed);
        }
        self.retries_named.store(
            u64::from(profile || limits.get(Axis::MaxRetries).is_some()),
            Relaxed,
        );
        self.accept.set_rate(self.get(Axis::RateLimitSessions));
        self.sessions.set_rate(self.get(Axis::MaxSessRate));
        self.ssl_rate.set_rate(self.get(Axis::MaxSslRate));
        self.ssl_conns
            .set(self.get(Axis::MaxSslConn), 0, Duration::ZERO);
        self.conns.set(self.get(Axis::MaxConn), queue.0, queue.1);
    }

    /// What `GET /api/profiles` and `lb stats` show: every axis by name.
    #[must_use]
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        Axis::ALL.iter().map(|&a| (a.name(), self.get(a))).collect()
    }
}

/// Every level's limits in force.
#[derive(Debug)]
pub struct Live {
    /// `maxConn` counts of every level.
    pub table: Arc<Table>,
    /// `[global.limits]`.
    pub global: Scope,
    /// `[frontend.limits]`, in config order.
    pub frontends: Vec<Scope>,
    /// Each pool's profile, in config order.
    pub pools: Vec<Scope>,
    /// Each frontend's pool index.
    frontend_pool: Vec<usize>,
    /// Bumped by every [`Live::apply`]; workers rebuild what they derive
    /// from the limits when it moves.
    generation: AtomicU64,
    /// `[xdp] trustSeconds` is on: workers mark the sources they accept
    /// trusted (see `crate::trust`).
    trusting: AtomicBool,
}

impl Live {
    /// The limits of `cfg`, counted in `table` (laid out as
    /// `lb_common::bucket`; see [`Table`]).
    #[must_use]
    pub fn new(cfg: &Config, table: Arc<Table>) -> Self {
        let slot = |i: usize, f: fn(u32) -> Option<u32>| {
            u32::try_from(i)
                .ok()
                .and_then(f)
                .map_or(usize::MAX, |s| s as usize)
        };
        // maxConn counts in `table`; maxSslConn's in this process alone.
        let tables = [
            Arc::clone(&table),
            Arc::new(Table::heap(lb_common::MAX_BUCKETS as usize)),
        ];
        let live = Self {
            global: Scope::new(Level::Global, &tables, bucket::GLOBAL as usize),
            frontends: (0..cfg.frontend.len())
                .map(|i| Scope::new(Level::Frontend, &tables, slot(i, bucket::frontend)))
                .collect(),
            pools: (0..cfg.pool.len())
                .map(|i| Scope::new(Level::Pool, &tables, slot(i, bucket::pool)))
                .collect(),
            frontend_pool: cfg
                .frontend
                .iter()
                .map(|f| cfg.pool_index(f).unwrap_or(0))
                .collect(),
            table,
            generation: AtomicU64::new(0),
            trusting: AtomicBool::new(false),
        };
        live.apply(cfg);
        live
    }

    /// Moves every level to `cfg`'s limits (validated, with the same
    /// frontends and pools). A raised `maxConn` lets queued waiters in at
    /// once; a lowered one lets the connections over it finish.
    pub fn apply(&self, cfg: &Config) {
        let none = (0, Duration::ZERO);
        self.global.set(&cfg.global.limits, false, none);
        for (s, f) in self.frontends.iter().zip(&cfg.frontend) {
            s.set(&f.limits, false, none);
        }
        for (s, p) in self.pools.iter().zip(&cfg.pool) {
            let queue = p.queue.as_ref().map_or(none, |q| (q.depth.0, q.timeout.0));
            s.set(&cfg.profile_of(p), true, queue);
        }
        self.trusting.store(cfg.xdp.trust_seconds.0 > 0, Relaxed);
        self.generation.fetch_add(1, Relaxed);
    }

    /// Whether accepted sources are marked trusted (`[xdp] trustSeconds`).
    #[must_use]
    pub fn trusting(&self) -> bool {
        self.trusting.load(Relaxed)
    }

    /// Changes since start (see [`Live::apply`]).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// The three levels a connection of frontend `f` passes, outermost
    /// first: global, the frontend, its pool.
    #[must_use]
    pub fn levels(&self, f: usize) -> [&Scope; 3] {
        let pool = self.frontend_pool.get(f).copied().unwrap_or(0);
        [
            &self.global,
            &self.frontends[f],
            &self.pools[pool.min(self.pools.len().saturating_sub(1))],
        ]
    }

    /// The tightest limit on `axis` for frontend `f`: the smallest non-zero
    /// value of its three levels and the level that sets it (the most
    /// specific on a tie); None when every level leaves it off.
    #[must_use]
    pub fn tightest(&self, f: usize, axis: Axis) -> Option<(u64, Level)> {
        self.levels(f)
            .into_iter()
            .rev()
            .map(|s| (s.get(axis), s.level))
            .filter(|&(v, _)| v > 0)
            .min_by_key(|&(v, _)| v)
    }

    /// `maxRetries` for frontend `f`: the smallest value any level names
    /// (here 0 means no retries, not unlimited), and its level.
    #[must_use]
    pub fn max_retries(&self, f: usize) -> (u64, Level) {
        self.levels(f)
            .into_iter()
            .rev()
            .filter(|s| s.retries_named.load(Relaxed) == 1)
            .map(|s| (s.get(Axis::MaxRetries), s.level))
            .min_by_key(|&(v, _)| v)
            .unwrap_or((Axis::MaxRetries.default_value(), Level::Pool))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn live(text: &str) -> (Config, Live) {
        let cfg = Config::parse(text, Path::new("t.toml")).expect("valid");
        let n = lb_common::MAX_BUCKETS as usize;
        let live = Live::new(&cfg, Arc::new(Table::heap(n)));
        (cfg, live)
    }

    const CFG: &str = r#"
        [global.limits]
        maxConn = 100
        [xdp]
        mode = "off"
        [[frontend]]
        name = "a"
        listen = "127.0.0.1:1"
        pool = "p"
        [frontend.limits]
        maxRetries = 1
        maxBufferSize = "32KB"
        [[pool]]
        name = "p"
        profile = "web"
        queue = { depth = 10, timeout = "1s" }
        [profile.web]
        maxConn = 50
        maxRetries = 2
        "#;

    #[test]
    fn the_tightest_level_wins_and_names_itself() {
        let (_, l) = live(CFG);
        assert_eq!(l.tightest(0, Axis::MaxConn), Some((50, Level::Pool)));
        assert_eq!(
            l.tightest(0, Axis::MaxBufferSize),
            Some((32 * 1024, Level::Frontend))
        );
        assert_eq!(l.max_retries(0), (1, Level::Frontend));
        assert_eq!(l.pools[0].conns.limit(), 50);
        assert_eq!(l.global.conns.limit(), 100);
    }

    #[test]
    fn apply_changes_values_in_place() {
        let (_, l) = live(CFG);
        let gen = l.generation();
        let changed = CFG.replace("maxConn = 50", "maxConn = 5");
        let cfg = Config::parse(&changed, Path::new("t.toml")).expect("valid");
        l.apply(&cfg);
        assert_eq!(l.pools[0].conns.limit(), 5);
        assert_eq!(l.generation(), gen + 1);
    }
}
