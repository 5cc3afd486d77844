//! Request smuggling and forwarded headers, against a real `lb` (no XDP) in
//! front of a real backend, with requests written byte for byte on a raw
//! TCP connection.
//!
//! Every ambiguous request (two different lengths, a bad length, a
//! transfer coding that does not end in `chunked`, an obsolete folded
//! header line, a space before a colon, both `Content-Length` and
//! `Transfer-Encoding`) is answered 400 and closed, and nothing of it, nor
//! of a request hidden behind it, reaches the backend, also when it comes
//! after good requests on a kept-alive connection. A body with an invalid
//! chunk size is answered 400 and never becomes a whole request at the
//! backend. `X-Forwarded-For` from the client is kept and the client's
//! address appended, never trusted as is.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use lb_tests::{
    backend::HttpBackend,
    client::{free_addr, frontend_in, status},
    lb::Lb,
    unique_tag, ScratchDir,
};

/// lb in front of one backend: lb, the backend, the frontend's and the
/// admin API's addresses.
fn start() -> (Lb, HttpBackend, SocketAddr, SocketAddr, ScratchDir) {
    let dir = ScratchDir::new("lb-smuggle");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let (listen, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let config = format!(
        r#"[global]
instance = "smug{tag}"
[xdp]
mode = "off"
[admin]
listen = "{admin}"
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
    (lb, b, listen, admin, dir)
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
    let (mut lb, b, listen, _admin, _dir) = start();
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
            "Content-Length beside Transfer-Encoding",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
        ),
        (
            "Transfer-Encoding before Content-Length",
            format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 5\r\n\r\n0\r\n\r\n{SMUGGLED}"
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
fn both_lengths_behind_good_requests_on_one_connection_get_400_and_close_it() {
    // Good requests first: an upgrade lb does not take, a length and a
    // chunk size with many leading zeros, bodies whose bytes look like
    // heads. The conflicting head is found where it really is. The bodies
    // go to `/upload`, which reads them (a backend that answers without
    // reading a body may close its connection, and a POST on it then races
    // the close).
    let (mut lb, b, listen, admin, _dir) = start();
    let decoy = "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let zeros = "0".repeat(200);
    let raw = format!(
        "GET /up HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
         POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {zeros}{len}\r\n\r\n{decoy}\
         POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
         {zeros}{hex:x}\r\n{decoy}\r\n0\r\n\r\n\
         POST /three HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\
         Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
        len = decoy.len(),
        hex = decoy.len(),
    );
    let got = exchange(listen, raw.as_bytes());
    let answers: Vec<&str> = got
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &got[i..(i + 12).min(got.len())])
        .collect();
    assert_eq!(
        answers,
        [
            "HTTP/1.1 200",
            "HTTP/1.1 200",
            "HTTP/1.1 200",
            "HTTP/1.1 400"
        ],
        "{got}"
    );
    assert!(
        got.contains("both Content-Length and Transfer-Encoding"),
        "the 400 says why: {got}"
    );
    assert_eq!(
        got.matches(&format!("received {}\n", decoy.len())).count(),
        2,
        "each body reached the backend whole, as a body: {got}"
    );
    assert!(
        !got.contains("/smuggled") && !got.contains("/three"),
        "{got}"
    );
    assert_eq!(
        b.requests(),
        3,
        "only the good requests reached the backend"
    );
    let web = frontend_in(&status(admin).expect("status"), "web");
    assert_eq!(web["responses"]["4xx"], 1, "counted: {web}");
    assert_eq!(web["responses"]["2xx"], 3, "counted: {web}");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}

#[test]
fn a_bad_chunk_size_never_becomes_a_request_at_the_backend() {
    let (mut lb, b, listen, _admin, _dir) = start();
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
    let (mut lb, _b, listen, _admin, _dir) = start();
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
