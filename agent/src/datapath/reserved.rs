//! Published ports kept out of the node's ephemeral port range.
//!
//! A node process that connects without binding gets a source port from
//! `net.ipv4.ip_local_port_range`; if that port is published, the connection's replies arrive
//! on the uplink addressed to a published port and `from_uplink` DNATs them to the container.
//! So every published host port (any protocol, any host IP) is listed in
//! `net.ipv4.ip_local_reserved_ports` of the node namespace (a per-namespace sysctl: the
//! daemon's own, since it runs inside the node namespace) while it is published. Explicit
//! `bind()`s are refused by `sock_bind4` already.
//!
//! The user's own entries are kept: Tollgate adds only the ports that are not listed yet and
//! records which ones it added in `<state-dir>/reserved-ports.json`, so that unpublishing, a
//! restart and `tollgate reset` remove exactly those. (A port the user lists by hand while
//! Tollgate's entry for it is there is taken for Tollgate's and removed with it.)

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The sysctl, as the calling thread's network namespace sees it.
pub const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// The record of the ports Tollgate added, in the state directory.
pub const RECORD: &str = "reserved-ports.json";

/// The record's path in `state_dir`.
pub fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join(RECORD)
}

/// Parses the sysctl's format: comma-separated ports and `lo-hi` ranges (empty: none).
pub fn parse(s: &str) -> Result<BTreeSet<u16>> {
    let mut out = BTreeSet::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let lo: u16 = lo.parse().with_context(|| format!("bad port {lo:?}"))?;
        let hi: u16 = hi.parse().with_context(|| format!("bad port {hi:?}"))?;
        if hi < lo {
            bail!("bad range {part:?}");
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

/// The sysctl's format, consecutive ports as ranges; empty for none.
pub fn format(ports: &BTreeSet<u16>) -> String {
    let mut out = String::new();
    let mut it = ports.iter().copied().peekable();
    while let Some(lo) = it.next() {
        let mut hi = lo;
        while it.peek() == Some(&hi.wrapping_add(1)) && hi != u16::MAX {
            hi += 1;
            it.next();
        }
        if !out.is_empty() {
            out.push(',');
        }
        if lo == hi {
            let _ = write!(out, "{lo}");
        } else {
            let _ = write!(out, "{lo}-{hi}");
        }
    }
    out
}

/// What the sysctl and the record become when Tollgate wants `want` reserved, given what the
/// sysctl lists now (`current`) and what Tollgate added earlier (`ours`): (new sysctl, new
/// record). Ports listed that Tollgate did not add are the user's: never removed, never
/// recorded as Tollgate's.
pub fn plan(
    current: &BTreeSet<u16>,
    ours: &BTreeSet<u16>,
    want: &BTreeSet<u16>,
) -> (BTreeSet<u16>, BTreeSet<u16>) {
    let users: BTreeSet<u16> = current.difference(ours).copied().collect();
    let new_ours: BTreeSet<u16> = want.difference(&users).copied().collect();
    let sysctl: BTreeSet<u16> = users.union(want).copied().collect();
    (sysctl, new_ours)
}

/// The longest the sysctl can read: every other port of 65,536, about 6 bytes each.
const SYSCTL_MAX: usize = 512 << 10;

/// Reads the sysctl in one `read` from offset 0: the kernel (`proc_do_large_bitmap`) answers
/// a read at any later offset with end-of-file, and `read_to_string` begins with a 32-byte
/// probe, so it saw "30000,30003-30004,30006-30009,30" of a longer list: a bogus port 30
/// taken for the user's and kept reserved, or "bad range" and no update at all.
fn read_sysctl() -> Result<BTreeSet<u16>> {
    use std::io::Read;
    let mut f = std::fs::File::open(SYSCTL).with_context(|| format!("opening {SYSCTL}"))?;
    let mut buf = vec![0u8; SYSCTL_MAX];
    let n = f
        .read(&mut buf)
        .with_context(|| format!("reading {SYSCTL}"))?;
    let s = std::str::from_utf8(&buf[..n]).with_context(|| format!("reading {SYSCTL}"))?;
    parse(s).with_context(|| format!("parsing {SYSCTL}"))
}

fn write_sysctl(ports: &BTreeSet<u16>) -> Result<()> {
    // A write of zero bytes changes nothing: an empty list is written as a lone newline.
    std::fs::write(SYSCTL, format!("{}\n", format(ports)))
        .with_context(|| format!("writing {SYSCTL}"))
}

/// The ports the record says Tollgate added (none without a record).
pub fn read_record(record: &Path) -> Result<BTreeSet<u16>> {
    match std::fs::read(record) {
        Ok(b) => {
            serde_json::from_slice(&b).with_context(|| format!("parsing {}", record.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", record.display())),
    }
}

/// Writes the record atomically (temporary file + rename); no record for no ports.
fn write_record(record: &Path, ours: &BTreeSet<u16>) -> Result<()> {
    if ours.is_empty() {
        return match std::fs::remove_file(record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", record.display()))
            }
            _ => Ok(()),
        };
    }
    if let Some(dir) = record.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = record.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(ours)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, record).with_context(|| format!("renaming {}", tmp.display()))
}

/// Makes the calling thread's namespace reserve `want` for Tollgate (see the module docs).
/// The record is written before the sysctl with every port that may be Tollgate's after the
/// write, and after it with exactly Tollgate's, so a crash in between never makes Tollgate
/// forget a port it added.
pub fn sync(record: &Path, want: &BTreeSet<u16>) -> Result<()> {
    let ours = read_record(record)?;
    let current = read_sysctl()?;
    let (sysctl, new_ours) = plan(&current, &ours, want);
    let both: BTreeSet<u16> = ours.union(&new_ours).copied().collect();
    if both != ours {
        write_record(record, &both)?;
    }
    if sysctl != current {
        write_sysctl(&sysctl)?;
    }
    if new_ours != both {
        write_record(record, &new_ours)?;
    }
    Ok(())
}

/// Removes every port Tollgate added from the calling thread's namespace, and the record
/// (`tollgate reset`).
pub fn release(record: &Path) -> Result<()> {
    sync(record, &BTreeSet::new())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{format, parse, plan};

    fn set(v: &[u16]) -> BTreeSet<u16> {
        v.iter().copied().collect()
    }

    #[test]
    fn parses_and_formats_the_sysctl() {
        assert_eq!(parse("").unwrap(), set(&[]));
        assert_eq!(parse("\n").unwrap(), set(&[]));
        assert_eq!(
            parse("8080,9000-9002, 22\n").unwrap(),
            set(&[22, 8080, 9000, 9001, 9002])
        );
        assert!(parse("9002-9000").is_err());
        assert!(parse("x").is_err());
        assert_eq!(format(&set(&[])), "");
        assert_eq!(
            format(&set(&[22, 8080, 9000, 9001, 9002])),
            "22,8080,9000-9002"
        );
        assert_eq!(format(&set(&[65534, 65535])), "65534-65535");
        assert_eq!(format(&set(&[0, 65535])), "0,65535");
    }

    #[test]
    fn keeps_the_users_entries_and_removes_only_its_own() {
        // The user reserved 22 and 8080; Tollgate publishes 8080 and 9000.
        let (sysctl, ours) = plan(&set(&[22, 8080]), &set(&[]), &set(&[8080, 9000]));
        assert_eq!(sysctl, set(&[22, 8080, 9000]));
        assert_eq!(ours, set(&[9000]), "8080 was the user's");
        // Both unpublished: only 9000 goes.
        let (sysctl, ours) = plan(&sysctl, &ours, &set(&[]));
        assert_eq!(sysctl, set(&[22, 8080]));
        assert_eq!(ours, set(&[]));
    }

    #[test]
    fn re_adds_its_entry_when_it_vanished() {
        let (sysctl, ours) = plan(&set(&[22]), &set(&[9000]), &set(&[9000]));
        assert_eq!(sysctl, set(&[22, 9000]));
        assert_eq!(ours, set(&[9000]));
    }
}
