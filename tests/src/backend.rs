//! Small real backends for the proxy tests: an HTTP/1.1 (and h2c) server
//! and a TCP echo server, each on its own thread with its own runtime,
//! optionally inside a network namespace, stopped on drop.
//!
//! The HTTP server answers every request with `x-backend: NAME` and a body
//! that starts `backend NAME` followed by the request's method and URI, a
//! `version: HTTP/x` line and its headers, one per line, so a test sees exactly what the proxy forwarded.
//! Paths:
//! - `/slow?ms=N`: answers after N ms;
//! - `/upload`: reads the whole body, answers `received N`;
//! - `/bytes?n=N`: streams N bytes;
//! - `/health`: 200, or 503 while [`HttpBackend::set_healthy`] is false;
//!
//! While [`HttpBackend::set_dropping`] is on, it reads each request and
//! closes the connection without answering (a backend that died mid-request).
//! - `/silent-body?ms=N`: sends the head and one chunk, then nothing for N
//!   ms.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

/// What a test can switch on a running backend.
struct Flags {
    healthy: AtomicBool,
    dropping: AtomicBool,
}

/// A running backend; dropping it stops it and frees its port.
pub struct HttpBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<AtomicU64>,
    flags: Arc<Flags>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpBackend {
    /// Starts a backend named `name` on `addr` (port 0: any), in namespace
    /// `ns` if given.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start(name: &str, addr: SocketAddr, ns: Option<&str>) -> Result<Self> {
        let requests = Arc::new(AtomicU64::new(0));
        let flags = Arc::new(Flags {
            healthy: AtomicBool::new(true),
            dropping: AtomicBool::new(false),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (name, ns) = (name.to_owned(), ns.map(str::to_owned));
        let (req2, flags2) = (Arc::clone(&requests), Arc::clone(&flags));
        let thread = std::thread::spawn(move || {
            let ready = ready_tx.clone();
            let r = (|| -> Result<()> {
                if let Some(ns) = &ns {
                    crate::netns::enter(ns)?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("backend {name} binding {addr}"))?;
                    let _ = ready.send(Ok(listener.local_addr()?));
                    serve_http(listener, name, req2, flags2, stop_rx).await;
                    Ok(())
                })
            })();
            if let Err(e) = r {
                let _ = ready_tx.send(Err(e));
            }
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("backend did not start")??;
        Ok(Self {
            addr,
            requests,
            flags,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Requests it has answered (or started answering).
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// What `/health` answers: 200 when true, 503 when false.
    pub fn set_healthy(&self, healthy: bool) {
        self.flags.healthy.store(healthy, Relaxed);
    }

    /// Whether requests are read and then dropped with the connection.
    pub fn set_dropping(&self, dropping: bool) {
        self.flags.dropping.store(dropping, Relaxed);
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    name: String,
    requests: Arc<AtomicU64>,
    flags: Arc<Flags>,
    mut stop: oneshot::Receiver<()>,
) {
    let name: Arc<str> = name.into();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (name, requests, flags) = (Arc::clone(&name), Arc::clone(&requests), Arc::clone(&flags));
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        requests.fetch_add(1, Relaxed);
                        answer(req, Arc::clone(&name), Arc::clone(&flags))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                });
            }
        }
    }
    // Dropping the set aborts open connections: the backend is gone.
    conns.abort_all();
}

type Body = BoxBody<Bytes, Infallible>;

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<str>,
    flags: Arc<Flags>,
) -> Result<Response<Body>, Box<dyn std::error::Error + Send + Sync>> {
    if flags.dropping.load(Relaxed) {
        // hyper closes the connection without a response.
        return Err("dropping requests".into());
    }
    let mut text = format!(
        "backend {name}\n{} {}\nversion: {:?}\n",
        req.method(),
        req.uri(),
        req.version()
    );
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    let full = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
        *r.status_mut() = status;
        r.headers_mut()
            .insert("x-backend", name.parse().expect("a header-safe name"));
        r
    };
    let resp = match req.uri().path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query(&req, "ms").unwrap_or(1000))).await;
            full(StatusCode::OK, text)
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            full(StatusCode::OK, format!("received {n}\n"))
        }
        "/bytes" => {
            let total = query(&req, "n").unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let mut r = Response::new(Repeat { left: total, chunk }.boxed());
            r.headers_mut()
                .insert("x-backend", name.parse().expect("a header-safe name"));
            r
        }
        "/silent-body" => {
            let ms = query(&req, "ms").unwrap_or(5000);
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(hyper::body::Frame::data(Bytes::from_static(b"first\n"))))
                    .await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let _ = tx
                    .send(Ok(hyper::body::Frame::data(Bytes::from_static(b"late\n"))))
                    .await;
            });
            let mut r = Response::new(ReceiverStream(rx).boxed());
            r.headers_mut()
                .insert("x-backend", name.parse().expect("a header-safe name"));
            r
        }
        "/health" if !flags.healthy.load(Relaxed) => full(StatusCode::SERVICE_UNAVAILABLE, text),
        _ => full(StatusCode::OK, text),
    };
    Ok(resp)
}

/// `left` bytes as frames of (at most) `chunk`.
struct Repeat {
    left: u64,
    chunk: Bytes,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        let data = self.chunk.slice(..usize::try_from(n).unwrap_or(0));
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
    }
}

/// A body fed by a channel.
struct ReceiverStream(tokio::sync::mpsc::Receiver<Result<hyper::body::Frame<Bytes>, Infallible>>);

impl hyper::body::Body for ReceiverStream {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

/// A TCP echo server: reads until the client ends its stream, then writes
/// back everything it read and closes (so a client sees its data only if
/// half-close works through the proxy).
pub struct EchoBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    connections: Arc<AtomicU64>,
}

impl EchoBackend {
    /// Starts it on `addr`.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start(addr: SocketAddr) -> Result<Self> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let connections = Arc::new(AtomicU64::new(0));
        let conns = Arc::clone(&connections);
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("echo binding {addr}: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(listener.local_addr().map_err(Into::into));
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((mut s, _)) = accepted else { continue };
                            conns.fetch_add(1, Relaxed);
                            tokio::spawn(async move {
                                let mut all = Vec::new();
                                if s.read_to_end(&mut all).await.is_ok() {
                                    let _ = s.write_all(&all).await;
                                    let _ = s.shutdown().await;
                                }
                            });
                        }
                    }
                }
            });
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("echo backend did not start")??;
        Ok(Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
            connections,
        })
    }

    /// Connections accepted.
    #[must_use]
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
