//! Shell completions (`tollgate completions SHELL`) and man pages (`tollgate __man DIR`, which
//! `cargo xtask package` runs), generated from the clap definitions of `cli.rs` so that they
//! always say what `--help` says. `tollgate-cni` has no command line (the runtime drives it
//! through its environment and stdin); its page is written here from the CNI contract.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_mangen::{
    roff::{bold, italic, roman, Roff},
    Man,
};

use crate::{cli::Cli, cni::spec};

/// Section 8: system administration commands and daemons (both binaries need root).
pub const SECTION: &str = "8";
const MANUAL: &str = "Tollgate Manual";

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut completed(), "tollgate", &mut std::io::stdout());
}

/// The command line that completions offer: `Cli` without its hidden subcommands, which the
/// generators of `clap_complete` would offer too (clap has no way to remove a subcommand, so
/// the root is made again with the visible ones).
fn completed() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new("tollgate")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
        .subcommand_required(full.is_subcommand_required_set());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd
}

/// Writes `tollgate.8`, one page per visible subcommand (`tollgate-container-add.8`, ...) and
/// `tollgate-cni.8` into `dir`; returns their paths.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Sets every subcommand's display name (`tollgate-container-add`) and bin name.
    cmd.build();
    let mut pages = Vec::new();
    tree(&cmd, None, dir, &mut pages)?;
    pages.push(write(dir, "tollgate-cni", cni_page)?);
    Ok(pages)
}

fn source() -> String {
    format!("Tollgate {}", env!("CARGO_PKG_VERSION"))
}

fn page_name(cmd: &clap::Command) -> &str {
    cmd.get_display_name().unwrap_or_else(|| cmd.get_name())
}

fn visible(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// The page of `cmd`, then those of its visible subcommands.
fn tree(
    cmd: &clap::Command,
    parent: Option<&str>,
    dir: &Path,
    pages: &mut Vec<PathBuf>,
) -> Result<()> {
    let name = page_name(cmd);
    pages.push(write(dir, name, |w| {
        Man::new(cmd.clone())
            .title(name.to_uppercase())
            .section(SECTION)
            .source(source())
            .manual(MANUAL)
            .render(w)?;
        let mut extra = Roff::new();
        if parent.is_none() {
            root_sections(&mut extra);
        }
        if cmd.get_name() == "daemon" {
            daemon_sections(&mut extra);
        }
        let mut see_also: Vec<&str> = parent.into_iter().collect();
        see_also.extend(visible(cmd).map(page_name));
        if parent.is_none() {
            see_also.push("tollgate-cni");
        }
        if cmd.get_name() == "daemon" {
            see_also.extend(["tollgate-reset", "systemctl"]);
        }
        self::see_also(&mut extra, &see_also);
        extra.to_writer(w)
    })?);
    for sub in visible(cmd) {
        tree(sub, Some(name), dir, pages)?;
    }
    Ok(())
}

fn write(
    dir: &Path,
    name: &str,
    render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.{SECTION}"));
    let mut out = Vec::new();
    render(&mut out).with_context(|| format!("rendering {name}({SECTION})"))?;
    // No hyphenation and no justification (`.nh`, `.ad l` after `.TH`): page names and flags
    // must not break at a line end, and long specs must not leave lines troff cannot adjust.
    let text = String::from_utf8(out).context("a man page that is not UTF-8")?;
    let mut page = String::with_capacity(text.len() + 4);
    for line in text.split_inclusive('\n') {
        page.push_str(line);
        if line.starts_with(".TH ") {
            page.push_str(".nh\n.ad l\n");
        }
    }
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(page.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `.TP` entries: a bold term, then its text.
fn entries(roff: &mut Roff, items: &[(&str, &str)]) {
    for (term, text) in items {
        roff.control("TP", [])
            .text([bold(*term)])
            .text([roman(*text)]);
    }
}

fn see_also(roff: &mut Roff, pages: &[&str]) {
    if pages.is_empty() {
        return;
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(*page));
        line.push(roman(if *page == "systemctl" { "(1)" } else { "(8)" }));
    }
    roff.text(line);
}

fn root_sections(roff: &mut Roff) {
    roff.control("SH", ["ENVIRONMENT"]);
    entries(
        roff,
        &[
            (
                "TOLLGATE_SOCKET",
                "The daemon's unix socket, as --socket (default /run/tollgate/tollgate.sock).",
            ),
            (
                "TOLLGATE_LOG",
                "Log filter of the daemon and the CLI (tracing EnvFilter syntax: info, debug, \
                 tollgate=debug); logs go to stderr.",
            ),
        ],
    );
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(
        "0 on success; 1 when a command failed (one line on stderr beginning error: says \
         why, and nothing was changed); 2 on a usage error.",
    )]);
}

fn daemon_sections(roff: &mut Roff) {
    roff.control("SH", ["SIGNALS"]);
    roff.text([roman(
        "SIGTERM and SIGINT stop the daemon, not the datapath: programs, links and maps stay \
         pinned under --bpffs and every connection keeps flowing, as after SIGKILL. Started \
         again with the same flags, the daemon takes them over. ",
    )])
    .text([
        bold("tollgate reset"),
        roman(" (same --netns, --state-dir, --bpffs, --socket) is the only teardown."),
    ]);
    roff.control("SH", ["FILES"]);
    entries(
        roff,
        &[
            (
                "/etc/default/tollgate",
                "TOLLGATE_OPTS, the flags tollgate.service starts the daemon with; --uplink is \
                 required.",
            ),
            (
                "/usr/lib/systemd/system/tollgate.service",
                "The systemd unit of the Debian package.",
            ),
            (
                "/run/tollgate/tollgate.sock",
                "The API socket (mode 0600); the CNI plugin queues DELs in \
                 /run/tollgate/tollgate.sock.cni-del/ while the daemon is down.",
            ),
            ("/var/lib/tollgate", "The state: snapshot and journal."),
            (
                "/sys/fs/bpf/tollgate",
                "The pinned programs, links and maps.",
            ),
        ],
    );
}

