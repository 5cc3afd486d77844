//! The XDP control library: the only code that writes the data plane's maps.
//!
//! [`Plan::from_config`] turns a validated config into map contents (pure,
//! testable without privileges); [`DataPlane`] loads the embedded object,
//! writes a plan into its maps, pins them and attaches the program. Dropping
//! a `DataPlane` detaches the program (its links are bpf_links owned by this
//! process, so a killed `lb` detaches too: traffic passes), unless its
//! links were pinned ([`DataPlane::attach_pinned`], `lb attach`): then the
//! program stays until the pins go, and an unprivileged `lb` opens the
//! pinned maps ([`DataPlane::open_pinned`]) to write its plan into them.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, Map, MapData},
    programs::{links::FdLink, Xdp, XdpMode as AyaMode},
    Ebpf,
};
use lb_common::{
    bucket, family, maps, programs, RateBucket, VipKey, VipValue, XdpConfig, MAX_VIPS,
};

use crate::{
    config::{Config, XdpMode},
    limits::Axis,
};

/// The eBPF object built from `lb-ebpf` (see `build.rs`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// What can go wrong loading, configuring or attaching the data plane.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The kernel refused to load the object or a map.
    #[error("loading the XDP object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The object lacks a map or program this build expects.
    #[error("the XDP object has no {0} `{1}`")]
    Missing(&'static str, &'static str),
    /// A map operation failed.
    #[error("map `{name}`: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// What the kernel said.
        source: aya::maps::MapError,
    },
    /// Pinning a map failed.
    #[error("pinning map `{name}` at {path}: {source}")]
    Pin {
        /// The map.
        name: &'static str,
        /// The pin path.
        path: PathBuf,
        /// What the kernel said.
        source: aya::pin::PinError,
    },
    /// Loading or attaching the program failed.
    #[error("XDP program on `{iface}` ({mode}): {source}")]
    Attach {
        /// Interface.
        iface: String,
        /// Attach mode asked for.
        mode: &'static str,
        /// What the kernel said.
        source: aya::programs::ProgramError,
    },
    /// Loading the program into the kernel (verifier) failed.
    #[error("loading program `{0}`: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    /// Opening a map pinned by another process failed.
    #[error(
        "opening pinned map `{name}` at {path}: {source} (made by `lb attach`; this user needs \
         read and write access to it: `lb attach --owner`)"
    )]
    OpenPin {
        /// The map.
        name: &'static str,
        /// The pin path.
        path: PathBuf,
        /// What the kernel said.
        source: aya::maps::MapError,
    },
    /// Keeping an attachment past this process (pinning its link) failed.
    #[error("keeping the XDP link on `{iface}` at {path}: {why}")]
    KeepLink {
        /// Interface.
        iface: String,
        /// The pin path.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// Maps opened from pins have no program to load or attach.
    #[error(
        "program `{0}`: this process opened maps pinned by `lb attach` and has no program to \
         load or attach"
    )]
    NoProgram(&'static str),
}

/// The prefix of a pinned XDP link in a pin directory: `link_<iface>`.
pub const LINK_PIN_PREFIX: &str = "link_";

/// Map contents for one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The `config` map entry.
    pub config: XdpConfig,
    /// The `vips` map: key, value, and the frontend's name (for humans).
    pub vips: Vec<(VipKey, VipValue, String)>,
    /// Bucket index → limits, for every bucket the config uses.
    pub buckets: Vec<(u32, RateBucket)>,
}

/// Nanoseconds per token for a rate per second, rounded to nearest.
fn interval_ns(rate: u64) -> u64 {
    (1_000_000_000 + rate / 2).checked_div(rate).unwrap_or(0)
}

/// A VIP-level bucket for `rate` SYNs per second; 0 disables it. The burst is
/// one second's worth (`rate`), so "N per second" admits at most N more than
/// N × seconds over any run. A CPU takes tokens in batches of rate/1000
/// (1..=64): large enough that a busy CPU touches the shared bucket about
/// once a millisecond, small enough that tokens parked in other CPUs' caches
/// stay far below the ±10% the limit promises.
#[must_use]
pub fn rate_bucket(rate: u64, generation: u32) -> RateBucket {
    let interval = interval_ns(rate);
    RateBucket {
        tat_ns: 0,
        interval_ns: interval,
        tau_ns: rate * interval,
        batch: u32::try_from((rate / 1000).clamp(1, 64)).unwrap_or(64),
        generation,
    }
}

