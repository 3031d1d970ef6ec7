//! Rates and sizes as `tc` writes them (`50mbit`, `64kb`), and a container's limits: token
//! buckets policed by the datapath (egress in `from_container`, ingress in `to_container`).

use std::{fmt, str::FromStr};

use anyhow::{bail, Context, Result};
use datapath_common::ratelimit::{default_burst, RateLimit, TokenBucket};
use serde::{Deserialize, Serialize};

/// A container's limits; rates in bits/s, burst in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub egress: Option<u64>,
    pub ingress: Option<u64>,
    pub burst: Option<u64>,
}

impl Limit {
    /// Bucket depth in bytes: the given burst, or the default for the larger rate.
    pub fn burst_bytes(&self) -> Option<u64> {
        let b = |r: Option<u64>| r.map(|r| self.burst.unwrap_or(default_burst(r)));
        b(self.egress).or(b(self.ingress))
    }

    pub fn buckets(&self) -> RateLimit {
        let bucket = |rate: Option<u64>| match rate {
            Some(r) => TokenBucket::new(r, self.burst.unwrap_or(default_burst(r))),
            None => TokenBucket::default(),
        };
        RateLimit {
            egress: bucket(self.egress),
            ingress: bucket(self.ingress),
        }
    }
}

/// Parses a tc-style rate: `500kbit`, `50mbit`, `1gbit`, `1.5gbit`, `100mbps` (bytes/s).
pub fn parse_rate(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("bad rate {s:?} (e.g. 500kbit, 50mbit, 1gbit)"))?;
    let mult: f64 = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        "" => bail!("rate {s:?} needs a unit (kbit, mbit, gbit, or kbps/mbps for bytes)"),
        _ => bail!("unknown rate unit {unit:?} in {s:?} (use bit, kbit, mbit, gbit, bps, kbps, mbps, gbps)"),
    };
    let bits = n * mult;
    if !(8.0..=1e12).contains(&bits) {
        bail!("rate {s:?} is out of range (8bit to 1tbit)");
    }
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "8 <= bits <= 1e12, checked just above; the fraction of a bit goes"
    )]
    let bits = bits as u64;
    Ok(bits)
}

/// Parses a size: `64kb`, `1mb`, `1500b`, `2m` (k = 1024, as tc does).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("bad size {s:?} (e.g. 64kb, 1mb)"))?;
    let mult = match unit {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => bail!("unknown size unit {unit:?} in {s:?} (use b, kb, mb, gb)"),
    };
    let v = n.checked_mul(mult).context("size overflows")?;
    // A veth hands the datapath GSO packets of up to 64 KiB; a shallower bucket could never
    // pass one and the flow would stall.
    if !((64 * 1024)..=(1u64 << 32)).contains(&v) {
        bail!("burst {s:?} is out of range (64kb to 4gb; a veth carries packets of up to 64kb)");
    }
    Ok(v)
}

/// A rate in bits/s; parses and prints the `tc` form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(pub u64);

impl FromStr for Rate {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_rate(s).map(Rate)
    }
}

/// A bucket depth in bytes (`64kb`, `1mb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        parse_size(s).map(Size)
    }
}

/// Checks a rate given in bits/s (the API takes numbers) against the range `parse_rate` allows.
pub fn check_rate(bits: u64) -> Result<u64> {
    if !(8..=1_000_000_000_000).contains(&bits) {
        bail!("rate {bits} bit/s is out of range (8bit to 1tbit)");
    }
    Ok(bits)
}

/// Checks a burst in bytes against the range `parse_size` allows.
pub fn check_size(bytes: u64) -> Result<u64> {
    if !((64 * 1024)..=(1u64 << 32)).contains(&bytes) {
        bail!("burst {bytes} bytes is out of range (64kb to 4gb; a veth carries packets of up to 64kb)");
    }
    Ok(bytes)
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[expect(
            clippy::cast_precision_loss,
            reason = "a rate printed with two decimals needs far fewer than 52 bits"
        )]
        let r = self.0 as f64;
        for (d, u) in [(1e9, "gbit"), (1e6, "mbit"), (1e3, "kbit")] {
            if r >= d {
                let v = r / d;
                return if v.fract() == 0.0 {
                    write!(f, "{v}{u}")
                } else {
                    write!(f, "{v:.2}{u}")
                };
            }
        }
        write!(f, "{}bit", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500kbit").unwrap(), 500_000);
        assert_eq!(parse_rate("50mbit").unwrap(), 50_000_000);
        assert_eq!(parse_rate("1gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("1.5gbit").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("10mbps").unwrap(), 80_000_000);
        assert_eq!(parse_rate("1GBIT").unwrap(), 1_000_000_000);
        for bad in ["", "10", "abc", "10furlongs", "0mbit", "-5mbit", "2tbit"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(Rate(50_000_000).to_string(), "50mbit");
        assert_eq!(Rate(1_500_000_000).to_string(), "1.50gbit");
        assert_eq!(Rate(500_000).to_string(), "500kbit");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64kb").unwrap(), 65_536);
        assert_eq!(parse_size("1mb").unwrap(), 1_048_576);
        assert_eq!(parse_size("65536").unwrap(), 65536);
        for bad in ["", "1", "1500", "63kb", "10parsecs", "5gb"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets_from_limits() {
        let l = Limit {
            egress: Some(8_000_000),
            ingress: None,
            burst: Some(100_000),
        };
        let b = l.buckets();
        assert_eq!(b.egress.rate, 1_000_000);
        assert_eq!(b.egress.depth, 100_000);
        assert_eq!(b.ingress.rate, 0, "no ingress limit");
    }
}
