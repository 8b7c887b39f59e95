//! Group commit: writers write records into the page cache and join the open batch; one committer task
//! per spool closes the batch and starts its sync: one io_uring `fdatasync` per dirty segment (and
//! one on the directory after a segment was created), then wakes every writer of that batch.
//!
//! Up to `MAX_SYNCS_IN_FLIGHT` batches sync at once: a record written while a sync is in flight is
//! not held until that one returns (which cost it up to a whole extra fsync), its batch starts its
//! own. Batches still end in the order they were taken, and a batch whose predecessor failed fails
//! too: its records may share a page with the failed ones. Each sync slot has its own open file
//! descriptions of the segments and the directory, because the kernel reports a writeback error to
//! one fsync per open file (errseq): two syncs sharing one could each miss the other's error.
//!
//! Records that need not be durable before anything is answered (a delivery's or a deferral's
//! state: lost, it only makes a restart try the recipient again) join *lazily*: they ride with
//! the next batch anyone waits for, or start one of their own `lazy_sync_ms` after the first of
//! them was written. At low load this halves the fdatasyncs (each message's own record and its
//! delivery's record used to take one each).
//!
//! The first directory sync of a queue also syncs the parent (the spool directory): `core-N` may
//! have just been created there, and POSIX makes a new entry durable only through its directory.
//! ext4 and XFS commit the whole journal on the first fsync anyway (the power-loss test cannot see
//! the difference there); file systems without a journal-wide commit need it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::poll_fn;
use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Poll, Waker};

use glommio::io::{BufferedFile, Directory, OpenOptions};

use super::SpoolError;
use super::segment::segment_file_name;
use super::sync_thread::{self, SlotFiles, SyncJob};
use super::voided::{self, MAX_VOIDED_RANGES, VoidedRange};

/// How a batch ended, shared by all its writers.
#[derive(Debug, Clone)]
enum BatchOutcome {
    Durable,
    Failed {
        kind: io::ErrorKind,
        message: String,
    },
}

/// The writers waiting on one fsync.
#[derive(Default)]
pub struct Batch {
    outcome: RefCell<Option<BatchOutcome>>,
    wakers: RefCell<Vec<Waker>>,
    members: Cell<u32>,
    /// Per segment, the bytes `[from, to)` its records span: what is voided if the sync fails.
    /// Records of one segment are appended in order while the batch is open, so this is contiguous.
    spans: RefCell<BTreeMap<u32, (u32, u32)>>,
}

