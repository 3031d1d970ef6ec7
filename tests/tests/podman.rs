//! Real runtimes on Tollgate through `tollgate-cni`: podman 4.3 (CNI backend) and containerd
//! 1.6 (`ctr run --cni`), offline, in a runtime namespace inside the sandbox's node namespace
//! (`tollgate_tests::runtime`). Published ports go through the eBPF datapath; no iptables rule
//! is made anywhere.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    process::{Child, Stdio},
    sync::Arc,
    time::Duration,
};

use serde_json::{json, Value};
use tollgate_tests::{cni::cni_bin, runtime::*, *};

/// `GET path` from `ns` to `ip:port`, every step bounded.
fn http_get(ns: &str, ip: Ipv4Addr, port: u16, path: &str) -> anyhow::Result<String> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
    in_ns(ns, move || {
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, port));
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        c.write_all(req.as_bytes())?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// The sandbox's runtime namespace with the plugin installed as `tollgate` and the network
/// `tgnet` on the daemon's `default` network; podman with the busybox image.
struct Env {
    rt: Arc<RuntimeNs>,
    podman: Podman,
    image: String,
}

fn tollgate_net(sb: &Sandbox) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "tgnet",
        "plugins": [{
            "type": "tollgate",
            "socket": sb.socket,
            "network": "default",
            "capabilities": {"portMappings": true, "bandwidth": true},
        }],
    })
}

fn env(sb: &Sandbox) -> Env {
    let rt = runtime_for(sb, &[("tollgate", &cni_bin())]).unwrap();
    write_conflist(rt.cni_conf_dir(), "tgnet", &tollgate_net(sb)).unwrap();
    let podman = Podman::new(&rt).unwrap();
    let image = podman.import_busybox().unwrap();
    Env { rt, podman, image }
}

impl Env {
    /// `podman run -d --init --name NAME [ARGS] --network tgnet IMAGE httpd`.
    fn httpd(&self, name: &str, args: &[&str]) -> String {
        let mut a = vec!["run", "-d", "--init", "--name", name, "--network", "tgnet"];
        a.extend_from_slice(args);
        a.extend_from_slice(&[
            &self.image,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ]);
        self.podman.ok(&a).unwrap().trim().to_string()
    }

    fn inspect(&self, name: &str, format: &str) -> String {
        self.podman
            .ok(&["inspect", "--format", format, name])
            .unwrap()
            .trim()
            .to_string()
    }

    fn ip(&self, name: &str) -> Ipv4Addr {
        self.inspect(name, "{{.NetworkSettings.Networks.tgnet.IPAddress}}")
            .parse()
            .unwrap()
    }
}

/// Every trace of every container is gone: containers, port maps, conntrack entries, veths,
/// queued DELs.
fn assert_nothing_left(sb: &Sandbox) {
    assert_eq!(sb.json(&["container", "list"]), json!([]));
    assert_eq!(sb.json(&["port", "list"]), json!([]));
    assert_eq!(sb.json(&["conntrack", "list"]), json!([]));
    let links = sh("ip", &["-n", &sb.node, "-o", "link", "show"]).unwrap();
    assert!(!links.contains("tgv"), "veths left: {links}");
    let queue = sb.socket.with_extension("cni-del");
    assert!(
        std::fs::read_dir(&queue).map_or(true, |d| d.count() == 0),
        "DELs queued: the daemon did not answer one"
    );
}

/// No iptables rule in the node namespace (where the runtime and its containers live).
fn assert_no_iptables_rule(sb: &Sandbox) {
    let rules = sh("ip", &["netns", "exec", &sb.node, "iptables-save"]).unwrap();
    let appended: Vec<&str> = rules.lines().filter(|l| l.starts_with("-A")).collect();
    assert!(appended.is_empty(), "iptables rules: {appended:?}");
}

