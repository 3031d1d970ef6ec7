//! Pinned maps whose layout changed between the object that pinned them and this build's (an
//! upgrade that adds a field to `CtEntry`, say). The kernel cannot resize a map, and aya would
//! reuse the old pin as is (the new programs would then fail the verifier, or worse), so such a
//! map is replaced by a new one and its entries are carried over while traffic flows:
//!
//! 1. `set_aside`, before the object is loaded: the old map's pin moves to `maps/<NAME>_old`;
//!    the old programs keep running on the old map (they hold it, not the pin).
//! 2. The loader creates and pins the new map at `maps/<NAME>`.
//! 3. `Pending::copy` (first pass), before the links switch programs: every entry of the old
//!    map is written into the new one, its value zero-extended (layouts only ever grow by
//!    appending fields, and an all-zero field is valid: see `datapath_common`).
//! 4. The links switch to the new programs atomically (`attach::update_links`).
//! 5. `Pending::finish` (second pass): entries the old programs created between 3 and 4 are
//!    copied too (never over an entry the new programs already wrote), then `<NAME>_old` goes.
//!
//! A daemon killed in the middle resumes on its next start: a `<NAME>_old` pin is always
//! copied again (without overwriting) and removed. A map whose key changed is not carried over
//! (no rule says how): the new one starts empty, and the agent refills it from its state.
//! The copies use plain get-next-key / lookup / update calls, which work for every map type
//! (LPM tries have no batch operations).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::PathBuf,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, MapInfo, MapType};
use tracing::{info, warn};

use super::loader::Pins;

/// A map being migrated: its name, and the pin of the old map.
pub struct Pending {
    name: String,
    old_pin: PathBuf,
}

/// What the object says a map looks like.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Layout {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    flags: u32,
}

impl Layout {
    fn of_pin(info: &MapInfo) -> Result<Self> {
        Ok(Self {
            map_type: info.map_type()? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            flags: info.map_flags(),
        })
    }
}

fn old_pin_of(pins: &Pins, name: &str) -> PathBuf {
    // bpffs refuses names containing '.'.
    pins.map(&format!("{name}_old"))
}

/// Step 1: moves aside the pins of maps whose layout differs from `object`'s, and picks up
/// old maps an interrupted migration left. Returns what `copy` and `finish` must do.
pub fn set_aside(pins: &Pins, object: &[u8], names: &[&str]) -> Result<Vec<Pending>> {
    let obj = aya_obj::Object::parse(object).context("parsing the embedded eBPF object")?;
    let mut pending = Vec::new();
    for name in names {
        let old_pin = old_pin_of(pins, name);
        if old_pin.exists() {
            info!(
                map = name,
                "resuming an interrupted migration of a pinned map"
            );
            pending.push(Pending {
                name: (*name).to_string(),
                old_pin,
            });
            continue;
        }
        let pin = pins.map(name);
        let (Some(def), true) = (obj.maps.get(*name), pin.exists()) else {
            continue;
        };
        let want = Layout {
            map_type: def.map_type(),
            key_size: def.key_size(),
            value_size: def.value_size(),
            flags: def.map_flags(),
        };
        let info = MapInfo::from_pin(&pin).with_context(|| format!("reading {}", pin.display()))?;
        let have = Layout::of_pin(&info).with_context(|| format!("reading {}", pin.display()))?;
        if have == want {
            continue;
        }
        info!(
            map = name,
            ?have,
            ?want,
            "pinned map has an older layout: migrating it"
        );
        std::fs::rename(&pin, &old_pin)
            .with_context(|| format!("moving {} aside", pin.display()))?;
        pending.push(Pending {
            name: (*name).to_string(),
            old_pin,
        });
    }
    Ok(pending)
}

