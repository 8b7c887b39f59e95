//! Recovery at start: scan every segment of a core in order, check every CRC, apply the state
//! records, and rebuild the index and the list of messages still to deliver.
//!
//! A torn tail ends a segment's scan. In the last segment holding records (or after it) that is
//! where the writing stopped: it is overwritten with a zero header so a later scan also stops
//! there, whatever stale bytes lie beyond (a torn write, or the old records of a reused file).
//! Earlier, it is damage: the segment is marked so and set aside at reclaim. A record whose
//! payload fails its CRC elsewhere is logged and skipped. Envelopes are checked only for messages
//! still live, at the end, straight from the mappings, and not kept: a recovered message is its
//! record's location.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use memmap2::Mmap;

use super::index::{LiveMessage, SegmentUsage, SeqMap, SpoolIndex};
use super::record::{self, RECORD_HEADER_BYTES, RECORD_VERSION, RecordKind, RecordSeed};
use super::segment::{self, ScanEnd, ScanItem, SegmentHeader, SegmentScan};
use super::voided::{self, VoidedRange};
use super::{RecipientState, RecordLocation, RecoveredMessage, SpoolError};
use crate::envelope::MessageId;

/// What recovery found.
pub struct RecoveryOutcome {
    pub messages: Vec<RecoveredMessage>,
    pub index: SpoolIndex,
    /// The first sequence number not seen in any record or segment header.
    pub next_seq: u64,
    pub last_segment: Option<u32>,
    pub corrupt_records: u64,
    /// Voided ranges still on record (see `voided`).
    pub voided_ranges: usize,
}

/// A message record seen during the scan (32 bytes); the envelope stays on disk.
struct ScannedMessage {
    segment: u32,
    /// Segments are at most `u32::MAX` bytes, so record offsets fit (a larger one is refused).
    record_offset: u32,
    recipient_count: u32,
    /// `None` until the first state record arrives (most messages get none before a crash).
    states: Option<Box<[RecipientState]>>,
}

