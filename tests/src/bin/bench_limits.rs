//! `bench_limits`: how closely `lb` holds each rate axis of a limit profile,
//! as the rate it admitted over the rate configured, written to
//! `bench/results/limits.md` (and `limits.json` beside it). The target: every
//! rate axis within ±5% (a ratio in 0.95..=1.05).
//!
//! For each axis, each run starts one `lb` (the release build, `taskset -c
//! 0`: one worker) with that axis at a rate R and every other rate axis off
//! (0), and a load well above R from CPU 1 (this process, its threads and
//! the tools it starts). After a warm-up that spends the axis's burst, the
//! counters are read twice, a window apart: the admitted rate is what they
//! counted in between over the time between the two reads (each read timed
//! at its middle), and the run's ratio is that over R.
//!
//! - `maxConnRate` (the pool's profile, 1000/s; XDP, on SYNs): hping3 SYNs
//!   at ~5–10 000/s from a client namespace into an lb namespace whose veth
//!   has `lb`'s XDP program attached in driver mode; admitted from the VIP's
//!   `admitted` in `lb stats --json`, offered = admitted + every drop.
//! - `[xdp] sourceSynRate` (1000/s per source, burst 2000): the same flood,
//!   from one source address, the profile's `maxConnRate` off.
//! - `rateLimitSessions` (the pool's profile, 1000/s; accept pacing): 32
//!   closed-loop clients, each a new connection per request (`Connection:
//!   close`), so the accept backlog is never empty; admitted from the
//!   frontend's `accepted` in `/api/status`; offered is what the same
//!   clients get through an unpaced frontend of the same `lb` just before.
//! - `maxSessRate` (the pool's profile, 1000/s): 64 keep-alive HTTP/1.1
//!   clients without cookies (every request a new session) paced to 3000
//!   requests/s; admitted from `responses.2xx`, offered = 2xx + the
//!   `pool/maxSessRate` refusals (503).
//! - `maxSslRate` (the pool's profile, 500/s): a TLS handshake storm
//!   (tests/src/storm.rs: a ClientHello per new connection, never finished)
//!   at 2000 connections/s; admitted is what `maxSslRate` charges, from the
//!   frontend's `tls` counters: `full + failed + timeouts`.
//!
//! Five runs per axis (median, min–max), the axes interleaved; `--quick`:
//! one short run per axis (the whole tool well under a minute). The XDP
//! axes need root, network namespaces and hping3; without them their rows
//! say skipped and the others are still measured. Every load is bounded in
//! count and time, every process started here is stopped by its pid, and
//! namespaces and pins are removed, also on failure or Ctrl-C.
//!
//! Usage: `bench_limits [--quick] [--out PATH] [--axis NAME]` (the release
//! `lb` at `LB_RELEASE_BIN`, else `target/release/lb`).

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use lb_tests::{
    backend::HttpBackend,
    client::{free_addr, status},
    harness::pin_to_cpu,
    have_tool,
    lb::Lb,
    netns::{Listener, Netns, Topology},
    peers::{background_load, shell_line, shown_path, Scratch},
    report::{cpu_and_kernel, first_line, summarize, Summary},
    results::{self, Comparison, Results, Row, Target},
    storm::Storm,
};
use serde_json::Value;

/// Where `lb` runs (so one worker).
const LB_CPU: usize = 0;
/// Where the loads, the backend and this program run.
const LOAD_CPU: usize = 1;
/// The accuracy target: admitted over configured.
const WITHIN: std::ops::RangeInclusive<f64> = 0.95..=1.05;
/// Busy % of a CPU before the run above which the report warns.
const BACKGROUND_LIMIT: f64 = 5.0;

/// The XDP axes' addresses (in namespaces of their own).
const VIP: &str = "198.18.0.1";
const CLIENT: &str = "198.18.0.2";
const PORT: u16 = 8080;
/// A real listener beside the VIP, behind the tcp frontend.
const BACKEND_PORT: u16 = 9090;
/// hping3's SYN interval: 10 000/s asked; ~5–7 000/s sent on this kind of
/// machine (timer slack), over five times the rate measured.
const FLOOD_INTERVAL_US: u64 = 100;

/// `rateLimitSessions`: closed-loop clients.
const CONN_CLIENTS: usize = 32;
/// `maxSessRate`: paced keep-alive clients, and the load over the rate.
const SESS_CLIENTS: u32 = 64;
const SESS_OVER: f64 = 3.0;
/// `maxSslRate`: the storm over the rate.
const SSL_OVER: u64 = 4;
/// Where the report goes by default.
const DEFAULT_OUT: &str = "bench/results/limits.md";
/// Builds what the benchmark runs.
const BUILD: [&str; 2] = [
    "cargo build --release -p lb-userspace --bin lb",
    "cargo build --release -p lb-tests --bin bench_limits",
];
/// The TLS certificate's name.
const CERT_NAME: &str = "lb.test";

/// Set by Ctrl-C: every wait and load loop looks at it. `lb` and hping3 get
/// the Ctrl-C too (same process group) and stop; this process then unwinds
/// and its guards remove the rest.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

// ---- options and plan ----------------------------------------------------

struct Opts {
    out: PathBuf,
    quick: bool,
    only: Option<Axis>,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        out: PathBuf::from(DEFAULT_OUT),
        quick: false,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => o.out = PathBuf::from(args.next().context("--out needs a path")?),
            "--quick" => o.quick = true,
            "--axis" => {
                let name = args.next().context("--axis needs a name")?;
                o.only = Some(
                    Axis::ALL
                        .into_iter()
                        .find(|x| x.name().eq_ignore_ascii_case(&name))
                        .with_context(|| format!("--axis {name}: allowed: {}", axis_names()))?,
                );
            }
            other => bail!(
                "unknown argument `{other}`; allowed: --out PATH, --quick, --axis NAME ({})",
                axis_names()
            ),
        }
    }
    Ok(o)
}

fn axis_names() -> String {
    Axis::ALL.map(Axis::name).join(", ")
}

/// How long and how often.
struct Plan {
    runs: usize,
    /// Load before the first counter read: the axis's burst is spent.
    warmup: Duration,
    /// Between the two counter reads.
    window: Duration,
    /// `rateLimitSessions`: the unpaced frontend's capacity is read over this.
    calibrate: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                runs: 1,
                warmup: Duration::from_secs(1),
                window: Duration::from_secs(2),
                calibrate: Duration::from_millis(500),
            }
        } else {
            Self {
                runs: 5,
                warmup: Duration::from_secs(2),
                window: Duration::from_secs(5),
                calibrate: Duration::from_secs(1),
            }
        }
    }

    /// How long a load runs: warm-up, window and a margin for the reads.
    fn load_time(&self) -> Duration {
        self.warmup + self.window + Duration::from_secs(1)
    }
}

