//! The configuration file: its shape (every key documented where it is
//! declared), parsing, and validation.
//!
//! `Config::load` reads TOML into these structs with unknown keys refused
//! (`deny_unknown_fields`) and value types and ranges checked while
//! deserializing, then `validate` checks what needs the whole file: that
//! names resolve, that no two frontends share a VIP, that interfaces exist.
//! Every error names the file, line, key, the value and what is allowed; all
//! of them are reported at once. `docs/configuration.md` is the reference.

mod error;
mod pool;
pub mod tls;
pub mod values;

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

pub use error::{ConfigError, Problem};
use error::{Seg, Source};
pub use pool::{
    Algorithm, BackendProtocol, BackendSpec, Health, HealthKind, Pool, PoolTimeouts, Queue, Sticky,
};
pub use tls::{Gate, SniCert, Tls, TlsOptions, TlsVersion, UnknownSni};
use values::{ConfigDuration, Listen, Ranged, RangedSize};

/// Upper bound of every per-second rate axis. The XDP buckets keep time in
/// nanoseconds per token, so this keeps their rounding error under 0.5%.
pub const MAX_RATE: u64 = 10_000_000;

/// A whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub global: Global,
    /// The XDP data plane.
    #[serde(default)]
    pub xdp: Xdp,
    /// The admin listener (metrics, status page, API).
    #[serde(default)]
    pub admin: Option<Admin>,
    /// A farm of `lb` nodes sharing state through Redis.
    #[serde(default)]
    pub cluster: Option<Cluster>,
    /// Listeners (VIPs); each forwards to one pool.
    #[serde(default)]
    pub frontend: Vec<Frontend>,
    /// Backend pools.
    #[serde(default)]
    pub pool: Vec<Pool>,
    /// Named limit profiles, bound to pools by name.
    #[serde(default)]
    pub profile: BTreeMap<String, Limits>,
    /// The file this was read from (not a key).
    #[serde(skip)]
    pub path: PathBuf,
}

/// `[global]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Global {
    /// Instance name: maps are pinned under `/sys/fs/bpf/lb/<instance>/` and
    /// only one `lb run` per name may run. Letters, digits, `-`, `_`; 1 to 64.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Proxy worker threads; 0 = one per CPU.
    #[serde(default)]
    pub workers: Ranged<0, 1024>,
    /// Limits for the whole process; an absent axis is not limited here.
    #[serde(default)]
    pub limits: Limits,
    /// On SIGTERM/SIGINT, how long in-flight requests and connections may
    /// take to finish after `lb` stops accepting (default 30s).
    #[serde(default = "default_drain")]
    pub drain_timeout: ConfigDuration,
    /// Whether a refusal by a limit (HTTP 503) carries the header
    /// `lb-limit: <level>/<axis>` naming it (default true).
    #[serde(default = "default_true")]
    pub limit_header: bool,
}

const fn default_true() -> bool {
    true
}

impl Default for Global {
    fn default() -> Self {
        Self {
            instance: default_instance(),
            workers: Ranged(0),
            limits: Limits::default(),
            drain_timeout: default_drain(),
            limit_header: true,
        }
    }
}

fn default_drain() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

fn default_instance() -> String {
    "default".to_owned()
}

/// How the XDP program is attached (`[xdp] mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode; fails where the driver lacks XDP support.
    Driver,
    /// Generic (skb) mode: works on any interface, including `lo`.
    Skb,
    /// Let the kernel pick: native where supported, else generic.
    #[default]
    Auto,
    /// Attach nothing; every limit is left to userspace.
    Off,
}

/// What XDP does with a SYN when the pool is saturated and its queue full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// Let the proxy answer (503 / close).
    #[default]
    Pass,
    /// Answer the SYN with a RST.
    Rst,
    /// Drop the SYN.
    Drop,
}

/// One interface name or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Ifaces {
    /// `iface = "eth0"`.
    One(String),
    /// `iface = ["eth0", "eth1"]`.
    Many(Vec<String>),
}

