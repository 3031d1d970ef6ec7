//! Command-line interface (clap derive); the `///` docs are the `--help` text.

use std::{net::Ipv4Addr, ops::RangeInclusive, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::model::{ports::parse_port_range, Pool, Rate, Size, Stance};

fn pool(s: &str) -> anyhow::Result<Pool> {
    Pool::new(
        s.parse()
            .map_err(|e| anyhow::anyhow!("{s:?} is not an IPv4 CIDR: {e}"))?,
    )
}

#[derive(Parser, Debug)]
#[command(
    name = "tollgate",
    version,
    about = "eBPF container datapath: port maps, NAT, filtering and rate limits from BPF maps instead of iptables"
)]
pub struct Cli {
    /// The daemon's unix socket.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_SOCKET",
        default_value = "/run/tollgate/tollgate.sock"
    )]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the node agent: load the datapath, apply the saved state, serve the CLI.
    Daemon(DaemonArgs),
    /// Remove everything a daemon with these flags created (programs, pins, veths, namespaces, state).
    Reset(ResetArgs),
    /// Version, attach points, program ids, map fill levels, counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Containers: namespace, veth pair and a /30 of their network's subnet.
    #[command(subcommand)]
    Container(ContainerCmd),
    /// Networks: subnets whose containers reach each other (ICC) and no other network's.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Cluster nodes (cluster mode).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Port maps (DNAT), Docker `-p` syntax.
    #[command(subcommand)]
    Port(PortCmd),
    /// The NAT/conntrack table.
    #[command(subcommand)]
    Conntrack(ConntrackCmd),
    /// Per-container rate limits (eBPF token buckets, no qdiscs).
    #[command(subcommand)]
    Limit(LimitCmd),
    /// ICC links and per-container egress policy.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Per-container counters: rx/tx packets and bytes, drops by reason, conntrack entries.
    Stats {
        name: Option<String>,
        #[arg(long)]
        json: bool,
        /// Refresh every second with per-second rates (Ctrl-C to stop).
        #[arg(long)]
        watch: bool,
    },
    /// Self-contained sandbox: two HTTP containers, port maps, a client, a live table.
    ///
    /// With --cluster: an etcd member and two nodes in namespaces of their own, a container
    /// serving HTTP on each, requests across them over the VXLAN overlay, a live table per node.
    /// Everything is removed on exit (also on Ctrl-C).
    Demo(DemoArgs),
    /// (internal) HTTP echo server used by the demo inside a container namespace.
    #[command(hide = true)]
    DemoServe {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        name: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell).
    ///
    /// For example `tollgate completions bash > ~/.local/share/bash-completion/completions/tollgate`;
    /// the Debian package installs those of bash, zsh and fish.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// (internal) Write the man pages of tollgate, its subcommands and tollgate-cni into DIR.
    #[command(name = "__man", hide = true)]
    Man { dir: PathBuf },
}

