//! TLS termination: what a frontend with `tls = { cert, key }` serves.
//!
//! [`FrontendTls::build`] reads the frontend's certificates (refusing a
//! missing, unreadable or mismatched pair by file name), and makes one
//! rustls `ServerConfig` (aws-lc-rs provider) shared by every worker: so a
//! session cached or a ticket issued by one worker resumes on any other.
//! The handshake itself, with its per-CPU gate and the SSL limits, is run by
//! the proxy (`proxy::handshake`). Modules:
//! - [`certs`]: PEM loading, the SNI resolver, `lb cert gen`;
//! - [`tickets`]: ticket keys from a file shared by a farm, rotation;
//! - [`cache`]: the session cache (TLS 1.2 session ids);
//! - [`cluster`]: the session cache shared by a farm through Redis;
//! - [`farm`]: the ticket keys shared and rotated by a farm through Redis.

pub mod cache;
pub mod certs;
pub mod cluster;
pub mod farm;
#[cfg(test)]
pub(crate) mod testkit;
pub mod tickets;

use std::{path::PathBuf, sync::Arc, time::Duration};

use rustls::{crypto::aws_lc_rs as provider, ServerConfig};

use crate::config::{Config, Frontend, Gate, Mode, TlsOptions, TlsVersion, UnknownSni};

/// What keeps a frontend's TLS from starting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file is missing, unreadable or not PEM.
    #[error("{}: {what}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The key is not the certificate's.
    #[error("{} and {} do not match: {why}", cert.display(), key.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' words.
        why: String,
    },
    /// The ticket key file is refused.
    #[error(transparent)]
    Tickets(#[from] tickets::TicketKeyError),
    /// The versions, suites and groups do not make a usable configuration.
    #[error("frontend `{frontend}`: tlsOptions: {why}")]
    Options {
        /// The frontend.
        frontend: String,
        /// rustls' words.
        why: String,
    },
    /// `lb cert gen` failed.
    #[error("generating a certificate: {0}")]
    Generate(String),
}

/// A frontend's TLS, shared by all workers.
#[derive(Debug)]
pub struct FrontendTls {
    /// The rustls configuration.
    pub config: Arc<ServerConfig>,
    /// Over `maxActiveHandshakes`: reject or wait.
    pub gate: Gate,
    /// A handshake not finished in this is aborted.
    pub handshake_timeout: Duration,
    /// The session cache, if on.
    pub cache: Option<Arc<cache::SessionCache>>,
    /// The ticket keys: a file, the cluster's Redis, or this process's.
    pub tickets: Arc<tickets::Ticketer>,
    /// The certificates in force (replaced on SIGHUP).
    pub certs: Arc<certs::CertStore>,
}

/// A frontend's `tlsOptions`, or the defaults.
fn options(f: &Frontend) -> &TlsOptions {
    static DEFAULTS: std::sync::OnceLock<TlsOptions> = std::sync::OnceLock::new();
    f.tls_options
        .as_ref()
        .unwrap_or_else(|| DEFAULTS.get_or_init(TlsOptions::default))
}

/// Reads a frontend's certificates: its own and its `sni` entries.
fn resolver(tls: &crate::config::Tls, o: &TlsOptions) -> Result<certs::SniResolver, TlsError> {
    let own = certs::load(&tls.cert, &tls.key)?;
    let mut named = Vec::with_capacity(o.sni.len());
    for s in &o.sni {
        named.push((s.name.clone(), certs::load(&s.cert, &s.key)?));
    }
    let default = (o.unknown_sni == UnknownSni::Default).then(|| Arc::clone(&own));
    Ok(certs::SniResolver::new(named, Some(own), default))
}

