//! Fuzz target `http_head`: arbitrary bytes as what a client sends, and as
//! what a backend answers.
//!
//! Client side: the bytes go, through an in-memory stream, into hyper
//! configured exactly as a frontend's workers configure it
//! ([`lb::proxy::http::builder`]: HTTP/1.1, or HTTP/2 with prior
//! knowledge). For every request hyper hands over, the target does what
//! `lb` does with its head: looks up the session cookie
//! ([`lb::proxy::http::cookies`], [`Sessions::valid`]) and the sticky
//! cookie, rewrites the head for an HTTP/1.1 and for an HTTP/2 backend
//! ([`lb::proxy::http::prepare_request`]: hop-by-hop headers out,
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` in), and writes
//! the HTTP/1.1 head the backend would get ([`lb::proxy::h1::encode_head`]).
//!
//! Must hold for each request:
//! - no hop-by-hop header (nor one that `Connection` named) is forwarded;
//!   a `Host` that `Connection` named (or none at all) is made from the
//!   request target's authority, if it has one; exactly one
//!   `X-Forwarded-For` (ending with the client), one `X-Forwarded-Proto`
//!   and one `Forwarded` (ending with the client's element, its host
//!   quoted as RFC 7239 wants);
//! - the head written to the backend parses back (httparse) as exactly one
//!   complete request head, nothing left over, with the same method, path
//!   and headers in the same order: no header or request can be smuggled
//!   into it; it carries at most one `Content-Length`, never both
//!   `Content-Length` and `Transfer-Encoding`, and `Transfer-Encoding` only
//!   as lb's own `chunked`;
//! - the head for an HTTP/2 backend has no connection-specific header and
//!   no `Host`.
//!
//! The server side of the stream is `lb`'s own client-connection wrapper
//! (`proxy::io::Tracked`): every byte read goes into a [`RequestFraming`]
//! until the HTTP/2 preface is seen, however the reads split it, and the
//! service asks `ConnState::begin` as `lb`'s does. Must hold when hyper
//! hands over request `k` (from 0):
//! - it is an HTTP/2 request exactly when the preface was seen (`lb` looks
//!   at the framing only for the others);
//! - the framing has counted more than `k` complete heads, or has stopped
//!   following (both lengths, or input hyper refuses further on): it sees
//!   every head before hyper hands the request over;
//! - a request that comes with `Content-Length` and no `Transfer-Encoding`
//!   (hyper removes the length from a head with both) is not taken for one
//!   with both: `conflicting(k)` is false.
//!
//! The same bytes are also fed to a `RequestFraming` whole, in two pieces
//! (cut where the first and last bytes say) and, under 512 bytes, a byte
//! at a time. Must hold: each ends in the same state (heads counted, the
//! conflicting one, following or not, the line and body in progress).
//!
//! Backend side: the same bytes as a response head into `lb`'s own parser
//! ([`lb::proxy::h1::parse_head`]), for a GET and for a HEAD. Must hold: no
//! panic; a complete head is consumed exactly (the rest of the buffer is
//! what followed it); its framing agrees with its status and headers; and
//! any shorter prefix of it is "incomplete", never an error, so a head
//! that arrives in pieces is parsed as one that arrives whole.
#![no_main]

use std::{
    convert::Infallible,
    net::IpAddr,
    rc::Rc,
    sync::{Arc, OnceLock},
};

use bytes::BytesMut;
use http::{header, HeaderMap, HeaderName, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use lb::{
    config::BackendProtocol,
    limits::session::{self, Sessions},
    proxy::{
        framing::RequestFraming,
        h1::{self, Framing},
        io::{ConnState, Tracked},
        headers::Forwarding,
        http::{cookies, prepare_request},
        upstream::ReqBody,
    },
};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The client address lb would see.
const CLIENT: &str = "192.0.2.7";

/// Headers never forwarded (RFC 9110 7.6.1 and the non-standard ones).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
];

/// Headers lb sets itself after removing what `Connection` named.
const SET_BY_LB: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "forwarded"];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    client_side(data);
    framing_in_pieces(data);
    for head_only in [false, true] {
        backend_side(data, head_only);
    }
});

/// Serves `data` as one client connection; checks every request.
fn client_side(data: &[u8]) {
    let sessions = Arc::new(Sessions::with_key([7; 16]));
    let fwd = Arc::new(Forwarding::new(
        CLIENT.parse::<IpAddr>().expect("an address"),
        "http",
    ));
    let local = tokio::task::LocalSet::new();
    local.block_on(runtime(), async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        // The server side counts and follows the client's bytes as lb's
        // does, through the same wrapper.
        let state = Rc::new(ConnState::default());
        let server = Tracked::new(server, Rc::clone(&state));
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            // As lb's service: `begin` as hyper hands the request over.
            let index = state.started.get();
            let (_in_flight, conflicting) = state.begin();
            check_framing(&req, index, &state, conflicting);
            let sessions = Arc::clone(&sessions);
            let fwd = Arc::clone(&fwd);
            async move {
                check_request(req, &sessions, &fwd);
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        });
        let input = data.to_vec();
        // Writes the request bytes, closes, and reads whatever comes back
        // (so hyper never blocks on a full pipe).
        let peer = tokio::task::spawn_local(async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
        let builder = lb::proxy::http::builder(None);
        let _ = builder
            .serve_connection(TokioIo::new(server), service)
            .await;
        let _ = peer.await;
    });
}

/// What the framing followed when hyper hands over request `index`.
fn check_framing(req: &Request<Incoming>, index: u64, state: &ConnState, conflicting: bool) {
    let (framing, h2) = (&*state.framing.borrow(), state.h2.get());
    assert_eq!(
        conflicting,
        !h2 && framing.conflicting(index),
        "begin() says what the framing does"
    );
    // lb's preface check and hyper's choice of protocol agree.
    assert_eq!(
        h2,
        req.version() == Version::HTTP_2,
        "preface seen: {h2}, but hyper hands over {:?}",
        req.version()
    );
    if h2 {
        return;
    }
    // The framing saw this head complete before hyper parsed it, unless it
    // stopped following (both lengths, or input hyper refuses further on).
    assert!(
        !framing.following() || framing.heads() > index,
        "request {index} handed over, but the framing counted {} heads: {framing:?}",
        framing.heads()
    );
    // hyper removes `Content-Length` from a head that also had
    // `Transfer-Encoding`: one it hands over with only a length is framed
    // by it, and must not be refused as having both.
    let headers = req.headers();
    if headers.contains_key(header::CONTENT_LENGTH)
        && !headers.contains_key(header::TRANSFER_ENCODING)
    {
        assert!(
            !framing.conflicting(index),
            "request {index} has only Content-Length, but is taken for one with both: {framing:?}"
        );
    }
}

/// `data` fed to a [`RequestFraming`] whole, in two pieces, and (when
/// short) a byte at a time, ends in the same state.
fn framing_in_pieces(data: &[u8]) {
    let follow = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut f = RequestFraming::default();
        for piece in pieces {
            f.feed(piece);
        }
        f
    };
    let whole = follow(&mut std::iter::once(data));
    let conflict = (0..whole.heads()).find(|&i| whole.conflicting(i));
    let same = |how: &str, f: &RequestFraming| {
        assert_eq!(
            (f.heads(), f.following()),
            (whole.heads(), whole.following()),
            "fed {how}: {f:?}\nfed whole: {whole:?}"
        );
        assert_eq!(
            (0..f.heads()).find(|&i| f.conflicting(i)),
            conflict,
            "fed {how}: {f:?}\nfed whole: {whole:?}"
        );
        // The state within the current line and body too.
        assert_eq!(format!("{f:?}"), format!("{whole:?}"), "fed {how}");
    };
    if let (Some(&first), Some(&last)) = (data.first(), data.last()) {
        let cut = (usize::from(first) << 8 | usize::from(last)) % (data.len() + 1);
        let (a, b) = data.split_at(cut);
        same(
            &format!("in two at {cut}"),
            &follow(&mut [a, b].into_iter()),
        );
    }
    if data.len() < 512 {
        same("a byte at a time", &follow(&mut data.chunks(1)));
    }
}

/// A copy of a request head (`Parts` is not `Clone`).
fn copy_parts(parts: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = parts.method.clone();
    *r.uri_mut() = parts.uri.clone();
    *r.version_mut() = parts.version;
    *r.headers_mut() = parts.headers.clone();
    r.into_parts().0
}

fn check_request(req: Request<Incoming>, sessions: &Sessions, fwd: &Forwarding) {
    let (parts, body) = req.into_parts();
    // The session and sticky cookies, as `proxy` and `forward` read them.
    for c in cookies(&parts.headers, session::COOKIE) {
        let _ = sessions.valid(c);
    }
    let _ = cookies(&parts.headers, "lb_backend").next();

    // Names the client's `Connection` headers list: they must go too.
    let named: Vec<HeaderName> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !SET_BY_LB.contains(&n.as_str()) && n != header::HOST)
        .collect();
    // A `Host` that `Connection` named is removed, and made again from the
    // request target's authority if it has one (absolute or authority form).
    let host_named = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("host"));
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());

    let parts_had_host = parts.headers.contains_key(header::HOST);
    let mut h2 = copy_parts(&parts);
    prepare_request(&mut h2, fwd, BackendProtocol::H2);
    let mut h1 = parts;
    prepare_request(&mut h1, fwd, BackendProtocol::Http1);
    // The host `Forwarded` names: the Host header, or the URI's authority
    // when there was none; h1 keeps it, h2 sends it in the URI.
    let host = h1.headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host_named || !parts_had_host {
        assert_eq!(
            host,
            authority.as_deref(),
            "Host not made from the authority"
        );
    }
    check_forwarding(&h1.headers, &named, host);
    check_forwarding(&h2.headers, &named, host);
    assert_eq!(h1.version, Version::HTTP_11);
    assert_eq!(h2.version, Version::HTTP_2);
    assert!(!h2.headers.contains_key(header::HOST), "Host sent over h2");
    // As `forward` builds it.
    let body = if http_body::Body::is_end_stream(&body) {
        ReqBody::Empty
    } else {
        ReqBody::Client {
            body,
            failed: std::rc::Rc::default(),
        }
    };
    let req = Request::from_parts(h1, body);
    let mut out = Vec::new();
    h1::encode_head(&req, &mut out);
    check_encoded(&req, &out);
}

/// What `prepare_request` must leave, for either backend protocol.
fn check_forwarding(h: &HeaderMap, named: &[HeaderName], host: Option<&str>) {
    for name in HOP_BY_HOP {
        assert!(!h.contains_key(name), "hop-by-hop `{name}` forwarded");
    }
    for name in named {
        assert!(
            !h.contains_key(name),
            "`{name}`, named by Connection, forwarded"
        );
    }
    for name in SET_BY_LB {
        assert_eq!(h.get_all(name).iter().count(), 1, "one `{name}`");
    }
    let xff = h["x-forwarded-for"]
        .to_str()
        .expect("X-Forwarded-For is text");
    assert!(
        xff == CLIENT || xff.ends_with(&format!(", {CLIENT}")),
        "X-Forwarded-For {xff:?} does not end with the client"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    let fwd = h["forwarded"].to_str().expect("Forwarded is text");
    let mut element = format!("for={CLIENT};proto=http");
    if let Some(host) = host {
        element.push_str(";host=");
        element.push_str(&forwarded_value(host));
    }
    assert!(
        fwd == element || fwd.ends_with(&format!(", {element}")),
        "Forwarded {fwd:?} does not end with {element:?}"
    );
}

/// RFC 7239: a token as is, anything else quoted with `"` and `\` escaped.
fn forwarded_value(v: &str) -> String {
    let token = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        return v.to_owned();
    }
    let mut out = String::from("\"");
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The head written to the backend parses back as `req`, whole and alone.
fn check_encoded(req: &Request<ReqBody>, out: &[u8]) {
    let mut slots = vec![httparse::EMPTY_HEADER; req.headers().len() + 2];
    let mut parsed = httparse::Request::new(&mut slots);
    let n = match parsed.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "the head for the backend does not parse: {other:?}\n{}",
            String::from_utf8_lossy(out)
        ),
    };
    assert_eq!(n, out.len(), "bytes after the head for the backend");
    assert_eq!(parsed.method, Some(req.method().as_str()));
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    assert_eq!(parsed.path, Some(path));
    assert_eq!(parsed.version, Some(1));
    let chunked = !matches!(req.body(), ReqBody::Empty)
        && !req.headers().contains_key(header::CONTENT_LENGTH);
    assert_eq!(
        parsed.headers.len(),
        req.headers().len() + usize::from(chunked),
        "header count changed on the way:\n{}",
        String::from_utf8_lossy(out)
    );
    for (p, (name, value)) in parsed.headers.iter().zip(req.headers()) {
        assert!(
            p.name.eq_ignore_ascii_case(name.as_str()),
            "header name changed"
        );
        assert_eq!(
            p.value.trim_ascii(),
            value.as_bytes().trim_ascii(),
            "value of `{name}` changed"
        );
    }
    let count = |name: &str| {
        parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let (cl, te) = (count("content-length"), count("transfer-encoding"));
    assert!(cl <= 1, "{cl} Content-Length headers to the backend");
    assert!(cl == 0 || te == 0, "Content-Length and Transfer-Encoding");
    assert_eq!(te, usize::from(chunked), "Transfer-Encoding not lb's own");
}

