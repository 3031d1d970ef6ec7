//! Port maps (DNAT) end to end: the real CLI, real namespaces, real sockets.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

use tollgate_tests::*;

fn peer_ip(answer: &str) -> Ipv4Addr {
    let p = answer
        .split("peer=")
        .nth(1)
        .unwrap_or_else(|| panic!("no peer in {answer:?}"));
    p.split(':').next().unwrap().parse().unwrap()
}

#[test]
fn external_tcp_and_udp_keep_client_ip() {
    let sb = sandbox!("pm-ext");
    let (web, ns, _ip) = sb.container("web");
    let _t = tcp_echo(&ns, 80, "web").unwrap();
    let _u = udp_echo(&ns, 53, "web").unwrap();
    assert_eq!(sb.publish(&web, "8080:80"), vec![8080]);
    assert_eq!(sb.publish(&web, "5353:53/udp"), vec![5353]);

    let a = tcp_request(&sb.client, sb.uplink_ip, 8080, "hello tcp").unwrap();
    assert!(a.starts_with("web peer="), "{a}");
    assert!(a.ends_with("hello tcp"), "echo missing: {a}");
    assert_eq!(
        peer_ip(&a),
        sb.client_ip,
        "the container must see the client's own IP"
    );

    let a = udp_request(&sb.client, sb.uplink_ip, 5353, 0, "hello udp").unwrap();
    assert!(
        a.starts_with("web peer=") && a.ends_with("hello udp"),
        "{a}"
    );
    assert_eq!(peer_ip(&a), sb.client_ip);

    // Allocated host port from --port-range, printed by the CLI.
    let p = sb.publish(&web, ":80");
    assert_eq!(p, vec![61001]);
    let a = tcp_request(&sb.client, sb.uplink_ip, 61001, "x").unwrap();
    assert!(a.starts_with("web peer="), "{a}");

    // Inbound translated packets took the fast path (straight into the container once its
    // neighbour entry is known), not the node's IP stack.
    let st = sb.json(&["status"]);
    assert!(
        st["counters"]["redirect_peer"].as_u64().unwrap() > 0,
        "no fast-path packets: {}",
        st["counters"]
    );

    let list = sb.json(&["port", "list", &web]);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    let udp = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["proto"] == "udp")
        .unwrap();
    assert_eq!(udp["host_port"], 5353);
    assert_eq!(udp["container_port"], 53);
    assert_eq!(udp["host_ip"], "0.0.0.0");
    assert_eq!(udp["container"], web.as_str());
}

#[test]
fn node_itself_reaches_mapped_port_on_uplink_ip_and_loopback() {
    let sb = sandbox!("pm-node");
    let (web, ns, _) = sb.container("web");
    let _t = tcp_echo(&ns, 80, "web").unwrap();
    let _u = udp_echo(&ns, 53, "web").unwrap();
    sb.publish(&web, "8080:80");
    sb.publish(&web, "5353:53/udp");
    for ip in [sb.uplink_ip, Ipv4Addr::LOCALHOST] {
        let a = tcp_request(&sb.node, ip, 8080, "from node").unwrap();
        assert!(
            a.starts_with("web peer=") && a.ends_with("from node"),
            "via {ip}: {a}"
        );
        let a = udp_request(&sb.node, ip, 5353, 0, "node udp").unwrap();
        assert!(
            a.starts_with("web peer=") && a.ends_with("node udp"),
            "via {ip}: {a}"
        );
    }
    // Answers come back from the address the application asked for (recvmsg4 restores it).
    let from = in_ns(&sb.node, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 512];
        for _ in 0..3 {
            s.send_to(b"who", (Ipv4Addr::LOCALHOST, 5353))?;
            if let Ok((_, from)) = s.recv_from(&mut buf) {
                return Ok(from);
            }
        }
        anyhow::bail!("no answer")
    })
    .unwrap();
    assert_eq!(from.to_string(), "127.0.0.1:5353");
}

