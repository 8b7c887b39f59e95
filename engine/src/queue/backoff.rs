//! Adaptive backoff of one queue, as a pure state machine (PowerMTA's backoff mode, KumoMTA's TSA).
//!
//! `Normal` → a reply matching a `[[backoff]]` rule with `action = "backoff"` → `Backoff { level 1 }`:
//! the queue runs on its `backoff_*` limits (fewer connections, a lower rate, a longer retry). A
//! further match at least `DEEPEN_AFTER_S` after the last level change deepens it (each level halves
//! the backoff connections and rate, down to 1), up to `MAX_LEVEL`. It returns to `Normal` by itself
//! after `recovery_deliveries` deliveries with no new match, or after `quiet_period` with no match.

use std::time::Duration;

/// Deepest backoff level.
pub const MAX_LEVEL: u8 = 3;
/// A new match deepens the backoff only this long after the last level change, so one burst of
/// refusals on parallel connections counts once.
pub const DEEPEN_AFTER_S: u64 = 60;

/// How a queue behaves in backoff (from its policy's `backoff_*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffSettings {
    /// Connections at level 1 (halved per further level, at least 1).
    pub max_connections: u32,
    /// Messages per minute at level 1 (halved per further level, at least 1).
    pub max_messages_per_minute: u32,
    /// Retries wait at least this long while in backoff.
    pub retry_after: Duration,
    /// Deliveries without a new match that end the backoff.
    pub recovery_deliveries: u32,
    /// Time without a new match that ends the backoff.
    pub quiet_period: Duration,
}

impl Default for BackoffSettings {
    fn default() -> BackoffSettings {
        BackoffSettings {
            max_connections: 2,
            max_messages_per_minute: 60,
            retry_after: Duration::from_secs(10 * 60),
            recovery_deliveries: 100,
            quiet_period: Duration::from_secs(30 * 60),
        }
    }
}

/// Where a queue stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackoffState {
    #[default]
    Normal,
    Backoff {
        level: u8,
        /// When the level last changed.
        level_since_s: u64,
        /// The last matching reply.
        last_match_s: u64,
        /// Deliveries since the last matching reply.
        successes: u32,
    },
}

/// Why a backoff ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    Deliveries(u32),
    QuietPeriod,
}

/// A change worth logging and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Entered,
    Deepened { level: u8 },
    Left(LeaveReason),
}

impl BackoffState {
    pub fn is_backoff(&self) -> bool {
        matches!(self, BackoffState::Backoff { .. })
    }

    /// The level, 0 in `Normal`.
    pub fn level(&self) -> u8 {
        match self {
            BackoffState::Normal => 0,
            BackoffState::Backoff { level, .. } => *level,
        }
    }

    /// A reply matched a backoff rule at `now_s`.
    pub fn on_match(&mut self, now_s: u64) -> Option<Transition> {
        match self {
            BackoffState::Normal => {
                *self = BackoffState::Backoff {
                    level: 1,
                    level_since_s: now_s,
                    last_match_s: now_s,
                    successes: 0,
                };
                Some(Transition::Entered)
            }
            BackoffState::Backoff {
                level,
                level_since_s,
                last_match_s,
                successes,
            } => {
                *last_match_s = now_s;
                *successes = 0;
                if *level < MAX_LEVEL && now_s >= level_since_s.saturating_add(DEEPEN_AFTER_S) {
                    *level += 1;
                    *level_since_s = now_s;
                    return Some(Transition::Deepened { level: *level });
                }
                None
            }
        }
    }

    /// `count` recipients were delivered.
    pub fn on_delivered(&mut self, count: u32, settings: &BackoffSettings) -> Option<Transition> {
        let BackoffState::Backoff { successes, .. } = self else {
            return None;
        };
        *successes = successes.saturating_add(count);
        if *successes >= settings.recovery_deliveries {
            let n = *successes;
            *self = BackoffState::Normal;
            return Some(Transition::Left(LeaveReason::Deliveries(n)));
        }
        None
    }

