//! Delivery status notifications: RFC 3464 `message/delivery-status` inside an RFC 6522 (formerly
//! 3462) `multipart/report`, sent from the null reverse path so that they can never bounce back.
//!
//! Everything here is pure: the caller supplies the time and (for tests) the random source, and
//! injects the bytes with the envelope `dsn_envelope` gives.

use std::fmt::Write as _;

use super::category::BounceCategory;
use crate::envelope::{BodyType, DsnNotify, DsnRet, Envelope, MessageId, Recipient};

/// RFC 5322 recommends lines of at most 78 characters; header fields are folded to it.
const FOLD_AT_CHARS: usize = 78;
/// A word longer than this is cut, to stay far inside RFC 5322's hard 998-character limit.
const MAX_WORD_CHARS: usize = 900;
/// Random characters in a MIME boundary.
const BOUNDARY_RANDOM_CHARS: usize = 24;
/// Default for `DsnInput::max_returned_bytes`: a larger original comes back as its headers only.
pub const DEFAULT_MAX_RETURNED_BYTES: usize = 10 * 1024 * 1024;

/// RFC 3464 section 2.3.3 `Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

impl DsnAction {
    /// The field value.
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
            DsnAction::Expanded => "expanded",
        }
    }
}

/// RFC 3464 section 2.3.6 diagnostic-type: who wrote the diagnostic text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagnosticType {
    /// A remote SMTP server's reply: `smtp; 550 5.1.1 ...`.
    Smtp,
    /// Volley's own reason (an operator's bounce, an expiry, a DNS verdict), no remote MTA
    /// involved: `X-Volley; ...`, as Postfix writes `X-Postfix;`.
    Local,
}

impl DiagnosticType {
    /// The field's type token.
    pub fn as_str(self) -> &'static str {
        match self {
            DiagnosticType::Smtp => "smtp",
            DiagnosticType::Local => "X-Volley",
        }
    }
}

/// What happened to one recipient.
#[derive(Debug, Clone)]
pub struct RecipientReport<'a> {
    pub recipient: &'a Recipient,
    pub action: DsnAction,
    /// RFC 3463 status, e.g. `(5, 1, 1)`.
    pub status: (u8, u16, u16),
    /// The host that gave the reply, when one did.
    pub remote_mta: Option<&'a str>,
    /// The reply as received (`550 5.1.1 <a@b>: user unknown`), without its type; multi-line
    /// allowed. Written as `Diagnostic-Code: <diagnostic_type>; <text>`.
    pub diagnostic_code: Option<&'a str>,
    pub diagnostic_type: DiagnosticType,
    pub last_attempt_s: Option<u64>,
    /// For `Delayed`: when the queue gives up (first queued + max_queue_age).
    pub will_retry_until_s: Option<u64>,
    pub category: Option<BounceCategory>,
}

/// Everything a DSN is built from.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// This MTA's host name: `Reporting-MTA` and the `From`/`Message-ID` domain.
    pub reporting_mta: &'a str,
    /// The original message's envelope: sender (the DSN's recipient), ENVID, RET, body type.
    pub envelope: &'a Envelope,
    /// The original message's queue id, quoted in the text part.
    pub message_id: MessageId,
    /// The recipients to report; the caller filters them with `should_report`.
    pub recipients: &'a [RecipientReport<'a>],
    /// The original message (header section and body) as spooled.
    pub original: &'a [u8],
    pub now_s: u64,
    /// With RET=FULL, an original larger than this is returned as headers only (RFC 3461 4.3).
    pub max_returned_bytes: usize,
}

/// Whether a failure DSN is due for this recipient: never for the null sender (a bounce of a bounce
/// would loop, RFC 5321 section 6.1), and only when its NOTIFY asks for failures (RFC 3461 4.1).
pub fn should_bounce(envelope: &Envelope, recipient: &Recipient) -> bool {
    should_report(envelope, recipient, DsnAction::Failed)
}

