//! The sink's SMTP server session: bytes in, replies out, no IO and no clock.
//!
//! The driver feeds whatever it read with [`Session::advance`], which appends replies to an output
//! buffer and stops at each complete message so the driver can decide the verdict (failure
//! injection, delay) before [`Session::reply_to_message`] writes the end-of-data reply. Pipelined
//! input is handled naturally: the driver keeps calling `advance` until it needs more input, then
//! writes every reply of the batch in one write.

use memchr::memmem;

use super::faults::{Faults, Stage, stage_refusal};

/// Longest command line accepted (RFC 5321 says 512; the sink is lenient).
pub const MAX_COMMAND_LINE_BYTES: usize = 4096;
/// Recipients accepted per transaction; beyond this RCPT gets 452 4.5.3.
pub const MAX_RECIPIENTS: usize = 1000;
/// How much of a message is kept to find its Message-ID header (only when asked to).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest message advertised with SIZE (not enforced: the sink discards bodies).
pub const MAX_MESSAGE_BYTES: u64 = 100 * 1024 * 1024;

const GREETING: &[u8] = b"220 volley-bench sink ESMTP\r\n";

/// What the driver must do after [`Session::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every complete command was handled: write the replies, then read more input.
    NeedInput,
    /// A message ended: decide a verdict and call [`Session::reply_to_message`].
    MessageReceived,
    /// The session is over (QUIT): write the replies and close.
    Close,
    /// STARTTLS was answered with 220: write the replies, then run the handshake and call
    /// [`Session::tls_established`] (`--tls-cert`), or never answer it (`--stall-tls`: every
    /// later input is ignored). Input read after the STARTTLS line is not to be fed again (the
    /// STARTTLS command injection).
    StartTls,
}

/// How far [`Session::advance`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that were used; the rest must be offered again with more input.
    pub consumed: usize,
    /// What to do next.
    pub step: Step,
}

/// The fate of a received message, decided by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 250 2.0.0
    Accept,
    /// 450 4.2.0
    TempFail,
    /// 550 5.1.1
    PermFail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Command,
    /// Reading a DATA body; `line_start` says the next byte begins a line.
    Data {
        line_start: bool,
    },
    /// Reading a BDAT chunk; `refusal` is the reply to give instead of accepting it.
    Bdat {
        remaining_bytes: u64,
        last: bool,
        refusal: Option<&'static [u8]>,
    },
    /// A message ended and waits for its verdict.
    AwaitingVerdict,
    /// After STARTTLS: input is swallowed, nothing is answered.
    Stalled,
    Closed,
}

/// One SMTP server session of the sink.
#[derive(Debug)]
pub struct Session {
    state: State,
    ehlo: String,
    sender: Option<String>,
    recipients: Vec<String>,
    message_bytes: u64,
    keep_head: bool,
    head: Vec<u8>,
    finder_lf_dot: memmem::Finder<'static>,
    /// Every RCPT is refused with 554 5.7.1, as a blocklisting server does (`--block-rcpt-from`).
    blocked: bool,
    /// EHLO advertises STARTTLS and STARTTLS is answered 220 (`--tls-cert`, `--stall-tls`).
    starttls: bool,
    /// What follows the 220: a handshake (`--tls-cert`) or silence (`--stall-tls`).
    stall_after_starttls: bool,
    /// The session runs over TLS (after a STARTTLS handshake).
    tls: bool,
    /// The current transaction's MAIL carried REQUIRETLS (RFC 8689; offered over TLS only).
    requiretls: bool,
    /// Random 4xx/5xx at MAIL, RCPT and DATA/BDAT (`--fail-at`), with the generator that draws.
    stage_faults: Option<(Faults, fastrand::Rng)>,
}

impl Session {
    /// A new session; with `keep_head` it keeps the start of each message to find its Message-ID.
    pub fn new(keep_head: bool) -> Session {
        Session {
            state: State::Command,
            ehlo: String::new(),
            sender: None,
            recipients: Vec::new(),
            message_bytes: 0,
            keep_head,
            head: Vec::new(),
            finder_lf_dot: memmem::Finder::new(b"\n."),
            blocked: false,
            starttls: false,
            stall_after_starttls: false,
            tls: false,
            requiretls: false,
            stage_faults: None,
        }
    }

