//! `cargo xtask build [--debug]`: setup, then build the `tollgate` binary and the CNI plugin
//! `tollgate-cni` beside it. The eBPF object is built (cargo +nightly, bpf-linker) and embedded
//! by agent/build.rs into `tollgate` only.
//!
//! `cargo xtask install-cni DIR`: build, then install the plugin as `DIR/tollgate` (the name
//! its network configs give as `type`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{cargo, repo_root, run_cmd, setup};

#[derive(Args)]
pub struct BuildArgs {
    /// Build the debug profile (target/debug/tollgate) instead of release.
    #[arg(long)]
    pub debug: bool,
}

/// Path of the `tollgate` binary for a profile.
pub fn binary_path(debug: bool) -> PathBuf {
    let profile = if debug { "debug" } else { "release" };
    repo_root().join("target").join(profile).join("tollgate")
}

/// Setup, build, print and return the path of the binary.
pub fn run(args: &BuildArgs) -> Result<PathBuf> {
    setup::run().context("setup failed")?;
    build(args.debug)
}

/// Build without running setup first (for tasks that already did).
pub fn build(debug: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "tollgate"]);
    if !debug {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd).context("building tollgate failed")?;
    let bin = binary_path(debug);
    for b in [&bin, &cni_path(debug)] {
        if !b.is_file() {
            bail!("the build succeeded but {} is missing", b.display());
        }
        println!("{}", b.display());
    }
    Ok(bin)
}

/// Path of the `tollgate-cni` binary for a profile.
pub fn cni_path(debug: bool) -> PathBuf {
    binary_path(debug).with_file_name("tollgate-cni")
}

#[derive(Args)]
pub struct InstallCniArgs {
    /// The runtime's CNI plugin directory (/opt/cni/bin for containerd, /usr/lib/cni for
    /// Debian's podman).
    pub dir: PathBuf,
}

/// Builds, then copies the plugin to `DIR/tollgate` (through a temporary file and a rename,
/// so a runtime never executes a half-written plugin).
pub fn install_cni(args: &InstallCniArgs) -> Result<()> {
    setup::run().context("setup failed")?;
    build(false)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dest = args.dir.join("tollgate");
    let tmp = args.dir.join(".tollgate.tmp");
    std::fs::copy(cni_path(false), &tmp)
        .with_context(|| format!("copying the plugin to {}", tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("installing {}", dest.display()))?;
    println!("installed {}", dest.display());
    Ok(())
}