#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Interface that faces the outside world (in the node namespace).
    #[arg(long)]
    pub uplink: String,
    /// Run the whole node inside the named network namespace (/run/netns/NAME).
    #[arg(long)]
    pub netns: Option<String>,
    /// Address pool; each container gets a /30 of it.
    #[arg(long, default_value = "10.254.0.0/22", value_parser = pool)]
    pub pool: Pool,
    /// Host ports allocated when a port map gives none.
    #[arg(long, default_value = "61001-65000", value_parser = parse_port_range)]
    pub port_range: RangeInclusive<u16>,
    /// Source address for masquerade (default: the uplink's primary IPv4 address).
    #[arg(long)]
    pub snat_ip: Option<Ipv4Addr>,
    /// Allow container-to-container traffic by IP.
    #[arg(long)]
    pub icc: bool,
    /// Where the desired state is persisted.
    #[arg(long, default_value = "/var/lib/tollgate")]
    pub state_dir: PathBuf,
    /// bpffs directory for pinned programs, links and maps.
    #[arg(long, default_value = "/sys/fs/bpf/tollgate")]
    pub bpffs: PathBuf,
    /// Conntrack table size (entries; LRU when full).
    #[arg(long, default_value_t = datapath_common::maps::CONNTRACK_MAX_DEFAULT)]
    pub conntrack_max: u32,
    /// Source ports (and ICMP echo ids) used for masquerade, LO-HI.
    #[arg(long, default_value = "20000-32767", value_parser = parse_port_range)]
    pub nat_ports: RangeInclusive<u16>,
    /// Idle timeout of established TCP conntrack entries, seconds.
    #[arg(long, default_value_t = datapath_common::config::CT_TCP_EST_S_DEFAULT)]
    pub ct_tcp_timeout: u32,
    /// Idle timeout of UDP conntrack entries, seconds.
    #[arg(long, default_value_t = datapath_common::config::CT_UDP_S_DEFAULT)]
    pub ct_udp_timeout: u32,
    /// Idle timeout of ICMP echo conntrack entries, seconds.
    #[arg(long, default_value_t = datapath_common::config::CT_ICMP_S_DEFAULT)]
    pub ct_icmp_timeout: u32,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464); off by default. At most
    /// 64 connections at once, each closed without a request within 10 s or after a minute.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// How often expired conntrack entries are removed, seconds.
    #[arg(long, default_value_t = 5)]
    pub ct_gc_interval: u64,
    /// Cluster mode: networks, nodes and address blocks in this etcd
    /// (etcd://HOST:PORT[,HOST:PORT...]); containers of other nodes reached over VXLAN.
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// This node's name in the cluster (default: the host name).
    #[arg(long, requires = "cluster")]
    pub node_name: Option<String>,
    /// The address other nodes send this node's VXLAN traffic to (default: the uplink's
    /// primary address).
    #[arg(long, requires = "cluster")]
    pub underlay_ip: Option<Ipv4Addr>,
    /// Where in etcd the cluster's keys live.
    #[arg(long, default_value = "/tollgate", requires = "cluster")]
    pub cluster_prefix: String,
    /// Seconds after which the other nodes drop a node whose daemon stopped renewing its
    /// registration.
    #[arg(long, default_value_t = 10, requires = "cluster")]
    pub node_ttl: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ResetArgs {
    /// The daemon's node namespace, as given to `daemon --netns`.
    #[arg(long)]
    pub netns: Option<String>,
    #[arg(long, default_value = "/var/lib/tollgate")]
    pub state_dir: PathBuf,
    #[arg(long, default_value = "/sys/fs/bpf/tollgate")]
    pub bpffs: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ContainerCmd {
    /// Create a container network: namespace tg-NAME (or --netns), veth, /30, default route.
    Add {
        name: String,
        /// Use this existing namespace (a path such as /run/netns/foo) instead of creating tg-NAME.
        #[arg(long)]
        netns: Option<PathBuf>,
        /// Ask for this container address (the .2 of a free /30 of its network's subnet).
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Join this network (default: `default`, the daemon's --pool).
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a container network with its port maps and conntrack entries.
    Del { name: String },
    /// List containers.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List the cluster's nodes: their name, underlay address, state (up or down), blocks, containers and when last seen.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a network; prints its subnet. Its containers reach each other (unless --no-icc) and no other network's (links and published ports still cross).
    Create {
        name: String,
        /// Its subnet (default: a free /24 of 10.90.0.0/16); must not overlap another network's.
        #[arg(long, value_name = "CIDR")]
        subnet: Option<String>,
        /// Its containers may not reach each other by IP.
        #[arg(long)]
        no_icc: bool,
        /// No masquerade and no way out of the node; its containers' ports cannot be published.
        #[arg(long)]
        internal: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove a network (refused while containers are attached; `default` always exists).
    Rm { name: String },
    /// List networks: name, subnet, scope, vni, icc, internal, containers.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
#[expect(
    clippy::doc_markdown,
    reason = "the docs are the --help text, where specs read better without backticks"
)]
pub enum PortCmd {
    /// Publish ports: [HOST_IP:][HOST_PORT[-END]]:CONTAINER_PORT[-END][/tcp|/udp]; several specs are applied as one batch. Prints the host port(s).
    Add {
        name: String,
        #[arg(required = true)]
        specs: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Unpublish ports: [HOST_IP:]HOST_PORT[-END][/tcp|/udp].
    Del {
        name: String,
        #[arg(required = true)]
        specs: Vec<String>,
    },
    /// List port maps (of one container, or all).
    List {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConntrackCmd {
    /// List NAT/conntrack entries.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove conntrack entries (all, or one container's).
    Flush { name: Option<String> },
}

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Requests the client makes per container (with --cluster: each way).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub requests: u32,
    /// Cluster mode instead: an etcd member (Debian's etcd-server) and two nodes, a container on
    /// each, requests between them over the VXLAN overlay.
    #[arg(long)]
    pub cluster: bool,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Let FROM open connections to TO by IP even with ICC off (one-way).
    Link { from: String, to: String },
    /// Remove a link.
    Unlink { from: String, to: String },
    /// Default stance for NAME's new outbound flows (default: allow).
    Egress {
        name: String,
        #[arg(value_name = "allow|deny")]
        stance: Stance,
    },
    /// Allow NAME's new flows to CIDR[:PORT[-PORT]][/tcp|/udp|/icmp].
    Allow { name: String, rule: String },
    /// Deny NAME's new flows to CIDR[:PORT[-PORT]][/tcp|/udp|/icmp].
    Deny { name: String, rule: String },
    /// Remove NAME's rule with exactly this CIDR[:PORT[-PORT]][/proto].
    Rm { name: String, rule: String },
    /// NAME's egress stance, links and rules.
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LimitCmd {
    /// Limit NAME's egress (what it sends) and/or ingress (what it receives), e.g. 50mbit.
    Set {
        name: String,
        #[arg(long, value_name = "RATE")]
        egress: Option<Rate>,
        #[arg(long, value_name = "RATE")]
        ingress: Option<Rate>,
        /// Bucket depth, e.g. 512kb (default: sized for TCP at that rate, see docs/ratelimit.md).
        #[arg(long, value_name = "SIZE")]
        burst: Option<Size>,
    },
    /// Remove NAME's limits.
    Clear { name: String },
    /// Show limits (of NAME, or all).
    Show {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
}
