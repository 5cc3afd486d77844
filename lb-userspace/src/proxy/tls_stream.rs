//! A TLS server stream over rustls's unbuffered API, that holds no buffer
//! while its connection idles.
//!
//! rustls's buffered `ServerConnection` (what tokio-rustls wraps) keeps a
//! read buffer of at least 4 KiB for the life of the connection. With
//! thousands of idle keep-alive connections that buffer is most of lb's
//! memory per connection. [`TlsStream`] drives an
//! `UnbufferedServerConnection` instead:
//! - ciphertext is read into a per-worker scratch buffer and decrypted
//!   there; only a record cut off by the read is copied into the
//!   connection's own `rx_tls`, freed once the record completes;
//! - plaintext goes straight into the caller's buffer; only what does not
//!   fit waits in `rx_plain`;
//! - writes are sealed one record (16 KiB of plaintext) at a time into a
//!   per-worker scratch buffer and sent at once; only what the socket does
//!   not take waits in `tx_tls`, and the next write waits until it is gone
//!   (so a slow reader holds at most one record here, as `maxBufferSize`
//!   intends).
//!
//! Records rustls makes by itself (the handshake flight, session tickets,
//! an alert; a `key_update` answer rides with the next write) go out the
//! same way. A connection holds at most a 64 KiB handshake message and a
//! record of unprocessed ciphertext, as rustls's buffered one. Errors are
//! `io::Error`s of kind `InvalidData` carrying the rustls error, with the
//! alert rustls chose sent first; an end of stream without `close_notify`
//! is `UnexpectedEof`, as tokio-rustls reports it.

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use rustls::{
    server::{ServerConnectionData, UnbufferedServerConnection},
    unbuffered::{
        ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
        WriteTraffic,
    },
    ServerConfig,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// Most plaintext sealed per write: one TLS record.
const RECORD: usize = 16 * 1024;

/// A read's room in the scratch buffer: one whole record with its header
/// and the most any cipher suite adds.
const READ: usize = RECORD + 5 + 2048;

/// The most ciphertext a connection holds unprocessed: a handshake message
/// at its largest (64 KiB) joined from records, with one record more. What
/// rustls's buffered connection allows too; past it the client is cut off.
const MAX_HELD: usize = 0xffff + READ;

/// Per-worker buffers every connection of the thread borrows within one
/// poll (never across an await).
#[derive(Default)]
struct Scratch {
    /// Ciphertext being decrypted.
    rx: Vec<u8>,
    /// Ciphertext being sent.
    tx: Vec<u8>,
    /// Plaintext of a vectored write, gathered into one record.
    gather: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// What rustls needs next after [`pump`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// More ciphertext (the handshake or a record is incomplete), or none
    /// needed: application data may be written.
    More,
    /// Both sides sent `close_notify`.
    Closed,
}

/// A server-side TLS stream over a TCP socket; see the module docs.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read but not yet processed: the start of a record.
    rx_tls: Vec<u8>,
    /// Plaintext decrypted but not yet read, from `rx_at` on.
    rx_plain: Vec<u8>,
    rx_at: usize,
    /// Ciphertext made but not yet sent, from `tx_at` on.
    tx_tls: Vec<u8>,
    tx_at: usize,
    /// The client sent `close_notify`: reads end.
    peer_closed: bool,
    /// `close_notify` is made (sent once `tx_tls` is).
    close_sent: bool,
    /// A TLS error ended the connection (its alert sent): every later
    /// call fails, and rustls is not asked again.
    failed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", &self.tcp)
            .field("rx_tls", &self.rx_tls.len())
            .field("rx_plain", &(self.rx_plain.len() - self.rx_at))
            .field("tx_tls", &(self.tx_tls.len() - self.tx_at))
            .field("peer_closed", &self.peer_closed)
            .finish_non_exhaustive()
    }
}