    /// Advertises STARTTLS and answers it with 220; the driver then runs the handshake and calls
    /// [`Session::tls_established`] (`--tls-cert`).
    pub fn offer_starttls(&mut self) {
        self.starttls = true;
        self.stall_after_starttls = false;
    }

    /// The STARTTLS handshake completed: the session starts over (RFC 3207 4.2: the client must
    /// EHLO again) and STARTTLS is no longer offered.
    pub fn tls_established(&mut self) {
        self.tls = true;
        self.starttls = false;
        self.ehlo.clear();
        self.reset_transaction();
        self.state = State::Command;
    }

    /// Whether the session runs over TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Whether the current transaction's MAIL carried REQUIRETLS.
    pub fn requiretls(&self) -> bool {
        self.requiretls
    }

    /// Advertises STARTTLS and answers it with 220, after which the session only swallows input:
    /// the handshake never completes (`--stall-tls`).
    pub fn offer_stalling_starttls(&mut self) {
        self.starttls = true;
        self.stall_after_starttls = true;
    }

    /// Fails replies at MAIL, RCPT and DATA/BDAT as `faults` says, drawing with `rng`.
    pub fn fail_stages(&mut self, faults: Faults, rng: fastrand::Rng) {
        self.stage_faults = Some((faults, rng));
    }

    /// Whether a DATA or BDAT body is being read (after 354, or after a BDAT command).
    pub fn in_body(&self) -> bool {
        matches!(self.state, State::Data { .. } | State::Bdat { .. })
    }

