//! `mode = "http"` frontends: HTTP/1.1 (keep-alive) and HTTP/2 (h2c with
//! prior knowledge) from clients, proxied to the pool's backends over
//! reusable connections ([`super::upstream`]).
//!
//! Per request: pick a backend (sticky cookie, then the algorithm), connect
//! or reuse, send; a failed connect is retried on another backend up to
//! the pool's `maxRetries`; a request already sent is retried only when it
//! is idempotent, had no body, and no response byte came back. Bodies
//! stream both ways. Each connection has a watchdog: a request head still
//! incomplete after `headerRead` gets 408, a connection idle past
//! `clientIdle` is closed (HTTP/2: GOAWAY).

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    rc::Rc,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::{
    body::Incoming,
    server::conn::http1,
    service::{service_fn, HttpService},
};
use hyper_util::{rt::TokioIo, server::conn::auto};
use tokio::{net::TcpStream, sync::watch, time::Sleep};

use super::{
    admit::{self, Refusal},
    counters::Timeout,
    h1, headers,
    io::{send_raw, ClientStream, ConnState, InFlight, LocalExec, SendStream, Tracked},
    tries::Tries,
    upstream::{ReqBody, Sender},
    FrontendCtx,
};
use crate::{
    config::{BackendProtocol, Sticky},
    limits::{session, slots::Permit, Axis},
    pool::{balance, ActiveGuard, PickKey, Pool},
};

/// The connection builders of a frontend (one set per worker).
///
/// `buffer` is the `maxBufferSize` in force: the most a connection buffers
/// per direction. A request head that does not fit is answered 431 by
/// hyper (HTTP/2: a header list over it is refused).
#[must_use]
pub fn builder(buffer: Option<u64>) -> auto::Builder<LocalExec> {
    let mut b = auto::Builder::new(LocalExec);
    let mut h1 = b.http1();
    // The same options as `h1_builder`'s.
    h1.keep_alive(true)
        .half_close(true)
        .header_read_timeout(None);
    if let Some(size) = buffer {
        h1.max_buf_size(max_buf_size(size));
        b.http2()
            .max_header_list_size(u32::try_from(size).unwrap_or(u32::MAX));
    }
    b
}

/// The builder of HTTP/1.1 connections served one request at a time
/// (parked between requests, see [`serve`]), for a `maxBufferSize` of
/// `buffer`.
#[must_use]
pub fn h1_builder(buffer: Option<u64>) -> http1::Builder {
    let mut h1 = http1::Builder::new();
    // A client may shut down its sending side once its request is out
    // (RFC 9112 9.6): it still gets its answer. The watchdog, not hyper,
    // times request heads.
    h1.keep_alive(true)
        .half_close(true)
        .header_read_timeout(None);
    if let Some(size) = buffer {
        h1.max_buf_size(max_buf_size(size));
    }
    h1
}

/// hyper's read buffer limit for a `maxBufferSize`: hyper's floor is
/// 8 KiB (maxBufferSize's is 16 KiB).
fn max_buf_size(size: u64) -> usize {
    usize::try_from(size).unwrap_or(usize::MAX).max(8192)
}

/// A frontend's connection builders for the limits in force: one that
/// tells HTTP/2 (prior knowledge) from HTTP/1.1 by the first bytes, for
/// plain connections, and one for each protocol, for TLS connections,
/// whose ALPN already said.
pub struct Builders {
    /// HTTP/1.1 or HTTP/2, told by the first bytes.
    pub any: auto::Builder<LocalExec>,
    /// HTTP/1.1 only, a connection per request (TLS, ALPN not `h2`).
    pub h1: http1::Builder,
    /// HTTP/2 only.
    pub h2: auto::Builder<LocalExec>,
}

impl Builders {
    /// The builders for a `maxBufferSize` of `buffer` (see [`builder`]).
    #[must_use]
    pub fn new(buffer: Option<u64>) -> Self {
        Self {
            any: builder(buffer),
            h1: h1_builder(buffer),
            h2: builder(buffer).http2_only(),
        }
    }
}

