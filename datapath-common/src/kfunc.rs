//! The one kernel function the datapath calls, `bpf_cast_to_kern_ctx`, and what it reads
//! through it: `skb->ip_summed`, which no `__sk_buff` field exposes and which says what a
//! packet's L4 checksum field holds (the full checksum, or with CHECKSUM_PARTIAL only the
//! pseudo-header's sum). Knowing it, the programs update checksums with plain arithmetic
//! instead of a `bpf_l4_csum_replace` call per field, the largest per-packet cost left.
//!
//! Neither aya nor bpf-linker resolves kernel-function calls, so the programs call a
//! placeholder helper number (`CAST_TO_KERN_CTX_MARK`) and the loader (`patch`, user side)
//! rewrites each such call into a kfunc call with the function's BTF id in the running kernel,
//! and finds where `ip_summed` lies in its `struct sk_buff` (passed in `.rodata`, so the
//! verifier sees a constant offset). The verifier replaces the call itself with a register
//! move: it costs nothing at run time.

/// The placeholder helper number of `bpf_cast_to_kern_ctx` calls in the object; no helper
/// has it, so an unpatched object fails to load instead of misbehaving.
pub const CAST_TO_KERN_CTX_MARK: u32 = 0x7f7f_0c01;

/// `skb->ip_summed` values (include/linux/skbuff.h).
pub const CHECKSUM_NONE: u8 = 0;
pub const CHECKSUM_UNNECESSARY: u8 = 1;
pub const CHECKSUM_COMPLETE: u8 = 2;
pub const CHECKSUM_PARTIAL: u8 = 3;

/// Names of the object's globals the loader sets from `SkbLayout`.
pub const GLOBAL_IP_SUMMED_OFF: &str = "SKB_IP_SUMMED_OFF";
pub const GLOBAL_IP_SUMMED_SHIFT: &str = "SKB_IP_SUMMED_SHIFT";

#[cfg(feature = "user")]
pub use user::{patch, Patched, SkbLayout};

#[cfg(feature = "user")]
mod user {
    extern crate alloc;
    extern crate std;

    use alloc::{format, string::String, vec::Vec};

    use super::CAST_TO_KERN_CTX_MARK;