#[test]
fn hairpin_from_other_container_and_from_itself() {
    let sb = sandbox!("pm-hair");
    let (web, web_ns, _) = sb.container("web");
    let (_cli, cli_ns, cli_ip) = sb.container("cli");
    let _t = tcp_echo(&web_ns, 80, "web").unwrap();
    let _u = udp_echo(&web_ns, 53, "web").unwrap();
    sb.publish(&web, "8080:80");
    sb.publish(&web, "5353:53/udp");

    let a = tcp_request(&cli_ns, sb.uplink_ip, 8080, "hairpin").unwrap();
    assert!(a.starts_with("web peer=") && a.ends_with("hairpin"), "{a}");
    assert_eq!(
        peer_ip(&a),
        cli_ip,
        "another container is seen with its own IP"
    );
    let a = udp_request(&cli_ns, sb.uplink_ip, 5353, 0, "hp udp").unwrap();
    assert!(a.starts_with("web peer=") && a.ends_with("hp udp"), "{a}");

    // A container reaching its own published port.
    let a = tcp_request(&web_ns, sb.uplink_ip, 8080, "self").unwrap();
    assert!(a.starts_with("web peer=") && a.ends_with("self"), "{a}");
    let a = udp_request(&web_ns, sb.uplink_ip, 5353, 0, "self udp").unwrap();
    assert!(a.starts_with("web peer=") && a.ends_with("self udp"), "{a}");
}

#[test]
fn no_iptables_rules_and_no_qdisc_but_clsact() {
    let sb = sandbox!("pm-clean");
    let (web, ns, _) = sb.container("web");
    let _t = tcp_echo(&ns, 80, "web").unwrap();
    sb.publish(&web, "8080:80");
    sb.publish(&web, "5353:53/udp");
    let a = tcp_request(&sb.client, sb.uplink_ip, 8080, "x").unwrap();
    assert!(a.starts_with("web"), "{a}");
    for cmd in ["iptables-save", "iptables-legacy-save"] {
        if let Ok(out) = sh("ip", &["netns", "exec", &sb.node, cmd]) {
            let rules: Vec<&str> = out.lines().filter(|l| l.starts_with("-A")).collect();
            assert!(
                rules.is_empty(),
                "{cmd} in the node namespace shows rules: {rules:?}"
            );
        }
    }
    if let Ok(out) = sh("ip", &["netns", "exec", &sb.node, "nft", "list", "ruleset"]) {
        assert!(
            !out.contains("rule") && !out.contains("dnat"),
            "nft ruleset not empty: {out}"
        );
    }
    let q = sh("ip", &["netns", "exec", &sb.node, "tc", "qdisc", "show"]).unwrap();
    for l in q.lines() {
        assert!(
            l.starts_with("qdisc noqueue") || l.starts_with("qdisc clsact"),
            "unexpected qdisc: {l}"
        );
    }
    // The datapath is attached where status says.
    let st = sb.json(&["status"]);
    let progs: Vec<String> = st["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    for p in [
        "from_uplink",
        "from_container",
        "sock_connect4",
        "sock_bind4",
    ] {
        assert!(
            progs.iter().any(|x| x == p),
            "{p} missing from status: {st}"
        );
    }
    assert!(
        st["maps"]["TG_PORTMAP"]["entries"].as_u64().unwrap() >= 2,
        "{st}"
    );
}

