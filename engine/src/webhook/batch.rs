//! One POST's body: the events a webhook takes, as a JSON array, each the accounting event with its
//! journal id added as `event_id`; and the body's signature. Built from the journal's lines as they
//! are (the id is spliced in), so no event is parsed or serialised again.

use crate::accounting::EventType;

/// A body is this large at most, whatever `batch_max_events` says.
pub const BATCH_BYTES_MAX: usize = 16 << 20;

/// The event types a webhook takes; `None` = all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter(Option<Vec<String>>);

impl EventFilter {
    pub fn new(events: Option<&[EventType]>) -> EventFilter {
        EventFilter(events.map(|types| {
            types
                .iter()
                .filter_map(|t| match serde_json::to_value(t) {
                    Ok(serde_json::Value::String(name)) => Some(name),
                    _ => None,
                })
                .collect()
        }))
    }

    pub fn accepts(&self, line: &[u8]) -> bool {
        match &self.0 {
            None => true,
            Some(names) => event_type(line).is_some_and(|t| names.contains(&t)),
        }
    }
}

/// The `type` of an accounting line: read from its start, where the accounting log writes it,
/// else parsed.
pub fn event_type(line: &[u8]) -> Option<String> {
    const PREFIX: &[u8] = b"{\"type\":\"";
    if let Some(rest) = line.strip_prefix(PREFIX)
        && let Some(end) = memchr::memchr(b'"', rest)
        && let Ok(t) = std::str::from_utf8(&rest[..end])
        && !t.contains('\\')
    {
        return Some(t.to_string());
    }
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    serde_json::from_slice::<Typed>(line).ok()?.kind
}

/// A batch ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub body: Vec<u8>,
    pub events: u32,
    pub first_id: u64,
    pub last_id: u64,
    /// The position once this batch is answered 2xx (past the events it holds and the ones of
    /// other types read with them).
    pub end: u64,
}

/// Collects events into a body.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    body: Vec<u8>,
    events: u32,
    first_id: u64,
    last_id: u64,
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    pub fn events(&self) -> u32 {
        self.events
    }

    /// Whether another event may join: fewer than `max_events`, and room for a line of `next_len`.
    pub fn has_room(&self, max_events: u32, next_len: usize) -> bool {
        self.events == 0
            || (self.events < max_events && self.body.len() + next_len + 32 <= BATCH_BYTES_MAX)
    }

    /// Adds event `id`; false (and nothing added) when the line is not a JSON object.
    pub fn push(&mut self, id: u64, line: &[u8]) -> bool {
        let line = line.trim_ascii();
        if !(line.len() >= 2 && line.starts_with(b"{") && line.ends_with(b"}")) {
            return false;
        }
        self.body.push(if self.events == 0 { b'[' } else { b',' });
        self.body.extend_from_slice(b"{\"event_id\":");
        self.body.extend_from_slice(id.to_string().as_bytes());
        let fields = &line[1..];
        if fields.trim_ascii_start() != b"}" {
            self.body.push(b',');
        }
        self.body.extend_from_slice(fields);
        if self.events == 0 {
            self.first_id = id;
        }
        self.last_id = id;
        self.events += 1;
        true
    }

    /// The batch, or none when no event was added.
    pub fn finish(mut self, end: u64) -> Option<Batch> {
        if self.events == 0 {
            return None;
        }
        self.body.push(b']');
        Some(Batch {
            body: self.body,
            events: self.events,
            first_id: self.first_id,
            last_id: self.last_id,
            end,
        })
    }
}

/// HMAC-SHA256 of `body` keyed with `secret`, in lowercase hex (`X-Volley-Signature`).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_a_json_array_of_the_events_with_their_ids() {
        let mut b = BatchBuilder::new();
        assert!(b.push(7, br#"{"type":"delivery","recipient":"a@x.test"}"#));
        assert!(b.push(9, br#"{"type":"bounce","response":"550 \"no\""}"#));
        assert!(!b.push(10, b"not json"));
        assert!(b.push(11, b"{}"));
        let batch = b.finish(12).unwrap();
        assert_eq!(
            (batch.events, batch.first_id, batch.last_id, batch.end),
            (3, 7, 11, 12)
        );
        let v: serde_json::Value = serde_json::from_slice(&batch.body).unwrap();
        let events = v.as_array().unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["event_id"], 7);
        assert_eq!(events[0]["type"], "delivery");
        assert_eq!(events[0]["recipient"], "a@x.test");
        assert_eq!(events[1]["event_id"], 9);
        assert_eq!(events[1]["response"], "550 \"no\"");
        assert_eq!(events[2], serde_json::json!({"event_id": 11}));
        assert_eq!(BatchBuilder::new().finish(1), None);
    }

    #[test]
    fn room_is_counted_in_events_and_bytes() {
        let mut b = BatchBuilder::new();
        assert!(b.has_room(2, 10));
        b.push(1, b"{\"a\":1}");
        assert!(b.has_room(2, 10));
        assert!(!b.has_room(2, BATCH_BYTES_MAX));
        b.push(2, b"{\"a\":2}");
        assert!(!b.has_room(2, 10));
        // The first event always fits, however large.
        assert!(BatchBuilder::new().has_room(1, BATCH_BYTES_MAX * 2));
    }

    #[test]
    fn the_filter_reads_the_type() {
        let all = EventFilter::new(None);
        assert!(all.accepts(b"{\"type\":\"reception\"}"));
        let some = EventFilter::new(Some(&[EventType::Bounce, EventType::Delivery]));
        assert!(some.accepts(br#"{"type":"bounce","id":"1"}"#));
        assert!(some.accepts(br#"{"id":"1","type":"delivery"}"#));
        assert!(!some.accepts(br#"{"type":"reception","id":"1"}"#));
        assert!(!some.accepts(b"{}"));
        assert!(!some.accepts(b"garbage"));
        assert_eq!(
            event_type(br#"{"type":"transient"}"#).as_deref(),
            Some("transient")
        );
    }

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
