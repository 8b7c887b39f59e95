//! Segment files: naming, the 64-byte segment header, creation (pre-allocated and mapped for
//! writing) and a scanner that walks the records of a mapped segment.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::SpoolError;
use super::record::{self, HeaderProblem, RECORD_HEADER_BYTES, RecordHeader, RecordSeed};

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"VOLLEYSP";
/// The segment format version written by this code: record headers' checksums are seeded with
/// the segment's number ([`RecordSeed::for_segment`]), so its file can be reused.
pub const SEGMENT_VERSION: u16 = 2;
/// The first format: record checksums unseeded. Still read; such files are never reused.
pub const LEGACY_SEGMENT_VERSION: u16 = 1;
/// Bytes of the segment header; the first record starts here.
pub const SEGMENT_HEADER_BYTES: usize = 64;

/// The directory holding core `core`'s segments.
pub fn core_dir(spool_dir: &Path, core: u16) -> PathBuf {
    spool_dir.join(format!("core-{core}"))
}

/// The file name of segment `segment`: ten decimal digits, so names sort in segment order.
pub fn segment_file_name(segment: u32) -> String {
    format!("{segment:010}.seg")
}

/// The path of a segment of a core.
pub fn segment_path(spool_dir: &Path, core: u16, segment: u32) -> PathBuf {
    core_dir(spool_dir, core).join(segment_file_name(segment))
}

/// Parses a segment file name back to its number.
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    parse_numbered(name, ".seg")
}

/// The file name of a free segment file: a finished segment's file, kept under its old number
/// to be reused (never read as a segment; `parse_segment_file_name` ignores it).
pub fn free_file_name(old_segment: u32) -> String {
    format!("{old_segment:010}.free")
}

/// Parses a free file name back to the number of the segment it held.
pub fn parse_free_file_name(name: &str) -> Option<u32> {
    parse_numbered(name, ".free")
}

/// Ten decimal digits, then `suffix`.
fn parse_numbered(name: &str, suffix: &str) -> Option<u32> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segment numbers present in a core directory, ascending.
pub fn list_segments(core_dir: &Path) -> io::Result<Vec<u32>> {
    list_numbered(core_dir, parse_segment_file_name)
}

/// The free segment files in a core directory, by their old segment numbers, ascending.
pub fn list_free_files(core_dir: &Path) -> io::Result<Vec<u32>> {
    list_numbered(core_dir, parse_free_file_name)
}

