//! `lb stats`: the data plane's counters and each level's `maxConn` counts,
//! read from the pinned maps alone, so it works from any shell while `lb run`
//! runs; with `--admin ADDR` also the proxy's refusals by frontend, level and
//! axis, and queue lengths by name, from the admin API.

use std::{fmt::Write as _, net::SocketAddr, path::Path};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use lb_common::{maps, PacketCounters, PoolState, VipCounters, VipKey, VipValue};
use serde_json::{json, Value};

use crate::{instance, xdp::vip_addr};

/// Errors reading the pins.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// No pins: the instance is not running (or has no XDP).
    #[error(
        "no pinned maps at {0}: is `lb run` running with this instance name and XDP on? \
         (`lb stats --instance NAME` must name the config's [global] instance)"
    )]
    NotRunning(String),
    /// A map could not be opened or read.
    #[error("reading pinned map `{name}`: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// The error.
        source: aya::maps::MapError,
    },
}

/// The counters of one VIP, per CPU.
#[derive(Debug, Clone)]
pub struct VipStats {
    /// The VIP.
    pub addr: SocketAddr,
    /// Its `vip_stats` index.
    pub index: u32,
    /// One entry per possible CPU.
    pub per_cpu: Vec<VipCounters>,
}

impl VipStats {
    /// The counters summed over CPUs.
    #[must_use]
    pub fn total(&self) -> VipCounters {
        sum_vip(&self.per_cpu)
    }
}

/// One CPU's verdicts: the kernel's `counters` plus the SYN verdicts of every
/// VIP on that CPU (the kernel counts those once, per VIP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Passed: not IPv4/IPv6.
    pub not_ip: u64,
    /// Passed: truncated or nonsensical headers.
    pub malformed: u64,
    /// Passed: fragments.
    pub fragment: u64,
    /// Passed: IP, not TCP.
    pub not_tcp: u64,
    /// Passed: TCP, not a SYN.
    pub tcp_not_syn: u64,
    /// Passed: a SYN to no VIP.
    pub syn_not_vip: u64,
    /// Passed: SYNs to VIPs that every level admitted.
    pub syn_admitted: u64,
    /// Dropped: SYNs to VIPs that a level refused.
    pub syn_dropped: u64,
    /// Refused: SYNs to VIPs whose pool was saturated, answered with a RST
    /// or dropped as `[xdp] overflow` says (not in `syn_dropped`).
    pub syn_overflow: u64,
}

/// Everything `lb stats` shows.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Verdicts, one entry per possible CPU.
    pub per_cpu: Vec<Counters>,
    /// Per VIP, sorted by index.
    pub vips: Vec<VipStats>,
    /// `maxConn` accounting of each level in use (`pool_state` slot,
    /// counts), in slot order.
    pub levels: Vec<(u32, PoolState)>,
}

/// The name of a `pool_state` slot: `global`, `frontend #i`, `pool #i`
/// (numbered in file order).
#[must_use]
pub fn slot_name(slot: u32) -> String {
    let f = lb_common::MAX_FRONTENDS;
    match slot {
        0 => "global".to_owned(),
        s if s <= f => format!("frontend #{}", s - 1),
        s => format!("pool #{}", s - 1 - f),
    }
}

fn open(dir: &Path, name: &'static str) -> Result<Map, StatsError> {
    let data =
        MapData::from_pin(dir.join(name)).map_err(|source| StatsError::Map { name, source })?;
    Map::from_map_data(data).map_err(|source| StatsError::Map { name, source })
}

/// Sums per-CPU values field by field.
fn sum_packets(v: &[Counters]) -> Counters {
    v.iter().fold(Counters::default(), |a, c| Counters {
        not_ip: a.not_ip + c.not_ip,
        malformed: a.malformed + c.malformed,
        fragment: a.fragment + c.fragment,
        not_tcp: a.not_tcp + c.not_tcp,
        tcp_not_syn: a.tcp_not_syn + c.tcp_not_syn,
        syn_not_vip: a.syn_not_vip + c.syn_not_vip,
        syn_admitted: a.syn_admitted + c.syn_admitted,
        syn_dropped: a.syn_dropped + c.syn_dropped,
        syn_overflow: a.syn_overflow + c.syn_overflow,
    })
}

