//! Builds the XDP object (crate `lb-ebpf`) so `lb` can embed it.
//!
//! `cargo xtask` builds the object first and passes its path in
//! `LB_EBPF_OBJECT`, so `lb` embeds exactly the object `cargo xtask
//! build-ebpf` printed. Without it (a plain `cargo build`) the object is built
//! here with aya-build, which needs the nightly toolchain and bpf-linker that
//! `cargo xtask setup` installs.

use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    let out = PathBuf::from(env::var("OUT_DIR")?).join("lb-ebpf");
    if let Some(obj) = env::var_os("LB_EBPF_OBJECT") {
        let obj = PathBuf::from(obj);
        println!("cargo:rerun-if-changed={}", obj.display());
        fs::copy(&obj, &out)
            .map_err(|e| anyhow::anyhow!("copying LB_EBPF_OBJECT {}: {e}", obj.display()))?;
        return Ok(());
    }
    println!("cargo:rerun-if-changed=../lb-common/src");
    let ebpf = aya_build::Package {
        name: "lb-ebpf",
        root_dir: "../lb-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