/// Recovers core `core` from `core_dir` (which must exist).
pub fn recover(core_dir: &Path, core: u16) -> Result<RecoveryOutcome, SpoolError> {
    let numbers = segment::list_segments(core_dir).map_err(SpoolError::from_io)?;
    let voided = voided::read(core_dir)?;
    // Ranges of segments gone are dropped before any new segment can take their number again.
    let kept: Vec<VoidedRange> = voided
        .iter()
        .copied()
        .filter(|r| numbers.binary_search(&r.segment).is_ok())
        .collect();
    if kept.len() != voided.len() {
        voided::rewrite(core_dir, &kept).map_err(SpoolError::from_io)?;
    }
    // Segments found. Each mapping is dropped once its scan is done: keeping every segment mapped
    // until the end would make the whole spool resident (as file pages) during recovery.
    let mut present: BTreeSet<u32> = BTreeSet::new();
    let mut usage: BTreeMap<u32, SegmentUsage> = BTreeMap::new();
    let mut scanned: SeqMap<ScannedMessage> = SeqMap::default();
    let mut next_seq = 1u64;
    let mut corrupt_records = 0u64;

    // Where each segment's scan met a torn or damaged record header (and whether its segment
    // header was readable): an end or damage, decided after the loop, once every segment is
    // scanned.
    let mut torn: Vec<(u32, usize, bool)> = Vec::new();
    // The last segment holding any record header that validated.
    let mut last_with_records: Option<u32> = None;
    for &number in &numbers {
        let path = core_dir.join(segment::segment_file_name(number));
        let file = File::open(&path).map_err(SpoolError::from_io)?;
        let file_bytes = file.metadata().map_err(SpoolError::from_io)?.len();
        // SAFETY: nothing else writes this core's segments while it recovers (one spool per core
        // directory), and files are never truncated by us while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(SpoolError::from_io)?;
        let mut segment_usage = SegmentUsage {
            bytes: file_bytes,
            ..SegmentUsage::default()
        };
        let decoded = SegmentHeader::decode_any(&map);
        match decoded {
            Some((h, version)) if version == segment::SEGMENT_VERSION && h.segment != number => {
                // A reused file renamed into place whose new header never reached the disk:
                // the first commit into a segment syncs its name, so nothing in it was
                // acknowledged, and its records (under the old number's seed) are not its own.
                log::info!(
                    "{}: a reused file still headed as segment {}; read as empty",
                    path.display(),
                    h.segment
                );
                usage.insert(number, segment_usage);
                present.insert(number);
                continue;
            }
            Some((h, _)) => {
                next_seq = next_seq.max(h.next_seq);
                if h.core != core || h.segment != number {
                    log::warn!(
                        "{}: header says core {} segment {}; using it as core {core} segment {number}",
                        path.display(),
                        h.core,
                        h.segment
                    );
                }
            }
            None if map.iter().all(|&b| b == 0) => {}
            None => log::warn!(
                "{}: segment header damaged; scanning records anyway",
                path.display()
            ),
        }
        // A header that is neither valid nor zero is damage, not a write cut short.
        let header_readable = decoded.is_some()
            || map
                .get(..segment::SEGMENT_HEADER_BYTES)
                .unwrap_or(&map)
                .iter()
                .all(|&b| b == 0);
        let seed = segment::record_seed_for(decoded.map(|(_, v)| v), &map, number);
        // A format 1 header, or a damaged one before format 1 records: never reused.
        if seed == RecordSeed::LEGACY {
            segment_usage.legacy = true;
        }
        let skipped: Vec<(usize, usize)> = kept
            .iter()
            .filter(|r| r.segment == number)
            .map(|r| (r.from as usize, r.to as usize))
            .collect();
        for (from, to) in &skipped {
            log::info!(
                "{}: bytes {from}..{to} were voided after a failed commit; skipped",
                path.display()
            );
        }
        let mut scan = SegmentScan::new(&map, seed).skipping(skipped);
        for item in scan.by_ref() {
            last_with_records = Some(number);
            match item {
                ScanItem::Record {
                    offset,
                    header,
                    payload,
                } => {
                    if header.version != RECORD_VERSION {
                        log::warn!(
                            "{} offset {offset}: record version {} unknown; skipped",
                            path.display(),
                            header.version
                        );
                        continue;
                    }
                    let outcome = match header.kind {
                        Some(RecordKind::Message) => {
                            scan_message(&mut scanned, &mut next_seq, core, number, offset, payload)
                        }
                        Some(RecordKind::RecipientState) => scan_state(
                            &mut scanned,
                            &mut next_seq,
                            &mut segment_usage,
                            number,
                            payload,
                        ),
                        None => Err(SpoolError::Corrupt("unknown record kind".into())),
                    };
                    if let Err(e) = outcome {
                        corrupt_records += 1;
                        log::warn!("{} offset {offset}: {e}; record skipped", path.display());
                    }
                }
                ScanItem::CorruptPayload {
                    offset,
                    payload_len,
                } => {
                    corrupt_records += 1;
                    log::warn!(
                        "{} offset {offset}: CRC mismatch in a {payload_len}-byte record; skipped",
                        path.display()
                    );
                }
            }
        }
        if let Some(ScanEnd::Torn { offset }) = scan.end() {
            torn.push((number, offset, header_readable));
        }
        usage.insert(number, segment_usage);
        present.insert(number);
    }
    for (number, offset, header_readable) in torn {
        let path = core_dir.join(segment::segment_file_name(number));
        if header_readable && last_with_records.is_none_or(|last| number >= last) {
            // Past the last record anywhere: the end of what was written before the crash
            // (a torn write, or the old bytes of a reused file). Zeroed, so later scans stop.
            log::info!(
                "{}: torn tail at offset {offset}; ends there",
                path.display()
            );
            terminate(&path, offset)?;
        } else {
            corrupt_records += 1;
            if let Some(u) = usage.get_mut(&number) {
                u.damaged = true;
            }
            log::warn!(
                "{}: damaged record header at offset {offset}; rest of segment unreadable",
                path.display()
            );
        }
    }

    let mut index = SpoolIndex::default();
    for (number, segment_usage) in usage {
        // Pins to segments that no longer exist hold nothing back.
        let mut u = segment_usage;
        u.pins.retain(|p| present.contains(p));
        index.add_segment(number, u);
    }
    // Straight from the scan map into the (48-byte) list returned, sorted by sequence number,
    // which is also file order: no intermediate copy of every live message.
    // Sized once (live messages are at most the scanned ones): growing by doubling would leave up
    // to twice the memory allocated, and copy it on every growth.
    let mut messages: Vec<RecoveredMessage> = Vec::with_capacity(scanned.len());
    messages.extend(
        scanned
            .into_iter()
            .filter(|(_, m)| {
                let all_final = m
                    .states
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|s| s.is_final()));
                m.recipient_count > 0 && !all_final
            })
            .map(|(seq, m)| RecoveredMessage {
                id: MessageId { core, seq },
                record: RecordLocation {
                    core,
                    segment: m.segment,
                    offset: m.record_offset,
                },
                recipient_count: m.recipient_count,
                recorded_states: m.states,
            }),
    );
    messages.sort_unstable_by_key(|m| m.id.seq);
    index.messages.reserve(messages.len());
    // Segments are mapped again one at a time, in file order, for the envelope checks.
    // With each mapping, its records' checksum seed (its header read once, not per message).
    let mut mapped: Option<(u32, Mmap, RecordSeed)> = None;
    let mut failure = None;
    messages.retain(|m| {
        if failure.is_some() {
            return true;
        }
        let segment = m.record.segment;
        if mapped.as_ref().is_none_or(|(n, _, _)| *n != segment) {
            mapped = None;
            match map_segment(core_dir, segment) {
                Ok(map) => {
                    let seed = segment::record_seed_of(&map, segment);
                    mapped = Some((segment, map, seed));
                }
                Err(e) => {
                    failure = Some(e);
                    return true;
                }
            }
        }
        let Some((_, map, seed)) = &mapped else {
            return true;
        };
        // Checked here so a damaged envelope is skipped (and its segment freed) at start, not
        // found at delivery; the decoded envelope is dropped at once: delivery reads it back.
        if let Err(e) = check_envelope(map, *seed, m.record) {
            corrupt_records += 1;
            log::warn!(
                "segment {} message {}: {e}; skipped",
                m.record.segment,
                m.id
            );
            return false;
        }
        let states: &[RecipientState] = m.recorded_states.as_deref().unwrap_or(&[]);
        index.add_message(
            m.id.seq,
            LiveMessage::new(m.record.segment, m.recipient_count, states),
        );
        true
    });
    drop(mapped);
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(RecoveryOutcome {
        messages,
        index,
        next_seq,
        last_segment: numbers.last().copied(),
        corrupt_records,
        voided_ranges: kept.len(),
    })
}

