//! `cargo xtask`: every step a person or CI needs, installing what a fresh
//! machine lacks first.
//!
//! - `setup`: apt packages, `rust-src` for nightly, bpf-linker built against
//!   LLVM 22; skips what is present, names the step that failed.
//! - `build-ebpf`: the XDP object, printed with its path and size.
//! - `lint`: rustfmt and clippy on every crate (the eBPF crate with nightly),
//!   `cargo deny` (deny.toml: licenses, bans, sources; advisories where the
//!   RustSec database can be fetched), and `lb check` on
//!   every `examples/*.toml`.
//! - `test`: unit tests, then the privileged kernel and netns tests.
//! - `demo`: namespaces with `lb` (XDP, TLS, Redis) and real backends;
//!   normal traffic, a SYN flood, a handshake storm, a profile change.
//! - `bench xdp`: ns per packet and CPU per dropped SYN, written to
//!   `bench/results/xdp.md`.
//! - `bench proxy`: keep-alive HTTP requests/s, CPU per request and latency
//!   at two fixed rates (half load, half of HAProxy's saturation) for lb,
//!   HAProxy and nginx, written to `bench/results/proxy.md`.
//! - `bench tls`: full and resumed TLS 1.3 handshakes/s and CPU per
//!   handshake for lb, HAProxy and nginx, written to `bench/results/tls.md`.
//! - `bench flood`: legitimate HTTPS requests/s kept during a SYN flood,
//!   lb against HAProxy behind nftables (`bench/results/flood.md`).
//! - `bench memory`: memory per idle TLS connection, lb against HAProxy
//!   and nginx (`bench/results/memory.md`).
//! - `bench limits`: admitted over configured rate for each rate axis
//!   (`bench/results/limits.md`).
//! - `bench all`: every one, in that order. Each benchmark also writes
//!   `NAME.json`; after any of them `lb-bench-report` writes
//!   `bench/results/REPORT.md` and `charts/*.png` from all there are.
//!   `--quick` writes to `target/bench/` instead (CI).
//! - `fuzz [--seconds N] [TARGET]`: the cargo-fuzz targets in `fuzz/`,
//!   built with nightly, each run for N seconds on a copy of its committed
//!   corpus; fails naming the target and the crash file (docs/fuzzing.md).
//! - `soak [--seconds N]`: the soak test (`tests/tests/soak.rs`) for N
//!   seconds (default 300) on a debug build of `lb` (docs/reliability.md).
//!
//! Every command but `setup` runs `setup` first.

mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks (idempotent).
    Setup,
    /// Build the eBPF object and print its path and size.
    BuildEbpf,
    /// rustfmt --check and clippy -D warnings on all crates; lb check on examples/.
    Lint,
    /// Run every test (kernel and netns tests need root).
    Test,
    /// The product's tour in network namespaces: lb with XDP, TLS and Redis;
    /// normal traffic, a SYN flood, a handshake storm, a profile change.
    Demo,
    /// Benchmarks; results go to bench/results/.
    Bench {
        /// Which: `xdp`, `proxy`, `tls`, `flood`, `memory`, `limits`, or
        /// `all` (each in that order); then the combined report,
        /// `REPORT.md` with its charts.
        #[arg(default_value = "xdp")]
        which: String,
        /// Shorter runs (numbers only prove the harness works).
        #[arg(long)]
        quick: bool,
    },
    /// Build the fuzz targets (fuzz/, nightly) and run each for a while on
    /// a copy of its seed corpus; `xdp` needs root.
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// One target: `config`, `http_head`, `client_hello` or `xdp`
        /// (default: all).
        target: Option<String>,
    },
    /// The soak test: mixed traffic and reloads for a while, then memory,
    /// descriptors and counters checked (docs/reliability.md).
    Soak {
        /// How long the traffic runs (CI runs it for 60 s in `test`).
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs a command in the workspace root; fails naming it.
pub fn run(cmd: &mut Command) -> Result<()> {
    cmd.current_dir(root());
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// A `cargo` command whose environment does not leak the outer cargo's
/// toolchain choice into it.
fn cargo() -> Command {
    let mut c = Command::new("cargo");
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        c.env_remove(var);
    }
    c
}

/// How the eBPF crate is compiled (after `cargo +nightly build|clippy`).
const EBPF_ARGS: [&str; 7] = [
    "-Z",
    "build-std=core",
    "--target",
    "bpfel-unknown-none",
    "-p",
    "lb-ebpf",
    "--release",
];

/// Builds the eBPF object; returns its path.
fn build_ebpf() -> Result<PathBuf> {
    run(cargo().args(["+nightly", "build"]).args(EBPF_ARGS))
        .context("building the eBPF object (crate lb-ebpf)")?;
    let obj = root().join("target/bpfel-unknown-none/release/lb-ebpf");
    let size = std::fs::metadata(&obj)
        .with_context(|| format!("the build left no object at {}", obj.display()))?
        .len();
    println!("eBPF object: {} ({size} bytes)", obj.display());
    Ok(obj)
}

/// `cargo` with `LB_EBPF_OBJECT` set, so `lb` embeds the object just built.
fn cargo_with(obj: &Path) -> Command {
    let mut c = cargo();
    c.env("LB_EBPF_OBJECT", obj);
    c
}

fn lint(obj: &Path) -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("rustfmt found unformatted code: run `cargo fmt --all`")?;
    run(cargo_with(obj).args([
        "clippy",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy (host crates)")?;
    run(cargo()
        .args(["+nightly", "clippy"])
        .args(EBPF_ARGS)
        .args(["--", "-D", "warnings"]))
    .context("clippy (lb-ebpf, nightly)")?;
    // The policy in deny.toml.
    run(cargo().args(["deny", "check", "licenses", "bans", "sources"]))
        .context("cargo deny (deny.toml): a dependency's license, source or version is refused")?;
    advisories()?;
    check_examples(obj)
}

/// `cargo deny check advisories`: fails on a dependency with a RustSec
/// advisory. The database is fetched from GitHub; where GitHub cannot be
/// reached (these machines reach package registries only) it says so and
/// goes on, as nothing can be checked.
fn advisories() -> Result<()> {
    let out = cargo()
        .args(["deny", "check", "advisories"])
        .output()
        .context("running cargo deny check advisories")?;
    let text = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return Ok(());
    }
    if text.contains("failed to fetch advisory database") {
        let why = text
            .lines()
            .find(|l| l.contains("unable to access") || l.contains("Could not resolve"))
            .unwrap_or("the fetch failed");
        eprintln!(
            "xtask lint: advisories NOT checked: the RustSec database could not be fetched \
             ({}); run `cargo deny check advisories` where GitHub is reachable",
            why.trim()
        );
        return Ok(());
    }
    eprintln!("{text}");
    bail!("cargo deny check advisories: a dependency has a RustSec advisory (above)")
}

/// `lb check -c` on every `examples/*.toml`, so an example that the config
/// code no longer accepts fails CI; names each file refused.
fn check_examples(obj: &Path) -> Result<()> {
    run(cargo_with(obj).args(["build", "-p", "lb-userspace", "--bin", "lb"]))
        .context("building lb (to check examples/)")?;
    let lb = root().join("target/debug/lb");
    let dir = root().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    files.retain(|p| p.extension().is_some_and(|x| x == "toml"));
    files.sort();
    if files.is_empty() {
        bail!("no examples/*.toml to check in {}", dir.display());
    }
    let mut refused = Vec::new();
    for file in &files {
        let name = file.strip_prefix(root()).unwrap_or(file);
        // Relative, so lb's messages name the file as the repository does.
        let status = Command::new(&lb)
            .args(["check", "-c"])
            .arg(name)
            .current_dir(root())
            .status()
            .with_context(|| format!("starting {} check", lb.display()))?;
        if !status.success() {
            refused.push(name.display().to_string());
        }
    }
    if !refused.is_empty() {
        bail!("`lb check` refused {}", refused.join(", "));
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a `cargo test` command, passing its output through, and adds up its
/// `test result:` lines into `totals` (passed, failed).
fn run_tests(cmd: &mut Command, totals: &mut (u64, u64)) -> Result<()> {
    use std::io::BufRead as _;
    cmd.current_dir(root()).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            totals.0 += count("passed");
            totals.1 += count("failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `cargo test -p lb-tests --test soak` with `LB_SOAK_SECS=seconds`, on
/// the debug `lb` that `test` builds too.
fn soak(obj: &Path, seconds: u64) -> Result<()> {
    run(cargo_with(obj).args(["build", "-p", "lb-userspace", "--bins"])).context("building lb")?;
    run(cargo_with(obj)
        .env("LB_BIN", root().join("target/debug/lb"))
        .env("LB_SOAK_SECS", seconds.to_string())
        .args([
            "test",
            "-p",
            "lb-tests",
            "--test",
            "soak",
            "--",
            "--nocapture",
        ]))
    .context("the soak test")
}

fn test(obj: &Path) -> Result<()> {
    // The binary the integration tests start, and the optimized one that
    // the tests measuring lb against the machine's capacity start.
    run(cargo_with(obj).args(["build", "-p", "lb-userspace", "--bins"])).context("building lb")?;
    run(cargo_with(obj).args(["build", "--release", "-p", "lb-userspace", "--bin", "lb"]))
        .context("building the release lb")?;
    let mut totals = (0, 0);
    let result = test_all(obj, &mut totals);
    println!(
        "\ncargo xtask test: {} passed, {} failed",
        totals.0, totals.1
    );
    result
}

fn test_all(obj: &Path, totals: &mut (u64, u64)) -> Result<()> {
    run_tests(
        cargo_with(obj).args([
            "test",
            "--workspace",
            "--exclude",
            "lb-tests",
            "--exclude",
            "lb-ebpf",
        ]),
        totals,
    )
    .context("unit tests")?;
    if !is_root() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("CI=true but not root: the kernel and netns tests need root");
        }
        eprintln!(
            "xtask test: not root: the kernel and netns tests will report themselves skipped"
        );
    }
    // Kernel tests share interfaces, pins and CPU time: one at a time.
    run_tests(
        cargo_with(obj)
            .env("LB_BIN", root().join("target/debug/lb"))
            .env("LB_RELEASE_BIN", root().join("target/release/lb"))
            .args(["test", "-p", "lb-tests", "--", "--test-threads=1"]),
        totals,
    )
    .context("integration tests (crate tests/)")
}

fn run_tool(obj: &Path, bin: &str, args: &[&str]) -> Result<()> {
    run(cargo_with(obj).args([
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "-p",
        "lb-tests",
        "--bins",
    ]))
    .context("building lb and the test tools")?;
    let path = root().join("target/release").join(bin);
    run(Command::new(&path)
        .args(args)
        .env("LB_BIN", root().join("target/release/lb")))
    .with_context(|| format!("running {bin}"))
}

/// The benchmarks, in the order `bench all` runs them (each is the tool
/// `lb-bench-NAME`).
const BENCHES: [&str; 6] = ["xdp", "proxy", "tls", "flood", "memory", "limits"];

/// Writes the combined report (`REPORT.md` and `charts/`) from every
/// benchmark's results there are: `bench/results`, or `target/bench` for
/// a quick run.
fn bench_report(obj: &Path, quick: bool) -> Result<()> {
    let dir = if quick {
        root().join("target/bench")
    } else {
        root().join("bench/results")
    };
    let dir = dir.to_string_lossy().into_owned();
    let mut args = vec!["--dir", dir.as_str()];
    if quick {
        args.push("--quick");
    }
    run_tool(obj, "lb-bench-report", &args)
}

/// Runs benchmark `name` (one of [`BENCHES`]): `lb-bench-NAME --out PATH`.
fn bench_one(obj: &Path, name: &str, quick: bool) -> Result<()> {
    // A quick run proves the harness works; its numbers do not replace the
    // committed report.
    let out = if quick {
        root().join(format!("target/bench/{name}-quick.md"))
    } else {
        root().join(format!("bench/results/{name}.md"))
    };
    let out = out.to_string_lossy().into_owned();
    let mut args = vec!["--out", out.as_str()];
    if quick {
        args.push("--quick");
    }
    run_tool(obj, &format!("lb-bench-{name}"), &args)
}

/// The fuzz targets in `fuzz/fuzz_targets`, in the order they run.
const FUZZ_TARGETS: [&str; 4] = ["config", "http_head", "client_hello", "xdp"];

/// Installs cargo-fuzz if it is missing (about 30 s; not part of `setup`,
/// which every command runs, since only this one needs it).
fn cargo_fuzz() -> Result<()> {
    let have = cargo()
        .args(["fuzz", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have {
        return Ok(());
    }
    eprintln!("xtask fuzz: installing cargo-fuzz");
    run(cargo().args(["install", "--quiet", "--locked", "cargo-fuzz"]))
        .context("installing cargo-fuzz (`cargo install cargo-fuzz --locked`)")
}

/// The host target triple (where cargo-fuzz puts the binaries).
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .output()
        .context("running rustc +nightly -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("no `host:` line in rustc -vV")
}

/// Builds the fuzz targets and runs each (or `only`) for `seconds` on a
/// copy of `fuzz/corpus/TARGET`, so a run adds no file to the repository;
/// crash files go to `fuzz/target/artifacts/TARGET/`. Fails naming every
/// target that crashed and its crash file.
fn fuzz(obj: &Path, seconds: u64, only: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match only {
        None => FUZZ_TARGETS.to_vec(),
        Some(t) if FUZZ_TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "unknown fuzz target `{t}`; allowed: {}",
            FUZZ_TARGETS.join(", ")
        ),
    };
    cargo_fuzz()?;
    let mut build = cargo_with(obj);
    build.args(["+nightly", "fuzz", "build"]);
    if let Some(t) = only {
        build.arg(t);
    }
    run(&mut build).context("building the fuzz targets (cargo +nightly fuzz build)")?;
    let out = root().join("fuzz/target");
    let bin_dir = out.join(host_triple()?).join("release");
    let mut crashed = Vec::new();
    for target in targets {
        if target == "xdp" && !is_root() {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                bail!("CI=true but not root: the xdp fuzz target needs root");
            }
            println!("xtask fuzz: xdp: SKIPPED, needs root (it loads BPF programs)");
            continue;
        }
        let corpus = out.join("corpus").join(target);
        let artifacts = out.join("artifacts").join(target);
        let log = out.join("logs").join(format!("{target}.log"));
        copy_corpus(&root().join("fuzz/corpus").join(target), &corpus)?;
        std::fs::create_dir_all(&artifacts)
            .with_context(|| format!("creating {}", artifacts.display()))?;
        std::fs::create_dir_all(out.join("logs"))?;
        println!("xtask fuzz: {target}: {seconds} s");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let status = Command::new(bin_dir.join(target))
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=2048", "-timeout=20", "-print_final_stats=1"])
            // Ethernet frames; longer packets are cut to 1522 bytes anyway.
            .args((target == "xdp").then_some("-max_len=1600"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(&corpus)
            .current_dir(root())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .status()
            .with_context(|| format!("starting fuzz target {target}"))?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if status.success() {
            let done = text.lines().rfind(|l| l.starts_with("Done ")).unwrap_or("");
            println!("xtask fuzz: {target}: no crash; {done}");
            continue;
        }
        // The panic or sanitizer report and where libFuzzer wrote the input.
        let mut lines = text.lines();
        while let Some(l) = lines.next() {
            if l.contains("panicked at") || l.contains("ERROR:") || l.contains("SUMMARY:") {
                println!("  {l}");
                if l.contains("panicked at") {
                    lines.by_ref().take(3).for_each(|l| println!("  {l}"));
                }
            }
        }
        let artifact = text
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .map_or_else(
                || format!("none written, see {}", log.display()),
                str::to_owned,
            );
        println!(
            "xtask fuzz: {target}: CRASHED ({status}); input: {artifact}; log: {}",
            log.display()
        );
        crashed.push(format!("{target} (input {artifact})"));
    }
    if !crashed.is_empty() {
        bail!(
            "fuzz target(s) crashed: {}; reproduce with `fuzz/target/{}/release/TARGET FILE`, \
             and make each a regression test (docs/fuzzing.md)",
            crashed.join(", "),
            host_triple().unwrap_or_else(|_| "HOST".into())
        );
    }
    Ok(())
}

/// Replaces `to` with a copy of the files in `from`.
fn copy_corpus(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("removing {}", to.display()))?;
    }
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let dest = to.join(path.file_name().context("a file name")?);
            std::fs::copy(&path, &dest)
                .with_context(|| format!("copying {} to {}", path.display(), dest.display()))?;
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    setup::setup().context("xtask setup")?;
    match cli.cmd {
        Cmd::Setup => Ok(()),
        Cmd::BuildEbpf => build_ebpf().map(|_| ()),
        Cmd::Lint => lint(&build_ebpf()?),
        Cmd::Test => test(&build_ebpf()?),
        Cmd::Demo => run_tool(&build_ebpf()?, "lb-demo", &[]),
        Cmd::Bench { which, quick } => {
            let benches: Vec<&str> = match which.as_str() {
                "all" => BENCHES.to_vec(),
                one if BENCHES.contains(&one) => vec![one],
                other => bail!(
                    "unknown benchmark `{other}`; allowed: {}, all",
                    BENCHES.join(", ")
                ),
            };
            let obj = build_ebpf()?;
            for &bench in &benches {
                bench_one(&obj, bench, quick)?;
            }
            bench_report(&obj, quick)
        }
        Cmd::Fuzz { seconds, target } => fuzz(&build_ebpf()?, seconds, target.as_deref()),
        Cmd::Soak { seconds } => soak(&build_ebpf()?, seconds),
    }
}
