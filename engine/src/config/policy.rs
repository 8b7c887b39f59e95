//! The delivery policy for one (VMTA, destination domain): every `[[domain]]` entry that matches is
//! applied from the least to the most specific, so a specific entry only needs the keys it changes.

use std::time::Duration;

use super::schema::{BackoffAction, Config, DomainPolicyConfig, OutboundTls};
use crate::queue::QueuePolicy;

/// What applies to one (VMTA, domain): the queue's limits, and how its connections talk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPolicy {
    /// Enforced by the queue: connections, rates, retries, age, backoff.
    pub queue: QueuePolicy,
    pub tls: OutboundTls,
    /// BDAT when the server offers CHUNKING (and PIPELINING); false = always DATA.
    pub chunking: bool,
}

impl Default for DomainPolicy {
    fn default() -> Self {
        DomainPolicy {
            queue: QueuePolicy::default(),
            tls: OutboundTls::Opportunistic,
            chunking: true,
        }
    }
}

/// How specific a pattern is for `domain`, or `None` when it does not match. Exact beats any
/// wildcard; a longer wildcard suffix beats a shorter one; `*` matches everything, least specific.
fn specificity(pattern: &str, domain: &str) -> Option<usize> {
    if pattern == "*" {
        return Some(0);
    }
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let matches = domain.len() > suffix.len()
            && domain.ends_with(suffix)
            && domain.as_bytes()[domain.len() - suffix.len() - 1] == b'.';
        return matches.then_some(1 + suffix.len());
    }
    pattern
        .eq_ignore_ascii_case(domain)
        .then_some(usize::MAX / 2)
}

/// What a reply's matching `[[backoff]]` rule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyVerdict {
    Backoff,
    Suspend(Duration),
}

/// Default length of a `suspend` rule without `duration`.
pub const DEFAULT_SUSPEND: Duration = Duration::from_secs(30 * 60);

/// The queue domain for a recipient domain: its `[[rollup]]` group's name, or itself.
pub fn rollup_of<'a>(config: &'a Config, domain: &'a str) -> &'a str {
    if !config.shaping.mx_rollup {
        return domain;
    }
    config
        .rollups
        .iter()
        .find(|r| r.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)))
        .map_or(domain, |r| r.name.as_str())
}

impl Config {
    /// The first `[[backoff]]` rule matching `reply` (the whole reply line) for `domain`.
    pub fn backoff_verdict(&self, domain: &str, reply: &str) -> Option<ReplyVerdict> {
        let reply = reply.to_ascii_lowercase();
        let rule = self.backoff_rules.iter().find(|r| {
            r.domain
                .as_deref()
                .is_none_or(|p| specificity(p, domain).is_some())
                && reply.contains(&r.pattern.to_ascii_lowercase())
        })?;
        Some(match rule.action {
            BackoffAction::Backoff => ReplyVerdict::Backoff,
            BackoffAction::Suspend => {
                ReplyVerdict::Suspend(rule.duration.map_or(DEFAULT_SUSPEND, |d| d.0))
            }
        })
    }

    /// The policy for mail from `vmta` to `domain` (lower-case).
    pub fn policy_for(&self, vmta: &str, domain: &str) -> DomainPolicy {
        let mut matching: Vec<(usize, bool, &DomainPolicyConfig)> = self
            .domains
            .iter()
            .filter_map(|d| {
                let scoped = match d.vmta.as_deref() {
                    None | Some("*") => false,
                    Some(v) if v == vmta => true,
                    Some(_) => return None,
                };
                specificity(&d.pattern, domain).map(|s| (s, scoped, d))
            })
            .collect();
        matching.sort_by_key(|(s, scoped, _)| (*s, *scoped));
        let mut policy = DomainPolicy::default();
        for (_, _, d) in matching {
            policy.apply(d);
        }
        policy
    }
}

