//! Delivery on one core: the recipients of the (VMTA, domain) queues this core owns, the scheduler
//! that opens connections when a queue has work and room, the connections that drive
//! `smtp::client` over source-bound sockets, and what each reply means for each recipient.
//!
//! A message's body never moves: the owning core reads it through a read-only mapping of the
//! receiving core's spool segment (`SegmentReader`). Only the envelope (packed, in an `Arc`) and the body's
//! location travel through the router.

mod connect;
mod connection;
mod mx_rollup;
mod outcome;
mod placement;
mod scheduler;
pub mod shaping;
mod tls;
pub mod vmta_status;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

pub use connect::{connect_from, connect_from_timeout};
pub use placement::{QueueBoard, inject_message, route_new_message, route_recovered};
pub use tls::ClientTls;
pub use vmta_status::{BIND_FAILURE_RETRY_S, VmtaBoard, VmtaView};

use crate::dns::Resolver;
use crate::envelope::{MessageId, PackedEnvelope};
use crate::queue::{QueueKey, QueuePolicy, QueuedRecipient, Queues};
use crate::router::{AdminCommand, CoreMessage, Handoff};
use crate::runtime::CoreContext;
use crate::spool::BodyLocation;

/// A queued recipient here: the body's location is its payload.
pub type Queued = QueuedRecipient<BodyRef>;

/// A `BodyLocation` in 16 bytes instead of 24 (one per queued recipient): the offset fits in a
/// `u32` because a segment is at most `u32::MAX` bytes (`Spool::open` refuses larger ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRef {
    pub core: u16,
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
}

impl From<BodyLocation> for BodyRef {
    fn from(l: BodyLocation) -> BodyRef {
        BodyRef {
            core: l.core,
            segment: l.segment,
            // Cannot saturate (see above); if it did, the read would fail rather than misread.
            offset: u32::try_from(l.offset).unwrap_or(u32::MAX),
            len: l.len,
        }
    }
}

impl From<BodyRef> for BodyLocation {
    fn from(r: BodyRef) -> BodyLocation {
        BodyLocation {
            core: r.core,
            segment: r.segment,
            offset: u64::from(r.offset),
            len: r.len,
        }
    }
}

/// A message with recipients queued on this core.
pub struct MessageEntry {
    /// Packed: the queues keep one per message, so its size is most of the RAM per recipient.
    pub envelope: Arc<PackedEnvelope>,
    /// Recipients of it still queued or in flight on this core.
    pub pending: u32,
}

/// One core's delivery state.
pub struct CoreDelivery {
    pub core: usize,
    pub queues: RefCell<Queues<BodyRef>>,
    pub messages: RefCell<HashMap<MessageId, MessageEntry>>,
    resolver: RefCell<Option<Rc<Resolver>>>,
    wake_tx: LocalSender<()>,
    wake_rx: RefCell<Option<LocalReceiver<()>>>,
    /// Queues that changed since the scheduler last looked (new recipients, a connection closed).
    changed: RefCell<Vec<QueueKey>>,
    /// Something changed that is not tied to one queue: the scheduler looks at every queue.
    look_at_all: Cell<bool>,
    /// Outbound connections open on this core.
    pub connections: Cell<u32>,
    /// This core's copy of the disabled VMTAs.
    pub vmtas: VmtaView,
}

impl CoreDelivery {
    pub fn new(core: usize) -> CoreDelivery {
        let (wake_tx, wake_rx) = local_channel::new_bounded(1);
        CoreDelivery {
            core,
            queues: RefCell::new(Queues::new(QueuePolicy::default())),
            messages: RefCell::new(HashMap::new()),
            resolver: RefCell::new(None),
            wake_tx,
            wake_rx: RefCell::new(Some(wake_rx)),
            changed: RefCell::new(Vec::new()),
            look_at_all: Cell::new(true),
            connections: Cell::new(0),
            vmtas: VmtaView::default(),
        }
    }

    /// Wakes the scheduler to look at every queue (coalesced: one pending wake-up is enough).
    pub fn wake(&self) {
        self.look_at_all.set(true);
        let _ = self.wake_tx.try_send(());
    }

