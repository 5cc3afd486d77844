//! The userspace proxy: per-CPU workers accepting on each frontend's VIP
//! and forwarding to the frontend's pool.
//!
//! [`Proxy::start`] binds every frontend's `SO_REUSEPORT` group (one socket
//! per worker, steered by CPU; see [`listen`]), starts the health checks on
//! the calling runtime, and starts one [`worker`] thread per CPU.
//! [`Proxy::stop`] stops accepting, lets connections drain up to
//! `drainTimeout`, and joins the workers. Modules:
//! - [`listen`]: sockets, CPU steering, pinning;
//! - [`worker`]: a worker thread and its accept loops;
//! - [`http`] / [`tcp`]: the two frontend modes;
//! - [`tries`]: backend tries and retries, for both modes;
//! - [`pace`]: accept pacing (`rateLimitSessions`, `maxSslRate`);
//! - [`handshake`]: TLS handshakes, the per-CPU gate, the SSL limits;
//! - [`tls_stream`]: the TLS stream of a client connection, which holds
//!   no buffer while it idles;
//! - [`admit`]: `maxConn` and `maxSessRate` on connections and requests;
//! - [`upstream`]: backend connections, per worker;
//! - [`h1`]: HTTP/1.1 to backends inside the request's task;
//! - [`headers`]: forwarding headers;
//! - [`framing`]: HTTP/1.1 request boundaries, for heads hyper would
//!   frame one way and a backend another;
//! - [`io`]: per-connection byte counting for the timeouts;
//! - [`counters`]: per-worker counters.

pub mod admit;
pub mod counters;
pub mod framing;
pub mod h1;
pub mod handshake;
pub mod headers;
pub mod http;
pub mod io;
pub mod listen;
pub mod pace;
pub mod tcp;
pub mod tls_stream;
pub mod tries;
pub mod upstream;
pub mod worker;

use std::{cell::RefCell, net::SocketAddr, rc::Rc, sync::Arc};

use anyhow::{Context as _, Result};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    config::{Config, FrontendTimeouts, Mode},
    limits::{live::Live, session::Sessions, Axis, Level},
    pool::{self, Picker, Pool},
};
use counters::{FrontendCounters, WorkerCounters};

/// A frontend as the workers see it.
#[derive(Debug, Clone)]
pub struct FrontendInfo {
    /// Its name.
    pub name: String,
    /// `http | tcp`.
    pub mode: Mode,
    /// The VIP.
    pub listen: SocketAddr,
    /// Index into [`Shared::pools`].
    pub pool: usize,
    /// Client-side timeouts.
    pub timeouts: FrontendTimeouts,
    /// TLS, when the frontend terminates it.
    pub tls: Option<Arc<crate::tls::FrontendTls>>,
}

/// What every worker shares: read-mostly, counters per worker.
#[derive(Debug)]
pub struct Shared {
    /// Frontends, in config order.
    pub frontends: Vec<FrontendInfo>,
    /// Pools, in config order.
    pub pools: Vec<Arc<Pool>>,
    /// Per worker, in worker order.
    pub workers: Vec<WorkerCounters>,
    /// The limits in force (they change live).
    pub live: Arc<Live>,
    /// Session cookies for `maxSessRate`.
    pub sessions: Sessions,
    /// Whether refusals carry `lb-limit: <level>/<axis>`.
    pub limit_header: bool,
    /// The XDP program's `trusted` map, where workers mark the sources
    /// they accept; `None` without XDP.
    pub trusted: Option<Arc<crate::trust::TrustMap>>,
}

/// One frontend on one worker: what its connections need, at hand.
pub struct FrontendCtx {
    /// Everything shared.
    pub shared: Arc<Shared>,
    /// The worker's index.
    pub worker: usize,
    /// The frontend's index.
    pub index: usize,
    /// The frontend's pool.
    pub pool: Arc<Pool>,
    /// This worker's balancing state for the pool.
    pub picker: RefCell<Picker>,
    /// This worker's backend connections.
    pub upstreams: Rc<upstream::Upstreams>,
    /// Client-side timeouts.
    pub timeouts: FrontendTimeouts,
    /// HTTP connection settings, and the limits generation they follow.
    pub http: RefCell<(u64, Rc<http::Builders>)>,
    /// This worker's refusal log lines.
    pub refusals: counters::RefusalLog,
    /// This worker's TLS handshakes in flight for the frontend.
    pub handshakes: Rc<handshake::HandshakeGate>,
}

impl FrontendCtx {
    /// This worker's counters of this frontend.
    #[must_use]
    pub fn counters(&self) -> &FrontendCounters {
        &self.shared.workers[self.worker].frontends[self.index]
    }

