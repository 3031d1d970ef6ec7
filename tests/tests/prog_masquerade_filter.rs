//! Masquerade, ICMP errors, ICC and egress policy through `BPF_PROG_TEST_RUN` (harness:
//! `prog_harness`).
//!
//! ```text
//!  c1 10.254.0.2 [tgh1] --+                             +-- [tgt0 uplink] -- client 198.51.100.7
//!  c2 10.254.0.6 [tgh2] --+-- node (snat 192.0.2.10) ---+                    peer   198.51.100.8, .9
//!  c3 10.254.0.10 [tgh3] -+   pool 10.254.0.0/22, ICC off, link c1 -> c2
//!  c2 policy: 198.51.100.0/24 [allow 53/udp, allow 8000-8100/tcp, deny]
//!             198.51.100.8/32 [allow 80/tcp, allow 53/udp, allow 8000-8100/tcp, deny]
//!  c3 egress deny; 198.51.100.7/32 [allow 443/tcp, allow sctp]
//! ```
//! Steps run in order, each one a `{description, program, device, input, expected}` check;
//! the masquerade port is whatever the datapath allocated (read from its output, checked to be
//! in range) and later steps use it.

mod prog_harness;

use prog_harness::*;

#[test]
fn masquerade_and_filter_table() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    enter_test_netns()?;
    let mut bpf = prog_harness::load(&obj)?;
    fill_maps(&mut bpf)?;
    config(&mut bpf)?;
    for p in ["from_uplink", "from_container", "to_container"] {
        load_classifier(&mut bpf, p)?;
    }
    let b = &bpf;
    let redirected = |f: Frame| Want::Frame(TC_ACT_REDIRECT, f.forwarded());
    let ok = |f: Frame| Want::Frame(TC_ACT_OK, f);

    // ---- masquerade: TCP ----
    let syn = Frame::tcp(C1, 40000, CLIENT, 443, TCP_SYN);
    let out = run(b, "from_container", "tgh1", &syn.build())?.1;
    let p = nat_port("masq SYN", &out);
    step(
        b,
        "masquerade: a container's SYN to the outside leaves as snat_ip:port, redirected",
        "from_container",
        &syn,
        redirected(syn.clone().with_src(HOST, p)),
    )?;
    step(
        b,
        "masquerade: the SYN-ACK is translated back to the container",
        "from_uplink",
        &Frame::tcp(CLIENT, 443, HOST, p, TCP_SYN | TCP_ACK),
        redirected(Frame::tcp(CLIENT, 443, C1, 40000, TCP_SYN | TCP_ACK)),
    )?;
    step(
        b,
        "masquerade: the next packet keeps the same port",
        "from_container",
        &Frame::tcp(C1, 40000, CLIENT, 443, TCP_ACK),
        redirected(Frame::tcp(HOST, p, CLIENT, 443, TCP_ACK)),
    )?;

    // ---- masquerade: UDP ----
    let dgram = Frame::udp(C1, 5000, CLIENT, 53);
    let q = nat_port(
        "masq UDP",
        &run(b, "from_container", "tgh1", &dgram.build())?.1,
    );
    step(
        b,
        "masquerade: UDP",
        "from_container",
        &dgram,
        redirected(dgram.clone().with_src(HOST, q)),
    )?;
    step(
        b,
        "masquerade: UDP reply translated back",
        "from_uplink",
        &Frame::udp(CLIENT, 53, HOST, q),
        redirected(Frame::udp(CLIENT, 53, C1, 5000)),
    )?;

    // ---- masquerade: ICMP echo ----
    let ping = echo(C1, CLIENT, 7, 8);
    let r = nat_port(
        "masq echo",
        &run(b, "from_container", "tgh1", &ping.build())?.1,
    );
    step(
        b,
        "masquerade: ping leaves as snat_ip with a NAT echo id",
        "from_container",
        &ping,
        redirected(echo(HOST, CLIENT, r, 8)),
    )?;
    step(
        b,
        "masquerade: echo reply translated back (address and id)",
        "from_uplink",
        &echo(CLIENT, HOST, r, 0),
        redirected(echo(CLIENT, C1, 7, 0)),
    )?;
    step(
        b,
        "an echo request from outside with that same id is not taken for its reply",
        "from_uplink",
        &echo(CLIENT, HOST, r, 8),
        Want::Same(TC_ACT_OK),
    )?;

    // ---- ICMP echo both ways between two addresses with the same identifier ----
    step(
        b,
        "the client pings c1 (routed) with id 55: passes, tracked",
        "from_uplink",
        &echo(CLIENT, C1, 55, 8),
        Want::Same(TC_ACT_OK),
    )?;
    let ping55 = echo(C1, CLIENT, 55, 8);
    let r55 = nat_port(
        "masq echo 55",
        &run(b, "from_container", "tgh1", &ping55.build())?.1,
    );
    step(
        b,
        "c1 pings the client with id 55 too: a flow of its own, masqueraded",
        "from_container",
        &ping55,
        redirected(echo(HOST, CLIENT, r55, 8)),
    )?;
    step(
        b,
        "c1's echo reply to the client's ping still is that flow's reply (not dropped)",
        "from_container",
        &echo(C1, CLIENT, 55, 0),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "the client's echo reply to c1's ping is translated back",
        "from_uplink",
        &echo(CLIENT, HOST, r55, 0),
        redirected(echo(CLIENT, C1, 55, 0)),
    )?;
    step(
        b,
        "the client's next echo request to c1 still passes as its own flow",
        "from_uplink",
        &echo(CLIENT, C1, 55, 8),
        Want::Same(TC_ACT_OK),
    )?;

    // ---- ICMP errors about masqueraded flows ----
    step(
        b,
        "port unreachable about a masqueraded UDP flow goes to the container (outer dst, quoted src)",
        "from_uplink",
        &icmp_error(CLIENT, HOST, 3, 3, quote(&Frame::udp(HOST, q, CLIENT, 53).forwarded(), None)),
        ok(icmp_error(CLIENT, C1, 3, 3, quote(&dgram.clone().forwarded(), None))),
    )?;
    step(
        b,
        "fragmentation needed quoting 8 bytes of a masqueraded TCP segment",
        "from_uplink",
        &icmp_error(
            PEER9,
            HOST,
            3,
            4,
            quote(
                &Frame::tcp(HOST, p, CLIENT, 443, TCP_ACK).forwarded(),
                Some(28),
            ),
        ),
        ok(icmp_error(
            PEER9,
            C1,
            3,
            4,
            quote(
                &Frame::tcp(C1, 40000, CLIENT, 443, TCP_ACK).forwarded(),
                Some(28),
            ),
        )),
    )?;
    step(
        b,
        "time exceeded about a masqueraded ping: quoted echo id restored",
        "from_uplink",
        &icmp_error(
            PEER9,
            HOST,
            11,
            0,
            quote(&echo(HOST, CLIENT, r, 8).forwarded(), None),
        ),
        ok(icmp_error(
            PEER9,
            C1,
            11,
            0,
            quote(&ping.clone().forwarded(), None),
        )),
    )?;
    step(
        b,
        "port unreachable from c1 about a masqueraded flow's reply leaves as snat_ip, the \
         quoted destination back to snat_ip:port",
        "from_container",
        &icmp_error(
            C1,
            CLIENT,
            3,
            3,
            quote(&Frame::udp(CLIENT, 53, C1, 5000).forwarded(), None),
        ),
        redirected(icmp_error(
            HOST,
            CLIENT,
            3,
            3,
            quote(&Frame::udp(CLIENT, 53, HOST, q).forwarded(), None),
        )),
    )?;
    step(
        b,
        "an ICMP error about no known flow passes untouched",
        "from_uplink",
        &icmp_error(
            CLIENT,
            HOST,
            3,
            3,
            quote(&Frame::udp(HOST, 1111, CLIENT, 53), None),
        ),
        Want::Same(TC_ACT_OK),
    )?;

    // ---- what masquerade leaves alone ----
    step(
        b,
        "no masquerade to a pool address",
        "from_container",
        &Frame::tcp(C1, 40001, [10, 254, 1, 50], 80, TCP_SYN),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "no masquerade to the container's gateway",
        "from_container",
        &Frame::udp(C1, 40002, GW1, 53),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "no masquerade to the node's uplink address",
        "from_container",
        &Frame::tcp(C1, 40003, HOST, 22, TCP_SYN),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "port map: inbound SYN DNATed as before",
        "from_uplink",
        &Frame::tcp(CLIENT, 41000, HOST, 8080, TCP_SYN),
        redirected(Frame::tcp(CLIENT, 41000, C1, 80, TCP_SYN)),
    )?;
    step(
        b,
        "port map: the reply keeps the published port (not masqueraded)",
        "from_container",
        &Frame::tcp(C1, 80, CLIENT, 41000, TCP_SYN | TCP_ACK),
        redirected(Frame::tcp(HOST, 8080, CLIENT, 41000, TCP_SYN | TCP_ACK)),
    )?;

    // ---- conntrack expiry ----
    let dgram2 = Frame::udp(C1, 5001, CLIENT, 53);
    run(b, "from_container", "tgh1", &dgram2.build())?;
    let key = CtKey {
        saddr: be32(C1),
        daddr: be32(CLIENT),
        sport: be16(5001),
        dport: be16(53),
        proto: proto::UDP,
        echo: 0,
        _pad: [0; 2],
    };
    let bogus = [192, 0, 2, 99];
    let set_orig = |bpf: &mut Ebpf, last_seen_ns: u64| -> anyhow::Result<u16> {
        let mut ct: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(bpf.map_mut(maps::CONNTRACK).unwrap())?;
        let mut e = ct.get(&key, 0)?;
        e.nat_saddr = be32(bogus);
        e.last_seen_ns = last_seen_ns;
        ct.insert(key, e, 0)?;
        Ok(u16::from_be(e.nat_sport))
    };
    let q2 = set_orig(&mut bpf, monotonic_ns())?;
    step(
        &bpf,
        "a live UDP entry is used as it stands (doctored to a bogus source)",
        "from_container",
        &dgram2,
        redirected(dgram2.clone().with_src(bogus, q2)),
    )?;
    set_orig(&mut bpf, 1)?;
    let out = run(&bpf, "from_container", "tgh1", &dgram2.build())?.1;
    let q3 = nat_port("re-created flow", &out);
    assert_eq!(
        out,
        dgram2.clone().with_src(HOST, q3).forwarded().build(),
        "an expired UDP entry is treated as absent: the flow is masqueraded afresh"
    );
    println!("ok: an expired UDP entry is treated as new");
    let b = &bpf;

    // ---- anti-spoofing ----
    let spoofed = Frame::tcp(C2, 40004, CLIENT, 443, TCP_SYN).build();
    let (ret, _) = run(b, "from_container", "tgh1", &spoofed)?;
    assert_eq!(
        ret, TC_ACT_SHOT,
        "a packet from tgh1 with c2's source is dropped"
    );
    println!("ok: spoofed source dropped");

    // ---- ICC and links ----
    step(
        b,
        "ICC off: c2 may not open a connection to c1 (no link c2 -> c1)",
        "from_container",
        &Frame::tcp(C2, 40005, C1, 80, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "link c1 -> c2: c1 may connect to c2, untouched (no NAT)",
        "from_container",
        &Frame::tcp(C1, 40006, C2, 81, TCP_SYN),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "link c1 -> c2: c2's reply passes (conntrack), though c2 -> c1 is not linked",
        "from_container",
        &Frame::tcp(C2, 81, C1, 40006, TCP_SYN | TCP_ACK),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "ICC off: a published port of c1 still works for c2 (hairpin DNAT)",
        "from_container",
        &Frame::tcp(C2, 40007, HOST, 8080, TCP_SYN),
        ok(Frame::tcp(C2, 40007, C1, 80, TCP_SYN)),
    )?;
    step(
        b,
        "ICC off: c3 -> c1 dropped",
        "from_container",
        &Frame::tcp(C3, 40008, C1, 80, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;

    // ---- egress policy (c2) ----
    let masq_ok = |what: &str, f: Frame| -> anyhow::Result<()> {
        let (ret, out) = run(
            b,
            "from_container",
            default_dev("from_container", &f.build()),
            &f.build(),
        )?;
        anyhow::ensure!(
            ret == TC_ACT_REDIRECT,
            "{what}: retval {ret}, want redirect"
        );
        let port = nat_port(what, &out);
        let want = f.with_src(HOST, port).forwarded().build();
        anyhow::ensure!(
            out == want,
            "{what}:\n   got  {}\n   want {}",
            hex(&out),
            hex(&want)
        );
        assert_checksums_valid(what, &out);
        println!("ok: {what}");
        Ok(())
    };
    masq_ok(
        "policy: /32 rule allows c2 -> .8:80/tcp (longest prefix)",
        Frame::tcp(C2, 40010, PEER8, 80, TCP_SYN),
    )?;
    step(
        b,
        "policy: c2 -> .8:81/tcp falls to the /32 chain's deny",
        "from_container",
        &Frame::tcp(C2, 40011, PEER8, 81, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "policy: c2 -> .9:80/tcp: the /24 chain has no port-80 allow, its deny wins",
        "from_container",
        &Frame::tcp(C2, 40012, PEER9, 80, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;
    masq_ok(
        "policy: c2 -> .9:53/udp allowed by the explicit-port rule before the deny",
        Frame::udp(C2, 40013, PEER9, 53),
    )?;
    masq_ok(
        "policy: c2 -> .9:8050/tcp inside an allowed port range",
        Frame::tcp(C2, 40014, PEER9, 8050, TCP_SYN),
    )?;
    step(
        b,
        "policy: c2 -> .9:8101/tcp just outside the range: denied",
        "from_container",
        &Frame::tcp(C2, 40015, PEER9, 8101, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "policy: ping c2 -> .9: port rules do not match ICMP, the any-port deny does",
        "from_container",
        &echo(C2, PEER9, 9, 8),
        Want::Same(TC_ACT_SHOT),
    )?;

    // ---- egress deny by default (c3) ----
    masq_ok(
        "egress deny: c3 -> client:443/tcp allowed by its rule",
        Frame::tcp(C3, 40020, CLIENT, 443, TCP_SYN),
    )?;
    step(
        b,
        "egress deny: c3 -> client:444/tcp matches no rule: default deny",
        "from_container",
        &Frame::tcp(C3, 40021, CLIENT, 444, TCP_SYN),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "egress deny: c3 -> .9 has no chain at all: default deny",
        "from_container",
        &Frame::udp(C3, 40022, PEER9, 53),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "an inbound SYN routed straight to c3's IP passes untouched and is tracked",
        "from_uplink",
        &Frame::tcp(CLIENT, 45000, C3, 8000, TCP_SYN),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "c3's answer is a reply: neither masqueraded nor judged by its deny stance",
        "from_container",
        &Frame::tcp(C3, 8000, CLIENT, 45000, TCP_SYN | TCP_ACK),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "a FIN with no conntrack entry to the outside is dropped (ct_invalid; a plain ACK \
         would be picked up: prog_icmp_gaps)",
        "from_container",
        &Frame::tcp(C1, 40030, CLIENT, 9999, 0x01 | TCP_ACK),
        Want::Same(TC_ACT_SHOT),
    )?;

    // ---- protocols conntrack does not track: judged per packet ----
    step(
        b,
        "SCTP c1 -> outside: no rule, default allow: passes untouched (not masqueraded)",
        "from_container",
        &raw(C1, CLIENT, IPPROTO_SCTP),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "GRE c1 -> c2: allowed by the link c1 -> c2",
        "from_container",
        &raw(C1, C2, IPPROTO_GRE),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "GRE c2 -> c1: ICC off and no link: dropped",
        "from_container",
        &raw(C2, C1, IPPROTO_GRE),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "SCTP c2 -> .9: the /24 chain's any-protocol deny drops it",
        "from_container",
        &raw(C2, PEER9, IPPROTO_SCTP),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "ICMP timestamp request c2 -> .9 (neither echo nor error): the any-protocol deny",
        "from_container",
        &echo(C2, PEER9, 9, 13),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "SCTP c3 -> client: allowed by c3's protocol-specific rule",
        "from_container",
        &raw(C3, CLIENT, IPPROTO_SCTP),
        Want::Same(TC_ACT_OK),
    )?;
    step(
        b,
        "GRE c3 -> client: no rule matches: c3's default deny",
        "from_container",
        &raw(C3, CLIENT, IPPROTO_GRE),
        Want::Same(TC_ACT_SHOT),
    )?;
    step(
        b,
        "an ICMP error c2 sends where its policy denies everything is an answer: passes",
        "from_container",
        &icmp_error(
            C2,
            PEER9,
            3,
            3,
            quote(&Frame::udp(PEER9, 53, C2, 4444), None),
        ),
        Want::Same(TC_ACT_OK),
    )?;

    // ---- to_container ----
    step(
        b,
        "to_container counts and passes",
        "to_container",
        &Frame::tcp(CLIENT, 443, C1, 40000, TCP_ACK),
        Want::Same(TC_ACT_OK),
    )?;

    // ---- drops in from_uplink count against the container ----
    // With c1's neighbour entry known the FIB lookup succeeds and a translated packet takes
    // the fast path into c1, which polices c1's ingress bucket; an empty bucket drops it.
    ip_cmd("neigh replace 10.254.0.2 lladdr 02:00:00:00:00:cc dev tgh1 nud permanent")?;
    let mut rl: aya::maps::Array<&mut MapData, RateLimit> =
        aya::maps::Array::try_from(bpf.map_mut(maps::RATELIMIT).unwrap())?;
    rl.set(
        1,
        RateLimit {
            ingress: TokenBucket::new(8, 1),
            ..RateLimit::default()
        },
        0,
    )?;
    let b = &bpf;
    let (ret, _) = run(
        b,
        "from_uplink",
        "tgt0",
        &Frame::tcp(CLIENT, 443, HOST, p, TCP_ACK).build(),
    )?;
    assert_eq!(
        ret, TC_ACT_SHOT,
        "a masqueraded flow's reply over c1's ingress limit on the fast path is dropped"
    );
    println!("ok: ingress limit on the fast path from the uplink drops");

    check_filter_stats(b)
}

fn check_filter_stats(bpf: &Ebpf) -> anyhow::Result<()> {
    let drops = |id: u32, r: DropReason| -> anyhow::Result<u64> {
        Ok(ep_stats(bpf, id)?.drops[r as usize])
    };
    assert_eq!(drops(1, DropReason::Spoof)?, 1, "c1 spoof drops");
    assert_eq!(drops(1, DropReason::Policy)?, 0, "c1 policy drops");
    assert_eq!(
        drops(1, DropReason::CtInvalid)?,
        1,
        "c1 ct_invalid drops (FIN of no flow)"
    );
    assert_eq!(drops(2, DropReason::Icc)?, 2, "c2 ICC drops (TCP, GRE)");
    assert_eq!(
        drops(2, DropReason::Policy)?,
        6,
        "c2 policy drops (4 tracked, SCTP, ICMP timestamp)"
    );
    assert_eq!(drops(3, DropReason::Icc)?, 1, "c3 ICC drops");
    assert_eq!(
        drops(3, DropReason::Policy)?,
        3,
        "c3 policy drops (2 tracked, GRE)"
    );
    assert_eq!(
        drops(1, DropReason::RateLimit)?,
        1,
        "c1 ratelimit drops (from_uplink, counted against c1)"
    );
    let c1 = ep_stats(bpf, 1)?;
    assert_eq!(
        c1.rx_packets, 2,
        "c1 rx (to_container, and the fast path into it)"
    );
    assert!(
        c1.tx_packets >= 15 && c1.tx_bytes >= c1.tx_packets * 42,
        "c1 tx counted: {c1:?}"
    );

    let counters: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(bpf.map(maps::COUNTERS).unwrap())?;
    let total = |idx: u32| -> anyhow::Result<u64> { Ok(counters.get(&idx, 0)?.iter().sum()) };
    for (idx, name, want) in [
        (CNT_DROP_SPOOF, "drop_spoof", 1),
        (CNT_DROP_ICC, "drop_icc", 3),
        (CNT_DROP_POLICY, "drop_policy", 9),
        (CNT_DROP_CT_INVALID, "drop_ct_invalid", 1),
        (CNT_DROP_RATELIMIT, "drop_ratelimit", 1),
        (CNT_ICMP_ERR_XLATED, "icmp_err_xlated", 4),
        (CNT_REVSNAT, "revsnat", 5),
    ] {
        assert_eq!(total(idx)?, want, "counter {name}");
    }
    // c1: TCP, UDP, echo x2, UDP (x2, once re-created); c2: 3; c3: 1.
    assert_eq!(total(CNT_SNAT_FLOWS)?, 10, "counter snat_flows");
    assert!(total(CNT_CT_CREATED)? >= 2 * 10, "counter ct_created");

    let ct: HashMap<&MapData, CtKey, CtEntry> =
        HashMap::try_from(bpf.map(maps::CONNTRACK).unwrap())?;
    let orig = ct.get(
        &CtKey {
            saddr: be32(C1),
            daddr: be32(CLIENT),
            sport: be16(40000),
            dport: be16(443),
            proto: proto::TCP,
            echo: 0,
            _pad: [0; 2],
        },
        0,
    )?;
    assert_eq!(
        orig.flags,
        CT_SNAT | CT_MASQ | CT_SEEN_REPLY,
        "masq orig flags"
    );
    assert_eq!(orig.nat_saddr, be32(HOST));
    assert_eq!(orig.endpoint_id, 1);
    let reply = ct.get(
        &CtKey {
            saddr: be32(CLIENT),
            daddr: be32(HOST),
            sport: be16(443),
            dport: orig.nat_sport,
            proto: proto::TCP,
            echo: 0,
            _pad: [0; 2],
        },
        0,
    )?;
    assert_eq!(
        reply.flags,
        CT_DNAT | CT_MASQ | CT_REPLY | CT_SEEN_REPLY,
        "masq reply flags"
    );
    assert_eq!((reply.nat_daddr, reply.nat_dport), (be32(C1), be16(40000)));
    Ok(())
}
