//! `lb` with `[xdp] mode = "off"` needs no privilege: started as `nobody`
//! (uid 65534, no capabilities, through `setpriv`), it serves requests to
//! a real backend, answers its admin API, and stops cleanly; its run files
//! (lock, session key, admin token) go to a directory of that user's.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use lb_tests::{
    backend::HttpBackend,
    client::{curl, free_addr, status},
    have_root,
    lb::nobody_cmd,
    unique_tag, ScratchDir,
};

#[test]
fn lb_serves_as_nobody_with_xdp_off() {
    if !have_root("lb_serves_as_nobody_with_xdp_off") {
        return;
    }
    let dir = ScratchDir::new("lb-nobody");
    let b = HttpBackend::start("a", "127.0.0.1:0".parse().expect("addr"), None).expect("backend");
    let (listen, admin) = (free_addr("127.0.0.1"), free_addr("127.0.0.1"));
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            "[global]\ninstance = \"nobody{tag}\"\n[xdp]\nmode = \"off\"\n[admin]\n\
             listen = \"{admin}\"\n[[frontend]]\nname = \"web\"\nlisten = \"{listen}\"\n\
             pool = \"p\"\n[[pool]]\nname = \"p\"\nbackends = [\"{backend}\"]\n",
            tag = unique_tag(),
            backend = b.addr
        ),
    )
    .expect("config");
    // The scratch directory is root's: let nobody read it.
    for p in [dir.join(""), config.clone()] {
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let mut child = nobody_cmd(None)
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv lb");
    let deadline = Instant::now() + Duration::from_secs(20);
    let st = loop {
        if let Ok(s) = status(admin) {
            break s;
        }
        if let Ok(Some(code)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("lb as nobody exited ({code}):\n{err}");
        }
        assert!(Instant::now() < deadline, "lb as nobody not ready in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(st["capabilities"], serde_json::json!([]), "{st}");
    let r = curl(&format!("http://{listen}/"), &[]).expect("curl");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("backend a"), "{r:?}");
    // SAFETY: kill with a pid of our own child.
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let code = child.wait().expect("exit");
    assert_eq!(code.code(), Some(0), "stopped cleanly");
    assert!(
        std::path::Path::new("/tmp/lb-65534").exists(),
        "run files in a directory of nobody's"
    );
}