    /// The frontend.
    #[must_use]
    pub fn info(&self) -> &FrontendInfo {
        &self.shared.frontends[self.index]
    }

    /// The HTTP connection builder for the limits in force (rebuilt when
    /// they changed, so a new `maxBufferSize` applies to new connections).
    #[must_use]
    pub fn http_builder(&self) -> Rc<http::Builders> {
        let live = &self.shared.live;
        let mut b = self.http.borrow_mut();
        if b.0 != live.generation() {
            let buffer = live.tightest(self.index, Axis::MaxBufferSize);
            *b = (
                live.generation(),
                Rc::new(http::Builders::new(buffer.map(|(v, _)| v))),
            );
        }
        Rc::clone(&b.1)
    }

    /// Counts and logs a refusal by `axis` at `level`.
    pub fn refused(&self, level: Level, axis: Axis, why: &str) {
        self.counters().refuse(level, axis);
        self.refusals
            .note(&self.info().name, &self.pool.name, level, axis, why);
    }
}

/// A running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    health: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Binds every frontend and starts the workers and health checks. Call
    /// inside a tokio runtime (the health checks run on it).
    ///
    /// # Errors
    /// A frontend's address cannot be bound, or a thread cannot start.
    pub fn start(
        cfg: &Config,
        live: Arc<Live>,
        sessions: Sessions,
        tls: Vec<Option<Arc<crate::tls::FrontendTls>>>,
        trusted: Option<Arc<crate::trust::TrustMap>>,
    ) -> Result<Self> {
        let cpus = listen::allowed_cpus();
        let n = match cfg.global.workers.0 {
            0 => cpus.len().max(1),
            n => usize::try_from(n).unwrap_or(1),
        };
        let pools: Vec<Arc<Pool>> = cfg.pool.iter().map(|p| Arc::new(Pool::new(p))).collect();
        let frontends: Vec<FrontendInfo> = cfg
            .frontend
            .iter()
            .zip(tls.into_iter().chain(std::iter::repeat(None)))
            .map(|(f, tls)| FrontendInfo {
                name: f.name.clone(),
                mode: f.mode,
                listen: f.listen.0,
                pool: cfg.pool_index(f).unwrap_or(0),
                timeouts: f.timeouts,
                tls,
            })
            .collect();
        // Sockets per frontend, then regrouped per worker.
        let mut per_worker: Vec<Vec<std::net::TcpListener>> = (0..n).map(|_| Vec::new()).collect();
        for f in &frontends {
            let group = listen::bind_group(f.listen, n)
                .with_context(|| format!("frontend `{}`", f.name))?;
            for (w, l) in group.into_iter().enumerate() {
                per_worker[w].push(l);
            }
        }
        // Worker i takes CPU i, which is what the steering program's
        // `cpu % n` sends it when the allowed CPUs are 0..n.
        let cpu_of = |i: usize| cpus.get(i % cpus.len().max(1)).copied();
        if cpus.iter().take(n).enumerate().any(|(i, &c)| i != c) {
            warn!(
                ?cpus,
                "allowed CPUs are not 0..n: connections may be handed to a worker on another CPU"
            );
        }
        let shared = Arc::new(Shared {
            frontends,
            pools,
            workers: (0..n)
                .map(|i| WorkerCounters::new(cpu_of(i), cfg.frontend.len()))
                .collect(),
            live,
            sessions,
            limit_header: cfg.global.limit_header,
            trusted,
        });
        let mut health = Vec::new();
        for (p, pc) in shared.pools.iter().zip(&cfg.pool) {
            if let Some(h) = &pc.health {
                health.extend(pool::health::spawn(p, h));
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let drain = cfg.global.drain_timeout.0;
        let mut threads = Vec::with_capacity(n);
        for (index, listeners) in per_worker.into_iter().enumerate() {
            let plan = worker::Plan {
                index,
                cpu: cpu_of(index),
                listeners,
            };
            let shared = Arc::clone(&shared);
            let stop_rx = stop_rx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("lb-worker-{index}"))
                    .spawn(move || worker::run(plan, shared, stop_rx, drain))
                    .context("starting a worker thread")?,
            );
        }
        info!(
            workers = n,
            frontends = shared.frontends.len(),
            pools = shared.pools.len(),
            "proxy started"
        );
        Ok(Self {
            shared,
            stop,
            threads,
            health,
        })
    }

    /// What the proxy shares (counters, pools), for the admin API.
    #[must_use]
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, drains, joins the workers.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for h in &self.health {
            h.abort();
        }
        for t in self.threads {
            // Workers bound their own drain; join off the runtime.
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        info!("proxy stopped");
    }
}