    /// The refusal for a reply at `stage`, if the stage faults draw a failure.
    fn stage_failure(&mut self, stage: Stage) -> Option<&'static [u8]> {
        let (faults, rng) = self.stage_faults.as_mut()?;
        let verdict = faults.verdict(stage, rng.f64() * 100.0);
        stage_refusal(stage, verdict)
    }

    /// Refuses every recipient of this session with 554 5.7.1, as Postfix's `reject_rbl_client`
    /// does for a blocklisted client (at RCPT, after a normal greeting, EHLO and MAIL).
    pub fn block_recipients(&mut self) {
        self.blocked = true;
    }

    /// The 220 greeting to send first.
    pub fn greeting() -> &'static [u8] {
        GREETING
    }

    /// The EHLO/HELO name given by the client (empty if none).
    pub fn ehlo(&self) -> &str {
        &self.ehlo
    }

    /// The reverse path of the current transaction.
    pub fn sender(&self) -> Option<&str> {
        self.sender.as_deref()
    }

    /// Accepted recipients of the current transaction.
    pub fn recipients(&self) -> &[String] {
        &self.recipients
    }

    /// Size of the current message after removing dot-stuffing.
    pub fn message_bytes(&self) -> u64 {
        self.message_bytes
    }

    /// The Message-ID header of the current message, if it was kept and has one.
    pub fn message_id(&self) -> Option<&str> {
        if self.keep_head {
            find_message_id(&self.head)
        } else {
            None
        }
    }

    /// Handles as much of `input` as possible, appending replies to `out`.
    pub fn advance(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress {
        let mut pos = 0;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            let (used, step) = match self.state {
                State::Command => self.command(rest, out),
                State::Data { line_start } => self.data(rest, line_start),
                State::Bdat {
                    remaining_bytes,
                    last,
                    refusal,
                } => self.bdat(rest, remaining_bytes, last, refusal, out),
                State::AwaitingVerdict => (0, Some(Step::MessageReceived)),
                State::Stalled => (rest.len(), Some(Step::NeedInput)),
                State::Closed => (rest.len(), Some(Step::Close)),
            };
            pos += used;
            if let Some(step) = step {
                return Progress {
                    consumed: pos,
                    step,
                };
            }
        }
    }

    /// Writes the end-of-data reply for the message that [`Step::MessageReceived`] announced.
    pub fn reply_to_message(&mut self, verdict: Verdict, out: &mut Vec<u8>) {
        if self.state != State::AwaitingVerdict {
            return;
        }
        out.extend_from_slice(match verdict {
            Verdict::Accept => b"250 2.0.0 Ok: queued\r\n".as_slice(),
            Verdict::TempFail => b"450 4.2.0 Temporary failure injected\r\n",
            Verdict::PermFail => b"550 5.1.1 Permanent failure injected\r\n",
        });
        self.message_answered(false);
    }

    /// Ends the message that [`Step::MessageReceived`] announced after the driver wrote its own
    /// end-of-data reply; with `close` (a 421 reply) the session ends too.
    pub fn message_answered(&mut self, close: bool) {
        if self.state != State::AwaitingVerdict {
            return;
        }
        self.reset_transaction();
        self.state = if close { State::Closed } else { State::Command };
    }

    fn reset_transaction(&mut self) {
        self.sender = None;
        self.requiretls = false;
        self.recipients.clear();
        self.message_bytes = 0;
        self.head.clear();
    }

    fn take_content(&mut self, bytes: &[u8]) {
        self.message_bytes += bytes.len() as u64;
        if self.keep_head && self.head.len() < MAX_HEAD_BYTES {
            let room = MAX_HEAD_BYTES - self.head.len();
            self.head
                .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or(bytes));
        }
    }

    /// Handles one command line; `None` as step means "keep going".
    fn command(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<Step>) {
        let Some(lf) = memchr::memchr(b'\n', input) else {
            if input.len() > MAX_COMMAND_LINE_BYTES {
                // Discard the overlong line; its end will be taken as a (bad) command.
                out.extend_from_slice(b"500 5.5.6 Command line too long\r\n");
                return (input.len(), Some(Step::NeedInput));
            }
            return (0, Some(Step::NeedInput));
        };
        let line = trim_line_end(input.get(..lf).unwrap_or_default());
        let verb = line.get(..4).unwrap_or(line);
        let arg = line.get(4..).unwrap_or_default();
        let mut step = None;
        if verb.eq_ignore_ascii_case(b"EHLO") {
            self.ehlo = String::from_utf8_lossy(trim(arg)).into_owned();
            self.reset_transaction();
            out.extend_from_slice(b"250-volley-bench sink\r\n250-PIPELINING\r\n250-SIZE ");
            out.extend_from_slice(MAX_MESSAGE_BYTES.to_string().as_bytes());
            out.extend_from_slice(
                b"\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n",
            );
            if self.starttls {
                out.extend_from_slice(b"250-STARTTLS\r\n");
            }
            if self.tls {
                out.extend_from_slice(b"250-REQUIRETLS\r\n");
            }
            out.extend_from_slice(b"250 CHUNKING\r\n");
        } else if verb.eq_ignore_ascii_case(b"HELO") {
            self.ehlo = String::from_utf8_lossy(trim(arg)).into_owned();
            self.reset_transaction();
            out.extend_from_slice(b"250 volley-bench sink\r\n");
        } else if verb.eq_ignore_ascii_case(b"MAIL") {
            if self.sender.is_some() {
                out.extend_from_slice(b"503 5.5.1 Nested MAIL command\r\n");
            } else if let Some(path) = path_after(arg, b"FROM:") {
                if let Some(refusal) = self.stage_failure(Stage::Mail) {
                    out.extend_from_slice(refusal);
                    return (lf + 1, None);
                }
                self.sender = Some(String::from_utf8_lossy(path).into_owned());
                self.requiretls = arg
                    .split(|b| *b == b' ')
                    .any(|w| w.eq_ignore_ascii_case(b"REQUIRETLS"));
                out.extend_from_slice(b"250 2.1.0 Ok\r\n");
            } else {
                out.extend_from_slice(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
            }
        } else if verb.eq_ignore_ascii_case(b"RCPT") {
            if self.sender.is_none() {
                out.extend_from_slice(b"503 5.5.1 Need MAIL first\r\n");
            } else if let Some(path) = path_after(arg, b"TO:") {
                match recipient_reply(path) {
                    _ if self.blocked => out.extend_from_slice(
                        b"554 5.7.1 Service unavailable; Client host blocked using zen.spamhaus.test\r\n",
                    ),
                    Some(refusal) => out.extend_from_slice(refusal),
                    None if self.recipients.len() >= MAX_RECIPIENTS => {
                        out.extend_from_slice(b"452 4.5.3 Too many recipients\r\n");
                    }
                    None => match self.stage_failure(Stage::Rcpt) {
                        Some(refusal) => out.extend_from_slice(refusal),
                        None => {
                            self.recipients
                                .push(String::from_utf8_lossy(path).into_owned());
                            out.extend_from_slice(b"250 2.1.5 Ok\r\n");
                        }
                    },
                }
            } else {
                out.extend_from_slice(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n");
            }
        } else if verb.eq_ignore_ascii_case(b"DATA") {
            let refusal = match self.transaction_refusal() {
                Some(r) => Some(r),
                None => self.stage_failure(Stage::Data),
            };
            if let Some(refusal) = refusal {
                out.extend_from_slice(refusal);
            } else {
                out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                self.message_bytes = 0;
                self.head.clear();
                self.state = State::Data { line_start: true };
            }
        } else if verb.eq_ignore_ascii_case(b"BDAT") {
            match parse_bdat(arg) {
                Some((remaining_bytes, last)) => {
                    let refusal = match self.transaction_refusal() {
                        Some(r) => Some(r),
                        None => self.stage_failure(Stage::Data),
                    };
                    self.state = State::Bdat {
                        remaining_bytes,
                        last,
                        refusal,
                    };
                }
                None => out.extend_from_slice(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n"),
            }
        } else if verb.eq_ignore_ascii_case(b"RSET") {
            self.reset_transaction();
            out.extend_from_slice(b"250 2.0.0 Ok\r\n");
        } else if verb.eq_ignore_ascii_case(b"NOOP") {
            out.extend_from_slice(b"250 2.0.0 Ok\r\n");
        } else if verb.eq_ignore_ascii_case(b"QUIT") {
            out.extend_from_slice(b"221 2.0.0 Bye\r\n");
            self.state = State::Closed;
            step = Some(Step::Close);
        } else if self.starttls && line.eq_ignore_ascii_case(b"STARTTLS") {
            out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
            // With a handshake to come, the driver decides what happens to later input.
            self.state = if self.stall_after_starttls {
                State::Stalled
            } else {
                State::Closed
            };
            step = Some(Step::StartTls);
        } else if verb.eq_ignore_ascii_case(b"VRFY") {
            out.extend_from_slice(b"252 2.5.0 Cannot verify\r\n");
        } else {
            out.extend_from_slice(b"500 5.5.2 Command not recognized\r\n");
        }
        (lf + 1, step)
    }

    /// Why DATA/BDAT cannot start now, if it cannot.
    fn transaction_refusal(&self) -> Option<&'static [u8]> {
        if self.sender.is_none() {
            Some(b"503 5.5.1 Need MAIL first\r\n")
        } else if self.recipients.is_empty() {
            Some(b"554 5.5.1 No valid recipients\r\n")
        } else {
            None
        }
    }

    /// Scans a DATA body for the terminating `<CRLF>.<CRLF>`, removing dot-stuffing from the count.
    fn data(&mut self, input: &[u8], line_start: bool) -> (usize, Option<Step>) {
        let mut pos = 0;
        let mut at_line_start = line_start;
        loop {
            if at_line_start {
                // Here input[pos] begins a line: ".\r\n" ends the message, "." is stuffing.
                let rest = input.get(pos..).unwrap_or_default();
                if rest.starts_with(b".\r\n") || rest.starts_with(b".\n") {
                    let end = if rest.starts_with(b".\r\n") { 3 } else { 2 };
                    self.state = State::AwaitingVerdict;
                    return (pos + end, Some(Step::MessageReceived));
                }
                if rest.len() < 3 && b".\r\n".starts_with(rest) {
                    // Cannot tell yet; keep these bytes for the next call.
                    self.state = State::Data { line_start: true };
                    return (pos, Some(Step::NeedInput));
                }
                if rest.first() == Some(&b'.') {
                    pos += 1; // a stuffed dot is not part of the message
                }
            }
            let rest = input.get(pos..).unwrap_or_default();
            match self.finder_lf_dot.find(rest) {
                Some(i) => {
                    // Content through the LF belongs to the message; the dot begins a new line.
                    self.take_content(rest.get(..=i).unwrap_or_default());
                    pos += i + 1;
                    at_line_start = true;
                }
                None => {
                    self.take_content(rest);
                    self.state = State::Data {
                        line_start: rest.last().map_or(at_line_start, |&b| b == b'\n'),
                    };
                    return (input.len(), Some(Step::NeedInput));
                }
            }
        }
    }

    fn bdat(
        &mut self,
        input: &[u8],
        remaining_bytes: u64,
        last: bool,
        refusal: Option<&'static [u8]>,
        out: &mut Vec<u8>,
    ) -> (usize, Option<Step>) {
        let take = usize::try_from(remaining_bytes)
            .unwrap_or(usize::MAX)
            .min(input.len());
        let chunk = input.get(..take).unwrap_or_default();
        if refusal.is_none() {
            self.take_content(chunk);
        }
        let remaining_bytes = remaining_bytes - take as u64;
        if remaining_bytes > 0 {
            self.state = State::Bdat {
                remaining_bytes,
                last,
                refusal,
            };
            return (take, Some(Step::NeedInput));
        }
        if let Some(refusal) = refusal {
            out.extend_from_slice(refusal);
            // A failed BDAT fails the transaction (RFC 3030 §2); resetting it here lets pipelined
            // clients start the next one without RSET.
            self.reset_transaction();
            self.state = State::Command;
            return (take, None);
        }
        if last {
            self.state = State::AwaitingVerdict;
            return (take, Some(Step::MessageReceived));
        }
        out.extend_from_slice(b"250 2.0.0 Chunk accepted\r\n");
        self.state = State::Command;
        (take, None)
    }
}

/// The refusal a recipient asks for by its local part (`tempfail`, `permfail`, optionally `+tag`).
fn recipient_reply(address: &[u8]) -> Option<&'static [u8]> {
    let at = memchr::memrchr(b'@', address).unwrap_or(address.len());
    let local = address.get(..at).unwrap_or_default();
    let base = match memchr::memchr(b'+', local) {
        Some(plus) => local.get(..plus).unwrap_or_default(),
        None => local,
    };
    if base.eq_ignore_ascii_case(b"tempfail") {
        Some(b"451 4.3.0 Temporary failure requested by recipient\r\n")
    } else if base.eq_ignore_ascii_case(b"permfail") {
        Some(b"550 5.1.1 Permanent failure requested by recipient\r\n")
    } else {
        None
    }
}

