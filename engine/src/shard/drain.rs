//! What the cores share about hand-overs between cluster nodes:
//! - `Drain`: whether this node is draining (then the listeners answer 421 at connect, the API
//!   refuses injection, the schedulers open no delivery connection, and each core's drain task
//!   hands its queued mail to the target), where to, and how far it got. The drain is kept in
//!   `spool_dir/drain.json`, written atomically, so a restarted node goes on draining.
//! - `XferMemory`: the hand-overs this node received lately, to count those it receives again.
//!
//! The listeners read one atomic per connection; the target (behind a mutex) is read by the API
//! and by each core's drain task once per round, never per message.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The drain's file in the spool directory.
pub const DRAIN_FILE_NAME: &str = "drain.json";
/// The last hand-over error shown by `GET /v1/drain` is cut to this many bytes.
pub const DRAIN_ERROR_BYTES_MAX: usize = 512;

/// Where a drain goes and since when: the content of `drain.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainTarget {
    /// `HOST:PORT` of the target node's SMTP listener.
    pub to: String,
    /// When the drain was asked for (seconds since the Unix epoch).
    pub since_s: u64,
}

/// Why `drain.json` could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DrainFileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a drain file ({reason}); fix or remove it", path.display())]
    Malformed { path: PathBuf, reason: String },
}

/// This node's drain, shared by every core and the API.
pub struct Drain {
    path: PathBuf,
    draining: AtomicBool,
    /// Bumped at every start and cancel: a core's drain task sees that the state changed.
    generation: AtomicU64,
    target: Mutex<Option<DrainTarget>>,
    last_error: Mutex<String>,
    /// Recipients handed over (the target answered 250), since this process started.
    pub handed_over_recipients: AtomicU64,
    /// Transactions accepted by the target, since this process started.
    pub handed_over_messages: AtomicU64,
}

