//! `status`, `stats --watch` and the eBPF log forwarding, through the real CLI.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tollgate_tests::*;

#[test]
fn status_reports_programs_attach_points_maps_and_pins() {
    if !can_run() {
        return;
    }
    let sb = Sandbox::new("ob-status").unwrap();
    let (web, ns, _) = sb.container("web");
    let _t = tcp_echo(&ns, 80, "web").unwrap();
    sb.publish(&web, "8080:80");
    assert!(tcp_request(&sb.client, sb.uplink_ip, 8080, "x")
        .unwrap()
        .starts_with("web"));
    let st = sb.json(&["status"]);
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["uplink"], "up0");
    assert_eq!(st["netns"], sb.node.as_str());
    assert!(st["uptime_secs"].is_u64());
    for p in st["programs"].as_array().unwrap() {
        assert!(
            p["id"].as_u64().unwrap() > 0,
            "program without a kernel id: {p}"
        );
    }
    let wheres: Vec<String> = st["attach_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{} {}", a["program"], a["where"]))
        .collect();
    for want in [
        "from_uplink",
        "from_container",
        "to_container",
        "sock_bind4",
    ] {
        assert!(
            wheres.iter().any(|w| w.contains(want)),
            "{want} missing from {wheres:?}"
        );
    }
    assert!(
        wheres
            .iter()
            .any(|w| w.contains("to_container") && w.contains("egress")),
        "{wheres:?}"
    );
    assert!(
        st["maps"]["TG_CT"]["entries"].as_u64().unwrap() >= 2,
        "the flow's two conntrack halves: {}",
        st["maps"]
    );
    assert_eq!(st["maps"]["TG_PORTMAP"]["entries"], 1);
    let pins = std::path::PathBuf::from(st["pins"].as_str().unwrap());
    for sub in [
        "maps/TG_PORTMAP",
        "maps/TG_CT",
        "progs/from_uplink",
        "links/from_uplink@up0",
    ] {
        assert!(
            pins.join(sub).exists(),
            "{} not pinned",
            pins.join(sub).display()
        );
    }
    assert!(st["counters"]["dnat_uplink"].as_u64().unwrap() > 0);
    // The human form says the same things.
    let text = sb.ok(&["status"]);
    assert!(
        text.contains("from_container") && text.contains("TG_CT"),
        "{text}"
    );
}

#[test]
fn stats_watch_streams_counters_that_grow_with_traffic() {
    if !can_run() {
        return;
    }
    let sb = Sandbox::new("ob-watch").unwrap();
    let (web, ns, _) = sb.container("web");
    let _t = tcp_echo(&ns, 80, "web").unwrap();
    sb.publish(&web, "8080:80");
    let mut child = Command::new(tollgate_bin())
        .arg("--socket")
        .arg(&sb.socket)
        .args(["stats", &web, "--watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    for i in 0..20 {
        tcp_request(&sb.client, sb.uplink_ip, 8080, &format!("req {i}")).unwrap();
    }
    let start = Instant::now();
    let mut grown = false;
    while start.elapsed() < Duration::from_secs(10) {
        let v: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let rx = |v: &serde_json::Value| v[0]["rx_packets"].as_u64().unwrap();
        if rx(&v) >= rx(&first) + 20 * 3 {
            assert!(v[0]["tx_bytes"].as_u64().unwrap() > first[0]["tx_bytes"].as_u64().unwrap());
            grown = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        grown,
        "stats --watch never showed the 20 connections' packets"
    );
}

#[test]
fn ebpf_logs_reach_the_daemon_log_at_debug() {
    if !can_run() {
        return;
    }
    // The sandbox runs the daemon with TOLLGATE_LOG=debug: the programs' aya-log records about
    // new flows are forwarded into its log.
    let sb = Sandbox::new("ob-log").unwrap();
    let (web, ns, _) = sb.container("web");
    let _t = tcp_echo(&ns, 80, "web").unwrap();
    sb.publish(&web, "8080:80");
    tcp_request(&sb.client, sb.uplink_ip, 8080, "x").unwrap();
    let found = eventually(Duration::from_secs(5), || {
        let log = sb.daemon_log();
        if log.contains("uplink flow") && log.contains(&sb.client_ip.to_string()) {
            Ok(())
        } else {
            anyhow::bail!("no datapath log line yet")
        }
    });
    assert!(
        found.is_ok(),
        "daemon log lacks the datapath's flow record:\n{}",
        sb.daemon_log()
    );
}

/// `--metrics` is a TCP port that whoever reaches it may open connections to. Clients that
/// connect and send nothing are bounded: the daemon keeps at most 64 of them (one more is
/// closed at once), so they cannot take its file descriptors, its API keeps answering, and each
/// is closed once no request head came within 10 s, after which scrapes are served again.
#[test]
fn stalled_metrics_clients_are_bounded_and_closed() {
    const PORT: u16 = 9371;
    let sb = sandbox!("ob-metrics-bounds", &["--metrics", "127.0.0.1:9371"]);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], PORT).into();
    assert!(
        scrape_metrics(&sb.node, PORT).contains("tollgate_"),
        "a first scrape"
    );
    let pid = sb.pid().expect("daemon pid");
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    let stalled = in_ns(&sb.node, move || {
        (0..100)
            .map(|_| {
                Ok(std::net::TcpStream::connect_timeout(
                    &addr,
                    Duration::from_secs(2),
                )?)
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .unwrap();
    // Accepted, and the ones over the limit closed again.
    std::thread::sleep(Duration::from_millis(500));
    let held = fds().saturating_sub(before);
    assert!(
        held <= 64,
        "the daemon holds {held} more fds with 100 stalled metrics clients (limit 64)"
    );
    sb.ok(&["status"]);
    // Every stalled connection is closed by the daemon: the head timeout (10 s), or at once.
    let start = Instant::now();
    for mut s in stalled {
        use std::io::Read;
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            // EOF, or hyper's 408 before it.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "a stalled metrics connection still open after {:?}: {e}",
                start.elapsed()
            ),
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    assert!(
        scrape_metrics(&sb.node, PORT).contains("tollgate_"),
        "a scrape afterwards"
    );
}
