//! The proxy's counters. Each worker owns one [`WorkerCounters`] and is its
//! only writer, so an increment never contends across cores; readers (the
//! admin API, `/metrics`, `lb stats`) sum them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::{
    limits::{Axis, Level},
    metrics::DurationHistogram,
};

/// Why a connection or request ended early; one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// A client connection idle past `clientIdle` (closed quietly).
    ClientIdle,
    /// A request head not complete within `headerRead` (408).
    HeaderRead,
    /// A backend connect past `connect` (retried; counted per attempt).
    Connect,
    /// A backend silent past `server` (504, or the connection ends).
    Server,
}

/// Counters of one frontend on one worker.
#[derive(Debug, Default)]
pub struct FrontendCounters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now (may go below zero transiently when summed
    /// across workers mid-read; each worker's own value never does).
    pub active: AtomicU64,
    /// HTTP requests received (TCP: connections proxied).
    pub requests: AtomicU64,
    /// HTTP responses sent, by class 1xx..5xx.
    pub responses: [AtomicU64; 5],
    /// Backend connects retried on another backend.
    pub retries: AtomicU64,
    /// Refused at once: no healthy backend (HTTP 503, TCP close).
    pub no_backend: AtomicU64,
    /// Every backend try failed (HTTP 502, TCP close).
    pub backend_failed: AtomicU64,
    /// Timeouts by kind (see [`Timeout`]).
    pub timeouts: [AtomicU64; 4],
    /// Refusals by level and axis (`[Level as usize][axis index]`).
    pub refused: [[AtomicU64; 9]; 3],
    /// Accepts that waited for `rateLimitSessions` (paced, not refused).
    pub paced: AtomicU64,
    /// TLS handshakes (frontends with `tls`).
    pub tls: TlsCounters,
    /// HTTP frontends: time from a request head received to its response
    /// head sent (atomic buckets, this worker the only writer).
    pub latency: DurationHistogram,
}

/// TLS handshakes of one frontend on one worker (one CPU).
#[derive(Debug, Default)]
pub struct TlsCounters {
    /// Full handshakes completed.
    pub full: AtomicU64,
    /// Resumed TLS 1.2 handshakes (session id or ticket).
    pub resumed_tls12: AtomicU64,
    /// Resumed TLS 1.3 handshakes (ticket).
    pub resumed_tls13: AtomicU64,
    /// Full handshakes whose ClientHello offered a session to resume (a
    /// ticket or session id this node could not use: unknown key, expired,
    /// evicted, Redis down).
    pub resumption_misses: AtomicU64,
    /// Handshakes that failed: not TLS, no shared version or suite, an
    /// unknown SNI with `unknownSni = "alert"`, a client that gave up during
    /// the handshake.
    pub failed: AtomicU64,
    /// Handshakes aborted at `handshakeTimeout`.
    pub timeouts: AtomicU64,
    /// Refused by the gate (`maxActiveHandshakes` on this CPU).
    pub gate_refused: AtomicU64,
    /// Connections closed unanswered because their client had closed (or
    /// reset) them already: at accept (a storm's leftovers in the backlog)
    /// or after a wait for the gate. No key exchange, no charge to
    /// `maxSslRate`, no `rateLimitSessions` token.
    pub abandoned: AtomicU64,
    /// Accepts that waited for `maxSslRate`.
    pub rate_paused: AtomicU64,
    /// Handshakes in the gate now (ClientHello read, Finished not yet).
    pub in_flight: AtomicU64,
    /// The most that were ever in the gate at once.
    pub peak_in_flight: AtomicU64,
}

/// TLS handshakes summed, as the API shows them.
#[derive(Debug, Default, Serialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsTotals {
    /// Full handshakes.
    pub full: u64,
    /// Resumed, TLS 1.2.
    pub resumed_tls12: u64,
    /// Resumed, TLS 1.3.
    pub resumed_tls13: u64,
    /// Full handshakes after an offer to resume.
    pub resumption_misses: u64,
    /// Failed.
    pub failed: u64,
    /// Timed out.
    pub timeouts: u64,
    /// Refused by the per-CPU gate.
    pub gate_refused: u64,
    /// Dropped unanswered: the client had closed already.
    pub abandoned: u64,
    /// Accepts paused by `maxSslRate`.
    pub rate_paused: u64,
    /// In a handshake gate now, summed.
    pub in_flight: u64,
    /// The most one gate (one CPU, one frontend) ever held at once.
    pub peak_in_flight: u64,
}

impl TlsTotals {
    /// Adds one worker's counters.
    pub fn add(&mut self, c: &TlsCounters) {
        let r = |a: &AtomicU64| a.load(Relaxed);
        self.full += r(&c.full);
        self.resumed_tls12 += r(&c.resumed_tls12);
        self.resumed_tls13 += r(&c.resumed_tls13);
        self.resumption_misses += r(&c.resumption_misses);
        self.failed += r(&c.failed);
        self.timeouts += r(&c.timeouts);
        self.gate_refused += r(&c.gate_refused);
        self.abandoned += r(&c.abandoned);
        self.rate_paused += r(&c.rate_paused);
        self.in_flight += r(&c.in_flight);
        self.peak_in_flight = self.peak_in_flight.max(r(&c.peak_in_flight));
    }

    /// Adds totals of another set of workers.
    pub fn merge(&mut self, o: &Self) {
        self.full += o.full;
        self.resumed_tls12 += o.resumed_tls12;
        self.resumed_tls13 += o.resumed_tls13;
        self.resumption_misses += o.resumption_misses;
        self.failed += o.failed;
        self.timeouts += o.timeouts;
        self.gate_refused += o.gate_refused;
        self.abandoned += o.abandoned;
        self.rate_paused += o.rate_paused;
        self.in_flight += o.in_flight;
        self.peak_in_flight = self.peak_in_flight.max(o.peak_in_flight);
    }
}

