//! The durable spool, one per core: append-only, pre-allocated segment files (written with pwrite, read through maps) under
//! `<dir>/core-<N>/`, group-committed with io_uring `fdatasync`, recovered at start, and reclaimed
//! segment by segment once every message in them is finished. Format: `docs/spool-format.md`.
//!
//! - `record`: the record codec and its CRC32C checksums.
//! - `segment`: segment files, their header, and the record scanner.
//! - `commit`: group commit (one committer task per spool).
//! - `index`: the in-RAM index of live messages and the reclaim rule.
//! - `recovery`: rebuilding the index and the message list at start.
//! - `reader`: reading bodies of any core's segments through cached read-only mappings.
//! - `voided`: the records of failed commits, which recovery must never bring back.
//! - `lock`: one process per spool directory and per core directory.

mod commit;
mod index;
mod lock;
pub mod reader;
pub mod record;
mod recovery;
pub mod segment;
mod sync_thread;
mod voided;

#[cfg(test)]
mod reuse_tests;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::envelope::{Envelope, MessageId};
pub use commit::SyncOn;
use commit::{CommitQueue, CommitSettings};
use index::{LiveMessage, SegmentUsage, SpoolIndex};
use record::{RECORD_HEADER_BYTES, STATE_RECORD_SPAN, StateRecord};
use segment::{SEGMENT_HEADER_BYTES, SegmentHeader, WritableSegment};

pub use index::{SeqHasher, SeqMap};
pub use lock::{LOCK_FILE_NAME, SpoolLock};
pub use reader::{BodyBytes, SegmentReader, SequentialMessages, StoredMessage};

/// Default size of a segment file.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Smallest segment the spool accepts.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// Where and how one core spools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The spool root; this core uses `<dir>/core-<core>/`.
    pub dir: PathBuf,
    pub core: u16,
    /// Size of each pre-allocated segment file.
    pub segment_bytes: u64,
    /// Message records are refused once segment files would exceed this sum. State records may use
    /// one segment beyond it, so deliveries can always be recorded (and so reclaim can happen).
    pub max_spool_bytes: u64,
    /// `false` skips every fdatasync: only for comparison benchmarks.
    pub fsync: bool,
    /// Longest a delivered or deferred recipient's state record waits to ride with another
    /// commit before it starts one (0: each is synced at once, as message records are).
    pub lazy_state_sync_ms: u64,
    /// Least time between the starts of two commits' syncs (0: a commit starts as soon as a
    /// record waits and a sync slot is free).
    pub min_sync_interval_us: u64,
    /// Where the fdatasyncs run.
    pub sync_on: SyncOn,
    /// Finished segment files kept to be reused as later segments instead of deleted: a sync
    /// into a file already written converts no extents (0: every finished file is deleted).
    pub free_segment_files: usize,
}

/// Default of `free_segment_files` (`[spool] free_segment_files`).
pub const DEFAULT_FREE_SEGMENT_FILES: usize = 4;

/// Default of `lazy_state_sync_ms` (`[spool] lazy_state_sync_ms`).
pub const DEFAULT_LAZY_STATE_SYNC_MS: u64 = 100;

/// Default of `min_sync_interval_us` (`[spool] min_sync_interval_us`).
pub const DEFAULT_MIN_SYNC_INTERVAL_US: u64 = 500;

impl SpoolConfig {
    /// A configuration with 64 MiB segments, a 16 GiB limit and fsync on.
    pub fn new(dir: impl Into<PathBuf>, core: u16) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            core,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_spool_bytes: 16 << 30,
            fsync: true,
            lazy_state_sync_ms: DEFAULT_LAZY_STATE_SYNC_MS,
            min_sync_interval_us: DEFAULT_MIN_SYNC_INTERVAL_US,
            sync_on: SyncOn::IoUring,
            free_segment_files: DEFAULT_FREE_SEGMENT_FILES,
        }
    }
}

/// Where a stored body lies: enough for any core to read it through a `SegmentReader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BodyLocation {
    pub core: u16,
    pub segment: u32,
    /// Byte offset of the body in the segment file.
    pub offset: u64,
    pub len: u32,
    /// Byte offset of the message record holding the body (and the envelope) in the same segment.
    pub record_offset: u32,
}

impl BodyLocation {
    /// Where the message record holding this body lies.
    pub fn record(&self) -> RecordLocation {
        RecordLocation {
            core: self.core,
            segment: self.segment,
            offset: self.record_offset,
        }
    }
}

