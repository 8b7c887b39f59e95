//! The receiving SMTP session as a sans-IO state machine (RFC 5321, with PIPELINING, SIZE,
//! 8BITMIME, CHUNKING/BINARYMIME, SMTPUTF8, DSN, STARTTLS, AUTH PLAIN/LOGIN and
//! ENHANCEDSTATUSCODES).
//!
//! The driver (`listener`) owns the socket, TLS and the clock. It feeds what it read to
//! [`Session::receive`] with the time, writes what [`Session::take_output`] gives it, and answers
//! the [`Event`]s from [`Session::poll_event`]. While an event waits for its answer the session
//! processes no further input (it keeps it buffered, in order), so replies always come out in
//! command order however the input was split. [`Session::wants_input`] tells the driver when
//! reading more is useful; honouring it keeps the input buffer to about one command line.
//!
//!
//! Deadlines are the session's, not the driver's (quinn-proto style): [`Session::poll_timeout`]
//! says when the current stage must be over, whatever the client trickles in meanwhile, and the
//! driver calls [`Session::handle_timeout`] when it passes. Keeping them here lets the unit tests
//! check each deadline rule with a fake clock, and only the session knows where a command, a body
//! or a BDAT transaction starts and ends. The driver keeps the deadlines of its own I/O steps
//! (TLS handshake, each write).
//! - A command line (or an AUTH response) must be complete within `command_timeout` of the end
//!   of the previous command (or the greeting, or the driver's answer to an event);
//! - a message body must be complete within `data_timeout` of the 354 (DATA) or of the first
//!   BDAT of the transaction; between BDAT chunks both deadlines apply.
//!
//! ```text
//! loop {
//!     session.receive(&bytes_read, now);   // or handle_timeout(now) when poll_timeout passed
//!     while let Some(event) = session.poll_event() { /* answer it */ }
//!     session.take_output(&mut write_buffer);   // write it
//!     if session.is_closed() { break }
//! }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use memchr::memchr;

use crate::envelope::{DsnNotify, Envelope, Recipient};
use crate::smtp::command::{self, Command, MailParams, RcptParams};
use crate::smtp::data::{ChunkedBody, DataDecoder};
use crate::smtp::reply::Reply;

mod auth;
mod body;
mod deadline;

use auth::AuthStep;
use body::Chunk;
pub use body::message_bytes_in_flight_refusal;
pub use deadline::TimeoutStage;

/// The longest command line, in octets including CRLF (RFC 5321 section 4.5.3.1.4).
pub const MAX_COMMAND_LINE_BYTES: usize = 512;
/// The longest AUTH command or AUTH response line, in octets including CRLF (RFC 4954 section 4).
pub const MAX_AUTH_LINE_BYTES: usize = 12288;

/// What a listener allows; shared by all sessions of a listener on one core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// The largest message accepted (SIZE advertised, DATA and BDAT bodies), in octets.
    pub max_message_bytes: usize,
    /// The most recipients in one transaction; more earn 452 4.5.3.
    pub max_recipients: usize,
    /// After this many error replies the session ends with 421 4.7.0.
    pub max_errors: u32,
    /// STARTTLS is offered (a certificate is configured) on this listener.
    pub starttls_available: bool,
    /// AUTH is offered (only ever over TLS).
    pub auth_enabled: bool,
    /// MAIL requires a successful AUTH first.
    pub auth_required: bool,
    /// The longest a whole command line may take to arrive, counted from the end of the previous
    /// one (RFC 5321 section 4.5.3.2.7: 5 minutes).
    pub command_timeout: Duration,
    /// The longest a whole message body may take to arrive, from the 354 or the first BDAT.
    pub data_timeout: Duration,
    /// Bare LF line ends and lines over 1000 octets: refused, or normalized (`smtp::data`).
    pub line_endings: crate::smtp::data::LineEndings,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            hostname: "localhost".to_string(),
            max_message_bytes: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_errors: 20,
            starttls_available: false,
            auth_enabled: false,
            auth_required: false,
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
            line_endings: crate::smtp::data::LineEndings::Strict,
        }
    }
}

