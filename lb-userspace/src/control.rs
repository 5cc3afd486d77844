//! Live changes to the limits: `PUT /api/profiles/NAME` and SIGHUP.
//!
//! Either way the new configuration is built and validated in full first
//! (a bad change is refused with the reason and the running one stays),
//! then applied at once to every level ([`Live::apply`]: every pool bound
//! to a changed profile, the queues, the gates) and to the XDP maps, with
//! no restart and no connection dropped. What a reload may change: any
//! `limits`, any profile, which profile a pool names, a pool's queue.
//! Anything else (frontends, pools, backends, addresses, ...) takes a
//! restart (or `lb run --join`); a reload that changes it is refused.
//!
//! Every change is counted by where it came from and how it ended, and
//! each one applied moves the configuration generation (`/metrics`).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError,
    },
};

use tracing::info;

use crate::{
    config::{Config, Limits},
    limits::{live::Live, Axis},
    xdp::{DataPlane, Plan},
};

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The file or the JSON is not valid.
    #[error("{0}")]
    Invalid(String),
    /// No such profile.
    #[error("no profile `{name}`; profiles: {known}")]
    NoProfile {
        /// Asked for.
        name: String,
        /// What exists.
        known: String,
    },
    /// The change touches what only a restart can change.
    #[error(
        "the change touches more than limits ({0} changed); only limits, profiles, a pool's \
         profile and queue change live: restart (or `lb run --join`) for the rest; nothing was \
         applied"
    )]
    NotLive(String),
    /// Writing the XDP maps failed (the process limits were applied).
    #[error("writing the XDP maps: {0}")]
    Xdp(String),
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// SIGHUP: the file re-read.
    Sighup,
    /// `PUT /api/profiles/NAME`.
    Api,
}

impl Source {
    /// Both, in counter order.
    pub const ALL: [Self; 2] = [Self::Sighup, Self::Api];

    /// As a metric label: `sighup | api`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sighup => "sighup",
            Self::Api => "api",
        }
    }
}

/// How a change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Ok,
    /// Refused with its reason; the running configuration stays.
    Refused,
    /// Applied to the proxy, but writing the XDP maps failed.
    XdpFailed,
}

impl Outcome {
    /// All three, in counter order.
    pub const ALL: [Self; 3] = [Self::Ok, Self::Refused, Self::XdpFailed];

    /// As a metric label: `ok | refused | xdp_failed`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Refused => "refused",
            Self::XdpFailed => "xdp_failed",
        }
    }

    fn of(r: &Result<(), ChangeError>) -> Self {
        match r {
            Ok(()) => Self::Ok,
            Err(ChangeError::Xdp(_)) => Self::XdpFailed,
            Err(_) => Self::Refused,
        }
    }
}