/// Where a message record lies: what a core keeps in RAM for a queued message instead of its
/// envelope, which `SegmentReader::message` reads back (CRC-checked) when a transaction needs it.
/// Offsets fit a `u32`: a segment is at most `u32::MAX` bytes (`Spool::open` refuses larger ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordLocation {
    /// The core whose spool holds the record (the message id's core).
    pub core: u16,
    pub segment: u32,
    /// Byte offset of the record header in the segment file.
    pub offset: u32,
}

/// Where one recipient of a spooled message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipientState {
    Pending,
    Deferred { next_attempt_s: u64, attempts: u32 },
    Delivered,
    Bounced,
    Expired,
}

impl RecipientState {
    /// Delivered, bounced and expired recipients need nothing more.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RecipientState::Delivered | RecipientState::Bounced | RecipientState::Expired
        )
    }
}

/// A message found at recovery with at least one recipient not yet finished. The envelope stays in
/// the spool (it was checked at recovery); read it with `SegmentReader::message` when routing.
/// 48 bytes, and no allocation for a message without state records (the usual case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredMessage {
    pub id: MessageId,
    pub record: RecordLocation,
    pub recipient_count: u32,
    /// One per envelope recipient, in envelope order; `None` when none was recorded (all pending).
    recorded_states: Option<Box<[RecipientState]>>,
}

impl RecoveredMessage {
    /// The state of every recipient, in envelope order.
    pub fn states(&self) -> impl Iterator<Item = RecipientState> + '_ {
        (0..self.recipient_count as usize).map(|i| {
            self.recorded_states
                .as_ref()
                .and_then(|s| s.get(i).copied())
                .unwrap_or(RecipientState::Pending)
        })
    }
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error: {0}")]
    Io(#[source] io::Error),
    /// `max_spool_bytes` reached or the disk is full (ENOSPC): answer 452 4.3.1.
    #[error("spool full")]
    Full,
    #[error("corrupt spool data: {0}")]
    Corrupt(String),
    #[error("record too large: {bytes} bytes, limit {limit_bytes}")]
    TooLarge { bytes: u64, limit_bytes: u64 },
    /// An fsync failed: what the disk holds is unknown, so the spool accepts nothing more.
    #[error("spool disabled after a failed sync: {reason}")]
    Poisoned { reason: String },
    #[error("message {0} is not in this core's spool")]
    UnknownMessage(MessageId),
    #[error("message {id} has no recipient {recipient}")]
    NoSuchRecipient { id: MessageId, recipient: u32 },
    #[error("message {id} belongs to core {}, this spool is core {spool_core}", id.core)]
    WrongCore { id: MessageId, spool_core: u16 },
    #[error("invalid spool configuration: {0}")]
    Config(String),
    #[error("spool closed")]
    Closed,
    /// Another process (or another open of this spool) holds the directory's lock.
    #[error("{} is held by another process ({}): one volley per spool", path.display(), lock::describe_holder(*holder))]
    Locked { path: PathBuf, holder: Option<u32> },
}

impl SpoolError {
    /// Maps an I/O error, turning ENOSPC (and EDQUOT) into `Full`.
    pub fn from_io(e: io::Error) -> SpoolError {
        let full = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            || e.kind() == io::ErrorKind::StorageFull
            || e.kind() == io::ErrorKind::QuotaExceeded;
        if full {
            SpoolError::Full
        } else {
            SpoolError::Io(e)
        }
    }
}

impl From<io::Error> for SpoolError {
    fn from(e: io::Error) -> SpoolError {
        SpoolError::from_io(e)
    }
}

/// Counters and sizes of one spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Group commits made durable (each covers every record written before it started; a
    /// failed one is not counted). `volley_spool_commits_total` shows it.
    pub commits: u64,
    /// fdatasync calls issued (0 with `fsync: false`).
    pub fsyncs: u64,
    pub messages_stored: u64,
    pub state_records: u64,
    pub segments: u64,
    /// Sum of segment file sizes.
    pub spool_bytes: u64,
    /// This spool's size limit (its core's share of `max_spool_bytes`).
    pub max_spool_bytes: u64,
    /// Messages with unfinished recipients.
    pub live_messages: u64,
    pub segments_reclaimed: u64,
    /// Finished segment files kept to be reused (not in `segments` nor `spool_bytes`).
    pub free_segment_files: u64,
    /// Free files taken to make a segment (one whose reuse fails is deleted and the segment
    /// created instead, with a warning).
    pub segments_reused: u64,
    /// Records skipped at recovery because they failed a check.
    pub corrupt_records_skipped: u64,
}

/// Which limit a record is held to when it needs a new segment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RecordClass {
    Message,
    State,
}

