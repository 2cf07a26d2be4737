//! A tiny seeded pseudo-random generator (SplitMix64) for backoff jitter and id
//! prefixes. Seeded from outside (`Math.random()` in the browser, a constant in tests),
//! so the core stays deterministic under test and pulls in no `getrandom`.

/// SplitMix64: fast, small, good enough for jitter (not for secrets).
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    pub fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next_u64() % n,
            None => self.next_u64(),
        }
    }

    /// `len` characters of `[0-9a-z]`.
    pub fn base36(&mut self, len: usize) -> String {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        (0..len)
            .map(|_| DIGITS[(self.next_u64() % 36) as usize] as char)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert_eq!(a.next_u64(), b.next_u64());
        assert_eq!(a.base36(6), b.base36(6));
    }

    #[test]
    fn up_to_stays_within_its_bound() {
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.up_to(10) <= 10));
        assert_eq!(r.up_to(0), 0);
    }
}
