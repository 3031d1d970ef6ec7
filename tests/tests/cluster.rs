//! Cluster mode end to end: daemons in node namespaces sharing networks, nodes and address
//! blocks through a real etcd, container traffic between nodes in VXLAN done by the eBPF
//! datapath; a node that stops is dropped and rejoins; the store going away breaks no flow.

use std::{
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tollgate_tests::{cluster::ClusterSandbox, *};

/// A `ClusterSandbox`, or an early return where privileged tests cannot run.
macro_rules! cluster {
    ($name:expr, $n:expr, $ttl:expr) => {{
        if !can_run() || !tollgate_tests::etcd::can_run() {
            return;
        }
        ClusterSandbox::new($name, $n, $ttl, &[]).expect("cluster sandbox")
    }};
}

fn reaches(from: &str, ip: Ipv4Addr) -> bool {
    tcp_request_timeout(from, ip, 80, "x", Duration::from_millis(700)).is_ok()
}

/// Waits (up to `secs`) until `f` holds.
fn until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn network<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|n| n["name"] == name)
}

/// The MTU of `eth0` in `ns`.
fn mtu(ns: &str) -> u32 {
    let line = sh("ip", &["-n", ns, "-o", "link", "show", "eth0"]).unwrap_or_default();
    line.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

#[test]
fn containers_on_two_nodes_talk_over_vxlan_and_networks_stay_apart() {
    let cs = cluster!("cl-vx", 2, 3);
    let (n0, n1) = (&cs.nodes[0], &cs.nodes[1]);
    let subnet = n0.ok(&["network", "create", "blue"]);
    assert!(subnet.trim().starts_with("10.9"), "{subnet}");
    n0.ok(&["network", "create", "red"]);
    // A network created on one node exists on the other.
    assert!(
        until(10, || network(&n1.json(&["network", "list"]), "blue")
            .is_some_and(
                |n| n["scope"] == "cluster" && n["vni"].as_u64().is_some()
            )),
        "{}",
        n1.json(&["network", "list"])
    );
    let (a, a_ns, a_ip) = cs.container(0, "a", "blue");
    let (_b, b_ns, b_ip) = cs.container(1, "b", "blue");
    let (_c, c_ns, c_ip) = cs.container(1, "c", "red");
    assert_ne!(a_ip, b_ip);
    let _servers: Vec<Server> = [&a_ns, &b_ns, &c_ns]
        .iter()
        .map(|ns| tcp_echo(ns, 80, ns).unwrap())
        .collect();
    // Overlay interfaces fit the encapsulation: underlay MTU minus 50.
    assert_eq!(mtu(&a_ns), 1450);

    // Across nodes, both ways, not masqueraded.
    let answer = eventually(Duration::from_secs(10), || {
        tcp_request_timeout(&a_ns, b_ip, 80, "hi", Duration::from_millis(700))
    })
    .unwrap_or_else(|e| panic!("a cannot reach b over the overlay: {e:#}\n{}", cs.logs()));
    assert_eq!(*answer_peer(&answer).unwrap().ip(), a_ip, "{answer}");
    assert!(reaches(&b_ns, a_ip));
    // Networks stay apart across nodes too.
    assert!(!reaches(&a_ns, c_ip) && !reaches(&c_ns, a_ip));
    let st0 = n0.json(&["status"]);
    let st1 = n1.json(&["status"]);
    assert!(
        st0["counters"]["overlay_tx"].as_u64().unwrap() > 0,
        "{}",
        st0["counters"]
    );
    assert!(
        st1["counters"]["overlay_rx"].as_u64().unwrap() > 0,
        "{}",
        st1["counters"]
    );

    // The outer UDP source port varies per flow (the kernel hashes the inner flow).
    let dump = Command::new("ip")
        .args([
            "netns", "exec", &n1.node, "timeout", "5", "tcpdump", "-l", "-nn", "-c", "12",
        ])
        .args(["-i", "up0", "udp", "dst", "port", "4789"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..4 {
        let _ = tcp_request_timeout(&a_ns, b_ip, 80, "x", Duration::from_millis(700));
    }
    let out = dump.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let ports: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter_map(|src| src.rsplit('.').next())
        .collect();
    assert!(
        ports.len() >= 2,
        "one outer source port for every flow: {text}"
    );

    // Policy applies to overlay traffic: a's egress denied, then one rule for b.
    n0.ok(&["policy", "egress", &a, "deny"]);
    assert!(!reaches(&a_ns, b_ip));
    n0.ok(&["policy", "allow", &a, &format!("{b_ip}/32:80/tcp")]);
    assert!(reaches(&a_ns, b_ip));
    let s = n0.json(&["stats", &a]);
    assert!(s["drops"]["policy"].as_u64().unwrap() > 0, "{s}");

    // So do rate limits: a burst over a's egress limit is policed before the overlay.
    n0.ok(&["limit", "set", &a, "--egress", "1mbit", "--burst", "64kb"]);
    let t = echo_transfer(&a_ns, b_ip, 80, 32, 16384, Duration::ZERO)
        .join()
        .unwrap();
    drop(t);
    let s = n0.json(&["stats", &a]);
    assert!(s["drops"]["ratelimit"].as_u64().unwrap() > 0, "{s}");
    n0.ok(&["limit", "clear", &a]);

    let nodes = n0.json(&["node", "list"]);
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["n0", "n1"], "{nodes}");
    assert!(nodes.as_array().unwrap().iter().all(|n| n["state"] == "up"));
    assert_eq!(nodes[1]["underlay_ip"], cs.node_ip(1).to_string());
}

#[test]
fn a_node_that_stops_is_dropped_within_its_ttl_and_rejoins_with_its_blocks() {
    let mut cs = cluster!("cl-ttl", 2, 2);
    cs.nodes[0].ok(&["network", "create", "blue"]);
    until(10, || {
        network(&cs.nodes[1].json(&["network", "list"]), "blue").is_some()
    });
    let (_a, a_ns, _a_ip) = cs.container(0, "a", "blue");
    let (_b, b_ns, b_ip) = cs.container(1, "b", "blue");
    let _t = tcp_echo(&b_ns, 80, "b").unwrap();
    assert!(until(10, || reaches(&a_ns, b_ip)), "{}", cs.logs());

    // kill -9 and a restart within the TTL: no flow lost, no address changed.
    let flow = echo_transfer(&a_ns, b_ip, 80, 30, 1024, Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(500));
    cs.nodes[1].kill_daemon();
    std::thread::sleep(Duration::from_millis(500));
    cs.nodes[1].start_daemon().unwrap();
    let t = flow.join().unwrap().unwrap();
    assert_eq!(t.sent, t.got, "the flow lost bytes across the kill");
    let list = cs.nodes[1].json(&["container", "list"]);
    assert_eq!(list[0]["ip"], b_ip.to_string());

    // Stopped for good: dropped by n0 within ttl + 5 s.
    cs.nodes[1].kill_daemon();
    let start = Instant::now();
    assert!(
        until(2 + 5, || {
            let nodes = cs.nodes[0].json(&["node", "list"]);
            nodes
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == "n1" && n["state"] == "down")
        }),
        "n1 still up on n0: {}",
        cs.nodes[0].json(&["node", "list"])
    );
    eprintln!("n1 dropped after {:?}", start.elapsed());
    assert!(!reaches(&a_ns, b_ip), "n1's prefixes are gone from n0");
    // It rejoins with its block: b keeps its address, a reaches it again.
    cs.nodes[1].start_daemon().unwrap();
    assert!(
        until(10, || reaches(&a_ns, b_ip)),
        "after n1 rejoined: {}",
        cs.logs()
    );
    let nodes = cs.nodes[0].json(&["node", "list"]);
    assert!(
        nodes.as_array().unwrap().iter().all(|n| n["state"] == "up"),
        "{nodes}"
    );
}

#[test]
fn with_the_store_down_flows_keep_working_and_store_commands_fail_clearly() {
    let mut cs = cluster!("cl-down", 2, 3);
    cs.nodes[0].ok(&["network", "create", "blue"]);
    until(10, || {
        network(&cs.nodes[1].json(&["network", "list"]), "blue").is_some()
    });
    let (_a, a_ns, _a_ip) = cs.container(0, "a", "blue");
    let (_b, b_ns, b_ip) = cs.container(1, "b", "blue");
    let _t = tcp_echo(&b_ns, 80, "b").unwrap();
    assert!(until(10, || reaches(&a_ns, b_ip)), "{}", cs.logs());
    let flow = echo_transfer(&a_ns, b_ip, 80, 40, 1024, Duration::from_millis(100));

    cs.etcd.stop();
    std::thread::sleep(Duration::from_secs(1));
    // New flows between existing containers work; so does a container in a block held.
    assert!(reaches(&a_ns, b_ip));
    let (_a2, a2_ns, _) = cs.container(0, "a2", "blue");
    assert!(reaches(&a2_ns, b_ip), "a new container of a held block");
    // Commands that need the store fail clearly and change nothing.
    let before = cs.nodes[0].json(&["network", "list"]);
    let r = cs.nodes[0].tg(&["network", "create", "green"]);
    assert!(r.code == 1 && r.stderr.contains("unreachable"), "{r:?}");
    assert_eq!(cs.nodes[0].json(&["network", "list"]), before);
    let t = flow.join().unwrap().unwrap();
    assert_eq!(
        t.sent, t.got,
        "the flow lost bytes while the store was down"
    );

    // Back: nodes catch up without a restart.
    cs.etcd.start().unwrap();
    assert!(
        until(30, || cs.nodes[0].tg(&["network", "create", "green"]).code
            == 0),
        "{}",
        cs.logs()
    );
    assert!(
        until(15, || network(
            &cs.nodes[1].json(&["network", "list"]),
            "green"
        )
        .is_some()),
        "{}",
        cs.logs()
    );
}
