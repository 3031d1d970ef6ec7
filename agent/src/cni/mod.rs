//! `tollgate-cni`: the CNI plugin. A small client of the daemon's API: it reads the runtime's
//! environment and config, hands the daemon an open fd of the container's network namespace
//! with each ADD, and answers in the CNI version the config asks for. Nothing here touches
//! the datapath; the daemon does all of it in one transaction.
//!
//! DEL never fails because the container is gone, and when the daemon is down it is queued
//! (one file per attachment under `api::types::cni_queue_dir`) for the daemon to carry out
//! at start, before it serves: runtimes log a failed DEL and never retry it.

pub mod spec;

use std::{
    fs::File,
    io::Write,
    net::{IpAddr, Ipv4Addr},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Duration,
};

use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::{
    api::{
        client::{ApiError, Client},
        types::{self as api, cni_queue_dir, paths},
    },
    model::{
        cni::{container_name, CNI_QUEUE_MAX, DEFAULT_NETWORK},
        CniKey, Proto,
    },
};
use spec::{
    AddResult, CniError, NetConf, ERR_CONFIG, ERR_DAEMON, ERR_DECODE, ERR_ENV, ERR_IO,
    ERR_NOT_READY, ERR_REFUSED, ERR_TRY_LATER, ERR_UNKNOWN_CONTAINER, ERR_VERSION, SUPPORTED,
};

/// Longer than any ADD takes (tens of ms), shorter than runtimes wait for a plugin.
const TIMEOUT: Duration = Duration::from_mins(1);

/// The environment of one invocation.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Self {
            command: var("CNI_COMMAND"),
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            args: var("CNI_ARGS"),
        }
    }

    fn require(&self, what: &str, v: &str) -> Result<(), CniError> {
        if v.is_empty() {
            return Err(CniError::new(
                ERR_ENV,
                format!(
                    "{what} is not set (the runtime must set it for {})",
                    self.command
                ),
            ));
        }
        Ok(())
    }
}

/// Runs one invocation: `Ok(Some(json))` is printed on stdout, `Err` as the spec's error.
/// The version to write errors in is the config's (or the newest, before it is known).
pub fn run(env: &Env, stdin: &[u8]) -> (String, Result<Option<Value>, CniError>) {
    let conf: NetConf = if stdin.iter().all(u8::is_ascii_whitespace) {
        NetConf::default()
    } else {
        match serde_json::from_slice(stdin) {
            Ok(c) => c,
            Err(e) => {
                return (
                    newest(),
                    Err(CniError::new(
                        ERR_DECODE,
                        format!("cannot decode the network config: {e}"),
                    )),
                )
            }
        }
    };
    let version = if conf.cni_version.is_empty() {
        newest()
    } else {
        conf.cni_version.clone()
    };
    let res = dispatch(env, &conf, &version);
    (version, res)
}

fn newest() -> String {
    SUPPORTED[SUPPORTED.len() - 1].to_string()
}

fn dispatch(env: &Env, conf: &NetConf, version: &str) -> Result<Option<Value>, CniError> {
    if env.command == "VERSION" {
        return Ok(Some(json!({
            "cniVersion": version,
            "supportedVersions": SUPPORTED,
        })));
    }
    if !SUPPORTED.contains(&version) {
        return Err(CniError::new(
            ERR_VERSION,
            format!(
                "tollgate-cni does not speak CNI {version}; use one of {}",
                SUPPORTED.join(", ")
            ),
        ));
    }
    let plugin = Plugin::new(conf);
    match env.command.as_str() {
        "ADD" => plugin.add(env, conf, version).map(Some),
        "DEL" => plugin.del(env, conf).map(|()| None),
        "CHECK" => plugin.check(env, conf).map(|()| None),
        "STATUS" => {
            needs_1_1(version, "STATUS")?;
            plugin.status().map(|()| None)
        }
        "GC" => {
            needs_1_1(version, "GC")?;
            plugin.gc(conf).map(|()| None)
        }
        "" => Err(CniError::new(ERR_ENV, "CNI_COMMAND is not set")),
        other => Err(CniError::new(
            ERR_ENV,
            format!("unknown CNI_COMMAND {other:?} (ADD, DEL, CHECK, STATUS, GC or VERSION)"),
        )),
    }
}

fn needs_1_1(version: &str, what: &str) -> Result<(), CniError> {
    if spec::version_at_least(version, "1.1.0") {
        Ok(())
    } else {
        Err(CniError::new(
            ERR_VERSION,
            format!("{what} needs cniVersion 1.1.0 (the config says {version})"),
        ))
    }
}

