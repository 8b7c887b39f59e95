//! The delivery policy of one (VMTA, domain) queue: connection and rate caps, retry schedule, and
//! how long a recipient may stay queued. The config module fills it from `[[domain]]`; the queue only
//! reads it.

use std::time::Duration;

use super::backoff::BackoffSettings;

/// A retry interval shorter than this is raised to it, so a zero interval cannot make the driver spin.
pub const MIN_RETRY_INTERVAL_S: u64 = 1;

/// How one (VMTA, domain) queue may deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePolicy {
    /// Concurrent outbound connections for this queue.
    pub max_connections: u32,
    /// SMTP transactions on one connection before the driver closes it (enforced by the driver).
    pub max_messages_per_connection: u32,
    /// Transactions started per minute, if limited.
    pub max_messages_per_minute: Option<u32>,
    /// Transactions started per hour, if limited.
    pub max_messages_per_hour: Option<u32>,
    /// Wait after the 1st, 2nd, ... failed attempt; the last interval repeats.
    pub retry_intervals: Vec<Duration>,
    /// A recipient still undelivered this long after it was first queued expires.
    pub max_queue_age: Duration,
    /// The limits while the queue is in adaptive backoff.
    pub backoff: BackoffSettings,
    /// `[[domain]] cluster = true` (with `[cluster]`): the connection cap and the message rate
    /// hold across the nodes, for this scope; `None` = per queue on this node.
    pub cluster: Option<ClusterScope>,
}

/// Which queues of the cluster share one set of caps (see docs/cluster.md, "Cluster-wide shaping").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClusterScope {
    /// The queue's VMTA and domain, on every node (the entry named a `vmta`).
    Vmta,
    /// The queue's domain, whatever the VMTA, on every node: the receiver's view of the platform.
    Domain,
}

impl Default for QueuePolicy {
    fn default() -> QueuePolicy {
        const MINUTE: u64 = 60;
        QueuePolicy {
            max_connections: 20,
            max_messages_per_connection: 100,
            max_messages_per_minute: None,
            max_messages_per_hour: None,
            retry_intervals: [5, 10, 30, 60, 120, 240]
                .iter()
                .map(|m| Duration::from_secs(m * MINUTE))
                .collect(),
            max_queue_age: Duration::from_secs(5 * 24 * 60 * MINUTE),
            backoff: BackoffSettings::default(),
            cluster: None,
        }
    }
}

/// Why a policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("max_connections must be at least 1")]
    NoConnections,
    #[error("max_messages_per_connection must be at least 1")]
    NoMessagesPerConnection,
    #[error("max_messages_per_minute must be at least 1 when set")]
    ZeroPerMinute,
    #[error("max_messages_per_hour must be at least 1 when set")]
    ZeroPerHour,
    #[error("retry_intervals must list at least one interval")]
    NoRetryIntervals,
    #[error("every retry interval must be at least {MIN_RETRY_INTERVAL_S} s")]
    RetryIntervalTooShort,
    #[error("max_queue_age must be at least 1 s")]
    NoQueueAge,
}

impl QueuePolicy {
    /// Checks the limits; the config module reports the error with its key and line.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_connections == 0 {
            return Err(PolicyError::NoConnections);
        }
        if self.max_messages_per_connection == 0 {
            return Err(PolicyError::NoMessagesPerConnection);
        }
        if self.max_messages_per_minute == Some(0) {
            return Err(PolicyError::ZeroPerMinute);
        }
        if self.max_messages_per_hour == Some(0) {
            return Err(PolicyError::ZeroPerHour);
        }
        if self.retry_intervals.is_empty() {
            return Err(PolicyError::NoRetryIntervals);
        }
        if self
            .retry_intervals
            .iter()
            .any(|d| d.as_secs() < MIN_RETRY_INTERVAL_S)
        {
            return Err(PolicyError::RetryIntervalTooShort);
        }
        if self.max_queue_age.as_secs() == 0 {
            return Err(PolicyError::NoQueueAge);
        }
        Ok(())
    }

    /// Seconds to wait after failed attempt number `attempt` (1-based; 0 is read as 1). The last
    /// interval repeats; an unvalidated empty or zero schedule falls back to the minimum interval.
    pub fn retry_interval_s(&self, attempt: u16) -> u64 {
        let index = usize::from(attempt.max(1)) - 1;
        let interval = self
            .retry_intervals
            .get(index)
            .or(self.retry_intervals.last())
            .map_or(MIN_RETRY_INTERVAL_S, Duration::as_secs);
        interval.max(MIN_RETRY_INTERVAL_S)
    }

    /// `max_queue_age` in whole seconds.
    pub fn max_queue_age_s(&self) -> u64 {
        self.max_queue_age.as_secs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(QueuePolicy::default().validate(), Ok(()));
    }

    #[test]
    fn invalid_policies_are_named() {
        let mut p = QueuePolicy {
            retry_intervals: vec![],
            ..QueuePolicy::default()
        };
        assert_eq!(p.validate(), Err(PolicyError::NoRetryIntervals));
        p.retry_intervals = vec![Duration::from_millis(10)];
        assert_eq!(p.validate(), Err(PolicyError::RetryIntervalTooShort));
        p.retry_intervals = vec![Duration::from_secs(60)];
        p.max_messages_per_minute = Some(0);
        assert_eq!(p.validate(), Err(PolicyError::ZeroPerMinute));
        p.max_messages_per_minute = None;
        p.max_connections = 0;
        assert_eq!(p.validate(), Err(PolicyError::NoConnections));
    }

    #[test]
    fn retry_schedule_repeats_last_interval() {
        let p = QueuePolicy::default();
        let minutes: Vec<u64> = (1..=9).map(|a| p.retry_interval_s(a) / 60).collect();
        assert_eq!(minutes, [5, 10, 30, 60, 120, 240, 240, 240, 240]);
        assert_eq!(p.retry_interval_s(0), 300);
        assert_eq!(p.retry_interval_s(u16::MAX), 240 * 60);
    }

    #[test]
    fn empty_schedule_falls_back_to_minimum() {
        let p = QueuePolicy {
            retry_intervals: vec![],
            ..QueuePolicy::default()
        };
        assert_eq!(p.retry_interval_s(3), MIN_RETRY_INTERVAL_S);
    }
}
