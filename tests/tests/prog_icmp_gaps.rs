//! ICMP errors and conntrack corner cases through `BPF_PROG_TEST_RUN` (harness and topology:
//! `prog_harness`): errors about a container's call to its own published port (self-hairpin)
//! and about hairpin flows, errors quoting an ICMP echo, echo identifier 0 in both directions,
//! and TCP packets of flows whose conntrack entries expired.
//!
//! ```text
//!  c1 10.254.0.2 [tgh1] --+                             +-- [tgt0 uplink] -- client 198.51.100.7
//!  c2 10.254.0.6 [tgh2] --+-- node (snat 192.0.2.10) ---+                    peer   198.51.100.9
//!  maps: {0, 8080/tcp} -> c1:80   {0, 5353/udp} -> c1:53   link c1 -> c2, ICC off
//! ```
//! Each test is a table of steps run in order against one set of maps; a step that does not
//! give its expected verdict and frame is reported, and the test fails after the last step.

mod prog_harness;

use prog_harness::*;

/// Loads the object into a fresh test namespace with the harness topology, and short conntrack
/// timeouts (so that an entry whose idle clock is set to 1 ns is expired whatever the uptime).
fn setup() -> anyhow::Result<Option<Ebpf>> {
    let Some(obj) = object() else { return Ok(None) };
    enter_test_netns()?;
    let mut bpf = prog_harness::load(&obj)?;
    fill_maps(&mut bpf)?;
    config(&mut bpf)?;
    let mut cfg: aya::maps::Array<&mut MapData, Config> =
        aya::maps::Array::try_from(bpf.map_mut(maps::CONFIG).unwrap())?;
    let mut c = cfg.get(&0, 0)?;
    c.ct_tcp_syn_s = 30;
    c.ct_tcp_est_s = 30;
    c.ct_tcp_close_s = 10;
    c.ct_udp_s = 30;
    c.ct_icmp_s = 30;
    cfg.set(0, c, 0)?;
    for p in ["from_uplink", "from_container", "to_container"] {
        load_classifier(&mut bpf, p)?;
    }
    Ok(Some(bpf))
}

/// Steps whose failures are collected, so that one run shows every case that misbehaves.
#[derive(Default)]
struct Table {
    failures: Vec<String>,
}

impl Table {
    fn step(&mut self, bpf: &Ebpf, what: &str, prog: &str, input: &Frame, want: Want) {
        if let Err(e) = step(bpf, what, prog, input, want) {
            println!("FAILED: {e:#}");
            self.failures.push(format!("{e:#}"));
        }
    }

