//! Capabilities after start: `lb run` needs privileges to load and attach
//! XDP, pin maps and bind low ports, and none of that again once it is
//! serving. So, once ready, it drops every capability from its effective,
//! permitted and inheritable sets, and from its bounding set, keeping only
//! what it still needs:
//!
//! - a `--join`ed process keeps `CAP_BPF`, `CAP_PERFMON`, `CAP_NET_ADMIN`
//!   and `CAP_SYS_ADMIN` (those it has) until it takes the instance over,
//!   when it re-pins the maps and attaches XDP; then it drops them too;
//! - nothing else: live changes write the XDP maps through the descriptors
//!   opened at start, the pins are removed at exit by their owner (root,
//!   the files' owner), the admin API and the proxy's sockets are bound.
//!
//! Child processes started after the drop (none today; the pin janitor is
//! started before) inherit nothing. A process started without privileges
//! (XDP off, or over a program `lb attach` attached: [`crate::attach`]) has
//! nothing to drop.

use caps::{CapSet, Capability, CapsHashSet};

/// What the process holds now, by name (`CAP_...`), sorted.
#[must_use]
pub fn effective() -> Vec<String> {
    let mut names: Vec<String> = caps::read(None, CapSet::Effective)
        .map(|s| s.into_iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The capabilities a process that has not taken its instance over yet
/// keeps (to pin and attach then).
pub const TAKE_OVER: &[Capability] = &[
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_SYS_ADMIN,
];

/// Drops every capability but those of `keep` the process has, from the
/// effective, permitted and inheritable sets and the bounding set; returns
/// what is left (names).
///
/// # Errors
/// The kernel refused a change (the sets are then as they were, or
/// smaller).
pub fn drop_all_but(keep: &[Capability]) -> Result<Vec<String>, caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // effective set still holds at this point.
    for cap in caps::all() {
        if !kept.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            // Without CAP_SETPCAP this fails; the other sets still go.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    Ok(effective())
}