#[test]
fn refusals_say_error_and_change_nothing() {
    let sb = sandbox!("pm-refuse");
    let (web, _ns, _) = sb.container("web");
    sb.publish(&web, "8080:80");
    let before = (sb.json(&["port", "list"]), sb.json(&["container", "list"]));
    // A node process already listening on 9090.
    let _holder = in_ns(&sb.node, || {
        Ok(std::net::TcpListener::bind("0.0.0.0:9090")?)
    })
    .unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["port", "add", &web, "8080:81"], "already mapped"),
        (&["port", "add", &web, "9090:80"], "in use by a process"),
        (&["port", "add", "nosuch", "7070:80"], "unknown container"),
        (&["port", "add", &web, "0:80"], "out of range"),
        (&["port", "add", &web, "70000:80"], "out of range"),
        (&["port", "add", &web, "80:70000"], "out of range"),
        (&["port", "add", &web, "80:80/sctp"], "unknown protocol"),
        (&["port", "add", &web, "abc"], "bad port spec"),
        (
            &["port", "add", &web, "8000-8002:80-81"],
            "differ in length",
        ),
        // A batch is all or nothing: the good first spec must not stay behind.
        (
            &["port", "add", &web, "7001:80", "8080:80"],
            "already mapped",
        ),
        (&["port", "del", &web, "7777"], "no port map"),
        (&["container", "add", &web], "already exists"),
        (&["container", "add", "x y"], "invalid container name"),
        (
            &["container", "add", &sb.cname("ip"), "--ip", "10.254.0.3"],
            "not a container address",
        ),
        (&["container", "del", "nosuch"], "unknown container"),
    ];
    for (args, want) in cases {
        let r = sb.tg(args);
        assert_eq!(r.code, 1, "{args:?} should fail with exit 1: {r:?}");
        let line = r.stderr.trim();
        assert!(
            line.starts_with("error:"),
            "{args:?}: stderr must start with error: {line}"
        );
        assert_eq!(line.lines().count(), 1, "{args:?}: one error line: {line}");
        assert!(
            line.contains(want),
            "{args:?}: {line:?} should mention {want:?}"
        );
    }
    let after = (sb.json(&["port", "list"]), sb.json(&["container", "list"]));
    assert_eq!(before, after, "refused commands changed the state");
    // Usage errors are clap's: exit 2.
    assert_eq!(sb.tg(&["port", "add"]).code, 2);
}

#[test]
fn node_process_cannot_bind_a_published_port() {
    let sb = sandbox!("pm-bind");
    let (web, _ns, _) = sb.container("web");
    sb.publish(&web, "8080:80");
    sb.publish(&web, "5353:53/udp");
    let tcp = in_ns(&sb.node, || {
        Ok(std::net::TcpListener::bind("0.0.0.0:8080").map(|_| ()))
    })
    .unwrap();
    let e = tcp.expect_err("binding a published TCP port must be refused");
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    let lo = in_ns(&sb.node, || {
        Ok(std::net::TcpListener::bind("127.0.0.1:8080").map(|_| ()))
    })
    .unwrap();
    assert!(
        lo.is_err(),
        "loopback bind of a published port must be refused too"
    );
    let udp = in_ns(&sb.node, || {
        Ok(std::net::UdpSocket::bind("0.0.0.0:5353").map(|_| ()))
    })
    .unwrap();
    assert!(udp.is_err(), "UDP bind of a published port must be refused");
    // Other ports and the other protocol are free.
    in_ns(&sb.node, || Ok(std::net::UdpSocket::bind("0.0.0.0:8080")?)).unwrap();
    in_ns(&sb.node, || {
        Ok(std::net::TcpListener::bind("0.0.0.0:8081")?)
    })
    .unwrap();
    // The refusal is scoped to the daemon's namespace: the client namespace binds freely.
    in_ns(&sb.client, || {
        Ok(std::net::TcpListener::bind("0.0.0.0:8080")?)
    })
    .unwrap();
    sb.ok(&["port", "del", &web, "8080"]);
    in_ns(&sb.node, || {
        Ok(std::net::TcpListener::bind("0.0.0.0:8080")?)
    })
    .unwrap();
}

#[test]
fn udp_flow_follows_a_map_moved_to_another_container() {
    let sb = sandbox!("pm-move");
    let (a, a_ns, _) = sb.container("a");
    let (b, b_ns, _) = sb.container("b");
    let _ua = udp_echo(&a_ns, 53, "A").unwrap();
    let _ub = udp_echo(&b_ns, 53, "B").unwrap();
    sb.publish(&a, "5353:53/udp");
    let (ip, client) = (sb.uplink_ip, sb.client.clone());
    // One client socket, one source port, for the whole test: the same 5-tuple.
    let (tx, rx) = std::sync::mpsc::channel::<Option<String>>();
    let (atx, arx) = std::sync::mpsc::channel::<String>();
    let t = std::thread::spawn(move || {
        in_ns(&client, move || {
            let s = std::net::UdpSocket::bind("0.0.0.0:40404")?;
            while let Ok(Some(msg)) = rx.recv() {
                atx.send(udp_exchange(&s, ip, 5353, &msg).unwrap_or_else(|e| format!("ERR {e}")))?;
            }
            Ok(())
        })
    });
    tx.send(Some("one".into())).unwrap();
    let r = arx.recv().unwrap();
    assert!(r.starts_with("A "), "{r}");
    assert!(
        !sb.json(&["conntrack", "list"])
            .as_array()
            .unwrap()
            .is_empty(),
        "the flow has conntrack entries"
    );
    sb.ok(&["port", "del", &a, "5353/udp"]);
    sb.ok(&["port", "add", &b, "5353:53/udp"]);
    tx.send(Some("two".into())).unwrap();
    let r = arx.recv().unwrap();
    assert!(
        r.starts_with("B "),
        "the next datagram of the same flow must reach the new container: {r}"
    );
    tx.send(None).unwrap();
    t.join().unwrap().unwrap();
}

