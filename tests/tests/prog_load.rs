//! The datapath object loads: every program passes the verifier, and the conntrack table is
//! sized at load time (`BPF_PROG_TEST_RUN` harness: `prog_harness`).

mod prog_harness;

use prog_harness::*;

#[test]
fn verifier_accepts_every_program() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    let mut bpf = prog_harness::load(&obj)?;
    for name in maps::ALL {
        assert!(
            bpf.map(name).is_some(),
            "map {name} missing from the object"
        );
    }
    for name in ["from_uplink", "from_container", "to_container"] {
        load_classifier(&mut bpf, name).map_err(|e| anyhow::anyhow!("loading {name}: {e:?}"))?;
    }
    for name in [
        "sock_connect4",
        "sock_sendmsg4",
        "sock_recvmsg4",
        "sock_getpeername4",
        "sock_bind4",
    ] {
        let prog: &mut CgroupSockAddr = bpf
            .program_mut(name)
            .ok_or_else(|| anyhow::anyhow!("program {name} missing from the object"))?
            .try_into()?;
        prog.load()
            .map_err(|e| anyhow::anyhow!("loading {name}: {e:?}"))?;
    }
    Ok(())
}

/// The agent sizes `TG_CT` at load time (`EbpfLoader::map_max_entries`); that works on the
/// BTF map definition too.
#[test]
fn conntrack_size_is_set_at_load() -> anyhow::Result<()> {
    let Some(obj) = object() else { return Ok(()) };
    let max_entries = |bpf: &Ebpf| -> anyhow::Result<u32> {
        match bpf.map(maps::CONNTRACK) {
            Some(Map::LruHashMap(data)) => Ok(data.info()?.max_entries()),
            _ => anyhow::bail!("{} is not an LRU hash map", maps::CONNTRACK),
        }
    };
    let bpf = prog_harness::load(&obj)?;
    assert_eq!(max_entries(&bpf)?, maps::CONNTRACK_MAX_DEFAULT);
    let bpf = prog_harness::loader()
        .map_max_entries(maps::CONNTRACK, 4096)
        .load(&obj)?;
    assert_eq!(max_entries(&bpf)?, 4096);
    Ok(())
}
