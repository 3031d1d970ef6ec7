//! `tollgate`: the node agent (daemon) and its CLI.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = tollgate::cli::Cli::parse();
    // The CLI's output is often piped (`tollgate stats --json | head`): a closed pipe ends it
    // quietly, as it ends other Unix tools, instead of a panic in `println!`. The daemon and
    // the demo keep Rust's default (SIGPIPE ignored): they write to sockets whose peers may
    // go away, and the demo must clean up on every exit.
    if !matches!(
        cli.cmd,
        tollgate::cli::Cmd::Daemon(_)
            | tollgate::cli::Cmd::Demo(_)
            | tollgate::cli::Cmd::DemoServe { .. }
    ) {
        // SAFETY: restores the default disposition before any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TOLLGATE_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,netlink_packet_route=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = tollgate::commands::run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
