//! What a connection's transport security means for TLS-RPT: the policy domain and policy a
//! session ran under (MTA-STS: the recipient domain; DANE: the MX host), and the result type of
//! a failure.

use super::tally::{PolicyKey, PolicyType, ResultType};
use crate::transport_security::dane::tlsa::{Matching, Selector, Tlsa, Usage};
use crate::transport_security::mta_sts::CachedPolicy;
use crate::transport_security::plan::HopTls;

fn tlsa_text(t: &Tlsa) -> String {
    let usage = match t.usage {
        Usage::TrustAnchor => 2,
        Usage::EndEntity => 3,
    };
    let selector = match t.selector {
        Selector::Certificate => 0,
        Selector::PublicKey => 1,
    };
    let matching = match t.matching {
        Matching::Exact => 0,
        Matching::Sha256 => 1,
        Matching::Sha512 => 2,
    };
    let hex: String = t.data.iter().map(|b| format!("{b:02x}")).collect();
    format!("{usage} {selector} {matching} {hex}")
}

/// The report's policy of an MTA-STS policy.
pub fn sts_key(cached: &CachedPolicy) -> PolicyKey {
    let p = &cached.policy;
    let mut lines = vec![
        "version: STSv1".to_string(),
        format!("mode: {}", p.mode.as_str()),
    ];
    lines.extend(p.mx.iter().map(|mx| format!("mx: {mx}")));
    lines.push(format!("max_age: {}", p.max_age_s));
    PolicyKey {
        policy_type: PolicyType::Sts,
        policy_string: lines,
        mx_host: p.mx.clone(),
    }
}

/// The policy domain and policy of a connection to `mx_host`, when TLS-RPT applies: DANE,
/// MTA-STS, or no policy (`no-policy-found`) for a connection to the MX hosts of
/// `recipient_domain` (None for a route) with STARTTLS allowed.
pub fn policy_of(
    hop_tls: &HopTls,
    mx_host: &str,
    recipient_domain: Option<&str>,
) -> Option<(String, PolicyKey)> {
    match hop_tls {
        HopTls::Dane(records) => Some((
            mx_host.to_ascii_lowercase(),
            PolicyKey {
                policy_type: PolicyType::Tlsa,
                policy_string: records.iter().map(tlsa_text).collect(),
                mx_host: Vec::new(),
            },
        )),
        HopTls::DaneUnusable => Some((
            mx_host.to_ascii_lowercase(),
            PolicyKey {
                policy_type: PolicyType::Tlsa,
                policy_string: Vec::new(),
                mx_host: Vec::new(),
            },
        )),
        HopTls::MtaSts(p) | HopTls::MtaStsTesting { policy: p, .. } => {
            Some((p.domain.clone(), sts_key(p)))
        }
        HopTls::Required | HopTls::Opportunistic => recipient_domain.map(|d| {
            (
                d.to_ascii_lowercase(),
                PolicyKey {
                    policy_type: PolicyType::NoPolicyFound,
                    policy_string: Vec::new(),
                    mx_host: Vec::new(),
                },
            )
        }),
        HopTls::Off => None,
    }
}

/// The result type of a failed handshake from its error text.
pub fn handshake_failure(hop_tls: &HopTls, text: &str) -> ResultType {
    match hop_tls {
        // The chain matched no TLSA record: names and dates are not what DANE checks.
        HopTls::Dane(_) => ResultType::ValidationFailure,
        _ => ResultType::of_certificate_error(text),
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::transport_security::mta_sts::policy::parse;

    fn cached() -> Rc<CachedPolicy> {
        let policy =
            parse(b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 600\r\n")
                .unwrap();
        Rc::new(CachedPolicy {
            domain: "example.test".into(),
            id: "1".into(),
            policy,
            fetched_at_s: 0,
        })
    }

    #[test]
    fn sts_sessions_count_under_the_recipient_domain() {
        let (domain, key) =
            policy_of(&HopTls::MtaSts(cached()), "MX.example.test", Some("x.test")).unwrap();
        assert_eq!(domain, "example.test");
        assert_eq!(key.policy_type, PolicyType::Sts);
        assert_eq!(
            key.policy_string,
            [
                "version: STSv1",
                "mode: enforce",
                "mx: mx.example.test",
                "max_age: 600"
            ]
        );
        assert_eq!(key.mx_host, ["mx.example.test"]);
    }

    #[test]
    fn dane_sessions_count_under_the_mx_host() {
        let record = Tlsa::new(3, 1, 1, vec![0xab; 32]).unwrap();
        let (domain, key) = policy_of(
            &HopTls::Dane(vec![record]),
            "MX.example.test",
            Some("x.test"),
        )
        .unwrap();
        assert_eq!(domain, "mx.example.test");
        assert_eq!(key.policy_type, PolicyType::Tlsa);
        assert_eq!(key.policy_string, [format!("3 1 1 {}", "ab".repeat(32))]);
    }

    #[test]
    fn sessions_without_a_policy_count_under_the_recipient_domain() {
        let (domain, key) = policy_of(
            &HopTls::Opportunistic,
            "mx.example.test",
            Some("Example.test"),
        )
        .unwrap();
        assert_eq!(domain, "example.test");
        assert_eq!(key.policy_type, PolicyType::NoPolicyFound);
        assert!(key.policy_string.is_empty() && key.mx_host.is_empty());
        assert!(policy_of(&HopTls::Required, "mx.example.test", Some("example.test")).is_some());
        // A route is the operator's next hop, not the domain's MX; `tls = "off"` asks nothing.
        assert!(policy_of(&HopTls::Opportunistic, "mx.example.test", None).is_none());
        assert!(policy_of(&HopTls::Off, "mx.example.test", Some("example.test")).is_none());
    }

    #[test]
    fn handshake_errors_map_to_result_types() {
        let sts = HopTls::MtaSts(cached());
        let cases = [
            (
                "invalid peer certificate: UnknownIssuer",
                ResultType::CertificateNotTrusted,
            ),
            (
                "invalid peer certificate: Expired",
                ResultType::CertificateExpired,
            ),
            (
                "invalid peer certificate: NotValidForName",
                ResultType::CertificateHostMismatch,
            ),
            ("handshake failure", ResultType::ValidationFailure),
        ];
        for (text, want) in cases {
            assert_eq!(handshake_failure(&sts, text), want, "{text}");
        }
        assert_eq!(
            handshake_failure(&HopTls::Dane(Vec::new()), "UnknownIssuer"),
            ResultType::ValidationFailure
        );
    }
}
