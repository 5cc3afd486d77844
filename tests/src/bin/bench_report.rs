//! `lb-bench-report`: one report of every benchmark, side by side with the
//! peers. Reads the `NAME.json` each `lb-bench-*` tool wrote beside its
//! `NAME.md` in a results directory, and writes there `REPORT.md` (the
//! machine, every peer's version, the issue's targets and where this run
//! stands, each comparison as a table, the commands to rerun a line by
//! hand) and one PNG chart per comparison (`charts/ID.png`: the median of
//! each peer as a bar, its min–max over the runs as a whisker, `lb` in
//! blue, the baseline it is compared against in dark grey).
//!
//! Usage: `lb-bench-report --dir bench/results [--quick]`; `cargo xtask
//! bench all` runs it after the benchmarks. The charts need a TrueType
//! font: DejaVu Sans from Debian's `fonts-dejavu-core`, which `cargo xtask
//! setup` installs.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use lb_tests::{
    report::{cpu_and_kernel, first_line},
    results::{self, Comparison, Results},
};
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// The benchmarks, in the order the report shows them.
const BENCHES: [&str; 6] = ["xdp", "proxy", "tls", "flood", "memory", "limits"];

/// The font the charts are drawn with.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

struct Opts {
    dir: PathBuf,
    quick: bool,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        dir: PathBuf::from("bench/results"),
        quick: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => o.dir = args.next().context("--dir needs a directory")?.into(),
            "--quick" => o.quick = true,
            other => bail!("unknown argument `{other}`; allowed: --dir DIR, --quick"),
        }
    }
    Ok(o)
}

fn main() -> Result<()> {
    let o = opts()?;
    // A quick run's files are NAME-quick.json.
    let suffix = if o.quick { "-quick" } else { "" };
    let mut found = Vec::new();
    for b in BENCHES {
        let path = o.dir.join(format!("{b}{suffix}.json"));
        if path.exists() {
            found.push((b, results::read(&path)?));
        }
    }
    if found.is_empty() {
        bail!(
            "no benchmark results (NAME{suffix}.json) in {}: run `cargo xtask bench all` first",
            o.dir.display()
        );
    }
    register_font()?;
    let charts = o.dir.join("charts");
    std::fs::create_dir_all(&charts).with_context(|| format!("creating {}", charts.display()))?;
    for (_, r) in &found {
        for c in &r.comparisons {
            let png = charts.join(format!("{}{suffix}.png", c.id));
            chart(c, &png).with_context(|| format!("drawing {}", png.display()))?;
        }
    }
    let out = o.dir.join(format!("REPORT{suffix}.md"));
    std::fs::write(&out, report(&found, suffix))
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}

/// Registers [`FONT`] as plotters' `sans-serif`.
fn register_font() -> Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian fonts-dejavu-core: cargo xtask setup)"))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT}: not a font ab_glyph can read"))
}

/// Figures as a person reads them: 3 significant digits, no exponent.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A ratio as the reports write them: `0.37×`.
fn times(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}×")
    } else {
        "–".into()
    }
}