// ---- the axes ------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Axis {
    MaxConnRate,
    SourceSynRate,
    RateLimitSessions,
    MaxSessRate,
    MaxSslRate,
}

impl Axis {
    const ALL: [Self; 5] = [
        Self::MaxConnRate,
        Self::SourceSynRate,
        Self::RateLimitSessions,
        Self::MaxSessRate,
        Self::MaxSslRate,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::MaxConnRate => "maxConnRate",
            Self::SourceSynRate => "sourceSynRate",
            Self::RateLimitSessions => "rateLimitSessions",
            Self::MaxSessRate => "maxSessRate",
            Self::MaxSslRate => "maxSslRate",
        }
    }

    /// The configured rate R.
    fn rate(self) -> u64 {
        match self {
            Self::MaxSslRate => 500,
            _ => 1000,
        }
    }

    /// Where it is set.
    fn level(self) -> &'static str {
        match self {
            Self::SourceSynRate => "`[xdp]`, per source (burst 2 × R)",
            _ => "the pool's profile",
        }
    }

    /// What is counted.
    fn unit(self) -> &'static str {
        match self {
            Self::MaxConnRate | Self::SourceSynRate => "SYN/s",
            Self::RateLimitSessions => "accepts/s",
            Self::MaxSessRate => "new sessions/s",
            Self::MaxSslRate => "full handshakes/s",
        }
    }

    fn xdp(self) -> bool {
        matches!(self, Self::MaxConnRate | Self::SourceSynRate)
    }

    /// How it is measured, for the report.
    fn method(self) -> String {
        let r = self.rate();
        match self {
            Self::MaxConnRate => format!(
                "`maxConnRate = {r}` in the pool's profile (burst: one second's worth), XDP in \
                 driver mode on the lb namespace's veth. hping3 in the client namespace on CPU \
                 {LOAD_CPU} sends SYNs every {FLOOD_INTERVAL_US} µs to the tcp frontend's VIP \
                 (on a veth the XDP program runs on the sender's CPU, so one CPU takes \
                 tokens from the shared bucket). Admitted: the VIP's \
                 `admitted` in `lb stats --json`; offered: admitted plus every drop counter. \
                 Only `drop_pool` may count drops."
            ),
            Self::SourceSynRate => format!(
                "`[xdp] sourceSynRate = {r}` (burst `sourceSynBurst`, default 2 × R), the \
                 profile's `maxConnRate = 0`; the same flood, all from one source address. \
                 Admitted and offered as for `maxConnRate`; only `drop_source` may count drops."
            ),
            Self::RateLimitSessions => format!(
                "`rateLimitSessions = {r}` in the pool's profile (burst: 1/20 s). \
                 {CONN_CLIENTS} closed-loop clients (threads of this program), each opening a \
                 new connection per request (`GET /`, `Connection: close`) and reading the \
                 answer, so the accept backlog is never empty; nothing is refused, \
                 connections wait in the backlog. Admitted: the frontend's `accepted` in \
                 `/api/status`. Offered: the accepts/s the same clients get through a second, \
                 unpaced frontend of the same `lb` (its profile's axes all 0), measured just \
                 before."
            ),
            Self::MaxSessRate => format!(
                "`maxSessRate = {r}` in the pool's profile (burst: 1/20 s). {SESS_CLIENTS} \
                 keep-alive HTTP/1.1 clients (threads of this program) without cookies, so \
                 every request is a new session, evenly paced to {:.0} requests/s in all. \
                 Admitted: the frontend's `responses.2xx` in `/api/status`; offered: 2xx plus \
                 `refused[\"pool/maxSessRate\"]` (the 503s).",
                SESS_OVER * r as f64
            ),
            Self::MaxSslRate => format!(
                "`maxSslRate = {r}` in the pool's profile (burst: 1/20 s), a TLS frontend with \
                 a `lb cert gen` ECDSA P-256 certificate. The handshake storm of \
                 tests/src/storm.rs on CPU {LOAD_CPU}: {} new connections/s, each sending one \
                 TLS 1.3 ClientHello, reading the server's first record and leaving (waiting \
                 at most 500 ms for the connect and for the answer); while the rate is spent \
                 `lb` accepts nothing and connections wait in the backlog. Admitted: what \
                 `maxSslRate` charges, the frontend's `tls.full + tls.failed + tls.timeouts` \
                 in `/api/status` (every handshake that got past the ClientHello: its key \
                 exchange and signature done); offered: connections the storm started per \
                 second.",
                SSL_OVER * r
            ),
        }
    }
}

// ---- what a run gives ------------------------------------------------------

/// One run of one axis.
struct Sample {
    /// Per second.
    offered: f64,
    /// Per second.
    admitted: f64,
    /// Between the two counter reads.
    secs: f64,
    /// What else the run saw.
    detail: String,
}

/// One run with what it ran: the config and the commands, to rerun it.
struct RunOut {
    sample: Sample,
    config: String,
    commands: Vec<String>,
}

/// Everything about one axis.
struct Record {
    axis: Axis,
    samples: Vec<Sample>,
    skipped: Option<String>,
    errors: Vec<String>,
    config: Option<String>,
    commands: Vec<String>,
}

impl Record {
    fn ratios(&self) -> Vec<f64> {
        let r = self.axis.rate() as f64;
        self.samples.iter().map(|s| s.admitted / r).collect()
    }

    fn met(&self) -> bool {
        !self.samples.is_empty()
            && self.errors.is_empty()
            && self.ratios().iter().all(|x| WITHIN.contains(x))
    }
}

/// What every run needs.
struct Ctx {
    bin: PathBuf,
    plan: Plan,
    scratch: Scratch,
    /// The TLS certificate and key, made on first use.
    cert: std::cell::OnceCell<(PathBuf, PathBuf)>,
}

impl Ctx {
    fn cert(&self) -> Result<&(PathBuf, PathBuf)> {
        if let Some(c) = self.cert.get() {
            return Ok(c);
        }
        let out = Command::new(&self.bin)
            .args(["cert", "gen", "--name", CERT_NAME, "--dir"])
            .arg(&self.scratch.0)
            .output()
            .context("starting lb cert gen")?;
        ensure!(
            out.status.success(),
            "lb cert gen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pair = (
            self.scratch.0.join(format!("{CERT_NAME}.pem")),
            self.scratch.0.join(format!("{CERT_NAME}.key")),
        );
        ensure!(
            pair.0.exists() && pair.1.exists(),
            "lb cert gen wrote no pair"
        );
        Ok(self.cert.get_or_init(|| pair))
    }