impl Drain {
    /// The drain of the spool at `spool_dir`: going on if `drain.json` is there. Blocking; at start.
    pub fn open(spool_dir: &Path) -> Result<Drain, DrainFileError> {
        let path = spool_dir.join(DRAIN_FILE_NAME);
        let target = match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice::<DrainTarget>(&bytes).map_err(|e| {
                DrainFileError::Malformed {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(DrainFileError::Io { path, source }),
        };
        Ok(Drain {
            draining: AtomicBool::new(target.is_some()),
            generation: AtomicU64::new(0),
            target: Mutex::new(target),
            last_error: Mutex::new(String::new()),
            handed_over_recipients: AtomicU64::new(0),
            handed_over_messages: AtomicU64::new(0),
            path,
        })
    }

    /// A drain that is never persisted (unit tests).
    pub fn in_memory() -> Drain {
        Drain {
            path: PathBuf::new(),
            draining: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            target: Mutex::new(None),
            last_error: Mutex::new(String::new()),
            handed_over_recipients: AtomicU64::new(0),
            handed_over_messages: AtomicU64::new(0),
        }
    }

    /// Whether the node is draining: it takes no new mail and hands its queue over.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Changes at every start and cancel.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Where the drain goes, when the node is draining.
    pub fn target(&self) -> Option<DrainTarget> {
        lock(&self.target).clone()
    }

    /// Starts draining to `target` (or moves a drain to a new target): `drain.json` is written and
    /// synced first, so a drain the API acknowledged survives a crash. Blocking (file I/O): call
    /// it off the reactor.
    pub fn begin(&self, target: DrainTarget) -> Result<(), DrainFileError> {
        if !self.path.as_os_str().is_empty() {
            let bytes = serde_json::to_vec(&target).map_err(|e| DrainFileError::Malformed {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
            write_atomically(&self.path, &bytes).map_err(|source| DrainFileError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        *lock(&self.target) = Some(target);
        lock(&self.last_error).clear();
        self.draining.store(true, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Stops draining: the node takes mail and delivers again. `drain.json` is removed (and the
    /// removal synced) first. Blocking (file I/O): call it off the reactor.
    pub fn cancel(&self) -> Result<(), DrainFileError> {
        if !self.path.as_os_str().is_empty() {
            remove_durably(&self.path).map_err(|source| DrainFileError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        *lock(&self.target) = None;
        self.draining.store(false, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Why the last round left recipients behind (a refused connection, a reply other than
    /// 250), for the API; empty once a round hands everything over.
    pub fn set_last_error(&self, error: &str) {
        let mut end = error.len().min(DRAIN_ERROR_BYTES_MAX);
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        let mut slot = lock(&self.last_error);
        slot.clear();
        slot.push_str(error.get(..end).unwrap_or_default());
    }

    pub fn last_error(&self) -> String {
        lock(&self.last_error).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Writes `path` so that a crash leaves the old content or the new, never a part: a temporary
/// file is written and synced, renamed over `path`, and the directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    sync_parent(path)
}

fn remove_durably(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Hand-overs remembered by `XferMemory`: about this many recipients received lately.
pub const XFER_MEMORY_SLOTS: usize = 1 << 16;

/// The hand-overs (node, message id on that node, recipient) this node received lately, as
/// 64-bit hashes in a fixed table shared lock-free by the cores. A newer entry may take an older
/// one's slot, so a hand-over received again long after (or after a restart) is not recognised;
/// a hash collision (about 2^-64 per check) would count one that is not. It only counts
/// (`volley_xfer_duplicates_total`): nothing is dropped on its word.
pub struct XferMemory {
    slots: Box<[AtomicU64]>,
}

impl Default for XferMemory {
    fn default() -> Self {
        XferMemory {
            slots: (0..XFER_MEMORY_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl XferMemory {
    /// Remembers the hand-over of `recipient` of message `id` from `node`; true when it was
    /// remembered already (received before: a duplicate).
    pub fn remember(&self, node: &str, id: &str, recipient: &str) -> bool {
        let key = xfer_key(node, id, recipient);
        let slot = &self.slots[(key % XFER_MEMORY_SLOTS as u64) as usize];
        slot.swap(key, Ordering::AcqRel) == key
    }
}

/// FNV-1a over the three names (with separators), never 0 (the empty slot).
fn xfer_key(node: &str, id: &str, recipient: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [node, id, &recipient.to_ascii_lowercase()] {
        for &b in part.as_bytes().iter().chain(&[0xFF]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_survives_a_restart_until_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let drain = Drain::open(dir.path()).unwrap();
        assert!(!drain.is_draining());
        assert_eq!(drain.target(), None);
        let target = DrainTarget {
            to: "127.0.0.1:2525".into(),
            since_s: 1_790_000_000,
        };
        drain.begin(target.clone()).unwrap();
        assert!(drain.is_draining());
        assert_eq!(drain.generation(), 1);

        let again = Drain::open(dir.path()).unwrap();
        assert!(again.is_draining(), "drain.json keeps the drain");
        assert_eq!(again.target(), Some(target));
        assert!(!dir.path().join("drain.json.tmp").exists());

        again.cancel().unwrap();
        assert!(!again.is_draining());
        assert!(!Drain::open(dir.path()).unwrap().is_draining());
        again.cancel().unwrap(); // cancelling twice is fine
    }

    #[test]
    fn a_malformed_drain_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DRAIN_FILE_NAME), b"{\"to\": 5}").unwrap();
        let e = Drain::open(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("fix or remove it"), "{e}");
    }

    #[test]
    fn last_error_is_bounded() {
        let drain = Drain::in_memory();
        drain.set_last_error(&"é".repeat(1000));
        assert!(drain.last_error().len() <= DRAIN_ERROR_BYTES_MAX);
        assert!(drain.last_error().starts_with('é'));
    }

    #[test]
    fn a_hand_over_received_again_is_recognised() {
        let memory = XferMemory::default();
        assert!(!memory.remember("a", "0001-00", "x@d.test"));
        assert!(memory.remember("a", "0001-00", "X@d.test"));
        assert!(!memory.remember("a", "0001-00", "y@d.test"));
        assert!(!memory.remember("b", "0001-00", "x@d.test"));
        assert!(!memory.remember("a", "0002-00", "x@d.test"));
        // The separators keep "ab"+"c" apart from "a"+"bc".
        assert!(!memory.remember("ab", "c", "r"));
        assert!(!memory.remember("a", "bc", "r"));
    }
}
