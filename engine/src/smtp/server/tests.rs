//! Unit tests of the receiving session, driven in memory.

use std::time::Instant;

use super::*;
use crate::envelope::{BodyType, DsnRet};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

mod body;
mod budget;
mod deadlines;

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn config() -> ServerConfig {
    ServerConfig {
        hostname: "mx.test".into(),
        max_message_bytes: 10_000,
        max_recipients: 5,
        max_errors: 10,
        ..ServerConfig::default()
    }
}

fn session_with(config: ServerConfig, relay_allowed: bool, tls: bool) -> Session {
    Session::new(
        Rc::new(config),
        PeerInfo {
            ip: LOCAL,
            relay_allowed,
        },
        tls,
        t0(),
    )
}

/// The fake clock's origin: every test time is `t0()` plus a duration.
fn t0() -> Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn session() -> Session {
    session_with(config(), true, false)
}

/// A driver that accepts everything: AUTH as the username, MAIL, messages as `Q<n>`, TLS.
#[derive(Default)]
struct Driver {
    output: Vec<u8>,
    events: Vec<Event>,
}

impl Driver {
    fn feed(&mut self, session: &mut Session, input: &[u8]) {
        session.receive(input, t0());
        self.answer(session);
    }

    fn answer(&mut self, session: &mut Session) {
        while let Some(event) = session.poll_event() {
            match &event {
                Event::Auth { username, .. } => session.auth_result(Ok(username.clone()), t0()),
                Event::Mail { .. } => session.mail_result(Ok(()), t0()),
                Event::Recipient { address } => session.rcpt_result(
                    if address.starts_with("suppressed") {
                        Err(Reply::RECIPIENT_SUPPRESSED)
                    } else {
                        Ok(())
                    },
                    t0(),
                ),
                Event::Message { .. } => {
                    let n = self
                        .events
                        .iter()
                        .filter(|e| matches!(e, Event::Message { .. }))
                        .count();
                    session.message_result(Ok(format!("Q{n}")), t0());
                }
                Event::StartTls => session.tls_established(t0()),
                Event::MessageRefused { .. } | Event::Close => {}
            }
            self.events.push(event);
        }
        session.take_output(&mut self.output);
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output).into_owned()
    }
}

/// Runs `input` in one piece through a fresh session; returns the output after the greeting.
fn run(session: &mut Session, input: &str) -> (String, Vec<Event>) {
    let mut driver = Driver::default();
    session.take_output(&mut Vec::new());
    driver.feed(session, input.as_bytes());
    (driver.text(), driver.events)
}

fn replies(output: &str) -> Vec<&str> {
    output.split("\r\n").filter(|l| !l.is_empty()).collect()
}

/// The reply lines that are not EHLO continuation lines, just code and enhanced code.
fn codes(output: &str) -> Vec<String> {
    replies(output)
        .into_iter()
        .filter(|l| !l.starts_with("250-"))
        .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

const PIPELINED: &str = "EHLO client.example\r\n\
    MAIL FROM:<sender@example.org> SIZE=100 BODY=8BITMIME\r\n\
    RCPT TO:<one@example.net>\r\n\
    RCPT TO:<two@example.net> NOTIFY=SUCCESS,FAILURE\r\n\
    DATA\r\n\
    Subject: dots\r\n\
    \r\n\
    ..leading dot\r\n\
    .\r\n\
    QUIT\r\n";

#[test]
fn greeting() {
    let mut s = session();
    let mut out = Vec::new();
    s.take_output(&mut out);
    assert_eq!(out, b"220 mx.test ESMTP Volley\r\n");
    assert!(!s.is_closed());
    assert!(s.wants_input());
    assert_eq!(s.poll_timeout(), Some(t0() + Duration::from_secs(300)));
}

#[test]
fn full_pipelined_session() {
    let mut s = session();
    let (out, events) = run(&mut s, PIPELINED);
    assert_eq!(
        codes(&out),
        [
            "250 DSN",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "354 End",
            "250 2.0.0",
            "221 2.0.0"
        ]
    );
    assert!(out.contains("250 2.0.0 Ok: queued as Q0\r\n"));
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[0],
        Event::Mail {
            sender: "sender@example.org".into(),
            size: Some(100)
        }
    );
    let Event::Message { envelope, body } = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(body, b"Subject: dots\r\n\r\n.leading dot\r\n");
    assert_eq!(envelope.sender, "sender@example.org");
    assert_eq!(envelope.body_type, BodyType::EightBitMime);
    assert_eq!(envelope.recipients.len(), 2);
    assert_eq!(envelope.recipients[0], Recipient::new("one@example.net"));
    assert!(envelope.recipients[1].notify.wants_success());
    assert_eq!(envelope.customer, "");
    assert_eq!(envelope.received_at_s, 0);
    assert_eq!(events[2], Event::Close);
    assert!(s.is_closed());
    assert_eq!(s.helo_name(), Some("client.example"));
    assert_eq!(s.protocol(), "ESMTP");
}

