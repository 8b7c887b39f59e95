//! The session driven against scripted servers, byte sequences split at every boundary.

use super::*;
use std::collections::VecDeque;

const GREETING: &[u8] = b"220 mx.test ESMTP\r\n";
const EHLO_PIPELINING: &[u8] =
    b"250-mx.test hello\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
const EHLO_PLAIN: &[u8] = b"250-mx.test hello\r\n250-SIZE 100000\r\n250 8BITMIME\r\n";

fn config(tls: TlsPolicy) -> SessionConfig {
    SessionConfig::new("out.volley.test", tls)
}

fn tx(sender: &str, rcpts: &[&str], body: &[u8]) -> (Transaction, Vec<u8>) {
    (
        Transaction {
            sender: sender.into(),
            recipients: rcpts.iter().map(|r| Recipient::new(*r)).collect(),
            ret: DsnRet::Unspecified,
            envid: None,
            body_type: BodyType::SevenBit,
            smtputf8: false,
            requiretls: false,
            body_bytes: body.len() as u64,
        },
        body.to_vec(),
    )
}

#[derive(Clone, Copy)]
enum Split {
    None,
    /// Flight `.0` is fed as two pieces cut at byte `.1`.
    At(usize, usize),
    Bytewise,
}

#[derive(Debug, Default, PartialEq)]
struct Run {
    /// Everything the client wrote, bodies dot-stuffed, `<TLS>` where the handshake ran.
    wire: Vec<u8>,
    events: Vec<Event>,
}

impl Run {
    fn wire(&self) -> String {
        String::from_utf8_lossy(&self.wire).into_owned()
    }