/// The page of `tollgate-cni`.
fn cni_page(w: &mut Vec<u8>) -> std::io::Result<()> {
    let mut roff = Roff::new();
    let src = source();
    roff.control("TH", ["TOLLGATE-CNI", SECTION, "", src.as_str(), MANUAL]);
    roff.control("SH", ["NAME"]);
    roff.text([roman(
        "tollgate-cni - the CNI plugin of Tollgate, installed as tollgate in a runtime's \
         plugin directory",
    )]);
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([
        bold("CNI_COMMAND"),
        roman("=ADD|DEL|CHECK|STATUS|GC|VERSION "),
        bold("CNI_CONTAINERID"),
        roman("="),
        italic("ID"),
        roman(" "),
        bold("CNI_NETNS"),
        roman("="),
        italic("PATH"),
        roman(" "),
        bold("CNI_IFNAME"),
        roman("="),
        italic("NAME"),
        roman(" /usr/lib/cni/tollgate < "),
        italic("CONFIG"),
    ]);
    roff.control("SH", ["DESCRIPTION"]);
    roff.text([roman(format!(
        "A CNI plugin (spec versions {}) for podman (CNI backend) and containerd: a small \
         client of the API of tollgate daemon, which does the work in one transaction per ADD. \
         The runtime runs it with the environment above and the network config on stdin; the \
         result, or the spec's error object, is written on stdout in the cniVersion of the \
         config.",
        spec::SUPPORTED.join(", ")
    ))]);
    roff.control("PP", []);
    roff.text([roman(
        "ADD creates the container's veth and /30 with the interface named CNI_IFNAME, \
         publishes runtimeConfig.portMappings and applies runtimeConfig.bandwidth as rate \
         limits; any failure rolls the whole ADD back. DEL succeeds when the container is gone \
         already, and when the daemon is down it is queued for the daemon to carry out when it \
         starts. CHECK compares the daemon's view with prevResult; STATUS answers 0 when the \
         daemon serves; GC removes the attachments missing from cni.dev/valid-attachments.",
    )]);
    roff.control("SH", ["CONFIGURATION"]);
    entries(
        &mut roff,
        &[
            ("type", "tollgate (the plugin's file name)."),
            (
                "socket",
                "The daemon's API socket (default /run/tollgate/tollgate.sock).",
            ),
            (
                "network",
                "The Tollgate network to attach to (default: default, the daemon's --pool).",
            ),
            (
                "capabilities",
                "{\"portMappings\": true, \"bandwidth\": true} lets the runtime pass published \
                 ports (podman run -p) and bandwidth limits.",
            ),
        ],
    );
    roff.control("SH", ["ENVIRONMENT"]);
    entries(
        &mut roff,
        &[
            ("CNI_ARGS", "IP=A.B.C.D asks for that container address."),
            (
                "TOLLGATE_CNI_LOG",
                "Log filter (default warn; debug for more); logs go to stderr.",
            ),
        ],
    );
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(
        "0 on success. Otherwise 1, with the error object on stdout; its code is the spec's \
         (1 version, 3 unknown container, 4 bad environment, 6 undecodable config, 7 invalid \
         config, 11 daemon unreachable, 50 not ready) or the plugin's own: 100 the daemon \
         refused (a taken host port or address; its message says which), 101 the daemon \
         failed.",
    )]);
    roff.control("SH", ["FILES"]);
    entries(
        &mut roff,
        &[
            (
                "/usr/lib/cni/tollgate, /opt/cni/bin/tollgate",
                "The plugin, where podman and containerd look for it.",
            ),
            (
                "/etc/cni/net.d/tollgate.conflist.example",
                "An example network config; copy it to tgnet.conflist (any name ending in \
                 .conflist) to enable it.",
            ),
        ],
    );
    see_also(&mut roff, &["tollgate", "tollgate-daemon"]);
    roff.to_writer(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_offer_the_visible_command_line() {
        let full = Cli::command();
        let done = completed();
        let names = |c: &clap::Command, hidden: bool| -> Vec<String> {
            c.get_subcommands()
                .filter(|s| hidden || !s.is_hide_set())
                .map(|s| s.get_name().to_string())
                .collect()
        };
        assert_eq!(names(&done, true), names(&full, false));
        assert!(!names(&done, true)
            .iter()
            .any(|n| n == "__man" || n == "demo-serve"));
        let args = |c: &clap::Command| -> Vec<String> {
            c.get_arguments().map(|a| a.get_id().to_string()).collect()
        };
        assert_eq!(args(&done), args(&full));
        assert_eq!(done.get_name(), full.get_name());
        assert_eq!(done.get_version(), full.get_version());
        done.debug_assert();
    }

    #[test]
    fn man_pages_cover_every_visible_subcommand() {
        fn count(c: &clap::Command) -> usize {
            1 + c
                .get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .map(count)
                .sum::<usize>()
        }
        let dir = std::env::temp_dir().join(format!("tollgate-man-{}", std::process::id()));
        let pages = man_pages(&dir).unwrap();
        // Each visible (sub)command, and tollgate-cni.
        assert_eq!(pages.len(), count(&Cli::command()) + 1);
        let daemon = std::fs::read_to_string(dir.join("tollgate-daemon.8")).unwrap();
        assert!(daemon.contains("\n.TH TOLLGATE-DAEMON 8 "), "{daemon}");
        assert!(daemon.contains("\n.nh\n.ad l\n.SH NAME\n"), "{daemon}");
        assert!(daemon.contains("uplink"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
