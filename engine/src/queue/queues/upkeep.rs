//! The once-a-second upkeep of a core's queues, costing what changed rather than what exists:
//! - **Changes for the API.** Every method that alters a queue notes it once (`Queues::changed`);
//!   the upkeep hands out a snapshot of those queues and the keys of the queues freed, and the API's
//!   board applies them. A core with a million quiet queues publishes nothing.
//! - **Idle queues are freed.** A queue that is empty, unconnected and active (an operator's
//!   suspension holds it) for `queue_idle_s` is forgotten with everything keyed by it: policy, rate
//!   state, counters, last reply. Each such queue has one entry in a min-heap of idle checks; a
//!   queue in backoff, or whose rate limiter still counts a recent send, is checked again later, so
//!   forgetting it never lets a burst through or cuts a backoff short.
//! - **The stuck detector.** The queues with ready recipients (and those in backoff, whose quiet
//!   period may end) are watched: the age of the oldest ready recipient of a queue that has a
//!   connection slot free, and the queues where it passed `STUCK_AFTER_S`.
//! - **Memory goes back.** When most slots are free, the slots are compacted and every structure
//!   indexed by slot is rebuilt from the queues' own fields, at its live size.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::{Queue, QueueKey, QueueSnapshot, Queues, SHRINK_MIN_CAPACITY, Transition};

/// A ready recipient that waits longer than this, in seconds, while its queue has a connection slot
/// free, is stuck: the upkeep reports its queue (the delivery side logs a warning).
pub const STUCK_AFTER_S: u64 = 60;

/// A queue whose oldest ready recipient waited more than `STUCK_AFTER_S` with a slot free.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub key: QueueKey,
    /// Seconds the oldest ready recipient has waited with a connection slot free.
    pub waited_s: u64,
    pub ready: usize,
    pub connections: u32,
    pub max_connections: u32,
}

/// What one upkeep found and did.
#[derive(Debug, Default)]
pub struct Upkeep {
    /// The queues that changed since the last upkeep, as the API lists them.
    pub updated: Vec<QueueSnapshot>,
    /// The queues freed by this upkeep.
    pub removed: Vec<QueueKey>,
    /// Backoffs whose quiet period ended.
    pub backoff_left: Vec<(QueueKey, Transition)>,
    /// Queues that exist now.
    pub live: usize,
    /// Seconds the oldest ready recipient has waited with a connection slot free (0: none waits).
    pub oldest_ready_s: u64,
    /// Stuck queues, each reported at most once per `STUCK_AFTER_S`.
    pub stuck: Vec<Stuck>,
    /// Queues whose connections are all busy (in a transaction with a slow or stalled receiver)
    /// while a ready recipient has waited `STARVED_AFTER_S` with a slot free: each may open one
    /// more connection, so one stalled receiver cannot hold a queue's other mail.
    pub starved: Vec<QueueKey>,
}

/// Seconds a ready recipient waits with a connection slot free, while the queue has connections,
/// before the queue may open one more.
pub const STARVED_AFTER_S: u64 = 2;

impl Queues {
    /// Runs the upkeep at `now_s` (the delivery side calls it once a second).
    pub fn upkeep(&mut self, now_s: u64) -> Upkeep {
        let mut out = Upkeep::default();
        self.watch(now_s, &mut out);
        self.take_changes(now_s, &mut out);
        self.free_idle(now_s, &mut out);
        self.compact();
        out.live = self.index.len();
        out
    }