    fn results(&self) -> Vec<Vec<RecipientResult>> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::TransactionDone { recipient_results } => Some(recipient_results.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A driver as `delivery` would write it: sends the queued transactions on `Ready` (and on
/// `CanPipeline`), then QUITs.
struct Driver {
    session: Session,
    queue: VecDeque<(Transaction, Vec<u8>)>,
    /// The bodies of the transactions sent and not finished, in order, each with whether the
    /// session asked for it (as `delivery::transaction::InFlight`).
    bodies: VecDeque<(Vec<u8>, bool)>,
    run: Run,
    quit_when_idle: bool,
}

impl Driver {
    fn new(config: SessionConfig, txs: Vec<(Transaction, Vec<u8>)>) -> Driver {
        Driver {
            session: Session::new(config),
            queue: txs.into(),
            bodies: VecDeque::new(),
            run: Run::default(),
            quit_when_idle: true,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.session.handle_input(bytes);
        self.pump();
    }

    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self.session.poll_transmit() {
                progressed = true;
                let body = match t {
                    Transmit::Bytes(b) => {
                        self.run.wire.extend_from_slice(&b);
                        continue;
                    }
                    _ => {
                        let (body, sent) = self
                            .bodies
                            .iter_mut()
                            .find(|(_, sent)| !sent)
                            .expect("a body for each transaction");
                        *sent = true;
                        body.clone()
                    }
                };
                match t {
                    Transmit::Body => dot_stuff(&body, &mut self.run.wire),
                    _ => self.run.wire.extend_from_slice(&body),
                }
            }
            while let Some(e) = self.session.poll_event() {
                progressed = true;
                match &e {
                    Event::Ready => {
                        if let Some((tx, body)) = self.queue.pop_front() {
                            self.bodies.push_back((body, false));
                            self.session.send(tx).expect("ready");
                        } else if self.quit_when_idle {
                            self.session.quit();
                        }
                    }
                    Event::CanPipeline => {
                        if let Some((tx, body)) = self.queue.pop_front() {
                            match self.session.send_pipelined(tx) {
                                Ok(()) => self.bodies.push_back((body, false)),
                                Err(NotReady(tx)) => self.queue.push_front((tx, body)),
                            }
                        }
                    }
                    Event::NeedTls => {
                        self.run.wire.extend_from_slice(b"<TLS>");
                        self.session.tls_established();
                    }
                    Event::TransactionDone { .. } => {
                        self.bodies.pop_front();
                    }
                    _ => {}
                }
                self.run.events.push(e);
            }
            if !progressed {
                return;
            }
        }
    }
}

fn exchange(
    config: SessionConfig,
    flights: &[&[u8]],
    txs: Vec<(Transaction, Vec<u8>)>,
    split: Split,
) -> Run {
    let mut d = Driver::new(config, txs);
    for (k, flight) in flights.iter().enumerate() {
        match split {
            Split::At(f, cut) if f == k => {
                d.feed(&flight[..cut]);
                d.feed(&flight[cut..]);
            }
            Split::Bytewise => flight.chunks(1).for_each(|b| d.feed(b)),
            _ => d.feed(flight),
        }
    }
    d.run
}

/// Drives the script whole, byte by byte, and cut at every position of every flight, asserting
/// that all runs agree; returns the whole run.
fn drive_all_splits(
    config: SessionConfig,
    flights: &[&[u8]],
    txs: Vec<(Transaction, Vec<u8>)>,
) -> Run {
    let whole = exchange(config.clone(), flights, txs.clone(), Split::None);
    let bytewise = exchange(config.clone(), flights, txs.clone(), Split::Bytewise);
    assert_eq!(bytewise, whole, "byte by byte");
    for (f, flight) in flights.iter().enumerate() {
        for cut in 0..=flight.len() {
            let split = exchange(config.clone(), flights, txs.clone(), Split::At(f, cut));
            assert_eq!(split, whole, "flight {f} cut at {cut}");
        }
    }
    whole
}

fn codes(results: &[RecipientResult]) -> Vec<u16> {
    results.iter().map(|r| r.reply.code).collect()
}

fn is_failed_closed(events: &[Event], temporary: bool) -> bool {
    matches!(
        events,
        [.., Event::Failed { temporary: t, .. }, Event::Closed] if *t == temporary
    )
}

#[test]
fn pipelined_two_transactions_on_one_connection() {
    let run = drive_all_splits(
        config(TlsPolicy::Opportunistic),
        &[
            GREETING,
            EHLO_PIPELINING,
            b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n354 go\r\n",
            b"250 2.0.0 queued as A\r\n",
            b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n",
            b"250 2.0.0 queued as B\r\n",
            b"221 2.0.0 bye\r\n",
        ],
        vec![
            tx(
                "a@src.test",
                &["b@mx.test", "c@mx.test"],
                b"Subject: 1\r\n\r\nhi\r\n",
            ),
            tx("a@src.test", &["d@mx.test"], b"Subject: 2\r\n\r\n.dot"),
        ],
    );
    assert_eq!(
        run.wire(),
        "EHLO out.volley.test\r\n\
         MAIL FROM:<a@src.test> SIZE=18\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<c@mx.test>\r\nDATA\r\n\
         Subject: 1\r\n\r\nhi\r\n.\r\n\
         MAIL FROM:<a@src.test> SIZE=18\r\nRCPT TO:<d@mx.test>\r\nDATA\r\n\
         Subject: 2\r\n\r\n..dot\r\n.\r\n\
         QUIT\r\n"
    );
    let results = run.results();
    assert_eq!(results.len(), 2);
    assert_eq!(codes(&results[0]), [250, 550]);
    assert_eq!(results[0][0].outcome(), Outcome::Delivered);
    assert_eq!(results[0][0].reply.text, "2.0.0 queued as A");
    assert_eq!(results[0][1].outcome(), Outcome::Failed);
    assert_eq!(results[0][1].reply.text, "5.1.1 no such\n5.1.1 user");
    assert_eq!(
        results[0][1].reply.enhanced,
        Some(EnhancedCode::new(5, 1, 1))
    );
    assert_eq!(results[0][1].recipient.address, "c@mx.test");
    assert_eq!(results[1][0].reply.text, "2.0.0 queued as B");
    assert_eq!(run.events.first(), Some(&Event::Ready));
    assert_eq!(run.events.last(), Some(&Event::Closed));
    assert!(!run.events.iter().any(|e| matches!(e, Event::Failed { .. })));
}

#[test]
fn lock_step_without_pipelining() {
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[
            GREETING,
            EHLO_PLAIN,
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"451 4.2.1 mailbox busy\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 2.0.0 done\r\n",
            b"221 bye\r\n",
        ],
        vec![tx(
            "a@src.test",
            &["b@mx.test", "c@mx.test", "d@mx.test"],
            b"x\r\n",
        )],
    );
    assert_eq!(
        run.wire(),
        "EHLO out.volley.test\r\nMAIL FROM:<a@src.test> SIZE=3\r\nRCPT TO:<b@mx.test>\r\n\
         RCPT TO:<c@mx.test>\r\nRCPT TO:<d@mx.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n"
    );
    let results = run.results();
    assert_eq!(codes(&results[0]), [250, 451, 250]);
    assert_eq!(results[0][1].outcome(), Outcome::Deferred);
}

#[test]
fn lock_step_stage_timeouts() {
    let mut c = config(TlsPolicy::Off);
    // Distinct values, so a stage mapped to the wrong deadline shows.
    c.timeouts = StageTimeouts {
        greeting_ms: 11,
        reply_ms: 22,
        data_ms: 33,
        idle_ms: 44,
    };
    let mut d = Driver::new(c, vec![tx("a@src.test", &["b@mx.test"], b"x\r\n")]);
    let ms = |s: &Session| s.timeout().as_millis() as u64;
    assert_eq!(ms(&d.session), 11, "greeting");
    d.feed(GREETING);
    assert_eq!(ms(&d.session), 22, "EHLO");
    d.feed(EHLO_PLAIN);
    assert_eq!(ms(&d.session), 22, "MAIL");
    d.feed(b"250 ok\r\n");
    assert_eq!(ms(&d.session), 22, "RCPT");
    d.feed(b"250 ok\r\n");
    assert_eq!(ms(&d.session), 22, "DATA");
    d.feed(b"354 go\r\n");
    assert_eq!(ms(&d.session), 33, "end of data");
    d.quit_when_idle = false;
    d.feed(b"250 ok\r\n");
    assert_eq!(ms(&d.session), 44, "idle");
    // Idle expiry leaves politely.
    d.session.on_timeout();
    d.pump();
    assert!(d.run.wire().ends_with("QUIT\r\n"));
}

#[test]
fn bdat_last_waits_for_the_data_deadline() {
    let mut c = config(TlsPolicy::Off);
    c.timeouts.data_ms = 33;
    let mut d = Driver::new(c, vec![tx("a@src.test", &["b@mx.test"], b"x\r\n")]);
    d.feed(GREETING);
    d.feed(b"250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
    assert!(d.run.wire().contains("BDAT 3 LAST\r\n"), "{}", d.run.wire());
    d.feed(b"250 ok\r\n250 ok\r\n");
    assert_eq!(d.session.timeout().as_millis(), 33);
}

#[test]
fn a_greeting_timeout_names_the_stage_and_the_peer() {
    let mut c = config(TlsPolicy::Off);
    c.peer = "mx.test (192.0.2.1)".into();
    let mut d = Driver::new(c, vec![]);
    d.session.on_timeout();
    d.pump();
    let failed = d.run.events.iter().find_map(|e| match e {
        Event::Failed { reply, temporary } => Some((reply.clone(), *temporary)),
        _ => None,
    });
    let (reply, temporary) = failed.expect("a failure");
    assert!(temporary);
    assert_eq!(reply.code, 451);
    assert_eq!(reply.source, ReplySource::Local);
    assert_eq!(
        reply.to_string(),
        "451 4.4.2 Timeout waiting for greeting from mx.test (192.0.2.1)"
    );
}

#[test]
fn an_io_deadline_of_the_driver_defers_the_transaction() {
    let mut c = config(TlsPolicy::Off);
    c.peer = "mx.test (192.0.2.1)".into();
    let mut d = Driver::new(c, vec![tx("a@src.test", &["b@mx.test"], b"x\r\n")]);
    d.feed(GREETING);
    d.feed(EHLO_PIPELINING);
    d.session.fail_io("Timeout writing to");
    d.pump();
    let results = d.run.results();
    assert_eq!(codes(&results[0]), [451]);
    assert_eq!(
        results[0][0].reply.text,
        "4.4.2 Timeout writing to mx.test (192.0.2.1)"
    );
    assert!(is_failed_closed(&d.run.events, true));
}

#[test]
fn timeout_mid_transaction_defers_and_fails_temporarily() {
    let mut d = Driver::new(
        config(TlsPolicy::Off),
        vec![tx("a@src.test", &["b@mx.test", "c@mx.test"], b"x\r\n")],
    );
    d.feed(GREETING);
    d.feed(EHLO_PIPELINING);
    d.feed(b"250 ok\r\n250 ok\r\n");
    d.session.on_timeout();
    d.pump();
    let results = d.run.results();
    assert_eq!(codes(&results[0]), [451, 451]);
    assert!(
        results[0]
            .iter()
            .all(|r| r.outcome() == Outcome::Deferred && r.reply.source == ReplySource::Local)
    );
    assert!(
        results[0][0]
            .reply
            .text
            .contains("Timeout waiting for RCPT reply from the server"),
        "{}",
        results[0][0].reply.text
    );
    assert!(is_failed_closed(&d.run.events, true));
    assert!(d.session.is_closed());
}

#[test]
fn rcpt_failures_and_rset_before_next_transaction() {
    // Lock-step, every RCPT refused: no DATA; the open transaction is RSET before the next MAIL.
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[
            GREETING,
            EHLO_PLAIN,
            b"250 ok\r\n",
            b"550 5.1.1 unknown\r\n",
            b"452 4.2.2 full\r\n",
            b"250 reset\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 ok\r\n",
            b"221 bye\r\n",
        ],
        vec![
            tx("a@src.test", &["b@mx.test", "c@mx.test"], b"x\r\n"),
            tx("a@src.test", &["d@mx.test"], b"y\r\n"),
        ],
    );
    assert_eq!(
        run.wire(),
        "EHLO out.volley.test\r\nMAIL FROM:<a@src.test> SIZE=3\r\nRCPT TO:<b@mx.test>\r\n\
         RCPT TO:<c@mx.test>\r\nRSET\r\nMAIL FROM:<a@src.test> SIZE=3\r\nRCPT TO:<d@mx.test>\r\n\
         DATA\r\ny\r\n.\r\nQUIT\r\n"
    );
    let results = run.results();
    assert_eq!(codes(&results[0]), [550, 452]);
    assert_eq!(results[0][0].outcome(), Outcome::Failed);
    assert_eq!(results[0][1].outcome(), Outcome::Deferred);
    assert_eq!(codes(&results[1]), [250]);
}

#[test]
fn pipelined_rset_goes_in_the_same_flight() {
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[
            GREETING,
            EHLO_PIPELINING,
            b"250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n",
            b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 ok\r\n",
            b"221 bye\r\n",
        ],
        vec![
            tx("a@src.test", &["b@mx.test"], b"x\r\n"),
            tx("a@src.test", &["d@mx.test"], b"y\r\n"),
        ],
    );
    assert!(run.wire().contains(
        "DATA\r\nRSET\r\nMAIL FROM:<a@src.test> SIZE=3\r\nRCPT TO:<d@mx.test>\r\nDATA\r\ny\r\n.\r\n"
    ));
    let results = run.results();
    assert_eq!(
        codes(&results[0]),
        [550],
        "the RCPT reply, not DATA's, is kept"
    );
    assert_eq!(codes(&results[1]), [250]);
}

