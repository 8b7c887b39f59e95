//! One period's counts: per policy domain and policy, successful sessions and failures by RFC 8460
//! result type, with the receiving MX host and IP of failures. Bounded: `MAX_DOMAINS` domains,
//! `MAX_POLICIES_PER_DOMAIN` policies each, `MAX_FAILURE_DETAILS` failure-detail entries per
//! policy (later failures still count in the summary). Serializable so it survives a restart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most policy domains tallied in one period; sessions of further domains are not recorded.
pub const MAX_DOMAINS: usize = 10_000;
/// Of those, most domains first seen through a `no-policy-found` session: the domains mail goes
/// to without a policy must not crowd out the ones with a policy.
pub const MAX_NO_POLICY_DOMAINS: usize = 5_000;
/// Most distinct policies of one domain in one period (a policy changing mid-period adds one).
pub const MAX_POLICIES_PER_DOMAIN: usize = 8;
/// Most failure-detail entries (distinct result type, MX host, IP) per policy.
pub const MAX_FAILURE_DETAILS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    Sts,
    Tlsa,
    NoPolicyFound,
}

impl PolicyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// RFC 8460 section 4.3 result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    /// The result type of a certificate verification error's text (rustls' wording).
    pub fn of_certificate_error(text: &str) -> ResultType {
        let lower = text.to_ascii_lowercase();
        if lower.contains("expired") {
            ResultType::CertificateExpired
        } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            ResultType::CertificateHostMismatch
        } else if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
            ResultType::CertificateNotTrusted
        } else {
            ResultType::ValidationFailure
        }
    }
}

/// The policy a session ran under, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyKey {
    pub policy_type: PolicyType,
    /// The policy text by line (`sts`) or the TLSA records in presentation form (`tlsa`).
    pub policy_string: Vec<String>,
    /// The `mx` patterns of an MTA-STS policy.
    pub mx_host: Vec<String>,
}

/// Where a failure happened.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FailureKey {
    pub result_type: ResultType,
    pub receiving_mx_hostname: String,
    pub receiving_ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounts {
    pub successful: u64,
    pub failed: u64,
    /// Failed sessions by where and why, at most `MAX_FAILURE_DETAILS` entries.
    pub details: Vec<(FailureKey, u64)>,
}

impl PolicyCounts {
    fn add_detail(&mut self, key: FailureKey, count: u64) {
        if let Some(entry) = self.details.iter_mut().find(|(k, _)| *k == key) {
            entry.1 += count;
        } else if self.details.len() < MAX_FAILURE_DETAILS {
            self.details.push((key, count));
        }
    }
}

/// One period's counts, keyed by policy domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub domains: BTreeMap<String, Vec<(PolicyKey, PolicyCounts)>>,
    /// Domains added by a `no-policy-found` session (at most `MAX_NO_POLICY_DOMAINS`).
    #[serde(default)]
    no_policy_domains: usize,
}

impl Tally {
    /// The counts of `policy` for `domain`, or None when a bound is reached.
    fn slot(&mut self, domain: &str, policy: &PolicyKey) -> Option<&mut PolicyCounts> {
        let domain = domain.to_ascii_lowercase();
        if !self.domains.contains_key(&domain) {
            let no_policy = policy.policy_type == PolicyType::NoPolicyFound;
            if self.domains.len() >= MAX_DOMAINS
                || (no_policy && self.no_policy_domains >= MAX_NO_POLICY_DOMAINS)
            {
                return None;
            }
            if no_policy {
                self.no_policy_domains += 1;
            }
        }
        let policies = self.domains.entry(domain).or_default();
        let index = match policies.iter().position(|(k, _)| k == policy) {
            Some(i) => i,
            None if policies.len() < MAX_POLICIES_PER_DOMAIN => {
                policies.push((policy.clone(), PolicyCounts::default()));
                policies.len() - 1
            }
            None => return None,
        };
        policies.get_mut(index).map(|(_, c)| c)
    }

    /// Records one session that met its policy.
    pub fn success(&mut self, domain: &str, policy: &PolicyKey) {
        if let Some(counts) = self.slot(domain, policy) {
            counts.successful += 1;
        }
    }