    /// Starts `lb run` on `config` (in `ns`, if given) pinned to LB_CPU.
    fn start_lb(&self, ns: Option<&Netns>, file: &str, config: &str) -> Result<Lb> {
        let path = self.scratch.0.join(file);
        // lb inherits this thread's CPUs at its start (and makes one worker
        // per CPU it may use): pin, start, pin back.
        pin_to_cpu(LB_CPU)?;
        let lb = Lb::start_bin(&self.bin, ns, &path, config, &[]);
        pin_to_cpu(LOAD_CPU)?;
        lb
    }

    /// `taskset -c 0 [nsenter ...] lb run -c CONFIG` as text, with the
    /// config where the report keeps it.
    fn lb_line(&self, ns: Option<&Netns>, axis: Axis, configs: &Path) -> String {
        let mut argv = vec!["taskset".to_owned(), "-c".to_owned(), LB_CPU.to_string()];
        if let Some(ns) = ns {
            argv.extend([
                "nsenter".to_owned(),
                format!("--net=/run/netns/{}", ns.name()),
                "--".to_owned(),
            ]);
        }
        argv.extend([
            shown_path(&self.bin).display().to_string(),
            "run".to_owned(),
            "-c".to_owned(),
            configs
                .join(format!("{}.toml", axis.name()))
                .display()
                .to_string(),
        ]);
        shell_line(&argv)
    }
}

/// Stops `lb` with SIGTERM; a note if it did not exit cleanly.
fn stop_lb(mut lb: Lb) -> String {
    match lb.stop(libc::SIGTERM) {
        Ok(Some(0)) => String::new(),
        Ok(code) => format!("; lb exited with {code:?}"),
        Err(e) => format!("; lb did not stop: {e:#}"),
    }
}

/// Sleeps `d`, in steps, unless interrupted.
fn wait(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        ensure!(!INTERRUPTED.load(Relaxed), "interrupted (Ctrl-C)");
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// What an instance of ours leaves once its `lb` is gone, removed on drop:
/// its pins (lb and its janitor remove them themselves; this is for an `lb`
/// that could not) and its files in the run directory (the lock file, which
/// `lb` keeps; a session key or admin token an `lb` killed did not remove).
/// Instance names are this process's own (`unique_tag`): nothing else is
/// touched.
struct InstanceFiles(String);

impl Drop for InstanceFiles {
    fn drop(&mut self) {
        let name = &self.0;
        let _ = lb::instance::remove_pins(&lb::instance::pin_dir(name));
        let key = lb::instance::session_key_path(name);
        let _ = std::fs::remove_file(lb::instance::admin_token_path(name));
        if let Some(dir) = key.parent() {
            let _ = std::fs::remove_file(dir.join(format!("{name}.lock")));
        }
        let _ = std::fs::remove_file(key);
    }
}

// ---- userspace axes ---------------------------------------------------------

/// A frontend in `/api/status`, and when it was read (the middle of the call).
fn read_frontend(admin: SocketAddr, name: &str) -> Result<(Instant, Value)> {
    let before = Instant::now();
    let s = status(admin)?;
    let at = before + before.elapsed() / 2;
    let f = s["frontends"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["name"] == name))
        .cloned()
        .with_context(|| format!("no frontend `{name}` in /api/status"))?;
    Ok((at, f))
}

/// A counter at `path` that must be there.
fn counter(v: &Value, path: &[&str]) -> Result<u64> {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_u64()
        .with_context(|| format!("no counter {} in {v}", path.join(".")))
}

/// A counter at `path` that is absent while 0.
fn counter_or_0(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// The four rate axes of a profile, all 0 but `axis` (at its rate).
fn profile(name: &str, axis: Option<Axis>) -> String {
    let value = |a: Axis| if axis == Some(a) { a.rate() } else { 0 };
    format!(
        "[profile.{name}]\nmaxConnRate = {}\nrateLimitSessions = {}\nmaxSessRate = {}\n\
         maxSslRate = {}\n",
        value(Axis::MaxConnRate),
        value(Axis::RateLimitSessions),
        value(Axis::MaxSessRate),
        value(Axis::MaxSslRate),
    )
}

/// A running userspace setup: the backend, `lb` with the frontend `limited`
/// (and `open`, unpaced, if asked for) and the admin API.
struct UserLb {
    lb: Lb,
    admin: SocketAddr,
    limited: SocketAddr,
    open: Option<SocketAddr>,
    config: String,
    // Dropped after lb (fields drop in order): lb never loses its backend,
    // and its files go once it is gone.
    _backend: HttpBackend,
    _files: InstanceFiles,
}

fn start_user(ctx: &Ctx, axis: Axis, run: usize, with_open: bool) -> Result<UserLb> {
    let backend = HttpBackend::start("a", "127.0.0.1:0".parse()?, None)?;
    let (admin, limited) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let open = with_open.then(|| free_addr("127.0.0.1"));
    let tls = if axis == Axis::MaxSslRate {
        let (cert, key) = ctx.cert()?;
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}\n",
            cert.display(),
            key.display()
        )
    } else {
        String::new()
    };
    let instance = format!("lbl{}", lb_tests::unique_tag());
    let files = InstanceFiles(instance.clone());
    let mut config = format!(
        "[global]\ninstance = \"{instance}\"\ndrainTimeout = \"1s\"\n[xdp]\nmode = \"off\"\n\
         [admin]\nlisten = \"{admin}\"\n\
         [[frontend]]\nname = \"limited\"\nlisten = \"{limited}\"\npool = \"limited\"\n{tls}\
         [[pool]]\nname = \"limited\"\nprofile = \"limited\"\nbackends = [\"{b}\"]\n{p}",
        b = backend.addr,
        p = profile("limited", Some(axis)),
    );
    if let Some(open) = open {
        let _ = write!(
            config,
            "[[frontend]]\nname = \"open\"\nlisten = \"{open}\"\npool = \"open\"\n{tls}\
             [[pool]]\nname = \"open\"\nprofile = \"open\"\nbackends = [\"{b}\"]\n{p}",
            b = backend.addr,
            p = profile("open", None),
        );
    }
    let lb = ctx.start_lb(None, &format!("{}-{run}.toml", axis.name()), &config)?;
    Ok(UserLb {
        lb,
        admin,
        limited,
        open,
        config,
        _backend: backend,
        _files: files,
    })
}

