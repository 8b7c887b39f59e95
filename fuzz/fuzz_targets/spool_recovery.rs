//! Spool records at recovery: the record decoders on raw bytes, and recovery (`spool::recover`
//! through `recover_for_fuzzing`) of a core directory whose segment files the input describes.
//!
//! The input is a list of operations: a valid message record, a valid state record, a record of
//! any kind, version and payload with correct checksums (so the payload decoders run), raw bytes
//! (damage), a flipped octet, a new segment. Recovery must succeed on anything, return live
//! messages once each in sequence order with a recipient still to serve, and a second recovery
//! (after the first cut any torn tail) must find the same messages.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use volley::envelope::{Envelope, MessageId, Recipient};
use volley::spool::RecipientState;
use volley::spool::record::{
    RecordSeed,
    self, RECORD_HEADER_BYTES, RECORD_MAGIC, StateRecord, encode_message, encode_state,
    message_payload_len, record_span,
};
use volley::spool::recover_for_fuzzing;
use volley::spool::segment::{SegmentHeader, segment_file_name};

const CORE: u16 = 0;

fuzz_target!(|data: &[u8]| {
    decoders(data);
    let segments = build_segments(data);
    let dir = scratch_dir();
    for entry in std::fs::read_dir(&dir).expect("scratch dir").flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    for (number, bytes) in segments.iter().enumerate() {
        std::fs::write(dir.join(segment_file_name(number as u32 + 1)), bytes).expect("write");
    }
    let (first, corrupt) = recover_for_fuzzing(&dir, CORE).expect("recovery of damaged segments");
    assert!(corrupt <= data.len() as u64 + segments.len() as u64);
    for pair in first.windows(2) {
        assert!(pair[0].id.seq < pair[1].id.seq, "sorted, each message once");
    }
    for message in &first {
        assert_eq!(message.id.core, CORE);
        assert!(message.recipient_count > 0);
        assert!(message.states().any(|s| !s.is_final()));
        assert!((message.record.segment as usize) <= segments.len());
    }
    let (second, _) = recover_for_fuzzing(&dir, CORE).expect("second recovery");
    assert_eq!(first, second, "recovery is repeatable");
});

/// One directory per fuzzing process, in memory when /dev/shm exists.
fn scratch_dir() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("volley-fuzz-spool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The record decoders straight on the input: never a panic; a state that decodes encodes back.
fn decoders(data: &[u8]) {
    let _ = record::decode_header(data, RecordSeed::LEGACY);
    let _ = record::decode_header(data, RecordSeed::for_segment(1));
    let _ = record::decode_message_summary(data);
    if let Ok((summary, envelope)) = record::decode_envelope(data) {
        assert_eq!(summary.recipient_count as usize, envelope.recipients.len());
        assert!(summary.body_len as usize <= data.len());
    }
    if let Ok(state) = record::decode_state(data) {
        let mut again = vec![0u8; record::STATE_RECORD_SPAN];
        encode_state(&mut again, RecordSeed::for_segment(1), &state);
        assert_eq!(
            record::decode_state(&again[RECORD_HEADER_BYTES..]).ok(),
            Some(state)
        );
    }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

fn new_segment(number: u32) -> Vec<u8> {
    SegmentHeader {
        core: CORE,
        segment: number,
        created_at_s: 1_700_000_000,
        segment_bytes: 1 << 16,
        next_seq: 1,
    }
    .encode()
    .to_vec()
}

/// Segment files from the operations in `data` (at most 4 segments).
fn build_segments(data: &[u8]) -> Vec<Vec<u8>> {
    let mut input = Input(data);
    let mut segments = vec![new_segment(1)];
    while let Some(op) = input.u8() {
        // Records of this segment's number; a stale record (op 2) may use another's.
        let seed = RecordSeed::for_segment(segments.len() as u32);
        let seg = segments.last_mut().expect("one segment at least");
        match op % 6 {
            0 => {
                // A valid message record: seq, recipients, body.
                let seq = u64::from(input.u8().unwrap_or(1));
                let recipients = usize::from(input.u8().unwrap_or(1) % 4);
                let body_len = usize::from(input.u8().unwrap_or(0));
                let body = input.bytes(body_len).to_vec();
                let envelope = Envelope {
                    sender: "s@example.com".into(),
                    recipients: (0..recipients)
                        .map(|i| Recipient::new(format!("r{i}@example.net")))
                        .collect(),
                    ..Envelope::default()
                };
                let Ok(payload_len) = message_payload_len(&envelope, body.len() as u64) else {
                    continue;
                };
                let mut bytes = vec![0u8; record_span(payload_len)];
                let id = MessageId { core: CORE, seq };
                encode_message(&mut bytes, seed, id, &envelope, b"", &body, payload_len);
                seg.extend_from_slice(&bytes);
            }
            1 => {
                let seq = u64::from(input.u8().unwrap_or(1));
                let recipient = u32::from(input.u8().unwrap_or(0) % 5);
                let state = match input.u8().unwrap_or(0) % 5 {
                    0 => RecipientState::Pending,
                    1 => RecipientState::Deferred {
                        next_attempt_s: 1_700_000_600,
                        attempts: 1,
                    },
                    2 => RecipientState::Delivered,
                    3 => RecipientState::Bounced,
                    _ => RecipientState::Expired,
                };
                let message_segment = u32::from(input.u8().unwrap_or(1) % 5);
                let mut bytes = vec![0u8; record::STATE_RECORD_SPAN];
                let record = StateRecord {
                    id: MessageId { core: CORE, seq },
                    message_segment,
                    recipient,
                    state,
                };
                encode_state(&mut bytes, seed, &record);
                seg.extend_from_slice(&bytes);
            }
            2 => {
                // Any kind, version and payload, with correct checksums under this segment's
                // seed, or under an earlier number's (what a reused file holds).
                let kind = input.u8().unwrap_or(1) % 4;
                let seed = match input.u8().unwrap_or(0) % 3 {
                    0 => RecordSeed::for_segment(0),
                    _ => seed,
                };
                let version = input.u8().unwrap_or(1) % 3;
                let len = usize::from(input.u8().unwrap_or(0));
                let payload = input.bytes(len).to_vec();
                let mut head = [0u8; RECORD_HEADER_BYTES];
                head[..2].copy_from_slice(&RECORD_MAGIC);
                head[2] = kind;
                head[3] = version;
                head[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
                head[8..12].copy_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
                let header_crc = seed.header_crc(&head[..12]);
                head[12..16].copy_from_slice(&header_crc.to_le_bytes());
                seg.extend_from_slice(&head);
                seg.extend_from_slice(&payload);
                seg.resize(seg.len().next_multiple_of(8), 0);
            }
            3 => {
                let len = usize::from(input.u8().unwrap_or(0) % 64);
                let raw = input.bytes(len).to_vec();
                seg.extend_from_slice(&raw);
            }
            4 => {
                let at = usize::from(input.u8().unwrap_or(0)) * 7;
                let mask = input.u8().unwrap_or(1) | 1;
                let len = seg.len();
                if len > 0 {
                    seg[at % len] ^= mask;
                }
            }
            _ => {
                if segments.len() < 4 {
                    segments.push(new_segment(segments.len() as u32 + 1));
                }
            }
        }
    }
    segments
}
