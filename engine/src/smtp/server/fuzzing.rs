//! Entry points for the fuzzers (`fuzz/`) and for the stable test that runs them on generated input.

use std::time::{Duration, Instant};

use super::*;
use crate::smtp::reply::EnhancedCode;

/// Parses arbitrary bytes as a command line; must never panic.
pub fn fuzz_command(data: &[u8]) {
    match command::parse(data) {
        Ok(Command::Mail {
            reverse_path,
            params,
        }) => {
            assert!(reverse_path.len() <= command::MAX_PATH_BYTES);
            assert!(
                params
                    .envid
                    .is_none_or(|e| e.len() <= command::MAX_ENVID_BYTES)
            );
        }
        Ok(Command::Rcpt { forward_path, .. }) => {
            assert!(!forward_path.is_empty() && forward_path.len() <= command::MAX_PATH_BYTES);
        }
        Ok(_) => {}
        Err(error) => assert!(error.reply().code() >= 500),
    }
}

/// Runs a session on arbitrary bytes: the first octets pick the configuration and how input
/// is split and events answered; the rest is the input. Checks that the output is always well
/// framed replies and that limits hold; must never panic.
pub fn fuzz_session(data: &[u8]) {
    let (flags, data) = data.split_first().unwrap_or((&0, data));
    let (seed, data) = data.split_first().unwrap_or((&0, data));
    let config = Rc::new(ServerConfig {
        hostname: "mx.fuzz.example".into(),
        max_message_bytes: 200,
        max_recipients: 3,
        max_errors: if flags & 0x01 != 0 { 5 } else { 1000 },
        starttls_available: flags & 0x02 != 0,
        auth_enabled: flags & 0x04 != 0,
        auth_required: flags & 0x08 != 0,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
        line_endings: if flags & 0x40 != 0 {
            crate::smtp::data::LineEndings::Normalize
        } else {
            crate::smtp::data::LineEndings::Strict
        },
    });
    let peer = PeerInfo {
        ip: IpAddr::from([192, 0, 2, 1]),
        relay_allowed: flags & 0x10 != 0,
    };
    // A fake clock that the seed moves forward between pieces of input.
    let mut now = Instant::now();
    let mut session = Session::new(config.clone(), peer, flags & 0x20 != 0, now);
    let mut rng = u32::from(*seed) | 1;
    let mut next = move || {
        // xorshift: deterministic splits and answers from the seed.
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    let mut output = Vec::new();
    let mut closed_seen = false;
    let mut pos = 0;
    while pos < data.len() {
        let len = (next() % 64 + 1) as usize;
        let end = (pos + len).min(data.len());
        now += Duration::from_secs(u64::from(next() % 128));
        if next() % 8 == 0 && session.handle_timeout(now).is_some() {
            assert!(session.is_closed());
            assert_eq!(session.poll_timeout(), None);
        }
        session.receive(&data[pos..end], now);
        pos = end;
        if next() % 16 == 0 && session.body_budget_exhausted() {
            // The driver's memory budget ran out: the body is freed at once.
            assert_eq!(session.body_bytes_held(), 0);
        }
        while let Some(event) = session.poll_event() {
            assert!(!closed_seen, "no event after Close");
            let accept = next() % 4 != 0;
            match event {
                Event::Auth { .. } => session.auth_result(
                    if accept {
                        Ok("customer".into())
                    } else {
                        Err(Reply::AUTH_FAILED)
                    },
                    now,
                ),
                Event::Mail { .. } => session.mail_result(
                    if accept {
                        Ok(())
                    } else {
                        Err(Reply::INSUFFICIENT_STORAGE)
                    },
                    now,
                ),
                Event::Recipient { .. } => session.rcpt_result(
                    if accept {
                        Ok(())
                    } else {
                        Err(Reply::new(550, None, "Recipient suppressed"))
                    },
                    now,
                ),
                Event::Message { envelope, body } => {
                    assert!(body.len() <= config.max_message_bytes);
                    assert!(!envelope.recipients.is_empty());
                    assert!(envelope.recipients.len() <= config.max_recipients);
                    session.message_result(
                        if accept {
                            Ok("ID".into())
                        } else {
                            Err(Reply::LOCAL_ERROR)
                        },
                        now,
                    )
                }
                Event::StartTls => {
                    if accept {
                        session.tls_established(now);
                    }
                }
                Event::MessageRefused { reply } => {
                    assert!(
                        reply.code() >= 500 || reply.enhanced() == Some(EnhancedCode::new(4, 3, 1))
                    )
                }
                Event::Close => closed_seen = true,
            }
        }
        assert!(session.input.len() <= data.len());
        session.take_output(&mut output);
    }
    if next() % 2 == 0 {
        // Far past any deadline: a session that waits for no answer must time out.
        let waiting = session.poll_timeout().is_none();
        let stage = session.handle_timeout(now + Duration::from_secs(3600));
        assert!(waiting || stage.is_some());
        assert!(waiting || session.is_closed());
    }
    session.take_output(&mut output);
    assert_well_framed(&output);
}

/// Every output line is `ddd[ -]text CRLF`.
fn assert_well_framed(output: &[u8]) {
    assert!(output.is_empty() || output.ends_with(b"\r\n"));
    for line in output.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let line = line.strip_suffix(b"\r").expect("CRLF line end");
        assert!(!line.contains(&b'\r'));
        assert!(line.len() >= 4);
        assert!(line[..3].iter().all(u8::is_ascii_digit));
        assert!(line[3] == b' ' || line[3] == b'-');
    }
}
