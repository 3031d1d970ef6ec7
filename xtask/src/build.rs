//! `cargo xtask build [--debug]`: setup, then build the `tollgate` binary. The eBPF object is
//! built (cargo +nightly, bpf-linker) and embedded by agent/build.rs.

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
    if !bin.is_file() {
        bail!("the build succeeded but {} is missing", bin.display());
    }
    println!("{}", bin.display());
    Ok(bin)
}
