//! The queues of one core, keyed by (VMTA, destination domain).
//!
//! # Timers: a heap with lazy deletion, not a wheel
//! Deferred recipients wait in a binary min-heap per queue, ordered by `(next_attempt_s, message,
//! recipient)`. A second, core-wide min-heap holds wake-ups `(time, queue slot)`: each queue keeps
//! exactly one live entry, at its earliest deferred time (or the end of a timed suspension), and
//! remembers it in `scheduled_wake_s`. When that time changes a new entry is pushed and the old one is
//! left in place; `due` and `next_wakeup` skip entries that no longer match their queue (lazy deletion),
//! and the heap is rebuilt if stale entries ever outnumber live ones.
//!
//! Why not a hierarchical timer wheel: retry times span seconds to days (5 min .. 5 days by default),
//! so a wheel needs several levels and cascades items between them, touching each item more than once;
//! its slots also lose the order within a slot. The heap costs O(log n) per insert and release (about
//! 20 comparisons at a million recipients, well under a microsecond), has no tick to drive (the driver
//! sleeps exactly until `next_wakeup`), keeps exact order, and needs no memory beyond the items
//! themselves. Keeping the items in per-queue heaps, rather than one heap of every recipient, makes
//! `bounce_all`, `suspend` and the per-queue "next attempt" O(queue), never O(core).
//!
//! # Memory per queued recipient
//! A recipient is one `QueuedRecipient`, stored once: in its queue's ready `VecDeque` or its
//! deferred heap's `Vec`, never both, and with no per-item allocation. It is 32 bytes (`size_of`,
//! asserted in the tests): message id, recipient index,
//! attempts, next attempt time; what is per message (the record's location, the reception time for
//! `max_queue_age`) is kept once per message by the delivery side. Containers grow by doubling and
//! are shrunk back whenever their capacity exceeds twice their length (above `SHRINK_MIN_CAPACITY`
//! items), so the cost is 32 bytes per recipient at best and 64 bytes at worst. Each queue adds a
//! fixed few hundred bytes (key, counters; queues with equal policies share one `Rc`).
//!
//! # Bounds
//! A queue exists while it holds recipients (bounded by the spool), has a connection, is suspended
//! by an operator, or is in backoff, and then for `[shaping] queue_idle_s` (`set_idle_s`): the
//! upkeep (`upkeep.rs`) frees it. Everything indexed by queue follows that count: the slots (and
//! `free_slots`, emptied when the slots are compacted), the key index, the wake and idle heaps (one
//! live entry per queue; rebuilt when stale entries dominate or the slots are compacted), the
//! change and watch lists (one entry per queue). Texts kept per queue are cut to
//! `MAX_REPLY_TEXT_BYTES`. Capacities are trimmed to within 4x (2x for recipients) of the length.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;

use super::backoff::{BackoffState, Transition};
use super::cluster_share::{ClusterShare, SendSpacing, SlotCheck};
use super::connection_cap::{CapChange, ConnectionCap};
use super::policy::{ClusterScope, QueuePolicy};
use super::rate::SendRate;
use crate::envelope::MessageId;

/// The last deferral reply kept per queue (for the API) is cut to this many bytes.
pub const MAX_REPLY_TEXT_BYTES: usize = 512;

/// Containers below this capacity are never shrunk: small queues would only churn the allocator.
const SHRINK_MIN_CAPACITY: usize = 64;

/// `[shaping] queue_idle_s` when the configuration does not say.
pub const DEFAULT_QUEUE_IDLE_S: u64 = 300;

/// A queue's identity: the VMTA that sends and the destination domain (lower-cased).
///
/// `Rc<str>` makes the clones that `due` and `snapshot` hand out a reference-count bump.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueKey {
    pub vmta: Rc<str>,
    pub domain: Rc<str>,
}

impl QueueKey {
    /// The key for `vmta` and `domain`; the domain is lower-cased and loses a trailing dot.
    pub fn new(vmta: &str, domain: &str) -> QueueKey {
        QueueKey {
            vmta: Rc::from(vmta),
            domain: Rc::from(domain.trim_end_matches('.').to_ascii_lowercase()),
        }
    }
}

impl fmt::Display for QueueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vmta, self.domain)
    }
}

/// One recipient of one message waiting for delivery. What is per message (where its record lies,
/// when it was received) is kept once in the delivery side's message entry, not in every recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedRecipient {
    pub message: MessageId,
    /// Index of the recipient in the message's envelope.
    pub recipient: u32,
    /// Failed attempts so far.
    pub attempts: u16,
    /// Its message says `TLS-Required: No` (RFC 8689 5): it may leave on a connection that
    /// ignores DANE and MTA-STS (in the struct's padding: no byte more per recipient).
    pub tls_optional: bool,
    pub next_attempt_s: u64,
}

impl QueuedRecipient {
    /// A recipient ready at `now_s`, with no attempt made yet.
    pub fn new(message: MessageId, recipient: u32, now_s: u64) -> QueuedRecipient {
        QueuedRecipient {
            message,
            recipient,
            attempts: 0,
            tls_optional: false,
            next_attempt_s: now_s,
        }
    }

    fn timer_order(&self) -> (u64, MessageId, u32) {
        (self.next_attempt_s, self.message, self.recipient)
    }
}

/// A deferred recipient in a max-heap that must pop the earliest time first.
struct Deferred(QueuedRecipient);