fn list_numbered(core_dir: &Path, parse: fn(&str) -> Option<u32>) -> io::Result<Vec<u32>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(core_dir)? {
        if let Some(n) = entry?.file_name().to_str().and_then(parse) {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// The fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub core: u16,
    pub segment: u32,
    pub created_at_s: u64,
    pub segment_bytes: u64,
    /// The core's next message sequence number when the segment was created: recovery resumes at
    /// least here even when every older segment has been reclaimed.
    pub next_seq: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut h = [0u8; SEGMENT_HEADER_BYTES];
        h[..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&self.core.to_le_bytes());
        h[12..16].copy_from_slice(&self.segment.to_le_bytes());
        h[16..24].copy_from_slice(&self.created_at_s.to_le_bytes());
        h[24..32].copy_from_slice(&self.segment_bytes.to_le_bytes());
        h[32..40].copy_from_slice(&self.next_seq.to_le_bytes());
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// `segment_bytes` as a length in memory (refused where it does not fit).
    fn segment_len(&self) -> Result<usize, SpoolError> {
        usize::try_from(self.segment_bytes).map_err(|_| SpoolError::TooLarge {
            bytes: self.segment_bytes,
            limit_bytes: usize::MAX as u64,
        })
    }

    /// The header, if valid and of the current format.
    pub fn decode(bytes: &[u8]) -> Option<SegmentHeader> {
        Self::decode_any(bytes)
            .filter(|&(_, version)| version == SEGMENT_VERSION)
            .map(|(h, _)| h)
    }

    /// The header and its format version (this one or the legacy one), if valid.
    pub fn decode_any(bytes: &[u8]) -> Option<(SegmentHeader, u16)> {
        let h = bytes.get(..SEGMENT_HEADER_BYTES)?;
        let crc = u32::from_le_bytes(h[60..64].try_into().ok()?);
        if h[..8] != SEGMENT_MAGIC || crc32c::crc32c(&h[..60]) != crc {
            return None;
        }
        let version = u16::from_le_bytes(h[8..10].try_into().ok()?);
        if version != SEGMENT_VERSION && version != LEGACY_SEGMENT_VERSION {
            return None;
        }
        let header = SegmentHeader {
            core: u16::from_le_bytes(h[10..12].try_into().ok()?),
            segment: u32::from_le_bytes(h[12..16].try_into().ok()?),
            created_at_s: u64::from_le_bytes(h[16..24].try_into().ok()?),
            segment_bytes: u64::from_le_bytes(h[24..32].try_into().ok()?),
            next_seq: u64::from_le_bytes(h[32..40].try_into().ok()?),
        };
        Some((header, version))
    }
}

/// What the records of segment file `number` (its bytes mapped, header first) are checked
/// with: told by the segment header's format; when the header is damaged, by the first record
/// (this format's seed tried first, then the legacy one).
pub fn record_seed_of(bytes: &[u8], number: u32) -> RecordSeed {
    record_seed_for(
        SegmentHeader::decode_any(bytes).map(|(_, v)| v),
        bytes,
        number,
    )
}

/// `record_seed_of` for a segment whose header was already decoded: `version` is its format
/// (`None`: not a valid header).
pub fn record_seed_for(version: Option<u16>, bytes: &[u8], number: u32) -> RecordSeed {
    let seeded = RecordSeed::for_segment(number);
    match version {
        Some(LEGACY_SEGMENT_VERSION) => RecordSeed::LEGACY,
        Some(_) => seeded,
        None => {
            let first = bytes.get(SEGMENT_HEADER_BYTES..).unwrap_or(&[]);
            if record::decode_header(first, seeded).is_err()
                && record::decode_header(first, RecordSeed::LEGACY).is_ok()
            {
                RecordSeed::LEGACY
            } else {
                seeded
            }
        }
    }
}

/// A segment open for appending. Records are written with `pwrite` into the page cache, not
/// through a writable mapping: at every fdatasync the kernel write-protects a file's writably
/// mapped pages (a TLB shootdown across CPUs) and the next write to each faults again, which
/// `perf` showed costing about a tenth of the daemon's CPU. Readers still map segments read-only.
pub struct WritableSegment {
    pub number: u32,
    /// The checksum seed of this segment's records.
    pub seed: RecordSeed,
    /// The segment's size (pre-allocated).
    len: usize,
    /// Where the next record goes.
    pub write_pos: usize,
    file: File,
    /// A record is encoded here, then written with one `pwrite`; reused between records.
    scratch: Vec<u8>,
}

/// Above this, the scratch buffer is given back after a record (a large message was written).
const SCRATCH_KEEP_BYTES: usize = 1 << 20;

impl WritableSegment {
    /// Creates and pre-allocates a new segment, writing its header. Blocking syscalls (open,
    /// fallocate, pwrite) that can take milliseconds: off the reactor (`spawn_blocking`), except
    /// at `Spool::open`, before anything else runs on the core.
    pub fn create(path: &Path, header: SegmentHeader) -> Result<WritableSegment, SpoolError> {
        let len = header.segment_len()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(SpoolError::from_io)?;
        let written = preallocate(&file, header.segment_bytes)
            .and_then(|()| file.write_all_at(&header.encode(), 0));
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(SpoolError::from_io(e));
        }
        Ok(WritableSegment::headed(file, header.segment, len))
    }

    /// A segment whose header was just written into `file`: records go after it.
    fn headed(file: File, number: u32, len: usize) -> WritableSegment {
        WritableSegment {
            number,
            seed: RecordSeed::for_segment(number),
            len,
            write_pos: SEGMENT_HEADER_BYTES,
            file,
            scratch: Vec::new(),
        }
    }

    /// Makes segment `header.segment` at `path` out of the free segment file `free` (a finished
    /// segment's file, already allocated and written, so a sync into it converts no extents):
    /// renamed into place, its pages read ahead so that writes of part of a page find them
    /// cached, its header rewritten. Its old records stay until overwritten, but their checksums
    /// are seeded with the old number and never validate here. Until the first commit into it
    /// syncs the directory, a crash may leave it under either name: under the new one with the
    /// old header, recovery reads it as empty. Blocking, as `create`. On an error the file is
    /// gone and the caller creates a fresh one.
    pub fn reuse(
        free: &Path,
        path: &Path,
        header: SegmentHeader,
    ) -> Result<WritableSegment, SpoolError> {
        let len = header.segment_len()?;
        std::fs::rename(free, path).map_err(SpoolError::from_io)?;
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .and_then(|file| {
                let file_len = file.metadata()?.len();
                if file_len != header.segment_bytes {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "free file of {file_len} bytes, segments are {}",
                            header.segment_bytes
                        ),
                    ));
                }
                // SAFETY: plain syscall on a valid open fd; no memory is passed. Best effort: a
                // page not read ahead is read at its first write, as without it.
                unsafe { libc::readahead(file.as_raw_fd(), 0, len) };
                file.write_all_at(&header.encode(), 0)?;
                Ok(file)
            });
        match opened {
            Ok(file) => Ok(WritableSegment::headed(file, header.segment, len)),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(SpoolError::from_io(e))
            }
        }
    }

    /// Rewrites the header of a segment made ahead of time, as it becomes the one written:
    /// `next_seq` and `created_at_s` must be those of the switch, not of the preparation
    /// (recovery resumes ids at the highest `next_seq`). One 64-byte `pwrite` into the page
    /// cache, like a record; the first commit into the segment makes it durable.
    pub fn restamp(&mut self, header: SegmentHeader) -> Result<(), SpoolError> {
        if header.segment != self.number || header.segment_bytes != self.len as u64 {
            return Err(SpoolError::Corrupt(format!(
                "segment {} (of {} bytes) restamped as segment {} of {} bytes",
                self.number, self.len, header.segment, header.segment_bytes
            )));
        }
        self.file
            .write_all_at(&header.encode(), 0)
            .map_err(SpoolError::from_io)
    }

    /// Bytes still free for records.
    pub fn remaining(&self) -> usize {
        self.len.saturating_sub(self.write_pos)
    }

    /// Appends a record of `span` bytes that `encode` fills in (given zeroed bytes): one `pwrite`
    /// into the page cache. Returns the record's offset and what `encode` returned. `None` when
    /// the segment has no room; on a write error nothing is appended (the next record goes where
    /// this one would have), so no hole can hide later records from recovery.
    pub fn append<T>(
        &mut self,
        span: usize,
        encode: impl FnOnce(&mut [u8]) -> T,
    ) -> Option<Result<(usize, T), SpoolError>> {
        self.append_vectored(
            span,
            |scratch| {
                scratch.resize(span, 0);
                encode(scratch)
            },
            &[],
        )
    }

    /// Appends a record of `span` bytes made of the prefix `encode` writes into a reused buffer
    /// (given empty), then `pieces` as they lie (not copied), then zeros up to `span`, then a
    /// zeroed record header (where there is room): one `pwritev` into the page cache. The zeroed
    /// header marks the end of the written part in a reused file, whose old bytes lie beyond;
    /// the next record overwrites it. Otherwise as `append`.
    pub fn append_vectored<T>(
        &mut self,
        span: usize,
        encode: impl FnOnce(&mut Vec<u8>) -> T,
        pieces: &[&[u8]],
    ) -> Option<Result<(usize, T), SpoolError>> {
        const ZEROS: [u8; record::RECORD_ALIGN_BYTES] = [0; record::RECORD_ALIGN_BYTES];
        const END: [u8; RECORD_HEADER_BYTES] = [0; RECORD_HEADER_BYTES];
        let at = self.write_pos;
        let end = at.checked_add(span).filter(|&end| end <= self.len)?;
        self.scratch.clear();
        let encoded = encode(&mut self.scratch);
        let used = self.scratch.len() + pieces.iter().map(|p| p.len()).sum::<usize>();
        let Some(padding) = span.checked_sub(used).and_then(|n| ZEROS.get(..n)) else {
            return Some(Err(SpoolError::Corrupt(format!(
                "a record of {used} bytes does not fill a span of {span}"
            ))));
        };
        let end_marker = &END[..RECORD_HEADER_BYTES.min(self.len - end)];
        let mut parts: Vec<&[u8]> = Vec::with_capacity(pieces.len() + 3);
        parts.push(&self.scratch);
        parts.extend_from_slice(pieces);
        parts.push(padding);
        parts.push(end_marker);
        let written = write_all_vectored_at(&self.file, &parts, at as u64);
        if self.scratch.capacity() > SCRATCH_KEEP_BYTES {
            self.scratch = Vec::new();
        }
        Some(match written {
            Ok(()) => {
                self.write_pos = end;
                Ok((at, encoded))
            }
            Err(e) => Err(SpoolError::from_io(e)),
        })
    }
}