/// Maps segment `number` of `core_dir` read-only.
fn map_segment(core_dir: &Path, number: u32) -> Result<Mmap, SpoolError> {
    let file = File::open(core_dir.join(segment::segment_file_name(number)))
        .map_err(SpoolError::from_io)?;
    // SAFETY: as for the scan's mappings: nothing else writes this core's segments while it
    // recovers, and files are never truncated while mapped.
    unsafe { Mmap::map(&file) }.map_err(SpoolError::from_io)
}

/// Whether the record at `record` (whose checksums the scan verified) holds a decodable envelope.
fn check_envelope(map: &Mmap, seed: RecordSeed, record: RecordLocation) -> Result<(), SpoolError> {
    let damaged = || SpoolError::Corrupt("message record no longer readable".into());
    let at = record.offset as usize;
    let header =
        record::decode_header(map.get(at..).ok_or_else(damaged)?, seed).map_err(|_| damaged())?;
    let payload_at = at + RECORD_HEADER_BYTES;
    let payload = map
        .get(payload_at..payload_at + header.payload_len as usize)
        .ok_or_else(damaged)?;
    record::decode_envelope(payload).map(|_| ())
}

fn scan_message(
    scanned: &mut SeqMap<ScannedMessage>,
    next_seq: &mut u64,
    core: u16,
    segment: u32,
    offset: usize,
    payload: &[u8],
) -> Result<(), SpoolError> {
    let summary = record::decode_message_summary(payload)?;
    if summary.id.core != core {
        return Err(SpoolError::Corrupt(format!(
            "message {} belongs to core {}",
            summary.id, summary.id.core
        )));
    }
    *next_seq = (*next_seq).max(summary.id.seq.saturating_add(1));
    let record_offset = u32::try_from(offset)
        .map_err(|_| SpoolError::Corrupt(format!("message {} lies beyond 4 GiB", summary.id)))?;
    if scanned.contains_key(&summary.id.seq) {
        return Err(SpoolError::Corrupt(format!(
            "message {} stored twice",
            summary.id
        )));
    }
    scanned.insert(
        summary.id.seq,
        ScannedMessage {
            segment,
            record_offset,
            recipient_count: summary.recipient_count,
            states: None,
        },
    );
    Ok(())
}

fn scan_state(
    scanned: &mut SeqMap<ScannedMessage>,
    next_seq: &mut u64,
    segment_usage: &mut SegmentUsage,
    segment: u32,
    payload: &[u8],
) -> Result<(), SpoolError> {
    let state = record::decode_state(payload)?;
    *next_seq = (*next_seq).max(state.id.seq.saturating_add(1));
    if state.message_segment != segment {
        segment_usage.pin(state.message_segment);
    }
    // Unknown: its segment was reclaimed because the message was finished. Nothing to do.
    let Some(message) = scanned.get_mut(&state.id.seq) else {
        return Ok(());
    };
    if state.recipient >= message.recipient_count {
        return Err(SpoolError::Corrupt(format!(
            "state for recipient {} of message {} which has {}",
            state.recipient, state.id, message.recipient_count
        )));
    }
    let count = message.recipient_count as usize;
    let states = message
        .states
        .get_or_insert_with(|| vec![RecipientState::Pending; count].into_boxed_slice());
    if let Some(slot) = states.get_mut(state.recipient as usize) {
        *slot = state.state;
    }
    Ok(())
}

/// Overwrites the header at a torn tail with zeros and syncs, so later scans stop there.
fn terminate(path: &Path, offset: usize) -> Result<(), SpoolError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(SpoolError::from_io)?;
    let file_len = file.metadata().map_err(SpoolError::from_io)?.len();
    let len = (RECORD_HEADER_BYTES as u64).min(file_len.saturating_sub(offset as u64)) as usize;
    if len == 0 {
        return Ok(());
    }
    file.write_all_at(&[0u8; RECORD_HEADER_BYTES][..len], offset as u64)
        .map_err(SpoolError::from_io)?;
    file.sync_data().map_err(SpoolError::from_io)
}
