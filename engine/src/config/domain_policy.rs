//! The delivery policy for one (VMTA, destination domain): every `[[domain]]` entry that matches is
//! applied from the least to the most specific, so a specific entry only needs the keys it changes.

use std::time::Duration;

use super::schema::{BackoffAction, Config, DomainPolicyConfig, OutboundTls};
use crate::queue::{ClusterScope, QueuePolicy};

/// What applies to one (VMTA, domain): the queue's limits, and how its connections talk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPolicy {
    /// Enforced by the queue: connections, rates, retries, age, backoff.
    pub queue: QueuePolicy,
    pub tls: OutboundTls,
    /// BDAT when the server offers CHUNKING (and PIPELINING); false = always DATA.
    pub chunking: bool,
    /// Transactions on one connection's wire at once (1 = wait for each message's reply).
    pub transactions_in_flight: usize,
    /// How long each I/O step of a connection may take.
    pub deadlines: Deadlines,
}

impl Default for DomainPolicy {
    fn default() -> Self {
        DomainPolicy {
            queue: QueuePolicy::default(),
            tls: OutboundTls::Opportunistic,
            chunking: true,
            transactions_in_flight: 1,
            deadlines: Deadlines::default(),
        }
    }
}

/// The deadline of every I/O step of an outbound connection, in milliseconds (`[[domain]]
/// *_timeout_ms`). A step that runs out fails the connection and defers what it took, with a
/// reply naming the step. Read when a connection opens, so a reload applies to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// The TCP connect.
    pub connect_ms: u64,
    /// The STARTTLS handshake.
    pub tls_ms: u64,
    /// The 220 greeting (RFC 5321 4.5.3.2.1: 5 minutes).
    pub greeting_ms: u64,
    /// Each reply to EHLO, HELO, STARTTLS, RSET, MAIL, RCPT, DATA and QUIT (4.5.3.2.2-4).
    pub reply_ms: u64,
    /// The reply after the body: to the final dot or to `BDAT LAST` (4.5.3.2.6: 10 minutes).
    pub data_ms: u64,
    /// One write to the server: a server that stops reading fails the connection after this
    /// long without progress (4.5.3.2.5: 3 minutes per data block).
    pub write_ms: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            connect_ms: 30_000,
            tls_ms: 30_000,
            greeting_ms: 300_000,
            reply_ms: 300_000,
            data_ms: 600_000,
            write_ms: 180_000,
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
        if let Some(v) = d.transactions_in_flight {
            self.transactions_in_flight = v;
        }
        // The most specific entry that says `cluster` decides, and its own `vmta` the scope.
        if let Some(on) = d.cluster {
            self.queue.cluster = on.then_some(match d.vmta.as_deref() {
                None | Some("*") => ClusterScope::Domain,
                Some(_) => ClusterScope::Vmta,
            });
        }
        let t = &mut self.deadlines;
        for (value, field) in [
            (d.connect_timeout_ms, &mut t.connect_ms),
            (d.tls_timeout_ms, &mut t.tls_ms),
            (d.greeting_timeout_ms, &mut t.greeting_ms),
            (d.reply_timeout_ms, &mut t.reply_ms),
            (d.data_timeout_ms, &mut t.data_ms),
            (d.write_timeout_ms, &mut t.write_ms),
        ] {
            if let Some(ms) = value {
                *field = ms;
            }
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
    fn deadlines_default_to_rfc_5321_and_apply_per_domain() {
        let text = r#"
[[listener]]
address = "127.0.0.1:25"
[[domain]]
match = "*"
write_timeout_ms = 5000
[[domain]]
match = "slow.test"
greeting_timeout_ms = 900
data_timeout_ms = 1200
"#;
        let c = Config::parse(text).unwrap();
        let slow = c.policy_for("a", "slow.test").deadlines;
        assert_eq!(
            slow,
            Deadlines {
                greeting_ms: 900,
                data_ms: 1200,
                write_ms: 5000,
                ..Deadlines::default()
            }
        );
        let other = c.policy_for("a", "other.test").deadlines;
        assert_eq!(other.greeting_ms, 300_000);
        assert_eq!(other.write_ms, 5000);
        assert_eq!(
            DomainPolicy::default().deadlines,
            Deadlines {
                connect_ms: 30_000,
                tls_ms: 30_000,
                greeting_ms: 300_000,
                reply_ms: 300_000,
                data_ms: 600_000,
                write_ms: 180_000,
            }
        );
    }

    #[test]
    fn a_deadline_of_zero_or_over_an_hour_is_refused() {
        let text = "[[listener]]\naddress = \"127.0.0.1:25\"\n[[domain]]\nmatch = \"*\"\nreply_timeout_ms = 0\nconnect_timeout_ms = 3600001\ntls_timeout_ms = 3600000\n";
        let e = Config::parse(text).expect_err("invalid deadlines");
        let keys: Vec<_> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"domain[0].reply_timeout_ms"), "{e}");
        assert!(keys.contains(&"domain[0].connect_timeout_ms"), "{e}");
        assert!(!keys.contains(&"domain[0].tls_timeout_ms"), "{e}");
    }

    #[test]
    fn cluster_scope_comes_from_the_entry_that_sets_it() {
        let text = r#"
[[listener]]
address = "127.0.0.1:25"
[[vmta]]
name = "a"
source_ip = "127.0.0.2"
ehlo_hostname = "a.test"
[[vmta]]
name = "b"
source_ip = "127.0.0.3"
ehlo_hostname = "b.test"
[[domain]]
match = "gmail.com"
cluster = true
max_connections = 40
[[domain]]
match = "yahoo.com"
vmta = "a"
cluster = true
[[domain]]
match = "yahoo.com"
vmta = "b"
cluster = false
"#;
        let c = Config::parse(text).unwrap();
        assert_eq!(
            c.policy_for("a", "gmail.com").queue.cluster,
            Some(ClusterScope::Domain)
        );
        assert_eq!(
            c.policy_for("a", "yahoo.com").queue.cluster,
            Some(ClusterScope::Vmta)
        );
        assert_eq!(c.policy_for("b", "yahoo.com").queue.cluster, None);
        assert_eq!(c.policy_for("a", "other.com").queue.cluster, None);
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
