//! `lb`: an eBPF/XDP-assisted load balancer.
//!
//! This library is the daemon and CLI behind the `lb` binary (`main.rs` is a
//! thin shell over it). Modules, each with one owner:
//! - [`config`]: the TOML file, parsed and validated with errors that point
//!   at the line;
//! - [`xdp`]: the control library for the XDP data plane (the only writer of
//!   its maps);
//! - [`instance`]: one `lb` per instance name, pins and their janitor;
//! - [`stats`]: counters read back from the pinned maps;
//! - [`limits`]: the profile's axes and levels, defaults, the values in
//!   force, `maxConn` slots and queues, rates, session cookies;
//! - [`control`]: live changes to the limits (admin API, SIGHUP);
//! - [`pool`]: backend pools, balancing, stickiness, health checks;
//! - [`proxy`]: per-CPU workers proxying HTTP and TCP to the pools;
//! - [`tls`]: TLS termination: certificates, SNI, tickets, session cache;
//! - [`admin`]: the admin listener (`/api/status`, `/api/profiles`);
//! - [`metrics`]: Prometheus metrics (`/metrics`) and the histograms behind
//!   them;
//! - [`cli`]: the admin API from the command line (`lb profile`, `lb top`);
//! - [`privileges`]: the capabilities dropped once `lb` is serving;
//! - [`run`]: `lb run`, tying the above together until a signal.

pub mod admin;
pub mod attach;
pub mod cli;
pub mod config;
pub mod control;
pub mod instance;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod privileges;
pub mod proxy;
pub mod run;
pub mod stats;
pub mod tls;
pub mod trust;
pub mod xdp;