/// Serves one client connection until it closes, times out, or (after
/// `stop`) drains.
///
/// HTTP/1.1 over TLS is served one hyper connection at a time: when hyper
/// has waited [`PARK_AFTER`](super::io::PARK_AFTER) for a next request
/// that has not begun to arrive, [`Tracked`] parks it (see `proxy/io.rs`):
/// hyper's connection ends and gives the stream back, and the connection
/// waits on its bare socket. An idle keep-alive connection then holds no
/// hyper buffers (16 KiB: 8 to read, 8 to write) and no hyper state; the
/// next request gets a new hyper connection. HTTP/2 and plain connections
/// (which may turn out to be HTTP/2) keep one hyper connection for their
/// life.
pub async fn serve(
    stream: ClientStream,
    peer: SocketAddr,
    ctx: Rc<FrontendCtx>,
    stop: watch::Receiver<bool>,
) {
    let state = Rc::new(ConnState::default());
    // The socket owned by the connection future below, alive while it is:
    // a 408 is written straight to it (plain connections only).
    let fd = stream.plain_fd();
    let proto = if stream.is_tls() { "https" } else { "http" };
    let alpn_h2 = stream.alpn_h2();
    let mut io = TokioIo::new(Tracked::new(stream, Rc::clone(&state)));
    let mut service = {
        let ctx = Rc::clone(&ctx);
        let state = Rc::clone(&state);
        let fwd = Rc::new(headers::Forwarding::new(peer.ip(), proto));
        service_fn(move |req| {
            let (guard, conflicting) = state.begin();
            // Boxed: hyper keeps a slot of the handler future's size in
            // every connection, idle or not; a box is one pointer.
            Box::pin(handle(
                req,
                peer,
                Rc::clone(&fwd),
                Rc::clone(&ctx),
                guard,
                conflicting,
            ))
        })
    };
    let mut watcher = Watch::new(&ctx, &state, fd, stop);
    if alpn_h2 != Some(false) {
        let builders = ctx.http_builder();
        let builder = if alpn_h2 == Some(true) {
            &builders.h2
        } else {
            &builders.any
        };
        let conn = builder.serve_connection(io, service);
        // Boxed: the parked path below keeps none of this in the task.
        if let Some(Err(e)) = Box::pin(watcher.drive(conn, |c| c.graceful_shutdown())).await {
            head_too_large(&*e, &ctx);
        }
        return;
    }
    state.parks.set(true);
    loop {
        state.parked.set(false);
        // Boxed, so that a parked connection's task keeps no room for it.
        let mut conn = Box::new(ctx.http_builder().h1.serve_connection(io, service));
        let ended = watcher
            .drive(UntilDone(&mut conn), |c| {
                Pin::new(&mut *c.get_mut().0).graceful_shutdown();
            })
            .await;
        match ended {
            // The watchdog closed it.
            None => return,
            Some(Ok(())) if state.parked.get() => {}
            // The client closed, the connection was not to be kept
            // (`Connection: close`, HTTP/1.0, draining) or hyper refused a
            // request: hyper may still hold the end of a response (or its
            // 400) unflushed. Polled as a plain future it flushes and shuts
            // the stream down (TLS: close_notify), as it would have without
            // parking.
            Some(r) => {
                if let Err(e) = r {
                    head_too_large(&e, &ctx);
                }
                let _ = tokio::time::timeout(ctx.timeouts.client_idle.0, &mut *conn).await;
                return;
            }
        }
        let parts = conn.into_parts();
        (io, service) = (parts.io, parts.service);
        // An empty view that still holds hyper's whole read buffer.
        let unread = parts.read_buf.len();
        drop(parts.read_buf);
        if unread > 0 {
            // Parking waits for no request begun, so hyper holds no bytes
            // of one; if it did, they would be lost: close instead.
            tracing::debug!(bytes = unread, "parked with bytes unread: closing");
            return;
        }
        if !watcher.park(io.inner().get_ref().tcp()).await {
            // Idle past clientIdle, or stopping: close as hyper would
            // (TLS: close_notify).
            let mut stream = io.into_inner();
            let _ = tokio::time::timeout(
                ctx.timeouts.client_idle.0,
                tokio::io::AsyncWriteExt::shutdown(&mut stream),
            )
            .await;
            return;
        }
    }
}

