//! Docker `-p` port specs: `[HOST_IP:][HOST_PORT[-END]]:CONTAINER_PORT[-END][/tcp|/udp]`
//! for `port add`, and `[HOST_IP:]HOST_PORT[-END][/tcp|/udp]` for `port del`, and the port
//! maps they expand to. Specs travel in the API in their Docker form (a JSON string).

use std::{fmt, net::Ipv4Addr, ops::RangeInclusive, str::FromStr};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => datapath_common::proto::TCP,
            Proto::Udp => datapath_common::proto::UDP,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => bail!("unknown protocol {s:?} (use /tcp or /udp)"),
        }
    }
}

/// One published port: what the state stores and `port list` shows.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMapping {
    /// None: every local address of the node.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(f, "{}/{}", self.host_port, self.proto)
    }
}

/// A parsed `port add` spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AddSpec {
    pub host_ip: Option<Ipv4Addr>,
    /// None: allocate from `--port-range`, one port per container port.
    pub host_ports: Option<RangeInclusive<u16>>,
    pub container_ports: RangeInclusive<u16>,
    pub proto: Proto,
}

/// A parsed `port del` spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DelSpec {
    pub host_ip: Option<Ipv4Addr>,
    pub host_ports: RangeInclusive<u16>,
    pub proto: Proto,
}

fn split_proto(spec: &str) -> Result<(&str, Proto)> {
    match spec.rsplit_once('/') {
        Some((rest, p)) => Ok((rest, p.parse()?)),
        None => Ok((spec, Proto::Tcp)),
    }
}

fn parse_port(s: &str) -> Result<u16> {
    let n: u32 = s
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a port number"))?;
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => bail!("port {n} is out of range (1-65535)"),
    }
}

fn parse_range(s: &str) -> Result<RangeInclusive<u16>> {
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (parse_port(a)?, parse_port(b)?);
        if b < a {
            bail!("port range {s} ends before it starts");
        }
        Ok(a..=b)
    } else {
        let p = parse_port(s)?;
        Ok(p..=p)
    }
}

fn parse_host_ip(s: &str) -> Result<Option<Ipv4Addr>> {
    if s.is_empty() || s == "0.0.0.0" {
        return Ok(None);
    }
    s.parse::<Ipv4Addr>()
        .map(Some)
        .map_err(|_| anyhow!("{s:?} is not an IPv4 address (IPv6 host IPs are not supported)"))
}

fn range_len(r: &RangeInclusive<u16>) -> usize {
    usize::from(*r.end() - *r.start()) + 1
}

impl FromStr for AddSpec {
    type Err = anyhow::Error;
    fn from_str(spec: &str) -> Result<Self> {
        let ctx = || {
            format!("bad port spec {spec:?} (expected [HOST_IP:][HOST_PORT[-END]]:CONTAINER_PORT[-END][/tcp|/udp])")
        };
        let (body, proto) = split_proto(spec).with_context(ctx)?;
        let parts: Vec<&str> = body.split(':').collect();
        let (ip, host, cont) = match parts.as_slice() {
            [c] => ("", "", *c),
            [h, c] => ("", *h, *c),
            [ip, h, c] => (*ip, *h, *c),
            _ => return Err(anyhow!("too many ':'")).with_context(ctx),
        };
        let host_ip = parse_host_ip(ip).with_context(ctx)?;
        let container_ports = parse_range(cont).with_context(ctx)?;
        let host_ports = if host.is_empty() {
            None
        } else {
            let r = parse_range(host).with_context(ctx)?;
            if range_len(&r) != range_len(&container_ports) {
                return Err(anyhow!(
                    "host range {host} and container range {cont} differ in length"
                ))
                .with_context(ctx);
            }
            Some(r)
        };
        Ok(AddSpec {
            host_ip,
            host_ports,
            container_ports,
            proto,
        })
    }
}

impl FromStr for DelSpec {
    type Err = anyhow::Error;
    fn from_str(spec: &str) -> Result<Self> {
        let ctx =
            || format!("bad port spec {spec:?} (expected [HOST_IP:]HOST_PORT[-END][/tcp|/udp])");
        let (body, proto) = split_proto(spec).with_context(ctx)?;
        let (ip, ports) = match body.rsplit_once(':') {
            Some((ip, p)) => (ip, p),
            None => ("", body),
        };
        Ok(DelSpec {
            host_ip: parse_host_ip(ip).with_context(ctx)?,
            host_ports: parse_range(ports).with_context(ctx)?,
            proto,
        })
    }
}

