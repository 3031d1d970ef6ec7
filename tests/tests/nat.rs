//! Outbound masquerade and conntrack end to end: containers talk to the "outside" (the client
//! namespace), which must see the node's uplink address; the conntrack table is observed and
//! managed through the real CLI.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use serde_json::Value;
use tollgate_tests::*;

fn ip_of(ep: &Value) -> Ipv4Addr {
    let s = ep
        .as_str()
        .unwrap_or_else(|| panic!("not an ip:port string: {ep}"));
    s.parse::<SocketAddrV4>()
        .unwrap_or_else(|_| panic!("not an ip:port string: {s:?}"))
        .ip()
        .to_owned()
}

fn conntrack(sb: &Sandbox) -> Vec<Value> {
    sb.json(&["conntrack", "list"])
        .as_array()
        .expect("conntrack list --json is an array")
        .clone()
}

/// Entries that involve `ip` in any of their four tuples.
fn entries_of(sb: &Sandbox, ip: Ipv4Addr) -> Vec<Value> {
    conntrack(sb)
        .into_iter()
        .filter(|e| {
            ["src", "dst", "translated_src", "translated_dst"]
                .iter()
                .any(|k| ip_of(&e[*k]) == ip)
        })
        .collect()
}

fn has_flag(e: &Value, f: &str) -> bool {
    e["flags"]
        .as_array()
        .map(|a| a.iter().any(|x| x == f))
        .unwrap_or(false)
}

/// The original-direction entry of `proto` from `src_ip` to `dst`.
fn original_entry(sb: &Sandbox, proto: &str, src_ip: Ipv4Addr, dst_ip: Ipv4Addr) -> Option<Value> {
    conntrack(sb).into_iter().find(|e| {
        e["proto"] == proto
            && e["direction"] == "original"
            && ip_of(&e["src"]) == src_ip
            && ip_of(&e["dst"]) == dst_ip
    })
}

fn gateway_of(ip: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ip) - 1)
}

#[test]
fn tcp_to_the_outside_comes_from_the_node_ip() {
    let sb = sandbox!("nat-tcp");
    let (_a, ns, a_ip) = sb.container("a");
    let _srv = tcp_echo(&sb.client, 80, "out").unwrap();

    let ans = tcp_request(&ns, sb.client_ip, 80, "hello out").unwrap();
    assert!(
        ans.starts_with("out peer=") && ans.ends_with("hello out"),
        "{ans}"
    );
    let peer = answer_peer(&ans).unwrap();
    assert_eq!(
        *peer.ip(),
        sb.uplink_ip,
        "the outside peer must see the node's uplink IP, not the container's {a_ip}"
    );

    let e = original_entry(&sb, "tcp", a_ip, sb.client_ip)
        .unwrap_or_else(|| panic!("no tcp conntrack entry from {a_ip}: {:?}", conntrack(&sb)));
    assert_eq!(ip_of(&e["translated_src"]), sb.uplink_ip, "{e}");
    assert_eq!(
        e["translated_src"].as_str().unwrap(),
        peer.to_string(),
        "conntrack shows the translated source the peer saw: {e}"
    );
    assert!(has_flag(&e, "masq"), "{e}");
    assert_eq!(e["dst"], format!("{}:80", sb.client_ip), "{e}");
    // Several connections at once stay apart.
    for i in 0..5 {
        let ans = tcp_request(&ns, sb.client_ip, 80, &format!("n{i}")).unwrap();
        assert!(ans.ends_with(&format!("n{i}")), "{ans}");
        assert_eq!(*answer_peer(&ans).unwrap().ip(), sb.uplink_ip);
    }
}

#[test]
fn udp_to_the_outside_comes_from_the_node_ip() {
    let sb = sandbox!("nat-udp");
    let (_a, ns, a_ip) = sb.container("a");
    let _srv = udp_echo(&sb.client, 53, "out").unwrap();
    let client_ip = sb.client_ip;
    // Two datagrams of one flow (same socket): same translated source both times.
    let (a1, a2) = in_ns(&ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        Ok((
            udp_exchange(&s, client_ip, 53, "one")?,
            udp_exchange(&s, client_ip, 53, "two")?,
        ))
    })
    .unwrap();
    assert!(a1.starts_with("out peer=") && a1.ends_with("one"), "{a1}");
    assert!(a2.ends_with("two"), "{a2}");
    let (p1, p2) = (answer_peer(&a1).unwrap(), answer_peer(&a2).unwrap());
    assert_eq!(
        *p1.ip(),
        sb.uplink_ip,
        "the outside peer must see the node's uplink IP, not the container's {a_ip}"
    );
    assert_eq!(p1, p2, "one UDP flow keeps one translated source");
    let e = original_entry(&sb, "udp", a_ip, sb.client_ip)
        .unwrap_or_else(|| panic!("no udp conntrack entry from {a_ip}: {:?}", conntrack(&sb)));
    assert_eq!(e["translated_src"].as_str().unwrap(), p1.to_string(), "{e}");
    assert!(has_flag(&e, "masq"), "{e}");
    assert!(e["packets"].as_u64().unwrap() >= 2, "{e}");
}