#[test]
fn port_del_stops_answers() {
    let sb = sandbox!("pm-del");
    let (web, ns, _) = sb.container("web");
    let _t = tcp_echo(&ns, 80, "web").unwrap();
    sb.publish(&web, "8080:80");
    assert!(tcp_request(&sb.client, sb.uplink_ip, 8080, "x")
        .unwrap()
        .starts_with("web"));
    sb.ok(&["port", "del", &web, "8080/tcp"]);
    assert!(sb.json(&["port", "list"]).as_array().unwrap().is_empty());
    let r = tcp_request(&sb.client, sb.uplink_ip, 8080, "x");
    assert!(
        r.is_err() || !r.as_ref().unwrap().starts_with("web"),
        "still answering after port del: {r:?}"
    );
}

#[test]
fn thousand_port_maps_through_the_cli() {
    let sb = sandbox!("pm-1k");
    let (web, ns, _) = sb.container("web");
    let _t = tcp_echo(&ns, 80, "web").unwrap();
    for i in 0..1000u16 {
        let spec = format!("{}:80", 20000 + i);
        sb.publish(&web, &spec);
    }
    assert_eq!(sb.json(&["port", "list"]).as_array().unwrap().len(), 1000);
    let a = tcp_request(&sb.client, sb.uplink_ip, 20999, "last").unwrap();
    assert!(a.starts_with("web peer=") && a.ends_with("last"), "{a}");
    // One batch call too.
    let specs: Vec<String> = (0..500u16)
        .map(|i| format!("{}:80/udp", 30000 + i))
        .collect();
    let mut args = vec!["port", "add", web.as_str()];
    args.extend(specs.iter().map(|s| s.as_str()));
    assert_eq!(sb.ok(&args).lines().count(), 500);
}

#[test]
fn kill9_and_restart_lose_neither_transfer_nor_config() {
    let mut sb = sandbox!("pm-kill");
    let (web, ns, _) = sb.container("web");
    let _t = tcp_echo(&ns, 80, "web").unwrap();
    sb.publish(&web, "8080:80");
    sb.publish(&web, "5353:53/udp");
    let before = (sb.json(&["port", "list"]), sb.json(&["container", "list"]));

    // A transfer of 8 MiB in 64 KiB chunks over ~4 s, echoed back and checked byte for byte.
    let transfer = echo_transfer(
        &sb.client,
        sb.uplink_ip,
        8080,
        128,
        65536,
        Duration::from_millis(30),
    );
    std::thread::sleep(Duration::from_millis(800));
    sb.kill_daemon();
    std::thread::sleep(Duration::from_millis(800));
    sb.start_daemon().unwrap();
    let Transfer {
        greeting,
        sent,
        got,
    } = transfer.join().unwrap().unwrap();
    assert!(greeting.starts_with("web peer="), "{greeting}");
    assert_eq!(got.len(), sent.len(), "bytes lost across kill -9 + restart");
    assert!(got == sent, "echoed bytes differ");
    let after = (sb.json(&["port", "list"]), sb.json(&["container", "list"]));
    assert_eq!(before, after, "configuration changed across the restart");
    // And new connections work after the restart.
    assert!(tcp_request(&sb.client, sb.uplink_ip, 8080, "again")
        .unwrap()
        .ends_with("again"));
    // A clean stop (SIGTERM) keeps the datapath forwarding while no daemon runs.
    sb.stop_daemon();
    assert!(tcp_request(&sb.client, sb.uplink_ip, 8080, "nodaemon")
        .unwrap()
        .ends_with("nodaemon"));
    sb.start_daemon().unwrap();
}

