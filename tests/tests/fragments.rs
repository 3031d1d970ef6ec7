//! Fragmented datagrams through every translating path: 4,000-byte UDP datagrams and pings
//! over 1,500-byte MTU links arrive whole, in both directions (the datapath remembers a first
//! fragment's ports for the datagram's later fragments).

use std::net::Ipv4Addr;

use tollgate_tests::*;

/// A payload of `n` bytes that shows truncation or reordering.
fn payload(n: usize) -> String {
    (0..n)
        .map(|i| char::from(b'a' + u8::try_from(i % 26).unwrap()))
        .collect()
}

/// Sends `msg` from `ns` to `ip:port` and checks the whole echo came back, with the sender's
/// address as the server saw it; returns that address.
fn echo_whole(ns: &str, ip: Ipv4Addr, port: u16, msg: &str) -> Ipv4Addr {
    let a = udp_request(ns, ip, port, 0, msg)
        .unwrap_or_else(|e| panic!("no whole answer from {ip}:{port}: {e:#}"));
    assert!(
        a.ends_with(msg),
        "the datagram came back cut or changed ({} bytes instead of {})",
        a.len(),
        msg.len()
    );
    *answer_peer(&a).unwrap().ip()
}

fn ping_big(ns: &str, ip: Ipv4Addr) -> bool {
    sh(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "ping",
            "-c",
            "2",
            "-s",
            "4000",
            "-W",
            "2",
            "-q",
            &ip.to_string(),
        ],
    )
    .is_ok()
}

#[test]
fn fragmented_udp_and_icmp_cross_port_maps_masquerade_and_hairpin_whole() {
    let sb = sandbox!("frag");
    let (web, web_ns, _) = sb.container("web");
    let (_cli, cli_ns, _) = sb.container("cli");
    let _u = udp_echo(&web_ns, 53, "web").unwrap();
    sb.publish(&web, "5353:53/udp");
    let big = payload(4000);

    // Port map, client -> container and the container's answer back: both fragmented.
    let peer = echo_whole(&sb.client, sb.uplink_ip, 5353, &big);
    assert_eq!(
        peer, sb.client_ip,
        "the container sees the client's address"
    );

    // Masquerade, container -> outside and the answer back.
    let _c = udp_echo(&sb.client, 9999, "client").unwrap();
    let peer = echo_whole(&cli_ns, sb.client_ip, 9999, &big);
    assert_eq!(peer, sb.uplink_ip, "masqueraded to the node's address");
    assert!(
        ping_big(&cli_ns, sb.client_ip),
        "a 4,000-byte ping through masquerade"
    );

    // Hairpin: a container to another's published port on the node's address.
    echo_whole(&cli_ns, sb.uplink_ip, 5353, &big);

    let st = sb.json(&["status"]);
    assert_eq!(st["counters"]["drop_frag"], 0, "{}", st["counters"]);
    let stats = sb.json(&["stats"]);
    for s in stats.as_array().unwrap() {
        assert_eq!(s["drops"]["frag_no_head"], 0, "{s}");
    }
}