/// An HTTP/1.1 connection polled until it is done, without shutting its
/// stream down: it may have parked.
struct UntilDone<'c, S: HttpService<Incoming>>(
    &'c mut http1::Connection<TokioIo<Tracked<ClientStream>>, S>,
);

impl<S> Future for UntilDone<'_, S>
where
    S: HttpService<Incoming, ResBody = RespBody> + Unpin,
    S::Future: Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().0.poll_without_shutdown(cx)
    }
}

/// A client connection's watchdog: samples its [`ConnState`] each tick
/// ([`Watchdog`]), follows the worker's stop signal, and acts on both.
struct Watch<'a> {
    ctx: &'a FrontendCtx,
    state: &'a ConnState,
    /// The plain socket, for a 408 written straight to it.
    fd: Option<std::os::fd::RawFd>,
    stop: watch::Receiver<bool>,
    tick: Duration,
    ticker: tokio::time::Interval,
    dog: Watchdog,
    /// Closing: a graceful shutdown was asked (stop, or idle).
    draining: bool,
}

impl<'a> Watch<'a> {
    fn new(
        ctx: &'a FrontendCtx,
        state: &'a ConnState,
        fd: Option<std::os::fd::RawFd>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let t = &ctx.timeouts;
        let tick = (t.client_idle.0.min(t.header_read.0) / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        // The first look one tick from now, not at once: a head that starts
        // with the connection then gets its whole `headerRead`.
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let draining = *stop.borrow();
        Self {
            ctx,
            state,
            fd,
            stop,
            tick,
            ticker,
            dog: Watchdog::default(),
            draining,
        }
    }

    /// Drives a hyper connection to its end: `Some` with how it ended,
    /// `None` when the watchdog closed it (a request head too slow, a
    /// response the client does not read). `shutdown` asks it to finish
    /// gracefully (idle past `clientIdle`, or the worker stopping).
    async fn drive<C, E>(
        &mut self,
        conn: C,
        shutdown: impl Fn(Pin<&mut C>),
    ) -> Option<Result<(), E>>
    where
        C: Future<Output = Result<(), E>>,
    {
        tokio::pin!(conn);
        if self.draining {
            shutdown(conn.as_mut());
        }
        let t = &self.ctx.timeouts;
        loop {
            tokio::select! {
                r = conn.as_mut() => return Some(r),
                _ = self.ticker.tick() => match self.dog.check(self.state, self.tick, t.header_read.0, t.client_idle.0) {
                    Verdict::Fine => {}
                    Verdict::HeaderTimeout => {
                        self.ctx.counters().timeout(Timeout::HeaderRead);
                        if let (false, Some(fd)) = (self.state.h2.get(), self.fd) {
                            self.ctx.counters().response(408);
                            send_raw(fd, REQUEST_TIMEOUT);
                        }
                        return None;
                    }
                    Verdict::Idle if !self.draining => {
                        self.ctx.counters().timeout(Timeout::ClientIdle);
                        shutdown(conn.as_mut());
                        self.draining = true;
                    }
                    Verdict::Idle => {}
                    Verdict::Stalled => {
                        // A response the client does not read: close, as a
                        // graceful shutdown would wait for it forever.
                        self.ctx.counters().timeout(Timeout::ClientIdle);
                        return None;
                    }
                },
                changed = self.stop.changed(), if !self.draining => {
                    if changed.is_err() || *self.stop.borrow() {
                        shutdown(conn.as_mut());
                        self.draining = true;
                    }
                }
            }
        }
    }

    /// Waits on a parked connection's socket: true once the client sent
    /// something (or closed), false when the connection is to close (idle
    /// past `clientIdle`, or the worker stopping).
    async fn park(&mut self, socket: &TcpStream) -> bool {
        if self.draining {
            return false;
        }
        // No request has begun (that is when it parks): any bytes read
        // since the last one ended (a stray CRLF) are not a head on the
        // clock of `headerRead`.
        self.state.mark.set(self.state.bytes_in.get());
        let t = &self.ctx.timeouts;
        loop {
            tokio::select! {
                r = socket.readable() => return r.is_ok(),
                _ = self.ticker.tick() => {
                    // Nothing is in flight or begun: only idleness counts.
                    if self.dog.check(self.state, self.tick, t.header_read.0, t.client_idle.0) != Verdict::Fine {
                        self.ctx.counters().timeout(Timeout::ClientIdle);
                        return false;
                    }
                }
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        return false;
                    }
                }
            }
        }
    }
}

