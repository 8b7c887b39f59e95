//! Rate shaping: a GCRA (generic cell rate algorithm) per limit.
//!
//! GCRA is a token bucket stored as one timestamp (the "theoretical arrival time"), so a queue pays
//! 24 bytes per limit and no refill timer. It spaces sends evenly (one per `period / limit`) and
//! allows a small burst of `limit / 100` (at least 1), so over any window as long as the period at most
//! `limit + limit / 100` sends pass: the 1 % the queue tests hold it to.

/// Microseconds per millisecond: the limiter keeps microseconds so 7/hour does not round.
const US_PER_MS: u64 = 1_000;

/// The burst allowed on top of the steady rate, as a divisor of the limit (1 %).
const BURST_DIVISOR: u32 = 100;

/// One rate limit: at most `limit` sends per `period_ms`, evenly spaced, with a small burst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimiter {
    /// Time between sends at the steady rate.
    interval_us: u64,
    /// How far ahead of the steady schedule a send may go (the burst).
    tolerance_us: u64,
    /// When the next send is due on the steady schedule; 0 before the first send.
    theoretical_arrival_us: u64,
}

impl RateLimiter {
    /// At most `limit` sends per `period_ms`. A zero limit or period is read as 1.
    pub fn new(limit: u32, period_ms: u64) -> RateLimiter {
        let limit = limit.max(1);
        let interval_us = (period_ms.max(1) * US_PER_MS / u64::from(limit)).max(1);
        let burst = (limit / BURST_DIVISOR).max(1);
        RateLimiter {
            interval_us,
            tolerance_us: interval_us * u64::from(burst - 1),
            theoretical_arrival_us: 0,
        }
    }

    /// `limit` per minute.
    pub fn per_minute(limit: u32) -> RateLimiter {
        RateLimiter::new(limit, 60_000)
    }

    /// `limit` per hour.
    pub fn per_hour(limit: u32) -> RateLimiter {
        RateLimiter::new(limit, 3_600_000)
    }

    /// Whether a send may start at `now_ms`, without taking it; `Err` holds the wait in ms.
    pub fn check(&self, now_ms: u64) -> Result<(), u64> {
        let now_us = now_ms.saturating_mul(US_PER_MS);
        let allowed_at_us = self
            .theoretical_arrival_us
            .saturating_sub(self.tolerance_us);
        if now_us >= allowed_at_us {
            Ok(())
        } else {
            Err((allowed_at_us - now_us).div_ceil(US_PER_MS))
        }
    }

    /// Records a send at `now_ms` (call after `check` said yes).
    pub fn record(&mut self, now_ms: u64) {
        let now_us = now_ms.saturating_mul(US_PER_MS);
        self.theoretical_arrival_us = self.theoretical_arrival_us.max(now_us) + self.interval_us;
    }

    /// Whether the limiter is where a fresh one would be at `now_ms`: no past send still counts.
    pub fn is_at_rest(&self, now_ms: u64) -> bool {
        self.theoretical_arrival_us <= now_ms.saturating_mul(US_PER_MS)
    }

    /// Checks and, when allowed, records a send.
    pub fn try_send(&mut self, now_ms: u64) -> Result<(), u64> {
        self.check(now_ms)?;
        self.record(now_ms);
        Ok(())
    }
}

/// The per-minute and per-hour limits of one queue; a send must pass both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendRate {
    per_minute: Option<RateLimiter>,
    per_hour: Option<RateLimiter>,
}

impl SendRate {
    /// Limits from a policy's `max_messages_per_minute` / `max_messages_per_hour`.
    pub fn new(per_minute: Option<u32>, per_hour: Option<u32>) -> SendRate {
        SendRate {
            per_minute: per_minute.map(RateLimiter::per_minute),
            per_hour: per_hour.map(RateLimiter::per_hour),
        }
    }

    /// Whether both limiters are at rest at `now_ms`: replacing them by fresh ones changes nothing,
    /// so the queue may be forgotten without letting a burst through when it comes back.
    pub fn is_at_rest(&self, now_ms: u64) -> bool {
        [&self.per_minute, &self.per_hour]
            .into_iter()
            .flatten()
            .all(|l| l.is_at_rest(now_ms))
    }

