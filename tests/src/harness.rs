//! The XDP program loaded from the real embedded object, configured from a
//! config text, its maps pinned in a scratch directory, and run on packets
//! through BPF_PROG_TEST_RUN. Used by the fixture tests and the benchmark.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, Map, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use lb::{
    config::Config,
    instance,
    stats::Stats,
    xdp::{DataPlane, Plan},
};
use lb_common::{maps, programs, PoolState};

use crate::unique_tag;

/// A loaded data plane whose pins are removed on drop.
pub struct XdpHarness {
    plane: DataPlane,
    pins: PathBuf,
}

impl XdpHarness {
    /// Loads the object and writes the maps for `config` (a config file's
    /// text; `[xdp] mode = "off"` keeps it from checking interfaces).
    ///
    /// # Errors
    /// The config is invalid, or the kernel refused the object.
    pub fn new(config: &str) -> Result<Self> {
        let cfg = Config::parse(config, Path::new("harness.toml"))?;
        instance::ensure_bpffs()?;
        let mut plane = DataPlane::load().context("load the XDP object")?;
        plane.write(&Plan::from_config(&cfg, 1))?;
        let pins = instance::pin_dir(&format!("harness-{}", unique_tag()));
        std::fs::create_dir_all(&pins)?;
        let h = Self { plane, pins };
        h.plane.pin(&h.pins)?;
        Ok(h)
    }

    /// The counters, read from the pins as `lb stats` reads them.
    ///
    /// # Errors
    /// A pinned map could not be read.
    pub fn stats(&self) -> Result<Stats> {
        Ok(Stats::read_dir(&self.pins)?)
    }

    /// Runs `program` on `pkt` `repeat` times; returns the last verdict and
    /// the kernel's mean time per run.
    ///
    /// # Errors
    /// The program could not be loaded or run.
    pub fn run_program(
        &mut self,
        program: &'static str,
        pkt: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration)> {
        let prog = self.plane.program(program)?;
        let opts = TestRunOptions {
            data_in: Some(pkt),
            repeat,
            ..TestRunOptions::default()
        };
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        Ok((r.return_value, r.duration))
    }

    /// Attaches `program` to `iface` (in this thread's namespace) in native
    /// mode, until the harness is dropped.
    ///
    /// # Errors
    /// The interface does not exist or lacks native XDP.
    pub fn attach(&mut self, program: &'static str, iface: &str) -> Result<()> {
        self.plane
            .attach_program(program, iface, lb::config::XdpMode::Driver)?;
        Ok(())
    }

    /// Runs the SYN limiter once on `pkt`; returns its verdict.
    ///
    /// # Errors
    /// As for [`Self::run_program`].
    pub fn run(&mut self, pkt: &[u8]) -> Result<u32> {
        Ok(self.run_program(programs::XDP_LB, pkt, 1)?.0)
    }

    /// Runs the SYN limiter once on `pkt`; returns its verdict and the
    /// packet as the program left it (rewritten, resized).
    ///
    /// # Errors
    /// As for [`Self::run_program`].
    pub fn run_output(&mut self, pkt: &[u8]) -> Result<(u32, Vec<u8>)> {
        let prog = self.plane.program(programs::XDP_LB)?;
        // Room for a program that grows the packet; this one only shrinks.
        let mut out = vec![0; pkt.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        out.truncate(usize::try_from(r.data_size_out)?);
        Ok((r.return_value, out))
    }

    /// Sets `saturated` of `pool_state[index]` (a [`lb_common::bucket`]
    /// index), as the daemon does when a pool is at `maxConn` with a full
    /// queue; the other fields are kept.
    ///
    /// # Errors
    /// The pinned map could not be opened or written.
    pub fn set_saturated(&self, index: u32, saturated: bool) -> Result<()> {
        let data = MapData::from_pin(self.pins.join(maps::POOL_STATE))?;
        let mut pools: Array<MapData, PoolState> = Array::try_from(Map::from_map_data(data)?)?;
        let mut state = pools.get(&index, 0)?;
        state.saturated = u64::from(saturated);
        pools.set(index, state, 0)?;
        Ok(())
    }

    /// Marks `ip`'s source trusted as of `seen_ns` (`CLOCK_MONOTONIC`), as
    /// a worker does when it accepts a connection from it.
    ///
    /// # Errors
    /// The pinned map could not be opened or written.
    pub fn trust(&self, ip: std::net::IpAddr, seen_ns: u64) -> Result<()> {
        let map = lb::trust::TrustMap::open(&self.pins.join(maps::TRUSTED))?;
        map.write(lb::trust::source_key(ip), seen_ns)?;
        Ok(())
    }
}

impl Drop for XdpHarness {
    fn drop(&mut self) {
        let _ = instance::remove_pins(&self.pins);
    }
}

/// Keeps the calling thread on one CPU: test runs execute on the calling
/// CPU, and the buckets' per-CPU token caches must be the same from run to
/// run.
///
/// # Errors
/// `sched_setaffinity` failed.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    anyhow::ensure!(
        rc == 0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}
