//! What a reply means for each recipient: delivered, deferred on the retry schedule (or expired at
//! `max_queue_age`), or bounced with a DSN to the sender. Every outcome is recorded in the
//! accounting log, counted in the metrics, and sent to the core whose spool holds the message.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::{Queued, inject_message};
use crate::accounting::{AccountingEvent, EventType};
use crate::bounce::{
    DsnAction, DsnInput, RecipientReport, build_dsn, classify, dsn_envelope, should_bounce,
};
use crate::envelope::{MessageId, domain_of};
use crate::queue::{DeferOutcome, QueueKey};
use crate::router::CoreMessage;
use crate::runtime::CoreContext;
use crate::smtp::client::{Outcome, Reply};
use crate::spool::{RecipientState, SpoolError, StoredMessage};

/// Where an attempt went, for the accounting log.
#[derive(Clone, Copy)]
pub struct Attempt<'a> {
    pub source_ip: &'a str,
    pub mx: &'a str,
}

fn enhanced(reply: &Reply) -> Option<(u8, u16, u16)> {
    reply.enhanced.map(|e| (e.class, e.subject, e.detail))
}

fn event(
    kind: EventType,
    key: &QueueKey,
    item: &Queued,
    message: &StoredMessage,
    reply: &Reply,
    attempt: Option<Attempt>,
) -> AccountingEvent {
    let now_s = crate::clock::unix_s();
    let envelope = &message.envelope;
    AccountingEvent {
        kind: Some(kind),
        time: crate::clock::now_rfc3339(),
        id: item.message.to_string(),
        customer: envelope.customer().to_string(),
        vmta: key.vmta.to_string(),
        source_ip: attempt.map(|a| a.source_ip.to_string()).unwrap_or_default(),
        sender: envelope.sender().to_string(),
        recipient: envelope
            .address(item.recipient as usize)
            .map(str::to_string)
            .unwrap_or_default(),
        // The recipient's own domain: a rollup queue carries several.
        domain: envelope
            .address(item.recipient as usize)
            .map_or_else(|| key.domain.to_string(), domain_of),
        mx: attempt.map(|a| a.mx.to_string()).unwrap_or_default(),
        response: reply.to_string(),
        enhanced_code: reply.enhanced.map(|e| e.to_string()).unwrap_or_default(),
        bounce_category: String::new(),
        attempt: u32::from(item.attempts) + 1,
        size_bytes: u64::from(message.body.len),
        queue_ms: now_s
            .saturating_sub(envelope.received_at_s())
            .saturating_mul(1000),
    }
}

/// Tells the spooling core a recipient's new state.
async fn record_state(core: &CoreContext, id: MessageId, recipient: u32, state: RecipientState) {
    core.router()
        .send(
            usize::from(id.core),
            CoreMessage::Outcome {
                id,
                recipient,
                state,
            },
        )
        .await;
}

/// Applies one transaction's replies, recipient by recipient, in order.
pub async fn apply(
    core: &Rc<CoreContext>,
    key: &QueueKey,
    items: Vec<Queued>,
    message: &StoredMessage,
    replies: Vec<(Outcome, Reply)>,
    attempt: Attempt<'_>,
) {
    // One failure reply per transaction feeds the backoff rules (a refused DATA fails them all).
    if let Some((_, reply)) = replies.iter().find(|(o, _)| *o != Outcome::Delivered) {
        super::backoff_watch::observe_failure(core, key, reply);
    }
    let mut failed = Vec::new();
    for (item, (outcome, reply)) in items.into_iter().zip(replies) {
        match outcome {
            Outcome::Delivered => delivered(core, key, item, message, &reply, attempt).await,
            Outcome::Deferred => defer(core, key, item, message, &reply, Some(attempt)).await,
            Outcome::Failed => failed.push((item, reply)),
        }
    }
    bounce_with_replies(core, key, failed, Some(attempt), false).await;
}

async fn delivered(
    core: &CoreContext,
    key: &QueueKey,
    item: Queued,
    message: &StoredMessage,
    reply: &Reply,
    attempt: Attempt<'_>,
) {
    let counters = core.counters();
    counters.delivered.fetch_add(1, Ordering::Relaxed);
    counters.delivery_latency.record_us(
        crate::clock::unix_s()
            .saturating_sub(message.envelope.received_at_s())
            .saturating_mul(1_000_000),
    );
    super::backoff_watch::observe_delivered(core, key, 1);
    core.accounting.record(&event(
        EventType::Delivery,
        key,
        &item,
        message,
        reply,
        Some(attempt),
    ));
    record_state(
        core,
        item.message,
        item.recipient,
        RecipientState::Delivered,
    )
    .await;
    core.delivery.release(core, item.message);
}

