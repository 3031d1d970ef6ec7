//! Whole-table reads and bulk deletes with `BPF_MAP_LOOKUP_BATCH` / `BPF_MAP_DELETE_BATCH`:
//! one syscall per few thousand entries instead of two (get-next-key, lookup) per entry, which
//! is what the conntrack GC pays on every pass over a table of tens of thousands of flows.
//! aya 0.14 has no batch API, so these call bpf(2) directly on the map's descriptor.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use bytemuck::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries fetched per call; a hash bucket never holds nearly that many.
const CHUNK: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, fully initialized `batch` attribute block whose pointers
    // reference buffers that outlive the call and are as large as `count` says.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            libc::c_uint::try_from(size_of::<BatchAttr>()).unwrap_or(0),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every entry of the hash map `fd` (key type `K`, value type `V`), in bucket order. Entries
/// created or removed meanwhile may or may not be seen, as with get-next-key iteration.
pub fn lookup_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut chunk = CHUNK;
    let mut keys = vec![K::zeroed(); chunk];
    let mut values = vec![V::zeroed(); chunk];
    let mut out = Vec::new();
    // The hash map's batch cursor is a bucket index; `None` starts at the first bucket.
    let mut cursor: Option<u32> = None;
    loop {
        let mut next: u32 = 0;
        let mut attr = BatchAttr {
            in_batch: cursor.as_ref().map_or(0, |c| std::ptr::from_ref(c) as u64),
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd().cast_unsigned(),
            ..BatchAttr::default()
        };
        let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(chunk);
        match res {
            Ok(()) => {}
            // The end of the table; the last call may still have returned entries.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
                return Ok(out);
            }
            // One bucket holds more than `chunk` entries: retry it with room for them.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                chunk *= 2;
                keys.resize(chunk, K::zeroed());
                values.resize(chunk, V::zeroed());
                continue;
            }
            Err(e) => return Err(e),
        }
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        cursor = Some(next);
    }
}

/// Deletes `keys` from the hash map `fd`; keys already gone are skipped. Returns how many
/// were deleted.
pub fn delete_all<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: u32::try_from(n).unwrap_or(u32::MAX),
            map_fd: fd.as_raw_fd().cast_unsigned(),
            ..BatchAttr::default()
        };
        let res = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        // On error `count` says how many keys before the failing one were deleted.
        let done = (attr.count as usize).min(n);
        deleted += done;
        match res {
            Ok(()) => rest = &rest[n..],
            // That key was removed meanwhile (LRU eviction, the datapath): skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[done + 1..],
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