/// Whether a DSN with `action` is due for this recipient (null sender never; NOTIFY decides).
pub fn should_report(envelope: &Envelope, recipient: &Recipient, action: DsnAction) -> bool {
    if envelope.sender.is_empty() {
        return false;
    }
    let notify = recipient.notify;
    match action {
        DsnAction::Failed => notify.wants_failure(),
        DsnAction::Delayed => notify.wants_delay(),
        DsnAction::Delivered | DsnAction::Relayed | DsnAction::Expanded => notify.wants_success(),
    }
}

/// The envelope to spool a built DSN under: the null sender, the original sender as the only
/// recipient with NOTIFY=NEVER, 8BITMIME when the DSN carries 8-bit bytes.
pub fn dsn_envelope(input: &DsnInput<'_>, dsn: &[u8]) -> Envelope {
    Envelope {
        sender: String::new(),
        recipients: vec![Recipient {
            address: input.envelope.sender.clone(),
            notify: DsnNotify {
                unspecified: false,
                never: true,
                ..DsnNotify::default()
            },
            orcpt: None,
        }],
        ret: DsnRet::Unspecified,
        envid: None,
        body_type: if dsn.is_ascii() {
            BodyType::SevenBit
        } else {
            BodyType::EightBitMime
        },
        smtputf8: input.envelope.smtputf8,
        requiretls: false,
        tls_optional: false,
        customer: input.envelope.customer.clone(),
        received_at_s: input.now_s,
        // Intake reads the DSN's own Message-ID; the original's campaign and route stay with it.
        tags: Default::default(),
    }
}

/// Builds the DSN: a complete RFC 5322 message with CRLF line endings.
pub fn build_dsn(input: &DsnInput<'_>) -> Vec<u8> {
    build_dsn_with_rng(input, &mut fastrand::Rng::new())
}

