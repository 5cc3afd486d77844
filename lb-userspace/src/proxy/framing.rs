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
//! [`RequestFraming`] keeps the current line (its first [`LINE`] bytes), the
//! length of a fixed body still to come, or the state of a chunked one:
//! never a whole head, nothing per request. It follows the framing hyper
//! applies to input hyper accepts; on input hyper refuses it may lose
//! count, which only matters for requests hyper never hands over. After
//! an upgrade or `CONNECT` the bytes are no longer HTTP/1.1 and it stops.

/// How much of a line is kept: header names and a `Content-Length`
/// value fit; a longer line is judged by what fits.
const LINE: usize = 128;

/// The framing of one client connection's requests so far.
#[derive(Debug)]
pub struct RequestFraming {
    state: State,
    /// The current line's first bytes.
    line: Vec<u8>,
    /// The current line's length so far (may exceed `line.len()`).
    line_len: usize,
    /// The head being read: what it said so far.
    head: Head,
    /// Request heads complete so far.
    heads: u64,
    /// The index (from 0) of the first head that carried both lengths.
    conflict: Option<u64>,
}

/// What the bytes being read are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A request head (or the blank lines before one).
    Head,
    /// A body of this many bytes still to come.
    Fixed(u64),
    /// A chunk-size line.
    ChunkSize,
    /// Chunk data: this many bytes still to come.
    ChunkData(u64),
    /// The line break after chunk data.
    ChunkEnd,
    /// Trailer fields after the last chunk, up to a blank line.
    Trailer,
    /// No longer followed (upgraded, or lost).
    Off,
}

/// What the head being read carries.
#[derive(Debug, Default, Clone, Copy)]
struct Head {
    /// The request line is in.
    started: bool,
    content_length: Option<u64>,
    chunked: bool,
    /// `CONNECT`, or an `Upgrade` field: what follows may not be HTTP.
    upgrade: bool,
}

impl Default for RequestFraming {
    fn default() -> Self {
        Self {
            state: State::Head,
            line: Vec::new(),
            line_len: 0,
            head: Head::default(),
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

    /// Follows the next bytes read from the client.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Off => return,
                State::Fixed(left) | State::ChunkData(left) => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[usize::try_from(n).unwrap_or(bytes.len())..];
                    self.state = match (self.state, left - n) {
                        (State::Fixed(_), 0) => State::Head,
                        (State::Fixed(_), rest) => State::Fixed(rest),
                        (_, 0) => State::ChunkEnd,
                        (_, rest) => State::ChunkData(rest),
                    };
                }
                _ => match bytes.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.push(&bytes[..i]);
                        bytes = &bytes[i + 1..];
                        self.end_line();
                    }
                    None => {
                        self.push(bytes);
                        return;
                    }
                },
            }
        }
    }

    fn push(&mut self, part: &[u8]) {
        let room = LINE.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
        self.line_len += part.len();
    }

    /// A line ended: what it means where it stands.
    fn end_line(&mut self) {
        let whole = self.line_len <= LINE;
        let mut line = std::mem::take(&mut self.line);
        if whole && line.last() == Some(&b'\r') {
            line.pop();
        }
        let blank = whole && line.is_empty();
        self.state = match self.state {
            State::Head => self.head_line(&line, whole, blank),
            State::ChunkSize => chunk_size(&line).map_or(State::Off, |size| {
                if size == 0 {
                    State::Trailer
                } else {
                    State::ChunkData(size)
                }
            }),
            State::ChunkEnd => State::ChunkSize,
            State::Trailer if blank => State::Head,
            other => other,
        };
        line.clear();
        self.line = line;
        self.line_len = 0;
    }

    fn head_line(&mut self, line: &[u8], whole: bool, blank: bool) -> State {
        if blank {
            if !self.head.started {
                // Blank lines before a request line are skipped (as
                // httparse does).
                return State::Head;
            }
            return self.head_done();
        }
        if !self.head.started {
            self.head.started = true;
            self.head.upgrade = line.starts_with(b"CONNECT ");
            return State::Head;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return State::Head;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            match std::str::from_utf8(value)
                .ok()
                .filter(|_| whole)
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                Some(n) => self.head.content_length = Some(n),
                // hyper refuses a bad length; a line too long to read is
                // beyond following.
                None => return State::Off,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.head.chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.head.upgrade = true;
        }
        State::Head
    }

    /// The blank line after a head: where its body ends.
    fn head_done(&mut self) -> State {
        let head = std::mem::take(&mut self.head);
        let index = self.heads;
        self.heads += 1;
        if head.chunked && head.content_length.is_some() {
            // hyper closes the connection after this request.
            self.conflict.get_or_insert(index);
            return State::Off;
        }
        if head.upgrade {
            return State::Off;
        }
        if head.chunked {
            return State::ChunkSize;
        }
        match head.content_length {
            Some(n) if n > 0 => State::Fixed(n),
            _ => State::Head,
        }
    }
}

/// The size a chunk-size line gives (hex, then optional extensions);
/// `None` when it gives none hyper would take.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let hex = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(hex, 16).ok()
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
        for raw in [BOTH, te_first] {
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
        raw.extend_from_slice(b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n");
        raw.extend_from_slice(BOTH);
        for step in [1, 3, 64, raw.len()] {
            let f = follow(&raw, step);
            assert_eq!(f.heads, 4, "step {step}");
            assert_eq!(f.conflict, Some(3), "step {step}: {f:?}");
        }
    }

    #[test]
    fn bare_line_feeds_end_lines_as_httparse_takes_them() {
        let f = follow(
            b"POST /x HTTP/1.1\nContent-Length: 3\nTransfer-Encoding: chunked\n\n",
            5,
        );
        assert!(f.conflicting(0));
    }

    #[test]
    fn after_an_upgrade_or_connect_nothing_is_followed() {
        for head in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"[..],
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        ] {
            let mut raw = head.to_vec();
            raw.extend_from_slice(BOTH);
            let f = follow(&raw, 4);
            assert_eq!(f.heads, 1);
            assert_eq!(f.conflict, None);
        }
    }

    #[test]
    fn a_bad_chunk_size_or_length_stops_following() {
        let bad_chunk = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        let bad_length = b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        for raw in [&bad_chunk[..], &bad_length[..]] {
            let mut raw = raw.to_vec();
            raw.extend_from_slice(BOTH);
            let f = follow(&raw, 3);
            assert_eq!(f.state, State::Off);
            assert_eq!(f.conflict, None);
        }
    }

    #[test]
    fn long_lines_keep_only_their_first_bytes() {
        let mut raw = b"GET /x HTTP/1.1\r\nCookie: ".to_vec();
        raw.extend(std::iter::repeat_n(b'c', 10_000));
        raw.extend_from_slice(b"\r\n\r\n");
        raw.extend_from_slice(BOTH);
        let f = follow(&raw, 1000);
        assert!(f.line.capacity() <= 2 * LINE, "{}", f.line.capacity());
        assert!(f.conflicting(1));
    }
}