struct SpoolInner {
    config: SpoolConfig,
    core_dir: PathBuf,
    next_seq: Cell<u64>,
    writer: RefCell<WritableSegment>,
    index: RefCell<SpoolIndex>,
    commit: Rc<CommitQueue>,
    reclaim_wanted: Cell<bool>,
    /// The next segment, made ahead of time on the blocking pool so that switching to it is a
    /// header rewrite: creating and pre-allocating a segment file takes milliseconds, and on the
    /// reactor it would stall every session of the core. Its file is not in the index (not
    /// counted in `spool_bytes`); one is made only while `max_spool_bytes` has room for it.
    spare: RefCell<Option<glommio::Task<Result<WritableSegment, SpoolError>>>>,
    /// Free segment files (`<old number>.free`), at most `free_segment_files`: the next
    /// segments are made out of them.
    free: RefCell<Vec<u32>>,
    /// One writer at a time switches segments; the others wait for it and use the new one.
    switching: glommio::sync::Semaphore,
    stats: Cell<SpoolStats>,
    /// This core directory's lock: held while the spool may write, released by `close`.
    lock: RefCell<Option<SpoolLock>>,
    /// Test hook: runs on the thread that creates a segment file, just before it does.
    #[cfg(test)]
    creation_hook: RefCell<Option<std::sync::Arc<dyn Fn() + Send + Sync>>>,
}

/// One core's spool. Cheap to clone; `!Send` by design (it belongs to its core's executor).
#[derive(Clone)]
pub struct Spool {
    inner: Rc<SpoolInner>,
}

