//! The record codec: a 16-byte header with two CRC32C checksums, then a message or recipient-state
//! payload. Encoding fills a buffer the segment writes with one pwrite; decoding never panics on any input.
//! The byte layout is documented in `docs/spool-format.md`.

use super::{RecipientState, SpoolError};
use crate::envelope::{
    BodyType, DsnNotify, DsnRet, Envelope, MessageId, MessageTags, Recipient, RouteChoice,
};

/// First two bytes of every record header ("VR").
pub const RECORD_MAGIC: [u8; 2] = *b"VR";
/// The record format version written by this code.
pub const RECORD_VERSION: u8 = 1;
/// Bytes in a record header.
pub const RECORD_HEADER_BYTES: usize = 16;
/// Records start on multiples of this many bytes within a segment.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// Bytes of the fixed part of a message payload, before the variable-length strings.
pub const MESSAGE_FIXED_BYTES: usize = 32;
/// Bytes of a recipient-state payload.
pub const STATE_PAYLOAD_BYTES: usize = 32;
/// Length marker of an absent optional string (ENVID, ORCPT).
const ABSENT: u16 = u16::MAX;
/// Longest string the format can hold (sender, customer, address, ENVID, ORCPT, a tag).
pub const MAX_STRING_BYTES: usize = ABSENT as usize - 1;
/// Message flags bit: the message is SMTPUTF8.
const FLAG_SMTPUTF8: u8 = 0x01;
/// Message flags bit: a tags block follows the recipients. Records without tags leave it clear and
/// are byte for byte what this format wrote before tags existed, so older records read unchanged.
const FLAG_TAGS: u8 = 0x02;
/// RFC 8689 REQUIRETLS was requested on MAIL FROM.
const FLAG_REQUIRETLS: u8 = 0x04;
/// RFC 8689 5: the message says `TLS-Required: No` (DANE and MTA-STS not applied).
const FLAG_TLS_OPTIONAL: u8 = 0x08;

/// Tag numbers in a message record's tags block (docs/spool-format.md); unknown ones are skipped.
mod tag {
    pub const MESSAGE_ID: u8 = 1;
    pub const CAMPAIGN: u8 = 2;
    pub const POOL: u8 = 3;
    pub const VMTA: u8 = 4;
}

/// The tags a record holds, as (tag number, value): an empty Message-ID or campaign is left out
/// (empty means none), a route always written.
fn tag_entries(tags: &MessageTags) -> impl Iterator<Item = (u8, &str)> {
    let route = tags.route.as_ref().map(|r| match r {
        RouteChoice::Pool(name) => (tag::POOL, name.as_str()),
        RouteChoice::Vmta(name) => (tag::VMTA, name.as_str()),
    });
    [
        (tag::MESSAGE_ID, tags.message_id.as_str()),
        (tag::CAMPAIGN, tags.campaign.as_str()),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .chain(route)
}

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Message = 1,
    RecipientState = 2,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::Message),
            2 => Some(RecordKind::RecipientState),
            _ => None,
        }
    }
}

/// A record header as read from disk, with its header CRC already checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// `None` for a kind this version does not know (skipped, not fatal).
    pub kind: Option<RecordKind>,
    pub version: u8,
    pub payload_len: u32,
    pub payload_crc: u32,
}

/// Why a header could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Sixteen zero bytes: the end of the written part of a segment.
    Zero,
    /// Anything else that is not a valid header: a torn write or damage.
    Invalid,
}

/// What a record header's checksum starts from. In a segment of format 2 it is derived from the
/// segment's number, so a record left in a reused file by an earlier segment (another number)
/// fails its check wherever it lies and is never read as current. Format 1 segments (never
/// reused) used none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSeed(u32);

impl RecordSeed {
    /// Format 1 segments: the plain CRC32C of the header's first 12 bytes.
    pub const LEGACY: RecordSeed = RecordSeed(0);

    /// Records of segment `segment` (format 2).
    pub fn for_segment(segment: u32) -> RecordSeed {
        let mut seed = [0u8; 12];
        seed[..8].copy_from_slice(b"VRSEGMNT");
        seed[8..].copy_from_slice(&segment.to_le_bytes());
        RecordSeed(crc32c::crc32c(&seed))
    }