#[test]
fn mail_refused_gives_its_reply_to_every_recipient_without_rset() {
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[
            GREETING,
            EHLO_PIPELINING,
            b"550 5.7.1 sender blocked\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n503 5.5.1 no\r\n",
            b"250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 ok\r\n",
            b"221 bye\r\n",
        ],
        vec![
            tx("bad@src.test", &["b@mx.test", "c@mx.test"], b"x\r\n"),
            tx("a@src.test", &["d@mx.test"], b"y\r\n"),
        ],
    );
    let results = run.results();
    assert_eq!(codes(&results[0]), [550, 550]);
    assert_eq!(results[0][1].reply.text, "5.7.1 sender blocked");
    assert!(!run.wire().contains("RSET"));
    assert_eq!(codes(&results[1]), [250]);
}

#[test]
fn end_of_data_failures_apply_to_accepted_recipients() {
    for (reply, code, outcome) in [
        (&b"452 4.3.1 out of storage\r\n"[..], 452, Outcome::Deferred),
        (b"554 5.6.0 content rejected\r\n", 554, Outcome::Failed),
    ] {
        let run = drive_all_splits(
            config(TlsPolicy::Off),
            &[
                GREETING,
                EHLO_PIPELINING,
                b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n",
                reply,
                b"221 bye\r\n",
            ],
            vec![tx(
                "a@src.test",
                &["b@mx.test", "c@mx.test", "d@mx.test"],
                b"x\r\n",
            )],
        );
        let results = run.results();
        assert_eq!(codes(&results[0]), [code, 550, code]);
        assert_eq!(results[0][0].outcome(), outcome);
        assert_eq!(results[0][2].outcome(), outcome);
        assert!(run.wire().ends_with("x\r\n.\r\nQUIT\r\n"));
    }
}