fn sum_vip(v: &[VipCounters]) -> VipCounters {
    v.iter().fold(VipCounters::default(), |a, c| VipCounters {
        admitted: a.admitted + c.admitted,
        drop_source: a.drop_source + c.drop_source,
        drop_global: a.drop_global + c.drop_global,
        drop_frontend: a.drop_frontend + c.drop_frontend,
        drop_pool: a.drop_pool + c.drop_pool,
        overflow: a.overflow + c.overflow,
        admitted_trusted: a.admitted_trusted + c.admitted_trusted,
    })
}

impl Stats {
    /// Reads the pins of a running instance.
    ///
    /// # Errors
    /// The instance has no pins, or a map could not be read.
    pub fn read(instance_name: &str) -> Result<Self, StatsError> {
        let dir = instance::pin_dir(instance_name);
        if !dir.join(maps::COUNTERS).exists() {
            return Err(StatsError::NotRunning(dir.display().to_string()));
        }
        Self::read_dir(&dir)
    }

    /// Reads the maps pinned in `dir`.
    ///
    /// # Errors
    /// A map could not be opened or read.
    pub fn read_dir(dir: &Path) -> Result<Self, StatsError> {
        let err = |name| move |source| StatsError::Map { name, source };
        let counters: PerCpuArray<MapData, PacketCounters> =
            PerCpuArray::try_from(open(dir, maps::COUNTERS)?).map_err(err(maps::COUNTERS))?;
        let values: PerCpuValues<PacketCounters> =
            counters.get(&0, 0).map_err(err(maps::COUNTERS))?;

        let vip_map: HashMap<MapData, VipKey, VipValue> =
            HashMap::try_from(open(dir, maps::VIPS)?).map_err(err(maps::VIPS))?;
        let vip_stats: PerCpuArray<MapData, VipCounters> =
            PerCpuArray::try_from(open(dir, maps::VIP_STATS)?).map_err(err(maps::VIP_STATS))?;
        let mut vips = Vec::new();
        for entry in vip_map.iter() {
            let (k, v) = entry.map_err(err(maps::VIPS))?;
            let values = vip_stats
                .get(&v.vip_index, 0)
                .map_err(err(maps::VIP_STATS))?;
            vips.push(VipStats {
                addr: vip_addr(&k),
                index: v.vip_index,
                per_cpu: values.iter().copied().collect(),
            });
        }
        vips.sort_by_key(|v| v.index);
        let levels = match open(dir, maps::POOL_STATE) {
            Ok(m) => {
                let arr: Array<MapData, PoolState> =
                    Array::try_from(m).map_err(err(maps::POOL_STATE))?;
                arr.iter()
                    .enumerate()
                    .filter_map(|(i, v)| Some((u32::try_from(i).ok()?, v.ok()?)))
                    .filter(|(_, p)| p.limit != 0 || p.active != 0 || p.queued != 0)
                    .collect()
            }
            // An older instance without the map.
            Err(_) => Vec::new(),
        };
        let per_cpu = values
            .iter()
            .enumerate()
            .map(|(cpu, p)| {
                let on_cpu = |f: fn(&VipCounters) -> u64| {
                    vips.iter()
                        .filter_map(|v| v.per_cpu.get(cpu))
                        .map(f)
                        .sum::<u64>()
                };
                Counters {
                    not_ip: p.not_ip,
                    malformed: p.malformed,
                    fragment: p.fragment,
                    not_tcp: p.not_tcp,
                    tcp_not_syn: p.tcp_not_syn,
                    syn_not_vip: p.syn_not_vip,
                    syn_admitted: on_cpu(|c| c.admitted),
                    syn_dropped: on_cpu(VipCounters::dropped),
                    syn_overflow: on_cpu(|c| c.overflow),
                }
            })
            .collect();
        Ok(Self {
            per_cpu,
            vips,
            levels,
        })
    }