    /// Ends the backoff once `quiet_period` has passed since the last match.
    pub fn on_tick(&mut self, now_s: u64, settings: &BackoffSettings) -> Option<Transition> {
        let BackoffState::Backoff { last_match_s, .. } = *self else {
            return None;
        };
        if now_s >= last_match_s.saturating_add(settings.quiet_period.as_secs()) {
            *self = BackoffState::Normal;
            return Some(Transition::Left(LeaveReason::QuietPeriod));
        }
        None
    }

    /// Connections allowed: `normal` outside backoff, else the backoff cap for the level (never
    /// more than `normal`).
    pub fn max_connections(&self, normal: u32, settings: &BackoffSettings) -> u32 {
        match self.level() {
            0 => normal,
            level => (settings.max_connections >> (level - 1)).clamp(1, normal.max(1)),
        }
    }

    /// Messages per minute allowed: `normal` outside backoff, else the backoff rate for the level
    /// (never above `normal` when that is set).
    pub fn max_messages_per_minute(
        &self,
        normal: Option<u32>,
        settings: &BackoffSettings,
    ) -> Option<u32> {
        match self.level() {
            0 => normal,
            level => {
                let rate = (settings.max_messages_per_minute >> (level - 1)).max(1);
                Some(normal.map_or(rate, |n| rate.min(n)))
            }
        }
    }

    /// The retry wait: at least `retry_after` while in backoff.
    pub fn retry_interval_s(&self, normal_s: u64, settings: &BackoffSettings) -> u64 {
        if self.is_backoff() {
            normal_s.max(settings.retry_after.as_secs())
        } else {
            normal_s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BackoffSettings {
        BackoffSettings {
            max_connections: 8,
            max_messages_per_minute: 120,
            retry_after: Duration::from_secs(600),
            recovery_deliveries: 10,
            quiet_period: Duration::from_secs(300),
        }
    }

    #[test]
    fn enters_deepens_and_leaves_after_deliveries() {
        let s = settings();
        let mut b = BackoffState::Normal;
        assert_eq!(b.max_connections(20, &s), 20);
        assert_eq!(b.on_match(1_000), Some(Transition::Entered));
        assert_eq!(b.max_connections(20, &s), 8);
        assert_eq!(b.max_messages_per_minute(None, &s), Some(120));
        assert_eq!(b.max_messages_per_minute(Some(60), &s), Some(60));
        assert_eq!(b.on_match(1_010), None, "a burst counts once");
        assert_eq!(
            b.on_match(1_000 + DEEPEN_AFTER_S),
            Some(Transition::Deepened { level: 2 })
        );
        assert_eq!(b.max_connections(20, &s), 4);
        assert_eq!(b.max_messages_per_minute(None, &s), Some(60));
        assert_eq!(b.retry_interval_s(60, &s), 600);
        assert_eq!(b.on_delivered(9, &s), None);
        assert_eq!(
            b.on_delivered(1, &s),
            Some(Transition::Left(LeaveReason::Deliveries(10)))
        );
        assert_eq!(b, BackoffState::Normal);
        assert_eq!(b.retry_interval_s(60, &s), 60);
    }

    #[test]
    fn a_new_match_restarts_the_recovery_count() {
        let s = settings();
        let mut b = BackoffState::Normal;
        b.on_match(0);
        assert_eq!(b.on_delivered(9, &s), None);
        b.on_match(5);
        assert_eq!(b.on_delivered(9, &s), None);
        assert!(b.is_backoff());
    }

    #[test]
    fn leaves_after_a_quiet_period() {
        let s = settings();
        let mut b = BackoffState::Normal;
        b.on_match(100);
        assert_eq!(b.on_tick(399, &s), None);
        assert_eq!(
            b.on_tick(400, &s),
            Some(Transition::Left(LeaveReason::QuietPeriod))
        );
        assert_eq!(b.on_tick(500, &s), None);
    }

    #[test]
    fn deepest_level_floors_at_one() {
        let s = BackoffSettings {
            max_connections: 2,
            max_messages_per_minute: 2,
            ..settings()
        };
        let mut b = BackoffState::Normal;
        for i in 0..10 {
            b.on_match(i * DEEPEN_AFTER_S);
        }
        assert_eq!(b.level(), MAX_LEVEL);
        assert_eq!(b.max_connections(20, &s), 1);
        assert_eq!(b.max_messages_per_minute(None, &s), Some(1));
        assert_eq!(b.max_connections(1, &s), 1);
    }
}
