//! What the benchmark tools share: summaries of repeated runs, the CPU
//! clock tick, and the machine description at the top of each report.

use std::process::Command;

/// Median and range of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// The median (upper middle for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

/// Summarizes a sample (all NaN when it is empty).
#[must_use]
pub fn summarize(mut v: Vec<f64>) -> Summary {
    if v.is_empty() {
        return Summary {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    v.sort_by(f64::total_cmp);
    Summary {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// Clock ticks per second (`/proc` CPU times are in these).
#[must_use]
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The first line a command prints (stdout, then stderr), or `not found`.
#[must_use]
pub fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| {
            let t = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            t.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|_| "not found".into())
}

/// `- CPU: MODEL, N cores` and `- kernel: VERSION` lines.
#[must_use]
pub fn cpu_and_kernel() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    // Not available_parallelism: the caller may be pinned to one CPU.
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!(
        "- CPU: {model}, {cores} cores\n- kernel: {}\n",
        first_line("uname", &["-r"])
    )
}

/// A summary as the reports write it: `median (min–max)`, `–` if empty.
#[must_use]
pub fn fmt(s: Summary, decimals: usize) -> String {
    if s.median.is_nan() {
        return "–".into();
    }
    format!(
        "{:.d$} ({:.d$}–{:.d$})",
        s.median,
        s.min,
        s.max,
        d = decimals
    )
}

/// `a / b` as the reports write it (`0.37×`), `–` when it has no value.
#[must_use]
pub fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}
