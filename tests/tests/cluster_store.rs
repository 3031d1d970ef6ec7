//! The cluster store (`tollgate::cluster`) against a real etcd (Debian's `etcd-server`, in a
//! namespace of its own, `tollgate_tests::etcd`): concurrent block claims, node leases that
//! lapse and come back, racing network creates, the store going away and coming back, a
//! compaction under a watcher, a three-member store losing one member. Nothing is mocked; each
//! "node" is a `Cluster` handle of its own (its own connection, its own lease).

#![expect(
    clippy::many_single_char_names,
    reason = "nodes are a, b, c; the store is e"
)]

use std::{
    collections::{BTreeSet, HashSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use tokio::{sync::watch, task::JoinSet};
use tollgate::cluster::{Cluster, ClusterConfig, ClusterView, Kind, NetworkSpec};
use tollgate_tests::etcd::{block_on_in, can_run, Etcd};

const TTL: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(2);

/// A store for the calling test, or an early return where it cannot run.
macro_rules! etcd {
    ($name:expr) => {{
        if !can_run() {
            return;
        }
        Etcd::new($name).expect("etcd")
    }};
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn config(endpoints: Vec<String>, node: &str, i: u8) -> ClusterConfig {
    ClusterConfig {
        ttl: TTL,
        timeout: TIMEOUT,
        ..ClusterConfig::new(endpoints, node, Ipv4Addr::new(192, 0, 2, i))
    }
}

/// A registered node `node` (underlay 192.0.2.i).
async fn node(endpoints: &[String], node: &str, i: u8) -> Cluster {
    let c = Cluster::connect(config(endpoints.to_vec(), node, i))
        .await
        .expect("connect");
    c.register().await.expect("register");
    c
}

fn spec(name: &str, subnet: Option<&str>) -> NetworkSpec {
    NetworkSpec {
        name: name.to_string(),
        subnet: subnet.map(net),
        icc: true,
        ..NetworkSpec::default()
    }
}

/// Waits until the watched view satisfies `pred`; panics with the last view after `within`.
async fn until(
    rx: &mut watch::Receiver<ClusterView>,
    within: Duration,
    what: &str,
    pred: impl FnMut(&ClusterView) -> bool,
) -> ClusterView {
    let got = match tokio::time::timeout(within, rx.wait_for(pred)).await {
        Ok(Ok(v)) => Some(v.clone()),
        _ => None,
    };
    got.unwrap_or_else(|| panic!("{what}: not within {within:?}; view: {:#?}", *rx.borrow()))
}

/// The kind of a call's error (panics when it succeeded).
fn kind<T: std::fmt::Debug>(r: tollgate::cluster::Result<T>) -> Kind {
    r.unwrap_err().kind
}

/// The view's content, without its revision and health.
fn content(v: &ClusterView) -> String {
    format!("{:?} {:?} {:?}", v.nodes, v.networks, v.blocks)
}

#[test]
fn ten_nodes_claiming_at_once_never_get_the_same_block() {
    let e = etcd!("cs-claim");
    let eps = e.endpoints();
    let started = Instant::now();
    block_on_in(&e.ns, || async move {
        let mut nodes = Vec::new();
        for i in 0..10u8 {
            nodes.push(node(&eps, &format!("n{i}"), i + 1).await);
        }
        let blue = nodes[0]
            .create_network(spec("blue", None), &[])
            .await
            .unwrap();
        assert_eq!((blue.subnet, blue.block_prefix), (net("10.96.0.0/20"), 26));

        // Three claims by each node, all at once.
        let mut set = JoinSet::new();
        for n in &nodes {
            for _ in 0..3 {
                let n = n.clone();
                set.spawn(async move {
                    let b = n.claim_block("blue").await;
                    (n.config().node_name.clone(), b)
                });
            }
        }
        let mut got: Vec<(String, Ipv4Net)> = Vec::new();
        while let Some(r) = set.join_next().await {
            let (who, b) = r.unwrap();
            got.push((who, b.expect("claim")));
        }
        let distinct: HashSet<Ipv4Net> = got.iter().map(|(_, b)| *b).collect();
        assert_eq!(distinct.len(), 30, "a block was given twice: {got:?}");
        for (_, b) in &got {
            assert!(blue.subnet.contains(b) && b.prefix_len() == 26, "{b}");
        }
        // The first 30 blocks, each held by the node that claimed it.
        let first: HashSet<Ipv4Net> = blue.subnet.subnets(26).unwrap().take(30).collect();
        assert_eq!(distinct, first);
        let view = nodes[0].list().await.unwrap();
        for n in &nodes {
            let me = &n.config().node_name;
            let mine: BTreeSet<Ipv4Net> = got
                .iter()
                .filter(|(w, _)| w == me)
                .map(|(_, b)| *b)
                .collect();
            let listed: BTreeSet<Ipv4Net> =
                n.my_blocks("blue").await.unwrap().into_iter().collect();
            assert_eq!(mine, listed, "{me}");
            assert_eq!(view.node_blocks(me).count(), 3, "{me}");
        }

        // A subnet of four blocks and six claimers: four win, two learn it is exhausted.
        nodes[0]
            .create_network(spec("tiny", Some("10.97.0.0/24")), &[])
            .await
            .unwrap();
        let mut set = JoinSet::new();
        for n in nodes.iter().take(6) {
            let n = n.clone();
            set.spawn(async move { n.claim_block("tiny").await });
        }
        let (mut won, mut exhausted) = (HashSet::new(), 0);
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(b) => assert!(won.insert(b), "{b} given twice"),
                Err(e) => {
                    assert_eq!(e.kind, Kind::Conflict, "{e}");
                    assert!(e.to_string().contains("exhausted"), "{e}");
                    exhausted += 1;
                }
            }
        }
        assert_eq!((won.len(), exhausted), (4, 2));
        assert_eq!(
            nodes[0].claim_block("nope").await.unwrap_err().kind,
            Kind::NotFound
        );
        Ok(())
    })
    .unwrap();
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn a_node_whose_lease_lapses_drops_out_and_rejoins_with_its_blocks() {
    let e = etcd!("cs-lease");
    let eps = e.endpoints();
    let e = &e;
    block_on_in(&e.ns, || async move {
        let a = node(&eps, "a", 1).await;
        let b = node(&eps, "b", 2).await;
        a.create_network(spec("blue", None), &[]).await.unwrap();
        let held = vec![
            b.claim_block("blue").await.unwrap(),
            b.claim_block("blue").await.unwrap(),
        ];
        let mut rx = a.watch();
        until(&mut rx, Duration::from_secs(5), "b and its blocks", |v| {
            v.is_live("b") && v.node_blocks("b").count() == 2
        })
        .await;

        // b's daemon dies: nothing renews its lease any more.
        let t0 = Instant::now();
        drop(b);
        let v = until(&mut rx, TTL + Duration::from_secs(5), "b dropped", |v| {
            !v.is_live("b")
        })
        .await;
        eprintln!("b dropped after {:?} (ttl {TTL:?})", t0.elapsed());
        assert!(v.is_live("a"), "{v:?}");
        assert_eq!(v.node_blocks("b").count(), 2, "blocks have no lease: {v:?}");
        assert_eq!(
            a.release_block("blue", held[0]).await.unwrap_err().kind,
            Kind::Conflict,
            "only the holder releases a block"
        );

        // b's daemon comes back (a new handle, the same name): it rejoins, its blocks its own.
        let b = node(&eps, "b", 2).await;
        until(&mut rx, Duration::from_secs(5), "b back", |v| {
            v.is_live("b")
        })
        .await;
        assert_eq!(b.my_blocks("blue").await.unwrap(), held);
        assert_ne!(b.claim_block("blue").await.unwrap(), held[0]);

        // Its lease is revoked behind its back (as when it expired): it registers again.
        let revoked = e.revoke_leases().unwrap();
        assert!(revoked >= 2, "{revoked} leases");
        until(
            &mut rx,
            Duration::from_secs(3),
            "b gone with its lease",
            |v| !v.is_live("b"),
        )
        .await;
        until(
            &mut rx,
            TTL + Duration::from_secs(3),
            "a and b registered again",
            |v| v.is_live("a") && v.is_live("b"),
        )
        .await;

        // A name held by a live node elsewhere is refused.
        let impostor = Cluster::connect(config(eps.clone(), "b", 99))
            .await
            .unwrap();
        let err = impostor.register().await.unwrap_err();
        assert_eq!(err.kind, Kind::Conflict, "{err}");
        drop(impostor);

        // A graceful stop revokes at once.
        b.deregister().await.unwrap();
        until(&mut rx, Duration::from_secs(2), "b deregistered", |v| {
            !v.is_live("b")
        })
        .await;
        // A node that is gone can be forgotten: its blocks are freed.
        let freed = a.forget_node("b").await.unwrap();
        assert_eq!(freed.len(), 3);
        assert_eq!(a.forget_node("a").await.unwrap_err().kind, Kind::Conflict);
        until(&mut rx, Duration::from_secs(2), "b's blocks freed", |v| {
            v.node_blocks("b").count() == 0
        })
        .await;
        Ok(())
    })
    .unwrap();
}

#[test]
fn racing_network_creates_never_overlap_and_removal_waits_for_blocks() {
    let e = etcd!("cs-nets");
    let eps = e.endpoints();
    block_on_in(&e.ns, || async move {
        let a = node(&eps, "a", 1).await;
        let b = node(&eps, "b", 2).await;
        let c = node(&eps, "c", 3).await;

        // Overlapping subnets asked for at the same moment: exactly one wins, every round.
        for round in 0..5u8 {
            let (x, y) = (format!("x{round}"), format!("y{round}"));
            let s1 = format!("10.{}.0.0/16", 100 + round);
            let s2 = format!("10.{}.128.0/17", 100 + round);
            let (r1, r2) = tokio::join!(
                a.create_network(spec(&x, Some(&s1)), &[]),
                b.create_network(spec(&y, Some(&s2)), &[])
            );
            assert!(r1.is_ok() != r2.is_ok(), "round {round}: {r1:?} {r2:?}");
            let err = r1.err().or(r2.err()).unwrap();
            assert_eq!(err.kind, Kind::Conflict, "{err}");
            assert!(err.to_string().contains("overlaps"), "{err}");
        }

        // Six automatic subnets at once: all created, distinct VNIs, no overlap.
        let mut set = JoinSet::new();
        for (i, n) in [&a, &b, &c, &a, &b, &c].into_iter().enumerate() {
            let n = n.clone();
            set.spawn(async move { n.create_network(spec(&format!("auto{i}"), None), &[]).await });
        }
        let mut made = Vec::new();
        while let Some(r) = set.join_next().await {
            made.push(r.unwrap().expect("create"));
        }
        let all = a.list().await.unwrap();
        assert_eq!(all.networks.len(), 11);
        let vnis: HashSet<u32> = all.networks.values().map(|n| n.vni).collect();
        assert_eq!(vnis.len(), 11, "{:?}", all.networks);
        assert_eq!(vnis, (1..=11).collect());
        let nets: Vec<_> = all.networks.values().collect();
        for (i, p) in nets.iter().enumerate() {
            for q in &nets[i + 1..] {
                assert!(
                    !p.subnet.contains(&q.subnet.network())
                        && !q.subnet.contains(&p.subnet.network()),
                    "{p:?} overlaps {q:?}"
                );
            }
        }

        // Names, local subnets, bad sizes.
        assert_eq!(
            kind(a.create_network(spec("auto0", None), &[]).await),
            Kind::Conflict
        );
        assert_eq!(
            kind(
                a.create_network(spec("loc", Some("10.254.0.0/24")), &[net("10.254.0.0/22")])
                    .await
            ),
            Kind::Conflict
        );
        let small = NetworkSpec {
            block_prefix: Some(31),
            ..spec("small", Some("10.200.0.0/24"))
        };
        assert_eq!(kind(a.create_network(small, &[]).await), Kind::BadInput);

        // Removal is refused while a block is claimed, naming the holders.
        let blk_b = b.claim_block("auto0").await.unwrap();
        let blk_c = c.claim_block("auto0").await.unwrap();
        let err = a.remove_network("auto0").await.unwrap_err();
        assert_eq!(err.kind, Kind::Conflict, "{err}");
        let msg = err.to_string();
        assert!(msg.contains("b, c") && msg.contains("in use"), "{msg}");
        b.release_block("auto0", blk_b).await.unwrap();
        b.release_block("auto0", blk_b).await.unwrap(); // already released: fine
        assert_eq!(kind(a.remove_network("auto0").await), Kind::Conflict);
        c.release_block("auto0", blk_c).await.unwrap();
        let vni = all.networks["auto0"].vni;
        a.remove_network("auto0").await.unwrap();
        assert_eq!(kind(a.remove_network("auto0").await), Kind::NotFound);
        // Its VNI is free again.
        let again = c.create_network(spec("again", None), &[]).await.unwrap();
        assert_eq!(again.vni, vni);
        assert!(made.iter().any(|m| m.name == "auto0"));
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_store_that_goes_away_fails_calls_fast_and_the_watcher_catches_up() {
    let mut e = etcd!("cs-down");
    let eps = e.endpoints();
    let ns = e.ns.clone();
    let e = &mut e;
    block_on_in(&ns, || async move {
        let a = node(&eps, "a", 1).await;
        let b = node(&eps, "b", 2).await;
        a.create_network(spec("blue", None), &[]).await.unwrap();
        let blk = a.claim_block("blue").await.unwrap();
        let mut rx = a.watch();
        until(&mut rx, Duration::from_secs(5), "first list", |v| {
            v.healthy && v.networks.contains_key("blue")
        })
        .await;

        e.stop();
        let t0 = Instant::now();
        let err = a.create_network(spec("red", None), &[]).await.unwrap_err();
        let took = t0.elapsed();
        assert_eq!(err.kind, Kind::Unavailable, "{err}");
        assert!(took < TIMEOUT + Duration::from_millis(500), "{took:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("is unreachable") && msg.contains(&eps[0]),
            "{msg}"
        );
        eprintln!("create while down: {took:?}: {msg}");
        let t0 = Instant::now();
        let (r1, r2, r3, r4) = tokio::join!(
            a.claim_block("blue"),
            a.release_block("blue", blk),
            a.list(),
            b.remove_network("blue"),
        );
        assert!(t0.elapsed() < TIMEOUT + Duration::from_millis(500));
        assert_eq!(kind(r1), Kind::Unavailable);
        assert_eq!(kind(r2), Kind::Unavailable);
        assert_eq!(kind(r3), Kind::Unavailable);
        assert_eq!(kind(r4), Kind::Unavailable);
        let v = until(&mut rx, Duration::from_secs(5), "unhealthy", |v| !v.healthy).await;
        assert!(v.networks.contains_key("blue"), "the data is kept: {v:?}");
        assert!(
            v.error.as_deref().unwrap_or("").contains("unreachable"),
            "{v:?}"
        );

        let t1 = Instant::now();
        e.start().unwrap();
        eprintln!("etcd restart took {:?}", t1.elapsed());
        let t0 = Instant::now();
        // Another node creates a network as soon as the store is back (its first call may
        // still find its connection down; a user would retry).
        let mut created = None;
        while created.is_none() && t0.elapsed() < Duration::from_secs(8) {
            match b.create_network(spec("late", None), &[]).await {
                Ok(n) => created = Some(n),
                Err(e) if e.kind == Kind::Unavailable => {
                    eprintln!("after restart: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            created.is_some(),
            "the store came back but calls still fail"
        );
        eprintln!("first create after restart: {:?}", t0.elapsed());
        let v = until(&mut rx, Duration::from_secs(10), "healthy with late", |v| {
            v.healthy && v.networks.contains_key("late")
        })
        .await;
        eprintln!("watcher caught up after {:?}", t0.elapsed());
        // The leases outlived the store's restart; the blocks are where they were.
        assert!(v.is_live("a") && v.is_live("b"), "{v:?}");
        assert_eq!(a.my_blocks("blue").await.unwrap(), vec![blk]);
        a.claim_block("blue").await.unwrap();
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_compaction_under_the_watcher_keeps_the_view_complete() {
    let e = etcd!("cs-compact");
    let eps = e.endpoints();
    let e = &e;
    block_on_in(&e.ns, || async move {
        let a = node(&eps, "a", 1).await;
        a.create_network(spec("one", None), &[]).await.unwrap();
        a.claim_block("one").await.unwrap();
        let mut rx = a.watch();
        until(&mut rx, Duration::from_secs(5), "first list", |v| {
            v.healthy && v.networks.contains_key("one")
        })
        .await;
        let old = a.list().await.unwrap();

        // Changes, then a compaction of all history.
        a.create_network(spec("two", None), &[]).await.unwrap();
        let b = node(&eps, "b", 2).await;
        b.claim_block("two").await.unwrap();
        let gone = a.claim_block("one").await.unwrap();
        a.release_block("one", gone).await.unwrap();
        let compacted = e.compact().unwrap();
        assert!(compacted > old.revision);

        // The running watcher goes on: changes after the compaction arrive.
        a.create_network(spec("three", None), &[]).await.unwrap();
        until(&mut rx, Duration::from_secs(5), "three", |v| {
            v.networks.contains_key("three") && v.is_live("b")
        })
        .await;

        // A watcher starting from before the compaction cannot replay: it lists again, and
        // loses nothing (no block or node dropped for want of events).
        let mut late = a.watch_from(old.clone());
        let now = a.list().await.unwrap();
        let v = until(&mut late, Duration::from_secs(5), "re-listed", |v| {
            v.revision >= now.revision
        })
        .await;
        assert!(v.healthy);
        assert_eq!(content(&v), content(&now));
        assert_eq!(v.blocks.len(), 2, "{v:?}");

        // And both follow what comes next.
        a.create_network(spec("four", None), &[]).await.unwrap();
        for rx in [&mut rx, &mut late] {
            until(rx, Duration::from_secs(5), "four", |v| {
                v.networks.contains_key("four")
            })
            .await;
        }
        assert_eq!(content(&late.borrow()), content(&a.list().await.unwrap()));
        assert_eq!(content(&rx.borrow()), content(&a.list().await.unwrap()));
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_three_member_store_loses_one_member_and_nothing_changes() {
    if !can_run() {
        return;
    }
    let mut e = Etcd::cluster("cs-three", 3).expect("etcd");
    let eps = e.endpoints();
    let ns = e.ns.clone();
    let e = &mut e;
    block_on_in(&ns, || async move {
        let a = node(&eps, "a", 1).await;
        let b = node(&eps, "b", 2).await;
        a.create_network(spec("blue", None), &[]).await.unwrap();
        let mut rx = b.watch();
        until(&mut rx, Duration::from_secs(5), "blue", |v| {
            v.networks.contains_key("blue")
        })
        .await;
        e.stop_member(0);
        // Calls go on through the other members (a retry may be needed while the client
        // notices the dead one).
        let t0 = Instant::now();
        let blk = loop {
            match a.claim_block("blue").await {
                Ok(b) => break b,
                Err(err)
                    if err.kind == Kind::Unavailable && t0.elapsed() < Duration::from_secs(8) =>
                {
                    eprintln!("while member 0 is down: {err}");
                }
                Err(err) => panic!("{err}"),
            }
        };
        b.create_network(spec("red", None), &[]).await.unwrap();
        until(&mut rx, Duration::from_secs(10), "red and the block", |v| {
            v.healthy
                && v.networks.contains_key("red")
                && v.node_blocks("a").any(|x| x.block == blk)
        })
        .await;
        // The leases are renewed through the others: nobody drops out.
        tokio::time::sleep(TTL + Duration::from_secs(1)).await;
        let v = b.list().await.unwrap();
        assert!(v.is_live("a") && v.is_live("b"), "{v:?}");
        Ok(())
    })
    .unwrap();
}

/// etcd closes connections that ping it more often than its `--grpc-keepalive-min-time` (5 s)
/// allows ("too many pings"); an idle watch must stay up.
#[test]
fn an_idle_watch_stays_connected() {
    let e = etcd!("cs-idle");
    let eps = e.endpoints();
    block_on_in(&e.ns, || async move {
        // Not registered: no lease traffic, the watch stream alone.
        let a = Cluster::connect(config(eps, "a", 1)).await.unwrap();
        let mut rx = a.watch();
        until(&mut rx, Duration::from_secs(5), "listed", |v| v.healthy).await;
        let t0 = Instant::now();
        let mut changes = Vec::new();
        while t0.elapsed() < Duration::from_secs(12) {
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await {
                let v = rx.borrow_and_update().clone();
                changes.push(format!(
                    "{:?}: healthy {} {:?}",
                    t0.elapsed(),
                    v.healthy,
                    v.error
                ));
            }
        }
        assert!(changes.is_empty(), "{changes:#?}");
        Ok(())
    })
    .unwrap();
}
