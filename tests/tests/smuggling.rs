//! Request smuggling and forwarded headers, against a real `lb` (no XDP) in
//! front of a real backend, with requests written byte for byte on a raw
//! TCP connection.
//!
//! Every ambiguous request (two different lengths, a bad length, a
//! transfer coding that does not end in `chunked`, an obsolete folded
//! header line, a space before a colon) is answered 400 and closed, and
//! nothing of it, nor of a request hidden behind it, reaches the backend.
//! With both `Content-Length` and `Transfer-Encoding`, the chunks frame the
//! body, the length is dropped and the connection closed after the answer
//! (RFC 9112 6.3), so nothing rides behind it. A body with an invalid chunk
//! size is answered 400 and never becomes a whole request at the backend. `X-Forwarded-For` from the
//! client is kept and the client's address appended, never trusted as is.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use lb_tests::{backend::HttpBackend, client::free_addr, lb::Lb, unique_tag, ScratchDir};

fn start() -> (Lb, HttpBackend, SocketAddr, ScratchDir) {
    let dir = ScratchDir::new("lb-smuggle");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let listen = free_addr("127.0.0.1");
    let config = format!(
        r#"[global]
instance = "smug{tag}"
[xdp]
mode = "off"
[[frontend]]
name = "web"
listen = "{listen}"
pool = "p"
[[pool]]
name = "p"
backends = ["{backend}"]
"#,
        tag = unique_tag(),
        backend = b.addr
    );
    let lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    (lb, b, listen, dir)
}

/// Writes `raw` on a new connection and reads until `lb` closes it (at
/// most 5 s); what came back.
fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(raw).expect("write");
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn ambiguous_requests_get_400_and_never_reach_the_backend() {
    let (mut lb, b, listen, _dir) = start();
    let cases: &[(&str, String)] = &[
        (
            "two different Content-Lengths",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\
                 Content-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            ),
        ),
        (
            "a list of lengths",
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 5\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a signed length",
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a coding that does not end in chunked",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n\
                 0\r\n\r\n{SMUGGLED}"
            ),
        ),
        (
            "an unknown coding",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n\
                 0\r\n\r\n{SMUGGLED}"
            ),
        ),
        (
            "an obsolete folded header line",
            format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a space before the colon",
            format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n{SMUGGLED}"),
        ),
    ];
    for (what, raw) in cases {
        let got = exchange(listen, raw.as_bytes());
        assert!(
            got.starts_with("HTTP/1.1 400"),
            "{what}: answered {got:?}\nlb log:\n{}",
            lb.log()
        );
        assert_eq!(
            got.matches("HTTP/1.1 ").count(),
            1,
            "{what}: one answer, then closed: {got:?}"
        );
        assert_eq!(b.requests(), 0, "{what}: reached the backend");
    }
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn content_length_beside_transfer_encoding_is_ignored_and_the_connection_closed() {
    // RFC 9112 6.3: Transfer-Encoding wins, Content-Length is dropped, and
    // the connection closes after the answer, so nothing rides behind it.
    let (mut lb, b, listen, _dir) = start();
    let raw = format!(
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    let got = exchange(listen, raw.as_bytes());
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.contains("received 0"), "framed by its chunks: {got}");
    assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "one answer: {got}");
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    assert_eq!(b.requests(), 1, "only the POST reached the backend");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn a_bad_chunk_size_never_becomes_a_request_at_the_backend() {
    let (mut lb, b, listen, _dir) = start();
    for (what, body) in [
        ("not hex", "zz\r\nhello\r\n0\r\n\r\n"),
        ("too large", "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("a negative size", "-5\r\nhello\r\n0\r\n\r\n"),
    ] {
        let raw = format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}{SMUGGLED}"
        );
        let got = exchange(listen, raw.as_bytes());
        assert!(
            got.starts_with("HTTP/1.1 400") && got.contains("request body is malformed"),
            "{what}: answered {got:?}"
        );
        assert!(
            !got.contains("received"),
            "{what}: the backend took a body: {got:?}"
        );
        assert!(!got.contains("/smuggled"), "{what}: {got:?}");
    }
    let ok = exchange(
        listen,
        b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("GET /after"), "{ok}");
    // The backend may have counted the three heads whose bodies never
    // came whole, and /after; never the three requests behind them.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        b.requests() <= 4,
        "{} requests at the backend",
        b.requests()
    );
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn x_forwarded_for_from_a_client_is_appended_to_not_trusted() {
    let (mut lb, _b, listen, _dir) = start();
    let got = exchange(
        listen,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\nConnection: close\r\n\r\n",
    );
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let xff = got
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("x-forwarded-for:"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        xff.ends_with("203.0.113.7, 127.0.0.1"),
        "the backend sees the client's claim, then the address lb saw: {got}"
    );
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}
