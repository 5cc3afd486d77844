//! The admin listener: `GET /api/status` (JSON) with the proxy's counters
//! per worker, frontend, pool and backend. Runs on the main thread's
//! runtime, never on a worker. Read-only; the metrics, status page and
//! changes come with later work.

use std::{convert::Infallible, net::SocketAddr, sync::atomic::Ordering::Relaxed, sync::Arc};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{debug, info};

use crate::proxy::{counters, Shared};

/// The default admin address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9100";

/// `/api/status`.
#[derive(Debug, Serialize)]
pub struct Status {
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
}

/// One frontend.
#[derive(Debug, Serialize)]
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
}

/// One pool.
#[derive(Debug, Serialize)]
pub struct PoolStatus {
    /// Name.
    pub name: String,
    /// Algorithm.
    pub algorithm: String,
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
        Self {
            workers: shared
                .workers
                .iter()
                .enumerate()
                .map(|(index, w)| WorkerStatus {
                    index,
                    cpu: w.cpu,
                    accepted: w.accepted.load(Relaxed),
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
                })
                .collect(),
            pools: shared
                .pools
                .iter()
                .map(|p| PoolStatus {
                    name: p.name.clone(),
                    algorithm: format!("{:?}", p.algorithm).to_lowercase(),
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

/// Binds the admin listener and serves it on the current runtime.
///
/// # Errors
/// The address cannot be bound.
pub async fn start(addr: SocketAddr, shared: Arc<Shared>) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin listener {addr}"))?;
    info!(%addr, "admin listener");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, Infallible>(route(&req, &shared)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    debug!(error = %e, "admin connection");
                }
            });
        }
    }))
}

fn route(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/api/status") => {
            let body = serde_json::to_vec_pretty(&Status::collect(shared)).unwrap_or_default();
            json(StatusCode::OK, body)
        }
        (_, "/api/status") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            br#"{"error":"method not allowed; allowed: GET"}"#.to_vec(),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            br#"{"error":"no such endpoint; allowed: GET /api/status"}"#.to_vec(),
        ),
    }
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