    /// The checksum of a header's first 12 bytes under this seed.
    pub fn header_crc(self, head: &[u8]) -> u32 {
        crc32c::crc32c_append(self.0, head)
    }
}

/// Total bytes a record with `payload_len` payload bytes takes, padding included.
pub fn record_span(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len).next_multiple_of(RECORD_ALIGN_BYTES)
}

/// Reads and checks a record header from the first 16 bytes of `bytes`, written with `seed`.
pub fn decode_header(bytes: &[u8], seed: RecordSeed) -> Result<RecordHeader, HeaderProblem> {
    let head = bytes
        .get(..RECORD_HEADER_BYTES)
        .ok_or(HeaderProblem::Invalid)?;
    if head.iter().all(|&b| b == 0) {
        return Err(HeaderProblem::Zero);
    }
    let mut r = ByteReader::new(head);
    let magic = r.array::<2>().ok_or(HeaderProblem::Invalid)?;
    let kind = r.u8().ok_or(HeaderProblem::Invalid)?;
    let version = r.u8().ok_or(HeaderProblem::Invalid)?;
    let payload_len = r.u32().ok_or(HeaderProblem::Invalid)?;
    let payload_crc = r.u32().ok_or(HeaderProblem::Invalid)?;
    let header_crc = r.u32().ok_or(HeaderProblem::Invalid)?;
    if magic != RECORD_MAGIC || seed.header_crc(&head[..12]) != header_crc {
        return Err(HeaderProblem::Invalid);
    }
    Ok(RecordHeader {
        kind: RecordKind::from_byte(kind),
        version,
        payload_len,
        payload_crc,
    })
}

/// Writes a header for `payload` (already in place after it) into `dst[..16]`.
fn write_header(
    dst: &mut [u8],
    seed: RecordSeed,
    kind: RecordKind,
    payload_len: u32,
    payload_crc: u32,
) {
    let mut head = [0u8; RECORD_HEADER_BYTES];
    head[..2].copy_from_slice(&RECORD_MAGIC);
    head[2] = kind as u8;
    head[3] = RECORD_VERSION;
    head[4..8].copy_from_slice(&payload_len.to_le_bytes());
    head[8..12].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = seed.header_crc(&head[..12]);
    head[12..16].copy_from_slice(&header_crc.to_le_bytes());
    dst[..RECORD_HEADER_BYTES].copy_from_slice(&head);
}

/// Payload bytes of a message record for `envelope` and a body of `body_len` bytes.
pub fn message_payload_len(envelope: &Envelope, body_len: u64) -> Result<usize, SpoolError> {
    let mut len = MESSAGE_FIXED_BYTES as u64;
    len += string_len(&envelope.sender)?;
    len += string_len(&envelope.customer)?;
    len += optional_len(envelope.envid.as_deref())?;
    for rcpt in &envelope.recipients {
        len += 1 + string_len(&rcpt.address)? + optional_len(rcpt.orcpt.as_deref())?;
    }
    if !envelope.tags.is_empty() {
        len += 2;
        for (_, value) in tag_entries(&envelope.tags) {
            len += 1 + string_len(value)?;
        }
    }
    len += body_len;
    if u32::try_from(envelope.recipients.len()).is_err() || u32::try_from(body_len).is_err() {
        return Err(SpoolError::TooLarge {
            bytes: len,
            limit_bytes: u32::MAX as u64,
        });
    }
    usize::try_from(len)
        .ok()
        .filter(|&l| u32::try_from(l).is_ok())
        .ok_or(SpoolError::TooLarge {
            bytes: len,
            limit_bytes: u32::MAX as u64,
        })
}

fn string_len(s: &str) -> Result<u64, SpoolError> {
    if s.len() > MAX_STRING_BYTES {
        return Err(SpoolError::TooLarge {
            bytes: s.len() as u64,
            limit_bytes: MAX_STRING_BYTES as u64,
        });
    }
    Ok(2 + s.len() as u64)
}

fn optional_len(s: Option<&str>) -> Result<u64, SpoolError> {
    s.map_or(Ok(2), string_len)
}