/// The address inside `<...>` after a `FROM:`/`TO:` keyword (case-insensitive, spaces allowed).
fn path_after<'a>(arg: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let arg = trim(arg);
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = trim(arg.get(keyword.len()..)?);
    if rest.first() != Some(&b'<') {
        // Some clients omit the brackets; take the first word.
        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        return rest.get(..end).filter(|p| !p.is_empty());
    }
    let close = memchr::memchr(b'>', rest)?;
    rest.get(1..close)
}

fn parse_bdat(arg: &[u8]) -> Option<(u64, bool)> {
    let text = std::str::from_utf8(arg).ok()?;
    let mut words = text.split_ascii_whitespace();
    let size = words.next()?.parse().ok()?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// The Message-ID header value in a message's header section, if any.
pub fn find_message_id(message: &[u8]) -> Option<&str> {
    let mut lines = message.split(|&b| b == b'\n');
    while let Some(line) = lines.next() {
        let line = trim_line_end(line);
        if line.is_empty() {
            return None; // end of the header section
        }
        let name = b"message-id:";
        if line.len() >= name.len() && line.get(..name.len())?.eq_ignore_ascii_case(name) {
            let value = trim(line.get(name.len()..)?);
            let value = if value.is_empty() {
                // Folded onto the next line.
                trim(trim_line_end(lines.next()?))
            } else {
                value
            };
            return std::str::from_utf8(value).ok().filter(|v| !v.is_empty());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes, deciding every message with `verdict`.
    fn run(input: &[u8], piece: usize, verdict: Verdict) -> (String, Vec<(u64, Vec<String>)>) {
        let mut session = Session::new(true);
        let mut out = Vec::new();
        let mut pending = Vec::new();
        let mut messages = Vec::new();
        for chunk in input.chunks(piece) {
            pending.extend_from_slice(chunk);
            loop {
                let p = session.advance(&pending, &mut out);
                pending.drain(..p.consumed);
                match p.step {
                    Step::NeedInput => break,
                    Step::MessageReceived => {
                        messages.push((session.message_bytes(), session.recipients().to_vec()));
                        session.reply_to_message(verdict, &mut out);
                    }
                    Step::Close | Step::StartTls => {
                        return (String::from_utf8(out).unwrap(), messages);
                    }
                }
            }
        }
        (String::from_utf8(out).unwrap(), messages)
    }

    fn codes(out: &str) -> Vec<&str> {
        out.lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect()
    }

    const TRANSACTION: &[u8] = b"EHLO client\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n\
RCPT TO:<tempfail+1@y.test>\r\nRCPT TO:<PermFail@y.test>\r\nDATA\r\n\
Message-ID: <id-1@test>\r\nSubject: s\r\n\r\n..dot line\r\nbody\r\n.\r\nQUIT\r\n";

    #[test]
    fn pipelined_transaction_at_every_split_size() {
        for piece in 1..=TRANSACTION.len() {
            let (out, messages) = run(TRANSACTION, piece, Verdict::Accept);
            assert_eq!(
                codes(&out),
                ["250", "250", "250", "451", "550", "354", "250", "221"],
                "piece {piece}"
            );
            // "Message-ID: <id-1@test>\r\n" 25 + "Subject: s\r\n" 12 + "\r\n" 2 + ".dot line\r\n" 11 + "body\r\n" 6
            assert_eq!(
                messages,
                vec![(56, vec!["x@y.test".to_string()])],
                "piece {piece}"
            );
        }
    }

    #[test]
    fn a_blocked_client_has_every_recipient_refused_with_5_7_1() {
        let mut session = Session::new(false);
        session.block_recipients();
        let mut out = Vec::new();
        let input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nQUIT\r\n";
        let mut pending = input.to_vec();
        loop {
            let p = session.advance(&pending, &mut out);
            pending.drain(..p.consumed);
            if p.step != Step::NeedInput || pending.is_empty() {
                break;
            }
        }
        let out = String::from_utf8(out).unwrap();
        assert_eq!(codes(&out), ["250", "250", "554", "554", "221"], "{out}");
        assert!(
            out.contains("554 5.7.1 Service unavailable; Client host blocked"),
            "{out}"
        );
        assert!(session.recipients().is_empty());
    }

    #[test]
    fn ehlo_advertises_extensions() {
        let (out, _) = run(b"EHLO c\r\n", 100, Verdict::Accept);
        for ext in [
            "PIPELINING",
            "SIZE",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "CHUNKING",
        ] {
            assert!(out.contains(ext), "{ext} missing in {out}");
        }
    }

    #[test]
    fn verdicts_give_their_codes() {
        let (out, _) = run(TRANSACTION, 7, Verdict::TempFail);
        assert!(out.contains("450 4.2.0"));
        let (out, _) = run(TRANSACTION, 7, Verdict::PermFail);
        assert!(out.contains("550 5.1.1 Permanent failure injected"));
    }

    #[test]
    fn empty_message_and_message_id_capture() {
        let mut session = Session::new(true);
        let mut out = Vec::new();
        let input = b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<r@d>\r\nDATA\r\n.\r\n";
        let p = session.advance(input, &mut out);
        assert_eq!(p.step, Step::MessageReceived);
        assert_eq!(p.consumed, input.len());
        assert_eq!(session.message_bytes(), 0);
        assert_eq!(session.sender(), Some(""));
        assert_eq!(session.message_id(), None);
    }

    #[test]
    fn message_id_found_case_insensitively_and_folded() {
        assert_eq!(
            find_message_id(b"From: a\r\nmessage-ID: <x@y>\r\n\r\nbody"),
            Some("<x@y>")
        );
        assert_eq!(
            find_message_id(b"Message-Id:\r\n <f@y>\r\n\r\n"),
            Some("<f@y>")
        );
        assert_eq!(
            find_message_id(b"From: a\r\n\r\nMessage-ID: <no@body>\r\n"),
            None
        );
    }

    #[test]
    fn bdat_chunks_and_refusals() {
        let input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r@d>\r\nBDAT 5\r\nhelloBDAT 3 LAST\r\nabcBDAT 2\r\nzzQUIT\r\n";
        for piece in 1..=input.len() {
            let (out, messages) = run(input, piece, Verdict::Accept);
            assert_eq!(
                codes(&out),
                ["250", "250", "250", "250", "250", "503", "221"]
            );
            assert_eq!(messages, vec![(8, vec!["r@d".to_string()])]);
        }
    }

    #[test]
    fn sequencing_errors() {
        let (out, messages) = run(
            b"RCPT TO:<a@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nDATA\r\nRSET\r\nNOOP\r\nBOGUS\r\nMAIL TO:<x>\r\nQUIT\r\n",
            3,
            Verdict::Accept,
        );
        assert_eq!(
            codes(&out),
            [
                "503", "503", "250", "503", "554", "250", "250", "500", "501", "221"
            ]
        );
        assert!(messages.is_empty());
    }

    #[test]
    fn a_closing_answer_ends_the_session() {
        let mut session = Session::new(false);
        let mut out = Vec::new();
        let input = b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<r@d>\r\nDATA\r\n.\r\nNOOP\r\n";
        let p = session.advance(input, &mut out);
        assert_eq!(p.step, Step::MessageReceived);
        out.extend_from_slice(b"421 4.7.0 go away\r\n");
        session.message_answered(true);
        let rest = input.get(p.consumed..).unwrap();
        assert_eq!(session.advance(rest, &mut out).step, Step::Close);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("421 4.7.0 go away\r\n")
        );
    }

    #[test]
    fn overlong_line_is_refused_without_panicking() {
        let mut long = vec![b'x'; MAX_COMMAND_LINE_BYTES + 10];
        long.extend_from_slice(b"\r\nNOOP\r\n");
        let (out, _) = run(&long, MAX_COMMAND_LINE_BYTES + 5, Verdict::Accept);
        assert_eq!(codes(&out), ["500", "500", "250"]);
    }

    #[test]
    fn stalling_starttls_is_advertised_answered_then_silent() {
        let mut session = Session::new(false);
        session.offer_stalling_starttls();
        let mut out = Vec::new();
        let p = session.advance(
            b"EHLO c\r\nSTARTTLS\r\n\x16\x03\x01\x02\x00NOOP\r\n",
            &mut out,
        );
        assert_eq!(p.step, Step::StartTls);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("250-STARTTLS\r\n"), "{text}");
        assert!(text.ends_with("220 2.0.0 Ready to start TLS\r\n"), "{text}");
        // The would-be ClientHello and anything after it get no answer.
        let before = out.len();
        let rest = b"\x16\x03\x01\x02\x00NOOP\r\n";
        let p = session.advance(rest, &mut out);
        assert_eq!((p.consumed, p.step), (rest.len(), Step::NeedInput));
        assert_eq!(out.len(), before);
        // Without the mode STARTTLS is neither advertised nor accepted.
        let (out, _) = run(b"EHLO c\r\nSTARTTLS\r\n", 100, Verdict::Accept);
        assert!(!out.contains("STARTTLS"), "{out}");
        assert_eq!(codes(&out), ["250", "500"]);
    }

    #[test]
    fn starttls_restarts_the_session_over_tls() {
        let mut session = Session::new(false);
        session.offer_starttls();
        let mut out = Vec::new();
        let input = b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@x>\r\n";
        let p = session.advance(input, &mut out);
        assert_eq!(p.step, Step::StartTls);
        assert_eq!(
            p.consumed,
            input.len() - b"MAIL FROM:<injected@x>\r\n".len(),
            "what follows STARTTLS is left to the driver (which drops it)"
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("250-STARTTLS\r\n"), "{text}");
        assert!(!session.tls());
        session.tls_established();
        assert!(session.tls());
        assert_eq!(session.ehlo(), "", "EHLO again after the handshake");
        let text = replies(&mut session, b"EHLO c\r\nSTARTTLS\r\n");
        assert!(!text.contains("STARTTLS"), "not offered twice: {text}");
        assert!(
            text.contains("250-REQUIRETLS\r\n"),
            "offered over TLS: {text}"
        );
        assert_eq!(codes(&text), ["250", "500"]);
        replies(&mut session, b"MAIL FROM:<a@b> REQUIRETLS\r\n");
        assert!(session.requiretls());
    }

    fn failing_session(stage: Stage, tempfail: f64, permfail: f64) -> Session {
        let mut session = Session::new(false);
        session.fail_stages(
            Faults {
                tempfail_percent: tempfail,
                permfail_percent: permfail,
                fail_at: vec![stage],
                ..Faults::default()
            },
            fastrand::Rng::with_seed(7),
        );
        session
    }

    fn replies(session: &mut Session, input: &[u8]) -> String {
        let mut out = Vec::new();
        let mut pending = input.to_vec();
        loop {
            let p = session.advance(&pending, &mut out);
            pending.drain(..p.consumed);
            if p.step != Step::NeedInput || pending.is_empty() {
                break;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn stage_failures_answer_mail_rcpt_and_data() {
        let transaction = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r@d>\r\nDATA\r\n";
        let out = replies(&mut failing_session(Stage::Mail, 100.0, 0.0), transaction);
        assert_eq!(codes(&out), ["250", "451", "503", "503"], "{out}");
        assert!(out.contains("451 4.3.0 Temporary failure injected at MAIL"));
        let out = replies(&mut failing_session(Stage::Rcpt, 0.0, 100.0), transaction);
        assert_eq!(codes(&out), ["250", "250", "550", "554"], "{out}");
        assert!(out.contains("550 5.1.1 Permanent failure injected at RCPT"));
        let out = replies(&mut failing_session(Stage::Data, 100.0, 0.0), transaction);
        assert_eq!(codes(&out), ["250", "250", "250", "451"], "{out}");
        let mut session = failing_session(Stage::Data, 0.0, 100.0);
        let out = replies(
            &mut session,
            b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<r@d>\r\nBDAT 3 LAST\r\nabcNOOP\r\n",
        );
        assert_eq!(codes(&out), ["250", "250", "250", "554", "250"], "{out}");
        assert!(out.contains("554 5.3.0 Permanent failure injected at DATA"));
        // At 0 % nothing fails; the end-of-data stage is the driver's, not the session's.
        let out = replies(
            &mut failing_session(Stage::EndOfData, 100.0, 0.0),
            transaction,
        );
        assert_eq!(codes(&out), ["250", "250", "250", "354"], "{out}");
    }

    #[test]
    fn in_body_is_true_only_while_a_body_is_read() {
        let mut session = Session::new(false);
        let mut out = Vec::new();
        let p = session.advance(
            b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<r@d>\r\nDATA\r\n",
            &mut out,
        );
        assert_eq!(p.step, Step::NeedInput);
        assert!(session.in_body());
        let p = session.advance(b"x\r\n.\r\n", &mut out);
        assert_eq!(p.step, Step::MessageReceived);
        assert!(!session.in_body());
    }
}
