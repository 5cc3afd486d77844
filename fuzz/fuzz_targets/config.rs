//! Fuzz target `config`: arbitrary bytes as the text of a config file.
//!
//! Feeds [`lb::config::Config::parse`] (TOML, then every check of the
//! validator), and for a config it accepts, what `lb run` builds from it
//! next: the XDP plan ([`lb::xdp::Plan::from_config`]) and each pool's
//! limit profile. Bytes that are not UTF-8 go in lossily converted (`lb`
//! refuses them when reading the file; the parser should not depend on it).
//!
//! Must hold: no panic; a refusal is `ConfigError::Invalid` with at least
//! one problem, each placed on a line that exists and rendered without
//! panicking; an accepted config parses again to the same plan.
#![no_main]

use std::path::Path;

use lb::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.toml");
    match Config::parse(&text, path) {
        Ok(cfg) => {
            let plan = lb::xdp::Plan::from_config(&cfg, 1);
            for pool in &cfg.pool {
                let _ = cfg.profile_of(pool);
            }
            for f in &cfg.frontend {
                assert!(
                    cfg.pool_index(f).is_some(),
                    "a valid config's frontend has a pool"
                );
            }
            let again = Config::parse(&text, path).expect("an accepted config is accepted again");
            assert_eq!(
                lb::xdp::Plan::from_config(&again, 1),
                plan,
                "same text, same plan"
            );
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty(), "refused without a problem");
            // `str::lines` does not count a final empty line; a problem at
            // the very end of the file may name it.
            let lines = text.lines().count() + 1;
            for p in &problems {
                if let Some(line) = p.line {
                    assert!(
                        (1..=lines).contains(&line),
                        "problem on line {line} of {lines}: {p:?}"
                    );
                }
                let _ = p.display_in(path).to_string();
            }
        }
        Err(e @ ConfigError::Read { .. }) => panic!("parse does not read files: {e}"),
    }
});