impl Spool {
    /// Opens (creating if needed) this core's spool, recovers it, starts a fresh segment and the
    /// committer task. Call inside a glommio executor. Startup work (scan, torn-tail repair,
    /// deleting finished segments) uses blocking syscalls: nothing else runs yet.
    pub fn open(mut config: SpoolConfig) -> Result<(Spool, Vec<RecoveredMessage>), SpoolError> {
        // glommio opens the directory for its syncs without a base: a relative path would fail
        // at the first commit (EBADF), long after start. The embedded default's path is relative.
        config.dir = std::path::absolute(&config.dir).map_err(SpoolError::from_io)?;
        if config.segment_bytes < MIN_SEGMENT_BYTES || config.segment_bytes > u32::MAX as u64 {
            return Err(SpoolError::Config(format!(
                "segment_bytes must be between {MIN_SEGMENT_BYTES} and {}",
                u32::MAX
            )));
        }
        let core_dir = segment::core_dir(&config.dir, config.core);
        create_dir_durably(&core_dir).map_err(SpoolError::from_io)?;
        let lock = SpoolLock::acquire(&core_dir)?;
        let outcome = recovery::recover(&core_dir, config.core)?;
        let mut index = outcome.index;
        let mut free = segment::list_free_files(&core_dir).map_err(SpoolError::from_io)?;
        // Above every number a file here ever had: a free file's old records must never match
        // its new number's seed.
        let next_number = outcome
            .last_segment
            .into_iter()
            .chain(free.last().copied())
            .max()
            .map_or(1, |n| n + 1);
        // Kept: files of today's segment size, as many as the bound and `max_spool_bytes`
        // allow (newest first), as reclaim keeps them.
        free.reverse();
        let mut kept = 0;
        free.retain(|&old| {
            let path = core_dir.join(segment::free_file_name(old));
            let fits = std::fs::metadata(&path).is_ok_and(|m| m.len() == config.segment_bytes);
            if fits && pool_has_room(&config, index.spool_bytes, kept) {
                kept += 1;
                return true;
            }
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("removing {}: {e}", path.display());
            }
            false
        });
        // Always a new segment (the old last one may end in a repaired torn tail), out of a
        // free file when there is one.
        let writer = make_segment(
            &core_dir,
            free.pop(),
            SegmentHeader {
                core: config.core,
                segment: next_number,
                created_at_s: crate::clock::unix_s(),
                segment_bytes: config.segment_bytes,
                next_seq: outcome.next_seq,
            },
        )?;
        index.add_segment(
            next_number,
            SegmentUsage {
                bytes: config.segment_bytes,
                ..SegmentUsage::default()
            },
        );
        let mut reclaimed = 0;
        for victim in index.reclaimable(next_number) {
            let path = core_dir.join(segment::segment_file_name(victim));
            let Some(usage) = index.remove_segment(victim) else {
                continue;
            };
            let fate = reclaim_fate(&config, &usage, index.spool_bytes, free.len());
            let removed = match fate {
                Reclaim::SetAside => {
                    log::warn!("setting damaged segment {} aside", path.display());
                    std::fs::rename(&path, damaged_path(&path))
                }
                Reclaim::KeepFree => {
                    std::fs::rename(&path, core_dir.join(segment::free_file_name(victim)))
                        .map(|()| free.push(victim))
                }
                Reclaim::Delete => std::fs::remove_file(&path),
            };
            match removed {
                Ok(()) => reclaimed += 1,
                Err(e) => log::warn!("reclaiming {}: {e}", path.display()),
            }
        }
        let commit = Rc::new(CommitQueue::new(
            core_dir.clone(),
            outcome.voided_ranges,
            CommitSettings {
                fsync: config.fsync,
                lazy_sync_ms: config.lazy_state_sync_ms,
                min_sync_interval: std::time::Duration::from_micros(config.min_sync_interval_us),
                sync_on: config.sync_on,
            },
        ));
        commit.segment_created();
        glommio::spawn_local(commit.clone().run_committer()).detach();
        let stats = SpoolStats {
            segments_reclaimed: reclaimed,
            corrupt_records_skipped: outcome.corrupt_records,
            ..SpoolStats::default()
        };
        let spool = Spool {
            inner: Rc::new(SpoolInner {
                config,
                core_dir,
                next_seq: Cell::new(outcome.next_seq),
                writer: RefCell::new(writer),
                index: RefCell::new(index),
                commit,
                reclaim_wanted: Cell::new(false),
                spare: RefCell::new(None),
                free: RefCell::new(free),
                switching: glommio::sync::Semaphore::new(1),
                stats: Cell::new(stats),
                lock: RefCell::new(Some(lock)),
                #[cfg(test)]
                creation_hook: RefCell::new(None),
            }),
        };
        spool.prepare_spare();
        Ok((spool, outcome.messages))
    }

    /// A fresh message id on this core (never repeats, also across restarts).
    pub fn next_id(&self) -> MessageId {
        let seq = self.inner.next_seq.get();
        self.inner.next_seq.set(seq + 1);
        MessageId {
            core: self.inner.config.core,
            seq,
        }
    }

    /// The core this spool belongs to.
    pub fn core(&self) -> u16 {
        self.inner.config.core
    }

    /// Stores a message: `header` (the Received: line) and `body` become one contiguous body.
    /// Returns once the record is durable (or, with `fsync: false`, once committed to the cache).
    pub async fn store(
        &self,
        id: MessageId,
        envelope: &Envelope,
        header: &[u8],
        body: &[u8],
    ) -> Result<BodyLocation, SpoolError> {
        self.store_as(id, envelope, header, body, RecordClass::Message)
            .await
    }

    /// Stores a small delivery status notification (`store` otherwise): it may use the segment
    /// beyond `max_spool_bytes` that state records use. A bounce is recorded only once its DSN
    /// is spooled, and only then can its message's record be freed: without this, a spool full
    /// of mail that bounces could never make room again. Callers keep these notices small (the
    /// original's headers only), so the state records keep their room.
    pub async fn store_notice(
        &self,
        id: MessageId,
        envelope: &Envelope,
        header: &[u8],
        body: &[u8],
    ) -> Result<BodyLocation, SpoolError> {
        self.store_as(id, envelope, header, body, RecordClass::State)
            .await
    }

    async fn store_as(
        &self,
        id: MessageId,
        envelope: &Envelope,
        header: &[u8],
        body: &[u8],
        class: RecordClass,
    ) -> Result<BodyLocation, SpoolError> {
        let inner = &*self.inner;
        self.check_core(id)?;
        inner.commit.check_writable()?;
        let body_len = header.len() as u64 + body.len() as u64;
        let payload_len = record::message_payload_len(envelope, body_len)?;
        let span = record::record_span(payload_len);
        self.make_room(span, class).await?;
        let (segment, offset, body_at) = {
            let mut writer = inner.writer.borrow_mut();
            let segment = writer.number;
            let seed = writer.seed;
            // The body goes to the page cache from where it lies (the session's buffer): the
            // only copy between the socket and the disk besides the kernel's own.
            let (at, body_at) = writer
                .append_vectored(
                    span,
                    |prefix| {
                        record::encode_message_prefix(
                            prefix,
                            seed,
                            id,
                            envelope,
                            header,
                            body,
                            payload_len,
                        )
                    },
                    &[header, body],
                )
                .ok_or(SpoolError::Full)??;
            (segment, at as u64, body_at)
        };
        let recipients = envelope.recipients.len() as u32;
        inner
            .index
            .borrow_mut()
            .add_message(id.seq, LiveMessage::new(segment, recipients, &[]));
        if id.seq >= inner.next_seq.get() {
            inner.next_seq.set(id.seq + 1);
        }
        self.update_stats(|s| s.messages_stored += 1);
        let batch = inner
            .commit
            .join(segment, offset as u32, (offset + span as u64) as u32);
        if let Err(e) = batch.wait().await {
            inner.index.borrow_mut().remove_message(id.seq);
            return Err(e);
        }
        self.reclaim_if_wanted().await;
        Ok(BodyLocation {
            core: id.core,
            segment,
            offset: offset + body_at as u64,
            len: body_len as u32,
            record_offset: offset as u32,
        })
    }

    /// Records a recipient's new state. A bounce or expiry returns once durable (with the next
    /// group commit); a delivery or deferral at once, durable within `lazy_state_sync_ms`.
    /// Finishing a message's last recipient may reclaim segments.
    pub async fn set_state(
        &self,
        id: MessageId,
        recipient: u32,
        state: RecipientState,
    ) -> Result<(), SpoolError> {
        self.set_states(id, &[(recipient, state)]).await
    }

    /// Records new states of several recipients of message `id` (one transaction's outcomes):
    /// their records are written with one `pwrite`, and join one commit. All or nothing: on an
    /// error none is applied. Waits for durability, as `set_state` does, when any of them is a
    /// bounce or an expiry.
    pub async fn set_states(
        &self,
        id: MessageId,
        states: &[(u32, RecipientState)],
    ) -> Result<(), SpoolError> {
        self.set_states_of(&[(id, states)]).await
    }

    /// `set_states` for several messages at once (the outcomes that reached the spooling core
    /// together): every record in one `pwrite` and one commit, all or nothing.
    pub async fn set_states_of(
        &self,
        messages: &[(MessageId, &[(u32, RecipientState)])],
    ) -> Result<(), SpoolError> {
        let inner = &*self.inner;
        for &(id, _) in messages {
            self.check_core(id)?;
        }
        inner.commit.check_writable()?;
        let records: usize = messages.iter().map(|(_, states)| states.len()).sum();
        if records == 0 {
            return Ok(());
        }
        // Each message's own segment, checked before anything is written.
        let message_segments = {
            let index = inner.index.borrow();
            let mut segments = Vec::with_capacity(messages.len());
            for &(id, states) in messages {
                let message = index
                    .messages
                    .get(&id.seq)
                    .ok_or(SpoolError::UnknownMessage(id))?;
                if let Some(&(recipient, _)) = states
                    .iter()
                    .find(|(recipient, _)| *recipient >= message.recipient_count)
                {
                    return Err(SpoolError::NoSuchRecipient { id, recipient });
                }
                segments.push(message.segment);
            }
            segments
        };
        let span = STATE_RECORD_SPAN * records;
        self.make_room(span, RecordClass::State).await?;
        let (segment, at) = {
            let mut writer = inner.writer.borrow_mut();
            let segment = writer.number;
            let seed = writer.seed;
            let (at, ()) = writer
                .append(span, |dst| {
                    let mut slots = dst.chunks_exact_mut(STATE_RECORD_SPAN);
                    for (&(id, states), &message_segment) in messages.iter().zip(&message_segments)
                    {
                        // States first: `zip` takes from its left side before it learns the
                        // right one has ended, and a slot taken here would be lost.
                        for (&(recipient, state), dst) in states.iter().zip(slots.by_ref()) {
                            let record = StateRecord {
                                id,
                                message_segment,
                                recipient,
                                state,
                            };
                            record::encode_state(dst, seed, &record);
                        }
                    }
                })
                .ok_or(SpoolError::Full)??;
            (segment, at as u32)
        };
        // Pinned now, before waiting: a reclaim meanwhile must not delete a state record's
        // segment while the message's own survives.
        if let Some(usage) = inner.index.borrow_mut().segments.get_mut(&segment) {
            for &message_segment in &message_segments {
                if message_segment != segment {
                    usage.pin(message_segment);
                }
            }
        }
        self.update_stats(|s| s.state_records += records as u64);
        let end = at + span as u32;
        // Lost in a power cut, a delivery's or deferral's record only makes a restart try the
        // recipient again (or sooner): it rides with the next commit instead of paying for one
        // (see `commit`). Bounces and expiries wait: lost, they would send a second DSN.
        let lazy = messages
            .iter()
            .flat_map(|(_, states)| *states)
            .all(|(_, state)| {
                matches!(
                    state,
                    RecipientState::Delivered | RecipientState::Deferred { .. }
                )
            });
        let batch = if lazy {
            inner.commit.join_lazy(segment, at, end)
        } else {
            Some(inner.commit.join(segment, at, end))
        };
        if let Some(batch) = batch {
            batch.wait().await?;
        }
        // Applied once durable (or lazily joined): after a failed commit the index still
        // matches what recovery would find, and the caller may try the same states again.
        {
            let mut index = inner.index.borrow_mut();
            for (&(id, states), &message_segment) in messages.iter().zip(&message_segments) {
                for &(recipient, state) in states {
                    index.apply_state(id.seq, recipient, state);
                }
                let segment_finished = !index.messages.contains_key(&id.seq)
                    && index
                        .segments
                        .get(&message_segment)
                        .is_some_and(|u| u.live_messages == 0);
                if segment_finished {
                    inner.reclaim_wanted.set(true);
                }
            }
        }
        self.reclaim_if_wanted().await;
        Ok(())
    }

    /// For each recipient of message `id` (envelope order), whether it is finished (delivered,
    /// bounced, expired), while the message has an unfinished one; `None` once it has none, or
    /// when it is not in this spool.
    pub fn finished_recipients(&self, id: MessageId) -> Option<Vec<bool>> {
        if id.core != self.inner.config.core {
            return None;
        }
        self.inner
            .index
            .borrow()
            .messages
            .get(&id.seq)
            .map(LiveMessage::finished)
    }

    /// Whether a message of about `bytes` bytes can be stored now (`false`: answer 452 4.3.1).
    /// Turns true again by itself once reclaim has freed segments.
    pub fn has_room(&self, bytes: u64) -> bool {
        let inner = &*self.inner;
        if inner.commit.check_writable().is_err() {
            return false;
        }
        let span = bytes.saturating_add(RECORD_HEADER_BYTES as u64 + 4096);
        if (inner.writer.borrow().remaining() as u64) >= span {
            return true;
        }
        let index = inner.index.borrow();
        index.spool_bytes + inner.config.segment_bytes <= inner.config.max_spool_bytes
    }

    /// Waits until every record written so far is durable.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        match self.inner.commit.pending_batch() {
            Some(batch) => batch.wait().await,
            None => Ok(()),
        }
    }

    /// For SIGTERM: makes everything written durable, then stops the committer. Later stores and
    /// state changes fail with `Closed`.
    pub async fn close(&self) -> Result<(), SpoolError> {
        let flushed = self.flush().await;
        self.inner.commit.stop();
        self.inner.switching.close();
        // A spare left unused holds no record: recovery reclaims it at the next start. Waited
        // for, so that no file appears here once the lock is released.
        let spare = self.inner.spare.borrow_mut().take();
        if let Some(spare) = spare {
            let _ = spare.await;
        }
        // Nothing is written after this: another open of the directory may take over.
        self.inner.lock.borrow_mut().take();
        flushed
    }

    /// Test hook: `hook` runs on the thread that creates each later segment file, just before.
    #[cfg(test)]
    pub fn on_segment_creation(&self, hook: std::sync::Arc<dyn Fn() + Send + Sync>) {
        *self.inner.creation_hook.borrow_mut() = Some(hook);
    }

    /// Test hook: the next group commit fails with `kind`, as a failing disk would.
    #[cfg(test)]
    pub fn fail_next_commit(&self, kind: io::ErrorKind) {
        self.inner.commit.fail_next_sync(kind);
    }

    /// Counters and sizes.
    pub fn stats(&self) -> SpoolStats {
        let inner = &*self.inner;
        let counters = inner.commit.counters();
        let index = inner.index.borrow();
        SpoolStats {
            commits: counters.commits,
            fsyncs: counters.fsyncs,
            segments: index.segments.len() as u64,
            spool_bytes: index.spool_bytes,
            max_spool_bytes: inner.config.max_spool_bytes,
            live_messages: index.messages.len() as u64,
            free_segment_files: inner.free.borrow().len() as u64,
            ..inner.stats.get()
        }
    }

    fn check_core(&self, id: MessageId) -> Result<(), SpoolError> {
        if id.core != self.inner.config.core {
            return Err(SpoolError::WrongCore {
                id,
                spool_core: self.inner.config.core,
            });
        }
        Ok(())
    }

    fn update_stats(&self, f: impl FnOnce(&mut SpoolStats)) {
        let mut stats = self.inner.stats.get();
        f(&mut stats);
        self.inner.stats.set(stats);
    }

    /// Makes sure the current segment has `span` bytes free, switching to the next segment if
    /// needed. The switch takes the spare made ahead of time (or waits for one made off the
    /// reactor), restamps its header, and has the next commit sync the directory, so the new
    /// file's entry is durable before any record in it is acknowledged.
    async fn make_room(&self, span: usize, class: RecordClass) -> Result<(), SpoolError> {
        let inner = &*self.inner;
        let capacity = inner.config.segment_bytes - SEGMENT_HEADER_BYTES as u64;
        if span as u64 > capacity {
            return Err(SpoolError::TooLarge {
                bytes: span as u64,
                limit_bytes: capacity,
            });
        }
        if inner.writer.borrow().remaining() >= span {
            return Ok(());
        }
        let _switching = inner
            .switching
            .acquire_permit(1)
            .await
            .map_err(|_| SpoolError::Closed)?;
        // Another writer may have switched while this one waited.
        if inner.writer.borrow().remaining() >= span {
            return Ok(());
        }
        inner.commit.check_writable()?;
        let limit = match class {
            RecordClass::Message => inner.config.max_spool_bytes,
            RecordClass::State => inner
                .config
                .max_spool_bytes
                .saturating_add(inner.config.segment_bytes),
        };
        let spool_bytes = inner.index.borrow().spool_bytes;
        if spool_bytes + inner.config.segment_bytes > limit {
            return Err(SpoolError::Full);
        }
        let number = inner.writer.borrow().number + 1;
        let spare = inner.spare.borrow_mut().take();
        let prepared = match spare {
            Some(task) => match task.await {
                Ok(segment) if segment.number == number => Some(segment),
                Ok(segment) => {
                    log::warn!(
                        "spool {}: spare segment {} is not the next one ({number}); left for \
                         recovery to reclaim",
                        inner.core_dir.display(),
                        segment.number
                    );
                    None
                }
                Err(e) => {
                    log::warn!(
                        "spool {}: preparing segment {number} failed ({e}); trying again",
                        inner.core_dir.display()
                    );
                    None
                }
            },
            None => None,
        };
        let mut fresh = match prepared {
            Some(segment) => segment,
            None => self.create_segment(number).await?,
        };
        fresh.restamp(self.segment_header(number))?;
        // The old segment closes; its written pages stay in the page cache for the committer's fsync.
        *inner.writer.borrow_mut() = fresh;
        inner.index.borrow_mut().add_segment(
            number,
            SegmentUsage {
                bytes: inner.config.segment_bytes,
                ..SegmentUsage::default()
            },
        );
        inner.commit.segment_created();
        inner.reclaim_wanted.set(true);
        self.prepare_spare();
        Ok(())
    }

    /// The header of segment `number` if it became the one written now.
    fn segment_header(&self, number: u32) -> SegmentHeader {
        let inner = &*self.inner;
        SegmentHeader {
            core: inner.config.core,
            segment: number,
            created_at_s: crate::clock::unix_s(),
            segment_bytes: inner.config.segment_bytes,
            next_seq: inner.next_seq.get(),
        }
    }

    /// Makes segment `number` on the executor's blocking pool: out of a free file if one is
    /// kept, else created and pre-allocated.
    fn create_segment(
        &self,
        number: u32,
    ) -> impl std::future::Future<Output = Result<WritableSegment, SpoolError>> + 'static {
        let core_dir = self.inner.core_dir.clone();
        let header = self.segment_header(number);
        let free = self.inner.free.borrow_mut().pop();
        if free.is_some() {
            self.update_stats(|s| s.segments_reused += 1);
        }
        #[cfg(test)]
        let hook = self.inner.creation_hook.borrow().clone();
        glommio::executor().spawn_blocking(move || {
            #[cfg(test)]
            if let Some(hook) = hook {
                hook();
            }
            make_segment(&core_dir, free, header)
        })
    }

    /// Starts making the segment after the current one, unless one is on its way or the spool
    /// has no room for it within `max_spool_bytes` (the next switch then creates it, if allowed).
    fn prepare_spare(&self) {
        let inner = &*self.inner;
        if inner.spare.borrow().is_some() || inner.commit.check_writable().is_err() {
            return;
        }
        let spool_bytes = inner.index.borrow().spool_bytes;
        if spool_bytes + inner.config.segment_bytes > inner.config.max_spool_bytes {
            return;
        }
        let number = inner.writer.borrow().number + 1;
        let created = self.create_segment(number);
        *inner.spare.borrow_mut() = Some(glommio::spawn_local(created));
    }

    /// Deletes every segment the index says is finished (never the current one).
    async fn reclaim_if_wanted(&self) {
        let inner = &*self.inner;
        if !inner.reclaim_wanted.replace(false) {
            return;
        }
        let current = inner.writer.borrow().number;
        let victims = {
            let mut index = inner.index.borrow_mut();
            let mut victims = Vec::new();
            // Files promised to the pool by this pass, counted before their renames finish.
            let mut kept = inner.free.borrow().len();
            for victim in index.reclaimable(current) {
                let Some(usage) = index.remove_segment(victim) else {
                    continue;
                };
                inner.commit.segment_removed(victim);
                let fate = reclaim_fate(&inner.config, &usage, index.spool_bytes, kept);
                if fate == Reclaim::KeepFree {
                    kept += 1;
                }
                victims.push((victim, fate));
            }
            victims
        };
        for (victim, fate) in victims {
            let path = inner.core_dir.join(segment::segment_file_name(victim));
            let removed = match fate {
                Reclaim::SetAside => {
                    log::warn!("setting damaged segment {} aside", path.display());
                    glommio::io::rename(&path, damaged_path(&path)).await
                }
                Reclaim::KeepFree => {
                    let free = inner.core_dir.join(segment::free_file_name(victim));
                    let renamed = glommio::io::rename(&path, &free).await;
                    if renamed.is_ok() {
                        inner.free.borrow_mut().push(victim);
                    }
                    renamed
                }
                Reclaim::Delete => glommio::io::remove(&path).await,
            };
            if let Err(e) = removed {
                log::warn!("reclaiming {}: {e}", path.display());
            }
            self.update_stats(|s| s.segments_reclaimed += 1);
        }
    }
}

