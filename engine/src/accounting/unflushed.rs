//! The lines a core recorded but has not written to the log yet, kept in memory-mapped files so
//! a kill -9 loses none of them.
//!
//! A core writes its accounting lines in batches (the tick, every `accounting_flush_ms`). A
//! delivery's or bounce's spool record reaches the page cache at once, so without this a crash
//! in between left a recipient final in the spool with no event in the log (the chaos soak saw
//! it). Each line is also copied into the active *slot*, a file mapped shared: the page cache
//! keeps it across the crash of the process, and the next start writes what a slot holds to the
//! log before any core runs (`take_leftovers`). Copying a line costs a `memcpy`, no system call.
//!
//! Two slots per core, `spool_dir/unflushed-events/core-<N>-<0|1>`: one takes new lines while
//! the other's batch is being written; a slot is emptied once its batch is in the log. A slot's
//! header holds a magic number, the slot's sequence number (the older slot is replayed first)
//! and the length of its lines, stored after the lines it counts. A power cut is not covered
//! (the files are never synced, as the log itself is not).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{Ordering, fence};

use memmap2::MmapMut;

/// Bytes of lines one slot holds; a line that does not fit makes the core write its batch
/// first, on its own thread (as a full batch does).
pub const SLOT_BYTES: usize = 8 << 20;
/// The directory under `spool_dir`.
pub const DIR: &str = "unflushed-events";
const MAGIC: u64 = u64::from_le_bytes(*b"VLYACCT1");
/// Magic, sequence number, length of the lines: 8 bytes each.
const HEADER_BYTES: usize = 24;
const SEQ_AT: usize = 8;
const LEN_AT: usize = 16;

/// One mapped slot file.
struct Slot {
    map: MmapMut,
    len: usize,
}

impl Slot {
    /// Opens (creating and filling with zeros when new or of another size) and empties the slot.
    /// Blocking: at a core's start.
    fn open(path: &Path) -> std::io::Result<Slot> {
        let total = HEADER_BYTES + SLOT_BYTES;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() != total as u64 {
            // Written, not only sized: a write through the mapping into a hole would make the
            // file system allocate a block inside the page fault, on the core's thread.
            file.set_len(0)?;
            write_zeros(&file, total)?;
        }
        // SAFETY: the file is this core's alone (the spool directory's lock keeps a second
        // daemon out) and is not resized while mapped.
        let map = unsafe { MmapMut::map_mut(&file)? };
        let mut slot = Slot { map, len: 0 };
        slot.set_header(0, 0);
        Ok(slot)
    }

    fn set_header(&mut self, seq: u64, len: usize) {
        let header = self.map.get_mut(..HEADER_BYTES).unwrap_or_default();
        if header.len() == HEADER_BYTES {
            header[..SEQ_AT].copy_from_slice(&MAGIC.to_le_bytes());
            header[SEQ_AT..LEN_AT].copy_from_slice(&seq.to_le_bytes());
            header[LEN_AT..].copy_from_slice(&(len as u64).to_le_bytes());
        }
        self.len = len;
    }

    fn seq(&self) -> u64 {
        read_u64(&self.map, SEQ_AT).unwrap_or(0)
    }

    /// Appends `line`; false when it does not fit.
    fn push(&mut self, line: &[u8]) -> bool {
        let at = HEADER_BYTES + self.len;
        let Some(dst) = self.map.get_mut(at..at + line.len()) else {
            return false;
        };
        dst.copy_from_slice(line);
        // The length is stored after the bytes it counts: a crash between the two leaves the
        // line out, never a length covering bytes not written.
        fence(Ordering::Release);
        let len = self.len + line.len();
        if let Some(field) = self.map.get_mut(LEN_AT..HEADER_BYTES) {
            field.copy_from_slice(&(len as u64).to_le_bytes());
        }
        self.len = len;
        true
    }
}

fn write_zeros(mut file: &File, bytes: usize) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len());
        file.write_all(&zeros[..n])?;
        left -= n;
    }
    Ok(())
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// A core's two slots.
pub struct Unflushed {
    slots: [Slot; 2],
    /// The slot taking new lines.
    active: usize,
    next_seq: u64,
}

/// Which slot a batch taken for writing came from (`Unflushed::written`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotIndex(usize);

impl Unflushed {
    /// Opens core `core`'s slots under `spool_dir`, empty (`take_leftovers` has run). Blocking:
    /// at start.
    pub fn open(spool_dir: &Path, core: usize) -> std::io::Result<Unflushed> {
        let dir = spool_dir.join(DIR);
        std::fs::create_dir_all(&dir)?;
        let mut slots = [
            Slot::open(&dir.join(format!("core-{core}-0")))?,
            Slot::open(&dir.join(format!("core-{core}-1")))?,
        ];
        slots[0].set_header(1, 0);
        Ok(Unflushed {
            slots,
            active: 0,
            next_seq: 2,
        })
    }

