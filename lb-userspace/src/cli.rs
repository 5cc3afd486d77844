//! The admin API from the command line: `lb profile show|set` and `lb top`.
//!
//! A small blocking HTTP/1.0 client ([`request`]) talks to a running `lb`'s
//! admin listener (`[admin] listen`, 127.0.0.1:9100 by default). Reads need
//! no token; a change sends `Authorization: Bearer <token>`, the token taken
//! from `--token`, `--token-file`, `LB_ADMIN_TOKEN`, or the file `lb run`
//! made for the instance when its config names none
//! ([`crate::instance::admin_token_path`]).

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use serde_json::{Map, Value};

/// How long a call to the admin API may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most a reply may hold.
const MAX_REPLY: u64 = 16 << 20;

/// One HTTP/1.0 exchange with the admin listener at `addr`: the status
/// code and the body.
///
/// # Errors
/// No connection, a timeout, or no HTTP answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let fail = |e: std::io::Error| format!("admin listener {addr}: {e}");
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| {
        format!("connecting to the admin listener {addr}: {e} (is `lb run` running with [admin]?)")
    })?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(fail)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(fail)?;
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: lb\r\n");
    if let Some(t) = token {
        let _ = write!(head, "Authorization: Bearer {t}\r\n");
    }
    if let Some(b) = body {
        let _ = write!(
            head,
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        );
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).map_err(fail)?;
    if let Some(b) = body {
        s.write_all(b.as_bytes()).map_err(fail)?;
    }
    let mut raw = Vec::new();
    s.take(MAX_REPLY).read_to_end(&mut raw).map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("admin listener {addr}: no HTTP answer"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("admin listener {addr}: no status code in `{head}`"))?;
    Ok((code, body.to_owned()))
}

/// `GET path` as JSON.
///
/// # Errors
/// See [`request`]; also a status other than 200, or not JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> Result<Value, String> {
    let (code, body) = request(addr, "GET", path, None, None)?;
    if code != 200 {
        return Err(format!("{addr}{path} answered {code}: {}", error_of(&body)));
    }
    serde_json::from_str(&body).map_err(|e| format!("{addr}{path} is not JSON ({e})"))
}

/// The `error` of a JSON error answer, or the body.
fn error_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

/// The token for a change: `token`, the first line of `file`,
/// `LB_ADMIN_TOKEN`, or the instance's own token file; None if none is
/// found (the change is then sent without one and refused by `lb`).
///
/// # Errors
/// `file` is named but cannot be read.
pub fn token(
    instance: &str,
    token: Option<String>,
    file: Option<&Path>,
) -> Result<Option<String>, String> {
    if token.is_some() {
        return Ok(token);
    }
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| format!("reading the token file {}: {e}", f.display()))?;
        return Ok(text.lines().next().map(|l| l.trim().to_owned()));
    }
    if let Ok(t) = std::env::var("LB_ADMIN_TOKEN") {
        return Ok(Some(t));
    }
    Ok(
        std::fs::read_to_string(crate::instance::admin_token_path(instance))
            .ok()
            .map(|t| t.trim().to_owned()),
    )
}

/// `lb profile show [NAME]`: every profile (or one) with its axes and pools.
///
/// # Errors
/// The API cannot be read, or there is no profile `name`.
pub fn profile_show(addr: SocketAddr, name: Option<&str>) -> Result<String, String> {
    let all = get_json(addr, "/api/profiles")?;
    let profiles = all.as_object().cloned().unwrap_or_default();
    if let Some(n) = name {
        if !profiles.contains_key(n) {
            return Err(no_profile(n, &profiles));
        }
    }
    let mut out = String::new();
    for (pname, p) in profiles
        .iter()
        .filter(|(k, _)| name.is_none_or(|n| n == *k))
    {
        let pools: Vec<&str> = p["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let _ = writeln!(
            out,
            "profile {pname} (pools: {})",
            if pools.is_empty() {
                "none".to_owned()
            } else {
                pools.join(", ")
            }
        );
        for (axis, v) in p.as_object().into_iter().flatten() {
            if axis == "pools" {
                continue;
            }
            let shown = if v.as_u64() == Some(0) {
                "0 (off)".to_owned()
            } else {
                v.to_string()
            };
            let _ = writeln!(out, "  {axis:<22} {shown}");
        }
    }
    Ok(out)
}