/// The `vips` key of a listen address.
#[must_use]
pub fn vip_key(addr: SocketAddr) -> VipKey {
    let mut key = VipKey {
        port_be: addr.port().to_be(),
        ..VipKey::default()
    };
    match addr.ip() {
        IpAddr::V4(a) => {
            key.addr[..4].copy_from_slice(&a.octets());
            key.family = family::V4;
        }
        IpAddr::V6(a) => {
            key.addr = a.octets();
            key.family = family::V6;
        }
    }
    key
}

/// The listen address of a `vips` key.
#[must_use]
pub fn vip_addr(key: &VipKey) -> SocketAddr {
    let port = u16::from_be(key.port_be);
    if key.family == family::V4 {
        let [a, b, c, d, ..] = key.addr;
        SocketAddr::from(([a, b, c, d], port))
    } else {
        SocketAddr::from((key.addr, port))
    }
}

impl Plan {
    /// The map contents that enforce `cfg`. Bucket limits carry `generation`
    /// so CPUs drop tokens cached under an older plan.
    #[must_use]
    pub fn from_config(cfg: &Config, generation: u32) -> Self {
        let src_interval = interval_ns(cfg.xdp.source_syn_rate.0);
        let config = XdpConfig {
            source_interval_ns: src_interval,
            source_tau_ns: cfg.xdp.source_burst() * src_interval,
            overflow: {
                use crate::config::Overflow;
                use lb_common::overflow;
                match cfg.xdp.overflow {
                    Overflow::Pass => overflow::PASS,
                    Overflow::Rst => overflow::RST,
                    Overflow::Drop => overflow::DROP,
                }
            },
            _pad: 0,
            trust_ns: cfg.xdp.trust_seconds.0 * 1_000_000_000,
        };
        let mut buckets = vec![(
            bucket::GLOBAL,
            rate_bucket(cfg.global.limits.level(Axis::MaxConnRate), generation),
        )];
        for (i, pool) in cfg.pool.iter().enumerate() {
            if let Some(idx) = u32::try_from(i).ok().and_then(bucket::pool) {
                let rate = cfg.profile_of(pool).profile(Axis::MaxConnRate);
                buckets.push((idx, rate_bucket(rate, generation)));
            }
        }
        let mut vips = Vec::new();
        for (i, f) in cfg.frontend.iter().enumerate() {
            let (Some(fb), Some(pb), Ok(vip_index)) = (
                u32::try_from(i).ok().and_then(bucket::frontend),
                cfg.pool_index(f)
                    .and_then(|p| u32::try_from(p).ok())
                    .and_then(bucket::pool),
                u32::try_from(i),
            ) else {
                continue;
            };
            if vip_index >= MAX_VIPS {
                continue;
            }
            buckets.push((
                fb,
                rate_bucket(f.limits.level(Axis::MaxConnRate), generation),
            ));
            vips.push((
                vip_key(f.listen.0),
                VipValue {
                    vip_index,
                    frontend_bucket: fb,
                    pool_bucket: pb,
                    _pad: 0,
                },
                f.name.clone(),
            ));
        }
        buckets.sort_by_key(|b| b.0);
        Self {
            config,
            vips,
            buckets,
        }
    }
}

/// A loaded data plane: the object, its maps, its attachments.
pub struct DataPlane {
    source: Source,
    attached: Vec<String>,
}