#[test]
fn ping_to_the_outside_comes_from_the_node_ip() {
    let sb = sandbox!("nat-icmp");
    let (_a, ns, a_ip) = sb.container("a");
    let sink = icmp_sink(&sb.client).unwrap();
    assert!(
        ping(&ns, sb.client_ip),
        "ping from the container to the outside got no answer"
    );
    let requests: Vec<Ipv4Addr> = eventually(Duration::from_secs(2), || {
        let r: Vec<Ipv4Addr> = sink
            .snapshot()
            .into_iter()
            .filter(|(_, icmp)| icmp[0] == 8)
            .map(|(src, _)| *src.ip())
            .collect();
        if r.is_empty() {
            anyhow::bail!("no echo request seen");
        }
        Ok(r)
    })
    .unwrap();
    assert!(
        requests.iter().all(|ip| *ip == sb.uplink_ip),
        "echo requests must come from the node's uplink IP {}, not {a_ip}: {requests:?}",
        sb.uplink_ip
    );
    let e = original_entry(&sb, "icmp", a_ip, sb.client_ip)
        .unwrap_or_else(|| panic!("no icmp conntrack entry from {a_ip}: {:?}", conntrack(&sb)));
    assert_eq!(ip_of(&e["translated_src"]), sb.uplink_ip, "{e}");
}

#[test]
fn udp_to_a_closed_outside_port_is_connection_refused() {
    let sb = sandbox!("nat-unreach");
    let (_a, ns, _) = sb.container("a");
    let client_ip = sb.client_ip;
    let got = in_ns(&ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect((client_ip, 9))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 64];
        let mut last = String::new();
        for _ in 0..4 {
            if let Err(e) = s.send(b"anyone?") {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    return Ok(Ok(()));
                }
                last = format!("send: {e}");
                continue;
            }
            match s.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(Ok(())),
                Err(e) => last = format!("recv: {e} ({:?})", e.kind()),
                Ok(n) => last = format!("unexpected answer of {n} bytes"),
            }
        }
        Ok(Err(last))
    })
    .unwrap();
    assert_eq!(
        got,
        Ok(()),
        "the ICMP port unreachable must reach the container as ECONNREFUSED"
    );
}