struct Plugin {
    socket: PathBuf,
    network: String,
}

impl Plugin {
    fn new(conf: &NetConf) -> Self {
        Self {
            socket: PathBuf::from(conf.socket.as_deref().unwrap_or(spec::DEFAULT_SOCKET)),
            network: conf
                .network
                .clone()
                .unwrap_or_else(|| DEFAULT_NETWORK.to_string()),
        }
    }

    fn client(&self) -> Result<Client, CniError> {
        Client::new(&self.socket)
            .map(|c| c.with_timeout(TIMEOUT))
            .map_err(|e| CniError::new(ERR_IO, format!("{e:#}")))
    }

    fn key(env: &Env, conf: &NetConf) -> Result<CniKey, CniError> {
        env.require("CNI_CONTAINERID", &env.container_id)?;
        env.require("CNI_IFNAME", &env.ifname)?;
        if conf.name.is_empty() {
            return Err(CniError::new(
                ERR_CONFIG,
                "the network config has no \"name\"",
            ));
        }
        Ok(CniKey {
            network: conf.name.clone(),
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
        })
    }

    fn add(&self, env: &Env, conf: &NetConf, version: &str) -> Result<Value, CniError> {
        let key = Self::key(env, conf)?;
        env.require("CNI_NETNS", &env.netns)?;
        let netns = File::open(&env.netns).map_err(|e| {
            CniError::new(ERR_ENV, format!("cannot open CNI_NETNS {}: {e}", env.netns))
        })?;
        let args = spec::parse_args(&env.args);
        let ip = match args.get("IP") {
            Some(s) => Some(parse_ip_arg(s)?),
            None => None,
        };
        let req = api::CniAdd {
            key,
            tollgate_network: self.network.clone(),
            netns: env.netns.clone(),
            ip,
            ports: ports(&conf.runtime_config.port_mappings)?,
            limits: conf.runtime_config.bandwidth.as_ref().and_then(limits),
            runtime_pid: None,
        };
        let a: api::CniAttachmentInfo = self
            .call(
                Method::POST,
                paths::CNI_ATTACHMENTS,
                &req,
                Some(netns.into()),
            )
            .map_err(|e| match e.code {
                // On ADD, what the daemon does not know is the config's network.
                ERR_UNKNOWN_CONTAINER => CniError::new(ERR_CONFIG, e.msg),
                _ => e,
            })?;
        let result = AddResult {
            host_ifname: a.container.host_ifname.clone(),
            host_mac: a.host_mac,
            ifname: a.key.ifname,
            mac: a.mac,
            mtu: a.mtu,
            sandbox: env.netns.clone(),
            address: format!("{}/{}", a.container.ip, a.container.prefix_len),
            gateway: IpAddr::V4(a.container.gateway),
        };
        Ok(result.to_json(version))
    }

    fn del(&self, env: &Env, conf: &NetConf) -> Result<(), CniError> {
        let key = Self::key(env, conf)?;
        let req = api::CniDel { key: key.clone() };
        let client = self.client()?;
        match client.call::<_, api::CniDeleted>(Method::DELETE, paths::CNI_ATTACHMENTS, Some(&req))
        {
            Ok(d) => {
                debug!(deleted = ?d.deleted, "DEL done");
                Ok(())
            }
            Err(e) if e.downcast_ref::<ApiError>().is_none() => {
                // No answer: queue it for the daemon's next start.
                warn!(
                    "the tollgate daemon is not reachable ({e:#}); DEL queued for its next start"
                );
                queue_del(&cni_queue_dir(&self.socket), &key)
            }
            Err(e) => Err(daemon_error(&e)),
        }
    }

    fn check(&self, env: &Env, conf: &NetConf) -> Result<(), CniError> {
        let key = Self::key(env, conf)?;
        let Some(prev) = &conf.prev_result else {
            return Err(CniError::new(
                ERR_CONFIG,
                "CHECK needs the prevResult of the ADD",
            ));
        };
        let netns = if env.netns.is_empty() {
            None
        } else {
            Some(
                File::open(&env.netns)
                    .map_err(|e| {
                        CniError::new(ERR_ENV, format!("cannot open CNI_NETNS {}: {e}", env.netns))
                    })?
                    .into(),
            )
        };
        let req = api::CniCheck {
            key,
            address: spec::prev_address(prev),
        };
        let _: api::CniAttachmentInfo = self.call(Method::POST, paths::CNI_CHECK, &req, netns)?;
        Ok(())
    }

