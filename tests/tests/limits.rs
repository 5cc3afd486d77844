//! Limit profiles as the daemon reads them. (The enforcement of each axis
//! comes with its own tests as it lands.)

use lb_tests::{client::free_addr, lb::Lb, unique_tag, ScratchDir};

#[test]
fn the_daemon_logs_once_each_axis_a_profile_disables_with_its_pools() {
    let dir = ScratchDir::new("lb-limits");
    let (p1, p2) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let config = format!(
        r#"[global]
instance = "lim{}"
[xdp]
mode = "off"
[[frontend]]
name = "a"
listen = "{p1}"
pool = "api"
[[frontend]]
name = "b"
listen = "{p2}"
pool = "batch"
[[pool]]
name = "api"
profile = "open"
backends = ["127.0.0.1:9"]
[[pool]]
name = "batch"
profile = "open"
backends = ["127.0.0.1:9"]
[profile.open]
maxConn = 0
maxSslRate = 0
maxRetries = 1
"#,
        unique_tag()
    );
    let mut lb = Lb::start(None, &dir.join("lb.toml"), &config).expect("lb starts");
    let log = lb.log();
    let lines = |axis: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("profile `open` disables {axis} (0)")))
            .collect::<Vec<_>>()
    };
    for axis in ["maxConn", "maxSslRate"] {
        let l = lines(axis);
        assert_eq!(l.len(), 1, "one line for {axis}:\n{log}");
        assert!(l[0].contains(r#"pools=["api", "batch"]"#), "{}", l[0]);
    }
    assert!(lines("maxRetries").is_empty(), "1 is not 0:\n{log}");
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));
}
