//! `mode = "tcp"` frontends: each client connection is spliced to one
//! backend connection. A failed connect is retried on another backend up to
//! the pool's `maxRetries`; then the client is closed. Data is copied both
//! ways; when one side ends its stream, the other side's write half is shut
//! down (half-close), and the connection ends when both have. A connection
//! with no bytes either way for `clientIdle` is closed.

use std::{net::SocketAddr, rc::Rc, sync::atomic::Ordering::Relaxed, time::Duration};

use tokio::net::TcpStream;

use super::{
    counters::Timeout,
    io::{ConnState, Tracked},
    tries::Tries,
    upstream, FrontendCtx,
};
use crate::pool::PickKey;

/// Copy buffer per direction when `maxBufferSize` is off at every level.
const BUFFER: usize = 64 * 1024;

/// Proxies one client connection.
pub async fn serve(client: TcpStream, peer: SocketAddr, ctx: Rc<FrontendCtx>) {
    let counters = ctx.counters();
    counters.requests.fetch_add(1, Relaxed);
    let pool = &ctx.pool;
    if !pool.any_up() {
        counters.no_backend.fetch_add(1, Relaxed);
        return;
    }
    let key = PickKey {
        source: peer.ip(),
        header_hash: None,
        cookie: None,
    };
    let mut tries = Tries::new(&ctx);
    let mut connected = None;
    while let Some((index, guard)) = tries.next(&ctx, &key) {
        let addr = pool.backends[index].addr;
        match upstream::connect_tcp(addr, pool.settings.connect_timeout).await {
            Ok(s) => {
                Tries::connected(&ctx, index);
                connected = Some((s, guard));
                break;
            }
            Err(e) => Tries::connect_failed(&ctx, index, &e),
        }
    }
    let Some((server, _guard)) = connected else {
        tries.give_up(&ctx);
        return;
    };
    let activity = Rc::new(ConnState::default());
    let mut client = Tracked::new(client, Rc::clone(&activity));
    let mut server = Tracked::new(server, Rc::clone(&activity));
    let idle = ctx.timeouts.client_idle.0;
    let tick = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    // maxBufferSize: the most held per direction.
    let buffer = ctx.shared.frontends[ctx.index]
        .buffer
        .map_or(BUFFER, |(v, _)| usize::try_from(v).unwrap_or(BUFFER));
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, buffer, buffer);
    tokio::pin!(copy);
    let mut ticker = tokio::time::interval(tick);
    let mut last = (0, 0);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            _ = copy.as_mut() => break,
            _ = ticker.tick() => {
                let now = (activity.bytes_in.get(), activity.bytes_out.get());
                if now == last {
                    quiet += tick;
                    if quiet >= idle {
                        counters.timeout(Timeout::ClientIdle);
                        break;
                    }
                } else {
                    quiet = Duration::ZERO;
                    last = now;
                }
            }
        }
    }
}