/// Counts and logs a request head refused (431) for `maxBufferSize`.
fn head_too_large(e: &(dyn std::error::Error + Send + Sync + 'static), ctx: &FrontendCtx) {
    let too_large = e
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_parse_too_large);
    if !too_large {
        return;
    }
    let Some((size, level)) = ctx.shared.live.tightest(ctx.index, Axis::MaxBufferSize) else {
        return;
    };
    ctx.counters().response(431);
    ctx.refused(
        level,
        Axis::MaxBufferSize,
        &format!("a request head over {size} bytes (431)"),
    );
}

/// Answers every request of a connection refused by a connection limit
/// (`maxConn` at the global or frontend level) with 503, then closes it
/// (HTTP/1.1 at once; HTTP/2 when the client is done, at most `headerRead`
/// later).
pub async fn refuse_connection(stream: TcpStream, ctx: &Rc<FrontendCtx>, r: Refusal) {
    let counters = Rc::clone(ctx);
    let service = service_fn(move |_req: Request<Incoming>| {
        counters.counters().response(503);
        let mut resp = refusal(&counters, r);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        async move { Ok::<_, Infallible>(resp) }
    });
    let builders = ctx.http_builder();
    let conn = builders
        .any
        .serve_connection(TokioIo::new(SendStream(stream)), service);
    let _ = tokio::time::timeout(ctx.timeouts.header_read.0, conn).await;
}

/// The answer to a request refused by a limit: 503, `Retry-After: 1`, and
/// (unless turned off) `lb-limit: <level>/<axis>`.
fn refusal(ctx: &FrontendCtx, r: Refusal) -> Response<RespBody> {
    let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, r.why);
    if ctx.shared.limit_header {
        if let Ok(v) = HeaderValue::from_str(&format!("{}/{}", r.level, r.axis)) {
            resp.headers_mut().insert(LB_LIMIT, v);
        }
    }
    resp
}

/// The header naming the limit that refused a request.
const LB_LIMIT: &str = "lb-limit";

const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n\
content-length: 44\r\nconnection: close\r\n\r\nlb: the request head did not arrive in time\n";

/// What the watchdog decided on one tick.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    HeaderTimeout,
    Idle,
    /// A response has waited `clientIdle` for the client to read any of it.
    Stalled,
}

/// Samples a connection's [`ConnState`] each tick.
#[derive(Debug, Default)]
struct Watchdog {
    last_in: u64,
    last_started: u64,
    last_out: u64,
    partial: Duration,
    quiet: Duration,
    /// How long a response has waited for the client to read.
    stalled: Duration,
}

