//! Backend pools at run time: backends with their health and connection
//! counts, the balancing algorithms, stickiness and health checks.
//!
//! A [`Pool`] is shared by every worker (`Arc`); what changes per pick
//! lives in a per-worker [`Picker`], so a pick takes no lock: round robin
//! state is per worker, the Maglev table is rebuilt by whoever changes a
//! backend's health and picked up by workers when its generation moves.
//! Only `sticky = "source"` takes a lock (its table is one for the
//! process, so a client keeps its backend whichever CPU it lands on).

pub mod balance;
pub mod health;
mod stick;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use balance::{Maglev, SmoothRoundRobin};

use crate::config::{self, Algorithm, BackendProtocol, Sticky};

/// One backend of a pool.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its weight (0 = no new connections).
    pub weight: u32,
    /// Its identity in sticky cookies: a stable hash of the address, so the
    /// cookie survives restarts and reordering without exposing the address.
    pub id: String,
    up: AtomicBool,
    /// Requests (HTTP) or connections (TCP) in flight to it, from every
    /// worker (what `leastconn` compares).
    active: AtomicU64,
    /// Requests or connections sent to it.
    pub sent: AtomicU64,
    /// Connections opened to it (HTTP: new keep-alive connections; the
    /// rest of `sent` reused one).
    pub connects: AtomicU64,
    /// Failed connects to it (refused, unreachable or timed out).
    pub connect_errors: AtomicU64,
    /// Health checks that failed.
    pub check_failures: AtomicU64,
}

impl Backend {
    /// Whether it takes new connections (health says up).
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// In flight now.
    #[must_use]
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }
}

/// Settings of a pool the proxy needs per request.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Backend connect timeout, per attempt.
    pub connect_timeout: Duration,
    /// Longest backend silence.
    pub server_timeout: Duration,
    /// Protocol to backends (HTTP).
    pub protocol: BackendProtocol,
    /// Stickiness.
    pub sticky: Sticky,
    /// Cookie name for `sticky = "cookie"`.
    pub sticky_cookie: String,
    /// Maglev key header, lowercased.
    pub hash_header: Option<http::HeaderName>,
}

/// A pool at run time.
#[derive(Debug)]
pub struct Pool {
    /// Its name.
    pub name: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Its backends, in config order.
    pub backends: Vec<Backend>,
    /// Their weights, in the same order (what the algorithms take).
    weights: Vec<u32>,
    /// Per-request settings.
    pub settings: PoolSettings,
    /// Moves whenever a backend goes up or down.
    generation: AtomicU64,
    maglev: RwLock<Arc<Maglev>>,
    maglev_size: usize,
    stick: Option<Mutex<stick::StickTable>>,
}

/// What a pick may be keyed on.
#[derive(Debug, Clone, Copy)]
pub struct PickKey {
    /// The client's address.
    pub source: IpAddr,
    /// Hash of the `hashHeader` value, when the request has one.
    pub header_hash: Option<u64>,
    /// The backend a sticky cookie names.
    pub cookie: Option<usize>,
}

/// Per-worker state for picking in one pool.
#[derive(Debug)]
pub struct Picker {
    rr: SmoothRoundRobin,
    start: usize,
    maglev: Arc<Maglev>,
    generation: u64,
}

impl Pool {
    /// Builds a pool from its config; every backend starts up (as HAProxy's
    /// servers do) until its health checks say otherwise.
    #[must_use]
    pub fn new(p: &config::Pool) -> Self {
        let backends: Vec<Backend> = p
            .backends
            .iter()
            .map(|b| {
                let addr = b.address();
                Backend {
                    addr,
                    weight: b.weight(),
                    id: format!("{:016x}", balance::hash_bytes(addr.to_string().as_bytes())),
                    up: AtomicBool::new(true),
                    active: AtomicU64::new(0),
                    sent: AtomicU64::new(0),
                    connects: AtomicU64::new(0),
                    connect_errors: AtomicU64::new(0),
                    check_failures: AtomicU64::new(0),
                }
            })
            .collect();
        let settings = PoolSettings {
            connect_timeout: p.timeouts.connect.0,
            server_timeout: p.timeouts.server.0,
            protocol: p.protocol,
            sticky: p.sticky,
            sticky_cookie: p.sticky_cookie.clone(),
            hash_header: p
                .hash_header
                .as_ref()
                .and_then(|h| http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()),
        };
        let maglev_size = usize::try_from(p.maglev_table_size.0).unwrap_or(Maglev::DEFAULT_SIZE);
        let pool = Self {
            name: p.name.clone(),
            algorithm: p.algorithm,
            weights: backends.iter().map(|b| b.weight).collect(),
            backends,
            settings,
            generation: AtomicU64::new(0),
            maglev: RwLock::new(Arc::new(Maglev::build(&[], &[], |_| false, 7))),
            maglev_size,
            stick: (p.sticky == Sticky::Source).then(|| {
                Mutex::new(stick::StickTable::new(
                    usize::try_from(p.sticky_table.0).unwrap_or(usize::MAX),
                ))
            }),
        };
        pool.rebuild();
        pool
    }

    /// Marks a backend up or down; returns whether that changed anything.
    pub fn set_up(&self, index: usize, up: bool) -> bool {
        let Some(b) = self.backends.get(index) else {
            return false;
        };
        if b.up.swap(up, Relaxed) == up {
            return false;
        }
        self.rebuild();
        true
    }

