//! The answer of `GET /v1/messages/{id}`, put together from what the cores hold of the message
//! (its spool's view of which recipients are finished, its queued recipients), its spool record
//! (the envelope) and the accounting events still kept for `GET /v1/events` (outcomes and
//! replies). Pure: no I/O, the time is given.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use crate::envelope::MessageId;
use crate::router::{HeldQueue, HeldRecipient, MessageHeld};

/// Recipients one answer lists at most (`recipients_total` and `counts` cover them all).
pub const RECIPIENTS_SHOWN_MAX: usize = 1000;

/// The message as its spool record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub sender: String,
    pub customer: String,
    pub received_at_s: u64,
    /// The message as spooled (with Volley's `Received:` line).
    pub size_bytes: u64,
    /// In envelope order.
    pub recipients: Vec<String>,
}

/// What is known of one message.
pub struct Sources<'a> {
    pub id: MessageId,
    pub now_s: u64,
    /// Every core's answer.
    pub held: &'a [MessageHeld],
    /// Its record, when a core holding recipients of it could say where it lies.
    pub stored: Option<&'a Stored>,
    /// Its kept accounting events, oldest first.
    pub events: &'a [Value],
}

fn text<'v>(event: &'v Value, field: &str) -> Option<&'v str> {
    event
        .get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// An outcome event's final state, if it is one.
fn final_state(event: &Value) -> Option<&'static str> {
    match text(event, "type")? {
        "delivery" => Some("delivered"),
        "bounce" => Some("bounced"),
        "expiration" => Some("expired"),
        "xfer_out" => Some("handed_over"),
        _ => None,
    }
}

/// Events about a delivery attempt or outcome (not reception, refusals, credits).
fn is_outcome(event: &Value) -> bool {
    matches!(
        text(event, "type"),
        Some("delivery" | "transient" | "bounce" | "expiration" | "xfer_out")
    )
}

/// A queued recipient and its queue.
type Queued<'a> = (&'a HeldRecipient, &'a HeldQueue);

/// A recipient's state.
fn state_of(queued: Option<Queued>, outcome: Option<&Value>, finished: bool) -> &'static str {
    match (queued, outcome.and_then(final_state)) {
        (Some((q, _)), _) if q.deferred => "deferred",
        (Some(_), _) => "ready",
        (None, Some(state)) => state,
        (None, None) if finished => "finished",
        (None, None) => "in_flight",
    }
}

