//! Trusted sources: the daemon's half of `[xdp] trustSeconds`.
//!
//! A connection `accept` returns completed a TCP handshake, so its source
//! address is real, not spoofed. Each worker notes the peer of every
//! connection it accepts ([`Recorder::note`]); at most once a second per
//! source and worker it writes `CLOCK_MONOTONIC` now into the pinned
//! `trusted` map (`lb_common::TrustedSource`). The XDP program reads that
//! map only for a SYN that a `maxConnRate` level would refuse to an
//! untrusted source: a trusted one may still take the half of the burst
//! kept for it. The map is LRU and only this module writes it, so a flood
//! of spoofed SYNs can neither enter it nor push known clients out.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    net::IpAddr,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};
use lb_common::{family, SourceKey, TrustedSource};
use tracing::warn;

/// How often one worker rewrites one source's time: often enough that a
/// client that keeps connecting never lapses (`trustSeconds` ≥ 1 s), rare
/// enough that a busy client costs one map write a second.
const REFRESH: Duration = Duration::from_secs(1);

/// Sources one worker remembers writing; past this it forgets them all
/// (and writes each again on its next connection).
const REMEMBERED: usize = 16_384;

/// The pinned `trusted` map, shared by the workers.
pub struct TrustMap(Mutex<BpfHashMap<MapData, SourceKey, TrustedSource>>);

impl std::fmt::Debug for TrustMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrustMap")
    }
}

impl TrustMap {
    /// Opens the map pinned at `pin`.
    ///
    /// # Errors
    /// The pin is missing, or is no hash map of the right key and value.
    pub fn open(pin: &Path) -> Result<Self, MapError> {
        let map = BpfHashMap::try_from(aya::maps::Map::from_map_data(MapData::from_pin(pin)?)?)?;
        Ok(Self(Mutex::new(map)))
    }

    /// Marks `key` seen at `seen_ns` (`CLOCK_MONOTONIC`).
    ///
    /// # Errors
    /// The kernel refused the update.
    pub fn write(&self, key: SourceKey, seen_ns: u64) -> Result<(), MapError> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(key, TrustedSource { seen_ns }, 0)
    }
}

/// The `sources`/`trusted` key of an address, as the XDP program builds
/// it: IPv4 /32, IPv6 /64 (an IPv4-mapped IPv6 address as IPv4).
#[must_use]
pub fn source_key(ip: IpAddr) -> SourceKey {
    let mut key = SourceKey::default();
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            key.addr[..4].copy_from_slice(&v4.octets());
            key.family = family::V4;
        }
        IpAddr::V6(v6) => {
            key.addr[..8].copy_from_slice(&v6.octets()[..8]);
            key.family = family::V6;
        }
    }
    key
}

/// `CLOCK_MONOTONIC` in ns, the clock `bpf_ktime_get_coarse_ns` reads.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// One worker's writer: the map and the sources it wrote lately.
pub struct Recorder {
    map: std::sync::Arc<TrustMap>,
    written: RefCell<HashMap<SourceKey, Instant>>,
    warned: Cell<bool>,
}

impl Recorder {
    /// A writer into `map` for one worker.
    #[must_use]
    pub fn new(map: std::sync::Arc<TrustMap>) -> Self {
        Self {
            map,
            written: RefCell::default(),
            warned: Cell::new(false),
        }
    }

    /// A connection from `peer` was accepted: trust its source, writing
    /// the map unless this worker did so less than a second ago.
    pub fn note(&self, peer: IpAddr) {
        let key = source_key(peer);
        let now = Instant::now();
        {
            let mut written = self.written.borrow_mut();
            if written
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < REFRESH)
            {
                return;
            }
            if written.len() >= REMEMBERED {
                written.clear();
            }
            written.insert(key, now);
        }
        if let Err(e) = self.map.write(key, monotonic_ns()) {
            if !self.warned.replace(true) {
                warn!(error = %e, %peer, "could not mark a source trusted in the XDP map (said once)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_xdp_program() {
        let v4 = source_key("192.0.2.7".parse().unwrap());
        assert_eq!(
            (v4.family, &v4.addr[..5]),
            (family::V4, &[192, 0, 2, 7, 0][..])
        );
        let mapped = source_key("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(mapped, v4);
        let v6 = source_key("2001:db8:0:9::7".parse().unwrap());
        assert_eq!(v6.family, family::V6);
        assert_eq!(&v6.addr[..8], &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 9]);
        assert!(v6.addr[8..].iter().all(|b| *b == 0), "only the /64");
    }
}