/// Threads of this program that each run `one` in a loop until stopped, at
/// `until`, or after `max` rounds; each returns its own tally.
struct Clients<T> {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<T>>,
}

impl<T: Send + 'static> Clients<T> {
    fn start(n: usize, f: impl Fn(usize, &AtomicBool) -> T + Send + Sync + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let f = Arc::new(f);
        let threads = (0..n)
            .map(|i| {
                let (stop, f) = (Arc::clone(&stop), Arc::clone(&f));
                std::thread::spawn(move || f(i, &stop))
            })
            .collect();
        Self { stop, threads }
    }

    fn finish(mut self) -> Vec<T> {
        self.stop.store(true, Relaxed);
        std::mem::take(&mut self.threads)
            .into_iter()
            .filter_map(|t| t.join().ok())
            .collect()
    }
}

impl<T> Drop for Clients<T> {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

/// Whether a client loop goes on.
fn going(stop: &AtomicBool, until: Instant, done: u64, max: u64) -> bool {
    !stop.load(Relaxed) && !INTERRUPTED.load(Relaxed) && Instant::now() < until && done < max
}

/// One request on a new connection (`Connection: close`); whether it got
/// a 200.
fn one_request(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    // The backend's answer is a few hundred bytes: read at most 64 KiB.
    let mut out = Vec::new();
    let _ = (&mut s).take(64 * 1024).read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

/// Closed-loop clients at `addr` for at most `run`: (200s, failures).
fn conn_storm(addr: SocketAddr, run: Duration) -> Clients<(u64, u64)> {
    let until = Instant::now() + run;
    // No client on this machine does 20 000 requests a second.
    let max = (run.as_secs_f64() * 20_000.0 / CONN_CLIENTS as f64) as u64 + 1;
    Clients::start(CONN_CLIENTS, move |_, stop| {
        let (mut ok, mut failed) = (0, 0);
        while going(stop, until, ok + failed, max) {
            if one_request(addr) {
                ok += 1;
            } else {
                failed += 1;
                // A refused connect returns at once: no busy loop.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        (ok, failed)
    })
}

fn run_rate_limit_sessions(ctx: &Ctx, run: usize) -> Result<RunOut> {
    let axis = Axis::RateLimitSessions;
    let p = &ctx.plan;
    let u = start_user(ctx, axis, run, true)?;
    let open = u.open.context("no open frontend")?;
    // What the clients get through when nothing paces them.
    let settle = Duration::from_millis(300);
    let cal = conn_storm(open, settle + p.calibrate + Duration::from_millis(500));
    wait(settle)?;
    let (c0, f0) = read_frontend(u.admin, "open")?;
    wait(p.calibrate)?;
    let (c1, f1) = read_frontend(u.admin, "open")?;
    drop(cal.finish());
    let capacity = (counter(&f1, &["accepted"])? - counter(&f0, &["accepted"])?) as f64
        / (c1 - c0).as_secs_f64();

    let load = conn_storm(u.limited, p.load_time());
    wait(p.warmup)?;
    let (t0, a) = read_frontend(u.admin, "limited")?;
    wait(p.window)?;
    let (t1, b) = read_frontend(u.admin, "limited")?;
    let tallies = load.finish();
    let (ok, failed) = tallies.iter().fold((0, 0), |(o, f), (a, b)| (o + a, f + b));
    let secs = (t1 - t0).as_secs_f64();
    let accepted = counter(&b, &["accepted"])? - counter(&a, &["accepted"])?;
    let paced = counter_or_0(&b, &["paced"]) - counter_or_0(&a, &["paced"]);
    let fives = counter_or_0(&b, &["responses", "5xx"]) - counter_or_0(&a, &["responses", "5xx"]);
    let mut detail = format!(
        "{accepted} accepts in {secs:.3} s, {paced} of them paced, {fives} 5xx; the unpaced \
         frontend took {capacity:.0}/s; clients: {ok} answered 200, {failed} not"
    );
    detail += &stop_lb(u.lb);
    Ok(RunOut {
        sample: Sample {
            offered: capacity,
            admitted: accepted as f64 / secs,
            secs,
            detail,
        },
        config: u.config,
        commands: vec![format!(
            "# by hand, about the same load (a new connection per request): ab -t 8 -n 1000000 \
             -c {CONN_CLIENTS} http://{}/",
            u.limited
        )],
    })
}

/// What the session clients got.
#[derive(Default, Clone, Copy)]
struct Tally {
    ok: u64,
    refused: u64,
    other: u64,
}

/// Reads one HTTP/1.1 response (with a `content-length`) from a keep-alive
/// connection; returns its status, or None if the stream broke or the
/// answer is not one this client understands.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    const MAX: usize = 1024 * 1024;
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    if len > MAX {
        return None;
    }
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.drain(..head_end + len);
    Some(status)
}

/// `per_sec` requests a second without cookies (each a new session) from
/// SESS_CLIENTS keep-alive clients, evenly spaced, for at most `run`.
fn paced_sessions(addr: SocketAddr, per_sec: f64, run: Duration) -> Clients<Tally> {
    let start = Instant::now();
    let until = start + run;
    let n = SESS_CLIENTS;
    let interval = Duration::from_secs_f64(f64::from(n) / per_sec);
    let max = (run.as_secs_f64() * per_sec / f64::from(n)) as u64 + 10;
    Clients::start(n as usize, move |i, stop| {
        let mut t = Tally::default();
        let mut next = start + interval.mul_f64(i as f64 / f64::from(n));
        let mut conn: Option<(TcpStream, Vec<u8>)> = None;
        while going(stop, until, t.ok + t.refused + t.other, max) {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else if now - next > Duration::from_millis(100) {
                // Far behind: no catching up in a burst.
                next = now;
            }
            next += interval;
            if conn.is_none() {
                let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                    t.other += 1;
                    continue;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = s.set_nodelay(true);
                conn = Some((s, Vec::new()));
            }
            let Some((s, buf)) = conn.as_mut() else {
                continue;
            };
            let status = s
                .write_all(b"GET / HTTP/1.1\r\nHost: lb\r\n\r\n")
                .ok()
                .and_then(|()| read_response(s, buf));
            match status {
                Some(200) => t.ok += 1,
                Some(503) => t.refused += 1,
                Some(_) => t.other += 1,
                None => {
                    t.other += 1;
                    conn = None;
                }
            }
        }
        t
    })
}

fn run_max_sess_rate(ctx: &Ctx, run: usize) -> Result<RunOut> {
    let axis = Axis::MaxSessRate;
    let p = &ctx.plan;
    let u = start_user(ctx, axis, run, false)?;
    let limit = "pool/maxSessRate";
    let load = paced_sessions(u.limited, SESS_OVER * axis.rate() as f64, p.load_time());
    wait(p.warmup)?;
    let (t0, a) = read_frontend(u.admin, "limited")?;
    wait(p.window)?;
    let (t1, b) = read_frontend(u.admin, "limited")?;
    let t = load
        .finish()
        .into_iter()
        .fold(Tally::default(), |x, y| Tally {
            ok: x.ok + y.ok,
            refused: x.refused + y.refused,
            other: x.other + y.other,
        });
    let secs = (t1 - t0).as_secs_f64();
    let ok = counter(&b, &["responses", "2xx"])? - counter(&a, &["responses", "2xx"])?;
    let refused = counter_or_0(&b, &["refused", limit]) - counter_or_0(&a, &["refused", limit]);
    let others: Vec<String> = b["refused"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| *k != limit && v.as_u64() > Some(0))
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let mut detail = format!(
        "{ok} admitted and {refused} refused by {limit} in {secs:.3} s; clients: {} 200, {} \
         503, {} other{}",
        t.ok,
        t.refused,
        t.other,
        if others.is_empty() {
            String::new()
        } else {
            format!("; other refusals: {}", others.join(", "))
        }
    );
    detail += &stop_lb(u.lb);
    Ok(RunOut {
        sample: Sample {
            offered: (ok + refused) as f64 / secs,
            admitted: ok as f64 / secs,
            secs,
            detail,
        },
        config: u.config,
        commands: vec![format!(
            "# by hand, a similar load (keep-alive, no cookies, as fast as lb answers rather \
             than paced): ab -k -t 8 -n 1000000 -c {SESS_CLIENTS} http://{}/",
            u.limited
        )],
    })
}

/// What `maxSslRate` charges: full, failed and timed-out handshakes.
fn charged(f: &Value) -> Result<u64> {
    Ok(counter(f, &["tls", "full"])?
        + counter(f, &["tls", "failed"])?
        + counter(f, &["tls", "timeouts"])?)
}

fn run_max_ssl_rate(ctx: &Ctx, run: usize) -> Result<RunOut> {
    let axis = Axis::MaxSslRate;
    let p = &ctx.plan;
    let u = start_user(ctx, axis, run, false)?;
    let storm = Storm::start(
        u.limited,
        Some(LOAD_CPU),
        SSL_OVER * axis.rate(),
        p.load_time(),
        0,
        Duration::ZERO,
    );
    wait(p.warmup)?;
    let (t0, a) = read_frontend(u.admin, "limited")?;
    wait(p.window)?;
    let (t1, b) = read_frontend(u.admin, "limited")?;
    let (counts, ran) = storm.stop();
    let secs = (t1 - t0).as_secs_f64();
    let n = charged(&b)? - charged(&a)?;
    let d = |k: &str| counter_or_0(&b["tls"], &[k]) - counter_or_0(&a["tls"], &[k]);
    let mut detail = format!(
        "{n} charged in {secs:.3} s (full {}, failed {}, timed out {}), accepts paused {}, gate \
         refused {}; storm: {:.0} connections/s for {:.1} s, {counts:?}",
        d("full"),
        d("failed"),
        d("timeouts"),
        d("ratePaused"),
        d("gateRefused"),
        counts.started as f64 / ran.as_secs_f64(),
        ran.as_secs_f64(),
    );
    detail += &stop_lb(u.lb);
    Ok(RunOut {
        sample: Sample {
            offered: counts.started as f64 / ran.as_secs_f64(),
            admitted: n as f64 / secs,
            secs,
            detail,
        },
        config: u.config,
        commands: vec![format!(
            "# by hand, a similar load (real clients that finish their handshakes, counted in \
             tls.full): ab -t 8 -n 1000000 -c 20 https://{}/",
            u.limited
        )],
    })
}

// ---- XDP axes -----------------------------------------------------------------

/// Whether the XDP axes can run here; why not otherwise.
fn xdp_ready() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (BPF, network namespaces)".into());
    }
    ["hping3", "nsenter", "ip", "taskset", "timeout"]
        .into_iter()
        .find(|t| !have_tool(t))
        .map(|t| format!("`{t}` missing: run `cargo xtask setup`"))
}

fn xdp_config(instance: &str, iface: &str, axis: Axis) -> String {
    let source = if axis == Axis::SourceSynRate {
        axis.rate()
    } else {
        0
    };
    format!(
        "[global]\ninstance = \"{instance}\"\ndrainTimeout = \"1s\"\n\
         [xdp]\niface = \"{iface}\"\nmode = \"driver\"\nsourceSynRate = {source}\n\
         [[frontend]]\nname = \"web\"\nlisten = \"{VIP}:{PORT}\"\nmode = \"tcp\"\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\nprofile = \"limited\"\nbackends = [\"{VIP}:{BACKEND_PORT}\"]\n{}",
        profile(
            "limited",
            (axis == Axis::MaxConnRate).then_some(Axis::MaxConnRate)
        )
    )
}

/// A bounded SYN flood from the client namespace: one hping3 on LOAD_CPU,
/// bounded by count and by `timeout`; stopped by its pid on drop.
struct Flood {
    child: Child,
    cmdline: String,
}

impl Flood {
    fn start(client: &Netns, run: Duration) -> Result<Self> {
        let count = run.as_micros() as u64 / FLOOD_INTERVAL_US;
        let argv = vec![
            "taskset".to_owned(),
            "-c".to_owned(),
            LOAD_CPU.to_string(),
            "timeout".to_owned(),
            (run.as_secs() + 3).to_string(),
            "hping3".to_owned(),
            "-q".to_owned(),
            "-S".to_owned(),
            "-p".to_owned(),
            PORT.to_string(),
            "-i".to_owned(),
            format!("u{FLOOD_INTERVAL_US}"),
            "-c".to_owned(),
            count.to_string(),
            VIP.to_owned(),
        ];
        let mut cmd = client.cmd(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; it only sets a flag of the
        // child. If this program dies without unwinding, `timeout` (what
        // nsenter and taskset exec) gets SIGTERM and passes it on.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting hping3")?;
        let cmdline = format!(
            "nsenter --net=/run/netns/{} -- {}",
            client.name(),
            shell_line(&argv)
        );
        Ok(Self { child, cmdline })
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: signalling our own child, not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let _ = self.child.wait();
    }
}

/// The VIP's counters (`lb stats --json`, `vips[0]`) and when they were
/// read: the middle of the command's run.
struct XdpSample {
    at: Instant,
    vip: Value,
}

fn xdp_sample(bin: &Path, instance: &str) -> Result<XdpSample> {
    let before = Instant::now();
    let out = Command::new(bin)
        .args(["stats", "--instance", instance, "--json"])
        .output()
        .context("starting lb stats")?;
    let at = before + before.elapsed() / 2;
    ensure!(
        out.status.success(),
        "lb stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).context("lb stats --json: not JSON")?;
    let vip = v["vips"]
        .get(0)
        .cloned()
        .with_context(|| format!("no VIP in lb stats: {v}"))?;
    Ok(XdpSample { at, vip })
}

const DROPS: [&str; 4] = ["drop_source", "drop_global", "drop_frontend", "drop_pool"];

fn run_xdp(ctx: &Ctx, axis: Axis, run: usize, configs: &Path) -> Result<RunOut> {
    let p = &ctx.plan;
    // Dropped in reverse: the flood, the listener, lb, its pins and files,
    // then the namespaces.
    let t = Topology::new("lbm", &[&format!("{CLIENT}/24")], &[&format!("{VIP}/24")])?;
    let instance = format!("lbm{}", t.tag);
    let _files = InstanceFiles(instance.clone());
    let config = xdp_config(&instance, &t.iface, axis);
    let lb = ctx.start_lb(
        Some(&t.lbns),
        &format!("{}-{run}.toml", axis.name()),
        &config,
    )?;
    // lb proxies the VIP (tcp mode) to a real listener; hping3's SYNs get
    // SYN-ACKs from lb's socket and the client's kernel resets them.
    let backend = Listener::spawn(t.lbns.name(), format!("{VIP}:{BACKEND_PORT}").parse()?)?;
    let flood = Flood::start(&t.client, p.load_time())?;
    wait(p.warmup)?;
    let a = xdp_sample(&ctx.bin, &instance)?;
    wait(p.window)?;
    let b = xdp_sample(&ctx.bin, &instance)?;
    let flood_line = flood.cmdline.clone();
    drop(flood);
    drop(backend);
    let n = |s: &XdpSample, k: &str| counter(&s.vip, &[k]);
    let secs = (b.at - a.at).as_secs_f64();
    let admitted = n(&b, "admitted")? - n(&a, "admitted")?;
    let mut dropped = 0;
    let mut drops = Vec::new();
    for d in DROPS {
        let x = n(&b, d)? - n(&a, d)?;
        dropped += x;
        drops.push(format!("{d} {x}"));
    }
    let mut detail = format!(
        "{admitted} admitted and {dropped} dropped in {secs:.3} s ({}); overflow {}",
        drops.join(", "),
        counter_or_0(&b.vip, &["overflow"])
    );
    detail += &stop_lb(lb);
    let ns = |n: &Netns| n.name().to_owned();
    let (c, l, tag) = (ns(&t.client), ns(&t.lbns), &t.tag);
    let commands = vec![
        format!("ip netns add {c}; ip netns add {l}"),
        format!("ip link add vc{tag} netns {c} type veth peer name {} netns {l}", t.iface),
        format!(
            "ip -n {c} addr add {CLIENT}/24 dev vc{tag}; ip -n {c} link set vc{tag} up; \
             ip -n {c} link set lo up"
        ),
        format!(
            "ip -n {l} addr add {VIP}/24 dev {}; ip -n {l} link set {} up; ip -n {l} link set \
             lo up",
            t.iface, t.iface
        ),
        format!("# a listener behind the tcp frontend: nsenter --net=/run/netns/{l} -- nc -lk {VIP} {BACKEND_PORT}"),
        ctx.lb_line(Some(&t.lbns), axis, configs),
        flood_line,
        format!(
            "{} stats --instance {instance} --json   # twice, {} s apart, after {} s of flood",
            shown_path(&ctx.bin).display(),
            p.window.as_secs_f64(),
            p.warmup.as_secs_f64()
        ),
    ];
    Ok(RunOut {
        sample: Sample {
            offered: (admitted + dropped) as f64 / secs,
            admitted: admitted as f64 / secs,
            secs,
            detail,
        },
        config,
        commands,
    })
}

// ---- running everything ----------------------------------------------------

fn run_one(ctx: &Ctx, axis: Axis, run: usize, configs: &Path) -> Result<RunOut> {
    let mut out = match axis {
        Axis::MaxConnRate | Axis::SourceSynRate => return run_xdp(ctx, axis, run, configs),
        Axis::RateLimitSessions => run_rate_limit_sessions(ctx, run)?,
        Axis::MaxSessRate => run_max_sess_rate(ctx, run)?,
        Axis::MaxSslRate => run_max_ssl_rate(ctx, run)?,
    };
    // The admin API: where the counters come from.
    let admin = out
        .config
        .lines()
        .skip_while(|l| *l != "[admin]")
        .find_map(|l| l.strip_prefix("listen = "))
        .unwrap_or("\"ADMIN\"")
        .trim_matches('"')
        .to_owned();
    let mut commands = vec![ctx.lb_line(None, axis, configs)];
    commands.append(&mut out.commands);
    commands.push(format!(
        "curl -s http://{admin}/api/status   # frontend `limited`: twice, {} s apart, after {} s \
         of load",
        ctx.plan.window.as_secs_f64(),
        ctx.plan.warmup.as_secs_f64()
    ));
    out.commands = commands;
    Ok(out)
}

fn measure(ctx: &Ctx, axes: &[Axis], configs: &Path) -> Result<Vec<Record>> {
    let xdp_skip = xdp_ready();
    let mut records: Vec<Record> = axes
        .iter()
        .map(|&axis| Record {
            axis,
            samples: Vec::new(),
            skipped: axis.xdp().then(|| xdp_skip.clone()).flatten(),
            errors: Vec::new(),
            config: None,
            commands: Vec::new(),
        })
        .collect();
    for run in 0..ctx.plan.runs {
        // The axes interleaved: drift on the machine hits them alike.
        for rec in &mut records {
            if rec.skipped.is_some() {
                continue;
            }
            let axis = rec.axis;
            eprintln!(
                "bench limits: run {}/{}, {} = {}/s",
                run + 1,
                ctx.plan.runs,
                axis.name(),
                axis.rate()
            );
            match run_one(ctx, axis, run, configs) {
                Ok(out) => {
                    let s = &out.sample;
                    eprintln!(
                        "bench limits:   offered {:.0}/s, admitted {:.1}/s, ratio {:.4}; {}",
                        s.offered,
                        s.admitted,
                        s.admitted / axis.rate() as f64,
                        s.detail
                    );
                    rec.samples.push(out.sample);
                    rec.config = Some(out.config);
                    rec.commands = out.commands;
                }
                Err(e) => {
                    ensure!(!INTERRUPTED.load(Relaxed), "interrupted (Ctrl-C)");
                    eprintln!("bench limits:   FAILED: {e:#}");
                    rec.errors.push(format!("run {}: {e:#}", run + 1));
                }
            }
        }
    }
    Ok(records)
}

// ---- the report ----------------------------------------------------------------

/// `1.003× (0.990–1.010)`.
fn ratio_text(s: Summary) -> String {
    format!("{:.3}× ({:.3}–{:.3})", s.median, s.min, s.max)
}

fn per_sec(s: Summary) -> String {
    format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max)
}

/// The release `lb`: `LB_RELEASE_BIN`, else `target/release/lb`.
fn release_bin() -> Result<PathBuf> {
    let p = std::env::var_os("LB_RELEASE_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/lb"),
        PathBuf::from,
    );
    ensure!(
        p.exists(),
        "no lb at {}: `cargo build --release -p lb-userspace --bin lb` first",
        p.display()
    );
    Ok(p)
}

fn versions(bin: &Path) -> Vec<(String, String)> {
    let git = first_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    vec![
        (
            "lb".into(),
            format!(
                "{} (git {git})",
                first_line(&bin.to_string_lossy(), &["--version"])
            ),
        ),
        ("kernel".into(), first_line("uname", &["-r"])),
        (
            "hping3".into(),
            first_line("dpkg-query", &["-W", "-f=${Version}", "hping3"]),
        ),
        (
            "curl".into(),
            first_line("curl", &["--version"])
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ]
}

struct Report<'a> {
    quick: bool,
    plan: &'a Plan,
    records: &'a [Record],
    versions: &'a [(String, String)],
    background: [f64; 2],
    configs: &'a Path,
    elapsed: Duration,
    tool_line: String,
}

impl Report<'_> {
    fn render(&self) -> String {
        let mut md = String::new();
        let p = self.plan;
        let _ = writeln!(md, "# Limit accuracy benchmark\n");
        let _ = writeln!(
            md,
            "Written by `{}` in {:.0} s. Per rate axis of a limit profile: the rate `lb` \
             admitted over the rate configured, under a load well above it. Median of {} \
             run(s), range in brackets; {:.0} s of load before the counters are first read (the \
             axis's burst is spent by then and not counted), then {:.0} s between two counter \
             reads. Target: every rate axis within ±5% (ratio 0.95–1.05) in every run.\n",
            self.tool_line,
            self.elapsed.as_secs_f64(),
            p.runs,
            p.warmup.as_secs_f64(),
            p.window.as_secs_f64(),
        );
        if self.quick {
            let _ = writeln!(
                md,
                "**Quick run: one short run per axis; it proves the harness works, the figures \
                 are indicative only.**\n"
            );
        }
        let _ = write!(md, "## Machine\n\n{}", cpu_and_kernel());
        for (what, v) in self.versions {
            if what != "kernel" {
                let _ = writeln!(md, "- {what}: {v}");
            }
        }
        let _ = writeln!(
            md,
            "- busy before the run: CPU {LB_CPU} {:.0}%, CPU {LOAD_CPU} {:.0}%{}\n",
            self.background[0],
            self.background[1],
            if self.background[0].max(self.background[1]) > BACKGROUND_LIMIT {
                " (**other work on the machine: the figures are indicative only**)"
            } else {
                ""
            }
        );
        self.table(&mut md);
        self.methods(&mut md);
        self.runs(&mut md);
        self.commands(&mut md);
        md
    }

