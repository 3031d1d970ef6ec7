//! `cargo xtask build-and-run`: build the release binary, then run `tollgate demo` (one node)
//! and `tollgate demo --cluster` (two nodes and an etcd member) one after the other; it fails
//! if either fails. A Ctrl-C reaches the running demo (which cleans up) and skips the rest.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{build, display, is_root, setup};

#[derive(Args)]
pub struct RunArgs {
    /// Extra arguments for both demos (after `--`), e.g. `--requests 5`; `-- --cluster` runs
    /// the cluster demo alone.
    #[arg(last = true)]
    pub demo_args: Vec<String>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The running demo's pid (0: none).
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; the pid is our own child's. A Ctrl-C from the
        // terminal reaches it anyway (same process group); the demo's handler is idempotent.
        unsafe { libc::kill(pid, sig) };
    }
}

pub fn run(args: &RunArgs) -> Result<()> {
    setup::run().context("setup failed")?;
    let bin = build::build(false)?;
    if !is_root() {
        eprintln!("warning: not root: the demo creates network namespaces and loads eBPF programs");
    }
    // A handler (not SIG_IGN) so that the demos, which install their own, start with the
    // default dispositions.
    // SAFETY: the handler only touches atomics and calls kill.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let runs: Vec<Vec<String>> = if args.demo_args.iter().any(|a| a == "--cluster") {
        vec![args.demo_args.clone()]
    } else {
        vec![
            args.demo_args.clone(),
            [vec!["--cluster".to_string()], args.demo_args.clone()].concat(),
        ]
    };
    let mut failed = Vec::new();
    for (i, extra) in runs.iter().enumerate() {
        if INTERRUPTED.load(Ordering::SeqCst) {
            break;
        }
        if i > 0 {
            println!();
        }
        let mut cmd = Command::new(&bin);
        cmd.arg("demo").args(extra);
        let shown = display(&cmd);
        println!("==> {shown}");
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not run `{shown}`"))?;
        CHILD.store(i32::try_from(child.id()).unwrap_or(0), Ordering::SeqCst);
        let status = child.wait();
        CHILD.store(0, Ordering::SeqCst);
        let status = status.with_context(|| format!("waiting for `{shown}`"))?;
        if !status.success() {
            failed.push(format!("`{shown}` ({status})"));
        }
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    println!(
        "\n==> {} passed",
        if runs.len() == 1 {
            "the demo"
        } else {
            "both demos"
        }
    );
    Ok(())
}
