//! `lb run`: take the instance, start the data plane, the proxy workers and
//! the admin listener, run until SIGINT or SIGTERM, then stop accepting,
//! drain, detach and remove the pins.
//!
//! Without the privileges to load BPF, `lb` runs over a program `lb attach`
//! attached for it if the instance has one (see [`crate::attach`]), and
//! otherwise, as with `[xdp] mode = "off"`, says so at start and keeps
//! running with nothing attached.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context as _, Result};
use tracing::{error, info, warn};

use crate::{
    admin,
    config::{Config, XdpMode},
    control::Control,
    instance::{self, InstanceLock},
    limits::{live::Live, session::Sessions, slots::Table},
    proxy::Proxy,
    xdp::{DataPlane, Plan},
};

/// Capabilities, by bit number in `/proc/self/status` `CapEff`.
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether this process may load and attach XDP programs: CAP_NET_ADMIN,
/// and CAP_BPF with CAP_PERFMON (the verifier refuses the program's pointer
/// arithmetic on map values without it), or CAP_SYS_ADMIN.
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
    has(CAP_NET_ADMIN) && ((has(CAP_BPF) && has(CAP_PERFMON)) || has(CAP_SYS_ADMIN))
}

/// A started data plane and what keeps its pins alive.
struct Started {
    /// Shared with [`Control`] for live changes; taken (detached) at stop.
    plane: Arc<Mutex<Option<DataPlane>>>,
    pin_dir: std::path::PathBuf,
    /// Interfaces attached.
    ifaces: Vec<String>,
    /// Removes the pins if this process dies without doing so; None while
    /// a `--join`ed process does not own the pins yet.
    janitor: Option<std::process::Child>,
}

fn start_xdp(cfg: &Config) -> Result<Started> {
    let name = &cfg.global.instance;
    instance::ensure_bpffs()?;
    let mut plane = DataPlane::load().context("loading the XDP object")?;
    plane.write(&Plan::from_config(cfg, 1))?;
    let mut started = Started {
        ifaces: Vec::new(),
        plane: Arc::new(Mutex::new(None)),
        pin_dir: instance::pin_dir(name),
        janitor: None,
    };
    own_pins(cfg, &mut plane, &mut started)?;
    *started.plane.lock().unwrap_or_else(PoisonError::into_inner) = Some(plane);
    Ok(started)
}

/// Pins the maps, attaches the program and starts the janitor: what the
/// owner of an instance does (at start, or a `--join`ed process once the
/// old one is gone). On failure nothing is left pinned.
fn own_pins(cfg: &Config, plane: &mut DataPlane, started: &mut Started) -> Result<()> {
    let name = &cfg.global.instance;
    let janitor = instance::spawn_janitor(name)?;
    let pin_dir = instance::fresh_pin_dir(name)?;
    let done = (|| -> Result<()> {
        plane.pin(&pin_dir)?;
        for iface in cfg.xdp.ifaces() {
            plane.attach(&iface, cfg.xdp.mode)?;
            info!(iface, mode = ?cfg.xdp.mode, "XDP program attached");
        }
        Ok(())
    })();
    if let Err(e) = done {
        let _ = instance::remove_pins(&pin_dir);
        return Err(e);
    }
    started.ifaces = plane.attached().to_vec();
    started.pin_dir = pin_dir;
    started.janitor = Some(janitor);
    Ok(())
}

/// `--join`: the maps of the running instance, shared; nothing attached or
/// pinned until the old process is gone ([`take_over`]).
fn join_xdp(cfg: &Config) -> Result<Started> {
    let name = &cfg.global.instance;
    let dir = instance::pin_dir(name);
    if !dir.join(lb_common::maps::POOL_STATE).exists() {
        anyhow::bail!(
            "--join: instance `{name}` has no pinned maps at {} (it runs without XDP, or is an \
             older lb): a joined process shares the running one's pinned maps",
            dir.display()
        );
    }
    let mut plane = DataPlane::load_joined(&dir).context("loading the XDP object over the pins")?;
    plane.write(&Plan::from_config(cfg, 1))?;
    info!(pins = %dir.display(), "joined the running instance: sharing its maps and addresses");
    Ok(Started {
        plane: Arc::new(Mutex::new(Some(plane))),
        pin_dir: dir,
        ifaces: Vec::new(),
        janitor: None,
    })
}

/// No privileges, and a program `lb attach` attached: its maps, opened
/// through their pins; nothing attached, pinned or removed by this process.
fn open_preattached(cfg: &Config) -> Result<Started> {
    let dir = instance::pin_dir(&cfg.global.instance);
    let mut plane = DataPlane::open_pinned(&dir)?;
    plane.write(&Plan::from_config(cfg, 1))?;
    let ifaces = crate::attach::linked_ifaces(&dir);
    info!(pins = %dir.display(), ?ifaces, "no privileges: writing into the program `lb attach` attached; it stays attached when this process stops (`lb detach` removes it)");
    Ok(Started {
        plane: Arc::new(Mutex::new(Some(plane))),
        pin_dir: dir,
        ifaces,
        janitor: None,
    })
}