#[test]
fn three_containers_4500_connections_to_one_outside_port() {
    const PER: usize = 1500;
    let sb = sandbox!("nat-many");
    let limit = raise_nofile(20_000).unwrap();
    assert!(
        limit >= 10_000,
        "RLIMIT_NOFILE {limit} too low for this test"
    );
    let srv = tcp_mass_echo(&sb.client, 7000).unwrap();
    let ctrs: Vec<(String, String, Ipv4Addr)> =
        ["a", "b", "c"].iter().map(|s| sb.container(s)).collect();
    let started = Instant::now();
    // `opened`: every worker holds its connections; `go`: start moving bytes.
    let opened = Arc::new(Barrier::new(ctrs.len() + 1));
    let go = Arc::new(Barrier::new(ctrs.len() + 1));
    let client_ip = sb.client_ip;
    let workers: Vec<_> = ctrs
        .iter()
        .map(|(_, ns, _)| {
            let (ns, opened_b, go_b) = (ns.clone(), opened.clone(), go.clone());
            std::thread::spawn(move || {
                in_ns(&ns, move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut conns = Vec::with_capacity(PER);
                    let mut errors = Vec::new();
                    while conns.len() < PER && errors.len() < 20 && Instant::now() < deadline {
                        match TcpStream::connect_timeout(
                            &(client_ip, 7000).into(),
                            Duration::from_secs(5),
                        ) {
                            Ok(c) => conns.push(c),
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    let opened = conns.len();
                    // Everybody holds everything open before the first byte moves.
                    opened_b.wait();
                    go_b.wait();
                    let mut echoed = 0;
                    for c in conns.iter_mut() {
                        let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
                        if c.write_all(b"x").is_err() {
                            errors.push("write".into());
                        }
                    }
                    for c in conns.iter_mut() {
                        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                        let mut b = [0u8; 1];
                        match c.read_exact(&mut b) {
                            Ok(()) if b[0] == b'x' => echoed += 1,
                            Ok(()) => errors.push("wrong byte".into()),
                            Err(e) => errors.push(format!("read: {e}")),
                        }
                        if Instant::now() > deadline + Duration::from_secs(30) {
                            break;
                        }
                    }
                    errors.truncate(5);
                    Ok((opened, echoed, errors))
                })
            })
        })
        .collect();
    // Checks while all connections are open; asserted after `go` so that a failure does not
    // leave the workers waiting.
    opened.wait();
    let accepted = eventually(Duration::from_secs(15), || {
        let n = srv.snapshot().len();
        if n < ctrs.len() * PER {
            anyhow::bail!("{n} accepted");
        }
        Ok(n)
    });
    let seen = srv.snapshot();
    let open_entries = sb
        .tg(&["conntrack", "list", "--json"])
        .stdout
        .matches("\"original\"")
        .count();
    go.wait();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    for (r, (name, _, _)) in results.iter().zip(&ctrs) {
        let (opened, echoed, errors) = r.as_ref().unwrap();
        assert_eq!(
            *opened, PER,
            "{name}: only {opened} of {PER} connections opened: {errors:?}"
        );
        assert_eq!(
            *echoed, PER,
            "{name}: only {echoed} of {PER} echoed: {errors:?}"
        );
    }
    accepted.expect("the outside server accepted every connection");
    let foreign: Vec<_> = seen
        .iter()
        .filter(|(p, _)| *p.ip() != sb.uplink_ip)
        .collect();
    assert!(
        foreign.is_empty(),
        "the server saw non-node sources: {:?}",
        &foreign[..foreign.len().min(5)]
    );
    let mut ports: Vec<u16> = seen.iter().map(|(p, _)| p.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        ctrs.len() * PER,
        "every connection has its own translated source port"
    );
    assert!(
        open_entries >= ctrs.len() * PER,
        "conntrack lists only {open_entries} original-direction entries for {} open connections",
        ctrs.len() * PER
    );
    let st = sb.json(&["stats"]);
    for s in st.as_array().unwrap() {
        assert_eq!(s["drops"]["nat_exhausted"], 0, "{s}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn udp_entries_expire_after_their_timeout() {
    let sb = sandbox!(
        "nat-expire",
        &[
            "--ct-udp-timeout",
            "2",
            "--ct-gc-interval",
            "1",
            "--conntrack-max",
            "4096",
        ]
    );
    let (_a, ns, a_ip) = sb.container("a");
    let _srv = udp_echo(&sb.client, 53, "out").unwrap();
    let ans = udp_request(&ns, sb.client_ip, 53, 0, "tick").unwrap();
    assert!(ans.ends_with("tick"), "{ans}");
    let sent = Instant::now();
    let present = entries_of(&sb, a_ip);
    assert!(
        !present.is_empty(),
        "a UDP flow must show in conntrack right after the datagram"
    );
    for e in &present {
        assert!(e["idle_secs"].as_u64().unwrap() <= 1, "{e}");
    }
    let st = sb.json(&["status"]);
    assert_eq!(st["conntrack"]["max"], 4096, "{st}");
    assert!(
        st["conntrack"]["entries"].as_u64().unwrap() >= present.len() as u64,
        "{st}"
    );
    assert!(st["conntrack"]["created"].as_u64().unwrap() >= 1, "{st}");
    eventually(Duration::from_secs(6), || {
        let left = entries_of(&sb, a_ip);
        if !left.is_empty() {
            anyhow::bail!("still present after {:?}: {left:?}", sent.elapsed());
        }
        Ok(())
    })
    .unwrap();
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "entries vanished after {:?}, before their 2 s timeout",
        sent.elapsed()
    );
    let st = sb.json(&["status"]);
    assert!(
        st["conntrack"]["removed"].as_u64().unwrap() >= present.len() as u64,
        "expired entries are counted as removed: {st}"
    );
    // The flow works again afterwards.
    let ans = udp_request(&ns, sb.client_ip, 53, 0, "tock").unwrap();
    assert!(ans.ends_with("tock"), "{ans}");
}

/// A masqueraded TCP connection idle past its timeout (entries expired and removed) goes on
/// when the container speaks again: its next segment is picked up as Linux's conntrack does
/// (`nf_conntrack_tcp_loose`) and masqueraded with the port it had, so the peer's connection
/// continues.
#[test]
fn an_idle_masqueraded_tcp_connection_is_picked_up_after_expiry() {
    let sb = sandbox!(
        "nat-pickup",
        &["--ct-tcp-timeout", "2", "--ct-gc-interval", "1"]
    );
    let (_a, ns, a_ip) = sb.container("a");
    let _srv = tcp_echo(&sb.client, 7000, "out").unwrap();
    let client_ip = sb.client_ip;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<String>();
    let conn = std::thread::spawn(move || {
        in_ns(&ns, move || {
            let mut s = TcpStream::connect((client_ip, 7000))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut greeting = Vec::new();
            let mut byte = [0u8; 1];
            while s.read(&mut byte)? == 1 && byte[0] != b'\n' {
                greeting.push(byte[0]);
            }
            let mut exchange = |msg: &[u8]| -> anyhow::Result<Vec<u8>> {
                s.write_all(msg)?;
                let mut got = vec![0u8; msg.len()];
                s.read_exact(&mut got)?;
                Ok(got)
            };
            let one = exchange(b"one")?;
            back_tx.send(String::from_utf8_lossy(&greeting).into_owned())?;
            // Idle until the test saw the entries go.
            rx.recv()?;
            let two = exchange(b"two")?;
            Ok((one, two))
        })
    });
    let greeting = back_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(greeting.starts_with("out peer="), "{greeting}");
    assert!(!entries_of(&sb, a_ip).is_empty(), "the flow is tracked");
    eventually(Duration::from_secs(8), || {
        let left = entries_of(&sb, a_ip);
        if !left.is_empty() {
            anyhow::bail!("still present: {left:?}");
        }
        Ok(())
    })
    .unwrap();
    tx.send(()).unwrap();
    let (one, two) = conn.join().unwrap().unwrap();
    assert_eq!(one, b"one");
    assert_eq!(
        two, b"two",
        "the connection goes on after its entries expired"
    );
    let e = entries_of(&sb, a_ip);
    assert!(!e.is_empty(), "picked up: tracked again");
    let port = answer_peer(&greeting).unwrap().port();
    assert!(
        e.iter()
            .any(|e| e["translated_src"].as_str() == Some(&format!("{}:{port}", sb.uplink_ip))),
        "masqueraded with the port it had ({port}): {e:?}"
    );
}

#[test]
fn container_del_removes_its_entries() {
    let sb = sandbox!("nat-del");
    let (a, a_ns, a_ip) = sb.container("a");
    let (_b, b_ns, b_ip) = sb.container("b");
    let _u = udp_echo(&sb.client, 53, "out").unwrap();
    let _t = tcp_echo(&sb.client, 80, "out").unwrap();
    for ns in [&a_ns, &b_ns] {
        udp_request(ns, sb.client_ip, 53, 0, "x").unwrap();
        tcp_request(ns, sb.client_ip, 80, "x").unwrap();
    }
    assert!(!entries_of(&sb, a_ip).is_empty(), "{:?}", conntrack(&sb));
    let b_before = entries_of(&sb, b_ip).len();
    assert!(b_before > 0);
    sb.ok(&["container", "del", &a]);
    let left = entries_of(&sb, a_ip);
    assert!(
        left.is_empty(),
        "entries of a deleted container remain: {left:?}"
    );
    assert_eq!(
        entries_of(&sb, b_ip).len(),
        b_before,
        "another container's entries must stay"
    );
}

#[test]
fn masqueraded_tcp_flow_survives_kill9_and_restart() {
    let mut sb = sandbox!("nat-kill");
    let (_a, ns, _) = sb.container("a");
    let _srv = tcp_echo(&sb.client, 80, "out").unwrap();
    // 2 MiB in 32 KiB chunks over ~2.5 s, echoed back and compared byte for byte.
    let transfer = echo_transfer(&ns, sb.client_ip, 80, 64, 32768, Duration::from_millis(40));
    std::thread::sleep(Duration::from_millis(600));
    sb.kill_daemon();
    std::thread::sleep(Duration::from_millis(600));
    sb.start_daemon().unwrap();
    let Transfer {
        greeting,
        sent,
        got,
    } = transfer.join().unwrap().unwrap();
    let peer = answer_peer(&greeting).unwrap();
    assert_eq!(*peer.ip(), sb.uplink_ip, "{greeting}");
    assert_eq!(got.len(), sent.len(), "bytes lost across kill -9 + restart");
    assert!(got == sent, "echoed bytes differ");
    let ns = format!("tg-{}", sb.cname("a"));
    let ans = tcp_request(&ns, sb.client_ip, 80, "again").unwrap();
    assert!(ans.ends_with("again"), "{ans}");
    assert_eq!(*answer_peer(&ans).unwrap().ip(), sb.uplink_ip, "{ans}");
}

#[test]
fn containers_see_each_other_unmasqueraded_with_icc() {
    let sb = sandbox!("nat-icc", &["--icc"]);
    let (_a, a_ns, a_ip) = sb.container("a");
    let (_b, b_ns, b_ip) = sb.container("b");
    let _t = tcp_echo(&b_ns, 80, "B").unwrap();
    let _u = udp_echo(&b_ns, 53, "B").unwrap();
    let ans = tcp_request(&a_ns, b_ip, 80, "hi b").unwrap();
    assert!(ans.starts_with("B peer=") && ans.ends_with("hi b"), "{ans}");
    assert_eq!(
        *answer_peer(&ans).unwrap().ip(),
        a_ip,
        "container to container must keep the source IP"
    );
    let ans = udp_request(&a_ns, b_ip, 53, 0, "hi b").unwrap();
    assert_eq!(*answer_peer(&ans).unwrap().ip(), a_ip, "{ans}");
}

#[test]
fn node_addresses_see_the_container_ip() {
    let sb = sandbox!("nat-node");
    let (_a, a_ns, a_ip) = sb.container("a");
    let _t = tcp_echo(&sb.node, 7070, "node").unwrap();
    let _u = udp_echo(&sb.node, 7071, "node").unwrap();
    for dst in [gateway_of(a_ip), sb.uplink_ip] {
        let ans = tcp_request(&a_ns, dst, 7070, "hi node").unwrap();
        assert!(ans.starts_with("node peer="), "{ans}");
        assert_eq!(
            *answer_peer(&ans).unwrap().ip(),
            a_ip,
            "traffic to the node's own address {dst} must not be masqueraded"
        );
        let ans = udp_request(&a_ns, dst, 7071, 0, "hi node").unwrap();
        assert_eq!(*answer_peer(&ans).unwrap().ip(), a_ip, "via {dst}: {ans}");
    }
}

#[test]
fn conntrack_flush_name_removes_only_that_containers_entries() {
    let sb = sandbox!("nat-flush");
    let (a, a_ns, a_ip) = sb.container("a");
    let (b, b_ns, b_ip) = sb.container("b");
    let _u = udp_echo(&sb.client, 53, "out").unwrap();
    for ns in [&a_ns, &b_ns] {
        udp_request(ns, sb.client_ip, 53, 0, "x").unwrap();
    }
    assert!(!entries_of(&sb, a_ip).is_empty(), "{:?}", conntrack(&sb));
    let b_before = entries_of(&sb, b_ip);
    assert!(!b_before.is_empty(), "{:?}", conntrack(&sb));
    sb.ok(&["conntrack", "flush", &a]);
    assert!(
        entries_of(&sb, a_ip).is_empty(),
        "flush {a} left entries: {:?}",
        entries_of(&sb, a_ip)
    );
    assert_eq!(
        entries_of(&sb, b_ip).len(),
        b_before.len(),
        "flush {a} must not touch {b}'s entries"
    );
    // Traffic still flows after a flush (new entries).
    let ans = udp_request(&a_ns, sb.client_ip, 53, 0, "after").unwrap();
    assert!(ans.ends_with("after"), "{ans}");
    assert!(!entries_of(&sb, a_ip).is_empty());
    sb.ok(&["conntrack", "flush"]);
    assert!(
        entries_of(&sb, a_ip).is_empty() && entries_of(&sb, b_ip).is_empty(),
        "flush without a name empties the table: {:?}",
        conntrack(&sb)
    );
    let r = sb.tg(&["conntrack", "flush", "nosuch"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.starts_with("error:"), "{r:?}");
}

#[test]
fn stats_count_a_containers_traffic() {
    let sb = sandbox!("nat-stats");
    let (a, a_ns, _) = sb.container("a");
    let (b, _, _) = sb.container("b");
    let _t = tcp_echo(&sb.client, 80, "out").unwrap();
    let payload = "y".repeat(10_000);
    let ans = tcp_request(&a_ns, sb.client_ip, 80, &payload).unwrap();
    assert!(ans.ends_with(&payload));
    let s = eventually(Duration::from_secs(2), || {
        let s = sb.json(&["stats", &a]);
        if s["tx_bytes"].as_u64().unwrap_or(0) < 10_000 {
            anyhow::bail!("tx_bytes too low: {s}");
        }
        Ok(s)
    })
    .unwrap();
    assert_eq!(s["container"], a.as_str(), "{s}");
    assert!(s["tx_packets"].as_u64().unwrap() >= 3, "{s}");
    assert!(s["rx_packets"].as_u64().unwrap() >= 3, "{s}");
    assert!(s["rx_bytes"].as_u64().unwrap() >= 10_000, "{s}");
    assert!(s["conntrack_entries"].as_u64().is_some(), "{s}");
    for k in [
        "no_mapping",
        "internal",
        "policy",
        "icc",
        "spoof",
        "ratelimit",
        "nat_exhausted",
    ] {
        assert_eq!(s["drops"][k], 0, "drops.{k}: {s}");
    }
    // `internal` is the sum of the failed-step reasons, each reported on its own too.
    for k in [
        "csum_failed",
        "rewrite_failed",
        "conntrack_failed",
        "redirect_failed",
    ] {
        assert_eq!(s["drops"][k], 0, "drops.{k}: {s}");
    }
    assert!(s["drops"].get("malformed").is_none(), "retired: {s}");
    let all = sb.json(&["stats"]);
    let all = all
        .as_array()
        .expect("stats --json without a name is an array");
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter().any(|x| x["container"] == b.as_str()),
        "{b} missing from stats: {all:?}"
    );
    let st = sb.json(&["status"]);
    for k in ["entries", "max", "created", "removed", "evicted"] {
        assert!(
            st["conntrack"][k].as_u64().is_some(),
            "status conntrack.{k}: {st}"
        );
    }
}

/// The container's port unreachable about a port-mapped UDP flow must leave as the published
/// address (outer source and quoted destination), or the client's kernel cannot match it to
/// its socket.
#[test]
fn udp_to_a_closed_published_port_is_connection_refused() {
    let sb = sandbox!("nat-pm-unreach");
    let (a, _ns, _) = sb.container("a");
    // Nothing listens on the container's port 53.
    assert_eq!(sb.publish(&a, "5353:53/udp"), vec![5353]);
    let uplink_ip = sb.uplink_ip;
    let got = in_ns(&sb.client, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect((uplink_ip, 5353))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 64];
        let mut last = String::new();
        for _ in 0..4 {
            if let Err(e) = s.send(b"anyone?") {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    return Ok(Ok(()));
                }
                last = format!("send: {e}");
                continue;
            }
            match s.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(Ok(())),
                Err(e) => last = format!("recv: {e} ({:?})", e.kind()),
                Ok(n) => last = format!("unexpected answer of {n} bytes"),
            }
        }
        Ok(Err(last))
    })
    .unwrap();
    assert_eq!(
        got,
        Ok(()),
        "the container's port unreachable must reach the client as ECONNREFUSED"
    );
}