/// A temporary failure: back on the retry schedule, or expired.
pub async fn defer(
    core: &Rc<CoreContext>,
    key: &QueueKey,
    item: Queued,
    message: &StoredMessage,
    reply: &Reply,
    attempt: Option<Attempt<'_>>,
) {
    let outcome = core.delivery.queues.borrow_mut().defer(
        key,
        item,
        message.envelope.received_at_s(),
        &reply.to_string(),
        crate::clock::unix_s(),
    );
    match outcome {
        DeferOutcome::Retry { at_s } => {
            core.counters().deferred.fetch_add(1, Ordering::Relaxed);
            let mut e = event(EventType::Transient, key, &item, message, reply, attempt);
            e.bounce_category = classify(reply.code, enhanced(reply), &reply.text)
                .as_str()
                .to_string();
            core.accounting.record(&e);
            let state = RecipientState::Deferred {
                next_attempt_s: at_s,
                attempts: u32::from(item.attempts) + 1,
            };
            record_state(core, item.message, item.recipient, state).await;
        }
        DeferOutcome::Expired { item } => {
            let expired = Reply::local(
                554,
                (5, 4, 7),
                format!("Delivery time expired; last reply: {reply}"),
            );
            bounce_with_replies(core, key, vec![(item, expired)], attempt, true).await;
        }
    }
}

/// Bounces many recipients with one reply (null MX, an operator's bounce, a permanent DNS error).
pub async fn bounce_items(
    core: &Rc<CoreContext>,
    key: &QueueKey,
    items: Vec<Queued>,
    reply: &Reply,
    attempt: Option<Attempt<'_>>,
) {
    let items = items.into_iter().map(|i| (i, reply.clone())).collect();
    bounce_with_replies(core, key, items, attempt, false).await;
}

/// Defers many recipients with one reply (no host reachable, a temporary DNS error).
pub async fn defer_items(
    core: &Rc<CoreContext>,
    key: &QueueKey,
    items: Vec<Queued>,
    reply: &Reply,
    attempt: Option<Attempt<'_>>,
) {
    for item in items {
        match core.delivery.message(&core.bodies, item.message) {
            Ok(message) => defer(core, key, item, &message, reply, attempt).await,
            Err(e) => unreadable(core, key, vec![item], &e).await,
        }
    }
}

/// Records the bounces and sends one DSN per message to its sender.
async fn bounce_with_replies(
    core: &Rc<CoreContext>,
    key: &QueueKey,
    mut items: Vec<(Queued, Reply)>,
    attempt: Option<Attempt<'_>>,
    expired: bool,
) {
    if items.is_empty() {
        return;
    }
    items.sort_by_key(|(i, _)| (i.message, i.recipient));
    let mut start = 0;
    while start < items.len() {
        let id = items[start].0.message;
        let end = start
            + items[start..]
                .iter()
                .take_while(|(i, _)| i.message == id)
                .count();
        match core.delivery.message(&core.bodies, id) {
            Ok(message) => {
                bounce_message(core, key, &items[start..end], &message, attempt, expired).await;
                for (item, _) in &items[start..end] {
                    core.delivery.release(core, item.message);
                }
            }
            Err(e) => {
                let failed = items[start..end].iter().map(|(i, _)| *i).collect();
                drop_unreadable(core, key, failed, &e).await;
            }
        }
        start = end;
    }
}