    fn table(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Results\n\n\
             | axis | set in | configured R | offered /s | admitted /s | ratio, median (min–max) \
             | within ±5% |\n|---|---|---|---|---|---|---|"
        );
        for r in self.records {
            let a = r.axis;
            let head = format!(
                "| `{}` | {} | {} {} |",
                a.name(),
                a.level(),
                a.rate(),
                a.unit()
            );
            if let Some(why) = &r.skipped {
                let _ = writeln!(md, "{head} – | – | skipped: {why} | – |");
                continue;
            }
            if r.samples.is_empty() {
                let _ = writeln!(md, "{head} – | – | failed (below) | no |");
                continue;
            }
            let offered = summarize(r.samples.iter().map(|s| s.offered).collect());
            let admitted = summarize(r.samples.iter().map(|s| s.admitted).collect());
            let ratio = summarize(r.ratios());
            let thin = offered.min < 2.0 * a.rate() as f64;
            let _ = writeln!(
                md,
                "{head} {:.0} ({:.1}× R){} | {} | {} | {}{} |",
                offered.median,
                offered.median / a.rate() as f64,
                if thin {
                    format!(" (**a run offered {:.0}: under 2× R**)", offered.min)
                } else {
                    String::new()
                },
                per_sec(admitted),
                ratio_text(ratio),
                if r.met() { "yes" } else { "**no**" },
                if r.errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({} run(s) failed)", r.errors.len())
                }
            );
        }
        let _ = writeln!(md);
        for r in self.records.iter().filter(|r| !r.errors.is_empty()) {
            let _ = writeln!(md, "`{}` failed:\n", r.axis.name());
            for e in &r.errors {
                let _ = writeln!(md, "- {e}");
            }
            let _ = writeln!(md);
        }
    }

    fn methods(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## How each axis is measured\n\n\
             One `lb` per run (the release build, `taskset -c {LB_CPU}`: one worker; \
             `drainTimeout = \"1s\"`), that axis at R and the profile's other rate axes \
             (`maxConnRate`, `rateLimitSessions`, `maxSessRate`, `maxSslRate`) at 0, so no other \
             limit paces or refuses the load; the other axes keep their defaults, far above \
             the load. Loads, the HTTP backend and this program on CPU {LOAD_CPU}. Admitted \
             rate: the counter's increase between two reads over the time between them (each \
             read timed at its middle); ratio: that over R.\n"
        );
        for r in self.records {
            let _ = writeln!(md, "- **`{}`**: {}", r.axis.name(), r.axis.method());
        }
        let _ = writeln!(md);
    }

    fn runs(&self, md: &mut String) {
        let _ = writeln!(md, "## Runs\n");
        for r in self.records {
            for (i, s) in r.samples.iter().enumerate() {
                let _ = writeln!(
                    md,
                    "- `{}` run {}: offered {:.0}/s, admitted {:.1}/s over {:.3} s, ratio \
                     {:.4}; {}",
                    r.axis.name(),
                    i + 1,
                    s.offered,
                    s.admitted,
                    s.secs,
                    s.admitted / r.axis.rate() as f64,
                    s.detail
                );
            }
        }
        let _ = writeln!(md);
    }

    fn commands(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "## Commands\n\n\
             Built with `{}` and `{}` (`LB_EBPF_OBJECT` naming the XDP object, as for every \
             build of `lb`). The whole benchmark, or one axis: `{} [--axis NAME]` (axes: {}). \
             The configs of \
             the last run of each axis are in `{}/`; they name that run's ports, interface and \
             certificate (a `lb cert gen --name {CERT_NAME} --dir DIR` pair in a temporary \
             directory, removed afterwards): edit them to rerun by hand. The userspace loads \
             are this program's own clients; the lines marked `# by hand` are the nearest \
             standard tool. Per axis, as run last:\n",
            BUILD[0],
            BUILD[1],
            self.tool_line,
            axis_names(),
            shown_path(self.configs).display(),
        );
        for r in self.records.iter().filter(|r| !r.commands.is_empty()) {
            let _ = writeln!(md, "`{}`:\n\n```", r.axis.name());
            for c in &r.commands {
                let _ = writeln!(md, "{c}");
            }
            let _ = writeln!(md, "```\n");
        }
    }
}

