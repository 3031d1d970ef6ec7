//! Networks on one node, as Docker's user-defined networks: ICC inside a network (unless
//! `--no-icc`), isolation between networks in both directions (links and published ports
//! still cross), `--internal` without a way out, overlapping subnets refused, and `default`
//! unchanged.

use std::{net::Ipv4Addr, time::Duration};

use serde_json::json;
use tollgate_tests::*;

/// A container on `network`: (name, netns, ip).
fn on(sb: &Sandbox, short: &str, network: &str) -> (String, String, Ipv4Addr) {
    let name = sb.cname(short);
    let v = sb.json(&["container", "add", &name, "--network", network]);
    assert_eq!(v["network"], network, "{v}");
    (
        name.clone(),
        format!("tg-{name}"),
        v["ip"].as_str().unwrap().parse().unwrap(),
    )
}

/// Whether `from` (a namespace) gets an answer from the echo server at `ip:80`.
fn reaches(from: &str, ip: Ipv4Addr) -> bool {
    tcp_request_timeout(from, ip, 80, "x", Duration::from_millis(700)).is_ok()
}

#[test]
fn networks_isolate_each_other_and_keep_icc_inside() {
    let sb = sandbox!("net-iso");
    assert_eq!(sb.ok(&["network", "create", "blue"]).trim(), "10.90.0.0/24");
    assert_eq!(
        sb.ok(&["network", "create", "red", "--subnet", "10.91.0.0/24"])
            .trim(),
        "10.91.0.0/24"
    );
    let (b1, b1ns, b1ip) = on(&sb, "b1", "blue");
    let (_b2, b2ns, b2ip) = on(&sb, "b2", "blue");
    let (r1, r1ns, r1ip) = on(&sb, "r1", "red");
    let (_d1, d1ns, d1ip) = sb.container("d1");
    assert!(b1ip.to_string().starts_with("10.90.0."), "{b1ip}");
    assert!(r1ip.to_string().starts_with("10.91.0."), "{r1ip}");
    let _servers: Vec<Server> = [&b1ns, &b2ns, &r1ns, &d1ns]
        .iter()
        .map(|ns| tcp_echo(ns, 80, ns).unwrap())
        .collect();

    // ICC inside a created network, both ways.
    assert!(reaches(&b1ns, b2ip) && reaches(&b2ns, b1ip));
    // Isolation between networks, both ways, default included.
    for (from, to) in [
        (&b1ns, r1ip),
        (&r1ns, b1ip),
        (&b1ns, d1ip),
        (&d1ns, b1ip),
        (&r1ns, d1ip),
    ] {
        assert!(!reaches(from, to), "{from} reached {to} across networks");
    }
    let st = sb.json(&["stats", &b1]);
    assert!(st["drops"]["icc"].as_u64().unwrap() > 0, "{st}");

    // A link crosses networks (one way).
    sb.ok(&["policy", "link", &b1, &r1]);
    assert!(reaches(&b1ns, r1ip));
    assert!(!reaches(&r1ns, b1ip));
    // A published port crosses too: red reaches blue's port through the node's address.
    sb.publish(&b1, "8080:80");
    let a = tcp_request(&r1ns, sb.uplink_ip, 8080, "via port").unwrap();
    assert!(a.starts_with(&format!("{b1ns} peer=")), "{a}");

    // Everyone still gets out (masquerade) to the client.
    let _c = tcp_echo(&sb.client, 80, "client").unwrap();
    assert!(reaches(&b1ns, sb.client_ip) && reaches(&r1ns, sb.client_ip));

    let list = sb.json(&["network", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "blue", "red"], "{list}");
    assert_eq!(
        list[1],
        json!({"name": "blue", "subnet": "10.90.0.0/24", "scope": "local", "vni": null,
               "icc": true, "internal": false, "containers": 2})
    );
    assert_eq!(list[0]["icc"], false, "default keeps ICC off: {list}");
}

#[test]
fn no_icc_internal_overlaps_and_removal() {
    let sb = sandbox!("net-opts");
    sb.ok(&["network", "create", "quiet", "--no-icc"]);
    sb.ok(&[
        "network",
        "create",
        "vault",
        "--internal",
        "--subnet",
        "10.92.0.0/24",
    ]);
    let (_q1, q1ns, _q1ip) = on(&sb, "q1", "quiet");
    let (_q2, q2ns, q2ip) = on(&sb, "q2", "quiet");
    let (v1, v1ns, _v1ip) = on(&sb, "v1", "vault");
    let (_v2, v2ns, v2ip) = on(&sb, "v2", "vault");
    let _s: Vec<Server> = [&v2ns, &q1ns, &q2ns]
        .iter()
        .map(|ns| tcp_echo(ns, 80, ns).unwrap())
        .collect();
    // --no-icc: its containers do not reach each other.
    assert!(!reaches(&q1ns, q2ip));
    // --internal: ICC inside, no way out.
    assert!(reaches(&v1ns, v2ip));
    let _c = tcp_echo(&sb.client, 80, "client").unwrap();
    assert!(!reaches(&v1ns, sb.client_ip), "an internal network got out");
    assert!(reaches(&q1ns, sb.client_ip));
    let r = sb.tg(&["port", "add", &v1, "8081:80"]);
    assert!(
        r.code == 1 && r.stderr.contains("internal"),
        "internal ports are not published: {r:?}"
    );

    // Bad input changes nothing.
    let before = sb.json(&["network", "list"]);
    for (args, what) in [
        (
            vec!["network", "create", "x", "--subnet", "10.92.0.128/25"],
            "overlaps",
        ),
        (
            vec!["network", "create", "y", "--subnet", "10.254.0.0/24"],
            "overlaps",
        ),
        (
            vec!["network", "create", "z", "--subnet", "nonsense"],
            "CIDR",
        ),
        (vec!["network", "create", "quiet"], "already exists"),
        (vec!["network", "create", "default"], "already exists"),
        (vec!["network", "rm", "default"], "always exists"),
        (vec!["network", "rm", "vault"], "still has 2"),
        (vec!["network", "rm", "nope"], "no network"),
    ] {
        let r = sb.tg(&args);
        assert!(r.code == 1 && r.stderr.contains(what), "{args:?}: {r:?}");
    }
    let r = sb.tg(&["container", "add", &sb.cname("n"), "--network", "nope"]);
    assert!(
        r.code == 1 && r.stderr.contains("network create nope"),
        "{r:?}"
    );
    assert_eq!(sb.json(&["network", "list"]), before);

    // Removal once empty; networks survive a daemon restart.
    let mut sb = sb;
    sb.stop_daemon();
    sb.start_daemon().unwrap();
    assert_eq!(sb.json(&["network", "list"]), before);
    assert!(
        reaches(&v1ns, v2ip),
        "still ICC inside vault after a restart"
    );
    assert!(!reaches(&q1ns, q2ip));
    for c in ["v1", "v2"] {
        sb.ok(&["container", "del", &sb.cname(c)]);
    }
    sb.ok(&["network", "rm", "vault"]);
    assert_eq!(sb.json(&["network", "list"]).as_array().unwrap().len(), 2);
}
