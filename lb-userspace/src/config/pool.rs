//! `[[pool]]`: backends, balancing, stickiness, health checks, timeouts and
//! the queue. Every field is documented where it is declared; defaults and
//! ranges are repeated in `docs/configuration.md`.

use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use super::values::{ConfigDuration, Listen, Ranged};

/// Pool balancing algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Smooth weighted round robin.
    #[default]
    Roundrobin,
    /// Fewest active connections (relative to weight).
    Leastconn,
    /// Maglev consistent hashing, keyed by source address or `hashHeader`.
    Maglev,
}

/// The protocol spoken to backends (HTTP frontends only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendProtocol {
    /// HTTP/1.1 with reusable keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 over cleartext (prior knowledge), one multiplexed connection
    /// per backend and worker.
    H2,
}

/// How a client keeps its backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sticky {
    /// No stickiness: every request or connection is balanced.
    #[default]
    None,
    /// HTTP: `lb` inserts a cookie (`stickyCookie`) naming the backend and
    /// sends requests carrying it to that backend while it is healthy.
    Cookie,
    /// A client address keeps the backend it was first given while that
    /// backend is healthy (a stick table, `stickyTable` entries).
    Source,
}

/// One backend: `"IP:PORT"` or `{ address = "IP:PORT", weight = 3 }`.
#[derive(Debug, Clone)]
pub enum BackendSpec {
    /// Weight 1.
    Address(Listen),
    /// With a weight.
    Weighted(WeightedBackend),
}

// By hand rather than `#[serde(untagged)]`, so an error inside the table
// (a weight out of range, an unknown key) reaches the user as itself.
impl<'de> Deserialize<'de> for BackendSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = BackendSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"IP:PORT\" or { address = \"IP:PORT\", weight = N }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<BackendSpec, E> {
                s.parse().map(BackendSpec::Address).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<BackendSpec, A::Error> {
                WeightedBackend::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(BackendSpec::Weighted)
            }
        }
        d.deserialize_any(V)
    }
}

/// `{ address, weight }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedBackend {
    /// `IP:PORT`.
    pub address: Listen,
    /// Relative share of new connections, 0..=1000 (default 1); 0 gives the
    /// backend no new connections (drain).
    #[serde(default = "one")]
    pub weight: Ranged<0, 1000>,
}

fn one() -> Ranged<0, 1000> {
    Ranged(1)
}

impl BackendSpec {
    /// The backend's address.
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        match self {
            Self::Address(l) => l.0,
            Self::Weighted(w) => w.address.0,
        }
    }

    /// The backend's weight.
    #[must_use]
    pub fn weight(&self) -> u32 {
        match self {
            Self::Address(_) => 1,
            // In range 0..=1000 by construction.
            Self::Weighted(w) => u32::try_from(w.weight.0).unwrap_or(u32::MAX),
        }
    }
}

/// `queue = { depth, timeout }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queue {
    /// Waiters at most; 0 = no queue.
    pub depth: Ranged<0, 1_000_000>,
    /// Longest wait.
    pub timeout: ConfigDuration,
}

/// Kind of health check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connect succeeds.
    #[default]
    Tcp,
    /// `GET path` answers with the expected status.
    Http,
}

/// `health = { kind, path, expect, interval, timeout, rise, fall }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Health {
    /// `tcp | http`; default `tcp`.
    #[serde(default)]
    pub kind: HealthKind,
    /// HTTP checks: the path requested (default `/`); must start with `/`.
    #[serde(default = "default_path")]
    pub path: String,
    /// HTTP checks: the `Host` header sent (default: the backend address).
    #[serde(default)]
    pub host: Option<String>,
    /// HTTP checks: the status that means healthy, 100..=599 (default 200).
    #[serde(default = "default_expect")]
    pub expect: Ranged<100, 599>,
    /// Time between checks of one backend (default 2s).
    #[serde(default = "default_interval")]
    pub interval: ConfigDuration,
    /// A check that takes longer fails (default 1s).
    #[serde(default = "default_check_timeout")]
    pub timeout: ConfigDuration,
    /// Consecutive passes that bring a down backend back (default 2), 1..=100.
    #[serde(default = "default_rise")]
    pub rise: Ranged<1, 100>,
    /// Consecutive failures that take an up backend down (default 3), 1..=100.
    #[serde(default = "default_fall")]
    pub fall: Ranged<1, 100>,
}

fn default_path() -> String {
    "/".into()
}
fn default_expect() -> Ranged<100, 599> {
    Ranged(200)
}
fn default_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}
fn default_check_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(1))
}
fn default_rise() -> Ranged<1, 100> {
    Ranged(2)
}
fn default_fall() -> Ranged<1, 100> {
    Ranged(3)
}

/// `timeouts = { connect, server }` of a pool.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PoolTimeouts {
    /// Backend TCP connect, per attempt (default 5s); a timeout counts as a
    /// failed connect and is retried on another backend.
    #[serde(default = "default_connect")]
    pub connect: ConfigDuration,
    /// HTTP: longest silence from a backend, waiting for the response head
    /// (then 504) or between body bytes (then the connection ends). TCP
    /// connections end on the frontend's `clientIdle` (no bytes either way)
    /// instead. Default 60s.
    #[serde(default = "default_server")]
    pub server: ConfigDuration,
}

fn default_connect() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}
fn default_server() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

impl Default for PoolTimeouts {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            server: default_server(),
        }
    }
}

/// `[[pool]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pool {
    /// Unique name.
    pub name: String,
    /// The limit profile (a `[profile.NAME]`); absent: every axis at its
    /// default.
    #[serde(default)]
    pub profile: Option<String>,
    /// `roundrobin | leastconn | maglev`; default `roundrobin`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Backends: `"IP:PORT"` or `{ address = "IP:PORT", weight = N }`.
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    /// `maglev`: the request header whose value is the key (HTTP frontends;
    /// a request without it is keyed by source address). Absent: the source
    /// address.
    #[serde(default)]
    pub hash_header: Option<String>,
    /// `maglev`: lookup table size, a prime in 7..=1000003 (default 65537).
    #[serde(default = "default_table")]
    pub maglev_table_size: Ranged<7, 1_000_003>,
    /// `none | cookie | source`; default `none`.
    #[serde(default)]
    pub sticky: Sticky,
    /// `sticky = "cookie"`: the cookie's name (default `lb_backend`).
    #[serde(default = "default_cookie")]
    pub sticky_cookie: String,
    /// `sticky = "source"`: client addresses remembered at most (default
    /// 100000); the least recently seen is forgotten first.
    #[serde(default = "default_table_entries")]
    pub sticky_table: Ranged<1, 10_000_000>,
    /// `http1 | h2`: protocol to the backends (default `http1`).
    #[serde(default)]
    pub protocol: BackendProtocol,
    /// The queue in front of `maxConn`.
    #[serde(default)]
    pub queue: Option<Queue>,
    /// Health checks; absent: backends are always considered up.
    #[serde(default)]
    pub health: Option<Health>,
    /// Backend timeouts.
    #[serde(default)]
    pub timeouts: PoolTimeouts,
}

fn default_table() -> Ranged<7, 1_000_003> {
    Ranged(65_537)
}
fn default_cookie() -> String {
    "lb_backend".into()
}
fn default_table_entries() -> Ranged<1, 10_000_000> {
    Ranged(100_000)
}
