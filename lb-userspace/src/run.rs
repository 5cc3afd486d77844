//! `lb run`: take the instance, start the data plane, the proxy workers and
//! the admin listener, run until SIGINT or SIGTERM, then stop accepting,
//! drain, detach and remove the pins.
//!
//! Without the privileges to load BPF, or with `[xdp] mode = "off"`, `lb`
//! says so at start and keeps running with nothing attached.

use anyhow::{Context as _, Result};
use tracing::{info, warn};

use crate::{
    admin,
    config::{Config, XdpMode},
    instance,
    proxy::Proxy,
    xdp::{DataPlane, Plan},
};

/// Capabilities, by bit number in `/proc/self/status` `CapEff`.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Whether this process may load and attach XDP programs: CAP_NET_ADMIN and
/// one of CAP_BPF or CAP_SYS_ADMIN.
#[must_use]
pub fn can_load_bpf() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN))
}

/// A started data plane and what keeps its pins alive.
struct Started {
    plane: DataPlane,
    pin_dir: std::path::PathBuf,
    _janitor: std::process::Child,
}

fn start_xdp(cfg: &Config) -> Result<Started> {
    let name = &cfg.global.instance;
    instance::ensure_bpffs()?;
    let mut plane = DataPlane::load().context("loading the XDP object")?;
    plane.write(&Plan::from_config(cfg, 1))?;
    let janitor = instance::spawn_janitor(name)?;
    let pin_dir = instance::fresh_pin_dir(name)?;
    let started = (|| -> Result<()> {
        plane.pin(&pin_dir)?;
        for iface in cfg.xdp.ifaces() {
            plane.attach(&iface, cfg.xdp.mode)?;
            info!(iface, mode = ?cfg.xdp.mode, "XDP program attached");
        }
        Ok(())
    })();
    if let Err(e) = started {
        drop(plane);
        let _ = instance::remove_pins(&pin_dir);
        return Err(e);
    }
    Ok(Started {
        plane,
        pin_dir,
        _janitor: janitor,
    })
}

/// Runs until SIGINT or SIGTERM.
///
/// # Errors
/// The instance is taken, or the data plane could not start; nothing is left
/// attached or pinned then.
pub fn run(cfg: &Config) -> Result<()> {
    let name = &cfg.global.instance;
    let _lock = instance::lock(name)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Handlers before anything is attached or "ready" is said: a SIGTERM from
    // then on always takes the cleanup path below.
    let signals = rt.block_on(async { Signals::install() })?;
    let started = if cfg.xdp.mode == XdpMode::Off {
        warn!("[xdp] mode = \"off\": no XDP program attached; SYN limits are not enforced in the kernel");
        None
    } else if !can_load_bpf() {
        warn!(
            "no privileges to load BPF (need root, or CAP_BPF and CAP_NET_ADMIN): running with \
             no XDP program attached; SYN limits are not enforced in the kernel"
        );
        None
    } else {
        Some(start_xdp(cfg)?)
    };
    crate::limits::log_disabled(cfg);
    let _enter = rt.enter();
    let proxy = match Proxy::start(cfg) {
        Ok(p) => p,
        Err(e) => {
            stop_xdp(started)?;
            return Err(e);
        }
    };
    let admin = match &cfg.admin {
        Some(a) => {
            let addr = a.listen.map_or_else(
                || {
                    admin::DEFAULT_LISTEN
                        .parse()
                        .expect("a valid constant address")
                },
                |l| l.0,
            );
            match rt.block_on(admin::start(addr, std::sync::Arc::clone(proxy.shared()))) {
                Ok(h) => Some(h),
                Err(e) => {
                    rt.block_on(proxy.stop());
                    stop_xdp(started)?;
                    return Err(e);
                }
            }
        }
        None => None,
    };
    if let Some(s) = &started {
        info!(
            instance = %name,
            pins = %s.pin_dir.display(),
            vips = cfg.frontend.len(),
            ifaces = ?s.plane.attached(),
            "ready"
        );
    } else {
        info!(instance = %name, "ready (no XDP)");
    }
    rt.block_on(signals.wait());
    info!(drain = ?cfg.global.drain_timeout.0, "stopped accepting; draining");
    if let Some(a) = admin {
        a.abort();
    }
    rt.block_on(proxy.stop());
    stop_xdp(started)
}

/// Detaches XDP and removes the pins (when started).
fn stop_xdp(started: Option<Started>) -> Result<()> {
    if let Some(s) = started {
        let dir = s.pin_dir.clone();
        drop(s.plane);
        instance::remove_pins(&dir)?;
        info!(pins = %dir.display(), "detached; pins removed");
    }
    Ok(())
}

/// SIGTERM and SIGINT, caught.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime).
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    /// Waits for either.
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM: shutting down"),
            _ = self.int.recv() => info!("SIGINT: shutting down"),
        }
    }
}