/// Encodes a whole message record (header, payload, zero padding) into `dst`, which must be exactly
/// `record_span(payload_len)` bytes, where `payload_len` came from [`message_payload_len`].
/// Returns the offset of the body within `dst`. The body is `header` followed by `body`.
pub fn encode_message(
    dst: &mut [u8],
    seed: RecordSeed,
    id: MessageId,
    envelope: &Envelope,
    header: &[u8],
    body: &[u8],
    payload_len: usize,
) -> usize {
    let body_len = header.len() + body.len();
    let (head, rest) = dst.split_at_mut(RECORD_HEADER_BYTES);
    let (payload, padding) = rest.split_at_mut(payload_len);
    padding.fill(0);
    let mut w = ByteWriter::new(payload);
    put_envelope(&mut w, id, envelope, body_len);
    let body_at = RECORD_HEADER_BYTES + w.pos;
    w.put(header);
    w.put(body);
    debug_assert_eq!(
        w.pos, payload_len,
        "message_payload_len disagrees with encode_message"
    );
    let crc = crc32c::crc32c(payload);
    write_header(head, seed, RecordKind::Message, payload_len as u32, crc);
    body_at
}

/// The envelope part of a message record's payload (everything before the body).
fn put_envelope(w: &mut ByteWriter<'_>, id: MessageId, envelope: &Envelope, body_len: usize) {
    w.put(&id.seq.to_le_bytes());
    w.put(&id.core.to_le_bytes());
    let has_tags = !envelope.tags.is_empty();
    let flags = if envelope.smtputf8 { FLAG_SMTPUTF8 } else { 0 }
        | if has_tags { FLAG_TAGS } else { 0 }
        | if envelope.requiretls {
            FLAG_REQUIRETLS
        } else {
            0
        }
        | if envelope.tls_optional {
            FLAG_TLS_OPTIONAL
        } else {
            0
        };
    w.put(&[flags, ret_to_byte(envelope.ret)]);
    w.put(&[body_type_to_byte(envelope.body_type), 0, 0, 0]);
    w.put(&envelope.received_at_s.to_le_bytes());
    w.put(&(envelope.recipients.len() as u32).to_le_bytes());
    w.put(&(body_len as u32).to_le_bytes());
    w.string(&envelope.sender);
    w.string(&envelope.customer);
    w.optional(envelope.envid.as_deref());
    for rcpt in &envelope.recipients {
        w.put(&[rcpt.notify.to_bits()]);
        w.string(&rcpt.address);
        w.optional(rcpt.orcpt.as_deref());
    }
    if has_tags {
        let count = tag_entries(&envelope.tags).count() as u16;
        w.put(&count.to_le_bytes());
        for (number, value) in tag_entries(&envelope.tags) {
            w.put(&[number]);
            w.string(value);
        }
    }
}

/// The same record as `encode_message`, for a vectored write: encodes the record header and the
/// envelope into `prefix` (cleared first), so that `prefix`, `header`, `body` and
/// `record_span(payload_len) - RECORD_HEADER_BYTES - payload_len` zero bytes written one after
/// the other are that record, without copying the body. Returns where the body's first byte
/// (`header`'s) lies in the record.
pub fn encode_message_prefix(
    prefix: &mut Vec<u8>,
    seed: RecordSeed,
    id: MessageId,
    envelope: &Envelope,
    header: &[u8],
    body: &[u8],
    payload_len: usize,
) -> usize {
    let body_len = header.len() + body.len();
    let envelope_len = payload_len - body_len;
    prefix.clear();
    prefix.resize(RECORD_HEADER_BYTES + envelope_len, 0);
    let mut w = ByteWriter::new(&mut prefix[RECORD_HEADER_BYTES..]);
    put_envelope(&mut w, id, envelope, body_len);
    debug_assert_eq!(w.pos, envelope_len, "message_payload_len disagrees");
    let body_at = RECORD_HEADER_BYTES + envelope_len;
    let mut crc = crc32c::crc32c(&prefix[RECORD_HEADER_BYTES..]);
    crc = crc32c::crc32c_append(crc, header);
    crc = crc32c::crc32c_append(crc, body);
    let (head, _) = prefix.split_at_mut(RECORD_HEADER_BYTES);
    write_header(head, seed, RecordKind::Message, payload_len as u32, crc);
    body_at
}