#[test]
fn data_refused_with_pipelining() {
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[
            GREETING,
            EHLO_PIPELINING,
            b"250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n",
            b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 ok\r\n",
            b"221 bye\r\n",
        ],
        vec![
            tx("a@src.test", &["b@mx.test"], b"x\r\n"),
            tx("a@src.test", &["b@mx.test"], b"x\r\n"),
        ],
    );
    let results = run.results();
    assert_eq!(codes(&results[0]), [451]);
    assert!(run.wire().contains("DATA\r\nRSET\r\nMAIL"));
}

#[test]
fn reply_421_mid_transaction_defers_the_rest() {
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[
            GREETING,
            EHLO_PIPELINING,
            b"250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n421 4.4.2 mx.test shutting down\r\n",
        ],
        vec![tx(
            "a@src.test",
            &["b@mx.test", "c@mx.test", "d@mx.test"],
            b"x\r\n",
        )],
    );
    let results = run.results();
    assert_eq!(codes(&results[0]), [550, 421, 421]);
    assert_eq!(results[0][1].outcome(), Outcome::Deferred);
    assert_eq!(results[0][1].reply.source, ReplySource::Remote);
    assert!(is_failed_closed(&run.events, true));
    match &run.events[run.events.len() - 2] {
        Event::Failed { reply, .. } => assert_eq!(reply.text, "4.4.2 mx.test shutting down"),
        other => panic!("{other:?}"),
    }
    assert!(!run.wire().contains("QUIT"));
}

#[test]
fn reply_421_after_body_defers_accepted_recipients() {
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[
            GREETING,
            EHLO_PLAIN,
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"421 4.3.2 going away\r\n",
        ],
        vec![tx("a@src.test", &["b@mx.test"], b"x\r\n")],
    );
    assert_eq!(codes(&run.results()[0]), [421]);
    assert!(is_failed_closed(&run.events, true));
}

#[test]
fn connection_lost_mid_transaction() {
    let mut d = Driver::new(
        config(TlsPolicy::Off),
        vec![tx("a@src.test", &["b@mx.test"], b"x\r\n")],
    );
    d.feed(GREETING);
    d.feed(EHLO_PLAIN);
    d.session.connection_lost();
    d.pump();
    assert_eq!(d.run.results()[0][0].outcome(), Outcome::Deferred);
    assert!(is_failed_closed(&d.run.events, true));
}