/// Writes all of `parts` at `offset`, one after the other: `pwritev`, again from where a short
/// write stopped.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| io::IoSlice::new(p))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        let count = rest.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix; the slices outlive the call
        // and `count` is within `rest`.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                rest.as_ptr().cast::<libc::iovec>(),
                count,
                at,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        io::IoSlice::advance_slices(&mut rest, n as usize);
    }
    Ok(())
}

/// Allocates the file's blocks so writes through the mapping cannot hit ENOSPC (SIGBUS) later.
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len_off = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    // SAFETY: plain syscall on a valid open fd; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_off) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        log::warn!("fallocate unsupported here; spool segments will be sparse");
        return file.set_len(len);
    }
    Err(err)
}

/// One step of a segment scan.
#[derive(Debug)]
pub enum ScanItem<'a> {
    /// A record whose header and payload checksums are good.
    Record {
        offset: usize,
        header: RecordHeader,
        payload: &'a [u8],
    },
    /// A record with a good header whose payload failed its checksum: skipped.
    CorruptPayload { offset: usize, payload_len: u32 },
}

/// How a segment scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// A zeroed header or the end of the file: the clean end of the written part.
    Clean { offset: usize },
    /// An invalid header, or a record running past the end of the file: a torn write or damage.
    Torn { offset: usize },
}

