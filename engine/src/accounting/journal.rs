//! The event journal: every accounting line, numbered, kept in the spool directory until every
//! webhook has it. The accounting log file (rotated by logrotate) and the in-memory ring are no
//! source to resume from; this is.
//!
//! `spool_dir/events/NNNNNNNNNNNNNNNNNNNN.jsonl`: segments of JSON lines, each named by the sequence
//! number (event id) of its first line, so the id of a line is its segment's name plus its index;
//! nothing else is stored. Appended by `EventLog::append_batch` (blocking-pool threads, one locked
//! write per batch), rotated at `segment_bytes`, released by the webhook senders once every saved
//! position is past a segment, and held under `max_bytes` by dropping the oldest segments.
//!
//! The page cache keeps what was written across a crash of the process (kill -9); for a power
//! loss, `sync` (called by a sender thread about once a second, never on a core) bounds what can
//! be lost, and readers step over a torn segment end.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Segments are this large at most (a batch that crosses it finishes the segment).
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Segments per bound, at least: a small `max_bytes` gets smaller segments, so dropping the oldest
/// one gives back a small part of the bound.
const SEGMENTS_PER_BOUND_MIN: u64 = 8;
/// One line read back is this long at most; a longer one is not an event of ours (a torn or
/// damaged segment) and is skipped in pieces.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// The size bounds of a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLimits {
    pub segment_bytes: u64,
    /// All segments together; beyond it the oldest are dropped, sent or not.
    pub max_bytes: u64,
}

impl JournalLimits {
    /// The limits for a bound on the total size.
    pub fn for_max_bytes(max_bytes: u64) -> JournalLimits {
        JournalLimits {
            segment_bytes: (max_bytes / SEGMENTS_PER_BOUND_MIN).clamp(4096, SEGMENT_BYTES_MAX),
            max_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    first_seq: u64,
    bytes: u64,
}

struct Writer {
    /// Oldest first; the last one is being written.
    segments: VecDeque<Segment>,
    active: File,
    next_seq: u64,
    /// Finished segments not yet fdatasync'd (`sync` takes them).
    unsynced: Vec<File>,
}

/// The journal of one spool directory. Shared by the appending threads and the senders.
pub struct Journal {
    dir: PathBuf,
    limits: JournalLimits,
    writer: Mutex<Writer>,
    /// The id the next event gets: every id below it is readable.
    next_seq: AtomicU64,
    bytes: AtomicU64,
    /// Segments on disk (read by the API on a core: an atomic, not the writer's lock).
    segments: AtomicUsize,
    /// The lowest position any sender saved (what `release` was last given): a dropped segment
    /// below it was sent everywhere and is no loss.
    released_before: AtomicU64,
    /// Events dropped by the size bound before every webhook had them.
    dropped_events: AtomicU64,
    write_failures: AtomicU64,
    /// Wakes readers waiting for events.
    appended: (Mutex<u64>, Condvar),
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.jsonl"))
}

fn create_segment(dir: &Path, first_seq: u64) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, first_seq))
}

/// The segments found in `dir`, oldest first (other files are left alone).
fn list_segments(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
            continue;
        };
        if stem.len() != 20 {
            continue;
        }
        if let Ok(first_seq) = stem.parse::<u64>() {
            found.push(Segment {
                first_seq,
                bytes: entry.metadata()?.len(),
            });
        }
    }
    found.sort_by_key(|s| s.first_seq);
    Ok(found)
}

/// Lines (ending in '\n') of the segment at `path`; a torn last line is cut off the file.
fn count_lines_and_cut_torn_tail(path: &Path) -> std::io::Result<(u64, u64)> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut lines = 0u64;
    let mut whole = 0u64;
    let mut at = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for i in memchr::memchr_iter(b'\n', &buf[..n]) {
            lines += 1;
            whole = at + i as u64 + 1;
        }
        at += n as u64;
    }
    if whole < at {
        log::warn!(
            "event journal {}: cut a torn last line ({} bytes)",
            path.display(),
            at - whole
        );
        file.set_len(whole)?;
        file.seek(SeekFrom::Start(whole))?;
    }
    Ok((lines, whole))
}

