//! Driving `tollgate-cni` as a runtime does: one process per call, the CNI environment, the
//! network config on stdin, the result or error JSON on stdout.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

use serde_json::{json, Value};

use crate::{sh, tollgate_bin, Sandbox};

/// The plugin binary built beside `tollgate`.
pub fn cni_bin() -> PathBuf {
    tollgate_bin().with_file_name("tollgate-cni")
}

/// One plugin invocation's outcome.
#[derive(Debug)]
pub struct CniOut {
    pub code: i32,
    /// stdout parsed as JSON (`Value::Null` when empty).
    pub json: Value,
    pub stderr: String,
}

impl CniOut {
    /// The spec's error code of a failed call.
    pub fn error_code(&self) -> u64 {
        assert_ne!(self.code, 0, "the call succeeded: {:?}", self.json);
        self.json["code"]
            .as_u64()
            .expect("an error JSON with a code")
    }
}

/// A CNI call: command, container id, netns path, ifname and `CNI_ARGS`.
#[derive(Clone, Debug)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    pub args: &'a str,
}

impl<'a> Call<'a> {
    pub fn new(command: &'a str, container_id: &'a str, netns: &'a str) -> Self {
        Self {
            command,
            container_id,
            netns,
            ifname: "eth0",
            args: "",
        }
    }
}

/// Runs the plugin with `conf` on stdin.
pub fn cni(call: &Call, conf: &Value) -> CniOut {
    let mut child = Command::new(cni_bin())
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .env("CNI_PATH", "/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running tollgate-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    CniOut {
        code: out.status.code().unwrap_or(-1),
        json: if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"))
        },
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// The plugin's network config for a sandbox's daemon.
pub fn net_conf(sb: &Sandbox, version: &str, name: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": name,
        "type": "tollgate",
        "socket": sb.socket,
        "network": "default",
    })
}

/// A namespace standing in for a runtime's container namespace; removed when dropped.
pub struct RuntimeNetns {
    pub name: String,
    pub path: String,
}

impl RuntimeNetns {
    pub fn new(sb: &Sandbox, short: &str) -> Self {
        let name = format!("tgt-{}-{short}", sb.tag);
        sh("ip", &["netns", "add", &name]).expect("ip netns add");
        let _ = sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Self {
            path: format!("/run/netns/{name}"),
            name,
        }
    }
}

impl Drop for RuntimeNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