    /// Wakes the scheduler to look at one queue: the hot path (new recipients, a connection closed)
    /// costs the scheduler that queue, not a scan of every queue of the core.
    pub fn wake_queue(&self, key: &QueueKey) {
        self.changed.borrow_mut().push(key.clone());
        let _ = self.wake_tx.try_send(());
    }

    /// The queues the scheduler must look at now: the changed ones, or all with ready recipients.
    fn queues_to_look_at(&self) -> Vec<QueueKey> {
        let changed = std::mem::take(&mut *self.changed.borrow_mut());
        if self.look_at_all.replace(false) {
            self.queues.borrow().ready_keys()
        } else {
            changed
        }
    }

    /// Whether connections are still delivering (the graceful stop waits for them).
    pub fn busy(&self) -> bool {
        self.connections.get() > 0
    }

    pub(crate) fn resolver(&self, core: &CoreContext) -> Rc<Resolver> {
        if let Some(r) = self.resolver.borrow().as_ref() {
            return r.clone();
        }
        let nameservers = core.config().dns.nameservers.clone();
        let r = Rc::new(if nameservers.is_empty() {
            Resolver::from_system()
        } else {
            Resolver::new(nameservers)
        });
        *self.resolver.borrow_mut() = Some(r.clone());
        r
    }

    /// The queue policy for a key, from the running configuration.
    fn policy(core: &CoreContext, key: &QueueKey) -> QueuePolicy {
        let p = core.config().policy_for(&key.vmta, &key.domain);
        QueuePolicy {
            max_connections: p.max_connections,
            max_messages_per_connection: p.max_messages_per_connection,
            max_messages_per_minute: p.max_messages_per_minute,
            max_messages_per_hour: p.max_messages_per_hour,
            retry_intervals: p.retry_intervals,
            max_queue_age: p.max_queue_age,
            backoff: p.backoff,
        }
    }

    /// Queues the recipients of a handoff from any core.
    fn accept_handoff(&self, core: &CoreContext, handoff: Handoff) {
        let key = QueueKey::new(&handoff.vmta, &handoff.domain);
        let now_s = crate::listener::reception::unix_now_s();
        let count = {
            let mut queues = self.queues.borrow_mut();
            if queues.policy(&key).is_none() {
                queues.set_policy(&key, Self::policy(core, &key));
            }
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
        self.wake_queue(&key);
    }

    /// One recipient is finished here (final outcome or handed elsewhere).
    pub(crate) fn release(&self, core: &CoreContext, id: MessageId) {
        let mut messages = self.messages.borrow_mut();
        if let Some(entry) = messages.get_mut(&id) {
            entry.pending = entry.pending.saturating_sub(1);
            if entry.pending == 0 {
                messages.remove(&id);
            }
        }
        core.counters()
            .queued_recipients
            .fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn envelope(&self, id: MessageId) -> Option<Arc<PackedEnvelope>> {
        self.messages.borrow().get(&id).map(|m| m.envelope.clone())
    }

    fn matching_keys(&self, domain: &str, vmta: Option<&str>) -> Vec<QueueKey> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.queues
            .borrow()
            .snapshot()
            .into_iter()
            .filter(|s| s.domain == domain && vmta.is_none_or(|v| v == s.vmta))
            .map(|s| QueueKey::new(&s.vmta, &s.domain))
            .collect()
    }

    /// The queues this core would own for `domain` (one per configured VMTA, or just `vmta`), so
    /// that suspending a domain before its mail arrives holds that mail too.
    fn owned_future_keys(
        &self,
        core: &CoreContext,
        domain: &str,
        vmta: Option<&str>,
    ) -> Vec<QueueKey> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let config = core.config();
        let names: Vec<&str> = match vmta {
            Some(v) => vec![v],
            None if config.vmtas.is_empty() => vec![placement::IMPLICIT_VMTA],
            None => config.vmtas.iter().map(|v| v.name.as_str()).collect(),
        };
        let cores = core.router().cores;
        names
            .into_iter()
            .filter(|v| crate::router::owner_core(v, &domain, cores) == self.core)
            .map(|v| QueueKey::new(v, &domain))
            .collect()
    }