/// What reclaim does with a finished segment's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reclaim {
    /// Damaged: renamed `<name>.damaged` for inspection.
    SetAside,
    /// Renamed `<number>.free`, to be made into a later segment.
    KeepFree,
    Delete,
}

/// A finished file is kept free while the pool has fewer than `free_segment_files`, the file
/// has today's segment size and format, and the spool with its free files stays within
/// `max_spool_bytes` (`spool_bytes`: the segments left, `free`: the files kept so far).
fn reclaim_fate(
    config: &SpoolConfig,
    usage: &SegmentUsage,
    spool_bytes: u64,
    free: usize,
) -> Reclaim {
    if usage.damaged {
        return Reclaim::SetAside;
    }
    if !usage.legacy
        && usage.bytes == config.segment_bytes
        && pool_has_room(config, spool_bytes, free)
    {
        Reclaim::KeepFree
    } else {
        Reclaim::Delete
    }
}

/// Whether a pool of `free` files may take one more: under `free_segment_files`, and the
/// segments (`spool_bytes`) with the pool fit in `max_spool_bytes`.
fn pool_has_room(config: &SpoolConfig, spool_bytes: u64, free: usize) -> bool {
    free < config.free_segment_files
        && spool_bytes.saturating_add((free as u64 + 1).saturating_mul(config.segment_bytes))
            <= config.max_spool_bytes
}