impl Pending {
    /// Step 3 (and, with `only_new`, the copy of step 5): writes the old map's entries into
    /// the new pinned one. Returns how many were written.
    pub fn copy(&self, pins: &Pins, only_new: bool) -> Result<usize> {
        let ctx = || format!("migrating pinned map {}", self.name);
        let old = MapData::from_pin(&self.old_pin).with_context(ctx)?;
        let new = MapData::from_pin(pins.map(&self.name)).with_context(ctx)?;
        let (old_info, new_info) = (old.info().with_context(ctx)?, new.info().with_context(ctx)?);
        let from = Layout::of_pin(&old_info).with_context(ctx)?;
        let to = Layout::of_pin(&new_info).with_context(ctx)?;
        if from.key_size != to.key_size || from.value_size > to.value_size {
            warn!(map = %self.name, ?from, ?to, "layout changed beyond appended fields: entries not carried over");
            return Ok(0);
        }
        let array = matches!(
            old_info.map_type().with_context(ctx)?,
            MapType::Array | MapType::PerCpuArray
        );
        // Arrays always hold every index: the first pass overwrites the new map's zeroes, and
        // there is nothing new to pick up afterwards.
        if array && only_new {
            return Ok(0);
        }
        let per_cpu = matches!(
            old_info.map_type().with_context(ctx)?,
            MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash
        );
        let cpus = if per_cpu {
            aya::util::nr_cpus().map_err(|(_, e)| e).with_context(ctx)?
        } else {
            1
        };
        let flags = if array { BPF_ANY } else { BPF_NOEXIST };
        let copied = copy_entries(old.fd().as_fd(), new.fd().as_fd(), from, to, cpus, flags)
            .with_context(ctx)?;
        info!(map = %self.name, copied, second_pass = only_new, "pinned map entries carried over");
        Ok(copied)
    }

    /// Step 5: picks up what the old programs wrote meanwhile, then drops the old map's pin.
    pub fn finish(self, pins: &Pins) -> Result<()> {
        self.copy(pins, true)?;
        std::fs::remove_file(&self.old_pin)
            .with_context(|| format!("removing {}", self.old_pin.display()))
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

/// The `elem` member of `union bpf_attr`.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next_key: u64,
    flags: u64,
}

fn elem_op(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    key: *const u8,
    value: *mut u8,
    flags: u64,
) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd().cast_unsigned(),
        _pad: 0,
        key: key as u64,
        value_or_next_key: value as u64,
        flags,
    };
    // SAFETY: `attr` is a fully initialized `elem` attribute block; `key` and `value` point
    // at buffers as large as the map's key and (per-CPU) value, which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &raw mut attr,
            libc::c_uint::try_from(size_of::<ElemAttr>()).unwrap_or(0),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Per-CPU values are laid out CPU after CPU, each rounded up to 8 bytes.
fn stride(value_size: u32, cpus: usize) -> (usize, usize) {
    let s = (value_size as usize).div_ceil(8) * 8;
    if cpus > 1 {
        (s, s * cpus)
    } else {
        (value_size as usize, value_size as usize)
    }
}

/// Copies every entry of `old` into `new`, each value (each CPU's, for per-CPU maps)
/// zero-extended from `from.value_size` to `to.value_size`. Entries that vanish during the
/// walk are skipped; with `BPF_NOEXIST`, so are keys the new map already holds.
fn copy_entries(
    old: BorrowedFd<'_>,
    new: BorrowedFd<'_>,
    from: Layout,
    to: Layout,
    cpus: usize,
    flags: u64,
) -> io::Result<usize> {
    let ks = from.key_size as usize;
    let (old_stride, old_len) = stride(from.value_size, cpus);
    let (new_stride, new_len) = stride(to.value_size, cpus);
    let mut key = vec![0u8; ks];
    let mut next = vec![0u8; ks];
    let mut old_value = vec![0u8; old_len];
    let mut new_value = vec![0u8; new_len];
    let mut copied = 0;
    let mut first = true;
    loop {
        // A null key asks for the first one.
        let cur = if first {
            std::ptr::null()
        } else {
            key.as_ptr()
        };
        match elem_op(BPF_MAP_GET_NEXT_KEY, old, cur, next.as_mut_ptr(), 0) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(copied),
            Err(e) => return Err(e),
        }
        first = false;
        key.copy_from_slice(&next);
        match elem_op(
            BPF_MAP_LOOKUP_ELEM,
            old,
            key.as_ptr(),
            old_value.as_mut_ptr(),
            0,
        ) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(e),
        }
        new_value.fill(0);
        for cpu in 0..cpus {
            let (o, n) = (cpu * old_stride, cpu * new_stride);
            let len = from.value_size as usize;
            new_value[n..n + len].copy_from_slice(&old_value[o..o + len]);
        }
        match elem_op(
            BPF_MAP_UPDATE_ELEM,
            new,
            key.as_ptr(),
            new_value.as_mut_ptr(),
            flags,
        ) {
            Ok(()) => copied += 1,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::stride;

    #[test]
    fn per_cpu_values_are_rounded_to_8_bytes() {
        assert_eq!(stride(56, 1), (56, 56));
        assert_eq!(stride(12, 1), (12, 12));
        assert_eq!(stride(12, 2), (16, 32));
        assert_eq!(stride(80, 4), (80, 320));
    }
}
