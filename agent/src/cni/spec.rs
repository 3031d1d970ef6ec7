//! The CNI spec's JSON and environment, as far as `tollgate-cni` reads and writes them
//! (SPEC.md of containernetworking/cni, versions 0.4.0, 1.0.0 and 1.1.0). Unknown keys are
//! tolerated everywhere: runtimes send more than they must.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The versions this plugin speaks; results are written in the one the config asks for.
pub const SUPPORTED: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The socket of a daemon started with its defaults.
pub const DEFAULT_SOCKET: &str = "/run/tollgate/tollgate.sock";

// Error codes of the spec, and this plugin's own (100 and up).
pub const ERR_VERSION: u32 = 1;
pub const ERR_UNSUPPORTED_FIELD: u32 = 2;
pub const ERR_UNKNOWN_CONTAINER: u32 = 3;
pub const ERR_ENV: u32 = 4;
pub const ERR_IO: u32 = 5;
pub const ERR_DECODE: u32 = 6;
pub const ERR_CONFIG: u32 = 7;
pub const ERR_TRY_LATER: u32 = 11;
pub const ERR_NOT_READY: u32 = 50;
/// The daemon refused the request (its message says why).
pub const ERR_REFUSED: u32 = 100;
/// The daemon failed while carrying the request out.
pub const ERR_DAEMON: u32 = 101;

/// A CNI error: printed as JSON on stdout, with a non-zero exit.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    #[must_use]
    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }

    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// The plugin's network config (one entry of a conflist, with what the runtime adds).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    /// The daemon's API socket.
    #[serde(default)]
    pub socket: Option<String>,
    /// The Tollgate network to attach to.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments still in use (libcni sends both names).
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    #[serde(default, rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u32,
    pub container_port: u32,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

/// Rates in bit/s, bursts in bits.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default)]
    pub ingress_rate: Option<u64>,
    #[serde(default)]
    pub ingress_burst: Option<u64>,
    #[serde(default)]
    pub egress_rate: Option<u64>,
    #[serde(default)]
    pub egress_burst: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// `CNI_ARGS`: `K=V;K=V`.
pub fn parse_args(s: &str) -> BTreeMap<String, String> {
    s.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Whether `have` is at least `want` (dotted versions).
pub fn version_at_least(have: &str, want: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(have) >= parse(want)
}

/// What an ADD made, in the terms of the CNI result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddResult {
    pub host_ifname: String,
    pub host_mac: String,
    pub ifname: String,
    pub mac: String,
    pub mtu: u32,
    pub sandbox: String,
    /// `IP/prefix`.
    pub address: String,
    pub gateway: IpAddr,
}

impl AddResult {
    /// The result as `version` writes it: 0.4.0 results also carry `ips[].version`.
    pub fn to_json(&self, version: &str) -> Value {
        let mut ip = json!({
            "address": self.address,
            "gateway": self.gateway.to_string(),
            "interface": 1,
        });
        if !version_at_least(version, "1.0.0") {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [
                {"name": self.host_ifname, "mac": self.host_mac, "mtu": self.mtu},
                {"name": self.ifname, "mac": self.mac, "mtu": self.mtu, "sandbox": self.sandbox},
            ],
            "ips": [ip],
            "routes": [{"dst": "0.0.0.0/0", "gw": self.gateway.to_string()}],
            "dns": {},
        })
    }
}

/// The container address (`IP/prefix`) of a `prevResult`, in any supported version.
pub fn prev_address(prev: &Value) -> Option<String> {
    prev.get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .find(|a| !a.contains(':'))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_config_parses_with_its_extra_keys() {
        let conf: NetConf = serde_json::from_str(
            r#"{"cniVersion":"1.0.0","name":"tgnet","type":"tollgate","socket":"/s","network":"default",
            "capabilities":{"portMappings":true},
            "runtimeConfig":{"aliases":{"tgnet":["web"]},
              "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},
                              {"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"}],
              "bandwidth":{"ingressRate":1000000,"ingressBurst":4294967295}}}"#,
        )
        .unwrap();
        assert_eq!(conf.name, "tgnet");
        assert_eq!(conf.runtime_config.port_mappings.len(), 2);
        assert_eq!(
            conf.runtime_config.port_mappings[1].host_ip.as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            conf.runtime_config.bandwidth.unwrap().ingress_rate,
            Some(1_000_000)
        );
    }

    #[test]
    fn results_follow_the_version_asked() {
        let r = AddResult {
            host_ifname: "tgv1".into(),
            host_mac: "0a:58:0a:00:00:01".into(),
            ifname: "eth0".into(),
            mac: "0a:58:0a:00:00:02".into(),
            mtu: 1500,
            sandbox: "/run/netns/x".into(),
            address: "10.0.0.2/30".into(),
            gateway: "10.0.0.1".parse().unwrap(),
        };
        let v1 = r.to_json("1.0.0");
        assert_eq!(v1["cniVersion"], "1.0.0");
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["interfaces"][1]["sandbox"], "/run/netns/x");
        assert!(v1["interfaces"][0].get("sandbox").is_none());
        assert_eq!(r.to_json("0.4.0")["ips"][0]["version"], "4");
        assert_eq!(prev_address(&v1).as_deref(), Some("10.0.0.2/30"));
    }

    #[test]
    fn args_and_versions() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.6");
        assert_eq!(a["IP"], "10.0.0.6");
        assert!(version_at_least("1.1.0", "1.0.0"));
        assert!(!version_at_least("0.4.0", "1.0.0"));
    }
}