impl Watchdog {
    fn check(
        &mut self,
        s: &ConnState,
        tick: Duration,
        header: Duration,
        idle: Duration,
    ) -> Verdict {
        let bytes_in = s.bytes_in.get();
        let started = s.started.get();
        let moved = bytes_in != self.last_in || started != self.last_started;
        self.last_in = bytes_in;
        self.last_started = started;
        let bytes_out = s.bytes_out.get();
        let wrote = bytes_out != self.last_out;
        self.last_out = bytes_out;
        if s.in_flight.get() > 0 {
            self.partial = Duration::ZERO;
            self.quiet = Duration::ZERO;
            // Waiting for the backend is the server timeout's business;
            // waiting for the client to read what is ready is this one's.
            if s.write_blocked.get() && !wrote {
                self.stalled += tick;
                if self.stalled >= idle {
                    return Verdict::Stalled;
                }
            } else {
                self.stalled = Duration::ZERO;
            }
            return Verdict::Fine;
        }
        self.stalled = Duration::ZERO;
        if bytes_in > s.mark.get() && !s.h2.get() {
            // Part of a request head is here: it must complete in time,
            // however slowly its bytes trickle in.
            self.partial += tick;
            self.quiet = Duration::ZERO;
            return if self.partial >= header {
                Verdict::HeaderTimeout
            } else {
                Verdict::Fine
            };
        }
        self.partial = Duration::ZERO;
        if moved {
            self.quiet = Duration::ZERO;
            return Verdict::Fine;
        }
        self.quiet += tick;
        if self.quiet >= idle {
            Verdict::Idle
        } else {
            Verdict::Fine
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    fwd: Rc<headers::Forwarding>,
    ctx: Rc<FrontendCtx>,
    in_flight: InFlight,
    conflicting: bool,
) -> Result<Response<RespBody>, Infallible> {
    // hyper calls us once the head is in: the latency runs from here to
    // the response head, which hyper writes as soon as we return it.
    let received = std::time::Instant::now();
    let counters = ctx.counters();
    counters
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut resp = if conflicting {
        // Never forwarded: a backend might frame it by the length.
        bad_request(
            &ctx,
            "the request head has both Content-Length and Transfer-Encoding; send one",
        )
    } else {
        proxy(req, peer, &fwd, &ctx).await
    };
    counters.latency.observe(received.elapsed());
    counters.response(resp.status().as_u16());
    resp.body_mut().in_flight = Some(in_flight);
    Ok(resp)
}

/// A 400 for a request whose framing is ambiguous or whose body is
/// malformed; the connection is closed after it, as what follows on it
/// cannot be trusted.
fn bad_request(ctx: &FrontendCtx, why: &str) -> Response<RespBody> {
    tracing::debug!(frontend = %ctx.info().name, why, "bad request");
    let mut resp = error(StatusCode::BAD_REQUEST, why);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Methods that may be sent twice (RFC 9110 9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

async fn proxy(
    req: Request<Incoming>,
    peer: SocketAddr,
    fwd: &headers::Forwarding,
    ctx: &Rc<FrontendCtx>,
) -> Response<RespBody> {
    use std::sync::atomic::Ordering::Relaxed;
    if !ctx.pool.any_up() {
        ctx.counters().no_backend.fetch_add(1, Relaxed);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no backend of the pool is up",
        );
    }
    // maxSessRate: a request without a valid session cookie starts one
    // (no cookies at all while every level leaves the axis off).
    let new_session = ctx
        .shared
        .live
        .tightest(ctx.index, Axis::MaxSessRate)
        .is_some()
        && !cookies(req.headers(), session::COOKIE).any(|c| ctx.shared.sessions.valid(c));
    if new_session {
        if let Err(r) = admit::new_session(ctx) {
            return refusal(ctx, r);
        }
    }
    // maxConn of the pool: a slot per request in flight, maybe after the
    // queue; held until the response body ends.
    let slot = match admit::pool_slot(ctx).await {
        Ok(p) => p,
        Err(r) => return refusal(ctx, r),
    };
    let mut resp = forward(req, peer, fwd, ctx).await;
    resp.body_mut().slot = Some(slot);
    if new_session && !resp.status().is_server_error() {
        let c = format!(
            "{}={}; Path=/; HttpOnly",
            session::COOKIE,
            ctx.shared.sessions.mint()
        );
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// Picks backends and sends the request until one answers or the tries
/// run out.
async fn forward(
    req: Request<Incoming>,
    peer: SocketAddr,
    fwd: &headers::Forwarding,
    ctx: &Rc<FrontendCtx>,
) -> Response<RespBody> {
    let pool = &ctx.pool;
    let settings = &pool.settings;
    let counters = ctx.counters();
    let (mut parts, body) = req.into_parts();
    let key = PickKey {
        source: peer.ip(),
        header_hash: settings
            .hash_header
            .as_ref()
            .and_then(|h| parts.headers.get(h))
            .map(|v| balance::hash_bytes(v.as_bytes())),
        cookie: (settings.sticky == Sticky::Cookie)
            .then(|| cookie(&parts.headers, &settings.sticky_cookie))
            .flatten()
            .and_then(|id| pool.backend_by_id(id)),
    };
    prepare_request(&mut parts, fwd, settings.protocol);
    // A bodiless idempotent request may go to another backend when the
    // first took it and never answered. An HTTP/1.1 backend connection
    // hands it back then (`Sent::Lost`); hyper's HTTP/2 client does not,
    // so for an HTTP/2 pool a copy is kept.
    let replayable = idempotent(&parts.method) && body.is_end_stream();
    let replay = (replayable && settings.protocol == BackendProtocol::H2).then(|| {
        let mut r = Request::new(());
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = parts.uri.clone();
        *r.version_mut() = parts.version;
        *r.headers_mut() = parts.headers.clone();
        r
    });
    let body_failed = Rc::new(std::cell::Cell::new(false));
    let mut req = Some(Request::from_parts(
        parts,
        if body.is_end_stream() {
            ReqBody::Empty
        } else {
            ReqBody::Client {
                body,
                failed: Rc::clone(&body_failed),
            }
        },
    ));
    let mut tries = Tries::new(ctx);
    while let Some((index, guard)) = tries.next(ctx, &key) {
        let addr = pool.backends[index].addr;
        let sender = match ctx.upstreams.reuse(addr, settings.protocol) {
            Some(s) => s,
            None => match ctx
                .upstreams
                .connect(addr, settings.protocol, settings.connect_timeout)
                .await
            {
                Ok(s) => {
                    Tries::connected(ctx, index);
                    s
                }
                Err(e) => {
                    Tries::connect_failed(ctx, index, &e);
                    continue;
                }
            },
        };
        let Some(request) = req.take().or_else(|| replay.as_ref().map(clone_request)) else {
            break;
        };
        match send(sender, request, settings.server_timeout).await {
            Sent::Response(parts, body) => {
                return respond(parts, body, guard, ctx, &key, index);
            }
            Sent::Unsent(request) => {
                // The connection closed before taking the request: try again
                // with the request intact.
                req = Some(request);
            }
            Sent::TimedOut => {
                counters.timeout(Timeout::Server);
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the backend did not answer in time",
                );
            }
            Sent::Failed { .. } if body_failed.get() => {
                return bad_request(
                    ctx,
                    "the request body is malformed (a bad chunk, or shorter than its length)",
                );
            }
            Sent::Failed { error, answered } => {
                tracing::debug!(pool = %pool.name, backend = %addr, %error, "backend request failed");
                // Sent already: only a bodiless idempotent request that got
                // no response byte may go again.
                if !replayable || answered {
                    break;
                }
            }
            Sent::Lost(request, error) => {
                tracing::debug!(pool = %pool.name, backend = %addr, %error, "backend request failed");
                if !replayable {
                    break;
                }
                req = Some(request);
            }
        }
    }
    if tries.give_up(ctx) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no backend of the pool is up",
        );
    }
    error(StatusCode::BAD_GATEWAY, "no backend could be reached")
}

fn clone_request(r: &Request<()>) -> Request<ReqBody> {
    let mut out = Request::new(ReqBody::Empty);
    *out.method_mut() = r.method().clone();
    *out.uri_mut() = r.uri().clone();
    *out.version_mut() = r.version();
    *out.headers_mut() = r.headers().clone();
    out
}

/// Rewrites a client request for the backend: hop-by-hop headers out,
/// forwarding headers in, the URI and version the backend protocol needs.
/// Public for the fuzz target `http_head` (fuzz/).
#[doc(hidden)]
pub fn prepare_request(
    parts: &mut http::request::Parts,
    fwd: &headers::Forwarding,
    protocol: BackendProtocol,
) {
    headers::strip_hop_by_hop(&mut parts.headers);
    // HTTP/2 clients send the authority in the URI, not a Host header.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(v) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, v);
        }
    }
    fwd.apply(&mut parts.headers);
    match protocol {
        BackendProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            // HTTP/1.1 clients send origin-form already; HTTP/2 ones (and
            // absolute-form requests) get their path and query only.
            if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                let mut p = http::uri::Parts::default();
                p.path_and_query = parts.uri.path_and_query().cloned();
                if let Ok(u) = Uri::from_parts(p) {
                    parts.uri = u;
                }
            }
        }
        BackendProtocol::H2 => {
            parts.version = Version::HTTP_2;
            let a = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            let path = parts
                .uri
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str);
            if let Ok(u) = format!("http://{a}{path}").parse::<Uri>() {
                parts.uri = u;
            }
            parts.headers.remove(header::HOST);
        }
    }
}

