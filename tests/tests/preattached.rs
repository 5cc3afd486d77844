//! An `lb` with no privileges over an XDP program root attached for it:
//! `lb attach --owner nobody` (root) attaches the program with pinned links
//! and maps owned by `nobody` and exits, the program staying attached; an
//! `lb run` as `nobody` with no capabilities writes its own limits into
//! those maps, and the kernel enforces them on a real SYN flood; when it
//! stops, the program stays; `lb detach` removes it. Root only (XDP).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    have_root, have_tool,
    lb::{lb_bin, lb_cmd, nobody_cmd},
    netns::Topology,
    ScratchDir,
};

fn config(instance: &str, iface: &str, xdp_extra: &str) -> String {
    format!(
        r#"[global]
instance = "{instance}"
[xdp]
iface = "{iface}"
mode = "driver"
{xdp_extra}
[[frontend]]
name = "web"
listen = "198.18.0.1:8080"
pool = "api"
[[pool]]
name = "api"
"#
    )
}

/// The pins of the instance, removed (which detaches the program) if the
/// test ends before `lb detach` did.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (by pid, ours) if the test ends first.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// 100 SYNs from the client namespace to the VIP in 0.1 s, one source;
/// then the VIP's SYNs dropped by source so far, from `lb stats --json`.
fn flood_and_count(t: &Topology, instance: &str) -> u64 {
    t.client
        .run(&[
            "hping3",
            "-q",
            "-S",
            "-p",
            "8080",
            "-c",
            "100",
            "-i",
            "u1000",
            "198.18.0.1",
        ])
        .expect("hping3");
    let (code, out, err) = lb_cmd(&["stats", "--instance", instance, "--json"]).expect("stats");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stats JSON");
    v["vips"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["vip"] == "198.18.0.1:8080"))
        .and_then(|x| x["drop_source"].as_u64())
        .unwrap_or_else(|| panic!("no VIP 198.18.0.1:8080 in {v}"))
}

#[test]
fn nobody_runs_over_a_program_lb_attach_pinned_and_its_limits_hold_in_the_kernel() {
    let test = "nobody_runs_over_a_program_lb_attach_pinned_and_its_limits_hold_in_the_kernel";
    if !have_root(test) {
        return;
    }
    if !have_tool("hping3") || !have_tool("setpriv") {
        eprintln!("SKIPPED {test}: needs hping3 and setpriv");
        return;
    }
    let tmp = ScratchDir::new("lb-attach");
    std::fs::set_permissions(
        tmp.join(""),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let t = Topology::new("lba", &["198.18.0.2/24"], &["198.18.0.1/24"]).expect("namespaces");
    let instance = format!("att{}", t.tag);
    let pins = Pins(Path::new("/sys/fs/bpf/lb").join(&instance));

    // Bad input first: an unknown owner attaches nothing.
    let attach_cfg = tmp.join("attach.toml");
    std::fs::write(&attach_cfg, config(&instance, &t.iface, "")).expect("write");
    let out = t
        .lbns
        .cmd(&lb_bin().to_string_lossy())
        .args(["attach", "-c"])
        .arg(&attach_cfg)
        .args(["--owner", "no-such-user-here"])
        .output()
        .expect("lb attach");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--owner no-such-user-here: no such user"),
        "{err}"
    );
    assert!(!t.lbns.xdp_attached(&t.iface) && !pins.0.exists());

    // Root attaches, for nobody, and exits: the program stays.
    let out = t
        .lbns
        .cmd(&lb_bin().to_string_lossy())
        .args(["attach", "-c"])
        .arg(&attach_cfg)
        .args(["--owner", "65534"])
        .output()
        .expect("lb attach");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&format!("attached to {}", t.iface)), "{said}");
    assert!(
        t.lbns.xdp_attached(&t.iface),
        "attached after lb attach exited"
    );
    let link = format!("link_{}", t.iface);
    for name in lb_common::maps::ALL.iter().copied().chain([link.as_str()]) {
        let m = std::fs::metadata(pins.0.join(name)).unwrap_or_else(|e| panic!("pin {name}: {e}"));
        assert_eq!((m.uid(), m.mode() & 0o777), (65534, 0o600), "pin {name}");
    }
    // The attached plan has no per-source limit: a one-source flood passes.
    assert_eq!(flood_and_count(&t, &instance), 0, "dropped by source");

    // nobody, with no capability, runs over it with a per-source limit.
    let run_cfg = tmp.join("run.toml");
    std::fs::write(
        &run_cfg,
        config(
            &instance,
            &t.iface,
            "sourceSynRate = 10\nsourceSynBurst = 10",
        ),
    )
    .expect("write");
    let log_path = tmp.join("lb.log");
    let log_file = std::fs::File::create(&log_path).expect("log");
    let child = nobody_cmd(Some(&t.lbns))
        .args(["run", "-c"])
        .arg(&run_cfg)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("setpriv lb");
    let mut lb = Reaped(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log().contains("ready") {
        if let Ok(Some(code)) = lb.0.try_wait() {
            panic!("lb as nobody exited ({code}):\n{}", log());
        }
        assert!(Instant::now() < deadline, "not ready in 20 s:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        log().contains("no privileges: writing into the program `lb attach` attached"),
        "{}",
        log()
    );
    assert!(log().contains("kept=[]"), "no capability kept:\n{}", log());
    // Its limit holds in the kernel: 100 SYNs in 0.1 s from one source
    // against 10/s with a burst of 10.
    let dropped = flood_and_count(&t, &instance);
    eprintln!("FIGURES preattached: dropped by source {dropped} of 100 SYNs");
    assert!(
        (80..=95).contains(&dropped),
        "dropped by source: {dropped} of 100 (at 10/s, burst 10: about 89)"
    );

    // It stops cleanly and leaves the program and its pins.
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(i32::try_from(lb.0.id()).expect("pid"), libc::SIGTERM) };
    let code = lb.0.wait().expect("wait");
    assert_eq!(code.code(), Some(0), "{}", log());
    assert!(
        t.lbns.xdp_attached(&t.iface),
        "still attached after it stopped"
    );
    assert!(pins.0.join(&link).exists());

    // Root detaches (in the namespace: the config names its interface).
    let detach = || {
        let out = t
            .lbns
            .cmd(&lb_bin().to_string_lossy())
            .args(["detach", "-c"])
            .arg(&attach_cfg)
            .output()
            .expect("lb detach");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = detach();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("detached from {}", t.iface)), "{out}");
    assert!(!t.lbns.xdp_attached(&t.iface), "detached");
    assert!(!pins.0.exists(), "pins removed");
    let (code, _, err) = detach();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("has no program attached by `lb attach`"),
        "{err}"
    );
}