/// Walks the records of a mapped segment from the first record on.
pub struct SegmentScan<'a> {
    bytes: &'a [u8],
    seed: RecordSeed,
    pos: usize,
    end: Option<ScanEnd>,
    /// Byte ranges `[from, to)` jumped over unread: records voided after a failed commit.
    voided: Vec<(usize, usize)>,
}

impl<'a> SegmentScan<'a> {
    /// A scan of records checked with `seed` (see [`record_seed_of`]).
    pub fn new(bytes: &'a [u8], seed: RecordSeed) -> SegmentScan<'a> {
        SegmentScan {
            bytes,
            seed,
            pos: SEGMENT_HEADER_BYTES,
            end: None,
            voided: Vec::new(),
        }
    }

    /// The same scan, jumping over the byte ranges `voided` (never read, whatever they hold).
    pub fn skipping(mut self, voided: Vec<(usize, usize)>) -> SegmentScan<'a> {
        self.voided = voided;
        self
    }

    /// How the scan ended; `None` until `next` has returned `None`.
    pub fn end(&self) -> Option<ScanEnd> {
        self.end
    }
}

impl<'a> Iterator for SegmentScan<'a> {
    type Item = ScanItem<'a>;

    fn next(&mut self) -> Option<ScanItem<'a>> {
        if self.end.is_some() {
            return None;
        }
        while let Some(&(_, to)) = self
            .voided
            .iter()
            .find(|&&(from, to)| (from..to).contains(&self.pos))
        {
            self.pos = to;
        }
        let offset = self.pos;
        let Some(head_bytes) = self.bytes.get(offset..offset + RECORD_HEADER_BYTES) else {
            // Not even room for a header: a partial header is torn, nothing at all is clean.
            let rest = self.bytes.get(offset..).unwrap_or(&[]);
            self.end = Some(if rest.iter().all(|&b| b == 0) {
                ScanEnd::Clean { offset }
            } else {
                ScanEnd::Torn { offset }
            });
            return None;
        };
        let header = match record::decode_header(head_bytes, self.seed) {
            Ok(h) => h,
            Err(HeaderProblem::Zero) => {
                self.end = Some(ScanEnd::Clean { offset });
                return None;
            }
            Err(HeaderProblem::Invalid) => {
                self.end = Some(ScanEnd::Torn { offset });
                return None;
            }
        };
        let payload_start = offset + RECORD_HEADER_BYTES;
        let span = record::record_span(header.payload_len as usize);
        let Some(payload) = self
            .bytes
            .get(payload_start..payload_start + header.payload_len as usize)
        else {
            self.end = Some(ScanEnd::Torn { offset });
            return None;
        };
        self.pos = offset + span;
        if crc32c::crc32c(payload) != header.payload_crc {
            return Some(ScanItem::CorruptPayload {
                offset,
                payload_len: header.payload_len,
            });
        }
        Some(ScanItem::Record {
            offset,
            header,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_file_names_parse_and_are_not_segments() {
        assert_eq!(free_file_name(42), "0000000042.free");
        assert_eq!(parse_free_file_name("0000000042.free"), Some(42));
        assert_eq!(parse_segment_file_name("0000000042.free"), None);
        assert_eq!(parse_free_file_name("0000000042.seg"), None);
    }

    #[test]
    fn names_sort_and_parse() {
        assert_eq!(segment_file_name(42), "0000000042.seg");
        assert_eq!(parse_segment_file_name("0000000042.seg"), Some(42));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("000000004x.seg"), None);
        assert_eq!(parse_segment_file_name("0000000042.tmp"), None);
    }

    #[test]
    fn header_round_trip_and_damage() {
        let h = SegmentHeader {
            core: 3,
            segment: 9,
            created_at_s: 1_790_000_000,
            segment_bytes: 1 << 26,
            next_seq: 12345,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Some(h));
        let mut damaged = bytes;
        damaged[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&damaged), None);
        assert_eq!(SegmentHeader::decode(&bytes[..10]), None);
    }
}