/// The running configuration and what applies changes to it.
pub struct Control {
    cfg: Mutex<Config>,
    live: Arc<Live>,
    plane: Option<Arc<Mutex<Option<DataPlane>>>>,
    xdp_generation: Mutex<u32>,
    /// Each frontend's TLS (None: plain), for certificate reloads.
    tls: Vec<Option<Arc<crate::tls::FrontendTls>>>,
    /// The configuration generation: 1 at start, one more per change
    /// applied (to the proxy at least).
    generation: AtomicU64,
    /// Changes by [`Source`] and [`Outcome`] (`[source][outcome]`).
    changes: [[AtomicU64; 3]; 2],
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

/// The parts of a config a live change may not touch, each named, with
/// everything it may touch blanked out.
fn structure(cfg: &Config) -> Vec<(String, String)> {
    let mut global = cfg.global.clone();
    global.limits = Limits::default();
    let mut parts = vec![
        ("[global]".to_owned(), format!("{global:?}")),
        ("[xdp]".to_owned(), format!("{:?}", cfg.xdp)),
        ("[admin]".to_owned(), format!("{:?}", cfg.admin)),
        ("[cluster]".to_owned(), format!("{:?}", cfg.cluster)),
        (
            "the list of frontends".to_owned(),
            format!(
                "{:?}",
                cfg.frontend.iter().map(|f| &f.name).collect::<Vec<_>>()
            ),
        ),
        (
            "the list of pools".to_owned(),
            format!("{:?}", cfg.pool.iter().map(|p| &p.name).collect::<Vec<_>>()),
        ),
    ];
    for f in &cfg.frontend {
        let mut f = f.clone();
        f.limits = Limits::default();
        parts.push((format!("frontend `{}`", f.name), format!("{f:?}")));
    }
    for p in &cfg.pool {
        let mut p = p.clone();
        p.profile = None;
        p.queue = None;
        parts.push((format!("pool `{}`", p.name), format!("{p:?}")));
    }
    parts
}

/// The first part `next` changes that a live change may not.
fn not_live(cfg: &Config, next: &Config) -> Option<String> {
    let (was, is) = (structure(cfg), structure(next));
    if was.len() != is.len() {
        return Some("the list of frontends or pools".to_owned());
    }
    was.into_iter()
        .zip(is)
        .find(|(a, b)| a != b)
        .map(|(_, (name, _))| name)
}

/// A profile from a JSON object of profile keys, each value checked on
/// its own so an error names its key.
fn parse_profile(name: &str, json: &[u8]) -> Result<Limits, ChangeError> {
    let keys = Axis::ALL.map(Axis::name).join(", ");
    let bad = |what: String| {
        ChangeError::Invalid(format!(
            "profile `{name}`: {what}; allowed: a JSON object of profile keys ({keys})"
        ))
    };
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(bad(format!("{value} is not a JSON object")));
    };
    for (k, v) in &map {
        let one = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
        serde_json::from_value::<Limits>(one).map_err(|e| bad(format!("{k} = {v}: {e}")))?;
    }
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| bad(e.to_string()))
}

impl Control {
    /// Control over a process started with `cfg`.
    #[must_use]
    pub fn new(
        cfg: Config,
        live: Arc<Live>,
        plane: Option<Arc<Mutex<Option<DataPlane>>>>,
        tls: Vec<Option<Arc<crate::tls::FrontendTls>>>,
    ) -> Self {
        Self {
            cfg: Mutex::new(cfg),
            live,
            plane,
            xdp_generation: Mutex::new(1),
            tls,
            generation: AtomicU64::new(1),
            changes: Default::default(),
        }
    }

    /// The `[global] instance` name.
    #[must_use]
    pub fn instance(&self) -> String {
        self.lock().global.instance.clone()
    }

    /// The configuration generation in force: 1 at start, one more per
    /// change applied.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Changes so far, by source and outcome (every pair, zeros included).
    #[must_use]
    pub fn changes(&self) -> Vec<(Source, Outcome, u64)> {
        Source::ALL
            .iter()
            .enumerate()
            .flat_map(|(i, &s)| {
                Outcome::ALL
                    .iter()
                    .enumerate()
                    .map(move |(j, &o)| (s, o, self.changes[i][j].load(Relaxed)))
            })
            .collect()
    }

    fn count(&self, source: Source, r: &Result<(), ChangeError>) {
        // Both enums list their variants in `ALL` order.
        self.changes[source as usize][Outcome::of(r) as usize].fetch_add(1, Relaxed);
    }