fn no_profile(name: &str, profiles: &Map<String, Value>) -> String {
    let names: Vec<&str> = profiles.keys().map(String::as_str).collect();
    format!(
        "no profile named `{name}`; allowed: {}",
        if names.is_empty() {
            "none (the config defines no [profile.NAME])".to_owned()
        } else {
            names.join(", ")
        }
    )
}

/// The profile `current` with `assignments` (`axis=value`) applied: a
/// value that is JSON (a number) is taken as such, anything else as a
/// string (`maxBufferSize=64KB`).
///
/// # Errors
/// An assignment is not `key=value`.
pub fn assign(current: &Value, assignments: &[String]) -> Result<Value, String> {
    let mut body: Map<String, Value> = current
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "pools")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for a in assignments {
        let (k, v) = a
            .split_once('=')
            .filter(|(k, _)| !k.trim().is_empty())
            .ok_or_else(|| {
                format!("`{a}` is not allowed; allowed: axis=value, e.g. maxConn=500")
            })?;
        let v = v.trim();
        let value = serde_json::from_str::<Value>(v)
            .ok()
            .filter(Value::is_number)
            .unwrap_or_else(|| Value::String(v.to_owned()));
        body.insert(k.trim().to_owned(), value);
    }
    Ok(Value::Object(body))
}

/// `lb profile set NAME key=value...`: the profile in force with the
/// assignments applied, sent with `PUT /api/profiles/NAME`; `lb` checks it
/// and answers. Returns what is in force after.
///
/// # Errors
/// The API cannot be reached, there is no such profile, or `lb` refuses
/// the change (its message says why).
pub fn profile_set(
    addr: SocketAddr,
    name: &str,
    assignments: &[String],
    token: Option<&str>,
) -> Result<String, String> {
    let all = get_json(addr, "/api/profiles")?;
    let profiles = all.as_object().cloned().unwrap_or_default();
    let current = profiles
        .get(name)
        .ok_or_else(|| no_profile(name, &profiles))?;
    let body = assign(current, assignments)?.to_string();
    let (code, reply) = request(
        addr,
        "PUT",
        &format!("/api/profiles/{name}"),
        token,
        Some(&body),
    )?;
    match code {
        200 => profile_show(addr, Some(name)),
        401 => Err(format!(
            "refused (401): {}; pass --token or --token-file, set LB_ADMIN_TOKEN, or run \
             as the user that can read {}",
            error_of(&reply),
            crate::instance::admin_token_path("<instance>").display()
        )),
        _ => Err(format!("refused ({code}): {}", error_of(&reply))),
    }
}

