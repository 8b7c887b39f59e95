//! A compact set of 128-bit keys (hashes of customer + address): a sorted array with a radix index
//! on the top bits, so a lookup is an index read and a short scan (about 2 cache misses at 10 M
//! entries), and 10 M entries cost 160 MB plus a 4 MiB index. Immutable once built: changes go to
//! a small delta in front of it (`Snapshot`) and are merged into a new table off the reactor.

/// Index buckets: the top 20 bits of a key pick one (1 Mi buckets of 4 bytes).
const INDEX_BITS: u32 = 20;

#[derive(Debug, Clone)]
pub struct Table {
    keys: Vec<u128>,
    /// `index[b]` = position of the first key whose top bits are >= b; one more at the end.
    index: Vec<u32>,
}

impl Default for Table {
    fn default() -> Table {
        Table::from_sorted(Vec::new())
    }
}

fn bucket(key: u128) -> usize {
    (key >> (128 - INDEX_BITS)) as usize
}

impl Table {
    /// Builds from keys in any order (sorted and deduplicated here).
    pub fn build(mut keys: Vec<u128>) -> Table {
        keys.sort_unstable();
        keys.dedup();
        Table::from_sorted(keys)
    }

    fn from_sorted(keys: Vec<u128>) -> Table {
        let buckets = 1usize << INDEX_BITS;
        // Positions fit u32: the list is bounded far below 4 G entries (`MAX_ENTRIES`).
        let mut index = vec![0u32; buckets + 1];
        let mut position = 0usize;
        for (b, slot) in index.iter_mut().enumerate().take(buckets) {
            while position < keys.len() && bucket(keys[position]) < b {
                position += 1;
            }
            *slot = position as u32;
        }
        index[buckets] = keys.len() as u32;
        Table { keys, index }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn contains(&self, key: u128) -> bool {
        let b = bucket(key);
        let (start, end) = (self.index[b] as usize, self.index[b + 1] as usize);
        self.keys[start..end].binary_search(&key).is_ok()
    }

    /// A new table: these keys added and those removed (both sorted by the caller or not).
    pub fn merged(&self, added: &[u128], removed: &[u128]) -> Table {
        let mut added = added.to_vec();
        added.sort_unstable();
        let mut removed = removed.to_vec();
        removed.sort_unstable();
        let mut keys = Vec::with_capacity(self.keys.len() + added.len());
        let (mut i, mut j) = (0, 0);
        while i < self.keys.len() || j < added.len() {
            let next = match (self.keys.get(i), added.get(j)) {
                (Some(&a), Some(&b)) if a < b => {
                    i += 1;
                    a
                }
                (Some(&a), Some(&b)) if a > b => {
                    j += 1;
                    b
                }
                (Some(&a), Some(_)) => {
                    i += 1;
                    j += 1;
                    a
                }
                (Some(&a), None) => {
                    i += 1;
                    a
                }
                (None, Some(&b)) => {
                    j += 1;
                    b
                }
                (None, None) => break,
            };
            if keys.last() != Some(&next) && removed.binary_search(&next).is_err() {
                keys.push(next);
            }
        }
        Table::from_sorted(keys)
    }

    /// Bytes held (for the docs' memory figures and a gauge).
    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity() * 16 + self.index.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> u128 {
        xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes())
    }

    #[test]
    fn finds_what_it_holds_and_nothing_else() {
        let table = Table::build((0..10_000).map(key).collect());
        assert_eq!(table.len(), 10_000);
        assert!((0..10_000).all(|i| table.contains(key(i))));
        assert!((10_000..20_000).all(|i| !table.contains(key(i))));
        // Extremes of the key space land in the first and last buckets.
        let edges = Table::build(vec![0, u128::MAX, 1 << 127]);
        assert!(edges.contains(0) && edges.contains(u128::MAX) && edges.contains(1 << 127));
        assert!(!edges.contains(1));
    }

    #[test]
    fn a_merge_adds_removes_and_deduplicates() {
        let table = Table::build((0..100).map(key).collect());
        let added: Vec<u128> = (50..150).map(key).collect();
        let removed: Vec<u128> = (0..10).map(key).collect();
        let merged = table.merged(&added, &removed);
        assert_eq!(merged.len(), 140);
        assert!(!merged.contains(key(5)) && merged.contains(key(10)) && merged.contains(key(149)));
        assert!(Table::default().is_empty() && !Table::default().contains(key(1)));
    }
}