/// A joined process, once the old one has exited: takes the instance lock,
/// pins the maps again and attaches the program.
async fn take_over(
    cfg: Config,
    started: Arc<Mutex<Started>>,
    lock: Arc<Mutex<Option<InstanceLock>>>,
) {
    let name = &cfg.global.instance;
    let got = loop {
        match instance::lock(name) {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    *lock.lock().unwrap_or_else(PoisonError::into_inner) = Some(got);
    let mut s = started.lock().unwrap_or_else(PoisonError::into_inner);
    let plane = Arc::clone(&s.plane);
    let mut guard = plane.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(p) = guard.as_mut() else {
        return;
    };
    match own_pins(&cfg, p, &mut s) {
        Ok(()) => {
            info!(instance = %name, pins = %s.pin_dir.display(), ifaces = ?s.ifaces, "the old process has exited: this one owns the instance now");
            match crate::privileges::drop_all_but(&[]) {
                Ok(left) => info!(kept = ?left, "capabilities dropped"),
                Err(e) => warn!(error = %e, "could not drop capabilities"),
            }
        }
        Err(e) => {
            error!(error = %format!("{e:#}"), "taking over the instance: XDP is not attached")
        }
    }
}

/// Runs until SIGINT or SIGTERM. With `join`, starts beside a running
/// process of the same instance (an upgrade or restart without a gap):
/// shares its pinned maps (so both enforce one `maxConn`) and its listening
/// addresses, and takes the instance over when it exits.
///
/// # Errors
/// The instance is taken (and not `join`), or the data plane could not
/// start; nothing is left attached or pinned then.
pub fn run(cfg: &Config, join: bool) -> Result<()> {
    let name = &cfg.global.instance;
    let lock = match instance::lock(name) {
        Ok(l) => Some(l),
        Err(instance::InstanceError::Running { .. }) if join => None,
        Err(e) => return Err(e.into()),
    };
    let joined = lock.is_none();
    // Certificates and ticket keys first: a bad file refuses to start with
    // nothing attached.
    let (tls, redis) = crate::tls::build_all(cfg)?;
    let lock = Arc::new(Mutex::new(lock));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Handlers before anything is attached or "ready" is said: a SIGTERM from
    // then on always takes the cleanup path below.
    let signals = rt.block_on(async { Signals::install() })?;
    let started = if joined {
        Some(join_xdp(cfg)?)
    } else if cfg.xdp.mode == XdpMode::Off {
        warn!("[xdp] mode = \"off\": no XDP program attached; SYN limits are not enforced in the kernel");
        None
    } else if !can_load_bpf() && crate::attach::preattached(&instance::pin_dir(name)) {
        Some(open_preattached(cfg)?)
    } else if !can_load_bpf() {
        warn!(
            "no privileges to load BPF (need root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN): running with \
             no XDP program attached; SYN limits are not enforced in the kernel"
        );
        None
    } else {
        Some(start_xdp(cfg)?)
    };
    crate::limits::log_disabled(cfg);
    let _enter = rt.enter();
    let table = match &started {
        Some(s) => Table::from_pin(&s.pin_dir.join(lb_common::maps::POOL_STATE))
            .with_context(|| format!("mapping {}", lb_common::maps::POOL_STATE))?,
        None => Table::heap(lb_common::MAX_BUCKETS as usize),
    };
    let live = Arc::new(Live::new(cfg, Arc::new(table)));
    let sessions = match Sessions::load_or_create(&instance::session_key_path(name)) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "no session key file: session cookies last only as long as this process");
            Sessions::random()
        }
    };
    let trusted = match started.as_ref().map(|s| {
        crate::trust::TrustMap::open(&s.pin_dir.join(lb_common::maps::TRUSTED))
            .with_context(|| format!("opening the pinned {} map", lb_common::maps::TRUSTED))
    }) {
        Some(Ok(map)) => Some(Arc::new(map)),
        Some(Err(e)) => {
            stop_xdp(started)?;
            return Err(e);
        }
        None => None,
    };
    let proxy = match Proxy::start(cfg, Arc::clone(&live), sessions, tls.clone(), trusted) {
        Ok(p) => p,
        Err(e) => {
            stop_xdp(started)?;
            return Err(e);
        }
    };
    let control = Arc::new(Control::new(
        cfg.clone(),
        live,
        started.as_ref().map(|s| Arc::clone(&s.plane)),
        tls,
    ));
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
            let tls = match a.tls.as_ref().map(admin::tls_config).transpose() {
                Ok(t) => t,
                Err(e) => {
                    rt.block_on(proxy.stop());
                    stop_xdp(started)?;
                    return Err(e);
                }
            };
            let server = admin_token(a, name).and_then(|token| {
                rt.block_on(admin::start(
                    addr,
                    admin::Admin {
                        shared: Arc::clone(proxy.shared()),
                        control: Arc::clone(&control),
                        token,
                        redis: redis.clone(),
                        started: std::time::Instant::now(),
                        tls,
                    },
                    joined,
                ))
            });
            match server {
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
    // Attached, pinned and bound: drop what is not needed any more (a
    // joined process keeps what taking over needs, and drops it then).
    let keep = if joined {
        crate::privileges::TAKE_OVER
    } else {
        &[]
    };
    match crate::privileges::drop_all_but(keep) {
        Ok(left) => info!(kept = ?left, "capabilities dropped"),
        Err(e) => warn!(error = %e, "could not drop capabilities"),
    }
    if let Some(s) = &started {
        info!(
            instance = %name,
            pins = %s.pin_dir.display(),
            vips = cfg.frontend.len(),
            ifaces = ?s.ifaces,
            joined,
            "ready"
        );
    } else {
        info!(instance = %name, "ready (no XDP)");
    }
    let started = started.map(|s| Arc::new(Mutex::new(s)));
    let takeover = match (&started, joined) {
        (Some(s), true) => Some(rt.spawn(take_over(cfg.clone(), Arc::clone(s), Arc::clone(&lock)))),
        _ => None,
    };
    rt.block_on(signals.wait(&control));
    info!(drain = ?cfg.global.drain_timeout.0, "stopped accepting; draining");
    if let Some(a) = admin {
        a.abort();
    }
    if let Some(t) = takeover {
        t.abort();
    }
    rt.block_on(proxy.stop());
    // The owner's last act: session cookies end with the instance (a
    // joined process has read the key already).
    if lock
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
    {
        let _ = std::fs::remove_file(instance::session_key_path(name));
        if cfg
            .admin
            .as_ref()
            .is_some_and(|a| a.token.is_none() && a.token_file.is_none())
        {
            let _ = std::fs::remove_file(instance::admin_token_path(name));
        }
    }
    stop_xdp(started.map(|s| match Arc::try_unwrap(s) {
        Ok(m) => m.into_inner().unwrap_or_else(PoisonError::into_inner),
        Err(shared) => {
            let mut g = shared.lock().unwrap_or_else(PoisonError::into_inner);
            Started {
                plane: Arc::clone(&g.plane),
                pin_dir: g.pin_dir.clone(),
                ifaces: std::mem::take(&mut g.ifaces),
                janitor: g.janitor.take(),
            }
        }
    }))
}

