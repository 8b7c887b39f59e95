//! One process per spool. Two daemons on one `spool_dir` would each recover and deliver the other's
//! mail, reuse its message ids and delete its segments. So `serve` takes an exclusive `flock` on
//! `<spool_dir>/lock` before any core starts, and each core's `Spool::open` takes one on
//! `core-<N>/lock` (which also guards embedders and tests that open a spool themselves). Each file
//! holds its holder's pid, so the refusal can name it. The kernel drops a lock when its holder
//! exits, however it exits: a stale file never blocks a start.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::SpoolError;

/// The lock file's name, in the spool directory and in each core directory.
pub const LOCK_FILE_NAME: &str = "lock";
/// Most bytes read from a lock file when naming its holder.
const MAX_LOCK_FILE_BYTES: u64 = 64;

/// An exclusive lock on a spool directory, held until dropped.
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

impl SpoolLock {
    /// Locks `dir` (which must exist) for this process, or fails with `Locked`, naming the
    /// holder's pid when its file says it. Blocking: once per directory at start.
    pub fn acquire(dir: &Path) -> Result<SpoolLock, SpoolError> {
        let path = lock_path(dir);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(SpoolError::from_io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked {
                    path,
                    holder: holder_pid(&mut file),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(SpoolError::from_io(e)),
        }
        // The pid only names the holder for a refusal: no sync needed.
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(SpoolError::from_io)?;
        Ok(SpoolLock { _file: file })
    }
}

/// The pid written in a lock file (`None` when absent or unreadable, e.g. just being written).
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(MAX_LOCK_FILE_BYTES)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// Describes a refused lock for `SpoolError::Locked`.
pub fn describe_holder(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_string(),
    }
}

/// The lock file of a directory (for messages and tests).
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join(LOCK_FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = SpoolLock::acquire(dir.path()).unwrap();
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(lock_path(dir.path())).unwrap(),
            format!("{pid}\n")
        );
        match SpoolLock::acquire(dir.path()) {
            Err(SpoolError::Locked { path, holder }) => {
                assert_eq!(path, lock_path(dir.path()));
                assert_eq!(holder, Some(pid));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        let again = SpoolLock::acquire(dir.path()).unwrap();
        drop(again);
    }

    #[test]
    fn a_stale_pid_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(lock_path(dir.path()), "4000000000 and more\n").unwrap();
        let _held = SpoolLock::acquire(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(lock_path(dir.path())).unwrap(),
            format!("{}\n", std::process::id())
        );
    }
}