impl FrontendCounters {
    /// Counts a response status.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Relaxed);
    }

    /// Counts a timeout.
    pub fn timeout(&self, kind: Timeout) {
        self.timeouts[kind as usize].fetch_add(1, Relaxed);
    }

    /// Counts a refusal by `axis` at `level`.
    pub fn refuse(&self, level: Level, axis: Axis) {
        if let Some(i) = Axis::ALL.iter().position(|&a| a == axis) {
            self.refused[level as usize][i].fetch_add(1, Relaxed);
        }
    }
}

/// Counters of one worker.
#[derive(Debug)]
pub struct WorkerCounters {
    /// The CPU it is pinned to (None if pinning failed).
    pub cpu: Option<usize>,
    /// Connections accepted, all frontends.
    pub accepted: AtomicU64,
    /// Per frontend, in config order.
    pub frontends: Vec<FrontendCounters>,
}

impl WorkerCounters {
    /// Zeroed counters for `frontends` frontends.
    #[must_use]
    pub fn new(cpu: Option<usize>, frontends: usize) -> Self {
        Self {
            cpu,
            accepted: AtomicU64::new(0),
            frontends: (0..frontends)
                .map(|_| FrontendCounters::default())
                .collect(),
        }
    }
}

/// A frontend's counters summed over workers, as the API shows them.
#[derive(Debug, Default, Serialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FrontendTotals {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections open now.
    pub active: u64,
    /// Requests (TCP: connections proxied).
    pub requests: u64,
    /// Responses by class.
    pub responses: ResponseClasses,
    /// Backend connects retried.
    pub retries: u64,
    /// Refused with no healthy backend.
    pub no_backend: u64,
    /// Every backend try failed.
    pub backend_failed: u64,
    /// Timeouts by kind.
    pub timeouts: TimeoutTotals,
    /// Refusals, keyed `level/axis` (only those that happened).
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Accepts that waited for `rateLimitSessions`.
    pub paced: u64,
    /// TLS handshakes.
    pub tls: TlsTotals,
}

/// Responses by status class.
#[derive(Debug, Default, Serialize, Clone, PartialEq, Eq)]
pub struct ResponseClasses {
    /// 1xx.
    #[serde(rename = "1xx")]
    pub c1: u64,
    /// 2xx.
    #[serde(rename = "2xx")]
    pub c2: u64,
    /// 3xx.
    #[serde(rename = "3xx")]
    pub c3: u64,
    /// 4xx.
    #[serde(rename = "4xx")]
    pub c4: u64,
    /// 5xx.
    #[serde(rename = "5xx")]
    pub c5: u64,
}

/// Timeouts by kind.
#[derive(Debug, Default, Serialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TimeoutTotals {
    /// `clientIdle`.
    pub client_idle: u64,
    /// `headerRead` (408).
    pub header_read: u64,
    /// Backend `connect`.
    pub connect: u64,
    /// Backend `server` (504).
    pub server: u64,
}

/// Sums frontend `f` over workers.
#[must_use]
pub fn frontend_totals(workers: &[WorkerCounters], f: usize) -> FrontendTotals {
    let mut t = FrontendTotals::default();
    for c in workers.iter().filter_map(|w| w.frontends.get(f)) {
        let r = |a: &AtomicU64| a.load(Relaxed);
        t.accepted += r(&c.accepted);
        t.active += r(&c.active);
        t.requests += r(&c.requests);
        t.responses.c1 += r(&c.responses[0]);
        t.responses.c2 += r(&c.responses[1]);
        t.responses.c3 += r(&c.responses[2]);
        t.responses.c4 += r(&c.responses[3]);
        t.responses.c5 += r(&c.responses[4]);
        t.retries += r(&c.retries);
        t.paced += r(&c.paced);
        t.tls.add(&c.tls);
        t.no_backend += r(&c.no_backend);
        t.backend_failed += r(&c.backend_failed);
        t.timeouts.client_idle += r(&c.timeouts[Timeout::ClientIdle as usize]);
        t.timeouts.header_read += r(&c.timeouts[Timeout::HeaderRead as usize]);
        t.timeouts.connect += r(&c.timeouts[Timeout::Connect as usize]);
        t.timeouts.server += r(&c.timeouts[Timeout::Server as usize]);
        for level in [Level::Global, Level::Frontend, Level::Pool] {
            for (i, axis) in Axis::ALL.iter().enumerate() {
                let n = r(&c.refused[level as usize][i]);
                if n > 0 {
                    *t.refused.entry(format!("{level}/{axis}")).or_default() += n;
                }
            }
        }
    }
    t
}

/// One worker's log of refusals: a line per kind (frontend, level, axis) at
/// most once a second, saying how many were not logged in between.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: std::cell::RefCell<std::collections::HashMap<(Level, Axis), (std::time::Instant, u64)>>,
}

impl RefusalLog {
    /// Notes a refusal; logs it unless this kind was logged within a second.
    pub fn note(&self, frontend: &str, pool: &str, level: Level, axis: Axis, why: &str) {
        let now = std::time::Instant::now();
        let mut last = self.last.borrow_mut();
        let entry = last.entry((level, axis)).or_insert((now, 0));
        let first = entry.1 == 0 && entry.0 == now;
        if first || now.duration_since(entry.0) >= std::time::Duration::from_secs(1) {
            let suppressed = entry.1;
            *entry = (now, 0);
            tracing::warn!(
                frontend,
                pool,
                %level,
                %axis,
                suppressed,
                "refused by {level}/{axis}: {why}"
            );
        } else {
            entry.1 += 1;
        }
    }
}