    /// Keeps `line` (one or more whole lines); false when the active slot has no room.
    pub fn push(&mut self, line: &[u8]) -> bool {
        self.slots[self.active].push(line)
    }

    /// The active slot's lines are being written: new lines go to the other slot, which must
    /// have been emptied (`written`) since it was last taken.
    pub fn take(&mut self) -> SlotIndex {
        let taken = self.active;
        self.active = 1 - taken;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.slots[self.active].set_header(seq, 0);
        SlotIndex(taken)
    }

    /// The lines of `slot` are in the log: it is emptied.
    pub fn written(&mut self, slot: SlotIndex) {
        let Some(s) = self.slots.get_mut(slot.0) else {
            return;
        };
        if slot.0 != self.active {
            let seq = s.seq();
            s.set_header(seq, 0);
        }
    }

    /// Empties the active slot, whose lines were written some other way (`flush_now`).
    pub fn written_active(&mut self) {
        let active = &mut self.slots[self.active];
        let seq = active.seq();
        active.set_header(seq, 0);
    }
}

/// The lines left in the slots of every core (any core count) under `spool_dir`, oldest slot
/// first per core; each slot is emptied once read. Blocking: at start, before any core runs.
pub fn take_leftovers(spool_dir: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let dir = spool_dir.join(DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found: Vec<(String, u64, File, Vec<u8>)> = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((core, _slot)) = name.strip_prefix("core-").and_then(|r| r.rsplit_once('-'))
        else {
            continue;
        };
        if let Some((seq, file, lines)) = read_slot_lines(&path)? {
            found.push((core.to_string(), seq, file, lines));
        }
    }
    found.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    // Emptied only once every slot was read: an error on one leaves them all for the next start.
    for (_, _, file, _) in &found {
        file.write_all_at(&0u64.to_le_bytes(), LEN_AT as u64)?;
    }
    Ok(found.into_iter().map(|(_, _, _, lines)| lines).collect())
}

/// The sequence number, open file and whole lines of the slot file at `path` (None when it
/// holds none or is not a slot), read without the rest of the file.
fn read_slot_lines(path: &Path) -> std::io::Result<Option<(u64, File, Vec<u8>)>> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut header = [0u8; HEADER_BYTES];
    if file.read_exact_at(&mut header, 0).is_err() || read_u64(&header, 0) != Some(MAGIC) {
        return Ok(None);
    }
    let seq = read_u64(&header, SEQ_AT).unwrap_or(0);
    let file_bytes = file.metadata()?.len().saturating_sub(HEADER_BYTES as u64);
    let len = read_u64(&header, LEN_AT).unwrap_or(0).min(file_bytes) as usize;
    let mut lines = vec![0u8; len];
    file.read_exact_at(&mut lines, HEADER_BYTES as u64)?;
    // Whole lines only: a length is stored after its line, so this trims nothing unless the
    // file was damaged.
    lines.truncate(
        lines
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |end| end + 1),
    );
    if lines.is_empty() {
        return Ok(None);
    }
    Ok(Some((seq, file, lines)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_left_in_the_slots_come_back_once_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut u = Unflushed::open(dir.path(), 0).unwrap();
        assert!(u.push(b"{\"n\":1}\n"));
        let first = u.take();
        assert!(u.push(b"{\"n\":2}\n{\"n\":3}\n"));
        // A crash now: slot 0 was being written, slot 1 was filling; nothing reached the log.
        drop(u);
        let mut other = Unflushed::open(dir.path(), 1).unwrap();
        assert!(other.push(b"{\"core\":1}\n"));
        drop(other);
        let left = take_leftovers(dir.path()).unwrap();
        assert_eq!(
            left,
            vec![
                b"{\"n\":1}\n".to_vec(),
                b"{\"n\":2}\n{\"n\":3}\n".to_vec(),
                b"{\"core\":1}\n".to_vec()
            ]
        );
        assert!(take_leftovers(dir.path()).unwrap().is_empty(), "read once");
        let _ = first;
    }

    #[test]
    fn a_written_slot_is_not_replayed_and_a_full_one_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let mut u = Unflushed::open(dir.path(), 0).unwrap();
        assert!(u.push(b"written\n"));
        let taken = u.take();
        assert!(u.push(b"pending\n"));
        u.written(taken);
        let big = vec![b'x'; SLOT_BYTES];
        assert!(!u.push(&big), "no room after 8 bytes");
        drop(u);
        assert_eq!(
            take_leftovers(dir.path()).unwrap(),
            vec![b"pending\n".to_vec()]
        );
        // A restart empties the slots it opens.
        let mut again = Unflushed::open(dir.path(), 0).unwrap();
        again.written_active();
        drop(again);
        assert!(take_leftovers(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_torn_last_line_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut u = Unflushed::open(dir.path(), 0).unwrap();
        assert!(u.push(b"whole\ntor"));
        drop(u);
        assert_eq!(
            take_leftovers(dir.path()).unwrap(),
            vec![b"whole\n".to_vec()]
        );
    }
}
