//! Per-core answer cache: positive answers for their TTL, NXDOMAIN and NODATA for the SOA minimum
//! (RFC 2308), both capped. Bounded by `max_entries` (`ResolverConfig::max_cache_entries`);
//! expired entries are freed by `sweep` (the core's tick calls it), and the table's memory is
//! given back when it has emptied, so a burst of distinct domains does not keep its peak size.
//! No clock inside: callers pass `now`.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hickory_proto::rr::{RData, RecordType};

/// What a (name, type) question resolved to, after CNAME chasing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedAnswer {
    /// The records of the asked type (possibly reached through CNAMEs).
    Records(Rc<Vec<RData>>),
    /// The name exists but has no records of this type.
    NoData,
    /// The name does not exist.
    NxDomain,
}

#[derive(Debug)]
struct Entry {
    expires_at: Instant,
    answer: CachedAnswer,
    /// Every response behind it had the AD bit (DNSSEC-validated by the nameserver).
    authentic: bool,
}

/// Below this many slots, a swept table keeps its allocation (not worth giving back).
pub const KEEP_CAPACITY_ENTRIES: usize = 256;
/// `sweep` walks the whole table at most this often (a walk of `max_entries` is not free).
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A bounded map from (lower-cased FQDN, type) to answers with an expiry time.
#[derive(Debug)]
pub struct AnswerCache {
    entries: HashMap<(String, RecordType), Entry>,
    max_entries: usize,
    /// `sweep` does nothing before this.
    next_sweep: Option<Instant>,
}

impl AnswerCache {
    pub fn new(max_entries: usize) -> AnswerCache {
        AnswerCache {
            entries: HashMap::new(),
            max_entries,
            next_sweep: None,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached answer, unless missing or expired (expired entries are dropped).
    pub fn get(&mut self, name: &str, rtype: RecordType, now: Instant) -> Option<CachedAnswer> {
        self.get_authenticated(name, rtype, now).map(|(a, _)| a)
    }

    /// The cached answer and whether it was DNSSEC-validated, unless missing or expired.
    pub fn get_authenticated(
        &mut self,
        name: &str,
        rtype: RecordType,
        now: Instant,
    ) -> Option<(CachedAnswer, bool)> {
        let key = (name.to_ascii_lowercase(), rtype);
        match self.entries.get(&key) {
            Some(e) if e.expires_at > now => Some((e.answer.clone(), e.authentic)),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Drops every entry expired at `now`, and gives the table's memory back when it holds
    /// less than a quarter of what it has room for; at most once every `SWEEP_EVERY` (earlier
    /// calls do nothing). Returns how many entries were dropped.
    pub fn sweep(&mut self, now: Instant) -> usize {
        if self.next_sweep.is_some_and(|at| now < at) {
            return 0;
        }
        self.next_sweep = Some(now + SWEEP_EVERY);
        let before = self.entries.len();
        self.entries.retain(|_, e| e.expires_at > now);
        let len = self.entries.len();
        if self.entries.capacity() > KEEP_CAPACITY_ENTRIES.max(len.saturating_mul(4)) {
            self.entries
                .shrink_to(KEEP_CAPACITY_ENTRIES.max(len.saturating_mul(2)));
        }
        before - len
    }

    /// Slots the table has room for without growing (what `sweep` gives back).
    pub fn capacity(&self) -> usize {
        self.entries.capacity()
    }

    /// Stores an answer (not validated) for `ttl`; see `insert_authenticated`.
    pub fn insert(
        &mut self,
        name: &str,
        rtype: RecordType,
        answer: CachedAnswer,
        ttl: Duration,
        now: Instant,
    ) {
        self.insert_authenticated(name, rtype, answer, false, ttl, now);
    }

    /// Stores an answer for `ttl`, with whether it was DNSSEC-validated; a zero TTL is not
    /// stored. When full, expired entries go first, then the one closest to expiry (a scan, only
    /// when full).
    pub fn insert_authenticated(
        &mut self,
        name: &str,
        rtype: RecordType,
        answer: CachedAnswer,
        authentic: bool,
        ttl: Duration,
        now: Instant,
    ) {
        if ttl.is_zero() || self.max_entries == 0 {
            return;
        }
        let key = (name.to_ascii_lowercase(), rtype);
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(&key) {
            self.entries.retain(|_, e| e.expires_at > now);
            if self.entries.len() >= self.max_entries {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires_at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(
            key,
            Entry {
                expires_at: now + ttl,
                answer,
                authentic,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_bound() {
        let now = Instant::now();
        let mut c = AnswerCache::new(2);
        let s = Duration::from_secs(1);
        c.insert("A.test.", RecordType::A, CachedAnswer::NoData, s, now);
        assert_eq!(
            c.get("a.test.", RecordType::A, now),
            Some(CachedAnswer::NoData),
            "keys are case-insensitive"
        );
        assert_eq!(c.get("a.test.", RecordType::AAAA, now), None);
        assert_eq!(c.get("a.test.", RecordType::A, now + s), None, "expired");
        assert!(c.is_empty());

        c.insert("a.", RecordType::A, CachedAnswer::NxDomain, s * 10, now);
        c.insert("b.", RecordType::A, CachedAnswer::NxDomain, s, now);
        c.insert("c.", RecordType::A, CachedAnswer::NxDomain, s * 5, now);
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.get("b.", RecordType::A, now),
            None,
            "soonest to expire evicted"
        );
        assert!(c.get("a.", RecordType::A, now).is_some());
        c.insert(
            "z.",
            RecordType::A,
            CachedAnswer::NoData,
            Duration::ZERO,
            now,
        );
        assert!(c.get("z.", RecordType::A, now).is_none());
    }

    #[test]
    fn sweep_frees_expired_entries_and_their_table() {
        let now = Instant::now();
        let mut c = AnswerCache::new(100_000);
        let short = Duration::from_secs(5);
        for n in 0..20_000 {
            c.insert(
                &format!("d{n}.test."),
                RecordType::MX,
                CachedAnswer::NoData,
                short,
                now,
            );
        }
        c.insert(
            "long.test.",
            RecordType::A,
            CachedAnswer::NxDomain,
            short * 100,
            now,
        );
        let grown = c.capacity();
        assert!(grown >= 20_001);
        assert_eq!(c.sweep(now), 0, "nothing expired yet");
        assert_eq!(c.len(), 20_001);
        let expired = now + short;
        assert_eq!(c.sweep(expired), 0, "within SWEEP_EVERY of the last walk");
        assert_eq!(c.len(), 20_001);
        let later = now + SWEEP_EVERY;
        assert_eq!(c.sweep(later), 20_000);
        assert_eq!(c.len(), 1);
        assert!(
            c.capacity() <= 2 * KEEP_CAPACITY_ENTRIES,
            "table given back: {} slots after {grown}",
            c.capacity()
        );
        assert_eq!(
            c.get("long.test.", RecordType::A, later),
            Some(CachedAnswer::NxDomain),
            "live entries stay"
        );
    }
}