/// Sends UDP from namespace `ns` to `ip:port` (connected socket) until the kernel reports
/// ECONNREFUSED (an ICMP port unreachable matched the socket); otherwise what happened.
fn udp_refused(ns: &str, ip: std::net::Ipv4Addr, port: u16) -> Result<(), String> {
    in_ns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect((ip, port))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 64];
        let mut last = String::new();
        for _ in 0..4 {
            if let Err(e) = s.send(b"anyone?") {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    return Ok(Ok(()));
                }
                last = format!("send: {e}");
                continue;
            }
            match s.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(Ok(())),
                Err(e) => last = format!("recv: {e} ({:?})", e.kind()),
                Ok(n) => last = format!("unexpected answer of {n} bytes"),
            }
        }
        Ok(Err(last))
    })
    .unwrap()
}

/// A container calling a closed published UDP port of its own (self-hairpin: DNAT to itself,
/// SNAT to its gateway) gets the port unreachable its own kernel sends back as an error from
/// the published address about its call; another container calling it gets it too.
#[test]
fn udp_to_a_closed_published_port_of_its_own_is_connection_refused() {
    let sb = sandbox!("nat-self-unreach");
    let (a, ns, _) = sb.container("a");
    let (_b, b_ns, _) = sb.container("b");
    // Nothing listens on the container's port 53.
    assert_eq!(sb.publish(&a, "5353:53/udp"), vec![5353]);
    assert_eq!(
        udp_refused(&ns, sb.uplink_ip, 5353),
        Ok(()),
        "self-hairpin: the port unreachable must reach the caller as ECONNREFUSED"
    );
    assert_eq!(
        udp_refused(&b_ns, sb.uplink_ip, 5353),
        Ok(()),
        "hairpin: the port unreachable must reach the other container as ECONNREFUSED"
    );
}

