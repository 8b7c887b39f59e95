//! The one clock of the engine: wall time (what events, headers and queue ages are stamped with)
//! and monotonic time (what deadlines are measured with), and the one RFC 5322 date formatter.
//!
//! Wall time can step (NTP, an operator); nothing that measures a duration reads it. A wall clock
//! before 1970 reads as 0 rather than failing: an MTA must keep moving mail on a bad clock.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::{Rfc2822, Rfc3339};

/// Seconds since the Unix epoch.
pub fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

/// Now, as RFC 3339 UTC (accounting events).
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
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
    }
}