impl PartialEq for Deferred {
    fn eq(&self, other: &Self) -> bool {
        self.0.timer_order() == other.0.timer_order()
    }
}
impl Eq for Deferred {}
impl PartialOrd for Deferred {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }

    // The heap sifts with `<=`; answering it from the time alone, with plain integer comparisons,
    // skips the tuple comparison in all but exact ties (and keeps debug builds quick).
    fn le(&self, other: &Self) -> bool {
        let (a, b) = (self.0.next_attempt_s, other.0.next_attempt_s);
        if a != b {
            return a > b;
        }
        self.cmp(other) != Ordering::Greater
    }
}
impl Ord for Deferred {
    /// Reversed: the earliest `(next_attempt_s, message, recipient)` is the greatest.
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.timer_order().cmp(&self.0.timer_order())
    }
}

/// Whether a queue may deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueState {
    Active,
    /// Nothing is handed out; retries still come due. With `until_s`, `due` resumes it at that time.
    Suspended {
        until_s: Option<u64>,
        reason: String,
    },
    /// Held until `until_s` because the rate limit allows no send before then (see
    /// `hold_for_rate`): a new policy (a reload) ends it at once, an operator's suspension does not.
    RateWait {
        until_s: u64,
    },
}

impl QueueState {
    /// Why nothing is handed out, or `None` when active.
    pub fn reason(&self) -> Option<&str> {
        match self {
            QueueState::Active => None,
            QueueState::Suspended { reason, .. } => Some(reason),
            QueueState::RateWait { .. } => Some("rate limit reached: waiting for the next send"),
        }
    }

    fn resume_at_s(&self) -> Option<u64> {
        match *self {
            QueueState::Suspended { until_s, .. } => until_s,
            QueueState::RateWait { until_s } => Some(until_s),
            QueueState::Active => None,
        }
    }
}

/// Counters since the queue was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
    pub expired: u64,
}

/// What `defer` decided for a recipient that failed temporarily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferOutcome {
    /// Queued again; the next attempt is at `at_s`.
    Retry { at_s: u64 },
    /// Older than `max_queue_age`: the caller bounces it (category message-expired).
    Expired { item: QueuedRecipient },
}

/// One queue as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub vmta: String,
    pub domain: String,
    /// Recipients waiting for a connection.
    pub ready: usize,
    /// Recipients waiting for their retry time.
    pub deferred: usize,
    pub state: QueueState,
    pub connections: u32,
    /// The earliest retry time among deferred recipients.
    pub next_attempt_s: Option<u64>,
    pub stats: QueueStats,
    /// The reply of the most recent deferral, cut to `MAX_REPLY_TEXT_BYTES`.
    pub last_deferral: Option<String>,
    /// Adaptive backoff level: 0 = normal.
    pub backoff_level: u8,
    /// Connections allowed now (the policy's, or the backoff cap).
    pub max_connections: u32,
}

impl QueueSnapshot {
    /// All recipients in the queue.
    pub fn size(&self) -> usize {
        self.ready + self.deferred
    }
}

struct Queue {
    key: QueueKey,
    policy: Rc<QueuePolicy>,
    ready: VecDeque<QueuedRecipient>,
    deferred: BinaryHeap<Deferred>,
    state: QueueState,
    connections: u32,
    /// Of `connections`, those whose session got through greeting and EHLO.
    established: u32,
    stats: QueueStats,
    rate: SendRate,
    /// The time of this queue's live entry in the core's wake heap.
    scheduled_wake_s: Option<u64>,
    last_deferral: Option<Box<str>>,
    backoff: BackoffState,
    /// Connections the receiver has shown it takes (see `connection_cap`).
    connection_cap: ConnectionCap,
    /// With a cluster-shaped policy: what this core holds of the cluster's caps. Boxed: most
    /// queues are not cluster-shaped and pay one pointer.
    cluster: Option<Box<ClusterShare>>,
    /// In `Queues::changed`: touched since the last upkeep (its snapshot is out of date).
    changed: bool,
    /// In `Queues::watched`: had ready recipients or was in backoff at the last upkeep.
    watched: bool,
    /// Since when the queue has been empty, unconnected and active, as the upkeep saw it.
    idle_since_s: Option<u64>,
    /// The time of this queue's live entry in the idle heap.
    idle_check_s: Option<u64>,
    /// Since when the upkeep has seen ready recipients here with a connection slot free.
    room_since_s: Option<u64>,
    /// When the stuck warning was last logged for this queue.
    stuck_warned_s: Option<u64>,
}

impl Queue {
    fn new(key: QueueKey, policy: Rc<QueuePolicy>) -> Queue {
        Queue {
            key,
            rate: SendRate::new(policy.max_messages_per_minute, policy.max_messages_per_hour),
            cluster: policy_share(&policy),
            policy,
            ready: VecDeque::new(),
            deferred: BinaryHeap::new(),
            state: QueueState::Active,
            connections: 0,
            established: 0,
            stats: QueueStats::default(),
            scheduled_wake_s: None,
            last_deferral: None,
            backoff: BackoffState::Normal,
            connection_cap: ConnectionCap::default(),
            changed: false,
            watched: false,
            idle_since_s: None,
            idle_check_s: None,
            room_since_s: None,
            stuck_warned_s: None,
        }
    }

    /// Connections allowed now.
    fn max_connections(&self) -> u32 {
        self.connection_cap
            .limit(self.max_connections_without_cap())
    }

    /// Connections allowed by the policy, or its backoff limit (this node's share of it while
    /// Redis is down, for a cluster-shaped queue in local-share).
    fn max_connections_without_cap(&self) -> u32 {
        let normal = self
            .backoff
            .max_connections(self.policy.max_connections, &self.policy.backoff);
        share_of(normal, self.local_divisor())
    }

    /// The per-minute and per-hour limits in force (the backoff's, this node's share).
    fn rate_limits(&self) -> (Option<u32>, Option<u32>) {
        let divisor = self.local_divisor();
        let per_minute = self
            .backoff
            .max_messages_per_minute(self.policy.max_messages_per_minute, &self.policy.backoff);
        (
            per_minute.map(|l| share_of(l, divisor)),
            self.policy
                .max_messages_per_hour
                .map(|l| share_of(l, divisor)),
        )
    }