/// A recipient-state record: `recipient` of message `id` (spooled in `message_segment`) is now `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRecord {
    pub id: MessageId,
    pub message_segment: u32,
    pub recipient: u32,
    pub state: RecipientState,
}

/// Bytes a state record takes in a segment.
pub const STATE_RECORD_SPAN: usize = RECORD_HEADER_BYTES + STATE_PAYLOAD_BYTES;

/// Encodes a state record into `dst`, which must be exactly [`STATE_RECORD_SPAN`] bytes.
pub fn encode_state(dst: &mut [u8], seed: RecordSeed, record: &StateRecord) {
    let (code, attempts, next_attempt_s) = match record.state {
        RecipientState::Pending => (0u8, 0u32, 0u64),
        RecipientState::Deferred {
            next_attempt_s,
            attempts,
        } => (1, attempts, next_attempt_s),
        RecipientState::Delivered => (2, 0, 0),
        RecipientState::Bounced => (3, 0, 0),
        RecipientState::Expired => (4, 0, 0),
    };
    let (head, payload) = dst.split_at_mut(RECORD_HEADER_BYTES);
    let mut w = ByteWriter::new(payload);
    w.put(&record.id.seq.to_le_bytes());
    w.put(&record.id.core.to_le_bytes());
    w.put(&[code, 0]);
    w.put(&record.recipient.to_le_bytes());
    w.put(&record.message_segment.to_le_bytes());
    w.put(&attempts.to_le_bytes());
    w.put(&next_attempt_s.to_le_bytes());
    let crc = crc32c::crc32c(payload);
    write_header(
        head,
        seed,
        RecordKind::RecipientState,
        STATE_PAYLOAD_BYTES as u32,
        crc,
    );
}

/// Decodes a state payload.
pub fn decode_state(payload: &[u8]) -> Result<StateRecord, SpoolError> {
    let bad = || SpoolError::Corrupt("short recipient-state record".into());
    let mut r = ByteReader::new(payload);
    let seq = r.u64().ok_or_else(bad)?;
    let core = r.u16().ok_or_else(bad)?;
    let code = r.u8().ok_or_else(bad)?;
    let _reserved = r.u8().ok_or_else(bad)?;
    let recipient = r.u32().ok_or_else(bad)?;
    let message_segment = r.u32().ok_or_else(bad)?;
    let attempts = r.u32().ok_or_else(bad)?;
    let next_attempt_s = r.u64().ok_or_else(bad)?;
    let state = match code {
        0 => RecipientState::Pending,
        1 => RecipientState::Deferred {
            next_attempt_s,
            attempts,
        },
        2 => RecipientState::Delivered,
        3 => RecipientState::Bounced,
        4 => RecipientState::Expired,
        other => {
            return Err(SpoolError::Corrupt(format!(
                "unknown recipient state {other}"
            )));
        }
    };
    Ok(StateRecord {
        id: MessageId { core, seq },
        message_segment,
        recipient,
        state,
    })
}

/// The fixed fields of a message payload, read without allocating (recovery's fast path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSummary {
    pub id: MessageId,
    pub recipient_count: u32,
    pub body_len: u32,
}

/// Reads the fixed part of a message payload.
pub fn decode_message_summary(payload: &[u8]) -> Result<MessageSummary, SpoolError> {
    let bad = || SpoolError::Corrupt("short message record".into());
    let mut r = ByteReader::new(payload);
    let seq = r.u64().ok_or_else(bad)?;
    let core = r.u16().ok_or_else(bad)?;
    r.skip(2 + 4 + 8).ok_or_else(bad)?;
    let recipient_count = r.u32().ok_or_else(bad)?;
    let body_len = r.u32().ok_or_else(bad)?;
    let variable_bytes = payload.len() - MESSAGE_FIXED_BYTES;
    if body_len as usize > variable_bytes {
        return Err(SpoolError::Corrupt(
            "message body longer than its record".into(),
        ));
    }
    // Each recipient takes at least 5 bytes: a count beyond that is damage, not an allocation.
    if recipient_count as usize > variable_bytes / 5 {
        return Err(SpoolError::Corrupt(
            "more recipients than the record holds".into(),
        ));
    }
    Ok(MessageSummary {
        id: MessageId { core, seq },
        recipient_count,
        body_len,
    })
}