/// `data` as a backend's response head.
fn backend_side(data: &[u8], head_only: bool) {
    let mut buf = BytesMut::from(data);
    let Ok(Some((head, framing, keep_alive))) = h1::parse_head(&mut buf, head_only) else {
        return;
    };
    let used = data.len() - buf.len();
    assert!(used > 0, "a head of no bytes");
    assert_eq!(&buf[..], &data[used..], "not consumed from the front");
    let status = head.status;
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    match framing {
        Framing::Empty => assert!(bodiless, "no body for a {status}"),
        Framing::Length(n) => {
            assert!(!bodiless);
            assert!(!head.headers.contains_key(header::TRANSFER_ENCODING));
            // Every Content-Length says the same (RFC 9112 6.3): a second,
            // different one would leave bytes that the next response on the
            // connection is read from.
            for cl in head.headers.get_all(header::CONTENT_LENGTH) {
                let cl = cl.to_str().ok().map(str::trim);
                assert_eq!(
                    cl.and_then(|c| c.parse::<u64>().ok()),
                    Some(n),
                    "Content-Length {cl:?} but framed as {n}"
                );
            }
        }
        Framing::Chunked(_) => {
            assert!(!bodiless && head.headers.contains_key(header::TRANSFER_ENCODING))
        }
        Framing::Close => assert!(!bodiless && !keep_alive, "read to close, but kept alive"),
    }
    // The same head arriving in two reads: the first is only incomplete.
    for cut in [used / 2, used - 1] {
        let mut part = BytesMut::from(&data[..cut]);
        match h1::parse_head(&mut part, head_only) {
            Ok(None) => {}
            other => panic!(
                "the first {cut} of {used} bytes of a valid head: {:?}",
                other.map(|o| o.map(|(h, f, _)| (h.status, f)))
            ),
        }
    }
}
