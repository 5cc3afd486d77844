//! What every client connection carries: a byte-counting stream wrapper
//! ([`Tracked`]) that the connection's watchdog reads to tell an idle
//! client from a slow request head, and [`LocalExec`], which runs hyper's
//! background tasks on the worker's own thread.
//!
//! [`Tracked`] can also *park* an HTTP/1.1 connection: when hyper asks for
//! the next request and none has begun to arrive, it answers end-of-stream
//! instead of waiting, so hyper's connection ends cleanly and hands the
//! stream back (`proxy/http.rs` then waits on the bare socket, holding
//! none of hyper's buffers, and serves the next request with a new one).

use std::{
    cell::{Cell, RefCell},
    future::Future,
    io,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Duration, Sleep},
};

use super::framing::RequestFraming;

/// What the watchdog of one client connection looks at. Single-threaded
/// (the worker's), so plain cells.
#[derive(Debug, Default)]
pub struct ConnState {
    /// Bytes read from the client so far.
    pub bytes_in: Cell<u64>,
    /// Bytes written to the client so far.
    pub bytes_out: Cell<u64>,
    /// `bytes_in` when the last request head completed or the last
    /// response ended: more than this, with nothing in flight, is the start
    /// of a request head still arriving.
    pub mark: Cell<u64>,
    /// Requests being handled now.
    pub in_flight: Cell<u32>,
    /// Requests started on this connection.
    pub started: Cell<u64>,
    /// The client opened with the HTTP/2 preface.
    pub h2: Cell<bool>,
    /// The client's first bytes are not the HTTP/2 preface.
    pub not_h2: Cell<bool>,
    /// The last write to the client could not go out (its socket buffer is
    /// full: the client reads nothing).
    pub write_blocked: Cell<bool>,
    /// Where its HTTP/1.1 requests begin and end (not followed on HTTP/2).
    pub framing: RefCell<RequestFraming>,
    /// Reads may park the connection (HTTP/1.1 served one hyper connection
    /// at a time, see [`Tracked`]).
    pub parks: Cell<bool>,
    /// A read parked it: the hyper connection ended for idleness, not
    /// because the client closed.
    pub parked: Cell<bool>,
    /// Bytes were written to the stream and not yet flushed.
    pub unflushed: Cell<bool>,
}

impl ConnState {
    /// Notes the outcome of a write to the client.
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) => {
                self.bytes_out.set(self.bytes_out.get() + *n as u64);
                self.write_blocked.set(false);
                self.unflushed.set(true);
            }
            Poll::Pending => {
                // hyper keeps what it could not write: not flushed.
                self.write_blocked.set(true);
                self.unflushed.set(true);
            }
            Poll::Ready(Err(_)) => {}
        }
    }

    /// A request head is complete: it is in flight until the guard drops
    /// (when its response body ends or is abandoned). Also says whether
    /// its head carried both `Content-Length` and `Transfer-Encoding`.
    #[must_use]
    pub fn begin(self: &Rc<Self>) -> (InFlight, bool) {
        let index = self.started.get();
        self.in_flight.set(self.in_flight.get() + 1);
        self.started.set(index + 1);
        self.mark.set(self.bytes_in.get());
        let conflicting = !self.h2.get() && self.framing.borrow().conflicting(index);
        (InFlight(Rc::clone(self)), conflicting)
    }

    /// Whether the connection can be parked now: no request in flight,
    /// none begun (every byte read belongs to a request already handled,
    /// so hyper holds none unread), everything written flushed.
    fn idle(&self) -> bool {
        let framing = self.framing.borrow();
        self.parks.get()
            && self.in_flight.get() == 0
            && !self.unflushed.get()
            && !self.h2.get()
            && framing.between_requests()
            && framing.heads() == self.started.get()
    }
}

/// One request in flight on a client connection.
#[derive(Debug)]
pub struct InFlight(Rc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.in_flight.set(s.in_flight.get().saturating_sub(1));
        s.mark.set(s.bytes_in.get());
    }
}

/// How an HTTP/2 connection starts (RFC 9113 3.4), as far as hyper looks
/// to tell it from HTTP/1.1.
const PREFACE: &[u8] = b"PRI * HTTP/2";

/// A connection whose first `seen` bytes began [`PREFACE`], with `read`
/// next: `Some(true)` once the preface is whole (however the reads split
/// it), `Some(false)` while it may still be, `None` when it is not.
fn opens_h2(seen: u64, read: &[u8]) -> Option<bool> {
    let rest = PREFACE.get(usize::try_from(seen).ok()?..)?;
    let n = rest.len().min(read.len());
    (rest[..n] == read[..n]).then_some(n == rest.len())
}

/// How long an idle connection waits for its next request before it
/// parks. A client sending requests back to back never parks (a park and a
/// new hyper connection cost a TLS keep-alive request about 15% more CPU);
/// a connection idle longer gives its buffers back. Short, so that few
/// connections hold hyper's buffers at once (100 ms cost 0.5 KiB per
/// connection in `bench memory`, through the allocator's high-water mark).
pub const PARK_AFTER: Duration = Duration::from_millis(25);

/// A stream that counts its bytes into a [`ConnState`].
///
/// With [`ConnState::parks`] set, a read that finds nothing while the
/// connection is idle, and still nothing [`PARK_AFTER`] later, ends the
/// stream for its reader (sets [`ConnState::parked`]); the owner takes the
/// stream back, waits for the socket to be readable and hands it to a new
/// reader.
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    state: Rc<ConnState>,
    /// While idle with parking on: when it parks (reset by any byte read).
    park_at: Option<Pin<Box<Sleep>>>,
}