    fn check(&mut self, ok: bool, what: String) {
        if ok {
            println!("ok: {what}");
        } else {
            println!("FAILED: {what}");
            self.failures.push(what);
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.failures.is_empty(),
            "{} step(s) failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
        Ok(())
    }
}

/// Redirected back out of the container's own veth (self-hairpin): MACs swapped, TTL kept.
fn back(f: Frame) -> Want {
    Want::Frame(TC_ACT_REDIRECT, f.with_macs_swapped())
}

/// Forwarded by FIB redirect, one hop later.
fn redirected(f: Frame) -> Want {
    Want::Frame(TC_ACT_REDIRECT, f.forwarded())
}

/// Rewritten and left to the node stack.
fn ok(f: Frame) -> Want {
    Want::Frame(TC_ACT_OK, f)
}

/// Sets every conntrack entry's idle clock to 1 ns: all of them are expired.
fn expire_all(bpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut ct: HashMap<&mut MapData, CtKey, CtEntry> =
        HashMap::try_from(bpf.map_mut(maps::CONNTRACK).unwrap())?;
    let all: Vec<(CtKey, CtEntry)> = ct.iter().collect::<Result<_, _>>()?;
    for (k, mut v) in all {
        v.last_seen_ns = 1;
        ct.insert(k, v, 0)?;
    }
    Ok(())
}

fn counter(bpf: &Ebpf, idx: u32) -> anyhow::Result<u64> {
    let counters: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(bpf.map(maps::COUNTERS).unwrap())?;
    Ok(counters.get(&idx, 0)?.iter().sum())
}

/// Port unreachable (3/3) from `src` to `dst` quoting all of `quoted`.
fn unreach(src: [u8; 4], dst: [u8; 4], quoted: &Frame) -> Frame {
    icmp_error(src, dst, 3, 3, quote(quoted, None))
}

#[test]
fn errors_about_hairpin_flows() -> anyhow::Result<()> {
    let Some(bpf) = setup()? else { return Ok(()) };
    let b = &bpf;
    let mut t = Table::default();

    // ---- c1 calls its own published UDP port: DNAT to c1:53 + SNAT to its gateway ----
    let call = Frame::udp(C1, 41000, HOST, 5353);
    let as_received = Frame::udp(GW1, 41000, C1, 53);
    t.step(
        b,
        "self-hairpin UDP: DNAT + SNAT to the gateway, back out of c1's veth",
        "from_container",
        &call,
        back(as_received.clone()),
    );
    t.step(
        b,
        "self-hairpin: c1 (the server) answers port unreachable: back to c1 as an error from \
         hostip:5353 about c1's own call, quoted call as c1 sent it",
        "from_container",
        &unreach(C1, GW1, &as_received),
        back(unreach(HOST, C1, &call)),
    );
    t.step(
        b,
        "self-hairpin: the server's reply goes back to the caller as hostip:5353",
        "from_container",
        &Frame::udp(C1, 53, GW1, 41000),
        back(Frame::udp(HOST, 5353, C1, 41000)),
    );
    t.step(
        b,
        "self-hairpin: c1 (the caller) answers the reply with port unreachable: back to c1 as \
         an error from the gateway about the server's reply as the server sent it",
        "from_container",
        &unreach(C1, HOST, &Frame::udp(HOST, 5353, C1, 41000)),
        back(unreach(GW1, C1, &Frame::udp(C1, 53, GW1, 41000))),
    );

    // ---- the same with TCP and an 8-byte quote (no L4 checksum quoted) ----
    let syn = Frame::tcp(C1, 41001, HOST, 8080, TCP_SYN);
    t.step(
        b,
        "self-hairpin TCP SYN",
        "from_container",
        &syn,
        back(Frame::tcp(GW1, 41001, C1, 80, TCP_SYN)),
    );
    t.step(
        b,
        "self-hairpin: fragmentation needed from c1 quoting 8 bytes of the SYN it received",
        "from_container",
        &icmp_error(
            C1,
            GW1,
            3,
            4,
            quote(&Frame::tcp(GW1, 41001, C1, 80, TCP_SYN), Some(28)),
        ),
        back(icmp_error(HOST, C1, 3, 4, quote(&syn, Some(28)))),
    );

    // ---- c2 calls c1's published port (hairpin, DNAT only) ----
    let call2 = Frame::udp(C2, 42000, HOST, 5353);
    t.step(
        b,
        "hairpin c2 -> hostip:5353: DNAT to c1:53, source kept",
        "from_container",
        &call2,
        ok(Frame::udp(C2, 42000, C1, 53)),
    );
    t.step(
        b,
        "hairpin: c1 (the server) answers port unreachable: leaves as hostip, quoted \
         destination back to hostip:5353",
        "from_container",
        &unreach(C1, C2, &Frame::udp(C2, 42000, C1, 53)),
        redirected(unreach(HOST, C2, &call2)),
    );
    t.step(
        b,
        "hairpin: c1's reply leaves as hostip:5353",
        "from_container",
        &Frame::udp(C1, 53, C2, 42000),
        redirected(Frame::udp(HOST, 5353, C2, 42000)),
    );
    let reply2 = Frame::udp(HOST, 5353, C2, 42000).forwarded();
    t.step(
        b,
        "hairpin: c2 (the caller) answers the reply with port unreachable: to c1, about the \
         reply as c1 sent it",
        "from_container",
        &unreach(C2, HOST, &reply2),
        redirected(unreach(C2, C1, &Frame::udp(C1, 53, C2, 42000).forwarded())),
    );

    t.check(
        counter(b, CNT_ICMP_ERR_XLATED)? == 5,
        format!(
            "icmp_err_xlated counts the 5 translated errors (is {})",
            counter(b, CNT_ICMP_ERR_XLATED)?
        ),
    );
    t.finish()
}

#[test]
fn errors_quoting_an_echo() -> anyhow::Result<()> {
    let Some(bpf) = setup()? else { return Ok(()) };
    let b = &bpf;
    let mut t = Table::default();

    for id in [7u16, 0] {
        let ping = echo(C1, CLIENT, id, 8);
        let out = run(b, "from_container", "tgh1", &ping.build())?.1;
        let r = nat_port("masq echo", &out);
        t.step(
            b,
            &format!("c1 pings the client with id {id}: masqueraded to id {r}"),
            "from_container",
            &ping,
            redirected(echo(HOST, CLIENT, r, 8)),
        );
        let sent = echo(HOST, CLIENT, r, 8).forwarded();
        t.step(
            b,
            &format!("host unreachable quoting 8 bytes of the id-{id} ping: quoted id restored"),
            "from_uplink",
            &icmp_error(PEER9, HOST, 3, 1, quote(&sent, Some(28))),
            ok(icmp_error(
                PEER9,
                C1,
                3,
                1,
                quote(&ping.clone().forwarded(), Some(28)),
            )),
        );
        t.step(
            b,
            &format!("time exceeded quoting the whole id-{id} ping: quoted id restored"),
            "from_uplink",
            &icmp_error(PEER9, HOST, 11, 0, quote(&sent, None)),
            ok(icmp_error(
                PEER9,
                C1,
                11,
                0,
                quote(&ping.clone().forwarded(), None),
            )),
        );
        t.step(
            b,
            &format!("the id-{id} echo reply is translated back"),
            "from_uplink",
            &echo(CLIENT, HOST, r, 0),
            redirected(echo(CLIENT, C1, id, 0)),
        );
        t.step(
            b,
            &format!(
                "c1 answers the echo reply with parameter problem: leaves as snat_ip, the quoted \
                 reply back to snat_ip with id {r}"
            ),
            "from_container",
            &icmp_error(
                C1,
                CLIENT,
                12,
                0,
                quote(&echo(CLIENT, C1, id, 0).forwarded(), None),
            ),
            redirected(icmp_error(
                HOST,
                CLIENT,
                12,
                0,
                quote(&echo(CLIENT, HOST, r, 0).forwarded(), None),
            )),
        );
    }
    t.step(
        b,
        "an error quoting an echo of no known flow passes untouched",
        "from_uplink",
        &icmp_error(
            PEER9,
            HOST,
            11,
            0,
            quote(&echo(HOST, CLIENT, 4242, 8), None),
        ),
        Want::Same(TC_ACT_OK),
    );
    t.finish()
}

#[test]
fn echo_id_zero_both_ways() -> anyhow::Result<()> {
    let Some(bpf) = setup()? else { return Ok(()) };
    let b = &bpf;
    let mut t = Table::default();

    // ---- masquerade alone ----
    let ping = echo(C1, CLIENT, 0, 8);
    let r = nat_port(
        "masq echo id 0",
        &run(b, "from_container", "tgh1", &ping.build())?.1,
    );
    t.step(
        b,
        "c1 pings the client with id 0: masqueraded to a NAT id",
        "from_container",
        &ping,
        redirected(echo(HOST, CLIENT, r, 8)),
    );
    t.step(
        b,
        "the reply comes back to c1 with id 0",
        "from_uplink",
        &echo(CLIENT, HOST, r, 0),
        redirected(echo(CLIENT, C1, 0, 0)),
    );

    // ---- the client pings c1 (routed) with id 0 too: both directions, same key tuple ----
    for round in 1..=2 {
        t.step(
            b,
            &format!("round {round}: the client's id-0 ping to c1 passes (routed, tracked)"),
            "from_uplink",
            &echo(CLIENT, C1, 0, 8),
            Want::Same(TC_ACT_OK),
        );
        t.step(
            b,
            &format!("round {round}: c1's echo reply to it passes untranslated"),
            "from_container",
            &echo(C1, CLIENT, 0, 0),
            Want::Same(TC_ACT_OK),
        );
        t.step(
            b,
            &format!("round {round}: c1's next id-0 ping keeps its NAT id"),
            "from_container",
            &ping,
            redirected(echo(HOST, CLIENT, r, 8)),
        );
        t.step(
            b,
            &format!("round {round}: and its reply still comes back with id 0"),
            "from_uplink",
            &echo(CLIENT, HOST, r, 0),
            redirected(echo(CLIENT, C1, 0, 0)),
        );
        t.step(
            b,
            &format!("round {round}: c1's echo reply again, after its own ping"),
            "from_container",
            &echo(C1, CLIENT, 0, 0),
            Want::Same(TC_ACT_OK),
        );
    }

    // ---- id 0 to the node's address (the hairpin address) and between containers ----
    t.step(
        b,
        "c1 pings hostip with id 0: untranslated (not a published port, not masqueraded)",
        "from_container",
        &echo(C1, HOST, 0, 8),
        Want::Same(TC_ACT_OK),
    );
    t.step(
        b,
        "c1 answers the node's id-0 ping while its own id-0 ping to hostip is live",
        "from_container",
        &echo(C1, HOST, 0, 0),
        Want::Same(TC_ACT_OK),
    );
    t.step(
        b,
        "c1 pings c2 with id 0 (link c1 -> c2)",
        "from_container",
        &echo(C1, C2, 0, 8),
        Want::Same(TC_ACT_OK),
    );
    t.step(
        b,
        "c2's id-0 echo reply to c1 is a reply (ICC off, no link c2 -> c1)",
        "from_container",
        &echo(C2, C1, 0, 0),
        Want::Same(TC_ACT_OK),
    );
    t.step(
        b,
        "c2's own id-0 ping to c1 is a new flow: ICC off, no link, dropped",
        "from_container",
        &echo(C2, C1, 0, 8),
        Want::Same(TC_ACT_SHOT),
    );
    t.step(
        b,
        "c2's id-0 echo reply still passes after that",
        "from_container",
        &echo(C2, C1, 0, 0),
        Want::Same(TC_ACT_OK),
    );
    t.finish()
}

#[test]
fn tcp_after_conntrack_expiry() -> anyhow::Result<()> {
    let Some(mut bpf) = setup()? else {
        return Ok(());
    };
    let mut t = Table::default();

    // ---- a masqueraded flow ----
    let b = &bpf;
    let syn = Frame::tcp(C1, 40100, CLIENT, 443, TCP_SYN);
    let p = nat_port(
        "masq SYN",
        &run(b, "from_container", "tgh1", &syn.build())?.1,
    );
    t.step(
        b,
        "masquerade: SYN",
        "from_container",
        &syn,
        redirected(syn.clone().with_src(HOST, p)),
    );
    t.step(
        b,
        "masquerade: SYN-ACK",
        "from_uplink",
        &Frame::tcp(CLIENT, 443, HOST, p, TCP_SYN | TCP_ACK),
        redirected(Frame::tcp(CLIENT, 443, C1, 40100, TCP_SYN | TCP_ACK)),
    );
    // ---- a port-mapped flow ----
    t.step(
        b,
        "port map: SYN from the client",
        "from_uplink",
        &Frame::tcp(CLIENT, 41000, HOST, 8080, TCP_SYN),
        redirected(Frame::tcp(CLIENT, 41000, C1, 80, TCP_SYN)),
    );
    t.step(
        b,
        "port map: SYN-ACK from c1",
        "from_container",
        &Frame::tcp(C1, 80, CLIENT, 41000, TCP_SYN | TCP_ACK),
        redirected(Frame::tcp(HOST, 8080, CLIENT, 41000, TCP_SYN | TCP_ACK)),
    );

    expire_all(&mut bpf)?;
    let b = &bpf;
    // The masqueraded flow's next segment comes from c1: picked up (Linux: nf_conntrack_tcp_loose)
    // and masqueraded afresh; the port search starts where it started for the SYN, so the
    // flow gets its old port back when that is free (it is: its holder expired).
    t.step(
        b,
        "expired masquerade: c1's next segment is picked up, with the same NAT port",
        "from_container",
        &Frame::tcp(C1, 40100, CLIENT, 443, TCP_ACK),
        redirected(Frame::tcp(HOST, p, CLIENT, 443, TCP_ACK)),
    );
    t.step(
        b,
        "picked-up masquerade: the client's segment is translated back",
        "from_uplink",
        &Frame::tcp(CLIENT, 443, HOST, p, TCP_ACK),
        redirected(Frame::tcp(CLIENT, 443, C1, 40100, TCP_ACK)),
    );
    // The port-mapped flow's next segment comes from the client: re-created from the map.
    t.step(
        b,
        "expired port map: the client's segment is DNATed (entries re-created from the map)",
        "from_uplink",
        &Frame::tcp(CLIENT, 41000, HOST, 8080, TCP_ACK),
        redirected(Frame::tcp(CLIENT, 41000, C1, 80, TCP_ACK)),
    );
    t.step(
        b,
        "re-created port map: c1's answer leaves as hostip:8080",
        "from_container",
        &Frame::tcp(C1, 80, CLIENT, 41000, TCP_ACK),
        redirected(Frame::tcp(HOST, 8080, CLIENT, 41000, TCP_ACK)),
    );

    // ---- hairpin and routed flows ----
    t.step(
        b,
        "hairpin: a mid-flow segment of c2 to hostip:8080 with no entry is picked up (DNAT)",
        "from_container",
        &Frame::tcp(C2, 42001, HOST, 8080, TCP_ACK),
        ok(Frame::tcp(C2, 42001, C1, 80, TCP_ACK)),
    );
    t.step(
        b,
        "hairpin picked up: c1's answer leaves as hostip:8080",
        "from_container",
        &Frame::tcp(C1, 80, C2, 42001, TCP_ACK),
        redirected(Frame::tcp(HOST, 8080, C2, 42001, TCP_ACK)),
    );
    t.step(
        b,
        "routed: a mid-flow segment from the client straight to c1's IP passes, picked up",
        "from_uplink",
        &Frame::tcp(CLIENT, 45001, C1, 8000, TCP_ACK),
        Want::Same(TC_ACT_OK),
    );
    t.step(
        b,
        "routed, picked up: c1's answer is that flow's reply (not masqueraded)",
        "from_container",
        &Frame::tcp(C1, 8000, CLIENT, 45001, TCP_ACK),
        Want::Same(TC_ACT_OK),
    );

    // ---- what is not picked up ----
    t.step(
        b,
        "a mid-flow segment to the node's own address (an answer to the node) passes untouched",
        "from_container",
        &Frame::tcp(C1, 40101, HOST, 22, TCP_ACK),
        Want::Same(TC_ACT_OK),
    );
    t.step(
        b,
        "a picked-up segment is judged by the policy like a new flow: c2 -> .9:80 denied",
        "from_container",
        &Frame::tcp(C2, 40102, PEER9, 80, TCP_ACK),
        Want::Same(TC_ACT_SHOT),
    );
    for (what, flags) in [
        ("FIN", 0x01 | TCP_ACK),
        ("RST", 0x04),
        ("SYN-ACK", TCP_SYN | TCP_ACK),
    ] {
        t.step(
            b,
            &format!("a {what} with no entry to the outside is not picked up: dropped"),
            "from_container",
            &Frame::tcp(C1, 40103, CLIENT, 443, flags),
            Want::Same(TC_ACT_SHOT),
        );
    }
    t.step(
        b,
        "an echo reply with no entry to the outside: dropped",
        "from_container",
        &echo(C1, PEER9, 99, 0),
        Want::Same(TC_ACT_SHOT),
    );

    let c1 = ep_stats(b, 1)?;
    let c2 = ep_stats(b, 2)?;
    println!("c1 drops {:?}; c2 drops {:?}", c1.drops, c2.drops);
    t.check(
        c1.drops[DropReason::CtInvalid as usize] == 4,
        format!("c1: 4 ct_invalid drops ({:?})", c1.drops),
    );
    t.check(
        c1.drops[DropReason::Policy as usize] == 0,
        format!("c1: no policy drops ({:?})", c1.drops),
    );
    t.check(
        c2.drops[DropReason::Policy as usize] == 1,
        format!("c2: 1 policy drop ({:?})", c2.drops),
    );
    t.finish()
}