    /// Records one session that failed its policy.
    pub fn failure(&mut self, domain: &str, policy: &PolicyKey, failure: FailureKey) {
        if let Some(counts) = self.slot(domain, policy) {
            counts.failed += 1;
            counts.add_detail(failure, 1);
        }
    }

    /// Adds `other` (another core's, or the counts saved before a restart) into this one.
    pub fn merge(&mut self, other: Tally) {
        for (domain, policies) in other.domains {
            for (policy, counts) in policies {
                if let Some(mine) = self.slot(&domain, &policy) {
                    mine.successful += counts.successful;
                    mine.failed += counts.failed;
                    for (key, n) in counts.details {
                        mine.add_detail(key, n);
                    }
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}

#[cfg(test)]
pub(crate) fn sts_policy() -> PolicyKey {
    PolicyKey {
        policy_type: PolicyType::Sts,
        policy_string: vec![
            "version: STSv1".into(),
            "mode: enforce".into(),
            "mx: mx1.example.test".into(),
            "max_age: 86400".into(),
        ],
        mx_host: vec!["mx1.example.test".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mismatch(host: &str) -> FailureKey {
        FailureKey {
            result_type: ResultType::CertificateHostMismatch,
            receiving_mx_hostname: host.into(),
            receiving_ip: "127.0.0.9".into(),
        }
    }

    #[test]
    fn counts_and_merges() {
        let policy = sts_policy();
        let mut a = Tally::default();
        a.success("Example.test", &policy);
        a.failure("example.test", &policy, mismatch("mx2.example.test"));
        let mut b = Tally::default();
        b.success("example.test", &policy);
        b.failure("example.test", &policy, mismatch("mx2.example.test"));
        a.merge(b);
        let counts = &a.domains["example.test"][0].1;
        assert_eq!((counts.successful, counts.failed), (2, 2));
        assert_eq!(counts.details, vec![(mismatch("mx2.example.test"), 2)]);
    }

    #[test]
    fn bounded() {
        let policy = sts_policy();
        let mut t = Tally::default();
        for i in 0..MAX_FAILURE_DETAILS + 3 {
            t.failure(
                "example.test",
                &policy,
                mismatch(&format!("mx{i}.example.test")),
            );
        }
        let counts = &t.domains["example.test"][0].1;
        assert_eq!(counts.failed as usize, MAX_FAILURE_DETAILS + 3);
        assert_eq!(counts.details.len(), MAX_FAILURE_DETAILS);
        for i in 0..MAX_DOMAINS + 2 {
            t.success(&format!("d{i}.test"), &policy);
        }
        assert_eq!(t.domains.len(), MAX_DOMAINS);
    }

    #[test]
    fn no_policy_domains_have_a_bound_of_their_own() {
        let none = PolicyKey {
            policy_type: PolicyType::NoPolicyFound,
            policy_string: Vec::new(),
            mx_host: Vec::new(),
        };
        let mut t = Tally::default();
        for i in 0..MAX_NO_POLICY_DOMAINS + 3 {
            t.success(&format!("n{i}.test"), &none);
        }
        assert_eq!(t.domains.len(), MAX_NO_POLICY_DOMAINS);
        // A known domain still counts, and domains with a policy still find room.
        t.success("n0.test", &none);
        assert_eq!(t.domains["n0.test"][0].1.successful, 2);
        t.success("sts.test", &sts_policy());
        assert_eq!(t.domains.len(), MAX_NO_POLICY_DOMAINS + 1);
        let mut merged = Tally::default();
        merged.merge(t);
        assert_eq!(merged.domains.len(), MAX_NO_POLICY_DOMAINS + 1);
        merged.success("late.test", &none);
        assert!(!merged.domains.contains_key("late.test"));
    }

    #[test]
    fn survives_a_round_trip_through_json() {
        let mut t = Tally::default();
        t.failure("example.test", &sts_policy(), mismatch("mx2.example.test"));
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Tally>(&text).unwrap(), t);
    }
}
