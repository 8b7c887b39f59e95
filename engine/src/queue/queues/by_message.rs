//! The recipients of one message in a core's queues (the API's message lookup and bounce).
//!
//! Queues are not indexed by message (that would cost memory per queued recipient), so finding a
//! message means looking at every queued recipient of the core. A core may queue millions, so
//! the caller looks at a bounded slice at a time (`scan_for_message` with a budget) and lets
//! the reactor poll between slices: no slice holds it for long. The queues may change between slices (a
//! recipient handed to a connection, deferred, made ready): one that moved meanwhile may be
//! missed or seen twice, which the caller's answer allows for (it reports the recipients it did
//! not find as in flight).

use super::{Deferred, QueueKey, QueuedRecipient, Queues};
use crate::envelope::MessageId;

/// Where a scan stands: a queue slot, and a position in that queue (its ready FIFO first, then
/// its deferred heap in storage order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanCursor {
    slot: u32,
    position: usize,
}

/// A queued recipient of the message looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRecipient {
    pub key: QueueKey,
    pub item: QueuedRecipient,
    /// In the deferred heap (else in the ready FIFO).
    pub deferred: bool,
}

impl Queues {
    /// Looks at about `budget` queued recipients from `from` on (each queue slot passed costs one
    /// more) and appends those of message `id` to `found`. Returns where to go on from, or `None`
    /// once every queue was looked at.
    pub fn scan_for_message(
        &self,
        id: MessageId,
        from: ScanCursor,
        budget: usize,
        found: &mut Vec<FoundRecipient>,
    ) -> Option<ScanCursor> {
        let mut cursor = from;
        let mut left = budget.max(1);
        while let Some(entry) = self.slots.get(cursor.slot as usize) {
            if let Some(q) = entry {
                let ready = q.ready.len();
                let heap = q.deferred.as_slice();
                let total = ready + heap.len();
                while cursor.position < total {
                    if left == 0 {
                        return Some(cursor);
                    }
                    let (start, deferred) = (cursor.position, cursor.position >= ready);
                    let end = if deferred { total } else { ready }.min(start + left);
                    let matching = |item: &QueuedRecipient| item.message == id;
                    let push = |item: &QueuedRecipient| FoundRecipient {
                        key: q.key.clone(),
                        item: *item,
                        deferred,
                    };
                    if deferred {
                        let slice = heap.get(start - ready..end - ready).unwrap_or_default();
                        found.extend(slice.iter().map(|d| &d.0).filter(|i| matching(i)).map(push));
                    } else {
                        found.extend(q.ready.range(start..end).filter(|i| matching(i)).map(push));
                    }
                    left -= end - start;
                    cursor.position = end;
                }
            }
            cursor = ScanCursor {
                slot: cursor.slot + 1,
                position: 0,
            };
            left = left.saturating_sub(1);
            if left == 0 && (cursor.slot as usize) < self.slots.len() {
                return Some(cursor);
            }
        }
        None
    }

    /// Takes every recipient of message `id` out of the queue `key`, ready and deferred, for the
    /// caller to bounce. One pass over the queue.
    pub fn take_message(&mut self, key: &QueueKey, id: MessageId) -> Vec<QueuedRecipient> {
        let Some(&slot) = self.index.get(key) else {
            return Vec::new();
        };
        let Some(q) = self.queue_mut(slot) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        q.ready.retain(|item| {
            let keep = item.message != id;
            if !keep {
                taken.push(*item);
            }
            keep
        });
        q.deferred.retain(|Deferred(item)| {
            let keep = item.message != id;
            if !keep {
                taken.push(*item);
            }
            keep
        });
        q.trim();
        self.reschedule(slot);
        taken
    }

