//! Scenarios: short sequences of frames about one flow (or unrelated single frames), each
//! frame possibly mutated. Later frames are built from what the datapath put out earlier
//! (an answer swaps the translated frame's ends, an ICMP error quotes it), so flows go the
//! way real ones do: port maps from the uplink, masquerade, hairpin, self-hairpin, plain
//! tracked flows, untracked protocols, and ICMP errors about each in both directions.
//!
//! Mutation classes (`mutate`, `mutate_bytes`): truncation at and around every header
//! boundary, IPv4 options (NOPs or garbage, up to IHL 15), IHL/version/total length
//! overrides (too small, too large, past the frame), trailing bytes after the datagram,
//! fragments (MF, offsets), TTL 0/1/2, odd TCP flags (none, SYN+FIN, SYN+RST, all) and data
//! offsets, TCP options, UDP without checksum, bad IPv4 and L4 checksums, other ethertypes
//! (ARP, IPv6, VLAN), random byte overwrites, ICMP types and codes, and ICMP errors quoting
//! anything (cut at any length, with options, garbage, mutated quotes). Conntrack itself is
//! disturbed too: halves aged past their timeout or deleted (LRU loss).

use datapath_common::proto;

use super::{
    model::{Ent, Key, Prog},
    rng::Rng,
    wire::*,
    world::*,
};

/// What a scenario drives: runs a case (model vs program) and disturbs conntrack.
pub trait Driver {
    /// Runs `prog` on `frame` arriving on `dev`. The program's verdict and output frame
    /// (`None`: refused by the kernel, or the scenario already failed).
    fn send(&mut self, prog: Prog, dev: &str, frame: Vec<u8>, note: &str)
        -> Option<(u32, Vec<u8>)>;
    /// Marks conntrack entry `k` idle past its timeout.
    fn age(&mut self, k: Key);
    /// Deletes conntrack entry `k` (an LRU eviction).
    fn lose(&mut self, k: Key);
    /// Makes entry `k`'s idle clock two seconds old (not expired): its next packet syncs the
    /// flow's other half (`needs_sync`).
    fn stale(&mut self, k: Key);
    /// The entries the model expects in `TG_CT` now.
    fn entries(&self) -> Vec<(Key, Ent)>;
    /// The world of this epoch.
    fn world(&self) -> &World;
}

/// Where a frame from `addr` enters: its container's veth, or the uplink.
fn entry(w: &World, addr: [u8; 4]) -> (Prog, &'static str) {
    match w.endpoint(addr) {
        Some(e) => (Prog::FromContainer, e.dev),
        None => (Prog::FromUplink, "tgt0"),
    }
}

/// Sends `p` (mutated with probability `pm`) where `src` would send it from.
fn send_p(r: &mut Rng, d: &mut dyn Driver, p: &P, pm: f64, note: &str) -> Option<(u32, Vec<u8>)> {
    let (prog, dev) = entry(d.world(), p.src);
    let (frame, m) = if r.chance(pm) {
        mutate(r, p.clone())
    } else {
        (p.build(), String::new())
    };
    let note = if m.is_empty() {
        note.to_string()
    } else {
        format!("{note} [{m}]")
    };
    d.send(prog, dev, frame, &note)
}

/// One scenario: mostly one flow (or a few single frames); sometimes several flows of any
/// kinds one after the other on the same conntrack table, or a crowd of flows to one peer.
pub fn scenario(r: &mut Rng, d: &mut dyn Driver) {
    let n = if r.chance(0.15) { 2 + r.below(3) } else { 1 };
    for _ in 0..n {
        match r.below(100) {
            0..=20 => inbound(r, d),
            21..=40 => masquerade(r, d),
            41..=51 => hairpin(r, d),
            52..=62 => plain(r, d),
            63..=67 => untracked(r, d),
            68..=74 => crowd(r, d),
            _ => singles(r, d),
        }
    }
}