/// A rustls error as tokio-rustls reports it.
fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Appends what `make` writes to `out`, growing `out` to the size rustls
/// asks for when the first guess (`guess` bytes) is short.
fn append<E>(
    out: &mut Vec<u8>,
    guess: usize,
    mut make: impl FnMut(&mut [u8]) -> Result<usize, E>,
    short: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    out.resize(start + guess, 0);
    let made = match make(&mut out[start..]) {
        Err(e) => match short(&e) {
            Some(need) => {
                out.resize(start + need, 0);
                make(&mut out[start..])
            }
            None => Err(e),
        },
        made => made,
    };
    match made {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// Seals `plain` as application data into `out`.
fn seal(
    w: &mut WriteTraffic<'_, ServerConnectionData>,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    // Each record adds its header, the content type and the tag (TLS 1.3),
    // or header, explicit nonce and tag (TLS 1.2).
    let guess = plain.len() + 40 * (plain.len() / RECORD + 1);
    append(out, guess, |b| w.encrypt(plain, b), encrypt_short).map_err(invalid)
}

fn encode_short(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        EncodeError::AlreadyEncoded => None,
    }
}

fn encrypt_short(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

/// Where [`pump`] puts what it gets: plaintext (into the reader's buffer
/// first), records to send, and whether the client closed.
struct Sink<'a, 'b> {
    dst: Option<&'a mut ReadBuf<'b>>,
    plain: &'a mut Vec<u8>,
    tls: &'a mut Vec<u8>,
    peer_closed: &'a mut bool,
}

impl Sink<'_, '_> {
    fn take_plain(&mut self, payload: &[u8]) {
        let direct = match self.dst.as_deref_mut() {
            Some(dst) => {
                let n = payload.len().min(dst.remaining());
                dst.put_slice(&payload[..n]);
                n
            }
            None => 0,
        };
        self.plain.extend_from_slice(&payload[direct..]);
    }
}

/// A write rustls may do once the connection allows application data.
type Writer<'w> =
    &'w mut dyn FnMut(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> io::Result<()>;

/// Runs rustls over `input` (ciphertext read, not yet processed) until it
/// needs more; with `write`, calls it once rustls allows application data.
/// Returns how many bytes of `input` are done with.
fn pump(
    conn: &mut UnbufferedServerConnection,
    input: &mut [u8],
    sink: &mut Sink<'_, '_>,
    mut write: Option<Writer<'_>>,
) -> (usize, io::Result<Step>) {
    // Every record `r` holds, into the sink (two types, one method).
    macro_rules! take_records {
        ($r:ident, $discard:ident) => {
            loop {
                match $r.next_record() {
                    None => break None,
                    Some(Err(e)) => break Some(Err(invalid(e))),
                    Some(Ok(record)) => {
                        $discard += record.discard;
                        sink.take_plain(record.payload);
                    }
                }
            }
        };
    }
    let mut used = 0;
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut input[used..]);
        let step = match state {
            Err(e) => Some(Err(invalid(e))),
            Ok(ConnectionState::ReadTraffic(mut r)) => take_records!(r, discard),
            Ok(ConnectionState::ReadEarlyData(mut r)) => take_records!(r, discard),
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                append(sink.tls, 1024, |b| e.encode(b), encode_short)
                    .err()
                    .map(|e| Err(invalid(e.to_string())))
            }
            // What is encoded goes out in order with everything after it
            // (`tx_tls`), so it counts as sent here.
            Ok(ConnectionState::TransmitTlsData(t)) => {
                t.done();
                None
            }
            Ok(ConnectionState::PeerClosed) => {
                *sink.peer_closed = true;
                None
            }
            Ok(ConnectionState::Closed) => Some(Ok(Step::Closed)),
            Ok(ConnectionState::BlockedHandshake) => Some(Ok(Step::More)),
            Ok(ConnectionState::WriteTraffic(mut w)) => match write.take() {
                Some(f) => f(&mut w, sink.tls).err().map(Err),
                None => Some(Ok(Step::More)),
            },
            Ok(_) => Some(Err(invalid("a TLS connection state lb does not know"))),
        };
        used += discard;
        if let Some(step) = step {
            return (used, step);
        }
    }
}

