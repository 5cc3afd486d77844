//! The limit profile's axes and levels: their names (the config keys),
//! defaults, and the value in force at each level.
//!
//! A profile (`[profile.NAME]`, bound to pools) gives every axis a value:
//! its own or the default below. `[global.limits]` and `[frontend.limits]`
//! limit only the axes they name. At every level 0 disables an axis. A
//! connection or request must pass every level; a refusal names the level
//! and the axis (`lb-limit: <level>/<axis>`).

pub mod live;
pub mod rate;
pub mod session;
pub mod slots;

use std::fmt;

use crate::config::{Config, Limits};

/// One axis of a limit profile (DESIGN.md's table, plus the per-CPU
/// handshake gate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Concurrent connections.
    MaxConn,
    /// Backend connect attempts after the first.
    MaxRetries,
    /// Connections accepted per second (accept pacing).
    RateLimitSessions,
    /// New connections (SYNs) per second, enforced in XDP.
    MaxConnRate,
    /// New sessions per second.
    MaxSessRate,
    /// Concurrent TLS connections.
    MaxSslConn,
    /// Full TLS handshakes per second.
    MaxSslRate,
    /// Buffer per connection and direction, bytes.
    MaxBufferSize,
    /// TLS handshakes in flight per CPU.
    MaxActiveHandshakes,
}

impl Axis {
    /// Every axis, in the order of the profile table.
    pub const ALL: [Self; 9] = [
        Self::MaxConn,
        Self::MaxRetries,
        Self::RateLimitSessions,
        Self::MaxConnRate,
        Self::MaxSessRate,
        Self::MaxSslConn,
        Self::MaxSslRate,
        Self::MaxBufferSize,
        Self::MaxActiveHandshakes,
    ];

    /// The config key.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::MaxConn => "maxConn",
            Self::MaxRetries => "maxRetries",
            Self::RateLimitSessions => "rateLimitSessions",
            Self::MaxConnRate => "maxConnRate",
            Self::MaxSessRate => "maxSessRate",
            Self::MaxSslConn => "maxSslConn",
            Self::MaxSslRate => "maxSslRate",
            Self::MaxBufferSize => "maxBufferSize",
            Self::MaxActiveHandshakes => "maxActiveHandshakes",
        }
    }

    /// A profile's value when it does not name the axis.
    #[must_use]
    pub const fn default_value(self) -> u64 {
        match self {
            Self::MaxConn => 20_000,
            Self::MaxRetries => 3,
            Self::RateLimitSessions => 5_000,
            Self::MaxConnRate | Self::MaxSessRate => 10_000,
            Self::MaxSslConn => 5_000,
            Self::MaxSslRate => 2_000,
            Self::MaxBufferSize => 128 * 1024,
            Self::MaxActiveHandshakes => 256,
        }
    }
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a limit is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// `[global.limits]`: the whole process.
    Global,
    /// `[frontend.limits]`: one frontend.
    Frontend,
    /// The pool's profile.
    Pool,
}

