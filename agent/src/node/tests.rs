//! Node operations on the in-memory datapath and store (no root): what they write, that a
//! failure at any step leaves nothing behind, and that a restart reconciles the datapath to
//! the stored state.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use datapath_common::endpoint::PolicyChain;

use super::{error::Kind, CtTimeouts, Node, Settings, Uplink};
use crate::{
    api::types::{ContainerCreate, LimitSet},
    datapath::memory::{MemoryDatapath, Tables},
    model::{Action, AddSpec, DelSpec, Pool, Stance, State},
    store::MemoryStore,
};

type TestNode = Node<MemoryDatapath, MemoryStore>;

pub(crate) fn settings() -> Settings {
    Settings {
        uplink: "up0".into(),
        netns: None,
        pool: Pool::new("10.254.0.0/22".parse().unwrap()).unwrap(),
        port_range: 61001..=61010,
        snat_ip: None,
        icc: false,
        state_dir: PathBuf::from("/nonexistent"),
        bpffs: PathBuf::from("/nonexistent"),
        socket: PathBuf::from("/nonexistent"),
        conntrack_max: 1024,
        nat_ports: 20000..=32767,
        ct: CtTimeouts {
            tcp_syn: 60,
            tcp_est: 7200,
            tcp_close: 10,
            udp: 60,
            icmp: 30,
        },
        ct_gc_interval: Duration::from_secs(5),
        metrics: None,
        cluster: None,
    }
}