/// Makes segment `header.segment` in `core_dir`: out of free file `free` when given (and
/// usable), else created. Blocking.
fn make_segment(
    core_dir: &Path,
    free: Option<u32>,
    header: SegmentHeader,
) -> Result<WritableSegment, SpoolError> {
    let path = core_dir.join(segment::segment_file_name(header.segment));
    if let Some(old) = free {
        let free_path = core_dir.join(segment::free_file_name(old));
        match WritableSegment::reuse(&free_path, &path, header) {
            Ok(segment) => {
                log::info!(
                    "{}: made out of the finished file of segment {old}",
                    path.display()
                );
                return Ok(segment);
            }
            Err(e) => log::warn!(
                "reusing {} as segment {}: {e}; creating it",
                free_path.display(),
                header.segment
            ),
        }
    }
    WritableSegment::create(&path, header)
}

/// Where a damaged segment is set aside instead of being deleted.
fn damaged_path(path: &std::path::Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".damaged");
    PathBuf::from(name)
}

/// Locks the spool directory `dir` (created if missing) for this process: `serve` holds it while
/// it runs, so a second daemon on the same spool refuses to start (`SpoolError::Locked`).
pub fn lock_spool_dir(dir: &Path) -> Result<SpoolLock, SpoolError> {
    create_dir_durably(dir).map_err(SpoolError::from_io)?;
    SpoolLock::acquire(dir)
}

/// Creates `dir` and its missing parents, and syncs the parent of each one created: a directory
/// entry is durable only once its parent is synced, and a spool directory lost in a power cut
/// would take acknowledged messages with it. Blocking, once per core at start.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let mut created = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        created.push(path);
        at = path.parent();
    }
    std::fs::create_dir_all(dir)?;
    for path in created {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Recovery of one core directory for the spool fuzz target (`fuzz/`), which runs it on segment
/// files made of fuzz bytes: the messages still to deliver and the corrupt records skipped.
/// Recovery needs no executor.
#[doc(hidden)]
pub fn recover_for_fuzzing(
    core_dir: &Path,
    core: u16,
) -> Result<(Vec<RecoveredMessage>, u64), SpoolError> {
    recovery::recover(core_dir, core).map(|outcome| (outcome.messages, outcome.corrupt_records))
}
