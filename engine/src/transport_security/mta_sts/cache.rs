//! The policies a core knows (RFC 8461 5.1), by domain: each until its `max_age` runs out, at most
//! `POLICIES_PER_CORE_MAX`, expired ones dropped on the way. Kept across restarts in
//! `<spool_dir>/mta-sts/core-<N>.json`, written whole (temporary file, fsync, rename) off the
//! reactor whenever a fetch changed it; at start every core reads every core's file, so a policy
//! survives a change of `cores` too. The map itself is pure: callers pass the time.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::policy::Policy;

/// Policies one core keeps at most (a bound on memory: a few hundred bytes each).
pub const POLICIES_PER_CORE_MAX: usize = 10_000;
/// Largest cache file read back (larger ones are ignored, with a warning).
pub const FILE_BYTES_MAX: u64 = 32 << 20;
const FILE_VERSION: u32 = 1;

/// A policy as fetched for a domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPolicy {
    /// The policy domain, lower-case.
    pub domain: String,
    /// The `id` of the TXT record it was fetched under.
    pub id: String,
    pub policy: Policy,
    pub fetched_at_s: u64,
}

impl CachedPolicy {
    pub fn expires_at_s(&self) -> u64 {
        self.fetched_at_s.saturating_add(self.policy.max_age_s)
    }

    /// From then on a use of the policy fetches it again in the background, so a policy in use
    /// never runs out: half its `max_age`.
    pub fn refresh_at_s(&self) -> u64 {
        self.fetched_at_s.saturating_add(self.policy.max_age_s / 2)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    policies: Vec<CachedPolicy>,
}

/// One core's policies.
#[derive(Debug)]
pub struct PolicyCache {
    entries: HashMap<String, Rc<CachedPolicy>>,
    max_entries: usize,
}

impl PolicyCache {
    pub fn new(max_entries: usize) -> PolicyCache {
        PolicyCache {
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

    /// The policy of `domain` unless it expired (then it is dropped).
    pub fn get(&mut self, domain: &str, now_s: u64) -> Option<Rc<CachedPolicy>> {
        match self.entries.get(domain) {
            Some(p) if p.expires_at_s() > now_s => Some(p.clone()),
            Some(_) => {
                self.entries.remove(domain);
                None
            }
            None => None,
        }
    }

    /// Keeps `policy` (replacing the domain's previous one). When full, expired entries go first,
    /// then the one closest to expiry. A policy already expired is not kept.
    pub fn put(&mut self, policy: CachedPolicy, now_s: u64) {
        if policy.expires_at_s() <= now_s || self.max_entries == 0 {
            self.entries.remove(&policy.domain);
            return;
        }
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(&policy.domain) {
            self.sweep(now_s);
            if self.entries.len() >= self.max_entries {
                let soonest = self
                    .entries
                    .values()
                    .min_by_key(|p| p.expires_at_s())
                    .map(|p| p.domain.clone());
                if let Some(domain) = soonest {
                    self.entries.remove(&domain);
                }
            }
        }
        self.entries.insert(policy.domain.clone(), Rc::new(policy));
    }

    /// Drops the expired policies; returns how many.
    pub fn sweep(&mut self, now_s: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, p| p.expires_at_s() > now_s);
        if self.entries.capacity() > 4 * self.entries.len().max(64) {
            self.entries.shrink_to_fit();
        }
        before - self.entries.len()
    }

    /// Everything kept, for the file.
    pub fn snapshot(&self) -> Vec<CachedPolicy> {
        self.entries.values().map(|p| (**p).clone()).collect()
    }

    /// Takes policies read back at start: the newest of each domain, unexpired ones only.
    pub fn restore(&mut self, policies: Vec<CachedPolicy>, now_s: u64) {
        for p in policies {
            let newer = self
                .entries
                .get(&p.domain)
                .is_none_or(|known| known.fetched_at_s < p.fetched_at_s);
            if newer {
                self.put(p, now_s);
            }
        }
    }
}

/// The directory of the cache files in `spool_dir`.
pub fn directory(spool_dir: &Path) -> PathBuf {
    spool_dir.join("mta-sts")
}

fn file_of(dir: &Path, core: usize) -> PathBuf {
    dir.join(format!("core-{core}.json"))
}

/// Writes core `core`'s policies (blocking: on the blocking pool).
pub fn write(dir: &Path, core: usize, policies: Vec<CachedPolicy>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let file = file_of(dir, core);
    let temporary = dir.join(format!(".core-{core}.json.tmp"));
    let text = serde_json::to_vec(&CacheFile {
        version: FILE_VERSION,
        policies,
    })
    .map_err(std::io::Error::other)?;
    let mut out = std::fs::File::create(&temporary)?;
    out.write_all(&text)?;
    out.sync_data()?;
    std::fs::rename(&temporary, &file)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Every core's policies in `dir` (blocking), without the expired ones. Unreadable files are
/// logged and skipped: the cache only saves fetches.
pub fn read_all(dir: &Path, now_s: u64) -> Vec<CachedPolicy> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut policies = Vec::new();
    for entry in listing.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("core-") && name.ends_with(".json")) {
            continue;
        }
        match read_file(&path) {
            Ok(mut found) => {
                found.retain(|p| p.expires_at_s() > now_s);
                found.truncate(POLICIES_PER_CORE_MAX);
                policies.extend(found);
            }
            Err(e) => log::warn!("MTA-STS cache {}: {e}; ignored", path.display()),
        }
    }
    policies
}