#[test]
fn every_split_gives_the_same_output_and_events() {
    let input = PIPELINED.as_bytes();
    let whole = {
        let mut s = session();
        let mut d = Driver::default();
        d.feed(&mut s, input);
        (d.output, d.events)
    };
    for split in 0..=input.len() {
        let mut s = session();
        let mut d = Driver::default();
        d.feed(&mut s, &input[..split]);
        d.feed(&mut s, &input[split..]);
        assert_eq!(
            (&d.output, &d.events),
            (&whole.0, &whole.1),
            "split at {split}"
        );
    }
    for split in 0..input.len() {
        // Three pieces: every split point paired with a second one further on.
        for second in (split..=input.len()).step_by(7) {
            let mut s = session();
            let mut d = Driver::default();
            d.feed(&mut s, &input[..split]);
            d.feed(&mut s, &input[split..second]);
            d.feed(&mut s, &input[second..]);
            assert_eq!(d.output, whole.0, "splits at {split}, {second}");
        }
    }
    let mut s = session();
    let mut d = Driver::default();
    for byte in input {
        d.feed(&mut s, std::slice::from_ref(byte));
    }
    assert_eq!((d.output, d.events), whole);
}

#[test]
fn replies_wait_for_the_driver_answer() {
    let mut s = session();
    s.take_output(&mut Vec::new());
    s.receive(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nNOOP\r\n",
        t0(),
    );
    let mut out = Vec::new();
    s.take_output(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("250 DSN\r\n"), "{text}");
    assert!(!s.wants_input());
    // More input while waiting is buffered, not processed.
    s.receive(b"RSET\r\n", t0());
    assert_eq!(
        s.poll_event(),
        Some(Event::Mail {
            sender: "a@b.example".into(),
            size: None
        })
    );
    assert_eq!(s.poll_event(), None);
    let mut out = Vec::new();
    s.take_output(&mut out);
    assert!(out.is_empty());
    s.mail_result(Ok(()), t0());
    let mut out = Vec::new();
    s.take_output(&mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"
    );
    assert!(s.wants_input());
}

#[test]
fn mail_refused_by_the_driver() {
    let mut s = session();
    s.receive(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
        t0(),
    );
    assert!(matches!(s.poll_event(), Some(Event::Mail { .. })));
    s.mail_result(Err(Reply::INSUFFICIENT_STORAGE), t0());
    let mut out = Vec::new();
    s.take_output(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.ends_with("452 4.3.1 Insufficient system storage\r\n503 5.5.1 Send MAIL first\r\n"),
        "{text}"
    );
    // Answers to events that are not pending are ignored.
    s.mail_result(Ok(()), t0());
    s.message_result(Ok("X".into()), t0());
    s.auth_result(Ok("x".into()), t0());
    s.tls_established(t0());
    let mut out = Vec::new();
    s.take_output(&mut out);
    assert!(out.is_empty());
    assert!(!s.tls_active());
}