impl Batch {
    /// Waits until the committer has made this batch durable (or failed to).
    pub async fn wait(self: Rc<Self>) -> Result<(), SpoolError> {
        poll_fn(|cx| match &*self.outcome.borrow() {
            Some(outcome) => Poll::Ready(outcome_to_result(outcome)),
            None => {
                // Writers are polled again only when the batch finishes, so no duplicate check.
                self.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn finish(&self, outcome: BatchOutcome) {
        *self.outcome.borrow_mut() = Some(outcome);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }
}

fn outcome_to_result(outcome: &BatchOutcome) -> Result<(), SpoolError> {
    match outcome {
        BatchOutcome::Durable => Ok(()),
        BatchOutcome::Failed { kind, .. } if *kind == io::ErrorKind::StorageFull => {
            Err(SpoolError::Full)
        }
        BatchOutcome::Failed { message, .. } => Err(SpoolError::Poisoned {
            reason: message.clone(),
        }),
    }
}

/// Batches whose sync may be in flight at once (see the module doc).
pub const MAX_SYNCS_IN_FLIGHT: usize = 2;

/// Where a commit's fdatasyncs run (`[spool] sync_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncOn {
    /// io_uring `fdatasync`: a kernel worker pinned to the executor's CPU runs it.
    #[default]
    IoUring,
    /// The core's blocking thread (`sync_thread`), which may run on another CPU.
    BlockingThread,
}

/// How a spool commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitSettings {
    /// `false` skips every fdatasync (comparison benchmarks only).
    pub fsync: bool,
    /// See `CommitQueue::join_lazy`.
    pub lazy_sync_ms: u64,
    /// Least time between the starts of two batches' syncs.
    pub min_sync_interval: std::time::Duration,
    pub sync_on: SyncOn,
}

/// Counters of the committer, for stats and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitCounters {
    /// Batches made durable (a failed one is not counted).
    pub commits: u64,
    /// `fdatasync` calls issued (segments and directory).
    pub fsyncs: u64,
}

/// The state shared by the writers and the committer of one spool.
pub struct CommitQueue {
    core_dir: PathBuf,
    fsync: bool,
    sync_on: SyncOn,
    /// Per sync slot, its files for `SyncOn::BlockingThread` (away while a job runs).
    thread_files: [RefCell<Option<SlotFiles>>; MAX_SYNCS_IN_FLIGHT],
    /// Per sync slot, segments reclaimed while its files were away.
    forgotten: [RefCell<Vec<u32>>; MAX_SYNCS_IN_FLIGHT],
    open: RefCell<Rc<Batch>>,
    dirty_segments: RefCell<BTreeSet<u32>>,
    dir_dirty: Cell<bool>,
    /// The spool directory was synced by this queue (once per process: see the module doc).
    parent_synced: Cell<bool>,
    committer: RefCell<Option<Waker>>,
    stopping: Cell<bool>,
    /// Set after a failed fsync: the page cache state is then unknown, so nothing more is accepted.
    poisoned: RefCell<Option<String>>,
    /// Which sync slots have a batch in flight (taken and not yet ended).
    busy_slots: Cell<[bool; MAX_SYNCS_IN_FLIGHT]>,
    /// Per sync slot, its own handles of the segments and of the directory (see the module doc).
    files: [RefCell<HashMap<u32, Rc<BufferedFile>>>; MAX_SYNCS_IN_FLIGHT],
    directories: [RefCell<Option<Rc<Directory>>>; MAX_SYNCS_IN_FLIGHT],
    counters: Cell<CommitCounters>,
    /// Voided ranges on record in the `voided` file (bounded by `MAX_VOIDED_RANGES`).
    voided_ranges: Cell<usize>,
    /// How long a lazily joined record may wait for a batch before it starts one.
    lazy_sync: std::time::Duration,
    /// The open batch holds lazily joined records (and no member waits for them).
    lazy_open: Cell<bool>,
    /// A timer that will start a batch for the lazy records is running.
    lazy_timer: Cell<bool>,
    /// See `CommitSettings::min_sync_interval`.
    min_sync_interval: std::time::Duration,
    /// When the last batch was taken, for `min_sync_interval`.
    last_taken: Cell<Option<std::time::Instant>>,
    /// Test hook: the next sync fails with this error kind, as a failing disk would.
    #[cfg(test)]
    fault: Cell<Option<io::ErrorKind>>,
    /// Test hook: the next sync first waits this long, as a slow disk would.
    #[cfg(test)]
    delay: Cell<Option<std::time::Duration>>,
}

impl CommitQueue {
    /// `voided_ranges`: how many voided ranges recovery found on record.
    pub fn new(core_dir: PathBuf, voided_ranges: usize, settings: CommitSettings) -> CommitQueue {
        CommitQueue {
            core_dir,
            fsync: settings.fsync,
            sync_on: settings.sync_on,
            thread_files: std::array::from_fn(|_| RefCell::new(Some(SlotFiles::default()))),
            forgotten: Default::default(),
            open: RefCell::new(Rc::new(Batch::default())),
            dirty_segments: RefCell::new(BTreeSet::new()),
            dir_dirty: Cell::new(false),
            parent_synced: Cell::new(false),
            committer: RefCell::new(None),
            stopping: Cell::new(false),
            poisoned: RefCell::new(None),
            busy_slots: Cell::new([false; MAX_SYNCS_IN_FLIGHT]),
            files: Default::default(),
            directories: Default::default(),
            counters: Cell::new(CommitCounters::default()),
            voided_ranges: Cell::new(voided_ranges),
            lazy_sync: std::time::Duration::from_millis(settings.lazy_sync_ms),
            lazy_open: Cell::new(false),
            lazy_timer: Cell::new(false),
            min_sync_interval: settings.min_sync_interval,
            last_taken: Cell::new(None),
            #[cfg(test)]
            fault: Cell::new(None),
            #[cfg(test)]
            delay: Cell::new(None),
        }
    }

