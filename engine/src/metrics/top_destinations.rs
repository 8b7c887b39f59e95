//! Which destinations the labelled metrics name: the top N by volume, found in bounded memory.
//!
//! Each core counts the recipients it queues per destination (the queue's domain) in a
//! space-saving sketch (Metwally, Agrawal, El Abbadi 2005) of at most
//! `SKETCH_SLOTS_PER_DESTINATION` x N domains: a domain that finds the sketch full takes the slot
//! of the smallest and starts from its count, so a count is never below the truth and any domain
//! above 1/slots of the volume is in the sketch. Counts are halved every `VOLUME_HALF_LIFE_S` and
//! a domain whose count reaches 0 leaves: the set follows the traffic of the last minutes, and an
//! idle core's sketch empties. Once a second the node sums the cores' sketches and keeps the N
//! largest (`choose`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Sketch slots per destination named: room for the runners-up, so that a domain climbing into
/// the top N is already counted.
pub const SKETCH_SLOTS_PER_DESTINATION: usize = 4;
/// Every this many seconds each sketch's counts are halved.
pub const VOLUME_HALF_LIFE_S: u64 = 60;
/// A domain already named keeps its place against one with up to this much more volume (in
/// percent), so that two domains of like volume do not swap places (and series) every second.
pub const MEMBER_STAY_MARGIN_PERCENT: u64 = 25;

/// One core's recipient counts per destination domain, bounded (see the module comment).
#[derive(Debug)]
pub struct Sketch {
    slots: Vec<(Arc<str>, u64)>,
    index: HashMap<Arc<str>, usize>,
    capacity: usize,
    next_halving_s: u64,
}

impl Default for Sketch {
    /// Sized for the default `top_destinations` until the core's first publish sets it.
    fn default() -> Self {
        Sketch {
            slots: Vec::new(),
            index: HashMap::new(),
            capacity: crate::config::MetricsSection::default().top_destinations
                * SKETCH_SLOTS_PER_DESTINATION,
            next_halving_s: 0,
        }
    }
}

impl Sketch {
    /// Room for `top_destinations` x `SKETCH_SLOTS_PER_DESTINATION` domains; the smallest leave
    /// when it shrinks.
    pub fn set_top_destinations(&mut self, top_destinations: usize) {
        let capacity = top_destinations.saturating_mul(SKETCH_SLOTS_PER_DESTINATION);
        if capacity == self.capacity {
            return;
        }
        self.capacity = capacity;
        if self.slots.len() > capacity {
            self.slots
                .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            self.slots.truncate(capacity);
            self.reindex();
        }
    }

    /// Counts `count` recipients queued for `domain`.
    pub fn add(&mut self, domain: &str, count: u64) {
        if self.capacity == 0 || count == 0 {
            return;
        }
        if let Some(&i) = self.index.get(domain) {
            if let Some(slot) = self.slots.get_mut(i) {
                slot.1 = slot.1.saturating_add(count);
            }
            return;
        }
        if self.slots.len() < self.capacity {
            let name: Arc<str> = Arc::from(domain);
            self.index.insert(name.clone(), self.slots.len());
            self.slots.push((name, count));
            return;
        }
        // Full: the smallest gives up its slot, and its count, to the newcomer.
        let Some((i, smallest)) = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.1)
            .map(|(i, s)| (i, s.1))
        else {
            return;
        };
        let name: Arc<str> = Arc::from(domain);
        let old = std::mem::replace(
            &mut self.slots[i],
            (name.clone(), smallest.saturating_add(count)),
        );
        self.index.remove(&*old.0);
        self.index.insert(name, i);
    }

    /// Halves every count when `VOLUME_HALF_LIFE_S` has passed since the last halving; domains
    /// left at 0 leave the sketch.
    pub fn halve_when_due(&mut self, now_s: u64) {
        if now_s < self.next_halving_s {
            return;
        }
        if self.next_halving_s != 0 {
            for slot in &mut self.slots {
                slot.1 /= 2;
            }
            self.slots.retain(|s| s.1 > 0);
            self.reindex();
        }
        self.next_halving_s = now_s + VOLUME_HALF_LIFE_S;
    }

    pub fn entries(&self) -> &[(Arc<str>, u64)] {
        &self.slots
    }

    fn reindex(&mut self) {
        self.index.clear();
        for (i, (name, _)) in self.slots.iter().enumerate() {
            self.index.insert(name.clone(), i);
        }
        // Give memory back after a burst of domains.
        if self.slots.capacity() > 2 * self.slots.len() + 16 {
            self.slots.shrink_to_fit();
        }
        if self.index.capacity() > 2 * self.index.len() + 16 {
            self.index.shrink_to_fit();
        }
    }
}

/// The destinations the metrics name now; every other one counts as `other`.
#[derive(Debug, Default)]
pub struct TopSet {
    members: HashSet<Arc<str>>,
}

impl TopSet {
    pub fn contains(&self, domain: &str) -> bool {
        self.members.contains(domain)
    }

