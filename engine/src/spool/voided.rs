//! Voided ranges: the records of a group commit whose fsync failed. Their writers were answered
//! with an error (a 451/452 to an SMTP client, a failed state record), so they must never come
//! back at recovery, even if their bytes did reach the disk. Each range is kept in `core-N/voided`,
//! written and synced before the writers hear of the failure; recovery's scan jumps over them.
//!
//! An entry is 16 bytes: segment, start and end offset of the range (u32 little endian) and a
//! CRC32C of those 12 bytes. Entries of segments that no longer exist are dropped at start.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::SpoolError;

/// The file holding a core's voided ranges, in its core directory.
pub const VOIDED_FILE_NAME: &str = "voided";
/// Bytes of one entry.
pub const VOIDED_ENTRY_BYTES: usize = 16;
/// Most ranges a core keeps: a spool that fails this many commits is made read-only (poisoned).
pub const MAX_VOIDED_RANGES: usize = 1024;

/// Records `[from, to)` of `segment` that recovery must ignore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoidedRange {
    pub segment: u32,
    pub from: u32,
    pub to: u32,
}

impl VoidedRange {
    pub fn encode(&self) -> [u8; VOIDED_ENTRY_BYTES] {
        let mut e = [0u8; VOIDED_ENTRY_BYTES];
        e[..4].copy_from_slice(&self.segment.to_le_bytes());
        e[4..8].copy_from_slice(&self.from.to_le_bytes());
        e[8..12].copy_from_slice(&self.to.to_le_bytes());
        let crc = crc32c::crc32c(&e[..12]);
        e[12..].copy_from_slice(&crc.to_le_bytes());
        e
    }

    pub fn decode(bytes: &[u8]) -> Option<VoidedRange> {
        let e = bytes.get(..VOIDED_ENTRY_BYTES)?;
        let word = |at: usize| Some(u32::from_le_bytes(e.get(at..at + 4)?.try_into().ok()?));
        if crc32c::crc32c(&e[..12]) != word(12)? {
            return None;
        }
        let range = VoidedRange {
            segment: word(0)?,
            from: word(4)?,
            to: word(8)?,
        };
        (range.from < range.to).then_some(range)
    }
}

/// The voided ranges of a core directory (none when the file is absent). A damaged entry (a torn
/// append, never synced, so never acted upon) is skipped.
pub fn read(core_dir: &Path) -> Result<Vec<VoidedRange>, SpoolError> {
    let path = core_dir.join(VOIDED_FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SpoolError::from_io(e)),
    };
    let mut ranges = Vec::new();
    for entry in bytes.chunks(VOIDED_ENTRY_BYTES) {
        match VoidedRange::decode(entry) {
            Some(range) if ranges.len() < MAX_VOIDED_RANGES => ranges.push(range),
            Some(_) => {
                log::warn!(
                    "{}: more than {MAX_VOIDED_RANGES} ranges; rest ignored",
                    path.display()
                );
                break;
            }
            None => log::warn!("{}: damaged entry skipped", path.display()),
        }
    }
    Ok(ranges)
}

/// Appends `ranges` and syncs them (and the directory when the file is new). Blocking: run it
/// off the reactor.
pub fn append(core_dir: &Path, ranges: &[VoidedRange]) -> io::Result<()> {
    let path = core_dir.join(VOIDED_FILE_NAME);
    let created = !path.exists();
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let bytes: Vec<u8> = ranges.iter().flat_map(VoidedRange::encode).collect();
    file.write_all(&bytes)?;
    file.sync_data()?;
    if created {
        File::open(core_dir)?.sync_all()?;
    }
    Ok(())
}

/// Replaces the file with `ranges` (removes it when there are none), durably. Blocking, at start.
pub fn rewrite(core_dir: &Path, ranges: &[VoidedRange]) -> io::Result<()> {
    let path = core_dir.join(VOIDED_FILE_NAME);
    if ranges.is_empty() {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    } else {
        let fresh = core_dir.join(format!("{VOIDED_FILE_NAME}.new"));
        let mut file = File::create(&fresh)?;
        let bytes: Vec<u8> = ranges.iter().flat_map(VoidedRange::encode).collect();
        file.write_all(&bytes)?;
        file.sync_data()?;
        std::fs::rename(&fresh, &path)?;
    }
    File::open(core_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let range = VoidedRange {
            segment: 7,
            from: 64,
            to: 4096,
        };
        assert_eq!(VoidedRange::decode(&range.encode()), Some(range));
        let mut damaged = range.encode();
        damaged[5] ^= 1;
        assert_eq!(VoidedRange::decode(&damaged), None);
        assert_eq!(VoidedRange::decode(&range.encode()[..15]), None);
        let empty = VoidedRange { to: 64, ..range };
        assert_eq!(VoidedRange::decode(&empty.encode()), None);
    }

    #[test]
    fn append_read_and_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), []);
        let a = VoidedRange {
            segment: 1,
            from: 64,
            to: 128,
        };
        let b = VoidedRange { segment: 2, ..a };
        append(dir.path(), &[a]).unwrap();
        append(dir.path(), &[b]).unwrap();
        // A torn third entry is skipped.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(VOIDED_FILE_NAME))
            .unwrap();
        file.write_all(&[1, 2, 3]).unwrap();
        assert_eq!(read(dir.path()).unwrap(), [a, b]);
        rewrite(dir.path(), &[b]).unwrap();
        assert_eq!(read(dir.path()).unwrap(), [b]);
        rewrite(dir.path(), &[]).unwrap();
        assert!(!dir.path().join(VOIDED_FILE_NAME).exists());
        rewrite(dir.path(), &[]).unwrap();
    }
}