    /// Recomputes what depends on the set of healthy backends.
    fn rebuild(&self) {
        if self.algorithm == Algorithm::Maglev {
            let names: Vec<Vec<u8>> = self
                .backends
                .iter()
                .map(|b| b.addr.to_string().into_bytes())
                .collect();
            let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
            let table = Maglev::build(
                &refs,
                &self.weights,
                |i| self.backends[i].is_up(),
                self.maglev_size,
            );
            if let Ok(mut m) = self.maglev.write() {
                *m = Arc::new(table);
            }
        }
        self.generation.fetch_add(1, Relaxed);
    }

    /// A fresh per-worker picker.
    #[must_use]
    pub fn picker(&self) -> Picker {
        Picker {
            rr: SmoothRoundRobin::new(self.backends.len()),
            start: 0,
            maglev: self.current_maglev(),
            generation: self.generation.load(Relaxed),
        }
    }

    fn current_maglev(&self) -> Arc<Maglev> {
        self.maglev
            .read()
            .map(|m| Arc::clone(&m))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    /// Whether any backend takes new connections.
    #[must_use]
    pub fn any_up(&self) -> bool {
        self.backends.iter().any(|b| b.is_up() && b.weight > 0)
    }

    /// The backend a sticky cookie value names, if it is one of ours.
    #[must_use]
    pub fn backend_by_id(&self, id: &str) -> Option<usize> {
        self.backends.iter().position(|b| b.id == id)
    }

    /// Picks a backend for a new request or connection, skipping `tried`.
    /// None when no healthy backend is left.
    pub fn pick(&self, picker: &mut Picker, key: &PickKey, tried: &[usize]) -> Option<usize> {
        let eligible = |i: usize| {
            !tried.contains(&i)
                && self
                    .backends
                    .get(i)
                    .is_some_and(|b| b.is_up() && b.weight > 0)
        };
        // Stickiness first: a client keeps its backend while it is healthy.
        if let Some(i) = key.cookie.filter(|&i| eligible(i)) {
            return Some(i);
        }
        if let Some(stick) = &self.stick {
            if let Ok(mut t) = stick.lock() {
                if let Some(i) = t.get(key.source).filter(|&i| eligible(i)) {
                    return Some(i);
                }
            }
        }
        let chosen = self.pick_by_algorithm(picker, key, &eligible)?;
        if let Some(stick) = &self.stick {
            if let Ok(mut t) = stick.lock() {
                t.insert(key.source, chosen);
            }
        }
        Some(chosen)
    }

    /// Picks the backend for a retry: one not tried yet if any is healthy,
    /// else a tried one again (a pool of one backend retries that one).
    pub fn pick_retry(&self, picker: &mut Picker, key: &PickKey, tried: &[usize]) -> Option<usize> {
        self.pick(picker, key, tried).or_else(|| {
            (!tried.is_empty())
                .then(|| self.pick(picker, key, &[]))
                .flatten()
        })
    }

    fn pick_by_algorithm(
        &self,
        picker: &mut Picker,
        key: &PickKey,
        eligible: &impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self.algorithm {
            Algorithm::Roundrobin => picker.rr.pick(&self.weights, eligible),
            Algorithm::Leastconn => {
                picker.start = picker.start.wrapping_add(1) % self.backends.len().max(1);
                balance::least_conn(
                    &self.weights,
                    |i| self.backends[i].active(),
                    eligible,
                    picker.start,
                )
            }
            Algorithm::Maglev => {
                let generation = self.generation.load(Relaxed);
                if generation != picker.generation {
                    picker.maglev = self.current_maglev();
                    picker.generation = generation;
                }
                let hash = key.header_hash.unwrap_or_else(|| ip_hash(key.source));
                match picker.maglev.lookup(hash) {
                    Some(i) if eligible(i) => Some(i),
                    // The table's backend was tried already (a retry): fall
                    // back to the next eligible one in a stable order.
                    _ => {
                        let n = self.backends.len();
                        let start = usize::try_from(hash % n.max(1) as u64).unwrap_or(0);
                        (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
                    }
                }
            }
        }
    }

    /// Counts a request or connection going to backend `index` until the
    /// returned guard drops.
    #[must_use]
    pub fn track(self: &Arc<Self>, index: usize) -> ActiveGuard {
        if let Some(b) = self.backends.get(index) {
            b.active.fetch_add(1, Relaxed);
            b.sent.fetch_add(1, Relaxed);
        }
        ActiveGuard {
            pool: Arc::clone(self),
            index,
        }
    }
}

/// The Maglev key of a source address.
#[must_use]
pub fn ip_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => balance::hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => balance::hash_bytes(&v6.octets()),
    }
}

/// One request or connection in flight to a backend (for `leastconn`).
#[derive(Debug)]
pub struct ActiveGuard {
    pool: Arc<Pool>,
    index: usize,
}

impl ActiveGuard {
    /// The backend.
    #[must_use]
    pub fn backend(&self) -> &Backend {
        &self.pool.backends[self.index]
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Some(b) = self.pool.backends.get(self.index) {
            b.active.fetch_sub(1, Relaxed);
        }
    }
}
