//! Where a spooled message's recipients go: the VMTA or pool the message chose (`X-Volley-VMTA`,
//! `X-Volley-Pool`, kept in its spool record), else the customer's pool, picks a VMTA; recipients
//! are grouped by domain, and each group is handed to the core that owns its (VMTA, domain) queue.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use super::Placement;
use super::mx_rollup::{self, QueueDomain};
use crate::config::{Config, PoolConfig};
use crate::envelope::{Envelope, MessageId, PackedEnvelope, RouteChoice, domain_of};
use crate::router::{CoreMessage, Handoff, owner_core};
use crate::spool::{
    BodyLocation, RecipientState, RecordLocation, RecoveredMessage, SequentialMessages,
};

/// The name of the VMTA used when the configuration defines none.
pub const IMPLICIT_VMTA: &str = "default";

/// The VMTA for a message of `customer` that chose `route`: the VMTA it named (even while that one
/// is disabled: the message waits for it), or weighted round robin over the VMTAs of the pool it
/// named, else of the customer's pool. A name the configuration no longer has (a reload since it
/// was received) falls back to the customer's pool.
pub fn pick_vmta(core: &Placement, customer: &str, route: Option<&RouteChoice>) -> Arc<str> {
    let config = core.config();
    match route {
        Some(RouteChoice::Vmta(name)) if config.vmta(name).is_some() => {
            return Arc::from(name.as_str());
        }
        Some(RouteChoice::Pool(name)) => {
            if let Some(pool) = config.pools.iter().find(|p| p.name == *name) {
                return pick_in_pool(core, &config, pool);
            }
            log::warn!(
                "pool {name:?} chosen by a message is no longer configured: its customer's pool is used"
            );
        }
        Some(RouteChoice::Vmta(name)) => {
            log::warn!(
                "VMTA {name:?} chosen by a message is no longer configured: its customer's pool is used"
            );
        }
        None => {}
    }
    let Some(pool) = config.pool_for(customer) else {
        return Arc::from(IMPLICIT_VMTA);
    };
    pick_in_pool(core, &config, pool)
}

/// Weighted round robin over the VMTAs of `pool` that are not disabled (by the API, a failed bind
/// or refusals); over all of them when every one is disabled.
fn pick_in_pool(core: &Placement, config: &Config, pool: &PoolConfig) -> Arc<str> {
    pick_from_pool(core, config, pool, None).unwrap_or_else(|| Arc::from(IMPLICIT_VMTA))
}

/// A VMTA of `pool` other than `except`, by the same rule as `pick_vmta` (weighted round robin
/// over those not disabled; over all when every one is). `None` when the pool has none (or
/// their weights are all 0).
pub fn pick_from_pool(
    core: &Placement,
    config: &Config,
    pool: &PoolConfig,
    except: Option<&str>,
) -> Option<Arc<str>> {
    let now_s = crate::clock::unix_s();
    let board = &core.board;
    let members: Vec<&String> = pool
        .vmtas
        .iter()
        .filter(|name| except != Some(name.as_str()))
        .collect();
    let enabled: Vec<&String> = members
        .iter()
        .copied()
        .filter(|name| !core.vmtas.is_disabled(board, name, now_s))
        .collect();
    let candidates = if enabled.is_empty() { members } else { enabled };
    let weights: Vec<(&str, u32)> = candidates
        .into_iter()
        .map(|name| {
            (
                name.as_str(),
                config.vmta(name).map(|v| v.weight).unwrap_or(1),
            )
        })
        .collect();
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return None;
    }
    let turn = core.next_pool_turn() % u64::from(total);
    let mut acc = 0u64;
    for (name, weight) in &weights {
        acc += u64::from(*weight);
        if turn < acc {
            return Some(Arc::from(*name));
        }
    }
    weights.first().map(|w| Arc::from(w.0))
}

