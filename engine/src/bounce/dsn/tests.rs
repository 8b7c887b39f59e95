use std::process::Command;

use super::*;
use crate::envelope::DsnNotify;

const HOST: &str = "mx.volley.example";
const ORIGINAL: &[u8] = b"From: Alice <alice@sender.example>\r\n\
To: nobody@example.com\r\n\
Subject: Original subject\r\n\
Message-ID: <orig-1@sender.example>\r\n\
\r\n\
Hello,\r\n\
this is the body.\r\n";

fn envelope(ret: DsnRet) -> Envelope {
    Envelope {
        sender: "alice@sender.example".to_string(),
        recipients: vec![Recipient::new("nobody@example.com")],
        ret,
        envid: Some("ENV-42".to_string()),
        received_at_s: 1_700_000_000,
        ..Envelope::default()
    }
}

fn recipient_with_orcpt() -> Recipient {
    Recipient {
        orcpt: Some("rfc822;Nobody@Example.com".to_string()),
        ..Recipient::new("nobody@example.com")
    }
}

const LONG_REPLY: &str = "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n\
550-5.1.1 double-checking the recipient's email address for typos or\r\n\
550 5.1.1 unnecessary spaces. For more information, go to https://support.example/mail/?p=NoSuchUser";

fn failed_report(recipient: &Recipient) -> RecipientReport<'_> {
    RecipientReport {
        recipient,
        action: DsnAction::Failed,
        status: (5, 1, 1),
        remote_mta: Some("mx1.example.com"),
        diagnostic_code: Some(LONG_REPLY),
        diagnostic_type: DiagnosticType::Smtp,
        last_attempt_s: Some(1_700_000_100),
        will_retry_until_s: None,
        category: Some(BounceCategory::BadMailbox),
    }
}

fn input<'a>(envelope: &'a Envelope, reports: &'a [RecipientReport<'a>]) -> DsnInput<'a> {
    DsnInput {
        reporting_mta: HOST,
        envelope,
        message_id: MessageId { core: 1, seq: 0x2A },
        recipients: reports,
        original: ORIGINAL,
        now_s: 1_700_000_200,
        max_returned_bytes: DEFAULT_MAX_RETURNED_BYTES,
    }
}

fn text(dsn: &[u8]) -> &str {
    std::str::from_utf8(dsn).expect("an ASCII original gives an ASCII DSN")
}

/// The part bodies between boundaries, and the top header section.
fn split_parts(dsn: &str) -> (String, Vec<String>) {
    let (head, body) = dsn.split_once("\r\n\r\n").expect("header section ends");
    let boundary = head
        .split("boundary=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("boundary parameter");
    let delimiter = format!("\r\n--{boundary}");
    let closing = format!("\r\n--{boundary}--\r\n");
    assert!(body.ends_with(&closing), "closing delimiter");
    let inner = &body[..body.len() - closing.len()];
    let parts: Vec<String> = inner
        .split(&delimiter)
        .skip(1) // the preamble
        .map(|p| p.strip_prefix("\r\n").unwrap_or(p).to_string())
        .collect();
    (head.to_string(), parts)
}

/// Unfolded fields of one header block.
fn fields(block: &str) -> Vec<(String, String)> {
    let unfolded = block.replace("\r\n ", " ");
    unfolded
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("name: value");
            (n.to_string(), v.trim().to_string())
        })
        .collect()
}

