//! The Debian package: `cargo xtask package --no-build` packages the binaries under test
//! (`TOLLGATE_BIN`'s directory) once per run; the tests list it, verify its unit, render its
//! man pages, and install, remove and purge it in scratch roots: `dpkg --root` with the
//! maintainer scripts run chrootless (`DPKG_ROOT` set: they touch nothing outside the root),
//! or a tree unpacked by `dpkg-deb -x`. Nothing is installed on this machine.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::Duration,
};

use serde_json::Value;
use tollgate_tests::*;

/// Where the CNI plugin and the man pages are in the package.
const CNI_PLUGIN: &str = "usr/lib/cni/tollgate";
const CNI_PLUGIN_CONTAINERD: &str = "opt/cni/bin/tollgate";
const UNIT: &str = "usr/lib/systemd/system/tollgate.service";
const DEFAULTS: &str = "etc/default/tollgate";
const CONFLIST: &str = "etc/cni/net.d/tollgate.conflist.example";
const MAN8: &str = "usr/share/man/man8";
const BASH: &str = "usr/share/bash-completion/completions/tollgate";
const ZSH_DIR: &str = "usr/share/zsh/vendor-completions";
const FISH: &str = "usr/share/fish/vendor_completions.d/tollgate.fish";

/// Runs a command; fails the test with its output unless it succeeds; returns stdout.
fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .expect("running a command")
}

/// The package, built once for all the tests of this file.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package");
        let _ = fs::remove_dir_all(&out);
        let bin = tollgate_bin();
        let bin_dir = bin.parent().expect("TOLLGATE_BIN has a directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let stdout = run(Command::new(cargo)
            .current_dir(workspace)
            .args(["xtask", "package", "--no-build", "--bin-dir"])
            .arg(bin_dir)
            .arg("--out")
            .arg(&out));
        let deb = PathBuf::from(stdout.lines().last().expect("the package's path").trim());
        assert!(deb.is_file(), "{} is not a file", deb.display());
        deb
    })
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tollgate-pkg-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The package unpacked (`dpkg-deb -x`), no maintainer script run.
fn unpacked(tag: &str) -> Scratch {
    let dir = Scratch::new(tag);
    run(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&dir.0));
    dir
}

fn field(name: &str) -> String {
    run(Command::new("dpkg-deb").arg("-f").arg(deb()).arg(name))
        .trim()
        .to_string()
}

/// Package names of a `Depends`-style field (`libc6 (>= 2.34), libgcc-s1 (>= 4.2)`).
fn names(relations: &str) -> Vec<String> {
    relations
        .split([',', '|'])
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// An empty root with a dpkg database in which the package's `Depends` are installed (their
/// status as on this machine), so that dpkg checks them.
fn dpkg_root(tag: &str) -> Scratch {
    let root = Scratch::new(tag);
    let admin = root.path("var/lib/dpkg");
    fs::create_dir_all(admin.join("info")).unwrap();
    fs::create_dir_all(admin.join("updates")).unwrap();
    let mut status = String::new();
    for dep in names(&field("Depends")) {
        status += &run(Command::new("dpkg-query").args(["-s", &dep]));
        status += "\n";
        // One per architecture installed (libc6:amd64, libc6:i386).
        let pkgs = run(Command::new("dpkg-query").args(["-W", "-f", "${binary:Package}\n", &dep]));
        for pkg in pkgs.lines() {
            fs::write(admin.join("info").join(format!("{pkg}.list")), "").unwrap();
        }
    }
    fs::write(admin.join("status"), status).unwrap();
    root
}

/// `dpkg --root ROOT --force-script-chrootless ARGS`: the maintainer scripts run here with
/// `DPKG_ROOT=ROOT` and act on that root only.
fn dpkg(root: &Scratch, args: &[&str]) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.0.display()))
        .arg("--force-script-chrootless")
        .args(args);
    cmd
}

/// Files and symlinks under `dir` (relative), directories left out.
fn tree(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out
}

