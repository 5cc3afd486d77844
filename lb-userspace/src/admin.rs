//! The admin listener, on the main thread's runtime, never on a worker:
//! - `GET /`: the operator's status page, one self-contained HTML file
//!   (`status_page.html`, embedded) that reads `/api/status` every 2 s
//!   (see docs/status-page.md);
//! - `GET /api/status` (JSON): the proxy's counters per worker, frontend,
//!   pool and backend, and each level's `maxConn` accounting;
//! - `GET /api/profiles`: the profiles in force and the pools bound to each;
//! - `PUT /api/profiles/NAME`: replace a profile live (see [`Control`]);
//!   it needs `Authorization: Bearer <token>` (compared in constant time);
//! - `GET /metrics`: the same counters and more for Prometheus (see
//!   [`crate::metrics`]).

use std::{
    collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::atomic::Ordering::Relaxed,
    sync::Arc,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::{
    control::{ChangeError, Control},
    limits::slots::ConnLimit,
    proxy::{counters, Shared},
};

/// The default admin address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9100";

/// `/api/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Where the `maxConn` counts live: `bpf` (the pinned `pool_state`
    /// map, shared with XDP and a `--join`ed process) or `process`.
    pub accounting: &'static str,
    /// `maxConn` of `[global.limits]`.
    pub global: Conns,
    /// Per worker.
    pub workers: Vec<WorkerStatus>,
    /// Per frontend.
    pub frontends: Vec<FrontendStatus>,
    /// Per pool.
    pub pools: Vec<PoolStatus>,
}

/// One worker.
#[derive(Debug, Serialize)]
pub struct WorkerStatus {
    /// Worker index.
    pub index: usize,
    /// Pinned CPU.
    pub cpu: Option<usize>,
    /// Connections accepted.
    pub accepted: u64,
    /// TLS handshakes on this worker's CPU, all frontends (the handshake
    /// gate is per CPU: `gateRefused` shows which CPU refused).
    pub tls: counters::TlsTotals,
}

/// One frontend.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendStatus {
    /// Name.
    pub name: String,
    /// `http | tcp`.
    pub mode: String,
    /// VIP.
    pub listen: String,
    /// Pool name.
    pub pool: String,
    /// Counters summed over workers.
    #[serde(flatten)]
    pub totals: counters::FrontendTotals,
    /// `maxConn` of `[frontend.limits]` (client connections).
    pub conns: Conns,
    /// The session cache (TLS frontends with one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cache: Option<crate::tls::cache::CacheStats>,
    /// Every axis at each level for this frontend, and the one in force.
    pub limits: BTreeMap<&'static str, AxisLimit>,
    /// The ticket keys (TLS frontends): a `ticketKeys` file, the farm's in
    /// Redis (cluster mode), or this process's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_tickets: Option<crate::tls::tickets::TicketStats>,
}

/// One level's `maxConn` accounting.
#[derive(Debug, Serialize)]
pub struct Conns {
    /// The limit in force (0: off).
    pub limit: u64,
    /// Slots taken, all processes.
    pub active: u64,
    /// Waiting in the queue, all processes.
    pub queued: u64,
}

/// One axis for one frontend: its value at each level (0: off there) and
/// the tightest, which is in force.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AxisLimit {
    /// `[global.limits]`.
    pub global: u64,
    /// `[frontend.limits]`.
    pub frontend: u64,
    /// The pool's profile.
    pub pool: u64,
    /// The limit in force (0: off at every level; `maxRetries`: the
    /// smallest value named, 0 meaning no retry).
    pub in_force: u64,
    /// The level that sets it (none when off).
    pub level: Option<&'static str>,
}

/// A pool's queue in front of its `maxConn`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Queue {
    /// How many may wait (0: no queue).
    pub depth: u64,
    /// How long one may wait, in milliseconds.
    pub timeout_ms: u64,
}

fn axis_limits(live: &crate::limits::live::Live, f: usize) -> BTreeMap<&'static str, AxisLimit> {
    use crate::limits::Axis;
    Axis::ALL
        .iter()
        .map(|&axis| {
            let [g, fr, p] = live.levels(f).map(|s| s.get(axis));
            let (in_force, level) = if axis == Axis::MaxRetries {
                let (v, l) = live.max_retries(f);
                (v, Some(l.name()))
            } else {
                live.tightest(f, axis)
                    .map_or((0, None), |(v, l)| (v, Some(l.name())))
            };
            (
                axis.name(),
                AxisLimit {
                    global: g,
                    frontend: fr,
                    pool: p,
                    in_force,
                    level,
                },
            )
        })
        .collect()
}

impl Conns {
    fn of(c: &ConnLimit) -> Self {
        Self {
            limit: c.limit(),
            active: c.active(),
            queued: c.queued(),
        }
    }
}

/// One pool.
#[derive(Debug, Serialize)]
pub struct PoolStatus {
    /// Name.
    pub name: String,
    /// Algorithm.
    pub algorithm: String,
    /// `maxConn` of its profile (HTTP: requests in flight; TCP:
    /// connections) and its queue.
    pub conns: Conns,
    /// The queue's size and wait.
    pub queue: Queue,
    /// Backends.
    pub backends: Vec<BackendStatus>,
}

