//! Moving mail off a VMTA that is out (its address cannot be bound, or it is refused everywhere):
//! the recipients a connection took go to another VMTA of their pool, through placement.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::{DeliveryCore, Queued};
use crate::envelope::MessageId;
use crate::placement::{hand_off_to, pick_vmta};
use crate::queue::QueueKey;

/// Moves recipients taken from a queue whose VMTA is out (its address cannot be bound, or it is
/// refused everywhere) to another VMTA of their pool. Returns those that cannot move (no other VMTA is available).
pub async fn reroute(core: &Rc<DeliveryCore>, from: &QueueKey, items: Vec<Queued>) -> Vec<Queued> {
    let mut stuck = Vec::new();
    let mut by_message: BTreeMap<MessageId, Vec<Queued>> = BTreeMap::new();
    for item in items {
        by_message.entry(item.message).or_default().push(item);
    }
    for (id, items) in by_message {
        let message = match core.delivery.message(&core.bodies, id) {
            Ok(m) => m,
            Err(e) => {
                log::error!("{from}: message {id} cannot move: {e}");
                stuck.extend(items);
                continue;
            }
        };
        let vmta = pick_vmta(&core.placement, message.envelope.customer());
        if *vmta == *from.vmta {
            stuck.extend(items);
            continue;
        }
        log::info!(
            "{from}: {} recipients of {id} moved to VMTA {vmta}",
            items.len()
        );
        let recipients: Vec<(u32, u32, u64)> = items
            .iter()
            .map(|i| (i.recipient, u32::from(i.attempts), 0))
            .collect();
        let record = message.body.record();
        hand_off_to(
            &core.placement,
            id,
            record,
            &message.envelope,
            vmta,
            recipients.into_iter(),
        )
        .await;
        for item in &items {
            core.delivery.release(core, from, item.message);
        }
    }
    stuck
}
