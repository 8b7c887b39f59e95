//! The commit's fdatasyncs made on the core's blocking thread instead of through io_uring
//! (`[spool] sync_on = "blocking-thread"`). io_uring runs a sync in a kernel worker that inherits
//! the executor's CPU pinning, so the sync competes with its own reactor for one CPU; the blocking
//! thread may run on any CPU (`[server] pin_blocking_threads = false`).
//!
//! Each sync slot keeps its own open files (see `commit`: one open file description per slot, for
//! writeback errors). The files travel to the blocking thread with each job and come back with its
//! result, so nothing is shared or locked.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::path::PathBuf;

use super::segment::segment_file_name;

/// One slot's open segment files and directory.
#[derive(Default)]
pub struct SlotFiles {
    segments: HashMap<u32, File>,
    directory: Option<File>,
}

impl SlotFiles {
    pub fn forget(&mut self, segment: u32) {
        self.segments.remove(&segment);
    }
}

/// What one job is to make durable.
pub struct SyncJob {
    pub core_dir: PathBuf,
    pub segments: BTreeSet<u32>,
    pub dir_dirty: bool,
    /// Also sync the directory holding `core_dir` (once per queue).
    pub parent: bool,
}

/// What a job did: its files back, the fdatasyncs it made, and how it ended.
pub struct SyncDone {
    pub files: SlotFiles,
    pub fsyncs: u64,
    pub result: io::Result<()>,
}

/// Runs on the blocking thread: one fdatasync per segment (a segment gone meanwhile was
/// reclaimed: nothing of it needs to be durable), then the directory and its parent when asked.
pub fn run(job: SyncJob, mut files: SlotFiles) -> SyncDone {
    let mut fsyncs = 0;
    let result = sync_all(&job, &mut files, &mut fsyncs);
    SyncDone {
        files,
        fsyncs,
        result,
    }
}

fn sync_all(job: &SyncJob, files: &mut SlotFiles, fsyncs: &mut u64) -> io::Result<()> {
    for &segment in &job.segments {
        let file = match files.segments.entry(segment) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let path = job.core_dir.join(segment_file_name(segment));
                match std::fs::OpenOptions::new().write(true).open(&path) {
                    Ok(file) => e.insert(file),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(err) => return Err(err),
                }
            }
        };
        file.sync_data()?;
        *fsyncs += 1;
    }
    if job.dir_dirty {
        let dir = match &mut files.directory {
            Some(dir) => dir,
            slot => slot.insert(File::open(&job.core_dir)?),
        };
        dir.sync_all()?;
        *fsyncs += 1;
        if job.parent
            && let Some(parent) = job.core_dir.parent()
        {
            File::open(parent)?.sync_all()?;
            *fsyncs += 1;
        }
    }
    Ok(())
}
