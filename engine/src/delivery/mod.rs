//! Delivery on one core: the recipients of the (VMTA, domain) queues this core owns, the scheduler
//! that opens connections when a queue has work and room, the connections that drive
//! `smtp::client` over source-bound sockets, and what each reply means for each recipient.
//!
//! A message's body never moves: the owning core reads it through a read-only mapping of the
//! receiving core's spool segment (`SegmentReader`). Neither does its envelope: only the location
//! of its spool record travels through the router, and the owning core keeps that location and a
//! recipient count per message (`MessageTable`). The envelope is read back from the record when a
//! transaction needs it, through a small per-core cache (`CoreDelivery::message`).

pub mod backoff_watch;
mod connect;
mod connection;
mod deadlines;
mod driver;
mod hops;
mod outcome;
mod reroute;
mod scheduler;
mod snapshot;
mod tls;
mod transaction;
pub mod vmta_status;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

pub use connect::{connect_from, connect_from_timeout};
pub use snapshot::{QueueBoard, publish_snapshot, return_freed_memory};
pub use tls::ClientTls;

use crate::envelope::MessageId;
use crate::placement::Placement;
use crate::queue::{QueueKey, QueuePolicy, QueuedRecipient, Queues};
use crate::router::{AdminCommand, CoreMessage, Handoff};
use crate::shard::Shard;
use crate::spool::{RecordLocation, SegmentReader, SeqMap, SpoolError, StoredMessage};

/// A queued recipient here. Everything per message (where its record lies, when it was received)
/// is kept once, in its `MessageEntry` or in the spool: 32 bytes.
pub type Queued = QueuedRecipient;

/// A message with recipients queued on this core: where its record lies in the spool of the message
/// id's core, and how many of its recipients are still here. 12 bytes: the envelope stays in the
/// spool and is read back (`CoreDelivery::message`) when a transaction or an outcome needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageEntry {
    pub segment: u32,
    /// Byte offset of the message record in its segment.
    pub record_offset: u32,
    /// Recipients of it still queued or in flight on this core.
    pub pending: u32,
}

/// A per-core message map at or below this capacity is never shrunk.
const MESSAGE_TABLE_SHRINK_MIN: usize = 1024;

/// The messages with recipients queued on one core: one map per spooling core, keyed by sequence
/// number (24-byte buckets, where `MessageId` keys would take 32).
#[derive(Debug, Default)]
pub struct MessageTable {
    by_core: Vec<SeqMap<MessageEntry>>,
}

impl MessageTable {
    pub fn get(&self, id: MessageId) -> Option<&MessageEntry> {
        self.by_core.get(usize::from(id.core))?.get(&id.seq)
    }

    pub fn get_mut(&mut self, id: MessageId) -> Option<&mut MessageEntry> {
        self.by_core.get_mut(usize::from(id.core))?.get_mut(&id.seq)
    }

    /// Where the record of `id` lies, if it has recipients here.
    pub fn record(&self, id: MessageId) -> Option<RecordLocation> {
        self.get(id).map(|e| RecordLocation {
            core: id.core,
            segment: e.segment,
            offset: e.record_offset,
        })
    }

    /// Counts `count` more recipients of the message whose record is at `record`.
    pub fn add(&mut self, id: MessageId, record: RecordLocation, count: u32) {
        let core = usize::from(id.core);
        if self.by_core.len() <= core {
            self.by_core.resize_with(core + 1, SeqMap::default);
        }
        if let Some(map) = self.by_core.get_mut(core) {
            map.entry(id.seq)
                .or_insert(MessageEntry {
                    segment: record.segment,
                    record_offset: record.offset,
                    pending: 0,
                })
                .pending += count;
        }
    }

    /// Counts one recipient less; returns whether the message has none left here (it is removed).
    pub fn release(&mut self, id: MessageId) -> bool {
        let Some(map) = self.by_core.get_mut(usize::from(id.core)) else {
            return false;
        };
        let Some(entry) = map.get_mut(&id.seq) else {
            return false;
        };
        entry.pending = entry.pending.saturating_sub(1);
        if entry.pending > 0 {
            return false;
        }
        map.remove(&id.seq);
        // Give the buckets back after a drain (a burst of messages must not pin its peak).
        if map.capacity() > MESSAGE_TABLE_SHRINK_MIN && map.capacity() > 4 * map.len() {
            map.shrink_to(2 * map.len());
        }
        true
    }