impl<S> Tracked<S> {
    /// Wraps a stream.
    pub fn new(inner: S, state: Rc<ConnState>) -> Self {
        Self {
            inner,
            state,
            park_at: None,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_pending() && self.state.idle() {
            let park_at = self
                .park_at
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(PARK_AFTER)));
            if park_at.as_mut().poll(cx).is_ready() {
                self.park_at = None;
                self.state.parked.set(true);
                return Poll::Ready(Ok(()));
            }
            return r;
        }
        let n = buf.filled().len() - before;
        if n > 0 {
            // Not idle any more: the timer goes (a later idle period
            // starts its own).
            self.park_at = None;
            let s = &self.state;
            let read = &buf.filled()[before..];
            if s.bytes_in.get() < PREFACE.len() as u64 && !s.not_h2.get() {
                match opens_h2(s.bytes_in.get(), read) {
                    Some(whole) => s.h2.set(whole),
                    None => s.not_h2.set(true),
                }
            }
            if !s.h2.get() {
                s.framing.borrow_mut().feed(read);
            }
            s.bytes_in.set(s.bytes_in.get() + n as u64);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.state.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.state.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.state.unflushed.set(false);
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Runs hyper's background futures (HTTP/2 streams, client connections)
/// on the current worker's `LocalSet`: they never leave its CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// A TCP stream whose writes are `send(2)` and `sendmsg(2)` calls. tokio
/// writes with `write(2)`/`writev(2)`, which pass through the VFS layer
/// first; on a proxy's small writes that layer cost about a microsecond a
/// request (`bench/results/proxy.md`). Writes are vectored, so hyper
/// queues a response's head and body chunks as they are and sends them in
/// one `sendmsg`, instead of copying them into one buffer that grows by
/// doubling (toward a client that reads slowly, that buffer reached about
/// twice `maxBufferSize`).
#[derive(Debug)]
pub struct SendStream(pub tokio::net::TcpStream);

impl AsyncRead for SendStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        use std::os::fd::AsRawFd as _;
        let stream = &self.0;
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                // SAFETY: a valid connected socket and a valid slice.
                let n = unsafe {
                    libc::send(
                        stream.as_raw_fd(),
                        buf.as_ptr().cast(),
                        buf.len(),
                        libc::MSG_NOSIGNAL,
                    )
                };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        use std::os::fd::AsRawFd as _;
        /// The most slices one call takes (the kernel's UIO_MAXIOV).
        const MAX_IOV: usize = 1024;
        let stream = &self.0;
        let bufs = &bufs[..bufs.len().min(MAX_IOV)];
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
                // SAFETY: msghdr is plain data; zeroed is "no name, no
                // control data".
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                // IoSlice is ABI-compatible with iovec on Unix (std's
                // documented guarantee); sendmsg only reads the slices.
                msg.msg_iov = bufs.as_ptr().cast_mut().cast();
                msg.msg_iovlen = bufs.len();
                // SAFETY: a valid connected socket and a valid msghdr whose
                // slices live for the call.
                let n = unsafe {
                    libc::sendmsg(stream.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL)
                };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A client connection as the frontend modes see it: plain, or TLS
/// terminated here. One type, so HTTP and TCP serving are written once.
#[derive(Debug)]
pub enum ClientStream {
    /// Plain TCP.
    Plain(SendStream),
    /// TLS over TCP, after the handshake.
    Tls(Box<super::tls_stream::TlsStream>),
}

impl ClientStream {
    /// The socket, for a last answer written straight to it (plain only: a
    /// TLS connection has no plaintext to spare).
    #[must_use]
    pub fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd as _;
        match self {
            Self::Plain(s) => Some(s.0.as_raw_fd()),
            Self::Tls(_) => None,
        }
    }

    /// Over TLS, whether ALPN chose HTTP/2; `None` in plain.
    #[must_use]
    pub fn alpn_h2(&self) -> Option<bool> {
        match self {
            Self::Plain(_) => None,
            Self::Tls(s) => Some(s.tls().alpn_protocol() == Some(b"h2")),
        }
    }

    /// The TCP socket under it.
    #[must_use]
    pub fn tcp(&self) -> &tokio::net::TcpStream {
        match self {
            Self::Plain(s) => &s.0,
            Self::Tls(s) => s.tcp(),
        }
    }

    /// Whether TLS was terminated.
    #[must_use]
    pub const fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Writes a last message straight to a socket without waiting (a refusal
/// the connection will not outlive).
pub fn send_raw(fd: std::os::fd::RawFd, bytes: &[u8]) {
    // SAFETY: the caller owns `fd` for the whole call; send reads
    // `bytes.len()` bytes from a valid slice.
    unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http2_preface_is_found_however_reads_split_it() {
        for split in 0..=PREFACE.len() {
            let (a, b) = b"PRI * HTTP/2.0\r\n".split_at(split);
            let whole = match opens_h2(0, a) {
                Some(false) => opens_h2(a.len() as u64, b),
                first => first,
            };
            assert_eq!(whole, Some(true), "split at {split}");
        }
        assert_eq!(opens_h2(0, b"PRI"), Some(false));
        assert_eq!(opens_h2(0, b"POST / HTTP/1.1\r\n"), None);
        assert_eq!(opens_h2(3, b" * HTTP/2.0"), Some(true));
        assert_eq!(opens_h2(3, b" / HTTP/1.1"), None);
    }
}