/// `[xdp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Xdp {
    /// Interface(s) to attach to. Required unless `mode = "off"`.
    #[serde(default)]
    pub iface: Option<Ifaces>,
    /// `driver | skb | auto | off`; default `auto`.
    #[serde(default)]
    pub mode: XdpMode,
    /// SYNs per second admitted from one source address (IPv4 /32, IPv6
    /// /64); 0 (the default) = no per-source limit.
    #[serde(default)]
    pub source_syn_rate: Ranged<0, MAX_RATE>,
    /// SYNs one source may send at once before its rate applies; default
    /// twice `sourceSynRate`. At least 1 when the rate is on.
    #[serde(default)]
    pub source_syn_burst: Option<Ranged<0, MAX_RATE>>,
    /// Pool saturated and queue full: `pass | rst | drop`; default `pass`.
    #[serde(default)]
    pub overflow: Overflow,
    /// Seconds a source stays trusted after its last completed TCP
    /// handshake; default 300, 0 = off. While on, half of each
    /// `maxConnRate` burst (global, frontend, pool) is kept for trusted
    /// sources: a SYN flood from spoofed addresses gets at most the other
    /// half, and clients that connected before keep connecting.
    #[serde(default = "default_trust_seconds")]
    pub trust_seconds: Ranged<0, MAX_TRUST_SECONDS>,
}

/// Longest `[xdp] trustSeconds`: a day.
pub const MAX_TRUST_SECONDS: u64 = 86_400;

fn default_trust_seconds() -> Ranged<0, MAX_TRUST_SECONDS> {
    Ranged(300)
}

impl Default for Xdp {
    fn default() -> Self {
        Self {
            iface: None,
            mode: XdpMode::Auto,
            source_syn_rate: Ranged(0),
            source_syn_burst: None,
            overflow: Overflow::Pass,
            trust_seconds: default_trust_seconds(),
        }
    }
}

impl Xdp {
    /// The configured interfaces, as a list.
    #[must_use]
    pub fn ifaces(&self) -> Vec<String> {
        match &self.iface {
            None => Vec::new(),
            Some(Ifaces::One(s)) => vec![s.clone()],
            Some(Ifaces::Many(v)) => v.clone(),
        }
    }

    /// The per-source burst in effect.
    #[must_use]
    pub fn source_burst(&self) -> u64 {
        self.source_syn_burst
            .map_or(self.source_syn_rate.0.saturating_mul(2), |b| b.0)
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Admin {
    /// Address of the admin listener; default `127.0.0.1:9100`.
    #[serde(default)]
    pub listen: Option<Listen>,
    /// Bearer token needed for changes. With neither this nor `tokenFile`,
    /// `lb` makes one at start in `/run/lb/<instance>.admin.token` (0600).
    /// Required when `listen` is not a loopback address.
    #[serde(default)]
    pub token: Option<String>,
    /// TLS for the admin listener: `{ cert, key }` (required on a
    /// non-loopback `listen`).
    #[serde(default)]
    pub tls: Option<Tls>,
    /// File holding the token on its first line (instead of `token`); must
    /// not be readable by group or others.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    /// Redis URL, `redis://[:PASSWORD@]host:port[/db]`: the farm's TLS
    /// session cache and, for frontends without a `ticketKeys` file, its
    /// ticket keys.
    pub redis: String,
    /// How often the farm rotates its ticket keys in Redis (one node does
    /// it for all); `0s`: only by hand (`lb tls rotate-keys --redis`).
    /// Default 1h; allowed 0 or 1s to 30d.
    #[serde(default = "default_ticket_rotation")]
    pub ticket_rotation: ConfigDuration,
    /// Ticket keys kept in Redis, the encrypting one included (1 to 16,
    /// default 3): a ticket resumes for about `(ticketKeep − 1) ×
    /// ticketRotation`.
    #[serde(default = "default_ticket_keep")]
    pub ticket_keep: Ranged<1, 16>,
}

fn default_ticket_rotation() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(3600))
}
const fn default_ticket_keep() -> Ranged<1, 16> {
    Ranged(3)
}

/// Protocol a frontend speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP/1.1 and HTTP/2.
    #[default]
    Http,
    /// Plain TCP.
    Tcp,
}

/// `[[frontend]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Frontend {
    /// Unique name, used in counters and logs.
    pub name: String,
    /// The VIP, `IP:PORT`; XDP enforces on SYNs to it.
    pub listen: Listen,
    /// `http | tcp`; default `http`.
    #[serde(default)]
    pub mode: Mode,
    /// Terminate TLS with this certificate; absent: plain.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// TLS details (tickets, cache, handshake gate, SNI, versions).
    #[serde(default)]
    pub tls_options: Option<TlsOptions>,
    /// The pool it forwards to (a `[[pool]]` name).
    pub pool: String,
    /// Limits for this frontend; an absent axis is not limited here.
    #[serde(default)]
    pub limits: Limits,
    /// Client-side timeouts.
    #[serde(default)]
    pub timeouts: FrontendTimeouts,
}