    /// Where `ip_summed` (a 2-bit bitfield) lies in the running kernel's `struct sk_buff`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SkbLayout {
        /// Byte holding the bitfield.
        pub ip_summed_off: u32,
        /// Its lowest bit within that byte (little-endian bit numbering).
        pub ip_summed_shift: u32,
    }

    /// An object ready to load: its kfunc calls resolved, and the globals to set.
    pub struct Patched {
        pub object: Vec<u8>,
        pub layout: SkbLayout,
        /// Calls rewritten (0: the object calls no kernel function).
        pub calls: usize,
    }

    /// Resolves the placeholder calls of `object` against `/sys/kernel/btf/vmlinux`.
    ///
    /// # Errors
    /// The kernel has no BTF, or no `bpf_cast_to_kern_ctx`, or a `struct sk_buff` without a
    /// 2-bit `ip_summed` within one byte.
    pub fn patch(object: &[u8]) -> Result<Patched, String> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| format!("reading /sys/kernel/btf/vmlinux (kernel BTF): {e}"))?;
        let btf = Btf::parse(&data)?;
        let func = btf
            .find(KIND_FUNC, "bpf_cast_to_kern_ctx")
            .ok_or("the kernel has no bpf_cast_to_kern_ctx (Linux 6.3 or later is needed)")?;
        let layout = btf.skb_ip_summed()?;
        let (object, calls) = rewrite_calls(object, func);
        Ok(Patched {
            object,
            layout,
            calls,
        })
    }

    /// Rewrites every `call CAST_TO_KERN_CTX_MARK` (a helper call: opcode 0x85, registers 0)
    /// into `call <btf_id>` of kind BPF_PSEUDO_KFUNC_CALL (source register 2). Instructions are
    /// 8 bytes at 8-aligned offsets of 8-aligned sections, so an aligned scan of the file finds
    /// them all; the pattern (a call to a helper number no kernel has) appears nowhere else.
    fn rewrite_calls(object: &[u8], btf_id: u32) -> (Vec<u8>, usize) {
        let mut out = object.to_vec();
        let mut mark = [0x85u8, 0, 0, 0, 0, 0, 0, 0];
        mark[4..].copy_from_slice(&CAST_TO_KERN_CTX_MARK.to_le_bytes());
        let mut calls = 0;
        for insn in out.chunks_exact_mut(8) {
            if insn == mark {
                insn[1] = 2 << 4;
                insn[4..].copy_from_slice(&btf_id.to_le_bytes());
                calls += 1;
            }
        }
        (out, calls)
    }

    const KIND_INT: u32 = 1;
    const KIND_PTR: u32 = 2;
    const KIND_ARRAY: u32 = 3;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_ENUM: u32 = 6;
    const KIND_FWD: u32 = 7;
    const KIND_TYPEDEF: u32 = 8;
    const KIND_VOLATILE: u32 = 9;
    const KIND_CONST: u32 = 10;
    const KIND_RESTRICT: u32 = 11;
    const KIND_FUNC: u32 = 12;
    const KIND_FUNC_PROTO: u32 = 13;
    const KIND_VAR: u32 = 14;
    const KIND_DATASEC: u32 = 15;
    const KIND_FLOAT: u32 = 16;
    const KIND_DECL_TAG: u32 = 17;
    const KIND_TYPE_TAG: u32 = 18;
    const KIND_ENUM64: u32 = 19;

    /// One BTF type: its kind, name, `size`/`type` word, and members (struct/union only).
    struct Type {
        kind: u32,
        kind_flag: bool,
        name_off: u32,
        size_or_type: u32,
        /// (name offset, type id, offset word) of each member.
        members: Vec<(u32, u32, u32)>,
    }

    /// Just enough of a BTF blob (kernel Documentation/bpf/btf.rst) to find a function's id
    /// and a struct member's bit offset.
    struct Btf<'a> {
        /// Index 0 is the void type; ids start at 1.
        types: Vec<Type>,
        strings: &'a [u8],
    }

    fn u32_at(d: &[u8], off: usize) -> Result<u32, String> {
        d.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("kernel BTF truncated at byte {off}"))
    }

    impl<'a> Btf<'a> {
        fn parse(d: &'a [u8]) -> Result<Self, String> {
            if d.get(0..2) != Some(&[0x9f, 0xeb][..]) {
                return Err("kernel BTF: bad magic (not little-endian BTF)".into());
            }
            let hdr_len = u32_at(d, 4)? as usize;
            let (type_off, type_len) = (u32_at(d, 8)? as usize, u32_at(d, 12)? as usize);
            let (str_off, str_len) = (u32_at(d, 16)? as usize, u32_at(d, 20)? as usize);
            let types_at = hdr_len + type_off;
            let strings = d
                .get(hdr_len + str_off..hdr_len + str_off + str_len)
                .ok_or("kernel BTF: string section out of bounds")?;
            let mut types = Vec::with_capacity(160_000);
            types.push(Type {
                kind: 0,
                kind_flag: false,
                name_off: 0,
                size_or_type: 0,
                members: Vec::new(),
            });
            let mut p = types_at;
            while p < types_at + type_len {
                let (name_off, info, size_or_type) =
                    (u32_at(d, p)?, u32_at(d, p + 4)?, u32_at(d, p + 8)?);
                p += 12;
                let kind = (info >> 24) & 0x1f;
                let vlen = (info & 0xffff) as usize;
                let mut members = Vec::new();
                p += match kind {
                    KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                    KIND_ARRAY => 12,
                    KIND_STRUCT | KIND_UNION => {
                        for i in 0..vlen {
                            let m = p + i * 12;
                            members.push((u32_at(d, m)?, u32_at(d, m + 4)?, u32_at(d, m + 8)?));
                        }
                        vlen * 12
                    }
                    KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                    KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                    KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST
                    | KIND_RESTRICT | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                    k => return Err(format!("kernel BTF: unknown type kind {k}")),
                };
                types.push(Type {
                    kind,
                    kind_flag: info >> 31 != 0,
                    name_off,
                    size_or_type,
                    members,
                });
            }
            Ok(Self { types, strings })
        }

        fn name(&self, off: u32) -> &[u8] {
            let s = self.strings.get(off as usize..).unwrap_or_default();
            &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
        }

        fn find(&self, kind: u32, name: &str) -> Option<u32> {
            self.types
                .iter()
                .position(|t| t.kind == kind && self.name(t.name_off) == name.as_bytes())
                .and_then(|i| u32::try_from(i).ok())
        }

        /// `id` with typedefs and qualifiers peeled off.
        fn resolve(&self, mut id: u32) -> Option<&Type> {
            for _ in 0..32 {
                let t = self.types.get(id as usize)?;
                match t.kind {
                    KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                        id = t.size_or_type;
                    }
                    _ => return Some(t),
                }
            }
            None
        }

        /// Bit offset and bitfield size of member `name` of struct/union `t`, looking into
        /// anonymous struct and union members (`sk_buff` groups its header fields so).
        fn member_bits(&self, t: &Type, name: &[u8], depth: u32) -> Option<(u32, u32)> {
            if depth > 8 {
                return None;
            }
            for &(name_off, type_id, off) in &t.members {
                let (bit, size) = if t.kind_flag {
                    (off & 0x00ff_ffff, off >> 24)
                } else {
                    (off, 0)
                };
                let member_name = self.name(name_off);
                if member_name == name {
                    return Some((bit, size));
                }
                if member_name.is_empty() {
                    let inner = self.resolve(type_id)?;
                    if matches!(inner.kind, KIND_STRUCT | KIND_UNION) {
                        if let Some((b, s)) = self.member_bits(inner, name, depth + 1) {
                            return Some((bit + b, s));
                        }
                    }
                }
            }
            None
        }

        fn skb_ip_summed(&self) -> Result<SkbLayout, String> {
            let skb = self
                .find(KIND_STRUCT, "sk_buff")
                .and_then(|id| self.types.get(id as usize))
                .ok_or("kernel BTF has no struct sk_buff")?;
            let (bit, size) = self
                .member_bits(skb, b"ip_summed", 0)
                .ok_or("kernel BTF: struct sk_buff has no ip_summed")?;
            if size != 2 || bit % 8 > 6 {
                return Err(format!(
                    "kernel BTF: sk_buff.ip_summed is {size} bits at bit {bit}, not 2 bits within \
                     one byte"
                ));
            }
            Ok(SkbLayout {
                ip_summed_off: bit / 8,
                ip_summed_shift: bit % 8,
            })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rewrites_only_the_marked_calls() {
            let mut obj = alloc::vec![0u8; 32];
            obj[8] = 0x85;
            obj[12..16].copy_from_slice(&CAST_TO_KERN_CTX_MARK.to_le_bytes());
            obj[16] = 0x85; // a real helper call (bpf_map_lookup_elem) stays
            obj[20] = 1;
            let (out, calls) = rewrite_calls(&obj, 4242);
            assert_eq!(calls, 1);
            assert_eq!(&out[8..16], &[0x85, 0x20, 0, 0, 0x92, 0x10, 0, 0]);
            assert_eq!(&out[16..24], &obj[16..24]);
        }

        #[test]
        fn finds_ip_summed_in_the_running_kernel() {
            let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
                return;
            };
            let btf = Btf::parse(&data).unwrap();
            assert!(btf.find(KIND_FUNC, "bpf_cast_to_kern_ctx").is_some());
            let l = btf.skb_ip_summed().unwrap();
            std::println!("{l:?}");
            assert!(l.ip_summed_off > 64 && l.ip_summed_off < 256, "{l:?}");
        }
    }
}
