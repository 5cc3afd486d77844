//! Prometheus metrics: what `GET /metrics` on the admin listener serves, and
//! the histograms the hot paths record for it.
//!
//! Recording: a [`DurationHistogram`] is a fixed set of atomic bucket
//! counters and a sum, so an observation is two relaxed atomic adds and
//! never a lock. Each worker owns one per frontend for the HTTP request
//! latency (`proxy::counters`), and each pool level owns one per outcome
//! for the time spent in its `maxConn` queue (`limits::slots`, touched only
//! by requests that queued). Everything else is read from the counters
//! `/api/status` shows ([`Status::collect`]), so both endpoints give the
//! same numbers, and, when XDP is attached, from the pinned maps as
//! `lb stats` reads them.
//!
//! Rendering: a [`Scrape`] is a snapshot of all of it, taken on the admin
//! thread; it is a prometheus-client [`Collector`], encoded in the
//! OpenMetrics text format ([`CONTENT_TYPE`]), which Prometheus parses by
//! that content type. Metric names start `lb_`; every metric, its type and
//! labels are listed in `docs/metrics.md`.

use std::{
    collections::BTreeMap,
    fmt,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use crate::{
    admin::Status,
    config::Mode,
    control::{Control, Outcome, Source},
    proxy::Shared,
    stats::Stats,
};

/// The content type of `GET /metrics`: the OpenMetrics text format, as
/// prometheus-client encodes it (Prometheus picks its parser by it).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the duration histograms' buckets, in seconds (a last
/// `+Inf` bucket takes the rest): 0.5 ms to 30 s, for request latencies
/// and queue waits alike.
pub const BOUNDS_SECONDS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// [`BOUNDS_SECONDS`] in nanoseconds, what an observation is compared to.
const BOUNDS_NS: [u64; 15] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Buckets of a histogram: one per bound, and `+Inf`.
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// Durations counted in fixed buckets: atomic counters, no lock, so any
/// thread may observe and the admin thread reads at scrape time.
#[derive(Debug, Default)]
pub struct DurationHistogram {
    /// Observations per bucket (not cumulative): bucket `i` holds those
    /// over bound `i - 1` and at most bound `i`.
    buckets: [AtomicU64; BUCKETS],
    /// Sum of the observations, ns.
    sum_ns: AtomicU64,
}

impl DurationHistogram {
    /// Counts one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.partition_point(|&b| b < ns);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The counts now.
    #[must_use]
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_ns: self.sum_ns.load(Relaxed),
        }
    }
}

/// A [`DurationHistogram`] read at one moment (or several summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket, not cumulative.
    pub buckets: [u64; BUCKETS],
    /// Sum of the observations, ns.
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// Adds another histogram's counts (another worker's).
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }

    /// Observations in all.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// `(upper bound in seconds, count)` per bucket, the last bound
    /// `f64::MAX` (prometheus-client writes it `+Inf`).
    fn encoded_buckets(&self) -> Vec<(f64, u64)> {
        BOUNDS_SECONDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(self.buckets)
            .collect()
    }
}

/// Why `/metrics` could not be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The encoder failed (writing to a `String` does not; a bug if seen).
    #[error("encoding the metrics: {0}")]
    Encode(#[from] fmt::Error),
}

/// The time a pool's waiters spent in its `maxConn` queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueWaits {
    /// Waiters that got a slot.
    pub admitted: HistogramSnapshot,
    /// Waiters refused at the queue's timeout.
    pub timed_out: HistogramSnapshot,
}

/// Configuration changes, as the [`Control`] counted them.
#[derive(Debug, Clone, Default)]
pub struct ConfigCounts {
    /// The generation in force: 1 at start, one more per change applied.
    pub generation: u64,
    /// Changes by where they came from and how they ended.
    pub changes: Vec<(Source, Outcome, u64)>,
}

/// Everything `/metrics` shows, read at one moment.
#[derive(Debug)]
pub struct Scrape {
    /// The counters of `/api/status`.
    pub status: Status,
    /// Request latency per frontend (config order); None for `tcp` ones.
    pub latency: Vec<Option<HistogramSnapshot>>,
    /// Queue waits per pool (config order).
    pub queue_waits: Vec<QueueWaits>,
    /// The XDP counters from the pinned maps; None when XDP is not
    /// attached (or its maps could not be read).
    pub xdp: Option<Stats>,
    /// Configuration generation and changes.
    pub config: ConfigCounts,
}