/// Where a data plane's maps come from.
enum Source {
    /// The embedded object, loaded by this process (its maps created, or
    /// opened over pins for `--join`).
    Object(Ebpf),
    /// Maps opened from pins another process made (`lb attach`): no
    /// program here.
    Pinned(Vec<(&'static str, Map)>),
}

impl DataPlane {
    /// Loads the embedded object (creates its maps; the program is loaded
    /// into the kernel on first attach).
    ///
    /// # Errors
    /// The kernel refused the object (no privileges, no BPF).
    pub fn load() -> Result<Self, XdpError> {
        Ok(Self {
            source: Source::Object(Ebpf::load(OBJECT)?),
            attached: Vec::new(),
        })
    }

    /// Loads the embedded object over the maps pinned in `dir` by a running
    /// instance (`lb run --join`): both processes then read and write the
    /// same maps. Nothing is attached.
    ///
    /// # Errors
    /// A pin is missing or the kernel refused the object.
    pub fn load_joined(dir: &Path) -> Result<Self, XdpError> {
        let mut loader = aya::EbpfLoader::new();
        for name in maps::ALL {
            loader.map_pin_path(name, dir.join(name));
        }
        Ok(Self {
            source: Source::Object(loader.load(OBJECT)?),
            attached: Vec::new(),
        })
    }

    /// Opens the maps pinned in `dir` by `lb attach`, loading nothing:
    /// what an `lb` without privileges does over a program attached for
    /// it. The kernel checks only the pins' file permissions.
    ///
    /// # Errors
    /// A pin is missing or not readable and writable by this user.
    pub fn open_pinned(dir: &Path) -> Result<Self, XdpError> {
        let mut opened = Vec::with_capacity(maps::ALL.len());
        for name in maps::ALL {
            let path = dir.join(name);
            let map = MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| XdpError::OpenPin { name, path, source })?;
            opened.push((name, map));
        }
        Ok(Self {
            source: Source::Pinned(opened),
            attached: Vec::new(),
        })
    }

    fn map(&self, name: &'static str) -> Result<&Map, XdpError> {
        match &self.source {
            Source::Object(ebpf) => ebpf.map(name),
            Source::Pinned(maps) => maps.iter().find(|(n, _)| *n == name).map(|(_, m)| m),
        }
        .ok_or(XdpError::Missing("map", name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, XdpError> {
        match &mut self.source {
            Source::Object(ebpf) => ebpf.map_mut(name),
            Source::Pinned(maps) => maps.iter_mut().find(|(n, _)| *n == name).map(|(_, m)| m),
        }
        .ok_or(XdpError::Missing("map", name))
    }

    /// Writes a plan into the maps: config, buckets (only those whose
    /// limits changed), then VIPs (so no VIP
    /// points at a bucket not yet written).
    ///
    /// # Errors
    /// A map update failed.
    pub fn write(&mut self, plan: &Plan) -> Result<(), XdpError> {
        let map_err = |name| move |source| XdpError::Map { name, source };
        {
            let mut config: Array<&mut MapData, XdpConfig> =
                Array::try_from(self.map_mut(maps::CONFIG)?).map_err(map_err(maps::CONFIG))?;
            config
                .set(0, plan.config, 0)
                .map_err(map_err(maps::CONFIG))?;
        }
        {
            let mut buckets: Array<&mut MapData, RateBucket> =
                Array::try_from(self.map_mut(maps::BUCKETS)?).map_err(map_err(maps::BUCKETS))?;
            for (idx, b) in &plan.buckets {
                // A live change rewrites only the buckets whose limits
                // changed, and keeps what was spent: no level gets a fresh
                // burst because another one changed.
                let old = buckets.get(idx, 0).map_err(map_err(maps::BUCKETS))?;
                let same =
                    (old.interval_ns, old.tau_ns, old.batch) == (b.interval_ns, b.tau_ns, b.batch);
                if !same {
                    let next = RateBucket {
                        tat_ns: old.tat_ns,
                        ..*b
                    };
                    buckets.set(*idx, next, 0).map_err(map_err(maps::BUCKETS))?;
                }
            }
        }
        let mut vips: HashMap<&mut MapData, VipKey, VipValue> =
            HashMap::try_from(self.map_mut(maps::VIPS)?).map_err(map_err(maps::VIPS))?;
        for (k, v, _) in &plan.vips {
            vips.insert(k, v, 0).map_err(map_err(maps::VIPS))?;
        }
        Ok(())
    }

    /// Pins every map under `dir` (which must exist, on a bpffs).
    ///
    /// # Errors
    /// A pin failed (the directory is not on bpffs, or a pin exists).
    pub fn pin(&self, dir: &Path) -> Result<(), XdpError> {
        for name in maps::ALL {
            let map = self.map(name)?;
            let path = dir.join(name);
            map.pin(&path)
                .map_err(|source| XdpError::Pin { name, path, source })?;
        }
        Ok(())
    }

    /// The program `name` (loaded into the kernel on first use).
    ///
    /// # Errors
    /// The object lacks it, or the verifier refused it.
    pub fn program(&mut self, name: &'static str) -> Result<&mut Xdp, XdpError> {
        let Source::Object(ebpf) = &mut self.source else {
            return Err(XdpError::NoProgram(name));
        };
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(XdpError::Missing("program", name))?
            .try_into()
            .map_err(|e| XdpError::Program(name, e))?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| XdpError::Program(name, e))?;
        }
        Ok(prog)
    }

    /// Attaches the SYN limiter to `iface`.
    ///
    /// # Errors
    /// The interface does not exist, or does not support `mode`.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<(), XdpError> {
        self.attach_program(programs::XDP_LB, iface, mode)
            .map(|_| ())
    }

    /// Attaches the SYN limiter to `iface` and pins its link in `dir` (as
    /// `link_<iface>`): it stays attached after this process exits, until
    /// the pin is removed (`lb detach`).
    ///
    /// # Errors
    /// Attaching failed, or the kernel has no bpf_link for XDP (5.9+).
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        mode: XdpMode,
        dir: &Path,
    ) -> Result<(), XdpError> {
        let id = self.attach_program(programs::XDP_LB, iface, mode)?;
        let path = dir.join(format!("{LINK_PIN_PREFIX}{iface}"));
        let keep = |why: String| XdpError::KeepLink {
            iface: iface.to_owned(),
            path: path.clone(),
            why,
        };
        let link = self
            .program(programs::XDP_LB)?
            .take_link(id)
            .map_err(|e| keep(e.to_string()))?;
        let fd = FdLink::try_from(link).map_err(|e| {
            keep(format!(
                "{e} (attached by netlink: a pinned link needs kernel 5.9+)"
            ))
        })?;
        fd.pin(&path).map_err(|e| keep(e.to_string()))?;
        Ok(())
    }

