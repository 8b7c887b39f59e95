//! The delivery policy for one (VMTA, destination domain): every `[[domain]]` entry that matches is
//! applied from the least to the most specific, so a specific entry only needs the keys it changes.

use std::time::Duration;

use super::schema::{Config, DomainPolicyConfig, OutboundTls};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPolicy {
    pub max_connections: u32,
    pub max_messages_per_connection: u32,
    pub max_messages_per_minute: Option<u32>,
    pub max_messages_per_hour: Option<u32>,
    pub retry_intervals: Vec<Duration>,
    pub max_queue_age: Duration,
    pub tls: OutboundTls,
}

impl Default for DomainPolicy {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        DomainPolicy {
            max_connections: 20,
            max_messages_per_connection: 100,
            max_messages_per_minute: None,
            max_messages_per_hour: None,
            retry_intervals: vec![
                minutes(5),
                minutes(10),
                minutes(30),
                minutes(60),
                minutes(120),
                minutes(240),
            ],
            max_queue_age: Duration::from_secs(5 * 86_400),
            tls: OutboundTls::Opportunistic,
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

impl Config {
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
        if let Some(v) = d.max_connections {
            self.max_connections = v;
        }
        if let Some(v) = d.max_messages_per_connection {
            self.max_messages_per_connection = v;
        }
        if d.max_messages_per_minute.is_some() {
            self.max_messages_per_minute = d.max_messages_per_minute;
        }
        if d.max_messages_per_hour.is_some() {
            self.max_messages_per_hour = d.max_messages_per_hour;
        }
        if let Some(v) = &d.retry_intervals {
            self.retry_intervals = v.iter().map(|d| d.0).collect();
        }
        if let Some(v) = d.max_queue_age {
            self.max_queue_age = v.0;
        }
        if let Some(v) = d.tls {
            self.tls = v;
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
    fn most_specific_wins_field_by_field() {
        let c = Config::parse(TEXT).unwrap();
        let p = c.policy_for("a", "mail.example.com");
        assert_eq!(p.max_connections, 7);
        assert_eq!(p.max_messages_per_minute, Some(60));
        assert_eq!(p.tls, OutboundTls::Required);
        let p = c.policy_for("b", "mail.example.com");
        assert_eq!(p.tls, OutboundTls::Opportunistic);
        assert_eq!(c.policy_for("a", "example.com").max_connections, 5);
        assert_eq!(c.policy_for("a", "other.test").max_connections, 5);
    }
}