#[test]
fn message_refused_by_the_driver() {
    let mut s = session();
    s.receive(b"EHLO c\r\nMAIL FROM:<>\r\n", t0());
    s.poll_event();
    s.mail_result(Ok(()), t0());
    s.receive(
        b"RCPT TO:<c@d.example>\r\nDATA\r\nhi\r\n.\r\nRCPT TO:<x@y.example>\r\n",
        t0(),
    );
    let Some(Event::Message { envelope, body }) = s.poll_event() else {
        panic!()
    };
    assert_eq!(envelope.sender, "");
    assert_eq!(body, b"hi\r\n");
    s.message_result(Err(Reply::LOCAL_ERROR), t0());
    let mut out = Vec::new();
    s.take_output(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n451 4.3.0 Local error in processing\r\n503 5.5.1 Send MAIL first\r\n"), "{text}");
    assert_eq!(s.error_count(), 1, "driver refusals are not counted");
}

#[test]
fn simple_commands() {
    let mut s = session();
    let (out, events) = run(
        &mut s,
        "NOOP\r\nVRFY root\r\nHELP\r\nEXPN staff\r\nFOO\r\nRSET\r\nRSET now\r\nQUIT\r\nNOOP\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "250 2.0.0",
            "252 2.5.0",
            "214 2.0.0",
            "502 5.5.1",
            "500 5.5.1",
            "250 2.0.0",
            "501 5.5.4",
            "221 2.0.0"
        ]
    );
    assert_eq!(events, [Event::Close]);
    assert!(s.is_closed());
    // After close, input is ignored.
    s.receive(b"NOOP\r\n", t0());
    assert_eq!(s.poll_event(), None);
}

#[test]
fn ehlo_advertises_extensions() {
    let mut s = session();
    let (out, _) = run(&mut s, "EHLO c\r\n");
    assert_eq!(
        out,
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-BINARYMIME\r\n\
         250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 DSN\r\n"
    );
    let tls_config = ServerConfig {
        starttls_available: true,
        auth_enabled: true,
        ..config()
    };
    let mut s = session_with(tls_config.clone(), true, false);
    let (out, _) = run(&mut s, "EHLO c\r\n");
    assert!(out.ends_with("250-DSN\r\n250 STARTTLS\r\n"), "{out}");
    assert!(!out.contains("AUTH"));
    let mut s = session_with(tls_config, true, true);
    let (out, _) = run(&mut s, "EHLO c\r\n");
    assert!(
        out.ends_with("250-DSN\r\n250-REQUIRETLS\r\n250 AUTH PLAIN LOGIN\r\n"),
        "{out}"
    );
    assert!(!out.contains("STARTTLS"));
    assert_eq!(s.protocol(), "ESMTPS");
}

