//! The CNI plugin called directly, as a runtime calls it (one process per call, env + stdin),
//! against a real daemon, with namespaces standing in for the runtime's containers.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use serde_json::{json, Value};
use tollgate_tests::{cni::*, *};

fn link_exists(ns: &str, ifname: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "link", "show", ifname])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn with_ports(mut conf: Value, ports: Value) -> Value {
    conf["runtimeConfig"] = json!({ "portMappings": ports });
    conf
}

/// Nothing of any container is left: no container, port map, conntrack entry, `tgv` veth.
fn assert_nothing_left(sb: &Sandbox) {
    assert_eq!(sb.json(&["container", "list"]), json!([]));
    assert_eq!(sb.json(&["port", "list"]), json!([]));
    assert_eq!(sb.json(&["conntrack", "list"]), json!([]));
    let links = sh("ip", &["-n", &sb.node, "-o", "link", "show"]).unwrap();
    assert!(!links.contains("tgv"), "veths left: {links}");
}

#[test]
fn add_publishes_through_the_datapath_and_del_removes_every_trace() {
    let sb = sandbox!("cni-add");
    let ns = RuntimeNetns::new(&sb, "k1");
    let v = cni(
        &Call::new("VERSION", "", ""),
        &json!({"cniVersion": "1.0.0"}),
    );
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(
        v.json["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );

    let conf = with_ports(
        net_conf(&sb, "1.0.0", "tgnet"),
        json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"},
        ]),
    );
    let mut add = Call::new("ADD", "c0ffee01", &ns.path);
    add.ifname = "net1";
    add.args = "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.254.0.6";
    let r = cni(&add, &conf);
    assert_eq!(r.code, 0, "ADD failed: {r:?}\n{}", sb.daemon_log());
    let res = &r.json;
    assert_eq!(res["cniVersion"], "1.0.0");
    assert_eq!(
        res["ips"][0]["address"], "10.254.0.6/30",
        "IP= honoured: {res}"
    );
    assert_eq!(res["ips"][0]["gateway"], "10.254.0.5");
    assert_eq!(res["ips"][0]["interface"], 1);
    assert_eq!(
        res["routes"][0],
        json!({"dst": "0.0.0.0/0", "gw": "10.254.0.5"})
    );
    let host = res["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(res["interfaces"][0].get("sandbox").is_none());
    assert_eq!(res["interfaces"][1]["name"], "net1");
    assert_eq!(res["interfaces"][1]["sandbox"], ns.path.as_str());
    let mac = res["interfaces"][1]["mac"].as_str().unwrap();
    let inside = sh("ip", &["-n", &ns.name, "-o", "link", "show", "net1"]).unwrap();
    assert!(
        inside.contains(mac),
        "the result's MAC is the interface's: {inside}"
    );
    assert!(link_exists(&sb.node, &host));

    // Published through the datapath: the container sees the client's own address.
    let _t = tcp_echo(&ns.name, 80, "cni").unwrap();
    let _u = udp_echo(&ns.name, 53, "cni").unwrap();
    let a = tcp_request(&sb.client, sb.uplink_ip, 8080, "hello").unwrap();
    assert!(a.starts_with("cni peer=") && a.ends_with("hello"), "{a}");
    assert_eq!(*answer_peer(&a).unwrap().ip(), sb.client_ip);
    let a = udp_request(&sb.client, sb.uplink_ip, 5353, 0, "dns?").unwrap();
    assert_eq!(*answer_peer(&a).unwrap().ip(), sb.client_ip, "{a}");
    // And from the node itself, through 127.0.0.1.
    let a = tcp_request(&sb.node, Ipv4Addr::LOCALHOST, 8080, "local").unwrap();
    assert!(a.starts_with("cni peer="), "{a}");
    assert_eq!(sb.json(&["port", "list"]).as_array().unwrap().len(), 2);

    // CHECK agrees with the result, and refuses another address.
    let mut conf_check = conf.clone();
    conf_check["prevResult"] = res.clone();
    let mut check = add.clone();
    check.command = "CHECK";
    let c = cni(&check, &conf_check);
    assert_eq!(c.code, 0, "CHECK: {c:?}");
    conf_check["prevResult"]["ips"][0]["address"] = json!("10.254.0.10/30");
    let c = cni(&check, &conf_check);
    assert_eq!(c.error_code(), 100, "{c:?}");
    assert!(
        c.json["msg"].as_str().unwrap().contains("10.254.0.6/30"),
        "{c:?}"
    );

    // A second ADD of the same attachment is refused and changes nothing.
    let again = cni(&add, &conf);
    assert_eq!(again.error_code(), 100, "{again:?}");
    assert_eq!(sb.json(&["container", "list"]).as_array().unwrap().len(), 1);

    let mut del = add.clone();
    del.command = "DEL";
    let d = cni(&del, &conf);
    assert_eq!((d.code, &d.json), (0, &Value::Null), "{d:?}");
    assert_nothing_left(&sb);
    assert!(
        !link_exists(&ns.name, "net1"),
        "the interface went with the veth"
    );
    assert!(tcp_request_timeout(
        &sb.client,
        sb.uplink_ip,
        8080,
        "x",
        Duration::from_millis(500)
    )
    .is_err());
    // DEL is idempotent: again, without CNI_NETNS, without prevResult.
    assert_eq!(cni(&del, &conf).code, 0);
    del.netns = "";
    assert_eq!(cni(&del, &conf).code, 0);
    // CHECK of a container the daemon does not know: "unknown container".
    let c = cni(&check, &conf_check);
    assert_eq!(c.error_code(), 3, "{c:?}");
}

#[test]
fn versions_status_gc_and_bad_input() {
    let sb = sandbox!("cni-ver");
    let a = RuntimeNetns::new(&sb, "ka");
    let b = RuntimeNetns::new(&sb, "kb");

    // 0.4.0 results carry ips[].version; bandwidth becomes the container's limits (bursts in
    // bits, containerd's MaxUint32 meaning none).
    let mut conf04 = net_conf(&sb, "0.4.0", "tg");
    conf04["runtimeConfig"] = json!({"bandwidth": {
        "ingressRate": 50_000_000, "ingressBurst": 4_294_967_295_u64,
        "egressRate": 10_000_000, "egressBurst": 2_097_152,
    }});
    let r = cni(&Call::new("ADD", "aaaa", &a.path), &conf04);
    assert_eq!(r.code, 0, "{r:?}");
    let name = sb.json(&["container", "list"])[0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let l = sb.json(&["limit", "show", &name]);
    assert_eq!(
        (&l["ingress_bps"], &l["egress_bps"], &l["burst_bytes"]),
        (&json!(50_000_000), &json!(10_000_000), &json!(262_144)),
        "{l}"
    );
    assert_eq!(r.json["cniVersion"], "0.4.0");
    assert_eq!(r.json["ips"][0]["version"], "4");
    let conf11 = net_conf(&sb, "1.1.0", "tg");
    let r = cni(&Call::new("ADD", "bbbb", &b.path), &conf11);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.json["ips"][0].get("version").is_none());

    // STATUS: 0 while the daemon serves.
    let s = cni(&Call::new("STATUS", "", ""), &conf11);
    assert_eq!(s.code, 0, "{s:?}");
    // STATUS needs 1.1.0.
    let s = cni(&Call::new("STATUS", "", ""), &net_conf(&sb, "1.0.0", "tg"));
    assert_eq!(s.error_code(), 1);

    // GC keeps the valid attachment and removes the other; another CNI network's are safe.
    let other = RuntimeNetns::new(&sb, "ko");
    let r = cni(
        &Call::new("ADD", "cccc", &other.path),
        &net_conf(&sb, "1.1.0", "tg2"),
    );
    assert_eq!(r.code, 0, "{r:?}");
    let mut gc = conf11.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "bbbb", "ifname": "eth0"}]);
    let g = cni(&Call::new("GC", "", ""), &gc);
    assert_eq!(g.code, 0, "{g:?}");
    let left: Vec<Value> = sb.json(&["container", "list"]).as_array().unwrap().clone();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!link_exists(&a.name, "eth0"), "aaaa was collected");
    assert!(link_exists(&b.name, "eth0") && link_exists(&other.name, "eth0"));

    // Bad input: clear errors in the spec's codes, nothing changed.
    let bad = |conf: &Value, call: &Call| cni(call, conf).error_code();
    let mut unknown = net_conf(&sb, "1.0.0", "tg");
    unknown["network"] = json!("nope");
    let d = RuntimeNetns::new(&sb, "kd");
    assert_eq!(bad(&unknown, &Call::new("ADD", "dddd", &d.path)), 7);
    assert_eq!(
        bad(
            &net_conf(&sb, "9.9.9", "tg"),
            &Call::new("ADD", "dddd", &d.path)
        ),
        1
    );
    assert_eq!(
        bad(
            &with_ports(
                net_conf(&sb, "1.0.0", "tg"),
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}])
            ),
            &Call::new("ADD", "dddd", &d.path)
        ),
        7
    );
    assert_eq!(
        bad(
            &net_conf(&sb, "1.0.0", "tg"),
            &Call::new("ADD", "dddd", "/run/netns/does-not-exist")
        ),
        4
    );
    // An ifname already taken inside the namespace: the daemon refuses, nothing stays.
    let mut lo = Call::new("ADD", "dddd", &d.path);
    lo.ifname = "lo";
    let r = cni(&lo, &net_conf(&sb, "1.0.0", "tg"));
    assert!(r.code != 0, "{r:?}");
    assert!(
        r.json["msg"].as_str().unwrap().contains("already exists"),
        "{r:?}"
    );
    assert_eq!(sb.json(&["container", "list"]).as_array().unwrap().len(), 2);
    let s = cni(&Call::new("ADD", "dddd", &d.path), &json!("not an object"));
    assert_eq!(s.error_code(), 6);
}