/// One frame of `lb top` from `/api/status` now and `prev` (`dt` seconds
/// before; None for the first frame): per frontend requests, rate, open
/// connections and refusals (new ones since the last frame), per pool
/// `maxConn` use and queue, backends up, per CPU handshakes and gate
/// refusals.
#[must_use]
pub fn top_frame(now: &Value, prev: Option<&Value>, dt: f64) -> String {
    let mut out = String::new();
    let rate = |path: &dyn Fn(&Value) -> u64| -> String {
        match prev {
            Some(p) if dt > 0.0 => {
                #[allow(clippy::cast_precision_loss)]
                let per_s = path(now).saturating_sub(path(p)) as f64 / dt;
                format!("{per_s:.0}/s")
            }
            _ => "-".to_owned(),
        }
    };
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "lb top  accounting {}  global maxConn {}/{}",
        now["accounting"].as_str().unwrap_or("?"),
        n(&now["global"]["active"]),
        limit(&now["global"]["limit"])
    );
    let _ = writeln!(
        out,
        "\n{:<14} {:>10} {:>9} {:>13}  refusals (new / total) by level/axis",
        "FRONTEND", "reqs/conns", "rate", "conns/limit"
    );
    let frontends = now["frontends"].as_array().cloned().unwrap_or_default();
    for (i, f) in frontends.iter().enumerate() {
        let name = f["name"].as_str().unwrap_or("?");
        // HTTP counts requests, TCP connections.
        let key = if f["mode"] == "tcp" {
            "accepted"
        } else {
            "requests"
        };
        let requests = |s: &Value| n(&s["frontends"][i][key]);
        let mut refusals = Vec::new();
        for (key, total) in f["refused"].as_object().into_iter().flatten() {
            let before = prev.map_or(0, |p| n(&p["frontends"][i]["refused"][key]));
            refusals.push(format!(
                "{key} {} / {}",
                n(total).saturating_sub(before),
                n(total)
            ));
        }
        let _ = writeln!(
            out,
            "{name:<14} {:>10} {:>9} {:>13}  {}",
            requests(now),
            rate(&requests),
            format!(
                "{}/{}",
                n(&f["conns"]["active"]),
                limit(&f["conns"]["limit"])
            ),
            if refusals.is_empty() {
                "none".to_owned()
            } else {
                refusals.join(", ")
            }
        );
    }
    let _ = writeln!(
        out,
        "\n{:<14} {:>13} {:>7} {:>11}",
        "POOL", "maxConn", "queue", "backends up"
    );
    for p in now["pools"].as_array().into_iter().flatten() {
        let backends = p["backends"].as_array().cloned().unwrap_or_default();
        let up = backends.iter().filter(|b| b["up"] == true).count();
        let _ = writeln!(
            out,
            "{:<14} {:>13} {:>7} {:>11}",
            p["name"].as_str().unwrap_or("?"),
            format!(
                "{}/{}",
                n(&p["conns"]["active"]),
                limit(&p["conns"]["limit"])
            ),
            n(&p["conns"]["queued"]),
            format!("{up}/{}", backends.len())
        );
    }
    let _ = writeln!(
        out,
        "\n{:<6} {:>10} {:>10} {:>8} {:>12} {:>9}",
        "CPU", "full", "resumed", "failed", "gateRefused", "hs rate"
    );
    let workers = now["workers"].as_array().cloned().unwrap_or_default();
    for (i, w) in workers.iter().enumerate() {
        let t = &w["tls"];
        let handshakes = |s: &Value| {
            let t = &s["workers"][i]["tls"];
            n(&t["full"]) + n(&t["resumedTls12"]) + n(&t["resumedTls13"])
        };
        let _ = writeln!(
            out,
            "{:<6} {:>10} {:>10} {:>8} {:>12} {:>9}",
            w["cpu"]
                .as_u64()
                .map_or_else(|| format!("w{i}"), |c| c.to_string()),
            n(&t["full"]),
            n(&t["resumedTls12"]) + n(&t["resumedTls13"]),
            n(&t["failed"]),
            n(&t["gateRefused"]),
            rate(&handshakes)
        );
    }
    out
}

fn limit(v: &Value) -> String {
    match v.as_u64() {
        Some(0) | None => "off".to_owned(),
        Some(l) => l.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn assignments_keep_the_other_axes_and_type_their_values() {
        let current = json!({"maxConn": 100, "maxSessRate": 0, "pools": ["a"]});
        let next = assign(
            &current,
            &["maxSessRate=50".to_owned(), "maxBufferSize=64KB".to_owned()],
        )
        .unwrap();
        assert_eq!(
            next,
            json!({"maxConn": 100, "maxSessRate": 50, "maxBufferSize": "64KB"})
        );
        let e = assign(&current, &["maxConn".to_owned()]).unwrap_err();
        assert!(e.contains("allowed: axis=value"), "{e}");
    }

    #[test]
    fn a_top_frame_shows_rates_and_new_refusals() {
        let at = |requests: u64, refused: u64| {
            json!({
                "accounting": "process",
                "global": {"limit": 0, "active": 1},
                "frontends": [{"name": "web", "requests": requests,
                    "conns": {"limit": 10, "active": 2},
                    "refused": {"pool/maxConn": refused}}],
                "pools": [{"name": "api", "conns": {"limit": 5, "active": 5, "queued": 3},
                    "backends": [{"up": true}, {"up": false}]}],
                "workers": [{"cpu": 0, "tls": {"full": 4, "resumedTls13": 6, "gateRefused": 1}}]
            })
        };
        let frame = top_frame(&at(300, 7), Some(&at(100, 2)), 2.0);
        assert!(frame.contains("100/s"), "{frame}");
        assert!(frame.contains("pool/maxConn 5 / 7"), "{frame}");
        assert!(frame.contains("5/5"), "{frame}");
        assert!(frame.contains("1/2"), "backends up: {frame}");
        assert!(top_frame(&at(1, 0), None, 0.0).contains('-'));
    }
}