#[test]
fn requiretls_only_over_tls() {
    let mut plain = session();
    let (out, _) = run(
        &mut plain,
        "EHLO c\r\nMAIL FROM:<a@b.example> REQUIRETLS\r\n",
    );
    assert!(
        !out.contains("REQUIRETLS\r\n250"),
        "not offered in clear: {out}"
    );
    assert!(
        out.ends_with("530 5.7.10 REQUIRETLS is only accepted over TLS\r\n"),
        "{out}"
    );
    let mut secured = session_with(config(), true, true);
    let (out, events) = run(
        &mut secured,
        "EHLO c\r\nMAIL FROM:<a@b.example> REQUIRETLS\r\nRCPT TO:<x@d.example>\r\nDATA\r\n\
         Subject: s\r\n\r\nbody\r\n.\r\n",
    );
    assert!(out.contains("250 REQUIRETLS\r\n"), "{out}");
    let envelope = events
        .iter()
        .find_map(|e| match e {
            Event::Message { envelope, .. } => Some(envelope.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no message: {out}"));
    assert!(envelope.requiretls);
}

#[test]
fn helo_and_protocol_names() {
    let mut s = session();
    assert_eq!(s.protocol(), "SMTP");
    let (out, _) = run(&mut s, "HELO old.example\r\n");
    assert_eq!(out, "250 mx.test\r\n");
    assert_eq!(s.protocol(), "SMTP");
    assert_eq!(s.helo_name(), Some("old.example"));
    // ESMTP parameters need EHLO.
    let (out, _) = run(
        &mut s,
        "MAIL FROM:<a@b.example> SIZE=10\r\nMAIL FROM:<a@b.example>\r\n",
    );
    assert_eq!(codes(&out), ["555 5.5.4", "250 2.1.0"]);
    let (out, _) = run(
        &mut s,
        "RCPT TO:<c@d.example> NOTIFY=NEVER\r\nEHLO new\r\nRCPT TO:<c@d.example>\r\n",
    );
    assert_eq!(
        codes(&out),
        ["555 5.5.4", "250 DSN", "503 5.5.1"],
        "EHLO resets the transaction"
    );
    assert_eq!(s.protocol(), "ESMTP");
    let (out, _) = run(&mut s, "EHLO\r\n");
    assert_eq!(codes(&out), ["501 5.5.2"]);
}

#[test]
fn sequence_errors() {
    let mut s = session();
    let (out, _) = run(
        &mut s,
        "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nBDAT 3\r\nabcEHLO c\r\n\
         RCPT TO:<c@d.example>\r\nDATA\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\n\
         DATA\r\nRSET\r\nDATA\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "503 5.5.1",
            "503 5.5.1",
            "503 5.5.1",
            "503 5.5.1",
            "250 DSN",
            "503 5.5.1",
            "503 5.5.1",
            "250 2.1.0",
            "503 5.5.1",
            "554 5.5.1",
            "250 2.0.0",
            "503 5.5.1"
        ]
    );
    assert!(out.contains("503 5.5.1 Send HELO/EHLO first\r\n"));
    assert!(out.contains("503 5.5.1 Sender already specified\r\n"));
    assert!(out.contains("554 5.5.1 No valid recipients\r\n"));
}

#[test]
fn mail_and_rcpt_parameters_fill_the_envelope() {
    let mut s = session();
    let (out, events) = run(
        &mut s,
        "EHLO c\r\nMAIL FROM:<jö@b.example> SMTPUTF8 RET=HDRS ENVID=id+2B1 BODY=8BITMIME AUTH=<>\r\n\
         RCPT TO:<ü@d.example> NOTIFY=NEVER ORCPT=rfc822;x+2By@d.example\r\n\
         RCPT TO:<plain@d.example>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "250 DSN",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "354 End",
            "250 2.0.0"
        ]
    );
    let Some(Event::Message { envelope, .. }) = events.get(1) else {
        panic!("{events:?}")
    };
    assert_eq!(
        *envelope,
        Envelope {
            sender: "jö@b.example".into(),
            recipients: vec![
                Recipient {
                    address: "ü@d.example".into(),
                    notify: DsnNotify {
                        unspecified: false,
                        never: true,
                        success: false,
                        failure: false,
                        delay: false
                    },
                    orcpt: Some("rfc822;x+y@d.example".into()),
                },
                Recipient::new("plain@d.example"),
            ],
            ret: DsnRet::Headers,
            envid: Some("id+1".into()),
            body_type: BodyType::EightBitMime,
            smtputf8: true,
            requiretls: false,
            tls_optional: false,
            customer: String::new(),
            received_at_s: 0,
            tags: Default::default(),
        }
    );
}

#[test]
fn mail_and_rcpt_refusals() {
    let mut s = session();
    let (out, _) = run(
        &mut s,
        "EHLO c\r\nMAIL FROM:<a@b.example> SIZE=10001\r\nMAIL FROM:<a@b.example> XYZ=1\r\n\
         MAIL FROM:<jö@b.example>\r\nMAIL FROM:a@b.example\r\nMAIL FROM:<a@b.example> SIZE=10000\r\n\
         RCPT TO:<ü@d.example>\r\nRCPT TO:<bad>\r\nRCPT TO:<c@d.example> FOO=BAR\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "250 DSN",
            "552 5.3.4",
            "555 5.5.4",
            "553 5.6.7",
            "501 5.1.7",
            "250 2.1.0",
            "553 5.6.7",
            "501 5.1.3",
            "555 5.5.4"
        ]
    );
}

