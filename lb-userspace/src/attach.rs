//! `lb attach` and `lb detach`: an XDP program attached by root for an
//! `lb` that runs without privileges.
//!
//! `lb attach --owner USER` (root) loads the program, writes the config's
//! plan into its maps, pins the maps and one bpf_link per interface in the
//! instance's pin directory, hands the directory and its pins to `USER`
//! (mode 0700 and 0600), and exits: the program stays attached while the
//! link pins exist. An `lb run` as `USER`, with no capability at all,
//! then finds the link pins ([`preattached`]), opens the maps through
//! their pins (the kernel checks only the files' permissions; BPF_OBJ_GET
//! needs no capability since Linux 6.5) and writes its own plan into them
//! at start and on every reload. It leaves the program and pins in place
//! when it stops. `lb detach` (root) removes the pins, which
//! detaches the program.
//!
//! A program attached this way has no janitor: nothing removes it if its
//! `lb` dies; it keeps enforcing the last plan written, which is what an
//! operator who attached it once wants.

use std::{
    ffi::CString,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    config::{Config, XdpMode},
    instance,
    xdp::{DataPlane, Plan, LINK_PIN_PREFIX},
};

/// A user and group to own the pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Owner {
    /// `USER`, `UID` or `UID:GID` (a name takes its primary group; a bare
    /// number the group of the same number).
    ///
    /// # Errors
    /// No such user, or not a number where one is due.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some((u, g)) = s.split_once(':') {
            let num = |v: &str, what| {
                v.parse::<u32>()
                    .with_context(|| format!("--owner {s}: {what} `{v}` is not a number"))
            };
            return Ok(Self {
                uid: num(u, "uid")?,
                gid: num(g, "gid")?,
            });
        }
        if let Ok(uid) = s.parse::<u32>() {
            return Ok(Self { uid, gid: uid });
        }
        let name = CString::new(s).with_context(|| format!("--owner {s:?}: not a user name"))?;
        // SAFETY: a NUL-terminated name; the returned record is read at once,
        // before any other call that could reuse it (single-threaded here).
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            bail!("--owner {s}: no such user (give a name in /etc/passwd, a UID or UID:GID)");
        }
        // SAFETY: non-null, just returned.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Ok(Self { uid, gid })
    }
}

/// Whether `dir` holds a program attached by `lb attach` (a link pin).
#[must_use]
pub fn preattached(dir: &Path) -> bool {
    !linked_ifaces(dir).is_empty()
}

/// The interfaces with a pinned link in `dir`.
#[must_use]
pub fn linked_ifaces(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut ifaces: Vec<String> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix(LINK_PIN_PREFIX).map(str::to_owned)
        })
        .collect();
    ifaces.sort();
    ifaces
}

/// `lb attach`: attaches the config's program to its interfaces with
/// pinned links and pinned maps, owned by `owner`; returns the pin
/// directory. Refused while the instance runs (its `lb` owns the pins).
///
/// # Errors
/// The config has XDP off or no interface, the instance is running, or
/// the kernel refused a step (nothing is left pinned or attached then).
pub fn attach(cfg: &Config, owner: Option<Owner>) -> Result<PathBuf> {
    let name = &cfg.global.instance;
    if cfg.xdp.mode == XdpMode::Off {
        bail!("[xdp] mode = \"off\": nothing to attach (set driver, skb or auto)");
    }
    let ifaces = cfg.xdp.ifaces();
    if ifaces.is_empty() {
        bail!("[xdp] iface: no interface to attach to");
    }
    // Held while attaching: a running `lb` of the instance owns its pins.
    let _lock = instance::lock(name)?;
    instance::ensure_bpffs()?;
    let mut plane = DataPlane::load().context("loading the XDP object")?;
    plane.write(&Plan::from_config(cfg, 1))?;
    let dir = instance::fresh_pin_dir(name)?;
    let done = (|| -> Result<()> {
        plane.pin(&dir)?;
        for iface in &ifaces {
            plane.attach_pinned(iface, cfg.xdp.mode, &dir)?;
        }
        hand_over(&dir, owner)
    })();
    if let Err(e) = done {
        // Removing the link pins detaches what was attached.
        let _ = instance::remove_pins(&dir);
        return Err(e);
    }
    Ok(dir)
}

/// The pin directory and its pins to `owner` (or root), 0700 and 0600.
fn hand_over(dir: &Path, owner: Option<Owner>) -> Result<()> {
    let (uid, gid) = owner.map_or((0, 0), |o| (o.uid, o.gid));
    let mut paths = vec![dir.to_owned()];
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        paths.push(
            e.with_context(|| format!("listing {}", dir.display()))?
                .path(),
        );
    }
    for p in paths {
        let mode = if p == dir { 0o700 } else { 0o600 };
        std::os::unix::fs::chown(&p, Some(uid), Some(gid))
            .with_context(|| format!("chown {uid}:{gid} {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", p.display()))?;
    }
    Ok(())
}

/// `lb detach`: removes what `lb attach` pinned for the instance, which
/// detaches its program; returns the interfaces it was on.
///
/// # Errors
/// Nothing attached by `lb attach` for the instance, the instance is
/// running, or a pin could not be removed.
pub fn detach(cfg: &Config) -> Result<Vec<String>> {
    let name = &cfg.global.instance;
    let dir = instance::pin_dir(name);
    let ifaces = linked_ifaces(&dir);
    if ifaces.is_empty() {
        bail!(
            "instance `{name}` has no program attached by `lb attach` (no {LINK_PIN_PREFIX}* pin \
             in {})",
            dir.display()
        );
    }
    let _lock = instance::lock(name)?;
    instance::remove_pins(&dir)?;
    Ok(ifaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_parse_from_names_and_numbers() {
        assert_eq!(
            Owner::parse("root").expect("root"),
            Owner { uid: 0, gid: 0 }
        );
        assert_eq!(
            Owner::parse("65534").expect("uid"),
            Owner {
                uid: 65534,
                gid: 65534
            }
        );
        assert_eq!(
            Owner::parse("1000:100").expect("uid:gid"),
            Owner {
                uid: 1000,
                gid: 100
            }
        );
        let e = Owner::parse("no-such-user-here").expect_err("unknown");
        assert!(e.to_string().contains("no such user"), "{e}");
        let e = Owner::parse("10:x").expect_err("bad gid");
        assert!(e.to_string().contains("gid `x` is not a number"), "{e}");
    }
}