/// `build_dsn` with the boundary and Message-ID drawn from `rng` (deterministic in tests).
pub fn build_dsn_with_rng(input: &DsnInput<'_>, rng: &mut fastrand::Rng) -> Vec<u8> {
    let original = &normalize_line_endings(input.original);
    let returned = returned_part(input, original);
    let boundary = loop {
        let candidate = format!("=_volley_{}", random_token(rng, BOUNDARY_RANDOM_CHARS));
        if memchr::memmem::find(returned.body, candidate.as_bytes()).is_none() {
            break candidate;
        }
    };
    let host = header_safe(input.reporting_mta);

    let mut head = String::new();
    field(
        &mut head,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    field(
        &mut head,
        "To",
        &format!("<{}>", header_safe(&input.envelope.sender)),
    );
    field(&mut head, "Subject", subject(input.recipients));
    field(&mut head, "Date", &crate::clock::rfc5322_date(input.now_s));
    let unique = random_token(rng, 16);
    field(
        &mut head,
        "Message-ID",
        &format!("<{}.{unique}@{host}>", input.message_id),
    );
    field(&mut head, "MIME-Version", "1.0");
    field(&mut head, "Auto-Submitted", "auto-replied");
    field(
        &mut head,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    head.push_str("\r\n");
    head.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    // Part 1: for people.
    let _ = write!(head, "--{boundary}\r\n");
    field(&mut head, "Content-Type", "text/plain; charset=us-ascii");
    field(&mut head, "Content-Description", "Notification");
    head.push_str("\r\n");
    head.push_str(&human_text(input, &host));

    // Part 2: for machines.
    let _ = write!(head, "\r\n--{boundary}\r\n");
    field(&mut head, "Content-Type", "message/delivery-status");
    field(&mut head, "Content-Description", "Delivery report");
    head.push_str("\r\n");
    head.push_str(&delivery_status(input, &host));

    // Part 3: the original, whole or its header section.
    let _ = write!(head, "\r\n--{boundary}\r\n");
    field(&mut head, "Content-Type", returned.content_type);
    if let Some(encoding) = returned.transfer_encoding {
        field(&mut head, "Content-Transfer-Encoding", encoding);
    }
    field(&mut head, "Content-Description", returned.description);
    head.push_str("\r\n");

    let mut out = head.into_bytes();
    out.extend_from_slice(returned.body);
    if !returned.body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

struct ReturnedPart<'a> {
    content_type: &'static str,
    transfer_encoding: Option<&'static str>,
    description: &'static str,
    body: &'a [u8],
}

/// RET=FULL returns the whole message as `message/rfc822` unless it is too large, BINARYMIME
/// (which `message/rfc822` cannot carry) or REQUIRETLS; otherwise `text/rfc822-headers` (RFC 6522
/// section 5).
fn returned_part<'a>(input: &DsnInput<'_>, original: &'a [u8]) -> ReturnedPart<'a> {
    // A REQUIRETLS message's body is not sent back over a DSN that may travel in clear text.
    let full = input.envelope.ret == DsnRet::Full
        && !input.envelope.requiretls
        && original.len() <= input.max_returned_bytes
        && input.envelope.body_type != BodyType::BinaryMime;
    let eight_bit = |bytes: &[u8]| if bytes.is_ascii() { None } else { Some("8bit") };
    if full {
        ReturnedPart {
            content_type: "message/rfc822",
            transfer_encoding: eight_bit(original),
            description: "Undelivered message",
            body: original,
        }
    } else {
        let headers = crate::rfc5322::header_section(original);
        ReturnedPart {
            content_type: "text/rfc822-headers",
            transfer_encoding: eight_bit(headers),
            description: "Undelivered message headers",
            body: headers,
        }
    }
}

/// CRLF everywhere: bare LF and bare CR become CRLF.
fn normalize_line_endings(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 50);
    let mut iter = bytes.iter().copied().peekable();
    while let Some(b) = iter.next() {
        match b {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if iter.peek() == Some(&b'\n') {
                    iter.next();
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            _ => out.push(b),
        }
    }
    out
}

fn subject(recipients: &[RecipientReport<'_>]) -> &'static str {
    let any = |action| recipients.iter().any(|r| r.action == action);
    if any(DsnAction::Failed) {
        "Undelivered Mail Returned to Sender"
    } else if any(DsnAction::Delayed) {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    }
}

fn human_text(input: &DsnInput<'_>, host: &str) -> String {
    let mut text = format!("This is the mail system at host {host}.\r\n\r\n");
    let failed = input
        .recipients
        .iter()
        .any(|r| r.action == DsnAction::Failed);
    let delayed = input
        .recipients
        .iter()
        .any(|r| r.action == DsnAction::Delayed);
    if failed {
        text.push_str(
            "Your message could not be delivered to one or more recipients.\r\n\
             It is attached below. This is a permanent error.\r\n\r\n",
        );
    } else if delayed {
        text.push_str(
            "Your message has not been delivered to one or more recipients yet.\r\n\
             The mail system will keep trying; you do not need to resend it.\r\n\r\n",
        );
    } else {
        text.push_str("Your message was delivered to the recipients listed below.\r\n\r\n");
    }
    let _ = write!(text, "Queue ID: {}\r\n\r\n", input.message_id);
    for report in input.recipients {
        let address = header_safe(&report.recipient.address);
        let _ = write!(text, "<{address}>: {}", report.action.as_str());
        if let Some(reply) = report.diagnostic_code {
            let _ = write!(text, ",\r\n    {}", header_safe(reply));
        }
        if let Some(mta) = report.remote_mta {
            let _ = write!(text, "\r\n    (remote host {})", header_safe(mta));
        }
        text.push_str("\r\n\r\n");
    }
    fold_body_lines(&text)
}

fn delivery_status(input: &DsnInput<'_>, host: &str) -> String {
    let mut out = String::new();
    field(&mut out, "Reporting-MTA", &format!("dns; {host}"));
    if let Some(envid) = &input.envelope.envid {
        field(&mut out, "Original-Envelope-Id", &header_safe(envid));
    }
    field(&mut out, "X-Volley-Queue-Id", &input.message_id.to_string());
    field(
        &mut out,
        "Arrival-Date",
        &crate::clock::rfc5322_date(input.envelope.received_at_s),
    );
    for report in input.recipients {
        out.push_str("\r\n");
        let rcpt = report.recipient;
        if let Some(orcpt) = &rcpt.orcpt {
            field(&mut out, "Original-Recipient", &header_safe(orcpt));
        }
        field(&mut out, "Final-Recipient", &typed_address(&rcpt.address));
        field(&mut out, "Action", report.action.as_str());
        let (class, subject, detail) = report.status;
        field(&mut out, "Status", &format!("{class}.{subject}.{detail}"));
        if let Some(mta) = report.remote_mta {
            field(
                &mut out,
                "Remote-MTA",
                &format!("dns; {}", header_safe(mta)),
            );
        }
        if let Some(reply) = report.diagnostic_code {
            field(
                &mut out,
                "Diagnostic-Code",
                &format!(
                    "{}; {}",
                    report.diagnostic_type.as_str(),
                    header_safe(reply)
                ),
            );
        }
        if let Some(at_s) = report.last_attempt_s {
            field(
                &mut out,
                "Last-Attempt-Date",
                &crate::clock::rfc5322_date(at_s),
            );
        }
        if let Some(until_s) = report.will_retry_until_s {
            field(
                &mut out,
                "Will-Retry-Until",
                &crate::clock::rfc5322_date(until_s),
            );
        }
        if let Some(category) = report.category {
            field(&mut out, "X-Volley-Bounce-Category", category.as_str());
        }
    }
    out
}

/// `rfc822; addr` for ASCII addresses; RFC 6533 `utf-8; addr` with `\x{HEX}` escapes otherwise.
fn typed_address(address: &str) -> String {
    if address.is_ascii() {
        return format!("rfc822; {}", header_safe(address));
    }
    let mut out = String::from("utf-8; ");
    for c in address.chars() {
        if c.is_ascii_graphic() && c != '\\' {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{{{:X}}}", u32::from(c));
        }
    }
    out
}

/// A header-safe version of untrusted text: line breaks and other controls become single spaces,
/// non-ASCII becomes `?`, runs of spaces collapse, ends are trimmed.
fn header_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = match c {
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// Appends `Name: value` CRLF, folded at spaces to `FOLD_AT_CHARS` (RFC 5322 section 2.2.3).
/// `value` must already be header-safe (ASCII, no controls).
fn field(out: &mut String, name: &str, value: &str) {
    let mut line_len = name.len() + 1;
    out.push_str(name);
    out.push(':');
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        for piece in split_long(word) {
            if line_len + 1 + piece.len() > FOLD_AT_CHARS && line_len > name.len() + 1 {
                out.push_str("\r\n");
                line_len = 0;
            }
            out.push(' ');
            out.push_str(piece);
            line_len += 1 + piece.len();
        }
    }
    out.push_str("\r\n");
}

/// Cuts an ASCII word into pieces of at most `MAX_WORD_CHARS`.
fn split_long(word: &str) -> impl Iterator<Item = &str> {
    let mut rest = word;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let at = rest.len().min(MAX_WORD_CHARS);
        let (piece, tail) = rest.split_at_checked(at).unwrap_or((rest, ""));
        rest = tail;
        Some(piece)
    })
}

/// Wraps body lines longer than `FOLD_AT_CHARS` at spaces (continuations indented).
fn fold_body_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive("\r\n") {
        let (content, ending) = match line.strip_suffix("\r\n") {
            Some(content) => (content, "\r\n"),
            None => (line, ""),
        };
        if content.len() <= FOLD_AT_CHARS {
            out.push_str(content);
        } else {
            let mut line_len = 0;
            for word in content.split(' ').filter(|w| !w.is_empty()) {
                for piece in split_long(word) {
                    if line_len > 0 && line_len + 1 + piece.len() > FOLD_AT_CHARS {
                        out.push_str("\r\n    ");
                        line_len = 4;
                    } else if line_len > 0 {
                        out.push(' ');
                        line_len += 1;
                    }
                    out.push_str(piece);
                    line_len += piece.len();
                }
            }
        }
        out.push_str(ending);
    }
    out
}

fn random_token(rng: &mut fastrand::Rng, chars: usize) -> String {
    (0..chars).map(|_| rng.alphanumeric()).collect()
}

#[cfg(test)]
mod tests;
