//! SMTP replies (RFC 5321 section 4.2) with enhanced status codes (RFC 3463, RFC 2034).
//!
//! A reply code and its enhanced code travel together as one typed constant
//! (`Reply::TOO_MANY_RECIPIENTS` is 452 and 4.5.3), so a call site cannot pair them wrongly.

use std::borrow::Cow;
use std::fmt;

use crate::number_text::push_decimal;

/// An enhanced mail system status code (RFC 3463): `class.subject.detail`, e.g. `4.5.3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedCode {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }

    /// Appends `class.subject.detail`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        push_decimal(out, u64::from(self.class));
        out.push(b'.');
        push_decimal(out, u64::from(self.subject));
        out.push(b'.');
        push_decimal(out, u64::from(self.detail));
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::with_capacity(16);
        self.write_to(&mut text);
        // Digits and dots only.
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced code and text. Text with `\n` in it is
/// sent as a multi-line reply (`250-first`, `250 last`), each line carrying the enhanced code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    text: Cow<'static, str>,
}

const fn reply(code: u16, class: u8, subject: u16, detail: u16, text: &'static str) -> Reply {
    Reply {
        code,
        enhanced: Some(EnhancedCode::new(class, subject, detail)),
        text: Cow::Borrowed(text),
    }
}

impl Reply {
    /// 250 2.0.0: generic success (RSET, NOOP).
    pub const OK: Reply = reply(250, 2, 0, 0, "Ok");
    /// 250 2.1.0: MAIL accepted.
    pub const SENDER_OK: Reply = reply(250, 2, 1, 0, "Ok");
    /// 250 2.1.5: RCPT accepted.
    pub const RECIPIENT_OK: Reply = reply(250, 2, 1, 5, "Ok");
    /// 550 5.7.1: the recipient is on the customer's suppression list.
    pub const RECIPIENT_SUPPRESSED: Reply = reply(550, 5, 7, 1, "Recipient suppressed");
    /// 354: go ahead with the DATA body (RFC 2034 gives 3xx replies no enhanced code).
    pub const START_MAIL_INPUT: Reply = Reply {
        code: 354,
        enhanced: None,
        text: Cow::Borrowed("End data with <CR><LF>.<CR><LF>"),
    };
    /// 221 2.0.0: answer to QUIT.
    pub const BYE: Reply = reply(221, 2, 0, 0, "Bye");
    /// 252 2.5.0: VRFY is never answered truthfully (it would leak the user list).
    pub const CANNOT_VRFY: Reply = reply(
        252,
        2,
        5,
        0,
        "Cannot VRFY user, but will accept message and attempt delivery",
    );
    /// 214 2.0.0: answer to HELP.
    pub const HELP: Reply = reply(
        214,
        2,
        0,
        0,
        "See RFC 5321 https://www.rfc-editor.org/rfc/rfc5321",
    );
    /// 220 2.0.0: answer to STARTTLS; the TLS handshake follows.
    pub const READY_TO_START_TLS: Reply = reply(220, 2, 0, 0, "Ready to start TLS");
    /// 235 2.7.0: AUTH succeeded.
    pub const AUTH_SUCCEEDED: Reply = reply(235, 2, 7, 0, "Authentication successful");
    /// 535 5.7.8: AUTH credentials refused.
    pub const AUTH_FAILED: Reply = reply(535, 5, 7, 8, "Authentication credentials invalid");
    /// 501 5.0.0: the client answered a 334 challenge with `*`.
    pub const AUTH_CANCELLED: Reply = reply(501, 5, 0, 0, "Authentication cancelled");
    /// 501 5.5.2: an AUTH response that is not base64 or not a valid PLAIN message.
    pub const AUTH_BAD_RESPONSE: Reply = reply(501, 5, 5, 2, "Cannot decode client response");
    /// 504 5.5.4: an AUTH mechanism other than PLAIN and LOGIN.
    pub const AUTH_UNSUPPORTED_MECHANISM: Reply =
        reply(504, 5, 5, 4, "Unrecognized authentication mechanism");
    /// 503 5.5.1: AUTH after a successful AUTH.
    pub const ALREADY_AUTHENTICATED: Reply = reply(503, 5, 5, 1, "Already authenticated");
    /// 502 5.5.1: AUTH on a listener without authentication.
    pub const AUTH_NOT_AVAILABLE: Reply = reply(502, 5, 5, 1, "Authentication not available");
    /// 538 5.7.11: AUTH before STARTTLS (RFC 4954 section 6).
    pub const ENCRYPTION_REQUIRED: Reply = reply(
        538,
        5,
        7,
        11,
        "Encryption required for requested authentication mechanism",
    );
    /// 530 5.7.0: MAIL without AUTH on a listener that requires it.
    pub const AUTH_REQUIRED: Reply = reply(530, 5, 7, 0, "Authentication required");
    /// 554 5.7.1: RCPT from a peer that may not relay and has not authenticated.
    pub const RELAY_DENIED: Reply = reply(554, 5, 7, 1, "Relaying denied");
    /// 503 5.5.1: a command out of sequence.
    pub const BAD_SEQUENCE: Reply = reply(503, 5, 5, 1, "Bad sequence of commands");
    /// 503 5.5.1: MAIL, AUTH or STARTTLS before HELO/EHLO.
    pub const HELO_FIRST: Reply = reply(503, 5, 5, 1, "Send HELO/EHLO first");
    /// 503 5.5.1: MAIL inside a transaction.
    pub const NESTED_MAIL: Reply = reply(503, 5, 5, 1, "Sender already specified");
    /// 503 5.5.1: RCPT, DATA or BDAT before MAIL.
    pub const MAIL_FIRST: Reply = reply(503, 5, 5, 1, "Send MAIL first");
    /// 503 5.5.1: DATA in a transaction that used BDAT or declared BODY=BINARYMIME (RFC 3030).
    pub const DATA_AFTER_BDAT: Reply = reply(
        503,
        5,
        5,
        1,
        "DATA not allowed in a BDAT or BINARYMIME transaction",
    );
    /// 503 5.5.1: STARTTLS or AUTH inside a mail transaction.
    pub const NOT_IN_TRANSACTION: Reply =
        reply(503, 5, 5, 1, "Not allowed during a mail transaction");
    /// 503 5.5.1: STARTTLS on a connection that already has TLS.
    pub const TLS_ALREADY_ACTIVE: Reply = reply(503, 5, 5, 1, "TLS already active");
    /// 454 4.7.0: STARTTLS on a listener without TLS.
    pub const TLS_NOT_AVAILABLE: Reply = reply(454, 4, 7, 0, "TLS not available");
    /// 500 5.5.1: a command verb this server does not know.
    pub const UNKNOWN_COMMAND: Reply = reply(500, 5, 5, 1, "Command unrecognized");
    /// 502 5.5.1: a known command this server does not implement (EXPN).
    pub const NOT_IMPLEMENTED: Reply = reply(502, 5, 5, 1, "Command not implemented");
    /// 501 5.5.2: a syntax error in a command's arguments.
    pub const SYNTAX_ERROR: Reply = reply(501, 5, 5, 2, "Syntax error in parameters or arguments");
    /// 501 5.5.4: arguments to a command that takes none.
    pub const NO_ARGUMENTS_ALLOWED: Reply = reply(501, 5, 5, 4, "No arguments allowed");
    /// 501 5.1.7: a malformed reverse path.
    pub const BAD_SENDER_ADDRESS: Reply = reply(501, 5, 1, 7, "Bad sender address syntax");
    /// 501 5.1.3: a malformed forward path.
    pub const BAD_RECIPIENT_ADDRESS: Reply = reply(501, 5, 1, 3, "Bad recipient address syntax");
    /// 553 5.6.7: a non-ASCII address without the SMTPUTF8 parameter (RFC 6531 section 3.5).
    pub const SMTPUTF8_REQUIRED: Reply = reply(553, 5, 6, 7, "Non-ASCII address requires SMTPUTF8");
    /// RFC 8689: REQUIRETLS is offered, and taken, only over TLS.
    pub const REQUIRETLS_NEEDS_TLS: Reply =
        reply(530, 5, 7, 10, "REQUIRETLS is only accepted over TLS");
    /// 555 5.5.4: a MAIL or RCPT parameter this server does not know or that is malformed.
    pub const UNKNOWN_PARAMETER: Reply = reply(555, 5, 5, 4, "Unsupported or malformed parameter");
    /// 500 5.5.6: a command line over 512 octets, or a DATA text line over 1000 octets.
    pub const LINE_TOO_LONG: Reply = reply(500, 5, 5, 6, "Line too long");
    /// 500 5.5.2: a command line ended by a bare LF instead of CRLF.
    pub const BARE_LINEFEED_IN_COMMAND: Reply =
        reply(500, 5, 5, 2, "Command line must end with CRLF");
    /// 550 5.6.11: a message with a bare CR or LF (SMTP smuggling defence, like Postfix).
    pub const BARE_NEWLINE_IN_DATA: Reply = reply(
        550,
        5,
        6,
        11,
        "Message contains bare CR or LF; use CRLF line endings",
    );
    /// 552 5.3.4: SIZE or the received body over `max_message_bytes`.
    pub const MESSAGE_TOO_BIG: Reply = reply(
        552,
        5,
        3,
        4,
        "Message size exceeds fixed maximum message size",
    );
    /// 554 5.5.1: DATA or BDAT in a transaction without an accepted recipient.
    pub const NO_VALID_RECIPIENTS: Reply = reply(554, 5, 5, 1, "No valid recipients");
    /// 452 4.5.3: more RCPTs than `max_recipients`; the client sends the rest in a new transaction.
    pub const TOO_MANY_RECIPIENTS: Reply = reply(452, 4, 5, 3, "Too many recipients");
    /// 452 4.3.1: spool space or a sending limit (for the driver's `mail_result`).
    pub const INSUFFICIENT_STORAGE: Reply = reply(452, 4, 3, 1, "Insufficient system storage");
    /// 451 4.3.0: a local failure while accepting (for the driver).
    pub const LOCAL_ERROR: Reply = reply(451, 4, 3, 0, "Local error in processing");
    /// 421 4.7.0: too many errors in one session; the connection is closed.
    pub const TOO_MANY_ERRORS: Reply = reply(421, 4, 7, 0, "Too many errors, closing connection");
    /// 421 4.4.2: the peer was silent longer than the read timeout; the connection is closed.
    pub const TIMEOUT: Reply = reply(421, 4, 4, 2, "Timeout exceeded, closing connection");
    /// 421 4.3.2: the server is shutting down (for the driver).
    pub const SHUTTING_DOWN: Reply =
        reply(421, 4, 3, 2, "Service shutting down, closing connection");