#[test]
fn starttls_required_but_not_offered() {
    let run = drive_all_splits(
        config(TlsPolicy::Required),
        &[GREETING, EHLO_PIPELINING],
        vec![tx("a@src.test", &["b@mx.test"], b"x\r\n")],
    );
    assert_eq!(run.wire(), "EHLO out.volley.test\r\n");
    assert_eq!(run.events.len(), 2);
    match &run.events[0] {
        Event::Failed { reply, temporary } => {
            assert!(*temporary);
            assert_eq!(reply.source, ReplySource::Local);
            assert_eq!(
                reply.text,
                "4.7.4 TLS required by policy but STARTTLS not offered by the server"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(run.events[1], Event::Closed);
}

#[test]
fn starttls_refused_when_required_fails_and_when_opportunistic_continues() {
    let ehlo = b"250-mx.test\r\n250 STARTTLS\r\n";
    let required = drive_all_splits(
        config(TlsPolicy::Required),
        &[GREETING, ehlo, b"454 4.7.0 TLS not available\r\n"],
        vec![],
    );
    assert!(is_failed_closed(&required.events, true));
    let opportunistic = drive_all_splits(
        config(TlsPolicy::Opportunistic),
        &[
            GREETING,
            ehlo,
            b"454 4.7.0 TLS not available\r\n",
            b"221 bye\r\n",
        ],
        vec![],
    );
    assert_eq!(
        opportunistic.wire(),
        "EHLO out.volley.test\r\nSTARTTLS\r\nQUIT\r\n"
    );
    assert_eq!(opportunistic.events, [Event::Ready, Event::Closed]);
}

#[test]
fn starttls_then_ehlo_again() {
    let run = drive_all_splits(
        config(TlsPolicy::Opportunistic),
        &[
            GREETING,
            b"250-mx.test\r\n250-STARTTLS\r\n250 SIZE 10\r\n",
            b"220 2.0.0 go ahead\r\n",
            b"250-mx.test\r\n250 PIPELINING\r\n",
            b"250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 ok\r\n",
            b"221 bye\r\n",
        ],
        vec![tx("a@src.test", &["b@mx.test"], b"x\r\n")],
    );
    assert_eq!(
        run.wire(),
        "EHLO out.volley.test\r\nSTARTTLS\r\n<TLS>EHLO out.volley.test\r\n\
         MAIL FROM:<a@src.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
        "capabilities from before TLS (SIZE) are forgotten"
    );
    assert_eq!(run.events[0], Event::NeedTls);
    assert_eq!(codes(&run.results()[0]), [250]);
}

#[test]
fn requiretls_goes_only_over_verified_tls_to_a_server_offering_it() {
    let secured = |offer: &[u8], verified: bool| {
        let mut cfg = config(TlsPolicy::Required);
        cfg.tls_verified = verified;
        let mut message = tx("a@src.test", &["b@mx.test"], b"x\r\n");
        message.0.requiretls = true;
        let ehlo_after: &'static [u8] = Box::leak(offer.to_vec().into_boxed_slice());
        drive_all_splits(
            cfg,
            &[
                GREETING,
                b"250-mx.test\r\n250 STARTTLS\r\n",
                b"220 2.0.0 go ahead\r\n",
                ehlo_after,
                b"250 ok\r\n250 ok\r\n354 go\r\n",
                b"250 ok\r\n",
                b"221 bye\r\n",
            ],
            vec![message],
        )
    };
    let run = secured(b"250-mx.test\r\n250-REQUIRETLS\r\n250 PIPELINING\r\n", true);
    assert!(
        run.wire().contains("MAIL FROM:<a@src.test> REQUIRETLS\r\n"),
        "{}",
        run.wire()
    );
    assert_eq!(codes(&run.results()[0]), [250]);
    for (offer, verified, why) in [
        (
            &b"250-mx.test\r\n250 PIPELINING\r\n"[..],
            true,
            "does not offer REQUIRETLS",
        ),
        (
            &b"250-mx.test\r\n250-REQUIRETLS\r\n250 PIPELINING\r\n"[..],
            false,
            "no such policy",
        ),
    ] {
        let mut cfg = config(TlsPolicy::Required);
        cfg.tls_verified = verified;
        let mut message = tx("a@src.test", &["b@mx.test"], b"x\r\n");
        message.0.requiretls = true;
        let mut d = Driver::new(cfg, vec![message]);
        d.feed(GREETING);
        d.feed(b"250-mx.test\r\n250 STARTTLS\r\n");
        d.feed(b"220 go\r\n");
        d.feed(offer);
        let results = d.run.results();
        let reply = &results[0][0].reply;
        assert_eq!(reply.code, 550, "{why}");
        assert!(
            reply.text.starts_with("5.7.10 REQUIRETLS"),
            "{}",
            reply.text
        );
        assert!(reply.text.contains(why), "{}", reply.text);
        assert!(!d.run.wire().contains("MAIL"), "nothing sent");
    }
}

#[test]
fn starttls_injection_is_refused() {
    let mut d = Driver::new(config(TlsPolicy::Opportunistic), vec![]);
    d.feed(GREETING);
    d.feed(b"250-mx.test\r\n250 STARTTLS\r\n");
    d.feed(b"220 go\r\n250-injected\r\n");
    assert!(is_failed_closed(&d.run.events, true));
    assert!(!d.run.wire().contains("<TLS>"));

    // Plain text arriving during the handshake is refused as well.
    let mut s = Session::new(config(TlsPolicy::Opportunistic));
    s.handle_input(GREETING);
    s.handle_input(b"250-mx.test\r\n250 STARTTLS\r\n");
    s.handle_input(b"220 go\r\n");
    s.handle_input(b"250 injected\r\n");
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    assert_eq!(events[0], Event::NeedTls);
    assert!(is_failed_closed(&events, true));
}

#[test]
fn helo_fallback_when_ehlo_is_refused() {
    let mut eight_bit = tx("a@src.test", &["b@mx.test"], b"\xe9t\xe9\r\n");
    eight_bit.0.body_type = BodyType::EightBitMime;
    let run = drive_all_splits(
        config(TlsPolicy::Opportunistic),
        &[
            GREETING,
            b"502 5.5.1 command not recognised\r\n",
            b"250 mx.test\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
            b"250 ok\r\n",
            b"221 bye\r\n",
        ],
        vec![eight_bit, tx("a@src.test", &["b@mx.test"], b"x\r\n")],
    );
    assert_eq!(
        run.wire(),
        "EHLO out.volley.test\r\nHELO out.volley.test\r\nMAIL FROM:<a@src.test>\r\n\
         RCPT TO:<b@mx.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n",
        "no ESMTP parameters after HELO"
    );
    let results = run.results();
    assert_eq!(codes(&results[0]), [554]);
    assert_eq!(
        results[0][0].reply.enhanced,
        Some(EnhancedCode::new(5, 6, 3))
    );
    assert_eq!(results[0][0].reply.source, ReplySource::Local);
    assert_eq!(codes(&results[1]), [250]);
}

#[test]
fn local_refusals_send_nothing() {
    let mut big = tx("a@src.test", &["b@mx.test", "c@mx.test"], b"x\r\n");
    big.0.body_bytes = 100_001;
    let mut utf8 = tx("a@src.test", &["b@mx.test"], b"x\r\n");
    utf8.0.smtputf8 = true;
    let mut binary = tx("a@src.test", &["b@mx.test"], b"x\r\n");
    binary.0.body_type = BodyType::BinaryMime;
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[GREETING, EHLO_PIPELINING, b"221 bye\r\n"],
        vec![big, utf8, binary],
    );
    assert_eq!(run.wire(), "EHLO out.volley.test\r\nQUIT\r\n");
    let results = run.results();
    let enhanced: Vec<String> = results
        .iter()
        .map(|r| {
            r[0].reply
                .enhanced
                .map(|e| e.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(enhanced, ["5.3.4", "5.6.7", "5.6.3"]);
    assert_eq!(codes(&results[0]), [552, 552]);
    assert!(
        results
            .iter()
            .flatten()
            .all(|r| r.outcome() == Outcome::Failed)
    );
    assert!(results[0][0].reply.text.contains("100001"));
}

#[test]
fn dsn_and_esmtp_parameters() {
    let ehlo: &[u8] = b"250-mx.test\r\n250-DSN\r\n250-SMTPUTF8\r\n250-8BITMIME\r\n250 SIZE\r\n";
    let (mut t, body) = tx("a@src.test", &["b@mx.test", "c@mx.test"], b"x\r\n");
    t.ret = DsnRet::Headers;
    t.envid = Some("id+1=2 x".into());
    t.body_type = BodyType::EightBitMime;
    t.smtputf8 = true;
    t.recipients[0].notify = DsnNotify {
        unspecified: false,
        never: false,
        success: true,
        failure: true,
        delay: false,
    };
    t.recipients[0].orcpt = Some("rfc822;b+2B@mx.test".into());
    t.recipients[1].notify = DsnNotify {
        unspecified: false,
        never: true,
        success: false,
        failure: false,
        delay: false,
    };
    let run = exchange(
        config(TlsPolicy::Off),
        &[
            GREETING,
            ehlo,
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"250 ok\r\n",
            b"354 go\r\n",
        ],
        vec![(t, body)],
        Split::None,
    );
    assert_eq!(
        run.wire(),
        "EHLO out.volley.test\r\n\
         MAIL FROM:<a@src.test> SIZE=3 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3D2+20x\r\n\
         RCPT TO:<b@mx.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2B@mx.test\r\n\
         RCPT TO:<c@mx.test> NOTIFY=NEVER\r\nDATA\r\nx\r\n.\r\n"
    );
}

#[test]
fn unsafe_addresses_are_never_sent() {
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[
            GREETING,
            EHLO_PIPELINING,
            b"250 ok\r\n250 ok\r\n354 go\r\n",
            b"250 ok\r\n",
            b"221 bye\r\n",
        ],
        vec![
            tx("a@src.test", &["b@mx.test>\r\nRSET", "c@mx.test"], b"x\r\n"),
            tx("a@src\r\n.test", &["b@mx.test"], b"x\r\n"),
        ],
    );
    assert!(!run.wire().contains("RSET"));
    assert!(!run.wire().contains("src\r\n"));
    let results = run.results();
    assert_eq!(codes(&results[0]), [501, 250]);
    assert_eq!(results[0][0].reply.source, ReplySource::Local);
    assert_eq!(
        results[1][0].reply.enhanced,
        Some(EnhancedCode::new(5, 1, 7))
    );
}

#[test]
fn dot_stuffing_on_the_wire() {
    let body = b".starts with dot\r\n..two\r\nmid . dot\r\n.\r\nlast line without crlf";
    let run = exchange(
        config(TlsPolicy::Off),
        &[GREETING, EHLO_PIPELINING, b"250 ok\r\n250 ok\r\n354 go\r\n"],
        vec![tx("a@src.test", &["b@mx.test"], body)],
        Split::None,
    );
    assert!(run.wire().ends_with(
        "DATA\r\n..starts with dot\r\n...two\r\nmid . dot\r\n..\r\nlast line without crlf\r\n.\r\n"
    ));
}

#[test]
fn greeting_refusals() {
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[b"554 5.7.1 no service for you\r\n"],
        vec![],
    );
    assert!(is_failed_closed(&run.events, false));
    assert_eq!(run.wire(), "");
    let run = drive_all_splits(config(TlsPolicy::Off), &[b"421 4.3.2 busy\r\n"], vec![]);
    assert!(is_failed_closed(&run.events, true));
}

#[test]
fn garbage_replies_are_protocol_errors() {
    for garbage in [
        &b"hello there\r\n"[..],
        b"250-mx\r\n251 x\r\n",
        b"999 what\r\n",
        &[0xff; 5000][..],
    ] {
        let run = exchange(
            config(TlsPolicy::Off),
            &[GREETING, EHLO_PIPELINING, garbage],
            vec![tx("a@src.test", &["b@mx.test"], b"x\r\n")],
            Split::None,
        );
        assert_eq!(codes(&run.results()[0]), [421]);
        match &run.events[run.events.len() - 2] {
            Event::Failed { reply, temporary } => {
                assert!(*temporary);
                assert!(reply.text.contains("protocol error"), "{}", reply.text);
            }
            other => panic!("{other:?}"),
        }
    }
    // An unsolicited reply while idle is a protocol error too.
    let mut d = Driver::new(config(TlsPolicy::Off), vec![]);
    d.quit_when_idle = false;
    d.feed(GREETING);
    d.feed(EHLO_PLAIN);
    d.feed(b"250 surprise\r\n");
    assert!(is_failed_closed(&d.run.events, true));
}

#[test]
fn send_when_not_ready_hands_the_transaction_back() {
    let mut s = Session::new(config(TlsPolicy::Off));
    let (t, _) = tx("a@src.test", &["b@mx.test"], b"x\r\n");
    assert_eq!(s.send(t.clone()), Err(NotReady(t)));
}

#[test]
fn random_server_bytes_never_panic() {
    let mut rng = fastrand::Rng::with_seed(42);
    let pieces: [&[u8]; 10] = [
        b"220 x\r\n",
        b"250 ok\r\n",
        b"250-",
        b"354 go\r\n",
        b"421 bye\r\n",
        b"550 no\r\n",
        b"\r\n",
        b"\n",
        b"9",
        b"\xff",
    ];
    for _ in 0..3000 {
        let mut d = Driver::new(
            config(TlsPolicy::Opportunistic),
            vec![tx("a@src.test", &["b@mx.test", "c@mx.test"], b"x\r\n")],
        );
        for _ in 0..rng.usize(0..20) {
            d.feed(pieces[rng.usize(0..pieces.len())]);
            if rng.u8(..) < 20 {
                d.session.on_timeout();
                d.pump();
            }
        }
        d.session.connection_lost();
        d.pump();
        assert_eq!(d.run.events.last(), Some(&Event::Closed));
        assert_eq!(
            d.run.events.iter().filter(|e| **e == Event::Closed).count(),
            1
        );
    }
}

const EHLO_CHUNKING: &[u8] =
    b"250-mx.test hello\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-CHUNKING\r\n250 8BITMIME\r\n";

#[test]
fn chunking_sends_bdat_last_in_the_same_flight_and_the_body_as_stored() {
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[
            GREETING,
            EHLO_CHUNKING,
            b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.0.0 queued as A\r\n",
            b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued as B\r\n",
            b"221 2.0.0 bye\r\n",
        ],
        vec![
            tx(
                "a@src.test",
                &["b@mx.test", "c@mx.test"],
                b"Subject: 1\r\n\r\n.hi\r\n",
            ),
            tx("a@src.test", &["d@mx.test"], b"Subject: 2\r\n\r\nno CRLF"),
        ],
    );
    assert_eq!(
        run.wire(),
        "EHLO out.volley.test\r\n\
         MAIL FROM:<a@src.test> SIZE=19\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<c@mx.test>\r\n\
         BDAT 19 LAST\r\nSubject: 1\r\n\r\n.hi\r\n\
         MAIL FROM:<a@src.test> SIZE=21\r\nRCPT TO:<d@mx.test>\r\nBDAT 21 LAST\r\n\
         Subject: 2\r\n\r\nno CRLF\
         QUIT\r\n"
    );
    let results = run.results();
    assert_eq!(codes(&results[0]), [250, 550]);
    assert_eq!(results[0][0].reply.text, "2.0.0 queued as A");
    assert_eq!(codes(&results[1]), [250]);
    assert_eq!(run.events.last(), Some(&Event::Closed));
}

#[test]
fn refused_bdat_fails_the_accepted_recipients_and_rsets_before_the_next_mail() {
    let run = drive_all_splits(
        config(TlsPolicy::Off),
        &[
            GREETING,
            EHLO_CHUNKING,
            b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n554 5.6.0 content rejected\r\n",
            b"250 2.0.0 reset\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n451 4.3.0 try later\r\n",
            b"250 2.0.0 reset\r\n250 2.1.0 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n",
            b"221 2.0.0 bye\r\n",
        ],
        vec![
            tx("a@src.test", &["b@mx.test"], b"x\r\n"),
            tx("a@src.test", &["c@mx.test"], b"y\r\n"),
            tx("a@src.test", &["d@mx.test"], b"z\r\n"),
        ],
    );
    assert_eq!(
        run.wire(),
        "EHLO out.volley.test\r\n\
         MAIL FROM:<a@src.test> SIZE=3\r\nRCPT TO:<b@mx.test>\r\nBDAT 3 LAST\r\nx\r\n\
         RSET\r\nMAIL FROM:<a@src.test> SIZE=3\r\nRCPT TO:<c@mx.test>\r\nBDAT 3 LAST\r\ny\r\n\
         RSET\r\nMAIL FROM:<a@src.test> SIZE=3\r\nRCPT TO:<d@mx.test>\r\nBDAT 3 LAST\r\nz\r\n\
         QUIT\r\n"
    );
    let results = run.results();
    assert_eq!(results[0][0].outcome(), Outcome::Failed);
    assert_eq!(results[1][0].outcome(), Outcome::Deferred);
    // Refused at RCPT: keeps the RCPT reply, not the BDAT one.
    assert_eq!(results[2][0].reply.text, "5.1.1 no");
    assert!(!run.events.iter().any(|e| matches!(e, Event::Failed { .. })));
}

#[test]
fn chunking_off_or_without_pipelining_uses_data() {
    let mut no_chunking = config(TlsPolicy::Off);
    no_chunking.chunking = false;
    let run = exchange(
        no_chunking,
        &[
            GREETING,
            EHLO_CHUNKING,
            b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n",
            b"250 2.0.0 ok\r\n",
        ],
        vec![tx("a@src.test", &["b@mx.test"], b"x\r\n")],
        Split::None,
    );
    assert!(run.wire().contains("DATA\r\nx\r\n.\r\n"), "{}", run.wire());
    let run = exchange(
        config(TlsPolicy::Off),
        &[
            GREETING,
            b"250-mx.test\r\n250 CHUNKING\r\n",
            b"250 2.1.0 ok\r\n",
            b"250 2.1.5 ok\r\n",
            b"354 go\r\n",
            b"250 2.0.0 ok\r\n",
        ],
        vec![tx("a@src.test", &["b@mx.test"], b"x\r\n")],
        Split::None,
    );
    assert!(run.wire().contains("DATA\r\nx\r\n.\r\n"), "{}", run.wire());
    assert_eq!(codes(&run.results()[0]), [250]);
}

fn pipelining(in_flight: usize) -> SessionConfig {
    let mut c = config(TlsPolicy::Opportunistic);
    c.transactions_in_flight = in_flight;
    c
}

const OK3: &[u8] = b"250 ok\r\n250 ok\r\n250 ok\r\n";

#[test]
fn transactions_in_flight_follow_each_other_without_waiting_for_replies() {
    let txs = vec![
        tx("a@src.test", &["b@mx.test"], b"one\r\n"),
        tx("a@src.test", &["c@mx.test"], b"two\r\n"),
        tx("a@src.test", &["d@mx.test"], b"three\r\n"),
    ];
    // Greeting and EHLO only: the first two transactions are on the wire, the third waits.
    let early = exchange(
        pipelining(2),
        &[GREETING, EHLO_CHUNKING],
        txs.clone(),
        Split::None,
    );
    assert_eq!(
        early.wire(),
        "EHLO out.volley.test\r\n\
         MAIL FROM:<a@src.test> SIZE=5\r\nRCPT TO:<b@mx.test>\r\nBDAT 5 LAST\r\none\r\n\
         RSET\r\nMAIL FROM:<a@src.test> SIZE=5\r\nRCPT TO:<c@mx.test>\r\nBDAT 5 LAST\r\ntwo\r\n"
    );
    let run = drive_all_splits(
        pipelining(2),
        &[
            GREETING,
            EHLO_CHUNKING,
            OK3,
            b"250 ok\r\n250 ok\r\n250 ok\r\n250 2.0.0 two\r\n",
            b"250 ok\r\n250 ok\r\n250 ok\r\n250 2.0.0 three\r\n",
            b"221 bye\r\n",
        ],
        txs,
    );
    assert!(run.wire().ends_with(
        "RSET\r\nMAIL FROM:<a@src.test> SIZE=7\r\nRCPT TO:<d@mx.test>\r\nBDAT 7 LAST\r\nthree\r\n\
         QUIT\r\n"
    ));
    let results = run.results();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| codes(r) == [250]));
    assert_eq!(results[1][0].reply.text, "2.0.0 two");
    assert_eq!(results[2][0].reply.text, "2.0.0 three");
    assert_eq!(results[2][0].recipient.address, "d@mx.test");
    assert!(matches!(run.events.last(), Some(Event::Closed)));
}

