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

/// A seeded xorshift64* generator: the same seed gives the same sequence. For choosing test
/// operations and injected faults, not for data (see `random_bytes`).
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1)) // zero would stay zero
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
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

    #[test]
    fn the_seeded_generator_repeats_for_a_seed() {
        let draw = |seed| {
            let mut rng = super::SeededRng::new(seed);
            (0..4).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        assert_ne!(draw(0), vec![0; 4], "a zero seed still draws");
    }
}