fn read_file(path: &Path) -> Result<Vec<CachedPolicy>, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > FILE_BYTES_MAX {
        return Err(format!("over {FILE_BYTES_MAX} bytes"));
    }
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let file: CacheFile = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    if file.version != FILE_VERSION {
        return Err(format!("version {} unknown", file.version));
    }
    Ok(file.policies)
}

#[cfg(test)]
mod tests {
    use super::super::policy::Mode;
    use super::*;

    fn policy(domain: &str, fetched_at_s: u64, max_age_s: u64) -> CachedPolicy {
        CachedPolicy {
            domain: domain.into(),
            id: "1".into(),
            policy: Policy {
                mode: Mode::Enforce,
                mx: vec!["mx.a.test".into()],
                max_age_s,
            },
            fetched_at_s,
        }
    }

    #[test]
    fn policies_expire_and_the_bound_holds() {
        let mut cache = PolicyCache::new(2);
        cache.put(policy("a.test", 100, 50), 100);
        assert!(cache.get("a.test", 149).is_some());
        assert!(
            cache.get("a.test", 150).is_none(),
            "expired at fetched + max_age"
        );
        assert!(cache.is_empty(), "and dropped");
        cache.put(policy("a.test", 100, 1000), 100);
        cache.put(policy("b.test", 100, 10), 100);
        cache.put(policy("c.test", 100, 500), 100);
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get("b.test", 100).is_none(),
            "the soonest to expire went"
        );
        cache.put(policy("d.test", 100, 0), 100);
        assert!(cache.get("d.test", 100).is_none(), "max_age 0 is not kept");
        assert_eq!(cache.sweep(600), 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(policy("x", 100, 50).refresh_at_s(), 125);
    }

    #[test]
    fn written_and_read_back_newest_wins_expired_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let dir = directory(dir.path());
        write(
            &dir,
            0,
            vec![policy("a.test", 100, 1000), policy("old.test", 100, 10)],
        )
        .unwrap();
        let mut newer = policy("a.test", 200, 1000);
        newer.id = "2".into();
        write(&dir, 1, vec![newer]).unwrap();
        std::fs::write(dir.join("core-2.json"), "not json").unwrap();
        let read = read_all(&dir, 150);
        assert_eq!(
            read.len(),
            2,
            "old.test expired, the bad file skipped: {read:?}"
        );
        let mut cache = PolicyCache::new(10);
        cache.restore(read, 150);
        assert_eq!(cache.get("a.test", 150).unwrap().id, "2");
        assert!(read_all(&dir.join("missing"), 0).is_empty());
    }
}
