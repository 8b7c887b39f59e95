//! Reading bodies and envelopes of any core's spool without copying them through channels: a
//! `BodyLocation` or `RecordLocation` crosses cores, and each core maps the segment read-only by
//! path and keeps the mapping cached. Envelopes are read back from their record, CRC-checked, when a
//! transaction needs them: the delivery queues keep only the record's location in RAM.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::ops::Deref;
use std::path::PathBuf;
use std::rc::Rc;

use memmap2::Mmap;

use super::record::{self, RECORD_HEADER_BYTES, RECORD_VERSION, RecordKind};
use super::segment::{self, segment_path};
use super::{BodyLocation, RecordLocation, SpoolError};
use crate::envelope::{MessageId, PackedEnvelope};

/// Mappings a reader keeps by default before dropping the oldest.
pub const DEFAULT_MAX_CACHED_MAPS: usize = 256;

/// A body in a mapped segment. Holding it keeps the mapping alive. A segment is reclaimed (its
/// file deleted or kept to be reused, and then overwritten) only once every message in it is
/// finished, which needs every transaction that read a body from it to have reported: no handle
/// outlives its message's last delivery attempt.
#[derive(Clone)]
pub struct BodyBytes {
    map: Rc<Mmap>,
    start: usize,
    len: usize,
}

impl Deref for BodyBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // The range was checked against the mapping when the handle was made.
        self.map
            .get(self.start..self.start + self.len)
            .unwrap_or(&[])
    }
}

impl std::fmt::Debug for BodyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyBytes")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
    }
}

/// A message read back from its record: the envelope, packed, and where the body lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub envelope: PackedEnvelope,
    pub body: BodyLocation,
}

/// One per core: maps segments of every core read-only on demand and caches the mappings.
pub struct SegmentReader {
    spool_dir: PathBuf,
    max_cached_maps: usize,
    maps: RefCell<HashMap<(u16, u32), Rc<Mmap>>>,
    /// Insertion order, for dropping the oldest mapping when the cache is full.
    order: RefCell<VecDeque<(u16, u32)>>,
}

impl SegmentReader {
    /// A reader of the spool rooted at `spool_dir` (the `dir` of every core's `SpoolConfig`).
    pub fn new(spool_dir: PathBuf) -> Self {
        Self::with_max_cached_maps(spool_dir, DEFAULT_MAX_CACHED_MAPS)
    }

    /// Like `new`, keeping at most `max_cached_maps` mappings (at least one).
    pub fn with_max_cached_maps(spool_dir: PathBuf, max_cached_maps: usize) -> Self {
        SegmentReader {
            spool_dir,
            max_cached_maps: max_cached_maps.max(1),
            maps: RefCell::new(HashMap::new()),
            order: RefCell::new(VecDeque::new()),
        }
    }

    /// The spool root this reader maps segments under.
    pub fn spool_dir(&self) -> &std::path::Path {
        &self.spool_dir
    }

    /// The body at `loc`, as a handle that derefs to the bytes.
    pub fn body(&self, loc: BodyLocation) -> Result<BodyBytes, SpoolError> {
        let map = self.map(loc.core, loc.segment)?;
        let start = usize::try_from(loc.offset).map_err(|_| out_of_range(loc))?;
        let len = loc.len as usize;
        match start.checked_add(len) {
            Some(end) if end <= map.len() => Ok(BodyBytes { map, start, len }),
            _ => Err(out_of_range(loc)),
        }
    }

    /// The envelope and body location of message `id`, read from its record at `record`. The
    /// record's header and payload checksums are verified and the record must hold `id`: a bad
    /// location or a damaged record gives `SpoolError::Corrupt`, never a wrong envelope.
    pub fn message(
        &self,
        id: MessageId,
        record: RecordLocation,
    ) -> Result<StoredMessage, SpoolError> {
        let map = self.map(record.core, record.segment)?;
        let corrupt = |what: &str| {
            SpoolError::Corrupt(format!(
                "message {id} at core {} segment {} offset {}: {what}",
                record.core, record.segment, record.offset
            ))
        };
        let at = record.offset as usize;
        let head = map
            .get(at..)
            .ok_or_else(|| corrupt("outside its segment"))?;
        // A record of an earlier use of a reused file fails here: its seed is another number's.
        let seed = segment::record_seed_of(&map, record.segment);
        let header =
            record::decode_header(head, seed).map_err(|_| corrupt("no valid record header"))?;
        if header.kind != Some(RecordKind::Message) || header.version != RECORD_VERSION {
            return Err(corrupt("not a message record"));
        }
        let payload_at = at + RECORD_HEADER_BYTES;
        let payload = payload_at
            .checked_add(header.payload_len as usize)
            .and_then(|end| map.get(payload_at..end))
            .ok_or_else(|| corrupt("record runs past its segment"))?;
        if crc32c::crc32c(payload) != header.payload_crc {
            return Err(corrupt("checksum mismatch"));
        }
        let (summary, envelope) = record::decode_envelope(payload)?;
        if summary.id != id {
            return Err(corrupt(&format!("the record holds message {}", summary.id)));
        }
        let body_len = summary.body_len as usize;
        Ok(StoredMessage {
            envelope: PackedEnvelope::new(&envelope),
            body: BodyLocation {
                core: record.core,
                segment: record.segment,
                offset: (payload_at + payload.len() - body_len) as u64,
                len: summary.body_len,
                record_offset: record.offset,
            },
        })
    }