/// The values of cookie `name` in a request, in order (quotes removed).
/// Public for the fuzz target `http_head` (fuzz/).
#[doc(hidden)]
pub fn cookies<'a>(headers: &'a http::HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
}

/// The first value of cookie `name`, if the request has it.
fn cookie<'a>(headers: &'a http::HeaderMap, name: &'a str) -> Option<&'a str> {
    cookies(headers, name).next()
}

enum Sent {
    Response(http::response::Parts, Upstream),
    Unsent(Request<ReqBody>),
    /// Sent without a body, never answered, handed back.
    Lost(Request<ReqBody>, String),
    TimedOut,
    /// Sent; `answered` if response bytes came back (then never replayed).
    Failed {
        error: String,
        answered: bool,
    },
}

async fn send(sender: Sender, req: Request<ReqBody>, timeout: Duration) -> Sent {
    match sender {
        Sender::H1(conn) => match tokio::time::timeout(timeout, conn.send(req)).await {
            Err(_) => Sent::TimedOut,
            Ok(Ok(resp)) => Sent::Response(resp.head, Upstream::H1(resp.body)),
            Ok(Err(h1::SendError::Unsent(req, _))) => Sent::Unsent(*req),
            Ok(Err(h1::SendError::Lost(req, error))) => Sent::Lost(*req, error.to_string()),
            Ok(Err(h1::SendError::Failed { error, answered })) => Sent::Failed {
                error: error.to_string(),
                answered,
            },
        },
        Sender::H2(mut s) => match tokio::time::timeout(timeout, s.try_send_request(req)).await {
            Err(_) => Sent::TimedOut,
            Ok(Ok(resp)) => {
                let (parts, body) = resp.into_parts();
                Sent::Response(parts, Upstream::H2(body))
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(req) => Sent::Unsent(req),
                None => Sent::Failed {
                    error: e.into_error().to_string(),
                    answered: false,
                },
            },
        },
    }
}

