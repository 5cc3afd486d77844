//! The `lb` command line: `run`, `check`, `stats`, `top`, `profile`,
//! `cert gen`, `tls rotate-keys`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb::{config::Config, instance, stats::Stats};

#[derive(Parser)]
#[command(name = "lb", version, about = "An eBPF/XDP-assisted load balancer")]
struct Cli {
    /// Log lines as text or as JSON objects (one per line). `RUST_LOG`
    /// chooses what is logged (default `info`).
    #[arg(long, global = true, env = "LB_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where a command finds a running `lb`'s admin API.
#[derive(clap::Args)]
struct AdminArgs {
    /// The admin listener (`[admin] listen`) of the running `lb`.
    #[arg(long, default_value = lb::admin::DEFAULT_LISTEN)]
    admin: std::net::SocketAddr,
    /// The `[global] instance` of the running `lb` (its pinned maps, and
    /// the token file it made when the config names no token).
    #[arg(long, default_value = "default")]
    instance: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the config, attach XDP, pin maps, and run until SIGINT/SIGTERM.
    Run {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Start beside a running `lb` of the same instance (an upgrade or
        /// restart without a gap): share its pinned maps and listening
        /// addresses, enforce one `maxConn` with it, and take the instance
        /// over when it exits. Send the old process SIGTERM to hand over.
        #[arg(long)]
        join: bool,
    },
    /// As root: attach the config's XDP program with pinned links and maps
    /// owned by `--owner`, and exit; the program stays attached. An `lb
    /// run` as that user, with no privileges, then writes into it.
    Attach {
        /// The configuration file (its `[global] instance` and `[xdp]`).
        #[arg(short, long)]
        config: PathBuf,
        /// Who may open the pins: a user name, UID or UID:GID (default
        /// root only).
        #[arg(long)]
        owner: Option<String>,
    },
    /// As root: remove what `lb attach` pinned for the config's instance,
    /// which detaches its program.
    Detach {
        /// The configuration file (its `[global] instance`).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration file without attaching anything.
    Check {
        /// The configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the data plane's counters from the pinned maps.
    Stats {
        /// The `[global] instance` of the running `lb`.
        #[arg(long, default_value = "default")]
        instance: String,
        /// One column per CPU.
        #[arg(long)]
        per_cpu: bool,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The admin listener (`[admin] listen`) of the running `lb`: adds
        /// refusals by frontend, level and axis, and queue lengths.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// A live view of the counters, refreshed every second (Ctrl-C ends
    /// it): per frontend requests, rate, connections and refusals by level
    /// and axis; per pool maxConn and queue; per CPU handshakes.
    Top {
        #[command(flatten)]
        at: AdminArgs,
        /// Stop after this many frames (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Limit profiles in force, through the admin API.
    Profile {
        #[command(subcommand)]
        cmd: ProfileCmd,
    },
    /// Certificates.
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
    /// TLS ticket keys.
    Tls {
        #[command(subcommand)]
        cmd: TlsCmd,
    },
    /// Internal: removes an instance's pins when its `lb` exits.
    #[command(name = "__janitor", hide = true)]
    Janitor {
        #[arg(long)]
        instance: String,
    },
}

#[derive(Subcommand)]
enum ProfileCmd {
    /// Every profile (or NAME) with each axis in force and its pools.
    Show {
        /// One profile.
        name: Option<String>,
        #[command(flatten)]
        at: AdminArgs,
    },
    /// Change axes of profile NAME live: `lb profile set web maxConn=500
    /// maxSessRate=0` (the other axes keep their values; 0 turns one off).
    Set {
        /// The profile.
        name: String,
        /// `axis=value` pairs.
        #[arg(required = true)]
        assignments: Vec<String>,
        #[command(flatten)]
        at: AdminArgs,
        /// The admin token (default: --token-file, LB_ADMIN_TOKEN, or the
        /// instance's token file).
        #[arg(long)]
        token: Option<String>,
        /// A file holding the admin token on its first line.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Write a self-signed ECDSA P-256 certificate for NAME (and *.NAME)
    /// to DIR/NAME.pem, and its key to DIR/NAME.key (mode 0600).
    Gen {
        /// The DNS name.
        #[arg(long)]
        name: String,
        /// Where to write.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TlsCmd {
    /// Put a fresh random key first in a ticket key file (creating it, mode
    /// 0600), or in the farm's key set in Redis: it encrypts from now on,
    /// the previous keys still decrypt. A running `lb` picks it up within a
    /// second or two.
    RotateKeys {
        /// The ticket key file (`tlsOptions.ticketKeys`).
        #[arg(required_unless_present = "redis", conflicts_with = "redis")]
        file: Option<PathBuf>,
        /// Rotate the farm's keys in this Redis instead (`[cluster] redis`).
        #[arg(long, value_name = "URL")]
        redis: Option<String>,
        /// Keys kept in all, the new one included.
        #[arg(long, default_value_t = 3)]
        keep: usize,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        eprintln!("lb: configuration refused; nothing was started");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match cli.cmd {
        Cmd::Check { config } => match load(&config) {
            Ok(c) => {
                println!(
                    "{}: OK ({} frontend(s), {} pool(s), {} profile(s))",
                    config.display(),
                    c.frontend.len(),
                    c.pool.len(),
                    c.profile.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Run { config, join } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match lb::run::run(&c, join) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lb: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Attach { config, owner } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let done = owner
                .as_deref()
                .map(lb::attach::Owner::parse)
                .transpose()
                .and_then(|o| lb::attach::attach(&c, o));
            match done {
                Ok(dir) => {
                    println!(
                        "attached to {} ({:?} mode); pins in {} owned by {}",
                        c.xdp.ifaces().join(", "),
                        c.xdp.mode,
                        dir.display(),
                        owner.as_deref().unwrap_or("root")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("lb attach: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Detach { config } => {
            let c = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match lb::attach::detach(&c) {
                Ok(ifaces) => {
                    println!("detached from {}; pins removed", ifaces.join(", "));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("lb detach: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Stats {
            instance,
            per_cpu,
            json,
            admin,
        } => stats(&instance, per_cpu, json, admin),
        Cmd::Cert {
            cmd: CertCmd::Gen { name, dir },
        } => match lb::tls::certs::generate(&name, &dir) {
            Ok((cert, key)) => {
                println!("{}\n{}", cert.display(), key.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lb cert gen: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Tls {
            cmd: TlsCmd::RotateKeys { file, redis, keep },
        } => {
            let done = match (&file, &redis) {
                (Some(file), _) => lb::tls::tickets::rotate(file, keep)
                    .map(|()| {
                        format!(
                            "{}: a new key encrypts; {keep} kept at most",
                            file.display()
                        )
                    })
                    .map_err(|e| e.to_string()),
                (None, Some(url)) => lb::tls::farm::rotate_now(url, keep)
                    .map(|keys| {
                        format!(
                            "{} in {}: key {} encrypts; {} key(s) decrypt",
                            lb::tls::farm::KEYS,
                            lb::tls::cluster::redact(url),
                            keys.encrypting(),
                            keys.len()
                        )
                    })
                    .map_err(|e| e.to_string()),
                (None, None) => Err("name a key FILE or --redis URL".to_owned()),
            };
            match done {
                Ok(said) => {
                    println!("{said}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("lb tls rotate-keys: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Top { at, count } => top(&at, count),
        Cmd::Profile {
            cmd: ProfileCmd::Show { name, at },
        } => done(
            "lb profile show",
            lb::cli::profile_show(at.admin, name.as_deref()),
        ),
        Cmd::Profile {
            cmd:
                ProfileCmd::Set {
                    name,
                    assignments,
                    at,
                    token,
                    token_file,
                },
        } => done(
            "lb profile set",
            lb::cli::token(&at.instance, token, token_file.as_deref())
                .and_then(|t| lb::cli::profile_set(at.admin, &name, &assignments, t.as_deref())),
        ),
        Cmd::Janitor { instance: name } => {
            instance::run_janitor(&name);
            ExitCode::SUCCESS
        }
    }
}

/// Prints what a command made, or its error after `what:`.
fn done(what: &str, r: Result<String, String>) -> ExitCode {
    match r {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `lb top`: a frame a second from `/api/status`, with the data plane's
/// counters from the pinned maps when XDP is on; the screen is cleared
/// between frames on a terminal.
fn top(at: &AdminArgs, count: Option<u64>) -> ExitCode {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut prev: Option<(serde_json::Value, std::time::Instant)> = None;
    let mut frames = 0u64;
    loop {
        let now = match lb::stats::fetch_status(at.admin) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("lb top: {e}");
                return ExitCode::FAILURE;
            }
        };
        let at_time = std::time::Instant::now();
        let dt = prev
            .as_ref()
            .map_or(0.0, |(_, t)| at_time.duration_since(*t).as_secs_f64());
        let mut frame = lb::cli::top_frame(&now, prev.as_ref().map(|(v, _)| v), dt);
        if let Ok(s) = Stats::read(&at.instance) {
            frame.push_str(
                "
XDP (pinned maps)
",
            );
            frame.push_str(&s.render(false));
        }
        if tty {
            print!("\x1b[H\x1b[2J");
        }
        println!("{frame}");
        frames += 1;
        if count.is_some_and(|c| frames >= c) {
            return ExitCode::SUCCESS;
        }
        prev = Some((now, at_time));
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// `lb stats`: the pinned maps, and with `admin` the proxy's refusals. With
/// `admin` and no pins (XDP off), the admin part alone.
fn stats(
    instance: &str,
    per_cpu: bool,
    json: bool,
    admin: Option<std::net::SocketAddr>,
) -> ExitCode {
    let pins = Stats::read(instance);
    let status = match admin.map(lb::stats::fetch_status).transpose() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("lb stats: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pins = match (pins, &status) {
        (Ok(s), _) => Some(s),
        (Err(e), Some(_)) => {
            eprintln!("lb stats: {e}; showing the admin API's counters only");
            None
        }
        (Err(e), None) => {
            eprintln!("lb stats: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        let mut v = pins.map_or_else(|| serde_json::json!({}), |s| s.to_json());
        if let Some(st) = status {
            v["admin"] = st;
        }
        println!("{v}");
        return ExitCode::SUCCESS;
    }
    println!(
        "instance {instance} ({})",
        instance::pin_dir(instance).display()
    );
    if let Some(s) = pins {
        print!("{}", s.render(per_cpu));
    }
    if let Some(st) = &status {
        print!("{}", lb::stats::render_limits(st));
    }
    ExitCode::SUCCESS
}
