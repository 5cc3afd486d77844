//! `lb run`, `lb check` and `lb stats` as a user runs them: bad input refused
//! with the line and key named, pins with BTF field names, one `lb` per
//! instance, and nothing left attached or pinned after SIGTERM or SIGKILL.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use lb_tests::{
    have_root, have_tool,
    lb::{lb_cmd, Lb},
    netns::Topology,
    ScratchDir,
};

fn topo() -> Topology {
    Topology::new("lbt", &["198.18.0.2/24"], &["198.18.0.1/24"]).expect("namespaces")
}

fn config(instance: &str, iface: &str) -> String {
    format!(
        r#"[global]
instance = "{instance}"
[xdp]
iface = "{iface}"
mode = "driver"
[[frontend]]
name = "web"
listen = "198.18.0.1:8080"
pool = "api"
[[pool]]
name = "api"
"#
    )
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn check_refuses_bad_files_naming_file_line_key_and_what_is_allowed() {
    let tmp = ScratchDir::new("lb-test");
    let cases = [
        ("[xdp]\nmode = \"off\"\nsourceSynRat = 5\n", ":3:", "unknown field `sourceSynRat`"),
        ("[xdp]\nmode = \"off\"\nsourceSynRate = \"fast\"\n", ":3:", "sourceSynRate = \"fast\""),
        ("[xdp]\nmode = \"off\"\n[profile.p]\nmaxConn = 5000000\n", ":4:", "allowed 0..=1000000"),
        ("[xdp]\niface = \"nosuch0\"\n", ":2:", "interface `nosuch0` does not exist"),
        (
            "[xdp]\nmode = \"off\"\n[[frontend]]\nname = \"w\"\nlisten = \"vip.example:80\"\npool = \"p\"\n",
            ":5:",
            "is not an address and port",
        ),
    ];
    for (text, line, msg) in cases {
        let path = tmp.join("bad.toml");
        std::fs::write(&path, text).expect("write");
        let p = path.to_string_lossy().into_owned();
        for verb in ["check", "run"] {
            let (code, _, err) = lb_cmd(&[verb, "-c", &p]).expect("lb");
            assert_eq!(code, 2, "lb {verb} on {text:?}: exit code; stderr: {err}");
            assert!(
                err.contains(&format!("{p}{line}")),
                "lb {verb}: names file and line: {err}"
            );
            assert!(err.contains(msg), "lb {verb}: says {msg:?}: {err}");
            assert!(err.contains("nothing was started"), "{err}");
        }
    }
    let good = tmp.join("good.toml");
    std::fs::write(&good, config("ok", "lo").replace("driver", "off")).expect("write");
    let (code, out, err) = lb_cmd(&["check", "-c", &good.to_string_lossy()]).expect("lb");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK (1 frontend(s), 1 pool(s)"), "{out}");
}

#[test]
fn run_pins_btf_maps_refuses_a_second_instance_and_cleans_up_on_sigterm() {
    let tmp = ScratchDir::new("lb-test");
    if !have_root("run_pins_btf_maps_refuses_a_second_instance_and_cleans_up_on_sigterm") {
        return;
    }
    let t = topo();
    let instance = format!("life{}", t.tag);
    let cfg = tmp.join("lb.toml");
    let mut lb = Lb::start(Some(&t.lbns), &cfg, &config(&instance, &t.iface)).expect("lb run");
    let pins = Path::new("/sys/fs/bpf/lb").join(&instance);
    assert!(t.lbns.xdp_attached(&t.iface), "XDP attached");
    for map in lb_common::maps::ALL {
        assert!(pins.join(map).exists(), "pin {map}");
    }
    if have_tool("bpftool") {
        let out = std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned"])
            .arg(pins.join("vips"))
            .output()
            .expect("bpftool");
        let text = String::from_utf8_lossy(&out.stdout);
        for field in ["\"port_be\"", "\"vip_index\"", "\"pool_bucket\""] {
            assert!(
                text.contains(field),
                "BTF field {field} in bpftool dump:\n{text}"
            );
        }
    }
    // `lb stats` from another shell (this one, outside the namespace).
    let (code, out, err) = lb_cmd(&["stats", "--instance", &instance, "--per-cpu"]).expect("stats");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("SYNs to VIP 198.18.0.1:8080") && out.contains("cpu0"),
        "{out}"
    );

    // A second lb with the same instance is refused and disturbs nothing.
    let second = t
        .lbns
        .cmd(&lb_tests::lb::lb_bin().to_string_lossy())
        .args(["run", "-c"])
        .arg(&cfg)
        .output()
        .expect("second lb");
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "instance `{instance}` is already running (pid {})",
            lb.pid()
        )),
        "{err}"
    );
    assert!(t.lbns.xdp_attached(&t.iface) && pins.join("counters").exists());

    assert_eq!(
        lb.stop(libc::SIGTERM).expect("exit"),
        Some(0),
        "{}",
        lb.log()
    );
    assert!(!t.lbns.xdp_attached(&t.iface), "detached after SIGTERM");
    assert!(!pins.exists(), "pins removed after SIGTERM");
}