/// `timeouts = { clientIdle, headerRead }` of a frontend.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FrontendTimeouts {
    /// A client connection with no request in flight and no bytes arriving
    /// for this long is closed (HTTP keep-alive, TCP idle); default 60s.
    #[serde(default = "default_client_idle")]
    pub client_idle: ConfigDuration,
    /// HTTP: a request head not complete this long after its first byte is
    /// answered with 408 and the connection closed; default 10s.
    #[serde(default = "default_header_read")]
    pub header_read: ConfigDuration,
}

fn default_client_idle() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}
fn default_header_read() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

impl Default for FrontendTimeouts {
    fn default() -> Self {
        Self {
            client_idle: default_client_idle(),
            header_read: default_header_read(),
        }
    }
}

/// The eight axes of a limit profile plus the handshake gate. In a
/// `[profile.NAME]` an absent axis takes its default; in `[global.limits]`
/// and `[frontend.limits]` an absent axis is not limited at that level. 0
/// disables an axis everywhere. Read them through [`crate::limits`]
/// (`Limits::profile`, `Limits::level`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Concurrent connections (default 20000).
    pub max_conn: Option<Ranged<0, 1_000_000>>,
    /// Backend connect attempts after the first (default 3).
    pub max_retries: Option<Ranged<0, 1000>>,
    /// Connections accepted per second, by pacing (default 5000).
    pub rate_limit_sessions: Option<Ranged<0, MAX_RATE>>,
    /// New connections (SYNs) per second, enforced in XDP (default 10000).
    pub max_conn_rate: Option<Ranged<0, MAX_RATE>>,
    /// New sessions per second (default 10000).
    pub max_sess_rate: Option<Ranged<0, MAX_RATE>>,
    /// Concurrent TLS connections (default 5000).
    pub max_ssl_conn: Option<Ranged<0, 1_000_000>>,
    /// Full TLS handshakes per second (default 2000).
    pub max_ssl_rate: Option<Ranged<0, MAX_RATE>>,
    /// Buffer per connection and direction, 16KB..=256KB (default 128KB).
    pub max_buffer_size: Option<RangedSize<{ 16 * 1024 }, { 256 * 1024 }>>,
    /// TLS handshakes in flight per CPU (default 256).
    pub max_active_handshakes: Option<Ranged<0, 1_000_000>>,
}

