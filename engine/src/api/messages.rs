//! `GET /v1/messages/{id}` (one message: envelope, each recipient's state) and
//! `POST /v1/messages/{id}/bounce` (bounce its undelivered recipients now).
//!
//! The id is the queue id Volley gives at acceptance (the 250 reply, the inject answer, the
//! accounting log's `id`). A message's record lies in its own core's spool, its recipients in the
//! queues of whichever cores own their (VMTA, domain): every core is asked (`router::Question`),
//! and each looks through its queues in slices, letting its reactor poll between them. The envelope is read back
//! from the record on the blocking pool, and the kept accounting events (the ring behind
//! `GET /v1/events`) are searched there too: nothing here holds a reactor.

use std::cell::Cell;

use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiCore;
use super::ask::{AskError, ask_all};
use super::http::Response;
use super::message_view::{self, Sources, Stored};
use crate::envelope::MessageId;
use crate::router::{MessageBounced, MessageHeld, Question};
use crate::spool::{RecordLocation, SegmentReader};

/// How long a lookup waits for every core's answer.
const LOOKUP_WAIT_MS: u64 = 5_000;
/// How long a bounce waits for every core (its DSNs are spooled before it answers).
const BOUNCE_WAIT_MS: u64 = 20_000;
/// Kept events of one message read at most (the latest ones).
const MESSAGE_EVENTS_MAX: usize = 10_000;
/// Lookups and bounces under way at once at most: each goes through every core's queues.
const MESSAGE_OPS_AT_ONCE_MAX: u32 = 4;
/// An operator's reason is cut to this many bytes (it goes into DSNs and the log).
const REASON_BYTES_MAX: usize = 512;

thread_local! {
    /// Message operations under way on this core (the API's).
    static UNDER_WAY: Cell<u32> = const { Cell::new(0) };
}