    /// Takes one send at `now_ms` if both limits allow it; otherwise the longer wait in ms.
    pub fn may_send(&mut self, now_ms: u64) -> Result<(), u64> {
        let wait_minute = self.per_minute.as_ref().map_or(Ok(()), |l| l.check(now_ms));
        let wait_hour = self.per_hour.as_ref().map_or(Ok(()), |l| l.check(now_ms));
        match (wait_minute, wait_hour) {
            (Ok(()), Ok(())) => {
                for limiter in [&mut self.per_minute, &mut self.per_hour]
                    .into_iter()
                    .flatten()
                {
                    limiter.record(now_ms);
                }
                Ok(())
            }
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(wait), Ok(())) | (Ok(()), Err(wait)) => Err(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3_600_000;

    /// Sends as fast as the limiter allows for `duration_ms` on a fake clock; returns the count.
    fn saturate(rate: &mut SendRate, duration_ms: u64) -> u64 {
        let mut now_ms = 0;
        let mut sent = 0;
        while now_ms < duration_ms {
            match rate.may_send(now_ms) {
                Ok(()) => sent += 1,
                Err(wait_ms) => {
                    assert!(wait_ms > 0, "a refusal must ask for a wait");
                    now_ms += wait_ms;
                }
            }
        }
        sent
    }

    fn assert_within_one_percent(sent: u64, expected: u64) {
        assert!(
            sent >= expected,
            "sent {sent}, expected at least {expected}"
        );
        assert!(
            sent * 100 <= expected * 101,
            "sent {sent}, more than 1 % over {expected}"
        );
    }

    #[test]
    fn per_minute_limit_holds_over_an_hour() {
        let mut rate = SendRate::new(Some(600), None);
        assert_within_one_percent(saturate(&mut rate, HOUR_MS), 600 * 60);
    }

    #[test]
    fn per_hour_limit_holds_over_an_hour() {
        let mut rate = SendRate::new(None, Some(1_000));
        assert_within_one_percent(saturate(&mut rate, HOUR_MS), 1_000);
    }

    #[test]
    fn odd_rates_do_not_drift() {
        let mut rate = SendRate::new(Some(7), None);
        assert_within_one_percent(saturate(&mut rate, HOUR_MS), 7 * 60);
    }

    #[test]
    fn tighter_of_two_limits_wins() {
        // 600/min would allow 36 000 an hour; the hourly 5 000 must win.
        let mut rate = SendRate::new(Some(600), Some(5_000));
        assert_within_one_percent(saturate(&mut rate, HOUR_MS), 5_000);
    }

    #[test]
    fn no_limit_always_allows() {
        let mut rate = SendRate::new(None, None);
        for _ in 0..10_000 {
            assert_eq!(rate.may_send(0), Ok(()));
        }
    }

    #[test]
    fn wait_is_the_spacing() {
        let mut limiter = RateLimiter::per_minute(60);
        assert_eq!(limiter.try_send(5_000), Ok(()));
        assert_eq!(limiter.try_send(5_000), Err(1_000));
        assert_eq!(limiter.try_send(5_999), Err(1));
        assert_eq!(limiter.try_send(6_000), Ok(()));
    }

    #[test]
    fn a_limiter_is_at_rest_once_its_last_send_no_longer_counts() {
        let mut rate = SendRate::new(Some(60), Some(60));
        assert!(rate.is_at_rest(0), "a fresh limiter");
        assert_eq!(rate.may_send(10_000), Ok(()));
        // 60/hour: the send counts for a minute; 60/minute only for a second.
        assert!(!rate.is_at_rest(10_000));
        assert!(!rate.is_at_rest(69_999));
        assert!(rate.is_at_rest(70_000));
        assert!(SendRate::new(None, None).is_at_rest(0));
    }

    #[test]
    fn burst_is_one_percent_of_the_limit() {
        let mut limiter = RateLimiter::per_minute(1_000);
        let burst = (0..100).take_while(|_| limiter.try_send(0).is_ok()).count();
        assert_eq!(burst, 10);
    }
}