fn get<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn dsn_has_the_report_structure_and_fields() {
    let env = envelope(DsnRet::Unspecified);
    let rcpt = recipient_with_orcpt();
    let reports = [failed_report(&rcpt)];
    let dsn = build_dsn_with_rng(&input(&env, &reports), &mut fastrand::Rng::with_seed(1));
    let dsn = text(&dsn);

    // CRLF only, and every line within the RFC 5322 limits of our folding.
    assert!(
        !dsn.replace("\r\n", "").contains(['\r', '\n']),
        "bare CR or LF"
    );
    for line in dsn.split("\r\n") {
        assert!(line.len() <= 998, "line over 998: {line}");
    }

    let (head, parts) = split_parts(dsn);
    let top = fields(&head);
    assert_eq!(
        get(&top, "From"),
        Some(format!("Mail Delivery System <MAILER-DAEMON@{HOST}>").as_str())
    );
    assert_eq!(get(&top, "To"), Some("<alice@sender.example>"));
    assert_eq!(get(&top, "Auto-Submitted"), Some("auto-replied"));
    assert_eq!(get(&top, "MIME-Version"), Some("1.0"));
    assert_eq!(
        get(&top, "Subject"),
        Some("Undelivered Mail Returned to Sender")
    );
    assert_eq!(get(&top, "Date"), Some("Tue, 14 Nov 2023 22:16:40 +0000"));
    assert!(
        get(&top, "Message-ID").is_some_and(
            |m| m.starts_with("<00000000002A-01.") && m.ends_with("@mx.volley.example>")
        )
    );
    let content_type = get(&top, "Content-Type").unwrap();
    assert!(content_type.starts_with("multipart/report; report-type=delivery-status; boundary="));

    assert_eq!(parts.len(), 3);
    let (p1_head, p1_body) = parts[0].split_once("\r\n\r\n").unwrap();
    assert_eq!(
        get(&fields(p1_head), "Content-Type"),
        Some("text/plain; charset=us-ascii")
    );
    assert!(p1_body.contains("<nobody@example.com>: failed"));
    assert!(
        p1_body.lines().all(|l| l.len() <= FOLD_AT_CHARS),
        "human text is wrapped"
    );

    let (p2_head, p2_body) = parts[1].split_once("\r\n\r\n").unwrap();
    assert_eq!(
        get(&fields(p2_head), "Content-Type"),
        Some("message/delivery-status")
    );
    let blocks: Vec<&str> = p2_body.split("\r\n\r\n").collect();
    assert_eq!(
        blocks.len(),
        2,
        "per-message block and one per-recipient block"
    );
    let message = fields(blocks[0]);
    assert_eq!(
        get(&message, "Reporting-MTA"),
        Some("dns; mx.volley.example")
    );
    assert_eq!(get(&message, "Original-Envelope-Id"), Some("ENV-42"));
    assert_eq!(
        get(&message, "Arrival-Date"),
        Some("Tue, 14 Nov 2023 22:13:20 +0000")
    );
    let rcpt = fields(blocks[1]);
    assert_eq!(
        get(&rcpt, "Original-Recipient"),
        Some("rfc822;Nobody@Example.com")
    );
    assert_eq!(
        get(&rcpt, "Final-Recipient"),
        Some("rfc822; nobody@example.com")
    );
    assert_eq!(get(&rcpt, "Action"), Some("failed"));
    assert_eq!(get(&rcpt, "Status"), Some("5.1.1"));
    assert_eq!(get(&rcpt, "Remote-MTA"), Some("dns; mx1.example.com"));
    assert_eq!(
        get(&rcpt, "Last-Attempt-Date"),
        Some("Tue, 14 Nov 2023 22:15:00 +0000")
    );
    assert_eq!(get(&rcpt, "X-Volley-Bounce-Category"), Some("bad-mailbox"));
    let diagnostic = get(&rcpt, "Diagnostic-Code").unwrap();
    assert!(diagnostic.starts_with("smtp; 550-5.1.1 The email account"));
    assert!(diagnostic.ends_with("https://support.example/mail/?p=NoSuchUser"));
    assert!(
        blocks[1].contains("\r\n "),
        "the long Diagnostic-Code is folded"
    );
    assert!(blocks[1].split("\r\n").all(|l| l.len() <= FOLD_AT_CHARS));

    let (p3_head, p3_body) = parts[2].split_once("\r\n\r\n").unwrap();
    assert_eq!(
        get(&fields(p3_head), "Content-Type"),
        Some("text/rfc822-headers")
    );
    assert!(p3_body.contains("Subject: Original subject\r\n"));
    assert!(
        !p3_body.contains("this is the body"),
        "RET=HDRS carries no body"
    );
}

