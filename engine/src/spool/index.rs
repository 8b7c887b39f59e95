//! The in-RAM index of one core's spool: which messages still have unfinished recipients, in which
//! segment each lives, and which segments may be reclaimed. It never holds envelopes or bodies.
//!
//! Reclaim rule: a segment may be deleted when it is not the current one, none of its messages has
//! an unfinished recipient, and it holds no state record about a message in an older segment that
//! still exists (its "pins"). Without the last condition, deleting a segment holding the `Delivered`
//! record of a message whose own segment survives would resurrect that message at recovery.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::RecipientState;

/// Hashes message sequence numbers. They are issued by this process, never by a peer, so there is
/// no flooding to defend against, and SipHash plus random buckets made map inserts the largest cost
/// of recovery (cache misses at a million messages). The number itself is the low bits, so
/// consecutive numbers land in consecutive buckets (hashbrown takes the bucket from the low bits);
/// the top 7 bits, hashbrown's control byte, get a multiplicative mix.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqHasher(u64);

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;
const TOP_7_BITS: u64 = 0x7F << 57;

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(MIX);
        }
    }

    fn write_u64(&mut self, n: u64) {
        let n = self.0 ^ n;
        self.0 = n ^ (n.wrapping_mul(MIX) & TOP_7_BITS);
    }
}

/// A map keyed by message sequence number.
pub type SeqMap<V> = HashMap<u64, V, BuildHasherDefault<SeqHasher>>;

/// A message with at least one unfinished recipient. 24 bytes (32 with its key in the map): the
/// unfinished count is derived from the finished set rather than stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMessage {
    pub segment: u32,
    pub recipient_count: u32,
    finished: FinishedSet,
}

impl LiveMessage {
    /// A message whose recipients are in `states` (all `Pending` when `states` is empty).
    pub fn new(segment: u32, recipient_count: u32, states: &[RecipientState]) -> LiveMessage {
        let mut finished = FinishedSet::with_len(recipient_count);
        for (i, state) in states.iter().enumerate().take(recipient_count as usize) {
            if state.is_final() {
                finished.insert(i as u32);
            }
        }
        LiveMessage {
            segment,
            recipient_count,
            finished,
        }
    }

    /// Recipients not finished yet.
    pub fn unfinished(&self) -> u32 {
        self.recipient_count.saturating_sub(self.finished.count())
    }

    /// For each recipient, in envelope order, whether it is finished.
    pub fn finished(&self) -> Vec<bool> {
        (0..self.recipient_count)
            .map(|r| self.finished.contains(r))
            .collect()
    }

    /// Records a new state for `recipient`; returns whether the message is now entirely finished.
    pub fn apply(&mut self, recipient: u32, state: RecipientState) -> bool {
        if recipient < self.recipient_count {
            if state.is_final() {
                self.finished.insert(recipient);
            } else {
                self.finished.remove(recipient);
            }
        }
        self.unfinished() == 0
    }
}

/// Which recipients are finished: one bit each, inline up to 64 recipients. The rare larger set
/// sits behind a thin pointer so the whole is 16 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FinishedSet {
    Inline(u64),
    Heap(Box<Box<[u64]>>),
}

impl FinishedSet {
    fn with_len(len: u32) -> FinishedSet {
        if len <= 64 {
            FinishedSet::Inline(0)
        } else {
            FinishedSet::Heap(Box::new(
                vec![0; len.div_ceil(64) as usize].into_boxed_slice(),
            ))
        }
    }

    fn word(&mut self, bit: u32) -> Option<&mut u64> {
        match self {
            FinishedSet::Inline(w) => (bit < 64).then_some(w),
            FinishedSet::Heap(words) => words.get_mut((bit / 64) as usize),
        }
    }

    fn contains(&self, bit: u32) -> bool {
        let word = match self {
            FinishedSet::Inline(w) => (bit < 64).then_some(*w),
            FinishedSet::Heap(words) => words.get((bit / 64) as usize).copied(),
        };
        word.is_some_and(|w| w & (1 << (bit % 64)) != 0)
    }