/// Decodes the envelope of a message payload; the body is its last `body_len` bytes.
pub fn decode_envelope(payload: &[u8]) -> Result<(MessageSummary, Envelope), SpoolError> {
    let summary = decode_message_summary(payload)?;
    let bad = || SpoolError::Corrupt("malformed message envelope".into());
    let mut r = ByteReader::new(payload);
    r.skip(10).ok_or_else(bad)?;
    let flags = r.u8().ok_or_else(bad)?;
    let smtputf8 = flags & FLAG_SMTPUTF8 != 0;
    let requiretls = flags & FLAG_REQUIRETLS != 0;
    let tls_optional = flags & FLAG_TLS_OPTIONAL != 0;
    let ret = ret_from_byte(r.u8().ok_or_else(bad)?).ok_or_else(bad)?;
    let body_type = body_type_from_byte(r.u8().ok_or_else(bad)?).ok_or_else(bad)?;
    r.skip(3).ok_or_else(bad)?;
    let received_at_s = r.u64().ok_or_else(bad)?;
    r.skip(8).ok_or_else(bad)?;
    let sender = r.string().ok_or_else(bad)?;
    let customer = r.string().ok_or_else(bad)?;
    let envid = r.optional().ok_or_else(bad)?;
    // Every recipient takes at least 5 bytes, so a hostile count cannot make us over-allocate.
    let capacity = (summary.recipient_count as usize).min(payload.len() / 5);
    let mut recipients = Vec::with_capacity(capacity);
    for _ in 0..summary.recipient_count {
        let notify = DsnNotify::from_bits(r.u8().ok_or_else(bad)?);
        let address = r.string().ok_or_else(bad)?;
        let orcpt = r.optional().ok_or_else(bad)?;
        recipients.push(Recipient {
            address,
            notify,
            orcpt,
        });
    }
    let tags = if flags & FLAG_TAGS != 0 {
        decode_tags(&mut r).ok_or_else(bad)?
    } else {
        MessageTags::default()
    };
    if r.remaining() != summary.body_len as usize {
        return Err(bad());
    }
    Ok((
        summary,
        Envelope {
            sender,
            recipients,
            ret,
            envid,
            body_type,
            smtputf8,
            requiretls,
            tls_optional,
            customer,
            received_at_s,
            tags,
        },
    ))
}

/// Reads a tags block: a u16 count, then per tag its number and a string. Unknown numbers are
/// skipped, so a later version may add tags that this one reads past.
fn decode_tags(r: &mut ByteReader<'_>) -> Option<MessageTags> {
    let count = r.u16()?;
    let mut tags = MessageTags::default();
    for _ in 0..count {
        let number = r.u8()?;
        let value = r.string()?;
        match number {
            tag::MESSAGE_ID => tags.message_id = value,
            tag::CAMPAIGN => tags.campaign = value,
            tag::POOL => tags.route = Some(RouteChoice::Pool(value)),
            tag::VMTA => tags.route = Some(RouteChoice::Vmta(value)),
            _ => {}
        }
    }
    Some(tags)
}

fn ret_to_byte(ret: DsnRet) -> u8 {
    match ret {
        DsnRet::Unspecified => 0,
        DsnRet::Full => 1,
        DsnRet::Headers => 2,
    }
}

fn ret_from_byte(byte: u8) -> Option<DsnRet> {
    match byte {
        0 => Some(DsnRet::Unspecified),
        1 => Some(DsnRet::Full),
        2 => Some(DsnRet::Headers),
        _ => None,
    }
}

fn body_type_to_byte(body_type: BodyType) -> u8 {
    match body_type {
        BodyType::SevenBit => 0,
        BodyType::EightBitMime => 1,
        BodyType::BinaryMime => 2,
    }
}

fn body_type_from_byte(byte: u8) -> Option<BodyType> {
    match byte {
        0 => Some(BodyType::SevenBit),
        1 => Some(BodyType::EightBitMime),
        2 => Some(BodyType::BinaryMime),
        _ => None,
    }
}