    /// The set's own copy of `domain`, when it is a member.
    pub fn member(&self, domain: &str) -> Option<&Arc<str>> {
        self.members.get(domain)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.members.iter()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// The `n` destinations of most volume over all the cores' sketches (`sketches`), a member of
/// `current` counting `MEMBER_STAY_MARGIN_PERCENT` more; ties go by name. A domain with no
/// volume left is never chosen, nor one spelled like the `other` bucket (`reserved`).
pub fn choose(
    sketches: &[Vec<(Arc<str>, u64)>],
    current: &TopSet,
    n: usize,
    reserved: &str,
) -> TopSet {
    let mut volume: HashMap<&str, (&Arc<str>, u64)> = HashMap::new();
    for (name, count) in sketches.iter().flatten() {
        let entry = volume.entry(&**name).or_insert((name, 0));
        entry.1 = entry.1.saturating_add(*count);
    }
    let mut ranked: Vec<(u64, &Arc<str>)> = volume
        .into_values()
        .filter(|(name, count)| *count > 0 && &***name != reserved)
        .map(|(name, count)| {
            let score = if current.contains(name) {
                count.saturating_add(count.saturating_mul(MEMBER_STAY_MARGIN_PERCENT) / 100)
            } else {
                count
            };
            (score, name)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    TopSet {
        members: ranked
            .into_iter()
            .take(n)
            .map(|(_, name)| name.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: &TopSet) -> Vec<String> {
        let mut v: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_sketch_holds_at_most_its_slots_and_keeps_the_heavy_domains() {
        let mut sketch = Sketch::default();
        sketch.set_top_destinations(2);
        let slots = 2 * SKETCH_SLOTS_PER_DESTINATION;
        // Two heavy domains among 10,000 light ones, interleaved.
        for i in 0..10_000u64 {
            sketch.add(&format!("d{i}.test"), 1);
            if i % 10 == 0 {
                sketch.add("big.test", 3);
                sketch.add("second.test", 2);
            }
        }
        assert_eq!(sketch.entries().len(), slots);
        assert!(sketch.index.len() == slots);
        let count = |d: &str| sketch.entries().iter().find(|e| &*e.0 == d).map(|e| e.1);
        // Space-saving never counts below the truth for a domain it holds.
        assert!(count("big.test").is_some_and(|c| c >= 3_000));
        assert!(count("second.test").is_some_and(|c| c >= 2_000));
        let top = choose(&[sketch.entries().to_vec()], &TopSet::default(), 2, "other");
        assert_eq!(names(&top), ["big.test", "second.test"]);
    }

    #[test]
    fn counts_halve_and_an_idle_sketch_empties() {
        let mut sketch = Sketch::default();
        sketch.set_top_destinations(5);
        sketch.add("a.test", 8);
        sketch.add("b.test", 1);
        sketch.halve_when_due(1_000); // the first call only sets the clock
        assert_eq!(sketch.entries().len(), 2);
        sketch.halve_when_due(1_000 + VOLUME_HALF_LIFE_S - 1);
        assert_eq!(sketch.entries().len(), 2);
        sketch.halve_when_due(1_000 + VOLUME_HALF_LIFE_S);
        assert_eq!(sketch.entries().to_vec(), [(Arc::from("a.test"), 4)]);
        let mut now = 1_000 + VOLUME_HALF_LIFE_S;
        for _ in 0..3 {
            now += VOLUME_HALF_LIFE_S;
            sketch.halve_when_due(now);
        }
        assert!(sketch.entries().is_empty());
        assert!(sketch.index.is_empty());
        // The lookup still works after the rebuilds.
        sketch.add("c.test", 1);
        sketch.add("c.test", 1);
        assert_eq!(sketch.entries().to_vec(), [(Arc::from("c.test"), 2)]);
    }

    #[test]
    fn choose_sums_cores_keeps_members_within_the_margin_and_skips_other() {
        let a = vec![(Arc::from("x.test"), 10), (Arc::from("other"), 1_000)];
        let b = vec![(Arc::from("y.test"), 11), (Arc::from("x.test"), 1)];
        let first = choose(&[a.clone(), b.clone()], &TopSet::default(), 1, "other");
        assert_eq!(
            names(&first),
            ["x.test"],
            "10 + 1 against 11: ties go by name"
        );
        // y.test grows by less than the margin: x.test stays.
        let b2 = vec![(Arc::from("y.test"), 13), (Arc::from("x.test"), 1)];
        assert_eq!(
            names(&choose(&[a.clone(), b2], &first, 1, "other")),
            ["x.test"]
        );
        // Past the margin it takes the place.
        let b3 = vec![(Arc::from("y.test"), 14), (Arc::from("x.test"), 1)];
        assert_eq!(names(&choose(&[a, b3], &first, 1, "other")), ["y.test"]);
        assert!(choose(&[], &first, 3, "other").is_empty());
    }

    #[test]
    fn a_smaller_top_n_drops_the_smallest_slots() {
        let mut sketch = Sketch::default();
        sketch.set_top_destinations(2);
        for (i, n) in [5u64, 1, 9, 3, 7, 2, 8, 4].into_iter().enumerate() {
            sketch.add(&format!("d{i}.test"), n);
        }
        sketch.set_top_destinations(1);
        let mut kept: Vec<u64> = sketch.entries().iter().map(|e| e.1).collect();
        kept.sort();
        assert_eq!(kept, [5, 7, 8, 9]);
        sketch.add("d6.test", 1);
        assert_eq!(
            sketch
                .entries()
                .iter()
                .find(|e| &*e.0 == "d6.test")
                .map(|e| e.1),
            Some(9)
        );
        sketch.set_top_destinations(0);
        sketch.add("z.test", 1);
        assert!(sketch.entries().is_empty());
    }
}