    fn count(&self) -> u32 {
        match self {
            FinishedSet::Inline(w) => w.count_ones(),
            FinishedSet::Heap(words) => words.iter().map(|w| w.count_ones()).sum(),
        }
    }

    fn insert(&mut self, bit: u32) {
        if let Some(w) = self.word(bit) {
            *w |= 1 << (bit % 64);
        }
    }

    fn remove(&mut self, bit: u32) {
        if let Some(w) = self.word(bit) {
            *w &= !(1 << (bit % 64));
        }
    }
}

/// What the index knows about one segment file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentUsage {
    /// Size of the file (it is pre-allocated, so this is what it takes on disk).
    pub bytes: u64,
    /// Messages in this segment with unfinished recipients.
    pub live_messages: u32,
    /// Older segments holding messages this segment has state records about (sorted, unique).
    pub pins: Vec<u32>,
    /// Recovery found damage it could not read past: at reclaim the file is set aside as
    /// `<name>.damaged` for inspection instead of being deleted.
    pub damaged: bool,
    /// Written in the first segment format (record checksums unseeded): deleted at reclaim,
    /// never reused, as its old records would read as valid in a later segment.
    pub legacy: bool,
}

impl SegmentUsage {
    pub fn pin(&mut self, older: u32) {
        if let Err(at) = self.pins.binary_search(&older) {
            self.pins.insert(at, older);
        }
    }
}

/// The index of one core's spool.
#[derive(Debug, Default)]
pub struct SpoolIndex {
    pub messages: SeqMap<LiveMessage>,
    pub segments: BTreeMap<u32, SegmentUsage>,
    /// Sum of `bytes` over `segments`.
    pub spool_bytes: u64,
}

impl SpoolIndex {
    pub fn add_segment(&mut self, segment: u32, usage: SegmentUsage) {
        self.spool_bytes += usage.bytes;
        if let Some(old) = self.segments.insert(segment, usage) {
            self.spool_bytes -= old.bytes;
        }
    }

    /// Adds a message with unfinished recipients.
    pub fn add_message(&mut self, seq: u64, message: LiveMessage) {
        if message.unfinished() == 0 {
            return;
        }
        if let Some(usage) = self.segments.get_mut(&message.segment) {
            usage.live_messages += 1;
        }
        if let Some(old) = self.messages.insert(seq, message)
            && let Some(usage) = self.segments.get_mut(&old.segment)
        {
            usage.live_messages -= 1;
        }
    }

    /// Removes a message (finished, or never made durable).
    pub fn remove_message(&mut self, seq: u64) {
        if let Some(old) = self.messages.remove(&seq)
            && let Some(usage) = self.segments.get_mut(&old.segment)
        {
            usage.live_messages -= 1;
        }
    }

    /// Applies a recipient state; returns `false` when the message or recipient is unknown.
    pub fn apply_state(&mut self, seq: u64, recipient: u32, state: RecipientState) -> bool {
        let Some(message) = self.messages.get_mut(&seq) else {
            return false;
        };
        if recipient >= message.recipient_count {
            return false;
        }
        if message.apply(recipient, state) {
            self.remove_message(seq);
        }
        true
    }

    /// Segments that may be deleted now, oldest first, given that `current` is being written.
    /// Pins point only to older segments, so one ascending pass also frees chains.
    pub fn reclaimable(&self, current: u32) -> Vec<u32> {
        let mut victims: Vec<u32> = Vec::new();
        for (&segment, usage) in &self.segments {
            if segment == current || usage.live_messages > 0 {
                continue;
            }
            let pinned = usage
                .pins
                .iter()
                .any(|p| self.segments.contains_key(p) && victims.binary_search(p).is_err());
            if !pinned {
                victims.push(segment);
            }
        }
        victims
    }

