//! What other cores (or this one) send through the router: recipients to queue here, a
//! recipient's new state for this core's spool, an operator's command, the API's questions.

use std::sync::atomic::Ordering;

use super::{CoreDelivery, DeliveryCore, MessageTable, outcome};
use crate::queue::{QueueKey, QueuedRecipient, Queues};
use crate::router::{CoreMessage, Handoff};

impl CoreDelivery {
    /// Gives the queue `key` its configured policy when it has none yet: a queue made by mail or by
    /// an operator's command (a suspension before the mail arrives) runs under the configuration.
    pub(super) fn give_policy(&self, core: &DeliveryCore, key: &QueueKey) {
        let mut queues = self.queues.borrow_mut();
        if queues.policy(key).is_none() {
            queues.set_policy(key, Self::policy(core, key));
        }
    }

    pub(super) fn accept_handoff(&self, core: &DeliveryCore, handoff: Handoff) {
        let key = QueueKey::new(&handoff.vmta, &handoff.domain);
        let now_s = crate::clock::unix_s();
        let count = {
            self.give_policy(core, &key);
            let mut queues = self.queues.borrow_mut();
            queue_handoff(
                &mut queues,
                &mut self.messages.borrow_mut(),
                &key,
                &handoff,
                now_s,
            )
        };
        core.counters()
            .queued_recipients
            .fetch_add(i64::from(count), Ordering::Relaxed);
        self.labels
            .borrow_mut()
            .queued(&key.vmta, &key.domain, count);
        self.wake_queue(&key);
    }
}

/// Puts the recipients of `handoff` in the queue `key` and counts them in their message's entry:
/// everything a core keeps in RAM for a queued recipient. Returns how many were queued.
pub fn queue_handoff(
    queues: &mut Queues,
    messages: &mut MessageTable,
    key: &QueueKey,
    handoff: &Handoff,
    now_s: u64,
) -> u32 {
    for &(recipient, attempts) in &handoff.recipients {
        let mut item = QueuedRecipient::new(handoff.id, recipient, now_s);
        item.attempts = attempts.min(u32::from(u16::MAX)) as u16;
        item.tls_optional = handoff.tls_optional;
        if handoff.not_before_s > now_s {
            item.next_attempt_s = handoff.not_before_s;
            queues.schedule(key, item);
        } else {
            item.next_attempt_s = now_s;
            queues.enqueue(key, item);
        }
    }
    let count = handoff.recipients.len() as u32;
    messages.add(handoff.id, handoff.record, count, &handoff.customer);
    count
}

/// Handles what another core (or this one) sent through the router.
pub fn on_core_message(core: &std::rc::Rc<DeliveryCore>, message: CoreMessage) {
    match message {
        CoreMessage::Deliver(handoff) => core.delivery.accept_handoff(core, handoff),
        CoreMessage::Outcomes { id, states } => outcome::take_states(core, id, states),
        CoreMessage::Admin(command) => core.delivery.admin(core, command),
        CoreMessage::Ask(question) => super::questions::answer(core, question),
    }
}