    /// Messages with recipients here.
    pub fn len(&self) -> usize {
        self.by_core.iter().map(|m| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Slots of the per-core cache of envelopes read back from the spool.
pub const MESSAGE_CACHE_SLOTS: usize = 256;

/// Messages read back from the spool lately, so that the recipients of one transaction, and then
/// its outcomes, read the record once. Direct-mapped by id: bounded, O(1), no bookkeeping; a
/// collision only costs another read of the record.
struct MessageCache {
    slots: Vec<Option<(MessageId, Rc<StoredMessage>)>>,
}

impl MessageCache {
    fn new() -> MessageCache {
        MessageCache {
            slots: vec![None; MESSAGE_CACHE_SLOTS],
        }
    }

    fn slot(id: MessageId) -> usize {
        (id.seq as usize ^ (usize::from(id.core) << 5)) % MESSAGE_CACHE_SLOTS
    }

    fn get(&self, id: MessageId) -> Option<Rc<StoredMessage>> {
        match self.slots.get(Self::slot(id)) {
            Some(Some((cached, message))) if *cached == id => Some(message.clone()),
            _ => None,
        }
    }

    fn put(&mut self, id: MessageId, message: Rc<StoredMessage>) {
        if let Some(slot) = self.slots.get_mut(Self::slot(id)) {
            *slot = Some((id, message));
        }
    }

    fn forget(&mut self, id: MessageId) {
        if let Some(slot) = self.slots.get_mut(Self::slot(id))
            && slot.as_ref().is_some_and(|(cached, _)| *cached == id)
        {
            *slot = None;
        }
    }
}

/// One core's delivery state.
pub struct CoreDelivery {
    pub core: usize,
    pub queues: RefCell<Queues>,
    pub messages: RefCell<MessageTable>,
    /// Envelopes read back lately (bounded; see `MessageCache`).
    cache: RefCell<MessageCache>,
    wake_tx: LocalSender<()>,
    wake_rx: RefCell<Option<LocalReceiver<()>>>,
    /// Queues that changed since the scheduler last looked (new recipients, a connection closed).
    changed: RefCell<Vec<QueueKey>>,
    /// Queues that may open one more connection (at most one entry per watched queue a second).
    starved: RefCell<Vec<QueueKey>>,
    /// Something changed that is not tied to one queue: the scheduler looks at every queue.
    look_at_all: Cell<bool>,
    /// Outbound connections open on this core.
    pub connections: Cell<u32>,
}

/// What delivery on one core reaches: its shard, its placement (to move mail off a VMTA that is
/// out, and the board of VMTAs it reports refusals to), the board it publishes its queues on, and
/// its own state. Derefs to the shard (configuration, spool, router, metrics...).
pub struct DeliveryCore {
    pub shard: Rc<Shard>,
    pub placement: Rc<Placement>,
    /// Every core's queue list for `GET /v1/queues`.
    pub queue_board: std::sync::Arc<QueueBoard>,
    pub delivery: CoreDelivery,
    client_tls: std::cell::OnceCell<Rc<ClientTls>>,
}

impl DeliveryCore {
    pub fn new(placement: Rc<Placement>, queue_board: std::sync::Arc<QueueBoard>) -> DeliveryCore {
        DeliveryCore {
            shard: placement.shard.clone(),
            delivery: CoreDelivery::new(placement.shard.index),
            placement,
            queue_board,
            client_tls: std::cell::OnceCell::new(),
        }
    }

    /// The outbound TLS configurations, built on first use.
    pub fn client_tls(&self) -> Rc<ClientTls> {
        self.client_tls
            .get_or_init(|| match ClientTls::new() {
                Ok(t) => Rc::new(t),
                Err(e) => panic!("the ring provider supports the default TLS versions: {e}"),
            })
            .clone()
    }
}

impl std::ops::Deref for DeliveryCore {
    type Target = Shard;

    fn deref(&self) -> &Shard {
        &self.shard
    }
}

impl CoreDelivery {
    pub fn new(core: usize) -> CoreDelivery {
        let (wake_tx, wake_rx) = local_channel::new_bounded(1);
        CoreDelivery {
            core,
            queues: RefCell::new(Queues::new(QueuePolicy::default())),
            messages: RefCell::new(MessageTable::default()),
            cache: RefCell::new(MessageCache::new()),
            wake_tx,
            wake_rx: RefCell::new(Some(wake_rx)),
            changed: RefCell::new(Vec::new()),
            starved: RefCell::new(Vec::new()),
            look_at_all: Cell::new(true),
            connections: Cell::new(0),
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

    /// Asks the scheduler for one connection more than the queue's ready count alone calls for
    /// (its connections are held by slow or stalled receivers; see `Upkeep::starved`).
    pub fn open_one_more(&self, key: QueueKey) {
        self.starved.borrow_mut().push(key);
        let _ = self.wake_tx.try_send(());
    }

    /// The starved queues reported since the scheduler last looked.
    fn take_starved(&self) -> Vec<QueueKey> {
        std::mem::take(&mut *self.starved.borrow_mut())
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

    /// The queue policy for a key, from the running configuration.
    fn policy(core: &DeliveryCore, key: &QueueKey) -> QueuePolicy {
        core.config().policy_for(&key.vmta, &key.domain).queue
    }

    /// Queues the recipients of a handoff from any core.
    /// Gives the queue `key` its configured policy when it has none yet: a queue made by mail or by
    /// an operator's command (a suspension before the mail arrives) runs under the configuration.
    fn give_policy(&self, core: &DeliveryCore, key: &QueueKey) {
        let mut queues = self.queues.borrow_mut();
        if queues.policy(key).is_none() {
            queues.set_policy(key, Self::policy(core, key));
        }
    }

    fn accept_handoff(&self, core: &DeliveryCore, handoff: Handoff) {
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
        self.wake_queue(&key);
    }

    /// One recipient is finished here (final outcome or handed elsewhere).
    pub(crate) fn release(&self, core: &DeliveryCore, id: MessageId) {
        if self.messages.borrow_mut().release(id) {
            self.cache.borrow_mut().forget(id);
        }
        core.counters()
            .queued_recipients
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// The envelope and body location of message `id`, which has recipients on this core: from the
    /// cache, or read back from its spool record through `reader` (checksums verified). Fails with
    /// `UnknownMessage` when it has no recipient here, `Corrupt` when the record is damaged, `Io`
    /// when its segment cannot be mapped.
    pub fn message(
        &self,
        reader: &SegmentReader,
        id: MessageId,
    ) -> Result<Rc<StoredMessage>, SpoolError> {
        if let Some(message) = self.cache.borrow().get(id) {
            return Ok(message);
        }
        let record = self
            .messages
            .borrow()
            .record(id)
            .ok_or(SpoolError::UnknownMessage(id))?;
        let message = Rc::new(reader.message(id, record)?);
        self.cache.borrow_mut().put(id, message.clone());
        Ok(message)
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
        core: &DeliveryCore,
        domain: &str,
        vmta: Option<&str>,
    ) -> Vec<QueueKey> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let config = core.config();
        let names: Vec<&str> = match vmta {
            Some(v) => vec![v],
            None if config.vmtas.is_empty() => vec![crate::placement::IMPLICIT_VMTA],
            None => config.vmtas.iter().map(|v| v.name.as_str()).collect(),
        };
        let cores = core.router().cores;
        names
            .into_iter()
            .filter(|v| crate::router::owner_core(v, &domain, cores) == self.core)
            .map(|v| QueueKey::new(v, &domain))
            .collect()
    }

    fn admin(&self, core: &std::rc::Rc<DeliveryCore>, command: AdminCommand) {
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
                    self.give_policy(core, &key);
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
    queues: &mut Queues,
    messages: &mut MessageTable,
    key: &QueueKey,
    handoff: &Handoff,
    now_s: u64,
) -> u32 {
    for &(recipient, attempts) in &handoff.recipients {
        let mut item = QueuedRecipient::new(handoff.id, recipient, now_s);
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
    messages.add(handoff.id, handoff.record, count);
    count
}

/// Handles what another core (or this one) sent through the router.
pub fn on_core_message(core: &std::rc::Rc<DeliveryCore>, message: CoreMessage) {
    match message {
        CoreMessage::Deliver(handoff) => core.delivery.accept_handoff(core, handoff),
        CoreMessage::Outcome {
            id,
            recipient,
            state,
        } => {
            let core = core.clone();
            glommio::spawn_local(async move {
                outcome::store_state(&core.spool, id, recipient, state).await;
            })
            .detach();
        }
        CoreMessage::Admin(command) => core.delivery.admin(core, command),
    }
}

/// Starts this core's scheduler and routes what the spool recovered.
pub async fn start(
    core: &std::rc::Rc<DeliveryCore>,
    recovered: Vec<crate::spool::RecoveredMessage>,
) {
    let Some(wake_rx) = core.delivery.wake_rx.borrow_mut().take() else {
        return;
    };
    glommio::spawn_local(scheduler::run(core.clone(), wake_rx)).detach();
    crate::placement::route_recovered(&core.placement, recovered).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, Recipient};
    use crate::spool::{Spool, SpoolConfig};

    fn record(segment: u32, offset: u32) -> RecordLocation {
        RecordLocation {
            core: 1,
            segment,
            offset,
        }
    }

    #[test]
    fn per_recipient_and_per_message_state_stays_small() {
        assert_eq!(size_of::<Queued>(), 32);
        assert_eq!(size_of::<MessageEntry>(), 12);
        assert_eq!(size_of::<(u64, MessageEntry)>(), 24);
    }

    #[test]
    fn message_table_counts_recipients_per_message() {
        let mut table = MessageTable::default();
        let a = MessageId { core: 1, seq: 7 };
        let b = MessageId { core: 0, seq: 7 };
        table.add(a, record(3, 64), 2);
        table.add(a, record(3, 64), 1);
        table.add(
            b,
            RecordLocation {
                core: 0,
                ..record(9, 8)
            },
            1,
        );
        assert_eq!(table.len(), 2);
        assert_eq!(table.record(a), Some(record(3, 64)));
        assert_eq!(table.get(a).map(|e| e.pending), Some(3));
        assert_eq!(table.record(MessageId { core: 5, seq: 7 }), None);
        assert!(!table.release(a));
        assert!(!table.release(a));
        assert!(table.release(a), "the last recipient removes the message");
        assert_eq!(table.record(a), None);
        assert!(
            !table.release(a),
            "releasing an unknown message changes nothing"
        );
        // A drained burst gives its buckets back.
        for seq in 100..100_100 {
            table.add(MessageId { core: 0, seq }, record(1, 0), 1);
        }
        for seq in 100..100_100 {
            table.release(MessageId { core: 0, seq });
        }
        assert_eq!(table.len(), 1);
        let capacity: usize = table.by_core.iter().map(|m| m.capacity()).sum();
        assert!(capacity <= 2 * MESSAGE_TABLE_SHRINK_MIN, "{capacity}");
        assert_eq!(table.record(b).map(|r| r.segment), Some(9));
    }

    #[test]
    fn envelopes_are_read_back_once_and_forgotten_with_the_message() {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async {
                let dir = tempfile::tempdir().unwrap();
                let mut config = SpoolConfig::new(dir.path(), 0);
                config.fsync = false;
                config.segment_bytes = 1 << 20;
                let (spool, _) = Spool::open(config).unwrap();
                let envelope = Envelope {
                    sender: "s@example.net".into(),
                    recipients: vec![Recipient::new("a@a.example"), Recipient::new("b@b.example")],
                    customer: "acme".into(),
                    received_at_s: 1_790_000_000,
                    ..Envelope::default()
                };
                let id = spool.next_id();
                let body = spool.store(id, &envelope, b"", b"body").await.unwrap();
                let reader = SegmentReader::new(dir.path().to_path_buf());

                let delivery = CoreDelivery::new(0);
                let key = QueueKey::new("default", "a.example");
                let handoff = Handoff {
                    id,
                    record: body.record(),
                    vmta: "default".into(),
                    domain: "a.example".into(),
                    recipients: vec![(0, 0), (1, 2)],
                    not_before_s: 0,
                };
                let queued = queue_handoff(
                    &mut delivery.queues.borrow_mut(),
                    &mut delivery.messages.borrow_mut(),
                    &key,
                    &handoff,
                    100,
                );
                assert_eq!(queued, 2);
                let first = delivery.message(&reader, id).unwrap();
                assert_eq!(first.envelope.to_envelope(), envelope);
                assert_eq!(first.body, body);
                let again = delivery.message(&reader, id).unwrap();
                assert!(
                    Rc::ptr_eq(&first, &again),
                    "one read per message while cached"
                );

                // Gone from the table and the cache with its last recipient.
                assert!(!delivery.messages.borrow_mut().release(id));
                assert!(delivery.messages.borrow_mut().release(id));
                delivery.cache.borrow_mut().forget(id);
                assert!(matches!(
                    delivery.message(&reader, id),
                    Err(SpoolError::UnknownMessage(_))
                ));

                // A record location that does not hold the message: a clean error, no envelope.
                let wrong = Handoff {
                    record: RecordLocation {
                        offset: body.record_offset + 8,
                        ..body.record()
                    },
                    ..handoff
                };
                queue_handoff(
                    &mut delivery.queues.borrow_mut(),
                    &mut delivery.messages.borrow_mut(),
                    &key,
                    &wrong,
                    100,
                );
                assert!(matches!(
                    delivery.message(&reader, id),
                    Err(SpoolError::Corrupt(_))
                ));
            });
    }
}