impl TlsStream {
    /// A connection over `tcp` that has read `hello` (at least a whole
    /// ClientHello), processed at once: rustls picks the session to resume
    /// and makes its first flight here, before any await.
    ///
    /// # Errors
    /// The ClientHello is refused (the alert is sent).
    pub fn new(tcp: TcpStream, config: Arc<ServerConfig>, hello: Vec<u8>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
        let mut s = Self {
            tcp,
            conn,
            rx_tls: hello,
            rx_plain: Vec::new(),
            rx_at: 0,
            tx_tls: Vec::new(),
            tx_at: 0,
            peer_closed: false,
            close_sent: false,
            failed: false,
        };
        s.pump_held(None)?;
        Ok(s)
    }

    /// Finishes the handshake: the server's flight sent, the client's
    /// Finished read, and the session tickets sent.
    ///
    /// # Errors
    /// The handshake failed (the alert is sent), or the socket did.
    pub async fn handshake(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_handshake(cx)).await
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.check()?;
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.poll_read_tls(cx, None))? {
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed during the TLS handshake",
                    )))
                }
                Some(Step::Closed) => {
                    return Poll::Ready(Err(invalid("the TLS connection closed in its handshake")))
                }
                Some(Step::More) => {}
            }
        }
    }

    /// The TCP socket.
    #[must_use]
    pub const fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The connection's TLS state: version, ALPN, how it was resumed.
    #[must_use]
    pub fn tls(&self) -> &rustls::CommonState {
        &self.conn
    }

    /// Runs rustls over `rx_tls` in place (nothing new read), with `write`.
    fn pump_held(&mut self, write: Option<Writer<'_>>) -> io::Result<Step> {
        let mut sink = Sink {
            dst: None,
            plain: &mut self.rx_plain,
            tls: &mut self.tx_tls,
            peer_closed: &mut self.peer_closed,
        };
        let (used, step) = pump(&mut self.conn, &mut self.rx_tls, &mut sink, write);
        self.rx_tls.drain(..used);
        if self.rx_tls.is_empty() {
            self.rx_tls = Vec::new();
        }
        self.failing(step)
    }

    /// On an error, marks the connection failed, frees what it held, and
    /// sends the alert rustls has queued for it if the socket takes it now.
    /// rustls is only asked for records it queued, never to read again (a
    /// handshake message half read would point past an empty input).
    fn failing(&mut self, step: io::Result<Step>) -> io::Result<Step> {
        if step.is_err() {
            self.failed = true;
            self.rx_tls = Vec::new();
            self.rx_plain = Vec::new();
            self.rx_at = 0;
            while self.conn.wants_write() {
                let Ok(ConnectionState::EncodeTlsData(mut e)) =
                    self.conn.process_tls_records(&mut []).state
                else {
                    break;
                };
                if append(&mut self.tx_tls, 1024, |b| e.encode(b), encode_short).is_err() {
                    break;
                }
            }
            self.try_send();
        }
        if self.peer_closed {
            // rustls reads nothing after close_notify.
            self.rx_tls = Vec::new();
        }
        step
    }

    /// An error once the connection has failed.
    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS connection failed",
            ));
        }
        Ok(())
    }

    /// Reads ciphertext after what `rx_tls` holds and runs rustls over it,
    /// plaintext into `dst` first. `None`: end of stream.
    ///
    /// With nothing held, the read goes to the worker's scratch buffer and
    /// only a cut-off record is copied out of it; with the start of a
    /// record held, the read appends to `rx_tls` in place.
    fn poll_read_tls(
        &mut self,
        cx: &mut Context<'_>,
        dst: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<Option<Step>>> {
        let held = self.rx_tls.len();
        if held > 0 {
            if held >= MAX_HELD {
                let step = Err(invalid(
                    "the client sent more than a TLS record or handshake message can hold",
                ));
                return Poll::Ready(self.failing(step).map(Some));
            }
            self.rx_tls.resize(held + READ, 0);
            let mut read = ReadBuf::new(&mut self.rx_tls[held..]);
            let polled = Pin::new(&mut self.tcp).poll_read(cx, &mut read);
            let n = read.filled().len();
            self.rx_tls.truncate(held + n);
            ready!(polled)?;
            if n == 0 {
                return Poll::Ready(Ok(None));
            }
            let mut sink = Sink {
                dst,
                plain: &mut self.rx_plain,
                tls: &mut self.tx_tls,
                peer_closed: &mut self.peer_closed,
            };
            let (used, step) = pump(&mut self.conn, &mut self.rx_tls, &mut sink, None);
            self.rx_tls.drain(..used);
            if self.rx_tls.is_empty() {
                self.rx_tls = Vec::new();
            }
            return Poll::Ready(self.failing(step).map(Some));
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let scratch = &mut scratch.rx;
            scratch.resize(READ, 0);
            let mut read = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(None));
            }
            let input = &mut scratch[..n];
            let mut sink = Sink {
                dst,
                plain: &mut self.rx_plain,
                tls: &mut self.tx_tls,
                peer_closed: &mut self.peer_closed,
            };
            let (used, step) = pump(&mut self.conn, input, &mut sink, None);
            if used < input.len() {
                self.rx_tls = input[used..].to_vec();
            }
            Poll::Ready(self.failing(step).map(Some))
        })
    }

    /// Sends `tx_tls` without waiting; what the socket does not take stays.
    fn try_send(&mut self) {
        while self.tx_at < self.tx_tls.len() {
            match self.tcp.try_write(&self.tx_tls[self.tx_at..]) {
                Ok(n) if n > 0 => self.tx_at += n,
                _ => break,
            }
        }
        self.sent_tx();
    }

    /// Sends all of `tx_tls`.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_at < self.tx_tls.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.tx_tls[self.tx_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx_at += n;
        }
        self.sent_tx();
        Poll::Ready(Ok(()))
    }

    /// Frees `tx_tls` once all of it is sent.
    fn sent_tx(&mut self) {
        if self.tx_at == self.tx_tls.len() {
            self.tx_tls = Vec::new();
            self.tx_at = 0;
        }
    }

    /// Seals `plain` (at most one record of it) and sends what the socket
    /// takes now; the rest waits in `tx_tls`.
    fn write_record(&mut self, plain: &[u8]) -> io::Result<usize> {
        self.check()?;
        if self.close_sent {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is closed for writing",
            ));
        }
        let plain = &plain[..plain.len().min(RECORD)];
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let out = &mut scratch.tx;
            out.clear();
            let mut sealed = false;
            let mut sink = Sink {
                dst: None,
                plain: &mut self.rx_plain,
                tls: out,
                peer_closed: &mut self.peer_closed,
            };
            let mut write = |w: &mut WriteTraffic<'_, ServerConnectionData>, out: &mut Vec<u8>| {
                sealed = true;
                seal(w, plain, out)
            };
            let (used, step) = pump(
                &mut self.conn,
                &mut self.rx_tls,
                &mut sink,
                Some(&mut write),
            );
            self.rx_tls.drain(..used);
            let mut sent = 0;
            if self.tx_tls.is_empty() {
                while sent < out.len() {
                    match self.tcp.try_write(&out[sent..]) {
                        Ok(n) if n > 0 => sent += n,
                        _ => break,
                    }
                }
            }
            self.tx_tls.extend_from_slice(&out[sent..]);
            self.sent_tx();
            self.failing(step)?;
            if sealed {
                Ok(plain.len())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the TLS connection is closed for writing",
                ))
            }
        })
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            this.check()?;
            if this.rx_at < this.rx_plain.len() || buf.remaining() == 0 {
                let n = (this.rx_plain.len() - this.rx_at).min(buf.remaining());
                buf.put_slice(&this.rx_plain[this.rx_at..this.rx_at + n]);
                this.rx_at += n;
                if this.rx_at == this.rx_plain.len() {
                    this.rx_plain = Vec::new();
                    this.rx_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let step = ready!(this.poll_read_tls(cx, Some(&mut *buf)));
            // Records rustls made while reading (an alert).
            this.try_send();
            match step? {
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    )))
                }
                Some(Step::Closed) => return Poll::Ready(Ok(())),
                Some(Step::More) if buf.filled().len() > before => return Poll::Ready(Ok(())),
                Some(Step::More) => {}
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        Poll::Ready(this.write_record(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        if bufs[first].len() >= RECORD || bufs[first + 1..].iter().all(|b| b.is_empty()) {
            return Poll::Ready(this.write_record(&bufs[first]));
        }
        let gather = SCRATCH.with(|s| std::mem::take(&mut s.borrow_mut().gather));
        let mut gather = gather;
        gather.clear();
        for b in &bufs[first..] {
            let take = b.len().min(RECORD - gather.len());
            gather.extend_from_slice(&b[..take]);
            if gather.len() == RECORD {
                break;
            }
        }
        let written = this.write_record(&gather);
        SCRATCH.with(|s| s.borrow_mut().gather = gather);
        Poll::Ready(written)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent && !this.failed {
            this.close_sent = true;
            let mut close = |w: &mut WriteTraffic<'_, ServerConnectionData>, out: &mut Vec<u8>| {
                append(out, 64, |b| w.queue_close_notify(b), encrypt_short).map_err(invalid)
            };
            // A connection that cannot send it (a failed one) still closes.
            let _ = this.pump_held(Some(&mut close));
        }
        ready!(this.poll_send(cx))?;
        // As tokio-rustls: a socket the client already reset is shut.
        match ready!(Pin::new(&mut this.tcp).poll_shutdown(cx)) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Poll::Ready(Ok(())),
            r => Poll::Ready(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::tls::testkit::tls_pair;

    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    /// A handshake over loopback between lb's stream (TLS `server`) and a
    /// tokio-rustls client (TLS `client`): how it ended on each side.
    async fn handshake(
        server: &'static rustls::SupportedProtocolVersion,
        client: &'static rustls::SupportedProtocolVersion,
    ) -> (io::Result<TlsStream>, io::Result<Client>) {
        let (config, cert, key, trusting) = tls_pair(server);
        let config = Arc::new(config.with_single_cert(vec![cert], key).unwrap());
        let trusting = if std::ptr::eq(server, client) {
            trusting
        } else {
            tls_pair(client).3
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(trusting)
                .connect(name, tcp)
                .await
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = TlsStream::new(tcp, config, Vec::new())?;
            s.handshake().await.map(|()| s)
        };
        let (c, s) = tokio::join!(connect, accept);
        (s, c)
    }

    /// A connected pair, both TLS `version`.
    async fn pair(version: &'static rustls::SupportedProtocolVersion) -> (TlsStream, Client) {
        let (s, c) = handshake(version, version).await;
        (s.unwrap(), c.unwrap())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// lb echoes what it reads, reading `sizes` bytes at a time in turn
    /// and writing half of each echo vectored, until close_notify.
    async fn echo(mut s: TlsStream, sizes: &[usize]) -> TlsStream {
        let mut buf = vec![0; 40_000];
        for round in 0.. {
            let size = sizes[round % sizes.len()];
            let n = s.read(&mut buf[..size]).await.unwrap();
            if n == 0 {
                break;
            }
            let (a, b) = buf[..n].split_at(n / 2);
            let mut slices = [io::IoSlice::new(a), io::IoSlice::new(b)];
            let mut slices = &mut slices[..];
            while !slices.is_empty() {
                let k = s.write_vectored(slices).await.unwrap();
                io::IoSlice::advance_slices(&mut slices, k);
            }
            s.flush().await.unwrap();
        }
        s.shutdown().await.unwrap();
        s
    }

    #[tokio::test]
    async fn a_megabyte_echoes_intact_over_any_read_size_and_closes_cleanly() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let (s, mut c) = pair(version).await;
            assert!(s.tls().alpn_protocol().is_none());
            let server = tokio::spawn(echo(s, &[7, 20_000, 100, 40_000, 1]));
            let sent = pattern(1 << 20);
            let (mut rd, mut wr) = tokio::io::split(c);
            let send = async {
                for chunk in sent.chunks(3000 + 17) {
                    wr.write_all(chunk).await.unwrap();
                }
                wr.flush().await.unwrap();
                wr
            };
            let mut got = Vec::new();
            let (wr, read) = tokio::join!(send, async {
                let mut buf = vec![0; 64 * 1024];
                while got.len() < sent.len() {
                    let n = rd.read(&mut buf).await.unwrap();
                    assert!(n > 0, "lb ended the stream after {} bytes", got.len());
                    got.extend_from_slice(&buf[..n]);
                }
            });
            let () = read;
            assert!(got == sent, "{version:?}: echo differs from what was sent");
            c = rd.unsplit(wr);
            c.shutdown().await.unwrap();
            // close_notify back, then the end of the stream.
            let mut rest = Vec::new();
            c.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            let s = server.await.unwrap();
            assert_eq!(
                (
                    s.rx_tls.capacity(),
                    s.rx_plain.capacity(),
                    s.tx_tls.capacity()
                ),
                (0, 0, 0),
                "an idle stream holds no buffer"
            );
        }
    }

    #[tokio::test]
    async fn a_client_key_update_is_followed() {
        let (mut s, mut c) = pair(&rustls::version::TLS13).await;
        for round in 0..3 {
            c.get_mut().1.refresh_traffic_keys().unwrap();
            c.write_all(b"ping").await.unwrap();
            c.flush().await.unwrap();
            let mut buf = [0; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping", "round {round}");
            s.write_all(b"pong").await.unwrap();
            s.flush().await.unwrap();
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong", "round {round}");
        }
    }

    #[tokio::test]
    async fn an_end_without_close_notify_is_unexpected_eof() {
        let (mut s, mut c) = pair(&rustls::version::TLS13).await;
        // The client takes what lb sent (tickets, one byte), so its close
        // is a FIN, not a reset.
        s.write_all(b"x").await.unwrap();
        s.flush().await.unwrap();
        let mut one = [0; 1];
        c.read_exact(&mut one).await.unwrap();
        drop(c.into_inner().0);
        let mut buf = [0; 16];
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_bad_record_fails_every_later_call_without_reading_it_again() {
        let (mut s, mut c) = pair(&rustls::version::TLS13).await;
        // An application-data record that does not decrypt.
        let mut bad = vec![0x17, 0x03, 0x03, 0x00, 0x20];
        bad.extend_from_slice(&[0x5a; 0x20]);
        c.get_mut().0.write_all(&bad).await.unwrap();
        let mut buf = [0; 16];
        for call in 0..3 {
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf));
            let e = read.await.expect("an answer, not a wait").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "read {call}: {e}");
        }
        assert_eq!(
            s.write(b"x").await.unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        s.shutdown().await.unwrap();
        // The client got rustls's alert for it.
        let e = c.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("BadRecordMac"), "client saw: {e}");
    }

    #[tokio::test]
    async fn a_handshake_message_cut_off_by_a_bad_record_is_an_error_not_a_panic() {
        let (server, cert, key, client) = tls_pair(&rustls::version::TLS12);
        let server = Arc::new(server.with_single_cert(vec![cert], key).unwrap());
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut hello = Vec::new();
        let mut cc = rustls::ClientConnection::new(client, name).unwrap();
        cc.write_tls(&mut hello).unwrap();
        // One byte of a handshake message, then a ChangeCipherSpec inside it.
        hello.extend_from_slice(&[0x16, 0x03, 0x03, 0x00, 0x01, 0x10]);
        hello.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        c.write_all(&hello).await.unwrap();
        let started = TlsStream::new(tcp, server, hello);
        let e = match started {
            Ok(mut s) => s.handshake().await.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[tokio::test]
    async fn a_failed_handshake_sends_the_alert_rustls_chose() {
        let (s, c) = handshake(&rustls::version::TLS13, &rustls::version::TLS12).await;
        let (server_error, client_error) = (s.unwrap_err(), c.unwrap_err());
        assert_eq!(server_error.kind(), io::ErrorKind::InvalidData);
        assert!(
            client_error.to_string().contains("ProtocolVersion"),
            "client saw: {client_error}"
        );
    }
}