    /// Rebuilds the rate limiter for the current backoff state.
    fn reset_rate(&mut self) {
        let (per_minute, per_hour) = self.rate_limits();
        self.rate = SendRate::new(per_minute, per_hour);
    }

    fn local_divisor(&self) -> Option<u32> {
        self.cluster.as_ref().and_then(|c| c.local_divisor)
    }

    /// Whether a new connection may open: active, below its cap, not waiting for the cluster.
    fn has_connection_room(&self) -> bool {
        self.is_active()
            && self.connections < self.max_connections()
            && self
                .cluster
                .as_ref()
                .is_none_or(|c| c.connect_after_s.is_none())
    }

    /// A new policy: cluster state made anew (or dropped), the rate limiter too.
    fn apply_policy(&mut self, policy: Rc<QueuePolicy>) {
        self.cluster = policy_share(&policy);
        self.policy = policy;
        self.reset_rate();
    }

    /// Applies a backoff transition's effect on the limits and on the count of queues in backoff.
    fn after_transition(
        &mut self,
        t: Option<Transition>,
        in_backoff: &mut usize,
    ) -> Option<Transition> {
        match t {
            Some(Transition::Entered) => *in_backoff += 1,
            Some(Transition::Left(_)) => *in_backoff = in_backoff.saturating_sub(1),
            _ => {}
        }
        if t.is_some() {
            self.reset_rate();
        }
        t
    }

    fn is_active(&self) -> bool {
        self.state == QueueState::Active
    }

    fn next_attempt_s(&self) -> Option<u64> {
        self.deferred.peek().map(|d| d.0.next_attempt_s)
    }

    /// When `due` must look at this queue: its earliest retry, the end of its suspension, or
    /// when it may ask the cluster for a connection again.
    fn wake_s(&self) -> Option<u64> {
        let connect_s = self.cluster.as_ref().and_then(|c| c.connect_after_s);
        [self.next_attempt_s(), self.state.resume_at_s(), connect_s]
            .into_iter()
            .flatten()
            .min()
    }

    /// Empty, with no connection, and not held by a suspension: its idle time runs.
    fn is_unused(&self) -> bool {
        self.is_active()
            && self.ready.is_empty()
            && self.deferred.is_empty()
            && self.connections == 0
    }

    /// Whether forgetting the queue loses nothing: it is unused, out of backoff (a backoff is kept
    /// until it ends), and its rate limiter is at rest (a fresh one would allow exactly the same).
    fn may_forget(&self, now_s: u64) -> bool {
        self.is_unused()
            && !self.backoff.is_backoff()
            && self.rate.is_at_rest(now_s.saturating_mul(1000))
    }

    /// Whether the upkeep must look at it every second: ready recipients to age, or a backoff whose
    /// quiet period may end.
    fn needs_watch(&self) -> bool {
        !self.ready.is_empty() || self.backoff.is_backoff()
    }

    /// Gives memory back after a large drain, keeping capacity within twice the length.
    fn trim(&mut self) {
        if self.ready.capacity() > SHRINK_MIN_CAPACITY
            && self.ready.capacity() > 2 * self.ready.len()
        {
            self.ready
                .shrink_to(self.ready.len() + self.ready.len() / 4);
        }
        if self.deferred.capacity() > SHRINK_MIN_CAPACITY
            && self.deferred.capacity() > 2 * self.deferred.len()
        {
            self.deferred
                .shrink_to(self.deferred.len() + self.deferred.len() / 4);
        }
    }

    fn snapshot(&self) -> QueueSnapshot {
        QueueSnapshot {
            vmta: self.key.vmta.to_string(),
            domain: self.key.domain.to_string(),
            ready: self.ready.len(),
            deferred: self.deferred.len(),
            state: self.state.clone(),
            connections: self.connections,
            next_attempt_s: self.next_attempt_s(),
            stats: self.stats,
            last_deferral: self.last_deferral.as_deref().map(str::to_string),
            backoff_level: self.backoff.level(),
            max_connections: self.max_connections(),
        }
    }
}

/// The delivery queues of one core. Pure state: every method takes the time it needs.
pub struct Queues {
    default_policy: Rc<QueuePolicy>,
    /// Queues by slot; a slot is reused after `remove_idle_queues`.
    slots: Vec<Option<Queue>>,
    free_slots: Vec<u32>,
    /// foldhash, randomly seeded: looked up several times per transaction, and SipHash was
    /// the larger part of that with domains as keys.
    index: foldhash::HashMap<QueueKey, u32>,
    /// Wake-ups `(time_s, slot)`, earliest first; entries not matching their queue are stale.
    wakes: BinaryHeap<Reverse<(u64, u32)>>,
    /// Queues touched since the last upkeep (one entry each, see `Queue::changed`).
    changed: Vec<u32>,
    /// Queues the upkeep looks at every second (see `Queue::needs_watch`); lazily pruned.
    watched: Vec<u32>,
    /// Idle checks `(time_s, slot)`, earliest first, one live entry per unused queue.
    idle_checks: BinaryHeap<Reverse<(u64, u32)>>,
    /// An unused queue is freed after this many seconds (`[shaping] queue_idle_s`).
    idle_s: u64,
    /// Queues in adaptive backoff now.
    in_backoff: usize,
    /// The policy set last, shared by the queues given an equal one (see `shared_policy`).
    last_policy: Rc<QueuePolicy>,
}

