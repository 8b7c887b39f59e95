//! `GET /v1/tls-rpt` (the open period's counts) and `POST /v1/tls-rpt/send` (close the period
//! now and send its reports).

use serde_json::json;
use time::OffsetDateTime;

use super::ApiCore;
use super::http::Response;
use crate::delivery::tls_reports::send::send_period;
use crate::transport_security::tls_rpt::report::{ReportHeader, report_json};

/// Policy domains listed by one `GET /v1/tls-rpt` at most.
pub const SHOW_DOMAINS_MAX: usize = 1_000;

pub fn show(core: &ApiCore) -> Response {
    let (started_s, tally) = core.node.tls_rpt.snapshot();
    let start =
        OffsetDateTime::from_unix_timestamp(started_s as i64).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let header = ReportHeader {
        organization: core.config().server.hostname.clone(),
        contact: String::new(),
        report_id: String::new(),
        start,
        end: crate::clock::now_utc(),
    };
    let domains: Vec<_> = tally
        .domains
        .iter()
        .take(SHOW_DOMAINS_MAX)
        .map(|(domain, policies)| {
            json!({
                "domain": domain,
                "policies": report_json(&header, domain, policies)["policies"],
            })
        })
        .collect();
    Response::json(
        200,
        json!({
            "enabled": core.config().tls_rpt.enabled,
            "started_s": started_s,
            "domain_count": tally.domains.len(),
            "pending_posts": crate::delivery::tls_reports::retry::pending(),
            "domains": domains,
        }),
    )
}

pub async fn send(core: &ApiCore) -> Response {
    let sent = send_period(&core.placement).await;
    Response::json(200, json!(sent))
}