    /// Where the XDP maps this process uses are pinned, while its XDP data
    /// plane is loaded (None: XDP off, not allowed, or detached).
    #[must_use]
    pub fn xdp_pins(&self) -> Option<PathBuf> {
        let loaded = self
            .plane
            .as_ref()
            .is_some_and(|p| p.lock().unwrap_or_else(PoisonError::into_inner).is_some());
        loaded.then(|| crate::instance::pin_dir(&self.lock().global.instance))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Config> {
        self.cfg.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every profile in force, each axis with its value (default filled
    /// in), and the pools bound to it.
    #[must_use]
    pub fn profiles(&self) -> BTreeMap<String, ProfileView> {
        let cfg = self.lock();
        cfg.profile
            .iter()
            .map(|(name, l)| {
                let pools = cfg
                    .pool
                    .iter()
                    .filter(|p| p.profile.as_deref() == Some(name.as_str()))
                    .map(|p| p.name.clone())
                    .collect();
                let values = Axis::ALL
                    .iter()
                    .map(|&a| (a.name(), l.profile(a)))
                    .collect();
                (name.clone(), ProfileView { values, pools })
            })
            .collect()
    }

    /// Replaces profile `name` with `json` (the same keys as the file; an
    /// absent axis takes its default) and applies it.
    ///
    /// # Errors
    /// Unknown profile, invalid JSON or values, or the XDP maps failed.
    pub fn put_profile(&self, name: &str, json: &[u8]) -> Result<(), ChangeError> {
        let r = self.try_put_profile(name, json);
        self.count(Source::Api, &r);
        r
    }

    fn try_put_profile(&self, name: &str, json: &[u8]) -> Result<(), ChangeError> {
        let limits = parse_profile(name, json)?;
        let mut next = self.lock().clone();
        let Some(slot) = next.profile.get_mut(name) else {
            return Err(ChangeError::NoProfile {
                name: name.to_owned(),
                known: next.profile.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        *slot = limits;
        self.apply(next, &format!("PUT /api/profiles/{name}"))
    }

    /// Re-reads the file the process started from (SIGHUP), and every
    /// certificate file, and applies them. Certificates are read first: a
    /// refused one refuses the whole reload.
    ///
    /// # Errors
    /// The file is invalid or changes more than limits, or a certificate
    /// file is refused.
    pub fn reload(&self) -> Result<(), ChangeError> {
        let r = self.try_reload();
        self.count(Source::Sighup, &r);
        r
    }

    fn try_reload(&self) -> Result<(), ChangeError> {
        let path = self.lock().path.clone();
        let next = Config::load(&path).map_err(|e| ChangeError::Invalid(e.to_string()))?;
        if let Some(part) = not_live(&self.lock(), &next) {
            return Err(ChangeError::NotLive(part));
        }
        // Every certificate read before anything changes.
        let certs: Vec<_> = next
            .frontend
            .iter()
            .map(crate::tls::FrontendTls::read_certs)
            .collect::<Result<_, _>>()
            .map_err(|e| ChangeError::Invalid(e.to_string()))?;
        let applied = self.apply(next, "SIGHUP");
        if matches!(applied, Ok(()) | Err(ChangeError::Xdp(_))) {
            for (t, r) in self.tls.iter().zip(certs) {
                if let (Some(t), Some(r)) = (t, r) {
                    t.put_certs(r);
                    // Do not wait for the next look at the ticket keys.
                    t.tickets.reload_if_changed();
                }
            }
        }
        applied
    }

    fn apply(&self, next: Config, by: &str) -> Result<(), ChangeError> {
        let mut cfg = self.lock();
        if let Some(part) = not_live(&cfg, &next) {
            return Err(ChangeError::NotLive(part));
        }
        self.live.apply(&next);
        crate::limits::log_disabled(&next);
        let xdp = self.plane.as_ref().map(|plane| {
            let mut generation = self
                .xdp_generation
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *generation = generation.wrapping_add(1);
            match plane
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_mut()
            {
                Some(p) => p.write(&Plan::from_config(&next, *generation)),
                None => Ok(()),
            }
        });
        *cfg = next;
        self.generation.fetch_add(1, Relaxed);
        info!(by, "limits applied");
        match xdp {
            Some(Err(e)) => Err(ChangeError::Xdp(e.to_string())),
            _ => Ok(()),
        }
    }
}

/// One profile as `GET /api/profiles` shows it.
#[derive(Debug, serde::Serialize)]
pub struct ProfileView {
    /// Every axis and its value in force (0: off).
    #[serde(flatten)]
    pub values: BTreeMap<&'static str, u64>,
    /// The pools bound to it.
    pub pools: Vec<String>,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_profile_must_be_an_object_and_an_error_names_its_key() {
        let err = |j: &str| parse_profile("p", j.as_bytes()).expect_err(j).to_string();
        assert!(
            err("[7, 1]").contains("is not a JSON object"),
            "{}",
            err("[7, 1]")
        );
        let e = err(r#"{"maxRetries": 1, "maxConn": 2000000}"#);
        assert!(
            e.contains("maxConn = 2000000") && e.contains("0..=1000000"),
            "{e}"
        );
        let e = err(r#"{"maxConns": 1}"#);
        assert!(e.contains("maxConns"), "{e}");
        let ok = parse_profile("p", br#"{"maxConn": 5, "maxBufferSize": "64KB"}"#).expect("valid");
        assert_eq!(ok.profile(Axis::MaxConn), 5);
        assert_eq!(ok.profile(Axis::MaxBufferSize), 64 * 1024);
    }

    #[test]
    fn changes_are_counted_by_source_and_outcome_and_move_the_generation() {
        let cfg = Config::parse(
            r#"
            [xdp]
            mode = "off"
            [[frontend]]
            name = "web"
            listen = "127.0.0.1:1"
            pool = "p"
            [[pool]]
            name = "p"
            profile = "a"
            backends = ["127.0.0.1:2"]
            [profile.a]
            "#,
            Path::new("/nonexistent/lb-control-test.toml"),
        )
        .expect("valid");
        let table = crate::limits::slots::Table::heap(lb_common::MAX_BUCKETS as usize);
        let live = Arc::new(Live::new(&cfg, Arc::new(table)));
        let c = Control::new(cfg, live, None, vec![None]);
        assert_eq!(c.generation(), 1);
        assert_eq!(c.xdp_pins(), None, "no data plane");
        c.put_profile("a", br#"{"maxConn": 5}"#).expect("applied");
        c.put_profile("b", br#"{"maxConn": 5}"#)
            .expect_err("no such profile");
        c.put_profile("a", b"[1]").expect_err("not an object");
        c.reload().expect_err("the file is gone");
        assert_eq!(c.generation(), 2, "one change applied");
        let n = |s, o| {
            c.changes()
                .iter()
                .find(|(cs, co, _)| (*cs, *co) == (s, o))
                .map_or(0, |x| x.2)
        };
        assert_eq!(n(Source::Api, Outcome::Ok), 1);
        assert_eq!(n(Source::Api, Outcome::Refused), 2);
        assert_eq!(n(Source::Sighup, Outcome::Refused), 1);
        assert_eq!(n(Source::Sighup, Outcome::Ok), 0);
        assert_eq!(c.changes().len(), 6, "every pair, zeros included");
    }

    #[test]
    fn only_limits_change_live() {
        let base = r#"
            [xdp]
            mode = "off"
            [[frontend]]
            name = "web"
            listen = "127.0.0.1:1"
            pool = "p"
            [[pool]]
            name = "p"
            profile = "a"
            backends = ["127.0.0.1:2"]
            [profile.a]
            [profile.b]
            maxConn = 5
            "#;
        let cfg = |t: &str| Config::parse(t, Path::new("t.toml")).expect("valid");
        let c = cfg(base);
        assert_eq!(
            not_live(
                &c,
                &cfg(&base.replace("profile = \"a\"", "profile = \"b\""))
            ),
            None
        );
        assert_eq!(
            not_live(
                &c,
                &cfg(&base.replace("127.0.0.1:2\"", "127.0.0.1:2\", \"127.0.0.1:3\""))
            ),
            Some("pool `p`".to_owned())
        );
        assert_eq!(
            not_live(&c, &cfg(&base.replace("127.0.0.1:1", "127.0.0.1:4"))),
            Some("frontend `web`".to_owned())
        );
    }
}
