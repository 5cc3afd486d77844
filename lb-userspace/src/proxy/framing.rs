//! Where each HTTP/1.1 request of a client connection begins and ends,
//! followed as the bytes arrive and before hyper parses them, to find one
//! kind of head hyper accepts: one carrying both `Content-Length` and
//! `Transfer-Encoding`.
//!
//! hyper frames such a request by its chunks, drops the length and closes
//! the connection after it, one of the two answers RFC 9112 6.1 allows.
//! lb gives the other: 400, and the request goes nowhere. A request that
//! two parsers could frame two ways is how smuggling starts, and an
//! operator who sees it wants it refused and counted, not repaired.
//!
//! [`RequestFraming`] reads the two header names that matter and their
//! values byte by byte, skips any other line to its end (`memchr`), reads
//! chunk-size lines byte by byte and skips body bytes by count: a few
//! words of state per connection, nothing kept of a head, a few
//! nanoseconds per request. It frames as hyper does (httparse's
//! head lines, ended by CRLF or LF; hyper's chunked decoder, CRLF only;
//! `Transfer-Encoding` over `Content-Length`), so it stays in step with
//! hyper on everything hyper accepts. On input hyper refuses (which ends
//! the connection) it stops following. It follows an upgrade request like
//! any other: lb never takes an upgrade, so hyper stays on HTTP/1.1.

/// The longest header name kept: `transfer-encoding`.
const NAME: usize = 17;

/// The framing of one client connection's requests so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFraming {
    state: State,
    /// What the head being read carries.
    head: Head,
    /// The current header name's first bytes (lowercased) and its length.
    name: [u8; NAME],
    name_len: usize,
    /// Request heads complete so far.
    heads: u64,
    /// The index (from 0) of the first head that carried both.
    conflict: Option<u64>,
}

/// Where in the byte stream the reader stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a head line (or of a blank line before a head).
    LineStart,
    /// A CR at the start of a line: an empty line if LF follows.
    LineCr,
    /// The request line, up to its LF.
    RequestLine,
    /// A header name, up to its colon.
    Name,
    /// A `Content-Length` value: before, in or after its digits.
    Length(Digits),
    /// The rest of a header line, up to its LF.
    Rest,
    /// A body of this many bytes still to come.
    Fixed(u64),
    /// The first digit of a chunk size.
    ChunkStart,
    /// A chunk size's digits so far.
    ChunkSize(u64),
    /// Blanks after a chunk size.
    ChunkLws(u64),
    /// A chunk extension, up to its CR.
    ChunkExt(u64),
    /// The LF of a chunk-size line.
    ChunkSizeLf(u64),
    /// Chunk data still to come.
    ChunkData(u64),
    /// The CR, then the LF, after chunk data.
    ChunkDataCr,
    ChunkDataLf,
    /// After the last chunk's line, or a trailer line: CR (the end) or
    /// a trailer field.
    EndCr,
    /// The LF that ends the body.
    EndLf,
    /// A trailer field, up to its CR; then its LF.
    Trailer,
    TrailerLf,
    /// No longer followed: the bytes are past what hyper accepts.
    Off,
}

/// A `Content-Length` value as read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digits {
    /// Blanks before the digits.
    Before,
    /// The value of the digits so far.
    In(u64),
    /// Blanks after the digits.
    After(u64),
    /// Not a length hyper takes.
    Bad,
}

/// What the head being read carries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Head {
    /// The request line is in.
    started: bool,
    /// A `Content-Length` field, its value if hyper would take it.
    length: Option<Option<u64>>,
    /// A `Transfer-Encoding` field.
    coded: bool,
}

impl Default for RequestFraming {
    fn default() -> Self {
        Self {
            state: State::LineStart,
            head: Head::default(),
            name: [0; NAME],
            name_len: 0,
            heads: 0,
            conflict: None,
        }
    }
}