/// Several containers' flows to one peer and port (masquerade ports allocated side by side,
/// running out in a small range), each going a few steps.
fn crowd(r: &mut Rng, d: &mut dyn Driver) {
    let w = d.world().clone();
    let peer = *r.pick(OUTSIDE);
    let (dport, proto) = (port(r), *r.pick(&[proto::TCP, proto::UDP, proto::ICMP]));
    for _ in 0..2 + r.below(5) {
        let ep = *r.pick(&w.eps);
        let sport = if r.chance(0.5) { 40_000 } else { r.u16() };
        let p = first_packet(proto, ep.ip, sport, peer, dport, r);
        let steps = r.below(3);
        flow_steps(r, d, &p, Prog::FromContainer, ep.dev, steps);
    }
}

fn port(r: &mut Rng) -> u16 {
    if r.chance(0.6) {
        *r.pick(PORTS)
    } else {
        r.u16()
    }
}

fn first_packet(proto: u8, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, r: &mut Rng) -> P {
    match proto {
        proto::TCP => {
            let flags = match r.below(10) {
                0..=6 => TCP_SYN,
                7 => TCP_ACK,
                8 => TCP_PSH | TCP_ACK,
                _ => r.u8(),
            };
            P::tcp(src, sport, dst, dport, flags)
        }
        proto::UDP => P::udp(src, sport, dst, dport),
        _ => P::echo(src, dst, ICMP_ECHO, if r.chance(0.1) { 0 } else { sport }),
    }
}

/// A port-mapped (or routed, or unpublished) flow opened from outside.
fn inbound(r: &mut Rng, d: &mut dyn Driver) {
    let w = d.world().clone();
    // Cluster mode: now and then a client that is another node's container, unmasqueraded
    // (its node's SNAT off): the container's answers go to `to_remote`, which carries only
    // plain flows.
    let client = if !w.remotes.is_empty() && r.chance(0.15) {
        *r.pick(&[REMOTE5, REMOTE7])
    } else {
        *r.pick(OUTSIDE)
    };
    let (dst, dport, proto) = match r.below(10) {
        0..=6 => {
            let m = *r.pick(&w.maps);
            let host = if m.host == [0; 4] {
                *r.pick(&[HOST, HOST, GW1, LOOPBACK, UPLINK_ADDR])
            } else {
                m.host
            };
            (host, m.port, m.proto)
        }
        7 => (
            *r.pick(CONTAINERS),
            port(r),
            *r.pick(&[proto::TCP, proto::UDP, proto::ICMP]),
        ),
        _ => (
            *r.pick(NODE),
            port(r),
            *r.pick(&[proto::TCP, proto::UDP, proto::ICMP]),
        ),
    };
    let p = first_packet(
        proto,
        client,
        30_000 + r.below(30_000) as u16,
        dst,
        dport,
        r,
    );
    flow(r, d, &p, Prog::FromUplink, "tgt0");
}

/// A container's flow to the outside.
fn masquerade(r: &mut Rng, d: &mut dyn Driver) {
    let w = d.world().clone();
    let ep = *r.pick(&w.eps);
    let dst = *r.pick(OUTSIDE);
    let proto = *r.pick(&[proto::TCP, proto::TCP, proto::UDP, proto::UDP, proto::ICMP]);
    let p = first_packet(
        proto,
        ep.ip,
        30_000 + r.below(30_000) as u16,
        dst,
        port(r),
        r,
    );
    flow(r, d, &p, Prog::FromContainer, ep.dev);
}

/// A container's flow to a published port (another container's, or its own).
fn hairpin(r: &mut Rng, d: &mut dyn Driver) {
    let w = d.world().clone();
    let ep = *r.pick(&w.eps);
    let m = *r.pick(&w.maps);
    let host = if m.host == [0; 4] {
        *r.pick(&[HOST, HOST, GW1, GW2, LOOPBACK])
    } else {
        m.host
    };
    let p = first_packet(
        m.proto,
        ep.ip,
        30_000 + r.below(30_000) as u16,
        host,
        m.port,
        r,
    );
    flow(r, d, &p, Prog::FromContainer, ep.dev);
}

