//! The one clock of the engine: wall time (what events, headers and queue ages are stamped with)
//! and monotonic time (what deadlines are measured with), and the one RFC 5322 date formatter.
//!
//! Wall time can step (NTP, an operator); nothing that measures a duration reads it. A wall clock
//! before 1970 reads as 0 rather than failing: an MTA must keep moving mail on a bad clock.
//!
//! Tests move wall time forward (`advance`, reached only through `POST /v1/clock/advance`, which
//! exists only with `[server] test_clock = true`): an offset added to every wall time read here.
//! Monotonic time is never moved, so deadlines and timeouts stay real.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::{Rfc2822, Rfc3339};

/// Seconds added to the system's wall time by `advance` (0 outside tests).
static OFFSET_S: AtomicU64 = AtomicU64::new(0);

/// Moves wall time forward by `seconds` for the whole process; the total offset after it.
/// Only for tests (`[server] test_clock`): queue ages, expiries and report periods all jump.
pub fn advance(seconds: u64) -> u64 {
    OFFSET_S
        .fetch_add(seconds, Ordering::Relaxed)
        .saturating_add(seconds)
}

/// How far `advance` has moved wall time, in seconds.
pub fn offset_s() -> u64 {
    OFFSET_S.load(Ordering::Relaxed)
}

/// Wall time: the system's, before 1970 read as 0, plus the offset.
fn shifted(system: SystemTime, offset_s: u64) -> Duration {
    system
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(Duration::from_secs(offset_s))
}

fn since_epoch() -> Duration {
    shifted(SystemTime::now(), offset_s())
}

/// Seconds since the Unix epoch.
pub fn unix_s() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// Monotonic now, for deadlines and latencies.
pub fn monotonic() -> Instant {
    Instant::now()
}

/// RFC 5322 date-time in UTC, e.g. `Tue, 01 Jul 2003 10:52:37 +0000` (Date:, Received:, DSNs).
pub fn rfc5322_date(unix_s: u64) -> String {
    let at = i64::try_from(unix_s)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(&Rfc2822)
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}

/// A time in seconds since the epoch as RFC 3339 UTC, e.g. `2003-07-01T10:52:37Z` (the API's
/// times; a time past what RFC 3339 can write reads as the epoch).
pub fn rfc3339(unix_s: u64) -> String {
    i64::try_from(unix_s)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Now, as an `OffsetDateTime` in UTC (to the nanosecond).
pub fn now_utc() -> OffsetDateTime {
    i128::try_from(since_epoch().as_nanos())
        .ok()
        .and_then(|ns| OffsetDateTime::from_unix_timestamp_nanos(ns).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Now, as RFC 3339 UTC (accounting events).
pub fn now_rfc3339() -> String {
    now_utc().format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5322_date_formats_utc() {
        assert_eq!(
            rfc5322_date(1_057_056_757),
            "Tue, 01 Jul 2003 10:52:37 +0000"
        );
        assert_eq!(rfc5322_date(u64::MAX), "Thu, 01 Jan 1970 00:00:00 +0000");
    }

    #[test]
    fn rfc3339_formats_utc_seconds() {
        assert_eq!(rfc3339(1_057_056_757), "2003-07-01T10:52:37Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(u64::MAX), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn wall_clock_agrees_with_itself() {
        let (s, ms) = (unix_s(), unix_ms());
        assert!(ms / 1000 >= s && ms / 1000 - s <= 1);
        assert!(now_rfc3339().ends_with('Z'));
        assert!(now_utc().unix_timestamp().abs_diff(s as i64) <= 1);
    }

    #[test]
    fn the_offset_moves_wall_time() {
        // `advance` itself is not called here: unit tests share the process and its clock
        // (tests/test_tls_rpt.py moves a daemon's).
        let at = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(shifted(at, 0), Duration::from_secs(1_000));
        assert_eq!(shifted(at, 86_400), Duration::from_secs(87_400));
        let before_1970 = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(shifted(before_1970, 7), Duration::from_secs(7));
        assert_eq!(advance(0), offset_s());
    }
}
