//! Connections to backends, per worker: reusable HTTP/1.1 keep-alive
//! connections ([`super::h1`], a LIFO of idle ones per backend) and one
//! multiplexed HTTP/2 connection (hyper's client) per backend. Single-threaded: the worker owns it, so
//! no locks, and a connection never moves between CPUs.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, client::conn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{
    h1,
    io::{LocalExec, SendStream},
};
use crate::config::BackendProtocol;

/// Idle HTTP/1.1 connections kept per backend and worker; more are closed.
const MAX_IDLE: usize = 256;

/// A request body on its way to a backend.
#[derive(Debug)]
pub enum ReqBody {
    /// No body (or a replayed idempotent request).
    Empty,
    /// The client's body, streamed; `failed` is set if it turns out
    /// malformed (a bad chunk size, a short body), so the request is
    /// answered 400 rather than blamed on the backend.
    Client {
        /// The body.
        body: Incoming,
        /// Set when reading it failed.
        failed: Rc<Cell<bool>>,
    },
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Empty => Poll::Ready(None),
            Self::Client { body, failed } => {
                let frame = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &frame {
                    failed.set(true);
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Empty => true,
            Self::Client { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Empty => SizeHint::with_exact(0),
            Self::Client { body, .. } => body.size_hint(),
        }
    }
}

/// A connection ready to carry a request.
pub enum Sender {
    /// HTTP/1.1: one request at a time.
    H1(h1::Conn),
    /// HTTP/2: shared by concurrent requests.
    H2(conn::http2::SendRequest<ReqBody>),
}

/// Why a connect failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No answer within the pool's connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// Refused, unreachable, or the handshake failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The HTTP handshake on a new connection failed.
    #[error("HTTP handshake: {0}")]
    Handshake(#[from] hyper::Error),
}

/// One worker's backend connections.
#[derive(Default)]
pub struct Upstreams {
    idle: RefCell<HashMap<SocketAddr, Vec<h1::Conn>>>,
    h2: RefCell<HashMap<SocketAddr, conn::http2::SendRequest<ReqBody>>>,
}

impl Upstreams {
    /// A reusable connection to `addr`, if one is idle and open.
    pub fn reuse(&self, addr: SocketAddr, protocol: BackendProtocol) -> Option<Sender> {
        match protocol {
            BackendProtocol::Http1 => {
                let mut idle = self.idle.borrow_mut();
                let list = idle.get_mut(&addr)?;
                // One the backend closed (or wrote to) while idle is dropped.
                while let Some(c) = list.pop() {
                    if c.is_idle_and_open() {
                        return Some(Sender::H1(c));
                    }
                }
                None
            }
            BackendProtocol::H2 => {
                let mut h2 = self.h2.borrow_mut();
                match h2.get(&addr) {
                    Some(s) if !s.is_closed() => Some(Sender::H2(s.clone())),
                    Some(_) => {
                        h2.remove(&addr);
                        None
                    }
                    None => None,
                }
            }
        }
    }

    /// Opens a new connection to `addr` within `timeout`.
    ///
    /// # Errors
    /// See [`ConnectError`].
    pub async fn connect(
        &self,
        addr: SocketAddr,
        protocol: BackendProtocol,
        timeout: Duration,
    ) -> Result<Sender, ConnectError> {
        let stream = connect_tcp(addr, timeout).await?;
        match protocol {
            BackendProtocol::Http1 => Ok(Sender::H1(h1::Conn::new(stream, addr))),
            BackendProtocol::H2 => {
                let io = TokioIo::new(SendStream(stream));
                let (sender, connection) =
                    conn::http2::Builder::new(LocalExec).handshake(io).await?;
                tokio::task::spawn_local(async move {
                    let _ = connection.await;
                });
                self.h2.borrow_mut().insert(addr, sender.clone());
                Ok(Sender::H2(sender))
            }
        }
    }

    /// Returns an HTTP/1.1 connection whose exchange ended cleanly.
    pub fn put_back(&self, conn: h1::Conn) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(conn.addr).or_default();
        if list.len() < MAX_IDLE {
            list.push(conn);
        }
    }
}

/// A TCP connection to a backend within `timeout`, with `TCP_NODELAY`.
///
/// # Errors
/// See [`ConnectError`].
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
