//! A proxy worker: one thread pinned to one CPU, running its own
//! current-thread tokio runtime with a `LocalSet`, accepting on its own
//! socket of each frontend's `SO_REUSEPORT` group. Everything a connection
//! touches on the hot path (round robin state, idle backend connections,
//! counters) belongs to this worker alone.

use std::{
    cell::{Cell, RefCell},
    os::fd::AsRawFd,
    rc::Rc,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::LocalSet};
use tracing::{info, warn};

use super::{http, listen, tcp, upstream::Upstreams, FrontendCtx, Shared};
use crate::config::Mode;

/// What one worker is given at start.
pub struct Plan {
    /// Its index (= its socket's index in every reuseport group).
    pub index: usize,
    /// The CPU to pin to.
    pub cpu: Option<usize>,
    /// Its listening socket of each frontend, in frontend order.
    pub listeners: Vec<std::net::TcpListener>,
}

/// Runs a worker on the calling thread until `stop` turns true and its
/// connections drain (or `drain` passes).
pub fn run(plan: Plan, shared: Arc<Shared>, stop: watch::Receiver<bool>, drain: Duration) {
    if let Some(cpu) = plan.cpu {
        if let Err(e) = listen::pin_to_cpu(cpu) {
            warn!(worker = plan.index, cpu, error = %e, "could not pin the worker to its CPU");
        }
    }
    // Capabilities are per thread: a worker's sockets are bound already,
    // and it needs none (see `crate::privileges`).
    if let Err(e) = crate::privileges::drop_all_but(&[]) {
        warn!(worker = plan.index, error = %e, "could not drop capabilities");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn!(worker = plan.index, error = %e, "could not start the worker's runtime");
            return;
        }
    };
    let local = LocalSet::new();
    local.block_on(&rt, serve(plan, shared, stop, drain));
}

/// Open client connections of one worker, and a wake-up when the last ends.
#[derive(Default)]
struct Open {
    count: Cell<usize>,
    empty: tokio::sync::Notify,
}

struct OpenGuard(Rc<Open>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let n = self.0.count.get().saturating_sub(1);
        self.0.count.set(n);
        if n == 0 {
            self.0.empty.notify_waiters();
        }
    }
}