    /// A reply with any code and text. `code` should be 200..=599; `text` lines are split at `\n`.
    pub fn new(
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: impl Into<Cow<'static, str>>,
    ) -> Reply {
        Reply {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if the reply carries one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text, lines separated by `\n`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// A 2xx (completion) or 3xx (intermediate) reply.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// A 4xx reply: the client may try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The same reply with other text (keeps code and enhanced code).
    pub fn with_text(&self, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code: self.code,
            enhanced: self.enhanced,
            text: text.into(),
        }
    }

    /// Appends the wire form: one `code[-| ][enhanced ]text\r\n` line per text line. CR and other
    /// control characters in the text are dropped so a reply can never break the framing.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let separator = if lines.peek().is_some() { b'-' } else { b' ' };
            let code = self.code.min(999);
            out.extend_from_slice(&[
                b'0' + (code / 100) as u8,
                b'0' + (code / 10 % 10) as u8,
                b'0' + (code % 10) as u8,
                separator,
            ]);
            if let Some(enhanced) = self.enhanced {
                enhanced.write_to(out);
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend(line.bytes().filter(|b| *b >= 0x20 && *b != 0x7f));
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_to(&mut out);
        f.write_str(String::from_utf8_lossy(&out).trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn single_line_carries_the_enhanced_code() {
        assert_eq!(
            wire(&Reply::TOO_MANY_RECIPIENTS),
            "452 4.5.3 Too many recipients\r\n"
        );
        assert_eq!(Reply::TOO_MANY_RECIPIENTS.code(), 452);
        assert_eq!(
            Reply::TOO_MANY_RECIPIENTS.enhanced().unwrap().to_string(),
            "4.5.3"
        );
        assert!(!Reply::TOO_MANY_RECIPIENTS.is_positive());
        assert!(Reply::TOO_MANY_RECIPIENTS.is_transient());
        assert!(Reply::OK.is_positive());
        assert!(Reply::START_MAIL_INPUT.is_positive());
    }

    #[test]
    fn multi_line_uses_dashes_until_the_last_line() {
        let reply = Reply::new(250, None, "mx.example\nPIPELINING\nSIZE 10");
        assert_eq!(
            wire(&reply),
            "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        let reply = Reply::new(550, Some(EnhancedCode::new(5, 7, 1)), "one\ntwo");
        assert_eq!(wire(&reply), "550-5.7.1 one\r\n550 5.7.1 two\r\n");
    }

    #[test]
    fn control_characters_cannot_break_framing() {
        let reply = Reply::new(451, None, "bad\r\0text");
        assert_eq!(wire(&reply), "451 badtext\r\n");
    }

    #[test]
    fn without_enhanced_code_or_text() {
        assert_eq!(
            wire(&Reply::START_MAIL_INPUT),
            "354 End data with <CR><LF>.<CR><LF>\r\n"
        );
        assert_eq!(
            wire(&Reply::new(250, Some(EnhancedCode::new(2, 0, 0)), "")),
            "250 2.0.0\r\n"
        );
        assert_eq!(Reply::OK.to_string(), "250 2.0.0 Ok");
        assert_eq!(Reply::OK.with_text("Fine").to_string(), "250 2.0.0 Fine");
    }
}