/// The man pages the package must carry (one per visible subcommand at least these).
const PAGES: &[&str] = &[
    "tollgate",
    "tollgate-daemon",
    "tollgate-reset",
    "tollgate-status",
    "tollgate-container",
    "tollgate-container-add",
    "tollgate-port-add",
    "tollgate-policy-allow",
    "tollgate-limit-set",
    "tollgate-stats",
    "tollgate-completions",
    "tollgate-cni",
];

#[test]
fn package_lists_its_files_fields_and_conffiles() {
    if !can_run() {
        return;
    }
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb()));
    // `-rwxr-xr-x root/root   9276680 2026-01-01 00:00 ./usr/bin/tollgate [-> target]`
    let mut entries = std::collections::BTreeMap::new();
    for line in listing.lines() {
        let mut cols = line.split_whitespace();
        let (mode, owner) = (cols.next().unwrap(), cols.next().unwrap());
        let path = line.split(" ./").nth(1).expect("a path");
        assert_eq!(owner, "root/root", "{line}");
        if !mode.starts_with('d') {
            entries.insert(path.to_string(), mode.to_string());
        }
    }
    for bin in ["usr/bin/tollgate", CNI_PLUGIN] {
        assert_eq!(
            entries.get(bin).map(String::as_str),
            Some("-rwxr-xr-x"),
            "{bin}"
        );
    }
    let link = format!("{CNI_PLUGIN_CONTAINERD} -> ../../../{CNI_PLUGIN}");
    assert!(entries.contains_key(&link), "no {link}:\n{listing}");
    let files: BTreeSet<String> = [UNIT, DEFAULTS, CONFLIST, BASH, FISH]
        .into_iter()
        .map(str::to_string)
        .chain([
            format!("{ZSH_DIR}/_tollgate"),
            "usr/share/doc/tollgate/copyright".into(),
        ])
        .chain(PAGES.iter().map(|p| format!("{MAN8}/{p}.8.gz")))
        .collect();
    for f in &files {
        assert_eq!(
            entries.get(f).map(String::as_str),
            Some("-rw-r--r--"),
            "{f}:\n{listing}"
        );
    }
    // Nothing else but the pages of more subcommands.
    let extra: Vec<&String> = entries
        .keys()
        .filter(|p| {
            let page = p.starts_with(&format!("{MAN8}/tollgate-")) && p.ends_with(".8.gz");
            let known = files.contains(*p)
                || *p == &link
                || ["usr/bin/tollgate", CNI_PLUGIN].contains(&p.as_str());
            !(page || known)
        })
        .collect();
    assert!(extra.is_empty(), "unexpected files: {extra:?}");
    // Hidden subcommands get no page.
    for hidden in ["__man", "demo-serve", "help"] {
        assert!(
            !entries.contains_key(&format!("{MAN8}/tollgate-{hidden}.8.gz")),
            "a page for {hidden}"
        );
    }

    assert_eq!(field("Package"), "tollgate");
    let version = run(Command::new(tollgate_bin()).arg("--version"));
    let upstream = version.split_whitespace().nth(1).unwrap();
    assert_eq!(field("Version"), format!("{upstream}-1"));
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(field("Architecture"), arch.trim());
    // Only the shared libraries the binaries link (from dpkg-shlibdeps); the binaries run no
    // other program. iproute2 (`ip netns`, to inspect what the daemon made) is recommended.
    let depends = names(&field("Depends"));
    assert!(depends.contains(&"libc6".to_string()), "{depends:?}");
    for d in &depends {
        assert!(
            ["libc6", "libgcc-s1"].contains(&d.as_str()),
            "Depends: {depends:?}"
        );
    }
    assert_eq!(field("Recommends"), "iproute2");

    let info = Scratch::new("info");
    run(Command::new("dpkg-deb").arg("-e").arg(deb()).arg(&info.0));
    let conffiles = fs::read_to_string(info.path("conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        [format!("/{DEFAULTS}"), format!("/{CONFLIST}")]
    );
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(info.path(script)));
    }
}

