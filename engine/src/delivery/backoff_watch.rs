//! Adaptive backoff in the delivery path: each failure reply is matched against the `[[backoff]]`
//! rules (backoff or a timed suspension), each delivery counts towards recovery, and once a second
//! the queues' upkeep ends the backoffs whose quiet period is over. Every transition is logged and
//! counted in the metrics (`volley_backoff_transitions_total`, `volley_queues_in_backoff`).

use std::sync::atomic::Ordering;

use super::DeliveryCore;
use crate::config::ReplyVerdict;
use crate::queue::{LeaveReason, QueueKey, Transition};
use crate::smtp::client::Reply;

/// A temporary or permanent failure reply from the queue's destination.
pub fn observe_failure(core: &DeliveryCore, key: &QueueKey, reply: &Reply) {
    if reply.code < 400 {
        return;
    }
    let config = core.config();
    let text = reply.to_string();
    match config.backoff_verdict(&key.domain, &text) {
        None => {}
        Some(ReplyVerdict::Backoff) => {
            let t = core
                .delivery
                .queues
                .borrow_mut()
                .backoff_match(key, crate::clock::unix_s());
            if let Some(t) = t {
                note(core, key, t, &text);
            }
        }
        Some(ReplyVerdict::Suspend(duration)) => {
            let until_s = crate::clock::unix_s().saturating_add(duration.as_secs());
            let mut queues = core.delivery.queues.borrow_mut();
            let already = queues
                .queue_snapshot(key)
                .is_some_and(|s| matches!(s.state, crate::queue::QueueState::Suspended { .. }));
            if !already {
                queues.suspend(key, Some(until_s), &format!("backoff rule matched: {text}"));
                drop(queues);
                log::info!(
                    "queue {key} suspended for {} s: reply matched a backoff rule: {text}",
                    duration.as_secs()
                );
                core.counters()
                    .backoff_transitions
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `count` recipients of the queue were delivered.
pub fn observe_delivered(core: &DeliveryCore, key: &QueueKey, count: u64) {
    let t = core
        .delivery
        .queues
        .borrow_mut()
        .record_delivered(key, count);
    if let Some(t) = t {
        note(core, key, t, "");
    }
}

/// Logs and counts the backoffs whose quiet period the queues' upkeep found over (once a second).
pub fn after_upkeep(core: &DeliveryCore, left: Vec<(QueueKey, Transition)>) {
    for (key, t) in left {
        note(core, &key, t, "");
    }
}

fn note(core: &DeliveryCore, key: &QueueKey, t: Transition, reply: &str) {
    let state = core.delivery.queues.borrow().queue_snapshot(key);
    let limits = state
        .map(|s| format!("{} connections", s.max_connections))
        .unwrap_or_default();
    match t {
        Transition::Entered => log::info!("queue {key} entered backoff ({limits}): {reply}"),
        Transition::Deepened { level } => {
            log::info!("queue {key} backoff deepened to level {level} ({limits}): {reply}")
        }
        Transition::Left(LeaveReason::Deliveries(n)) => {
            log::info!("queue {key} left backoff after {n} deliveries ({limits})")
        }
        Transition::Left(LeaveReason::QuietPeriod) => {
            log::info!("queue {key} left backoff after a quiet period ({limits})")
        }
    }
    let counters = core.counters();
    counters.backoff_transitions.fetch_add(1, Ordering::Relaxed);
    let in_backoff = core.delivery.queues.borrow().queues_in_backoff();
    counters
        .queues_in_backoff
        .store(in_backoff as i64, Ordering::Relaxed);
    if matches!(t, Transition::Left(_)) {
        core.delivery.wake();
    }
}