/// Untranslated flows: container to container, to the node, to the pool; outside straight
/// to a container's address.
fn plain(r: &mut Rng, d: &mut dyn Driver) {
    let w = d.world().clone();
    let proto = *r.pick(&[proto::TCP, proto::UDP, proto::ICMP]);
    if r.chance(0.25) {
        let p = first_packet(
            proto,
            *r.pick(OUTSIDE),
            r.u16(),
            *r.pick(CONTAINERS),
            port(r),
            r,
        );
        return flow(r, d, &p, Prog::FromUplink, "tgt0");
    }
    let ep = *r.pick(&w.eps);
    if !w.remotes.is_empty() && r.chance(0.3) {
        // Cluster mode: a container of another node.
        let dst = *r.pick(&[REMOTE5, REMOTE5, REMOTE7, [10, 254, 2, 200]]);
        let p = first_packet(
            proto,
            ep.ip,
            30_000 + r.below(30_000) as u16,
            dst,
            port(r),
            r,
        );
        return flow(r, d, &p, Prog::FromContainer, ep.dev);
    }
    let dst = *r.pick(&[
        C1,
        C2,
        C3,
        C4,
        GW1,
        GW3,
        HOST,
        HOST_SPECIFIC,
        POOL_OTHER,
        GHOST,
        LOOPBACK,
        UNROUTED,
        REMOTE5,
        REMOTE5,
        REMOTE7,
    ]);
    let p = first_packet(
        proto,
        ep.ip,
        30_000 + r.below(30_000) as u16,
        dst,
        port(r),
        r,
    );
    flow(r, d, &p, Prog::FromContainer, ep.dev);
}

/// Protocols conntrack does not track, judged per packet.
fn untracked(r: &mut Rng, d: &mut dyn Driver) {
    let w = d.world().clone();
    for _ in 0..=r.below(4) {
        let src = if r.chance(0.8) {
            r.pick(&w.eps).ip
        } else {
            *r.pick(OUTSIDE)
        };
        let dst = *r.pick(ALL);
        let p = match r.below(4) {
            0 => P::raw(src, dst, IPPROTO_GRE),
            1 => P::raw(src, dst, IPPROTO_SCTP),
            2 => P::raw(src, dst, r.u8()),
            _ => {
                let mut p = P::echo(src, dst, *r.pick(&[13, 14, 5, 4, 9, 10, 42, 255]), r.u16());
                if let L4::Icmp { code, .. } = &mut p.l4 {
                    *code = r.u8();
                }
                p
            }
        };
        send_p(r, d, &p, 0.2, "untracked protocol");
    }
}

/// Single unrelated frames, anything to any program, heavily mutated.
fn singles(r: &mut Rng, d: &mut dyn Driver) {
    for _ in 0..=r.below(5) {
        let src = *r.pick(ALL);
        let dst = *r.pick(ALL);
        let p = match r.below(6) {
            0 | 1 => first_packet(proto::TCP, src, port(r), dst, port(r), r),
            2 => first_packet(proto::UDP, src, port(r), dst, port(r), r),
            3 => first_packet(proto::ICMP, src, port(r), dst, 0, r),
            4 => {
                let inner = first_packet(
                    *r.pick(&[proto::TCP, proto::UDP, proto::ICMP]),
                    *r.pick(ALL),
                    port(r),
                    *r.pick(ALL),
                    port(r),
                    r,
                );
                error_about(r, src, dst, &inner.ip_bytes())
            }
            _ => P::raw(src, dst, r.u8()),
        };
        let (frame, m) = if r.chance(0.7) {
            mutate(r, p)
        } else {
            (p.build(), String::new())
        };
        let (prog, dev) = match r.below(10) {
            0..=3 => (Prog::FromUplink, "tgt0"),
            4..=7 => (
                Prog::FromContainer,
                if r.chance(0.9) {
                    // Mostly the source's own veth (else: spoofing).
                    match d.world().endpoint(src) {
                        Some(e) if r.chance(0.7) => e.dev,
                        _ => *r.pick(DEVS),
                    }
                } else {
                    "tgt1"
                },
            ),
            8 => (Prog::ToContainer, *r.pick(DEVS)),
            _ => (Prog::FromOverlay, "tgt0"),
        };
        d.send(prog, dev, frame, &format!("single [{m}]"));
    }
}

