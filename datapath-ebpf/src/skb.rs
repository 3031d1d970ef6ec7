//! What the kernel's `struct sk_buff` says of a packet beyond `__sk_buff`: its checksum state
//! (`ip_summed`), read through `bpf_cast_to_kern_ctx` (see `datapath_common::kfunc` for how
//! the loader resolves that call and the field's place).

use aya_ebpf::{programs::TcContext, EbpfContext};
use core::ffi::c_void;
use datapath_common::kfunc::CAST_TO_KERN_CTX_MARK;

/// Byte of `struct sk_buff` holding `ip_summed`, and its lowest bit: set by the loader
/// (`kfunc::GLOBAL_IP_SUMMED_*`) from the running kernel's BTF. `.rodata`, so the verifier
/// knows them and checks the read against the kernel's layout.
#[unsafe(no_mangle)]
static SKB_IP_SUMMED_OFF: u32 = 0;
#[unsafe(no_mangle)]
static SKB_IP_SUMMED_SHIFT: u32 = 0;

/// `skb->ip_summed` of the packet (`kfunc::CHECKSUM_*`).
#[inline(always)]
pub fn ip_summed(ctx: &TcContext) -> u8 {
    // A call to the placeholder helper number, which the loader turns into a kfunc call of
    // `bpf_cast_to_kern_ctx` (and the verifier into `r0 = r1`).
    // SAFETY: the loader patches this call before the program loads; the kfunc returns the
    // context's `struct sk_buff`, valid for this program run.
    let skb = unsafe {
        let cast: unsafe extern "C" fn(*mut c_void) -> *const u8 =
            core::mem::transmute(CAST_TO_KERN_CTX_MARK as usize);
        cast(ctx.as_ptr())
    };
    // SAFETY: plain reads of this object's constants.
    let (off, shift) = unsafe {
        (
            core::ptr::read_volatile(&SKB_IP_SUMMED_OFF),
            core::ptr::read_volatile(&SKB_IP_SUMMED_SHIFT),
        )
    };
    // SAFETY: `off` lies inside `struct sk_buff` (the verifier checks it against BTF).
    let byte = unsafe { *skb.add(off as usize) };
    (byte >> shift) & 3
}