#[test]
fn container_add_and_del_plumb_and_unplumb() {
    let sb = sandbox!("pm-ctr");
    let name = sb.cname("c1");
    let v = sb.json(&["container", "add", &name, "--ip", "10.254.0.14"]);
    assert_eq!(v["ip"], "10.254.0.14");
    assert_eq!(v["gateway"], "10.254.0.13");
    assert_eq!(v["prefix_len"], 30);
    let ns = format!("tg-{name}");
    assert_eq!(v["netns"], format!("/run/netns/{ns}"));
    let addr = sh(
        "ip",
        &["-n", &ns, "-4", "-o", "addr", "show", "dev", "eth0"],
    )
    .unwrap();
    assert!(addr.contains("10.254.0.14/30"), "{addr}");
    let route = sh("ip", &["-n", &ns, "route", "show", "default"]).unwrap();
    assert!(route.contains("via 10.254.0.13 dev eth0"), "{route}");
    let lo = sh("ip", &["-n", &ns, "link", "show", "lo"]).unwrap();
    assert!(lo.contains("UP"), "{lo}");
    let host = v["host_ifname"].as_str().unwrap().to_string();
    sh("ip", &["-n", &sb.node, "link", "show", &host]).unwrap();
    // The gateway answers pings from the container (the /30 is routed, not bridged).
    sh(
        "ip",
        &["netns", "exec", &ns, "ping", "-c1", "-W2", "10.254.0.13"],
    )
    .unwrap();
    let second = sb.container("c2");
    assert_eq!(
        second.2,
        Ipv4Addr::new(10, 254, 0, 2),
        "next free /30 is the first one"
    );
    sb.ok(&["container", "del", &name]);
    assert!(
        !std::path::Path::new(&format!("/run/netns/{ns}")).exists(),
        "namespace left behind"
    );
    assert!(
        sh("ip", &["-n", &sb.node, "link", "show", &host]).is_err(),
        "veth left behind"
    );
    assert_eq!(sb.json(&["container", "list"]).as_array().unwrap().len(), 1);
}