/// An ICMP error from `src` to `dst` quoting `ip` (an IPv4 packet), cut the usual way
/// (header + 8 bytes) or another.
fn error_about(r: &mut Rng, src: [u8; 4], dst: [u8; 4], ip: &[u8]) -> P {
    let ihl = if ip.is_empty() {
        20
    } else {
        usize::from(ip[0] & 0x0f) * 4
    };
    let len = match r.below(12) {
        0..=5 => ihl + 8,
        6 | 7 => ip.len(),
        8 => ihl + 4,
        9 => ihl + 6,
        10 => ihl,
        _ => r.below(ip.len() as u64 + 8) as usize,
    };
    let mut q = ip[..len.min(ip.len())].to_vec();
    if r.chance(0.1) {
        mutate_bytes(r, &mut q, 0);
    }
    let (t, c) = match r.below(10) {
        0..=4 => (ICMP_DEST_UNREACH, *r.pick(&[0, 1, 3, 4, 13])),
        5..=7 => (ICMP_TIME_EXCEEDED, 0),
        8 => (ICMP_PARAMETER_PROB, 0),
        _ => (ICMP_DEST_UNREACH, r.u8()),
    };
    P::icmp_error(src, dst, t, c, q)
}

/// A flow's life from its first packet `p0` (sent by side A through `prog`/`dev`): more of
/// A's packets, B's answers to what came out, ICMP errors about either direction from
/// either end or a router, FIN/RST and a fresh SYN on the closing tuple, conntrack aging
/// and loss, duplicates; any frame possibly mutated.
fn flow(r: &mut Rng, d: &mut dyn Driver, p0: &P, prog: Prog, dev: &'static str) {
    let steps = 1 + r.below(9);
    flow_steps(r, d, p0, prog, dev, steps);
}

fn flow_steps(r: &mut Rng, d: &mut dyn Driver, p0: &P, prog: Prog, dev: &'static str, steps: u64) {
    let pm = 0.15;
    let mut a_last = p0.clone();
    let Some((ret, out)) = d.send(prog, dev, p0.build(), "opens") else {
        return;
    };
    // What came out of A's side last, and of B's.
    let mut a_out = (ret != 2).then(|| P::parse(&out)).flatten();
    let mut b_last: Option<P> = None;
    let mut b_out: Option<P> = None;
    for _ in 0..steps {
        match r.below(100) {
            // A again.
            0..=19 => {
                let mut p = a_last.clone();
                next_segment(r, &mut p);
                if let Some((ret, out)) = send_p(r, d, &p, pm, "A again") {
                    a_out = (ret != 2).then(|| P::parse(&out)).flatten().or(a_out);
                }
                a_last = p;
            }
            // B answers what it got.
            20..=44 => {
                let Some(got) = a_out.clone() else { continue };
                let flags = *r.pick(&[
                    TCP_SYN | TCP_ACK,
                    TCP_ACK,
                    TCP_ACK,
                    TCP_PSH | TCP_ACK,
                    TCP_FIN | TCP_ACK,
                    TCP_RST,
                    TCP_RST | TCP_ACK,
                ]);
                let p = got.answer(flags);
                let res = if d.world().is_local(p.src) && d.world().endpoint(p.dst).is_some() {
                    // The node answering a container: through the container's veth egress.
                    let dev = d.world().endpoint(p.dst).map_or("tgh1", |e| e.dev);
                    d.send(Prog::ToContainer, dev, p.build(), "node answers")
                } else {
                    send_p(r, d, &p, pm, "B answers")
                };
                if let Some((ret, out)) = res {
                    b_out = (ret != 2).then(|| P::parse(&out)).flatten().or(b_out);
                }
                b_last = Some(p);
            }
            // B again (after having answered once).
            45..=51 => {
                let Some(mut p) = b_last.clone() else {
                    continue;
                };
                next_segment(r, &mut p);
                if let Some((ret, out)) = send_p(r, d, &p, pm, "B again") {
                    b_out = (ret != 2).then(|| P::parse(&out)).flatten().or(b_out);
                }
                b_last = Some(p);
            }
            // An ICMP error about A's packet as it came out: from B, or from a router on B's
            // side, back towards A.
            52..=63 => {
                let Some(got) = a_out.clone() else { continue };
                let from = if r.chance(0.5) || d.world().endpoint(got.dst).is_some() {
                    got.dst
                } else {
                    *r.pick(&[PEER9, PEER8, FAR, UNROUTED])
                };
                let mut q = got.clone();
                q.ttl = q.ttl.saturating_sub(1);
                let e = error_about(r, from, got.src, &q.ip_bytes());
                send_p(r, d, &e, pm, "error about A's packet");
            }
            // An ICMP error about B's answer as it came out, towards B.
            64..=73 => {
                let Some(got) = b_out.clone() else { continue };
                let from = if r.chance(0.5) || d.world().endpoint(got.dst).is_some() {
                    got.dst
                } else {
                    *r.pick(&[PEER9, PEER8, FAR])
                };
                let e = error_about(r, from, got.src, &got.ip_bytes());
                send_p(r, d, &e, pm, "error about B's answer");
            }
            // Close, then maybe a fresh SYN on the same tuple.
            74..=79 => {
                let mut p = a_last.clone();
                if let L4::Tcp { flags, .. } = &mut p.l4 {
                    *flags = *r.pick(&[TCP_FIN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK]);
                }
                send_p(r, d, &p, pm, "A closes");
                if r.chance(0.6) {
                    if let L4::Tcp { flags, .. } = &mut p.l4 {
                        *flags = TCP_SYN;
                    }
                    if let Some((ret, out)) = send_p(r, d, &p, pm, "A reuses the tuple") {
                        a_out = (ret != 2).then(|| P::parse(&out)).flatten().or(a_out);
                    }
                }
            }
            // Conntrack: a half (or both) idle past its timeout, or lost.
            80..=87 => {
                let es = d.entries();
                if es.is_empty() {
                    continue;
                }
                let (k, _) = *r.pick(&es);
                if r.chance(0.3) {
                    d.stale(k);
                } else if r.chance(0.6) {
                    d.age(k);
                    if r.chance(0.5) {
                        for (k2, e2) in d.entries() {
                            let _ = e2;
                            if k2 != k && r.chance(0.5) {
                                d.age(k2);
                            }
                        }
                    }
                } else {
                    d.lose(k);
                }
            }
            // The node delivers A's translated packet to the container (veth egress).
            88..=91 => {
                let Some(got) = a_out.clone() else { continue };
                if let Some(e) = d.world().endpoint(got.dst) {
                    d.send(Prog::ToContainer, e.dev, got.build(), "delivered");
                }
            }
            // A's or B's next datagram, fragmented: in order, out of order, or with a
            // fragment lost or mutated.
            92..=95 => {
                let mut p = if r.chance(0.7) {
                    a_last.clone()
                } else if let Some(b) = b_last.clone() {
                    b
                } else {
                    continue;
                };
                next_segment(r, &mut p);
                send_fragmented(r, d, &p);
            }
            // A duplicate, or a mutated copy, of A's first packet.
            _ => {
                send_p(r, d, p0, 0.5, "A's first again");
            }
        }
    }
}

