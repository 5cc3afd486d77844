//! Header rewriting between client and backend: hop-by-hop headers go,
//! `X-Forwarded-For` / `X-Forwarded-Proto` / `Forwarded` are added.
//! Pure functions over `http::HeaderMap`, tested here.

use std::net::IpAddr;

use http::{header, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus
/// the non-standard ones proxies also drop.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names. `Transfer-Encoding` is left to hyper, which owns framing
/// on each side.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Adds the forwarding headers for a request from `client`: appends the
/// client to `X-Forwarded-For` (one header, joined with any existing
/// values) and to `Forwarded` (RFC 7239, with `proto` and `host`), and sets
/// `X-Forwarded-Proto`.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, proto: &str) {
    let ip = client.to_canonical();
    let xff = join_existing(headers, "x-forwarded-for", &ip.to_string());
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if proto == "https" { "https" } else { "http" }),
    );
    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        element.push_str(";host=");
        element.push_str(&forwarded_value(host));
    }
    let fwd = join_existing(headers, "forwarded", &element);
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        headers.insert(header::FORWARDED, v);
    }
}

/// Existing values of a list header joined with `, `, then `item`.
fn join_existing(headers: &HeaderMap, name: &str, item: &str) -> String {
    let mut out = String::new();
    for v in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        let v = v.trim();
        if !v.is_empty() {
            out.push_str(v);
            out.push_str(", ");
        }
    }
    out.push_str(item);
    out
}

/// A `Forwarded` value: a token as is, anything else quoted.
fn forwarded_value(v: &str) -> String {
    let token = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        v.to_owned()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn xff_appends_to_existing_values_and_forwarded_quotes_v6() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.1"),
            ("host", "example.test:8080"),
        ]);
        add_forwarded(&mut h, "2001:db8::7".parse().unwrap(), "http");
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.9, 198.51.100.1, 2001:db8::7"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::7]\";proto=http;host=\"example.test:8080\""
        );
    }

    #[test]
    fn v4_mapped_clients_are_shown_as_v4_and_forwarded_appends() {
        let mut h = map(&[
            ("forwarded", "for=192.0.2.60;proto=https"),
            ("host", "a.test"),
        ]);
        add_forwarded(&mut h, "::ffff:10.1.2.3".parse().unwrap(), "http");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.60;proto=https, for=10.1.2.3;proto=http;host=a.test"
        );
    }
}
