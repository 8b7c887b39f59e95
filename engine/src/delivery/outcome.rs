//! What a reply means for each recipient: delivered, deferred on the retry schedule (or expired at
//! `max_queue_age`), or bounced with a DSN to the sender. Every outcome is recorded in the
//! accounting log, counted in the metrics, and sent to the core whose spool holds the message.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::DeliveryCore;
use super::Queued;
use crate::accounting::{AccountingEvent, EventType};
use crate::bounce::{
    BounceCategory, DiagnosticType, DsnAction, DsnInput, RecipientReport, build_dsn, classify,
    dsn_envelope, should_bounce,
};
use crate::envelope::{Envelope, MessageId, Recipient, domain_of};
use crate::intake::{Origin, Refusal};
use crate::metrics::labelled;
use crate::queue::{DeferOutcome, QueueKey};
use crate::router::CoreMessage;
use crate::smtp::client::{Outcome, Reply, ReplySource};
use crate::spool::{RecipientState, Spool, SpoolError, StoredMessage};

/// Where an attempt went, for the accounting log.
#[derive(Clone, Copy)]
pub struct Attempt<'a> {
    pub source_ip: &'a str,
    pub mx: &'a str,
    /// How the connection was secured: `dane`, `mta-sts`, `webpki`, `encrypted`, `none`.
    pub tls: &'a str,
}

fn enhanced(reply: &Reply) -> Option<(u8, u16, u16)> {
    reply.enhanced.map(|e| (e.class, e.subject, e.detail))
}

/// The reply's enhanced code as an event writes it (empty when it has none).
fn enhanced_code_text(reply: &Reply) -> String {
    reply.enhanced.map(|e| e.to_string()).unwrap_or_default()
}

pub(super) fn event<'a>(
    kind: EventType,
    key: &'a QueueKey,
    item: &Queued,
    message: &'a StoredMessage,
    reply: &Reply,
    attempt: Option<Attempt<'a>>,
) -> AccountingEvent<'a> {
    let now_s = crate::clock::unix_s();
    let envelope = &message.envelope;
    let recipient = envelope.address(item.recipient as usize);
    AccountingEvent {
        kind: Some(kind),
        time: crate::clock::now_rfc3339().into(),
        id: item.message.to_string().into(),
        message_id: envelope.tags().message_id.as_str().into(),
        customer: envelope.customer().into(),
        campaign: envelope.tags().campaign.as_str().into(),
        vmta: (*key.vmta).into(),
        source_ip: attempt.map(|a| a.source_ip).unwrap_or_default().into(),
        sender: envelope.sender().into(),
        recipient: recipient.unwrap_or_default().into(),
        // The recipient's own domain: a rollup queue carries several.
        domain: recipient.map_or_else(|| (*key.domain).into(), |r| domain_of(r).into()),
        mx: attempt.map(|a| a.mx).unwrap_or_default().into(),
        tls: attempt.map(|a| a.tls).unwrap_or_default().into(),
        response: reply.to_string().into(),
        enhanced_code: enhanced_code_text(reply).into(),
        attempt: u32::from(item.attempts) + 1,
        size_bytes: u64::from(message.body.len),
        queue_ms: now_s
            .saturating_sub(envelope.received_at_s())
            .saturating_mul(1000),
        ..AccountingEvent::default()
    }
}

/// What `[server] log_deliveries` writes for an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LoggedStatus {
    Sent,
    Deferred,
    Bounced,
}

impl LoggedStatus {
    fn as_str(self) -> &'static str {
        match self {
            LoggedStatus::Sent => "sent",
            LoggedStatus::Deferred => "deferred",
            LoggedStatus::Bounced => "bounced",
        }
    }
}

/// The `relay=` of a delivery log line, Postfix style: `host[address]` from the attempt's
/// `host (address)`, `none` when no server was reached.
fn relay_of(attempt: Option<Attempt<'_>>) -> String {
    let Some(mx) = attempt.map(|a| a.mx).filter(|m| !m.is_empty()) else {
        return "none".into();
    };
    match mx.strip_suffix(')').and_then(|m| m.split_once(" (")) {
        Some((host, address)) => format!("{host}[{address}]"),
        None => mx.replace(' ', "_"),
    }
}

