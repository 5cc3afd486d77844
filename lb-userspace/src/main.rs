//! The `lb` command line: `run`, `check`, `stats`, `cert gen`,
//! `tls rotate-keys`.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb::{config::Config, instance, stats::Stats};

#[derive(Parser)]
#[command(name = "lb", version, about = "An eBPF/XDP-assisted load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
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
        Cmd::Janitor { instance: name } => {
            instance::run_janitor(&name);
            ExitCode::SUCCESS
        }
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