    fn status(&self) -> Result<(), CniError> {
        let client = self.client()?;
        client
            .get::<api::Status>(paths::STATUS)
            .map(|_| ())
            .map_err(|e| {
                CniError::new(
                    ERR_NOT_READY,
                    format!("the tollgate daemon cannot serve ADD: {e:#}"),
                )
            })
    }

    fn gc(&self, conf: &NetConf) -> Result<(), CniError> {
        if conf.name.is_empty() {
            return Err(CniError::new(
                ERR_CONFIG,
                "the network config has no \"name\"",
            ));
        }
        let valid = conf
            .valid_attachments
            .as_ref()
            .or(conf.attachments.as_ref())
            .map(|v| {
                v.iter()
                    .map(|a| api::CniValid {
                        container_id: a.container_id.clone(),
                        ifname: a.ifname.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let req = api::CniGc {
            network: conf.name.clone(),
            valid,
        };
        let done: api::CniGcDone = self.call(Method::POST, paths::CNI_GC, &req, None)?;
        if !done.failed.is_empty() {
            return Err(CniError::new(
                ERR_DAEMON,
                format!("GC could not remove {} attachment(s)", done.failed.len()),
            )
            .details(done.failed.join("; ")));
        }
        Ok(())
    }

    fn call<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        fd: Option<OwnedFd>,
    ) -> Result<T, CniError> {
        self.client()?
            .call_with_fd(method, path, Some(body), fd)
            .map_err(|e| daemon_error(&e))
    }
}

/// A failed API call as a CNI error: the daemon's refusal with its message, or "try again
/// later" when it could not be reached.
fn daemon_error(e: &anyhow::Error) -> CniError {
    match e.downcast_ref::<ApiError>() {
        Some(a) if a.status == StatusCode::NOT_FOUND => {
            CniError::new(ERR_UNKNOWN_CONTAINER, a.message.clone())
        }
        Some(a) if a.status.is_client_error() => CniError::new(ERR_REFUSED, a.message.clone()),
        Some(a) => CniError::new(
            ERR_DAEMON,
            format!("the tollgate daemon failed: {}", a.message),
        ),
        None => CniError::new(ERR_TRY_LATER, format!("{e:#}")),
    }
}

/// `IP=` of `CNI_ARGS`, with or without a prefix length.
fn parse_ip_arg(s: &str) -> Result<Ipv4Addr, CniError> {
    let ip = s.split('/').next().unwrap_or(s);
    ip.parse().map_err(|_| {
        CniError::new(
            ERR_CONFIG,
            format!("CNI_ARGS IP={s:?} is not an IPv4 address (Tollgate is IPv4-only)"),
        )
    })
}

/// `portMappings` as the daemon's port entries; IPv6 host addresses are skipped (Tollgate
/// publishes on IPv4; podman lists both families when both exist).
fn ports(maps: &[spec::PortMapping]) -> Result<Vec<api::CniPort>, CniError> {
    let mut out = Vec::new();
    for m in maps {
        let host_ip = match m.host_ip.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => Some(ip),
                Ok(IpAddr::V6(_)) => continue,
                Err(_) => {
                    return Err(CniError::new(
                        ERR_CONFIG,
                        format!("portMappings: hostIP {s:?} is not an IP address"),
                    ))
                }
            },
        };
        let proto = match m
            .protocol
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("" | "tcp") => Proto::Tcp,
            Some("udp") => Proto::Udp,
            Some(p) => {
                return Err(CniError::new(
                    ERR_CONFIG,
                    format!("portMappings: protocol {p:?} is not supported (tcp or udp)"),
                ))
            }
        };
        let port = |p: u32, what: &str| {
            u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                CniError::new(
                    ERR_CONFIG,
                    format!("portMappings: {what} {p} is not a port (1-65535)"),
                )
            })
        };
        out.push(api::CniPort {
            host_ip,
            host_port: port(m.host_port, "hostPort")?,
            container_port: port(m.container_port, "containerPort")?,
            proto,
        });
    }
    Ok(out)
}

/// `bandwidth` as limits: rates in bit/s as they are; bursts from bits to bytes, the larger
/// of the two (Tollgate has one burst per container); `MaxUint32` means "no preference", as
/// containerd sends it.
fn limits(b: &spec::Bandwidth) -> Option<api::LimitSet> {
    let rate = |r: Option<u64>| r.filter(|r| *r > 0);
    let burst = |b: Option<u64>| {
        b.filter(|b| *b > 0 && *b < u64::from(u32::MAX))
            .map(|b| b / 8)
    };
    let l = api::LimitSet {
        egress_bps: rate(b.egress_rate),
        ingress_bps: rate(b.ingress_rate),
        burst_bytes: burst(b.ingress_burst).max(burst(b.egress_burst)),
    };
    (l.egress_bps.is_some() || l.ingress_bps.is_some()).then_some(l)
}

