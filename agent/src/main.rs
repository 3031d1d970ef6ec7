//! `tollgate`: the node agent (daemon) and its CLI.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = tollgate::cli::Cli::parse();
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
