//! The aggregate report of one policy domain for one period (RFC 8460 section 4), as JSON, and
//! its gzip form (`application/tlsrpt+gzip`).

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::tally::{PolicyCounts, PolicyKey};

/// What a report says about its sender and period.
#[derive(Debug, Clone)]
pub struct ReportHeader {
    /// `organization-name`: the server's host name.
    pub organization: String,
    /// `contact-info`: an address for questions about the report.
    pub contact: String,
    /// `report-id`: unique per report.
    pub report_id: String,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn policy_json(domain: &str, key: &PolicyKey, counts: &PolicyCounts) -> Value {
    let mut policy = json!({
        "policy-type": key.policy_type.as_str(),
        "policy-string": key.policy_string,
        "policy-domain": domain,
    });
    if !key.mx_host.is_empty() {
        policy["mx-host"] = json!(key.mx_host);
    }
    let details: Vec<Value> = counts
        .details
        .iter()
        .map(|(f, n)| {
            let mut detail = json!({
                "result-type": f.result_type.as_str(),
                "failed-session-count": n,
            });
            // A policy fetch failure has no MX host.
            if !f.receiving_mx_hostname.is_empty() {
                detail["receiving-mx-hostname"] = json!(f.receiving_mx_hostname);
            }
            if !f.receiving_ip.is_empty() {
                detail["receiving-ip"] = json!(f.receiving_ip);
            }
            detail
        })
        .collect();
    json!({
        "policy": policy,
        "summary": {
            "total-successful-session-count": counts.successful,
            "total-failure-session-count": counts.failed,
        },
        "failure-details": details,
    })
}

/// The report of `domain` with its policies' counts.
pub fn report_json(
    header: &ReportHeader,
    domain: &str,
    policies: &[(PolicyKey, PolicyCounts)],
) -> Value {
    json!({
        "organization-name": header.organization,
        "date-range": {
            "start-datetime": rfc3339(header.start),
            "end-datetime": rfc3339(header.end),
        },
        "contact-info": header.contact,
        "report-id": header.report_id,
        "policies": policies
            .iter()
            .map(|(k, c)| policy_json(domain, k, c))
            .collect::<Vec<_>>(),
    })
}

/// The gzip form of a report.
pub fn gzip(report: &Value) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(report.to_string().as_bytes())?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::super::tally::{FailureKey, ResultType, Tally, sts_policy};
    use super::*;

    #[test]
    fn report_fields_and_counts_survive_gzip() {
        let policy = sts_policy();
        let mut tally = Tally::default();
        tally.success("example.test", &policy);
        tally.success("example.test", &policy);
        tally.failure(
            "example.test",
            &policy,
            FailureKey {
                result_type: ResultType::StsWebpkiInvalid,
                receiving_mx_hostname: "mx2.example.test".into(),
                receiving_ip: "127.0.0.9".into(),
            },
        );
        let header = ReportHeader {
            organization: "volley.test".into(),
            contact: "tlsrpt-noreply@volley.test".into(),
            report_id: "r1".into(),
            start: OffsetDateTime::UNIX_EPOCH,
            end: OffsetDateTime::UNIX_EPOCH + time::Duration::days(1),
        };
        let report = report_json(&header, "example.test", &tally.domains["example.test"]);
        let packed = gzip(&report).unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_string(&mut text)
            .unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
        assert_eq!(back["organization-name"], "volley.test");
        assert_eq!(back["report-id"], "r1");
        assert_eq!(back["date-range"]["start-datetime"], "1970-01-01T00:00:00Z");
        assert_eq!(back["date-range"]["end-datetime"], "1970-01-02T00:00:00Z");
        let p = &back["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "sts");
        assert_eq!(p["policy"]["policy-domain"], "example.test");
        assert_eq!(p["policy"]["mx-host"][0], "mx1.example.test");
        assert_eq!(p["policy"]["policy-string"][1], "mode: enforce");
        assert_eq!(p["summary"]["total-successful-session-count"], 2);
        assert_eq!(p["summary"]["total-failure-session-count"], 1);
        let d = &p["failure-details"][0];
        assert_eq!(d["result-type"], "sts-webpki-invalid");
        assert_eq!(d["receiving-mx-hostname"], "mx2.example.test");
        assert_eq!(d["receiving-ip"], "127.0.0.9");
        assert_eq!(d["failed-session-count"], 1);
    }

    #[test]
    fn a_failure_without_an_mx_host_leaves_its_fields_out() {
        let mut tally = Tally::default();
        let policy = super::super::super::mta_sts::fetch_failure_policy();
        let failure = FailureKey {
            result_type: ResultType::StsPolicyFetchError,
            receiving_mx_hostname: String::new(),
            receiving_ip: String::new(),
        };
        tally.failure("example.test", &policy, failure);
        let header = ReportHeader {
            organization: "volley.test".into(),
            contact: String::new(),
            report_id: "r2".into(),
            start: OffsetDateTime::UNIX_EPOCH,
            end: OffsetDateTime::UNIX_EPOCH,
        };
        let report = report_json(&header, "example.test", &tally.domains["example.test"]);
        let p = &report["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "sts");
        assert!(p["policy"].get("mx-host").is_none());
        let d = &p["failure-details"][0];
        assert_eq!(d["result-type"], "sts-policy-fetch-error");
        assert!(d.get("receiving-mx-hostname").is_none() && d.get("receiving-ip").is_none());
    }
}
