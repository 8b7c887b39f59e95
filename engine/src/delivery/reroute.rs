//! Moving queued mail to another VMTA through placement: off a VMTA that is out (its address
//! cannot be bound, or it is refused everywhere) to another VMTA of the message's pool (mail that
//! named its VMTA with `X-Volley-VMTA` has no other: it waits for that one), or, by an operator
//! (`POST /v1/queues/reroute`), to a VMTA of a pool the operator names.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use super::{DeliveryCore, Queued};
use crate::envelope::MessageId;
use crate::placement::{hand_off_to, pick_from_pool, pick_vmta};
use crate::queue::QueueKey;
use crate::spool::StoredMessage;

/// Moves recipients taken from a queue whose VMTA is out (its address cannot be bound, or it is
/// refused everywhere) to another VMTA of their pool. Returns those that cannot move (no other VMTA is available).
pub async fn reroute(core: &Rc<DeliveryCore>, from: &QueueKey, items: Vec<Queued>) -> Vec<Queued> {
    let pick = |message: &StoredMessage| {
        let envelope = &message.envelope;
        let vmta = pick_vmta(
            &core.placement,
            envelope.customer(),
            envelope.tags().route.as_ref(),
        );
        (*vmta != *from.vmta).then_some(vmta)
    };
    move_to(core, from, items, pick).await.1
}

/// Moves recipients taken from the queue `from` to VMTAs of the pool `pool` other than the
/// queue's own, picked per message as placement picks them (weighted round robin over the
/// enabled ones). Returns how many moved, and those that cannot (their record is unreadable, or
/// the pool has no such VMTA).
pub async fn reroute_to_pool(
    core: &Rc<DeliveryCore>,
    from: &QueueKey,
    items: Vec<Queued>,
    pool: &str,
) -> (u32, Vec<Queued>) {
    let config = core.config();
    let Some(pool) = config.pools.iter().find(|p| p.name == pool) else {
        return (0, items);
    };
    let pick =
        |_: &StoredMessage| pick_from_pool(&core.placement, &config, pool, Some(&*from.vmta));
    move_to(core, from, items, pick).await
}

/// Hands each message's recipients to the VMTA `pick` gives it (all the recipients of one message
/// go together), keeping their attempts; they are ready at once on their new queue. Returns how
/// many moved and those that did not (no VMTA picked, or the record is unreadable).
async fn move_to(
    core: &Rc<DeliveryCore>,
    from: &QueueKey,
    items: Vec<Queued>,
    pick: impl Fn(&StoredMessage) -> Option<Arc<str>>,
) -> (u32, Vec<Queued>) {
    let mut stuck = Vec::new();
    let mut moved = 0u32;
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
        let Some(vmta) = pick(&message) else {
            stuck.extend(items);
            continue;
        };
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
        moved = moved.saturating_add(items.len() as u32);
        // A queue of millions moves in many steps: let the core's other work run between them.
        glommio::yield_if_needed().await;
    }
    (moved, stuck)
}