#[test]
fn relay_control() {
    let mut s = session_with(config(), false, false);
    let (out, _) = run(
        &mut s,
        "EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
    );
    assert_eq!(
        codes(&out),
        ["250 DSN", "250 2.1.0", "554 5.7.1", "554 5.5.1"]
    );
    assert!(out.contains("554 5.7.1 Relaying denied\r\n"));
    // After AUTH (over TLS) the same peer may relay.
    let auth_config = ServerConfig {
        auth_enabled: true,
        ..config()
    };
    let mut s = session_with(auth_config, false, true);
    let (out, events) = run(
        &mut s,
        "EHLO c\r\nAUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
    );
    assert_eq!(
        codes(&out),
        ["250 AUTH", "235 2.7.0", "250 2.1.0", "250 2.1.5"]
    );
    assert_eq!(
        events[0],
        Event::Auth {
            username: "joe".into(),
            password: "secret".into()
        }
    );
    assert_eq!(s.authenticated_as(), Some("joe"));
    assert_eq!(s.protocol(), "ESMTPSA");
}

#[test]
fn an_authenticated_clients_recipients_go_to_the_driver_and_a_refusal_is_no_error() {
    let auth_config = ServerConfig {
        auth_enabled: true,
        max_errors: 1,
        ..config()
    };
    let mut s = session_with(auth_config, false, true);
    // Pipelined: the session waits for each answer and goes on with what it had buffered.
    let (out, events) = run(
        &mut s,
        "EHLO c\r\nAUTH PLAIN AGpvZQBzZWNyZXQ=\r\nMAIL FROM:<a@b.example>\r\n\
         RCPT TO:<suppressed1@d.example>\r\nRCPT TO:<ok@d.example>\r\n\
         RCPT TO:<suppressed2@d.example>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "250 AUTH",
            "235 2.7.0",
            "250 2.1.0",
            "550 5.7.1",
            "250 2.1.5",
            "550 5.7.1",
            "354 End",
            "250 2.0.0"
        ]
    );
    let recipients: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Recipient { address } => Some(address.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        recipients,
        [
            "suppressed1@d.example",
            "ok@d.example",
            "suppressed2@d.example"
        ]
    );
    match events.last() {
        Some(Event::Message { envelope, .. }) => {
            assert_eq!(envelope.recipients.len(), 1);
            assert_eq!(envelope.recipients[0].address, "ok@d.example");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.error_count(), 0, "max_errors = 1 and still open");
}

#[test]
fn auth_required_before_mail() {
    let cfg = ServerConfig {
        auth_enabled: true,
        auth_required: true,
        ..config()
    };
    let mut s = session_with(cfg, true, true);
    let (out, _) = run(
        &mut s,
        "EHLO c\r\nMAIL FROM:<a@b.example>\r\nAUTH LOGIN\r\nam9l\r\nc2VjcmV0\r\nMAIL FROM:<a@b.example>\r\n",
    );
    assert_eq!(
        replies(&out)[11..],
        [
            "530 5.7.0 Authentication required",
            "334 VXNlcm5hbWU6",
            "334 UGFzc3dvcmQ6",
            "235 2.7.0 Authentication successful",
            "250 2.1.0 Ok"
        ]
    );
}