impl RequestFraming {
    /// Whether request `index` (from 0, in the order the connection
    /// carried them) had both `Content-Length` and `Transfer-Encoding`.
    #[must_use]
    pub fn conflicting(&self, index: u64) -> bool {
        self.conflict == Some(index)
    }

    /// How many request heads have been complete so far.
    #[must_use]
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Whether the bytes are still followed: false after a head with both
    /// lengths (hyper closes after it) or input hyper refuses.
    #[must_use]
    pub fn following(&self) -> bool {
        self.state != State::Off
    }

    /// Whether the bytes so far end exactly where a request ended (or
    /// before any): no part of a next request has arrived.
    #[must_use]
    pub fn between_requests(&self) -> bool {
        self.state == State::LineStart && !self.head.started
    }

    /// Follows the next bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            match self.state {
                State::Off => return,
                // Lines whose content does not matter: on to their end.
                State::RequestLine | State::Rest => match memchr::memchr(b'\n', &bytes[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.state = State::LineStart;
                    }
                    None => return,
                },
                State::Fixed(left) | State::ChunkData(left) => {
                    let n = left.min((bytes.len() - i) as u64);
                    // n <= bytes.len() - i, so it fits a usize.
                    i += usize::try_from(n).unwrap_or(bytes.len() - i);
                    self.state = match (self.state, left - n) {
                        (State::Fixed(_), 0) => State::LineStart,
                        (State::Fixed(_), rest) => State::Fixed(rest),
                        (_, 0) => State::ChunkDataCr,
                        (_, rest) => State::ChunkData(rest),
                    };
                }
                _ => {
                    self.state = self.step(bytes[i]);
                    i += 1;
                }
            }
        }
    }

    /// One byte of a head or of chunked framing.
    fn step(&mut self, b: u8) -> State {
        match (self.state, b) {
            // Head lines (httparse: lines end at CRLF or LF).
            (State::LineStart, b'\r') => State::LineCr,
            (State::LineStart | State::LineCr, b'\n') => self.empty_line(),
            (State::LineCr, _) => State::Off,
            (State::LineStart, _) if !self.head.started => {
                self.head.started = true;
                State::RequestLine
            }
            // Only two names matter; any other line is skipped whole.
            (State::LineStart, b'c' | b'C' | b't' | b'T') => {
                self.name_len = 0;
                self.name_byte(b)
            }
            (State::LineStart, _) => State::Rest,
            (State::RequestLine | State::Rest, b'\n') => State::LineStart,
            (State::RequestLine | State::Rest, _) => self.state,
            (State::Name, b':') => self.field(),
            // A line with no colon: httparse refuses it.
            (State::Name, b'\n') => State::Off,
            (State::Name, _) => self.name_byte(b),
            (State::Length(d), b'\n') => {
                self.length(d);
                State::LineStart
            }
            (State::Length(d), _) => State::Length(digits(d, b)),
            // Chunked bodies (hyper's decoder: CRLF only).
            (State::ChunkStart, _) => hex(0, b).map_or(State::Off, State::ChunkSize),
            (State::ChunkSize(n), _) => match b {
                b'\t' | b' ' => State::ChunkLws(n),
                b';' => State::ChunkExt(n),
                b'\r' => State::ChunkSizeLf(n),
                _ => hex(n, b).map_or(State::Off, State::ChunkSize),
            },
            (State::ChunkLws(n), b'\t' | b' ') => State::ChunkLws(n),
            (State::ChunkLws(n) | State::ChunkExt(n), b';') => State::ChunkExt(n),
            (State::ChunkLws(n) | State::ChunkExt(n), b'\r') => State::ChunkSizeLf(n),
            (State::ChunkLws(_) | State::ChunkExt(_), b'\n') | (State::ChunkLws(_), _) => {
                State::Off
            }
            (State::ChunkExt(n), _) => State::ChunkExt(n),
            (State::ChunkSizeLf(0), b'\n') => State::EndCr,
            (State::ChunkSizeLf(n), b'\n') => State::ChunkData(n),
            (State::ChunkDataCr, b'\r') => State::ChunkDataLf,
            (State::ChunkDataLf, b'\n') => State::ChunkStart,
            (State::EndCr, b'\r') => State::EndLf,
            (State::EndCr | State::Trailer, _) if b != b'\r' => State::Trailer,
            (State::Trailer, _) => State::TrailerLf,
            (State::TrailerLf, b'\n') => State::EndCr,
            (State::EndLf, b'\n') => State::LineStart,
            _ => State::Off,
        }
    }

    fn name_byte(&mut self, b: u8) -> State {
        if let Some(slot) = self.name.get_mut(self.name_len) {
            *slot = b.to_ascii_lowercase();
        }
        self.name_len += 1;
        State::Name
    }

    /// A header name ended at its colon.
    fn field(&mut self) -> State {
        let name = &self.name[..self.name_len.min(NAME)];
        if self.name_len == b"content-length".len() && name == b"content-length" {
            return State::Length(Digits::Before);
        }
        if self.name_len == NAME && name == b"transfer-encoding" {
            self.head.coded = true;
        }
        State::Rest
    }

    /// A `Content-Length` line ended. Two different lengths are refused by
    /// hyper, unless a `Transfer-Encoding` makes it ignore them.
    fn length(&mut self, d: Digits) {
        let value = match d {
            Digits::In(n) | Digits::After(n) => Some(n),
            Digits::Before | Digits::Bad => None,
        };
        self.head.length = match self.head.length {
            Some(prev) if prev != value => Some(None),
            _ => Some(value),
        };
    }

    /// An empty line: a blank before a request line, or a head's end.
    fn empty_line(&mut self) -> State {
        if !self.head.started {
            return State::LineStart;
        }
        let head = std::mem::take(&mut self.head);
        let index = self.heads;
        self.heads += 1;
        match (head.coded, head.length) {
            (true, Some(_)) => {
                // hyper closes the connection after this request.
                self.conflict.get_or_insert(index);
                State::Off
            }
            (true, None) => State::ChunkStart,
            // A bad length: hyper answers 400 and closes.
            (false, Some(None)) => State::Off,
            (false, Some(Some(n))) if n > 0 => State::Fixed(n),
            (false, _) => State::LineStart,
        }
    }
}

