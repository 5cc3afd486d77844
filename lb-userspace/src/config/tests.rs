//! What `lb check` says about good and bad files.

use std::path::Path;

use super::{Config, ConfigError};
use crate::limits::Axis;

const GOOD: &str = r#"
[global]
instance = "t1"
[global.limits]
maxConnRate = 50000

[xdp]
iface = "lo"
mode = "skb"
sourceSynRate = 100

[[frontend]]
name = "web"
listen = "127.0.0.1:8080"
pool = "api"
[frontend.limits]
maxConnRate = 5000

[[frontend]]
name = "web6"
listen = "[::1]:8080"
mode = "tcp"
pool = "api"

[[pool]]
name = "api"
profile = "public-web"
backends = ["127.0.0.1:9000"]
queue = { depth = 10, timeout = "5s" }

[profile.public-web]
maxConn = 20000
maxConnRate = 10000
maxBufferSize = "128KB"
"#;

fn problems(text: &str) -> Vec<String> {
    match Config::parse(text, Path::new("lb.toml")) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { problems, path }) => problems
            .iter()
            .map(|p| p.display_in(&path).to_string())
            .collect(),
        Err(e) => vec![e.to_string()],
    }
}

fn one_problem(text: &str) -> String {
    let p = problems(text);
    assert_eq!(p.len(), 1, "expected one problem, got {p:?}");
    p[0].clone()
}

#[test]
fn a_good_file_loads_with_defaults_and_levels() {
    let c = Config::parse(GOOD, Path::new("lb.toml")).expect("valid");
    assert_eq!(c.global.limits.level(Axis::MaxConnRate), 50_000);
    assert_eq!(c.frontend[0].limits.level(Axis::MaxConnRate), 5000);
    assert_eq!(c.frontend[1].limits.level(Axis::MaxConnRate), 0);
    assert_eq!(c.profile_of(&c.pool[0]).profile(Axis::MaxConnRate), 10_000);
    assert_eq!(c.xdp.source_burst(), 200);
    assert_eq!(c.pool_index(&c.frontend[1]), Some(0));
}

#[test]
fn unknown_key_names_line_key_and_allowed_keys() {
    let msg = one_problem(&GOOD.replace("maxConn = 20000", "maxConns = 20000"));
    assert!(msg.starts_with("lb.toml:32:"), "{msg}");
    assert!(msg.contains("maxConns"), "{msg}");
    assert!(msg.contains("maxConnRate"), "lists allowed keys: {msg}");
}

#[test]
fn wrong_type_names_the_line_and_value() {
    let msg = one_problem(&GOOD.replace("maxConn = 20000", "maxConn = \"lots\""));
    assert!(msg.starts_with("lb.toml:32:"), "{msg}");
    assert!(msg.contains("maxConn = \"lots\""), "{msg}");
}

#[test]
fn out_of_range_says_what_is_allowed() {
    let msg = one_problem(&GOOD.replace("maxConn = 20000", "maxConn = 2000000"));
    assert!(msg.starts_with("lb.toml:32:"), "{msg}");
    assert!(
        msg.contains("2000000 is out of range; allowed 0..=1000000"),
        "{msg}"
    );
    let msg = one_problem(&GOOD.replace("\"128KB\"", "\"8KB\""));
    assert!(msg.contains("allowed 16KB..=256KB"), "{msg}");
}

#[test]
fn a_vip_that_is_not_an_address_is_refused() {
    let msg = one_problem(&GOOD.replace("127.0.0.1:8080", "web.example:8080"));
    assert!(msg.starts_with("lb.toml:14:"), "{msg}");
    assert!(
        msg.contains("`web.example:8080` is not an address and port"),
        "{msg}"
    );
}

