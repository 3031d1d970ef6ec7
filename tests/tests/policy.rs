//! ICC, links, egress policy and anti-spoofing end to end: the real CLI, real namespaces,
//! real traffic. Blocked flows are checked with short connect timeouts, always next to a
//! positive control so that a broken network cannot pass for a working policy.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use serde_json::{json, Value};
use tollgate_tests::*;

const BLOCKED_WAIT: Duration = Duration::from_millis(1500);

/// A TCP exchange from `ns` to a `tcp_echo` tagged `tag` works; returns the peer it saw.
#[track_caller]
fn reaches(ns: &str, ip: Ipv4Addr, port: u16, tag: &str) -> SocketAddrV4 {
    let ans = tcp_request_timeout(ns, ip, port, "ping", Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{ns} -> {ip}:{port} must connect: {e:#}"));
    assert!(
        ans.starts_with(&format!("{tag} peer=")) && ans.ends_with("ping"),
        "{ns} -> {ip}:{port}: {ans:?}"
    );
    answer_peer(&ans).unwrap()
}

/// A TCP connection from `ns` to `ip:port` cannot be made.
#[track_caller]
fn blocked(ns: &str, ip: Ipv4Addr, port: u16) {
    let r = tcp_request_timeout(ns, ip, port, "ping", BLOCKED_WAIT);
    assert!(
        r.is_err(),
        "{ns} -> {ip}:{port} must be blocked, got an answer: {r:?}"
    );
}

fn udp_reaches(ns: &str, ip: Ipv4Addr, port: u16) -> bool {
    udp_request(ns, ip, port, 0, "u").is_ok()
}

fn stats(sb: &Sandbox, name: &str) -> Value {
    let s = sb.json(&["stats", name]);
    assert!(s.is_object(), "stats NAME --json is an object: {s}");
    s
}

fn drops(sb: &Sandbox, name: &str, reason: &str) -> u64 {
    let s = stats(sb, name);
    s["drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no drops.{reason} in {s}"))
}

#[track_caller]
fn wait_drops(sb: &Sandbox, name: &str, reason: &str, at_least: u64) {
    let r = eventually(Duration::from_secs(3), || {
        let n = drops(sb, name, reason);
        if n < at_least {
            anyhow::bail!("drops.{reason} of {name} is {n}, want >= {at_least}");
        }
        Ok(())
    });
    if let Err(e) = r {
        panic!("{e}: {}", stats(sb, name));
    }
}

fn policy(sb: &Sandbox, name: &str) -> Value {
    sb.json(&["policy", "list", name])
}

/// The contract's fields of a `policy list --json` answer (extra fields are allowed).
fn policy_fields(p: &Value) -> Value {
    json!({
        "container": p["container"],
        "egress": p["egress"],
        "links": p["links"],
        "rules": p["rules"],
    })
}

#[test]
fn icc_off_blocks_containers_by_ip_but_not_published_ports() {
    let sb = sandbox!("pol-icc");
    let (a, a_ns, _a_ip) = sb.container("a");
    let (b, b_ns, b_ip) = sb.container("b");
    let _bt = tcp_echo(&b_ns, 80, "B").unwrap();
    let _bu = udp_echo(&b_ns, 53, "B").unwrap();
    let _ct = tcp_echo(&sb.client, 80, "out").unwrap();
    sb.publish(&b, "8080:80");

    assert_eq!(drops(&sb, &a, "icc"), 0);
    blocked(&a_ns, b_ip, 80);
    assert!(
        !udp_reaches(&a_ns, b_ip, 53),
        "UDP from a to b's IP must be blocked with ICC off"
    );
    wait_drops(&sb, &a, "icc", 2);
    // Published ports (hairpin through the uplink IP) still work, from a and from outside.
    reaches(&a_ns, sb.uplink_ip, 8080, "B");
    reaches(&sb.client, sb.uplink_ip, 8080, "B");
    // Both still reach the outside.
    reaches(&a_ns, sb.client_ip, 80, "out");
    reaches(&b_ns, sb.client_ip, 80, "out");
    assert_eq!(drops(&sb, &b, "icc"), 0, "b tried nothing");
}

#[test]
fn link_is_one_way_and_unlink_removes_it() {
    let sb = sandbox!("pol-link");
    let (a, a_ns, a_ip) = sb.container("a");
    let (b, b_ns, b_ip) = sb.container("b");
    let _at = tcp_echo(&a_ns, 80, "A").unwrap();
    let _bt = tcp_echo(&b_ns, 80, "B").unwrap();
    let _bu = udp_echo(&b_ns, 53, "B").unwrap();

    blocked(&a_ns, b_ip, 80);
    sb.ok(&["policy", "link", &a, &b]);
    // a opens to b, and b's replies come back although b may not open to a.
    let peer = reaches(&a_ns, b_ip, 80, "B");
    assert_eq!(
        *peer.ip(),
        a_ip,
        "linked containers see each other's own IP"
    );
    assert!(udp_reaches(&a_ns, b_ip, 53), "UDP over the link");
    blocked(&b_ns, a_ip, 80);
    assert_eq!(policy(&sb, &a)["links"], json!([b.as_str()]));
    assert_eq!(policy(&sb, &b)["links"], json!([]));

    sb.ok(&["policy", "unlink", &a, &b]);
    assert_eq!(policy(&sb, &a)["links"], json!([]));
    blocked(&a_ns, b_ip, 80);
}

#[test]
fn egress_deny_lets_only_the_allowed_rule_through() {
    let sb = sandbox!("pol-egress");
    let (a, a_ns, _) = sb.container("a");
    let _t80 = tcp_echo(&sb.client, 80, "out80").unwrap();
    let _t81 = tcp_echo(&sb.client, 81, "out81").unwrap();
    let _u = udp_echo(&sb.client, 53, "out").unwrap();
    let c = sb.client_ip;

    sb.ok(&["policy", "egress", &a, "deny"]);
    sb.ok(&["policy", "allow", &a, &format!("{c}/32:80/tcp")]);
    let peer = reaches(&a_ns, c, 80, "out80");
    assert_eq!(*peer.ip(), sb.uplink_ip, "still masqueraded");
    blocked(&a_ns, c, 81);
    assert!(!udp_reaches(&a_ns, c, 53), "UDP is not allowed");
    assert!(!ping(&a_ns, c), "ICMP is not allowed");
    wait_drops(&sb, &a, "policy", 3);
    assert_eq!(drops(&sb, &a, "icc"), 0);

    sb.ok(&["policy", "egress", &a, "allow"]);
    reaches(&a_ns, c, 81, "out81");
    assert!(udp_reaches(&a_ns, c, 53));
}

#[test]
fn protocol_and_port_specific_rules() {
    let sb = sandbox!("pol-proto");
    let (a, a_ns, _) = sb.container("a");
    let _t = tcp_echo(&sb.client, 80, "out").unwrap();
    let _u53 = udp_echo(&sb.client, 53, "out").unwrap();
    let _u5353 = udp_echo(&sb.client, 5353, "out").unwrap();
    let c = sb.client_ip;

    // Default allow; all UDP to the client denied except port 5353.
    sb.ok(&["policy", "deny", &a, &format!("{c}/32/udp")]);
    sb.ok(&["policy", "allow", &a, &format!("{c}/32:5353/udp")]);
    assert!(!udp_reaches(&a_ns, c, 53), "{c}/32/udp deny must apply");
    assert!(
        udp_reaches(&a_ns, c, 5353),
        "the explicit port beats the any-port rule of the same prefix"
    );
    reaches(&a_ns, c, 80, "out");
    assert!(ping(&a_ns, c), "a UDP rule does not touch ICMP");

    // Default deny: ICMP and a TCP port range allowed explicitly.
    sb.ok(&["policy", "egress", &a, "deny"]);
    blocked(&a_ns, c, 80);
    assert!(!ping(&a_ns, c), "ICMP denied by default");
    sb.ok(&["policy", "allow", &a, &format!("{c}/32/icmp")]);
    assert!(ping(&a_ns, c), "{c}/32/icmp allow");
    blocked(&a_ns, c, 80);
    sb.ok(&["policy", "allow", &a, &format!("{c}/32:79-81/tcp")]);
    reaches(&a_ns, c, 80, "out");
    assert!(udp_reaches(&a_ns, c, 5353));
    assert!(!udp_reaches(&a_ns, c, 53));
}

#[test]
fn longest_prefix_wins() {
    let sb = sandbox!("pol-lpm");
    let (a, a_ns, _) = sb.container("a");
    let (b, b_ns, _) = sb.container("b");
    let _t = tcp_echo(&sb.client, 80, "out").unwrap();
    let host = format!("{}/32", sb.client_ip);

    sb.ok(&["policy", "deny", &a, "192.168.0.0/16"]);
    sb.ok(&["policy", "allow", &a, &host]);
    reaches(&a_ns, sb.client_ip, 80, "out");

    sb.ok(&["policy", "allow", &b, "192.168.0.0/16"]);
    sb.ok(&["policy", "deny", &b, &host]);
    blocked(&b_ns, sb.client_ip, 80);
    wait_drops(&sb, &b, "policy", 1);

    // Removing the /32 rules leaves the /16 ones in charge.
    sb.ok(&["policy", "rm", &a, &host]);
    blocked(&a_ns, sb.client_ip, 80);
    sb.ok(&["policy", "rm", &b, &host]);
    reaches(&b_ns, sb.client_ip, 80, "out");
}

#[test]
fn replies_of_allowed_flows_pass_with_egress_deny() {
    let sb = sandbox!("pol-reply");
    let (a, a_ns, a_ip) = sb.container("a");
    let (b, b_ns, _) = sb.container("b");
    let _at = tcp_echo(&a_ns, 80, "A").unwrap();
    let _au = udp_echo(&a_ns, 53, "A").unwrap();
    let _ct = tcp_echo(&sb.client, 80, "out").unwrap();
    sb.publish(&a, "8080:80");
    sb.publish(&a, "5353:53/udp");
    sb.ok(&["policy", "egress", &a, "deny"]);

    // Inbound through published ports: a's answers are replies.
    reaches(&sb.client, sb.uplink_ip, 8080, "A");
    let ans = udp_request(&sb.client, sb.uplink_ip, 5353, 0, "hi").unwrap();
    assert!(ans.starts_with("A peer="), "{ans}");
    // A linked neighbour opening to a: a's answers are replies.
    sb.ok(&["policy", "link", &b, &a]);
    reaches(&b_ns, a_ip, 80, "A");
    // But a itself opens nothing.
    blocked(&a_ns, sb.client_ip, 80);
    // A large answer (many reply packets) to an allowed flow.
    sb.ok(&[
        "policy",
        "allow",
        &a,
        &format!("{}/32:80/tcp", sb.client_ip),
    ]);
    let big = "z".repeat(200_000);
    let ans = tcp_request(&a_ns, sb.client_ip, 80, &big).unwrap();
    assert!(ans.ends_with(&big), "echo of 200 kB truncated");
}

#[test]
fn spoofed_sources_are_dropped_and_counted() {
    let sb = sandbox!("pol-spoof");
    let (a, a_ns, a_ip) = sb.container("a");
    let (_b, _b_ns, b_ip) = sb.container("b");
    let sink = udp_sink(&sb.client, 9999).unwrap();
    let dst = SocketAddrV4::new(sb.client_ip, 9999);

    // Control: the container's own address gets through (masqueraded).
    udp_send_from(&a_ns, SocketAddrV4::new(a_ip, 0), dst, "real", 3).unwrap();
    eventually(Duration::from_secs(2), || {
        if sink.snapshot().iter().any(|(_, p)| p == b"real") {
            Ok(())
        } else {
            anyhow::bail!("control datagram not received")
        }
    })
    .unwrap();
    assert_eq!(drops(&sb, &a, "spoof"), 0);

    // A made-up address and the neighbour's address.
    for (ip, what) in [
        (Ipv4Addr::new(10, 99, 0, 5), "made-up"),
        (b_ip, "neighbour"),
    ] {
        sh(
            "ip",
            &[
                "-n",
                &a_ns,
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                "eth0",
            ],
        )
        .unwrap();
        udp_send_from(&a_ns, SocketAddrV4::new(ip, 0), dst, what, 5).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1000));
    let leaked: Vec<_> = sink
        .snapshot()
        .into_iter()
        .filter(|(_, p)| p != b"real")
        .map(|(src, p)| (src, String::from_utf8_lossy(&p).to_string()))
        .collect();
    assert!(
        leaked.is_empty(),
        "spoofed datagrams reached the outside: {leaked:?}"
    );
    wait_drops(&sb, &a, "spoof", 10);
}

