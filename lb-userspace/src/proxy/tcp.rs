//! `mode = "tcp"` frontends: each client connection is a new session
//! (`maxSessRate`) and takes a slot of the pool's `maxConn` (waiting in the
//! pool's queue if need be; refused: closed), then is spliced to one
//! backend connection. A failed connect is retried on another backend up to
//! the pool's `maxRetries`; then the client is closed. Data is copied both
//! ways; when one side ends its stream, the other side's write half is shut
//! down (half-close), and the connection ends when both have. A connection
//! with no bytes either way for `clientIdle` is closed.

use std::{net::SocketAddr, rc::Rc, sync::atomic::Ordering::Relaxed, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    admit,
    counters::Timeout,
    io::{ClientStream, ConnState, Tracked},
    tries::Tries,
    upstream, FrontendCtx,
};
use crate::{limits::Axis, pool::PickKey};

/// Copy buffer per direction when `maxBufferSize` is off at every level.
const BUFFER: usize = 64 * 1024;

/// Proxies one client connection.
pub async fn serve(client: ClientStream, peer: SocketAddr, ctx: Rc<FrontendCtx>) {
    let counters = ctx.counters();
    counters.requests.fetch_add(1, Relaxed);
    let pool = &ctx.pool;
    if !pool.any_up() {
        counters.no_backend.fetch_add(1, Relaxed);
        return close(client).await;
    }
    // Every connection is a new session; then a slot of the pool's maxConn
    // (maybe after the queue). Refused: the client is closed.
    if admit::new_session(&ctx).is_err() {
        return close(client).await;
    }
    let Ok(_slot) = admit::pool_slot(&ctx).await else {
        return close(client).await;
    };
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
        return close(client).await;
    };
    let activity = Rc::new(ConnState::default());
    let mut client = Tracked::new(client, Rc::clone(&activity));
    let mut server = Tracked::new(server, Rc::clone(&activity));
    let idle = ctx.timeouts.client_idle.0;
    let tick = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    // maxBufferSize: the most held per direction.
    let buffer = ctx
        .shared
        .live
        .tightest(ctx.index, Axis::MaxBufferSize)
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

/// Closes a client connection lb will not proxy: FIN first, then what the
/// client sent already is read and dropped (at most 64 KiB, for at most
/// 200 ms), so the kernel does not answer unread bytes with a reset. The
/// client sees its connection closed.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(mut client: S) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = client.shutdown().await;
    let mut buf = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        while left > 0 {
            match client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}