impl Journal {
    /// Opens (or creates) the journal in `dir`. Ids continue from the last segment, and never
    /// start below `floor` (the highest saved position: after a power loss the journal's tail may
    /// be gone while a position past it was saved, and ids must not be given twice).
    pub fn open(dir: &Path, limits: JournalLimits, floor: u64) -> std::io::Result<Arc<Journal>> {
        std::fs::create_dir_all(dir)?;
        let mut segments: VecDeque<Segment> = list_segments(dir)?.into();
        let floor = floor.max(1);
        let (active, next_seq) = match segments.back_mut() {
            Some(last) => {
                let path = segment_path(dir, last.first_seq);
                let (lines, bytes) = count_lines_and_cut_torn_tail(&path)?;
                last.bytes = bytes;
                let next_seq = last.first_seq + lines;
                if next_seq >= floor {
                    (OpenOptions::new().append(true).open(&path)?, next_seq)
                } else {
                    segments.push_back(Segment {
                        first_seq: floor,
                        bytes: 0,
                    });
                    (create_segment(dir, floor)?, floor)
                }
            }
            None => {
                segments.push_back(Segment {
                    first_seq: floor,
                    bytes: 0,
                });
                (create_segment(dir, floor)?, floor)
            }
        };
        let bytes = segments.iter().map(|s| s.bytes).sum();
        let segment_count = segments.len();
        Ok(Arc::new(Journal {
            dir: dir.to_path_buf(),
            limits,
            writer: Mutex::new(Writer {
                segments,
                active,
                next_seq,
                unsynced: Vec::new(),
            }),
            next_seq: AtomicU64::new(next_seq),
            bytes: AtomicU64::new(bytes),
            segments: AtomicUsize::new(segment_count),
            released_before: AtomicU64::new(0),
            dropped_events: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            appended: (Mutex::new(0), Condvar::new()),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The id the next event will get; every id below it can be read.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Acquire)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn dropped_events(&self) -> u64 {
        self.dropped_events.load(Ordering::Relaxed)
    }

    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.load(Ordering::Relaxed)
    }

    /// Appends a batch of JSON lines, each ending in '\n' (blocking: file I/O). A failed write is
    /// undone (the file cut back), logged and counted: those events are not journaled.
    pub fn append(&self, batch: &[u8]) {
        if batch.is_empty() {
            return;
        }
        let mut lines = memchr::memchr_iter(b'\n', batch).count() as u64;
        let unterminated = !batch.ends_with(b"\n");
        if unterminated {
            lines += 1;
        }
        let mut doomed = Vec::new();
        {
            let Ok(mut w) = self.writer.lock() else {
                return;
            };
            let before = w.segments.back().map_or(0, |s| s.bytes);
            let written = w.active.write_all(batch).and_then(|()| {
                if unterminated {
                    w.active.write_all(b"\n")
                } else {
                    Ok(())
                }
            });
            if let Err(e) = written {
                self.write_failures.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "event journal write failed, {lines} events not journaled for webhooks: {e}"
                );
                // A partial write would leave a torn line inside the segment: cut it off.
                let _ = w.active.set_len(before);
                return;
            }
            let added = batch.len() as u64 + u64::from(unterminated);
            w.next_seq += lines;
            let next_seq = w.next_seq;
            let mut full = false;
            if let Some(active) = w.segments.back_mut() {
                active.bytes += added;
                full = active.bytes >= self.limits.segment_bytes;
            }
            self.bytes.fetch_add(added, Ordering::Relaxed);
            if full {
                match create_segment(&self.dir, next_seq) {
                    Ok(file) => {
                        let old = std::mem::replace(&mut w.active, file);
                        w.unsynced.push(old);
                        w.segments.push_back(Segment {
                            first_seq: next_seq,
                            bytes: 0,
                        });
                    }
                    // The active segment grows past its size; the next batch tries again.
                    Err(e) => log::error!("event journal: cannot start a new segment: {e}"),
                }
            }
            while self.bytes.load(Ordering::Relaxed) > self.limits.max_bytes && w.segments.len() > 1
            {
                let Some(oldest) = w.segments.pop_front() else {
                    break;
                };
                let end = w.segments.front().map_or(next_seq, |s| s.first_seq);
                self.bytes.fetch_sub(oldest.bytes, Ordering::Relaxed);
                doomed.push((oldest, end));
            }
            self.segments.store(w.segments.len(), Ordering::Relaxed);
            self.next_seq.store(next_seq, Ordering::Release);
        }
        let released_before = self.released_before.load(Ordering::Relaxed);
        for (segment, end) in doomed {
            let unsent_from = segment.first_seq.max(released_before);
            if end > unsent_from {
                self.dropped_events
                    .fetch_add(end - unsent_from, Ordering::Relaxed);
                log::warn!(
                    "event journal over its bound ({} bytes): events {unsent_from}..{end} dropped before every webhook had them",
                    self.limits.max_bytes
                );
            }
            self.unlink(segment.first_seq);
        }
        if let Ok(mut generation) = self.appended.0.lock() {
            *generation += 1;
        }
        self.appended.1.notify_all();
    }

    fn unlink(&self, first_seq: u64) {
        let path = segment_path(&self.dir, first_seq);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::error!("event journal: cannot remove {}: {e}", path.display());
        }
    }

