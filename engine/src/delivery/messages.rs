//! The messages with recipients queued on one core (`MessageTable`: where each record lies, how
//! many of its recipients are still here) and the small cache of envelopes read back from the
//! spool (`MessageCache`).

use std::collections::HashMap;
use std::rc::Rc;

use crate::envelope::MessageId;
use crate::spool::{RecordLocation, SeqMap, StoredMessage};

/// A message with recipients queued on this core: where its record lies in the spool of the message
/// id's core, how many of its recipients are still here, and its customer's slot. 16 bytes (the
/// slot fills what was padding in the map's 24-byte buckets): the envelope stays in the spool and
/// is read back (`CoreDelivery::message`) when a transaction or an outcome needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageEntry {
    pub segment: u32,
    /// Byte offset of the message record in its segment.
    pub record_offset: u32,
    /// Recipients of it still queued or in flight on this core.
    pub pending: u32,
    /// Its customer's slot in the table's `CustomerSlots`.
    pub customer: u32,
}

/// A per-core message map at or below this capacity is never shrunk.
pub(super) const MESSAGE_TABLE_SHRINK_MIN: usize = 1024;

/// The messages with recipients queued on one core: one map per spooling core, keyed by sequence
/// number (24-byte buckets, where `MessageId` keys would take 32).
#[derive(Debug, Default)]
pub struct MessageTable {
    by_core: Vec<SeqMap<MessageEntry>>,
    customers: CustomerSlots,
}

/// The customers of the messages queued on one core, each under a slot number its messages'
/// entries carry, with the recipients queued for it here (the metrics by customer). A slot lives
/// while the customer has recipients here, then is free for another: at most one slot per
/// customer with mail on this core.
#[derive(Debug, Default)]
pub struct CustomerSlots {
    /// Per slot: the customer ("" for none) and its recipients here (0 = a free slot).
    slots: Vec<(Rc<str>, u64)>,
    free: Vec<u32>,
    index: foldhash::HashMap<Rc<str>, u32>,
}

impl CustomerSlots {
    /// The slot of `customer`, counting `count` more recipients.
    fn add(&mut self, customer: &str, count: u64) -> u32 {
        if let Some(&slot) = self.index.get(customer) {
            if let Some(s) = self.slots.get_mut(slot as usize) {
                s.1 += count;
            }
            return slot;
        }
        let name: Rc<str> = Rc::from(customer);
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = (name.clone(), count);
                slot
            }
            None => {
                self.slots.push((name.clone(), count));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(name, slot);
        slot
    }

