//! Builds the eBPF object (datapath-ebpf) with the nightly toolchain and bpf-linker, and hands
//! its path to `include_bytes_aligned!` so the `tollgate` binary is self-contained.
//! `cargo xtask setup` installs what this needs (rust-src, bpf-linker against nightly's LLVM).

use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("datapath-ebpf");
    let target_dir = root.join("target").join("ebpf");
    println!("cargo:rerun-if-changed={}", ebpf_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("datapath-common").join("src").display()
    );

    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("datapath.o");
    println!("cargo:rerun-if-env-changed=TOLLGATE_EBPF_OBJ");
    // A prebuilt object (e.g. from CI or a cross build) skips the nested nightly build.
    if let Ok(obj) = env::var("TOLLGATE_EBPF_OBJ") {
        std::fs::copy(&obj, &out).expect("copying TOLLGATE_EBPF_OBJ");
        return;
    }

    let mut cmd = Command::new("cargo");
    cmd.current_dir(&ebpf_dir)
        .args([
            "+nightly",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args([
            "-Z",
            "build-std=core",
            "--bin",
            "datapath",
            "--ignore-rust-version",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer cargo's settings are for the host build; the nested one must not inherit them.
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        ["-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f"),
    );
    let status = cmd
        .status()
        .expect("running cargo +nightly for datapath-ebpf (run `cargo xtask setup`)");
    assert!(
        status.success(),
        "building datapath-ebpf failed (run `cargo xtask setup` first)"
    );

    let obj = target_dir.join("bpfel-unknown-none/release/datapath");
    std::fs::copy(&obj, &out).expect("copying the eBPF object");
}