/// `p` with a payload worth fragmenting, sent as fragments where its source sends from.
fn send_fragmented(r: &mut Rng, d: &mut dyn Driver, p: &P) {
    let mut p = p.clone();
    let n = 24 + r.below(120) as usize;
    match &mut p.l4 {
        L4::Tcp { payload, .. } | L4::Udp { payload, .. } | L4::Icmp { payload, .. } => {
            *payload = r.bytes(n);
        }
        L4::Raw { .. } => {}
    }
    p.frag_off = 0;
    p.id = r.u16();
    let chunk = 8 * (1 + r.below(6) as usize);
    let mut frames = fragments(&p, chunk);
    let how = match r.below(10) {
        0..=5 => "in order",
        6 | 7 => {
            frames.reverse();
            "last first"
        }
        8 => {
            let i = r.below(frames.len() as u64) as usize;
            frames.remove(i);
            "one lost"
        }
        _ => {
            let i = r.below(frames.len() as u64) as usize;
            mutate_bytes(r, &mut frames[i], ETH_HLEN);
            "one mutated"
        }
    };
    let (prog, dev) = entry(d.world(), p.src);
    let total = frames.len();
    for (i, f) in frames.into_iter().enumerate() {
        d.send(prog, dev, f, &format!("fragment {i}/{total} ({how})"));
    }
}