/// Writes a DEL record for the daemon's next start (atomically: a half-written record must
/// never be replayed). One file per key, so repeated DELs of one container collapse.
fn queue_del(dir: &Path, key: &CniKey) -> Result<(), CniError> {
    let io = |what: &str, e: std::io::Error| {
        CniError::new(ERR_IO, format!("{what} {}: {e}", dir.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| io("creating", e))?;
    let queued = std::fs::read_dir(dir)
        .map_err(|e| io("reading", e))?
        .count();
    let name = format!("{}.json", container_name(key));
    let path = dir.join(&name);
    if queued >= CNI_QUEUE_MAX && !path.exists() {
        return Err(CniError::new(
            ERR_TRY_LATER,
            format!(
                "the tollgate daemon is down and {} already holds {queued} queued DELs; start the daemon",
                dir.display()
            ),
        ));
    }
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let body = serde_json::to_vec(key).map_err(|e| CniError::new(ERR_IO, e.to_string()))?;
    let mut f = File::create(&tmp).map_err(|e| io("writing to", e))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(|e| io("writing to", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("writing to", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(cmd: &str) -> Env {
        Env {
            command: cmd.into(),
            container_id: "c1".into(),
            netns: String::new(),
            ifname: "eth0".into(),
            args: String::new(),
        }
    }

    #[test]
    fn version_answers_without_a_daemon() {
        let (_, r) = run(&env("VERSION"), br#"{"cniVersion":"1.0.0"}"#);
        let v = r.unwrap().unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.1.0")));
    }

    #[test]
    fn bad_input_gets_the_spec_codes() {
        let (_, r) = run(&env("ADD"), b"{not json");
        assert_eq!(r.unwrap_err().code, ERR_DECODE);
        let (v, r) = run(&env("ADD"), br#"{"cniVersion":"0.2.0","name":"n"}"#);
        assert_eq!((v.as_str(), r.unwrap_err().code), ("0.2.0", ERR_VERSION));
        let (_, r) = run(&env("STATUS"), br#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!(r.unwrap_err().code, ERR_VERSION);
        let (_, r) = run(&env("ADD"), br#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!(r.unwrap_err().code, ERR_ENV, "no CNI_NETNS");
        let (_, r) = run(&env("FOO"), br#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!(r.unwrap_err().code, ERR_ENV);
    }

    #[test]
    fn del_queues_when_no_daemon_answers() {
        let dir = std::env::temp_dir().join(format!("tg-cni-q-{}", std::process::id()));
        let sock = dir.join("tollgate.sock");
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"tollgate","socket":"{}"}}"#,
            sock.display()
        );
        let (_, r) = run(&env("DEL"), conf.as_bytes());
        r.unwrap();
        let q: Vec<_> = std::fs::read_dir(cni_queue_dir(&sock)).unwrap().collect();
        assert_eq!(q.len(), 1);
        // A second DEL of the same container collapses into the same record.
        run(&env("DEL"), conf.as_bytes()).1.unwrap();
        assert_eq!(std::fs::read_dir(cni_queue_dir(&sock)).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn mappings_and_bandwidth_convert() {
        let m: Vec<spec::PortMapping> = serde_json::from_str(
            r#"[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                {"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"127.0.0.1"},
                {"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"::1"}]"#,
        )
        .unwrap();
        let p = ports(&m).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].proto, Proto::Udp);
        assert_eq!(p[1].host_ip, Some(Ipv4Addr::LOCALHOST));
        let bad: Vec<spec::PortMapping> =
            serde_json::from_str(r#"[{"hostPort":70000,"containerPort":80}]"#).unwrap();
        assert_eq!(ports(&bad).unwrap_err().code, ERR_CONFIG);
        let l = limits(&spec::Bandwidth {
            ingress_rate: Some(10_000_000),
            ingress_burst: Some(u64::from(u32::MAX)),
            egress_rate: None,
            egress_burst: Some(800_000),
        })
        .unwrap();
        assert_eq!(l.ingress_bps, Some(10_000_000));
        assert_eq!(l.burst_bytes, Some(100_000));
        assert!(limits(&spec::Bandwidth::default()).is_none());
    }
}
