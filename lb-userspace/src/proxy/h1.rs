//! HTTP/1.1 to backends, driven from the request's own task.
//!
//! hyper's client runs each backend connection as a task of its own and
//! passes requests, responses and body chunks to it over channels: about six
//! task wake-ups per proxied request. Here the request's task writes the
//! request and reads the response head itself, and the response body
//! ([`BackendBody`]) reads the backend socket directly when the client's
//! side asks for more. A connection goes back to the worker's idle list
//! when its response ended cleanly and the backend did not ask to close.
//!
//! Request bodies are sent with their `Content-Length`, or chunked when the
//! length is unknown. Responses may be framed by length, chunked (trailers
//! are dropped), or by the backend closing (then the connection is not
//! reused). Interim `1xx` answers are skipped.
//!
//! Known limit: the request body is sent in full before the response head
//! is read, so a backend that answers early (say 413) without reading the
//! rest is heard only after it, or after the pool's `server` timeout if it
//! stops reading. HAProxy reads both ways at once; so should this, with the
//! per-connection buffer limits (`maxBufferSize`).

use std::{
    future::poll_fn,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWriteExt as _;

use super::{io::SendStream, upstream::ReqBody};

/// A response head larger than this is refused (502).
const MAX_HEAD: usize = 64 * 1024;
/// Headers in a response head, at most.
const MAX_HEADERS: usize = 128;
/// Bytes read from a backend at once.
const READ_CHUNK: usize = 16 * 1024;

/// One HTTP/1.1 connection to a backend.
#[derive(Debug)]
pub struct Conn {
    io: SendStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// Where it goes (the idle list's key).
    pub addr: SocketAddr,
}

/// How a request failed.
#[derive(Debug)]
pub enum SendError {
    /// Nothing was written: the request may go elsewhere as it is.
    Unsent(Box<http::Request<ReqBody>>, io::Error),
    /// A request without a body was written and no response byte came
    /// back: here it is again, for another try if it is idempotent. (So
    /// nobody keeps a copy of every request just in case.)
    Lost(Box<http::Request<ReqBody>>, io::Error),
    /// Written, at least in part; `answered` says whether any response byte
    /// came back.
    Failed {
        /// What went wrong.
        error: io::Error,
        /// Response bytes arrived before the failure.
        answered: bool,
    },
}

/// A response head and how its body is framed.
pub struct Response {
    /// Status, version, headers.
    pub head: http::response::Parts,
    /// The body, reading from the connection.
    pub body: BackendBody,
}

impl Conn {
    /// Wraps a connected stream.
    #[must_use]
    pub fn new(stream: tokio::net::TcpStream, addr: SocketAddr) -> Self {
        Self {
            io: SendStream(stream),
            rbuf: BytesMut::new(),
            wbuf: Vec::with_capacity(1024),
            addr,
        }
    }

    /// Whether an idle connection still looks usable: nothing unread and no
    /// readiness (data or end of stream) reported for it while it sat idle.
    /// Costs no system call: it reads what epoll already told the runtime.
    pub fn is_idle_and_open(&self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        matches!(self.io.0.poll_read_ready(&mut cx), Poll::Pending)
    }

    /// Sends a request and reads the response head.
    ///
    /// # Errors
    /// See [`SendError`].
    pub async fn send(mut self, req: http::Request<ReqBody>) -> Result<Response, SendError> {
        let head_only = req.method() == Method::HEAD;
        encode_head(&req, &mut self.wbuf);
        let (parts, mut body) = req.into_parts();
        let bodiless = matches!(body, ReqBody::Empty);
        let chunked =
            !matches!(body, ReqBody::Empty) && !parts.headers.contains_key(header::CONTENT_LENGTH);
        if let Err(e) = self.io.write_all(&self.wbuf).await {
            // A write refused outright (reset, closed) sent nothing.
            return Err(SendError::Unsent(
                Box::new(http::Request::from_parts(parts, body)),
                e,
            ));
        }
        let failed = |error| SendError::Failed {
            error,
            answered: false,
        };
        loop {
            let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
            match frame {
                None => break,
                Some(Err(e)) => return Err(failed(io::Error::other(e))),
                Some(Ok(f)) => {
                    let Ok(data) = f.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    if chunked {
                        let size = format!("{:x}\r\n", data.len());
                        self.io.write_all(size.as_bytes()).await.map_err(failed)?;
                        self.io.write_all(&data).await.map_err(failed)?;
                        self.io.write_all(b"\r\n").await.map_err(failed)?;
                    } else {
                        self.io.write_all(&data).await.map_err(failed)?;
                    }
                }
            }
        }
        if chunked {
            self.io.write_all(b"0\r\n\r\n").await.map_err(failed)?;
        }
        self.wbuf.clear();
        let (head, framing, keep_alive) = loop {
            let (head, framing, keep_alive) = match self.read_head(head_only).await {
                Ok(h) => h,
                Err(SendError::Failed {
                    error,
                    answered: false,
                }) if bodiless => {
                    let req = http::Request::from_parts(parts, ReqBody::Empty);
                    return Err(SendError::Lost(Box::new(req), error));
                }
                Err(e) => return Err(e),
            };
            // Interim answers (100 Continue, 103 Early Hints) are skipped.
            if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
            break (head, framing, keep_alive);
        };
        let body = BackendBody {
            conn: Some(self),
            framing,
            keep_alive,
            done: matches!(framing, Framing::Length(0) | Framing::Empty),
        };
        Ok(Response { head, body })
    }

    /// Reads and parses one response head.
    async fn read_head(
        &mut self,
        head_only: bool,
    ) -> Result<(http::response::Parts, Framing, bool), SendError> {
        loop {
            if !self.rbuf.is_empty() {
                if let Some(parsed) =
                    parse_head(&mut self.rbuf, head_only).map_err(|e| SendError::Failed {
                        error: io::Error::new(io::ErrorKind::InvalidData, e),
                        answered: true,
                    })?
                {
                    return Ok(parsed);
                }
                if self.rbuf.len() >= MAX_HEAD {
                    return Err(SendError::Failed {
                        error: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "response head over 64 KiB",
                        ),
                        answered: true,
                    });
                }
            }
            let answered = !self.rbuf.is_empty();
            let n = poll_fn(|cx| poll_fill(&mut self.io, &mut self.rbuf, cx))
                .await
                .map_err(|error| SendError::Failed { error, answered })?;
            if n == 0 {
                return Err(SendError::Failed {
                    error: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection before answering",
                    ),
                    answered,
                });
            }
        }
    }
}