/// Hands the recipients `(index, attempts, not_before_s)` of a message to their queues' cores.
async fn hand_off(
    core: &Rc<Placement>,
    id: MessageId,
    record: RecordLocation,
    envelope: &PackedEnvelope,
    recipients: impl Iterator<Item = (u32, u32, u64)>,
) -> Arc<str> {
    let vmta = pick_vmta(core, envelope.customer(), envelope.tags().route.as_ref());
    hand_off_to(core, id, record, envelope, vmta.clone(), recipients).await;
    vmta
}

/// Hands recipients to the queues of `vmta`; the queue domain is the recipient domain's
/// `[[rollup]]` group when it has one (MX rollup). Recipients of a domain whose MX must decide are
/// routed once it is looked up, in the background.
pub async fn hand_off_to(
    core: &Rc<Placement>,
    id: MessageId,
    record: RecordLocation,
    envelope: &PackedEnvelope,
    vmta: Arc<str>,
    recipients: impl Iterator<Item = (u32, u32, u64)>,
) {
    let config = core.config();
    let mut groups: BTreeMap<(String, u64), Vec<(u32, u32)>> = BTreeMap::new();
    let mut awaiting_mx: BTreeMap<String, Vec<(u32, u32, u64)>> = BTreeMap::new();
    let now_s = crate::clock::unix_s();
    for (index, attempts, not_before_s) in recipients {
        let Some(address) = envelope.address(index as usize) else {
            continue;
        };
        let domain = domain_of(address);
        let queue_domain = match core.mx_rollup.queue_domain(&config, &domain, now_s) {
            QueueDomain::Known(d) => d,
            QueueDomain::NeedsLookup => {
                let waiting = awaiting_mx.entry(domain).or_default();
                waiting.push((index, attempts, not_before_s));
                continue;
            }
        };
        groups
            .entry((queue_domain, not_before_s))
            .or_default()
            .push((index, attempts));
    }
    for (domain, waiting) in awaiting_mx {
        mx_rollup::route_after_lookup(core, id, record, &vmta, domain, waiting);
    }
    let router = core.router();
    let customer: Arc<str> = Arc::from(envelope.customer());
    for ((domain, not_before_s), recipients) in groups {
        let owner = owner_core(&vmta, &domain, router.cores);
        let handoff = Handoff {
            id,
            record,
            vmta: vmta.clone(),
            domain: Arc::from(domain),
            customer: customer.clone(),
            recipients,
            not_before_s,
            tls_optional: envelope.tls_optional(),
        };
        router.send(owner, CoreMessage::Deliver(handoff)).await;
    }
}

/// Routes every recipient of a message that was just spooled, ready now, with the delivery
/// attempts already made for each (0, unless handed over by another node). Returns the VMTA
/// picked for the message.
pub async fn route_new_message(
    core: &Rc<Placement>,
    id: MessageId,
    body: BodyLocation,
    envelope: Arc<Envelope>,
    attempts: u32,
) -> Arc<str> {
    let count = envelope.recipients.len() as u32;
    let envelope = PackedEnvelope::new(&envelope);
    let recipients = (0..count).map(|i| (i, attempts, 0));
    hand_off(core, id, body.record(), &envelope, recipients).await
}

/// Routes the unfinished recipients of what the spool recovered at start, reading each envelope
/// back from its record only while routing it. An unreadable record is logged and left in the spool.
pub async fn route_recovered(core: &Rc<Placement>, recovered: Vec<RecoveredMessage>) {
    let mut records = SequentialMessages::new(&core.bodies);
    for message in recovered {
        let stored = match records.message(message.id, message.record) {
            Ok(stored) => stored,
            Err(e) => {
                log::error!("recovered message {} not routed: {e}", message.id);
                continue;
            }
        };
        let recipients = message.states().enumerate().filter_map(|(i, s)| match s {
            RecipientState::Pending => Some((i as u32, 0, 0)),
            RecipientState::Deferred {
                next_attempt_s,
                attempts,
            } => Some((i as u32, attempts, next_attempt_s)),
            _ => None,
        });
        hand_off(
            core,
            message.id,
            message.record,
            &stored.envelope,
            recipients,
        )
        .await;
    }
}