    /// Forgets a deleted segment; returns what the index knew of it.
    pub fn remove_segment(&mut self, segment: u32) -> Option<SegmentUsage> {
        let usage = self.segments.remove(&segment)?;
        self.spool_bytes -= usage.bytes;
        Some(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(bytes: u64) -> SegmentUsage {
        SegmentUsage {
            bytes,
            ..SegmentUsage::default()
        }
    }

    #[test]
    fn seq_hasher_keeps_dense_numbers_apart_and_maps_work() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<SeqHasher>::default();
        let low = |n: u64| build.hash_one(n) & 0xFFFF;
        let buckets: std::collections::HashSet<u64> = (1..=65_536u64).map(low).collect();
        assert_eq!(buckets.len(), 65_536, "consecutive numbers share no bucket");
        let controls: std::collections::HashSet<u64> =
            (1..=1000u64).map(|n| build.hash_one(n) >> 57).collect();
        assert!(
            controls.len() > 100,
            "control bytes are spread: {}",
            controls.len()
        );
        let mut map: SeqMap<u64> = SeqMap::default();
        for n in (0..100_000u64).chain([u64::MAX, 1 << 60]) {
            map.insert(n, n.wrapping_mul(2));
        }
        assert_eq!(map.len(), 100_002);
        assert_eq!(map.get(&77_777), Some(&155_554));
        assert_eq!(map.get(&(1 << 60)), Some(&(1 << 61)));
        assert_eq!(map.remove(&5), Some(10));
        assert!(!map.contains_key(&5));
    }

    #[test]
    fn finishing_every_recipient_frees_the_segment() {
        let mut index = SpoolIndex::default();
        index.add_segment(1, usage(100));
        index.add_segment(2, usage(100));
        index.add_message(10, LiveMessage::new(1, 2, &[]));
        assert_eq!(index.reclaimable(2), Vec::<u32>::new());
        assert!(index.apply_state(10, 0, RecipientState::Delivered));
        // Same recipient twice does not double count.
        assert!(index.apply_state(10, 0, RecipientState::Delivered));
        assert_eq!(index.messages[&10].unfinished(), 1);
        assert!(index.apply_state(10, 1, RecipientState::Bounced));
        assert!(!index.messages.contains_key(&10));
        assert_eq!(index.reclaimable(2), vec![1]);
        assert_eq!(index.reclaimable(1), vec![2], "current is never reclaimed");
        assert_eq!(index.remove_segment(1).map(|u| u.bytes), Some(100));
        assert_eq!(index.spool_bytes, 100);
    }

    #[test]
    fn pins_hold_state_segments_until_their_targets_go() {
        let mut index = SpoolIndex::default();
        for s in 1..=4 {
            index.add_segment(s, usage(10));
        }
        index.add_message(1, LiveMessage::new(1, 1, &[])); // still live
        index.segments.get_mut(&2).unwrap().pin(1); // 2 holds states about segment 1
        index.segments.get_mut(&3).unwrap().pin(2); // 3 holds states about segment 2
        assert_eq!(index.reclaimable(4), Vec::<u32>::new());
        index.apply_state(1, 0, RecipientState::Expired);
        assert_eq!(index.reclaimable(4), vec![1, 2, 3]);
    }

    #[test]
    fn reopening_a_recipient_counts_it_again() {
        let states = [RecipientState::Delivered, RecipientState::Pending];
        let mut m = LiveMessage::new(1, 70, &states);
        assert_eq!(m.unfinished(), 69);
        assert!(m.finished()[0]);
        assert!(!m.apply(0, RecipientState::Pending));
        assert_eq!(m.unfinished(), 70);
        assert!(m.finished().iter().all(|f| !f));
        assert!(!m.apply(66, RecipientState::Bounced));
        let finished = m.finished();
        assert_eq!(finished.len(), 70);
        let positions: Vec<usize> = (0..finished.len()).filter(|&i| finished[i]).collect();
        assert_eq!(positions, vec![66], "a recipient past the first word");
        for r in 0..70 {
            let done = m.apply(r, RecipientState::Delivered);
            assert_eq!(done, r == 69);
        }
    }

    #[test]
    fn live_messages_stay_small() {
        assert_eq!(size_of::<LiveMessage>(), 24);
        let mut m = LiveMessage::new(1, 2, &[RecipientState::Bounced]);
        assert_eq!(m.unfinished(), 1);
        // Out-of-range recipients change nothing.
        assert!(!m.apply(5, RecipientState::Delivered));
        assert!(m.apply(1, RecipientState::Delivered));
    }
}
