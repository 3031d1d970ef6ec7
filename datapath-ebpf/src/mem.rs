//! Zeroed values without `memset`. The BPF target has no memset instruction, so LLVM calls the
//! `memset` that aya-ebpf provides: a BPF-to-BPF call running a byte-at-a-time loop (60
//! iterations for a FIB lookup block), on every packet. Volatile word stores are neither merged
//! back into a memset nor dropped, and unroll into a few straight-line instructions.

use core::mem::{align_of, size_of, MaybeUninit};

/// Plain data for which all-zero bytes are a valid value.
///
/// # Safety
/// Implement only for types made of integers (and arrays and unions of them) with no
/// references, `bool`s, `char`s, enums or `NonZero*`s, where every all-zero bit pattern is
/// valid.
pub unsafe trait Zeroable: Copy {}

// SAFETY: integers only.
unsafe impl Zeroable for datapath_common::conntrack::CtKey {}
// SAFETY: a kernel parameter block of integers, integer arrays and unions of them.
unsafe impl Zeroable for aya_ebpf::bindings::bpf_fib_lookup {}
// SAFETY: a kernel parameter block of integers and unions of them.
unsafe impl Zeroable for aya_ebpf::bindings::bpf_tunnel_key {}

/// A `T` with every byte zero (`T: Zeroable`), at least 4-byte aligned with a size that is a
/// multiple of 4 (checked at compile time).
#[inline(always)]
pub fn zeroed<T: Zeroable>() -> T {
    const {
        assert!(align_of::<T>() >= 4 && size_of::<T>().is_multiple_of(4));
    }
    let mut v = MaybeUninit::<T>::uninit();
    let words = v.as_mut_ptr().cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: `i` words of 4 bytes lie inside `v` (size and alignment checked above).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte was written, and all-zero is a valid `T` (`Zeroable`'s contract).
    unsafe { v.assume_init() }
}
