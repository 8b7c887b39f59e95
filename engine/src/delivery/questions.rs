//! The API's questions about what this core holds (`router::Question`), answered in a task of
//! their own: what it holds of one message, bouncing one message's queued recipients, moving one
//! queue to another pool. Looking for a message goes through the core's queues in slices of
//! `SCAN_SLICE_RECIPIENTS`, yielding between them, so a core with millions of queued recipients
//! keeps delivering while it looks.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::{DeliveryCore, outcome};
use crate::envelope::MessageId;
use crate::queue::{FoundRecipient, QueueKey, ScanCursor};
use crate::router::{
    HELD_RECIPIENTS_MAX, HeldRecipient, MessageBounced, MessageHeld, Question, Rerouted,
};
use crate::smtp::client::Reply;

/// Queued recipients looked at between two yields of a message search (well under a millisecond
/// of work in a release build).
pub const SCAN_SLICE_RECIPIENTS: usize = 16_384;

/// Answers `question` in a task of its own (the router's handler must not wait).
pub fn answer(core: &Rc<DeliveryCore>, question: Question) {
    let core = core.clone();
    glommio::spawn_local(async move {
        match question {
            Question::Message { id, answer } => {
                let _ = answer.send(message_held(&core, id).await);
            }
            Question::BounceMessage { id, reason, answer } => {
                let _ = answer.send(bounce_message(&core, id, &reason).await);
            }
            Question::Reroute {
                vmta,
                domain,
                to_pool,
                answer,
            } => {
                let _ = answer.send(reroute_queue(&core, &vmta, &domain, &to_pool).await);
            }
        }
    })
    .detach();
}

/// Recipients of `id` queued on this core, at most `max`, found slice by slice. Stops early once
/// it found `expected` (every recipient of it counted here).
async fn find_queued(
    core: &DeliveryCore,
    id: MessageId,
    expected: u32,
    max: usize,
) -> Vec<FoundRecipient> {
    let mut found = Vec::new();
    let mut cursor = ScanCursor::default();
    loop {
        let next = core.delivery.queues.borrow().scan_for_message(
            id,
            cursor,
            SCAN_SLICE_RECIPIENTS,
            &mut found,
        );
        let enough = found.len() >= max || found.len() >= expected as usize;
        match next {
            Some(next) if !enough => cursor = next,
            _ => break,
        }
        futures_lite::future::yield_now().await;
    }
    // A recipient that moved between slices may have been seen twice: keep its last sighting.
    let mut by_recipient: BTreeMap<u32, FoundRecipient> = BTreeMap::new();
    for f in found {
        by_recipient.insert(f.item.recipient, f);
    }
    by_recipient.into_values().take(max).collect()
}

/// What this core holds of message `id`: its spool's view (when the message is this core's) and
/// its queued recipients.
async fn message_held(core: &DeliveryCore, id: MessageId) -> MessageHeld {
    let finished = core.spool.finished_recipients(id);
    let (record, pending) = {
        let messages = core.delivery.messages.borrow();
        (
            messages.record(id),
            messages.get(id).map_or(0, |e| e.pending),
        )
    };
    let queued = if pending == 0 {
        Vec::new()
    } else {
        find_queued(core, id, pending, HELD_RECIPIENTS_MAX).await
    };
    let queues = core.delivery.queues.borrow();
    let queued = queued
        .into_iter()
        .map(|f| HeldRecipient {
            recipient: f.item.recipient,
            vmta: f.key.vmta.to_string(),
            queue_domain: f.key.domain.to_string(),
            deferred: f.deferred,
            attempts: u32::from(f.item.attempts),
            next_attempt_s: f.item.next_attempt_s,
            queue_held: queues.held_reason(&f.key).map(str::to_string),
        })
        .collect();
    MessageHeld {
        core: core.delivery.core,
        finished,
        record,
        pending,
        queued,
    }
}

/// Bounces every recipient of `id` queued on this core now, through the same path as an
/// operator's queue bounce (the DSN durable before the bounces are recorded).
async fn bounce_message(core: &Rc<DeliveryCore>, id: MessageId, reason: &str) -> MessageBounced {
    let pending = core
        .delivery
        .messages
        .borrow()
        .get(id)
        .map_or(0, |e| e.pending);
    if pending == 0 {
        return MessageBounced::default();
    }
    let found = find_queued(core, id, pending, usize::MAX).await;
    let mut keys: Vec<QueueKey> = found.into_iter().map(|f| f.key).collect();
    keys.sort_unstable();
    keys.dedup();
    let reply = Reply::local(554, (5, 0, 0), format!("Bounced by the operator: {reason}"));
    let mut bounced = 0u32;
    for key in keys {
        let items = core.delivery.queues.borrow_mut().take_message(&key, id);
        if items.is_empty() {
            continue;
        }
        log::info!(
            "queue {key}: bouncing {} recipients of {id}: {reason}",
            items.len()
        );
        bounced = bounced.saturating_add(items.len() as u32);
        outcome::bounce_items(core, &key, items, &reply, None).await;
    }
    MessageBounced {
        bounced,
        in_flight: pending.saturating_sub(bounced),
    }
}

/// Moves the queued recipients of (`vmta`, `domain`) to VMTAs of `to_pool`.
async fn reroute_queue(
    core: &Rc<DeliveryCore>,
    vmta: &str,
    domain: &str,
    to_pool: &str,
) -> Rerouted {
    let key = QueueKey::new(vmta, domain);
    let (queue_found, items) = {
        let mut queues = core.delivery.queues.borrow_mut();
        let found = queues.policy(&key).is_some();
        (found, queues.take_all(&key))
    };
    if items.is_empty() {
        return Rerouted {
            queue_found,
            ..Rerouted::default()
        };
    }
    let now_s = crate::clock::unix_s();
    let (moved, stuck) = super::reroute::reroute_to_pool(core, &key, items, to_pool).await;
    let left = stuck.len() as u32;
    if !stuck.is_empty() {
        // Put back as they were: ready ones at the head of the queue, deferred ones on the timer.
        let mut queues = core.delivery.queues.borrow_mut();
        let (later, ready): (Vec<_>, Vec<_>) =
            stuck.into_iter().partition(|i| i.next_attempt_s > now_s);
        queues.return_unsent(&key, ready);
        for item in later {
            queues.schedule(&key, item);
        }
        core.delivery.wake_queue(&key);
    }
    log::info!("queue {key}: {moved} recipients moved to pool {to_pool}, {left} left");
    Rerouted {
        queue_found,
        moved,
        left,
    }
}