/// One message operation under way, counted while it lives.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        UNDER_WAY.with(|n| {
            (n.get() < MESSAGE_OPS_AT_ONCE_MAX).then(|| {
                n.set(n.get() + 1);
                Slot
            })
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        UNDER_WAY.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Parses a queue id as Volley writes it (`{seq:012X}-{core:02X}`: hex digits, a dash, hex
/// digits); `None` when it is not one.
pub fn parse_id(text: &str) -> Option<MessageId> {
    let (seq, core) = text.split_once('-')?;
    let hex = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if !hex(seq, 16) || !hex(core, 4) {
        return None;
    }
    text.parse().ok()
}

/// The id of the path, or the answer: `400` malformed, `404` a core this node does not have.
fn message_id(core: &ApiCore, text: &str) -> Result<MessageId, Response> {
    let id = parse_id(text).ok_or_else(|| {
        Response::error(
            400,
            format!("{text:?} is not a queue id (like 00000000002A-01)"),
        )
    })?;
    if usize::from(id.core) >= core.router().cores {
        return Err(Response::error(404, format!("no message {id}")));
    }
    Ok(id)
}

fn ask_failed(e: AskError) -> Response {
    Response::error(504, e.to_string())
}

fn busy() -> Response {
    Response::error(
        503,
        format!("{MESSAGE_OPS_AT_ONCE_MAX} message lookups or bounces are under way: try again"),
    )
}

/// The message as its record holds it (blocking: maps the segment, checks the record's CRC).
fn read_stored(dir: std::path::PathBuf, id: MessageId, record: RecordLocation) -> Option<Stored> {
    match SegmentReader::new(dir).message(id, record) {
        Ok(message) => {
            let envelope = message.envelope.to_envelope();
            Some(Stored {
                sender: envelope.sender,
                customer: envelope.customer,
                received_at_s: envelope.received_at_s,
                size_bytes: u64::from(message.body.len),
                recipients: envelope.recipients.into_iter().map(|r| r.address).collect(),
            })
        }
        Err(e) => {
            log::warn!("API: message {id}: record unreadable: {e}");
            None
        }
    }
}

/// `GET /v1/messages/{id}`.
pub async fn show(core: &ApiCore, id_text: &str) -> Response {
    let id = match message_id(core, id_text) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let Some(_slot) = Slot::take() else {
        return busy();
    };
    // The kept events are searched on the blocking pool while the cores look.
    let log = core.node.events.clone();
    let needle = format!("\"id\":\"{id}\"");
    let lines = glommio::executor()
        .spawn_blocking(move || log.lines_containing(&needle, MESSAGE_EVENTS_MAX));
    let held: Vec<MessageHeld> = match ask_all(core, LOOKUP_WAIT_MS, |answer| Question::Message {
        id,
        answer,
    })
    .await
    {
        Ok(held) => held,
        Err(e) => return ask_failed(e),
    };
    let lines = lines.await;
    // Reading the record, parsing the events and putting the answer together take time in
    // proportion to the message's recipients and events: on the blocking pool too.
    let dir = core.bodies.spool_dir().to_path_buf();
    let config = core.config();
    let now_s = crate::clock::unix_s();
    let view = glommio::executor()
        .spawn_blocking(move || {
            let stored = held
                .iter()
                .find_map(|h| h.record)
                .and_then(|record| read_stored(dir, id, record));
            let id_text = id.to_string();
            let events: Vec<Value> = lines
                .iter()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|e| e.get("id").and_then(Value::as_str) == Some(id_text.as_str()))
                .collect();
            let pool_of = |customer: &str, vmta: &str| {
                let has = |p: &&crate::config::PoolConfig| p.vmtas.iter().any(|v| v == vmta);
                config
                    .pool_for(customer)
                    .filter(has)
                    .or_else(|| config.pools.iter().find(has))
                    .map(|p| p.name.clone())
            };
            let sources = Sources {
                id,
                now_s,
                held: &held,
                stored: stored.as_ref(),
                events: &events,
            };
            message_view::build(&sources, pool_of).map(|view| view.to_string())
        })
        .await;
    match view {
        Some(body) => Response {
            status: 200,
            content_type: "application/json",
            body,
        },
        None => Response::error(404, format!("no message {id}")),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BounceRequest {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/messages/{id}/bounce` (body optional: `{"reason"}`).
pub async fn bounce(core: &ApiCore, id_text: &str, body: &[u8]) -> Response {
    let id = match message_id(core, id_text) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let request: BounceRequest = if body.iter().all(u8::is_ascii_whitespace) {
        BounceRequest::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return Response::error(400, format!("expected {{\"reason\"?}}: {e}")),
        }
    };
    let reason = request.reason.unwrap_or_else(|| "by the operator".into());
    let reason = reason.trim();
    if reason.len() > REASON_BYTES_MAX || reason.chars().any(char::is_control) {
        return Response::error(
            400,
            format!("reason: at most {REASON_BYTES_MAX} bytes, no control characters"),
        );
    }
    let Some(_slot) = Slot::take() else {
        return busy();
    };
    // Known at all? The spool of its core says whether it has unfinished recipients.
    let held: Vec<MessageHeld> = match ask_all(core, LOOKUP_WAIT_MS, |answer| Question::Message {
        id,
        answer,
    })
    .await
    {
        Ok(held) => held,
        Err(e) => return ask_failed(e),
    };
    let live = held.iter().any(|h| h.finished.is_some() || h.pending > 0);
    if !live {
        // Finished (every recipient delivered or bounced), or never here: the kept events say.
        let log = core.node.events.clone();
        let needle = format!("\"id\":\"{id}\"");
        let known = glommio::executor()
            .spawn_blocking(move || !log.lines_containing(&needle, 1).is_empty())
            .await;
        return if known {
            Response::json(
                200,
                json!({ "id": id.to_string(), "bounced": 0, "in_flight": 0 }),
            )
        } else {
            Response::error(404, format!("no message {id}"))
        };
    }
    log::info!("API: bounce of message {id}: {reason}");
    let bounced: Vec<MessageBounced> =
        match ask_all(core, BOUNCE_WAIT_MS, |answer| Question::BounceMessage {
            id,
            reason: reason.to_string(),
            answer,
        })
        .await
        {
            Ok(b) => b,
            Err(e) => return ask_failed(e),
        };
    let count: u32 = bounced.iter().map(|b| b.bounced).sum();
    let in_flight: u32 = bounced.iter().map(|b| b.in_flight).sum();
    Response::json(
        200,
        json!({ "id": id.to_string(), "bounced": count, "in_flight": in_flight }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_parse_and_anything_else_does_not() {
        assert_eq!(
            parse_id("00000000002A-01"),
            Some(MessageId { core: 1, seq: 42 })
        );
        assert_eq!(parse_id("2a-0"), Some(MessageId { core: 0, seq: 42 }));
        for bad in [
            "",
            "-",
            "2A",
            "2A-",
            "-01",
            "+2A-01",
            "2A-+1",
            "2G-01",
            "2A-01-02",
            "11111111111111111-01",
            "2A-00001",
            " 2A-01",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn message_operations_under_way_are_bounded() {
        let slots: Vec<Slot> = (0..MESSAGE_OPS_AT_ONCE_MAX)
            .map(|_| Slot::take().expect("a free slot"))
            .collect();
        assert!(Slot::take().is_none());
        drop(slots);
        assert!(Slot::take().is_some());
    }
}