    /// Deletes the segments whose every event is below `position` (the lowest saved position of
    /// all webhooks). The segment being written stays. Blocking: file I/O.
    pub fn release(&self, position: u64) {
        self.released_before.fetch_max(position, Ordering::Relaxed);
        let mut doomed = Vec::new();
        if let Ok(mut w) = self.writer.lock() {
            while w.segments.len() > 1 && w.segments.get(1).is_some_and(|s| s.first_seq <= position)
            {
                if let Some(s) = w.segments.pop_front() {
                    self.bytes.fetch_sub(s.bytes, Ordering::Relaxed);
                    doomed.push(s.first_seq);
                }
            }
            self.segments.store(w.segments.len(), Ordering::Relaxed);
        }
        for first_seq in doomed {
            self.unlink(first_seq);
        }
    }

    /// fdatasyncs what was written so far (finished segments and the active one), outside the
    /// lock. Blocking: called from a sender thread.
    pub fn sync(&self) {
        let (finished, active) = match self.writer.lock() {
            Ok(mut w) => (std::mem::take(&mut w.unsynced), w.active.try_clone().ok()),
            Err(_) => return,
        };
        for file in finished.iter().chain(active.iter()) {
            if let Err(e) = file.sync_data() {
                log::error!("event journal fdatasync failed: {e}");
            }
        }
    }

    /// Waits until events past `seq` exist or `timeout` passes.
    pub fn wait_past(&self, seq: u64, timeout: Duration) {
        let Ok(guard) = self.appended.0.lock() else {
            return;
        };
        if self.next_seq() > seq {
            return;
        }
        let _ = self
            .appended
            .1
            .wait_timeout_while(guard, timeout, |_| self.next_seq() <= seq);
    }

    /// The first id of the segment holding `seq`, or of the first segment after it (when `seq`'s
    /// segment is gone), or none when `seq` is past every segment's start.
    fn segment_for(&self, seq: u64) -> Option<u64> {
        let w = self.writer.lock().ok()?;
        let at = w.segments.partition_point(|s| s.first_seq <= seq);
        match at {
            0 => w.segments.front().map(|s| s.first_seq),
            _ => w.segments.get(at - 1).map(|s| s.first_seq),
        }
    }