    /// Why the queue hands out nothing now (suspended, waiting for its rate), if it does not.
    pub fn held_reason(&self, key: &QueueKey) -> Option<&str> {
        self.queue(key).and_then(|q| q.state.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueuePolicy;

    fn item(seq: u64, recipient: u32) -> QueuedRecipient {
        QueuedRecipient::new(MessageId { core: 0, seq }, recipient, 100)
    }

    /// Scans with `budget` until done, counting the slices.
    fn scan_all(q: &Queues, id: MessageId, budget: usize) -> (Vec<FoundRecipient>, usize) {
        let mut found = Vec::new();
        let mut cursor = ScanCursor::default();
        let mut slices = 1;
        while let Some(next) = q.scan_for_message(id, cursor, budget, &mut found) {
            cursor = next;
            slices += 1;
            assert!(slices < 100_000, "the scan moves forward");
        }
        (found, slices)
    }

    #[test]
    fn finds_ready_and_deferred_recipients_of_one_message_in_slices() {
        let mut q = Queues::new(QueuePolicy::default());
        let a = QueueKey::new("v1", "a.example");
        let b = QueueKey::new("v2", "b.example");
        for seq in 0..1000 {
            q.enqueue(&a, item(seq, 0));
        }
        q.enqueue(&a, item(7, 3));
        let mut late = item(7, 1);
        late.next_attempt_s = 5000;
        late.attempts = 2;
        q.schedule(&b, late);
        for seq in 2000..2500 {
            let mut other = item(seq, 0);
            other.next_attempt_s = 4000 + seq;
            q.schedule(&b, other);
        }
        let id = MessageId { core: 0, seq: 7 };
        let (whole, slices) = scan_all(&q, id, usize::MAX);
        assert_eq!(slices, 1);
        let (sliced, slices) = scan_all(&q, id, 64);
        assert!(slices > 1500 / 64, "{slices} slices");
        for found in [whole, sliced] {
            let mut seen: Vec<(u32, bool, &str)> = found
                .iter()
                .map(|f| (f.item.recipient, f.deferred, &*f.key.vmta))
                .collect();
            seen.sort_unstable();
            assert_eq!(
                seen,
                vec![(0, false, "v1"), (1, true, "v2"), (3, false, "v1")]
            );
            let deferred = found.iter().find(|f| f.deferred).unwrap();
            assert_eq!(deferred.item.attempts, 2);
            assert_eq!(deferred.item.next_attempt_s, 5000);
        }
        // A message nobody holds: nothing, and the scan still ends.
        let (none, _) = scan_all(&q, MessageId { core: 1, seq: 7 }, 10);
        assert!(none.is_empty());
        // No queue at all.
        let empty = Queues::new(QueuePolicy::default());
        assert_eq!(scan_all(&empty, id, 1), (Vec::new(), 1));
    }

    #[test]
    fn take_message_leaves_the_others_in_order_and_the_timer_right() {
        let mut q = Queues::new(QueuePolicy::default());
        let k = QueueKey::new("v1", "a.example");
        for seq in 0..5 {
            q.enqueue(&k, item(seq, 0));
        }
        q.enqueue(&k, item(2, 1));
        let mut early = item(2, 2);
        early.next_attempt_s = 150;
        q.schedule(&k, early);
        let mut later = item(9, 0);
        later.next_attempt_s = 900;
        q.schedule(&k, later);
        assert_eq!(q.next_wakeup(), Some(150));

        let mut taken = q.take_message(&k, MessageId { core: 0, seq: 2 });
        taken.sort_unstable_by_key(|i| i.recipient);
        assert_eq!(
            taken.iter().map(|i| i.recipient).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(
            q.next_wakeup(),
            Some(900),
            "the taken retry no longer wakes"
        );
        let order: Vec<u64> = q.take_batch(&k, 10).iter().map(|i| i.message.seq).collect();
        assert_eq!(order, vec![0, 1, 3, 4]);
        assert!(
            q.take_message(
                &QueueKey::new("v9", "none.example"),
                MessageId { core: 0, seq: 2 }
            )
            .is_empty()
        );
    }

    #[test]
    fn held_reason_names_a_suspension() {
        let mut q = Queues::new(QueuePolicy::default());
        let k = QueueKey::new("v1", "a.example");
        q.enqueue(&k, item(1, 0));
        assert_eq!(q.held_reason(&k), None);
        q.suspend(&k, None, "warming up");
        assert_eq!(q.held_reason(&k), Some("warming up"));
    }
}