#[test]
fn one_transaction_in_flight_waits_for_each_reply() {
    let txs = vec![
        tx("a@src.test", &["b@mx.test"], b"one\r\n"),
        tx("a@src.test", &["c@mx.test"], b"two\r\n"),
    ];
    let early = exchange(pipelining(1), &[GREETING, EHLO_CHUNKING], txs, Split::None);
    assert!(!early.events.contains(&Event::CanPipeline));
    assert_eq!(
        early.wire(),
        "EHLO out.volley.test\r\n\
         MAIL FROM:<a@src.test> SIZE=5\r\nRCPT TO:<b@mx.test>\r\nBDAT 5 LAST\r\none\r\n"
    );
}

#[test]
fn a_refused_transaction_leaves_the_one_behind_it_alone() {
    let run = drive_all_splits(
        pipelining(2),
        &[
            GREETING,
            EHLO_CHUNKING,
            // The first: MAIL and RCPT accepted, the chunk refused.
            b"250 ok\r\n250 ok\r\n554 5.6.0 refused\r\n",
            // The second, after its RSET: delivered.
            b"250 ok\r\n250 ok\r\n250 ok\r\n250 2.0.0 two\r\n",
            b"221 bye\r\n",
        ],
        vec![
            tx("a@src.test", &["b@mx.test"], b"one\r\n"),
            tx("a@src.test", &["c@mx.test"], b"two\r\n"),
        ],
    );
    let results = run.results();
    assert_eq!(codes(&results[0]), [554]);
    assert_eq!(codes(&results[1]), [250]);
    // The second's own RSET cleared what the refusal left; none is needed after it.
    assert!(run.wire().contains("one\r\nRSET\r\nMAIL"), "{}", run.wire());
    assert!(run.wire().ends_with("two\r\nQUIT\r\n"), "{}", run.wire());
}