#[test]
fn ret_full_returns_the_whole_message() {
    let env = envelope(DsnRet::Full);
    let rcpt = Recipient::new("nobody@example.com");
    let reports = [failed_report(&rcpt)];
    let dsn = build_dsn(&input(&env, &reports));
    let (_, parts) = split_parts(text(&dsn));
    let (p3_head, p3_body) = parts[2].split_once("\r\n\r\n").unwrap();
    assert_eq!(
        get(&fields(p3_head), "Content-Type"),
        Some("message/rfc822")
    );
    assert!(
        p3_body.contains("Subject: Original subject\r\n"),
        "{p3_body:?}"
    );
    assert!(
        p3_body.contains("\r\n\r\nHello,\r\nthis is the body.\r\n"),
        "{p3_body:?}"
    );
}

#[test]
fn ret_full_falls_back_to_headers_when_too_large_or_binary() {
    let rcpt = Recipient::new("nobody@example.com");
    let reports = [failed_report(&rcpt)];
    let env = envelope(DsnRet::Full);
    let small_cap = DsnInput {
        max_returned_bytes: 10,
        ..input(&env, &reports)
    };
    let dsn = build_dsn(&small_cap);
    assert!(text(&dsn).contains("Content-Type: text/rfc822-headers"));
    let binary = Envelope {
        body_type: BodyType::BinaryMime,
        ..envelope(DsnRet::Full)
    };
    let dsn = build_dsn(&input(&binary, &reports));
    assert!(text(&dsn).contains("Content-Type: text/rfc822-headers"));
}

#[test]
fn eight_bit_originals_are_marked() {
    let env = Envelope {
        body_type: BodyType::EightBitMime,
        ..envelope(DsnRet::Full)
    };
    let rcpt = Recipient::new("nobody@example.com");
    let reports = [failed_report(&rcpt)];
    let original = "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve body\r\n".as_bytes();
    let dsn_input = DsnInput {
        original,
        ..input(&env, &reports)
    };
    let dsn = build_dsn(&dsn_input);
    let dsn_text = String::from_utf8(dsn.clone()).unwrap();
    assert!(
        dsn_text.contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n")
    );
    assert_eq!(
        dsn_envelope(&dsn_input, &dsn).body_type,
        BodyType::EightBitMime
    );
}

#[test]
fn bare_line_feeds_in_the_original_become_crlf() {
    let env = envelope(DsnRet::Unspecified);
    let rcpt = Recipient::new("nobody@example.com");
    let reports = [failed_report(&rcpt)];
    let dsn_input = DsnInput {
        original: b"Subject: lf only\nX-A: b\n\nbody\n",
        ..input(&env, &reports)
    };
    let dsn = build_dsn(&dsn_input);
    let dsn = text(&dsn);
    assert!(!dsn.replace("\r\n", "").contains('\n'));
    assert!(dsn.contains("Subject: lf only\r\nX-A: b\r\n"));
    assert!(!dsn.contains("body\r\n"));
}

#[test]
fn hostile_reply_text_cannot_inject_fields() {
    let env = envelope(DsnRet::Unspecified);
    let rcpt = Recipient::new("nobody@example.com");
    let mut report = failed_report(&rcpt);
    report.diagnostic_code = Some("550 no\r\nX-Injected: yes\r\n\r\n--boundary\u{7f}\u{e9}");
    let reports = [report];
    let dsn = build_dsn(&input(&env, &reports));
    let dsn = text(&dsn);
    assert!(!dsn.contains("\r\nX-Injected"));
    assert!(dsn.contains("Diagnostic-Code: smtp; 550 no X-Injected: yes --boundary ?"));
}