/// The delivery log line of one outcome (`[server] log_deliveries`).
fn delivery_log_line(
    id: MessageId,
    recipient: &str,
    vmta: &str,
    attempt: Option<Attempt<'_>>,
    status: LoggedStatus,
    reply: &Reply,
) -> String {
    format!(
        "id={id} to=<{recipient}> relay={} vmta={vmta} status={} ({reply})",
        relay_of(attempt),
        status.as_str()
    )
}

/// Writes the delivery log line of an outcome when `[server] log_deliveries` is on.
pub(super) fn log_delivery(
    core: &DeliveryCore,
    key: &QueueKey,
    item: &Queued,
    message: &StoredMessage,
    attempt: Option<Attempt<'_>>,
    status: LoggedStatus,
    reply: &Reply,
) {
    if !core.config().server.log_deliveries {
        return;
    }
    let recipient = message
        .envelope
        .address(item.recipient as usize)
        .unwrap_or_default();
    log::info!(
        "{}",
        delivery_log_line(item.message, recipient, &key.vmta, attempt, status, reply)
    );
}

/// Tells the spooling core a recipient's new state.
pub(super) async fn record_state(
    core: &DeliveryCore,
    id: MessageId,
    recipient: u32,
    state: RecipientState,
) {
    record_states(core, id, vec![(recipient, state)]).await;
}

/// Tells the spooling core new states of recipients of message `id`: one router message, one
/// spool write for all of them.
async fn record_states(core: &DeliveryCore, id: MessageId, states: Vec<(u32, RecipientState)>) {
    core.router()
        .send(usize::from(id.core), CoreMessage::Outcomes { id, states })
        .await;
}

/// Tries of a final state record (delivered, bounced, expired) whose spool write failed with an
/// error that may pass (spool full, an I/O error), before giving up.
const STATE_RECORD_TRIES: u32 = 8;
/// Wait before the second try of a state record; doubled for each later one (about 4 min in all).
const STATE_RETRY_FIRST_MS: u64 = 1_000;

/// Records a recipient's new state in this core's spool (the message's own), as the outcome
/// another core (or this one) sent. A final state that is not recorded would make a restart try
/// the recipient again (a second delivery, a second DSN), so it is tried again while the error
/// may pass. A non-final one (deferred) that is lost only makes a restart try the recipient
/// sooner, so it is logged and left.
pub async fn store_state(spool: &Spool, id: MessageId, recipient: u32, state: RecipientState) {
    let mut wait_ms = STATE_RETRY_FIRST_MS;
    for tries in 1..=STATE_RECORD_TRIES {
        let error = match spool.set_state(id, recipient, state).await {
            Ok(()) => return,
            Err(e) => e,
        };
        match error {
            // Finished already (or never durable): its record is gone or going, nothing to mark.
            SpoolError::UnknownMessage(_) => {
                log::warn!("state {state:?} of {id} recipient {recipient}: {error}; ignored");
                return;
            }
            e if !state.is_final() => {
                log::warn!(
                    "state {state:?} of {id} recipient {recipient} not recorded ({e}); after a \
                     restart it is tried again sooner"
                );
                return;
            }
            e if may_work_later(&e) && tries < STATE_RECORD_TRIES => {
                log::warn!(
                    "state {state:?} of {id} recipient {recipient} not recorded ({e}); tried \
                     again in {wait_ms} ms"
                );
                glommio::timer::sleep(std::time::Duration::from_millis(wait_ms)).await;
                wait_ms *= 2;
            }
            e => {
                log::error!(
                    "state {state:?} of {id} recipient {recipient} not recorded ({e}): after a \
                     restart this recipient is tried again"
                );
                return;
            }
        }
    }
}

/// New states of recipients of one message, by recipient index.
pub type States = Vec<(u32, RecipientState)>;

/// Most state records (48 octets each) one spool write of arrived outcomes carries; a larger
/// backlog is written in several (a message with more goes alone).
const STATE_RECORDS_PER_WRITE_MAX: usize = 512;

/// Takes the states another core (or this one) sent for a message spooled here. The outcomes
/// that reach the core together (one drain of the router) are written together: one task, one
/// `pwrite`, one join of the commit, where each used to be a task and a write of its own (with
/// ten recipient domains, ten per message).
pub fn take_states(core: &Rc<DeliveryCore>, id: MessageId, states: States) {
    let first = {
        let mut arriving = core.delivery.arriving_states.borrow_mut();
        arriving.push((id, states));
        arriving.len() == 1
    };
    if !first {
        // The task started with the first one has not run yet: it takes this one too.
        return;
    }
    // Spawned with the list released: the task may start at once.
    let core = core.clone();
    glommio::spawn_local(async move { write_arrived_states(&core).await }).detach();
}