#[test]
fn a_missing_interface_is_named() {
    let msg = one_problem(&GOOD.replace("iface = \"lo\"", "iface = \"nosuch0\""));
    assert!(msg.starts_with("lb.toml:8: xdp.iface:"), "{msg}");
    assert!(msg.contains("`nosuch0` does not exist"), "{msg}");
    // With mode off nothing is attached, so the interface is not needed.
    let off = GOOD
        .replace("iface = \"lo\"", "iface = \"nosuch0\"")
        .replace("mode = \"skb\"", "mode = \"off\"");
    assert!(problems(&off).is_empty());
}

#[test]
fn bad_enum_values_list_the_choices() {
    let msg = one_problem(&GOOD.replace("mode = \"skb\"", "mode = \"fast\""));
    assert!(
        msg.contains("driver") && msg.contains("skb") && msg.contains("off"),
        "{msg}"
    );
}

#[test]
fn cross_references_and_duplicates_are_all_reported() {
    let text = GOOD
        .replace(
            "pool = \"api\"\n[frontend.limits]",
            "pool = \"nope\"\n[frontend.limits]",
        )
        .replace("[::1]:8080", "127.0.0.1:8080")
        .replace("profile = \"public-web\"", "profile = \"missing\"");
    let p = problems(&text);
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(
        p[0].starts_with("lb.toml:15: frontend[0].pool: no pool named `nope`; allowed: `api`"),
        "{p:?}"
    );
    assert!(
        p[1].contains("frontend[1].listen") && p[1].contains("frontend `web`"),
        "{p:?}"
    );
    assert!(
        p[2].contains("pool[0].profile: no profile named `missing`"),
        "{p:?}"
    );
}

#[test]
fn bad_instance_names_are_refused() {
    let msg = one_problem(&GOOD.replace("instance = \"t1\"", "instance = \"../x\""));
    assert!(msg.starts_with("lb.toml:3: global.instance:"), "{msg}");
}

#[test]
fn syntax_errors_have_a_line() {
    let msg = one_problem("[global\ninstance = 1");
    assert!(msg.starts_with("lb.toml:1:"), "{msg}");
}

#[test]
fn pool_checks_name_the_key_the_value_and_what_is_allowed() {
    let text = GOOD.replace(
        "backends = [\"127.0.0.1:9000\"]",
        "backends = [\"127.0.0.1:9000\", { address = \"127.0.0.1:9000\", weight = 2 }]\n\
         maglevTableSize = 65536\nhashHeader = \"x user\"\nsticky = \"cookie\"\n\
         health = { kind = \"http\", path = \"healthz\" }",
    );
    let p = problems(&text);
    let has = |needle: &str| p.iter().any(|m| m.contains(needle));
    assert!(
        has("pool[0].backends[1]: `127.0.0.1:9000` is listed twice"),
        "{p:?}"
    );
    assert!(has("pool[0].maglevTableSize: 65536 is not prime"), "{p:?}");
    assert!(
        has("pool[0].hashHeader: is used only with algorithm = \"maglev\""),
        "{p:?}"
    );
    assert!(
        has("pool[0].hashHeader: `x user` is not a header name"),
        "{p:?}"
    );
    assert!(
        has("pool[0].sticky: \"cookie\" needs HTTP but tcp frontend `web6`"),
        "{p:?}"
    );
    assert!(
        has("pool[0].health.path: `healthz` does not start with `/`"),
        "{p:?}"
    );
    assert!(
        p.iter().all(|m| m.starts_with("lb.toml:")),
        "every problem has a line: {p:?}"
    );
    assert_eq!(p.len(), 6, "{p:?}");
}

#[test]
fn weights_and_health_values_are_range_checked() {
    let text = GOOD.replace(
        "backends = [\"127.0.0.1:9000\"]",
        "backends = [{ address = \"127.0.0.1:9000\", weight = 5000 }]",
    );
    assert!(one_problem(&text).contains("5000 is out of range; allowed 0..=1000"));
    let text = GOOD.replace(
        "backends = [\"127.0.0.1:9000\"]",
        "backends = [\"127.0.0.1:9000\"]\nhealth = { kind = \"udp\" }",
    );
    let msg = one_problem(&text);
    assert!(msg.contains("tcp") && msg.contains("http"), "{msg}");
}
