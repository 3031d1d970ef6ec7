//! Fragments through `BPF_PROG_TEST_RUN` (harness and topology: `prog_harness`): a first
//! fragment is translated like any datagram and its ports remembered; the datagram's later
//! fragments (no L4 header) get the same translation of their IP header and nothing else; a
//! later fragment whose first was never seen passes where that is harmless and is dropped,
//! named `frag_no_head`, where it would leave untranslated.

mod prog_harness;

use datapath_common::{drop::DropReason, stats::CNT_DROP_FRAG};
use prog_harness::*;

/// `frame` (built) with its IPv4 destination or source set to `ip`, TTL lowered by `hops`,
/// and the IPv4 checksum recomputed: what a later fragment must look like after NAT (its
/// payload, which starts with what looks like ports, is never touched).
fn ip_rewritten(frame: &[u8], dst: Option<[u8; 4]>, src: Option<[u8; 4]>, hops: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    if let Some(d) = dst {
        f[14 + 16..14 + 20].copy_from_slice(&d);
    }
    if let Some(s) = src {
        f[14 + 12..14 + 16].copy_from_slice(&s);
    }
    f[14 + 8] -= hops;
    f[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let c = datapath_common::csum::checksum(&f[14..34]);
    f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn later_fragments_follow_their_first() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    enter_test_netns()?;
    let mut bpf = prog_harness::load(&obj)?;
    fill_maps(&mut bpf)?;
    load_classifier(&mut bpf, "from_uplink")?;
    load_classifier(&mut bpf, "from_container")?;

    // Inbound to a published UDP port: the first fragment (MF set) is DNATed...
    let first = Frame {
        frag_off: 0x2000,
        ..Frame::udp(CLIENT, 47000, HOST, 5353)
    };
    let (rv, out) = run(&bpf, "from_uplink", "tgt0", &first.build())?;
    assert_eq!(rv, TC_ACT_REDIRECT, "first fragment");
    assert_eq!(
        out,
        first.clone().with_dst(C1, 53).forwarded().build(),
        "first fragment DNATed"
    );
    // ...and a later one (offset 185 * 8, MF clear) gets the same destination address, with
    // its payload (which happens to look like a UDP header) untouched.
    let later = Frame {
        frag_off: 185,
        ..Frame::udp(CLIENT, 47000, HOST, 5353)
    }
    .build();
    let (rv, out) = run(&bpf, "from_uplink", "tgt0", &later)?;
    assert_eq!(rv, TC_ACT_REDIRECT, "later fragment");
    assert_eq!(
        out,
        ip_rewritten(&later, Some(C1), None, 1),
        "later fragment DNATed"
    );
    // Only the IPv4 header's checksum applies to a later fragment (the L4 one is in the first).
    assert_eq!(
        datapath_common::csum::checksum(&out[14..34]),
        0,
        "IPv4 checksum"
    );

    // The container's fragmented answer: the first fragment is reverse-DNATed, the later one
    // gets the published address as its source.
    let answer = Frame {
        frag_off: 0x2000,
        ..Frame::udp(C1, 53, CLIENT, 47000)
    };
    let (rv, out) = run(&bpf, "from_container", "tgh1", &answer.build())?;
    assert_eq!(rv, TC_ACT_REDIRECT, "answer's first fragment");
    assert_eq!(
        out,
        answer.clone().with_src(HOST, 5353).forwarded().build(),
        "answer's first fragment reverse-DNATed"
    );
    let answer_later = Frame {
        frag_off: 185,
        ..Frame::udp(C1, 53, CLIENT, 47000)
    }
    .build();
    let (rv, out) = run(&bpf, "from_container", "tgh1", &answer_later)?;
    assert_eq!(rv, TC_ACT_REDIRECT, "answer's later fragment");
    assert_eq!(
        out,
        ip_rewritten(&answer_later, None, Some(HOST), 1),
        "answer's later fragment reverse-DNATed"
    );

    // A later fragment whose first was never seen (another datagram: other addresses, as
    // every frame here has IP id 0x1234): towards the node it passes (the node's reassembly
    // discards it); out of a container towards the outside it would leak the container's
    // address untranslated, so it is dropped and named.
    let orphan_in = Frame {
        frag_off: 185,
        ..Frame::udp([198, 51, 100, 99], 47001, HOST, 5353)
    }
    .build();
    let (rv, out) = run(&bpf, "from_uplink", "tgt0", &orphan_in)?;
    assert_eq!(
        (rv, out),
        (TC_ACT_OK, orphan_in),
        "headless fragment inbound"
    );
    let orphan_out = Frame {
        frag_off: 185,
        ..Frame::udp(C1, 5000, [203, 0, 113, 9], 9999)
    }
    .build();
    let (rv, _) = run(&bpf, "from_container", "tgh1", &orphan_out)?;
    assert_eq!(rv, TC_ACT_SHOT, "headless fragment outbound");
    let st = ep_stats(&bpf, 1)?;
    assert_eq!(
        st.drops[DropReason::FragNoHead as usize],
        1,
        "named per container"
    );
    let counters: aya::maps::PerCpuArray<&aya::maps::MapData, u64> =
        aya::maps::PerCpuArray::try_from(bpf.map(datapath_common::maps::COUNTERS).unwrap())?;
    let drops: u64 = counters.get(&CNT_DROP_FRAG, 0)?.iter().sum();
    assert_eq!(drops, 1, "and globally");
    Ok(())
}
