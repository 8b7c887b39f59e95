//! The messages with recipients queued on one core (`MessageTable`: where each record lies, how
//! many of its recipients are still here) and the small cache of envelopes read back from the
//! spool (`MessageCache`).

use std::rc::Rc;

use crate::envelope::MessageId;
use crate::spool::{RecordLocation, SeqMap, StoredMessage};

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
pub(super) const MESSAGE_TABLE_SHRINK_MIN: usize = 1024;

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
}
