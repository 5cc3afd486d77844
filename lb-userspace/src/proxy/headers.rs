//! Header rewriting between client and backend: hop-by-hop headers go,
//! `X-Forwarded-For` / `X-Forwarded-Proto` / `Forwarded` are added
//! ([`Forwarding`], formatted once per client connection).
//! Pure functions over `http::HeaderMap`, tested here.

use std::{cell::RefCell, net::IpAddr};

use http::{
    header::{self, Entry},
    HeaderMap, HeaderName, HeaderValue,
};

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus
/// the non-standard ones proxies also drop. Names, not strings: removing by
/// a `HeaderName` skips parsing the name on every request.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes hop-by-hop headers, including every header the `Connection`
/// header names. `Transfer-Encoding` is left to hyper, which owns framing
/// on each side.
///
/// One pass over the names finds those present (comparing a standard
/// name is comparing a tag), so a message without any costs no hashing,
/// and one with some removes only those: removing each of the nine names
/// blindly was a tenth of a keep-alive request's own instructions.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present: Vec<HeaderName> = headers
        .keys()
        .filter(|k| *k == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(k))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    if present.contains(&header::CONNECTION) {
        present.extend(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok()),
        );
    }
    for name in present {
        headers.remove(name);
    }
}

/// The forwarding headers of one client connection, formatted once when
/// it opens: every request on it appends the same client.
#[derive(Debug, Clone)]
pub struct Forwarding {
    /// The client address as `X-Forwarded-For` shows it.
    ip: HeaderValue,
    /// `for=...;proto=...`, the start of its `Forwarded` element.
    element: String,
    /// The element as a value, for requests without a `Host`.
    element_value: HeaderValue,
    proto: HeaderValue,
    /// The last `Host` seen and the `Forwarded` value made for it: the
    /// requests of a keep-alive connection nearly always name the same
    /// host, and the value is then cloned, not formatted and checked again.
    last_host: RefCell<Option<(HeaderValue, HeaderValue)>>,
}

impl Forwarding {
    /// For a connection from `client` over `proto` (`http` or `https`).
    #[must_use]
    pub fn new(client: IpAddr, proto: &'static str) -> Self {
        let ip = client.to_canonical();
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let element = format!("for={node};proto={proto}");
        Self {
            ip: HeaderValue::from_str(&ip.to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            element_value: HeaderValue::from_str(&element)
                .unwrap_or(HeaderValue::from_static("for=unknown")),
            element,
            proto: HeaderValue::from_static(proto),
            last_host: RefCell::new(None),
        }
    }

    /// Appends the client to `X-Forwarded-For` (one header, joined with any
    /// existing values) and to `Forwarded` (RFC 7239, with `proto` and
    /// `host`), and sets `X-Forwarded-Proto`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        match headers.entry(X_FORWARDED_FOR) {
            Entry::Vacant(v) => {
                v.insert(self.ip.clone());
            }
            Entry::Occupied(_) => {
                let ip = self.ip.to_str().unwrap_or("unknown");
                if let Ok(v) = HeaderValue::from_str(&join_existing(headers, &X_FORWARDED_FOR, ip))
                {
                    headers.insert(X_FORWARDED_FOR, v);
                }
            }
        }
        headers.insert(X_FORWARDED_PROTO, self.proto.clone());
        let forwarded = headers.contains_key(header::FORWARDED);
        let host_value = headers.get(header::HOST);
        if !forwarded {
            let cached = match (host_value, &*self.last_host.borrow()) {
                (None, _) => Some(self.element_value.clone()),
                (Some(h), Some((last, value))) if h == last => Some(value.clone()),
                _ => None,
            };
            if let Some(v) = cached {
                headers.insert(header::FORWARDED, v);
                return;
            }
        }
        let host = host_value.and_then(|h| h.to_str().ok());
        let mut element = String::with_capacity(self.element.len() + 64);
        element.push_str(&self.element);
        if let Some(host) = host {
            element.push_str(";host=");
            push_forwarded_value(&mut element, host);
        }
        let value = if forwarded {
            join_existing(headers, &header::FORWARDED, &element)
        } else {
            element
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            if !forwarded {
                // A copy: a clone of `h` would share, and keep alive
                // while the connection idles, the whole read buffer
                // hyper parsed the head from.
                if let Ok(h) = host_value
                    .map(|h| HeaderValue::from_bytes(h.as_bytes()))
                    .transpose()
                {
                    *self.last_host.borrow_mut() = h.map(|h| (h, v.clone()));
                }
            }
            headers.insert(header::FORWARDED, v);
        }
    }
}

/// Existing values of a list header joined with `, `, then `item`.
fn join_existing(headers: &HeaderMap, name: &HeaderName, item: &str) -> String {
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

/// Appends a `Forwarded` value: a token as is, anything else quoted.
fn push_forwarded_value(out: &mut String, v: &str) {
    let token = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        out.push_str(v);
    } else {
        out.push('"');
        for c in v.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
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
        Forwarding::new("2001:db8::7".parse().unwrap(), "http").apply(&mut h);
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
    fn a_connection_reuses_its_forwarded_value_only_for_the_same_host() {
        let fwd = Forwarding::new("192.0.2.1".parse().unwrap(), "https");
        let apply = |host: &str| {
            let mut h = map(&[("host", host), ("connection", "close")]);
            strip_hop_by_hop(&mut h);
            fwd.apply(&mut h);
            h["forwarded"].to_str().unwrap().to_owned()
        };
        assert_eq!(apply("a.test"), "for=192.0.2.1;proto=https;host=a.test");
        assert_eq!(apply("a.test"), "for=192.0.2.1;proto=https;host=a.test");
        assert_eq!(apply("b.test"), "for=192.0.2.1;proto=https;host=b.test");
        assert_eq!(apply("a b"), "for=192.0.2.1;proto=https;host=\"a b\"");
        let mut none = HeaderMap::new();
        fwd.apply(&mut none);
        assert_eq!(none["forwarded"], "for=192.0.2.1;proto=https");
    }

    #[test]
    fn v4_mapped_clients_are_shown_as_v4_and_forwarded_appends() {
        let mut h = map(&[
            ("forwarded", "for=192.0.2.60;proto=https"),
            ("host", "a.test"),
        ]);
        Forwarding::new("::ffff:10.1.2.3".parse().unwrap(), "http").apply(&mut h);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.60;proto=https, for=10.1.2.3;proto=http;host=a.test"
        );
    }
}
