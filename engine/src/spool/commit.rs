//! Group commit: writers write records into the page cache and join the open batch; one committer task
//! per spool closes the batch, issues one io_uring `fdatasync` per dirty segment (and one on the
//! directory after a segment was created), then wakes every writer of that batch. Records written
//! while an fsync is in flight join the next batch, so accepts are not bounded by the fsync rate.
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
    open: RefCell<Rc<Batch>>,
    dirty_segments: RefCell<BTreeSet<u32>>,
    dir_dirty: Cell<bool>,
    /// The spool directory was synced by this queue (once per process: see the module doc).
    parent_synced: Cell<bool>,
    committer: RefCell<Option<Waker>>,
    stopping: Cell<bool>,
    /// Set after a failed fsync: the page cache state is then unknown, so nothing more is accepted.
    poisoned: RefCell<Option<String>>,
    files: RefCell<HashMap<u32, Rc<BufferedFile>>>,
    directory: RefCell<Option<Rc<Directory>>>,
    counters: Cell<CommitCounters>,
    /// Voided ranges on record in the `voided` file (bounded by `MAX_VOIDED_RANGES`).
    voided_ranges: Cell<usize>,
    /// Test hook: the next sync fails with this error kind, as a failing disk would.
    #[cfg(test)]
    fault: Cell<Option<io::ErrorKind>>,
}

impl CommitQueue {
    /// `voided_ranges`: how many voided ranges recovery found on record.
    pub fn new(core_dir: PathBuf, fsync: bool, voided_ranges: usize) -> CommitQueue {
        CommitQueue {
            core_dir,
            fsync,
            open: RefCell::new(Rc::new(Batch::default())),
            dirty_segments: RefCell::new(BTreeSet::new()),
            dir_dirty: Cell::new(false),
            parent_synced: Cell::new(false),
            committer: RefCell::new(None),
            stopping: Cell::new(false),
            poisoned: RefCell::new(None),
            files: RefCell::new(HashMap::new()),
            directory: RefCell::new(None),
            counters: Cell::new(CommitCounters::default()),
            voided_ranges: Cell::new(voided_ranges),
            #[cfg(test)]
            fault: Cell::new(None),
        }
    }

    /// Test hook: makes the next sync fail with `kind`.
    #[cfg(test)]
    pub fn fail_next_sync(&self, kind: io::ErrorKind) {
        self.fault.set(Some(kind));
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
        self.dirty_segments.borrow_mut().insert(segment);
        let batch = self.open.borrow().clone();
        batch.members.set(batch.members.get() + 1);
        batch
            .spans
            .borrow_mut()
            .entry(segment)
            .and_modify(|span| *span = (span.0.min(from), span.1.max(to)))
            .or_insert((from, to));
        self.wake_committer();
        batch
    }

    /// The open batch if it has members (what `flush` waits on).
    pub fn pending_batch(&self) -> Option<Rc<Batch>> {
        let batch = self.open.borrow().clone();
        (batch.members.get() > 0).then_some(batch)
    }

    /// A segment file was created: the next commit also syncs the directory.
    pub fn segment_created(&self) {
        self.dir_dirty.set(true);
    }

    /// A segment was reclaimed: forget its sync handle.
    pub fn segment_removed(&self, segment: u32) {
        self.files.borrow_mut().remove(&segment);
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
        loop {
            poll_fn(|cx| {
                if self.open.borrow().members.get() > 0 || self.stopping.get() {
                    Poll::Ready(())
                } else {
                    *self.committer.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            if self.open.borrow().members.get() == 0 {
                // Only here when stopping with nothing left to commit.
                break;
            }
            let batch = self.open.replace(Rc::new(Batch::default()));
            let segments = std::mem::take(&mut *self.dirty_segments.borrow_mut());
            let dir_dirty = self.dir_dirty.replace(false);
            // Records written while a failing sync ran may sit in pages the kernel has already
            // marked clean after the error (a later fsync would report success without writing
            // them): after a poisoning failure, the batches still open fail and are voided too.
            let poisoned = self.poisoned.borrow().clone();
            let synced = match &poisoned {
                Some(reason) => Err(io::Error::other(reason.clone())),
                None => self.sync(&segments, dir_dirty).await,
            };
            let outcome = match synced {
                Ok(()) => BatchOutcome::Durable,
                Err(e) => {
                    let message = poisoned.unwrap_or_else(|| {
                        format!("fdatasync of spool {} failed: {e}", self.core_dir.display())
                    });
                    log::error!("{message}");
                    if e.kind() != io::ErrorKind::StorageFull {
                        *self.poisoned.borrow_mut() = Some(message.clone());
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
        }
        self.files.borrow_mut().clear();
        self.directory.borrow_mut().take();
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

    async fn sync(&self, segments: &BTreeSet<u32>, dir_dirty: bool) -> io::Result<()> {
        #[cfg(test)]
        if let Some(kind) = self.fault.take() {
            // A failing disk takes its time: writers may join the next batch meanwhile.
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            return Err(io::Error::new(kind, "injected by a test"));
        }
        if !self.fsync {
            return Ok(());
        }
        for &segment in segments {
            let file = match self.file(segment).await {
                Ok(file) => file,
                // Reclaimed meanwhile: nothing of it needs to be durable any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            file.fdatasync().await?;
            self.count_fsync();
        }
        if dir_dirty {
            let dir = self.directory().await?;
            dir.sync().await?;
            self.count_fsync();
            if !self.parent_synced.get() {
                self.sync_parent().await?;
                self.parent_synced.set(true);
            }
        }
        Ok(())
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

    async fn file(&self, segment: u32) -> io::Result<Rc<BufferedFile>> {
        if let Some(file) = self.files.borrow().get(&segment) {
            return Ok(file.clone());
        }
        let path = self.core_dir.join(segment_file_name(segment));
        let file = Rc::new(OpenOptions::new().write(true).buffered_open(&path).await?);
        self.files.borrow_mut().insert(segment, file.clone());
        Ok(file)
    }

    async fn directory(&self) -> io::Result<Rc<Directory>> {
        if let Some(dir) = &*self.directory.borrow() {
            return Ok(dir.clone());
        }
        let dir = Rc::new(Directory::open(&self.core_dir).await?);
        *self.directory.borrow_mut() = Some(dir.clone());
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_directory_sync_also_syncs_the_spool_directory() {
        let spool_dir = tempfile::tempdir().unwrap();
        let core_dir = spool_dir.path().join("core-0");
        std::fs::create_dir(&core_dir).unwrap();
        std::fs::write(core_dir.join(segment_file_name(1)), [0u8; 4096]).unwrap();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let queue = Rc::new(CommitQueue::new(core_dir, true, 0));
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
                queue.stop();
                committer.await;
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
