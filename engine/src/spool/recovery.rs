//! Recovery at start: scan every segment of a core in order, check every CRC, apply the state
//! records, and rebuild the index and the list of messages still to deliver.
//!
//! A torn tail of the last segment ends its scan; it is then overwritten with a zero header so a
//! later scan also stops there, whatever stale bytes lie beyond. A record whose payload fails its
//! CRC elsewhere is logged and skipped. Envelopes are checked only for messages still live, at the
//! end, straight from the mappings, and not kept: a recovered message is its record's location.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use memmap2::Mmap;

use super::index::{LiveMessage, SegmentUsage, SeqMap, SpoolIndex};
use super::record::{self, RECORD_HEADER_BYTES, RECORD_VERSION, RecordKind};
use super::segment::{self, ScanEnd, ScanItem, SegmentHeader, SegmentScan};
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
}

/// A message record seen during the scan; the envelope stays on disk until we know it is live.
struct ScannedMessage {
    segment: u32,
    /// Segments are at most `u32::MAX` bytes, so record offsets fit (a larger one is refused).
    record_offset: u32,
    payload_len: u32,
    recipient_count: u32,
    /// Empty until the first state record arrives (most messages get none before a crash).
    states: Vec<RecipientState>,
}

/// Recovers core `core` from `core_dir` (which must exist).
pub fn recover(core_dir: &Path, core: u16) -> Result<RecoveryOutcome, SpoolError> {
    let numbers = segment::list_segments(core_dir).map_err(SpoolError::from_io)?;
    let mut maps: BTreeMap<u32, Mmap> = BTreeMap::new();
    let mut usage: BTreeMap<u32, SegmentUsage> = BTreeMap::new();
    let mut scanned: SeqMap<ScannedMessage> = SeqMap::default();
    let mut next_seq = 1u64;
    let mut corrupt_records = 0u64;

    for (i, &number) in numbers.iter().enumerate() {
        let is_last = i + 1 == numbers.len();
        let path = core_dir.join(segment::segment_file_name(number));
        let file = OpenOptions::new()
            .read(true)
            .write(is_last)
            .open(&path)
            .map_err(SpoolError::from_io)?;
        let file_bytes = file.metadata().map_err(SpoolError::from_io)?.len();
        // SAFETY: nothing else writes this core's segments while it recovers (one spool per core
        // directory), and files are never truncated by us while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(SpoolError::from_io)?;
        match SegmentHeader::decode(&map) {
            Some(h) => {
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

        let mut segment_usage = SegmentUsage {
            bytes: file_bytes,
            ..SegmentUsage::default()
        };
        let mut scan = SegmentScan::new(&map);
        for item in scan.by_ref() {
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
            if is_last {
                log::info!(
                    "{}: torn tail at offset {offset}; ends there",
                    path.display()
                );
                terminate(&file, offset, map.len())?;
            } else {
                corrupt_records += 1;
                segment_usage.damaged = true;
                log::warn!(
                    "{}: damaged record header at offset {offset}; rest of segment unreadable",
                    path.display()
                );
            }
        }
        usage.insert(number, segment_usage);
        maps.insert(number, map);
    }

    let mut index = SpoolIndex::default();
    for (number, segment_usage) in usage {
        // Pins to segments that no longer exist hold nothing back.
        let mut u = segment_usage;
        u.pins.retain(|p| maps.contains_key(p));
        index.add_segment(number, u);
    }
    // Sort the (small) live keys rather than the decoded messages: envelopes are then decoded in
    // sequence order, which is also file order, and nothing large is moved by the sort.
    let mut live: Vec<(u64, ScannedMessage)> = scanned
        .into_iter()
        .filter(|(_, m)| {
            let all_final = !m.states.is_empty() && m.states.iter().all(|s| s.is_final());
            m.recipient_count > 0 && !all_final
        })
        .collect();
    live.sort_unstable_by_key(|&(seq, _)| seq);
    index.messages.reserve(live.len());
    let mut messages = Vec::with_capacity(live.len());
    for (seq, m) in live {
        let Some(map) = maps.get(&m.segment) else {
            continue;
        };
        let payload_at = m.record_offset as usize + RECORD_HEADER_BYTES;
        let Some(payload) = map.get(payload_at..payload_at + m.payload_len as usize) else {
            continue;
        };
        // Checked here so a damaged envelope is skipped (and its segment freed) at start, not
        // found at delivery; the decoded envelope is dropped at once: the queues read it back.
        if let Err(e) = record::decode_envelope(payload) {
            corrupt_records += 1;
            log::warn!("segment {} message {seq}: {e}; skipped", m.segment);
            continue;
        }
        index.add_message(
            seq,
            LiveMessage::new(m.segment, m.recipient_count, &m.states),
        );
        messages.push(RecoveredMessage {
            id: MessageId { core, seq },
            record: RecordLocation {
                core,
                segment: m.segment,
                offset: m.record_offset,
            },
            recipient_count: m.recipient_count,
            recorded_states: (!m.states.is_empty()).then(|| m.states.into_boxed_slice()),
        });
    }
    Ok(RecoveryOutcome {
        messages,
        index,
        next_seq,
        last_segment: numbers.last().copied(),
        corrupt_records,
    })
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
            payload_len: payload.len() as u32,
            recipient_count: summary.recipient_count,
            states: Vec::new(),
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
    if message.states.is_empty() {
        message.states = vec![RecipientState::Pending; message.recipient_count as usize];
    }
    if let Some(slot) = message.states.get_mut(state.recipient as usize) {
        *slot = state.state;
    }
    Ok(())
}

/// Overwrites the header at a torn tail with zeros and syncs, so later scans stop there.
fn terminate(file: &File, offset: usize, file_len: usize) -> Result<(), SpoolError> {
    let len = RECORD_HEADER_BYTES.min(file_len.saturating_sub(offset));
    if len == 0 {
        return Ok(());
    }
    file.write_all_at(&[0u8; RECORD_HEADER_BYTES][..len], offset as u64)
        .map_err(SpoolError::from_io)?;
    file.sync_data().map_err(SpoolError::from_io)
}