#[test]
fn a_lost_connection_defers_every_transaction_on_the_wire() {
    let mut d = Driver::new(
        pipelining(3),
        vec![
            tx("a@src.test", &["b@mx.test"], b"one\r\n"),
            tx("a@src.test", &["c@mx.test", "d@mx.test"], b"two\r\n"),
        ],
    );
    d.feed(GREETING);
    d.feed(EHLO_CHUNKING);
    d.feed(b"250 ok\r\n");
    d.session.connection_lost();
    d.pump();
    let results = d.run.results();
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .flatten()
            .all(|r| r.outcome() == Outcome::Deferred)
    );
    assert_eq!(results[1].len(), 2);
}

#[test]
fn a_transaction_the_server_cannot_take_waits_until_the_wire_is_empty() {
    let mut utf8 = tx("a@src.test", &["ü@mx.test"], b"two\r\n");
    utf8.0.smtputf8 = true;
    let run = exchange(
        pipelining(2),
        &[GREETING, EHLO_CHUNKING, OK3, b"221 bye\r\n"],
        vec![tx("a@src.test", &["b@mx.test"], b"one\r\n"), utf8],
        Split::None,
    );
    // Handed back by `send_pipelined`, sent when `Ready`: refused locally (no SMTPUTF8), in order.
    let results = run.results();
    assert_eq!(codes(&results[0]), [250]);
    assert_eq!(codes(&results[1]), [553]);
    assert!(!run.wire().contains("RSET"), "{}", run.wire());
}