/// The next packet of a flow in the same direction.
fn next_segment(r: &mut Rng, p: &mut P) {
    p.id = p.id.wrapping_add(1);
    match &mut p.l4 {
        L4::Tcp {
            flags,
            seq,
            payload,
            ..
        } => {
            *flags = *r.pick(&[
                TCP_ACK,
                TCP_ACK,
                TCP_PSH | TCP_ACK,
                TCP_SYN,
                TCP_FIN | TCP_ACK,
                0,
            ]);
            *seq = seq.wrapping_add(100);
            let n = r.below(40) as usize;
            *payload = r.bytes(n);
        }
        L4::Udp { payload, .. } => {
            let n = r.below(40) as usize;
            *payload = r.bytes(n);
        }
        L4::Icmp { rest, .. } => rest[3] = rest[3].wrapping_add(1),
        L4::Raw { .. } => {}
    }
}

/// Applies one to three mutations to `p` (on the frame structure, then on its bytes);
/// returns the frame and what was done.
pub fn mutate(r: &mut Rng, mut p: P) -> (Vec<u8>, String) {
    let mut what = Vec::new();
    for _ in 0..=r.below(2) {
        match r.below(14) {
            0 => {
                let n = 1 + r.below(10) as usize;
                p.options = if r.chance(0.5) {
                    let mut o = vec![1u8; n * 4 - 1];
                    o.push(0);
                    o
                } else {
                    r.bytes(n * 4)
                };
                what.push(format!("ip options {}", n * 4));
            }
            1 => {
                p.frag_off = IP_MF;
                what.push("first fragment (MF)".into());
            }
            2 => {
                p.frag_off = r.below(0x2000) as u16 | if r.chance(0.5) { IP_MF } else { 0 };
                what.push(format!("frag_off {:#x}", p.frag_off));
            }
            3 => {
                p.ttl = *r.pick(&[0, 1, 2, 255]);
                what.push(format!("ttl {}", p.ttl));
            }
            4 => {
                let any = r.u8();
                if let L4::Tcp { flags, .. } = &mut p.l4 {
                    *flags = *r.pick(&[
                        0,
                        TCP_SYN | TCP_FIN,
                        TCP_SYN | TCP_RST,
                        TCP_SYN | TCP_ACK | TCP_FIN,
                        0xff,
                        TCP_FIN,
                        any,
                    ]);
                    what.push(format!("tcp flags {flags:#04x}"));
                }
            }
            5 => {
                if let L4::Tcp { opts, .. } = &mut p.l4 {
                    *opts = vec![2, 4, 5, 0xb4];
                    what.push("tcp options".into());
                }
            }
            6 => {
                if let L4::Udp { no_csum, .. } = &mut p.l4 {
                    *no_csum = true;
                    what.push("udp checksum 0".into());
                }
            }
            7 => {
                if let L4::Icmp { type_, code, .. } = &mut p.l4 {
                    *type_ = r.u8() % 20;
                    *code = r.u8() % 16;
                    what.push(format!("icmp type {type_} code {code}"));
                }
            }
            8 => {
                let any = r.u16();
                p.ethertype = *r.pick(&[ETH_P_ARP, ETH_P_IPV6, ETH_P_VLAN, 0x0000, 0x05dc, any]);
                what.push(format!("ethertype {:#06x}", p.ethertype));
            }
            9 => {
                p.src_mac = [r.u8(), 0, 0, 0, 0, r.u8()];
                p.dst_mac = [r.u8(), 1, 2, 3, 4, r.u8()];
                what.push("macs".into());
            }
            _ => {}
        }
    }
    let mut f = p.build();
    if r.chance(0.7) || what.is_empty() {
        what.push(mutate_bytes(r, &mut f, ETH_HLEN));
    }
    (f, what.join(", "))
}

