//! Deadlines for whole stages, not single reads: slowloris commands and bodies, and over-long
//! lines answered before their end.

use super::*;

#[test]
fn timeout_closes() {
    let mut s = session();
    let (_, _) = run(&mut s, "EHLO c\r\n");
    let deadline = t0() + Duration::from_secs(300);
    assert_eq!(s.poll_timeout(), Some(deadline));
    assert_eq!(s.handle_timeout(deadline - Duration::from_millis(1)), None);
    assert!(!s.is_closed());
    assert_eq!(s.handle_timeout(deadline), Some(TimeoutStage::Command));
    let mut out = Vec::new();
    s.take_output(&mut out);
    assert_eq!(out, b"421 4.4.2 mx.test command timeout\r\n");
    assert_eq!(s.poll_event(), Some(Event::Close));
    assert!(s.is_closed());
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.handle_timeout(deadline), None);
    assert_eq!(s.poll_event(), None);

    let mut s = session();
    s.receive(b"EHLO c\r\nMAIL FROM:<>\r\n", t0());
    s.close_with(Reply::SHUTTING_DOWN);
    let mut out = Vec::new();
    s.take_output(&mut out);
    assert!(
        String::from_utf8(out)
            .unwrap()
            .ends_with("250 DSN\r\n421 4.3.2 Service shutting down, closing connection\r\n")
    );
    assert!(matches!(s.poll_event(), Some(Event::Mail { .. })));
    assert_eq!(s.poll_event(), Some(Event::Close));
    s.mail_result(Ok(()), t0());
    assert!(s.is_closed());
}

fn secs(n: u64) -> Instant {
    t0() + Duration::from_secs(n)
}