impl FrontendTls {
    /// The TLS of frontend `f`, or None when it is plain.
    ///
    /// # Errors
    /// A certificate, key or ticket key file is refused, or the options do
    /// not make a configuration.
    pub fn build(f: &Frontend, farm: Option<&Farm>) -> Result<Option<Self>, TlsError> {
        let Some(tls) = &f.tls else {
            return Ok(None);
        };
        let o = options(f);
        let store = Arc::new(certs::CertStore::new(resolver(tls, o)?));

        let mut p = provider::default_provider();
        if let Some(names) = &o.cipher_suites {
            p.cipher_suites = names
                .iter()
                .filter_map(|n| {
                    provider::ALL_CIPHER_SUITES
                        .iter()
                        .find(|s| s.suite().as_str() == Some(n.as_str()))
                        .copied()
                })
                .collect();
        }
        if let Some(names) = &o.groups {
            p.kx_groups = names
                .iter()
                .filter_map(|n| {
                    provider::ALL_KX_GROUPS
                        .iter()
                        .find(|g| crate::config::tls::group_name(g.name()) == *n)
                        .copied()
                })
                .collect();
        }
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = o
            .versions
            .iter()
            .map(|v| match v {
                TlsVersion::V12 => &rustls::version::TLS12,
                TlsVersion::V13 => &rustls::version::TLS13,
            })
            .collect();
        let options = |e: rustls::Error| TlsError::Options {
            frontend: f.name.clone(),
            why: e.to_string(),
        };
        let mut sc = ServerConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(&versions)
            .map_err(options)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&store) as Arc<dyn rustls::server::ResolvesServerCert>);
        if f.mode == Mode::Http {
            sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        let lifetime = o.session_cache.lifetime.0;
        let backend = farm.map(|farm| {
            Arc::new(cluster::SessionBackend::new(
                Arc::clone(&farm.redis),
                &f.name,
            )) as Arc<dyn cache::Backend>
        });
        let cache = (o.session_cache.size.0 > 0 || backend.is_some()).then(|| {
            Arc::new(cache::SessionCache::with_backend(
                usize::try_from(o.session_cache.size.0).unwrap_or(usize::MAX),
                lifetime,
                backend,
            ))
        });
        sc.session_storage = match &cache {
            Some(c) => Arc::clone(c) as Arc<dyn rustls::server::StoresServerSessions>,
            None => Arc::new(rustls::server::NoServerSessionStorage {}),
        };
        let lifetime_s = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
        let tickets = match (&o.ticket_keys, farm) {
            (Some(path), _) => tickets::Ticketer::from_file(path, lifetime_s)?,
            (None, Some(farm)) => {
                let (source, keys) =
                    farm::FarmKeys::open(Arc::clone(&farm.redis), farm.rotation, farm.keep)?;
                tickets::Ticketer::new(
                    Box::new(source),
                    keys,
                    lifetime_s,
                    tickets::DEFAULT_CHECK_INTERVAL,
                )?
            }
            (None, None) => {
                // Like rustls' own ticketer, with counters: a key of this
                // process, replaced at least hourly.
                let every = lifetime.max(Duration::from_secs(3600));
                let (source, keys) = tickets::OwnKeys::new(every)?;
                tickets::Ticketer::new(
                    Box::new(source),
                    keys,
                    lifetime_s,
                    tickets::DEFAULT_CHECK_INTERVAL,
                )?
            }
        };
        sc.ticketer = Arc::clone(&tickets) as Arc<dyn rustls::server::ProducesTickets>;
        sc.send_tls13_tickets = usize::try_from(o.tickets.0).unwrap_or(2);
        Ok(Some(Self {
            config: Arc::new(sc),
            gate: o.gate,
            handshake_timeout: o.handshake_timeout.0,
            cache,
            tickets,
            certs: store,
        }))
    }

    /// Reads frontend `f`'s certificate files (its `tls` and `sni`
    /// entries) into a resolver, without putting it in force; None for a
    /// plain frontend.
    ///
    /// # Errors
    /// A file is refused.
    pub fn read_certs(f: &Frontend) -> Result<Option<certs::SniResolver>, TlsError> {
        let Some(tls) = &f.tls else {
            return Ok(None);
        };
        resolver(tls, options(f)).map(Some)
    }

    /// Puts certificates read by [`Self::read_certs`] in force for new
    /// handshakes; sessions, tickets and connections stay.
    pub fn put_certs(&self, r: certs::SniResolver) {
        self.certs.replace(r);
    }
}

/// Cluster mode: the Redis every frontend shares sessions and ticket keys
/// through, and how the farm rotates the keys.
#[derive(Debug)]
pub struct Farm {
    /// The cluster's Redis.
    pub redis: Arc<cluster::Redis>,
    /// `[cluster] ticketRotation` (zero: by hand only).
    pub rotation: Duration,
    /// `[cluster] ticketKeep`.
    pub keep: usize,
}

thread_local! {
    /// Whether the ClientHello processed on this thread offered a session
    /// to resume.
    static OFFERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Notes that the ClientHello being processed on this thread offers a
/// session to resume (rustls asked for a ticket's or a session id's
/// session).
pub(crate) fn note_resumption_offer() {
    OFFERED.with(|o| o.set(true));
}

/// Whether a ClientHello processed on this thread since the last call
/// offered a session to resume; resets. Call it before and after rustls
/// processes a ClientHello (synchronously): a full handshake after an offer
/// is a resumption miss.
pub fn take_resumption_offer() -> bool {
    OFFERED.with(|o| o.replace(false))
}

/// Each frontend's TLS, in config order (None: plain).
pub type Frontends = Vec<Option<Arc<FrontendTls>>>;

/// Every frontend's TLS, in config order (None: plain), and the cluster's
/// Redis if `[cluster]` names one.
///
/// # Errors
/// The first frontend whose TLS is refused, or a bad Redis URL.
pub fn build_all(cfg: &Config) -> Result<(Frontends, Option<Arc<cluster::Redis>>), TlsError> {
    let farm = match &cfg.cluster {
        Some(c) => Some(Farm {
            redis: cluster::Redis::new(&c.redis)?,
            rotation: c.ticket_rotation.0,
            keep: usize::try_from(c.ticket_keep.0).unwrap_or(tickets::DEFAULT_KEEP),
        }),
        None => None,
    };
    let tls = cfg
        .frontend
        .iter()
        .map(|f| FrontendTls::build(f, farm.as_ref()).map(|t| t.map(Arc::new)))
        .collect::<Result<_, _>>()?;
    Ok((tls, farm.map(|f| f.redis)))
}