    /// The watched queues: backoff quiet periods, the oldest ready recipient, stuck queues.
    fn watch(&mut self, now_s: u64, out: &mut Upkeep) {
        // In place: the upkeep allocates nothing per second for the queues it watches.
        let (slots, changed) = (&mut self.slots, &mut self.changed);
        let mut in_backoff = self.in_backoff;
        self.watched.retain(|&slot| {
            let Some(q) = slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                return false;
            };
            if !q.watched {
                return false; // a stale entry of a slot reused since
            }
            if !q.needs_watch() {
                q.watched = false;
                q.room_since_s = None;
                return false;
            }
            if q.backoff.is_backoff() {
                let t = q.backoff.on_tick(now_s, &q.policy.backoff);
                if let Some(t) = q.after_transition(t, &mut in_backoff) {
                    out.backoff_left.push((q.key.clone(), t));
                    if !q.changed {
                        q.changed = true;
                        changed.push(slot);
                    }
                }
            }
            if let Some(waited_s) = ready_wait_s(q, now_s) {
                out.oldest_ready_s = out.oldest_ready_s.max(waited_s);
                if waited_s >= STARVED_AFTER_S && q.connections > 0 {
                    out.starved.push(q.key.clone());
                }
                let warned_lately = q
                    .stuck_warned_s
                    .is_some_and(|at_s| now_s < at_s.saturating_add(STUCK_AFTER_S));
                if waited_s > STUCK_AFTER_S && !warned_lately {
                    q.stuck_warned_s = Some(now_s);
                    out.stuck.push(Stuck {
                        key: q.key.clone(),
                        waited_s,
                        ready: q.ready.len(),
                        connections: q.connections,
                        max_connections: q.max_connections(),
                    });
                }
            }
            true
        });
        self.in_backoff = in_backoff;
    }

    /// Snapshots of the queues changed since the last upkeep; starts or stops their idle clocks.
    fn take_changes(&mut self, now_s: u64, out: &mut Upkeep) {
        let mut changed = std::mem::take(&mut self.changed);
        out.updated.reserve(changed.len());
        for &slot in &changed {
            let Some(q) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            if !q.changed {
                continue;
            }
            q.changed = false;
            out.updated.push(q.snapshot());
            if q.needs_watch() && !q.watched {
                q.watched = true;
                self.watched.push(slot);
                // Starts the clock of a ready recipient waiting with a slot free.
                let _ = ready_wait_s(q, now_s);
            }
            if q.is_unused() {
                // Any change restarts the idle clock.
                q.idle_since_s = Some(now_s);
                if q.idle_check_s.is_none() {
                    let at_s = now_s.saturating_add(self.idle_s);
                    q.idle_check_s = Some(at_s);
                    self.idle_checks.push(Reverse((at_s, slot)));
                }
            } else {
                q.idle_since_s = None;
            }
        }
        // The list is empty again; its buffer is kept for the next second (trimmed in `compact`).
        changed.clear();
        self.changed = changed;
    }

    /// Frees the queues unused for `idle_s` that may be forgotten; checks the others again later.
    fn free_idle(&mut self, now_s: u64, out: &mut Upkeep) {
        while let Some(&Reverse((at_s, slot))) = self.idle_checks.peek() {
            if at_s > now_s {
                break;
            }
            self.idle_checks.pop();
            let idle_s = self.idle_s;
            let Some(q) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            if q.idle_check_s != Some(at_s) {
                continue; // stale
            }
            q.idle_check_s = None;
            let Some(since_s) = q.idle_since_s else {
                continue; // used again since: a later change starts a new check
            };
            let next_s = if since_s.saturating_add(idle_s) > now_s {
                since_s.saturating_add(idle_s)
            } else if q.may_forget(now_s) {
                if let Some(q) = self.slots.get_mut(slot as usize).and_then(Option::take) {
                    self.index.remove(&q.key);
                    self.free_slots.push(slot);
                    out.removed.push(q.key);
                }
                continue;
            } else {
                // In backoff, or its rate limiter still counts a send: look again later.
                now_s.saturating_add(idle_s)
            };
            q.idle_check_s = Some(next_s);
            self.idle_checks.push(Reverse((next_s, slot)));
        }
    }

    /// Rebuilds the idle heap after `idle_s` changed: each unused queue is due `idle_s` after it
    /// became unused.
    pub(super) fn reschedule_idle_checks(&mut self) {
        let idle_s = self.idle_s;
        let mut checks = Vec::new();
        for (slot, q) in self.slots.iter_mut().enumerate() {
            let Some(q) = q.as_mut() else { continue };
            q.idle_check_s = q.idle_since_s.map(|since_s| since_s.saturating_add(idle_s));
            if let Some(at_s) = q.idle_check_s {
                checks.push(Reverse((at_s, slot as u32)));
            }
        }
        self.idle_checks = BinaryHeap::from(checks);
    }

    /// When at most a quarter of the slots hold a queue, moves the queues to the front and rebuilds
    /// every slot-indexed structure from the queues' fields; otherwise only trims capacities.
    fn compact(&mut self) {
        let live = self.index.len();
        if self.slots.len() > SHRINK_MIN_CAPACITY && live.saturating_mul(4) <= self.slots.len() {
            let queues: Vec<Queue> = std::mem::take(&mut self.slots)
                .into_iter()
                .flatten()
                .collect();
            let mut index = HashMap::with_capacity_and_hasher(queues.len(), Default::default());
            let (mut wakes, mut checks, mut changed, mut watched) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (slot, q) in queues.iter().enumerate() {
                let slot = slot as u32;
                index.insert(q.key.clone(), slot);
                if let Some(at_s) = q.scheduled_wake_s {
                    wakes.push(Reverse((at_s, slot)));
                }
                if let Some(at_s) = q.idle_check_s {
                    checks.push(Reverse((at_s, slot)));
                }
                if q.changed {
                    changed.push(slot);
                }
                if q.watched {
                    watched.push(slot);
                }
            }
            self.slots = queues.into_iter().map(Some).collect();
            self.index = index;
            self.wakes = BinaryHeap::from(wakes);
            self.idle_checks = BinaryHeap::from(checks);
            self.changed = changed;
            self.watched = watched;
            self.free_slots = Vec::new();
            return;
        }
        trim_vec(&mut self.free_slots);
        trim_vec(&mut self.watched);
        trim_vec(&mut self.changed);
        if self.index.capacity() > SHRINK_MIN_CAPACITY
            && self.index.capacity() > 4 * self.index.len()
        {
            self.index.shrink_to(2 * self.index.len());
        }
        for heap in [&mut self.wakes, &mut self.idle_checks] {
            if heap.capacity() > SHRINK_MIN_CAPACITY && heap.capacity() > 4 * heap.len() {
                heap.shrink_to(2 * heap.len());
            }
        }
    }
}

/// How long the oldest ready recipient of `q` has waited with a connection slot free: since it
/// became ready, or since the queue had a slot free, whichever is later (a queue at its connection
/// cap is busy, not stuck). `None` when nothing waits that way.
fn ready_wait_s(q: &mut Queue, now_s: u64) -> Option<u64> {
    let head_s = q.ready.front().map(|r| r.next_attempt_s);
    match head_s {
        Some(head_s) if q.has_connection_room() => {
            let room_since_s = *q.room_since_s.get_or_insert(now_s);
            Some(now_s.saturating_sub(head_s.max(room_since_s)))
        }
        _ => {
            q.room_since_s = None;
            None
        }
    }
}

fn trim_vec<T>(v: &mut Vec<T>) {
    if v.capacity() > SHRINK_MIN_CAPACITY && v.capacity() > 4 * v.len() {
        v.shrink_to(2 * v.len());
    }
}

#[cfg(test)]
mod tests;