/// Writes the request line and headers.
/// Public for the fuzz target `http_head` (fuzz/).
#[doc(hidden)]
pub fn encode_head(req: &http::Request<ReqBody>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let body = req.body();
    if !matches!(body, ReqBody::Empty) && !req.headers().contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// How a response body ends.
/// Public for the fuzz target `http_head` (fuzz/).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// This many bytes left.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Until the backend closes.
    Close,
}

/// Where a chunked decoder is.
/// Public for the fuzz target `http_head` (fuzz/).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a size line.
    Size,
    /// Inside chunk data, this much left.
    Data(u64),
    /// After chunk data, before its CRLF.
    DataEnd,
    /// After the last chunk, in the trailer section.
    Trailers,
}

/// Parses a response head off the front of `buf`, if complete.
/// Public for the fuzz target `http_head` (fuzz/).
///
/// # Errors
/// The head is not a valid HTTP/1.x response head.
#[doc(hidden)]
pub fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
) -> Result<Option<(http::response::Parts, Framing, bool)>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("unparsable response head: {e}")),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("bad status code")?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("bad header name {:?}", h.name))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| format!("bad value of header {name}"))?;
        headers.append(name, value);
    }
    buf.advance(n);
    let conn_tokens = |token: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let mut keep_alive = if version == Version::HTTP_10 {
        conn_tokens("keep-alive")
    } else {
        !conn_tokens("close")
    };
    let framing = if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
        let te = te.to_str().unwrap_or("");
        if te
            .rsplit(',')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
        {
            Framing::Chunked(Chunk::Size)
        } else {
            keep_alive = false;
            Framing::Close
        }
    } else if let Some(cl) = headers.get(header::CONTENT_LENGTH) {
        let length = |v: &HeaderValue| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
        let n = length(cl).ok_or("bad content-length")?;
        // Every Content-Length must agree (RFC 9112 6.3): after the shorter
        // body, the rest of a longer one would be read as the next response
        // on the reused connection.
        if headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| length(v) != Some(n))
        {
            return Err("conflicting content-length headers".into());
        }
        Framing::Length(n)
    } else {
        keep_alive = false;
        Framing::Close
    };
    let mut head = http::Response::new(()).into_parts().0;
    head.status = status;
    head.version = version;
    head.headers = headers;
    Ok(Some((head, framing, keep_alive)))
}

