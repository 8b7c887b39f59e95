//! How long a webhook waits before it sends a refused batch again: doubling from a second to five
//! minutes, up to a fifth earlier at random so that many nodes behind one receiver do not retry
//! in step.

/// The wait after the first failure.
pub const RETRY_FIRST_MS: u64 = 1_000;
/// The longest wait.
pub const RETRY_MAX_MS: u64 = 300_000;

/// The wait after `failures` failures in a row (1 = the first), given `jitter` in 0..1.
pub fn retry_delay_ms(failures: u32, jitter: f64) -> u64 {
    let doublings = failures.saturating_sub(1).min(20);
    let base = RETRY_FIRST_MS
        .saturating_mul(1u64 << doublings)
        .min(RETRY_MAX_MS);
    let early = (base as f64 * 0.2 * jitter.clamp(0.0, 1.0)) as u64;
    base - early
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_a_second_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=11).map(|f| retry_delay_ms(f, 0.0)).collect();
        assert_eq!(
            waits,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000,
                300_000
            ]
        );
        assert_eq!(retry_delay_ms(0, 0.0), 1_000);
        assert_eq!(retry_delay_ms(u32::MAX, 0.0), RETRY_MAX_MS);
    }

    #[test]
    fn jitter_only_shortens_by_a_fifth_at_most() {
        assert_eq!(retry_delay_ms(1, 1.0), 800);
        assert_eq!(retry_delay_ms(30, 1.0), 240_000);
        assert_eq!(retry_delay_ms(3, 0.5), 3_600);
        assert_eq!(retry_delay_ms(3, 7.0), 3_200);
    }
}