#[test]
fn policy_list_json() {
    let sb = sandbox!("pol-list");
    let (a, _, _) = sb.container("a");
    let (b, _, _) = sb.container("b");
    let (c, _, _) = sb.container("c");
    assert_eq!(
        policy_fields(&policy(&sb, &a)),
        json!({"container": a, "egress": "allow", "links": [], "rules": []}),
        "a new container's policy"
    );
    let host = format!("{}/32", sb.client_ip);
    sb.ok(&["policy", "egress", &a, "deny"]);
    sb.ok(&["policy", "link", &a, &b]);
    sb.ok(&["policy", "link", &a, &c]);
    sb.ok(&["policy", "allow", &a, &format!("{host}:80/tcp")]);
    sb.ok(&["policy", "deny", &a, "192.168.0.0/16"]);
    sb.ok(&["policy", "allow", &a, "10.0.0.0/8:8000-8010/udp"]);
    sb.ok(&["policy", "allow", &a, "0.0.0.0/0/icmp"]);
    let p = policy(&sb, &a);
    assert_eq!(p["container"], a.as_str(), "{p}");
    assert_eq!(p["egress"], "deny", "{p}");
    let mut links: Vec<String> = p["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    links.sort();
    assert_eq!(links, vec![b.clone(), c.clone()], "{p}");
    let by_cidr = |mut v: Vec<Value>| {
        v.sort_by_key(|r| r["cidr"].as_str().unwrap_or_default().to_string());
        Value::Array(v)
    };
    let want = vec![
        json!({"cidr": "0.0.0.0/0", "ports": null, "proto": "icmp", "action": "allow"}),
        json!({"cidr": "10.0.0.0/8", "ports": "8000-8010", "proto": "udp", "action": "allow"}),
        json!({"cidr": host, "ports": "80", "proto": "tcp", "action": "allow"}),
        json!({"cidr": "192.168.0.0/16", "ports": null, "proto": null, "action": "deny"}),
    ];
    assert_eq!(
        by_cidr(p["rules"].as_array().expect("rules array").clone()),
        by_cidr(want),
        "{p}"
    );
    // Nothing leaked to the others.
    assert_eq!(
        policy_fields(&policy(&sb, &b)),
        json!({"container": b, "egress": "allow", "links": [], "rules": []})
    );
    sb.ok(&["policy", "rm", &a, "10.0.0.0/8:8000-8010/udp"]);
    sb.ok(&["policy", "rm", &a, "0.0.0.0/0/icmp"]);
    let p = policy(&sb, &a);
    assert_eq!(p["rules"].as_array().unwrap().len(), 2, "{p}");
    assert!(
        !p.to_string().contains("8000-8010"),
        "removed rule still listed: {p}"
    );
    // Plain output works too.
    let r = sb.tg(&["policy", "list", &a]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("192.168.0.0/16"), "{}", r.stdout);
}

#[test]
fn refusals_say_error_and_change_nothing() {
    let sb = sandbox!("pol-refuse");
    let (a, _, _) = sb.container("a");
    let (b, _, _) = sb.container("b");
    sb.ok(&["policy", "allow", &a, "10.0.0.0/8:80/tcp"]);
    sb.ok(&["policy", "link", &a, &b]);
    let before = (policy(&sb, &a), policy(&sb, &b));
    let cases: &[&[&str]] = &[
        &["policy", "allow", &a, "10.0.0.0/33"],
        &["policy", "allow", &a, "300.1.2.3/32"],
        &["policy", "deny", &a, "not-a-cidr"],
        &["policy", "allow", &a, "10.0.0.0/8:0"],
        &["policy", "allow", &a, "10.0.0.0/8:0/tcp"],
        &["policy", "allow", &a, "10.0.0.0/8:70000"],
        &["policy", "allow", &a, "10.0.0.0/8:90-80/tcp"],
        &["policy", "allow", &a, "10.0.0.0/8:80/sctp"],
        &["policy", "deny", &a, "10.0.0.0/8/gre"],
        &["policy", "allow", "nosuch", "10.0.0.0/8"],
        &["policy", "deny", "nosuch", "10.0.0.0/8"],
        &["policy", "egress", "nosuch", "deny"],
        &["policy", "link", &a, "nosuch"],
        &["policy", "link", "nosuch", &a],
        &["policy", "list", "nosuch"],
        &["policy", "rm", "nosuch", "10.0.0.0/8:80/tcp"],
        &["policy", "rm", &a, "10.0.0.0/33"],
    ];
    for args in cases {
        let r = sb.tg(args);
        assert_eq!(r.code, 1, "{args:?} should fail with exit 1: {r:?}");
        let line = r.stderr.trim();
        assert!(
            line.starts_with("error:"),
            "{args:?}: stderr must start with error: {line}"
        );
        assert_eq!(line.lines().count(), 1, "{args:?}: one error line: {line}");
        assert!(r.stdout.is_empty(), "{args:?}: nothing on stdout: {r:?}");
    }
    // A stance other than allow|deny is refused too (clap or the agent).
    let r = sb.tg(&["policy", "egress", &a, "maybe"]);
    assert_ne!(r.code, 0, "{r:?}");
    let after = (policy(&sb, &a), policy(&sb, &b));
    assert_eq!(before, after, "refused commands changed the policy");
}

#[test]
fn policy_and_links_survive_a_daemon_restart() {
    let mut sb = sandbox!("pol-restart");
    let (a, a_ns, _) = sb.container("a");
    let (b, b_ns, b_ip) = sb.container("b");
    let _bt = tcp_echo(&b_ns, 80, "B").unwrap();
    let _t80 = tcp_echo(&sb.client, 80, "out80").unwrap();
    let _t81 = tcp_echo(&sb.client, 81, "out81").unwrap();
    sb.ok(&["policy", "egress", &a, "deny"]);
    sb.ok(&[
        "policy",
        "allow",
        &a,
        &format!("{}/32:80/tcp", sb.client_ip),
    ]);
    sb.ok(&["policy", "link", &a, &b]);
    let before = policy(&sb, &a);

    sb.kill_daemon();
    sb.start_daemon().unwrap();
    assert_eq!(
        policy(&sb, &a),
        before,
        "policy changed across kill -9 + restart"
    );
    reaches(&a_ns, sb.client_ip, 80, "out80");
    reaches(&a_ns, b_ip, 80, "B");
    blocked(&a_ns, sb.client_ip, 81);

    sb.stop_daemon();
    sb.start_daemon().unwrap();
    assert_eq!(
        policy(&sb, &a),
        before,
        "policy changed across a clean restart"
    );
    blocked(&a_ns, sb.client_ip, 81);
    reaches(&a_ns, sb.client_ip, 80, "out80");
}
