//! The machine-readable side of a benchmark run: every `lb-bench-*` tool
//! writes, beside its Markdown report `NAME.md`, a `NAME.json` holding
//! its comparisons (one chart each in the combined report), the targets
//! it checks, the versions of the peers it ran and the commands it used.
//! `lb-bench-report` reads them all and writes `REPORT.md` and the charts.
//!
//! A comparison's rows are peers measured in the same run, each a median
//! with its min–max over the runs; `baseline` names the row the others are
//! compared against (none: absolute figures, such as admitted rate over
//! configured rate per limit axis).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::report::Summary;

/// One benchmark run's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// The benchmark (`xdp`, `proxy`, `tls`, `flood`, `memory`, `limits`).
    pub bench: String,
    /// Its title in the combined report.
    pub title: String,
    /// The run was `--quick` (numbers only prove the harness works).
    pub quick: bool,
    /// Runs per figure (the median is over these).
    pub runs: usize,
    /// Side-by-side figures, one chart each.
    pub comparisons: Vec<Comparison>,
    /// The targets this benchmark checks.
    pub targets: Vec<Target>,
    /// `(what, version)` of every peer and tool run.
    pub versions: Vec<(String, String)>,
    /// Each command used, so a person can rerun one line by hand.
    pub commands: Vec<String>,
}

/// One figure measured for several peers in the same run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Comparison {
    /// A short stable name (the chart's file name): `proxy-cpu-per-request`.
    pub id: String,
    /// What is measured: `CPU µs per keep-alive request`.
    pub title: String,
    /// The unit of the values: `µs`, `requests/s`, `KiB`, `%`.
    pub unit: String,
    /// Whether lower is better (CPU, latency, memory) or higher
    /// (throughput, kept share).
    pub lower_is_better: bool,
    /// The row the ratios are against (`HAProxy`); none: no ratios.
    pub baseline: Option<String>,
    /// The peers, in the order shown.
    pub rows: Vec<Row>,
}

/// One peer's figure: the median over the runs and its range.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The peer or setup: `lb`, `HAProxy`, `nginx`, `HAProxy + nftables`.
    pub name: String,
    /// Median over the runs.
    pub median: f64,
    /// Smallest run.
    pub min: f64,
    /// Largest run.
    pub max: f64,
}

impl Row {
    /// A row from a [`Summary`].
    #[must_use]
    pub fn new(name: &str, s: Summary) -> Self {
        Self {
            name: name.to_owned(),
            median: s.median,
            min: s.min,
            max: s.max,
        }
    }
}

impl Comparison {
    /// The baseline row.
    #[must_use]
    pub fn baseline_row(&self) -> Option<&Row> {
        let b = self.baseline.as_ref()?;
        self.rows.iter().find(|r| &r.name == b)
    }

    /// `row`'s median over the baseline's (NaN without one).
    #[must_use]
    pub fn ratio(&self, row: &Row) -> f64 {
        self.baseline_row()
            .map_or(f64::NAN, |b| row.median / b.median)
    }
}

/// One of the targets and where this run stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// What: `CPU per full TLS handshake vs HAProxy`.
    pub what: String,
    /// The bound: `≤ 0.6×`.
    pub bound: String,
    /// The measured value as shown: `0.37× (0.35–0.41)`.
    pub measured: String,
    /// Whether the bound holds.
    pub met: bool,
}

/// `NAME.json` beside a report `NAME.md`.
#[must_use]
pub fn json_path(md: &Path) -> PathBuf {
    md.with_extension("json")
}

/// Writes `results` beside the Markdown report `md`.
///
/// # Errors
/// The file could not be written.
pub fn write(md: &Path, results: &Results) -> Result<()> {
    let path = json_path(md);
    let text = serde_json::to_string_pretty(results).context("encoding results")?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Reads `NAME.json`.
///
/// # Errors
/// The file is missing or not results.
pub fn read(path: &Path) -> Result<Results> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not benchmark results", path.display()))
}