/// Who is on the other end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub ip: IpAddr,
    /// The peer is in the listener's relay networks: it may relay without AUTH.
    pub relay_allowed: bool,
}

/// What the session needs from the driver. `Auth`, `Mail`, `Message` and `StartTls` stop input
/// processing until answered (by `auth_result`, `mail_result`, `message_result` and
/// `tls_established`). Its `Debug` form hides the password and shows only the body's length.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// Check these credentials; answer with `auth_result(Ok(customer_name) | Err(reply))`.
    Auth { username: String, password: String },
    /// A transaction wants to start; answer with `mail_result` (sending limits, spool space).
    Mail { sender: String, size: Option<u64> },
    /// An authenticated client names a recipient (its customer is known, so the driver may refuse
    /// it, e.g. suppressed); answer with `rcpt_result`. Not sent for unauthenticated sessions.
    Recipient { address: String },
    /// A complete message: make it durable, then answer with `message_result(Ok(queue_id))`.
    /// `body` is unstuffed, exactly as received. `envelope.customer` and `received_at_s` are left
    /// for the driver to fill.
    Message { envelope: Envelope, body: Vec<u8> },
    /// The 220 is in the output: flush it, handshake, then call `tls_established`.
    StartTls,
    /// A message was refused by the session itself at the end of its body (or at the BDAT chunk
    /// that broke a rule): `reply` is in the output. Needs no answer; for the log and metrics.
    MessageRefused { reply: Reply },
    /// Flush the output, then close the connection.
    Close,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Auth { username, .. } => f
                .debug_struct("Auth")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Event::Mail { sender, size } => f
                .debug_struct("Mail")
                .field("sender", sender)
                .field("size", size)
                .finish(),
            Event::Recipient { address } => f
                .debug_struct("Recipient")
                .field("address", address)
                .finish(),
            Event::Message { envelope, body } => f
                .debug_struct("Message")
                .field("envelope", envelope)
                .field("body_bytes", &body.len())
                .finish(),
            Event::StartTls => f.write_str("StartTls"),
            Event::MessageRefused { reply } => f
                .debug_struct("MessageRefused")
                .field("reply", reply)
                .finish(),
            Event::Close => f.write_str("Close"),
        }
    }
}

/// HELO or EHLO, as the client introduced itself.
#[derive(Debug)]
struct Greeting {
    name: String,
    extended: bool,
}

/// A mail transaction in progress (after an accepted MAIL).
#[derive(Debug)]
struct MailTransaction {
    envelope: Envelope,
    /// The body collected from BDAT chunks; present once the first BDAT was accepted.
    chunks: Option<ChunkedBody>,
    /// When the body must be complete: set at the 354 or the first BDAT.
    body_deadline: Option<Instant>,
    /// The driver found no room for the body in the message bytes in flight: it was discarded,
    /// and the message gets 452 4.3.1 at its end (see `Session::body_budget_exhausted`).
    body_budget_refused: bool,
    /// MAIL's `SIZE=` (RFC 1870): a DATA body's buffer is reserved for it at once, so it is not
    /// copied again each time it grows.
    declared_size: Option<u64>,
}

/// What the incoming octets are.
#[derive(Debug)]
enum InputPhase {
    Command,
    AuthResponse(AuthStep),
    Data(DataDecoder),
    Bdat(Chunk),
}

/// The driver answer the session is waiting for.
#[derive(Debug)]
enum Waiting {
    Auth,
    Mail {
        envelope: Envelope,
        size: Option<u64>,
    },
    Recipient(Recipient),
    Message,
    TlsHandshake,
}

