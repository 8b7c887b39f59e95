//! An event's JSON line, written directly into the core's pending batch. Byte for byte what
//! `serde_json` writes for the derived `Serialize` (a test holds them together), at a fraction of
//! its cost: field names are constants, and a string with nothing to escape (nearly all of them)
//! is copied whole instead of going through serde's escaper octet by octet. With ten recipients a
//! message makes twenty lines, and serde's path was the hottest user-space code of a relay.

use super::{AccountingEvent, EventType};
use crate::number_text::push_decimal as number;

impl EventType {
    /// The name written in `type` (as the `serde` attributes on the enum spell it).
    fn name(self) -> &'static str {
        match self {
            EventType::Reception => "reception",
            EventType::Delivery => "delivery",
            EventType::Transient => "transient",
            EventType::Bounce => "bounce",
            EventType::Expiration => "expiration",
            EventType::Credits => "credits",
            EventType::Rejection => "rejection",
            EventType::Suppressed => "suppressed",
            EventType::XferOut => "xfer_out",
            EventType::XferIn => "xfer_in",
            EventType::Reputation => "reputation",
            EventType::Unsubscribe => "unsubscribe",
            EventType::Complaint => "complaint",
            EventType::CustomerPaused => "customer_paused",
            EventType::CustomerResumed => "customer_resumed",
        }
    }
}

/// The string fields before the numbers, in the struct's (and so serde's) order.
fn leading_strings<'e>(event: &'e AccountingEvent<'_>) -> [(&'static str, &'e str); 16] {
    [
        ("time", &event.time),
        ("id", &event.id),
        ("message_id", &event.message_id),
        ("customer", &event.customer),
        ("campaign", &event.campaign),
        ("vmta", &event.vmta),
        ("source_ip", &event.source_ip),
        ("client_ip", &event.client_ip),
        ("sender", &event.sender),
        ("recipient", &event.recipient),
        ("domain", &event.domain),
        ("mx", &event.mx),
        ("tls", &event.tls),
        ("response", &event.response),
        ("enhanced_code", &event.enhanced_code),
        ("bounce_category", &event.bounce_category),
    ]
}

/// Appends `event` as one JSON object (no newline) to `out`.
pub fn write_event(event: &AccountingEvent, out: &mut Vec<u8>) {
    let leading = leading_strings(event);
    // One reservation for the line (keys, numbers and quotes take under 400 octets).
    let text: usize = leading.iter().map(|(_, value)| value.len()).sum::<usize>()
        + event.node.len()
        + event.xfer_id.len();
    out.reserve(text + 400);
    out.extend_from_slice(b"{\"type\":");
    match event.kind {
        Some(kind) => string(out, kind.name()),
        None => out.extend_from_slice(b"null"),
    }
    for (key, value) in leading {
        key_of(out, key);
        string(out, value);
    }
    key_of(out, "attempt");
    number(out, u64::from(event.attempt));
    key_of(out, "size_bytes");
    number(out, event.size_bytes);
    key_of(out, "queue_ms");
    number(out, event.queue_ms);
    if let Some(score) = event.spam_score {
        key_of(out, "spam_score");
        // serde_json's own float formatting (and `null` for what JSON cannot hold).
        let _ = serde_json::to_writer(&mut *out, &score);
    }
    if let Some(symbols) = &event.spam_symbols {
        key_of(out, "spam_symbols");
        string(out, symbols);
    }
    if let Some(credits) = event.credits_added {
        key_of(out, "credits_added");
        number(out, credits);
    }
    key_of(out, "node");
    string(out, &event.node);
    key_of(out, "xfer_id");
    string(out, &event.xfer_id);
    out.push(b'}');
}

/// `,"key":` (keys are constants with nothing to escape).
fn key_of(out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A JSON string: copied whole when nothing in it needs escaping, else escaped by serde_json.
fn string(out: &mut Vec<u8>, value: &str) {
    // No early exit: the loop stays branch-free and vectorizes (strings here are short).
    let escaped = value.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    let plain = !escaped;
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(event: &AccountingEvent) -> (String, String) {
        let mut ours = Vec::new();
        write_event(event, &mut ours);
        let serde = serde_json::to_string(event).unwrap();
        (String::from_utf8(ours).unwrap(), serde)
    }

    #[test]
    fn every_event_type_is_written_as_serde_writes_it() {
        for kind in [
            EventType::Reception,
            EventType::Delivery,
            EventType::Transient,
            EventType::Bounce,
            EventType::Expiration,
            EventType::Credits,
            EventType::Rejection,
            EventType::Suppressed,
            EventType::XferOut,
            EventType::XferIn,
            EventType::Reputation,
            EventType::Unsubscribe,
            EventType::Complaint,
            EventType::CustomerPaused,
            EventType::CustomerResumed,
        ] {
            let event = AccountingEvent {
                kind: Some(kind),
                ..AccountingEvent::default()
            };
            let (ours, serde) = both(&event);
            assert_eq!(ours, serde);
        }
        let (ours, serde) = both(&AccountingEvent::default());
        assert_eq!(ours, serde, "no type: null");
    }

    #[test]
    fn strings_numbers_and_optional_fields_match_serde_octet_for_octet() {
        let awkward = [
            "",
            "plain text",
            "quote \" and backslash \\ here",
            "controls \u{0}\u{1}\t\n\r\u{1f} and DEL \u{7f}",
            "unicode: é, 日本, 😀, U+2028 \u{2028}",
            "550 5.1.1 <user@example.com>: Recipient address rejected",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for (i, text) in awkward.iter().cycle().take(60).enumerate() {
            let pick = |rng: &mut fastrand::Rng| awkward[rng.usize(..awkward.len())].to_string();
            let event = AccountingEvent {
                kind: Some(EventType::Delivery),
                time: pick(&mut rng).into(),
                id: text.to_string().into(),
                message_id: pick(&mut rng).into(),
                customer: pick(&mut rng).into(),
                campaign: pick(&mut rng).into(),
                vmta: pick(&mut rng).into(),
                source_ip: pick(&mut rng).into(),
                client_ip: pick(&mut rng).into(),
                sender: pick(&mut rng).into(),
                recipient: pick(&mut rng).into(),
                domain: pick(&mut rng).into(),
                mx: pick(&mut rng).into(),
                tls: pick(&mut rng).into(),
                response: pick(&mut rng).into(),
                enhanced_code: pick(&mut rng).into(),
                bounce_category: pick(&mut rng).into(),
                attempt: [0, 1, 9, 10, u32::MAX][i % 5],
                size_bytes: [0, 7, 1_000_000, u64::MAX][i % 4],
                queue_ms: rng.u64(..),
                spam_score: [None, Some(0.0), Some(-3.25), Some(12.5), Some(f64::NAN)][i % 5],
                spam_symbols: (i % 3 == 0).then(|| pick(&mut rng)),
                credits_added: (i % 2 == 0).then(|| rng.u64(..)),
                node: pick(&mut rng).into(),
                xfer_id: pick(&mut rng).into(),
            };
            let (ours, serde) = both(&event);
            assert_eq!(ours, serde);
        }
    }
}
