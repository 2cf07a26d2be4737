//! Full-jitter exponential backoff between reconnection attempts, in one small
//! function (as centrifuge-js does): attempt `n` waits a random time in
//! `min ..= min(max, min + base·2ⁿ)`, where `base` is `min` but at least
//! [`GROWTH_FLOOR_MS`] (so that `min = 0` still backs off).

use crate::rng::Rng;

/// The smallest base of the growing window: with `min_ms` below it (`minDelayMs: 0`)
/// the window still doubles from this, instead of staying `0·2ⁿ = 0` for ever.
pub const GROWTH_FLOOR_MS: u64 = 100;

/// Delay bounds for reconnection attempts, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Shortest wait before an attempt (after the first, immediate, one).
    pub min_ms: u64,
    /// Longest wait before an attempt.
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min_ms: 250,
            max_ms: 10_000,
        }
    }
}

impl Backoff {
    /// Bounds with `min_ms <= max_ms` guaranteed (a `max` below `min` is raised to it).
    pub fn new(min_ms: u64, max_ms: u64) -> Self {
        Backoff {
            min_ms,
            max_ms: max_ms.max(min_ms),
        }
    }

    /// The wait before retry number `step` (0-based): full jitter over an exponentially
    /// growing window, never below `min_ms` nor above `max_ms`.
    pub fn delay(&self, step: u32, rng: &mut Rng) -> u64 {
        let window = self
            .min_ms
            .max(GROWTH_FLOOR_MS)
            .saturating_mul(1u64 << step.min(32))
            .min(self.max_ms);
        self.min_ms
            .saturating_add(rng.up_to(window))
            .min(self.max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_delays_stay_between_min_and_max_at_every_step() {
        let b = Backoff::new(250, 10_000);
        let mut rng = Rng::new(42);
        for step in 0..100 {
            for _ in 0..50 {
                let d = b.delay(step, &mut rng);
                assert!((250..=10_000).contains(&d), "step {step}: {d}");
            }
        }
    }

    #[test]
    fn backoff_window_grows_exponentially_until_the_cap() {
        let b = Backoff::new(100, 10_000);
        let mut rng = Rng::new(3);
        let worst = |step, rng: &mut Rng| (0..500).map(|_| b.delay(step, rng)).max().unwrap();
        assert!(worst(0, &mut rng) <= 200);
        assert!(worst(2, &mut rng) <= 500);
        assert!(worst(2, &mut rng) > 300, "the window of step 2 is 400 wide");
        assert_eq!(b.delay(60, &mut Rng::new(1)).max(10_000), 10_000);
    }

    #[test]
    fn backoff_jitter_spreads_delays_instead_of_repeating_one_value() {
        let b = Backoff::new(250, 10_000);
        let mut rng = Rng::new(9);
        let delays: std::collections::BTreeSet<u64> =
            (0..100).map(|_| b.delay(5, &mut rng)).collect();
        assert!(delays.len() > 50, "only {} distinct delays", delays.len());
        let spread = delays.last().unwrap() - delays.first().unwrap();
        assert!(spread > 4_000, "spread {spread}");
    }

    #[test]
    fn backoff_with_a_minimum_of_zero_still_grows_with_the_step() {
        let b = Backoff::new(0, 10_000);
        let mut rng = Rng::new(7);
        let worst = |step, rng: &mut Rng| (0..500).map(|_| b.delay(step, rng)).max().unwrap();
        let (w0, w3, w6, w20) = (
            worst(0, &mut rng),
            worst(3, &mut rng),
            worst(6, &mut rng),
            worst(20, &mut rng),
        );
        assert!(w0 <= GROWTH_FLOOR_MS, "step 0: {w0}");
        assert!(w3 > 4 * GROWTH_FLOOR_MS, "step 3 waits up to 800 ms: {w3}");
        assert!(w6 > 4_000, "step 6 waits up to 6400 ms: {w6}");
        assert!((9_000..=10_000).contains(&w20), "capped at max: {w20}");
    }

    #[test]
    fn backoff_max_below_min_is_raised_to_min() {
        let b = Backoff::new(500, 100);
        assert_eq!(b.delay(3, &mut Rng::new(5)), 500);
    }
}