/// One receiving SMTP session. See the module documentation for how a driver runs it.
#[derive(Debug)]
pub struct Session {
    config: Rc<ServerConfig>,
    peer: PeerInfo,
    tls_active: bool,
    greeting: Option<Greeting>,
    authenticated: Option<String>,
    transaction: Option<MailTransaction>,
    phase: InputPhase,
    waiting: Option<Waiting>,
    /// Unprocessed input from `input_start` on: a partial line, or what arrived while waiting.
    input: Vec<u8>,
    input_start: usize,
    /// Octets at the start of the unprocessed input already known to hold no LF.
    scanned_without_newline: usize,
    /// An over-long command line is being skipped up to its LF.
    discarding_long_line: bool,
    output: Vec<u8>,
    events: VecDeque<Event>,
    error_count: u32,
    closed: bool,
    /// The time given with the latest input or answer.
    now: Instant,
    /// When the current command stage began: the command deadline counts from here.
    command_started: Instant,
}

impl Session {
    /// A session for a just-accepted connection; the 220 greeting is already in the output.
    pub fn new(
        config: Rc<ServerConfig>,
        peer: PeerInfo,
        tls_active: bool,
        now: Instant,
    ) -> Session {
        let mut session = Session {
            config,
            peer,
            tls_active,
            greeting: None,
            authenticated: None,
            transaction: None,
            phase: InputPhase::Command,
            waiting: None,
            input: Vec::new(),
            input_start: 0,
            scanned_without_newline: 0,
            discarding_long_line: false,
            output: Vec::new(),
            events: VecDeque::new(),
            error_count: 0,
            closed: false,
            now,
            command_started: now,
        };
        let greeting = Reply::new(
            220,
            None,
            format!("{} ESMTP Volley", session.config.hostname),
        );
        session.reply(greeting);
        session
    }

    /// Feeds octets read from the peer. They are processed at once as far as possible; the rest
    /// is kept, in order, until an awaited event is answered.
    pub fn receive(&mut self, input: &[u8], now: Instant) {
        if self.closed || input.is_empty() {
            return;
        }
        self.now = now;
        if self.input_start >= self.input.len() {
            // Nothing buffered: work on the caller's slice and keep only the unprocessed tail.
            self.input.clear();
            self.input_start = 0;
            let used = self.run(input);
            if !self.closed {
                self.input
                    .extend_from_slice(input.get(used..).unwrap_or_default());
            }
        } else {
            self.input.extend_from_slice(input);
            self.run_buffered();
        }
    }

    /// Appends the pending reply octets to `out`.
    pub fn take_output(&mut self, out: &mut Vec<u8>) {
        if out.is_empty() {
            std::mem::swap(out, &mut self.output);
        } else {
            out.append(&mut self.output);
        }
    }

    /// The next event for the driver, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Answers `Event::Auth`: `Ok(customer_name)` → 235 2.7.0, `Err(reply)` (usually
    /// `Reply::AUTH_FAILED`) is sent and counted as an error.
    pub fn auth_result(&mut self, result: Result<String, Reply>, now: Instant) {
        if self.closed || !matches!(self.waiting, Some(Waiting::Auth)) {
            return;
        }
        self.waiting = None;
        self.restart_command_stage(now);
        match result {
            Ok(name) => {
                self.authenticated = Some(name);
                self.reply(Reply::AUTH_SUCCEEDED);
            }
            Err(reply) => self.reply_error(reply),
        }
        self.run_buffered();
    }

    /// Answers `Event::Mail`: `Ok(())` → 250 2.1.0 and the transaction starts; `Err(reply)` is sent.
    pub fn mail_result(&mut self, result: Result<(), Reply>, now: Instant) {
        if self.closed || !matches!(self.waiting, Some(Waiting::Mail { .. })) {
            return;
        }
        self.restart_command_stage(now);
        if let Some(Waiting::Mail { envelope, size }) = self.waiting.take() {
            match result {
                Ok(()) => {
                    self.transaction = Some(MailTransaction {
                        envelope,
                        chunks: None,
                        body_deadline: None,
                        body_budget_refused: false,
                        declared_size: size,
                    });
                    self.reply(Reply::SENDER_OK);
                }
                Err(reply) => self.reply(reply),
            }
        }
        self.run_buffered();
    }