async fn write_arrived_states(core: &Rc<DeliveryCore>) {
    // Behind the tasks ready now (the router's receivers, delivering connections finishing a
    // transaction), so that what they bring this turn joins this write.
    futures_lite::future::yield_now().await;
    let arrived = std::mem::take(&mut *core.delivery.arriving_states.borrow_mut());
    let mut arrived = arrived.into_iter().peekable();
    while arrived.peek().is_some() {
        let mut group = Vec::new();
        let mut records = 0;
        while let Some((_, states)) = arrived.peek() {
            if !group.is_empty() && records + states.len() > STATE_RECORDS_PER_WRITE_MAX {
                break;
            }
            records += states.len();
            group.extend(arrived.next());
        }
        write_states_together(core, group).await;
    }
}

/// Writes the states of several messages at once; should that fail, each message's on its own,
/// as before (an unknown message, say, then fails alone).
async fn write_states_together(core: &Rc<DeliveryCore>, mut group: Vec<(MessageId, States)>) {
    if group.len() == 1
        && let Some((id, states)) = group.pop()
    {
        return store_states(&core.spool, id, states).await;
    }
    let batch: Vec<_> = group
        .iter()
        .map(|(id, states)| (*id, states.as_slice()))
        .collect();
    if core.spool.set_states_of(&batch).await.is_ok() {
        return;
    }
    for (id, states) in group {
        let core = core.clone();
        glommio::spawn_local(async move { store_states(&core.spool, id, states).await }).detach();
    }
}

/// Records the new states of recipients of message `id` in this core's spool, together (one
/// write); should that fail, one by one, as `store_state` does (tried again while the error may
/// pass).
pub async fn store_states(spool: &Spool, id: MessageId, states: States) {
    if let [(recipient, state)] = states[..] {
        return store_state(spool, id, recipient, state).await;
    }
    if spool.set_states(id, &states).await.is_ok() {
        return;
    }
    for (recipient, state) in states {
        store_state(spool, id, recipient, state).await;
    }
}

/// Applies one transaction's replies, recipient by recipient, in order; the delivered ones'
/// states go to the spooling core together, after the others.
pub async fn apply(
    core: &Rc<DeliveryCore>,
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
    let mut delivered_items = Vec::new();
    for (item, (outcome, reply)) in items.into_iter().zip(replies) {
        match outcome {
            Outcome::Delivered => {
                delivered(core, key, &item, message, &reply, attempt);
                delivered_items.push(item);
            }
            Outcome::Deferred => defer(core, key, item, message, &reply, Some(attempt)).await,
            Outcome::Failed => failed.push((item, reply)),
        }
    }
    // A transaction carries one message; grouped all the same, should that ever change.
    for group in delivered_items.chunk_by(|a, b| a.message == b.message) {
        let id = group[0].message;
        let states = group
            .iter()
            .map(|item| (item.recipient, RecipientState::Delivered))
            .collect();
        record_states(core, id, states).await;
        for _ in group {
            core.delivery.release(core, key, id);
        }
    }
    bounce_with_replies(core, key, failed, Some(attempt), false).await;
}

/// Counts a delivery outcome for the customer's bounce-rate guard; a pause it starts is logged,
/// counted and accounted (`customer_paused`) here, once.
fn guard_bounce_rate(core: &DeliveryCore, message: &StoredMessage, bounced: bool) {
    // DSNs (null reverse path) say nothing of the customer's list.
    if message.envelope.sender().is_empty() {
        return;
    }
    let config = core.config();
    let name = message.envelope.customer();
    let Some(pause) =
        core.limits
            .record_outcome(config.customer(name), bounced, crate::clock::unix_s())
    else {
        return;
    };
    core.counters()
        .bounce_guard_pauses
        .fetch_add(1, Ordering::Relaxed);
    log::warn!(
        "customer {name} paused by the bounce-rate guard: {}; POST /v1/customers/{name}/resume ends it",
        pause.reason
    );
    core.accounting.record(&crate::accounting::AccountingEvent {
        kind: Some(EventType::CustomerPaused),
        time: crate::clock::now_rfc3339().into(),
        customer: name.to_string().into(),
        response: pause.reason.into(),
        ..Default::default()
    });
}

