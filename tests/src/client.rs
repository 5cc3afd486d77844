//! Real clients for the proxy tests: `curl` (one request, its status,
//! headers and body), `h2load` (a counted load), and the admin API's
//! `/api/status` read through curl. Plus free loopback ports.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr, TcpListener},
    process::Command,
    sync::{Mutex, PoisonError},
};

use anyhow::{bail, Context as _, Result};

/// A free TCP port on `ip` (bound, then released: tests run one at a time).
///
/// The kernel may hand the same ephemeral port to two binds in a row once
/// the first is released, so a process never gets a port twice: two
/// calls in one test always give two different addresses.
///
/// # Panics
/// Nothing can be bound on `ip`.
#[must_use]
pub fn free_addr(ip: &str) -> SocketAddr {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ip: IpAddr = ip.parse().expect("an IP address");
    let mut given = GIVEN.lock().unwrap_or_else(PoisonError::into_inner);
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let l = TcpListener::bind((ip, 0)).expect("binding port 0");
        let addr = l.local_addr().expect("local addr");
        if given.insert(addr.port()) {
            return addr;
        }
    }
    panic!("no port on {ip} this process has not been given already after 1000 binds");
}

/// An address where nothing listens (refused at once).
#[must_use]
pub fn dead_addr() -> SocketAddr {
    free_addr("127.0.0.1")
}

/// One HTTP exchange as curl saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// curl's exit code (0 = a response arrived).
    pub exit: i32,
    /// Status code (0 if none).
    pub status: u16,
    /// The status line's protocol, e.g. `HTTP/1.1` or `HTTP/2`.
    pub version: String,
    /// Response headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (lowercase).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `name=value` part of the `Set-Cookie` that sets cookie `name`.
    #[must_use]
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .filter_map(|(_, v)| v.split(';').next())
            .find(|kv| kv.split_once('=').is_some_and(|(k, _)| k.trim() == name))
    }

    /// Which test backend answered (`x-backend`).
    #[must_use]
    pub fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("")
    }

    /// Lines of the body that start with `prefix` (the test backend echoes
    /// request headers as `name: value`).
    #[must_use]
    pub fn echoed(&self, name: &str) -> Vec<&str> {
        let prefix = format!("{name}: ");
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect()
    }
}

/// `curl -s -i --max-time 20 ARGS... URL`, parsed.
///
/// # Errors
/// curl cannot be started.
pub fn curl(url: &str, args: &[&str]) -> Result<Reply> {
    curl_in(None, url, args)
}

/// [`curl`] run inside network namespace `ns`.
///
/// # Errors
/// curl cannot be started.
pub fn curl_in(ns: Option<&str>, url: &str, args: &[&str]) -> Result<Reply> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("curl");
            c
        }
        None => Command::new("curl"),
    };
    let out = cmd
        .args(["-s", "-i", "--max-time", "20"])
        .args(args)
        .arg(url)
        .output()
        .context("starting curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (mut head, mut body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // Interim answers (`100 Continue`) come first: the final head follows.
    while head
        .split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('1'))
    {
        match body.split_once("\r\n\r\n") {
            Some((h, b)) => (head, body) = (h, b),
            None => break,
        }
    }
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("").to_owned();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        exit: out.status.code().unwrap_or(-1),
        status,
        version,
        headers,
        body: body.to_owned(),
    })
}

/// The admin API's `/api/status`.
///
/// # Errors
/// curl failed or the answer is not JSON.
pub fn status(admin: SocketAddr) -> Result<serde_json::Value> {
    let r = curl(&format!("http://{admin}/api/status"), &[])?;
    if r.status != 200 {
        bail!("/api/status answered {} ({})", r.status, r.body);
    }
    serde_json::from_str(&r.body).with_context(|| format!("/api/status is not JSON: {}", r.body))
}

/// What h2load reported.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    /// Requests that got a response.
    pub succeeded: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Responses by class 2xx.
    pub status_2xx: u64,
}

/// `h2load ARGS URL` (add `--h1` for HTTP/1.1), its totals parsed.
///
/// # Errors
/// h2load cannot be started or printed no totals.
pub fn h2load(url: &str, args: &[&str]) -> Result<Load> {
    let out = Command::new("timeout")
        .args(["120", "h2load"])
        .args(args)
        .arg(url)
        .output()
        .context("starting h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let number_before = |line: &str, word: &str| -> Option<u64> {
        let i = line.find(word)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    let req = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .with_context(|| format!("h2load printed no totals:\n{text}"))?;
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or("");
    Ok(Load {
        succeeded: number_before(req, "succeeded").unwrap_or(0),
        failed: number_before(req, "failed").unwrap_or(0),
        status_2xx: number_before(codes, "2xx").unwrap_or(0),
    })
}

/// The frontend called `name` in an `/api/status` answer.
///
/// # Panics
/// There is none.
#[must_use]
pub fn frontend_in(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["frontends"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no frontend {name} in {status:#}"))
}

/// The backend at `addr` (in any pool) in an `/api/status` answer.
///
/// # Panics
/// There is none.
#[must_use]
pub fn backend_in(status: &serde_json::Value, addr: SocketAddr) -> serde_json::Value {
    status["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["backends"].as_array())
        .flatten()
        .find(|b| b["address"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no backend {addr} in {status:#}"))
}