/// A UDP responder in a podman container's namespace (busybox has no UDP server): socat
/// answers each datagram with the sender's address as the container sees it.
struct UdpPeer(Child);

impl UdpPeer {
    fn start(e: &Env, name: &str, port: u16) -> Self {
        let key = e.inspect(name, "{{.NetworkSettings.SandboxKey}}");
        let child =
            e.rt.command("nsenter")
                .arg(format!("--net={key}"))
                .args(["socat", "-T", "2"])
                .arg(format!("UDP4-RECVFROM:{port},reuseaddr,fork"))
                .arg("SYSTEM:echo peer=$SOCAT_PEERADDR")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        Self(child)
    }
}

impl Drop for UdpPeer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn podman_run_p_publishes_through_ebpf_and_rm_removes_every_trace() {
    let sb = sandbox!("pod-run");
    let e = env(&sb);
    e.httpd("web", &["-p", "8080:80", "-p", "5353:53/udp"]);

    // From the client: the container sees the client's own address.
    let page = eventually(Duration::from_secs(10), || {
        http_get(&sb.client, sb.uplink_ip, 8080, "/cgi-bin/peer")
    })
    .unwrap_or_else(|err| panic!("no answer: {err:#}\n{}", sb.daemon_log()));
    assert!(page.contains(" 200 "), "{page}");
    // busybox httpd shows IPv4 peers in their mapped form, `[::ffff:A.B.C.D]`.
    let peer = page.lines().last().unwrap_or_default();
    assert!(
        peer == format!("peer={}", sb.client_ip)
            || peer == format!("peer=[::ffff:{}]", sb.client_ip),
        "the container must see the client's IP: {page}"
    );
    // From the node itself, through 127.0.0.1.
    let page = http_get(&sb.node, Ipv4Addr::LOCALHOST, 8080, "/").unwrap();
    assert!(page.ends_with(INDEX_HTML), "{page}");
    // UDP through its mapping.
    let _udp = UdpPeer::start(&e, "web", 53);
    let a = eventually(Duration::from_secs(5), || {
        udp_request(&sb.client, sb.uplink_ip, 5353, 0, "q")
    })
    .unwrap();
    assert_eq!(
        a.trim(),
        format!("peer={}", sb.client_ip),
        "the container must see the client's IP"
    );

    // One Tollgate container with both maps, and the runtime's own reservation holds the
    // ports (conmon), which the bind hook let through.
    let cs = sb.json(&["container", "list"]);
    assert_eq!(cs.as_array().unwrap().len(), 1, "{cs}");
    assert!(cs[0]["name"].as_str().unwrap().starts_with("cni-"), "{cs}");
    assert_eq!(cs[0]["ip"], e.ip("web").to_string());
    assert_eq!(sb.json(&["port", "list"]).as_array().unwrap().len(), 2);
    let listening = sh(
        "ip",
        &["netns", "exec", &sb.node, "ss", "-Hltnp", "sport = :8080"],
    )
    .unwrap();
    assert!(
        listening.contains("conmon"),
        "podman's reservation: {listening:?}"
    );
    assert_no_iptables_rule(&sb);

    e.podman.ok(&["rm", "-f", "web"]).unwrap();
    assert_nothing_left(&sb);
    assert!(http_get(&sb.client, sb.uplink_ip, 8080, "/").is_err());
}

