//! The cluster store: networks, node membership and per-node address blocks kept in etcd, so
//! that several nodes share them (`tollgate daemon --cluster etcd://...`). The schema, and why
//! it is what it is, is in docs/cluster.md.
//!
//! Beside `store` (the node-local state) and below `node`, which calls it; it knows nothing of
//! the node or the datapath. `plan` holds the pure decisions (VNI, subnet, block, URL),
//! `schema` the keys, records and the `ClusterView`, `watcher` the task that keeps a view up to
//! date. Every call to the store is bounded by `ClusterConfig::timeout` and fails with an
//! `Error` whose `Kind` says what the API should answer (`Unavailable`: 503).

pub mod error;
pub mod plan;
pub mod schema;
mod watcher;

use std::{
    collections::{BTreeSet, HashSet},
    fmt::Display,
    future::Future,
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, GetResponse, KeyValue, PutOptions, Txn,
    TxnOp, TxnOpResponse, TxnResponse,
};
use ipnet::Ipv4Net;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

pub use error::{Error, Kind, Result};
pub use plan::parse_cluster_url;
pub use schema::{BlockRecord, ClusterView, NetworkRecord, NetworkSpec, NodeRecord};

use error::{etcd_kind, fail};
use schema::Keys;

use crate::model::network::validate_name;

pub const DEFAULT_PREFIX: &str = "/tollgate";
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// How long one store call may take before it counts as "unreachable".
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Tries of a block claim that lost a race before giving up (each try re-reads the blocks).
const CLAIM_TRIES: u32 = 64;
/// Tries of the other read-check-write operations.
const TXN_TRIES: u32 = 16;
/// HTTP/2 pings on the connection to the store, while a stream (watch, lease) is open.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// The pause before a store call that could not reach the store is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Longest wait between two attempts of the background tasks.
const MAX_BACKOFF: Duration = Duration::from_secs(4);

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `http://IP:PORT` each (see `parse_cluster_url`).
    pub endpoints: Vec<String>,
    /// Every key lives under it (`/tollgate`).
    pub prefix: String,
    pub node_name: String,
    pub underlay_ip: Ipv4Addr,
    /// The node's lease: it is dropped by the others this long after its daemon stops.
    pub ttl: Duration,
    /// The bound of every store call.
    pub timeout: Duration,
}

