//! The receiving SMTP session as a sans-IO state machine (RFC 5321, with PIPELINING, SIZE,
//! 8BITMIME, CHUNKING/BINARYMIME, SMTPUTF8, DSN, STARTTLS, AUTH PLAIN/LOGIN and
//! ENHANCEDSTATUSCODES).
//!
//! The driver (`listener`) owns the socket, TLS and the clock. It feeds what it read to
//! [`Session::receive`], writes what [`Session::take_output`] gives it, and answers the
//! [`Event`]s from [`Session::poll_event`]. While an event waits for its answer the session
//! processes no further input (it keeps it buffered, in order), so replies always come out in
//! command order however the input was split. [`Session::wants_input`] tells the driver when
//! reading more is useful; honouring it keeps the input buffer to about one command line.
//!
//! ```text
//! loop {
//!     session.receive(&bytes_read);
//!     while let Some(event) = session.poll_event() { /* answer it */ }
//!     session.take_output(&mut write_buffer);   // write it
//!     if session.is_closed() { break }
//! }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use memchr::memchr;

use crate::envelope::{BodyType, DsnNotify, Envelope, Recipient};
use crate::smtp::command::{self, AuthMechanism, Command, MailParams, RcptParams};
use crate::smtp::data::{BodyBuffer, DataDecoder, DataError};
use crate::smtp::reply::Reply;

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
    /// How long to wait for a command line (RFC 5321 section 4.5.3.2.7: 5 minutes).
    pub command_timeout: Duration,
    /// How long to wait for more body octets inside DATA or BDAT (RFC 5321 section 4.5.3.2.5).
    pub data_timeout: Duration,
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
            data_timeout: Duration::from_secs(3 * 60),
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
    /// A complete message: make it durable, then answer with `message_result(Ok(queue_id))`.
    /// `body` is unstuffed, exactly as received. `envelope.customer` and `received_at_s` are left
    /// for the driver to fill.
    Message { envelope: Envelope, body: Vec<u8> },
    /// The 220 is in the output: flush it, handshake, then call `tls_established`.
    StartTls,
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
            Event::Message { envelope, body } => f
                .debug_struct("Message")
                .field("envelope", envelope)
                .field("body_bytes", &body.len())
                .finish(),
            Event::StartTls => f.write_str("StartTls"),
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
struct Transaction {
    envelope: Envelope,
    /// The body collected from BDAT chunks; present once the first BDAT was accepted.
    chunks: Option<BodyBuffer>,
}

/// What the incoming octets are.
#[derive(Debug)]
enum Phase {
    Command,
    AuthResponse(AuthStep),
    Data(DataDecoder),
    Bdat(Chunk),
}

/// The next line expected in an AUTH exchange.
#[derive(Debug)]
enum AuthStep {
    PlainResponse,
    LoginUsername,
    LoginPassword { username: String },
}

/// A BDAT chunk being read: raw octets, consumed even when refused (RFC 3030 section 3).
#[derive(Debug)]
struct Chunk {
    chunk_bytes: u64,
    remaining: u64,
    last: bool,
    refusal: Option<Reply>,
}

/// The driver answer the session is waiting for.
#[derive(Debug)]
enum Waiting {
    Auth,
    Mail(Envelope),
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
    transaction: Option<Transaction>,
    phase: Phase,
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
}