/// One backend.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// `IP:PORT`.
    pub address: String,
    /// Weight.
    pub weight: u32,
    /// Takes new connections.
    pub up: bool,
    /// In flight now.
    pub active: u64,
    /// Requests (HTTP) or connections (TCP) sent.
    pub sent: u64,
    /// Connections opened.
    pub connects: u64,
    /// Failed connects.
    pub connect_errors: u64,
    /// Failed health checks.
    pub check_failures: u64,
}

impl Status {
    /// A snapshot of the counters.
    #[must_use]
    pub fn collect(shared: &Shared) -> Self {
        let live = &shared.live;
        Self {
            accounting: if live.table.is_mapped() {
                "bpf"
            } else {
                "process"
            },
            global: Conns::of(&live.global.conns),
            workers: shared
                .workers
                .iter()
                .enumerate()
                .map(|(index, w)| WorkerStatus {
                    index,
                    cpu: w.cpu,
                    accepted: w.accepted.load(Relaxed),
                    tls: w
                        .frontends
                        .iter()
                        .fold(counters::TlsTotals::default(), |mut t, f| {
                            t.add(&f.tls);
                            t
                        }),
                })
                .collect(),
            frontends: shared
                .frontends
                .iter()
                .enumerate()
                .map(|(i, f)| FrontendStatus {
                    name: f.name.clone(),
                    mode: format!("{:?}", f.mode).to_lowercase(),
                    listen: f.listen.to_string(),
                    pool: shared
                        .pools
                        .get(f.pool)
                        .map(|p| p.name.clone())
                        .unwrap_or_default(),
                    totals: counters::frontend_totals(&shared.workers, i),
                    conns: Conns::of(&live.frontends[i].conns),
                    tls_cache: f
                        .tls
                        .as_ref()
                        .and_then(|t| t.cache.as_ref())
                        .map(|c| c.stats()),
                    limits: axis_limits(live, i),
                    tls_tickets: f.tls.as_ref().map(|t| t.tickets.stats()),
                })
                .collect(),
            pools: shared
                .pools
                .iter()
                .zip(&live.pools)
                .map(|(p, l)| PoolStatus {
                    name: p.name.clone(),
                    algorithm: format!("{:?}", p.algorithm).to_lowercase(),
                    conns: Conns::of(&l.conns),
                    queue: {
                        let (depth, timeout) = l.conns.queue();
                        Queue {
                            depth,
                            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                        }
                    },
                    backends: p
                        .backends
                        .iter()
                        .map(|b| BackendStatus {
                            address: b.addr.to_string(),
                            weight: b.weight,
                            up: b.is_up(),
                            active: b.active(),
                            sent: b.sent.load(Relaxed),
                            connects: b.connects.load(Relaxed),
                            connect_errors: b.connect_errors.load(Relaxed),
                            check_failures: b.check_failures.load(Relaxed),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// What the admin listener serves.
#[derive(Debug)]
pub struct Admin {
    /// The proxy's counters and limits.
    pub shared: Arc<Shared>,
    /// Live changes.
    pub control: Arc<Control>,
    /// The bearer token every change needs (`[admin] token`, `tokenFile`,
    /// or the one `lb run` made for the instance).
    pub token: String,
    /// The cluster's Redis (`[cluster]`), for its status.
    pub redis: Option<Arc<crate::tls::cluster::Redis>>,
    /// When `lb` started (for `uptimeSeconds`).
    pub started: std::time::Instant,
    /// TLS for the listener (`[admin] tls`), if set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Binds the admin listener and serves it on the current runtime.
///
/// # Errors
/// The address cannot be bound.
///
/// With `wait_for_it` (a `--join`ed process, beside the `lb` that holds
/// the address), an address in use is taken once it is free instead: the
/// running process answers until it exits.
///
/// # Errors
/// The address cannot be bound (and is not only busy with `wait_for_it`).
pub async fn start(
    addr: SocketAddr,
    admin: Admin,
    wait_for_it: bool,
) -> Result<tokio::task::JoinHandle<()>> {
    let first = TcpListener::bind(addr).await;
    let first = match first {
        Err(e) if wait_for_it && e.kind() == std::io::ErrorKind::AddrInUse => {
            info!(%addr, "admin listener busy (the running lb has it): taking it when that one exits");
            None
        }
        other => Some(other.with_context(|| format!("binding the admin listener {addr}"))?),
    };
    if first.is_some() {
        info!(%addr, "admin listener");
    }
    let admin = Arc::new(admin);
    Ok(tokio::spawn(async move {
        let listener = match first {
            Some(l) => l,
            None => loop {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                if let Ok(l) = TcpListener::bind(addr).await {
                    info!(%addr, "admin listener");
                    break l;
                }
            },
        };
        let mut last_error_log: Option<std::time::Instant> = None;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or memory: say so (at most once a
                    // second) and back off, rather than spin.
                    if last_error_log
                        .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1))
                    {
                        tracing::warn!(%addr, error = %e, "admin accept failed");
                        last_error_log = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = Arc::clone(&admin);
            tokio::spawn(async move {
                match admin.tls.clone() {
                    None => serve(stream, admin).await,
                    Some(config) => {
                        let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                            Ok(Ok(tls)) => serve(tls, admin).await,
                            Ok(Err(e)) => debug!(error = %e, "admin TLS handshake"),
                            Err(_) => debug!("admin TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    }))
}

/// How long an admin client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the API on one connection (plain or TLS).
async fn serve<S>(stream: S, admin: Arc<Admin>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let admin = Arc::clone(&admin);
        async move { Ok::<_, Infallible>(route(req, &admin).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await
    {
        debug!(error = %e, "admin connection");
    }
}

/// The admin listener's TLS (`[admin] tls = { cert, key }`): the pair read
/// as a frontend's is, TLS 1.2 and 1.3.
///
/// # Errors
/// The files are refused (missing, unreadable, not a pair, a key others
/// can read).
pub fn tls_config(tls: &crate::config::Tls) -> Result<Arc<rustls::ServerConfig>> {
    let pair = crate::tls::certs::load(&tls.cert, &tls.key).context("[admin] tls")?;
    let resolver =
        crate::tls::certs::SniResolver::new(Vec::new(), Some(Arc::clone(&pair)), Some(pair));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("[admin] tls: protocol versions")?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(resolver));
    Ok(Arc::new(config))
}

/// The largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

const ENDPOINTS: &str =
    "GET /, GET /api/status, GET /api/profiles, PUT /api/profiles/NAME, GET /metrics";

async fn route(req: Request<Incoming>, admin: &Admin) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => status_page(),
        (Method::GET, "/api/status") => {
            let mut v = serde_json::to_value(Status::collect(&admin.shared)).unwrap_or_default();
            v["instance"] = admin.control.instance().into();
            v["uptimeSeconds"] = admin.started.elapsed().as_secs().into();
            v["generation"] = admin.control.generation().into();
            v["capabilities"] = crate::privileges::effective().into();
            if let Some(r) = &admin.redis {
                v["cluster"] = serde_json::to_value(r.status()).unwrap_or_default();
            }
            // The data plane's counters, when this process has it loaded.
            if let Some(s) = admin
                .control
                .xdp_pins()
                .and_then(|dir| crate::stats::Stats::read_dir(&dir).ok())
            {
                v["xdp"] = s.to_json();
            }
            ok_json(&v)
        }
        (Method::GET, "/api/profiles") => ok_json(&admin.control.profiles()),
        (Method::GET, "/metrics") => metrics(admin),
        (Method::PUT, p) if p.starts_with("/api/profiles/") => {
            let name = p.trim_start_matches("/api/profiles/").to_owned();
            put_profile(req, &name, admin).await
        }
        (_, "/" | "/api/status" | "/api/profiles" | "/metrics") => error_json(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method not allowed; allowed: {ENDPOINTS}"),
        ),
        (_, p) if p.starts_with("/api/profiles/") => error_json(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method not allowed; allowed: {ENDPOINTS}"),
        ),
        _ => error_json(
            StatusCode::NOT_FOUND,
            &format!("no such endpoint; allowed: {ENDPOINTS}"),
        ),
    }
}

async fn put_profile(req: Request<Incoming>, name: &str, admin: &Admin) -> Response<Full<Bytes>> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared in constant time: how much of a guess matched must not show
    // in how long the answer takes.
    if aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), admin.token.as_bytes())
        .is_err()
    {
        return error_json(
            StatusCode::UNAUTHORIZED,
            "changes need the header `Authorization: Bearer <admin token>`",
        );
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                &format!("reading the body: {e} (at most {MAX_BODY} bytes)"),
            )
        }
    };
    match admin.control.put_profile(name, &body) {
        Ok(()) => ok_json(&serde_json::json!({
            "applied": name,
            "profile": admin.control.profiles().get(name),
        })),
        Err(e) => {
            let status = match e {
                ChangeError::NoProfile { .. } => StatusCode::NOT_FOUND,
                ChangeError::Xdp(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            error_json(status, &e.to_string())
        }
    }
}

/// `GET /metrics`: the counters in the OpenMetrics text format.
fn metrics(admin: &Admin) -> Response<Full<Bytes>> {
    match crate::metrics::Scrape::collect(&admin.shared, &admin.control).render() {
        Ok(text) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            r
        }
        Err(e) => error_json(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The status page: inline CSS and JS, no external asset (it must work on
/// a console that reaches nothing but this listener).
const STATUS_PAGE: &str = include_str!("status_page.html");

/// `GET /`: the status page.
fn status_page() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // A new lb may serve a new page: never keep an old one.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn ok_json<T: Serialize>(v: &T) -> Response<Full<Bytes>> {
    json(
        StatusCode::OK,
        serde_json::to_vec_pretty(v).unwrap_or_default(),
    )
}

fn error_json(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default(),
    )
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