/// The admin token: `token`, the first line of `tokenFile` (which must not
/// be readable by group or others), or else one made for the instance in
/// [`instance::admin_token_path`] (kept by a `--join`ed process).
fn admin_token(a: &crate::config::Admin, name: &str) -> Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    if let Some(t) = &a.token {
        return Ok(t.clone());
    }
    if let Some(f) = &a.token_file {
        let mode = std::fs::metadata(f)
            .with_context(|| format!("reading [admin] tokenFile {}", f.display()))?
            .mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "[admin] tokenFile {} is open to group or others (mode {:04o}); allowed: 0600 \
                 or 0400 (chmod 600 {})",
                f.display(),
                mode & 0o7777,
                f.display()
            );
        }
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading [admin] tokenFile {}", f.display()))?;
        let token = text.lines().next().unwrap_or_default().trim().to_owned();
        if token.is_empty() {
            anyhow::bail!(
                "[admin] tokenFile {} is empty; allowed: the token on its first line",
                f.display()
            );
        }
        return Ok(token);
    }
    let path = instance::admin_token_path(name);
    let hex = |b: &[u8]| b.iter().all(u8::is_ascii_hexdigit);
    let token = instance::load_or_create_secret(
        &path,
        |b| b.len() == 48 && hex(b),
        || {
            let mut raw = [0u8; 24];
            aws_lc_rs::rand::fill(&mut raw)
                .map_err(|_| std::io::Error::other("the random generator failed"))?;
            Ok(raw
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes())
        },
    )
    .with_context(|| format!("making the admin token {}", path.display()))?;
    info!(
        file = %path.display(),
        "admin API: changes need `Authorization: Bearer <the token in this file>` \
         (`lb profile set` reads it)"
    );
    Ok(String::from_utf8_lossy(&token).into_owned())
}

/// Detaches XDP and removes the pins (when started and owned: a joined
/// process that never took over leaves them to the running one).
fn stop_xdp(started: Option<Started>) -> Result<()> {
    if let Some(s) = started {
        drop(
            s.plane
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        if s.janitor.is_some() {
            instance::remove_pins(&s.pin_dir)?;
            info!(pins = %s.pin_dir.display(), "detached; pins removed");
        }
    }
    Ok(())
}

/// SIGTERM, SIGINT and SIGHUP, caught.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime).
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    /// Reloads the limits on each SIGHUP until SIGTERM or SIGINT.
    async fn wait(mut self, control: &Control) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return info!("SIGTERM: shutting down"),
                _ = self.int.recv() => return info!("SIGINT: shutting down"),
                _ = self.hup.recv() => match control.reload() {
                    Ok(()) => info!("SIGHUP: configuration reloaded"),
                    Err(e) => error!(error = %e, "SIGHUP: reload refused; the running configuration stays"),
                },
            }
        }
    }
}
