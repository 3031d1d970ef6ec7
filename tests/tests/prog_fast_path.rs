//! The inbound fast path's MAC cache against the neighbour table, and the per-packet cost
//! microbench of the hot paths (`BPF_PROG_TEST_RUN`; harness: `prog_harness`).

mod prog_harness;

use prog_harness::*;

/// The inbound fast path addresses frames with the MACs the node's neighbour table has for the
/// container (and its veth's own), reuses them for a second without a FIB lookup, then follows
/// a changed neighbour entry.
#[test]
fn fast_path_macs_follow_the_neighbour_table() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    enter_test_netns()?;
    let mut bpf = prog_harness::load(&obj)?;
    fill_maps(&mut bpf)?;
    config(&mut bpf)?;
    load_classifier(&mut bpf, "from_uplink")?;
    let host_mac: Vec<u8> = ip_cmd("-br link show tgh1")?
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    let first = [0x02, 0, 0, 0, 0x01, 0x02];
    let second = [0x02, 0, 0, 0, 0x01, 0x03];
    ip_cmd("neigh replace 10.254.0.2 lladdr 02:00:00:00:01:02 dev tgh1")?;
    let send = |sport: u16| -> anyhow::Result<Vec<u8>> {
        let syn = Frame::tcp(CLIENT, sport, HOST, 8080, TCP_SYN).build();
        let (rc, out) = run(&bpf, "from_uplink", "tgt0", &syn)?;
        anyhow::ensure!(rc == TC_ACT_REDIRECT, "retval {rc}, want redirect");
        Ok(out)
    };
    let out = send(42000)?;
    assert_eq!(
        out[0..6],
        first,
        "destination: the container's MAC from the neighbour table"
    );
    assert_eq!(out[6..12], host_mac[..], "source: the host veth's MAC");
    ip_cmd("neigh replace 10.254.0.2 lladdr 02:00:00:00:01:03 dev tgh1")?;
    assert_eq!(
        send(42001)?[0..6],
        first,
        "within a second: the cached answer"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        send(42002)?[0..6],
        second,
        "after a second: the neighbour table again"
    );
    Ok(())
}

/// Per-packet cost of the hot paths, measured by the kernel (`BPF_PROG_TEST_RUN`'s duration,
/// one fresh frame per run, mean of `PER_PACKET_RUNS`). Not a pass/fail test: run it by hand,
/// `cargo test -p tollgate-tests --test prog_fast_path per_packet_cost -- --ignored --nocapture`, to
/// compare datapath builds (the figures are quoted in docs/benchmarks.md).
#[test]
#[ignore]
fn per_packet_cost() -> anyhow::Result<()> {
    const PER_PACKET_RUNS: u32 = 20_000;
    let Some(obj) = object() else { return Ok(()) };
    enter_test_netns()?;
    // Resolved neighbours, as on a live node: the inbound fast path needs the container's MAC.
    for args in [
        "neigh add 10.254.0.2 lladdr 02:00:00:00:01:02 dev tgh1",
        "neigh add 198.51.100.7 lladdr 02:00:00:00:00:07 dev tgt0",
    ] {
        ip_cmd(args)?;
    }
    // Loaded as the daemon loads it: with the programs' debug logs switched off (the agent's
    // loader does the same unless the daemon itself logs at debug level).
    let mut bpf = prog_harness::loader()
        .override_global("AYA_LOG_LEVEL", &3u8, false)
        .load(&obj)?;
    fill_maps(&mut bpf)?;
    config(&mut bpf)?;
    load_classifier(&mut bpf, "from_uplink")?;
    load_classifier(&mut bpf, "from_container")?;
    for prog in ["from_uplink", "from_container", "from_container_new"] {
        let Some(p) = bpf.program(prog) else { continue };
        let p: &SchedClassifier = p.try_into()?;
        let n = p.info().ok().and_then(|i| i.verified_instruction_count());
        println!("per-packet: {prog} verified in {n:?} instructions");
    }
    let mean_ns = |prog: &str, dev: &str, frame: &dyn Fn(u32) -> Vec<u8>| -> anyhow::Result<f64> {
        let p: &SchedClassifier = bpf.program(prog).unwrap().try_into()?;
        let mut ctx = [0u8; 44];
        ctx[40..44].copy_from_slice(&ifindex(dev)?.to_ne_bytes());
        let mut total = 0u64;
        for i in 0..PER_PACKET_RUNS {
            let input = frame(i);
            let mut out = vec![0u8; input.len() + 256];
            let res = p.test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })?;
            total += res.duration.as_nanos() as u64;
        }
        Ok(total as f64 / f64::from(PER_PACKET_RUNS))
    };
    // Open one port-mapped flow (SYN in, SYN-ACK out), then time its packets both ways.
    let syn = Frame::tcp(CLIENT, 40000, HOST, 8080, TCP_SYN).build();
    run(&bpf, "from_uplink", "tgt0", &syn)?;
    let synack = Frame::tcp(C1, 80, CLIENT, 40000, TCP_SYN | TCP_ACK).build();
    run(&bpf, "from_container", "tgh1", &synack)?;
    let inbound = Frame::tcp(CLIENT, 40000, HOST, 8080, TCP_ACK).build();
    let reply = Frame::tcp(C1, 80, CLIENT, 40000, TCP_ACK).build();
    let new_syn = |i: u32| Frame::tcp(CLIENT, 1024 + (i % 60000) as u16, HOST, 8080, TCP_SYN);
    let arp = Frame {
        ethertype: ETH_P_ARP,
        ..Frame::udp(CLIENT, 1, HOST, 2)
    }
    .build();
    let rows = [
        (
            "not IPv4 (ARP), passed untouched: the floor",
            mean_ns("from_uplink", "tgt0", &|_| arp.clone())?,
        ),
        (
            "port map, established, inbound",
            mean_ns("from_uplink", "tgt0", &|_| inbound.clone())?,
        ),
        (
            "port map, established, reply",
            mean_ns("from_container", "tgh1", &|_| reply.clone())?,
        ),
        (
            "port map, new flow (SYN)",
            mean_ns("from_uplink", "tgt0", &|i| new_syn(i).build())?,
        ),
    ];
    for (what, ns) in rows {
        println!("per-packet: {what}: {ns:.0} ns");
    }
    Ok(())
}