/// One more byte of a `Content-Length` value (digits only, blanks around:
/// what hyper takes).
fn digits(d: Digits, b: u8) -> Digits {
    match (d, b) {
        (Digits::Bad, _) => Digits::Bad,
        (_, b'\r') => d,
        (Digits::Before, b' ' | b'\t') => Digits::Before,
        (Digits::In(n) | Digits::After(n), b' ' | b'\t') => Digits::After(n),
        (Digits::Before, b'0'..=b'9') => Digits::In(u64::from(b - b'0')),
        (Digits::In(n), b'0'..=b'9') => n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .map_or(Digits::Bad, Digits::In),
        _ => Digits::Bad,
    }
}

/// `n` with one more hex digit, as hyper reads a chunk size; `None` for a
/// byte that is not one, or an overflow.
fn hex(n: u64, b: u8) -> Option<u64> {
    let digit = char::from(b).to_digit(16)?;
    n.checked_mul(16)?.checked_add(u64::from(digit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `raw` in pieces of `step` bytes.
    fn follow(raw: &[u8], step: usize) -> RequestFraming {
        let mut f = RequestFraming::default();
        for piece in raw.chunks(step) {
            f.feed(piece);
        }
        f
    }

    const BOTH: &[u8] =
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn a_head_with_both_lengths_is_found_in_any_order_and_any_split() {
        let te_first: &[u8] =
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 6\r\n\r\n0\r\n\r\n";
        // hyper ignores a bad length beside a transfer coding: still both.
        let bad_length: &[u8] =
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n0\r\n\r\n";
        for raw in [BOTH, te_first, bad_length] {
            for step in [1, 2, 7, raw.len()] {
                let f = follow(raw, step);
                assert!(f.conflicting(0), "step {step}: {f:?}");
                assert!(!f.conflicting(1));
            }
        }
    }

    #[test]
    fn requests_behind_fixed_and_chunked_bodies_are_counted_in_order() {
        let mut raw = Vec::new();
        raw.extend_from_slice(b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n");
        raw.extend_from_slice(b"POST /b HTTP/1.1\r\nContent-Length: 22\r\n\r\n");
        // A body that looks like a head with both lengths: it is a body.
        raw.extend_from_slice(b"Content-Length: 1\r\nT\r\n");
        raw.extend_from_slice(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        raw.extend_from_slice(b"5;ext=1\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n");
        raw.extend_from_slice(BOTH);
        for step in [1, 3, 64, raw.len()] {
            let f = follow(&raw, step);
            assert_eq!(f.heads, 4, "step {step}");
            assert_eq!(f.conflict, Some(3), "step {step}: {f:?}");
        }
    }

    #[test]
    fn bare_line_feeds_end_head_lines_as_httparse_takes_them() {
        let f = follow(
            b"POST /x HTTP/1.1\nContent-Length: 3\nTransfer-Encoding: chunked\n\n",
            5,
        );
        assert!(f.conflicting(0));
    }

    /// Found with the `http_head` fuzz target's framing checks: a bare LF
    /// in the trailer ended a chunked body where hyper's went on (to the
    /// next CRLF CRLF), so the next head counted was one hyper never saw,
    /// and a request with only a length got the 400 meant for that one.
    #[test]
    fn trailer_lines_end_only_at_crlf_as_hyper_reads_them() {
        let mut raw = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        // For hyper one trailer: `a: b\n` up to the CRLF CRLF.
        raw.extend_from_slice(
            b"a: b\n\nP / HTTP/1.1\nContent-Length: 1\nTransfer-Encoding: x\r\n\r\n",
        );
        raw.extend_from_slice(b"POST /b HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        raw.extend_from_slice(BOTH);
        for step in [1, 2, 5, raw.len()] {
            let f = follow(&raw, step);
            assert_eq!(f.heads, 3, "step {step}: {f:?}");
            assert_eq!(f.conflict, Some(2), "step {step}: {f:?}");
        }
    }

    /// Ways a fuzz review found to make the first version stop following
    /// while hyper went on (so a later head with both went through): an
    /// upgrade request, a chunk size or a length with many leading zeros.
    #[test]
    fn upgrades_and_long_numbers_keep_it_following() {
        let zeros = "0".repeat(300);
        for head in [
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n".to_owned(),
            "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n".to_owned(),
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n".to_owned(),
            format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{zeros}2\r\nab\r\n0\r\n\r\n"
            ),
            format!("POST / HTTP/1.1\r\nContent-Length: {zeros}2\r\n\r\nab"),
        ] {
            let mut raw = head.into_bytes();
            raw.extend_from_slice(BOTH);
            let f = follow(&raw, 4);
            assert_eq!((f.heads, f.conflict), (2, Some(1)), "{f:?}");
        }
    }

    #[test]
    fn what_hyper_refuses_stops_following() {
        for raw in [
            &b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            b"GET /x HTTP/1.1\r\ncontent-length\r\n\r\n",
        ] {
            let mut raw = raw.to_vec();
            raw.extend_from_slice(BOTH);
            let f = follow(&raw, 3);
            assert!(!f.following(), "{:?}", String::from_utf8_lossy(&raw));
            assert_eq!(f.conflict, None);
        }
    }

    #[test]
    fn two_equal_lengths_are_one() {
        let mut raw =
            b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab".to_vec();
        raw.extend_from_slice(BOTH);
        let f = follow(&raw, 1);
        assert_eq!((f.heads, f.conflict), (2, Some(1)), "{f:?}");
    }
}
