//! Regression cases: each disagreement the fuzzer found, reduced to a fixed scenario in the
//! base world (`World::base`), run by the `fuzz_regressions` test with conntrack and the
//! counters compared with the model after every case.

use super::{gen::Driver, model::Prog, wire::*, world::*};

pub struct Regression {
    pub name: &'static str,
    pub run: fn(&mut dyn Driver),
}

pub fn all() -> Vec<Regression> {
    vec![
        Regression {
            name: "a fresh SYN reusing a closing port-mapped tuple is a new connection: its \
                   reply half does not stay closing (found by the fuzzer, fixed in \
                   conntrack::create)",
            run: reuse_port_map,
        },
        Regression {
            name: "the same for a hairpin flow",
            run: reuse_hairpin,
        },
        Regression {
            name: "a routed flow's tuple used again after its entries expired starts fresh \
                   (no stale seen_reply)",
            run: expired_routed,
        },
        Regression {
            name: "an ICMP error from outside with bytes after its datagram: the quoted TCP \
                   header's checksum is not in the quote, the trailing bytes are not touched, \
                   the ICMP checksum stays right",
            run: quote_trailer_uplink,
        },
        Regression {
            name: "an ICMP error from a container with bytes after its datagram: likewise",
            run: quote_trailer_container,
        },
        Regression {
            name: "an ICMP error whose total length ends inside the quoted header is malformed \
                   (passes untouched), whatever follows in the frame",
            run: quote_cut_by_tot_len,
        },
        Regression {
            name: "a fragmented ping with identifier 0 leaving a container (known deviation, \
                   model::KNOWN_FRAG_ZERO_PORTS: its later fragments are frag_no_head today)",
            run: fragmented_ping_id_zero,
        },
        Regression {
            name: "a fragmented UDP datagram through a port map, its later fragments first \
                   (headless: passed to the node) and then in order (translated)",
            run: fragmented_port_map,
        },
    ]
}

fn send(d: &mut dyn Driver, prog: Prog, dev: &str, f: Vec<u8>, note: &str) -> Option<Vec<u8>> {
    d.send(prog, dev, f, note).map(|(_, out)| out)
}

fn reuse_port_map(d: &mut dyn Driver) {
    let syn = P::tcp(CLIENT, 40000, HOST, 8080, TCP_SYN);
    send(d, Prog::FromUplink, "tgt0", syn.build(), "SYN");
    let synack = P::tcp(C1, 80, CLIENT, 40000, TCP_SYN | TCP_ACK);
    send(d, Prog::FromContainer, "tgh1", synack.build(), "SYN-ACK");
    let fin = P::tcp(CLIENT, 40000, HOST, 8080, TCP_FIN | TCP_ACK);
    send(d, Prog::FromUplink, "tgt0", fin.build(), "FIN");
    send(
        d,
        Prog::FromUplink,
        "tgt0",
        syn.build(),
        "a fresh SYN, same tuple",
    );
    send(
        d,
        Prog::FromContainer,
        "tgh1",
        synack.build(),
        "its SYN-ACK",
    );
}

fn reuse_hairpin(d: &mut dyn Driver) {
    let syn = P::tcp(C2, 41000, HOST, 8080, TCP_SYN);
    send(d, Prog::FromContainer, "tgh2", syn.build(), "SYN");
    let synack = P::tcp(C1, 80, C2, 41000, TCP_SYN | TCP_ACK);
    send(d, Prog::FromContainer, "tgh1", synack.build(), "SYN-ACK");
    let rst = P::tcp(C2, 41000, HOST, 8080, TCP_RST);
    send(d, Prog::FromContainer, "tgh2", rst.build(), "RST");
    send(
        d,
        Prog::FromContainer,
        "tgh2",
        syn.build(),
        "a fresh SYN, same tuple",
    );
    send(
        d,
        Prog::FromContainer,
        "tgh1",
        synack.build(),
        "its SYN-ACK",
    );
}

