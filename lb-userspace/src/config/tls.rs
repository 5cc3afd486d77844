//! `tls = { cert, key }` and `[frontend.tlsOptions]`: what a frontend that
//! terminates TLS is configured with. The files are read when `lb` starts
//! (see [`crate::tls`]); here are their shapes, defaults and the checks that
//! need no file.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::values::{ConfigDuration, Ranged};

/// `tls = { cert, key }` of a frontend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// `[frontend.tlsOptions]`; every key is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsOptions {
    /// A ticket key file shared by the nodes of a farm (mode 0600; see
    /// `lb tls rotate-keys`). Absent: random keys of this process.
    #[serde(default)]
    pub ticket_keys: Option<PathBuf>,
    /// The session cache (TLS 1.2 session ids).
    #[serde(default)]
    pub session_cache: SessionCache,
    /// Over `maxActiveHandshakes`: `reject` (fatal alert at once) or `wait`.
    #[serde(default)]
    pub gate: Gate,
    /// A handshake not finished within this is aborted (default 10s).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: ConfigDuration,
    /// More certificates, chosen by SNI: exact names or `*.domain`.
    #[serde(default)]
    pub sni: Vec<SniCert>,
    /// A ClientHello whose SNI matches no certificate (or has none):
    /// `default` (the frontend's `tls` certificate) or `alert`.
    #[serde(default)]
    pub unknown_sni: UnknownSni,
    /// Protocol versions (default both).
    #[serde(default = "default_versions")]
    pub versions: Vec<TlsVersion>,
    /// Cipher suites by IANA name (`TLS13_AES_128_GCM_SHA256`,
    /// `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`, ...), in preference
    /// order. Absent: the provider's defaults.
    #[serde(default)]
    pub cipher_suites: Option<Vec<String>>,
    /// Key-exchange groups (`X25519`, `secp256r1`, `secp384r1`,
    /// `X25519MLKEM768`), in preference order. Absent: the defaults.
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// TLS 1.3 tickets sent after a full handshake (default 2).
    #[serde(default = "default_tickets")]
    pub tickets: Ranged<0, 16>,
}

impl Default for TlsOptions {
    fn default() -> Self {
        Self {
            ticket_keys: None,
            session_cache: SessionCache::default(),
            gate: Gate::default(),
            handshake_timeout: default_handshake_timeout(),
            sni: Vec::new(),
            unknown_sni: UnknownSni::default(),
            versions: default_versions(),
            cipher_suites: None,
            groups: None,
            tickets: default_tickets(),
        }
    }
}

fn default_handshake_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}
fn default_versions() -> Vec<TlsVersion> {
    vec![TlsVersion::V12, TlsVersion::V13]
}
const fn default_tickets() -> Ranged<0, 16> {
    Ranged(2)
}

/// `sessionCache = { size, lifetime }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCache {
    /// Sessions kept at most (0: no cache).
    #[serde(default = "default_cache_size")]
    pub size: Ranged<0, 10_000_000>,
    /// How long a session (and a ticket) may be resumed.
    #[serde(default = "default_cache_lifetime")]
    pub lifetime: ConfigDuration,
}

impl Default for SessionCache {
    fn default() -> Self {
        Self {
            size: default_cache_size(),
            lifetime: default_cache_lifetime(),
        }
    }
}

const fn default_cache_size() -> Ranged<0, 10_000_000> {
    Ranged(20_000)
}
fn default_cache_lifetime() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}

/// What the handshake gate does over `maxActiveHandshakes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gate {
    /// A fatal alert at once (as BIG-IP).
    #[default]
    Reject,
    /// The handshake waits for a slot (up to `handshakeTimeout`).
    Wait,
}

/// What a ClientHello gets when its SNI matches no certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSni {
    /// The frontend's own certificate.
    #[default]
    Default,
    /// A fatal alert.
    Alert,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "1.2")]
    V12,
    /// TLS 1.3.
    #[serde(rename = "1.3")]
    V13,
}

/// One `sni = [ { name, cert, key } ]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    /// A DNS name (`api.example.test`) or a wildcard (`*.example.test`,
    /// one label).
    pub name: String,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Whether `name` is an SNI pattern `lb` accepts: a DNS name of letters,
/// digits, `-` and `.`, optionally starting with `*.`.
#[must_use]
pub fn valid_sni_pattern(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The cipher suite names the provider knows.
#[must_use]
pub fn known_suites() -> Vec<String> {
    rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES
        .iter()
        .filter_map(|s| s.suite().as_str().map(str::to_owned))
        .collect()
}

/// The key-exchange group names the provider knows.
#[must_use]
pub fn known_groups() -> Vec<String> {
    rustls::crypto::aws_lc_rs::ALL_KX_GROUPS
        .iter()
        .map(|g| group_name(g.name()))
        .collect()
}

/// A group's config name.
#[must_use]
pub fn group_name(g: rustls::NamedGroup) -> String {
    format!("{g:?}")
}