#[test]
fn auth_exchanges() {
    let cfg = ServerConfig {
        auth_enabled: true,
        ..config()
    };
    // Before TLS: 538, and AUTH is not advertised.
    let mut s = session_with(cfg.clone(), true, false);
    let (out, _) = run(&mut s, "EHLO c\r\nAUTH PLAIN\r\n");
    assert_eq!(codes(&out)[1], "538 5.7.11");
    // Not enabled at all: 502.
    let mut s = session_with(config(), true, true);
    let (out, _) = run(&mut s, "EHLO c\r\nAUTH PLAIN\r\n");
    assert_eq!(codes(&out)[1], "502 5.5.1");

    let mut s = session_with(cfg.clone(), true, true);
    let (out, events) = run(
        &mut s,
        "AUTH PLAIN\r\nEHLO c\r\nAUTH CRAM-MD5\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n!!!\r\n\
         AUTH PLAIN\r\nAGpvZQBzZWNyZXQ=\r\nAUTH PLAIN AGpvZQBzZWNyZXQ=\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "503 5.5.1",
            "250 AUTH",
            "504 5.5.4",
            "334 ",
            "501 5.0.0",
            "334 ",
            "501 5.5.2",
            "334 ",
            "235 2.7.0",
            "503 5.5.1"
        ]
    );
    assert_eq!(events.len(), 1);
    assert!(
        !format!("{events:?}").contains("secret"),
        "Debug hides passwords"
    );

    // LOGIN with an initial response; a failure counts as an error.
    let mut s = session_with(cfg.clone(), true, true);
    s.receive(b"EHLO c\r\nAUTH LOGIN am9l\r\nd3Jvbmc=\r\nNOOP\r\n", t0());
    assert_eq!(
        s.poll_event(),
        Some(Event::Auth {
            username: "joe".into(),
            password: "wrong".into()
        })
    );
    s.auth_result(Err(Reply::AUTH_FAILED), t0());
    let mut out = Vec::new();
    s.take_output(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.ends_with(
            "334 UGFzc3dvcmQ6\r\n535 5.7.8 Authentication credentials invalid\r\n250 2.0.0 Ok\r\n"
        ),
        "{text}"
    );
    assert_eq!(s.error_count(), 1);
    assert_eq!(s.authenticated_as(), None);

    // PLAIN with a foreign authzid, a malformed message, empty response "=" and cancel in LOGIN.
    let mut s = session_with(cfg, true, true);
    let (out, events) = run(
        &mut s,
        "EHLO c\r\nAUTH PLAIN YWRtaW4Aam9lAHNlY3JldA==\r\nAUTH PLAIN am9l\r\nAUTH PLAIN =\r\n\
         AUTH LOGIN\r\n*\r\nAUTH LOGIN\r\nam9l\r\n*\r\nMAIL FROM:<a@b.example>\r\nAUTH LOGIN\r\n",
    );
    assert_eq!(
        codes(&out),
        [
            "250 AUTH",
            "535 5.7.8",
            "501 5.5.2",
            "501 5.5.2",
            "334 VXNlcm5hbWU6",
            "501 5.0.0",
            "334 VXNlcm5hbWU6",
            "334 UGFzc3dvcmQ6",
            "501 5.0.0",
            "250 2.1.0",
            "503 5.5.1"
        ]
    );
    assert!(events.iter().all(|e| !matches!(e, Event::Auth { .. })));
}