impl Session {
    /// A session for a just-accepted connection; the 220 greeting is already in the output.
    pub fn new(config: Rc<ServerConfig>, peer: PeerInfo, tls_active: bool) -> Session {
        let mut session = Session {
            config,
            peer,
            tls_active,
            greeting: None,
            authenticated: None,
            transaction: None,
            phase: Phase::Command,
            waiting: None,
            input: Vec::new(),
            input_start: 0,
            scanned_without_newline: 0,
            discarding_long_line: false,
            output: Vec::new(),
            events: VecDeque::new(),
            error_count: 0,
            closed: false,
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
    pub fn receive(&mut self, input: &[u8]) {
        if self.closed || input.is_empty() {
            return;
        }
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
    pub fn auth_result(&mut self, result: Result<String, Reply>) {
        if self.closed || !matches!(self.waiting, Some(Waiting::Auth)) {
            return;
        }
        self.waiting = None;
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
    pub fn mail_result(&mut self, result: Result<(), Reply>) {
        if self.closed || !matches!(self.waiting, Some(Waiting::Mail(_))) {
            return;
        }
        if let Some(Waiting::Mail(envelope)) = self.waiting.take() {
            match result {
                Ok(()) => {
                    self.transaction = Some(Transaction {
                        envelope,
                        chunks: None,
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
    pub fn message_result(&mut self, result: Result<String, Reply>) {
        if self.closed || !matches!(self.waiting, Some(Waiting::Message)) {
            return;
        }
        self.waiting = None;
        match result {
            Ok(queue_id) => self.reply(Reply::OK.with_text(format!("Ok: queued as {queue_id}"))),
            Err(reply) => self.reply(reply),
        }
        self.run_buffered();
    }

    /// The TLS handshake after STARTTLS succeeded. Input that arrived after the STARTTLS line is
    /// discarded (it was sent in the clear: RFC 3207 section 4.2 and the STARTTLS injection
    /// attacks), and the session starts over: the client must EHLO again.
    pub fn tls_established(&mut self) {
        if self.closed || !matches!(self.waiting, Some(Waiting::TlsHandshake)) {
            return;
        }
        self.waiting = None;
        self.tls_active = true;
        self.greeting = None;
        self.authenticated = None;
        self.transaction = None;
        self.phase = Phase::Command;
        self.input.clear();
        self.input_start = 0;
        self.scanned_without_newline = 0;
        self.discarding_long_line = false;
    }

    /// The read timeout (`timeout()`) expired: 421 4.4.2 and close.
    pub fn on_timeout(&mut self) {
        if self.closed {
            return;
        }
        let reply = self.with_hostname(Reply::TIMEOUT);
        self.reply(reply);
        self.close();
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

    /// How long the driver should wait for the next octets before calling `on_timeout`.
    pub fn timeout(&self) -> Duration {
        match self.phase {
            Phase::Data(_) | Phase::Bdat(_) => self.config.data_timeout,
            Phase::Command | Phase::AuthResponse(_) => self.config.command_timeout,
        }
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
            || !matches!(self.phase, Phase::Command)
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
                Phase::Command | Phase::AuthResponse(_) => self.read_line(rest),
                Phase::Data(_) => self.read_data(rest),
                Phase::Bdat(_) => self.read_chunk(rest),
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
        let in_auth = matches!(self.phase, Phase::AuthResponse(_));
        let limit = if in_auth
            || rest
                .get(..5)
                .is_some_and(|verb| verb.eq_ignore_ascii_case(b"AUTH "))
        {
            MAX_AUTH_LINE_BYTES
        } else {
            MAX_COMMAND_LINE_BYTES
        };
        let from = self.scanned_without_newline.min(rest.len());
        let Some(offset) = memchr(b'\n', rest.get(from..).unwrap_or_default()) else {
            if self.discarding_long_line {
                return rest.len();
            }
            if rest.len() >= limit {
                // Already longer than any valid line: drop it and skip to its end.
                self.discarding_long_line = true;
                self.scanned_without_newline = 0;
                return rest.len();
            }
            self.scanned_without_newline = rest.len();
            return 0;
        };
        let newline = from + offset;
        self.scanned_without_newline = 0;
        let too_long = std::mem::take(&mut self.discarding_long_line) || newline + 1 > limit;
        let line = if newline > 0 && rest.get(newline - 1) == Some(&b'\r') {
            rest.get(..newline - 1)
        } else {
            None
        };
        match line {
            Some(line) if !too_long => self.handle_line(line),
            _ => {
                if in_auth {
                    self.phase = Phase::Command;
                }
                let reply = if too_long {
                    Reply::LINE_TOO_LONG
                } else {
                    Reply::BARE_LINEFEED_IN_COMMAND
                };
                self.reply_error(reply);
            }
        }
        newline + 1
    }

    fn read_data(&mut self, rest: &[u8]) -> usize {
        let Phase::Data(decoder) = &mut self.phase else {
            return 0;
        };
        let (used, done) = decoder.feed(rest);
        if done && let Phase::Data(decoder) = std::mem::replace(&mut self.phase, Phase::Command) {
            let verdict = decoder.finish().map_err(DataError::reply);
            let transaction = self.transaction.take();
            self.finish_message(transaction, verdict);
        }
        used
    }

    fn read_chunk(&mut self, rest: &[u8]) -> usize {
        let Phase::Bdat(chunk) = &mut self.phase else {
            return 0;
        };
        let n = usize::try_from(chunk.remaining)
            .unwrap_or(usize::MAX)
            .min(rest.len());
        let bytes = rest.get(..n).unwrap_or_default();
        if chunk.refusal.is_none()
            && let Some(body) = self.transaction.as_mut().and_then(|t| t.chunks.as_mut())
        {
            body.push(bytes);
        }
        chunk.remaining -= n as u64;
        if chunk.remaining == 0
            && let Phase::Bdat(chunk) = std::mem::replace(&mut self.phase, Phase::Command)
        {
            self.finish_chunk(chunk);
        }
        n
    }

    fn handle_line(&mut self, line: &[u8]) {
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::AuthResponse(step) => self.auth_response(step, line),
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
            customer: String::new(),
            received_at_s: 0,
        };
        self.events.push_back(Event::Mail {
            sender: envelope.sender.clone(),
            size: params.size,
        });
        self.waiting = Some(Waiting::Mail(envelope));
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
        if let Some(tx) = &mut self.transaction {
            tx.envelope.recipients.push(Recipient {
                address,
                notify: params.notify.unwrap_or(DsnNotify::DEFAULT),
                orcpt: params.orcpt,
            });
        }
        self.reply(Reply::RECIPIENT_OK);
    }

    fn data(&mut self) {
        let refusal = match &self.transaction {
            None => Some(Reply::MAIL_FIRST),
            Some(tx) if tx.chunks.is_some() || tx.envelope.body_type == BodyType::BinaryMime => {
                Some(Reply::DATA_AFTER_BDAT)
            }
            Some(tx) if tx.envelope.recipients.is_empty() => Some(Reply::NO_VALID_RECIPIENTS),
            Some(_) => None,
        };
        if let Some(reply) = refusal {
            return self.reply_error(reply);
        }
        self.reply(Reply::START_MAIL_INPUT);
        self.phase = Phase::Data(DataDecoder::new(self.config.max_message_bytes));
    }

    fn bdat(&mut self, chunk_bytes: u64, last: bool) {
        let max_message_bytes = self.config.max_message_bytes;
        let refusal = match &mut self.transaction {
            None => Some(Reply::MAIL_FIRST),
            Some(tx) if tx.envelope.recipients.is_empty() => Some(Reply::NO_VALID_RECIPIENTS),
            Some(tx) => {
                tx.chunks
                    .get_or_insert_with(|| BodyBuffer::new(max_message_bytes))
                    .announce(chunk_bytes);
                None
            }
        };
        let chunk = Chunk {
            chunk_bytes,
            remaining: chunk_bytes,
            last,
            refusal,
        };
        if chunk_bytes == 0 {
            self.finish_chunk(chunk);
        } else {
            self.phase = Phase::Bdat(chunk);
        }
    }

    fn finish_chunk(&mut self, chunk: Chunk) {
        if let Some(refusal) = chunk.refusal {
            return self.reply_error(refusal);
        }
        let overflowed = self
            .transaction
            .as_ref()
            .and_then(|tx| tx.chunks.as_ref())
            .is_none_or(BodyBuffer::overflowed);
        if overflowed {
            // The transaction fails; chunks still in flight get 503 (RFC 3030 section 4.2).
            self.transaction = None;
            return self.reply_error(Reply::MESSAGE_TOO_BIG);
        }
        if !chunk.last {
            let text = format!("{} octets received", chunk.chunk_bytes);
            return self.reply(Reply::OK.with_text(text));
        }
        let mut transaction = self.transaction.take();
        let body = transaction
            .as_mut()
            .and_then(|tx| tx.chunks.take())
            .and_then(BodyBuffer::into_bytes)
            .ok_or(Reply::MESSAGE_TOO_BIG);
        self.finish_message(transaction, body);
    }

    /// The end of a DATA body or of the LAST chunk: hand the message over or refuse it.
    fn finish_message(&mut self, transaction: Option<Transaction>, body: Result<Vec<u8>, Reply>) {
        match (transaction, body) {
            (Some(tx), Ok(body)) => {
                self.events.push_back(Event::Message {
                    envelope: tx.envelope,
                    body,
                });
                self.waiting = Some(Waiting::Message);
            }
            (_, Err(reply)) => self.reply_error(reply),
            (None, Ok(_)) => self.reply_error(Reply::MAIL_FIRST),
        }
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

    fn auth(&mut self, mechanism: AuthMechanism, initial_response: Option<String>) {
        let refusal = if !self.config.auth_enabled {
            Some(Reply::AUTH_NOT_AVAILABLE)
        } else if !self.tls_active {
            Some(Reply::ENCRYPTION_REQUIRED)
        } else if self.greeting.is_none() {
            Some(Reply::HELO_FIRST)
        } else if self.authenticated.is_some() {
            Some(Reply::ALREADY_AUTHENTICATED)
        } else if self.transaction.is_some() {
            Some(Reply::NOT_IN_TRANSACTION)
        } else {
            None
        };
        if let Some(reply) = refusal {
            return self.reply_error(reply);
        }
        match (mechanism, initial_response) {
            (AuthMechanism::Plain, None) => {
                self.reply(Reply::new(334, None, ""));
                self.phase = Phase::AuthResponse(AuthStep::PlainResponse);
            }
            (AuthMechanism::Plain, Some(response)) => self.auth_plain(response.as_bytes()),
            (AuthMechanism::Login, None) => {
                // base64("Username:")
                self.reply(Reply::new(334, None, "VXNlcm5hbWU6"));
                self.phase = Phase::AuthResponse(AuthStep::LoginUsername);
            }
            (AuthMechanism::Login, Some(response)) => self.login_username(response.as_bytes()),
        }
    }

    fn auth_response(&mut self, step: AuthStep, line: &[u8]) {
        if line == b"*" {
            return self.reply_error(Reply::AUTH_CANCELLED);
        }
        match step {
            AuthStep::PlainResponse => self.auth_plain(line),
            AuthStep::LoginUsername => self.login_username(line),
            AuthStep::LoginPassword { username } => {
                match decode_base64(line).and_then(|p| String::from_utf8(p).ok()) {
                    Some(password) => self.request_auth(username, password),
                    None => self.reply_error(Reply::AUTH_BAD_RESPONSE),
                }
            }
        }
    }

    /// RFC 4616: `authzid NUL authcid NUL passwd`; an authzid other than the authcid is refused.
    fn auth_plain(&mut self, response: &[u8]) {
        let Some(message) = decode_base64(response) else {
            return self.reply_error(Reply::AUTH_BAD_RESPONSE);
        };
        let mut parts = message.split(|b| *b == 0);
        let (Some(authzid), Some(authcid), Some(passwd), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.reply_error(Reply::AUTH_BAD_RESPONSE);
        };
        let (Ok(username), Ok(password)) = (
            String::from_utf8(authcid.to_vec()),
            String::from_utf8(passwd.to_vec()),
        ) else {
            return self.reply_error(Reply::AUTH_BAD_RESPONSE);
        };
        if username.is_empty() {
            return self.reply_error(Reply::AUTH_BAD_RESPONSE);
        }
        if !authzid.is_empty() && authzid != authcid {
            return self.reply_error(Reply::AUTH_FAILED);
        }
        self.request_auth(username, password);
    }

    fn login_username(&mut self, response: &[u8]) {
        match decode_base64(response).and_then(|u| String::from_utf8(u).ok()) {
            Some(username) if !username.is_empty() => {
                // base64("Password:")
                self.reply(Reply::new(334, None, "UGFzc3dvcmQ6"));
                self.phase = Phase::AuthResponse(AuthStep::LoginPassword { username });
            }
            _ => self.reply_error(Reply::AUTH_BAD_RESPONSE),
        }
    }

    fn request_auth(&mut self, username: String, password: String) {
        self.events.push_back(Event::Auth { username, password });
        self.waiting = Some(Waiting::Auth);
    }

    // ---- output ----

    fn reply(&mut self, reply: Reply) {
        reply.write_to(&mut self.output);
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
        self.phase = Phase::Command;
        self.input = Vec::new();
        self.input_start = 0;
        self.events.push_back(Event::Close);
    }
}

/// Base64 of an AUTH response; `=` is the empty response (RFC 4954 section 4).
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    if text == b"=" {
        return Some(Vec::new());
    }
    BASE64.decode(text).ok()
}

/// Entry points for the fuzzers (`fuzz/`) and for the stable test that runs them on generated input.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

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
            ..ServerConfig::default()
        });
        let peer = PeerInfo {
            ip: IpAddr::from([192, 0, 2, 1]),
            relay_allowed: flags & 0x10 != 0,
        };
        let mut session = Session::new(config.clone(), peer, flags & 0x20 != 0);
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
            session.receive(&data[pos..end]);
            pos = end;
            while let Some(event) = session.poll_event() {
                assert!(!closed_seen, "no event after Close");
                let accept = next() % 4 != 0;
                match event {
                    Event::Auth { .. } => session.auth_result(if accept {
                        Ok("customer".into())
                    } else {
                        Err(Reply::AUTH_FAILED)
                    }),
                    Event::Mail { .. } => session.mail_result(if accept {
                        Ok(())
                    } else {
                        Err(Reply::INSUFFICIENT_STORAGE)
                    }),
                    Event::Message { envelope, body } => {
                        assert!(body.len() <= config.max_message_bytes);
                        assert!(!envelope.recipients.is_empty());
                        assert!(envelope.recipients.len() <= config.max_recipients);
                        session.message_result(if accept {
                            Ok("ID".into())
                        } else {
                            Err(Reply::LOCAL_ERROR)
                        })
                    }
                    Event::StartTls => {
                        if accept {
                            session.tls_established();
                        }
                    }
                    Event::Close => closed_seen = true,
                }
            }
            assert!(session.input.len() <= data.len());
            session.take_output(&mut output);
        }
        if next() % 2 == 0 {
            session.on_timeout();
            assert!(session.is_closed());
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::DsnRet;

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
        )
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
            session.receive(input);
            self.answer(session);
        }

        fn answer(&mut self, session: &mut Session) {
            while let Some(event) = session.poll_event() {
                match &event {
                    Event::Auth { username, .. } => session.auth_result(Ok(username.clone())),
                    Event::Mail { .. } => session.mail_result(Ok(())),
                    Event::Message { .. } => {
                        let n = self
                            .events
                            .iter()
                            .filter(|e| matches!(e, Event::Message { .. }))
                            .count();
                        session.message_result(Ok(format!("Q{n}")));
                    }
                    Event::StartTls => session.tls_established(),
                    Event::Close => {}
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
        assert_eq!(s.timeout(), Duration::from_secs(300));
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
        s.receive(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nNOOP\r\n");
        let mut out = Vec::new();
        s.take_output(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("250 DSN\r\n"), "{text}");
        assert!(!s.wants_input());
        // More input while waiting is buffered, not processed.
        s.receive(b"RSET\r\n");
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
        s.mail_result(Ok(()));
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
        s.receive(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
        assert!(matches!(s.poll_event(), Some(Event::Mail { .. })));
        s.mail_result(Err(Reply::INSUFFICIENT_STORAGE));
        let mut out = Vec::new();
        s.take_output(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with(
                "452 4.3.1 Insufficient system storage\r\n503 5.5.1 Send MAIL first\r\n"
            ),
            "{text}"
        );
        // Answers to events that are not pending are ignored.
        s.mail_result(Ok(()));
        s.message_result(Ok("X".into()));
        s.auth_result(Ok("x".into()));
        s.tls_established();
        let mut out = Vec::new();
        s.take_output(&mut out);
        assert!(out.is_empty());
        assert!(!s.tls_active());
    }

    #[test]
    fn message_refused_by_the_driver() {
        let mut s = session();
        s.receive(b"EHLO c\r\nMAIL FROM:<>\r\n");
        s.poll_event();
        s.mail_result(Ok(()));
        s.receive(b"RCPT TO:<c@d.example>\r\nDATA\r\nhi\r\n.\r\nRCPT TO:<x@y.example>\r\n");
        let Some(Event::Message { envelope, body }) = s.poll_event() else {
            panic!()
        };
        assert_eq!(envelope.sender, "");
        assert_eq!(body, b"hi\r\n");
        s.message_result(Err(Reply::LOCAL_ERROR));
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
        s.receive(b"NOOP\r\n");
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
            out.ends_with("250-DSN\r\n250 AUTH PLAIN LOGIN\r\n"),
            "{out}"
        );
        assert!(!out.contains("STARTTLS"));
        assert_eq!(s.protocol(), "ESMTPS");
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
                customer: String::new(),
                received_at_s: 0,
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
            replies(&out)[10..],
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
        s.receive(b"EHLO c\r\nAUTH LOGIN am9l\r\nd3Jvbmc=\r\nNOOP\r\n");
        assert_eq!(
            s.poll_event(),
            Some(Event::Auth {
                username: "joe".into(),
                password: "wrong".into()
            })
        );
        s.auth_result(Err(Reply::AUTH_FAILED));
        let mut out = Vec::new();
        s.take_output(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("334 UGFzc3dvcmQ6\r\n535 5.7.8 Authentication credentials invalid\r\n250 2.0.0 Ok\r\n"), "{text}");
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
        s.receive(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n");
        s.receive(b"RCPT TO:<x@y.example>\r\n");
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
        s.tls_established();
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
        assert_eq!(s.timeout(), Duration::from_secs(180));
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
        assert_eq!(s.timeout(), Duration::from_secs(300));
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
        let big = "x".repeat(6000);
        let huge = "x".repeat(20000);
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
            ["250 2.0.0", "500 5.5.6", "500 5.5.6", "250 2.0.0"]
        );
        // Byte by byte, the buffer stays within one line.
        let mut s = session();
        for byte in huge.as_bytes() {
            s.receive(std::slice::from_ref(byte));
            assert!(s.input.len() <= MAX_COMMAND_LINE_BYTES);
        }
        let mut out = Vec::new();
        s.take_output(&mut out);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("500 5.5.6 Line too long\r\n")
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
    fn timeout_closes() {
        let mut s = session();
        let (_, _) = run(&mut s, "EHLO c\r\n");
        s.on_timeout();
        let mut out = Vec::new();
        s.take_output(&mut out);
        assert_eq!(
            out,
            b"421 4.4.2 mx.test Timeout exceeded, closing connection\r\n"
        );
        assert_eq!(s.poll_event(), Some(Event::Close));
        assert!(s.is_closed());
        s.on_timeout();
        assert_eq!(s.poll_event(), None);

        let mut s = session();
        s.receive(b"EHLO c\r\nMAIL FROM:<>\r\n");
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
        s.mail_result(Ok(()));
        assert!(s.is_closed());
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
            s.receive(piece);
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
}