async fn bounce_message(
    core: &Rc<CoreContext>,
    key: &QueueKey,
    items: &[(Queued, Reply)],
    message: &StoredMessage,
    attempt: Option<Attempt<'_>>,
    expired: bool,
) {
    // Bounces are rare: the DSN code works on the unpacked envelope.
    let envelope = &message.envelope.to_envelope();
    let counters = core.counters();
    let mut reports_for = Vec::new();
    for (item, reply) in items {
        let category = classify(reply.code, enhanced(reply), &reply.text);
        let kind = if expired {
            counters.expired.fetch_add(1, Ordering::Relaxed);
            EventType::Expiration
        } else {
            counters.bounced.fetch_add(1, Ordering::Relaxed);
            EventType::Bounce
        };
        let mut e = event(kind, key, item, message, reply, attempt);
        e.bounce_category = category.as_str().to_string();
        core.accounting.record(&e);
        core.delivery.queues.borrow_mut().record_bounced(key, 1);
        let state = if expired {
            RecipientState::Expired
        } else {
            RecipientState::Bounced
        };
        record_state(core, item.message, item.recipient, state).await;
        if let Some(r) = envelope.recipients.get(item.recipient as usize)
            && should_bounce(envelope, r)
        {
            reports_for.push((r, reply, category));
        }
    }
    if reports_for.is_empty() {
        return;
    }
    let original = match core.bodies.body(message.body) {
        Ok(b) => b,
        Err(e) => {
            log::error!(
                "DSN for {}: cannot read the original: {e}",
                items[0].0.message
            );
            return;
        }
    };
    let diagnostics: Vec<String> = reports_for
        .iter()
        .map(|(_, reply, _)| format!("smtp; {reply}"))
        .collect();
    let now_s = crate::clock::unix_s();
    let reports: Vec<RecipientReport> = reports_for
        .iter()
        .zip(&diagnostics)
        .map(|((r, reply, category), diagnostic)| RecipientReport {
            recipient: r,
            action: DsnAction::Failed,
            status: enhanced(reply).unwrap_or((5, 0, 0)),
            remote_mta: attempt.map(|a| a.mx).filter(|m| !m.is_empty()),
            diagnostic_code: Some(diagnostic.as_str()),
            last_attempt_s: Some(now_s),
            will_retry_until_s: None,
            category: Some(*category),
        })
        .collect();
    let config = core.config();
    let input = DsnInput {
        reporting_mta: &config.server.hostname,
        envelope,
        message_id: items[0].0.message,
        recipients: &reports,
        original: &original,
        now_s,
        max_returned_bytes: crate::bounce::DEFAULT_MAX_RETURNED_BYTES,
    };
    let dsn = build_dsn(&input);
    let dsn_env = dsn_envelope(&input, &dsn);
    match inject_message(core, dsn_env, b"", &dsn).await {
        Ok(id) => log::info!(
            "DSN {id} for {} to <{}>",
            items[0].0.message,
            envelope.sender
        ),
        Err(e) => log::error!("DSN for {} not spooled: {e}", items[0].0.message),
    }
}

/// Recipients whose message record cannot be read back (`error`), so neither sent nor reported to
/// a sender. An I/O error (the segment cannot be mapped now) may pass: they wait for their next
/// retry. Anything else (a damaged record) is final: see `drop_unreadable`.
pub async fn unreadable(
    core: &Rc<CoreContext>,
    key: &QueueKey,
    items: Vec<Queued>,
    error: &SpoolError,
) {
    if !matches!(error, SpoolError::Io(_)) {
        drop_unreadable(core, key, items, error).await;
        return;
    }
    let reply = format!("451 4.3.0 Spool read error: {error}");
    let mut expired = Vec::new();
    for item in items {
        log::error!(
            "{key}: message {} recipient {}: {error}; retried later",
            item.message,
            item.recipient
        );
        // Its reception time is in the unreadable record: the age limit waits for a readable one.
        let now_s = crate::clock::unix_s();
        let outcome = core
            .delivery
            .queues
            .borrow_mut()
            .defer(key, item, now_s, &reply, now_s);
        match outcome {
            DeferOutcome::Retry { at_s } => {
                let state = RecipientState::Deferred {
                    next_attempt_s: at_s,
                    attempts: u32::from(item.attempts) + 1,
                };
                record_state(core, item.message, item.recipient, state).await;
            }
            DeferOutcome::Expired { item } => expired.push(item),
        }
    }
    drop_unreadable(core, key, expired, error).await;
}

/// Gives up recipients whose message record is unreadable: each is logged (error log and
/// accounting, as a bounce with what is known), counted as bounced and recorded as such in the
/// spool, so the spool can free the record. No DSN: the sender is in the unreadable record.
async fn drop_unreadable(
    core: &Rc<CoreContext>,
    key: &QueueKey,
    items: Vec<Queued>,
    error: &SpoolError,
) {
    let reply = Reply::local(
        554,
        (5, 3, 0),
        format!("Spool record unreadable, recipient dropped: {error}"),
    );
    for item in items {
        log::error!(
            "{key}: message {} recipient {}: {error}; recipient dropped",
            item.message,
            item.recipient
        );
        core.accounting.record(&AccountingEvent {
            kind: Some(EventType::Bounce),
            time: crate::clock::now_rfc3339(),
            id: item.message.to_string(),
            vmta: key.vmta.to_string(),
            domain: key.domain.to_string(),
            response: reply.to_string(),
            enhanced_code: reply.enhanced.map(|e| e.to_string()).unwrap_or_default(),
            attempt: u32::from(item.attempts) + 1,
            ..AccountingEvent::default()
        });
        core.counters().bounced.fetch_add(1, Ordering::Relaxed);
        core.delivery.queues.borrow_mut().record_bounced(key, 1);
        record_state(core, item.message, item.recipient, RecipientState::Bounced).await;
        core.delivery.release(core, item.message);
    }
}