impl Queues {
    /// Empty queues; a queue created without its own policy gets `default_policy`.
    pub fn new(default_policy: QueuePolicy) -> Queues {
        let default_policy = Rc::new(default_policy);
        Queues {
            last_policy: Rc::clone(&default_policy),
            default_policy,
            slots: Vec::new(),
            free_slots: Vec::new(),
            index: HashMap::default(),
            wakes: BinaryHeap::new(),
            changed: Vec::new(),
            watched: Vec::new(),
            idle_checks: BinaryHeap::new(),
            idle_s: DEFAULT_QUEUE_IDLE_S,
            in_backoff: 0,
        }
    }

    /// How long an unused queue is kept (`[shaping] queue_idle_s`); at least 1 s. A change (a
    /// reload) applies at once to the queues already idle.
    pub fn set_idle_s(&mut self, idle_s: u64) {
        let idle_s = idle_s.max(1);
        if idle_s != self.idle_s {
            self.idle_s = idle_s;
            self.reschedule_idle_checks();
        }
    }

    /// The policy given to queues created from now on without their own.
    pub fn set_default_policy(&mut self, policy: QueuePolicy) {
        self.default_policy = Rc::new(policy);
    }

    /// Sets a queue's policy (creating the queue). Its rate limiter starts afresh.
    pub fn set_policy(&mut self, key: &QueueKey, policy: impl Into<Rc<QueuePolicy>>) {
        let policy = self.shared_policy(policy.into());
        let slot = self.slot_or_create(key);
        if let Some(q) = self.queue_mut(slot) {
            q.apply_policy(policy);
        }
    }

    /// `policy`, or the equal one given last: most queues share one policy (the `*` domain's),
    /// so a million queues hold one copy of it, not a million.
    fn shared_policy(&mut self, policy: Rc<QueuePolicy>) -> Rc<QueuePolicy> {
        if *policy == *self.last_policy {
            return Rc::clone(&self.last_policy);
        }
        self.last_policy = Rc::clone(&policy);
        policy
    }

    /// A queue's policy, if the queue exists.
    pub fn policy(&self, key: &QueueKey) -> Option<&QueuePolicy> {
        self.queue(key).map(|q| &*q.policy)
    }

    /// Appends a recipient to the queue's ready FIFO (creating the queue).
    pub fn enqueue(&mut self, key: &QueueKey, item: QueuedRecipient) {
        let slot = self.slot_or_create(key);
        if let Some(q) = self.queue_mut(slot) {
            q.ready.push_back(item);
        }
    }

    /// Puts a recipient on the timer for its `next_attempt_s` without counting an attempt (spool
    /// recovery of deferred recipients).
    pub fn schedule(&mut self, key: &QueueKey, item: QueuedRecipient) {
        let slot = self.slot_or_create(key);
        if let Some(q) = self.queue_mut(slot) {
            q.deferred.push(Deferred(item));
        }
        self.reschedule(slot);
    }

    /// Records a temporary failure of `item` at `now_s`: counts the attempt and either puts it on the
    /// timer for the policy's next retry interval (never later than its expiry time, so the last try
    /// happens at `max_queue_age`) or, once `max_queue_age` has passed since `queued_since_s` (when
    /// its message was received), hands it back as expired.
    pub fn defer(
        &mut self,
        key: &QueueKey,
        mut item: QueuedRecipient,
        queued_since_s: u64,
        reply_text: &str,
        now_s: u64,
    ) -> DeferOutcome {
        let slot = self.slot_or_create(key);
        let Some(q) = self.queue_mut(slot) else {
            return DeferOutcome::Expired { item };
        };
        item.attempts = item.attempts.saturating_add(1);
        q.last_deferral = Some(truncate_reply(reply_text).into());
        let expires_s = queued_since_s.saturating_add(q.policy.max_queue_age_s());
        if now_s >= expires_s {
            q.stats.expired += 1;
            return DeferOutcome::Expired { item };
        }
        let interval_s = q
            .backoff
            .retry_interval_s(q.policy.retry_interval_s(item.attempts), &q.policy.backoff);
        let at_s = now_s.saturating_add(interval_s).min(expires_s);
        item.next_attempt_s = at_s;
        q.stats.deferred += 1;
        q.deferred.push(Deferred(item));
        self.reschedule(slot);
        DeferOutcome::Retry { at_s }
    }

    /// Takes up to `max` ready recipients, oldest first; none while the queue is suspended.
    pub fn take_batch(&mut self, key: &QueueKey, max: usize) -> Vec<QueuedRecipient> {
        let Some(q) = self.queue_by_key_mut(key) else {
            return Vec::new();
        };
        if !q.is_active() {
            return Vec::new();
        }
        let n = max.min(q.ready.len());
        let batch: Vec<_> = q.ready.drain(..n).collect();
        q.trim();
        batch
    }

    /// Takes the recipients of one SMTP transaction: the oldest ready recipient and those right behind
    /// it that belong to the same message, up to `max_recipients`. None while suspended.
    pub fn take_transaction(
        &mut self,
        key: &QueueKey,
        max_recipients: usize,
    ) -> Vec<QueuedRecipient> {
        self.take_transaction_from(key, max_recipients, |_| true)
    }

    /// Like `take_transaction`, among the recipients whose message says `TLS-Required: No` only
    /// (for a connection that ignores DANE and MTA-STS): the oldest such recipient and those right
    /// behind it of the same message.
    pub fn take_tls_optional_transaction(
        &mut self,
        key: &QueueKey,
        max_recipients: usize,
    ) -> Vec<QueuedRecipient> {
        self.take_transaction_from(key, max_recipients, |r| r.tls_optional)
    }