fn expired_routed(d: &mut dyn Driver) {
    let syn = P::tcp(CLIENT, 45000, C3, 8000, TCP_SYN);
    send(
        d,
        Prog::FromUplink,
        "tgt0",
        syn.build(),
        "SYN to c3's address",
    );
    let synack = P::tcp(C3, 8000, CLIENT, 45000, TCP_SYN | TCP_ACK);
    send(d, Prog::FromContainer, "tgh3", synack.build(), "SYN-ACK");
    for (k, _) in d.entries() {
        d.age(k);
    }
    send(
        d,
        Prog::FromUplink,
        "tgt0",
        syn.build(),
        "a SYN on the expired tuple",
    );
    send(
        d,
        Prog::FromContainer,
        "tgh3",
        synack.build(),
        "its SYN-ACK",
    );
}

/// A masqueraded TCP flow from c1; returns the NAT port.
fn masq_tcp(d: &mut dyn Driver) -> Option<u16> {
    let syn = P::tcp(C1, 40000, CLIENT, 443, TCP_SYN);
    let out = send(
        d,
        Prog::FromContainer,
        "tgh1",
        syn.build(),
        "masqueraded SYN",
    )?;
    Some(be16_at(&out, 34))
}

fn quote_trailer_uplink(d: &mut dyn Driver) {
    let Some(p) = masq_tcp(d) else { return };
    let left = P::tcp(HOST, p, CLIENT, 443, TCP_SYN);
    let mut e = P::icmp_error(PEER9, HOST, 3, 4, left.ip_bytes()[..28].to_vec()).build();
    e.extend_from_slice(&[0xaa; 12]);
    send(
        d,
        Prog::FromUplink,
        "tgt0",
        e,
        "frag needed, 8 bytes quoted, 12 trailing",
    );
}

fn quote_trailer_container(d: &mut dyn Driver) {
    let syn = P::tcp(CLIENT, 40000, HOST, 8080, TCP_SYN);
    let Some(got) = send(d, Prog::FromUplink, "tgt0", syn.build(), "SYN") else {
        return;
    };
    let mut e = P::icmp_error(C1, CLIENT, 3, 3, got[14..14 + 28].to_vec()).build();
    e.extend_from_slice(&[0x55; 16]);
    send(
        d,
        Prog::FromContainer,
        "tgh1",
        e,
        "port unreachable, 16 trailing",
    );
}

fn quote_cut_by_tot_len(d: &mut dyn Driver) {
    let Some(p) = masq_tcp(d) else { return };
    let left = P::tcp(HOST, p, CLIENT, 443, TCP_SYN);
    let mut e = P::icmp_error(PEER9, HOST, 11, 0, left.ip_bytes()[..28].to_vec()).build();
    // The datagram ends 11 bytes into the quoted header.
    put16(&mut e, 16, 20 + 8 + 11);
    put16(&mut e, 24, 0);
    let c = datapath_common::csum::checksum(&e[14..34]);
    put16(&mut e, 24, c);
    send(
        d,
        Prog::FromUplink,
        "tgt0",
        e,
        "time exceeded, tot_len short of the quote",
    );
}

fn fragmented_ping_id_zero(d: &mut dyn Driver) {
    let mut ping = P::echo(C1, CLIENT, ICMP_ECHO, 0);
    if let L4::Icmp { payload, .. } = &mut ping.l4 {
        *payload = vec![0x61; 40];
    }
    for (i, f) in fragments(&ping, 16).into_iter().enumerate() {
        send(d, Prog::FromContainer, "tgh1", f, &format!("fragment {i}"));
    }
}

fn fragmented_port_map(d: &mut dyn Driver) {
    let mut p = P::udp(CLIENT, 40001, HOST, 5353);
    if let L4::Udp { payload, .. } = &mut p.l4 {
        *payload = vec![0x62; 40];
    }
    p.id = 0x4242;
    let frames = fragments(&p, 16);
    for f in frames.iter().rev() {
        send(d, Prog::FromUplink, "tgt0", f.clone(), "last first");
    }
    for f in frames {
        send(d, Prog::FromUplink, "tgt0", f, "in order");
    }
}
