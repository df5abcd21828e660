//! Incompressible test and benchmark data (servers such as Garage compress and deduplicate,
//! so patterns would flatter them). Deterministic: the same seed gives the same bytes.

/// `len` pseudo-random bytes from a xorshift generator seeded with `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = super::random_bytes(1000, 1);
        assert_eq!(a.len(), 1000);
        assert_eq!(a, super::random_bytes(1000, 1));
        assert_ne!(a, super::random_bytes(1000, 2));
    }
}