/// Reads what is there into `buf` (room for at least [`READ_CHUNK`]);
/// `Ok(0)` at the end of the stream. Straight into `buf`'s spare capacity:
/// no stack buffer to zero and copy from (they were 2% of a keep-alive
/// request's CPU).
fn poll_fill(
    io: &mut SendStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// A response body read straight from the backend connection.
#[derive(Debug)]
pub struct BackendBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    done: bool,
}

impl BackendBody {
    /// The connection, if the body ended cleanly and it may be reused.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if self.done && self.keep_alive {
            self.conn.take().filter(|c| c.rbuf.is_empty())
        } else {
            None
        }
    }

    fn fail(&mut self, why: &str) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.conn = None;
        self.done = true;
        self.keep_alive = false;
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            why.to_owned(),
        ))))
    }

    /// Next frame, decoding the framing.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.framing {
                Framing::Empty => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Framing::Length(left) => {
                    if !conn.rbuf.is_empty() {
                        let k = usize::try_from(left)
                            .unwrap_or(usize::MAX)
                            .min(conn.rbuf.len());
                        let data = conn.rbuf.split_to(k).freeze();
                        let left = left - k as u64;
                        self.framing = Framing::Length(left);
                        self.done = left == 0;
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    if !conn.rbuf.is_empty() {
                        let data = conn.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(state) => match decode_chunk(&mut conn.rbuf, state) {
                    Ok(Decoded::Data(data, next)) => {
                        self.framing = Framing::Chunked(next);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Decoded::Next(next)) => {
                        self.framing = Framing::Chunked(next);
                        continue;
                    }
                    Ok(Decoded::End) => {
                        self.done = true;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(why) => return self.fail(why),
                },
            }
            // Nothing buffered: read more from the backend.
            let n = match std::task::ready!(poll_fill(&mut conn.io, &mut conn.rbuf, cx)) {
                Ok(n) => n,
                Err(e) => {
                    self.conn = None;
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if n == 0 {
                if self.framing == Framing::Close {
                    self.done = true;
                    self.keep_alive = false;
                    return Poll::Ready(None);
                }
                return self.fail("the backend closed the connection mid-body");
            }
        }
    }

    /// Whether the body is known to be over.
    #[must_use]
    pub fn is_end_stream(&self) -> bool {
        self.done || self.framing == Framing::Empty
    }

    /// What is known of its length.
    #[must_use]
    pub fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// What one step of chunked decoding gave.
enum Decoded {
    Data(Bytes, Chunk),
    Next(Chunk),
    End,
    NeedMore,
}

/// One step of decoding a chunked body from the front of `buf`.
fn decode_chunk(buf: &mut BytesMut, state: Chunk) -> Result<Decoded, &'static str> {
    let line = |buf: &mut BytesMut| -> Result<Option<BytesMut>, &'static str> {
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let mut l = buf.split_to(i + 1);
                l.truncate(i);
                if l.last() == Some(&b'\r') {
                    l.truncate(i - 1);
                }
                Ok(Some(l))
            }
            None if buf.len() > 4096 => Err("a chunk size or trailer line over 4 KiB"),
            None => Ok(None),
        }
    };
    match state {
        Chunk::Size => {
            let Some(l) = line(buf)? else {
                return Ok(Decoded::NeedMore);
            };
            let hex = l[..].split(|&b| b == b';').next().unwrap_or(&[]);
            let hex = std::str::from_utf8(hex)
                .map_err(|_| "bad chunk size")?
                .trim();
            let size = u64::from_str_radix(hex, 16).map_err(|_| "bad chunk size")?;
            Ok(Decoded::Next(if size == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(left) => {
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let k = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let data = buf.split_to(k).freeze();
            let left = left - k as u64;
            Ok(Decoded::Data(
                data,
                if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                },
            ))
        }
        Chunk::DataEnd => match line(buf)? {
            Some(l) if l.is_empty() => Ok(Decoded::Next(Chunk::Size)),
            Some(_) => Err("chunk data longer than its size"),
            None => Ok(Decoded::NeedMore),
        },
        Chunk::Trailers => match line(buf)? {
            Some(l) if l.is_empty() => Ok(Decoded::End),
            Some(_) => Ok(Decoded::Next(Chunk::Trailers)),
            None => Ok(Decoded::NeedMore),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<Vec<u8>, &'static str> {
        let mut buf = BytesMut::from(input);
        let mut state = Chunk::Size;
        let mut out = Vec::new();
        loop {
            match decode_chunk(&mut buf, state)? {
                Decoded::Data(d, next) => {
                    out.extend_from_slice(&d);
                    state = next;
                }
                Decoded::Next(next) => state = next,
                Decoded::End => return Ok(out),
                Decoded::NeedMore => return Err("incomplete"),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        assert_eq!(
            decode_all(b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-t: 1\r\n\r\n"),
            Ok(b"hello, world".to_vec())
        );
        assert_eq!(decode_all(b"0\r\n\r\n"), Ok(Vec::new()));
        assert_eq!(decode_all(b"zz\r\n"), Err("bad chunk size"));
        assert_eq!(
            decode_all(b"2\r\nabc\r\n"),
            Err("chunk data longer than its size")
        );
        assert_eq!(decode_all(b"5\r\nhel"), Err("incomplete"));
    }

    #[test]
    fn response_heads_give_status_framing_and_keep_alive() {
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"[..]);
        let (h, f, ka) = parse_head(&mut b, false).unwrap().unwrap();
        assert_eq!(
            (h.status, f, ka),
            (StatusCode::OK, Framing::Length(5), true)
        );
        assert_eq!(&b[..], b"hello");
        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"[..],
        );
        let (_, f, ka) = parse_head(&mut b, false).unwrap().unwrap();
        assert_eq!((f, ka), (Framing::Chunked(Chunk::Size), false));
        let mut b = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\nrest"[..]);
        let (h, f, ka) = parse_head(&mut b, false).unwrap().unwrap();
        assert_eq!(
            (h.version, f, ka),
            (Version::HTTP_10, Framing::Close, false)
        );
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"[..]);
        assert_eq!(parse_head(&mut b, true).unwrap().unwrap().1, Framing::Empty);
        let mut b = BytesMut::from(&b"HTTP/1.1 204 No Content\r\n\r\n"[..]);
        assert_eq!(
            parse_head(&mut b, false).unwrap().unwrap().1,
            Framing::Empty
        );
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(parse_head(&mut b, false).unwrap().is_none());
        let mut b = BytesMut::from(&b"SSH-2.0-x\r\n\r\n"[..]);
        assert!(parse_head(&mut b, false).is_err());
    }

    /// Found by the `http_head` fuzz target: two different lengths were
    /// framed by the first, leaving the rest of the body to be read as the
    /// next response on the connection.
    #[test]
    fn conflicting_content_lengths_are_refused() {
        let crash = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 10\r\n\r\nhellohello";
        let mut b = BytesMut::from(&crash[..]);
        assert_eq!(
            parse_head(&mut b, false).err().as_deref(),
            Some("conflicting content-length headers")
        );
        // The same length twice is one length.
        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length:  5\r\n\r\nhello"[..],
        );
        assert_eq!(
            parse_head(&mut b, false).unwrap().unwrap().1,
            Framing::Length(5)
        );
    }
}