fn output(s: &mut Session) -> String {
    let mut out = Vec::new();
    s.take_output(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn trickled_command_is_cut_at_the_command_deadline() {
    let mut s = session();
    output(&mut s);
    // One octet every 99 s: no single read is ever late, the line is.
    for (i, byte) in b"EHL".iter().enumerate() {
        s.receive(std::slice::from_ref(byte), secs(99 * (i as u64 + 1)));
        assert_eq!(s.poll_timeout(), Some(secs(300)));
        assert_eq!(s.handle_timeout(secs(99 * (i as u64 + 1))), None);
    }
    assert_eq!(s.handle_timeout(secs(300)), Some(TimeoutStage::Command));
    assert_eq!(output(&mut s), "421 4.4.2 mx.test command timeout\r\n");
    assert!(s.is_closed());
}

#[test]
fn a_complete_command_restarts_the_command_deadline() {
    let mut s = session();
    s.receive(b"EHLO c\r\nNO", secs(250));
    assert_eq!(s.poll_timeout(), Some(secs(550)));
    s.receive(b"OP\r\n", secs(500));
    assert_eq!(s.poll_timeout(), Some(secs(800)));
    assert_eq!(s.handle_timeout(secs(799)), None);
}

#[test]
fn no_deadline_while_the_driver_answers() {
    let mut s = session();
    s.receive(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n", secs(1));
    assert!(matches!(s.poll_event(), Some(Event::Mail { .. })));
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.handle_timeout(secs(10_000)), None);
    s.mail_result(Ok(()), secs(10_000));
    assert_eq!(s.poll_timeout(), Some(secs(10_300)));
}

#[test]
fn trickled_body_is_cut_at_the_data_deadline() {
    let mut s = session();
    let mut d = Driver::default();
    d.feed(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
    );
    s.receive(b"DATA\r\n", secs(10));
    assert_eq!(s.poll_timeout(), Some(secs(610)));
    // A line every 200 s: each read is on time, the body is not.
    for n in 1..=3 {
        s.receive(b"more\r\n", secs(10 + 200 * n - 1));
        assert_eq!(s.poll_timeout(), Some(secs(610)));
    }
    output(&mut s);
    assert_eq!(s.handle_timeout(secs(610)), Some(TimeoutStage::Data));
    assert_eq!(output(&mut s), "421 4.4.2 mx.test data timeout\r\n");
    // After the end of the body, the command deadline is back.
    let mut s = session();
    d.feed(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
    );
    s.receive(b"x\r\n.\r\n", secs(20));
    assert!(matches!(s.poll_event(), Some(Event::Message { .. })));
    s.message_result(Ok("Q".into()), secs(21));
    assert_eq!(s.poll_timeout(), Some(secs(321)));
}

#[test]
fn bdat_body_deadline_spans_the_chunks() {
    let cfg = ServerConfig {
        data_timeout: Duration::from_secs(60),
        ..config()
    };
    let mut s = session_with(cfg, true, false);
    let mut d = Driver::default();
    d.feed(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
    );
    s.receive(b"BDAT 4\r\nab", secs(5));
    assert_eq!(
        s.poll_timeout(),
        Some(secs(65)),
        "the chunk: the body deadline"
    );
    s.receive(b"\r\n", secs(30));
    // Between chunks: the earlier of the next command's deadline and the body's.
    assert_eq!(s.poll_timeout(), Some(secs(65)));
    s.receive(b"BDAT 2 LA", secs(40));
    output(&mut s);
    assert_eq!(s.handle_timeout(secs(65)), Some(TimeoutStage::Data));
    assert_eq!(output(&mut s), "421 4.4.2 mx.test data timeout\r\n");
}

#[test]
fn refused_bdat_chunk_is_bounded_by_the_command_deadline() {
    let mut s = session();
    // BDAT without MAIL: the chunk is read and dropped, then refused (RFC 3030 section 3).
    s.receive(b"EHLO c\r\nBDAT 1000000\r\nxx", secs(7));
    assert_eq!(s.poll_timeout(), Some(secs(307)));
    s.receive(&vec![b'x'; 999_998], secs(8));
    assert!(output(&mut s).ends_with("503 5.5.1 Send MAIL first\r\n"));
}

#[test]
fn over_long_line_is_answered_before_its_end() {
    let mut s = session();
    output(&mut s);
    let long = format!("MAIL FROM:<{}", "a".repeat(600));
    s.receive(&long.as_bytes()[..300], secs(1));
    assert_eq!(output(&mut s), "", "300 octets may still be a command");
    s.receive(&long.as_bytes()[300..], secs(2));
    assert_eq!(
        output(&mut s),
        "500 5.5.2 Command line too long\r\n",
        "answered without a CRLF"
    );
    // The rest of the line is dropped without another reply, within the same deadline.
    s.receive(b"aaaa", secs(3));
    assert_eq!(s.poll_timeout(), Some(secs(300)));
    s.receive(b"aaa>\r\nNOOP\r\n", secs(4));
    assert_eq!(output(&mut s), "250 2.0.0 Ok\r\n");
    assert_eq!(s.error_count(), 1);
    // Over-long AUTH responses too, and the session is back in command state.
    let cfg = ServerConfig {
        auth_enabled: true,
        ..config()
    };
    let mut s = session_with(cfg, false, true);
    s.receive(b"EHLO c\r\nAUTH PLAIN\r\n", secs(1));
    output(&mut s);
    s.receive(&vec![b'A'; MAX_AUTH_LINE_BYTES], secs(2));
    assert_eq!(output(&mut s), "500 5.5.6 Line too long\r\n");
    s.receive(b"AAAA\r\nNOOP\r\n", secs(3));
    assert_eq!(output(&mut s), "250 2.0.0 Ok\r\n");
}

#[test]
fn endless_over_long_lines_end_at_max_errors() {
    let mut s = session();
    output(&mut s);
    let junk = vec![b'x'; MAX_COMMAND_LINE_BYTES];
    for _ in 0..20 {
        s.receive(&junk, secs(1));
        s.receive(b"\n", secs(1));
    }
    let out = output(&mut s);
    assert_eq!(out.matches("500 5.5.2").count(), 10);
    assert!(out.ends_with("421 4.7.0 mx.test Too many errors, closing connection\r\n"));
    assert!(s.is_closed());
}