/// One recipient's line of the answer.
fn recipient_view(
    index: usize,
    address: Option<&str>,
    state: &str,
    queued: Option<Queued>,
    outcome: Option<&Value>,
    now_s: u64,
) -> Value {
    let next_attempt_s = queued.map(|(r, _)| r.next_attempt_s.max(now_s));
    let attempts = match queued {
        Some((r, _)) => u64::from(r.attempts),
        None => outcome
            .and_then(|e| e.get("attempt"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
    };
    let vmta = queued
        .map(|(_, q)| q.vmta.as_str())
        .or_else(|| outcome.and_then(|e| text(e, "vmta")));
    json!({
        "index": index,
        "recipient": address,
        "state": state,
        "vmta": vmta,
        "queue": queued.map(|(_, q)| q.domain.as_str()),
        "attempts": attempts,
        "next_attempt": next_attempt_s.map(crate::clock::rfc3339),
        "next_attempt_in_s": next_attempt_s.map(|at| at - now_s),
        "queue_held": queued.and_then(|(_, q)| q.held.as_deref()),
        "last_reply": outcome.and_then(|e| text(e, "response")),
        "last_reply_at": outcome.and_then(|e| text(e, "time")),
    })
}

/// The answer, or `None` when nothing knows the message (no core holds it, no event is kept):
/// `404`. `pool_of(customer, vmta)` names the pool a VMTA serves the customer from.
pub fn build(src: &Sources<'_>, pool_of: impl Fn(&str, &str) -> Option<String>) -> Option<Value> {
    let spool_view = src.held.iter().find_map(|h| h.finished.as_ref());
    let pending: u32 = src.held.iter().map(|h| h.pending).sum();
    let live = spool_view.is_some() || pending > 0;
    if !live && src.events.is_empty() && src.stored.is_none() {
        return None;
    }
    let queued: HashMap<u32, Queued> = src
        .held
        .iter()
        .flat_map(|h| {
            h.queued.iter().filter_map(|r| {
                let queue = h.queues.get(r.queue as usize)?;
                Some((r.recipient, (r, queue)))
            })
        })
        .collect();
    let receptions: Vec<&Value> = src
        .events
        .iter()
        .filter(|e| matches!(text(e, "type"), Some("reception" | "xfer_in")))
        .collect();
    let mut outcomes: HashMap<&str, &Value> = HashMap::new();
    for e in src.events.iter().filter(|e| is_outcome(e)) {
        if let Some(r) = text(e, "recipient") {
            outcomes.insert(r, e);
        }
    }
    let addresses: Vec<Option<&str>> = match src.stored {
        Some(s) => s.recipients.iter().map(|r| Some(r.as_str())).collect(),
        // No record: the reception events list the envelope in order; recipients whose
        // reception is no longer kept follow, in the order of their outcomes.
        None => {
            let mut listed: Vec<Option<&str>> =
                receptions.iter().map(|e| text(e, "recipient")).collect();
            let mut seen: std::collections::HashSet<&str> =
                listed.iter().flatten().copied().collect();
            for e in src.events.iter().filter(|e| is_outcome(e)) {
                if let Some(r) = text(e, "recipient")
                    && seen.insert(r)
                {
                    listed.push(Some(r));
                }
            }
            listed
        }
    };
    let total = addresses
        .len()
        .max(spool_view.map_or(0, Vec::len))
        .max(queued.keys().map(|&r| r as usize + 1).max().unwrap_or(0));
    let mut counts: Map<String, Value> = Map::new();
    let mut recipients = Vec::new();
    for index in 0..total {
        let address = addresses.get(index).copied().flatten();
        let finished = match spool_view {
            Some(bits) => bits.get(index).copied().unwrap_or(false),
            None => !live,
        };
        let queued = queued.get(&(index as u32)).copied();
        let outcome = address.and_then(|a| outcomes.get(a).copied());
        let state = state_of(queued, outcome, finished);
        let count = counts.entry(state).or_insert(Value::from(0u64));
        *count = Value::from(count.as_u64().unwrap_or(0) + 1);
        if recipients.len() < RECIPIENTS_SHOWN_MAX {
            recipients.push(recipient_view(
                index, address, state, queued, outcome, src.now_s,
            ));
        }
    }
    let reception = receptions.first().copied();
    let any = reception.or(src.events.first());
    let sender = match src.stored {
        Some(s) => Some(s.sender.as_str()),
        // The null sender of a DSN is an empty string: kept as such once an event is there.
        None => any.and_then(|e| e.get("sender")).and_then(Value::as_str),
    };
    let customer = match src.stored {
        Some(s) => Some(s.customer.as_str()),
        None => any.and_then(|e| e.get("customer")).and_then(Value::as_str),
    };
    let received_at = match src.stored {
        Some(s) => Some(crate::clock::rfc3339(s.received_at_s)),
        None => reception.and_then(|e| text(e, "time")).map(str::to_string),
    };
    let size_bytes = match src.stored {
        Some(s) => Some(s.size_bytes),
        None => any
            .and_then(|e| e.get("size_bytes"))
            .and_then(Value::as_u64),
    };
    let first_queued = queued.values().min_by_key(|(r, _)| r.recipient);
    let vmta = reception
        .and_then(|e| text(e, "vmta"))
        .or_else(|| first_queued.map(|(_, q)| q.vmta.as_str()));
    let pool = vmta.and_then(|v| pool_of(customer.unwrap_or(""), v));
    Some(json!({
        "id": src.id.to_string(),
        "status": if live { "queued" } else { "finished" },
        "sender": sender,
        "customer": customer,
        "received_at": received_at,
        "size_bytes": size_bytes,
        "vmta": vmta,
        "pool": pool,
        "recipients_total": total,
        "recipients_truncated": total > RECIPIENTS_SHOWN_MAX,
        "counts": counts,
        "recipients": recipients,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn id() -> MessageId {
        MessageId { core: 1, seq: 0x2A }
    }

    fn stored() -> Stored {
        Stored {
            sender: "s@src.test".into(),
            customer: "acme".into(),
            received_at_s: NOW - 120,
            size_bytes: 321,
            recipients: vec![
                "a@a.test".into(),
                "b@b.test".into(),
                "c@c.test".into(),
                "d@d.test".into(),
            ],
        }
    }

    fn event(kind: &str, recipient: &str, response: &str, attempt: u32) -> Value {
        json!({"type": kind, "time": "2027-01-15T08:00:00Z", "id": id().to_string(),
               "customer": "acme", "vmta": "v1", "sender": "s@src.test", "recipient": recipient,
               "response": response, "attempt": attempt, "size_bytes": 321})
    }

    fn pools(customer: &str, vmta: &str) -> Option<String> {
        (customer == "acme" && vmta == "v1").then(|| "main".to_string())
    }

    #[test]
    fn a_live_message_shows_each_recipient_where_it_stands() {
        let deferred = HeldRecipient {
            recipient: 1,
            queue: 0,
            deferred: true,
            attempts: 2,
            next_attempt_s: NOW + 600,
        };
        let ready = HeldRecipient {
            recipient: 3,
            queue: 0,
            deferred: false,
            attempts: 0,
            next_attempt_s: NOW - 5,
        };
        let held = [
            MessageHeld {
                core: 0,
                pending: 1,
                queues: vec![HeldQueue {
                    vmta: "v1".into(),
                    domain: "b.test".into(),
                    held: None,
                }],
                queued: vec![deferred],
                ..MessageHeld::default()
            },
            MessageHeld {
                core: 1,
                finished: Some(vec![true, false, false, false]),
                pending: 2,
                queues: vec![HeldQueue {
                    vmta: "v2".into(),
                    domain: "d.test".into(),
                    held: Some("warming up".into()),
                }],
                queued: vec![ready],
                ..MessageHeld::default()
            },
        ];
        let events = [
            event("reception", "a@a.test", "", 0),
            event("delivery", "a@a.test", "250 2.0.0 Ok", 1),
            event("transient", "b@b.test", "451 4.7.1 Try later", 1),
            event("transient", "b@b.test", "451 4.7.1 Later still", 2),
        ];
        let stored = stored();
        let src = Sources {
            id: id(),
            now_s: NOW,
            held: &held,
            stored: Some(&stored),
            events: &events,
        };
        let v = build(&src, pools).unwrap();
        assert_eq!(v["id"], "00000000002A-01");
        assert_eq!(v["status"], "queued");
        assert_eq!(v["sender"], "s@src.test");
        assert_eq!(v["received_at"], crate::clock::rfc3339(NOW - 120));
        assert_eq!(v["size_bytes"], 321);
        assert_eq!(v["vmta"], "v1");
        assert_eq!(v["pool"], "main");
        assert_eq!(v["recipients_total"], 4);
        let r = &v["recipients"];
        assert_eq!(r[0]["state"], "delivered");
        assert_eq!(r[0]["last_reply"], "250 2.0.0 Ok");
        assert_eq!(r[0]["attempts"], 1);
        assert_eq!(r[0]["last_reply_at"], "2027-01-15T08:00:00Z");
        assert_eq!(r[1]["state"], "deferred");
        assert_eq!(r[1]["attempts"], 2);
        assert_eq!(r[1]["next_attempt_in_s"], 600);
        assert_eq!(r[1]["next_attempt"], crate::clock::rfc3339(NOW + 600));
        assert_eq!(r[1]["last_reply"], "451 4.7.1 Later still");
        assert_eq!(r[1]["queue"], "b.test");
        assert_eq!(r[2]["state"], "in_flight", "unfinished and in no queue");
        assert_eq!(r[2]["next_attempt"], Value::Null);
        assert_eq!(r[3]["state"], "ready");
        assert_eq!(r[3]["next_attempt_in_s"], 0, "ready: now");
        assert_eq!(r[3]["queue_held"], "warming up");
        assert_eq!(r[3]["vmta"], "v2");
        assert_eq!(
            v["counts"],
            json!({"delivered": 1, "deferred": 1, "in_flight": 1, "ready": 1})
        );
    }

    #[test]
    fn a_finished_message_is_told_from_its_events_and_an_unknown_one_is_none() {
        let held = [MessageHeld::default()];
        let events = [
            event("reception", "a@a.test", "", 0),
            event("reception", "b@b.test", "", 0),
            event("bounce", "a@a.test", "550 5.1.1 No such user", 1),
        ];
        let src = Sources {
            id: id(),
            now_s: NOW,
            held: &held,
            stored: None,
            events: &events,
        };
        let v = build(&src, pools).unwrap();
        assert_eq!(v["status"], "finished");
        assert_eq!(v["received_at"], "2027-01-15T08:00:00Z");
        assert_eq!(v["customer"], "acme");
        assert_eq!(v["recipients"][0]["state"], "bounced");
        assert_eq!(v["recipients"][0]["last_reply"], "550 5.1.1 No such user");
        assert_eq!(
            v["recipients"][1]["state"], "finished",
            "its outcome is no longer kept"
        );

        let more = [
            event(
                "expiration",
                "a@a.test",
                "554 5.4.7 Delivery time expired",
                9,
            ),
            event("xfer_out", "b@b.test", "250 2.0.0 Ok", 0),
        ];
        let v = build(
            &Sources {
                events: &more,
                ..src
            },
            pools,
        )
        .unwrap();
        assert_eq!(v["counts"], json!({"expired": 1, "handed_over": 1}));
        assert_eq!(
            v["recipients"][1]["recipient"], "b@b.test",
            "listed by their outcomes"
        );
        assert_eq!(v["received_at"], Value::Null, "its reception is not kept");
        assert_eq!(v["customer"], "acme");

        let nothing = Sources { events: &[], ..src };
        assert_eq!(build(&nothing, pools), None);
    }

    #[test]
    fn the_list_is_bounded_but_the_counts_are_whole() {
        let many = RECIPIENTS_SHOWN_MAX + 5;
        // Every recipient queued but the last: those past the list count as what they are.
        let queued = (0..many as u32 - 1)
            .map(|recipient| HeldRecipient {
                recipient,
                queue: 0,
                deferred: false,
                attempts: 0,
                next_attempt_s: NOW,
            })
            .collect();
        let held = [MessageHeld {
            finished: Some(vec![false; many]),
            queues: vec![HeldQueue {
                vmta: "v1".into(),
                domain: "a.test".into(),
                held: None,
            }],
            queued,
            ..MessageHeld::default()
        }];
        let src = Sources {
            id: id(),
            now_s: NOW,
            held: &held,
            stored: None,
            events: &[],
        };
        let v = build(&src, pools).unwrap();
        assert_eq!(v["recipients_total"], many);
        assert_eq!(v["recipients_truncated"], true);
        assert_eq!(
            v["recipients"].as_array().map(Vec::len),
            Some(RECIPIENTS_SHOWN_MAX)
        );
        assert_eq!(v["counts"], json!({"ready": many - 1, "in_flight": 1}));
        assert_eq!(v["sender"], Value::Null, "no record and no event");
    }
}
