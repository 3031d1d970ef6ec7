//! One's-complement checksum arithmetic (RFC 1071 / RFC 1624). The datapath uses the kernel's
//! incremental helpers; this is the same math for host-side tests and for the agent's checks.

/// Folds a 32-bit one's-complement sum to 16 bits.
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Internet checksum of `data` (big-endian 16-bit words, odd byte padded with zero).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    !fold(sum)
}

/// RFC 1624 eqn. 3: the checksum after a 16-bit field changes from `old` to `new`.
pub const fn update16(csum: u16, old: u16, new: u16) -> u16 {
    !fold((!csum) as u32 + (!old) as u32 + new as u32)
}

/// The checksum after a 32-bit field (an IPv4 address) changes.
pub const fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let c = update16(csum, (old >> 16) as u16, (new >> 16) as u16);
    update16(c, old as u16, new as u16)
}

/// `a - b` in 32-bit one's-complement arithmetic (the kernel's `csum_sub`): the change of a
/// byte sum when the 32-bit word `a` becomes `b`, as `bpf_csum_update` takes it.
pub const fn sub32(a: u32, b: u32) -> u32 {
    let s = a as u64 + (!b) as u64;
    (s as u32).wrapping_add((s >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    // IPv4 header from RFC 1071 style examples: 45 00 00 73 00 00 40 00 40 11 [b8 61] c0 a8 00 01 c0 a8 00 c7
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn full_checksum_matches_known_value() {
        assert_eq!(checksum(&HDR), 0xb861);
    }

    #[test]
    fn incremental_equals_recomputed_for_address_change() {
        let mut h = HDR;
        let c0 = checksum(&h);
        let old = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
        let new = u32::from_be_bytes([10, 254, 0, 2]);
        h[16..20].copy_from_slice(&new.to_be_bytes());
        assert_eq!(update32(c0, old, new), checksum(&h));
    }

    #[test]
    fn incremental_equals_recomputed_for_many_values() {
        let mut h = HDR;
        let mut c = checksum(&h);
        for v in [0u16, 1, 0xffff, 0x8000, 61001, 80, 0x1234] {
            let old = u16::from_be_bytes([h[4], h[5]]);
            h[4..6].copy_from_slice(&v.to_be_bytes());
            c = update16(c, old, v);
            assert_eq!(c, checksum(&h), "after setting id to {v}");
        }
    }

    #[test]
    fn checksum_of_data_including_its_checksum_is_zero() {
        let mut h = HDR;
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&h), 0);
    }
}