fn respond(
    mut parts: http::response::Parts,
    body: Upstream,
    guard: ActiveGuard,
    ctx: &Rc<FrontendCtx>,
    key: &PickKey,
    index: usize,
) -> Response<RespBody> {
    headers::strip_hop_by_hop(&mut parts.headers);
    let pool: &Arc<Pool> = &ctx.pool;
    if pool.settings.sticky == Sticky::Cookie && key.cookie != Some(index) {
        let cookie = format!(
            "{}={}; Path=/; HttpOnly",
            pool.settings.sticky_cookie, pool.backends[index].id
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            parts.headers.append(header::SET_COOKIE, v);
        }
    }
    let timeout = pool.settings.server_timeout;
    let body = RespBody {
        kind: Kind::Backend {
            body,
            idle: None,
            moved: false,
            timeout,
            ctx: Rc::clone(ctx),
            _active: guard,
        },
        in_flight: None,
        slot: None,
    };
    Response::from_parts(parts, body)
}

/// What a response body's stream fails with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A backend's response body.
enum Upstream {
    /// Read from an HTTP/1.1 connection of ours; the connection goes back
    /// to the idle list when the body ends cleanly.
    H1(h1::BackendBody),
    /// A stream of hyper's HTTP/2 client.
    H2(Incoming),
}