/// Mutates an IPv4 packet at `ip` in `f` (14: a frame; 0: a quoted packet) in one way;
/// says which.
pub fn mutate_bytes(r: &mut Rng, f: &mut Vec<u8>, ip: usize) -> String {
    if f.len() < ip + 20 {
        let n = r.below(f.len() as u64 + 1) as usize;
        f.truncate(n);
        return format!("cut to {n}");
    }
    let ihl = usize::from(f[ip] & 0x0f) * 4;
    let l4 = ip + ihl.max(20);
    let fix_ip = |f: &mut Vec<u8>| {
        let ihl = (usize::from(f[ip] & 0x0f) * 4).clamp(20, f.len() - ip);
        put16(f, ip + 10, 0);
        let c = datapath_common::csum::checksum(&f[ip..ip + ihl]);
        put16(f, ip + 10, c);
    };
    match r.below(13) {
        0 | 1 => {
            let cuts = [
                ip.saturating_sub(1),
                ip,
                ip + 1,
                ip + 12,
                ip + 19,
                ip + 20,
                l4.saturating_sub(1),
                l4,
                l4 + 1,
                l4 + 2,
                l4 + 4,
                l4 + 6,
                l4 + 7,
                l4 + 8,
                l4 + 12,
                l4 + 13,
                l4 + 16,
                l4 + 18,
                l4 + 19,
                l4 + 20,
                l4 + 27,
                l4 + 28,
                l4 + 30,
            ];
            let n = if r.chance(0.85) {
                *r.pick(&cuts)
            } else {
                r.below(f.len() as u64) as usize
            };
            let n = n.min(f.len());
            f.truncate(n);
            format!("cut to {n}")
        }
        2 => {
            let n = 1 + r.below(30) as usize;
            let t = r.bytes(n);
            f.extend_from_slice(&t);
            format!("{n} trailing bytes")
        }
        3 => {
            let tot = f.len() - ip;
            let any = r.below(0x10000) as usize;
            let v = *r.pick(&[
                0,
                19,
                20,
                ihl,
                ihl + 4,
                ihl + 7,
                ihl + 8,
                ihl + 19,
                ihl + 20,
                tot.saturating_sub(1),
                tot + 1,
                tot + 100,
                0xffff,
                any,
            ]);
            put16(f, ip + 2, v as u16);
            if r.chance(0.7) {
                fix_ip(f);
            }
            format!("tot_len {v}")
        }
        4 => {
            let v = r.below(16) as u8;
            f[ip] = (f[ip] & 0xf0) | v;
            if r.chance(0.7) {
                fix_ip(f);
            }
            format!("ihl {v}")
        }
        5 => {
            let any = r.u8() & 0x0f;
            let v = *r.pick(&[0u8, 6, 5, 15, any]);
            f[ip] = (f[ip] & 0x0f) | (v << 4);
            format!("version {v}")
        }
        6 => {
            let x = 1 + r.below(0xffff) as u16;
            let c = be16_at(f, ip + 10) ^ x;
            put16(f, ip + 10, c);
            "bad ip checksum".into()
        }
        7 => {
            let off = match f[ip + 9] {
                proto::TCP => l4 + 16,
                proto::UDP => l4 + 6,
                _ => l4 + 2,
            };
            if off + 2 <= f.len() {
                let x = 1 + r.below(0xffff) as u16;
                let c = be16_at(f, off) ^ x;
                put16(f, off, c);
            }
            "bad l4 checksum".into()
        }
        8 => {
            let any = r.u8();
            let v = *r.pick(&[proto::TCP, proto::UDP, proto::ICMP, 0, IPPROTO_GRE, any]);
            f[ip + 9] = v;
            if r.chance(0.7) {
                fix_ip(f);
            }
            format!("protocol {v}")
        }
        9 => {
            // TCP data offset.
            if f[ip + 9] == proto::TCP && l4 + 13 <= f.len() {
                let v = r.below(16) as u8;
                f[l4 + 12] = (f[l4 + 12] & 0x0f) | (v << 4);
                return format!("tcp doff {v}");
            }
            "nothing".into()
        }
        10 => {
            // An address or port overwritten with another one of interest.
            let a = *r.pick(ALL);
            match r.below(4) {
                0 => f[ip + 12..ip + 16].copy_from_slice(&a),
                1 => f[ip + 16..ip + 20].copy_from_slice(&a),
                2 if l4 + 2 <= f.len() => put16(f, l4, *r.pick(PORTS)),
                _ if l4 + 4 <= f.len() => put16(f, l4 + 2, *r.pick(PORTS)),
                _ => {}
            }
            "address/port swapped".into()
        }
        _ => {
            let n = 1 + r.below(3);
            let mut at = Vec::new();
            for _ in 0..n {
                let i = r.below(f.len() as u64) as usize;
                f[i] = r.u8();
                at.push(i);
            }
            format!("bytes {at:?} overwritten")
        }
    }
}