fn results_of(
    o: &Opts,
    plan: &Plan,
    records: &[Record],
    versions: Vec<(String, String)>,
    tool_line: &str,
) -> Results {
    let rows = records
        .iter()
        .filter(|r| !r.samples.is_empty())
        .map(|r| {
            Row::new(
                &format!("{} {}/s", r.axis.name(), r.axis.rate()),
                summarize(r.ratios()),
            )
        })
        .collect();
    let targets = records
        .iter()
        .map(|r| Target {
            what: format!("{} accuracy", r.axis.name()),
            bound: "within ±5%".into(),
            measured: match (&r.skipped, r.samples.is_empty()) {
                (Some(why), _) => format!("skipped: {why}"),
                (None, true) => "failed".into(),
                (None, false) => ratio_text(summarize(r.ratios())),
            },
            met: r.met(),
        })
        .collect();
    let tool = BUILD
        .iter()
        .map(|&b| b.to_owned())
        .chain([format!("{tool_line} [--axis NAME]")]);
    let commands = tool
        .chain(records.iter().flat_map(|r| {
            r.commands
                .iter()
                .map(move |c| format!("[{}] {c}", r.axis.name()))
        }))
        .collect();
    Results {
        bench: "limits".into(),
        title: "Limit accuracy".into(),
        quick: o.quick,
        runs: plan.runs,
        comparisons: vec![Comparison {
            id: "limits-accuracy".into(),
            title: "Admitted rate over configured rate, per rate axis".into(),
            unit: "× configured".into(),
            lower_is_better: false,
            baseline: None,
            rows,
        }],
        targets,
        versions,
        commands,
    }
}