#[test]
fn a_full_conntrack_table_evicts_the_oldest_and_new_flows_still_work() {
    // 256 slots; 300 UDP flows need 600 halves.
    let sb = sandbox!("nat-full", &["--conntrack-max", "256"]);
    let (_a, ns, _) = sb.container("a");
    let _srv = udp_echo(&sb.client, 53, "out").unwrap();
    let client_ip = sb.client_ip;
    let answered = in_ns(&ns, move || {
        let mut ok = 0;
        for i in 0..300u32 {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            if udp_exchange(&s, client_ip, 53, &format!("flow {i}"))?
                .ends_with(&format!("flow {i}"))
            {
                ok += 1;
            }
        }
        Ok(ok)
    })
    .unwrap();
    assert_eq!(
        answered, 300,
        "every new flow must work while the table is full"
    );
    let st = sb.json(&["status"]);
    let ct = &st["conntrack"];
    assert_eq!(ct["max"], 256);
    assert!(ct["entries"].as_u64().unwrap() <= 256, "{ct}");
    assert!(
        ct["evicted"].as_u64().unwrap() >= 300,
        "LRU evictions must be counted: {ct}"
    );
}

/// An upgrade whose object lengthens `TG_CT`'s values (the flows' cached next hops were added
/// to `CtEntry`) and `TG_EP_STATS`'s (the drop reasons were split) carries the pinned tables
/// over while a transfer runs. The node is left as an older Tollgate leaves it: the daemon
/// killed mid-transfer, `TG_CT` pinned with the old 56-byte values and `TG_EP_STATS` with the
/// old 96 bytes per CPU, both holding the live data, and another object's fingerprint. The restarted
/// daemon must move every entry into a table of the new layout before its programs use it:
/// a masqueraded flow's entries cannot be rebuilt from any other map, so a lost entry
/// breaks the transfer (and without the migration the new programs would not even load).
#[test]
fn an_upgrade_migrates_older_map_layouts_mid_transfer() {
    use aya::maps::{HashMap as BpfHash, MapData};
    use datapath_common::conntrack::{CtEntry, CtKey};
    const OLD_VALUE: usize = 56;
    let mut sb = sandbox!("nat-migrate");
    let (a, ns, _) = sb.container("a");
    let _srv = tcp_echo(&sb.client, 80, "out").unwrap();
    // 2 MiB in 32 KiB chunks over ~2.5 s, echoed back and compared byte for byte.
    let transfer = echo_transfer(&ns, sb.client_ip, 80, 64, 32768, Duration::from_millis(40));
    std::thread::sleep(Duration::from_millis(600));
    sb.kill_daemon();

    let maps = sb.bpffs.join("maps");
    let pin = maps.join("TG_CT");
    let old = maps.join("TG_CT_v1");
    let live: Vec<([u8; 16], [u8; size_of::<CtEntry>()])> = {
        let m = MapData::from_pin(&pin).unwrap();
        let m: BpfHash<_, [u8; size_of::<CtKey>()], [u8; size_of::<CtEntry>()]> =
            BpfHash::try_from(aya::maps::Map::LruHashMap(m)).unwrap();
        m.iter().map(Result::unwrap).collect()
    };
    assert!(live.len() >= 2, "the flow's entries: {}", live.len());
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>();
    sh(
        "bpftool",
        &[
            "map",
            "create",
            old.to_str().unwrap(),
            "type",
            "lru_hash",
            "key",
            "16",
            "value",
            &OLD_VALUE.to_string(),
            "entries",
            "262144",
            "name",
            "TG_CT",
        ],
    )
    .unwrap();
    for (k, v) in &live {
        let mut args = vec![
            "map",
            "update",
            "pinned",
            old.to_str().unwrap(),
            "key",
            "hex",
        ];
        let (k, v) = (hex(k), hex(&v[..OLD_VALUE]));
        args.extend(k.iter().map(String::as_str));
        args.extend(["value", "hex"]);
        args.extend(v.iter().map(String::as_str));
        sh("bpftool", &args).unwrap();
    }
    std::fs::rename(&old, &pin).unwrap();
    let tx_before = stats_to_old_layout(&maps);
    assert!(tx_before > 0, "the container's tx counter");
    for e in std::fs::read_dir(sb.bpffs.join("object")).unwrap() {
        std::fs::remove_dir(e.unwrap().path()).unwrap();
    }

    sb.start_daemon().unwrap();
    let log = sb.daemon_log();
    assert!(log.contains("older layout"), "no migration:\n{log}");
    assert!(log.contains("entries carried over"), "no copy:\n{log}");
    assert!(log.contains("TG_EP_STATS"), "stats not migrated:\n{log}");
    assert!(
        !maps.join("TG_CT_old").exists(),
        "the old table's pin stays"
    );
    let Transfer {
        greeting,
        sent,
        got,
    } = transfer.join().unwrap().unwrap();
    assert_eq!(*answer_peer(&greeting).unwrap().ip(), sb.uplink_ip);
    assert_eq!(got.len(), sent.len(), "bytes lost across the upgrade");
    assert!(got == sent, "echoed bytes differ");
    // The migrated table is the one the daemon now reads and the datapath writes.
    let flows = conntrack(&sb);
    assert!(
        flows.iter().any(|f| f["packets"].as_u64().unwrap_or(0) > 0),
        "{flows:?}"
    );
    // The per-CPU counters came over too, and go on counting (a request after the upgrade:
    // on a loaded machine the transfer may have finished while the daemon was down).
    tcp_request(&ns, sb.client_ip, 80, "after the upgrade").unwrap();
    let tx_after = sb.json(&["stats", &a])["tx_packets"].as_u64().unwrap();
    assert!(tx_after > tx_before, "tx_packets {tx_before} -> {tx_after}");
}