    /// The recipients of one transaction starting at the oldest ready recipient `starts` accepts:
    /// it and those right behind it of the same message, up to `max_recipients`.
    fn take_transaction_from(
        &mut self,
        key: &QueueKey,
        max_recipients: usize,
        starts: impl Fn(&QueuedRecipient) -> bool,
    ) -> Vec<QueuedRecipient> {
        let Some(q) = self.queue_by_key_mut(key) else {
            return Vec::new();
        };
        if !q.is_active() {
            return Vec::new();
        }
        let Some(at) = q.ready.iter().position(starts) else {
            return Vec::new();
        };
        let first = q.ready[at].message;
        let n = q
            .ready
            .iter()
            .skip(at)
            .take(max_recipients)
            .take_while(|r| r.message == first)
            .count();
        let batch: Vec<_> = q.ready.drain(at..at + n).collect();
        q.trim();
        batch
    }

    /// Whether a ready recipient's message says `TLS-Required: No` (false while suspended).
    pub fn has_ready_tls_optional(&self, key: &QueueKey) -> bool {
        self.queue(key)
            .is_some_and(|q| q.is_active() && q.ready.iter().any(|r| r.tls_optional))
    }

    /// Takes every ready recipient whose message does not say `TLS-Required: No`, oldest first;
    /// the others stay in order. None while the queue is suspended.
    pub fn take_ready_tls_required(&mut self, key: &QueueKey) -> Vec<QueuedRecipient> {
        let Some(q) = self.queue_by_key_mut(key) else {
            return Vec::new();
        };
        if !q.is_active() {
            return Vec::new();
        }
        let mut required = Vec::new();
        q.ready.retain(|r| {
            if !r.tls_optional {
                required.push(*r);
            }
            r.tls_optional
        });
        q.trim();
        required
    }

    /// Puts recipients taken but never tried (no connection, rate limit) back at the head of the
    /// FIFO, in their order, without counting an attempt.
    pub fn return_unsent(&mut self, key: &QueueKey, items: Vec<QueuedRecipient>) {
        let slot = self.slot_or_create(key);
        if let Some(q) = self.queue_mut(slot) {
            for item in items.into_iter().rev() {
                q.ready.push_front(item);
            }
        }
    }