    /// Test hook: makes the next sync fail with `kind`.
    #[cfg(test)]
    pub fn fail_next_sync(&self, kind: io::ErrorKind) {
        self.fault.set(Some(kind));
    }

    /// Test hook: makes the next sync wait `delay` before it starts.
    #[cfg(test)]
    pub fn delay_next_sync(&self, delay: std::time::Duration) {
        self.delay.set(Some(delay));
    }

    /// Fails when the spool may no longer be written (after a failed fsync or `close`).
    pub fn check_writable(&self) -> Result<(), SpoolError> {
        if let Some(reason) = &*self.poisoned.borrow() {
            return Err(SpoolError::Poisoned {
                reason: reason.clone(),
            });
        }
        if self.stopping.get() {
            return Err(SpoolError::Closed);
        }
        Ok(())
    }

    /// Registers a record just copied into bytes `[from, to)` of `segment`; await the returned
    /// batch for durability.
    pub fn join(&self, segment: u32, from: u32, to: u32) -> Rc<Batch> {
        let batch = self.add_to_open(segment, from, to);
        batch.members.set(batch.members.get() + 1);
        self.wake_committer();
        batch
    }

    /// Registers a record that nobody waits for: it becomes durable with the next batch, which
    /// starts at the latest `lazy_sync_ms` from now. Should that batch fail, the record is voided
    /// like the rest of it (recovery then finds the state before it). With `lazy_sync_ms = 0`,
    /// a `join`: the batch is returned to be awaited.
    pub fn join_lazy(self: &Rc<Self>, segment: u32, from: u32, to: u32) -> Option<Rc<Batch>> {
        if self.lazy_sync.is_zero() {
            return Some(self.join(segment, from, to));
        }
        self.add_to_open(segment, from, to);
        self.lazy_open.set(true);
        if !self.lazy_timer.replace(true) {
            let queue = self.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(queue.lazy_sync).await;
                queue.lazy_timer.set(false);
                queue.promote_lazy();
            })
            .detach();
        }
        None
    }

    fn add_to_open(&self, segment: u32, from: u32, to: u32) -> Rc<Batch> {
        self.dirty_segments.borrow_mut().insert(segment);
        let batch = self.open.borrow().clone();
        batch
            .spans
            .borrow_mut()
            .entry(segment)
            .and_modify(|span| *span = (span.0.min(from), span.1.max(to)))
            .or_insert((from, to));
        batch
    }

    /// Lazy records in the open batch: make it a batch the committer takes (a member nobody
    /// awaits).
    fn promote_lazy(&self) {
        if self.lazy_open.get() {
            let batch = self.open.borrow().clone();
            batch.members.set(batch.members.get() + 1);
            self.wake_committer();
        }
    }

    /// The open batch if it has members or lazy records (what `flush` waits on).
    pub fn pending_batch(&self) -> Option<Rc<Batch>> {
        self.promote_lazy();
        let batch = self.open.borrow().clone();
        (batch.members.get() > 0).then_some(batch)
    }

    /// A segment file was created: the next commit also syncs the directory.
    pub fn segment_created(&self) {
        self.dir_dirty.set(true);
    }

    /// A segment was reclaimed: forget its sync handle.
    pub fn segment_removed(&self, segment: u32) {
        for files in &self.files {
            files.borrow_mut().remove(&segment);
        }
        for (slot, files) in self.thread_files.iter().enumerate() {
            match &mut *files.borrow_mut() {
                Some(files) => files.forget(segment),
                None => self.forgotten[slot].borrow_mut().push(segment),
            }
        }
        self.dirty_segments.borrow_mut().remove(&segment);
    }

    pub fn counters(&self) -> CommitCounters {
        self.counters.get()
    }

    /// Asks the committer to commit what is open and then exit.
    pub fn stop(&self) {
        self.stopping.set(true);
        self.wake_committer();
    }

    fn wake_committer(&self) {
        if let Some(waker) = self.committer.borrow_mut().take() {
            waker.wake();
        }
    }

    /// The committer task: run once per spool with `glommio::spawn_local(..).detach()`.
    pub async fn run_committer(self: Rc<Self>) {
        let mut last: Option<Rc<Batch>> = None;
        loop {
            let slot = poll_fn(|cx| {
                let open = self.open.borrow().members.get() > 0;
                let free = self.busy_slots.get().iter().position(|busy| !busy);
                match free {
                    Some(slot) if open => return Poll::Ready(Some(slot)),
                    // Only here when stopping with nothing left to commit or in flight.
                    Some(_) if self.stopping.get() && self.syncs_in_flight() == 0 => {
                        return Poll::Ready(None);
                    }
                    _ => {}
                }
                *self.committer.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            let Some(slot) = slot else {
                break;
            };
            self.space_syncs().await;
            let batch = self.open.replace(Rc::new(Batch::default()));
            self.lazy_open.set(false);
            let segments = std::mem::take(&mut *self.dirty_segments.borrow_mut());
            let dir_dirty = self.dir_dirty.replace(false);
            self.set_slot_busy(slot, true);
            // Only a batch still in flight is waited for (and can fail this one).
            let previous = last
                .replace(batch.clone())
                .filter(|previous| previous.outcome.borrow().is_none());
            glommio::spawn_local(
                self.clone()
                    .commit(batch, segments, dir_dirty, slot, previous),
            )
            .detach();
        }
        for files in &self.files {
            files.borrow_mut().clear();
        }
        for directory in &self.directories {
            directory.borrow_mut().take();
        }
    }

    /// Holds the next batch open until `min_sync_interval` after the last one was taken: records
    /// written meanwhile share its fdatasync. Only the committer takes batches, so the slot it
    /// found free stays free while it waits.
    async fn space_syncs(&self) {
        let now = std::time::Instant::now();
        if let Some(last) = self.last_taken.get()
            && !self.stopping.get()
            && let Some(wait) = (last + self.min_sync_interval).checked_duration_since(now)
            && !wait.is_zero()
        {
            glommio::timer::sleep(wait).await;
        }
        self.last_taken.set(Some(std::time::Instant::now()));
    }

    fn syncs_in_flight(&self) -> usize {
        self.busy_slots.get().iter().filter(|busy| **busy).count()
    }

    fn set_slot_busy(&self, slot: usize, busy: bool) {
        let mut slots = self.busy_slots.get();
        slots[slot] = busy;
        self.busy_slots.set(slots);
    }

    /// Syncs one batch in `slot`, then ends it once `previous` (the batch taken before it, when
    /// still in flight then) has ended: writers hear of durability in the order their batches
    /// were taken.
    async fn commit(
        self: Rc<Self>,
        batch: Rc<Batch>,
        segments: BTreeSet<u32>,
        dir_dirty: bool,
        slot: usize,
        previous: Option<Rc<Batch>>,
    ) {
        // Records written while a failing sync ran may sit in pages the kernel has already
        // marked clean after the error (a later fsync would report success without writing
        // them): after a poisoning failure, the batches still open fail and are voided too.
        let poisoned = self.poisoned.borrow().clone();
        let mut synced = match &poisoned {
            Some(reason) => Err(io::Error::other(reason.clone())),
            None => self.sync(slot, &segments, dir_dirty).await,
        };
        let failed_before = match previous {
            Some(previous) => previous.wait().await.err(),
            None => None,
        };
        // The batch before, in flight with this one, failed: this one's records may share its
        // pages (or it poisoned the spool meanwhile), so it fails the same way.
        if synced.is_ok() {
            if let Some(reason) = self.poisoned.borrow().clone() {
                synced = Err(io::Error::other(reason));
            } else if let Some(SpoolError::Full) = failed_before {
                synced = Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "the commit before this one ran out of space",
                ));
            }
        }
        let outcome = match synced {
            Ok(()) => BatchOutcome::Durable,
            Err(e) => {
                let message = self.poisoned.borrow().clone().unwrap_or_else(|| {
                    format!("fdatasync of spool {} failed: {e}", self.core_dir.display())
                });
                log::error!("{message}");
                if e.kind() != io::ErrorKind::StorageFull {
                    self.poisoned.borrow_mut().get_or_insert(message.clone());
                } else {
                    // Try again with the next batch; the data may still be in the page cache.
                    self.dirty_segments
                        .borrow_mut()
                        .extend(segments.iter().copied());
                    self.dir_dirty.set(self.dir_dirty.get() || dir_dirty);
                }
                self.void(&batch).await;
                BatchOutcome::Failed {
                    kind: e.kind(),
                    message,
                }
            }
        };
        if matches!(outcome, BatchOutcome::Durable) {
            let mut counters = self.counters.get();
            counters.commits += 1;
            self.counters.set(counters);
        }
        batch.finish(outcome);
        self.set_slot_busy(slot, false);
        self.wake_committer();
    }

    /// Makes the records of a batch whose sync failed void for recovery, before its writers hear
    /// of the failure (they answer 451/452, so the records must never come back). When even that
    /// cannot be recorded, the spool takes nothing more (poisoned) and the ranges are logged.
    async fn void(&self, batch: &Batch) {
        let ranges: Vec<VoidedRange> = batch
            .spans
            .borrow()
            .iter()
            .map(|(&segment, &(from, to))| VoidedRange { segment, from, to })
            .collect();
        let total = self.voided_ranges.get() + ranges.len();
        let written = if total > MAX_VOIDED_RANGES {
            Err(io::Error::other(format!(
                "more than {MAX_VOIDED_RANGES} voided ranges"
            )))
        } else {
            let core_dir = self.core_dir.clone();
            let ranges = ranges.clone();
            glommio::executor()
                .spawn_blocking(move || voided::append(&core_dir, &ranges))
                .await
        };
        match written {
            Ok(()) => {
                self.voided_ranges.set(total);
                log::warn!(
                    "spool {}: records of the failed commit voided: {ranges:?}",
                    self.core_dir.display()
                );
            }
            Err(e) => {
                let message = format!(
                    "spool {}: records of a failed commit could not be voided ({e}); they may \
                     come back at the next start: {ranges:?}",
                    self.core_dir.display()
                );
                log::error!("{message}");
                self.poisoned.borrow_mut().get_or_insert(message);
            }
        }
    }

    async fn sync(&self, slot: usize, segments: &BTreeSet<u32>, dir_dirty: bool) -> io::Result<()> {
        #[cfg(test)]
        if let Some(delay) = self.delay.take() {
            glommio::timer::sleep(delay).await;
        }
        #[cfg(test)]
        if let Some(kind) = self.fault.take() {
            // A failing disk takes its time: writers may join the next batch meanwhile.
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            return Err(io::Error::new(kind, "injected by a test"));
        }
        if !self.fsync {
            return Ok(());
        }
        if self.sync_on == SyncOn::BlockingThread {
            return self.sync_on_thread(slot, segments, dir_dirty).await;
        }
        for &segment in segments {
            let file = match self.file(slot, segment).await {
                Ok(file) => file,
                // Reclaimed meanwhile: nothing of it needs to be durable any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            file.fdatasync().await?;
            self.count_fsync();
        }
        if dir_dirty {
            let dir = self.directory(slot).await?;
            dir.sync().await?;
            self.count_fsync();
            if !self.parent_synced.get() {
                self.sync_parent().await?;
                self.parent_synced.set(true);
            }
        }
        Ok(())
    }

    async fn sync_on_thread(
        &self,
        slot: usize,
        segments: &BTreeSet<u32>,
        dir_dirty: bool,
    ) -> io::Result<()> {
        let files = self.thread_files[slot]
            .borrow_mut()
            .take()
            .unwrap_or_default();
        let job = SyncJob {
            core_dir: self.core_dir.clone(),
            segments: segments.clone(),
            dir_dirty,
            parent: dir_dirty && !self.parent_synced.get(),
        };
        let parent = job.parent;
        let done = glommio::executor()
            .spawn_blocking(move || sync_thread::run(job, files))
            .await;
        let mut files = done.files;
        for segment in self.forgotten[slot].borrow_mut().drain(..) {
            files.forget(segment);
        }
        *self.thread_files[slot].borrow_mut() = Some(files);
        for _ in 0..done.fsyncs {
            self.count_fsync();
        }
        if done.result.is_ok() && parent {
            self.parent_synced.set(true);
        }
        done.result
    }

    /// Syncs the directory holding `core-N`, so that its entry survives a power cut.
    async fn sync_parent(&self) -> io::Result<()> {
        let Some(parent) = self.core_dir.parent() else {
            return Ok(());
        };
        let dir = Directory::open(parent).await?;
        dir.sync().await?;
        self.count_fsync();
        dir.close().await?;
        Ok(())
    }

    fn count_fsync(&self) {
        let mut counters = self.counters.get();
        counters.fsyncs += 1;
        self.counters.set(counters);
    }

    async fn file(&self, slot: usize, segment: u32) -> io::Result<Rc<BufferedFile>> {
        if let Some(file) = self.files[slot].borrow().get(&segment) {
            return Ok(file.clone());
        }
        let path = self.core_dir.join(segment_file_name(segment));
        let file = Rc::new(OpenOptions::new().write(true).buffered_open(&path).await?);
        self.files[slot].borrow_mut().insert(segment, file.clone());
        Ok(file)
    }

    async fn directory(&self, slot: usize) -> io::Result<Rc<Directory>> {
        if let Some(dir) = &*self.directories[slot].borrow() {
            return Ok(dir.clone());
        }
        let dir = Rc::new(Directory::open(&self.core_dir).await?);
        *self.directories[slot].borrow_mut() = Some(dir.clone());
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CommitSettings {
        CommitSettings {
            fsync: true,
            lazy_sync_ms: 0,
            min_sync_interval: std::time::Duration::ZERO,
            sync_on: SyncOn::IoUring,
        }
    }

    #[test]
    fn first_directory_sync_also_syncs_the_spool_directory() {
        for sync_on in [SyncOn::IoUring, SyncOn::BlockingThread] {
            directory_syncs(sync_on);
        }
    }

    fn directory_syncs(sync_on: SyncOn) {
        let spool_dir = tempfile::tempdir().unwrap();
        let core_dir = spool_dir.path().join("core-0");
        std::fs::create_dir(&core_dir).unwrap();
        std::fs::write(core_dir.join(segment_file_name(1)), [0u8; 4096]).unwrap();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let settings = CommitSettings {
                    sync_on,
                    ..settings()
                };
                let queue = Rc::new(CommitQueue::new(core_dir.clone(), 0, settings));
                let committer = glommio::spawn_local(queue.clone().run_committer());
                queue.segment_created();
                queue
                    .join(1, 64, 128)
                    .wait()
                    .await
                    .expect("first batch durable");
                // The segment, core-0 and the spool directory.
                assert_eq!(queue.counters().fsyncs, 3);
                queue.segment_created();
                queue
                    .join(1, 64, 128)
                    .wait()
                    .await
                    .expect("second batch durable");
                // The spool directory only once per queue.
                assert_eq!(queue.counters().fsyncs, 5);
                queue
                    .join(1, 64, 128)
                    .wait()
                    .await
                    .expect("third batch durable");
                assert_eq!(queue.counters().fsyncs, 6);
                // A segment gone meanwhile (reclaimed) needs no sync and fails nothing.
                std::fs::remove_file(core_dir.join(segment_file_name(1))).unwrap();
                queue.segment_removed(1);
                queue
                    .join(1, 64, 128)
                    .wait()
                    .await
                    .expect("a reclaimed segment is skipped");
                assert_eq!(queue.counters().fsyncs, 6, "{sync_on:?}");
                queue.stop();
                committer.await;
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// `core-0` of a fresh spool directory, holding segment 1.
    fn core_dir_in(spool_dir: &std::path::Path) -> PathBuf {
        let core_dir = spool_dir.join("core-0");
        std::fs::create_dir(&core_dir).unwrap();
        std::fs::write(core_dir.join(segment_file_name(1)), [0u8; 4096]).unwrap();
        core_dir
    }

    /// Yields to the executor until the committer has taken the open batch.
    async fn taken(queue: &CommitQueue) {
        while queue.pending_batch().is_some() {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn a_record_written_during_a_sync_is_synced_at_once_and_answered_after_it() {
        let spool_dir = tempfile::tempdir().unwrap();
        let core_dir = core_dir_in(spool_dir.path());
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let queue = Rc::new(CommitQueue::new(core_dir, 0, settings()));
                let committer = glommio::spawn_local(queue.clone().run_committer());
                let ended = Rc::new(RefCell::new(Vec::new()));
                let member = |n: u32| {
                    let batch = queue.join(1, 64 * n, 64 * (n + 1));
                    let ended = ended.clone();
                    glommio::spawn_local(async move {
                        batch.wait().await.expect("durable");
                        ended.borrow_mut().push(n);
                    })
                };
                queue.delay_next_sync(std::time::Duration::from_secs(2));
                let first = member(1);
                taken(&queue).await;
                let second = member(2);
                // The second batch's fdatasync runs while the first's is held up, instead of
                // after it.
                let started = std::time::Instant::now();
                while queue.counters().fsyncs == 0 {
                    assert!(
                        started.elapsed() < std::time::Duration::from_millis(1500),
                        "the second batch waited for the first one's sync"
                    );
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                }
                assert!(ended.borrow().is_empty(), "no batch ends before the first");
                first.await;
                second.await;
                assert_eq!(*ended.borrow(), vec![1, 2], "batches end in order");
                assert_eq!(queue.counters().commits, 2);
                assert_eq!(queue.counters().fsyncs, 2);
                queue.stop();
                committer.await;
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn records_written_within_the_interval_share_the_next_sync() {
        let spool_dir = tempfile::tempdir().unwrap();
        let core_dir = core_dir_in(spool_dir.path());
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let interval = std::time::Duration::from_secs(1);
                let settings = CommitSettings {
                    min_sync_interval: interval,
                    ..settings()
                };
                let queue = Rc::new(CommitQueue::new(core_dir, 0, settings));
                let committer = glommio::spawn_local(queue.clone().run_committer());
                let started = std::time::Instant::now();
                queue.join(1, 0, 64).wait().await.expect("first durable");
                // The first batch is taken at once.
                assert!(started.elapsed() < interval, "{:?}", started.elapsed());
                // Three records 50 ms apart, each a batch of its own without the interval, share
                // one sync taken no earlier than the interval after the first.
                let mut waits = Vec::new();
                for n in 1..4 {
                    let batch = queue.join(1, 64 * n, 64 * (n + 1));
                    waits.push(glommio::spawn_local(batch.wait()));
                    glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                }
                for wait in waits {
                    wait.await.expect("durable");
                }
                assert!(started.elapsed() >= interval, "{:?}", started.elapsed());
                assert_eq!(queue.counters().commits, 2);
                queue.stop();
                committer.await;
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn a_batch_in_flight_with_one_that_ran_out_of_space_fails_too() {
        let spool_dir = tempfile::tempdir().unwrap();
        let core_dir = core_dir_in(spool_dir.path());
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let queue = Rc::new(CommitQueue::new(core_dir, 0, settings()));
                let committer = glommio::spawn_local(queue.clone().run_committer());
                queue.fail_next_sync(io::ErrorKind::StorageFull);
                let first = queue.join(1, 64, 128);
                taken(&queue).await;
                // Its own fdatasync succeeds, but its record may share a page with the first's.
                let second = queue.join(1, 128, 192);
                assert!(matches!(first.wait().await, Err(SpoolError::Full)));
                assert!(matches!(second.wait().await, Err(SpoolError::Full)));
                // A batch taken after those ended is not held to their failure.
                let third = queue.join(1, 192, 256);
                third.wait().await.expect("durable");
                assert_eq!(queue.counters().commits, 1);
                queue.stop();
                committer.await;
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