impl Upstream {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Self::H1(b) => b.poll_frame(cx).map(|f| f.map(|r| r.map_err(Into::into))),
            Self::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::H1(b) => b.is_end_stream(),
            Self::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::H1(b) => b.size_hint(),
            Self::H2(b) => b.size_hint(),
        }
    }
}

/// A generated answer.
fn error(status: StatusCode, why: &str) -> Response<RespBody> {
    let mut r = Response::new(RespBody {
        kind: Kind::Full(Some(Bytes::from(format!("lb: {why}\n")))),
        in_flight: None,
        slot: None,
    });
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// A response body: generated, or a backend's streamed through with an
/// idle timeout. It holds the request's [`InFlight`] mark until it ends.
pub struct RespBody {
    kind: Kind,
    in_flight: Option<InFlight>,
    /// The pool's `maxConn` slot of the request, freed when the body ends.
    slot: Option<Permit>,
}

enum Kind {
    Full(Option<Bytes>),
    Backend {
        body: Upstream,
        /// Armed only once the backend makes the body wait: a body that
        /// arrives with its head (most small responses) costs no timer.
        idle: Option<Pin<Box<Sleep>>>,
        /// A frame arrived since the timer was last armed.
        moved: bool,
        timeout: Duration,
        ctx: Rc<FrontendCtx>,
        _active: ActiveGuard,
    },
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Backend {
                body,
                idle,
                moved,
                timeout,
                ctx,
                ..
            } => match body.poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    *moved = true;
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    let deadline = tokio::time::Instant::now() + *timeout;
                    match idle {
                        None => *idle = Some(Box::pin(tokio::time::sleep_until(deadline))),
                        Some(sleep) if *moved => sleep.as_mut().reset(deadline),
                        Some(_) => {}
                    }
                    *moved = false;
                    match idle.as_mut().map(|s| s.as_mut().poll(cx)) {
                        Some(Poll::Ready(())) => {
                            ctx.counters().timeout(Timeout::Server);
                            Poll::Ready(Some(Err("the backend went silent mid-body".into())))
                        }
                        _ => Poll::Pending,
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Backend { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Backend { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if let Kind::Backend {
            body: Upstream::H1(body),
            ctx,
            ..
        } = &mut self.kind
        {
            if let Some(conn) = body.take_reusable() {
                ctx.upstreams.put_back(conn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(bytes_in: u64, mark: u64, in_flight: u32) -> ConnState {
        let s = ConnState::default();
        s.bytes_in.set(bytes_in);
        s.mark.set(mark);
        s.in_flight.set(in_flight);
        s
    }

    #[test]
    fn watchdog_times_out_a_trickling_head_but_not_a_busy_or_idle_connection() {
        let tick = Duration::from_millis(100);
        let header = Duration::from_millis(300);
        let idle = Duration::from_secs(10);
        let mut dog = Watchdog::default();
        // One byte per tick, never a complete head.
        let verdicts: Vec<Verdict> = (1..=3)
            .map(|n| dog.check(&state(n, 0, 0), tick, header, idle))
            .collect();
        assert_eq!(
            verdicts,
            [Verdict::Fine, Verdict::Fine, Verdict::HeaderTimeout]
        );
        // A request in flight is never timed out by the client side.
        let mut dog = Watchdog::default();
        for _ in 0..10 {
            assert_eq!(
                dog.check(&state(5, 0, 1), tick, header, idle),
                Verdict::Fine
            );
        }
    }

    #[test]
    fn watchdog_closes_an_idle_keep_alive_connection_after_client_idle() {
        let tick = Duration::from_millis(100);
        let mut dog = Watchdog::default();
        let s = state(50, 50, 0);
        let mut n = 0;
        while dog.check(
            &s,
            tick,
            Duration::from_secs(10),
            Duration::from_millis(500),
        ) == Verdict::Fine
        {
            n += 1;
            assert!(n < 100);
        }
        assert_eq!(n, 5, "first tick sees movement, then five quiet ticks");
    }

    #[test]
    fn the_sticky_cookie_is_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; lb_backend=00ff; b=2"),
        );
        assert_eq!(cookie(&h, "lb_backend"), Some("00ff"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