    fn admin(&self, core: &std::rc::Rc<CoreContext>, command: AdminCommand) {
        match command {
            AdminCommand::Suspend {
                domain,
                vmta,
                reason,
            } => {
                let mut keys = self.matching_keys(&domain, vmta.as_deref());
                for key in self.owned_future_keys(core, &domain, vmta.as_deref()) {
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                for key in keys {
                    self.queues.borrow_mut().suspend(&key, None, &reason);
                    log::info!("queue {key} suspended: {reason}");
                }
            }
            AdminCommand::Resume { domain, vmta } => {
                for key in self.matching_keys(&domain, vmta.as_deref()) {
                    self.queues.borrow_mut().resume(&key);
                    log::info!("queue {key} resumed");
                }
                self.wake();
            }
            AdminCommand::Bounce {
                domain,
                vmta,
                reason,
            } => {
                for key in self.matching_keys(&domain, vmta.as_deref()) {
                    let items = self.queues.borrow_mut().bounce_all(&key);
                    log::info!("queue {key}: bouncing {} recipients: {reason}", items.len());
                    let reply = crate::smtp::client::Reply::local(
                        554,
                        (5, 0, 0),
                        format!("Bounced by the operator: {reason}"),
                    );
                    let core = core.clone();
                    glommio::spawn_local(async move {
                        outcome::bounce_items(&core, &key, items, &reply, None).await;
                    })
                    .detach();
                }
            }
        }
    }
}

/// Puts the recipients of `handoff` in the queue `key` and counts them in their message's entry:
/// everything a core keeps in RAM for a queued recipient. Returns how many were queued.
pub fn queue_handoff(
    queues: &mut Queues<BodyRef>,
    messages: &mut HashMap<MessageId, MessageEntry>,
    key: &QueueKey,
    handoff: &Handoff,
    now_s: u64,
) -> u32 {
    for &(recipient, attempts) in &handoff.recipients {
        let mut item = QueuedRecipient::new(
            handoff.id,
            handoff.body.into(),
            recipient,
            handoff.first_queued_s,
        );
        item.attempts = attempts.min(u32::from(u16::MAX)) as u16;
        if handoff.not_before_s > now_s {
            item.next_attempt_s = handoff.not_before_s;
            queues.schedule(key, item);
        } else {
            item.next_attempt_s = now_s;
            queues.enqueue(key, item);
        }
    }
    let count = handoff.recipients.len() as u32;
    messages
        .entry(handoff.id)
        .or_insert_with(|| MessageEntry {
            envelope: handoff.envelope.clone(),
            pending: 0,
        })
        .pending += count;
    count
}

/// Handles what another core (or this one) sent through the router.
pub fn on_core_message(core: &std::rc::Rc<CoreContext>, message: CoreMessage) {
    match message {
        CoreMessage::Deliver(handoff) => core.delivery.accept_handoff(core, handoff),
        CoreMessage::Outcome {
            id,
            recipient,
            state,
        } => {
            let core = core.clone();
            glommio::spawn_local(async move {
                if let Err(e) = core.spool.set_state(id, recipient, state).await {
                    log::error!("spool state of {id} recipient {recipient}: {e}");
                }
            })
            .detach();
        }
        CoreMessage::Admin(command) => core.delivery.admin(core, command),
    }
}

/// Starts this core's scheduler and routes what the spool recovered.
pub async fn start(
    core: &std::rc::Rc<CoreContext>,
    recovered: Vec<crate::spool::RecoveredMessage>,
) {
    let Some(wake_rx) = core.delivery.wake_rx.borrow_mut().take() else {
        return;
    };
    glommio::spawn_local(scheduler::run(core.clone(), wake_rx)).detach();
    route_recovered(core, recovered).await;
}

/// Publishes this core's queue list for `GET /v1/queues`.
pub fn publish_snapshot(core: &CoreContext) {
    shaping::tick(core);
    let snapshot = core.delivery.queues.borrow().snapshot();
    core.shared.queues.publish(core.index, snapshot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_ref_round_trips_and_keeps_queued_recipients_small() {
        let location = BodyLocation {
            core: 3,
            segment: 77,
            offset: u64::from(u32::MAX) - 5,
            len: 1234,
        };
        assert_eq!(BodyLocation::from(BodyRef::from(location)), location);
        assert_eq!(size_of::<BodyRef>(), 16);
        assert_eq!(size_of::<Queued>(), 56);
    }
}
