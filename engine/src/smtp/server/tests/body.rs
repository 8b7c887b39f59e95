//! The message body: DATA and BDAT, their rules (SMTP smuggling, NUL, line length, size) and
//! the refusals reported to the driver.

use super::*;

/// A transaction up to the 354, then `body`; returns the replies after the 354 and the events.
fn data_session(body: &[u8]) -> (String, Vec<Event>, Session) {
    let mut s = session();
    let mut d = Driver::default();
    d.feed(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
    );
    assert!(
        d.text()
            .ends_with("354 End data with <CR><LF>.<CR><LF>\r\n")
    );
    assert_eq!(s.poll_timeout(), Some(t0() + Duration::from_secs(600)));
    d.output.clear();
    d.events.clear();
    d.feed(&mut s, body);
    (d.text(), d.events, s)
}

#[test]
fn smuggling_sequences_never_end_data() {
    for evil in ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n", "\r\n.\r"] {
        let body = format!(
            "Subject: x\r\n\r\nhi{evil}MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<v@d.example>\r\nDATA\r\nevil\r\n.\r\nNOOP\r\n"
        );
        let (out, events, _) = data_session(body.as_bytes());
        assert_eq!(
            replies(&out),
            [
                "550 5.6.11 Message contains bare CR or LF; use CRLF line endings",
                "250 2.0.0 Ok"
            ],
            "{evil:?}"
        );
        assert!(
            events
                .iter()
                .all(|e| !matches!(e, Event::Message { .. } | Event::Mail { .. })),
            "{evil:?}"
        );
    }
}

#[test]
fn data_line_too_long_is_refused_after_the_end() {
    let mut body = "x".repeat(1200);
    body.push_str("\r\n.\r\nNOOP\r\n");
    let (out, events, _) = data_session(body.as_bytes());
    assert_eq!(replies(&out), ["500 5.5.6 Line too long", "250 2.0.0 Ok"]);
    assert!(events.iter().all(|e| !matches!(e, Event::Message { .. })));
}

#[test]
fn data_over_max_size_is_refused_after_the_end() {
    let mut body = "0123456789012345678\r\n".repeat(600);
    body.push_str(".\r\nNOOP\r\n");
    let (out, events, s) = data_session(body.as_bytes());
    assert_eq!(
        replies(&out),
        [
            "552 5.3.4 Message size exceeds fixed maximum message size",
            "250 2.0.0 Ok"
        ]
    );
    assert!(events.iter().all(|e| !matches!(e, Event::Message { .. })));
    assert_eq!(s.poll_timeout(), Some(t0() + Duration::from_secs(300)));
}

#[test]
fn bdat_chunks_are_raw() {
    let mut s = session();
    let (out, events) = run(
        &mut s,
        "EHLO c\r\nMAIL FROM:<a@b.example> BODY=BINARYMIME\r\nRCPT TO:<c@d.example>\r\n\
         BDAT 6\r\n..x\r\nyBDAT 0\r\nBDAT 5 LAST\r\n\n.\r\n\x00NOOP\r\n",
    );
    assert_eq!(
        replies(&out)[9..],
        [
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "250 2.0.0 6 octets received",
            "250 2.0.0 0 octets received",
            "250 2.0.0 Ok: queued as Q0",
            "250 2.0.0 Ok"
        ]
    );
    let Some(Event::Message { envelope, body }) = events.get(1) else {
        panic!("{events:?}")
    };
    assert_eq!(body, b"..x\r\ny\n.\r\n\x00");
    assert_eq!(envelope.body_type, BodyType::BinaryMime);
}

#[test]
fn bdat_refusals_still_consume_the_chunk() {
    let mut s = session();
    let (out, events) = run(
        &mut s,
        "EHLO c\r\nBDAT 6 LAST\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\nBDAT 4\r\nQUITRCPT TO:<c@d.example>\r\n\
         BDAT 1\r\nxDATA\r\nBDAT 0 LAST\r\nMAIL FROM:<>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n.\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "250 DSN",
            "503 5.5.1",
            "250 2.1.0",
            "554 5.5.1",
            "250 2.1.5",
            "250 2.0.0",
            "503 5.5.1",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5",
            "354 End",
            "250 2.0.0"
        ]
    );
    assert!(out.contains("DATA not allowed"));
    let bodies: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message { body, .. } => Some(body.as_slice()),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, [&b"x"[..], b""]);
    // BINARYMIME forbids DATA.
    let mut s = session();
    let (out, _) = run(
        &mut s,
        "EHLO c\r\nMAIL FROM:<> BODY=BINARYMIME\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
    );
    assert_eq!(codes(&out)[3], "503 5.5.1");
}

#[test]
fn bdat_over_max_size() {
    let mut s = session();
    // 100-octet lines: the text rules hold, only the size is at stake.
    let line = format!("{}\r\n", "x".repeat(98));
    let big = line.repeat(60);
    let huge = line.repeat(200);
    let input = format!(
        "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<c@d.example>\r\nBDAT 6000\r\n{big}BDAT 6000 LAST\r\n{big}NOOP\r\n\
         MAIL FROM:<>\r\nRCPT TO:<c@d.example>\r\nBDAT 20000 LAST\r\n{huge}NOOP\r\n"
    );
    let (out, events) = run(&mut s, &input);
    assert_eq!(
        codes(&out),
        [
            "250 DSN",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "552 5.3.4",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5",
            "552 5.3.4",
            "250 2.0.0"
        ]
    );
    assert!(events.iter().all(|e| !matches!(e, Event::Message { .. })));
}