#[test]
fn package_example_conflist_is_inactive_and_valid() {
    if !can_run() {
        return;
    }
    let tree = unpacked("conflist");
    // Runtimes read *.conf, *.conflist and *.json from /etc/cni/net.d; the example is none.
    let in_net_d: Vec<String> = tree
        .path("etc/cni/net.d")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in &in_net_d {
        let ext = Path::new(name).extension().unwrap().to_string_lossy();
        assert!(
            !["conf", "conflist", "json"].contains(&ext.as_ref()),
            "{name} is active"
        );
    }
    let conf: Value = serde_json::from_str(&fs::read_to_string(tree.path(CONFLIST)).unwrap())
        .expect("the example is JSON");
    assert_eq!(conf["cniVersion"], "1.0.0");
    let plugin = &conf["plugins"][0];
    assert_eq!(plugin["type"], "tollgate", "the plugin's file name");
    assert_eq!(plugin["socket"], "/run/tollgate/tollgate.sock");
    assert_eq!(plugin["capabilities"]["portMappings"], true);
}

#[test]
fn package_unit_verifies_and_stops_only_the_daemon() {
    if !can_run() {
        return;
    }
    // systemd-analyze verify --root checks the unit against that root: this machine's units
    // (network-online.target, sysinit.target, ...) and the package's files on top.
    let root = Scratch::new("unit");
    let units = root.path("usr/lib/systemd/system");
    fs::create_dir_all(&units).unwrap();
    run(Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system/."])
        .arg(&units));
    run(Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&root.0));
    let out = output(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.0.display()))
            .arg(format!("/{UNIT}"))
            // Documentation=man:... is checked with man, in the package's pages.
            .env("MANPATH", root.path("usr/share/man")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // It only warns about unknown keys and bad values: there must be no warning at all.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns:\n{stderr}"
    );

    let unit = fs::read_to_string(root.path(UNIT)).unwrap();
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(values("After"), ["network-online.target"]);
    assert_eq!(values("Wants"), ["network-online.target"]);
    assert_eq!(values("Restart"), ["on-failure"]);
    assert_eq!(values("EnvironmentFile"), [format!("-/{DEFAULTS}")]);
    assert_eq!(
        values("ExecStart"),
        ["/usr/bin/tollgate daemon $TOLLGATE_OPTS"],
        "the contract's socket, state and bpffs paths are the daemon's defaults"
    );
    // Stopping sends SIGTERM to the daemon, which keeps the datapath pinned (the portmap and
    // cni tests show flows going on without a daemon); nothing runs reset.
    assert_eq!(values("KillMode"), ["mixed"]);
    assert_eq!(values("KillSignal"), ["SIGTERM"]);
    for key in ["ExecStop", "ExecStopPost", "ExecReload"] {
        assert!(values(key).is_empty(), "{key}= in the unit");
    }
    assert!(!unit
        .lines()
        .any(|l| !l.starts_with('#') && l.contains("reset")));

    // Without --uplink (the shipped /etc/default/tollgate) the daemon exits with a usage
    // error, status 2, which RestartPreventExitStatus keeps from a restart loop.
    let defaults = fs::read_to_string(root.path(DEFAULTS)).unwrap();
    assert!(
        defaults.lines().any(|l| l == "TOLLGATE_OPTS=\"\""),
        "{defaults}"
    );
    assert_eq!(values("RestartPreventExitStatus"), ["2"]);
    let out = output(Command::new(root.path("usr/bin/tollgate")).arg("daemon"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--uplink"));
}

#[test]
fn package_man_pages_render() {
    if !can_run() {
        return;
    }
    let tree = unpacked("man");
    let pages = tree.path(MAN8);
    let mut rendered = 0;
    for page in fs::read_dir(&pages).unwrap() {
        let page = page.unwrap().path();
        let out = output(
            Command::new("man")
                .args(["--warnings", "-l"])
                .arg(&page)
                .env("MANWIDTH", "80")
                .env("LC_ALL", "C.UTF-8"),
        );
        let (text, warnings) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "man -l {}: {warnings}",
            page.display()
        );
        assert!(
            warnings.is_empty(),
            "man -l {} warns: {warnings}",
            page.display()
        );
        let name = page
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".8.gz", "");
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION"] {
            assert!(
                text.lines().any(|l| l == section),
                "{name}: no {section}:\n{text}"
            );
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        assert!(
            words.windows(2).any(|w| w == [name.as_str(), "-"]),
            "{name}: NAME line:\n{text}"
        );
        rendered += 1;
    }
    assert!(rendered >= PAGES.len(), "{rendered} pages");
    let page = |name: &str| {
        run(Command::new("man")
            .arg("-l")
            .arg(pages.join(format!("{name}.8.gz")))
            .env("MANWIDTH", "200"))
    };
    let daemon = page("tollgate-daemon");
    for text in [
        "--uplink <UPLINK>",
        "/etc/default/tollgate",
        "tollgate reset",
    ] {
        assert!(
            daemon.contains(text),
            "tollgate-daemon(8) lacks {text}:\n{daemon}"
        );
    }
    let root = page("tollgate");
    assert!(root.contains("tollgate-container(8)"), "{root}");
    assert!(root.contains("tollgate-cni(8)"), "{root}");
    assert!(page("tollgate-cni").contains("CNI_COMMAND"));
}