#[test]
fn a_failed_add_rolls_back_everything() {
    let sb = sandbox!("cni-rb");
    let (web, _, _) = sb.container("web");
    sb.publish(&web, "8080:80");
    let ns = RuntimeNetns::new(&sb, "k1");
    let conf = with_ports(
        net_conf(&sb, "1.0.0", "tg"),
        json!([
            {"hostPort": 9090, "containerPort": 90, "protocol": "tcp"},
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        ]),
    );
    let r = cni(&Call::new("ADD", "rb", &ns.path), &conf);
    assert_eq!(r.error_code(), 100, "{r:?}");
    let msg = r.json["msg"].as_str().unwrap();
    assert!(msg.contains("8080") && msg.contains(&web), "{msg}");
    assert_eq!(sb.json(&["container", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(sb.json(&["port", "list"]).as_array().unwrap().len(), 1);
    assert!(!link_exists(&ns.name, "eth0"));
    // The runtime's DEL after a failed ADD (no prevResult) succeeds.
    assert_eq!(cni(&Call::new("DEL", "rb", &ns.path), &conf).code, 0);
}

#[test]
fn the_runtime_may_bind_its_published_port_and_others_may_not() {
    let sb = sandbox!("cni-bind");
    let ns = RuntimeNetns::new(&sb, "k1");
    let conf = with_ports(
        net_conf(&sb, "1.0.0", "tg"),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    // The plugin's parent is this test process: it plays the runtime (podman binds the
    // published ports itself and hands them to conmon).
    let r = cni(&Call::new("ADD", "bind", &ns.path), &conf);
    assert_eq!(r.code, 0, "{r:?}");
    let other = Command::new("ip")
        .args(["netns", "exec", &sb.node, "python3", "-c"])
        .arg("import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 8080))")
        .output()
        .unwrap();
    assert!(
        !other.status.success()
            && String::from_utf8_lossy(&other.stderr).contains("PermissionError"),
        "another process bound the published port: {other:?}"
    );
    let held = in_ns(&sb.node, || {
        Ok(std::net::TcpListener::bind(("0.0.0.0", 8080))?)
    });
    let held = held.expect("the runtime's own reservation is let through");
    // Traffic still goes to the container, not to the reservation.
    let _t = tcp_echo(&ns.name, 80, "cni").unwrap();
    let a = tcp_request(&sb.client, sb.uplink_ip, 8080, "x").unwrap();
    assert!(a.starts_with("cni peer="), "{a}");
    drop(held);
    assert_eq!(cni(&Call::new("DEL", "bind", &ns.path), &conf).code, 0);
}

#[test]
fn twenty_parallel_add_del_pairs_leak_nothing() {
    let sb = sandbox!("cni-par");
    let nss: Vec<RuntimeNetns> = (0..20)
        .map(|i| RuntimeNetns::new(&sb, &format!("p{i}")))
        .collect();
    let conf = net_conf(&sb, "1.0.0", "tg");
    std::thread::scope(|s| {
        for (i, ns) in nss.iter().enumerate() {
            let conf = with_ports(
                conf.clone(),
                json!([{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"},
                       {"hostPort": 20000 + i, "containerPort": 53, "protocol": "udp"}]),
            );
            let sb = &sb;
            s.spawn(move || {
                let id = format!("par{i}");
                let add = cni(&Call::new("ADD", &id, &ns.path), &conf);
                assert_eq!(add.code, 0, "ADD {id}: {add:?}");
                // A connection through the map, so there is conntrack state to clean up.
                let _t = tcp_echo(&ns.name, 80, "p").unwrap();
                let port = u16::try_from(20000 + i).unwrap();
                let a = tcp_request(&sb.client, sb.uplink_ip, port, "x").unwrap();
                assert!(a.starts_with("p peer="), "{a}");
                let del = cni(&Call::new("DEL", &id, &ns.path), &conf);
                assert_eq!(del.code, 0, "DEL {id}: {del:?}");
            });
        }
    });
    assert_nothing_left(&sb);
    for ns in &nss {
        assert!(!link_exists(&ns.name, "eth0"));
    }
}

#[test]
fn del_while_the_daemon_is_down_is_carried_out_when_it_returns() {
    let mut sb = sandbox!("cni-down");
    let kept = RuntimeNetns::new(&sb, "k1");
    let gone = RuntimeNetns::new(&sb, "k2");
    let conf = with_ports(
        net_conf(&sb, "1.0.0", "tg"),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    assert_eq!(cni(&Call::new("ADD", "kept", &kept.path), &conf).code, 0);
    let conf2 = with_ports(
        net_conf(&sb, "1.0.0", "tg"),
        json!([{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}]),
    );
    assert_eq!(cni(&Call::new("ADD", "gone", &gone.path), &conf2).code, 0);
    // A container that stays, with a connection open across the daemon's death.
    let stays = RuntimeNetns::new(&sb, "k4");
    let conf4 = with_ports(
        net_conf(&sb, "1.0.0", "tg"),
        json!([{"hostPort": 8082, "containerPort": 80, "protocol": "tcp"}]),
    );
    assert_eq!(cni(&Call::new("ADD", "stays", &stays.path), &conf4).code, 0);
    let _t = tcp_echo(&stays.name, 80, "stays").unwrap();
    let flow = echo_transfer(
        &sb.client,
        sb.uplink_ip,
        8082,
        40,
        1024,
        Duration::from_millis(100),
    );
    let status = net_conf(&sb, "1.1.0", "tg");
    assert_eq!(cni(&Call::new("STATUS", "", ""), &status).code, 0);

    sb.kill_daemon();
    let s = cni(&Call::new("STATUS", "", ""), &status);
    assert_eq!(s.error_code(), 50, "{s:?}");
    // The runtime tears down while no daemon answers: DEL succeeds (queued)...
    let d = cni(&Call::new("DEL", "kept", &kept.path), &conf);
    assert_eq!(d.code, 0, "{d:?}");
    // ...and another container's namespace vanishes with its DEL never sent (podman logs a
    // failed DEL and removes the namespace anyway).
    drop(gone);
    let queue = sb.socket.with_extension("cni-del");
    assert_eq!(std::fs::read_dir(&queue).unwrap().count(), 1);
    // ADD and CHECK fail clearly while the daemon is down.
    let k3 = RuntimeNetns::new(&sb, "k3");
    let a = cni(
        &Call::new("ADD", "k3", &k3.path),
        &net_conf(&sb, "1.0.0", "tg"),
    );
    assert_eq!(a.error_code(), 11, "{a:?}");
    assert!(a.json["msg"].as_str().unwrap().contains("daemon"), "{a:?}");

    sb.start_daemon().unwrap();
    assert_eq!(
        std::fs::read_dir(&queue).unwrap().count(),
        0,
        "queue replayed"
    );
    // The one that stayed kept its flow and answers new connections.
    let t = flow.join().unwrap().unwrap();
    assert_eq!(t.sent, t.got, "the open flow lost bytes");
    let a = tcp_request(&sb.client, sb.uplink_ip, 8082, "after").unwrap();
    assert!(a.starts_with("stays peer="), "{a}");
    let left = sb.json(&["container", "list"]);
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(cni(&Call::new("DEL", "stays", &stays.path), &conf4).code, 0);
    assert_nothing_left(&sb);
    assert!(!link_exists(&kept.name, "eth0"));
    assert!(sb.daemon_log().contains("replayed a CNI DEL"));
}

#[test]
fn del_after_the_namespace_vanished_cleans_up() {
    let sb = sandbox!("cni-gone");
    let ns = RuntimeNetns::new(&sb, "k1");
    let conf = with_ports(
        net_conf(&sb, "1.0.0", "tg"),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    let path = ns.path.clone();
    assert_eq!(cni(&Call::new("ADD", "gone", &path), &conf).code, 0);
    // The runtime removed the namespace first (the veth pair dies with it).
    drop(ns);
    let d = cni(&Call::new("DEL", "gone", &path), &conf);
    assert_eq!(d.code, 0, "{d:?}\n{}", sb.daemon_log());
    assert_nothing_left(&sb);
}
