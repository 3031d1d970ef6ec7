//! Published ports are kept out of the node namespace's ephemeral port range
//! (`net.ipv4.ip_local_reserved_ports` of the node namespace, never the root one's), so no
//! node-originated connection uses one as its source port; the user's own reserved ports stay
//! through publish, unpublish, restart, container removal and `tollgate reset`.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use tollgate_tests::*;

const RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// The reserved ports of namespace `ns` (the sysctl's comma-separated ports and ranges).
fn reserved(ns: &str) -> BTreeSet<u16> {
    // One read from offset 0: the kernel answers a later offset with end-of-file, and
    // `read_to_string` starts with a 32-byte probe.
    let s = in_ns(ns, || {
        let mut f = std::fs::File::open(RESERVED)?;
        let mut buf = vec![0u8; 512 << 10];
        let n = std::io::Read::read(&mut f, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    })
    .unwrap();
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        out.extend(lo.parse::<u16>().unwrap()..=hi.parse::<u16>().unwrap());
    }
    out
}

fn set(v: &[u16]) -> BTreeSet<u16> {
    v.iter().copied().collect()
}

/// Source ports of as many TCP connections from namespace `ns` to `ip:port` as can be open at
/// once (all held until the ephemeral range is exhausted), and of as many UDP sockets bound
/// to port 0 as the range allows; returns (TCP ports, UDP ports).
fn ephemeral_ports(ns: &str, ip: Ipv4Addr, port: u16) -> (Vec<u16>, Vec<u16>) {
    in_ns(ns, move || {
        let to = SocketAddr::from((ip, port));
        let mut tcp = Vec::new();
        let mut held = Vec::new();
        for _ in 0..64 {
            match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
                Ok(s) => {
                    tcp.push(s.local_addr()?.port());
                    held.push(s);
                }
                // EADDRNOTAVAIL: every usable port of the range is taken.
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let mut udp = Vec::new();
        let mut socks = Vec::new();
        for _ in 0..64 {
            // Binding port 0 picks an ephemeral port, or fails once none is left.
            match UdpSocket::bind("0.0.0.0:0") {
                Ok(s) => {
                    s.connect(to)?;
                    udp.push(s.local_addr()?.port());
                    socks.push(s);
                }
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok((tcp, udp))
    })
    .unwrap()
}

#[test]
fn published_ports_are_never_a_node_connections_source_port() {
    let mut sb = sandbox!("pm-ephem");
    let node = sb.node.clone();
    // In the node namespace only: a ten-port ephemeral range, and a port the user reserved.
    in_ns(&node, || {
        std::fs::write(RANGE, "40000 40009\n")?;
        std::fs::write(RESERVED, "40009\n")?;
        Ok(())
    })
    .unwrap();
    let root_before = std::fs::read_to_string(RESERVED).unwrap();
    // One server per phase: the ports a phase used linger in TIME_WAIT towards its server.
    let _srv: Vec<_> = (7000..=7002)
        .map(|p| tcp_echo(&sb.client, p, "srv").unwrap())
        .collect();
    let (web, ns, _) = sb.container("web");
    let _web = tcp_echo(&ns, 80, "web").unwrap();
    sb.publish(&web, "40003:80");
    sb.publish(&web, "40005:53/udp");
    sb.publish(&web, &format!("{}:40007:81", sb.uplink_ip));
    // Already the user's: published, but not Tollgate's to remove later.
    sb.publish(&web, "40009:82");
    let published = set(&[40003, 40005, 40007, 40009]);
    assert_eq!(
        reserved(&node),
        published,
        "every published port, TCP and UDP, wildcard and host-IP-specific, is reserved"
    );

    let (tcp, udp) = ephemeral_ports(&node, sb.client_ip, 7000);
    assert_eq!(
        tcp.iter().copied().collect::<BTreeSet<_>>(),
        set(&[40000, 40001, 40002, 40004, 40006, 40008]),
        "node TCP connections use every free port of the range and no published one: {tcp:?}"
    );
    assert!(
        udp.iter().all(|p| !published.contains(p)) && !udp.is_empty(),
        "node UDP sockets never get a published port: {udp:?}"
    );
    // And node connections work (their replies are not taken for a port map's packets).
    let a = tcp_request(&node, sb.client_ip, 7001, "from node").unwrap();
    assert!(
        a.starts_with("srv peer=") && a.ends_with("from node"),
        "{a}"
    );
    // The mapped port itself still answers.
    let a = tcp_request(&sb.client, sb.uplink_ip, 40003, "in").unwrap();
    assert!(a.starts_with("web peer="), "{a}");

    sb.ok(&["port", "del", &web, "40003"]);
    assert_eq!(reserved(&node), set(&[40005, 40007, 40009]));
    let (tcp, _) = ephemeral_ports(&node, sb.client_ip, 7002);
    assert!(
        tcp.contains(&40003),
        "an unpublished port is ephemeral again: {tcp:?}"
    );
    sb.ok(&["port", "del", &web, "40009"]);
    assert_eq!(
        reserved(&node),
        set(&[40005, 40007, 40009]),
        "the user's own entry stays when its port is unpublished"
    );

    // A restart keeps the set (and remembers which entries are Tollgate's).
    sb.kill_daemon();
    sb.start_daemon().unwrap();
    assert_eq!(reserved(&node), set(&[40005, 40007, 40009]));

    sb.ok(&["container", "del", &web]);
    assert_eq!(
        reserved(&node),
        set(&[40009]),
        "a removed container's ports are released"
    );

    let (other, _, _) = sb.container("other");
    sb.publish(&other, "40001:80");
    assert_eq!(reserved(&node), set(&[40001, 40009]));
    sb.daemon.teardown();
    assert_eq!(
        reserved(&node),
        set(&[40009]),
        "reset removes Tollgate's entries and keeps the user's"
    );
    assert_eq!(
        std::fs::read_to_string(RESERVED).unwrap(),
        root_before,
        "the root namespace's sysctl is never touched"
    );
}

/// A list longer than 32 bytes (the first read `read_to_string` makes) is read whole: with 20
/// published ports, unpublishing half of them and a restart leave exactly the other half and
/// the user's own port reserved.
#[test]
fn a_long_list_is_read_and_kept_whole() {
    let mut sb = sandbox!("resv-long");
    let node = sb.node.clone();
    in_ns(&node, || {
        std::fs::write(RESERVED, "9999\n")?;
        Ok(())
    })
    .unwrap();
    let (web, _, _) = sb.container("web");
    let ports: Vec<u16> = (0..20).map(|i| 30000 + 3 * i).collect();
    let specs: Vec<String> = ports.iter().map(|p| format!("{p}:80")).collect();
    let mut args = vec!["port", "add", web.as_str()];
    args.extend(specs.iter().map(String::as_str));
    sb.ok(&args);
    let mut want: BTreeSet<u16> = ports.iter().copied().chain([9999]).collect();
    assert_eq!(reserved(&node), want);
    let gone: Vec<String> = ports[..10].iter().map(ToString::to_string).collect();
    let mut args = vec!["port", "del", web.as_str()];
    args.extend(gone.iter().map(String::as_str));
    sb.ok(&args);
    for p in &ports[..10] {
        want.remove(p);
    }
    assert_eq!(reserved(&node), want, "after unpublishing half");
    sb.kill_daemon();
    sb.start_daemon().unwrap();
    assert_eq!(reserved(&node), want, "after a restart");
}