/// Runs one BDAT transaction with `chunks` (each sent as `BDAT <n>`, the last with LAST); returns
/// the reply codes after RCPT and the messages handed over.
fn bdat_session(chunks: &[&[u8]], body_param: &str) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut input =
        format!("EHLO c\r\nMAIL FROM:<a@b.example>{body_param}\r\nRCPT TO:<c@d.example>\r\n")
            .into_bytes();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() { " LAST" } else { "" };
        input.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
        input.extend_from_slice(chunk);
    }
    input.extend_from_slice(b"NOOP\r\n");
    let mut s = session();
    s.take_output(&mut Vec::new());
    let mut driver = Driver::default();
    driver.feed(&mut s, &input);
    let codes = codes(&driver.text()).split_off(3);
    let bodies = driver
        .events
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { body, .. } => Some(body),
            _ => None,
        })
        .collect();
    (codes, bodies)
}

#[test]
fn bdat_smuggling_attack_is_refused_like_data() {
    let attack: &[u8] = b"Subject: hi\r\n\r\nx\r.\r\nMAIL FROM:<ceo@bank.example>\r\nRCPT TO:<v@x.example>\r\nDATA\r\nspoofed\r\n";
    let (codes, bodies) = bdat_session(&[attack], "");
    assert_eq!(codes, ["550 5.6.11", "250 2.0.0"]);
    assert!(bodies.is_empty());
    // The same body through DATA earns the same reply.
    let mut data = attack.to_vec();
    data.extend_from_slice(b".\r\n");
    let (out, events, _) = data_session(&data);
    assert!(out.contains("550 5.6.11"), "{out}");
    assert!(!events.iter().any(|e| matches!(e, Event::Message { .. })));
    // Bare LF, a bare CR at a chunk's end, a body that ends in a bare CR.
    for chunks in [
        &[&b"a\nb\r\n"[..]][..],
        &[&b"a\r"[..], b"b\r\n"],
        &[&b"a\r\n"[..], b"b\r"],
    ] {
        let (codes, bodies) = bdat_session(chunks, "");
        assert_eq!(codes.last().map(String::as_str), Some("250 2.0.0"));
        assert!(
            codes.contains(&"550 5.6.11".to_string()),
            "{chunks:?}: {codes:?}"
        );
        assert!(bodies.is_empty());
    }
}

#[test]
fn bdat_refusal_ends_the_transaction_at_the_chunk() {
    // The first chunk breaks the rule: refused at once; the next chunk finds no transaction.
    let (codes, bodies) = bdat_session(&[b"a\nb\r\n", b"ok\r\n"], "");
    assert_eq!(codes, ["550 5.6.11", "503 5.5.1", "250 2.0.0"]);
    assert!(bodies.is_empty());
}

#[test]
fn crlf_split_across_chunks_is_fine() {
    let (codes, bodies) = bdat_session(&[b"a\r", b"\nb\r\n"], "");
    assert_eq!(codes, ["250 2.0.0", "250 2.0.0", "250 2.0.0"]);
    assert_eq!(bodies, [b"a\r\nb\r\n".to_vec()]);
}

#[test]
fn nul_octets_are_refused_in_text_bodies() {
    let (out, events, _) = data_session(b"a\x00b\r\n.\r\n");
    assert!(
        out.contains("550 5.6.0 Message contains NUL octets"),
        "{out}"
    );
    assert!(!events.iter().any(|e| matches!(e, Event::Message { .. })));
    let (codes, bodies) = bdat_session(&[b"a\x00b\r\n"], "");
    assert_eq!(codes, ["550 5.6.0", "250 2.0.0"]);
    assert!(bodies.is_empty());
    // BINARYMIME bodies may hold any octet (RFC 3030 section 3).
    let (codes, bodies) = bdat_session(&[b"a\x00\rb\n"], " BODY=BINARYMIME");
    assert_eq!(codes, ["250 2.0.0", "250 2.0.0"]);
    assert_eq!(bodies, [b"a\x00\rb\n".to_vec()]);
}

#[test]
fn bdat_text_lines_are_limited_like_data() {
    let mut long = vec![b'x'; 999];
    long.extend_from_slice(b"\r\n");
    let (codes, _) = bdat_session(&[&long], "");
    assert_eq!(codes, ["500 5.5.6", "250 2.0.0"]);
    let ok = &long[1..];
    let (codes, bodies) = bdat_session(&[ok], "");
    assert_eq!(codes, ["250 2.0.0", "250 2.0.0"]);
    assert_eq!(bodies.len(), 1);
}

#[test]
fn refused_messages_are_reported_to_the_driver() {
    let refused = |events: &[Event]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::MessageRefused { reply } => Some(reply.to_string()),
                _ => None,
            })
            .collect()
    };
    let (_, events, _) = data_session(b"a\nb\r\n.\r\n");
    assert_eq!(refused(&events).len(), 1);
    assert!(refused(&events)[0].starts_with("550 5.6.11"), "{events:?}");
    let (_, events, _) = data_session(&[&vec![b'x'; 20_000][..], b"\r\n.\r\n"].concat());
    assert_eq!(refused(&events).len(), 1, "too big (and too long a line)");
    let (_, events, _) = data_session(b"fine\r\n.\r\n");
    assert!(refused(&events).is_empty());
    // BDAT: the chunk that breaks a rule; a chunk without a transaction is no message.
    let mut s = session();
    let (_, events) = run(
        &mut s,
        "EHLO c\r\nBDAT 3\r\nabcMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 3 LAST\r\na\nb",
    );
    assert_eq!(refused(&events).len(), 1, "{events:?}");
    assert!(refused(&events)[0].starts_with("550 5.6.11"));
}