/// Sequential writer into a slice sized in advance by `message_payload_len`.
struct ByteWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> ByteWriter<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        ByteWriter { buf, pos: 0 }
    }

    fn put(&mut self, bytes: &[u8]) {
        // Sizes were computed by message_payload_len; a mismatch is a bug, not an input problem.
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    fn string(&mut self, s: &str) {
        self.put(&(s.len() as u16).to_le_bytes());
        self.put(s.as_bytes());
    }

    fn optional(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.string(s),
            None => self.put(&ABSENT.to_le_bytes()),
        }
    }
}

/// Bounds-checked little-endian reader: every method returns `None` instead of panicking.
struct ByteReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        ByteReader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(bytes)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Option<String> {
        let len = self.u16()?;
        if len == ABSENT {
            return None;
        }
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).ok()
    }

    fn optional(&mut self) -> Option<Option<String>> {
        let len = u16::from_le_bytes(self.buf.get(self.pos..self.pos + 2)?.try_into().ok()?);
        if len == ABSENT {
            self.pos += 2;
            return Some(None);
        }
        self.string().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: RecordSeed = RecordSeed(0x5eed_0007);

    pub(crate) fn full_envelope() -> Envelope {
        Envelope {
            sender: "bounce+1@sender.example".into(),
            recipients: vec![
                Recipient {
                    address: "a@example.com".into(),
                    notify: DsnNotify {
                        unspecified: false,
                        never: false,
                        success: true,
                        failure: true,
                        delay: false,
                    },
                    orcpt: Some("rfc822;A@Example.com".into()),
                },
                Recipient::new("b@example.org"),
                Recipient {
                    address: "ü@例え.jp".into(),
                    notify: DsnNotify {
                        unspecified: false,
                        never: true,
                        success: false,
                        failure: false,
                        delay: false,
                    },
                    orcpt: Some(String::new()),
                },
            ],
            ret: DsnRet::Headers,
            envid: Some("ENV-123".into()),
            body_type: BodyType::EightBitMime,
            smtputf8: true,
            requiretls: true,
            tls_optional: true,
            customer: "acme".into(),
            received_at_s: 1_790_000_000,
            tags: MessageTags {
                message_id: "20261129.abc@sender.example".into(),
                campaign: "spring-sale".into(),
                route: Some(RouteChoice::Pool("p2".into())),
            },
        }
    }

    fn encode(id: MessageId, env: &Envelope, header: &[u8], body: &[u8]) -> (Vec<u8>, usize) {
        let payload_len = message_payload_len(env, (header.len() + body.len()) as u64).unwrap();
        let mut buf = vec![0xEEu8; record_span(payload_len)];
        let body_at = encode_message(&mut buf, SEED, id, env, header, body, payload_len);
        (buf, body_at)
    }

    #[test]
    fn the_vectored_prefix_makes_the_same_record() {
        let id = MessageId { core: 2, seq: 99 };
        for env in [full_envelope(), Envelope::default()] {
            for (header, body) in [
                (&b"Received: x\r\n"[..], &b"Subject: s\r\n\r\nbody\r\n"[..]),
                (&b""[..], &b""[..]),
                (&b"R: 1\r\n"[..], &[b'x'; 1001][..]),
            ] {
                let (whole, body_at) = encode(id, &env, header, body);
                let payload_len =
                    message_payload_len(&env, (header.len() + body.len()) as u64).unwrap();
                let mut prefix = vec![0xEE; 3];
                let at =
                    encode_message_prefix(&mut prefix, SEED, id, &env, header, body, payload_len);
                let padding = record_span(payload_len) - RECORD_HEADER_BYTES - payload_len;
                let pieced = [&prefix[..], header, body, &vec![0; padding]].concat();
                assert_eq!(pieced, whole);
                assert_eq!(at, body_at);
            }
        }
    }

    #[test]
    fn message_round_trip_keeps_every_field() {
        let id = MessageId {
            core: 7,
            seq: 0x1234_5678_9ABC,
        };
        let mut variants = vec![full_envelope(), Envelope::default()];
        for ret in [DsnRet::Unspecified, DsnRet::Full] {
            for body_type in [BodyType::SevenBit, BodyType::BinaryMime] {
                let mut e = full_envelope();
                e.ret = ret;
                e.body_type = body_type;
                e.smtputf8 = false;
                e.envid = None;
                variants.push(e);
            }
        }
        let mut vmta = full_envelope();
        vmta.tags.route = Some(RouteChoice::Vmta("v2".into()));
        vmta.tags.message_id.clear();
        variants.push(vmta);
        let mut campaign_only = Envelope::default();
        campaign_only.tags.campaign = "c".into();
        variants.push(campaign_only);
        for env in variants {
            let header = b"Received: from x by y; date\r\n";
            let body = b"Subject: hi\r\n\r\nhello\r\n";
            let (buf, body_at) = encode(id, &env, header, body);
            assert_eq!(buf.len() % RECORD_ALIGN_BYTES, 0);
            let head = decode_header(&buf, SEED).unwrap();
            assert_eq!(head.kind, Some(RecordKind::Message));
            assert_eq!(head.version, RECORD_VERSION);
            let payload =
                &buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + head.payload_len as usize];
            assert_eq!(crc32c::crc32c(payload), head.payload_crc);
            let (summary, decoded) = decode_envelope(payload).unwrap();
            assert_eq!(decoded, env);
            assert_eq!(summary.id, id);
            assert_eq!(summary.recipient_count as usize, env.recipients.len());
            assert_eq!(summary.body_len as usize, header.len() + body.len());
            let stored = &buf[body_at..body_at + summary.body_len as usize];
            assert_eq!(stored, [&header[..], &body[..]].concat());
            // Padding is zeroed, not left over from the buffer.
            assert!(
                buf[RECORD_HEADER_BYTES + payload.len()..]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
    }

    /// A message payload as this format was written before tags existed (flags bit 1 clear, no
    /// tags block), built byte by byte rather than by the encoder.
    fn untagged_payload(body: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&42u64.to_le_bytes());
        p.extend_from_slice(&3u16.to_le_bytes());
        p.extend_from_slice(&[1, 2, 1, 0, 0, 0]); // SMTPUTF8, RET=HDRS, 8BITMIME, reserved
        p.extend_from_slice(&1_790_000_000u64.to_le_bytes());
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&(body.len() as u32).to_le_bytes());
        for s in ["s@a.example", "acme"] {
            p.extend_from_slice(&(s.len() as u16).to_le_bytes());
            p.extend_from_slice(s.as_bytes());
        }
        p.extend_from_slice(&ABSENT.to_le_bytes()); // no ENVID
        p.push(0x01);
        p.extend_from_slice(&11u16.to_le_bytes());
        p.extend_from_slice(b"r@b.example");
        p.extend_from_slice(&ABSENT.to_le_bytes()); // no ORCPT
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn records_written_before_tags_still_read() {
        let payload = untagged_payload(b"Subject: old\r\n\r\nbody\r\n");
        let (summary, env) = decode_envelope(&payload).unwrap();
        assert_eq!(summary.id, MessageId { core: 3, seq: 42 });
        assert_eq!(env.sender, "s@a.example");
        assert_eq!(env.customer, "acme");
        assert!(env.smtputf8);
        assert_eq!(env.ret, DsnRet::Headers);
        assert_eq!(env.recipients, vec![Recipient::new("r@b.example")]);
        assert_eq!(env.tags, MessageTags::default());
        // And an untagged envelope is still written exactly so: older readers read it too.
        let (buf, _) = encode(summary.id, &env, b"", b"Subject: old\r\n\r\nbody\r\n");
        assert_eq!(
            &buf[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload.len()],
            &payload[..]
        );
    }

    #[test]
    fn unknown_tags_are_skipped() {
        let body = b"b";
        let mut payload = untagged_payload(body);
        payload.truncate(payload.len() - body.len());
        payload[10] |= FLAG_TAGS;
        payload.extend_from_slice(&3u16.to_le_bytes());
        for (number, value) in [
            (tag::CAMPAIGN, "c1"),
            (99, "from a later version"),
            (tag::VMTA, "v9"),
        ] {
            payload.push(number);
            payload.extend_from_slice(&(value.len() as u16).to_le_bytes());
            payload.extend_from_slice(value.as_bytes());
        }
        payload.extend_from_slice(body);
        let (_, env) = decode_envelope(&payload).unwrap();
        assert_eq!(env.tags.campaign, "c1");
        assert_eq!(env.tags.route, Some(RouteChoice::Vmta("v9".into())));
        assert_eq!(env.tags.message_id, "");
        // A block that claims more tags than it holds is damage.
        let count_at = untagged_payload(b"").len();
        payload[count_at] = 4;
        assert!(decode_envelope(&payload).is_err());
    }

    #[test]
    fn state_round_trip_for_every_state() {
        for state in [
            RecipientState::Pending,
            RecipientState::Deferred {
                next_attempt_s: 1_790_000_600,
                attempts: 3,
            },
            RecipientState::Delivered,
            RecipientState::Bounced,
            RecipientState::Expired,
        ] {
            let record = StateRecord {
                id: MessageId { core: 1, seq: 99 },
                message_segment: 42,
                recipient: 5,
                state,
            };
            let mut buf = [0u8; STATE_RECORD_SPAN];
            encode_state(&mut buf, SEED, &record);
            let head = decode_header(&buf, SEED).unwrap();
            assert_eq!(head.kind, Some(RecordKind::RecipientState));
            assert_eq!(head.payload_len as usize, STATE_PAYLOAD_BYTES);
            let payload = &buf[RECORD_HEADER_BYTES..];
            assert_eq!(crc32c::crc32c(payload), head.payload_crc);
            assert_eq!(decode_state(payload).unwrap(), record);
        }
    }

    #[test]
    fn headers_reject_zero_and_damage() {
        assert_eq!(decode_header(&[0u8; 16], SEED), Err(HeaderProblem::Zero));
        assert_eq!(decode_header(&[0u8; 3], SEED), Err(HeaderProblem::Invalid));
        let mut buf = [0u8; STATE_RECORD_SPAN];
        encode_state(
            &mut buf,
            SEED,
            &StateRecord {
                id: MessageId { core: 0, seq: 1 },
                message_segment: 1,
                recipient: 0,
                state: RecipientState::Delivered,
            },
        );
        for i in 0..RECORD_HEADER_BYTES {
            let mut damaged = buf;
            damaged[i] ^= 0x40;
            assert_eq!(
                decode_header(&damaged, SEED),
                Err(HeaderProblem::Invalid),
                "byte {i}"
            );
        }
    }

    #[test]
    fn a_record_reads_only_under_its_own_segment_seed() {
        let mut buf = [0u8; STATE_RECORD_SPAN];
        let record = StateRecord {
            id: MessageId { core: 0, seq: 1 },
            message_segment: 7,
            recipient: 0,
            state: RecipientState::Delivered,
        };
        encode_state(&mut buf, RecordSeed::for_segment(7), &record);
        assert!(decode_header(&buf, RecordSeed::for_segment(7)).is_ok());
        // Left in a file reused as segment 9, or read as format 1: not a record.
        for other in [
            RecordSeed::for_segment(9),
            RecordSeed::for_segment(8),
            RecordSeed::LEGACY,
        ] {
            assert_eq!(decode_header(&buf, other), Err(HeaderProblem::Invalid));
        }
        // Format 1 records still read as they were written.
        encode_state(&mut buf, RecordSeed::LEGACY, &record);
        let head = decode_header(&buf, RecordSeed::LEGACY).unwrap();
        assert_eq!(
            head.payload_crc,
            crc32c::crc32c(&buf[RECORD_HEADER_BYTES..])
        );
        assert_eq!(
            u32::from_le_bytes(buf[12..16].try_into().unwrap()),
            crc32c::crc32c(&buf[..12])
        );
    }

    #[test]
    fn decoding_garbage_never_panics() {
        let (buf, _) = encode(
            MessageId { core: 0, seq: 1 },
            &full_envelope(),
            b"",
            b"body",
        );
        let payload = &buf[RECORD_HEADER_BYTES..];
        for cut in 0..payload.len() {
            let _ = decode_envelope(&payload[..cut]);
            let _ = decode_state(&payload[..cut]);
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let mut junk = payload.to_vec();
            for _ in 0..4 {
                let i = rng.usize(..junk.len());
                junk[i] = rng.u8(..);
            }
            let _ = decode_envelope(&junk);
        }
    }

    #[test]
    fn oversized_strings_are_refused() {
        let mut env = full_envelope();
        env.sender = "x".repeat(MAX_STRING_BYTES + 1);
        assert!(matches!(
            message_payload_len(&env, 10),
            Err(SpoolError::TooLarge { .. })
        ));
    }
}