#[test]
fn starttls_discards_pipelined_input_and_resets() {
    let cfg = ServerConfig {
        starttls_available: true,
        auth_enabled: true,
        ..config()
    };
    let mut s = session_with(cfg, true, false);
    s.take_output(&mut Vec::new());
    s.receive(
        b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n",
        t0(),
    );
    s.receive(b"RCPT TO:<x@y.example>\r\n", t0());
    let mut out = Vec::new();
    s.take_output(&mut out);
    assert!(
        String::from_utf8(out)
            .unwrap()
            .ends_with("250-DSN\r\n250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n")
    );
    assert_eq!(s.poll_event(), Some(Event::StartTls));
    assert_eq!(s.poll_event(), None);
    assert!(!s.wants_input());
    s.tls_established(t0());
    assert!(s.tls_active());
    assert_eq!(s.helo_name(), None);
    let mut out = Vec::new();
    s.take_output(&mut out);
    assert!(
        out.is_empty(),
        "no greeting after the handshake, and nothing injected ran"
    );
    let (out, events) = run(
        &mut s,
        "MAIL FROM:<a@b.example>\r\nEHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b.example>\r\n",
    );
    assert_eq!(
        codes(&out),
        ["503 5.5.1", "250 AUTH", "503 5.5.1", "250 2.1.0"]
    );
    assert!(out.contains("TLS already active"));
    assert!(events.iter().all(|e| !matches!(e, Event::StartTls)));

    // Not offered: 454; inside a transaction: 503.
    let mut s = session();
    let (out, _) = run(&mut s, "EHLO c\r\nSTARTTLS\r\nSTARTTLS now\r\n");
    assert_eq!(codes(&out), ["250 DSN", "454 4.7.0", "501 5.5.4"]);
    let mut s = session_with(
        ServerConfig {
            starttls_available: true,
            ..config()
        },
        true,
        false,
    );
    let (out, _) = run(&mut s, "EHLO c\r\nMAIL FROM:<>\r\nSTARTTLS\r\n");
    assert_eq!(codes(&out), ["250 STARTTLS", "250 2.1.0", "503 5.5.1"]);
}

#[test]
fn command_line_length_limit() {
    let mut s = session();
    let ok = format!("NOOP {}\r\n", "a".repeat(MAX_COMMAND_LINE_BYTES - 7));
    assert_eq!(ok.len(), MAX_COMMAND_LINE_BYTES);
    let long = format!("NOOP {}\r\n", "a".repeat(MAX_COMMAND_LINE_BYTES - 6));
    let huge = format!("MAIL FROM:<{}>\r\n", "a".repeat(100_000));
    let (out, _) = run(&mut s, &format!("{ok}{long}{huge}NOOP\r\n"));
    assert_eq!(
        codes(&out),
        ["250 2.0.0", "500 5.5.2", "500 5.5.2", "250 2.0.0"]
    );
    // Byte by byte, the buffer stays within one line.
    let mut s = session();
    for byte in huge.as_bytes() {
        s.receive(std::slice::from_ref(byte), t0());
        assert!(s.input.len() <= MAX_COMMAND_LINE_BYTES);
    }
    let mut out = Vec::new();
    s.take_output(&mut out);
    assert!(
        String::from_utf8(out)
            .unwrap()
            .ends_with("500 5.5.2 Command line too long\r\n")
    );
}

#[test]
fn auth_lines_may_be_longer() {
    let cfg = ServerConfig {
        auth_enabled: true,
        ..config()
    };
    let mut s = session_with(cfg, true, true);
    let password = "p".repeat(1000);
    let response = BASE64.encode(format!("\0joe\0{password}"));
    let (out, events) = run(&mut s, &format!("EHLO c\r\nAUTH PLAIN {response}\r\n"));
    assert_eq!(codes(&out), ["250 AUTH", "235 2.7.0"]);
    assert_eq!(
        events[0],
        Event::Auth {
            username: "joe".into(),
            password
        }
    );
}

#[test]
fn bare_linefeed_ends_no_command() {
    let mut s = session();
    let (out, events) = run(&mut s, "EHLO c\nNOOP\r\nQUIT\n\nNOOP\rQUIT\r\nQUIT\r\n");
    assert_eq!(
        codes(&out),
        [
            "500 5.5.2",
            "250 2.0.0",
            "500 5.5.2",
            "500 5.5.2",
            "500 5.5.1",
            "221 2.0.0"
        ]
    );
    assert_eq!(events, [Event::Close]);
}

