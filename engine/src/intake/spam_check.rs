//! The rspamd check at the end of data (`[spam_filter]`, docs/spam-filter.md): after the customer
//! and the recipients are settled and before the plan is charged, so refused spam costs no credit.
//! The HTTP request runs on the core's blocking pool; the core's other sessions go on meanwhile.

use std::sync::atomic::Ordering;

use super::{Origin, Refusal};
use crate::config::Config;
use crate::envelope::Envelope;
use crate::shard::Shard;
use crate::spam_filter::{self, Outcome};

/// The message, possibly with the X-Spam headers in front, or why it is refused.
pub(super) async fn check(
    core: &Shard,
    config: &Config,
    origin: &Origin<'_>,
    envelope: &Envelope,
    body: Vec<u8>,
) -> Result<Vec<u8>, Refusal> {
    let Some(section) = config.spam_filter.clone() else {
        return Ok(body);
    };
    let wanted = config
        .customer(&envelope.customer)
        .and_then(|c| c.spam_filter)
        .unwrap_or(true);
    if !wanted {
        return Ok(body);
    }
    let counters = core.counters();
    if body.len() as u64 > section.max_scan_bytes {
        counters.spam_checks_skipped.fetch_add(1, Ordering::Relaxed);
        return Ok(body);
    }
    let sender = origin.sender();
    let helo = sender.helo.to_string();
    let client_ip = sender.ip;
    let user = sender.authenticated.map(str::to_string);
    let from = envelope.sender.clone();
    let recipients: Vec<String> = envelope
        .recipients
        .iter()
        .map(|r| r.address.clone())
        .collect();
    let (url, timeout_ms) = (section.url.clone(), section.timeout_ms);
    let (result, body) = glommio::executor()
        .spawn_blocking(move || {
            let envelope = spam_filter::Envelope {
                sender: &from,
                recipients: &recipients,
                client_ip,
                helo: &helo,
                user: user.as_deref(),
                queue_id: "",
            };
            let result = spam_filter::check(&url, timeout_ms, &envelope, &body);
            (result, body)
        })
        .await;
    if let Err(e) = &result {
        counters.spam_check_failures.fetch_add(1, Ordering::Relaxed);
        log::warn!("spam filter: {e} (on_error = {:?})", section.on_error);
    }
    counters.spam_checks.fetch_add(1, Ordering::Relaxed);
    match spam_filter::outcome(&section, result) {
        Outcome::Accept => Ok(body),
        Outcome::AcceptWithHeaders(headers) => {
            counters.spam_flagged.fetch_add(1, Ordering::Relaxed);
            let mut flagged = Vec::with_capacity(headers.len() + body.len());
            flagged.extend_from_slice(headers.as_bytes());
            flagged.extend_from_slice(&body);
            Ok(flagged)
        }
        Outcome::Refuse { permanent, verdict } => {
            counters.spam_refused.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "spam filter: message from {} for customer {:?} refused ({}): {}",
                envelope.sender,
                envelope.customer,
                if permanent { "reject" } else { "soft reject" },
                verdict.summary()
            );
            Err(Refusal::Spam {
                permanent,
                summary: verdict.summary(),
                score: verdict.score,
                symbols: verdict.symbols,
            })
        }
        Outcome::TempFail(e) => Err(Refusal::SpamCheckUnavailable(e.to_string())),
    }
}
