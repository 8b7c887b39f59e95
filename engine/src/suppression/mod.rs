//! Suppression lists: per customer, the recipients that must not get mail from it (unsubscribed,
//! complained, hard-bounced: the control plane decides). Read by every core for every recipient,
//! changed through the API.
//!
//! Reads take no lock: each core keeps an `Arc` of the current [`Snapshot`] and swaps it when the
//! list's generation moves (one atomic load per lookup), as the configuration does. A snapshot is a
//! large immutable [`table::Table`] of 128-bit keys (xxh3 of customer and address) and a small delta
//! of recent changes; a change copies the delta, and once the delta passes [`MAX_DELTA`] the changes
//! are merged into a new table. Every change is in the journal (fsynced) before it is published and
//! before the API answers. Writes are blocking (file I/O, merges): the API runs them on the blocking
//! pool, never on a reactor.
//!
//! With `[cluster]`, each node has its own list: a control plane writes to every node.

pub mod journal;
pub mod table;

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use journal::Journal;
use table::Table;

/// Changes kept in the delta before a merge into a new table.
pub const MAX_DELTA: usize = 65_536;
/// Entries the list holds at most (about 16 bytes each): a bound on memory, not a product limit.
pub const MAX_ENTRIES: usize = 50_000_000;
/// Addresses one bulk request may carry.
pub const MAX_BULK: usize = 2_000_000;

/// The key of (customer, address): addresses compare without case (in practice mailbox providers
/// ignore it, and a suppression must not be dodged by capitals).
pub fn key(customer: &str, address: &str) -> u128 {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    // The common case (ASCII, short) hashes from the stack: no allocation per recipient.
    let mut buf = [0u8; KEY_STACK_BYTES];
    let n = customer.len() + 1 + address.len();
    if address.is_ascii() && n <= KEY_STACK_BYTES {
        buf[..customer.len()].copy_from_slice(customer.as_bytes());
        buf[customer.len()] = 0;
        for (to, from) in buf[customer.len() + 1..n].iter_mut().zip(address.bytes()) {
            *to = from.to_ascii_lowercase();
        }
        return xxhash_rust::xxh3::xxh3_128(&buf[..n]);
    }
    let mut text = String::with_capacity(n);
    text.push_str(customer);
    text.push('\0');
    for c in address.chars() {
        text.extend(c.to_lowercase());
    }
    xxhash_rust::xxh3::xxh3_128(text.as_bytes())
}

/// Customer and address hashed without allocating when they fit.
const KEY_STACK_BYTES: usize = 384;

/// An address as it is stored: trimmed, without angle brackets, lower-case; `None` when it is no
/// address (no `@`, control characters, too long).
pub fn normalize(address: &str) -> Option<String> {
    let a = address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_lowercase();
    let ok = !a.is_empty()
        && a.len() <= 254
        && a.contains('@')
        && !a.chars().any(|c| c.is_control() || c.is_whitespace());
    ok.then_some(a)
}

/// One published state of the list.
#[derive(Debug, Default)]
pub struct Snapshot {
    table: Arc<Table>,
    added: HashSet<u128>,
    removed: HashSet<u128>,
}

impl Snapshot {
    pub fn contains(&self, key: u128) -> bool {
        // Empty deltas (the usual state after a merge) cost no hashing.
        (self.removed.is_empty() || !self.removed.contains(&key))
            && ((!self.added.is_empty() && self.added.contains(&key)) || self.table.contains(key))
    }

