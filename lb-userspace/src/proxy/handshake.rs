//! TLS handshakes of a frontend with `tls`, on one worker.
//!
//! In order, each bounded by the frontend's `handshakeTimeout` from accept:
//! 1. read the ClientHello (a client that closed while its connection
//!    waited in the backlog never gets here: the accept loop drops it,
//!    counted `abandoned`; see [`peer_closed`]);
//! 2. take a `maxSslConn` slot at every level (over: a fatal alert);
//! 3. pass the worker's handshake gate: at most `maxActiveHandshakes`
//!    handshakes between ClientHello and Finished on this worker, per
//!    frontend, as BIG-IP's max active handshakes per TMM; over it a fatal
//!    alert at once (`gate = "reject"`) or a wait for a slot (`"wait"`),
//!    after which a client that closed meanwhile is dropped, `abandoned`;
//! 4. finish the handshake with the shared rustls configuration (so any
//!    worker resumes what any other started), count it full or resumed,
//!    and charge a full one to `maxSslRate` (the accept loop pauses while
//!    that rate is spent; see [`super::pace`]).
//!
//! A refusal is a TLS fatal alert `internal_error` (80) written to the
//! socket, then close: the client's TLS library reports it, nothing is
//! silent. Anything that goes wrong ends that connection alone, counted.

use std::{cell::Cell, io, os::fd::AsRawFd as _, rc::Rc, sync::Arc};

use rustls::{server::Acceptor, HandshakeKind};
use tokio::{net::TcpStream, sync::Notify, time::Instant};

use super::{
    admit,
    counters::TlsCounters,
    io::{send_raw, ClientStream},
    tls_stream::TlsStream,
    FrontendCtx,
};
use crate::{config::Gate, limits::Axis, tls::FrontendTls};

/// A TLS record: fatal alert `internal_error`.
pub const ALERT_INTERNAL_ERROR: &[u8] = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];

/// One worker's handshakes in flight for one frontend.
#[derive(Debug, Default)]
pub struct HandshakeGate {
    active: Cell<u64>,
    freed: Notify,
}

/// A place in the gate, given back on drop.
#[derive(Debug)]
pub struct GateSlot(Rc<HandshakeGate>);

impl Drop for GateSlot {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get().saturating_sub(1));
        self.0.freed.notify_one();
    }
}

impl HandshakeGate {
    /// Handshakes in flight now.
    #[must_use]
    pub fn active(&self) -> u64 {
        self.active.get()
    }

    /// A place when fewer than `max` are in flight, and whether it had to
    /// wait for it; with `Gate::Wait`, waits for one until `deadline`.
    /// None: refused.
    async fn enter(
        self: &Rc<Self>,
        max: u64,
        mode: Gate,
        deadline: Instant,
    ) -> Option<(GateSlot, bool)> {
        let mut waited = false;
        loop {
            if self.active.get() < max {
                self.active.set(self.active.get() + 1);
                return Some((GateSlot(Rc::clone(self)), waited));
            }
            if mode == Gate::Reject {
                return None;
            }
            waited = true;
            tokio::time::timeout_at(deadline, self.freed.notified())
                .await
                .ok()?;
        }
    }
}

/// Refuses a TLS connection whose ClientHello is still unread: the alert,
/// then a clean close (what the client sent is drained first, so the
/// kernel does not turn the close into a reset and hide the alert).
pub async fn refuse(stream: TcpStream) {
    send_raw(stream.as_raw_fd(), ALERT_INTERNAL_ERROR);
    super::tcp::close(stream).await;
}

/// A gate slot, shown in the frontend's TLS counters while held.
struct InGate<'a> {
    _slot: GateSlot,
    tc: &'a TlsCounters,
}

impl<'a> InGate<'a> {
    fn new(slot: GateSlot, tc: &'a TlsCounters) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let now = tc.in_flight.fetch_add(1, Relaxed) + 1;
        tc.peak_in_flight.fetch_max(now, Relaxed);
        Self { _slot: slot, tc }
    }
}