/// Raises the open-files limit to its hard limit (the storm holds a
/// descriptor per connection open).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill and read a plain struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const r);
        }
    }
}

fn main() -> Result<()> {
    let o = opts()?;
    let started = Instant::now();
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    ensure!(
        cpus >= 2,
        "needs 2 CPUs: lb on CPU {LB_CPU}, the load on CPU {LOAD_CPU}"
    );
    // Everything this program runs or starts inherits CPU 1, unless started
    // while pinned to CPU 0 (lb).
    pin_to_cpu(LOAD_CPU).context("pinning to CPU 1")?;
    raise_nofile();
    ctrlc::set_handler(|| INTERRUPTED.store(true, Relaxed))
        .context("installing the Ctrl-C handler")?;
    let bin = release_bin()?;
    ensure!(
        have_tool("curl"),
        "curl is missing: run `cargo xtask setup`"
    );
    let plan = Plan::new(o.quick);
    let axes: Vec<Axis> = o.only.map_or_else(|| Axis::ALL.to_vec(), |a| vec![a]);
    let out_dir = o
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let configs = out_dir.join("limits-configs");
    std::fs::create_dir_all(&configs).with_context(|| format!("creating {}", configs.display()))?;
    let background = background_load([LB_CPU, LOAD_CPU])?;
    if background[0].max(background[1]) > BACKGROUND_LIMIT {
        eprintln!(
            "bench limits: WARNING: CPU {LB_CPU} is {:.0}% and CPU {LOAD_CPU} {:.0}% busy before \
             the run: other processes will skew the figures",
            background[0], background[1]
        );
    }
    let ctx = Ctx {
        bin,
        plan,
        scratch: Scratch::new("lb-bench-limits")?,
        cert: std::cell::OnceCell::new(),
    };
    let shown_configs = shown_path(&configs);
    let records = measure(&ctx, &axes, &shown_configs)?;

    for r in &records {
        if let Some(c) = &r.config {
            let path = configs.join(format!("{}.toml", r.axis.name()));
            std::fs::write(&path, c).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let mut tool_line = "cargo run --release -p lb-tests --bin bench_limits --".to_owned();
    if o.quick {
        tool_line += " --quick";
    }
    if o.out != Path::new(DEFAULT_OUT) {
        let _ = write!(tool_line, " --out {}", shown_path(&o.out).display());
    }
    let versions = versions(&ctx.bin);
    let json = results_of(&o, &ctx.plan, &records, versions.clone(), &tool_line);
    let md = Report {
        quick: o.quick,
        plan: &ctx.plan,
        records: &records,
        versions: &versions,
        background,
        configs: &configs,
        elapsed: started.elapsed(),
        tool_line,
    }
    .render();
    std::fs::write(&o.out, &md).with_context(|| format!("writing {}", o.out.display()))?;
    results::write(&o.out, &json)?;
    print!("{md}");
    eprintln!(
        "bench limits: wrote {} and {} in {:.0} s",
        o.out.display(),
        results::json_path(&o.out).display(),
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = records
        .iter()
        .filter(|r| !r.errors.is_empty())
        .map(|r| r.axis.name())
        .collect();
    ensure!(
        failed.is_empty(),
        "runs failed for {}: see the report",
        failed.join(", ")
    );
    Ok(())
}