fn fmt_range(f: &mut fmt::Formatter<'_>, r: &RangeInclusive<u16>) -> fmt::Result {
    if r.start() == r.end() {
        write!(f, "{}", r.start())
    } else {
        write!(f, "{}-{}", r.start(), r.end())
    }
}

impl fmt::Display for AddSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        if let Some(h) = &self.host_ports {
            fmt_range(f, h)?;
        }
        f.write_str(":")?;
        fmt_range(f, &self.container_ports)?;
        write!(f, "/{}", self.proto)
    }
}

impl fmt::Display for DelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        fmt_range(f, &self.host_ports)?;
        write!(f, "/{}", self.proto)
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> std::result::Result<Self, String> {
                s.parse().map_err(|e: anyhow::Error| format!("{e:#}"))
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}
pub(crate) use string_serde;

string_serde!(AddSpec);
string_serde!(DelSpec);

/// Parses `LO-HI` for `--port-range`.
pub fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>> {
    let r = parse_range(s).with_context(|| format!("bad --port-range {s:?} (expected LO-HI)"))?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(s: &str) -> AddSpec {
        s.parse().unwrap()
    }

    #[test]
    fn docker_forms() {
        assert_eq!(
            add("8080:80"),
            AddSpec {
                host_ip: None,
                host_ports: Some(8080..=8080),
                container_ports: 80..=80,
                proto: Proto::Tcp
            }
        );
        assert_eq!(add("80").host_ports, None);
        assert_eq!(add(":80/udp").proto, Proto::Udp);
        assert_eq!(add(":80/udp").host_ports, None);
        let s = add("10.0.0.1:8000-8009:80-89/udp");
        assert_eq!(s.host_ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(s.host_ports, Some(8000..=8009));
        assert_eq!(s.container_ports, 80..=89);
        assert_eq!(add("10.0.0.1::80").host_ports, None);
        assert_eq!(add("0.0.0.0:81:80").host_ip, None);
    }

    #[test]
    fn refusals() {
        for bad in [
            "0:80",
            "70000:80",
            "80:0",
            "a:80",
            "80:b",
            "1-2:80",
            "8000-8001:80-82",
            "80:80/sctp",
            "1.2.3:80:80",
            "::1:80:80",
            "1:2:3:4",
            "",
            "90-80:90-80",
            "8080:80/",
        ] {
            assert!(bad.parse::<AddSpec>().is_err(), "{bad:?} should be refused");
        }
        let e = "0:80".parse::<AddSpec>().unwrap_err();
        assert!(format!("{e:#}").contains("out of range"), "{e:#}");
    }

    #[test]
    fn del_forms() {
        let d: DelSpec = "10.0.0.1:8000-8001/udp".parse().unwrap();
        assert_eq!(d.host_ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(d.host_ports, 8000..=8001);
        assert_eq!(d.proto, Proto::Udp);
        let d: DelSpec = "8080".parse().unwrap();
        assert_eq!(
            (d.host_ip, d.host_ports, d.proto),
            (None, 8080..=8080, Proto::Tcp)
        );
        assert!("0".parse::<DelSpec>().is_err());
        assert!("x:80".parse::<DelSpec>().is_err());
    }

    #[test]
    fn specs_round_trip_through_their_docker_form() {
        for s in ["8080:80/tcp", "10.0.0.1:8000-8009:80-89/udp", ":80/tcp"] {
            let a: AddSpec = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
            assert_eq!(a.to_string().parse::<AddSpec>().unwrap(), a);
        }
        let d: DelSpec = "10.0.0.1:8000-8001/udp".parse().unwrap();
        assert_eq!(d.to_string().parse::<DelSpec>().unwrap(), d);
        let j = serde_json::to_string(&add("8080:80")).unwrap();
        assert_eq!(j, "\"8080:80/tcp\"");
        let e = serde_json::from_str::<AddSpec>("\"0:80\"").unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn port_range_flag() {
        assert_eq!(parse_port_range("61001-65000").unwrap(), 61001..=65000);
        assert!(parse_port_range("65000-61001").is_err());
    }
}