    pub fn len(&self) -> usize {
        self.table.len() + self.added.len() - self.removed.len().min(self.table.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("suppression journal: {0}")]
    Io(#[from] std::io::Error),
    #[error("the suppression list is full ({MAX_ENTRIES} entries)")]
    Full,
}

/// The node's list, shared by every core.
pub struct SuppressionList {
    current: Mutex<Arc<Snapshot>>,
    generation: AtomicU64,
    /// Taken by writers only (the API's blocking-pool calls), never by a lookup.
    journal: Mutex<Option<Journal>>,
}

impl SuppressionList {
    /// Empty, not kept on disk (tests, tools).
    pub fn in_memory() -> SuppressionList {
        SuppressionList {
            current: Mutex::new(Arc::new(Snapshot::default())),
            generation: AtomicU64::new(0),
            journal: Mutex::new(None),
        }
    }

    /// Loads `spool_dir/suppressions.log`. Blocking (start-up).
    pub fn open(dir: &Path) -> Result<SuppressionList, SuppressionError> {
        let loaded = Journal::load(dir)?;
        if loaded.skipped_lines > 0 {
            log::warn!(
                "{}: {} damaged lines skipped",
                loaded.journal.path().display(),
                loaded.skipped_lines
            );
        }
        let snapshot = Snapshot {
            table: Arc::new(Table::build(loaded.keys)),
            ..Snapshot::default()
        };
        Ok(SuppressionList {
            current: Mutex::new(Arc::new(snapshot)),
            generation: AtomicU64::new(0),
            journal: Mutex::new(Some(loaded.journal)),
        })
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.current.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Suppresses (`added`) or lifts normalized addresses for `customer`: journaled and fsynced,
    /// then published. Returns the entries now in the list. Blocking: call it off the reactor.
    pub fn change(
        &self,
        customer: &str,
        addresses: &[String],
        added: bool,
    ) -> Result<usize, SuppressionError> {
        let mut journal = match self.journal.lock() {
            Ok(j) => j,
            Err(poisoned) => poisoned.into_inner(),
        };
        let current = self.snapshot();
        if added && current.len().saturating_add(addresses.len()) > MAX_ENTRIES {
            return Err(SuppressionError::Full);
        }
        if let Some(journal) = journal.as_mut() {
            journal.append(added, customer, addresses)?;
        }
        let keys: Vec<u128> = addresses.iter().map(|a| key(customer, a)).collect();
        let mut added_keys = current.added.clone();
        let mut removed_keys = current.removed.clone();
        for k in &keys {
            if added {
                removed_keys.remove(k);
                if !current.table.contains(*k) {
                    added_keys.insert(*k);
                }
            } else {
                added_keys.remove(k);
                if current.table.contains(*k) {
                    removed_keys.insert(*k);
                }
            }
        }
        let next = if added_keys.len() + removed_keys.len() > MAX_DELTA {
            let added: Vec<u128> = added_keys.into_iter().collect();
            let removed: Vec<u128> = removed_keys.into_iter().collect();
            Snapshot {
                table: Arc::new(current.table.merged(&added, &removed)),
                ..Snapshot::default()
            }
        } else {
            Snapshot {
                table: current.table.clone(),
                added: added_keys,
                removed: removed_keys,
            }
        };
        let len = next.len();
        match self.current.lock() {
            Ok(mut s) => *s = Arc::new(next),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(next),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(len)
    }
}

/// One core's view: the snapshot it last saw, refreshed when the list changed.
pub struct CoreSuppressions {
    shared: Arc<SuppressionList>,
    seen: RefCell<(u64, Arc<Snapshot>)>,
}

impl CoreSuppressions {
    pub fn new(shared: Arc<SuppressionList>) -> CoreSuppressions {
        let seen = (shared.generation(), shared.snapshot());
        CoreSuppressions {
            shared,
            seen: RefCell::new(seen),
        }
    }

    pub fn shared(&self) -> &Arc<SuppressionList> {
        &self.shared
    }

    /// Whether `customer` must not send to `address`.
    pub fn is_suppressed(&self, customer: &str, address: &str) -> bool {
        let generation = self.shared.generation();
        if generation != self.seen.borrow().0 {
            *self.seen.borrow_mut() = (generation, self.shared.snapshot());
        }
        let seen = self.seen.borrow();
        !seen.1.is_empty() && seen.1.contains(key(customer, address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|i| format!("user{i}@example.com")).collect()
    }

    #[test]
    fn per_customer_case_blind_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let list = Arc::new(SuppressionList::open(dir.path()).unwrap());
            let core = CoreSuppressions::new(list.clone());
            assert!(!core.is_suppressed("acme", "a@x.test"));
            list.change("acme", &["a@x.test".into()], true).unwrap();
            assert!(
                core.is_suppressed("acme", "A@X.test"),
                "seen at once, case-blind"
            );
            assert!(core.is_suppressed("acme", "<a@x.test>"));
            assert!(!core.is_suppressed("other", "a@x.test"), "per customer");
            list.change("acme", &addresses(0..10), true).unwrap();
            list.change("acme", &addresses(0..5), false).unwrap();
            assert!(!core.is_suppressed("acme", "user1@example.com"));
            assert!(core.is_suppressed("acme", "user7@example.com"));
        }
        let list = Arc::new(SuppressionList::open(dir.path()).unwrap());
        let core = CoreSuppressions::new(list.clone());
        assert!(core.is_suppressed("acme", "a@x.test"), "after a restart");
        assert!(!core.is_suppressed("acme", "user1@example.com"));
        assert!(core.is_suppressed("acme", "user7@example.com"));
        assert_eq!(list.snapshot().len(), 6);
    }

    #[test]
    fn a_big_change_is_merged_into_the_table_and_removals_compact_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let list = SuppressionList::open(dir.path()).unwrap();
        let many = addresses(0..(MAX_DELTA as u32 + 10));
        assert_eq!(list.change("acme", &many, true).unwrap(), many.len());
        let snapshot = list.snapshot();
        assert!(snapshot.added.is_empty(), "merged");
        assert_eq!(snapshot.table.len(), many.len());
        list.change("acme", &many[..many.len() - 3], false).unwrap();
        drop(list);
        let size_before = std::fs::metadata(dir.path().join(journal::JOURNAL_FILE))
            .unwrap()
            .len();
        let list = SuppressionList::open(dir.path()).unwrap();
        assert_eq!(list.snapshot().len(), 3);
        let size_after = std::fs::metadata(dir.path().join(journal::JOURNAL_FILE))
            .unwrap()
            .len();
        assert!(
            size_after * 100 < size_before,
            "{size_before} -> {size_after}"
        );
    }

    #[test]
    fn damaged_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(journal::JOURNAL_FILE),
            b"+acme\ta@x.test\ngarbage\n+\t\n\xff\xfe\n-acme\tb@x.test\n+acme\tc@x.te",
        )
        .unwrap();
        let list = Arc::new(SuppressionList::open(dir.path()).unwrap());
        let core = CoreSuppressions::new(list);
        assert!(core.is_suppressed("acme", "a@x.test"));
        assert!(
            core.is_suppressed("acme", "c@x.te"),
            "a last line without newline counts"
        );
    }

    #[test]
    fn addresses_are_normalized_or_refused() {
        assert_eq!(normalize(" <A@X.Test> ").as_deref(), Some("a@x.test"));
        assert_eq!(normalize("no-at-sign"), None);
        assert_eq!(normalize("a b@x.test"), None);
        assert_eq!(normalize(&format!("{}@x.test", "a".repeat(300))), None);
    }
}