    /// The first id of the segment after the one starting at `first_seq`.
    fn segment_after(&self, first_seq: u64) -> Option<u64> {
        let w = self.writer.lock().ok()?;
        let at = w.segments.partition_point(|s| s.first_seq <= first_seq);
        w.segments.get(at).map(|s| s.first_seq)
    }
}

/// What the reader found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// An event: its id; the line is `JournalReader::line`.
    Line(u64),
    /// Events `from..to` are gone (dropped by the bound, or a torn segment end); reading goes on
    /// at `to`.
    Skipped { from: u64, to: u64 },
    /// Nothing more for now.
    End,
}

struct OpenSegment {
    first_seq: u64,
    file: BufReader<File>,
    /// The id of the next whole line in the file.
    line_seq: u64,
    /// EOF was met once since a segment after this one appeared: once more means the end.
    rechecked: bool,
}

/// Reads the journal from a position, one line at a time, across segments.
pub struct JournalReader {
    journal: Arc<Journal>,
    /// The id of the next event to return.
    seq: u64,
    current: Option<OpenSegment>,
    line: Vec<u8>,
    /// A line longer than `LINE_BYTES_MAX` is being stepped over.
    overlong: bool,
    /// `unread` was called: the next `read_next` returns the last line again.
    replay: bool,
}

impl JournalReader {
    pub fn new(journal: Arc<Journal>, position: u64) -> JournalReader {
        JournalReader {
            journal,
            seq: position,
            current: None,
            line: Vec::new(),
            overlong: false,
            replay: false,
        }
    }

    /// Puts the line just returned back: the next `read_next` returns it again (a batch that is full
    /// leaves it for the next one).
    pub fn unread(&mut self) {
        if self.line.ends_with(b"\n") && self.seq > 0 {
            self.seq -= 1;
            self.replay = true;
        }
    }

    /// The id of the next event to read: everything below it was returned or skipped.
    pub fn position(&self) -> u64 {
        self.seq
    }

    /// The last line returned by `read_next`, without its '\n'.
    pub fn line(&self) -> &[u8] {
        self.line.strip_suffix(b"\n").unwrap_or(&self.line)
    }