impl Config {
    /// Reads, parses and validates a file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] if the file cannot be read, [`ConfigError::Invalid`]
    /// with every problem found otherwise.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is used in messages.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every problem found.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let source = Source::new(text);
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            problems: vec![serde_problem(&source, &e)],
        })?;
        config.path = path.to_owned();
        let problems = config.validate(&source);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// The index of the pool a frontend forwards to (valid after `load`).
    #[must_use]
    pub fn pool_index(&self, frontend: &Frontend) -> Option<usize> {
        self.pool.iter().position(|p| p.name == frontend.pool)
    }

    /// The profile of a pool; the built-in defaults when it names none.
    #[must_use]
    pub fn profile_of(&self, pool: &Pool) -> Limits {
        pool.profile
            .as_ref()
            .and_then(|n| self.profile.get(n))
            .cloned()
            .unwrap_or_default()
    }

    /// Everything that needs the whole file to check.
    fn validate(&self, src: &Source<'_>) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |path: &[Seg<'_>], key: String, message: String| {
            out.push(Problem {
                line: src.line_of_path(path),
                key,
                message,
            });
        };

        let inst = &self.global.instance;
        if inst.is_empty()
            || inst.len() > 64
            || !inst
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problem(
                &[Seg::Key("global"), Seg::Key("instance")],
                "global.instance".into(),
                format!("`{inst}` is not allowed; use 1 to 64 letters, digits, `-` or `_`"),
            );
        }

        if let Some(a) = &self.admin {
            let has_token = a.token.is_some() || a.token_file.is_some();
            if a.token.is_some() && a.token_file.is_some() {
                problem(
                    &[Seg::Key("admin"), Seg::Key("tokenFile")],
                    "admin.tokenFile".into(),
                    "set together with admin.token; allowed: one of them".into(),
                );
            }
            if let Some(l) = a.listen.filter(|l| !l.0.ip().is_loopback()) {
                if !has_token || a.tls.is_none() {
                    problem(
                        &[Seg::Key("admin"), Seg::Key("listen")],
                        "admin.listen".into(),
                        format!(
                            "`{}` is not a loopback address, and {}: anyone who reaches it \
                             could change limits or read the token on the wire; allowed: a \
                             loopback address (127.0.0.1, ::1), or admin.token (or \
                             admin.tokenFile) with admin.tls = {{ cert, key }}",
                            l.0,
                            match (has_token, a.tls.is_some()) {
                                (false, false) => "neither a token nor TLS is set",
                                (false, true) => "no token is set",
                                _ => "no TLS is set",
                            }
                        ),
                    );
                }
            }
        }
        if let Some(c) = &self.cluster {
            let rotation = c.ticket_rotation.0;
            if !rotation.is_zero()
                && !(Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3600))
                    .contains(&rotation)
            {
                problem(
                    &[Seg::Key("cluster"), Seg::Key("ticketRotation")],
                    "cluster.ticketRotation".into(),
                    format!("{rotation:?} is not allowed; allowed: 0s (by hand only) or 1s to 30d"),
                );
            }
        }

        let ifaces = self.xdp.ifaces();
        if self.xdp.mode != XdpMode::Off {
            if ifaces.is_empty() && !self.frontend.is_empty() {
                problem(
                    &[Seg::Key("xdp")],
                    "xdp.iface".into(),
                    "missing; name the interface(s) to attach to, or set mode = \"off\"".into(),
                );
            }
            for (i, name) in ifaces.iter().enumerate() {
                if !iface_exists(name) {
                    problem(
                        &[Seg::Key("xdp"), Seg::Key("iface"), Seg::Index(i)],
                        "xdp.iface".into(),
                        format!(
                            "interface `{name}` does not exist; allowed: an existing interface ({})",
                            list_ifaces().join(", ")
                        ),
                    );
                }
            }
        }
        if self.xdp.source_syn_rate.0 > 0 && self.xdp.source_burst() == 0 {
            problem(
                &[Seg::Key("xdp"), Seg::Key("sourceSynBurst")],
                "xdp.sourceSynBurst".into(),
                "0 with sourceSynRate on would drop every SYN; allowed 1..=10000000".into(),
            );
        }

        let mut names = HashSet::new();
        let mut vips: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for (i, f) in self.frontend.iter().enumerate() {
            let at = |k| [Seg::Key("frontend"), Seg::Index(i), Seg::Key(k)];
            if !names.insert(f.name.as_str()) {
                problem(
                    &at("name"),
                    format!("frontend[{i}].name"),
                    format!(
                        "`{}` is used by another frontend; names must be unique",
                        f.name
                    ),
                );
            }
            if let Some(other) = vips.insert(f.listen.0, &f.name) {
                problem(
                    &at("listen"),
                    format!("frontend[{i}].listen"),
                    format!(
                        "`{}` is already the listen address of frontend `{other}`; \
                         each address and port may have one frontend",
                        f.listen.0
                    ),
                );
            }
            self.validate_tls(i, f, &mut problem);
            if !self.pool.iter().any(|p| p.name == f.pool) {
                problem(
                    &at("pool"),
                    format!("frontend[{i}].pool"),
                    format!(
                        "no pool named `{}`; allowed: {}",
                        f.pool,
                        one_of(self.pool.iter().map(|p| p.name.as_str()))
                    ),
                );
            }
        }
        if self.frontend.len() > lb_common::MAX_FRONTENDS as usize {
            problem(
                &[Seg::Key("frontend")],
                "frontend".into(),
                format!(
                    "{} frontends; at most {} are allowed",
                    self.frontend.len(),
                    lb_common::MAX_FRONTENDS
                ),
            );
        }

        let mut pool_names = HashSet::new();
        for (i, p) in self.pool.iter().enumerate() {
            let at = |k| [Seg::Key("pool"), Seg::Index(i), Seg::Key(k)];
            if !pool_names.insert(p.name.as_str()) {
                problem(
                    &at("name"),
                    format!("pool[{i}].name"),
                    format!("`{}` is used by another pool; names must be unique", p.name),
                );
            }
            self.validate_pool(i, p, &mut problem);
            if let Some(prof) = &p.profile {
                if !self.profile.contains_key(prof) {
                    problem(
                        &at("profile"),
                        format!("pool[{i}].profile"),
                        format!(
                            "no profile named `{prof}`; allowed: {}",
                            one_of(self.profile.keys().map(String::as_str))
                        ),
                    );
                }
            }
        }
        if self.pool.len() > lb_common::MAX_POOLS as usize {
            problem(
                &[Seg::Key("pool")],
                "pool".into(),
                format!(
                    "{} pools; at most {} are allowed",
                    self.pool.len(),
                    lb_common::MAX_POOLS
                ),
            );
        }
        out.sort_by_key(|p| p.line);
        out
    }
}