    /// Answers `Event::Message`: `Ok(queue_id)` → `250 2.0.0 Ok: queued as <id>`; `Err(reply)` is
    /// sent. Either way the transaction is over.
    pub fn message_result(&mut self, result: Result<String, Reply>, now: Instant) {
        if self.closed || !matches!(self.waiting, Some(Waiting::Message)) {
            return;
        }
        self.waiting = None;
        self.restart_command_stage(now);
        match result {
            Ok(queue_id) => self.reply(Reply::OK.with_text(format!("Ok: queued as {queue_id}"))),
            Err(reply) => self.reply(reply),
        }
        self.run_buffered();
    }

    /// The TLS handshake after STARTTLS succeeded. Input that arrived after the STARTTLS line is
    /// discarded (it was sent in the clear: RFC 3207 section 4.2 and the STARTTLS injection
    /// attacks), and the session starts over: the client must EHLO again.
    pub fn tls_established(&mut self, now: Instant) {
        if self.closed || !matches!(self.waiting, Some(Waiting::TlsHandshake)) {
            return;
        }
        self.waiting = None;
        self.restart_command_stage(now);
        self.tls_active = true;
        self.greeting = None;
        self.authenticated = None;
        self.transaction = None;
        self.phase = InputPhase::Command;
        self.input.clear();
        self.input_start = 0;
        self.scanned_without_newline = 0;
        self.discarding_long_line = false;
    }

    /// Ends the session from the driver's side (shutdown, an IO or TLS failure it can still
    /// report): sends `reply` (e.g. `Reply::SHUTTING_DOWN`) and closes.
    pub fn close_with(&mut self, reply: Reply) {
        if self.closed {
            return;
        }
        self.reply(reply);
        self.close();
    }

    /// Whether reading more input is useful now: false while an event awaits its answer or after
    /// the session closed. A driver that honours it keeps the input buffer small.
    pub fn wants_input(&self) -> bool {
        !self.closed && self.waiting.is_none()
    }

    /// The session is over: flush the output and close the connection.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The name the client gave in HELO/EHLO (since the last STARTTLS).
    pub fn helo_name(&self) -> Option<&str> {
        self.greeting.as_ref().map(|g| g.name.as_str())
    }