    /// Drops cached mappings of segments whose files are gone (reclaimed), so their disk space is
    /// freed once no body handle holds them. Call it now and then (e.g. once a second). The files
    /// are looked up (one `stat` per cached mapping, up to `max_cached_maps`) on the executor's
    /// blocking pool, not on the reactor.
    pub async fn sweep(&self) {
        let cached: Vec<((u16, u32), PathBuf)> = self
            .maps
            .borrow()
            .keys()
            .map(|&(core, segment)| {
                (
                    (core, segment),
                    segment_path(&self.spool_dir, core, segment),
                )
            })
            .collect();
        if cached.is_empty() {
            return;
        }
        let gone: Vec<(u16, u32)> = glommio::executor()
            .spawn_blocking(move || {
                cached
                    .into_iter()
                    .filter(|(_, path)| !path.exists())
                    .map(|(key, _)| key)
                    .collect()
            })
            .await;
        // Segment numbers are never reused, so a segment gone then is gone now.
        for (core, segment) in gone {
            self.forget(core, segment);
        }
    }

    /// Drops the cached mapping of one segment.
    pub fn forget(&self, core: u16, segment: u32) {
        self.maps.borrow_mut().remove(&(core, segment));
        self.order
            .borrow_mut()
            .retain(|&key| key != (core, segment));
    }

    /// Mappings currently cached.
    pub fn cached_maps(&self) -> usize {
        self.maps.borrow().len()
    }

    fn map(&self, core: u16, segment: u32) -> Result<Rc<Mmap>, SpoolError> {
        if let Some(map) = self.maps.borrow().get(&(core, segment)) {
            return Ok(map.clone());
        }
        let path = segment_path(&self.spool_dir, core, segment);
        let file = File::open(&path).map_err(SpoolError::from_io)?;
        // SAFETY: segments are append-only and pre-allocated to their full length: the bytes of a
        // stored record never change after `store` returns, and files are never truncated, only
        // unlinked (which keeps an existing mapping valid).
        let map = Rc::new(unsafe { Mmap::map(&file) }.map_err(SpoolError::from_io)?);
        let mut maps = self.maps.borrow_mut();
        let mut order = self.order.borrow_mut();
        while maps.len() >= self.max_cached_maps {
            match order.pop_front() {
                Some(oldest) => {
                    maps.remove(&oldest);
                }
                None => break,
            }
        }
        maps.insert((core, segment), map.clone());
        order.push_back((core, segment));
        Ok(map)
    }
}

/// Reads envelopes record after record in file order (routing what recovery found), dropping each
/// segment's mapping once the reading has moved past it: otherwise every page of the spool read at
/// start would stay resident in the process (as file pages) for as long as the mapping is cached.
/// The page cache keeps the pages; the process only stops mapping them.
pub struct SequentialMessages<'a> {
    reader: &'a SegmentReader,
    segment: Option<(u16, u32)>,
}

impl<'a> SequentialMessages<'a> {
    pub fn new(reader: &'a SegmentReader) -> Self {
        SequentialMessages {
            reader,
            segment: None,
        }
    }

    /// As `SegmentReader::message`.
    pub fn message(
        &mut self,
        id: MessageId,
        record: RecordLocation,
    ) -> Result<StoredMessage, SpoolError> {
        let segment = (record.core, record.segment);
        if let Some(previous) = self.segment.replace(segment)
            && previous != segment
        {
            self.reader.forget(previous.0, previous.1);
        }
        self.reader.message(id, record)
    }
}

impl Drop for SequentialMessages<'_> {
    fn drop(&mut self) {
        if let Some((core, segment)) = self.segment.take() {
            self.reader.forget(core, segment);
        }
    }
}

fn out_of_range(loc: BodyLocation) -> SpoolError {
    SpoolError::Corrupt(format!("body location {loc:?} lies outside its segment"))
}