#[test]
fn sigkill_leaves_nothing_attached_or_pinned_and_a_new_lb_starts() {
    let tmp = ScratchDir::new("lb-test");
    if !have_root("sigkill_leaves_nothing_attached_or_pinned_and_a_new_lb_starts") {
        return;
    }
    let t = topo();
    let instance = format!("kill{}", t.tag);
    let cfg = tmp.join("lb.toml");
    let text = config(&instance, &t.iface);
    let mut lb = Lb::start(Some(&t.lbns), &cfg, &text).expect("lb run");
    let pins = Path::new("/sys/fs/bpf/lb").join(&instance);
    assert!(t.lbns.xdp_attached(&t.iface) && pins.exists());
    lb.stop(libc::SIGKILL).expect("killed");
    // The kernel drops the bpf_link with the process: fail open at once.
    assert!(
        !t.lbns.xdp_attached(&t.iface),
        "no XDP program after SIGKILL"
    );
    // The janitor removes the pins.
    wait_for("pins removed after SIGKILL", || !pins.exists());
    // And a new lb takes the instance over.
    let mut again = Lb::start(Some(&t.lbns), &cfg, &text).expect("lb run after SIGKILL");
    assert!(t.lbns.xdp_attached(&t.iface) && pins.exists());
    assert_eq!(again.stop(libc::SIGTERM).expect("exit"), Some(0));
    assert!(!pins.exists());
}

#[test]
fn mode_off_and_no_privileges_run_with_nothing_attached_and_say_so() {
    let tmp = ScratchDir::new("lb-test");
    if !have_root("mode_off_and_no_privileges_run_with_nothing_attached_and_say_so") {
        return;
    }
    let t = topo();
    let instance = format!("off{}", t.tag);
    let cfg = tmp.join("lb.toml");
    let mut lb = Lb::start(
        Some(&t.lbns),
        &cfg,
        &config(&instance, &t.iface).replace("driver", "off"),
    )
    .expect("lb run");
    assert!(
        lb.log().contains("mode = \"off\": no XDP program attached"),
        "{}",
        lb.log()
    );
    assert!(!t.lbns.xdp_attached(&t.iface));
    assert!(!Path::new("/sys/fs/bpf/lb").join(&instance).exists());
    assert_eq!(lb.stop(libc::SIGTERM).expect("exit"), Some(0));

    // As `nobody`, with no capabilities at all.
    if !have_tool("setpriv") {
        eprintln!("setpriv missing: unprivileged half skipped");
        return;
    }
    let cfg = tmp.join("nopriv.toml");
    std::fs::write(&cfg, config(&format!("np{}", t.tag), &t.iface)).expect("write");
    std::fs::set_permissions(
        cfg.parent().expect("dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let mut child = lb_tests::lb::nobody_cmd(Some(&t.lbns))
        .args(["run", "-c"])
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv lb");
    // Wait for "ready" (its signal handlers are in place by then), then stop it.
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut log = String::new();
    while !log.contains("ready") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stderr, &mut line).expect("read") == 0 {
            break;
        }
        log.push_str(&line);
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(i32::try_from(child.id()).expect("pid"), libc::SIGTERM) };
    let status = child.wait().expect("wait");
    std::io::Read::read_to_string(&mut stderr, &mut log).expect("read");
    let out = std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: log.into_bytes(),
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no privileges to load BPF"), "{err}");
    assert!(err.contains("ready (no XDP)"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!t.lbns.xdp_attached(&t.iface));
}
