//! `cargo xtask test`: setup, lint, build, host unit tests, then the privileged integration
//! tests (crate `tollgate-tests`) against the release binary, passed as `TOLLGATE_BIN`.
//!
//! Then, unless `--no-soak`, a one-minute soak (`cargo xtask soak --minutes 1`: flows intact,
//! no new connection failed, maps back to their size, memory flat), printing
//! `soak-smoke: passed` or its failures. Then, unless `--no-bench`, the bench smoke run (`cargo xtask bench --quick`, every workload
//! against every mode) checks that every mode produced numbers, and prints
//! `bench-smoke: N passed, M failed` (one per workload metric and mode).
//!
//! Lint and test failures don't stop the later steps (one CI run reports them all); the task
//! fails at the end if any step failed. A failed setup or build stops it at once. Output streams
//! through and, when all passes, ends with cargo test's `test result:` lines.

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{bench, build, cargo, display, is_root, run_cmd, setup, soak};

#[derive(Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent --no-* switches of the command line"
)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and `cargo clippy` (host crates and datapath-ebpf).
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the privileged integration tests (crate tollgate-tests).
    #[arg(long)]
    pub no_integration: bool,
    /// Skip the one-minute soak (`cargo xtask soak --minutes 1`, after the integration tests).
    #[arg(long)]
    pub no_soak: bool,
    /// Skip the bench smoke run (`cargo xtask bench --quick`, after the integration tests).
    #[arg(long)]
    pub no_bench: bool,
    /// Number of integration tests run at once (each builds its own namespaces).
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub test_threads: usize,
    /// Passed to `cargo test`, e.g. a test name filter; anything after a second `--` goes to
    /// the test harness: `cargo xtask test -- portmap -- --nocapture`.
    #[arg(last = true, value_name = "ARGS")]
    pub extra: Vec<String>,
}

pub fn run(args: &TestArgs) -> Result<()> {
    setup::run().context("setup failed")?;

    let (cargo_args, harness_args) = match args.extra.iter().position(|a| a == "--") {
        Some(i) => (&args.extra[..i], &args.extra[i + 1..]),
        None => (&args.extra[..], &[][..]),
    };
    let mut failed: Vec<String> = Vec::new();
    let mut step = |cmd: &mut std::process::Command| {
        if let Err(err) = run_cmd(cmd) {
            eprintln!("error: {err:#}");
            failed.push(display(cmd));
        }
    };

    if !args.no_lint {
        step(cargo().args(["fmt", "--all", "--check"]));
        // datapath-ebpf only builds for bpfel-unknown-none (agent/build.rs builds it).
        step(cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "datapath-ebpf",
            "--",
            "-D",
            "warnings",
        ]));
        step(&mut ebpf_clippy());
    }

    let bin = build::build(false)?;

    step(
        cargo()
            .args(["test", "--workspace", "--exclude", "datapath-ebpf"])
            .args(["--exclude", "tollgate-tests"])
            .args(cargo_args)
            .arg("--")
            .args(harness_args),
    );

    if args.no_integration {
        println!("skipping the integration tests (--no-integration)");
    } else if !is_root() {
        println!("skipping the integration tests: they need root (run `cargo xtask test` as root)");
    } else {
        step(
            cargo()
                .env("TOLLGATE_BIN", &bin)
                // Every test binary runs even when one fails: one CI run reports them all.
                .args(["test", "-p", "tollgate-tests", "--tests", "--no-fail-fast"])
                .args(cargo_args)
                .args(["--", "--test-threads", &args.test_threads.to_string()])
                .args(harness_args),
        );
    }

    // The one-minute soak: traffic through port maps while other containers churn.
    if args.no_soak {
        println!("skipping the soak (--no-soak)");
    } else if !is_root() {
        println!("skipping the soak: it needs root");
    } else {
        match soak::smoke(&bin) {
            Ok(failures) if failures.is_empty() => println!("soak-smoke: passed"),
            Ok(failures) => {
                for f in &failures {
                    eprintln!("error: soak: {f}");
                }
                failed.push("cargo xtask soak --minutes 1".into());
                println!("soak-smoke: failed ({} checks)", failures.len());
            }
            Err(err) => {
                eprintln!("error: soak: {err:#}");
                failed.push("cargo xtask soak --minutes 1".into());
                println!("soak-smoke: failed");
            }
        }
    }

    // The bench smoke run: every mode must produce numbers (their values are not checked).
    if args.no_bench {
        println!("skipping the bench smoke run (--no-bench)");
    } else if !is_root() {
        println!("skipping the bench smoke run: it needs root");
    } else {
        match bench::smoke(&bin) {
            Ok((passed, missing)) => {
                for m in &missing {
                    eprintln!("error: bench smoke: no numbers for {m}");
                }
                if !missing.is_empty() {
                    failed.push("cargo xtask bench --quick".into());
                }
                println!("bench-smoke: {passed} passed, {} failed", missing.len());
            }
            Err(err) => {
                eprintln!("error: bench smoke run: {err:#}");
                failed.push("cargo xtask bench --quick".into());
                println!("bench-smoke: 0 passed, 1 failed");
            }
        }
    }

    if !failed.is_empty() {
        bail!("{} step(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

/// `cargo clippy -D warnings` on datapath-ebpf, with the toolchain and target agent/build.rs
/// builds it with (its own target dir, so the two do not rebuild each other's `core`).
fn ebpf_clippy() -> std::process::Command {
    let root = crate::repo_root();
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(root.join("datapath-ebpf"))
        .args([
            "+nightly",
            "clippy",
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
        .arg(root.join("target").join("ebpf-clippy"))
        .args(["--", "-D", "warnings"]);
    // The outer cargo's (stable, host) settings must not leak into the nightly BPF build.
    for (key, _) in std::env::vars() {
        if key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}
