//! Closing a report period and sending its reports: per policy domain, the `_smtp._tls` record's
//! destinations get the gzip report, `https:` ones by POST (off the reactor), `mailto:` ones as
//! a message spooled through intake as a notice, from `tlsrpt-noreply@<hostname>`.

use std::rc::Rc;

use hickory_proto::rr::{RData, RecordType};
use time::OffsetDateTime;

use crate::envelope::{BodyType, Envelope, Recipient};
use crate::intake::Origin;
use crate::placement::Placement;
use crate::transport_security::tls_rpt::record::{Rua, parse_record};
use crate::transport_security::tls_rpt::report::{ReportHeader, gzip, report_json};
use crate::transport_security::tls_rpt::{mail, post};

/// What one period's sending came to.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Sent {
    /// Policy domains with counts in the period.
    pub domains: usize,
    /// Reports POSTed to `https:` destinations (2xx).
    pub https: usize,
    /// Reports spooled for `mailto:` destinations.
    pub mailto: usize,
    /// Reports not sent: POST refused or failed, message not spooled.
    pub failed: usize,
    /// Of the failed POSTs, those kept to be POSTed again later.
    pub retrying: usize,
    /// Domains with no usable `_smtp._tls` record.
    pub no_record: usize,
}

async fn destinations(placement: &Placement, domain: &str) -> Option<Vec<Rua>> {
    let name = format!("_smtp._tls.{domain}");
    let records = placement
        .shard
        .resolver()
        .lookup(&name, RecordType::TXT)
        .await
        .ok()?;
    records.iter().find_map(|r| match r {
        RData::TXT(t) => {
            let text: Vec<u8> = t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
            parse_record(&String::from_utf8_lossy(&text)).ok()
        }
        _ => None,
    })
}

fn at(unix_s: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix_s as i64).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Closes the open period and sends its reports.
pub async fn send_period(placement: &Rc<Placement>) -> Sent {
    let shard = &placement.shard;
    let config = shard.config();
    let (start_s, end_s, tally) = shard.node.tls_rpt.close();
    // The closed period leaves the file now, so a restart does not report it again.
    super::period::save(shard).await;
    let hostname = config.server.hostname.clone();
    let contact = format!("tlsrpt-noreply@{hostname}");
    let mut sent = Sent {
        domains: tally.domains.len(),
        ..Sent::default()
    };
    let mut posts = Vec::new();
    for (n, (domain, policies)) in tally.domains.iter().enumerate() {
        let Some(ruas) = destinations(placement, domain).await else {
            sent.no_record += 1;
            continue;
        };
        let report_id = format!("{end_s}.{n}.{domain}@{hostname}");
        let header = ReportHeader {
            organization: hostname.clone(),
            contact: contact.clone(),
            report_id: report_id.clone(),
            start: at(start_s),
            end: at(end_s),
        };
        let Ok(packed) = gzip(&report_json(&header, domain, policies)) else {
            sent.failed += ruas.len();
            continue;
        };
        for rua in ruas {
            match rua {
                Rua::Https(url) => posts.push((url, packed.clone())),
                Rua::Mailto(to) => {
                    let text = mail::build(
                        &mail::ReportMail {
                            from: &contact,
                            to: &to,
                            domain,
                            submitter: &hostname,
                            report_id: &report_id,
                            date: &crate::clock::rfc5322_date(end_s),
                            start_s,
                            end_s,
                        },
                        &packed,
                    );
                    let envelope = Envelope {
                        sender: contact.clone(),
                        recipients: vec![Recipient::new(to)],
                        body_type: BodyType::SevenBit,
                        received_at_s: end_s,
                        ..Envelope::default()
                    };
                    let origin = Origin::Notice { reserve: false };
                    match crate::intake::accept(placement, origin, envelope, text).await {
                        Ok(_) => sent.mailto += 1,
                        Err(e) => {
                            log::warn!("TLS-RPT: report for {domain} not spooled: {e:?}");
                            sent.failed += 1;
                        }
                    }
                }
            }
        }
    }
    if !posts.is_empty() {
        let anchors = config.trust_anchor_files();
        let results = glommio::executor()
            .spawn_blocking(move || {
                posts
                    .into_iter()
                    .map(|(url, body)| {
                        let result = post::post(&url, &body, &anchors);
                        (url, body, result)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
        let mut failures = Vec::new();
        for (url, body, result) in results {
            match result {
                Ok(()) => sent.https += 1,
                Err(e) => {
                    log::warn!("TLS-RPT: POST {url}: {e}; retried later");
                    sent.failed += 1;
                    failures.push((url, body));
                }
            }
        }
        sent.retrying = super::retry::failed(shard, failures).await;
    }
    sent
}