/// Replaces the pinned `TG_EP_STATS` with one of the layout before the drop reasons were split
/// (8 drop slots: 96 bytes per CPU) holding the live counters; returns the containers' total
/// `tx_packets` in it.
fn stats_to_old_layout(maps: &std::path::Path) -> u64 {
    use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
    use datapath_common::{endpoint::EpStats, maps::ENDPOINTS_MAX};
    const OLD: usize = 32 + 8 * 8;
    const NEW: usize = size_of::<EpStats>();
    let pin = maps.join("TG_EP_STATS");
    let old_pin = maps.join("TG_EP_STATS_v1");
    let live: Vec<(u32, Vec<[u8; NEW]>)> = {
        let m = MapData::from_pin(&pin).unwrap();
        let m: PerCpuArray<_, [u8; NEW]> = PerCpuArray::try_from(Map::PerCpuArray(m)).unwrap();
        (0..ENDPOINTS_MAX)
            .map(|i| (i, m.get(&i, 0).unwrap().to_vec()))
            .filter(|(_, v)| v.iter().any(|cpu| cpu.iter().any(|b| *b != 0)))
            .collect()
    };
    sh(
        "bpftool",
        &[
            "map",
            "create",
            old_pin.to_str().unwrap(),
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            &OLD.to_string(),
            "entries",
            &ENDPOINTS_MAX.to_string(),
            "name",
            "TG_EP_STATS",
        ],
    )
    .unwrap();
    let mut tx = 0;
    {
        let m = MapData::from_pin(&old_pin).unwrap();
        let mut m: PerCpuArray<_, [u8; OLD]> = PerCpuArray::try_from(Map::PerCpuArray(m)).unwrap();
        for (i, cpus) in &live {
            let old: Vec<[u8; OLD]> = cpus
                .iter()
                .map(|v| {
                    tx += u64::from_ne_bytes(v[16..24].try_into().unwrap());
                    v[..OLD].try_into().unwrap()
                })
                .collect();
            m.set(*i, PerCpuValues::try_from(old).unwrap(), 0).unwrap();
        }
    }
    std::fs::rename(&old_pin, &pin).unwrap();
    tx
}