/// Counts, accounts and logs a delivery; the caller records its state and releases the message.
fn delivered(
    core: &DeliveryCore,
    key: &QueueKey,
    item: &Queued,
    message: &StoredMessage,
    reply: &Reply,
    attempt: Attempt<'_>,
) {
    let counters = core.counters();
    counters.delivered.fetch_add(1, Ordering::Relaxed);
    core.delivery
        .count_outcome(key, item.message, labelled::Outcome::Delivered);
    counters.delivery_latency.record_us(
        crate::clock::unix_s()
            .saturating_sub(message.envelope.received_at_s())
            .saturating_mul(1_000_000),
    );
    super::backoff_watch::observe_delivered(core, key, 1);
    guard_bounce_rate(core, message, false);
    log_delivery(
        core,
        key,
        item,
        message,
        Some(attempt),
        LoggedStatus::Sent,
        reply,
    );
    core.accounting.record(&event(
        EventType::Delivery,
        key,
        item,
        message,
        reply,
        Some(attempt),
    ));
}

/// A temporary failure: back on the retry schedule, or expired.
pub async fn defer(
    core: &Rc<DeliveryCore>,
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
            log_delivery(
                core,
                key,
                &item,
                message,
                attempt,
                LoggedStatus::Deferred,
                reply,
            );
            core.delivery
                .count_outcome(key, item.message, labelled::Outcome::Deferred);
            let mut e = event(EventType::Transient, key, &item, message, reply, attempt);
            e.bounce_category = classify(reply.code, enhanced(reply), &reply.text)
                .as_str()
                .into();
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
    core: &Rc<DeliveryCore>,
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
    core: &Rc<DeliveryCore>,
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

/// Bounces and expiries of one message, as a unit: its DSN is spooled first, and the recipients
/// are recorded bounced (or expired) only once the DSN is durable, so a failed spool write can
/// never turn into a bounce nobody is told about. A crash between the two leaves the recipients
/// unfinished in the spool: after the restart they are tried again and bounce again, so the
/// sender may get the notice twice, never zero times.
struct BounceGroup {
    key: QueueKey,
    items: Vec<(Queued, Reply)>,
    message: Rc<StoredMessage>,
    /// Where the attempt went (source address, MX, TLS), when a remote host was involved.
    attempt: Option<(String, String, &'static str)>,
    expired: bool,
}

impl BounceGroup {
    fn attempt(&self) -> Option<Attempt<'_>> {
        self.attempt
            .as_ref()
            .map(|(source_ip, mx, tls)| Attempt { source_ip, mx, tls })
    }
}

/// The `tls` value of an attempt as a static label (a bounce is accounted after its attempt).
fn tls_label(tls: &str) -> &'static str {
    ["dane", "mta-sts", "webpki", "encrypted", "none"]
        .into_iter()
        .find(|l| *l == tls)
        .unwrap_or("")
}

/// Wait before the first new try of a DSN that could not be spooled; doubled each time.
const DSN_RETRY_FIRST_S: u64 = 5;
/// Longest wait between tries of a DSN that could not be spooled.
const DSN_RETRY_MAX_S: u64 = 300;