#[test]
fn containers_on_the_network_follow_its_icc_rule() {
    let sb = sandbox!("pod-icc");
    let e = env(&sb);
    e.httpd("a", &[]);
    e.httpd("b", &[]);
    let (ip_a, ip_b) = (e.ip("a"), e.ip("b"));
    let get = |from: &str, ip: Ipv4Addr| {
        e.podman.podman(&[
            "exec",
            from,
            "/bin/busybox",
            "sh",
            "-c",
            &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 2 {ip} 80"),
        ])
    };
    let get_b = || get("a", ip_b);
    // `default` keeps ICC off (the daemon runs without --icc).
    let r = get_b();
    assert!(!r.stdout.contains(INDEX_HTML), "a reached b: {r:?}");
    let st = sb.json(&["stats"]);
    let drops: u64 = st
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["drops"]["icc"].as_u64().unwrap())
        .sum();
    assert!(drops > 0, "counted as ICC drops: {st}");
    // A link lets a reach b, one way.
    let name_of = |ip: Ipv4Addr| {
        sb.json(&["container", "list"])
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["ip"] == ip.to_string())
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    sb.ok(&["policy", "link", &name_of(ip_a), &name_of(ip_b)]);
    let r = get_b();
    assert!(
        r.stdout.contains(INDEX_HTML),
        "the link lets a reach b: {r:?}"
    );
    // A user-created Tollgate network (CNI network `tgblue`) has ICC on, and is isolated from
    // `default`'s containers.
    sb.ok(&["network", "create", "blue"]);
    let mut blue = tollgate_net(&sb);
    blue["name"] = json!("tgblue");
    blue["plugins"][0]["network"] = json!("blue");
    write_conflist(e.rt.cni_conf_dir(), "tgblue", &blue).unwrap();
    for c in ["c", "d"] {
        let mut a = vec!["run", "-d", "--init", "--name", c, "--network", "tgblue"];
        a.extend_from_slice(&[
            &e.image,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ]);
        e.podman.ok(&a).unwrap();
    }
    let ip_d: Ipv4Addr = e
        .inspect("d", "{{.NetworkSettings.Networks.tgblue.IPAddress}}")
        .parse()
        .unwrap();
    assert!(ip_d.to_string().starts_with("10.90.0."), "{ip_d}");
    let r = get("c", ip_d);
    assert!(r.stdout.contains(INDEX_HTML), "ICC inside blue: {r:?}");
    let r = get("c", ip_b);
    assert!(
        !r.stdout.contains(INDEX_HTML),
        "blue reached default: {r:?}"
    );
    e.podman.ok(&["rm", "-f", "a", "b", "c", "d"]).unwrap();
    assert_nothing_left(&sb);
}

#[test]
fn twenty_podman_run_rm_in_a_row_leak_nothing() {
    let sb = sandbox!("pod-rm20");
    let e = env(&sb);
    for i in 0..20 {
        let r = e.podman.podman(&[
            "run",
            "--rm",
            "--network",
            "tgnet",
            "-p",
            "9000:80",
            "-p",
            "9001:53/udp",
            &e.image,
            "/bin/busybox",
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "eth0",
        ]);
        assert_eq!(r.code, 0, "run {i}: {r:?}\n{}", sb.daemon_log());
        assert!(r.stdout.contains("inet 10.254.0."), "run {i}: {}", r.stdout);
    }
    assert_nothing_left(&sb);
    assert_no_iptables_rule(&sb);
}

#[test]
fn ctr_run_cni_gets_a_tollgate_address_and_rm_cleans_up() {
    let sb = sandbox!("pod-ctr");
    let rt = runtime_for(&sb, &[("tollgate", &cni_bin())]).unwrap();
    write_conflist(rt.cni_conf_dir(), "tgnet", &tollgate_net(&sb)).unwrap();
    let ctrd = Containerd::start(&rt).unwrap();
    let id = ctrd.id("c1");
    let r = ctrd.run_rm(
        &id,
        &["/bin/busybox", "ip", "-4", "-o", "addr", "show", "eth0"],
    );
    assert_eq!(
        r.code,
        0,
        "ctr run: {r:?}\n{}\n{}",
        ctrd.log(),
        sb.daemon_log()
    );
    assert!(r.stdout.contains("inet 10.254.0."), "{}", r.stdout);
    // `--rm` sends DEL with an empty CNI_NETNS: the container is gone all the same.
    assert_nothing_left(&sb);
    assert_no_iptables_rule(&sb);
}
