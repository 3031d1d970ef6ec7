//! A cluster sandbox: several node namespaces, each with a tollgate daemon in cluster mode,
//! on one underlay (a bridge in a namespace of its own, where the etcd member listens too),
//! and a client on the same underlay.
//!
//! ```text
//!   node i ns: up0 192.168.X.(10+i)/24 ─veth─┐
//!   client ns: eth0 192.168.X.200/24 ───veth─┼─ br0 192.168.X.250/24  underlay ns (etcd :2379)
//! ```

use std::{net::Ipv4Addr, path::PathBuf, process::Command};

use anyhow::Result;

use crate::{etcd::Etcd, sh, Daemon};

pub struct ClusterSandbox {
    pub tag: String,
    pub underlay: String,
    pub client: String,
    pub client_ip: Ipv4Addr,
    pub etcd: Etcd,
    pub nodes: Vec<Daemon>,
    pub dir: PathBuf,
    /// The first three octets of the underlay /24.
    net: [u8; 3],
}

impl ClusterSandbox {
    /// `n` nodes named `n0`..; each daemon gets `--cluster`, `--node-name nI`, `--node-ttl
    /// ttl` and `flags`. The daemons are started.
    pub fn new(test: &str, n: usize, ttl: u32, flags: &[&str]) -> Result<Self> {
        let pid = std::process::id();
        let tag = format!("{test}-{pid}");
        let octet = 100 + u8::try_from(test.bytes().map(u32::from).sum::<u32>() % 100)?;
        let net = [192, 168, octet];
        let dir = std::env::temp_dir().join(format!("tollgate-test-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let underlay = format!("tgt-{tag}-u");
        let client = format!("tgt-{tag}-c");
        sh("ip", &["netns", "add", &underlay])?;
        let ip = |last: u8| Ipv4Addr::new(net[0], net[1], net[2], last);
        let u = underlay.as_str();
        sh("ip", &["-n", u, "link", "add", "br0", "type", "bridge"])?;
        sh(
            "ip",
            &[
                "-n",
                u,
                "addr",
                "add",
                &format!("{}/24", ip(250)),
                "dev",
                "br0",
            ],
        )?;
        sh("ip", &["-n", u, "link", "set", "br0", "up"])?;
        sh("ip", &["-n", u, "link", "set", "lo", "up"])?;
        let attach = |ns: &str, ifname: &str, addr: Ipv4Addr, port: &str| -> Result<()> {
            sh("ip", &["netns", "add", ns])?;
            sh(
                "ip",
                &[
                    "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port,
                    "netns", u,
                ],
            )?;
            sh("ip", &["-n", u, "link", "set", port, "master", "br0"])?;
            sh("ip", &["-n", u, "link", "set", port, "up"])?;
            sh(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    ifname,
                ],
            )?;
            sh("ip", &["-n", ns, "link", "set", ifname, "up"])?;
            sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            Ok(())
        };
        attach(&client, "eth0", ip(200), "pc")?;
        let etcd = Etcd::in_netns(test, &underlay, ip(250), 1)?;
        let cluster = etcd.url();
        let mut nodes = Vec::new();
        for i in 0..n {
            let node = format!("tgt-{tag}-{i}");
            let idx = u8::try_from(i)?;
            attach(&node, "up0", ip(10 + idx), &format!("p{i}"))?;
            let ndir = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&ndir)?;
            let name = format!("n{i}");
            let ttl = ttl.to_string();
            let mut f = vec![
                "--cluster",
                cluster.as_str(),
                "--node-name",
                name.as_str(),
                "--node-ttl",
                ttl.as_str(),
            ];
            f.extend_from_slice(flags);
            nodes.push(Daemon::new(
                &node,
                &ndir,
                &PathBuf::from(format!("/sys/fs/bpf/tgt-{tag}-{i}")),
                &f,
            ));
        }
        let mut cs = Self {
            tag,
            underlay,
            client,
            client_ip: ip(200),
            etcd,
            nodes,
            dir,
            net,
        };
        for d in &mut cs.nodes {
            d.start_daemon()?;
        }
        Ok(cs)
    }

    /// Node `i`'s underlay address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(
            self.net[0],
            self.net[1],
            self.net[2],
            10 + u8::try_from(i).expect("few nodes"),
        )
    }

    /// A container name unique to this sandbox (its netns is `tg-<name>`).
    pub fn cname(&self, short: &str) -> String {
        format!("{}-{short}", self.tag)
    }

    /// Adds container `short` on node `i` in `network`; returns (name, netns, ip).
    pub fn container(&self, i: usize, short: &str, network: &str) -> (String, String, Ipv4Addr) {
        let name = self.cname(short);
        let v = self.nodes[i].json(&["container", "add", &name, "--network", network]);
        let ip = v["ip"].as_str().unwrap().parse().unwrap();
        (name.clone(), format!("tg-{name}"), ip)
    }

    /// Every node's log, for a failing test's output.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, d)| format!("--- node {i} ---\n{}", d.tail_log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ClusterSandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for d in &mut self.nodes {
            d.teardown();
            let _ = Command::new("ip").args(["netns", "del", &d.node]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.client])
            .output();
        self.etcd.stop();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.underlay])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
