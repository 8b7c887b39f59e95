//! Delivery on one core: the recipients of the (VMTA, domain) queues this core owns, the scheduler
//! that opens connections when a queue has work and room, the connections that drive
//! `smtp::client` over source-bound sockets, and what each reply means for each recipient.
//!
//! A message's body never moves: the owning core reads it through a read-only mapping of the
//! receiving core's spool segment (`SegmentReader`). Neither does its envelope: only the location
//! of its spool record travels through the router, and the owning core keeps that location and a
//! recipient count per message (`MessageTable`). The envelope is read back from the record when a
//! transaction needs it, through a small per-core cache (`CoreDelivery::message`).

mod admin;
pub mod backoff_watch;
mod connect;
mod connection;
mod deadlines;
pub mod drain;
mod drain_session;
mod driver;
mod handoff;
mod hops;
mod idle_connections;
mod messages;
mod outcome;
mod questions;
mod reroute;
mod rollup_policies;
mod scheduler;
mod security;
mod shaping;
mod snapshot;
pub mod tls_reports;
mod transaction;
pub mod vmta_status;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

pub use crate::transport_security::ClientTls;
pub use connect::{connect_from, connect_from_timeout};
pub use handoff::{on_core_message, queue_handoff};
use messages::MessageCache;
pub use messages::{MESSAGE_CACHE_SLOTS, MessageEntry, MessageTable};
pub use snapshot::{
    QueueBoard, allocator_purge_delay, publish_snapshot, return_freed_memory,
    set_allocator_purge_delay,
};

use crate::envelope::MessageId;
use crate::metrics::labelled::{CoreLabels, Outcome};
use crate::placement::Placement;
use crate::queue::{QueueKey, QueuePolicy, QueuedRecipient, Queues};
use crate::shard::Shard;
use crate::spool::{SegmentReader, SpoolError, StoredMessage};

/// A queued recipient here. Everything per message (where its record lies, when it was received)
/// is kept once, in its `MessageEntry` or in the spool: 32 bytes.
pub type Queued = QueuedRecipient;

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
    /// Open connections waiting for their queue's next recipient.
    idle: idle_connections::IdleConnections,
    /// Connection leases of cluster-shaped queues held by this core's connections.
    leases: RefCell<shaping::LeaseBook>,
    /// Outcomes and queued recipients by VMTA, customer and destination, published each second.
    pub labels: RefCell<CoreLabels>,
    /// States of recipients of messages spooled here, as they arrived from the delivering cores
    /// and not yet written: emptied by the one task `outcome::take_states` starts, as soon as the
    /// tasks ready then have run (so bounded by what one executor turn brings).
    pub arriving_states: RefCell<Vec<(crate::envelope::MessageId, outcome::States)>>,
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
    /// The MTA-STS policies this core knows (docs/transport-security.md).
    pub mta_sts: Rc<crate::transport_security::mta_sts::Policies>,
}

impl DeliveryCore {
    pub fn new(placement: Rc<Placement>, queue_board: std::sync::Arc<QueueBoard>) -> DeliveryCore {
        let shard = placement.shard.clone();
        let spool_dir = std::path::PathBuf::from(&shard.config().server.spool_dir);
        let spool_dir = std::path::absolute(&spool_dir).unwrap_or(spool_dir);
        let mta_sts = crate::transport_security::mta_sts::Policies::new(
            shard.index,
            &spool_dir,
            shard.node.metrics.clone(),
        );
        DeliveryCore {
            delivery: CoreDelivery::new(shard.index),
            shard,
            placement,
            queue_board,
            mta_sts: Rc::new(mta_sts),
        }
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
            idle: idle_connections::IdleConnections::default(),
            leases: RefCell::new(shaping::LeaseBook::default()),
            labels: RefCell::new(CoreLabels::default()),
            arriving_states: RefCell::new(Vec::new()),
        }
    }

    /// Wakes the scheduler to look at every queue (coalesced: one pending wake-up is enough).
    pub fn wake(&self) {
        self.look_at_all.set(true);
        // Waiting connections look again whether they may go on (a reload, a drain cancelled).
        self.idle.wake_all();
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

    /// The queue policy for a key, from the running configuration. `cluster = true` means
    /// nothing on a node without `[cluster]`.
    fn policy(core: &DeliveryCore, key: &QueueKey) -> QueuePolicy {
        let mut policy = core.config().policy_for(&key.vmta, &key.domain).queue;
        if core.node.cluster.is_none() {
            policy.cluster = None;
        }
        policy
    }

    /// One recipient of message `id`, queued in `key`, is finished here (final outcome or handed
    /// elsewhere).
    pub(crate) fn release(&self, core: &DeliveryCore, key: &QueueKey, id: MessageId) {
        if self.messages.borrow_mut().release(id) {
            self.cache.borrow_mut().forget(id);
        }
        self.labels.borrow_mut().released(&key.vmta, &key.domain);
        core.counters()
            .queued_recipients
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts an outcome of a recipient of message `id` queued in `key`, by VMTA, customer and
    /// destination. Before `release`: the customer is read from the message's entry.
    pub(crate) fn count_outcome(&self, key: &QueueKey, id: MessageId, outcome: Outcome) {
        let messages = self.messages.borrow();
        self.labels
            .borrow_mut()
            .outcome(&key.vmta, messages.customer(id), &key.domain, outcome);
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
}

/// Starts this core's scheduler and drain task, and routes what the spool recovered.
pub async fn start(
    core: &std::rc::Rc<DeliveryCore>,
    recovered: Vec<crate::spool::RecoveredMessage>,
) {
    let Some(wake_rx) = core.delivery.wake_rx.borrow_mut().take() else {
        return;
    };
    // Before any connection: a policy kept across the restart applies to the first one.
    core.mta_sts.restore().await;
    glommio::spawn_local(scheduler::run(core.clone(), wake_rx)).detach();
    glommio::spawn_local(drain::run(core.clone())).detach();
    glommio::spawn_local(shaping::renew_leases(core.clone())).detach();
    crate::placement::route_recovered(&core.placement, recovered).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Envelope, Recipient};
    use crate::router::Handoff;
    use crate::spool::RecordLocation;
    use crate::spool::{Spool, SpoolConfig};

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
                    customer: "acme".into(),
                    recipients: vec![(0, 0), (1, 2)],
                    not_before_s: 0,
                    tls_optional: false,
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