#[test]
fn new_programs_replace_old_ones_inside_the_links_without_dropping_a_flow() {
    let mut sb = sandbox!("pm-upg");
    let (web, ns, _) = sb.container("web");
    let _t = tcp_echo(&ns, 80, "web").unwrap();
    sb.publish(&web, "8080:80");
    let ids = |sb: &Sandbox| -> Vec<(String, u64)> {
        let st = sb.json(&["status"]);
        st["programs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["id"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let before = ids(&sb);
    // An established connection that must live through the swap.
    let (ip, client) = (sb.uplink_ip, sb.client.clone());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let conn = std::thread::spawn(move || {
        in_ns(&client, move || {
            let mut c = TcpStream::connect((ip, 8080))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = [0u8; 256];
            let mut greeting = Vec::new();
            while !greeting.ends_with(b"\n") {
                let n = c.read(&mut buf)?;
                anyhow::ensure!(n > 0, "connection closed");
                greeting.extend_from_slice(&buf[..n]);
            }
            anyhow::ensure!(greeting.starts_with(b"web"));
            rx.recv()?;
            c.write_all(b"after the swap")?;
            let mut got = Vec::new();
            while got.len() < 14 {
                let n = c.read(&mut buf)?;
                anyhow::ensure!(n > 0, "connection closed");
                got.extend_from_slice(&buf[..n]);
            }
            Ok(String::from_utf8_lossy(&got).to_string())
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    // An upgrade is a start with a different embedded object: forget the pinned fingerprint.
    sb.stop_daemon();
    for e in std::fs::read_dir(sb.bpffs.join("object")).unwrap() {
        std::fs::remove_dir(e.unwrap().path()).unwrap();
    }
    sb.start_daemon().unwrap();
    let after = ids(&sb);
    for ((n1, i1), (n2, i2)) in before.iter().zip(&after) {
        assert_eq!(n1, n2);
        assert_ne!(i1, i2, "{n1} was not reloaded");
    }
    assert!(
        sb.daemon_log().contains("program replaced"),
        "links were not updated in place"
    );
    tx.send(()).unwrap();
    assert_eq!(conn.join().unwrap().unwrap(), "after the swap");
    assert!(tcp_request(&sb.client, sb.uplink_ip, 8080, "new")
        .unwrap()
        .ends_with("new"));
}

#[test]
fn a_vanished_container_namespace_is_recreated_on_restart() {
    let mut sb = sandbox!("pm-gone");
    let (web, ns, ip) = sb.container("web");
    sb.publish(&web, "8080:80");
    // Someone deletes the namespace behind tollgate's back: its veth goes with it.
    sh("ip", &["netns", "del", &ns]).unwrap();
    sb.kill_daemon();
    sb.start_daemon().unwrap();
    let addr = sh(
        "ip",
        &["-n", &ns, "-4", "-o", "addr", "show", "dev", "eth0"],
    )
    .unwrap();
    assert!(
        addr.contains(&format!("{ip}/30")),
        "container not re-plumbed: {addr}"
    );
    let _t = tcp_echo(&ns, 80, "web").unwrap();
    let a = tcp_request(&sb.client, sb.uplink_ip, 8080, "back").unwrap();
    assert!(a.starts_with("web peer=") && a.ends_with("back"), "{a}");
    assert_eq!(
        sb.json(&["port", "list", &web]).as_array().unwrap().len(),
        1
    );
}

/// A container deleted and replaced by another that reuses its id (and its /30) is reached
/// at once: the fast path's cached MACs of the old veth (`TG_EP_L2`) are never used for the
/// new one.
#[test]
fn a_replacement_container_reusing_the_id_is_reached_at_once() {
    let sb = sandbox!("pm-reuse");
    let (old, ns, old_ip) = sb.container("old");
    let srv = tcp_echo(&ns, 80, "old").unwrap();
    sb.publish(&old, "8080:80");
    for _ in 0..3 {
        let a = tcp_request(&sb.client, sb.uplink_ip, 8080, "x").unwrap();
        assert!(a.starts_with("old peer="), "{a}");
    }
    let fast_before = sb.json(&["status"])["counters"]["redirect_peer"]
        .as_u64()
        .unwrap();
    assert!(
        fast_before > 0,
        "the old container was not reached by the fast path"
    );
    drop(srv);
    sb.ok(&["container", "del", &old]);

    let (new, ns, new_ip) = sb.container("new");
    assert_eq!(
        new_ip, old_ip,
        "the replacement reuses the /30 (and the id)"
    );
    let _srv = tcp_echo(&ns, 80, "new").unwrap();
    sb.publish(&new, "8080:80");
    for _ in 0..3 {
        let a = tcp_request(&sb.client, sb.uplink_ip, 8080, "y").unwrap();
        assert!(a.starts_with("new peer="), "{a}");
        assert_eq!(peer_ip(&a), sb.client_ip);
    }
    let fast_after = sb.json(&["status"])["counters"]["redirect_peer"]
        .as_u64()
        .unwrap();
    assert!(
        fast_after > fast_before,
        "the new container was not reached by the fast path"
    );
}

/// The MAC address of `dev` in namespace `ns`.
fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = sh("ip", &["-n", ns, "-j", "link", "show", "dev", dev]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut mac = [0u8; 6];
    for (b, s) in mac
        .iter_mut()
        .zip(v[0]["address"].as_str().unwrap().split(':'))
    {
        *b = u8::from_str_radix(s, 16).unwrap();
    }
    mac
}

/// An Ethernet frame carrying a UDP datagram, checksums computed in full.
fn udp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).unwrap();
    let mut udp = [
        &src.1.to_be_bytes()[..],
        &dst.1.to_be_bytes(),
        &udp_len.to_be_bytes(),
        &[0, 0],
        payload,
    ]
    .concat();
    let pseudo = [
        &src.0.octets()[..],
        &dst.0.octets(),
        &[0, 17],
        &udp_len.to_be_bytes(),
        &udp,
    ]
    .concat();
    let c = match datapath_common::csum::checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let total = (20 + udp_len).to_be_bytes();
    let mut ip = [
        &[
            0x45, 0, total[0], total[1], 0x42, 0x42, 0x40, 0, 64, 17, 0, 0,
        ][..],
        &src.0.octets(),
        &dst.0.octets(),
    ]
    .concat();
    let c = datapath_common::csum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    [&macs.0[..], &macs.1, &[0x08, 0x00], &ip, &udp].concat()
}

/// A datagram whose IP and UDP headers are not in the skb's linear data but in page
/// fragments, as some NICs hand packets to the stack, is translated all the same, in both
/// directions: the datapath pulls in what it rewrites (the L4 checksum too), the receiving
/// stack accepts its checksum (it checks the whole datagram) and sees the right address.
/// Frames of a page or more: jumbo MTUs on every hop.
#[test]
fn udp_with_headers_in_paged_data_is_translated() {
    let sb = sandbox!("pm-paged");
    let name = sb.cname("web");
    let v = sb.json(&["container", "add", &name]);
    let host_if = v["host_ifname"].as_str().unwrap().to_string();
    let ns = format!("tg-{name}");
    let _u = udp_echo(&ns, 53, "web").unwrap();
    sb.publish(&name, "5353:53/udp");
    for (netns, dev) in [
        (&sb.client, "eth0"),
        (&sb.node, "up0"),
        (&sb.node, host_if.as_str()),
        (&ns, "eth0"),
    ] {
        sh("ip", &["-n", netns, "link", "set", dev, "mtu", "9000"]).unwrap();
    }

    let payload: Vec<u8> = (0..5000u32)
        .map(|i| b'a' + u8::try_from(i % 26).unwrap())
        .collect();
    let sport = 40999;
    let frame = udp_frame(
        (mac_of(&sb.node, "up0"), mac_of(&sb.client, "eth0")),
        (sb.client_ip, sport),
        (sb.uplink_ip, 5353),
        &payload,
    );
    let client = sb.client.clone();
    let answer = in_ns(&sb.client, move || {
        // The answer comes to this socket: the client's stack takes it, not the packet socket.
        let s = std::net::UdpSocket::bind(("0.0.0.0", sport))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = vec![0u8; 65536];
        for _ in 0..3 {
            send_paged_frame(&client, "eth0", frame.clone())?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(buf[..n].to_vec());
            }
        }
        anyhow::bail!("no answer to the paged datagram")
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sb.tail_log()));
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("web peer="),
        "{}",
        &text[..text.len().min(80)]
    );
    assert_eq!(peer_ip(&text), sb.client_ip, "the client's address is kept");
    assert!(
        answer.ends_with(&payload),
        "the datagram arrived cut or changed ({} bytes answered)",
        answer.len()
    );

    // The other way, through `from_container`'s checksum code (a function of its own there):
    // a masqueraded datagram from the container, its headers in page fragments too.
    let ip: Ipv4Addr = v["ip"].as_str().unwrap().parse().unwrap();
    let sink = udp_sink(&sb.client, 40998).unwrap();
    let frame = udp_frame(
        (mac_of(&sb.node, &host_if), mac_of(&ns, "eth0")),
        (ip, 41000),
        (sb.client_ip, 40998),
        &payload,
    );
    let seen = eventually(Duration::from_secs(5), || {
        send_paged_frame(&ns, "eth0", frame.clone())?;
        std::thread::sleep(Duration::from_millis(300));
        let seen = sink.snapshot();
        anyhow::ensure!(!seen.is_empty(), "nothing arrived yet");
        Ok(seen)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", sb.tail_log()));
    assert_eq!(
        *seen[0].0.ip(),
        sb.uplink_ip,
        "masqueraded to the uplink's address"
    );
    assert!(seen[0].1 == payload, "the datagram arrived cut or changed");

    let stats = sb.json(&["stats"]);
    assert_eq!(stats[0]["drops"]["rewrite_failed"], 0, "{stats}");
}