impl DomainPolicy {
    fn apply(&mut self, d: &DomainPolicyConfig) {
        let q = &mut self.queue;
        if let Some(v) = d.max_connections {
            q.max_connections = v;
        }
        if let Some(v) = d.max_messages_per_connection {
            q.max_messages_per_connection = v;
        }
        if d.max_messages_per_minute.is_some() {
            q.max_messages_per_minute = d.max_messages_per_minute;
        }
        if d.max_messages_per_hour.is_some() {
            q.max_messages_per_hour = d.max_messages_per_hour;
        }
        if let Some(v) = &d.retry_intervals {
            q.retry_intervals = v.iter().map(|d| d.0).collect();
        }
        if let Some(v) = d.max_queue_age {
            q.max_queue_age = v.0;
        }
        if let Some(v) = d.tls {
            self.tls = v;
        }
        if let Some(v) = d.chunking {
            self.chunking = v;
        }
        let b = &mut self.queue.backoff;
        if let Some(v) = d.backoff_max_connections {
            b.max_connections = v;
        }
        if let Some(v) = d.backoff_max_messages_per_minute {
            b.max_messages_per_minute = v;
        }
        if let Some(v) = d.backoff_retry_after {
            b.retry_after = v.0;
        }
        if let Some(v) = d.backoff_recovery_deliveries {
            b.recovery_deliveries = v;
        }
        if let Some(v) = d.backoff_quiet_period {
            b.quiet_period = v.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[[listener]]
address = "127.0.0.1:25"
[[vmta]]
name = "a"
source_ip = "127.0.0.2"
ehlo_hostname = "a.test"
[[domain]]
match = "*"
max_connections = 5
[[domain]]
match = "*.example.com"
max_connections = 7
[[domain]]
match = "mail.example.com"
max_messages_per_minute = 60
[[domain]]
match = "mail.example.com"
vmta = "a"
tls = "required"
"#;

    #[test]
    fn backoff_rules_first_match_wins() {
        let text = r#"
[[listener]]
address = "127.0.0.1:25"
[[backoff]]
pattern = "TSS04"
action = "suspend"
duration = "1h"
match = "*.yahoo.test"
[[backoff]]
pattern = "too many connections"
action = "backoff"
"#;
        let c = Config::parse(text).unwrap();
        assert_eq!(
            c.backoff_verdict("a.test", "421 4.7.0 Too many connections from your IP"),
            Some(ReplyVerdict::Backoff)
        );
        assert_eq!(
            c.backoff_verdict("mx.yahoo.test", "421 4.7.0 [TSS04] Messages deferred"),
            Some(ReplyVerdict::Suspend(Duration::from_secs(3600)))
        );
        assert_eq!(c.backoff_verdict("a.test", "421 4.7.0 [TSS04]"), None);
        assert_eq!(c.backoff_verdict("a.test", "450 4.2.0 mailbox busy"), None);
    }

    #[test]
    fn rollup_groups_domains_unless_off() {
        let text = r#"
[[listener]]
address = "127.0.0.1:25"
[[rollup]]
name = "gmail.com"
domains = ["gmail.com", "googlemail.com"]
"#;
        let mut c = Config::parse(text).unwrap();
        assert_eq!(rollup_of(&c, "googlemail.com"), "gmail.com");
        assert_eq!(rollup_of(&c, "example.com"), "example.com");
        c.shaping.mx_rollup = false;
        assert_eq!(rollup_of(&c, "googlemail.com"), "googlemail.com");
    }

    #[test]
    fn most_specific_wins_field_by_field() {
        let c = Config::parse(TEXT).unwrap();
        let p = c.policy_for("a", "mail.example.com");
        assert_eq!(p.queue.max_connections, 7);
        assert_eq!(p.queue.max_messages_per_minute, Some(60));
        assert_eq!(p.tls, OutboundTls::Required);
        let p = c.policy_for("b", "mail.example.com");
        assert_eq!(p.tls, OutboundTls::Opportunistic);
        assert_eq!(c.policy_for("a", "example.com").queue.max_connections, 5);
        assert_eq!(c.policy_for("a", "other.test").queue.max_connections, 5);
    }
}