impl ClusterConfig {
    /// A config with the default prefix, TTL and timeout.
    pub fn new(endpoints: Vec<String>, node_name: &str, underlay_ip: Ipv4Addr) -> Self {
        Self {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            node_name: node_name.to_string(),
            underlay_ip,
            ttl: DEFAULT_TTL,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A handle on the cluster store; clones share the connection and the background tasks, which
/// stop when the last clone is dropped (without revoking the lease: that is a crash, as far as
/// the other nodes can tell; `deregister` is the graceful way out).
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    keeper: Mutex<Option<Keeper>>,
    watcher: Mutex<Option<(watch::Sender<ClusterView>, JoinHandle<()>)>>,
    /// Watchers started by `watch_from`.
    others: Mutex<Vec<JoinHandle<()>>>,
}

struct Keeper {
    task: JoinHandle<()>,
    /// The lease the task keeps alive (0: none yet).
    lease: Arc<AtomicI64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(k) = lock(&self.keeper).take() {
            k.task.abort();
        }
        if let Some((_, t)) = lock(&self.watcher).take() {
            t.abort();
        }
        for t in lock(&self.others).drain(..) {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Cluster {
    /// A handle on the store at `cfg.endpoints`. Nothing is sent yet: this succeeds while the
    /// store is down (the first calls then fail with `Unavailable`), so a node can start
    /// without its store and catch up later.
    pub async fn connect(cfg: ClusterConfig) -> Result<Self> {
        let prefix = plan::normalize_prefix(&cfg.prefix).map_err(|e| Error {
            kind: Kind::BadInput,
            err: e,
        })?;
        validate_name(&cfg.node_name).map_err(|_| {
            Error::new(
                Kind::BadInput,
                format!(
                    "invalid node name {:?} (1-32 characters: letters, digits, '-', '_', '.')",
                    cfg.node_name
                ),
            )
        })?;
        if cfg.endpoints.is_empty() {
            fail!(BadInput, "no etcd endpoint given");
        }
        if cfg.ttl < Duration::from_secs(1) || cfg.timeout.is_zero() {
            fail!(
                BadInput,
                "the node TTL must be at least 1 s and the timeout above 0"
            );
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(cfg.timeout)
            // Dead connections (a store that vanished without a FIN) end the watch and
            // keep-alive streams instead of leaving them silent forever. Not more often than
            // etcd's --grpc-keepalive-min-time (5 s), and only while a stream is open: etcd
            // closes a connection that pings more ("too many pings"), every 8 s or so.
            .with_keep_alive(KEEPALIVE_INTERVAL, cfg.timeout)
            .with_keep_alive_while_idle(false)
            // A member that lost its quorum refuses (and cancels watches) instead of serving
            // stale data.
            .with_require_leader(true);
        let endpoints = cfg.endpoints.join(",");
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(|e| {
                Error::new(
                    Kind::BadInput,
                    format!(
                        "cannot use the etcd endpoints {endpoints}: {}",
                        describe(&e)
                    ),
                )
            })?;
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cfg = ClusterConfig { prefix, ..cfg };
        Ok(Self {
            inner: Arc::new(Inner {
                core: Core {
                    keys: Arc::new(Keys {
                        prefix: cfg.prefix.clone(),
                    }),
                    cfg: Arc::new(cfg),
                    client,
                    started_at,
                },
                keeper: Mutex::new(None),
                watcher: Mutex::new(None),
                others: Mutex::new(Vec::new()),
            }),
        })
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.core.cfg
    }

    /// Registers this node (`<p>/nodes/<name>` on a lease of `ttl`) and starts the task that
    /// keeps it registered: it renews the lease, puts the key back after a broken connection,
    /// registers anew when the lease expired, and retries with backoff forever. The result is
    /// the first attempt's; the task keeps trying even when it failed (say, the store is down
    /// while the daemon starts), until `deregister` or the last handle's drop.
    pub async fn register(&self) -> Result<()> {
        let core = &self.inner.core;
        let first = core.register_once().await;
        let lease = Arc::new(AtomicI64::new(*first.as_ref().unwrap_or(&0)));
        let task = tokio::spawn(keep_registered(core.clone(), lease.clone()));
        if let Some(old) = lock(&self.inner.keeper).replace(Keeper { task, lease }) {
            old.task.abort();
        }
        first.map(|_| ())
    }

    /// Stops renewing and revokes the lease: the node's key goes at once (its blocks stay).
    pub async fn deregister(&self) -> Result<()> {
        let Some(k) = lock(&self.inner.keeper).take() else {
            return Ok(());
        };
        k.task.abort();
        let id = k.lease.load(Ordering::SeqCst);
        if id == 0 {
            return Ok(());
        }
        let core = &self.inner.core;
        match core
            .call(true, "revoking the node's lease", |mut c| async move {
                c.lease_revoke(id).await
            })
            .await
        {
            // Already expired: the key is gone anyway.
            Err(e) if e.kind == Kind::NotFound => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Creates a cluster network in one transaction (see docs/cluster.md): the name and the
    /// VNI must be free, and no other network may have been created since the subnets were
    /// read, so two concurrent creates cannot both pass the overlap check. The subnet must not
    /// overlap another network's nor one of `local_subnets` (the node's own pool and networks).
    pub async fn create_network(
        &self,
        spec: NetworkSpec,
        local_subnets: &[Ipv4Net],
    ) -> Result<NetworkRecord> {
        let core = &self.inner.core;
        let name = spec.name.as_str();
        // Refuse what no store content could make right before reading anything.
        plan::new_network(&spec, &[], &HashSet::new(), &[])?;
        for _ in 0..TXN_TRIES {
            let k = &core.keys;
            let got = core
                .read(
                    "reading the networks",
                    vec![
                        TxnOp::get(k.networks(), Some(GetOptions::new().with_prefix())),
                        TxnOp::get(k.vnis(), Some(GetOptions::new().with_prefix())),
                        TxnOp::get(k.networks_meta(), None),
                    ],
                )
                .await?;
            let networks: Vec<NetworkRecord> = got[0].iter().filter_map(parse).collect();
            let vnis: HashSet<u32> = got[1]
                .iter()
                .filter_map(|kv| kv.key_str().ok()?.rsplit('/').next()?.parse().ok())
                .collect();
            let meta_rev = got[2].first().map_or(0, KeyValue::mod_revision);
            let rec = plan::new_network(&spec, &networks, &vnis, local_subnets)?;
            let (subnet, vni) = (rec.subnet, rec.vni);
            let txn = Txn::new()
                .when([
                    Compare::create_revision(k.network(name), CompareOp::Equal, 0),
                    Compare::create_revision(k.vni(vni), CompareOp::Equal, 0),
                    Compare::mod_revision(k.networks_meta(), CompareOp::Equal, meta_rev),
                ])
                .and_then([
                    TxnOp::put(k.network(name), json(&rec), None),
                    TxnOp::put(k.vni(vni), name, None),
                    TxnOp::put(k.networks_meta(), name, None),
                ]);
            if core.txn("creating the network", txn).await?.succeeded() {
                info!(network = name, %subnet, vni, "cluster network created");
                return Ok(rec);
            }
            debug!(
                network = name,
                "network create raced with another; reading again"
            );
        }
        fail!(
            Conflict,
            "networks are being created too fast to create {name:?}; try again"
        )
    }

    /// Removes a cluster network (its record and its VNI), refused while any node holds a
    /// block of it: the nodes must remove its containers (and release their blocks) first.
    pub async fn remove_network(&self, name: &str) -> Result<()> {
        let core = &self.inner.core;
        let k = &core.keys;
        for _ in 0..TXN_TRIES {
            let got = core
                .read(
                    "reading the network",
                    vec![
                        TxnOp::get(k.network(name), None),
                        TxnOp::get(
                            k.network_blocks(name),
                            Some(GetOptions::new().with_prefix()),
                        ),
                    ],
                )
                .await?;
            let Some(kv) = got[0].first() else {
                fail!(NotFound, "no cluster network {name:?}");
            };
            let rec: NetworkRecord = parse(kv).ok_or_else(|| unreadable(kv))?;
            let holders: BTreeSet<String> = got[1]
                .iter()
                .filter_map(|kv| parse::<BlockRecord>(kv).map(|b| b.node))
                .collect();
            if !holders.is_empty() {
                fail!(
                    Conflict,
                    "network {name:?} is in use: node{} {} hold{} address blocks of it (remove its containers there first)",
                    if holders.len() == 1 { "" } else { "s" },
                    holders.into_iter().collect::<Vec<_>>().join(", "),
                    if got[1].len() == 1 { "s" } else { "" },
                );
            }
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(k.network(name), CompareOp::Equal, kv.mod_revision()),
                    // No key under blocks/<name>/ (a range compare holds when no key is there).
                    Compare::create_revision(k.network_blocks(name), CompareOp::Equal, 0)
                        .with_prefix(),
                ])
                .and_then([
                    TxnOp::delete(k.network(name), None),
                    TxnOp::delete(k.vni(rec.vni), None),
                ]);
            if core.txn("removing the network", txn).await?.succeeded() {
                info!(network = name, "cluster network removed");
                return Ok(());
            }
        }
        fail!(Conflict, "network {name:?} keeps changing; try again")
    }

    /// Claims the first free block of a network's subnet for this node (compare-and-swap on
    /// the block's key; a lost race re-reads and tries the next one). The block has no lease:
    /// it stays this node's across restarts until `release_block`.
    pub async fn claim_block(&self, network: &str) -> Result<Ipv4Net> {
        let core = &self.inner.core;
        let k = &core.keys;
        let me = &core.cfg.node_name;
        for attempt in 0..CLAIM_TRIES {
            let got = core
                .read(
                    "reading the network's blocks",
                    vec![
                        TxnOp::get(k.network(network), None),
                        TxnOp::get(
                            k.network_blocks(network),
                            Some(GetOptions::new().with_prefix()),
                        ),
                    ],
                )
                .await?;
            let Some(nkv) = got[0].first() else {
                fail!(NotFound, "no cluster network {network:?}");
            };
            let net: NetworkRecord = parse(nkv).ok_or_else(|| unreadable(nkv))?;
            let taken: HashSet<Ipv4Net> = got[1]
                .iter()
                .filter_map(|kv| schema::Key::parse(&k.prefix, kv.key_str().ok()?))
                .filter_map(|key| match key {
                    schema::Key::Block(_, b) => Some(b),
                    _ => None,
                })
                .collect();
            let Some(block) = plan::first_free_block(net.subnet, net.block_prefix, &taken) else {
                fail!(
                    Conflict,
                    "the subnet {} of network {network:?} is exhausted: all its /{} blocks are claimed",
                    net.subnet,
                    net.block_prefix
                );
            };
            let rec = BlockRecord {
                node: me.clone(),
                network: network.to_string(),
                block,
            };
            let txn = Txn::new()
                .when([
                    Compare::create_revision(k.block(network, block), CompareOp::Equal, 0),
                    // The same network: not removed (and created again) meanwhile.
                    Compare::create_revision(
                        k.network(network),
                        CompareOp::Equal,
                        nkv.create_revision(),
                    ),
                ])
                .and_then([TxnOp::put(k.block(network, block), json(&rec), None)]);
            if core.txn("claiming a block", txn).await?.succeeded() {
                debug!(network, %block, attempt, "block claimed");
                return Ok(block);
            }
        }
        fail!(
            Conflict,
            "could not claim a block of network {network:?} in {CLAIM_TRIES} tries (too many nodes claiming at once); try again"
        )
    }

    /// Gives a block back. Only its holder may: a block of another node is refused. A block
    /// that is not claimed is not an error (the release already happened).
    pub async fn release_block(&self, network: &str, block: Ipv4Net) -> Result<()> {
        let core = &self.inner.core;
        let key = core.keys.block(network, block);
        let me = &core.cfg.node_name;
        for _ in 0..TXN_TRIES {
            let got = core
                .read("reading the block", vec![TxnOp::get(key.clone(), None)])
                .await?;
            let Some(kv) = got[0].first() else {
                return Ok(());
            };
            let rec: BlockRecord = parse(kv).ok_or_else(|| unreadable(kv))?;
            if rec.node != *me {
                fail!(
                    Conflict,
                    "block {block} of network {network:?} belongs to node {:?}, not to {me:?}",
                    rec.node
                );
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::delete(key.clone(), None)]);
            if core.txn("releasing a block", txn).await?.succeeded() {
                debug!(network, %block, "block released");
                return Ok(());
            }
        }
        fail!(Conflict, "block {block} keeps changing; try again")
    }

    /// This node's blocks of a network, in address order (read from the store).
    pub async fn my_blocks(&self, network: &str) -> Result<Vec<Ipv4Net>> {
        let core = &self.inner.core;
        let got = core
            .read(
                "reading the blocks",
                vec![TxnOp::get(
                    core.keys.network_blocks(network),
                    Some(GetOptions::new().with_prefix()),
                )],
            )
            .await?;
        let mut v: Vec<Ipv4Net> = got[0]
            .iter()
            .filter_map(parse::<BlockRecord>)
            .filter(|b| b.node == core.cfg.node_name && b.network == network)
            .map(|b| b.block)
            .collect();
        v.sort();
        Ok(v)
    }

    /// Frees the blocks of a node that is gone for good (an operator's decision: a down node
    /// keeps its blocks, so that it finds them again when it comes back). Refused while the
    /// node is registered. Returns the blocks freed.
    pub async fn forget_node(&self, node: &str) -> Result<Vec<BlockRecord>> {
        let core = &self.inner.core;
        let k = &core.keys;
        for _ in 0..TXN_TRIES {
            let got = core
                .read(
                    "reading the node and the blocks",
                    vec![
                        TxnOp::get(k.node(node), None),
                        TxnOp::get(k.blocks(), Some(GetOptions::new().with_prefix())),
                    ],
                )
                .await?;
            if !got[0].is_empty() {
                fail!(
                    Conflict,
                    "node {node:?} is up; only a node that is down can be forgotten"
                );
            }
            let mine: Vec<(&KeyValue, BlockRecord)> = got[1]
                .iter()
                .filter_map(|kv| parse::<BlockRecord>(kv).map(|b| (kv, b)))
                .filter(|(_, b)| b.node == node)
                .collect();
            if mine.is_empty() {
                return Ok(Vec::new());
            }
            let mut cmp = vec![Compare::create_revision(k.node(node), CompareOp::Equal, 0)];
            let mut ops = Vec::new();
            for (kv, _) in &mine {
                cmp.push(Compare::mod_revision(
                    kv.key().to_vec(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                ));
                ops.push(TxnOp::delete(kv.key().to_vec(), None));
            }
            let txn = Txn::new().when(cmp).and_then(ops);
            if core
                .txn("freeing the node's blocks", txn)
                .await?
                .succeeded()
            {
                let freed: Vec<BlockRecord> = mine.into_iter().map(|(_, b)| b).collect();
                info!(
                    node,
                    blocks = freed.len(),
                    "node forgotten, its blocks freed"
                );
                return Ok(freed);
            }
        }
        fail!(
            Conflict,
            "the blocks of node {node:?} keep changing; try again"
        )
    }

    /// The whole cluster as the store holds it now.
    pub async fn list(&self) -> Result<ClusterView> {
        self.inner.core.list().await
    }

    /// A view of the cluster kept up to date by one task shared by every caller: it lists,
    /// then follows the store's changes; a compacted or broken watch lists again (a change is
    /// never inferred from a missing event). While the store is unreachable the view keeps its
    /// data with `healthy: false`. The first value (revision 0) is a placeholder until the
    /// first list.
    pub fn watch(&self) -> watch::Receiver<ClusterView> {
        let mut w = lock(&self.inner.watcher);
        if let Some((tx, _)) = &*w {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(ClusterView::default());
        let task = tokio::spawn(watcher::run(
            self.inner.core.clone(),
            tx.clone(),
            None,
            false,
        ));
        *w = Some((tx, task));
        rx
    }

    /// A watcher of its own that starts from `view` (a view the caller already has, say
    /// from before a restart) instead of listing first: it follows the changes since
    /// `view.revision`, or lists again when they were compacted away. It stops when its last
    /// receiver is dropped.
    pub fn watch_from(&self, view: ClusterView) -> watch::Receiver<ClusterView> {
        let (tx, rx) = watch::channel(view.clone());
        let task = tokio::spawn(watcher::run(self.inner.core.clone(), tx, Some(view), true));
        let mut others = lock(&self.inner.others);
        others.retain(|t| !t.is_finished());
        others.push(task);
        rx
    }
}

/// What every operation uses: the config, the keys and the client (cheap to clone into tasks,
/// which must not keep `Inner` alive).
#[derive(Clone)]
struct Core {
    cfg: Arc<ClusterConfig>,
    keys: Arc<Keys>,
    client: Client,
    started_at: u64,
}

impl Core {
    fn unavailable(&self, detail: impl Display) -> Error {
        Error::new(
            Kind::Unavailable,
            format!(
                "the cluster store (etcd at {}) is unreachable: {detail}; nothing was changed",
                self.cfg.endpoints.join(",")
            ),
        )
    }

    fn etcd_error(&self, what: &str, e: &etcd_client::Error) -> Error {
        match etcd_kind(e) {
            Kind::Unavailable => self.unavailable(format!("{what}: {}", describe(e))),
            kind => Error::new(
                kind,
                format!(
                    "{what}: the cluster store (etcd at {}) answered: {}",
                    self.cfg.endpoints.join(","),
                    describe(e)
                ),
            ),
        }
    }

    /// One store call, bounded by the timeout. A call that failed because the store could
    /// not be reached is tried again (through the client's balancer, which may pick another
    /// member) until the timeout: a read always, a write (`write`) only when it cannot have
    /// been sent (no connection), as etcd's own Go client does. A write that timed out may
    /// still be made by a store that was only slow; the message says so.
    async fn call<T, F, Fut>(&self, write: bool, what: &str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let mut last = None;
        loop {
            match tokio::time::timeout_at(deadline, f(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    let again = etcd_kind(&e) == Kind::Unavailable
                        && (!write || not_sent(&e))
                        && tokio::time::Instant::now() + RETRY_PAUSE < deadline;
                    if !again {
                        return Err(self.etcd_error(what, &e));
                    }
                    debug!(what, error = %describe(&e), "cluster store call failed; trying again");
                    last = Some(e);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(_) => {
                    let ms = self.cfg.timeout.as_millis();
                    return Err(match last {
                        Some(e) => self.etcd_error(&format!("{what} (for {ms} ms)"), &e),
                        None if write => Error::new(
                            Kind::Unavailable,
                            format!(
                                "the cluster store (etcd at {}) is unreachable: {what}: no answer in {ms} ms (if it is only slow, the change may still be made)",
                                self.cfg.endpoints.join(","),
                            ),
                        ),
                        None => self.unavailable(format!("{what}: no answer in {ms} ms")),
                    });
                }
            }
        }
    }

    async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse> {
        self.call(true, what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Several reads at one revision (a read-only transaction): the key-values of each.
    async fn read(&self, what: &str, gets: Vec<TxnOp>) -> Result<Vec<Vec<KeyValue>>> {
        let n = gets.len();
        let resp = self
            .call(false, what, |mut c| {
                let txn = Txn::new().and_then(gets.clone());
                async move { c.txn(txn).await }
            })
            .await?;
        let out: Vec<Vec<KeyValue>> = resp
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                TxnOpResponse::Get(mut g) => Some(g.take_kvs()),
                _ => None,
            })
            .collect();
        if out.len() != n {
            fail!(
                Internal,
                "{what}: the store answered {} reads of {n}",
                out.len()
            );
        }
        Ok(out)
    }

    async fn list(&self) -> Result<ClusterView> {
        let all = self.keys.all();
        let resp: GetResponse = self
            .call(false, "listing the cluster", |mut c| {
                let all = all.clone();
                async move { c.get(all, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let mut v = ClusterView {
            revision: resp
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision),
            healthy: true,
            ..ClusterView::default()
        };
        for kv in resp.kvs() {
            if let Ok(key) = kv.key_str() {
                v.apply(&self.keys.prefix, key, Some(kv.value()));
            }
        }
        Ok(v)
    }

    fn ttl_secs(&self) -> i64 {
        let ttl = &self.cfg.ttl;
        i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1)
    }

    /// Grants a lease and puts the node's key on it. Returns the lease.
    async fn register_once(&self) -> Result<i64> {
        let ttl = self.ttl_secs();
        let lease = self
            .call(true, "granting the node's lease", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?
            .id();
        match self.put_node(lease).await {
            Ok(()) => {
                info!(node = %self.cfg.node_name, lease, "registered in the cluster store");
                Ok(lease)
            }
            Err(e) => {
                let _ = self
                    .call(true, "revoking a lease", |mut c| async move {
                        c.lease_revoke(lease).await
                    })
                    .await;
                Err(e)
            }
        }
    }

    /// Puts `<p>/nodes/<name>` on `lease`, unless another live node (another underlay IP)
    /// holds the name: two daemons under one name would share blocks.
    async fn put_node(&self, lease: i64) -> Result<()> {
        let key = self.keys.node(&self.cfg.node_name);
        let rec = NodeRecord {
            name: self.cfg.node_name.clone(),
            underlay_ip: self.cfg.underlay_ip,
            started_at: self.started_at,
        };
        for _ in 0..TXN_TRIES {
            let got = self
                .read(
                    "reading the node's registration",
                    vec![TxnOp::get(key.clone(), None)],
                )
                .await?;
            let mod_rev = match got[0].first() {
                None => 0,
                Some(kv) => {
                    if let Some(other) = parse::<NodeRecord>(kv) {
                        if other.underlay_ip != rec.underlay_ip && kv.lease() != lease {
                            fail!(
                                Conflict,
                                "node name {:?} is taken by a live node at {} (it is freed within {} s of that node stopping); give this node another --node-name",
                                rec.name,
                                other.underlay_ip,
                                self.ttl_secs()
                            );
                        }
                    }
                    kv.mod_revision()
                }
            };
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    mod_rev,
                )])
                .and_then([TxnOp::put(
                    key.clone(),
                    json(&rec),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if self
                .txn("putting the node's registration", txn)
                .await?
                .succeeded()
            {
                return Ok(());
            }
        }
        fail!(
            Conflict,
            "the registration of node {:?} keeps changing: is another daemon using this --node-name?",
            self.cfg.node_name
        )
    }

    /// Keeps `lease` alive until it expires (`Ok`) or the connection fails (`Err`).
    /// `put_first`: put the node's key again once the stream is up (after a broken connection,
    /// in case the key went while the lease lived).
    async fn keep_alive(&self, lease: i64, put_first: bool) -> Result<()> {
        let opened = self
            .call(false, "renewing the node's lease", |mut c| async move {
                c.lease_keep_alive(lease).await
            })
            .await;
        let (mut keeper, mut stream) = match opened {
            Ok(s) => s,
            Err(e) if e.kind == Kind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if put_first {
            self.put_node(lease).await?;
        }
        let every = (self.cfg.ttl / 3).max(Duration::from_millis(200));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = keeper.keep_alive().await {
                return Err(self.etcd_error("renewing the node's lease", &e));
            }
            match tokio::time::timeout(self.cfg.timeout, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return Ok(()),
                Ok(Ok(None)) => {
                    return Err(self.unavailable("the lease keep-alive stream was closed"))
                }
                Ok(Err(e)) => {
                    let e = self.etcd_error("renewing the node's lease", &e);
                    return if e.kind == Kind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    };
                }
                Err(_) => {
                    return Err(self.unavailable(format!(
                        "renewing the node's lease: no answer in {} ms",
                        self.cfg.timeout.as_millis()
                    )))
                }
            }
        }
    }
}

/// The keep-alive task: registered, renewing, re-registering; never gives up.
async fn keep_registered(core: Core, lease: Arc<AtomicI64>) {
    let mut attempt = 0u32;
    let mut put_first = false;
    loop {
        let mut id = lease.load(Ordering::SeqCst);
        if id == 0 {
            match core.register_once().await {
                Ok(l) => {
                    id = l;
                    lease.store(l, Ordering::SeqCst);
                    put_first = false;
                }
                Err(e) => {
                    warn!(error = %e, "cluster: registering this node failed; retrying");
                    tokio::time::sleep(plan::backoff(attempt, MAX_BACKOFF)).await;
                    attempt = attempt.saturating_add(1);
                    continue;
                }
            }
        }
        match core.keep_alive(id, put_first).await {
            Ok(()) => {
                warn!(
                    lease = id,
                    "cluster: this node's lease expired; registering again"
                );
                lease.store(0, Ordering::SeqCst);
            }
            Err(e) => {
                warn!(error = %e, "cluster: keeping this node's lease alive failed; retrying");
                put_first = true;
                tokio::time::sleep(plan::backoff(attempt, MAX_BACKOFF)).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
        }
        attempt = 0;
    }
}

/// Whether a failed call certainly never reached the store (no connection could be made).
fn not_sent(e: &etcd_client::Error) -> bool {
    let m = describe(e);
    [
        "connect error",
        "Connection refused",
        "No route to host",
        "Network is unreachable",
    ]
    .iter()
    .any(|s| m.contains(s))
}

/// An etcd client error in one line (tonic's `Status` prints its metadata too).
fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let mut m = s.message().to_string();
            let mut src = s.source();
            while let Some(inner) = src {
                let t = inner.to_string();
                if !m.contains(&t) {
                    m = format!("{m}: {t}");
                }
                src = inner.source();
            }
            m
        }
        etcd_client::Error::TransportError(t) => {
            let mut m = t.to_string();
            let mut src = t.source();
            while let Some(inner) = src {
                m = format!("{m}: {inner}");
                src = inner.source();
            }
            m
        }
        other => other.to_string(),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialize")
}

fn parse<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    serde_json::from_slice(kv.value()).ok()
}

fn unreadable(kv: &KeyValue) -> Error {
    Error::new(
        Kind::Internal,
        format!(
            "the cluster store holds an unreadable record at {}",
            String::from_utf8_lossy(kv.key())
        ),
    )
}