impl Config {
    /// What one pool needs checked beyond its own types.
    fn validate_tls(
        &self,
        i: usize,
        f: &Frontend,
        problem: &mut impl FnMut(&[Seg<'_>], String, String),
    ) {
        self.validate_farm_tickets(f, problem);
        let Some(o) = &f.tls_options else {
            return;
        };
        let at = |k| {
            [
                Seg::Key("frontend"),
                Seg::Index(i),
                Seg::Key("tlsOptions"),
                Seg::Key(k),
            ]
        };
        if f.tls.is_none() {
            problem(
                &[Seg::Key("frontend"), Seg::Index(i), Seg::Key("tlsOptions")],
                format!("frontend[{i}].tlsOptions"),
                "set, but the frontend has no `tls = { cert, key }`: add it, or remove tlsOptions"
                    .into(),
            );
        }
        for (j, s) in o.sni.iter().enumerate() {
            if !tls::valid_sni_pattern(&s.name) {
                problem(
                    &at("sni"),
                    format!("frontend[{i}].tlsOptions.sni[{j}].name"),
                    format!(
                        "`{}` is not allowed; use a DNS name (letters, digits, `-`, `.`) or \
                         `*.` and one",
                        s.name
                    ),
                );
            }
        }
        let life = o.session_cache.lifetime.0;
        if life < Duration::from_secs(1) || life > Duration::from_secs(7 * 24 * 3600) {
            problem(
                &at("sessionCache"),
                format!("frontend[{i}].tlsOptions.sessionCache.lifetime"),
                format!(
                    "{life:?} is not allowed; allowed: 1s to 7d (it is also the ticket lifetime)"
                ),
            );
        }
        if o.versions.is_empty() {
            problem(
                &at("versions"),
                format!("frontend[{i}].tlsOptions.versions"),
                "empty; allowed: \"1.2\", \"1.3\" or both".into(),
            );
        }
        let known = tls::known_suites();
        for name in o.cipher_suites.iter().flatten() {
            if !known.contains(name) {
                problem(
                    &at("cipherSuites"),
                    format!("frontend[{i}].tlsOptions.cipherSuites"),
                    format!(
                        "unknown cipher suite `{name}`; allowed: {}",
                        known.join(", ")
                    ),
                );
            }
        }
        let groups = tls::known_groups();
        for name in o.groups.iter().flatten() {
            if !groups.contains(name) {
                problem(
                    &at("groups"),
                    format!("frontend[{i}].tlsOptions.groups"),
                    format!("unknown group `{name}`; allowed: {}", groups.join(", ")),
                );
            }
        }
    }

    /// In cluster mode, a frontend that takes the farm's ticket keys must
    /// not announce tickets that outlive the keys.
    fn validate_farm_tickets(
        &self,
        f: &Frontend,
        problem: &mut impl FnMut(&[Seg<'_>], String, String),
    ) {
        let (Some(c), Some(_)) = (&self.cluster, &f.tls) else {
            return;
        };
        let at = [Seg::Key("cluster"), Seg::Key("ticketRotation")];
        let rotation = c.ticket_rotation.0;
        let defaults = tls::TlsOptions::default();
        let o = f.tls_options.as_ref().unwrap_or(&defaults);
        if rotation.is_zero() || o.ticket_keys.is_some() {
            return;
        }
        let life = o.session_cache.lifetime.0;
        let kept = rotation
            .saturating_mul(u32::try_from(c.ticket_keep.0.saturating_sub(1)).unwrap_or(u32::MAX));
        if life > kept {
            problem(
                &at,
                "cluster.ticketRotation".into(),
                format!(
                    "frontend `{}` announces tickets valid for {life:?} \
                     (tlsOptions.sessionCache.lifetime), but with ticketRotation = {rotation:?} \
                     and ticketKeep = {} a ticket is only sure to resume for {kept:?}; allowed: \
                     (ticketKeep - 1) x ticketRotation >= every TLS frontend's lifetime (raise \
                     ticketKeep or ticketRotation, lower the lifetime, or give the frontend a \
                     ticketKeys file)",
                    f.name, c.ticket_keep.0
                ),
            );
        }
    }

    fn validate_pool(
        &self,
        i: usize,
        p: &Pool,
        problem: &mut impl FnMut(&[Seg<'_>], String, String),
    ) {
        let at = |k| [Seg::Key("pool"), Seg::Index(i), Seg::Key(k)];
        let mut seen = HashSet::new();
        for (j, b) in p.backends.iter().enumerate() {
            if !seen.insert(b.address()) {
                problem(
                    &[
                        Seg::Key("pool"),
                        Seg::Index(i),
                        Seg::Key("backends"),
                        Seg::Index(j),
                    ],
                    format!("pool[{i}].backends[{j}]"),
                    format!(
                        "`{}` is listed twice; each backend address once",
                        b.address()
                    ),
                );
            }
        }
        let size = p.maglev_table_size.0;
        if !crate::pool::balance::is_prime(size) {
            problem(
                &at("maglevTableSize"),
                format!("pool[{i}].maglevTableSize"),
                format!("{size} is not prime; allowed: a prime in 7..=1000003, such as 65537"),
            );
        }
        if let Some(h) = &p.hash_header {
            if p.algorithm != Algorithm::Maglev {
                problem(
                    &at("hashHeader"),
                    format!("pool[{i}].hashHeader"),
                    "is used only with algorithm = \"maglev\"; remove it or set the algorithm"
                        .into(),
                );
            }
            if !is_token(h) {
                problem(
                    &at("hashHeader"),
                    format!("pool[{i}].hashHeader"),
                    format!(
                        "`{h}` is not a header name; allowed: letters, digits and !#$%&'*+-.^_`|~"
                    ),
                );
            }
        }
        if p.sticky == Sticky::Cookie {
            if !is_token(&p.sticky_cookie) {
                problem(
                    &at("stickyCookie"),
                    format!("pool[{i}].stickyCookie"),
                    format!(
                        "`{}` is not a cookie name; allowed: letters, digits and !#$%&'*+-.^_`|~",
                        p.sticky_cookie
                    ),
                );
            }
            for f in self
                .frontend
                .iter()
                .filter(|f| f.pool == p.name && f.mode == Mode::Tcp)
            {
                problem(
                    &at("sticky"),
                    format!("pool[{i}].sticky"),
                    format!(
                        "\"cookie\" needs HTTP but tcp frontend `{}` uses this pool; allowed there: \"source\" or \"none\"",
                        f.name
                    ),
                );
            }
        }
        if let Some(h) = &p.health {
            if h.kind == HealthKind::Http && !h.path.starts_with('/') {
                problem(
                    &[
                        Seg::Key("pool"),
                        Seg::Index(i),
                        Seg::Key("health"),
                        Seg::Key("path"),
                    ],
                    format!("pool[{i}].health.path"),
                    format!(
                        "`{}` does not start with `/`; allowed: a path such as \"/healthz\"",
                        h.path
                    ),
                );
            }
            if h.timeout.0.is_zero() || h.interval.0.is_zero() {
                problem(
                    &[Seg::Key("pool"), Seg::Index(i), Seg::Key("health")],
                    format!("pool[{i}].health"),
                    "interval and timeout must be above 0".into(),
                );
            }
        }
    }
}

/// Whether `s` is an HTTP token (header or cookie name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn one_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if v.is_empty() {
        "none are defined".into()
    } else {
        v.join(", ")
    }
}

/// Turns a serde/TOML error into a problem with a line and the line's text
/// (which names the key).
fn serde_problem(src: &Source<'_>, e: &toml::de::Error) -> Problem {
    let line = e.span().map(|s| src.line_of(s.start));
    let key = line
        .map(|l| src.line_text(l).to_owned())
        .unwrap_or_default();
    Problem {
        line,
        key,
        message: e.message().trim().to_owned(),
    }
}

/// Whether a network interface of this name exists (in this namespace).
#[must_use]
pub fn iface_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

fn list_ifaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests;