impl Drop for InGate<'_> {
    fn drop(&mut self) {
        self.tc
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a finished handshake holds until its connection ends.
#[derive(Debug)]
pub struct Held(#[allow(dead_code, reason = "held for its Drop")] admit::ConnPermits);

/// Runs the handshake of a freshly accepted connection; None when it was
/// refused or failed (already counted, the client told).
pub async fn run(
    stream: TcpStream,
    ctx: &FrontendCtx,
    tls: &FrontendTls,
) -> Option<(ClientStream, Held)> {
    let fd = stream.as_raw_fd();
    let tc = &ctx.counters().tls;
    let bump = |c: &std::sync::atomic::AtomicU64| {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let deadline = Instant::now() + tls.handshake_timeout;
    let hello = match tokio::time::timeout_at(deadline, read_client_hello(&stream)).await {
        Err(_) => {
            bump(&tc.timeouts);
            return None;
        }
        Ok(Err(e)) => {
            bump(&tc.failed);
            tracing::debug!(frontend = %ctx.info().name, error = %e, "not a TLS ClientHello");
            return None;
        }
        Ok(Ok(hello)) => hello,
    };
    // At most two session lookups in the cluster's Redis for this
    // handshake, however many identities its ClientHello offers.
    crate::tls::cluster::allow_lookups(2);
    let Ok(permits) = admit::ssl_connection(ctx).await else {
        send_raw(fd, ALERT_INTERNAL_ERROR);
        return None;
    };
    let (_slot, waited) = match ctx
        .shared
        .live
        .tightest(ctx.index, Axis::MaxActiveHandshakes)
    {
        None => (None, false),
        Some((max, level)) => match ctx.handshakes.enter(max, tls.gate, deadline).await {
            Some((slot, waited)) => (Some(InGate::new(slot, tc)), waited),
            None => {
                bump(&tc.gate_refused);
                ctx.refused(
                    level,
                    Axis::MaxActiveHandshakes,
                    "too many TLS handshakes in flight on this CPU (fatal alert)",
                );
                send_raw(fd, ALERT_INTERNAL_ERROR);
                return None;
            }
        },
    };
    // A client that closed while it waited for the gate gets no key
    // exchange and is not charged (as one that closed in the backlog: see
    // `peer_closed`).
    if waited && peer_closed(fd) {
        bump(&tc.abandoned);
        return None;
    }
    // rustls processes the ClientHello (and looks up any session it
    // offers) within `TlsStream::new`.
    crate::tls::take_resumption_offer();
    let started = TlsStream::new(stream, Arc::clone(&tls.config), hello);
    let offered = crate::tls::take_resumption_offer();
    let finished = match started {
        Ok(mut s) => tokio::time::timeout_at(deadline, s.handshake())
            .await
            .map(|done| done.map(|()| s)),
        Err(e) => Ok(Err(e)),
    };
    let stream = match finished {
        // A handshake that fails here may have cost the server its key
        // exchange and signature: it is charged to maxSslRate as a full one.
        Err(_) => {
            bump(&tc.timeouts);
            charge_full(ctx);
            return None;
        }
        Ok(Err(e)) => {
            bump(&tc.failed);
            charge_full(ctx);
            tracing::debug!(frontend = %ctx.info().name, error = %e, "TLS handshake failed");
            return None;
        }
        Ok(Ok(s)) => s,
    };
    count(ctx, tc, stream.tls(), offered);
    Some((ClientStream::Tls(Box::new(stream)), Held(permits)))
}

/// Reads until a whole ClientHello has come (checked by rustls's
/// `Acceptor`, which sends the alert for one that is not); the bytes read,
/// to start the connection with.
async fn read_client_hello(tcp: &TcpStream) -> io::Result<Vec<u8>> {
    let mut acceptor = Acceptor::default();
    let mut raw = Vec::new();
    loop {
        tcp.readable().await?;
        let start = raw.len();
        raw.resize(start + 4096, 0);
        match tcp.try_read(&mut raw[start..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => raw.truncate(start + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                raw.truncate(start);
                continue;
            }
            Err(e) => return Err(e),
        }
        let mut fresh = &raw[start..];
        while !fresh.is_empty() {
            acceptor.read_tls(&mut fresh)?;
        }
        match acceptor.accept() {
            Ok(None) => {}
            Ok(Some(_)) => return Ok(raw),
            Err((e, mut alert)) => {
                let mut record = Vec::new();
                if alert.write_all(&mut record).is_ok() {
                    send_raw(tcp.as_raw_fd(), &record);
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

/// Whether the client of a connection whose handshake has not finished
/// has closed its side (the kernel has its FIN: TCP state `CLOSE_WAIT`) or
/// reset it (`CLOSE`).
/// Such a client cannot finish a handshake, so it gets no key exchange and
/// no charge to `maxSslRate`. Above all after a storm that held
/// `maxSslRate`: the backlog then holds thousands of connections whose
/// clients gave up, and answering each at the rate would keep the real
/// clients behind them waiting for as many seconds. The accept loop asks
/// this of each connection it takes on a TLS frontend, before any read.
pub fn peer_closed(fd: std::os::fd::RawFd) -> bool {
    /// `TCP_CLOSE` and `TCP_CLOSE_WAIT` in the kernel's
    /// `include/net/tcp_states.h`.
    const TCP_CLOSE: u8 = 7;
    const TCP_CLOSE_WAIT: u8 = 8;
    // SAFETY: all zeros is a valid `tcp_info` (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the caller owns `fd` for the whole call; the kernel writes
    // at most `len` bytes into `info`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    r == 0 && len >= 1 && matches!(info.tcpi_state, TCP_CLOSE | TCP_CLOSE_WAIT)
}

/// Counts a finished handshake, and a full one after an `offered`
/// session as a resumption miss; a full one is charged to `maxSslRate`.
fn count(ctx: &FrontendCtx, tc: &TlsCounters, conn: &rustls::CommonState, offered: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
        match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => tc.resumed_tls13.fetch_add(1, Relaxed),
            _ => tc.resumed_tls12.fetch_add(1, Relaxed),
        };
        return;
    }
    tc.full.fetch_add(1, Relaxed);
    if offered {
        tc.resumption_misses.fetch_add(1, Relaxed);
    }
    charge_full(ctx);
}

/// Charges a full handshake to `maxSslRate` at every level.
fn charge_full(ctx: &FrontendCtx) {
    for level in ctx.shared.live.levels(ctx.index) {
        level.ssl_rate.take();
    }
}