fn uplink() -> Uplink {
    Uplink {
        ifindex: 2,
        ips: vec![Ipv4Addr::new(192, 168, 1, 1)],
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn node_on(dp: MemoryDatapath, store: MemoryStore) -> TestNode {
    let mut n = Node::new(settings(), uplink(), dp, store).unwrap();
    block_on(n.start()).unwrap();
    n
}

fn node() -> TestNode {
    node_on(MemoryDatapath::default(), MemoryStore::default())
}

fn add(n: &mut TestNode, name: &str) {
    block_on(n.container_add(ContainerCreate {
        name: name.into(),
        netns: None,
        ip: None,
        network: None,
    }))
    .unwrap();
}

fn specs(s: &[&str]) -> Vec<AddSpec> {
    s.iter().map(|s| s.parse().unwrap()).collect()
}

/// A node with two containers, port maps, a link, a policy and a limit.
fn busy() -> TestNode {
    let mut n = node();
    add(&mut n, "web");
    add(&mut n, "db");
    block_on(n.port_add("web", &specs(&["8080:80", "53:53/udp"]))).unwrap();
    block_on(n.policy_link("web", "db", true)).unwrap();
    block_on(n.policy_rule_add("web", "10.0.0.0/8:443/tcp".parse().unwrap(), Action::Allow))
        .unwrap();
    block_on(n.policy_egress("web", Stance::Deny)).unwrap();
    block_on(n.limit_set(
        "db",
        &LimitSet {
            egress_bps: Some(50_000_000),
            ..LimitSet::default()
        },
    ))
    .unwrap();
    n
}

fn kind<T>(r: super::Result<T>) -> Kind {
    r.map(|_| ()).unwrap_err().kind
}

/// Forgets veth ifindexes, which change when a veth is plumbed again.
fn without_ifindexes(t: &mut Tables) {
    for v in t.veths.values_mut() {
        *v = 0;
    }
    for e in t.endpoints.values_mut() {
        e.host_ifindex = 0;
    }
    t.by_ifindex = std::mem::take(&mut t.by_ifindex)
        .into_values()
        .map(|mut e| {
            e.host_ifindex = 0;
            (e.id, e)
        })
        .collect();
    for p in t.portmaps.values_mut() {
        p.host_ifindex = 0;
    }
}

fn snapshot(n: &TestNode) -> (Tables, State) {
    (n.datapath().t.clone(), n.state().clone())
}

#[test]
fn operations_write_the_datapath_and_the_store() {
    let mut n = busy();
    let t = &n.datapath().t;
    let web = n.state().containers["web"].clone();
    assert!(t.netns.contains(&web.netns) && t.hooked.contains(&web.host_ifname));
    assert_eq!(t.endpoints[&web.ip].host_ifindex, web.host_ifindex);
    assert_eq!(t.portmaps.len(), 2);
    assert_eq!(t.links.len(), 1);
    assert_eq!(t.chains.len(), 1);
    assert_eq!(t.limits.len(), 1);
    assert!(t.socket_hooks && t.uplink.as_deref() == Some("up0"));
    let st = n.state().clone();
    assert_eq!(n.store_mut().state, st, "every change committed");
    block_on(n.container_del("web")).unwrap();
    let t = &n.datapath().t;
    assert!(!t.netns.contains(&web.netns) && !t.veths.contains_key(&web.host_ifname));
    assert!(t.portmaps.is_empty() && t.guards.is_empty() && t.links.is_empty());
    assert!(t.chains.is_empty());
    assert!(!t.endpoints.contains_key(&web.ip));
}

#[test]
fn refusals_have_kinds_and_change_nothing() {
    let mut n = busy();
    let before = snapshot(&n);
    let c = |name: &str, ip: Option<&str>| ContainerCreate {
        name: name.into(),
        netns: None,
        ip: ip.map(|i| i.parse().unwrap()),
        network: None,
    };
    assert_eq!(
        kind(block_on(n.container_add(c("web", None)))),
        Kind::Conflict
    );
    assert_eq!(
        kind(block_on(n.container_add(c("a b", None)))),
        Kind::BadInput
    );
    assert_eq!(
        kind(block_on(n.container_add(c("x", Some("10.254.0.3"))))),
        Kind::BadInput
    );
    assert_eq!(
        kind(block_on(n.container_add(c("x", Some("10.254.0.2"))))),
        Kind::Conflict
    );
    assert_eq!(kind(block_on(n.container_del("nosuch"))), Kind::NotFound);
    assert_eq!(
        kind(block_on(n.port_add("web", &specs(&["8080:81"])))),
        Kind::Conflict
    );
    assert_eq!(
        kind(block_on(n.port_add("nosuch", &specs(&["7070:80"])))),
        Kind::NotFound
    );
    let del: Vec<DelSpec> = vec!["7777".parse().unwrap()];
    assert_eq!(kind(block_on(n.port_del("web", &del))), Kind::NotFound);
    n.datapath_mut()
        .held
        .insert((9090, crate::model::Proto::Tcp));
    assert_eq!(
        kind(block_on(n.port_add("web", &specs(&["9090:80"])))),
        Kind::Conflict
    );
    assert_eq!(
        kind(block_on(n.policy_link("web", "web", true))),
        Kind::BadInput
    );
    assert_eq!(
        kind(block_on(n.policy_link("db", "web", false))),
        Kind::NotFound
    );
    assert_eq!(kind(block_on(n.limit_clear("web"))), Kind::NotFound);
    n.datapath_mut().held.clear();
    assert_eq!(snapshot(&n), before);
}

/// Runs `op` on a fresh busy node once per write it makes, failing that write (and once with
/// a failing commit); every time the datapath and the state must end as they were.
fn rolls_back(what: &str, op: impl Fn(&mut TestNode) -> super::Result<()>) {
    let writes = {
        let mut n = busy();
        let w0 = n.datapath().writes;
        op(&mut n).unwrap_or_else(|e| panic!("{what}: {e}"));
        n.datapath().writes - w0
    };
    assert!(writes > 0, "{what} wrote nothing");
    for i in 1..=writes + 1 {
        let mut n = busy();
        let before = snapshot(&n);
        let stored = n.store_mut().state.clone();
        if i > writes {
            n.store_mut().fail_commits = 1;
        } else {
            n.datapath_mut().fail_at = Some(n.datapath().writes + i);
        }
        let r = op(&mut n);
        assert!(
            r.is_err(),
            "{what}: failing write {i} of {writes} went unnoticed"
        );
        n.datapath_mut().fail_at = None;
        let (t, st) = snapshot(&n);
        // A re-created veth has a new ifindex; everything else is as it was.
        let norm = |mut t: Tables, mut st: State| {
            without_ifindexes(&mut t);
            for c in st.containers.values_mut() {
                c.host_ifindex = 0;
            }
            (t, st)
        };
        assert_eq!(
            norm(t, st.clone()),
            norm(before.0.clone(), before.1.clone()),
            "{what}: failing write {i} of {writes} left something behind"
        );
        let mut stored_now = n.store_mut().state.clone();
        stored_now
            .containers
            .values_mut()
            .for_each(|c| c.host_ifindex = 0);
        let mut stored = stored.clone();
        stored
            .containers
            .values_mut()
            .for_each(|c| c.host_ifindex = 0);
        assert_eq!(stored_now, stored, "{what}: the store changed");
    }
}

#[test]
fn a_failure_at_any_step_leaves_nothing_behind() {
    rolls_back("container add", |n| {
        block_on(n.container_add(ContainerCreate {
            name: "cache".into(),
            netns: None,
            ip: None,
            network: None,
        }))
        .map(|_| ())
    });
    rolls_back("container del", |n| {
        block_on(n.container_del("web")).map(|_| ())
    });
    rolls_back("port add", |n| {
        block_on(n.port_add(
            "db",
            &specs(&["5432:5432", ":6379", "7000-7002:7000-7002/udp"]),
        ))
        .map(|_| ())
    });
    rolls_back("port del", |n| {
        let d: Vec<DelSpec> = vec!["8080".parse().unwrap(), "53/udp".parse().unwrap()];
        block_on(n.port_del("web", &d)).map(|_| ())
    });
    rolls_back("policy link", |n| {
        block_on(n.policy_link("db", "web", true)).map(|_| ())
    });
    rolls_back("policy unlink", |n| {
        block_on(n.policy_link("web", "db", false)).map(|_| ())
    });
    rolls_back("policy rule", |n| {
        block_on(n.policy_rule_add("web", "10.1.0.0/16:80/tcp".parse().unwrap(), Action::Deny))
            .map(|_| ())
    });
    rolls_back("policy rule rm", |n| {
        block_on(n.policy_rule_del("web", "10.0.0.0/8:443/tcp".parse().unwrap())).map(|_| ())
    });
    rolls_back("policy egress", |n| {
        block_on(n.policy_egress("db", Stance::Deny)).map(|_| ())
    });
    rolls_back("limit set", |n| {
        block_on(n.limit_set(
            "web",
            &LimitSet {
                ingress_bps: Some(1_000_000),
                ..LimitSet::default()
            },
        ))
        .map(|_| ())
    });
    rolls_back("limit clear", |n| block_on(n.limit_clear("db")).map(|_| ()));
}

#[test]
fn a_restart_reconciles_the_datapath_to_the_stored_state() {
    let n = busy();
    let want = n.datapath().t.clone();
    let (mut dp, store) = n.into_parts();
    // While the daemon was away: a veth vanished, a stale port map, link, chain and endpoint
    // appeared, and a limit was lost.
    let web = store.state.containers["web"].clone();
    dp.t.veths.remove(&web.host_ifname);
    dp.t.hooked.remove(&web.host_ifname);
    let mut stale = *dp.t.portmaps.values().next().unwrap();
    stale.container_port = 9;
    dp.t.portmaps.insert(
        crate::datapath::Published {
            host_ip: None,
            port: 4444,
            proto: 6,
        },
        stale,
    );
    dp.t.links.insert((40, 41));
    dp.t.limits.clear();
    let ghost = crate::datapath::EndpointInfo {
        id: 77,
        ip: Ipv4Addr::new(10, 254, 3, 2),
        gateway: Ipv4Addr::new(10, 254, 3, 1),
        host_ifindex: 999,
        flags: 0,
        net: 0,
    };
    dp.t.endpoints.insert(ghost.ip, ghost);
    dp.t.by_ifindex.insert(ghost.host_ifindex, ghost);
    dp.t.chains
        .insert((77, "10.0.0.0/8".parse().unwrap()), PolicyChain::default());
    let n = node_on(dp, store);
    let mut got = n.datapath().t.clone();
    // web's veth was plumbed again, with a new ifindex everywhere it appears.
    let web_now = n.state().containers["web"].clone();
    assert_ne!(web_now.host_ifindex, web.host_ifindex);
    assert_eq!(got.veths[&web.host_ifname], web_now.host_ifindex);
    assert_eq!(got.endpoints[&web.ip].host_ifindex, web_now.host_ifindex);
    // Ghost gateway entries of a vanished container were never local addresses here.
    got.locals.remove(&ghost.gateway);
    let mut want = want;
    without_ifindexes(&mut got);
    without_ifindexes(&mut want);
    assert_eq!(got, want);
}

#[test]
fn published_ports_are_reserved_while_published() {
    let reserved = |n: &TestNode| -> Vec<u16> { n.datapath().t.reserved.iter().copied().collect() };
    let mut n = busy();
    assert_eq!(
        reserved(&n),
        vec![53, 8080],
        "every published port, TCP and UDP"
    );
    block_on(n.port_add("db", &specs(&["192.168.1.1:8080:80/udp", ":5432"]))).unwrap();
    assert_eq!(
        reserved(&n),
        vec![53, 8080, 61001],
        "host-IP-specific and allocated ports too"
    );
    let d: Vec<DelSpec> = vec!["8080".parse().unwrap()];
    block_on(n.port_del("web", &d)).unwrap();
    assert_eq!(
        reserved(&n),
        vec![53, 8080, 61001],
        "8080/udp of db is still published"
    );
    block_on(n.container_del("db")).unwrap();
    assert_eq!(reserved(&n), vec![53], "db's ports went with it");
    // A restart recomputes the set from the state.
    let (mut dp, store) = n.into_parts();
    dp.t.reserved.clear();
    let n = node_on(dp, store);
    assert_eq!(reserved(&n), vec![53]);
}

/// `kill -9` after a container was plumbed and before its commit (the store "crashes" at the
/// commit): the restart removes its namespace, veth, hooks and entries, and the name, the
/// address and the veth name can be used again.
#[test]
fn a_restart_removes_what_a_crash_during_container_add_left() {
    let mut n = busy();
    let (want, state) = snapshot(&n);
    n.store_mut().crash_on_commit = true;
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| add(&mut n, "cut")));
    assert!(crashed.is_err(), "the injected crash");
    let (dp, store) = n.into_parts();
    assert_eq!(store.creating.len(), 1, "the record of the creation");
    let cut = store.creating[0].clone();
    assert!(
        dp.t.veths.contains_key(&cut.host_ifname),
        "the crash left a veth"
    );
    assert!(dp.t.endpoints.contains_key(&cut.ip), "and an endpoint");
    let mut n = node_on(dp, store);
    let (mut got, st) = snapshot(&n);
    assert_eq!(st, state);
    assert!(
        !got.netns.contains(&cut.netns),
        "namespace left: {:?}",
        got.netns
    );
    let mut want = want;
    without_ifindexes(&mut got);
    without_ifindexes(&mut want);
    assert_eq!(got, want);
    assert!(n.store_mut().creating.is_empty());
    add(&mut n, "cut");
    assert_eq!(n.state().containers["cut"].host_ifname, cut.host_ifname);
    assert!(n.datapath().t.hooked.contains(&cut.host_ifname));
}