impl Scrape {
    /// Reads every counter now.
    #[must_use]
    pub fn collect(shared: &Shared, control: &Control) -> Self {
        let latency = shared
            .frontends
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (f.mode == Mode::Http).then(|| {
                    let mut h = HistogramSnapshot::default();
                    for w in &shared.workers {
                        if let Some(c) = w.frontends.get(i) {
                            h.add(&c.latency.snapshot());
                        }
                    }
                    h
                })
            })
            .collect();
        let queue_waits = shared
            .live
            .pools
            .iter()
            .map(|p| QueueWaits {
                admitted: p.conns.waits.admitted.snapshot(),
                timed_out: p.conns.waits.timed_out.snapshot(),
            })
            .collect();
        let xdp = control
            .xdp_pins()
            .and_then(|dir| match Stats::read_dir(&dir) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: the XDP counters could not be read");
                    None
                }
            });
        Self {
            status: Status::collect(shared),
            latency,
            queue_waits,
            xdp,
            config: ConfigCounts {
                generation: control.generation(),
                changes: control.changes(),
            },
        }
    }

    /// The OpenMetrics text of this snapshot.
    ///
    /// # Errors
    /// The encoder failed.
    pub fn render(self) -> Result<String, MetricsError> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

/// The labels of one series.
type Labels = Vec<(&'static str, String)>;

/// A label value escaped for the text format (the encoder writes values
/// as given): `\`, `"` and newlines.
fn lv(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One counter family (`NAME_total`); nothing when it has no series.
fn counter(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: Vec<(Labels, u64)>,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in &samples {
        if labels.is_empty() {
            m.encode_counter::<NoLabelSet, _, u64>(v, None)?;
        } else {
            m.encode_family(labels)?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
    }
    Ok(())
}

/// One gauge family; nothing when it has no series.
fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: Vec<(Labels, u64)>,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in &samples {
        if labels.is_empty() {
            m.encode_gauge(v)?;
        } else {
            m.encode_family(labels)?.encode_gauge(v)?;
        }
    }
    Ok(())
}

/// One histogram family (seconds); nothing when it has no series.
fn histogram(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: Vec<(Labels, HistogramSnapshot)>,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in &samples {
        // Seconds, as f64: what the format carries.
        let sum = h.sum_ns as f64 / 1e9;
        m.encode_family(labels)?.encode_histogram::<NoLabelSet>(
            sum,
            h.count(),
            &h.encoded_buckets(),
            None,
        )?;
    }
    Ok(())
}

/// The `cpu` label of a worker: its pinned CPU, or `none`.
fn cpu_label(cpu: Option<usize>) -> String {
    cpu.map_or_else(|| "none".to_owned(), |c| c.to_string())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.encode_frontends(&mut enc)?;
        self.encode_limits(&mut enc)?;
        self.encode_backends(&mut enc)?;
        self.encode_workers(&mut enc)?;
        self.encode_tls(&mut enc)?;
        self.encode_xdp(&mut enc)?;
        self.encode_config(&mut enc)
    }
}

impl Scrape {
    fn encode_frontends(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let fs = &self.status.frontends;
        let fe = |name: &str| vec![("frontend", lv(name))];
        let per = |get: fn(&crate::proxy::counters::FrontendTotals) -> u64| {
            fs.iter()
                .map(|f| (fe(&f.name), get(&f.totals)))
                .collect::<Vec<_>>()
        };
        counter(
            enc,
            "lb_frontend_connections",
            "Client connections accepted.",
            per(|t| t.accepted),
        )?;
        gauge(
            enc,
            "lb_frontend_connections_active",
            "Client connections open now.",
            per(|t| t.active),
        )?;
        counter(
            enc,
            "lb_frontend_requests",
            "HTTP requests received (tcp frontends: connections proxied).",
            per(|t| t.requests),
        )?;
        let classes = fs
            .iter()
            .flat_map(|f| {
                let r = &f.totals.responses;
                [
                    ("1xx", r.c1),
                    ("2xx", r.c2),
                    ("3xx", r.c3),
                    ("4xx", r.c4),
                    ("5xx", r.c5),
                ]
                .map(|(class, n)| {
                    (
                        vec![("frontend", lv(&f.name)), ("class", class.to_owned())],
                        n,
                    )
                })
            })
            .collect();
        counter(
            enc,
            "lb_frontend_responses",
            "HTTP responses sent, by status class.",
            classes,
        )?;
        counter(
            enc,
            "lb_frontend_retries",
            "Backend connects retried on another backend.",
            per(|t| t.retries),
        )?;
        counter(
            enc,
            "lb_frontend_no_backend",
            "Requests or connections refused because no backend of the pool was up.",
            per(|t| t.no_backend),
        )?;
        counter(
            enc,
            "lb_frontend_backend_failed",
            "Requests or connections for which every backend try failed.",
            per(|t| t.backend_failed),
        )?;
        let timeouts = fs
            .iter()
            .flat_map(|f| {
                let t = &f.totals.timeouts;
                [
                    ("client_idle", t.client_idle),
                    ("header_read", t.header_read),
                    ("connect", t.connect),
                    ("server", t.server),
                ]
                .map(|(kind, n)| {
                    (
                        vec![("frontend", lv(&f.name)), ("kind", kind.to_owned())],
                        n,
                    )
                })
            })
            .collect();
        counter(
            enc,
            "lb_frontend_timeouts",
            "Timeouts by kind: client_idle, header_read (408), connect (per attempt), server.",
            timeouts,
        )?;
        counter(
            enc,
            "lb_frontend_paced",
            "Accepts that waited for rateLimitSessions.",
            per(|t| t.paced),
        )?;
        let refusals = fs
            .iter()
            .flat_map(|f| {
                f.totals.refused.iter().filter_map(|(key, &n)| {
                    let (level, axis) = key.split_once('/')?;
                    Some((
                        vec![
                            ("frontend", lv(&f.name)),
                            ("level", lv(level)),
                            ("axis", lv(axis)),
                        ],
                        n,
                    ))
                })
            })
            .collect();
        counter(
            enc,
            "lb_refusals",
            "Connections or requests refused by a limit, by the level and axis that refused.",
            refusals,
        )?;
        let latency = fs
            .iter()
            .zip(&self.latency)
            .filter_map(|(f, h)| Some((fe(&f.name), (*h)?)))
            .collect();
        histogram(
            enc,
            "lb_request_duration_seconds",
            "HTTP frontends: time from a request head received to its response head sent.",
            latency,
        )
    }

    fn encode_limits(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.status;
        gauge(
            enc,
            "lb_global_max_conn",
            "maxConn of [global.limits] in force (0: off).",
            vec![(vec![], s.global.limit)],
        )?;
        gauge(
            enc,
            "lb_global_conn_slots_active",
            "Global maxConn slots taken (client connections), all processes of the instance.",
            vec![(vec![], s.global.active)],
        )?;
        let fe = |get: fn(&crate::admin::Conns) -> u64| {
            s.frontends
                .iter()
                .map(|f| (vec![("frontend", lv(&f.name))], get(&f.conns)))
                .collect::<Vec<_>>()
        };
        gauge(
            enc,
            "lb_frontend_max_conn",
            "maxConn of [frontend.limits] in force (0: off).",
            fe(|c| c.limit),
        )?;
        gauge(
            enc,
            "lb_frontend_conn_slots_active",
            "Frontend maxConn slots taken (client connections), all processes of the instance.",
            fe(|c| c.active),
        )?;
        let pool = |get: fn(&crate::admin::Conns) -> u64| {
            s.pools
                .iter()
                .map(|p| (vec![("pool", lv(&p.name))], get(&p.conns)))
                .collect::<Vec<_>>()
        };
        gauge(
            enc,
            "lb_pool_max_conn",
            "maxConn of the pool's profile in force (0: off).",
            pool(|c| c.limit),
        )?;
        gauge(
            enc,
            "lb_pool_slots_active",
            "Pool maxConn slots taken (HTTP: requests in flight; tcp: connections), all processes.",
            pool(|c| c.active),
        )?;
        gauge(
            enc,
            "lb_pool_queue_length",
            "Requests or connections waiting in the pool's maxConn queue, all processes.",
            pool(|c| c.queued),
        )?;
        let waits = s
            .pools
            .iter()
            .zip(&self.queue_waits)
            .flat_map(|(p, w)| {
                [("admitted", w.admitted), ("timeout", w.timed_out)].map(|(outcome, h)| {
                    (
                        vec![("pool", lv(&p.name)), ("outcome", outcome.to_owned())],
                        h,
                    )
                })
            })
            .collect();
        histogram(
            enc,
            "lb_pool_queue_wait_seconds",
            "Time spent in the pool's maxConn queue by waiters of this process, by outcome.",
            waits,
        )
    }

    fn encode_backends(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let per = |get: fn(&crate::admin::BackendStatus) -> u64| {
            self.status
                .pools
                .iter()
                .flat_map(|p| {
                    p.backends.iter().map(move |b| {
                        (
                            vec![("pool", lv(&p.name)), ("backend", lv(&b.address))],
                            get(b),
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        gauge(
            enc,
            "lb_backend_up",
            "1 while the backend takes new connections (health checks pass), else 0.",
            per(|b| u64::from(b.up)),
        )?;
        gauge(
            enc,
            "lb_backend_active",
            "Requests (HTTP) or connections (tcp) in flight to the backend now.",
            per(|b| b.active),
        )?;
        counter(
            enc,
            "lb_backend_requests",
            "Requests (HTTP) or connections (tcp) sent to the backend.",
            per(|b| b.sent),
        )?;
        counter(
            enc,
            "lb_backend_connections",
            "Connections opened to the backend.",
            per(|b| b.connects),
        )?;
        counter(
            enc,
            "lb_backend_connect_errors",
            "Failed connects to the backend.",
            per(|b| b.connect_errors),
        )?;
        counter(
            enc,
            "lb_backend_check_failures",
            "Failed health checks of the backend.",
            per(|b| b.check_failures),
        )
    }

    fn encode_workers(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        // Workers that share a CPU (more workers than CPUs) are summed.
        let mut by_cpu: BTreeMap<Option<usize>, u64> = BTreeMap::new();
        for w in &self.status.workers {
            *by_cpu.entry(w.cpu).or_default() += w.accepted;
        }
        counter(
            enc,
            "lb_worker_connections",
            "Client connections accepted by the workers on each CPU, all frontends.",
            by_cpu
                .into_iter()
                .map(|(cpu, n)| (vec![("cpu", cpu_label(cpu))], n))
                .collect(),
        )
    }

    fn encode_tls(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let s = &self.status;
        let any_tls = s
            .frontends
            .iter()
            .any(|f| f.tls_tickets.is_some() || f.tls_cache.is_some());
        if any_tls {
            // Workers that share a CPU (more workers than CPUs) are summed.
            let mut by_cpu: BTreeMap<Option<usize>, crate::proxy::counters::TlsTotals> =
                BTreeMap::new();
            for w in &s.workers {
                by_cpu.entry(w.cpu).or_default().merge(&w.tls);
            }
            let per = |get: fn(&crate::proxy::counters::TlsTotals) -> u64| {
                by_cpu
                    .iter()
                    .map(|(cpu, t)| (vec![("cpu", cpu_label(*cpu))], get(t)))
                    .collect::<Vec<_>>()
            };
            counter(
                enc,
                "lb_tls_handshakes_full",
                "Full TLS handshakes completed, per CPU.",
                per(|t| t.full),
            )?;
            let resumed = by_cpu
                .iter()
                .flat_map(|(cpu, t)| {
                    [("tls12", t.resumed_tls12), ("tls13", t.resumed_tls13)].map(|(kind, n)| {
                        (vec![("cpu", cpu_label(*cpu)), ("kind", kind.to_owned())], n)
                    })
                })
                .collect();
            counter(
                enc,
                "lb_tls_handshakes_resumed",
                "Resumed TLS handshakes, per CPU, by protocol version.",
                resumed,
            )?;
            counter(
                enc,
                "lb_tls_handshakes_failed",
                "TLS handshakes that failed, per CPU.",
                per(|t| t.failed),
            )?;
            counter(
                enc,
                "lb_tls_handshake_timeouts",
                "TLS handshakes aborted at handshakeTimeout, per CPU.",
                per(|t| t.timeouts),
            )?;
            counter(
                enc,
                "lb_tls_gate_refused",
                "TLS handshakes refused by the per-CPU gate (maxActiveHandshakes).",
                per(|t| t.gate_refused),
            )?;
            counter(
                enc,
                "lb_tls_handshakes_abandoned",
                "TLS connections closed unanswered because their client had closed them already, per CPU.",
                per(|t| t.abandoned),
            )?;
            gauge(
                enc,
                "lb_tls_handshakes_in_flight",
                "TLS handshakes in the per-CPU gates now (ClientHello read, Finished not yet).",
                per(|t| t.in_flight),
            )?;
            counter(
                enc,
                "lb_tls_resumption_misses",
                "Full TLS handshakes whose client offered a session this node could not resume.",
                per(|t| t.resumption_misses),
            )?;
            counter(
                enc,
                "lb_tls_rate_paused",
                "Accepts that waited for maxSslRate, per CPU.",
                per(|t| t.rate_paused),
            )?;
        }
        let cache = |get: fn(&crate::tls::cache::CacheStats) -> u64| {
            s.frontends
                .iter()
                .filter_map(|f| Some((vec![("frontend", lv(&f.name))], get(f.tls_cache.as_ref()?))))
                .collect::<Vec<_>>()
        };
        counter(
            enc,
            "lb_tls_session_cache_hits",
            "Session cache lookups that found a live session (either tier).",
            cache(|c| c.hits),
        )?;
        counter(
            enc,
            "lb_tls_session_cache_remote_hits",
            "Session cache hits found only in the cluster's Redis tier.",
            cache(|c| c.backend_hits),
        )?;
        counter(
            enc,
            "lb_tls_session_cache_misses",
            "Session cache lookups that found nothing (or an expired session).",
            cache(|c| c.misses),
        )?;
        counter(
            enc,
            "lb_tls_session_cache_stores",
            "Sessions stored in the session cache.",
            cache(|c| c.puts),
        )?;
        counter(
            enc,
            "lb_tls_session_cache_evictions",
            "Sessions evicted, oldest first, to stay within the cache size.",
            cache(|c| c.evictions),
        )?;
        counter(
            enc,
            "lb_tls_session_cache_expired",
            "Sessions dropped because they outlived their lifetime.",
            cache(|c| c.expired),
        )?;
        gauge(
            enc,
            "lb_tls_session_cache_entries",
            "Sessions held in the local session cache now.",
            cache(|c| c.entries),
        )?;
        let tickets = |get: fn(&crate::tls::tickets::TicketStats) -> u64| {
            s.frontends
                .iter()
                .filter_map(|f| {
                    Some((
                        vec![("frontend", lv(&f.name))],
                        get(f.tls_tickets.as_ref()?),
                    ))
                })
                .collect::<Vec<_>>()
        };
        counter(
            enc,
            "lb_tls_tickets_issued",
            "Session tickets issued.",
            tickets(|t| t.encrypted),
        )?;
        counter(
            enc,
            "lb_tls_tickets_decrypted",
            "Session tickets decrypted (resumptions offered with a valid ticket).",
            tickets(|t| t.decrypted),
        )?;
        counter(
            enc,
            "lb_tls_tickets_decrypt_failed",
            "Session tickets refused: too short, unknown key name, or bad tag.",
            tickets(|t| t.decrypt_failed),
        )?;
        counter(
            enc,
            "lb_tls_tickets_unknown_key",
            "Session tickets refused because their key is not in the key set.",
            tickets(|t| t.unknown_key),
        )?;
        gauge(
            enc,
            "lb_tls_ticket_keys",
            "Ticket keys that decrypt, in use now.",
            tickets(|t| u64::try_from(t.keys).unwrap_or(u64::MAX)),
        )?;
        let reloads = s
            .frontends
            .iter()
            .filter_map(|f| Some((&f.name, f.tls_tickets.as_ref()?)))
            .flat_map(|(name, t)| {
                [("ok", t.reloads), ("refused", t.reload_failed)].map(|(outcome, n)| {
                    (
                        vec![("frontend", lv(name)), ("outcome", outcome.to_owned())],
                        n,
                    )
                })
            })
            .collect();
        counter(
            enc,
            "lb_tls_ticket_key_reloads",
            "New ticket key sets taken from their source (ok) or refused (refused).",
            reloads,
        )?;
        counter(
            enc,
            "lb_tls_ticket_key_rotations",
            "Ticket key rotations this node made in the farm's Redis.",
            tickets(|t| t.rotations),
        )
    }

    fn encode_xdp(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let Some(x) = &self.xdp else {
            return Ok(());
        };
        let syns = x
            .vips
            .iter()
            .flat_map(|v| {
                let t = v.total();
                [
                    ("admitted", t.admitted),
                    ("drop_source", t.drop_source),
                    ("drop_global", t.drop_global),
                    ("drop_frontend", t.drop_frontend),
                    ("drop_pool", t.drop_pool),
                    ("overflow", t.overflow),
                ]
                .map(|(reason, n)| {
                    (
                        vec![("vip", v.addr.to_string()), ("reason", reason.to_owned())],
                        n,
                    )
                })
            })
            .collect();
        counter(
            enc,
            "lb_xdp_syns",
            "XDP verdicts on SYNs to each VIP, by reason.",
            syns,
        )?;
        let trusted = x
            .vips
            .iter()
            .map(|v| {
                (
                    vec![("vip", v.addr.to_string())],
                    v.total().admitted_trusted,
                )
            })
            .collect();
        counter(
            enc,
            "lb_xdp_syns_admitted_trusted",
            "Of the SYNs admitted to each VIP: those a maxConnRate level admitted from the half of \
             its burst kept for trusted sources ([xdp] trustSeconds).",
            trusted,
        )?;
        let packets = x
            .per_cpu
            .iter()
            .enumerate()
            .flat_map(|(cpu, c)| {
                [
                    ("not_ip", c.not_ip),
                    ("malformed", c.malformed),
                    ("fragment", c.fragment),
                    ("not_tcp", c.not_tcp),
                    ("tcp_not_syn", c.tcp_not_syn),
                    ("syn_not_vip", c.syn_not_vip),
                    ("syn_admitted", c.syn_admitted),
                    ("syn_dropped", c.syn_dropped),
                    ("syn_overflow", c.syn_overflow),
                ]
                .map(|(reason, n)| {
                    (
                        vec![("cpu", cpu.to_string()), ("reason", reason.to_owned())],
                        n,
                    )
                })
            })
            .collect();
        counter(
            enc,
            "lb_xdp_packets",
            "Packets seen by the XDP program, per CPU, by verdict reason.",
            packets,
        )
    }

    fn encode_config(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        gauge(
            enc,
            "lb_config_generation",
            "Configuration generation in force: 1 at start, one more per change applied.",
            vec![(vec![], self.config.generation)],
        )?;
        let changes = self
            .config
            .changes
            .iter()
            .map(|(source, outcome, n)| {
                (
                    vec![
                        ("source", source.name().to_owned()),
                        ("outcome", outcome.name().to_owned()),
                    ],
                    *n,
                )
            })
            .collect();
        counter(
            enc,
            "lb_config_reloads",
            "Configuration changes (SIGHUP reloads and profile PUTs), by source and outcome.",
            changes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        admin::{BackendStatus, Conns, FrontendStatus, PoolStatus, WorkerStatus},
        proxy::counters::{FrontendTotals, TlsTotals},
    };

    #[test]
    fn a_duration_lands_in_the_first_bucket_whose_bound_holds_it() {
        let h = DurationHistogram::default();
        h.observe(Duration::from_micros(500)); // = 0.0005: first bucket
        h.observe(Duration::from_micros(501)); // second
        h.observe(Duration::from_millis(40)); // 0.05
        h.observe(Duration::from_secs(60)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(s.buckets[6], 1);
        assert_eq!(s.buckets[BUCKETS - 1], 1);
        assert_eq!(s.sum_ns, 500_000 + 501_000 + 40_000_000 + 60_000_000_000);
        let mut two = s;
        two.add(&s);
        assert_eq!(two.count(), 8);
    }

    fn conns(limit: u64, active: u64, queued: u64) -> Conns {
        Conns {
            limit,
            active,
            queued,
        }
    }

    fn scrape() -> Scrape {
        let mut totals = FrontendTotals {
            accepted: 7,
            active: 1,
            requests: 9,
            ..FrontendTotals::default()
        };
        totals.responses.c2 = 6;
        totals.responses.c5 = 3;
        totals.refused.insert("pool/maxSessRate".to_owned(), 3);
        let latency = DurationHistogram::default();
        for ms in [1, 2, 2, 30, 30, 30, 700, 700, 2000] {
            latency.observe(Duration::from_millis(ms));
        }
        let wait = DurationHistogram::default();
        wait.observe(Duration::from_millis(300));
        Scrape {
            status: Status {
                accounting: "process",
                global: conns(0, 1, 0),
                workers: vec![
                    WorkerStatus {
                        index: 0,
                        cpu: Some(0),
                        accepted: 4,
                        tls: TlsTotals::default(),
                    },
                    WorkerStatus {
                        index: 1,
                        cpu: Some(1),
                        accepted: 3,
                        tls: TlsTotals::default(),
                    },
                ],
                frontends: vec![FrontendStatus {
                    name: "we\"b".to_owned(),
                    mode: "http".to_owned(),
                    listen: "127.0.0.1:80".to_owned(),
                    pool: "p".to_owned(),
                    totals,
                    conns: conns(0, 1, 0),
                    limits: std::collections::BTreeMap::new(),
                    tls_cache: None,
                    tls_tickets: None,
                }],
                pools: vec![PoolStatus {
                    name: "p".to_owned(),
                    algorithm: "roundrobin".to_owned(),
                    conns: conns(2, 1, 1),
                    queue: crate::admin::Queue {
                        depth: 4,
                        timeout_ms: 1000,
                    },
                    backends: vec![BackendStatus {
                        address: "127.0.0.1:8080".to_owned(),
                        weight: 1,
                        up: true,
                        active: 1,
                        sent: 6,
                        connects: 2,
                        connect_errors: 0,
                        check_failures: 0,
                    }],
                }],
            },
            latency: vec![Some(latency.snapshot())],
            queue_waits: vec![QueueWaits {
                admitted: wait.snapshot(),
                timed_out: HistogramSnapshot::default(),
            }],
            xdp: None,
            config: ConfigCounts {
                generation: 3,
                changes: vec![
                    (Source::Sighup, Outcome::Ok, 1),
                    (Source::Sighup, Outcome::Refused, 2),
                ],
            },
        }
    }

    #[test]
    fn the_text_names_each_series_with_its_labels_and_value() {
        let text = scrape().render().expect("renders");
        let has = |line: &str| {
            assert!(
                text.lines().any(|l| l == line),
                "no line `{line}` in:\n{text}"
            );
        };
        has("# TYPE lb_frontend_requests counter");
        has(r#"lb_frontend_requests_total{frontend="we\"b"} 9"#);
        has(r#"lb_frontend_responses_total{frontend="we\"b",class="5xx"} 3"#);
        has(r#"lb_refusals_total{frontend="we\"b",level="pool",axis="maxSessRate"} 3"#);
        has(r#"lb_frontend_connections_active{frontend="we\"b"} 1"#);
        has("# TYPE lb_request_duration_seconds histogram");
        has(r#"lb_request_duration_seconds_count{frontend="we\"b"} 9"#);
        has(r#"lb_request_duration_seconds_bucket{le="0.0025",frontend="we\"b"} 3"#);
        has(r#"lb_request_duration_seconds_bucket{le="1.0",frontend="we\"b"} 8"#);
        has(r#"lb_request_duration_seconds_bucket{le="+Inf",frontend="we\"b"} 9"#);
        has(r#"lb_pool_queue_length{pool="p"} 1"#);
        has(r#"lb_pool_queue_wait_seconds_count{pool="p",outcome="admitted"} 1"#);
        has(r#"lb_pool_queue_wait_seconds_sum{pool="p",outcome="admitted"} 0.3"#);
        has(r#"lb_pool_queue_wait_seconds_count{pool="p",outcome="timeout"} 0"#);
        has(r#"lb_backend_up{pool="p",backend="127.0.0.1:8080"} 1"#);
        has(r#"lb_backend_requests_total{pool="p",backend="127.0.0.1:8080"} 6"#);
        has("lb_global_conn_slots_active 1");
        has(r#"lb_worker_connections_total{cpu="1"} 3"#);
        has("lb_config_generation 3");
        has(r#"lb_config_reloads_total{source="sighup",outcome="refused"} 2"#);
        assert!(text.ends_with("# EOF\n"), "{text}");
        // No TLS frontend, no XDP: those families are left out entirely.
        assert!(!text.contains("lb_tls_"), "{text}");
        assert!(!text.contains("lb_xdp_"), "{text}");
    }
}