#[test]
fn too_many_recipients() {
    let mut s = session();
    let mut input = String::from("EHLO c\r\nMAIL FROM:<a@b.example>\r\n");
    for i in 0..8 {
        input.push_str(&format!("RCPT TO:<r{i}@d.example>\r\n"));
    }
    input.push_str("DATA\r\nx\r\n.\r\n");
    let (out, events) = run(&mut s, &input);
    let codes = codes(&out);
    assert_eq!(codes.iter().filter(|c| *c == "250 2.1.5").count(), 5);
    assert_eq!(codes.iter().filter(|c| *c == "452 4.5.3").count(), 3);
    assert_eq!(s.error_count(), 0);
    let Some(Event::Message { envelope, .. }) = events.get(1) else {
        panic!()
    };
    assert_eq!(envelope.recipients.len(), 5);
}

#[test]
fn too_many_errors_closes() {
    let mut s = session_with(
        ServerConfig {
            max_errors: 3,
            ..config()
        },
        true,
        false,
    );
    let (out, events) = run(&mut s, "FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nNOOP\r\n");
    assert_eq!(
        replies(&out),
        [
            "500 5.5.1 Command unrecognized",
            "500 5.5.1 Command unrecognized",
            "250 2.0.0 Ok",
            "500 5.5.1 Command unrecognized",
            "421 4.7.0 mx.test Too many errors, closing connection"
        ]
    );
    assert_eq!(events, [Event::Close]);
    assert!(s.is_closed());
    assert!(!s.wants_input());
}

#[test]
fn large_pipelined_input_is_linear() {
    // 20k NOOPs in one piece and in 3-octet pieces: all answered, buffer stays small.
    let input = "NOOP\r\n".repeat(20_000);
    let mut s = session();
    let (out, _) = run(&mut s, &input);
    assert_eq!(replies(&out).len(), 20_000);
    let mut s = session();
    let mut out = Vec::new();
    for piece in input.as_bytes().chunks(3) {
        s.receive(piece, t0());
        assert!(s.input.len() < 8);
    }
    s.take_output(&mut out);
    assert_eq!(
        out.len(),
        "220 mx.test ESMTP Volley\r\n".len() + 20_000 * "250 2.0.0 Ok\r\n".len()
    );
}

/// Semi-structured input: SMTP tokens, line-end fragments and random bytes.
fn generated_input(rng: &mut fastrand::Rng) -> Vec<u8> {
    const TOKENS: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@b.example>\r\n",
        b"MAIL FROM:<> SIZE=50 BODY=BINARYMIME\r\n",
        b"RCPT TO:<c@d.example>\r\n",
        b"RCPT TO:<e@f.example> NOTIFY=DELAY ORCPT=rfc822;e@f\r\n",
        b"DATA\r\n",
        b"BDAT 5\r\n",
        b"BDAT 3 LAST\r\n",
        b"BDAT 0 LAST\r\n",
        b"\r\n.\r\n",
        b".\r\n",
        b"..",
        b"\r",
        b"\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"QUIT\r\n",
        b"STARTTLS\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"AGpvZQBzZWNyZXQ=\r\n",
        b"am9l\r\n",
        b"*\r\n",
        b"AUTH PLAIN AGpvZQBzZWNyZXQ=\r\n",
        b"hello world ",
    ];
    let mut input = vec![rng.u8(..), rng.u8(..)];
    for _ in 0..rng.usize(1..40) {
        match rng.u8(..10) {
            0 => input.extend((0..rng.usize(1..30)).map(|_| rng.u8(..))),
            1 => input.extend(std::iter::repeat_n(b'x', rng.usize(1..1200))),
            _ => input.extend_from_slice(TOKENS[rng.usize(..TOKENS.len())]),
        }
    }
    input
}

#[test]
fn fuzz_session_on_generated_input() {
    let mut rng = fastrand::Rng::with_seed(0x5EED_5A7E);
    for _ in 0..4000 {
        let input = generated_input(&mut rng);
        fuzzing::fuzz_session(&input);
        fuzzing::fuzz_command(&input[2..]);
    }
    for _ in 0..2000 {
        let input: Vec<u8> = (0..rng.usize(0..300)).map(|_| rng.u8(..)).collect();
        fuzzing::fuzz_session(&input);
        fuzzing::fuzz_command(&input);
    }
}