/// Records the bounces and sends one DSN per message to its sender.
async fn bounce_with_replies(
    core: &Rc<DeliveryCore>,
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
                let group = BounceGroup {
                    key: key.clone(),
                    items: items[start..end].to_vec(),
                    message,
                    attempt: attempt
                        .map(|a| (a.source_ip.to_string(), a.mx.to_string(), tls_label(a.tls))),
                    expired,
                };
                if let Err(e) = bounce_message(core, &group).await {
                    postpone_bounce(core, group, e);
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

/// Whether spooling a DSN may work later without a restart (room freed, a passing I/O error).
fn may_work_later(error: &SpoolError) -> bool {
    matches!(error, SpoolError::Full | SpoolError::Io(_))
}

/// A DSN could not be spooled: its recipients stay unfinished (in the spool too) and the bounce
/// is tried again in the background while the spool may recover. When it cannot (poisoned,
/// closed), they are left to the restart's recovery, which tries them again.
fn postpone_bounce(core: &Rc<DeliveryCore>, group: BounceGroup, error: SpoolError) {
    let id = group.items[0].0.message;
    if !may_work_later(&error) {
        log::error!(
            "{}: DSN for {id} not spooled ({error}): its {} recipient(s) stay unfinished in the \
             spool and are tried again after a restart",
            group.key,
            group.items.len()
        );
        for (item, _) in &group.items {
            core.delivery.release(core, &group.key, item.message);
        }
        return;
    }
    log::error!(
        "{}: DSN for {id} not spooled ({error}); the bounce of its {} recipient(s) is tried \
         again in {DSN_RETRY_FIRST_S}s",
        group.key,
        group.items.len()
    );
    let core = core.clone();
    glommio::spawn_local(async move {
        let mut wait_s = DSN_RETRY_FIRST_S;
        loop {
            glommio::timer::sleep(std::time::Duration::from_secs(wait_s)).await;
            match bounce_message(&core, &group).await {
                Ok(()) => return,
                Err(e) if may_work_later(&e) => {
                    wait_s = (wait_s * 2).min(DSN_RETRY_MAX_S);
                    log::error!(
                        "{}: DSN for {id} still not spooled ({e}); tried again in {wait_s}s",
                        group.key
                    );
                }
                Err(e) => {
                    log::error!(
                        "{}: DSN for {id} not spooled ({e}): its recipients stay unfinished in \
                         the spool and are tried again after a restart",
                        group.key
                    );
                    for (item, _) in &group.items {
                        core.delivery.release(&core, &group.key, item.message);
                    }
                    return;
                }
            }
        }
    })
    .detach();
}

/// Spools the DSN of `group` (when one is due), then records each recipient bounced or expired:
/// accounting, counters, queue figures and the spool state. Nothing is recorded when the DSN
/// could not be spooled (the error is returned).
async fn bounce_message(core: &Rc<DeliveryCore>, group: &BounceGroup) -> Result<(), SpoolError> {
    let message = &*group.message;
    // Bounces are rare: the DSN code works on the unpacked envelope.
    let envelope = &message.envelope.to_envelope();
    let failures: Vec<Failure> = group
        .items
        .iter()
        .filter_map(|(item, reply)| {
            let recipient = envelope.recipients.get(item.recipient as usize)?;
            should_bounce(envelope, recipient).then(|| Failure {
                recipient,
                reply,
                category: classify(reply.code, enhanced(reply), &reply.text),
            })
        })
        .collect();
    let id = group.items[0].0.message;
    if !failures.is_empty() {
        let remote_mta = group.attempt().map(|a| a.mx).filter(|m| !m.is_empty());
        let dsn = spool_dsn(core, id, message, envelope, &failures, remote_mta).await?;
        log::info!("DSN {dsn} for {id} to <{}>", envelope.sender);
    }
    let counters = core.counters();
    let attempt = group.attempt();
    for (item, reply) in &group.items {
        let category = classify(reply.code, enhanced(reply), &reply.text);
        let (kind, outcome) = if group.expired {
            counters.expired.fetch_add(1, Ordering::Relaxed);
            (EventType::Expiration, labelled::Outcome::Expired)
        } else {
            counters.bounced.fetch_add(1, Ordering::Relaxed);
            // A hard bounce is a receiver's 5xx: not an operator's bounce, nor an expiry.
            if attempt.is_some() && reply.code >= 500 {
                guard_bounce_rate(core, message, true);
            }
            (EventType::Bounce, labelled::Outcome::Bounced)
        };
        log_delivery(
            core,
            &group.key,
            item,
            message,
            attempt,
            LoggedStatus::Bounced,
            reply,
        );
        core.delivery
            .count_outcome(&group.key, item.message, outcome);
        let mut e = event(kind, &group.key, item, message, reply, attempt);
        e.bounce_category = category.as_str().into();
        core.accounting.record(&e);
        core.delivery
            .queues
            .borrow_mut()
            .record_bounced(&group.key, 1);
        let state = if group.expired {
            RecipientState::Expired
        } else {
            RecipientState::Bounced
        };
        record_state(core, item.message, item.recipient, state).await;
        core.delivery.release(core, &group.key, item.message);
    }
    Ok(())
}

/// One recipient a DSN reports as failed.
struct Failure<'a> {
    recipient: &'a Recipient,
    reply: &'a Reply,
    category: BounceCategory,
}

/// Builds the failure DSN of message `id` for `failures`, spools it to the original sender and
/// routes it: the one place a DSN enters the spool. Returns once it is durable. When the spool
/// has no room for it (or it is too large for a segment), the DSN returns the original's headers
/// only and may use the spool's reserve beyond `max_spool_bytes` (`Spool::store_notice`): the
/// bounce it records is what frees the original.
async fn spool_dsn(
    core: &Rc<DeliveryCore>,
    id: MessageId,
    message: &StoredMessage,
    envelope: &Envelope,
    failures: &[Failure<'_>],
    remote_mta: Option<&str>,
) -> Result<MessageId, SpoolError> {
    let original = match core.bodies.body(message.body) {
        Ok(body) => Some(body),
        // The segment cannot be mapped now: try again later.
        Err(e @ SpoolError::Io(_)) => return Err(e),
        Err(e) => {
            log::warn!("DSN for {id}: the original is unreadable ({e}); sent without it");
            None
        }
    };
    let original: &[u8] = original.as_deref().unwrap_or(&[]);
    let diagnostics: Vec<String> = failures.iter().map(|f| f.reply.to_string()).collect();
    let now_s = crate::clock::unix_s();
    let reports: Vec<RecipientReport> = failures
        .iter()
        .zip(&diagnostics)
        .map(|(f, diagnostic)| {
            // Only a remote server's reply names a remote MTA and is typed `smtp`.
            let remote = f.reply.source == ReplySource::Remote;
            RecipientReport {
                recipient: f.recipient,
                action: DsnAction::Failed,
                status: enhanced(f.reply).unwrap_or((5, 0, 0)),
                remote_mta: remote_mta.filter(|_| remote),
                diagnostic_code: Some(diagnostic.as_str()),
                diagnostic_type: if remote {
                    DiagnosticType::Smtp
                } else {
                    DiagnosticType::Local
                },
                last_attempt_s: Some(now_s),
                will_retry_until_s: None,
                category: Some(f.category),
            }
        })
        .collect();
    let config = core.config();
    let mut input = DsnInput {
        reporting_mta: &config.server.hostname,
        envelope,
        message_id: id,
        recipients: &reports,
        original,
        now_s,
        max_returned_bytes: crate::bounce::DEFAULT_MAX_RETURNED_BYTES,
    };
    let dsn = build_dsn(&input);
    let notice = |reserve| Origin::Notice { reserve };
    let spooled = match crate::intake::accept(
        &core.placement,
        notice(false),
        dsn_envelope(&input, &dsn),
        dsn,
    )
    .await
    {
        Err(Refusal::SpoolFull | Refusal::Spool(SpoolError::TooLarge { .. })) => {
            input.max_returned_bytes = 0;
            let dsn = build_dsn(&input);
            crate::intake::accept(
                &core.placement,
                notice(true),
                dsn_envelope(&input, &dsn),
                dsn,
            )
            .await
        }
        spooled => spooled,
    };
    spooled
        .map(|accepted| accepted.id)
        .map_err(|refusal| match refusal {
            Refusal::SpoolFull => SpoolError::Full,
            Refusal::Spool(e) => e,
            // Notices are charged to no customer: a limit never refuses one; nor is a hand-over
            // header looked for in them, nor a route chosen, nor their content checked.
            refusal @ (Refusal::Limit(_)
            | Refusal::XferUntrusted
            | Refusal::XferMalformed(_)
            | Refusal::Suppressed
            | Refusal::Route(_)
            | Refusal::Spam { .. }
            | Refusal::SpamCheckUnavailable(_)) => {
                SpoolError::Io(std::io::Error::other(refusal.to_string()))
            }
        })
}

/// Recipients whose message record cannot be read back (`error`), so neither sent nor reported to
/// a sender. An I/O error (the segment cannot be mapped now) may pass: they wait for their next
/// retry. Anything else (a damaged record) is final: see `drop_unreadable`.
pub async fn unreadable(
    core: &Rc<DeliveryCore>,
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
    core: &Rc<DeliveryCore>,
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
            time: crate::clock::now_rfc3339().into(),
            id: item.message.to_string().into(),
            vmta: (*key.vmta).into(),
            domain: (*key.domain).into(),
            response: reply.to_string().into(),
            enhanced_code: enhanced_code_text(&reply).into(),
            attempt: u32::from(item.attempts) + 1,
            ..AccountingEvent::default()
        });
        core.counters().bounced.fetch_add(1, Ordering::Relaxed);
        core.delivery
            .count_outcome(key, item.message, labelled::Outcome::Bounced);
        core.delivery.queues.borrow_mut().record_bounced(key, 1);
        record_state(core, item.message, item.recipient, RecipientState::Bounced).await;
        core.delivery.release(core, key, item.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, Recipient};
    use crate::spool::SpoolConfig;

    #[test]
    fn delivery_log_lines_are_postfix_style() {
        let id = MessageId { core: 1, seq: 0x2A };
        let attempt = Attempt {
            source_ip: "127.0.0.2",
            mx: "mx1.dest.test (127.0.0.10)",
            tls: "none",
        };
        let sent = Reply::local(250, (2, 0, 0), "Ok: queued");
        assert_eq!(
            delivery_log_line(
                id,
                "a@dest.test",
                "v1",
                Some(attempt),
                LoggedStatus::Sent,
                &sent
            ),
            "id=00000000002A-01 to=<a@dest.test> relay=mx1.dest.test[127.0.0.10] vmta=v1 \
             status=sent (250 2.0.0 Ok: queued)"
        );
        let no_host = Reply::local(451, (4, 4, 1), "No host reachable");
        let line = delivery_log_line(
            id,
            "b@dest.test",
            "v2",
            None,
            LoggedStatus::Deferred,
            &no_host,
        );
        assert!(
            line.contains(" relay=none vmta=v2 status=deferred (451 4.4.1 "),
            "{line}"
        );
        let bounced = delivery_log_line(
            id,
            "c@d",
            "v1",
            Some(attempt),
            LoggedStatus::Bounced,
            &no_host,
        );
        assert!(bounced.contains(" status=bounced ("), "{bounced}");
    }

    #[test]
    fn a_final_state_whose_commit_failed_is_recorded_on_a_later_try() {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async {
                let dir = tempfile::tempdir().unwrap();
                let mut config = SpoolConfig::new(dir.path(), 0);
                config.fsync = false;
                config.segment_bytes = 1 << 20;
                let (spool, _) = Spool::open(config.clone()).unwrap();
                let envelope = Envelope {
                    sender: "s@example.net".into(),
                    recipients: vec![Recipient::new("a@a.example"), Recipient::new("b@b.example")],
                    ..Envelope::default()
                };
                let id = spool.next_id();
                spool.store(id, &envelope, b"", b"body").await.unwrap();

                // A bounce waits for its commit (a lost one would send a second DSN).
                spool.fail_next_commit(std::io::ErrorKind::StorageFull);
                store_state(&spool, id, 0, RecipientState::Bounced).await;
                // A deferral is not worth a second try: losing it only makes a retry come sooner.
                // It waits for no commit (`lazy_state_sync_ms`): the failing one is close's,
                // which voids it.
                spool.fail_next_commit(std::io::ErrorKind::StorageFull);
                let deferred = RecipientState::Deferred {
                    next_attempt_s: 1_790_000_000,
                    attempts: 1,
                };
                store_state(&spool, id, 1, deferred).await;
                assert!(spool.close().await.is_err());
                drop(spool);

                let (_spool, recovered) = Spool::open(config).unwrap();
                assert_eq!(recovered.len(), 1);
                assert_eq!(
                    recovered[0].states().collect::<Vec<_>>(),
                    vec![RecipientState::Bounced, RecipientState::Pending]
                );
            });
    }

    #[test]
    fn states_stored_together_are_tried_again_one_by_one_when_their_commit_fails() {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async {
                let dir = tempfile::tempdir().unwrap();
                let mut config = SpoolConfig::new(dir.path(), 0);
                config.fsync = false;
                config.segment_bytes = 1 << 20;
                let (spool, _) = Spool::open(config.clone()).unwrap();
                let envelope = Envelope {
                    sender: "s@example.net".into(),
                    recipients: vec![
                        Recipient::new("a@a.example"),
                        Recipient::new("b@a.example"),
                        Recipient::new("c@a.example"),
                    ],
                    ..Envelope::default()
                };
                let id = spool.next_id();
                spool.store(id, &envelope, b"", b"body").await.unwrap();
                let records = spool.stats().state_records;
                spool.fail_next_commit(std::io::ErrorKind::StorageFull);
                let bounced = RecipientState::Bounced;
                store_states(&spool, id, vec![(0, bounced), (2, bounced)]).await;
                // Two together (voided by the failed commit), then each on its own.
                assert_eq!(spool.stats().state_records, records + 4);
                store_states(&spool, id, vec![(1, RecipientState::Delivered)]).await;
                spool.close().await.unwrap();
                drop(spool);

                let (_spool, recovered) = Spool::open(config).unwrap();
                assert!(recovered.is_empty(), "every recipient is finished");
            });
    }
}
