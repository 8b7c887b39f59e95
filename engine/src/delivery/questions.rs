//! The API's questions about what this core holds (`router::Question`), answered in a task of
//! their own: what it holds of one message, bouncing one message's queued recipients, moving one
//! queue to another pool. Looking for a message goes through the core's queues in slices of
//! `SCAN_SLICE_RECIPIENTS`, a reroute moves `REROUTE_SLICE_RECIPIENTS` at a time, and between
//! slices the task waits for the reactor's next poll (`let_io_in`), so a core with millions of
//! queued recipients keeps serving its sessions while it looks or moves.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use super::{DeliveryCore, outcome};
use crate::envelope::MessageId;
use crate::queue::{FoundRecipient, QueueKey, ScanCursor};
use crate::router::{HeldQueue, HeldRecipient, MessageBounced, MessageHeld, Question, Rerouted};
use crate::smtp::client::Reply;

/// Queued recipients a message search looks at between two polls of the reactor (about 0.25 ms
/// of work in a debug build).
pub const SCAN_SLICE_RECIPIENTS: usize = 16_384;

/// Waits for the core's next look at its I/O and timers, between two slices of a long job. A
/// yield would not do: glommio runs the tasks already woken, and looks at I/O only once they run
/// dry or its preemption timer fires (every 100 ms), so sessions and the API would wait that
/// long. A timer puts this task to sleep until the reactor has polled.
async fn let_io_in() {
    glommio::timer::sleep(std::time::Duration::from_micros(1)).await;
}

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

/// Recipients of `id` queued on this core, found slice by slice. Stops early once it found
/// `expected` (every recipient of it counted here). A recipient that moved between slices may
/// be seen twice (ready, then deferred): an answer keeps its last sighting, a bounce takes it
/// from wherever it is.
async fn find_queued(core: &DeliveryCore, id: MessageId, expected: u32) -> Vec<FoundRecipient> {
    let mut found = Vec::new();
    let mut cursor = ScanCursor::default();
    loop {
        let next = core.delivery.queues.borrow().scan_for_message(
            id,
            cursor,
            SCAN_SLICE_RECIPIENTS,
            &mut found,
        );
        match next {
            Some(next) if found.len() < expected as usize => cursor = next,
            _ => break,
        }
        let_io_in().await;
    }
    found
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
    let found = if pending == 0 {
        Vec::new()
    } else {
        find_queued(core, id, pending).await
    };
    let mut keys: Vec<QueueKey> = Vec::new();
    let mut key_index: HashMap<QueueKey, u32> = HashMap::new();
    let mut queued = Vec::with_capacity(found.len());
    for f in found {
        let queue = *key_index.entry(f.key.clone()).or_insert_with(|| {
            keys.push(f.key);
            keys.len() as u32 - 1
        });
        queued.push(HeldRecipient {
            recipient: f.item.recipient,
            queue,
            deferred: f.deferred,
            attempts: u32::from(f.item.attempts),
            next_attempt_s: f.item.next_attempt_s,
        });
    }
    let queues = core.delivery.queues.borrow();
    let queues = keys
        .iter()
        .map(|k| HeldQueue {
            vmta: k.vmta.to_string(),
            domain: k.domain.to_string(),
            held: queues.held_reason(k).map(str::to_string),
        })
        .collect();
    MessageHeld {
        core: core.delivery.core,
        finished,
        record,
        pending,
        queues,
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
    let found = find_queued(core, id, pending).await;
    let keys: HashSet<QueueKey> = found.into_iter().map(|f| f.key).collect();
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

/// Recipients a reroute takes from the queue and moves at a time (about 2 ms of work in a debug
/// build), letting the reactor poll between them.
pub const REROUTE_SLICE_RECIPIENTS: usize = 1024;

/// Moves the queued recipients of (`vmta`, `domain`) to VMTAs of `to_pool`: as many as the queue
/// held when asked (mail arriving meanwhile stays), a slice at a time.
async fn reroute_queue(
    core: &Rc<DeliveryCore>,
    vmta: &str,
    domain: &str,
    to_pool: &str,
) -> Rerouted {
    let key = QueueKey::new(vmta, domain);
    let Some(total) = core
        .delivery
        .queues
        .borrow()
        .queue_snapshot(&key)
        .map(|q| q.size())
    else {
        return Rerouted::default();
    };
    let (mut taken, mut moved) = (0usize, 0u32);
    let mut stuck = Vec::new();
    while taken < total {
        let want = REROUTE_SLICE_RECIPIENTS.min(total - taken);
        let items = core
            .delivery
            .queues
            .borrow_mut()
            .take_for_handover(&key, want);
        if items.is_empty() {
            break;
        }
        taken += items.len();
        let (n, left) = super::reroute::reroute_to_pool(core, &key, items, to_pool).await;
        moved = moved.saturating_add(n);
        stuck.extend(left);
        let_io_in().await;
    }
    let left = stuck.len() as u32;
    if !stuck.is_empty() {
        // Put back as they were: ready ones at the head of the queue, deferred ones on the timer.
        let now_s = crate::clock::unix_s();
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
        queue_found: true,
        moved,
        left,
    }
}