    /// Counts `count` more recipients in a slot in use.
    fn add_to(&mut self, slot: u32, count: u64) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.1 += count;
        }
    }

    /// One recipient less in `slot`; the slot is freed with its last one.
    fn remove_one(&mut self, slot: u32) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        s.1 = s.1.saturating_sub(1);
        if s.1 == 0 {
            let name = std::mem::replace(&mut s.0, Rc::from(""));
            self.index.remove(&*name);
            self.free.push(slot);
            if self.index.is_empty() {
                // Nothing queued: give the slots back.
                self.slots = Vec::new();
                self.free = Vec::new();
                self.index = HashMap::default();
            }
        }
    }

    fn name(&self, slot: u32) -> Option<&Rc<str>> {
        self.slots.get(slot as usize).map(|s| &s.0)
    }

    /// Each customer with recipients here ("" for none), and how many.
    pub fn queued(&self) -> impl Iterator<Item = (&str, u64)> {
        self.slots
            .iter()
            .filter(|s| s.1 > 0)
            .map(|(name, n)| (&**name, *n))
    }
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

    /// Counts `count` more recipients of the message of `customer` ("" for none) whose record is
    /// at `record`.
    pub fn add(&mut self, id: MessageId, record: RecordLocation, count: u32, customer: &str) {
        let core = usize::from(id.core);
        if count == 0 {
            return;
        }
        if self.by_core.len() <= core {
            self.by_core.resize_with(core + 1, SeqMap::default);
        }
        let Some(map) = self.by_core.get_mut(core) else {
            return;
        };
        match map.get_mut(&id.seq) {
            Some(entry) => {
                entry.pending += count;
                self.customers.add_to(entry.customer, u64::from(count));
            }
            None => {
                let slot = self.customers.add(customer, u64::from(count));
                map.insert(
                    id.seq,
                    MessageEntry {
                        segment: record.segment,
                        record_offset: record.offset,
                        pending: count,
                        customer: slot,
                    },
                );
            }
        }
    }

    /// The customer of message `id` ("" for none), while it has recipients here.
    pub fn customer(&self, id: MessageId) -> Option<&Rc<str>> {
        self.customers.name(self.get(id)?.customer)
    }

    /// The customers with recipients here, and how many.
    pub fn customers(&self) -> &CustomerSlots {
        &self.customers
    }

    /// Counts one recipient less; returns whether the message has none left here (it is removed).
    pub fn release(&mut self, id: MessageId) -> bool {
        let Some(map) = self.by_core.get_mut(usize::from(id.core)) else {
            return false;
        };
        let Some(entry) = map.get_mut(&id.seq) else {
            return false;
        };
        if entry.pending > 0 {
            entry.pending -= 1;
            self.customers.remove_one(entry.customer);
        }
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
pub(super) struct MessageCache {
    slots: Vec<Option<(MessageId, Rc<StoredMessage>)>>,
}

impl MessageCache {
    pub(super) fn new() -> MessageCache {
        MessageCache {
            slots: vec![None; MESSAGE_CACHE_SLOTS],
        }
    }

    fn slot(id: MessageId) -> usize {
        (id.seq as usize ^ (usize::from(id.core) << 5)) % MESSAGE_CACHE_SLOTS
    }

    pub(super) fn get(&self, id: MessageId) -> Option<Rc<StoredMessage>> {
        match self.slots.get(Self::slot(id)) {
            Some(Some((cached, message))) if *cached == id => Some(message.clone()),
            _ => None,
        }
    }

    pub(super) fn put(&mut self, id: MessageId, message: Rc<StoredMessage>) {
        if let Some(slot) = self.slots.get_mut(Self::slot(id)) {
            *slot = Some((id, message));
        }
    }

    pub(super) fn forget(&mut self, id: MessageId) {
        if let Some(slot) = self.slots.get_mut(Self::slot(id))
            && slot.as_ref().is_some_and(|(cached, _)| *cached == id)
        {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Queued;

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
        assert_eq!(size_of::<MessageEntry>(), 16);
        assert_eq!(size_of::<(u64, MessageEntry)>(), 24);
    }

    fn queued(table: &MessageTable) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = table
            .customers()
            .queued()
            .map(|(c, n)| (c.to_string(), n))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn customers_are_counted_per_recipient_and_their_slots_freed_and_reused() {
        let mut table = MessageTable::default();
        let a = MessageId { core: 0, seq: 1 };
        let b = MessageId { core: 0, seq: 2 };
        let c = MessageId { core: 1, seq: 1 };
        table.add(a, record(1, 0), 2, "acme");
        // A second hand-off of the same message keeps the customer of its entry.
        table.add(a, record(1, 0), 1, "ignored");
        table.add(b, record(1, 8), 1, "");
        table.add(c, record(1, 16), 4, "acme");
        table.add(MessageId { core: 0, seq: 3 }, record(1, 24), 0, "zero");
        assert_eq!(
            queued(&table),
            [("".to_string(), 1), ("acme".to_string(), 7)]
        );
        assert_eq!(table.customer(a).map(|c| &**c), Some("acme"));
        assert_eq!(table.customer(b).map(|c| &**c), Some(""));
        assert!(table.customer(MessageId { core: 0, seq: 3 }).is_none());
        table.release(b);
        assert_eq!(queued(&table), [("acme".to_string(), 7)]);
        assert!(table.customer(b).is_none());
        // The freed slot goes to the next customer.
        let d = MessageId { core: 0, seq: 4 };
        table.add(d, record(1, 32), 1, "beta");
        assert_eq!(table.get(d).map(|e| e.customer), Some(1));
        for _ in 0..3 {
            table.release(a);
        }
        for _ in 0..4 {
            table.release(c);
        }
        table.release(d);
        assert!(queued(&table).is_empty());
        assert!(
            table.customers().slots.is_empty(),
            "nothing queued: slots given back"
        );
    }

    #[test]
    fn message_table_counts_recipients_per_message() {
        let mut table = MessageTable::default();
        let a = MessageId { core: 1, seq: 7 };
        let b = MessageId { core: 0, seq: 7 };
        table.add(a, record(3, 64), 2, "acme");
        table.add(a, record(3, 64), 1, "acme");
        table.add(
            b,
            RecordLocation {
                core: 0,
                ..record(9, 8)
            },
            1,
            "",
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
            table.add(MessageId { core: 0, seq }, record(1, 0), 1, "bulk");
        }
        for seq in 100..100_100 {
            table.release(MessageId { core: 0, seq });
        }
        assert_eq!(table.len(), 1);
        let capacity: usize = table.by_core.iter().map(|m| m.capacity()).sum();
        assert!(capacity <= 2 * MESSAGE_TABLE_SHRINK_MIN, "{capacity}");
        assert_eq!(table.record(b).map(|r| r.segment), Some(9));
    }
}