    /// Counters summed over CPUs.
    #[must_use]
    pub fn total(&self) -> Counters {
        sum_packets(&self.per_cpu)
    }

    /// As JSON: `{"packets": {...}, "per_cpu": [...], "vips": [...]}`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let vips: Vec<Value> = self
            .vips
            .iter()
            .map(|v| {
                let t = sum_vip(&v.per_cpu);
                json!({
                    "vip": v.addr.to_string(),
                    "admitted": t.admitted,
                    "admitted_trusted": t.admitted_trusted,
                    "dropped": t.dropped(),
                    "drop_source": t.drop_source,
                    "drop_global": t.drop_global,
                    "drop_frontend": t.drop_frontend,
                    "drop_pool": t.drop_pool,
                    "overflow": t.overflow,
                    "per_cpu": v.per_cpu.iter().map(vip_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        let levels: Vec<Value> = self
            .levels
            .iter()
            .map(|(slot, p)| {
                json!({
                    "slot": slot, "level": slot_name(*slot), "limit": p.limit,
                    "active": p.active, "queued": p.queued, "saturated": p.saturated,
                })
            })
            .collect();
        json!({
            "packets": packets_json(&self.total()),
            "per_cpu": self.per_cpu.iter().map(packets_json).collect::<Vec<_>>(),
            "vips": vips,
            "max_conn": levels,
        })
    }

    /// The human table; `per_cpu` adds a column per CPU.
    #[must_use]
    pub fn render(&self, per_cpu: bool) -> String {
        let mut out = String::new();
        let cpus = self.per_cpu.len();
        let header = |out: &mut String, title: &str| {
            let _ = write!(out, "{title:<34}{:>12}", "total");
            if per_cpu {
                for c in 0..cpus {
                    let _ = write!(out, "{:>12}", format!("cpu{c}"));
                }
            }
            out.push('\n');
        };
        let row =
            |out: &mut String, name: &str, total: u64, each: &mut dyn Iterator<Item = u64>| {
                let _ = write!(out, "  {name:<32}{total:>12}");
                if per_cpu {
                    for v in each {
                        let _ = write!(out, "{v:>12}");
                    }
                }
                out.push('\n');
            };
        header(&mut out, "packets by verdict reason");
        let t = self.total();
        for (name, total, get) in packet_fields(&t) {
            row(&mut out, name, total, &mut self.per_cpu.iter().map(get));
        }
        for v in &self.vips {
            out.push('\n');
            header(&mut out, &format!("SYNs to VIP {}", v.addr));
            let t = sum_vip(&v.per_cpu);
            row(
                &mut out,
                "admitted",
                t.admitted,
                &mut v.per_cpu.iter().map(|c| c.admitted),
            );
            row(
                &mut out,
                "  from the reserve (trusted)",
                t.admitted_trusted,
                &mut v.per_cpu.iter().map(|c| c.admitted_trusted),
            );
            row(
                &mut out,
                "dropped",
                t.dropped(),
                &mut v.per_cpu.iter().map(VipCounters::dropped),
            );
            for (name, total, get) in vip_drop_fields(&t) {
                row(&mut out, name, total, &mut v.per_cpu.iter().map(get));
            }
            row(
                &mut out,
                "overflow (pool saturated)",
                t.overflow,
                &mut v.per_cpu.iter().map(|c| c.overflow),
            );
        }
        if !self.levels.is_empty() {
            let _ = writeln!(
                out,
                "\nmaxConn by level (pool_state){:>12}{:>12}{:>12}{:>12}",
                "limit", "active", "queued", "saturated"
            );
            for (slot, p) in &self.levels {
                let _ = writeln!(
                    out,
                    "  {:<28}{:>12}{:>12}{:>12}{:>12}",
                    slot_name(*slot),
                    p.limit,
                    p.active,
                    p.queued,
                    p.saturated
                );
            }
        }
        out
    }
}

/// `GET /api/status` from a running `lb`'s admin listener.
///
/// # Errors
/// No answer, or not JSON.
pub fn fetch_status(admin: SocketAddr) -> Result<Value, String> {
    crate::cli::get_json(admin, "/api/status")
}

/// The proxy's refusals by frontend, level and axis, and each level's
/// `maxConn` counts by name, from `/api/status`.
#[must_use]
pub fn render_limits(status: &Value) -> String {
    let mut out = String::new();
    let conns = |c: &Value| {
        format!(
            "maxConn {} active {} queued {}",
            c["limit"], c["active"], c["queued"]
        )
    };
    let _ = writeln!(out, "\nrefusals by frontend, level/axis (admin API)");
    for f in status["frontends"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  frontend {} (pool {}): {}, paced {}",
            f["name"].as_str().unwrap_or("?"),
            f["pool"].as_str().unwrap_or("?"),
            conns(&f["conns"]),
            f["paced"]
        );
        let refused = f["refused"].as_object().filter(|m| !m.is_empty());
        match refused {
            None => out.push_str("    no refusals\n"),
            Some(m) => {
                for (k, v) in m {
                    let _ = writeln!(out, "    {k:<30}{v:>12}");
                }
            }
        }
    }
    let _ = writeln!(out, "  global: {}", conns(&status["global"]));
    for p in status["pools"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  pool {}: {}",
            p["name"].as_str().unwrap_or("?"),
            conns(&p["conns"])
        );
    }
    out
}

type PacketField = (&'static str, u64, fn(&Counters) -> u64);

fn packet_fields(t: &Counters) -> [PacketField; 9] {
    [
        ("pass not_ip", t.not_ip, |c| c.not_ip),
        ("pass malformed", t.malformed, |c| c.malformed),
        ("pass fragment", t.fragment, |c| c.fragment),
        ("pass not_tcp", t.not_tcp, |c| c.not_tcp),
        ("pass tcp_not_syn", t.tcp_not_syn, |c| c.tcp_not_syn),
        ("pass syn_not_vip", t.syn_not_vip, |c| c.syn_not_vip),
        ("pass syn_admitted", t.syn_admitted, |c| c.syn_admitted),
        ("drop syn (all VIPs)", t.syn_dropped, |c| c.syn_dropped),
        ("refuse syn, pool full (all VIPs)", t.syn_overflow, |c| {
            c.syn_overflow
        }),
    ]
}

type VipField = (&'static str, u64, fn(&VipCounters) -> u64);

fn vip_drop_fields(t: &VipCounters) -> [VipField; 4] {
    [
        ("  by source (sourceSynRate)", t.drop_source, |c| {
            c.drop_source
        }),
        ("  by global maxConnRate", t.drop_global, |c| c.drop_global),
        ("  by frontend maxConnRate", t.drop_frontend, |c| {
            c.drop_frontend
        }),
        ("  by pool maxConnRate", t.drop_pool, |c| c.drop_pool),
    ]
}

fn packets_json(c: &Counters) -> Value {
    json!({
        "not_ip": c.not_ip, "malformed": c.malformed, "fragment": c.fragment,
        "not_tcp": c.not_tcp, "tcp_not_syn": c.tcp_not_syn, "syn_not_vip": c.syn_not_vip,
        "syn_admitted": c.syn_admitted, "syn_dropped": c.syn_dropped,
        "syn_overflow": c.syn_overflow,
    })
}

fn vip_json(c: &VipCounters) -> Value {
    json!({
        "admitted": c.admitted, "admitted_trusted": c.admitted_trusted,
        "drop_source": c.drop_source, "drop_global": c.drop_global,
        "drop_frontend": c.drop_frontend, "drop_pool": c.drop_pool,
        "overflow": c.overflow,
    })
}