async fn serve(plan: Plan, shared: Arc<Shared>, stop: watch::Receiver<bool>, drain: Duration) {
    let upstreams = Rc::new(Upstreams::default());
    let open = Rc::new(Open::default());
    let trust = shared
        .trusted
        .as_ref()
        .map(|m| Rc::new(crate::trust::Recorder::new(Arc::clone(m))));
    let mut accepting = Vec::new();
    for (f, std_listener) in plan.listeners.into_iter().enumerate() {
        let listener = match TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(worker = plan.index, error = %e, "could not register a listening socket");
                continue;
            }
        };
        let fe = &shared.frontends[f];
        let pool = Arc::clone(&shared.pools[fe.pool]);
        let ctx = Rc::new(FrontendCtx {
            shared: Arc::clone(&shared),
            worker: plan.index,
            index: f,
            picker: RefCell::new(pool.picker()),
            pool,
            upstreams: Rc::clone(&upstreams),
            timeouts: fe.timeouts,
            http: RefCell::new((u64::MAX, Rc::new(http::Builders::new(None)))),
            refusals: super::counters::RefusalLog::default(),
            handshakes: Rc::default(),
        });
        accepting.push(tokio::task::spawn_local(accept_loop(
            listener,
            ctx,
            stop.clone(),
            Rc::clone(&open),
            trust.clone(),
        )));
    }
    stopped(stop).await;
    for a in &accepting {
        a.abort();
    }
    for a in accepting {
        let _ = a.await;
    }
    let left = open.count.get();
    if left > 0 {
        info!(worker = plan.index, connections = left, "draining");
        let drained = tokio::time::timeout(drain, async {
            while open.count.get() > 0 {
                open.empty.notified().await;
            }
        })
        .await;
        if drained.is_err() {
            warn!(
                worker = plan.index,
                connections = open.count.get(),
                "drain timeout: closing the connections left"
            );
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    ctx: Rc<FrontendCtx>,
    stop: watch::Receiver<bool>,
    open: Rc<Open>,
    trust: Option<Rc<crate::trust::Recorder>>,
) {
    let counters = &ctx.shared.workers[ctx.worker];
    let mut last_error_log: Option<std::time::Instant> = None;
    let live = Arc::clone(&ctx.shared.live);
    let gates = live.levels(ctx.index).map(|s| &s.accept);
    let tls = ctx.info().tls.clone();
    let ssl_rate = live.levels(ctx.index).map(|s| &s.ssl_rate);
    let mut dropped_in_row = 0u32;
    loop {
        // rateLimitSessions: wait (connections stay in the backlog) until
        // every level's gate allows one more.
        if super::pace::admit(&gates).await {
            ctx.counters().paced.fetch_add(1, Relaxed);
        }
        // maxSslRate: no new TLS connection while full handshakes are over
        // the rate.
        if tls.is_some() && super::pace::pause_while_spent(&ssl_rate).await {
            ctx.counters().tls.rate_paused.fetch_add(1, Relaxed);
        }
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or memory: say so (at most once a
                // second), back off briefly, keep the listener.
                if last_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    warn!(frontend = %ctx.shared.frontends[ctx.index].name, error = %e, "accept failed");
                    last_error_log = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        counters.accepted.fetch_add(1, Relaxed);
        // The handshake completed: the address is real (`[xdp] trustSeconds`).
        if let Some(t) = &trust {
            if live.trusting() {
                t.note(peer.ip());
            }
        }
        let fc = ctx.counters();
        fc.accepted.fetch_add(1, Relaxed);
        // A TLS client that closed while it waited in the backlog: closed
        // unanswered, before any read (see `handshake::peer_closed`), and
        // the rateLimitSessions token taken for it given back, so that a
        // backlog of them drains at accept speed. That costs a few
        // microseconds each, so the open connections get their turn after
        // every 16 of them, not after each.
        if tls.is_some() && super::handshake::peer_closed(stream.as_raw_fd()) {
            fc.tls.abandoned.fetch_add(1, Relaxed);
            for g in &gates {
                g.give_back();
            }
            drop(stream);
            dropped_in_row += 1;
            if dropped_in_row == 16 {
                dropped_in_row = 0;
                tokio::task::yield_now().await;
            }
            continue;
        }
        dropped_in_row = 0;
        fc.active.fetch_add(1, Relaxed);
        let _ = stream.set_nodelay(true);
        open.count.set(open.count.get() + 1);
        let guard = OpenGuard(Rc::clone(&open));
        let ctx = Rc::clone(&ctx);
        let stop = stop.clone();
        tokio::task::spawn_local(async move {
            serve_connection(stream, peer, &ctx, stop).await;
            ctx.counters().active.fetch_sub(1, Relaxed);
            drop(guard);
        });
        // One accept, then the connections already open get their turn: a
        // backlog full of new connections (a storm) is taken one at a time
        // between them, not in a burst that the open ones wait behind.
        tokio::task::yield_now().await;
    }
}

/// One accepted connection: `maxConn` at the global and frontend levels
/// (over it: HTTP 503, TCP closed, TLS a fatal alert), the TLS handshake if
/// the frontend has one, then the frontend's mode.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    ctx: &Rc<FrontendCtx>,
    stop: watch::Receiver<bool>,
) {
    use super::io::{ClientStream, SendStream};
    let mode = ctx.info().mode;
    let tls = ctx.info().tls.clone();
    // This future is the connection's task, which an idle connection keeps
    // for its life: what only runs for a while (a refusal, the handshake,
    // serving TCP) is boxed, so that the task holds room for none of it.
    let _held = match (super::admit::connection(ctx).await, &tls, mode) {
        (Ok(held), _, _) => held,
        (Err(_), Some(_), _) => return Box::pin(super::handshake::refuse(stream)).await,
        (Err(r), None, Mode::Http) => {
            return Box::pin(http::refuse_connection(stream, ctx, r)).await
        }
        (Err(_), None, Mode::Tcp) => return Box::pin(tcp::close(stream)).await,
    };
    let (client, _tls_held) = match &tls {
        // A handshake still running when the worker stops is dropped: it
        // has no request to finish.
        Some(t) => tokio::select! {
            r = Box::pin(super::handshake::run(stream, ctx, t)) => match r {
                Some((c, held)) => (c, Some(held)),
                None => return,
            },
            () = stopped(stop.clone()) => return,
        },
        None => (ClientStream::Plain(SendStream(stream)), None),
    };
    match mode {
        Mode::Http => http::serve(client, peer, Rc::clone(ctx), stop).await,
        Mode::Tcp => Box::pin(tcp::serve(client, peer, Rc::clone(ctx))).await,
    }
}

/// Resolves once `stop` is (or turns) true, or its sender is gone.
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
