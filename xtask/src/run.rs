//! `cargo xtask build-and-run`: build the release binary, then replace this process with
//! `tollgate demo` (so Ctrl-C reaches the demo, which cleans up, and its exit status is ours).

use std::{os::unix::process::CommandExt, process::Command};

use anyhow::{Context, Result};
use clap::Args;

use crate::{build, display, is_root, setup};

#[derive(Args)]
pub struct RunArgs {
    /// Extra arguments for `tollgate demo` (after `--`).
    #[arg(last = true)]
    pub demo_args: Vec<String>,
}

pub fn run(args: &RunArgs) -> Result<()> {
    setup::run().context("setup failed")?;
    let bin = build::build(false)?;
    if !is_root() {
        eprintln!("warning: not root: the demo creates network namespaces and loads eBPF programs");
    }
    let mut cmd = Command::new(&bin);
    cmd.arg("demo").args(&args.demo_args);
    let shown = display(&cmd);
    // exec only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not run `{shown}`"))
}