    /// Attaches the object's program `name` to `iface` (benchmarks attach
    /// its baselines this way).
    ///
    /// # Errors
    /// The interface does not exist, or does not support `mode`.
    pub fn attach_program(
        &mut self,
        name: &'static str,
        iface: &str,
        mode: XdpMode,
    ) -> Result<aya::programs::xdp::XdpLinkId, XdpError> {
        let (aya_mode, label) = match mode {
            XdpMode::Driver => (AyaMode::Driver, "driver mode"),
            XdpMode::Skb => (AyaMode::Skb, "skb mode"),
            XdpMode::Auto | XdpMode::Off => (AyaMode::default(), "auto mode"),
        };
        let prog = self.program(name)?;
        let id = prog
            .attach(iface, aya_mode)
            .map_err(|source| XdpError::Attach {
                iface: iface.to_owned(),
                mode: label,
                source,
            })?;
        self.attached.push(iface.to_owned());
        Ok(id)
    }

    /// Interfaces the program is attached to.
    #[must_use]
    pub fn attached(&self) -> &[String] {
        &self.attached
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn vip_keys_round_trip() {
        for a in ["10.1.2.3:443", "[2001:db8::5]:8443"] {
            let addr: SocketAddr = a.parse().expect("addr");
            assert_eq!(vip_addr(&vip_key(addr)), addr);
        }
        let k = vip_key("10.1.2.3:443".parse().expect("addr"));
        assert_eq!(k.addr[..4], [10, 1, 2, 3]);
        assert_eq!(k.port_be.to_ne_bytes(), [0x01, 0xBB]);
    }

    #[test]
    fn rate_buckets_encode_rate_burst_and_batch() {
        let b = rate_bucket(500, 7);
        assert_eq!(b.interval_ns, 2_000_000);
        assert_eq!(b.tau_ns, 1_000_000_000);
        assert_eq!(b.batch, 1);
        assert_eq!(b.generation, 7);
        assert_eq!(rate_bucket(10_000, 1).batch, 10);
        assert_eq!(rate_bucket(1_000_000, 1).batch, 64);
        assert_eq!(rate_bucket(0, 1).interval_ns, 0, "0 disables");
    }

    #[test]
    fn plan_wires_each_vip_to_its_frontend_and_pool_buckets() {
        let cfg = Config::parse(
            r#"
            [global.limits]
            maxConnRate = 0
            [xdp]
            mode = "off"
            sourceSynRate = 100
            sourceSynBurst = 5
            overflow = "rst"
            [[frontend]]
            name = "a"
            listen = "10.0.0.1:80"
            pool = "p2"
            [frontend.limits]
            maxConnRate = 300
            [[pool]]
            name = "p1"
            [[pool]]
            name = "p2"
            profile = "slow"
            [profile.slow]
            maxConnRate = 200
            "#,
            Path::new("t.toml"),
        )
        .expect("valid");
        let plan = Plan::from_config(&cfg, 1);
        assert_eq!(plan.config.source_interval_ns, 10_000_000);
        assert_eq!(plan.config.source_tau_ns, 50_000_000);
        assert_eq!(plan.config.overflow, lb_common::overflow::RST);
        assert_eq!(plan.vips.len(), 1);
        let (_, v, name) = &plan.vips[0];
        assert_eq!(name, "a");
        assert_eq!(v.frontend_bucket, bucket::frontend(0).expect("in range"));
        assert_eq!(v.pool_bucket, bucket::pool(1).expect("in range"));
        let rate_of = |idx: u32| {
            plan.buckets
                .iter()
                .find(|b| b.0 == idx)
                .map(|b| b.1.interval_ns)
        };
        assert_eq!(rate_of(bucket::GLOBAL), Some(0));
        assert_eq!(rate_of(v.frontend_bucket), Some(interval_ns(300)));
        assert_eq!(rate_of(v.pool_bucket), Some(interval_ns(200)));
        // p1 has no profile: the default 10000/s.
        assert_eq!(rate_of(bucket::pool(0).expect("in range")), Some(100_000));
    }
}
