//! The driver's memory budget for bodies in flight (`body_bytes_held`, `body_budget_exhausted`):
//! a body the driver has no room for is freed at once, read to its end, and answered 452 4.3.1,
//! DATA and BDAT alike; the session then goes on.

use super::*;

const BUDGET_REFUSAL: &str =
    "452 4.3.1 Insufficient system storage: too many messages in flight, try again later";

/// A session after EHLO, MAIL and RCPT, output and events cleared.
fn in_transaction() -> (Session, Driver) {
    let mut s = session();
    let mut d = Driver::default();
    d.feed(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
    );
    d.output.clear();
    d.events.clear();
    (s, d)
}

fn messages(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Message { .. }))
        .count()
}

#[test]
fn data_body_refused_when_the_budget_is_gone_and_freed_at_once() {
    let (mut s, mut d) = in_transaction();
    assert!(!s.body_budget_exhausted(), "no body yet: nothing to refuse");
    d.feed(&mut s, b"DATA\r\n");
    d.feed(&mut s, &b"0123456789012345678\r\n".repeat(100));
    assert!(s.body_bytes_held() >= 2100, "{}", s.body_bytes_held());
    assert!(s.body_budget_exhausted());
    assert_eq!(s.body_bytes_held(), 0, "the body kept so far is freed");
    d.feed(&mut s, &b"more text of the same body\r\n".repeat(10));
    assert_eq!(s.body_bytes_held(), 0, "the rest is not kept");
    d.output.clear();
    d.feed(&mut s, b".\r\nNOOP\r\n");
    assert_eq!(replies(&d.text()), [BUDGET_REFUSAL, "250 2.0.0 Ok"]);
    assert_eq!(messages(&d.events), 0);
    assert!(d.events.iter().any(|e| matches!(
        e,
        Event::MessageRefused { reply } if reply.code() == 452
    )));
    assert_eq!(
        s.error_count(),
        0,
        "the server's condition, not a client error"
    );
    // The next transaction is received as usual.
    d.output.clear();
    d.feed(
        &mut s,
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nhi\r\n.\r\n",
    );
    assert_eq!(messages(&d.events), 1);
    assert!(
        d.text().ends_with("250 2.0.0 Ok: queued as Q0\r\n"),
        "{}",
        d.text()
    );
}

#[test]
fn data_refused_by_the_budget_keeps_a_permanent_verdict() {
    // Over max_message_bytes (10 000): 552, not a 452 that invites a retry bound to fail.
    let (mut s, mut d) = in_transaction();
    d.feed(&mut s, b"DATA\r\nstart\r\n");
    assert!(s.body_budget_exhausted());
    d.output.clear();
    d.feed(&mut s, &b"x".repeat(20));
    d.feed(&mut s, &b"0123456789\r\n".repeat(1000));
    d.feed(&mut s, b".\r\n");
    assert_eq!(codes(&d.text()), ["552 5.3.4"]);
    // A bare LF: 550 5.6.11 (SMTP smuggling), whatever the budget.
    let (mut s, mut d) = in_transaction();
    d.feed(&mut s, b"DATA\r\nbad\nline\r\n");
    assert!(s.body_budget_exhausted());
    d.output.clear();
    d.feed(&mut s, b".\r\n");
    assert_eq!(codes(&d.text()), ["550 5.6.11"]);
}

#[test]
fn bdat_chunk_refused_when_the_budget_is_gone() {
    let (mut s, mut d) = in_transaction();
    d.feed(&mut s, b"BDAT 3000\r\n");
    d.feed(&mut s, &b"y".repeat(1000));
    assert!(
        s.body_bytes_held() >= 3000,
        "the announced chunk is reserved: {}",
        s.body_bytes_held()
    );
    assert!(s.body_budget_exhausted());
    assert_eq!(s.body_bytes_held(), 0);
    d.output.clear();
    // The rest of the chunk is read and dropped; the chunk is answered 452 and the transaction
    // is over: the next chunk gets 503, as after any refused chunk.
    d.feed(&mut s, &b"y".repeat(2000));
    d.feed(&mut s, b"BDAT 4 LAST\r\nabcdNOOP\r\n");
    assert_eq!(codes(&d.text()), ["452 4.3.1", "503 5.5.1", "250 2.0.0"]);
    assert_eq!(replies(&d.text())[0], BUDGET_REFUSAL);
    assert_eq!(messages(&d.events), 0);
    assert_eq!(s.body_bytes_held(), 0);
}

#[test]
fn bdat_between_chunks_refused_at_the_next_chunk() {
    let (mut s, mut d) = in_transaction();
    d.feed(&mut s, b"BDAT 5\r\nhello");
    assert_eq!(codes(&d.text()), ["250 2.0.0"]);
    assert!(s.body_bytes_held() >= 5);
    assert!(
        s.body_budget_exhausted(),
        "the chunks kept so far are a body"
    );
    assert_eq!(s.body_bytes_held(), 0);
    d.output.clear();
    d.feed(&mut s, b"BDAT 8 LAST\r\n world\r\n");
    assert_eq!(replies(&d.text()), [BUDGET_REFUSAL]);
    assert_eq!(messages(&d.events), 0);
    // A new transaction by BDAT goes through.
    d.output.clear();
    d.feed(
        &mut s,
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 4 LAST\r\nhi\r\n",
    );
    assert_eq!(messages(&d.events), 1);
    assert!(
        d.text().ends_with("250 2.0.0 Ok: queued as Q0\r\n"),
        "{}",
        d.text()
    );
}

#[test]
fn a_complete_body_counts_until_the_driver_takes_it() {
    let (mut s, _) = in_transaction();
    s.receive(b"DATA\r\n", t0());
    s.receive(b"Subject: x\r\n\r\nbody\r\n.\r\n", t0());
    let held = s.body_bytes_held();
    assert!(held >= 20, "the body in the pending event: {held}");
    assert!(
        !s.body_budget_exhausted(),
        "a complete body is the driver's to refuse"
    );
    let mut body_capacity = 0;
    while let Some(event) = s.poll_event() {
        if let Event::Message { body, .. } = event {
            body_capacity = body.capacity();
        }
    }
    assert_eq!(body_capacity, held);
    assert_eq!(s.body_bytes_held(), 0, "taken by the driver");
}

#[test]
fn a_data_body_gets_room_for_its_declared_size_at_once() {
    let mut s = session();
    let mut d = Driver::default();
    d.feed(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.example> SIZE=9000\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
    );
    let held = s.body_bytes_held();
    assert!(held >= 9_000, "reserved before the first octet: {held}");
    let line = b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
    d.feed(&mut s, &line.repeat(100));
    assert_eq!(
        s.body_bytes_held(),
        held,
        "7 200 octets arrived, the buffer never grew"
    );
    d.feed(&mut s, b".\r\n");
    assert_eq!(messages(&d.events), 1);
    // Without SIZE the buffer grows as the body arrives.
    let (mut s, mut d) = in_transaction();
    d.feed(&mut s, b"DATA\r\n");
    assert_eq!(s.body_bytes_held(), 0);
    d.feed(&mut s, b"hi\r\n");
    assert!(s.body_bytes_held() < 9_000);
}