#[test]
fn the_diagnostic_type_is_written_once_and_local_reasons_are_not_smtp() {
    let env = envelope(DsnRet::Unspecified);
    let rcpt = Recipient::new("nobody@example.com");
    let remote = [RecipientReport {
        diagnostic_code: Some("550 5.1.1 no such user"),
        ..failed_report(&rcpt)
    }];
    let dsn = build_dsn(&input(&env, &remote));
    let dsn = text(&dsn);
    assert!(dsn.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
    assert!(!dsn.contains("smtp; smtp;"));

    let local = [RecipientReport {
        status: (5, 0, 0),
        remote_mta: None,
        diagnostic_code: Some("554 5.0.0 Bounced by the operator: cleanup"),
        diagnostic_type: DiagnosticType::Local,
        ..failed_report(&rcpt)
    }];
    let dsn = build_dsn(&input(&env, &local));
    let dsn = text(&dsn);
    assert!(
        dsn.contains("Diagnostic-Code: X-Volley; 554 5.0.0 Bounced by the operator: cleanup\r\n"),
        "{dsn}"
    );
    assert!(!dsn.contains("Remote-MTA"));
    assert!(!dsn.contains("smtp;"));
}

#[test]
fn delayed_report_carries_will_retry_until() {
    let env = envelope(DsnRet::Unspecified);
    let rcpt = Recipient::new("nobody@example.com");
    let reports = [RecipientReport {
        action: DsnAction::Delayed,
        status: (4, 4, 1),
        will_retry_until_s: Some(1_700_432_000),
        category: Some(BounceCategory::NoAnswerFromHost),
        ..failed_report(&rcpt)
    }];
    let dsn = build_dsn(&input(&env, &reports));
    let dsn = text(&dsn);
    assert!(dsn.contains("Subject: Delayed Mail (still being retried)\r\n"));
    assert!(dsn.contains("Action: delayed\r\nStatus: 4.4.1\r\n"));
    assert!(dsn.contains("Will-Retry-Until: Sun, 19 Nov 2023 22:13:20 +0000\r\n"));
}

#[test]
fn non_ascii_recipients_use_utf8_address_type() {
    assert_eq!(
        typed_address("j\u{f6}rg@example.com"),
        "utf-8; j\\x{F6}rg@example.com"
    );
    assert_eq!(typed_address("a@example.com"), "rfc822; a@example.com");
}

#[test]
fn boundary_never_occurs_in_the_returned_part() {
    let env = envelope(DsnRet::Full);
    let rcpt = Recipient::new("nobody@example.com");
    let reports = [failed_report(&rcpt)];
    // Predict the first boundary from the same seed and plant it in the original.
    let first = random_token(&mut fastrand::Rng::with_seed(9), BOUNDARY_RANDOM_CHARS);
    let original = format!("Subject: x\r\n\r\n--=_volley_{first}\r\n");
    let dsn_input = DsnInput {
        original: original.as_bytes(),
        ..input(&env, &reports)
    };
    let dsn = build_dsn_with_rng(&dsn_input, &mut fastrand::Rng::with_seed(9));
    assert!(!text(&dsn).contains(&format!("boundary=\"=_volley_{first}\"")));
    let (_, parts) = split_parts(text(&dsn));
    assert_eq!(parts.len(), 3);
}

#[test]
fn null_sender_never_gets_a_dsn() {
    let env = Envelope {
        sender: String::new(),
        ..envelope(DsnRet::Unspecified)
    };
    let rcpt = Recipient::new("nobody@example.com");
    assert!(!should_bounce(&env, &rcpt));
    assert!(!should_report(&env, &rcpt, DsnAction::Delayed));
}

#[test]
fn notify_decides_which_reports_are_sent() {
    let env = envelope(DsnRet::Unspecified);
    let default = Recipient::new("a@example.com");
    assert!(should_bounce(&env, &default));
    assert!(should_report(&env, &default, DsnAction::Delayed));
    assert!(!should_report(&env, &default, DsnAction::Delivered));

    let never = Recipient {
        notify: DsnNotify {
            unspecified: false,
            never: true,
            ..DsnNotify::default()
        },
        ..default.clone()
    };
    assert!(!should_bounce(&env, &never));
    assert!(!should_report(&env, &never, DsnAction::Delayed));

    let success_only = Recipient {
        notify: DsnNotify {
            unspecified: false,
            success: true,
            ..DsnNotify::default()
        },
        ..default.clone()
    };
    assert!(!should_bounce(&env, &success_only));
    assert!(should_report(&env, &success_only, DsnAction::Delivered));
}

#[test]
fn dsn_envelope_is_from_the_null_sender_and_never_notifies() {
    let env = envelope(DsnRet::Unspecified);
    let rcpt = Recipient::new("nobody@example.com");
    let reports = [failed_report(&rcpt)];
    let dsn_input = input(&env, &reports);
    let dsn = build_dsn(&dsn_input);
    let out = dsn_envelope(&dsn_input, &dsn);
    assert_eq!(out.sender, "");
    assert_eq!(out.recipients.len(), 1);
    assert_eq!(out.recipients[0].address, "alice@sender.example");
    assert!(!out.recipients[0].notify.wants_failure());
    assert_eq!(out.body_type, BodyType::SevenBit);
    // And a DSN about a DSN is never due.
    assert!(!should_bounce(&out, &out.recipients[0]));
}

/// Parses DSNs with Python's `email` package, an independent MIME parser.
const PYTHON_CHECK: &str = r#"
import sys, email
from email import policy

def check(path, ret_full):
    data = open(path, 'rb').read()
    assert b'\n' not in data.replace(b'\r\n', b''), 'bare LF or CR'
    msg = email.message_from_bytes(data, policy=policy.default)
    assert not msg.defects, msg.defects
    assert msg.get_content_type() == 'multipart/report', msg.get_content_type()
    assert msg.get_param('report-type') == 'delivery-status'
    assert msg['Auto-Submitted'] == 'auto-replied'
    assert msg['From'].addresses[0].addr_spec == 'MAILER-DAEMON@mx.volley.example'
    assert msg['To'].addresses[0].addr_spec == 'alice@sender.example'
    assert msg['Date'].datetime.year == 2023
    parts = msg.get_payload()
    assert len(parts) == 3, len(parts)
    assert parts[0].get_content_type() == 'text/plain'
    assert 'nobody@example.com' in parts[0].get_content()
    status = parts[1]
    assert status.get_content_type() == 'message/delivery-status'
    blocks = status.get_payload()
    assert len(blocks) == 2, len(blocks)
    assert blocks[0]['Reporting-MTA'] == 'dns; mx.volley.example', blocks[0]['Reporting-MTA']
    assert blocks[0]['Original-Envelope-Id'] == 'ENV-42'
    assert blocks[0]['Arrival-Date'] is not None
    r = blocks[1]
    assert r['Original-Recipient'] == 'rfc822;Nobody@Example.com', r['Original-Recipient']
    assert r['Final-Recipient'] == 'rfc822; nobody@example.com', r['Final-Recipient']
    assert r['Action'] == 'failed'
    assert r['Status'] == '5.1.1'
    assert r['Remote-MTA'] == 'dns; mx1.example.com'
    assert r['X-Volley-Bounce-Category'] == 'bad-mailbox'
    diag = ' '.join(str(r['Diagnostic-Code']).split())
    assert diag.startswith('smtp; 550-5.1.1 The email account'), diag
    assert diag.endswith('p=NoSuchUser'), diag
    returned = parts[2]
    if ret_full:
        assert returned.get_content_type() == 'message/rfc822'
        inner = returned.get_payload()[0]
        assert inner['Subject'] == 'Original subject'
        assert 'this is the body' in inner.get_content()
    else:
        assert returned.get_content_type() == 'text/rfc822-headers'
        headers = returned.get_payload()
        assert 'Subject: Original subject' in headers, headers
        assert 'this is the body' not in headers

check(sys.argv[1], False)
check(sys.argv[2], True)
print('python-email-ok')
"#;

#[test]
fn python_email_parses_the_dsn() {
    let dir = tempfile::tempdir().unwrap();
    let rcpt = recipient_with_orcpt();
    let reports = [failed_report(&rcpt)];
    let mut paths = Vec::new();
    for (name, ret) in [("hdrs.eml", DsnRet::Headers), ("full.eml", DsnRet::Full)] {
        let env = envelope(ret);
        let path = dir.path().join(name);
        std::fs::write(&path, build_dsn(&input(&env, &reports))).unwrap();
        paths.push(path);
    }
    let output = match Command::new("python3")
        .arg("-c")
        .arg(PYTHON_CHECK)
        .args(&paths)
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("SKIPPED python check: python3 is not available ({e})");
            return;
        }
    };
    assert!(
        output.status.success(),
        "python email check failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("python-email-ok"));
}