    /// Opens the segment holding `self.seq`; false when there is none to read yet.
    fn open(&mut self) -> std::io::Result<Option<Next>> {
        let Some(first_seq) = self.journal.segment_for(self.seq) else {
            return Ok(Some(Next::End));
        };
        if first_seq > self.seq {
            let from = self.seq;
            self.seq = first_seq;
            return Ok(Some(Next::Skipped {
                from,
                to: first_seq,
            }));
        }
        match File::open(segment_path(&self.journal.dir, first_seq)) {
            Ok(file) => {
                self.current = Some(OpenSegment {
                    first_seq,
                    file: BufReader::with_capacity(256 << 10, file),
                    line_seq: first_seq,
                    rechecked: false,
                });
                self.line.clear();
                Ok(None)
            }
            // Dropped or released since it was looked up: go on at the next segment.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match self.journal.segment_after(first_seq) {
                    Some(after) if after > self.seq => {
                        let from = self.seq;
                        self.seq = after;
                        Ok(Some(Next::Skipped { from, to: after }))
                    }
                    Some(_) => Ok(None),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The next event at or after the position. Blocking: file I/O.
    pub fn read_next(&mut self) -> std::io::Result<Next> {
        if std::mem::take(&mut self.replay) {
            self.seq += 1;
            return Ok(Next::Line(self.seq - 1));
        }
        // Bounded: each turn reads a line, opens a segment or moves to a later one.
        loop {
            if self.current.is_none() {
                if self.seq >= self.journal.next_seq() {
                    return Ok(Next::End);
                }
                if let Some(next) = self.open()? {
                    return Ok(next);
                }
                continue;
            }
            let Some(segment) = self.current.as_mut() else {
                continue;
            };
            if self.line.ends_with(b"\n") {
                self.line.clear();
            }
            let room = (LINE_BYTES_MAX + 1).saturating_sub(self.line.len()) as u64;
            let n = (&mut segment.file)
                .take(room)
                .read_until(b'\n', &mut self.line)?;
            if self.line.ends_with(b"\n") {
                let seq = segment.line_seq;
                segment.line_seq += 1;
                segment.rechecked = false;
                let overlong = std::mem::take(&mut self.overlong);
                if seq < self.seq {
                    continue;
                }
                self.seq = seq + 1;
                if overlong {
                    log::warn!(
                        "event journal: event {seq} is over {LINE_BYTES_MAX} bytes: skipped"
                    );
                    return Ok(Next::Skipped {
                        from: seq,
                        to: seq + 1,
                    });
                }
                return Ok(Next::Line(seq));
            }
            if self.line.len() > LINE_BYTES_MAX {
                // Not an event of ours: keep stepping over it without holding it.
                self.overlong = true;
                self.line.clear();
                continue;
            }
            if n > 0 {
                continue;
            }
            // End of the file for now: is this segment finished?
            let Some(after) = self.journal.segment_after(segment.first_seq) else {
                return Ok(Next::End);
            };
            if !segment.rechecked {
                // The next segment was made after this one's last write: read once more.
                segment.rechecked = true;
                continue;
            }
            let line_seq = segment.line_seq;
            self.current = None;
            self.line.clear();
            self.overlong = false;
            if after > line_seq && after > self.seq {
                let from = self.seq.max(line_seq);
                self.seq = after;
                log::warn!(
                    "event journal: segment {} ends at event {line_seq}, the next starts at {after}: events lost (torn write)",
                    segment_path(&self.journal.dir, line_seq).display()
                );
                return Ok(Next::Skipped { from, to: after });
            }
            self.seq = self.seq.max(line_seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(from: u64, n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for i in from..from + n {
            out.extend_from_slice(format!("{{\"type\":\"delivery\",\"n\":{i}}}\n").as_bytes());
        }
        out
    }

    /// (id, line) of each event read, and (from, to) of each skip.
    type ReadAll = (Vec<(u64, String)>, Vec<(u64, u64)>);

    /// Every event the reader returns until the end.
    fn read_all(reader: &mut JournalReader) -> ReadAll {
        let mut got = Vec::new();
        let mut skipped = Vec::new();
        loop {
            match reader.read_next().unwrap() {
                Next::Line(seq) => {
                    got.push((seq, String::from_utf8(reader.line().to_vec()).unwrap()))
                }
                Next::Skipped { from, to } => skipped.push((from, to)),
                Next::End => return (got, skipped),
            }
        }
    }

    fn big() -> JournalLimits {
        JournalLimits {
            segment_bytes: 1 << 20,
            max_bytes: 1 << 30,
        }
    }

    #[test]
    fn ids_follow_lines_and_continue_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), big(), 0).unwrap();
        assert_eq!(journal.next_seq(), 1);
        journal.append(&lines(1, 3));
        journal.append(&lines(4, 2));
        assert_eq!(journal.next_seq(), 6);
        let mut reader = JournalReader::new(journal.clone(), 1);
        let (got, skipped) = read_all(&mut reader);
        assert!(skipped.is_empty());
        assert_eq!(got.len(), 5);
        for (seq, line) in &got {
            assert_eq!(*line, format!("{{\"type\":\"delivery\",\"n\":{seq}}}"));
        }
        assert_eq!(reader.position(), 6);
        drop(reader);
        drop(journal);
        let journal = Journal::open(dir.path(), big(), 0).unwrap();
        assert_eq!(journal.next_seq(), 6);
        journal.append(&lines(6, 1));
        let (got, _) = read_all(&mut JournalReader::new(journal.clone(), 4));
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [4, 5, 6]);
    }

    #[test]
    fn an_unread_line_comes_again() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), big(), 0).unwrap();
        journal.append(&lines(1, 3));
        let mut reader = JournalReader::new(journal, 1);
        assert_eq!(reader.read_next().unwrap(), Next::Line(1));
        assert_eq!(reader.read_next().unwrap(), Next::Line(2));
        reader.unread();
        assert_eq!(reader.position(), 2);
        assert_eq!(reader.read_next().unwrap(), Next::Line(2));
        assert_eq!(reader.line(), b"{\"type\":\"delivery\",\"n\":2}");
        assert_eq!(reader.read_next().unwrap(), Next::Line(3));
        assert_eq!(reader.read_next().unwrap(), Next::End);
    }

    #[test]
    fn a_reader_at_the_end_sees_what_is_appended_later() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), big(), 0).unwrap();
        journal.append(&lines(1, 2));
        let mut reader = JournalReader::new(journal.clone(), 1);
        assert_eq!(read_all(&mut reader).0.len(), 2);
        assert_eq!(reader.read_next().unwrap(), Next::End);
        journal.append(&lines(3, 1));
        assert_eq!(reader.read_next().unwrap(), Next::Line(3));
        assert_eq!(reader.read_next().unwrap(), Next::End);
    }

    #[test]
    fn a_torn_last_line_is_cut_at_open_and_its_id_given_again() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), big(), 0).unwrap();
        journal.append(&lines(1, 2));
        drop(journal);
        let path = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"type\":\"deliv").unwrap();
        let journal = Journal::open(dir.path(), big(), 0).unwrap();
        assert_eq!(journal.next_seq(), 3);
        journal.append(&lines(3, 1));
        let (got, _) = read_all(&mut JournalReader::new(journal, 1));
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].1, "{\"type\":\"delivery\",\"n\":3}");
    }

    #[test]
    fn segments_rotate_and_a_reader_crosses_them() {
        let dir = tempfile::tempdir().unwrap();
        let limits = JournalLimits {
            segment_bytes: 100,
            max_bytes: 1 << 30,
        };
        let journal = Journal::open(dir.path(), limits, 0).unwrap();
        let mut reader = JournalReader::new(journal.clone(), 1);
        let mut seen = Vec::new();
        for batch in 0..20u64 {
            journal.append(&lines(1 + batch * 3, 3));
            // Read as the writer goes, as a sender does.
            seen.extend(read_all(&mut reader).0.into_iter().map(|g| g.0));
        }
        assert!(journal.segment_count() > 5, "{}", journal.segment_count());
        assert_eq!(seen, (1..=60).collect::<Vec<_>>());
        // From the middle of a later segment.
        let (got, _) = read_all(&mut JournalReader::new(journal.clone(), 37));
        assert_eq!(got.first().map(|g| g.0), Some(37));
        assert_eq!(got.len(), 24);
        // After reopening: the same segments, ids carry on.
        drop(reader);
        drop(journal);
        let journal = Journal::open(dir.path(), limits, 0).unwrap();
        assert_eq!(journal.next_seq(), 61);
    }

    #[test]
    fn released_segments_are_deleted_but_never_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let limits = JournalLimits {
            segment_bytes: 100,
            max_bytes: 1 << 30,
        };
        let journal = Journal::open(dir.path(), limits, 0).unwrap();
        for batch in 0..10u64 {
            journal.append(&lines(1 + batch * 3, 3));
        }
        let before = journal.segment_count();
        let files = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files(), before);
        journal.release(16);
        assert!(journal.segment_count() < before);
        assert_eq!(files(), journal.segment_count());
        // Everything from 16 on is still there.
        let (got, skipped) = read_all(&mut JournalReader::new(journal.clone(), 16));
        assert!(skipped.is_empty());
        assert_eq!(got.first().map(|g| g.0), Some(16));
        journal.release(u64::MAX);
        assert_eq!(journal.segment_count(), 1);
        assert_eq!(files(), 1);
        assert_eq!(
            journal.bytes(),
            std::fs::metadata(segment_path(dir.path(), 31))
                .unwrap()
                .len()
        );
        // Ids carry on after the last segment was emptied and the journal reopened.
        drop(journal);
        let journal = Journal::open(dir.path(), limits, 0).unwrap();
        assert_eq!(journal.next_seq(), 31);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_readers_are_told_what_they_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let limits = JournalLimits {
            segment_bytes: 100,
            max_bytes: 300,
        };
        let journal = Journal::open(dir.path(), limits, 0).unwrap();
        for batch in 0..20u64 {
            journal.append(&lines(1 + batch * 3, 3));
        }
        assert!(journal.bytes() <= 300 + 100, "{}", journal.bytes());
        assert!(journal.dropped_events() > 0);
        let mut reader = JournalReader::new(journal.clone(), 1);
        let (got, skipped) = read_all(&mut reader);
        assert_eq!(skipped.len(), 1);
        let (from, to) = skipped[0];
        assert_eq!(from, 1);
        assert_eq!(journal.dropped_events(), to - 1);
        assert_eq!(got.first().map(|g| g.0), Some(to));
        assert_eq!(got.last().map(|g| g.0), Some(60));
        assert_eq!(got.len() as u64, 61 - to);
    }

    #[test]
    fn dropping_what_every_webhook_had_is_no_loss() {
        let dir = tempfile::tempdir().unwrap();
        let limits = JournalLimits {
            segment_bytes: 100,
            max_bytes: 300,
        };
        let journal = Journal::open(dir.path(), limits, 0).unwrap();
        journal.release(1_000); // every webhook is far ahead (as far as this test goes)
        for batch in 0..20u64 {
            journal.append(&lines(1 + batch * 3, 3));
        }
        assert_eq!(journal.dropped_events(), 0);
    }

    #[test]
    fn ids_never_go_below_a_saved_position() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), big(), 0).unwrap();
        journal.append(&lines(1, 2));
        drop(journal);
        // A power loss took the journal's tail but a position of 10 had been saved.
        let journal = Journal::open(dir.path(), big(), 10).unwrap();
        assert_eq!(journal.next_seq(), 10);
        journal.append(&lines(10, 1));
        let (got, skipped) = read_all(&mut JournalReader::new(journal.clone(), 10));
        assert!(skipped.is_empty());
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [10]);
        let (got, skipped) = read_all(&mut JournalReader::new(journal, 1));
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [1, 2, 10]);
        assert_eq!(skipped, [(3, 10)]);
    }

    #[test]
    fn a_torn_segment_end_before_a_later_segment_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let limits = JournalLimits {
            segment_bytes: 100,
            max_bytes: 1 << 30,
        };
        let journal = Journal::open(dir.path(), limits, 0).unwrap();
        for batch in 0..4u64 {
            journal.append(&lines(1 + batch * 3, 3));
        }
        drop(journal);
        // The first segment lost its last line and a half (power loss before its fdatasync).
        let first = segment_path(dir.path(), 1);
        let len = std::fs::metadata(&first).unwrap().len();
        let f = OpenOptions::new().write(true).open(&first).unwrap();
        f.set_len(len - 30).unwrap();
        let journal = Journal::open(dir.path(), limits, 0).unwrap();
        let (got, skipped) = read_all(&mut JournalReader::new(journal, 1));
        assert_eq!(skipped.len(), 1);
        let ids: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&12));
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn an_unterminated_batch_still_gives_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), big(), 0).unwrap();
        journal.append(b"{\"a\":1}\n{\"a\":2}");
        journal.append(b"{\"a\":3}\n");
        let (got, _) = read_all(&mut JournalReader::new(journal, 1));
        let text: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
        assert_eq!(text, ["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"]);
    }

    #[test]
    fn wait_past_returns_when_events_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path(), big(), 0).unwrap();
        let writer = journal.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.append(&lines(1, 1));
        });
        let started = std::time::Instant::now();
        journal.wait_past(1, Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(journal.next_seq(), 2);
        t.join().unwrap();
    }
}