/// One comparison as a horizontal bar chart.
fn chart(c: &Comparison, png: &Path) -> Result<()> {
    let n = c.rows.len();
    let height = 90 + 44 * u32::try_from(n.max(1)).unwrap_or(20);
    let root = BitMapBackend::new(png, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = c
        .rows
        .iter()
        .map(|r| r.max.max(r.median))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let better = if c.lower_is_better {
        "lower is better"
    } else {
        "higher is better"
    };
    let mut ch = ChartBuilder::on(&root)
        .caption(
            c.title.as_str(),
            ("sans-serif", if c.title.len() > 80 { 14 } else { 17 }).into_font(),
        )
        .margin(12)
        .margin_left(260)
        .x_label_area_size(34)
        .build_cartesian_2d(0.0..top, 0.0..n as f64)?;
    ch.configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .y_labels(0)
        .x_desc(format!("{} ({better})", c.unit))
        .x_label_formatter(&|v| num(*v))
        .label_style(("sans-serif", 13))
        .draw()?;
    let lb_blue = RGBColor(31, 102, 181);
    let base = c.baseline.as_deref();
    for (i, r) in c.rows.iter().enumerate() {
        // The first row at the top.
        let y = (n - 1 - i) as f64;
        let color = if r.name.starts_with("lb") {
            lb_blue
        } else if Some(r.name.as_str()) == base {
            RGBColor(90, 90, 90)
        } else {
            RGBColor(170, 170, 170)
        };
        if r.median.is_finite() {
            ch.draw_series([Rectangle::new(
                [(0.0, y + 0.2), (r.median, y + 0.8)],
                color.filled(),
            )])?;
        }
        if r.min.is_finite() && r.max.is_finite() {
            ch.draw_series([ErrorBar::new_horizontal(
                y + 0.5,
                r.min,
                r.median,
                r.max,
                BLACK.stroke_width(2),
                10,
            )])?;
        }
        let ratio = c.ratio(r);
        let value = if ratio.is_finite() && Some(r.name.as_str()) != base {
            format!("{} ({})", num(r.median), times(ratio))
        } else {
            num(r.median)
        };
        let (px, py) = ch.backend_coord(&(0.0, y + 0.5));
        root.draw(&Text::new(
            r.name.clone(),
            (px - 8, py),
            ("sans-serif", 14)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
        let end = if r.max.is_finite() { r.max } else { r.median };
        let (vx, vy) = ch.backend_coord(&(end.max(0.0), y + 0.5));
        root.draw(&Text::new(
            value,
            (vx + 8, vy),
            ("sans-serif", 13)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// The whole `REPORT.md`.
fn report(found: &[(&str, Results)], suffix: &str) -> String {
    let mut s = String::new();
    let quick = found.iter().any(|(_, r)| r.quick);
    let _ = writeln!(s, "# lb benchmark report\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench all` (each benchmark, then `lb-bench-report`) on {}, \
         lb {}. Every figure is the median over the runs of its benchmark with the range \
         (min–max) in brackets; ratios are against the peer measured in the same run. Each \
         benchmark's own report (linked in its section) says how it measures.\n",
        first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        first_line("git", &["rev-parse", "--short", "HEAD"]),
    );
    if quick {
        let _ = writeln!(
            s,
            "**A quick run** (`--quick`): short runs, one each, to prove the harness works. \
             Its numbers are not the product's.\n"
        );
    }
    let _ = writeln!(s, "## Machine and peers\n");
    s.push_str(&cpu_and_kernel());
    // One line per peer: where benchmarks name it differently detailed
    // (HAProxy with its OpenSSL, lb with its rustls), the most detailed.
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (_, r) in found {
        for (what, version) in &r.versions {
            if what == "kernel" {
                continue;
            }
            match seen.iter_mut().find(|(w, _)| w == what) {
                Some(v) if version.len() > v.1.len() => v.1 = version,
                Some(_) => {}
                None => seen.push((what, version)),
            }
        }
    }
    for (what, version) in seen {
        let _ = writeln!(s, "- {what}: {version}");
    }
    s.push('\n');
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(s, "| benchmark | what | target | measured | met |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (b, r) in found {
        for t in &r.targets {
            let _ = writeln!(
                s,
                "| {b} | {} | {} | {} | {} |",
                t.what,
                t.bound,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }
    }
    let missing: Vec<&str> = BENCHES
        .iter()
        .copied()
        .filter(|b| !found.iter().any(|(f, _)| f == b))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(
            s,
            "\nNot in this report (no results found): {}.",
            missing.join(", ")
        );
    }
    s.push('\n');
    for (b, r) in found {
        let _ = writeln!(s, "## {}\n", r.title);
        let _ = writeln!(
            s,
            "{} run(s) per figure; method and every table: [{b}{suffix}.md]({b}{suffix}.md).\n",
            r.runs
        );
        for c in &r.comparisons {
            section(&mut s, c, suffix);
        }
        if !r.commands.is_empty() {
            let _ = writeln!(s, "Commands:\n\n```");
            for cmd in &r.commands {
                let _ = writeln!(s, "{cmd}");
            }
            let _ = writeln!(s, "```\n");
        }
    }
    s
}

/// One comparison: its table and its chart.
fn section(s: &mut String, c: &Comparison, suffix: &str) {
    let better = if c.lower_is_better { "lower" } else { "higher" };
    let _ = writeln!(s, "### {} ({}, {better} is better)\n", c.title, c.unit);
    let base = c.baseline.as_deref();
    match base {
        Some(b) => {
            let _ = writeln!(s, "| | median | range | vs {b} |\n|---|---|---|---|");
        }
        None => {
            let _ = writeln!(s, "| | median | range |\n|---|---|---|");
        }
    }
    for r in &c.rows {
        let name = if r.name.starts_with("lb") {
            format!("**{}**", r.name)
        } else {
            r.name.clone()
        };
        let range = format!("{}–{}", num(r.min), num(r.max));
        if base.is_some() {
            let ratio = c.ratio(r);
            let _ = writeln!(
                s,
                "| {name} | {} | {range} | {} |",
                num(r.median),
                times(ratio)
            );
        } else {
            let _ = writeln!(s, "| {name} | {} | {range} |", num(r.median));
        }
    }
    let _ = writeln!(s, "\n![{}](charts/{}{suffix}.png)\n", c.title, c.id);
}