    /// The customer name from a successful AUTH.
    pub fn authenticated_as(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The peer this session talks to.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The `with` protocol for the Received: header (RFC 3848).
    pub fn protocol(&self) -> &'static str {
        let extended = self.greeting.as_ref().is_some_and(|g| g.extended);
        match (extended, self.tls_active, self.authenticated.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    /// Error replies sent so far.
    pub fn error_count(&self) -> u32 {
        self.error_count
    }

    /// Whether a mail transaction is open (MAIL accepted, or a message being received or spooled):
    /// a stopping server lets it finish before closing the session.
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some()
            || self.waiting.is_some()
            || !matches!(self.phase, InputPhase::Command)
    }

    // ---- input processing ----

    /// Processes buffered input after an answer or an append.
    fn run_buffered(&mut self) {
        if self.closed {
            return;
        }
        let buffer = std::mem::take(&mut self.input);
        let used = self.run(buffer.get(self.input_start..).unwrap_or_default());
        self.input = buffer;
        self.input_start += used;
        if self.closed || self.input_start >= self.input.len() {
            self.input.clear();
            self.input_start = 0;
        } else if self.input_start > self.input.len() / 2 {
            // Compact only when at least half is consumed: each octet moves at most once on average.
            self.input.drain(..self.input_start);
            self.input_start = 0;
        }
    }

    /// Processes `input` as far as possible; returns the octets consumed.
    fn run(&mut self, input: &[u8]) -> usize {
        let mut pos = 0;
        while !self.closed && self.waiting.is_none() {
            let rest = input.get(pos..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            let used = match self.phase {
                InputPhase::Command | InputPhase::AuthResponse(_) => self.read_line(rest),
                InputPhase::Data(_) => self.read_data(rest),
                InputPhase::Bdat(_) => self.read_chunk(rest),
            };
            if used == 0 {
                break;
            }
            pos += used;
        }
        pos
    }

    /// Reads one CRLF-terminated line, or returns 0 if it is not complete yet.
    fn read_line(&mut self, rest: &[u8]) -> usize {
        let in_auth = matches!(self.phase, InputPhase::AuthResponse(_));
        let auth_line = in_auth
            || rest
                .get(..5)
                .is_some_and(|verb| verb.eq_ignore_ascii_case(b"AUTH "));
        let (limit, too_long_reply) = if auth_line {
            // RFC 4954 section 4: "500 5.5.6 Authentication Exchange line is too long".
            (MAX_AUTH_LINE_BYTES, Reply::LINE_TOO_LONG)
        } else {
            (MAX_COMMAND_LINE_BYTES, command_line_too_long())
        };
        let from = self.scanned_without_newline.min(rest.len());
        let Some(offset) = memchr(b'\n', rest.get(from..).unwrap_or_default()) else {
            if self.discarding_long_line {
                return rest.len();
            }
            if rest.len() >= limit {
                // Already longer than any valid line: answer now, not at a CRLF that may never
                // come, and skip to its end (the command deadline still runs).
                self.discarding_long_line = true;
                self.scanned_without_newline = 0;
                if in_auth {
                    self.phase = InputPhase::Command;
                }
                self.reply_error(too_long_reply);
                return rest.len();
            }
            self.scanned_without_newline = rest.len();
            return 0;
        };
        let newline = from + offset;
        self.scanned_without_newline = 0;
        self.restart_command_stage(self.now);
        if std::mem::take(&mut self.discarding_long_line) {
            // The end of a line already answered.
            return newline + 1;
        }
        let too_long = newline + 1 > limit;
        let line = if newline > 0 && rest.get(newline - 1) == Some(&b'\r') {
            rest.get(..newline - 1)
        } else {
            None
        };
        match line {
            Some(line) if !too_long => self.handle_line(line),
            _ => {
                if in_auth {
                    self.phase = InputPhase::Command;
                }
                let reply = if too_long {
                    too_long_reply
                } else {
                    Reply::BARE_LINEFEED_IN_COMMAND
                };
                self.reply_error(reply);
            }
        }
        newline + 1
    }

    fn handle_line(&mut self, line: &[u8]) {
        match std::mem::replace(&mut self.phase, InputPhase::Command) {
            InputPhase::AuthResponse(step) => self.auth_response(step, line),
            phase => {
                self.phase = phase;
                self.handle_command(line);
            }
        }
    }

    fn handle_command(&mut self, line: &[u8]) {
        let command = match command::parse(line) {
            Ok(command) => command,
            Err(error) => return self.reply_error(error.reply()),
        };
        match command {
            Command::Ehlo { domain } => self.hello(domain, true),
            Command::Helo { domain } => self.hello(domain, false),
            Command::Mail {
                reverse_path,
                params,
            } => self.mail(reverse_path, params),
            Command::Rcpt {
                forward_path,
                params,
            } => self.rcpt(forward_path, params),
            Command::Data => self.data(),
            Command::Bdat { chunk_bytes, last } => self.bdat(chunk_bytes, last),
            Command::Rset => {
                self.transaction = None;
                self.reply(Reply::OK);
            }
            Command::Noop => self.reply(Reply::OK),
            Command::Quit => {
                self.reply(Reply::BYE);
                self.close();
            }
            Command::Vrfy => self.reply(Reply::CANNOT_VRFY),
            Command::Help => self.reply(Reply::HELP),
            Command::StartTls => self.starttls(),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response),
        }
    }

    // ---- commands ----

    fn hello(&mut self, name: String, extended: bool) {
        // HELO/EHLO also reset any transaction (RFC 5321 section 4.1.4).
        self.transaction = None;
        self.greeting = Some(Greeting { name, extended });
        let config = &self.config;
        let reply = if extended {
            let mut text = format!(
                "{}\nPIPELINING\nSIZE {}\n8BITMIME\nBINARYMIME\nENHANCEDSTATUSCODES\nSMTPUTF8\nCHUNKING\nDSN",
                config.hostname, config.max_message_bytes
            );
            if config.starttls_available && !self.tls_active {
                text.push_str("\nSTARTTLS");
            }
            if self.tls_active {
                // RFC 8689 4.1: only over TLS.
                text.push_str("\nREQUIRETLS");
            }
            if config.auth_enabled && self.tls_active {
                text.push_str("\nAUTH PLAIN LOGIN");
            }
            Reply::new(250, None, text)
        } else {
            Reply::new(250, None, config.hostname.clone())
        };
        self.reply(reply);
    }

    fn mail(&mut self, sender: String, params: MailParams) {
        let Some(greeting) = &self.greeting else {
            return self.reply_error(Reply::HELO_FIRST);
        };
        let refusal = if self.transaction.is_some() {
            Some(Reply::NESTED_MAIL)
        } else if self.config.auth_required && self.authenticated.is_none() {
            Some(Reply::AUTH_REQUIRED)
        } else if !greeting.extended && params.any() {
            Some(Reply::UNKNOWN_PARAMETER)
        } else if params
            .size
            .is_some_and(|size| size > self.config.max_message_bytes as u64)
        {
            Some(Reply::MESSAGE_TOO_BIG)
        } else if !params.smtputf8 && !sender.is_ascii() {
            Some(Reply::SMTPUTF8_REQUIRED)
        } else if params.requiretls && !self.tls_active {
            Some(Reply::REQUIRETLS_NEEDS_TLS)
        } else {
            None
        };
        if let Some(reply) = refusal {
            return self.reply_error(reply);
        }
        let envelope = Envelope {
            sender,
            recipients: Vec::new(),
            ret: params.ret.unwrap_or_default(),
            envid: params.envid,
            body_type: params.body.unwrap_or_default(),
            smtputf8: params.smtputf8,
            requiretls: params.requiretls,
            // Intake sets it from the header.
            tls_optional: false,
            customer: String::new(),
            received_at_s: 0,
            tags: Default::default(),
        };
        self.events.push_back(Event::Mail {
            sender: envelope.sender.clone(),
            size: params.size,
        });
        self.waiting = Some(Waiting::Mail {
            envelope,
            size: params.size,
        });
    }

    fn rcpt(&mut self, address: String, params: RcptParams) {
        let extended = self.greeting.as_ref().is_some_and(|g| g.extended);
        let relay_allowed = self.peer.relay_allowed || self.authenticated.is_some();
        let max_recipients = self.config.max_recipients;
        let refusal = match &self.transaction {
            None => Some(Reply::MAIL_FIRST),
            Some(tx) if tx.chunks.is_some() => Some(Reply::BAD_SEQUENCE),
            Some(_) if !extended && params.any() => Some(Reply::UNKNOWN_PARAMETER),
            Some(_) if !relay_allowed => Some(Reply::RELAY_DENIED),
            Some(tx) if !tx.envelope.smtputf8 && !address.is_ascii() => {
                Some(Reply::SMTPUTF8_REQUIRED)
            }
            Some(tx) if tx.envelope.recipients.len() >= max_recipients => {
                // Not a client error: RFC 5321 section 4.5.3.1.10 has it send the rest later.
                return self.reply(Reply::TOO_MANY_RECIPIENTS);
            }
            Some(_) => None,
        };
        if let Some(reply) = refusal {
            return self.reply_error(reply);
        }
        let recipient = Recipient {
            address,
            notify: params.notify.unwrap_or(DsnNotify::DEFAULT),
            orcpt: params.orcpt,
        };
        if self.authenticated.is_some() {
            self.events.push_back(Event::Recipient {
                address: recipient.address.clone(),
            });
            self.waiting = Some(Waiting::Recipient(recipient));
            return;
        }
        self.add_recipient(recipient);
    }

    fn add_recipient(&mut self, recipient: Recipient) {
        if let Some(tx) = &mut self.transaction {
            tx.envelope.recipients.push(recipient);
        }
        self.reply(Reply::RECIPIENT_OK);
    }

    /// Answers `Event::Recipient`: `Ok(())` → 250 2.1.5 and the recipient joins the transaction;
    /// `Err(reply)` is sent. A refused recipient is the customer's policy, not a client error: it
    /// does not count against `max_errors`.
    pub fn rcpt_result(&mut self, result: Result<(), Reply>, now: Instant) {
        if self.closed || !matches!(self.waiting, Some(Waiting::Recipient(_))) {
            return;
        }
        self.restart_command_stage(now);
        if let Some(Waiting::Recipient(recipient)) = self.waiting.take() {
            match result {
                Ok(()) => self.add_recipient(recipient),
                Err(reply) => self.reply(reply),
            }
        }
        self.run_buffered();
    }

    fn starttls(&mut self) {
        let refusal = if self.tls_active {
            Some(Reply::TLS_ALREADY_ACTIVE)
        } else if !self.config.starttls_available {
            Some(Reply::TLS_NOT_AVAILABLE)
        } else if self.transaction.is_some() {
            Some(Reply::NOT_IN_TRANSACTION)
        } else {
            None
        };
        if let Some(reply) = refusal {
            return self.reply_error(reply);
        }
        self.reply(Reply::READY_TO_START_TLS);
        self.events.push_back(Event::StartTls);
        self.waiting = Some(Waiting::TlsHandshake);
    }

    // ---- output ----

    fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.output);
    }

    /// Refuses the message of the current transaction: the reply, and an event for the driver.
    /// Only a permanent refusal counts against `max_errors`: a transient one (no memory for the
    /// body) is the server's condition, not the client's mistake.
    fn refuse_message(&mut self, reply: Reply) {
        self.events.push_back(Event::MessageRefused {
            reply: reply.clone(),
        });
        if reply.is_transient() {
            self.reply(reply);
        } else {
            self.reply_error(reply);
        }
    }

    /// Sends a reply that counts against `max_errors`; the last one allowed is followed by 421.
    fn reply_error(&mut self, reply: Reply) {
        self.reply(reply);
        self.error_count = self.error_count.saturating_add(1);
        if self.error_count >= self.config.max_errors && !self.closed {
            let reply = self.with_hostname(Reply::TOO_MANY_ERRORS);
            self.reply(reply);
            self.close();
        }
    }

    /// 421 replies start with the server's name (RFC 5321 section 4.2.3).
    fn with_hostname(&self, reply: Reply) -> Reply {
        let text = format!("{} {}", self.config.hostname, reply.text());
        reply.with_text(text)
    }

    fn close(&mut self) {
        self.closed = true;
        self.waiting = None;
        self.phase = InputPhase::Command;
        self.input = Vec::new();
        self.input_start = 0;
        self.events.push_back(Event::Close);
    }
}

/// 500 5.5.2: a command line over `MAX_COMMAND_LINE_BYTES` (RFC 5321 section 4.2.2 counts a line
/// too long as a syntax error; 5.5.6 is for AUTH exchange lines).
fn command_line_too_long() -> Reply {
    Reply::new(
        500,
        Some(crate::smtp::reply::EnhancedCode::new(5, 5, 2)),
        "Command line too long",
    )
}

/// Entry points for the fuzzers (`fuzz/`) and for the stable test that runs them on generated input.
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod tests;