/// What zsh's completion makes of `line<TAB>` with `_tollgate` from `dir` (an interactive
/// zsh in a pseudo-terminal; the completed line is printed back).
const ZSH_COMPLETE: &str = r#"
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1=''; PS2=''; fpath=($1 \$fpath); autoload -Uz compinit && compinit -u -D"
zpty -w -n z "$2"$'\t'$'\C-a'"print -r -- RESULT:"$'\n'
out=
for i in {1..100}; do
  zpty -r -t z chunk && out+=$chunk
  [[ $out == *$'\n'RESULT:*$'\n'* ]] && break
  sleep 0.05
done
zpty -d z
print -r -- ${${(M)${(f)out}:#RESULT:*}[-1]#RESULT:}
"#;

/// Bash: the words that `_tollgate` offers for `words` (the last one being completed).
const BASH_COMPLETE: &str = r#"
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_tollgate "$1" "${@: -1}" "${@: -2:1}"
printf '%s\n' "${COMPREPLY[@]}"
"#;

#[test]
fn package_installs_runs_and_purges_in_a_scratch_root() {
    if !can_run() {
        return;
    }
    let root = dpkg_root("install");
    run(dpkg(&root, &["--install"]).arg(deb()));
    run(&mut dpkg(&root, &["--verify", "tollgate"]));

    let installed = root.path("usr/bin/tollgate");
    let version = run(Command::new(&installed).arg("--version"));
    assert_eq!(version, run(Command::new(tollgate_bin()).arg("--version")));
    assert!(version.starts_with("tollgate "), "{version}");
    for plugin in [CNI_PLUGIN, CNI_PLUGIN_CONTAINERD] {
        let out = run(Command::new(root.path(plugin)).env("CNI_COMMAND", "VERSION"));
        let v: Value = serde_json::from_str(&out).expect("a VERSION result");
        let supported = v["supportedVersions"].as_array().unwrap();
        for want in ["0.4.0", "1.0.0", "1.1.0"] {
            assert!(supported.iter().any(|s| s == want), "{plugin}: {out}");
        }
    }

    // Completions, each run by its shell.
    let bash = |words: &[&str]| {
        run(Command::new("bash")
            .args(["--norc", "--noprofile", "-c", BASH_COMPLETE, "bash"])
            .arg(root.path(BASH))
            .args(words))
    };
    let subcommands = bash(&["tollgate", "con"]);
    assert_eq!(
        subcommands.lines().collect::<BTreeSet<_>>(),
        BTreeSet::from(["container", "conntrack"])
    );
    assert_eq!(bash(&["tollgate", "daemon", "--upl"]).trim(), "--uplink");
    let zsh = |line: &str| {
        run(Command::new("zsh")
            .args(["-f", "-c", ZSH_COMPLETE, "zsh"])
            .arg(root.path(ZSH_DIR))
            .arg(line))
        .trim_end()
        .to_string()
    };
    assert_eq!(zsh("tollgate contai"), "tollgate container");
    assert_eq!(zsh("tollgate daemon --upl"), "tollgate daemon --uplink");
    let fish = |line: &str| {
        run(Command::new("fish")
            .args(["--no-config", "-c"])
            .arg(format!(
                "source {}; complete -C '{line}'",
                root.path(FISH).display()
            )))
    };
    let offered: BTreeSet<String> = fish("tollgate con")
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect();
    assert_eq!(
        offered,
        BTreeSet::from(["container".into(), "conntrack".into()])
    );
    assert!(fish("tollgate daemon --upl").starts_with("--uplink\t"));
    // Hidden subcommands are not offered.
    let all = fish("tollgate ");
    assert!(all.lines().any(|l| l.starts_with("daemon\t")), "{all}");
    assert!(
        !all.contains("__man") && !all.contains("demo-serve"),
        "{all}"
    );
    // The installed binary prints the same scripts.
    assert_eq!(
        run(Command::new(&installed).args(["completions", "fish"])),
        fs::read_to_string(root.path(FISH)).unwrap()
    );

    // Remove: the program goes, the conffiles stay; a copy of the binary and of the flags
    // waits in /run for a purge.
    run(&mut dpkg(&root, &["--remove", "tollgate"]));
    assert!(!installed.exists() && !root.path(CNI_PLUGIN).exists());
    assert!(fs::symlink_metadata(root.path(CNI_PLUGIN_CONTAINERD)).is_err());
    assert!(root.path(DEFAULTS).is_file() && root.path(CONFLIST).is_file());
    assert!(root.path("run/tollgate-purge/tollgate").is_file());
    // Purge: nothing is left but dpkg's database (and /run, which prerm made).
    run(&mut dpkg(&root, &["--purge", "tollgate"]));
    let left: Vec<String> = tree(&root.0)
        .into_iter()
        .filter(|p| !p.starts_with("var/lib/dpkg/"))
        .collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    let status = output(&mut dpkg(&root, &["--status", "tollgate"]));
    assert!(!status.status.success(), "still known to dpkg");
}

fn request(sb: &Sandbox, msg: &str) -> anyhow::Result<String> {
    tcp_request(&sb.client, sb.uplink_ip, 8080, msg)
}

#[test]
fn package_upgrade_and_removal_keep_the_datapath_and_purge_resets_it() {
    let mut sb = sandbox!("pkg-purge");
    let (web, ns, _) = sb.container("web");
    let _srv = tcp_echo(&ns, 80, "web").unwrap();
    sb.publish(&web, "8080:80");
    assert!(request(&sb, "before").unwrap().ends_with("before"));

    let root = dpkg_root("purge");
    run(dpkg(&root, &["--install"]).arg(deb()));
    // The node's flags, as an operator writes them; purge resets with the selection flags.
    let opts = format!(
        "--uplink up0 --netns {} --state-dir {} --bpffs {} --socket {}",
        sb.node,
        sb.dir.join("state").display(),
        sb.bpffs.display(),
        sb.socket.display()
    );
    fs::write(root.path(DEFAULTS), format!("TOLLGATE_OPTS=\"{opts}\"\n")).unwrap();

    // `systemctl stop tollgate` (SIGTERM), an upgrade (the same version again: prerm upgrade,
    // postinst configure), then removing the package: flows keep going throughout.
    sb.stop_daemon();
    run(dpkg(&root, &["--install"]).arg(deb()));
    assert!(request(&sb, "upgraded").unwrap().ends_with("upgraded"));
    run(&mut dpkg(&root, &["--remove", "tollgate"]));
    assert!(request(&sb, "removed").unwrap().ends_with("removed"));
    assert!(sb.bpffs.exists() && sb.dir.join("state").exists());

    // Purge runs `tollgate reset` with those flags (DPKG_ROOT is set: only when asked to).
    let purge = run(dpkg(&root, &["--purge", "tollgate"]).env("TOLLGATE_PURGE_RESET", "1"));
    assert!(purge.contains("tollgate reset --netns"), "{purge}");
    assert!(!sb.bpffs.exists(), "pins left after purge");
    assert!(!sb.dir.join("state").exists(), "state left after purge");
    assert!(
        !Path::new("/run/netns").join(&ns).exists(),
        "container netns left"
    );
    assert!(
        tcp_request_timeout(
            &sb.client,
            sb.uplink_ip,
            8080,
            "purged",
            Duration::from_secs(1)
        )
        .is_err(),
        "the port map still answers after purge"
    );
    assert!(!root.path("run/tollgate-purge").exists());
}
