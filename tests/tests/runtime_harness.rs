//! The runtime harness itself (`tollgate_tests::runtime`): real podman 4.3 (CNI backend) and
//! containerd 1.6 (`ctr run --cni`) in a sandbox's node netns, on the standard
//! bridge + portmap + host-local network, with every plugin call recorded; and what exactly
//! those runtimes send to CNI plugins (the contract a plugin must meet). Set
//! `RUNTIME_HARNESS_DUMP=1` to print the recorded calls in full (`--nocapture`).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use tollgate_tests::{runtime::*, *};

/// `GET /` from `ns` to `ip:port` with std sockets, every step bounded.
fn http_get(ns: &str, ip: Ipv4Addr, port: u16) -> anyhow::Result<String> {
    in_ns(ns, move || {
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        c.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// A runtime namespace for `sb` whose network `tgnet` (10.89.0.0/16, bridge `cni-tgt0`) runs
/// the standard bridge and portmap plugins behind call recorders named `tgdump` and
/// `tgdump-pm`; `caps` are extra capabilities the bridge entry declares. Returns the namespace
/// and the call log.
fn recorded_network(sb: &Sandbox, caps: &Value) -> (Arc<RuntimeNs>, PathBuf) {
    let rt = runtime_for(sb, &[]).unwrap();
    let log = sb.dir.join("cni/calls.log");
    let bin = rt.cni_bin_dir();
    capture_plugin(bin, "tgdump", Path::new("/usr/lib/cni/bridge"), &log).unwrap();
    capture_plugin(bin, "tgdump-pm", Path::new("/usr/lib/cni/portmap"), &log).unwrap();
    let mut net = bridge_conflist("tgnet", "cni-tgt0", "10.89.0.0/16");
    net["plugins"][0]["type"] = "tgdump".into();
    if caps.is_object() {
        net["plugins"][0]["capabilities"] = caps.clone();
    }
    net["plugins"][1]["type"] = "tgdump-pm".into();
    write_conflist(rt.cni_conf_dir(), "tgnet", &net).unwrap();
    (rt, log)
}

fn summary(c: &CniCall) -> String {
    let cfg = c.config();
    format!(
        "{} {} id={} netns={:?} (exists: {}) ifname={} args={:?} rc={} runtimeConfig={} \
         prevResult={}",
        cfg["type"].as_str().unwrap_or("?"),
        c.command(),
        c.var("CNI_CONTAINERID"),
        c.var("CNI_NETNS"),
        c.netns_existed(),
        c.var("CNI_IFNAME"),
        c.var("CNI_ARGS"),
        c.rc,
        cfg.get("runtimeConfig").unwrap_or(&Value::Null),
        cfg.get("prevResult").is_some(),
    )
}

fn dump(log: &Path) {
    for c in read_capture(log) {
        println!("cni: {}", summary(&c));
    }
    if std::env::var_os("RUNTIME_HARNESS_DUMP").is_some() {
        println!("{}", std::fs::read_to_string(log).unwrap_or_default());
    }
}

/// The calls recorded after the first `from` ones, VERSION probes left out.
fn calls_since(log: &Path, from: usize) -> Vec<CniCall> {
    read_capture(log)
        .into_iter()
        .skip(from)
        .filter(|c| c.command() != "VERSION")
        .collect()
}

/// (command, plugin type) of each call.
fn shape(calls: &[CniCall]) -> Vec<(String, String)> {
    calls
        .iter()
        .map(|c| {
            let ty = c.config()["type"].as_str().unwrap_or("?").to_string();
            (c.command().to_string(), ty)
        })
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
        .collect()
}

/// What the runtime namespace shows: the node and client netns under /run/netns, the node
/// netns' sysfs, the host's bpffs (the daemon's pins), cgroup v1 without the hybrid cgroup2.
fn check_inside(sb: &Sandbox, rt: &RuntimeNs) {
    rt.expose_netns(&sb.client).unwrap();
    let ls = rt.run("ls", &["/run/netns"]);
    assert!(
        ls.stdout.contains(&sb.node) && ls.stdout.contains(&sb.client),
        "{ls:?}"
    );
    let bpffs = sb.bpffs.display().to_string();
    let r = rt.sh(&format!(
        "ls /sys/class/net/up0 >/dev/null && ls -d {bpffs} && ls /sys/fs/cgroup"
    ));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("memory") && !r.stdout.contains("unified"),
        "{r:?}"
    );
}

/// Drops `rt` and checks that nothing is left: holder, work dir, mounts, runc cgroups of `cid`.
fn assert_clean_drop(sb: &Sandbox, rt: RuntimeNs, cid: &str) {
    let (holder, rt_dir) = (rt.holder_pid(), rt.dir().to_path_buf());
    drop(rt);
    assert!(!Path::new(&format!("/proc/{holder}")).exists());
    assert!(!rt_dir.exists(), "{} left behind", rt_dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let dir = sb.dir.display().to_string();
    assert!(!mounts.contains(&dir), "mounts left: {mounts}");
    let cg = sh("find", &["/sys/fs/cgroup", "-maxdepth", "4", "-name", cid]).unwrap();
    assert_eq!(cg.trim(), "", "runc cgroups left");
}

#[test]
fn podman_and_ctr_on_a_bridge_network() {
    let sb = sandbox!("rth");
    let t0 = Instant::now();
    let (rt, log) = recorded_network(&sb, &Value::Null);
    check_inside(&sb, &rt);
    let podman = Podman::new(&rt).unwrap();
    let image = podman.import_busybox().unwrap();
    let t_setup = t0.elapsed();

    let t = Instant::now();
    let id = podman
        .ok(&[
            "run",
            "-d",
            "--init",
            "--name",
            "web",
            "-p",
            "8080:80",
            "--network",
            "tgnet",
            &image,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
        .unwrap()
        .trim()
        .to_string();
    let t_run = t.elapsed();
    let t = Instant::now();
    let page = eventually(Duration::from_secs(10), || {
        http_get(&sb.client, sb.uplink_ip, 8080)
    })
    .unwrap_or_else(|e| panic!("no answer on {}:8080: {e:#}", sb.uplink_ip));
    let t_http = t.elapsed();
    assert!(
        page.starts_with("HTTP/1.") && page.contains(" 200 "),
        "{page}"
    );
    assert!(page.ends_with(INDEX_HTML), "{page}");

    let t = Instant::now();
    podman.ok(&["rm", "-f", "web"]).unwrap();
    let t_rm = t.elapsed();
    assert_eq!(podman.ok(&["ps", "-aq"]).unwrap().trim(), "");
    assert!(
        http_get(&sb.client, sb.uplink_ip, 8080).is_err(),
        "port 8080 still answers after podman rm -f"
    );

    let ctrd = Containerd::start(&rt).unwrap();
    let cid = ctrd.id("c1");
    let t = Instant::now();
    let r = ctrd.run_rm(&cid, &["/bin/busybox", "ip", "-4", "addr", "show", "eth0"]);
    let t_ctr = t.elapsed();
    assert_eq!(r.code, 0, "ctr run: {r:?}\n{}", ctrd.log());
    assert!(r.stdout.contains("inet 10.89."), "{}", r.stdout);
    assert_eq!(ctrd.ctr(&["containers", "ls", "-q"]).stdout.trim(), "");
    assert_eq!(ctrd.ctr(&["task", "ls", "-q"]).stdout.trim(), "");

    dump(&log);
    let calls = read_capture(&log);
    // ctr names the attachment by the containerd namespace and id (`default-ID`).
    let ctr_attachment = format!("default-{cid}");
    for (who, cid) in [("podman", id.as_str()), ("ctr", ctr_attachment.as_str())] {
        for cmd in ["ADD", "DEL"] {
            for ty in ["tgdump", "tgdump-pm"] {
                assert!(
                    calls.iter().any(|c| c.command() == cmd
                        && c.var("CNI_CONTAINERID") == cid
                        && c.config()["type"] == ty
                        && c.rc == 0),
                    "{who}: no successful {cmd} of {ty} for {cid}"
                );
            }
        }
    }

    // Clean-up leaves nothing: no process, no mount, no work dir, no runc cgroup.
    drop(ctrd);
    drop(podman);
    let rt = Arc::try_unwrap(rt).unwrap_or_else(|_| panic!("runtime still shared"));
    assert_clean_drop(&sb, rt, &cid);
    println!(
        "timings: setup (holder, podman config, import) {t_setup:?}, podman run -d {t_run:?}, \
         first HTTP answer {t_http:?}, podman rm -f {t_rm:?}, ctr run --rm {t_ctr:?}, \
         total {:?}",
        t0.elapsed()
    );
}

/// What podman 4.3 and ctr 1.6 send to the plugins of a conflist: environment, capabilities,
/// prevResult, and when DEL comes (or does not).
#[test]
fn what_podman_and_ctr_send_to_cni_plugins() {
    let sb = sandbox!("rtcni");
    let caps = json!({"portMappings": true, "aliases": true, "ips": true, "mac": true,
                      "bandwidth": true});
    let (rt, log) = recorded_network(&sb, &caps);
    let podman = Podman::new(&rt).unwrap();
    let image = podman.import_busybox().unwrap();
    let (id, netns) = podman_add(&podman, &log, &image, &caps);
    podman_stop_start_rm(&podman, &log, &id, &netns);
    podman_exit_and_failed_add(&podman, &log, &image);
    ctr_calls(&rt, &log);
    dump(&log);
}

/// `podman run -d` with ports, `--ip`, `--mac-address`, `--network-alias`: returns the
/// container id and its netns path.
fn podman_add(podman: &Podman, log: &Path, image: &str, caps: &Value) -> (String, String) {
    let bin = podman.runtime().cni_bin_dir().display().to_string();
    // ADD: two VERSION probes, then each plugin in order, the second with the first's result.
    let n = read_capture(log).len();
    let id = podman
        .ok(&[
            "run",
            "-d",
            "--init",
            "--name",
            "a",
            "-p",
            "8081:81",
            "-p",
            "127.0.0.1:9000-9001:90-91/udp",
            "-p",
            "82",
            "--ip",
            "10.89.1.50",
            "--mac-address",
            "02:00:00:00:00:50",
            "--network-alias",
            "foo",
            "--network",
            "tgnet",
            image,
            "/bin/busybox",
            "sleep",
            "1000",
        ])
        .unwrap()
        .trim()
        .to_string();
    let all = read_capture(log);
    let versions: Vec<&CniCall> = all[n..]
        .iter()
        .filter(|c| c.command() == "VERSION")
        .collect();
    assert_eq!(versions.len(), 2, "one VERSION probe per plugin");
    assert!(versions.iter().all(|v| v.var("CNI_NETNS") == "dummy"
        && v.var("CNI_IFNAME") == "dummy"
        && v.var("CNI_PATH") == "dummy"
        && v.config() == json!({"cniVersion": "1.0.0"})));
    let add = calls_since(log, n);
    assert_eq!(
        shape(&add),
        pairs(&[("ADD", "tgdump"), ("ADD", "tgdump-pm")])
    );
    let (bridge, pm) = (&add[0], &add[1]);
    assert_eq!(bridge.var("CNI_CONTAINERID"), id);
    assert_eq!(
        bridge.var("CNI_ARGS"),
        "IgnoreUnknown=1;K8S_POD_NAME=a;MAC=02:00:00:00:00:50;IP=10.89.1.50",
        "--ip and --mac-address come in CNI_ARGS, not runtimeConfig"
    );
    assert_eq!(bridge.var("CNI_IFNAME"), "eth0");
    assert_eq!(bridge.var("CNI_PATH"), bin);
    let netns = bridge.var("CNI_NETNS").to_string();
    assert!(netns.starts_with("/run/netns/netns-"), "{netns}");
    assert!(bridge.netns_existed());
    let cfg = bridge.config();
    assert_eq!(
        &cfg["capabilities"], caps,
        "capabilities are passed through"
    );
    let host_port_82 = podman.ok(&["port", "a", "82/tcp"]).unwrap();
    let host_port_82: u16 = host_port_82
        .trim()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        cfg["runtimeConfig"],
        json!({
            "aliases": {"tgnet": ["foo", &id[..12]]},
            "portMappings": [
                {"hostPort": 8081, "containerPort": 81, "protocol": "tcp"},
                {"hostPort": host_port_82, "containerPort": 82, "protocol": "tcp"},
                {"hostPort": 9000, "containerPort": 90, "protocol": "udp", "hostIP": "127.0.0.1"},
                {"hostPort": 9001, "containerPort": 91, "protocol": "udp", "hostIP": "127.0.0.1"},
            ]
        }),
        "ranges expanded, `-p 82` gets a host port chosen by podman, no ips/mac/bandwidth"
    );
    assert!(cfg.get("prevResult").is_none());
    let result: Value = serde_json::from_str(&bridge.stdout).unwrap();
    assert_eq!(pm.config()["prevResult"], result);
    assert_eq!(pm.var("CNI_ARGS"), bridge.var("CNI_ARGS"));
    (id, netns)
}

/// stop, start and `rm -f` of the container `a` of [`podman_add`].
fn podman_stop_start_rm(podman: &Podman, log: &Path, id: &str, netns: &str) {
    // stop: DEL in reverse order, netns still there, prevResult and runtimeConfig again.
    let n = read_capture(log).len();
    podman.ok(&["stop", "-t", "0", "a"]).unwrap();
    let del = calls_since(log, n);
    assert_eq!(
        shape(&del),
        pairs(&[("DEL", "tgdump-pm"), ("DEL", "tgdump")])
    );
    assert!(del.iter().all(|c| c.var("CNI_NETNS") == netns
        && c.netns_existed()
        && c.config().get("prevResult").is_some()
        && c.config()["runtimeConfig"]["portMappings"]
            .as_array()
            .is_some_and(|p| p.len() == 4)));

    // start: ADD again, same id, a new netns.
    let n = read_capture(log).len();
    podman.ok(&["start", "a"]).unwrap();
    let add = calls_since(log, n);
    assert_eq!(
        shape(&add),
        pairs(&[("ADD", "tgdump"), ("ADD", "tgdump-pm")])
    );
    assert_eq!(add[0].var("CNI_CONTAINERID"), id);
    assert_ne!(
        add[0].var("CNI_NETNS"),
        netns,
        "each start gets a new netns"
    );

    // rm -f of a running container: DEL, then nothing more.
    let n = read_capture(log).len();
    podman.ok(&["rm", "-f", "a"]).unwrap();
    assert_eq!(
        shape(&calls_since(log, n)),
        pairs(&[("DEL", "tgdump-pm"), ("DEL", "tgdump")])
    );
}

/// A container that exits by itself, and an ADD that fails.
fn podman_exit_and_failed_add(podman: &Podman, log: &Path, image: &str) {
    // A container whose process exits: conmon's clean-up runs DEL right away; `rm` sends none.
    let n = read_capture(log).len();
    let b = podman
        .ok(&[
            "run",
            "-d",
            "--name",
            "b",
            "--network",
            "tgnet",
            image,
            "/bin/busybox",
            "true",
        ])
        .unwrap();
    let del = eventually(Duration::from_secs(10), || {
        let c = calls_since(log, n);
        if c.len() >= 4 {
            Ok(c)
        } else {
            anyhow::bail!("{} calls", c.len())
        }
    })
    .unwrap();
    assert_eq!(
        shape(&del),
        pairs(&[
            ("ADD", "tgdump"),
            ("ADD", "tgdump-pm"),
            ("DEL", "tgdump-pm"),
            ("DEL", "tgdump")
        ])
    );
    assert!(del.iter().all(|c| c.var("CNI_CONTAINERID") == b.trim()));
    let n = read_capture(log).len();
    podman.ok(&["rm", "b"]).unwrap();
    assert!(calls_since(log, n).is_empty(), "rm of a stopped container");

    // A failed ADD: DEL of every plugin (reverse order), no prevResult.
    let n = read_capture(log).len();
    let r = podman.podman(&[
        "run",
        "-d",
        "--name",
        "c",
        "--ip",
        "10.99.0.5",
        "--network",
        "tgnet",
        image,
        "/bin/busybox",
        "true",
    ]);
    assert_ne!(r.code, 0);
    let calls = calls_since(log, n);
    assert_eq!(
        shape(&calls),
        pairs(&[("ADD", "tgdump"), ("DEL", "tgdump-pm"), ("DEL", "tgdump")])
    );
    assert_ne!(calls[0].rc, 0);
    assert!(calls[1..]
        .iter()
        .all(|c| c.config().get("prevResult").is_none() && c.rc == 0));
    let _ = podman.podman(&["rm", "-f", "c"]);
}

/// ctr: no VERSION probe, no `CNI_ARGS`, no `runtimeConfig`, id `NAMESPACE-ID`, netns
/// /proc/PID/ns/net (a PID of the runtime's PID namespace); `run --rm` sends DEL with an
/// empty `CNI_NETNS`; a detached container removed with `task rm` gets no DEL at all.
fn ctr_calls(rt: &Arc<RuntimeNs>, log: &Path) {
    let ctrd = Containerd::start(rt).unwrap();
    let n = read_capture(log).len();
    let cid = ctrd.id("c1");
    let r = ctrd.run_rm(&cid, &["/bin/busybox", "true"]);
    assert_eq!(r.code, 0, "{r:?}");
    let all = read_capture(log);
    assert!(all[n..].iter().all(|c| c.command() != "VERSION"));
    let calls = calls_since(log, n);
    assert_eq!(
        shape(&calls),
        pairs(&[
            ("ADD", "tgdump"),
            ("ADD", "tgdump-pm"),
            ("DEL", "tgdump-pm"),
            ("DEL", "tgdump")
        ])
    );
    let attachment = format!("default-{cid}");
    assert!(calls
        .iter()
        .all(|c| c.var("CNI_CONTAINERID") == attachment && c.var("CNI_ARGS").is_empty()));
    assert!(calls[0].var("CNI_NETNS").starts_with("/proc/"));
    assert!(calls[0].var("CNI_NETNS").ends_with("/ns/net"));
    assert!(calls[0].config().get("runtimeConfig").is_none());
    assert!(calls[2..]
        .iter()
        .all(|c| c.var("CNI_NETNS").is_empty() && c.config().get("prevResult").is_some()));
    assert!(calls[0].var("CNI_PATH").starts_with("/opt/cni/bin"));

    let n = read_capture(log).len();
    let did = ctrd.id("d1");
    let rootfs = ctrd.rootfs().display().to_string();
    let r = ctrd.ctr(&[
        "run",
        "-d",
        "--cni",
        "--cgroup",
        "",
        "--rootfs",
        &rootfs,
        &did,
        "/bin/busybox",
        "sleep",
        "100",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let _ = ctrd.ctr(&["task", "kill", "-s", "SIGKILL", &did]);
    eventually(Duration::from_secs(5), || {
        let r = ctrd.ctr(&["task", "rm", &did]);
        if r.code == 0 {
            Ok(())
        } else {
            anyhow::bail!("{r:?}")
        }
    })
    .unwrap();
    assert_eq!(ctrd.ctr(&["containers", "rm", &did]).code, 0);
    assert_eq!(
        shape(&calls_since(log, n)),
        pairs(&[("ADD", "tgdump"), ("ADD", "tgdump-pm")]),
        "no DEL for a container removed with task rm"
    );
}
