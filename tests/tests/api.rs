//! The daemon's HTTP API driven with `curl --unix-socket`, as any outside client would: the
//! routes, the status codes (200/201, 400, 404, 409) and the JSON bodies, read back into the
//! agent's own API types.

use std::{os::unix::fs::PermissionsExt, process::Command};

use serde::de::DeserializeOwned;
use tollgate::api::types::{ContainerInfo, Deleted, ErrorBody, PortMapInfo};
use tollgate_tests::*;

/// One request; returns the status and the body.
fn curl(sb: &Sandbox, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-X", method, "--unix-socket"])
        .arg(&sb.socket)
        .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("running curl");
    assert!(out.status.success(), "curl failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_string())
}

/// A request that must answer `want`, with its body parsed as `T`.
fn call<T: DeserializeOwned>(
    sb: &Sandbox,
    method: &str,
    path: &str,
    body: Option<&str>,
    want: u16,
) -> T {
    let (code, text) = curl(sb, method, path, body);
    assert_eq!(code, want, "{method} {path} {body:?}: {text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: body is not the expected JSON ({e}): {text}"))
}

/// A refused request: its status and that the message mentions `says`.
fn refused(sb: &Sandbox, method: &str, path: &str, body: Option<&str>, want: u16, says: &str) {
    let e: ErrorBody = call(sb, method, path, body, want);
    assert!(
        e.message.contains(says),
        "{method} {path}: {:?} should mention {says:?}",
        e.message
    );
}

#[test]
fn containers_over_http() {
    let sb = sandbox!("api-crud");
    let mode = std::fs::metadata(&sb.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the API socket is root-only");

    let none: Vec<ContainerInfo> = call(&sb, "GET", "/v1/containers", None, 200);
    assert!(none.is_empty());
    let web = sb.cname("web");
    let body = format!(r#"{{"name": "{web}"}}"#);
    let c: ContainerInfo = call(&sb, "POST", "/v1/containers", Some(&body), 201);
    assert_eq!(c.name, web);
    assert_eq!(c.ip.to_string(), "10.254.0.2");
    assert_eq!(c.gateway.to_string(), "10.254.0.1");
    assert_eq!(c.prefix_len, 30);
    assert!(c.host_ifname.starts_with("tgv"), "{c:?}");
    refused(
        &sb,
        "POST",
        "/v1/containers",
        Some(&body),
        409,
        "already exists",
    );
    refused(
        &sb,
        "POST",
        "/v1/containers",
        Some(r#"{"name": "a b"}"#),
        400,
        "invalid container name",
    );
    refused(&sb, "POST", "/v1/containers", Some("{"), 400, "malformed");
    refused(
        &sb,
        "POST",
        "/v1/containers",
        Some(r#"{"name": "x", "ip": "10.254.0.3"}"#),
        400,
        "not a container address",
    );
    let all: Vec<ContainerInfo> = call(&sb, "GET", "/v1/containers", None, 200);
    assert_eq!(all, vec![c.clone()]);
    let one: ContainerInfo = call(&sb, "GET", &format!("/v1/containers/{web}"), None, 200);
    assert_eq!(one, c);
    refused(
        &sb,
        "GET",
        "/v1/containers/nosuch",
        None,
        404,
        "unknown container",
    );
    let cli = sb.json(&["container", "list"]);
    assert_eq!(
        cli,
        serde_json::to_value(&all).unwrap(),
        "the CLI sees the same"
    );

    let d: Deleted = call(&sb, "DELETE", &format!("/v1/containers/{web}"), None, 200);
    assert_eq!(d.deleted, web);
    refused(
        &sb,
        "DELETE",
        &format!("/v1/containers/{web}"),
        None,
        404,
        "unknown container",
    );
    let none: Vec<ContainerInfo> = call(&sb, "GET", "/v1/containers", None, 200);
    assert!(none.is_empty());
    refused(&sb, "GET", "/v2/containers", None, 404, "no such route");
}

#[test]
fn port_maps_over_http() {
    let sb = sandbox!("api-ports");
    let web = sb.cname("web");
    let body = format!(r#"{{"name": "{web}"}}"#);
    let _: ContainerInfo = call(&sb, "POST", "/v1/containers", Some(&body), 201);
    // Created over HTTP, they carry traffic like the CLI's.
    let _t = tcp_echo(&format!("tg-{web}"), 80, "web").unwrap();
    let ports = format!("/v1/containers/{web}/ports");
    let maps: Vec<PortMapInfo> = call(
        &sb,
        "POST",
        &ports,
        Some(r#"{"specs": ["8080:80", ":80/udp"]}"#),
        201,
    );
    assert_eq!(maps.len(), 2);
    assert_eq!((maps[0].host_port, maps[0].container_port), (8080, 80));
    assert_eq!(maps[0].host_ip.to_string(), "0.0.0.0");
    assert_eq!(maps[1].host_port, 61001, "allocated from --port-range");
    let a = tcp_request(&sb.client, sb.uplink_ip, 8080, "over http").unwrap();
    assert!(a.ends_with("over http"), "{a}");
    refused(
        &sb,
        "POST",
        &ports,
        Some(r#"{"specs": ["8080:81"]}"#),
        409,
        "already mapped",
    );
    refused(
        &sb,
        "POST",
        &ports,
        Some(r#"{"specs": ["0:80"]}"#),
        400,
        "out of range",
    );
    refused(
        &sb,
        "POST",
        &ports,
        Some(r#"{"specs": []}"#),
        400,
        "no port spec",
    );
    refused(
        &sb,
        "POST",
        "/v1/containers/nosuch/ports",
        Some(r#"{"specs": ["7070:80"]}"#),
        404,
        "unknown container",
    );
    let listed: Vec<PortMapInfo> = call(&sb, "GET", "/v1/ports", None, 200);
    assert_eq!(listed, maps);
    let mine: Vec<PortMapInfo> = call(&sb, "GET", &format!("/v1/ports?container={web}"), None, 200);
    assert_eq!(mine, maps);
    let cli = sb.json(&["port", "list"]);
    assert_eq!(
        cli,
        serde_json::to_value(&maps).unwrap(),
        "the CLI sees the same"
    );

    let gone: Vec<PortMapInfo> = call(&sb, "DELETE", &ports, Some(r#"{"specs": ["8080"]}"#), 200);
    assert_eq!(gone, vec![maps[0].clone()]);
    refused(
        &sb,
        "DELETE",
        &ports,
        Some(r#"{"specs": ["8080"]}"#),
        404,
        "no port map",
    );
    let left: Vec<PortMapInfo> = call(&sb, "GET", &ports, None, 200);
    assert_eq!(left, vec![maps[1].clone()]);

    let _: Deleted = call(&sb, "DELETE", &format!("/v1/containers/{web}"), None, 200);
    let none: Vec<PortMapInfo> = call(&sb, "GET", "/v1/ports", None, 200);
    assert!(none.is_empty(), "the container's maps went with it");
}