    /// Moves every deferred recipient whose time has come (`next_attempt_s <= now_s`) to its ready
    /// FIFO and ends timed suspensions that are over. Returns the active queues that received
    /// recipients or resumed with recipients waiting: the driver should start delivering those.
    pub fn due(&mut self, now_s: u64) -> Vec<QueueKey> {
        let mut became_ready = Vec::new();
        while let Some(&Reverse((wake_s, slot))) = self.wakes.peek() {
            if wake_s > now_s {
                break;
            }
            self.wakes.pop();
            let live = self
                .slots
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|q| q.scheduled_wake_s == Some(wake_s));
            if !live {
                continue; // stale: the queue's wake-up moved (or it was freed) since this entry
            }
            let Some(q) = self.queue_mut(slot) else {
                continue;
            };
            q.scheduled_wake_s = None;
            let mut gained = false;
            if q.state
                .resume_at_s()
                .is_some_and(|until_s| until_s <= now_s)
            {
                q.state = QueueState::Active;
                gained = !q.ready.is_empty();
            }
            if let Some(c) = q.cluster.as_mut()
                && c.connect_after_s.is_some_and(|at_s| at_s <= now_s)
            {
                c.connect_after_s = None;
                gained |= !q.ready.is_empty();
            }
            while q
                .deferred
                .peek()
                .is_some_and(|d| d.0.next_attempt_s <= now_s)
            {
                if let Some(Deferred(item)) = q.deferred.pop() {
                    q.ready.push_back(item);
                    gained = true;
                }
            }
            q.trim();
            if gained && q.is_active() {
                became_ready.push(q.key.clone());
            }
            self.reschedule(slot);
        }
        became_ready
    }

    /// The earliest time at which `due` has work, for the driver to sleep until.
    pub fn next_wakeup(&mut self) -> Option<u64> {
        while let Some(&Reverse((wake_s, slot))) = self.wakes.peek() {
            let live = self
                .slots
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|q| q.scheduled_wake_s == Some(wake_s));
            if live {
                return Some(wake_s);
            }
            self.wakes.pop();
        }
        None
    }

    /// Stops handing out recipients of this queue (creating it, so mail arriving later is held too)
    /// until `resume` or, when given, `until_s`.
    pub fn suspend(&mut self, key: &QueueKey, until_s: Option<u64>, reason: &str) {
        let slot = self.slot_or_create(key);
        if let Some(q) = self.queue_mut(slot) {
            q.state = QueueState::Suspended {
                until_s,
                reason: truncate_reply(reason).to_string(),
            };
        }
        self.reschedule(slot);
    }

    /// Holds the queue until `until_s`, when its rate limit allows the next send (no connection is
    /// opened only to wait). Does not override an operator's or a backoff rule's suspension.
    pub fn hold_for_rate(&mut self, key: &QueueKey, until_s: u64) {
        let slot = self.slot_or_create(key);
        if let Some(q) = self.queue_mut(slot)
            && !matches!(q.state, QueueState::Suspended { .. })
        {
            q.state = QueueState::RateWait { until_s };
        }
        self.reschedule(slot);
    }

    /// Gives an existing queue a new policy (after a reload) if it differs: its rate limiter starts
    /// afresh under the new limits and a wait for the old rate ends. Backoff state and suspensions
    /// set by an operator or a backoff rule stay. Returns whether the policy changed.
    pub fn update_policy(&mut self, key: &QueueKey, policy: QueuePolicy) -> bool {
        let Some(&slot) = self.index.get(key) else {
            return false;
        };
        let Some(q) = self.queue_mut(slot) else {
            return false;
        };
        if *q.policy == policy {
            return false;
        }
        let policy = self.shared_policy(Rc::new(policy));
        let Some(q) = self.queue_mut(slot) else {
            return false;
        };
        q.apply_policy(policy);
        if matches!(q.state, QueueState::RateWait { .. }) {
            q.state = QueueState::Active;
        }
        self.reschedule(slot);
        true
    }

    /// Every queue's key.
    pub fn keys(&self) -> Vec<QueueKey> {
        self.index.keys().cloned().collect()
    }

    /// Lets a suspended queue deliver again. Returns whether it has ready recipients (the driver
    /// should start delivering); false if the queue does not exist.
    pub fn resume(&mut self, key: &QueueKey) -> bool {
        let Some(&slot) = self.index.get(key) else {
            return false;
        };
        let has_ready = match self.queue_mut(slot) {
            Some(q) => {
                q.state = QueueState::Active;
                !q.ready.is_empty()
            }
            None => false,
        };
        self.reschedule(slot);
        has_ready
    }

    /// Makes every deferred recipient ready now, whatever its retry time (`POST /v1/queues/retry`,
    /// after a receiver was fixed); returns how many. A suspension stays (`resume` ends it).
    pub fn retry_now(&mut self, key: &QueueKey) -> usize {
        let Some(&slot) = self.index.get(key) else {
            return 0;
        };
        let Some(q) = self.queue_mut(slot) else {
            return 0;
        };
        let mut moved = 0;
        while let Some(Deferred(item)) = q.deferred.pop() {
            q.ready.push_back(item);
            moved += 1;
        }
        q.trim();
        self.reschedule(slot);
        moved
    }

    /// Empties the queue, ready and deferred, for the caller to bounce. Not counted here: the
    /// caller counts each one (`record_bounced`) once its bounce is recorded, as for any bounce.
    /// Recipients in flight on open connections are the driver's.
    pub fn bounce_all(&mut self, key: &QueueKey) -> Vec<QueuedRecipient> {
        self.take_all(key)
    }

    /// Empties the queue: the ready recipients in order, then the deferred ones, earliest retry
    /// first (whether or not the queue is suspended). Recipients in flight stay the driver's.
    pub fn take_all(&mut self, key: &QueueKey) -> Vec<QueuedRecipient> {
        let Some(&slot) = self.index.get(key) else {
            return Vec::new();
        };
        let Some(q) = self.queue_mut(slot) else {
            return Vec::new();
        };
        let mut drained: Vec<_> = q.ready.drain(..).collect();
        let mut deferred: Vec<_> = std::mem::take(&mut q.deferred)
            .into_vec()
            .into_iter()
            .map(|d| d.0)
            .collect();
        deferred.sort_unstable_by_key(QueuedRecipient::timer_order);
        drained.append(&mut deferred);
        q.trim();
        self.reschedule(slot);
        drained
    }

    /// Takes up to `max` recipients for a hand-over to another node (a drain): the ready ones,
    /// oldest first, then the deferred ones, earliest retry first, whatever their retry time and
    /// whether or not the queue is suspended. Not counted here: the caller puts back what the
    /// other node did not take (`return_unsent`, `schedule`).
    pub fn take_for_handover(&mut self, key: &QueueKey, max: usize) -> Vec<QueuedRecipient> {
        let Some(&slot) = self.index.get(key) else {
            return Vec::new();
        };
        let Some(q) = self.queue_mut(slot) else {
            return Vec::new();
        };
        let n = max.min(q.ready.len());
        let mut taken: Vec<_> = q.ready.drain(..n).collect();
        while taken.len() < max {
            match q.deferred.pop() {
                Some(Deferred(item)) => taken.push(item),
                None => break,
            }
        }
        q.trim();
        self.reschedule(slot);
        taken
    }

    /// Opens a connection slot if the queue is active, below `max_connections` and not waiting
    /// for a connection slot of the cluster.
    pub fn try_open_connection(&mut self, key: &QueueKey) -> bool {
        let slot = self.slot_or_create(key);
        match self.queue_mut(slot) {
            Some(q) if q.has_connection_room() => {
                q.connections += 1;
                true
            }
            _ => false,
        }
    }

    /// Releases a connection slot taken by `try_open_connection`.
    pub fn connection_closed(&mut self, key: &QueueKey) {
        if let Some(q) = self.queue_by_key_mut(key) {
            q.connections = q.connections.saturating_sub(1);
        }
    }

    /// Takes one transaction from the queue's rate limits at `now_ms` (call before MAIL FROM);
    /// `Err` says how long to wait, or that a cluster-shaped queue must reserve sends first.
    /// Queues without limits always allow.
    pub fn may_send(&mut self, key: &QueueKey, now_ms: u64) -> Result<(), RateWait> {
        let slot = self.slot_or_create(key);
        let Some(q) = self.queue_mut(slot) else {
            return Ok(());
        };
        let (per_minute, per_hour) = q.rate_limits();
        match q.cluster.as_mut() {
            Some(c) if c.local_divisor.is_none() && (per_minute, per_hour) != (None, None) => {
                match c.slots.take(now_ms) {
                    SlotCheck::Take => Ok(()),
                    SlotCheck::Wait(ms) => Err(RateWait::For(ms)),
                    SlotCheck::Reserve => Err(RateWait::Reserve),
                }
            }
            _ => q.rate.may_send(now_ms).map_err(RateWait::For),
        }
    }

    /// The cluster scope of a queue's policy (`None`: not cluster-shaped, or no such queue).
    pub fn cluster_scope(&self, key: &QueueKey) -> Option<ClusterScope> {
        let q = self.queue(key)?;
        q.cluster.as_ref().and(q.policy.cluster)
    }

    /// A reservation of sends for a cluster-shaped queue starts at `now_ms`: what to ask for
    /// (how many, spaced how), or `None` when the queue has no rate to reserve.
    pub fn begin_reserve(&mut self, key: &QueueKey, now_ms: u64) -> Option<(u32, SendSpacing)> {
        let q = self.queue_by_key_mut(key)?;
        let (per_minute, per_hour) = q.rate_limits();
        let spacing = SendSpacing::of(per_minute, per_hour)?;
        let want = q.cluster.as_mut()?.slots.begin_reserve(now_ms);
        Some((want, spacing))
    }

    /// Redis reserved `count` sends (`count` 0: none before `first_in_us`), the first
    /// `first_in_us` after `now_ms`.
    pub fn reserved(
        &mut self,
        key: &QueueKey,
        now_ms: u64,
        count: u32,
        first_in_us: u64,
        spacing: SendSpacing,
    ) {
        let Some(c) = self.queue_by_key_mut(key).and_then(|q| q.cluster.as_mut()) else {
            return;
        };
        if count == 0 {
            c.slots.refused(now_ms, first_in_us.div_ceil(1_000));
        } else {
            c.slots.granted(now_ms, count, first_in_us, spacing);
        }
    }

    /// A reservation got no answer (Redis unreachable).
    pub fn reserve_failed(&mut self, key: &QueueKey) {
        if let Some(c) = self.queue_by_key_mut(key).and_then(|q| q.cluster.as_mut()) {
            c.slots.failed();
        }
    }

    /// The cluster's connection cap for this queue is full: no new connection before `until_s`
    /// (`due` reports the queue then); its open connections go on.
    pub fn wait_for_cluster_connection(&mut self, key: &QueueKey, until_s: u64) {
        let Some(&slot) = self.index.get(key) else {
            return;
        };
        if let Some(c) = self.queue_mut(slot).and_then(|q| q.cluster.as_mut()) {
            c.connect_after_s = Some(until_s);
        }
        self.reschedule(slot);
    }

    /// Redis is down (`Some(live nodes ...)` with local-share) or back (`None`): a cluster-shaped
    /// queue enforces 1/divisor of its caps on its own meanwhile. Returns whether it changed.
    pub fn set_local_share(&mut self, key: &QueueKey, divisor: Option<u32>) -> bool {
        // Looked at first without noting a change: this runs before every transaction.
        let same = self
            .queue(key)
            .and_then(|q| q.cluster.as_ref())
            .is_none_or(|c| c.local_divisor == divisor);
        if same {
            return false;
        }
        let Some(q) = self.queue_by_key_mut(key) else {
            return false;
        };
        if let Some(c) = q.cluster.as_mut() {
            c.local_divisor = divisor;
        }
        q.reset_rate();
        true
    }

    /// Connections the queue may have open now (0 when it does not exist).
    pub fn max_connections(&self, key: &QueueKey) -> u32 {
        self.queue(key).map_or(0, Queue::max_connections)
    }

    /// Connections of the queue open now (0 when it does not exist).
    pub fn connections(&self, key: &QueueKey) -> u32 {
        self.queue(key).map_or(0, |q| q.connections)
    }

    /// A connection of the queue got through greeting and EHLO: the receiver works.
    pub fn connection_established(&mut self, key: &QueueKey) {
        if let Some(q) = self.queue_by_key_mut(key) {
            q.established = (q.established + 1).min(q.connections);
        }
    }

    /// An established connection of the queue ended.
    pub fn established_connection_ended(&mut self, key: &QueueKey) {
        if let Some(q) = self.queue_by_key_mut(key) {
            q.established = q.established.saturating_sub(1);
        }
    }

    /// Connections of the queue that got through greeting and EHLO and are still open: while one
    /// is, a failed attempt says something about that attempt, not that the destination is down.
    pub fn established_connections(&self, key: &QueueKey) -> u32 {
        self.queue(key).map_or(0, |q| q.established)
    }

    /// The receiver refused one of the queue's connections (421 at the greeting, "too many
    /// connections", or no host reached while others were open): the queue is capped at its other
    /// open connections, at least 1. Returns the change to log.
    pub fn connection_refused(&mut self, key: &QueueKey) -> Option<CapChange> {
        let q = self.queue_by_key_mut(key)?;
        q.connection_cap.refused(q.connections.saturating_sub(1))
    }

    /// `count` recipients were delivered on a connection of the queue: a learned connection cap
    /// rises again (see `connection_cap`). Returns the change to log.
    pub fn connection_cap_delivered(&mut self, key: &QueueKey, count: u32) -> Option<CapChange> {
        let q = self.queue_by_key_mut(key)?;
        let normal = q.max_connections_without_cap();
        q.connection_cap.delivered(count, normal)
    }

    /// Whether the queue has more connections open than it may now (it entered backoff): the
    /// driver closes one after its current transaction.
    pub fn over_connection_cap(&self, key: &QueueKey) -> bool {
        self.queue(key)
            .is_some_and(|q| q.connections > q.max_connections())
    }

    /// Counts `count` recipients delivered; in backoff they count towards recovery.
    pub fn record_delivered(&mut self, key: &QueueKey, count: u64) -> Option<Transition> {
        let slot = *self.index.get(key)?;
        let mut in_backoff = self.in_backoff;
        let q = self.queue_mut(slot)?;
        q.stats.delivered += count;
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let t = q.backoff.on_delivered(count, &q.policy.backoff);
        let t = q.after_transition(t, &mut in_backoff);
        self.in_backoff = in_backoff;
        t
    }

    /// A reply matched a backoff rule at `now_s`: enter (or deepen) the queue's backoff.
    pub fn backoff_match(&mut self, key: &QueueKey, now_s: u64) -> Option<Transition> {
        let slot = self.slot_or_create(key);
        let mut in_backoff = self.in_backoff;
        let q = self.queue_mut(slot)?;
        let t = q.backoff.on_match(now_s);
        let t = q.after_transition(t, &mut in_backoff);
        self.in_backoff = in_backoff;
        t
    }

    /// The backoff state of a queue (Normal when it does not exist).
    pub fn backoff_state(&self, key: &QueueKey) -> BackoffState {
        self.queue(key).map(|q| q.backoff).unwrap_or_default()
    }

    /// Queues in backoff now.
    pub fn queues_in_backoff(&self) -> usize {
        self.in_backoff
    }

    /// Counts `count` recipients bounced on a permanent failure.
    pub fn record_bounced(&mut self, key: &QueueKey, count: u64) {
        if let Some(q) = self.queue_by_key_mut(key) {
            q.stats.bounced += count;
        }
    }

    /// Every queue, sorted by VMTA then domain, for the API.
    pub fn snapshot(&self) -> Vec<QueueSnapshot> {
        let mut queues: Vec<_> = self.slots.iter().flatten().collect();
        queues.sort_by(|a, b| a.key.cmp(&b.key));
        queues.into_iter().map(Queue::snapshot).collect()
    }

    /// One queue, for the API.
    pub fn queue_snapshot(&self, key: &QueueKey) -> Option<QueueSnapshot> {
        self.queue(key).map(Queue::snapshot)
    }

    /// Ready recipients and open connections of an active queue; `None` when suspended or unknown.
    pub fn ready_and_connections(&self, key: &QueueKey) -> Option<(usize, u32)> {
        self.queue(key)
            .filter(|q| q.is_active())
            .map(|q| (q.ready.len(), q.connections))
    }

    /// Whether the queue is active and has recipients ready to hand out.
    pub fn has_ready(&self, key: &QueueKey) -> bool {
        self.queue(key)
            .is_some_and(|q| q.is_active() && !q.ready.is_empty())
    }

    /// Active queues with ready recipients (for the driver after a restart or a reload).
    pub fn ready_keys(&self) -> Vec<QueueKey> {
        self.slots
            .iter()
            .flatten()
            .filter(|q| q.is_active() && !q.ready.is_empty())
            .map(|q| q.key.clone())
            .collect()
    }

    /// Recipients in all queues, ready and deferred.
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|q| q.ready.len() + q.deferred.len())
            .sum()
    }

    /// Whether no queue holds a recipient.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many queues exist.
    pub fn queue_count(&self) -> usize {
        self.index.len()
    }

    fn queue(&self, key: &QueueKey) -> Option<&Queue> {
        let slot = *self.index.get(key)?;
        self.slots.get(slot as usize)?.as_ref()
    }

    /// The queue in `slot`, for a change: it is noted for the next upkeep (snapshot, idle time).
    fn queue_mut(&mut self, slot: u32) -> Option<&mut Queue> {
        let q = self.slots.get_mut(slot as usize)?.as_mut()?;
        if !q.changed {
            q.changed = true;
            self.changed.push(slot);
        }
        Some(q)
    }

    fn queue_by_key_mut(&mut self, key: &QueueKey) -> Option<&mut Queue> {
        let slot = *self.index.get(key)?;
        self.queue_mut(slot)
    }

    fn slot_or_create(&mut self, key: &QueueKey) -> u32 {
        if let Some(&slot) = self.index.get(key) {
            return slot;
        }
        let queue = Queue::new(key.clone(), Rc::clone(&self.default_policy));
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                if let Some(entry) = self.slots.get_mut(slot as usize) {
                    *entry = Some(queue);
                }
                slot
            }
            None => {
                self.slots.push(Some(queue));
                // More than u32::MAX queues on one core cannot fit in memory anyway.
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key.clone(), slot);
        let _ = self.queue_mut(slot); // a new queue is a change
        slot
    }

    /// Keeps the wake heap's live entry of `slot` in step with the queue's wake time.
    fn reschedule(&mut self, slot: u32) {
        let Some(q) = self.queue_mut(slot) else {
            return;
        };
        let wake = q.wake_s();
        if wake != q.scheduled_wake_s {
            q.scheduled_wake_s = wake;
            if let Some(wake_s) = wake {
                self.wakes.push(Reverse((wake_s, slot)));
            }
        }
        self.compact_wakes();
    }

    /// Rebuilds the wake heap when stale entries outnumber the live ones (at most one per queue).
    fn compact_wakes(&mut self) {
        if self.wakes.len() <= 2 * self.slots.len() + SHRINK_MIN_CAPACITY {
            return;
        }
        self.wakes = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, q)| {
                let wake_s = q.as_ref()?.scheduled_wake_s?;
                Some(Reverse((wake_s, slot as u32)))
            })
            .collect();
    }
}

/// Why a send may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateWait {
    /// Wait this many ms.
    For(u64),
    /// A cluster-shaped queue holds no reserved send: reserve some (`begin_reserve`).
    Reserve,
}

/// A cluster-shaped queue's state, for a policy that asks for one.
fn policy_share(policy: &QueuePolicy) -> Option<Box<ClusterShare>> {
    policy.cluster.map(|_| Box::default())
}

/// `1/divisor` of `limit`, at least 1 (`None`: all of it).
fn share_of(limit: u32, divisor: Option<u32>) -> u32 {
    divisor.map_or(limit, |d| (limit / d.max(1)).max(1))
}

/// `text` cut to at most `MAX_REPLY_TEXT_BYTES` on a character boundary.
fn truncate_reply(text: &str) -> &str {
    if text.len() <= MAX_REPLY_TEXT_BYTES {
        return text;
    }
    let mut end = MAX_REPLY_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

mod by_message;
mod upkeep;
pub use by_message::{FoundRecipient, ScanCursor};
pub use upkeep::{STUCK_AFTER_S, Stuck, Upkeep};

#[cfg(test)]
mod tests;
