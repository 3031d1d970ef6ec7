//! `tollgate-cni`: Tollgate's CNI plugin (see `tollgate::cni`). Installed in the runtime's
//! plugin directory under the name `tollgate` (the `type` of its network config).
//! stdout carries only the result or the error JSON; logs go to stderr
//! (`TOLLGATE_CNI_LOG=debug` for more).

use std::io::{Read, Write};

use tollgate::cni::{self, Env};

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_CNI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .without_time()
        .init();
    let env = Env::from_process();
    let mut stdin = Vec::new();
    // VERSION may come without stdin; a read error is the same as an empty config.
    if env.command != "VERSION" || !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    let (version, res) = cni::run(&env, &stdin);
    let mut out = std::io::stdout().lock();
    let code = match res {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            1
        }
    };
    let _ = out.flush();
    std::process::exit(code);
}
