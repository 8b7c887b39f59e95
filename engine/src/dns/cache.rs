//! Per-core answer cache: positive answers for their TTL, NXDOMAIN and NODATA for the SOA minimum
//! (RFC 2308), both capped. No clock inside: callers pass `now`.

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
}

/// A bounded map from (lower-cased FQDN, type) to answers with an expiry time.
#[derive(Debug)]
pub struct AnswerCache {
    entries: HashMap<(String, RecordType), Entry>,
    max_entries: usize,
}

impl AnswerCache {
    pub fn new(max_entries: usize) -> AnswerCache {
        AnswerCache {
            entries: HashMap::new(),
            max_entries,
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
        let key = (name.to_ascii_lowercase(), rtype);
        match self.entries.get(&key) {
            Some(e) if e.expires_at > now => Some(e.answer.clone()),
            Some(_) => {
                self.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Stores an answer for `ttl`; a zero TTL is not stored. When full, expired entries go first,
    /// then the one closest to expiry (a scan, only when full).
    pub fn insert(
        &mut self,
        name: &str,
        rtype: RecordType,
        answer: CachedAnswer,
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
}