impl Level {
    /// As shown in `lb-limit`, logs and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Frontend => "frontend",
            Self::Pool => "pool",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Limits {
    /// The axis's value if this table names it.
    #[must_use]
    pub fn get(&self, axis: Axis) -> Option<u64> {
        match axis {
            Axis::MaxConn => self.max_conn.map(|v| v.0),
            Axis::MaxRetries => self.max_retries.map(|v| v.0),
            Axis::RateLimitSessions => self.rate_limit_sessions.map(|v| v.0),
            Axis::MaxConnRate => self.max_conn_rate.map(|v| v.0),
            Axis::MaxSessRate => self.max_sess_rate.map(|v| v.0),
            Axis::MaxSslConn => self.max_ssl_conn.map(|v| v.0),
            Axis::MaxSslRate => self.max_ssl_rate.map(|v| v.0),
            Axis::MaxBufferSize => self.max_buffer_size.map(|v| v.0),
            Axis::MaxActiveHandshakes => self.max_active_handshakes.map(|v| v.0),
        }
    }

    /// The value in force when this table is a profile: its own or the
    /// default (0 = off).
    #[must_use]
    pub fn profile(&self, axis: Axis) -> u64 {
        self.get(axis).unwrap_or_else(|| axis.default_value())
    }

    /// The value in force when this table is `[global.limits]` or
    /// `[frontend.limits]`: its own, or 0 (not limited here).
    #[must_use]
    pub fn level(&self, axis: Axis) -> u64 {
        self.get(axis).unwrap_or(0)
    }
}

/// The tightest limit on `axis` for connections of frontend `f`: the
/// smallest non-zero value among `[global.limits]`, the frontend's limits
/// and its pool's profile, with the level that sets it (the most specific
/// one on a tie). None when every level leaves the axis off.
#[must_use]
pub fn tightest(cfg: &Config, f: &crate::config::Frontend, axis: Axis) -> Option<(u64, Level)> {
    let pool = cfg.pool.iter().find(|p| p.name == f.pool);
    let candidates = [
        (
            pool.map_or(0, |p| cfg.profile_of(p).profile(axis)),
            Level::Pool,
        ),
        (f.limits.level(axis), Level::Frontend),
        (cfg.global.limits.level(axis), Level::Global),
    ];
    candidates
        .into_iter()
        .filter(|&(v, _)| v > 0)
        .min_by_key(|&(v, _)| v)
}

/// The axes each profile turns off (sets to 0), by profile name, in file
/// order of axes. `lb run` logs them once at load.
#[must_use]
pub fn disabled_by_profiles(cfg: &Config) -> Vec<(String, Axis)> {
    cfg.profile
        .iter()
        .flat_map(|(name, limits)| {
            Axis::ALL
                .into_iter()
                .filter(|&a| limits.get(a) == Some(0))
                .map(move |a| (name.clone(), a))
        })
        .collect()
}

/// Logs, once, every axis a profile disables and the pools it applies to.
pub fn log_disabled(cfg: &Config) {
    for (profile, axis) in disabled_by_profiles(cfg) {
        let pools: Vec<&str> = cfg
            .pool
            .iter()
            .filter(|p| p.profile.as_deref() == Some(profile.as_str()))
            .map(|p| p.name.as_str())
            .collect();
        tracing::info!(
            %profile,
            %axis,
            ?pools,
            "profile `{profile}` disables {axis} (0): not limited for its pools"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).expect("valid")
    }

    #[test]
    fn profiles_take_defaults_and_levels_take_nothing_unless_named() {
        let c = cfg(r#"
            [global.limits]
            maxConn = 100000
            [xdp]
            mode = "off"
            [[pool]]
            name = "p"
            profile = "web"
            [profile.web]
            maxSslRate = 300
            maxBufferSize = "64KB"
            "#);
        let web = c.profile_of(&c.pool[0]);
        assert_eq!(web.profile(Axis::MaxSslRate), 300);
        assert_eq!(web.profile(Axis::MaxBufferSize), 64 * 1024);
        let defaults: Vec<u64> = Axis::ALL
            .iter()
            .map(|&a| Limits::default().profile(a))
            .collect();
        assert_eq!(
            defaults,
            [20_000, 3, 5_000, 10_000, 10_000, 5_000, 2_000, 131_072, 256],
            "DESIGN.md's table"
        );
        assert_eq!(c.global.limits.level(Axis::MaxConn), 100_000);
        assert_eq!(
            c.global.limits.level(Axis::MaxSslRate),
            0,
            "unnamed: not limited"
        );
    }

    #[test]
    fn axes_set_to_zero_are_listed_per_profile() {
        let c = cfg(r#"
            [xdp]
            mode = "off"
            [profile.open]
            maxConn = 0
            maxSslRate = 0
            maxRetries = 2
            [profile.plain]
            maxConn = 10
            "#);
        let off: Vec<(String, &str)> = disabled_by_profiles(&c)
            .into_iter()
            .map(|(p, a)| (p, a.name()))
            .collect();
        assert_eq!(
            off,
            [
                ("open".to_owned(), "maxConn"),
                ("open".to_owned(), "maxSslRate")
            ]
        );
    }
}
