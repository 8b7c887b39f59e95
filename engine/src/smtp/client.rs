//! The sending side of SMTP as a sans-IO state machine (in the shape of quinn-proto): no socket, no
//! clock, no runtime. The driver (`delivery`) owns the socket and a timer and loops:
//!
//! 1. feed what the server sent: `handle_input(&bytes)`; report EOF or an IO error with
//!    `connection_lost()`, an expired timer with `on_timeout()`, and a deadline of the driver's own
//!    (the TLS handshake, one write) with `fail_io()`;
//! 2. write what `poll_transmit()` returns, in order: `Transmit::Bytes` as is, and for `Transmit::Body`
//!    the current transaction's body dot-stuffed (`DotStuffer::segments` per chunk, then `end()`, or
//!    `dot_stuff(body, &mut buf)`); the body never passes through the session, so nothing copies it;
//! 3. act on `poll_event()`: `Ready` → `send(next transaction)` or `quit()`; `CanPipeline` →
//!    optionally `send_pipelined(next transaction)`; `NeedTls` → run the TLS handshake on the
//!    socket, then `tls_established()`; `TransactionDone` → record the results (transactions
//!    finish in the order sent; bodies are asked for in that order too); `Failed` / `Closed` →
//!    close the socket;
//! 4. re-arm the timer with `timeout()` after every call into the session.
//!
//! Flow: greeting, EHLO (HELO when EHLO gets 5xx), STARTTLS per `TlsPolicy` and EHLO again, then
//! transactions. With PIPELINING, MAIL, every RCPT and DATA go in one flight; otherwise lock-step.
//! With PIPELINING and CHUNKING, `BDAT <n> LAST` replaces DATA in that flight and the body follows
//! at once as `Transmit::RawBody` (written as stored, not dot-stuffed): one round trip per message.
//! RSET is sent before MAIL only when the previous transaction stopped midway, and before every
//! transaction sent behind another (`SessionConfig::transactions_in_flight` above 1): the next
//! message's commands and body follow the previous one's without waiting for its reply.

mod capabilities;
mod dot_stuff;
mod reply;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

pub use capabilities::Capabilities;
pub use dot_stuff::{DotStuffer, END_AFTER_CRLF, END_WITH_CRLF, Segments, dot_stuff};
pub use reply::{
    EnhancedCode, MAX_REPLY_LINE_BYTES, MAX_REPLY_LINES, Reply, ReplyError, ReplyParser,
    ReplySource,
};

use crate::envelope::{BodyType, DsnNotify, DsnRet, Envelope, Recipient};
use crate::number_text::{push_decimal, push_hex_upper};

/// When to upgrade the connection with STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// Use STARTTLS when the server offers it; continue in plain text otherwise.
    #[default]
    Opportunistic,
    /// Fail the connection (temporarily) when STARTTLS is not offered or is refused.
    Required,
    /// Never use STARTTLS.
    Off,
}

/// How long to wait for each reply (RFC 5321 4.5.3.2 defaults). The driver's own deadlines (the
/// connect, the TLS handshake, each write) are not the session's: it never sees them run, only
/// `fail_io` when one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageTimeouts {
    /// The 220 greeting (4.5.3.2.1: 5 minutes).
    pub greeting_ms: u64,
    /// Each reply to EHLO, HELO, STARTTLS, RSET, MAIL, RCPT, DATA and QUIT (4.5.3.2.2-4: 5 minutes
    /// for MAIL and RCPT, 2 for DATA; one value for all).
    pub reply_ms: u64,
    /// The reply after the body: to the final dot or to `BDAT LAST` (4.5.3.2.6: 10 minutes).
    pub data_ms: u64,
    /// Idle between transactions; on expiry the session QUITs. Below the server's 5 minutes.
    pub idle_ms: u64,
}

impl Default for StageTimeouts {
    fn default() -> Self {
        StageTimeouts {
            greeting_ms: 300_000,
            reply_ms: 300_000,
            data_ms: 600_000,
            idle_ms: 60_000,
        }
    }
}

/// Per-connection settings, from the VMTA and the destination's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The name sent in EHLO/HELO: the VMTA's `ehlo_hostname`.
    pub ehlo_hostname: String,
    /// The server as named in local replies ("Timeout waiting for greeting from mx.example
    /// (192.0.2.1)"): its host name and address.
    pub peer: String,
    pub tls: TlsPolicy,
    /// What requires TLS (`TlsPolicy::Required`), named in the failure when the server does not
    /// offer it: "policy", "DANE (TLSA records of mx.example)", "the MTA-STS policy of ...".
    pub tls_required_by: String,
    /// A completed handshake means a verified certificate (DANE, MTA-STS, `tls = "required"`):
    /// what REQUIRETLS messages need.
    pub tls_verified: bool,
    pub timeouts: StageTimeouts,
    /// Send the body with `BDAT <n> LAST` (RFC 3030) when the server offers CHUNKING and
    /// PIPELINING: MAIL, RCPT, BDAT and the body go in one flight, one round trip per message
    /// instead of two, and the body is sent as stored (no dot-stuffing).
    pub chunking: bool,
    /// Transactions on the wire at once (1 to `MAX_TRANSACTIONS_IN_FLIGHT`). Above 1, with
    /// PIPELINING and CHUNKING, the next message's `RSET`, MAIL, RCPTs and `BDAT LAST` follow
    /// the previous one's without waiting for its reply (`Event::CanPipeline`, `send_pipelined`).
    pub transactions_in_flight: usize,
}

/// Most `SessionConfig::transactions_in_flight`.
pub const MAX_TRANSACTIONS_IN_FLIGHT: usize = 8;

impl SessionConfig {
    pub fn new(ehlo_hostname: impl Into<String>, tls: TlsPolicy) -> SessionConfig {
        SessionConfig {
            ehlo_hostname: ehlo_hostname.into(),
            peer: "the server".into(),
            tls,
            tls_required_by: "policy".into(),
            tls_verified: false,
            timeouts: StageTimeouts::default(),
            chunking: true,
            transactions_in_flight: 1,
        }
    }
}

/// One message to some recipients of one destination. The body stays with the driver; the session
/// only needs its length (for SIZE) and asks for it with `Transmit::Body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Reverse path without angle brackets; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub ret: DsnRet,
    pub envid: Option<String>,
    pub body_type: BodyType,
    /// The message needs SMTPUTF8 (RFC 6531); refused locally when the server lacks it.
    pub smtputf8: bool,
    /// RFC 8689 REQUIRETLS: sent on MAIL FROM; refused locally (5.7.10) unless the session runs
    /// over verified TLS (`SessionConfig::tls_verified`) and the server offers REQUIRETLS.
    pub requiretls: bool,
    /// Length of the body as stored (before dot-stuffing), for SIZE.
    pub body_bytes: u64,
}

impl Transaction {
    /// A transaction for `recipients` (a subset of the envelope's) of a spooled message.
    pub fn from_envelope(
        envelope: &Envelope,
        recipients: Vec<Recipient>,
        body_bytes: u64,
    ) -> Transaction {
        Transaction {
            sender: envelope.sender.clone(),
            recipients,
            ret: envelope.ret,
            envid: envelope.envid.clone(),
            body_type: envelope.body_type,
            smtputf8: envelope.smtputf8,
            requiretls: envelope.requiretls,
            body_bytes,
        }
    }
}

/// Something for the driver to write, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Command bytes (a whole pipelined flight is one `Bytes`).
    Bytes(Vec<u8>),
    /// The body of the transaction in progress, dot-stuffed and terminated (see `DotStuffer`).
    Body,
    /// The body of the transaction in progress exactly as stored: its `body_bytes` bytes, after
    /// a `BDAT <body_bytes> LAST` (no dot-stuffing, no terminator).
    RawBody,
}

/// What happened to one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx at end of data.
    Delivered,
    /// 4xx anywhere, or a connection failure: try again later.
    Deferred,
    /// 5xx: bounce.
    Failed,
}

/// The final reply that applies to one recipient: its RCPT reply when refused there, else the
/// MAIL, DATA or end-of-data reply, or a local reply when Volley refused or the connection failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientResult {
    pub recipient: Recipient,
    pub reply: Reply,
}

impl RecipientResult {
    pub fn outcome(&self) -> Outcome {
        if self.reply.is_positive() {
            Outcome::Delivered
        } else if self.reply.is_permanent() {
            Outcome::Failed
        } else {
            Outcome::Deferred
        }
    }
}

/// What the driver must learn about, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The server said 220 to STARTTLS: run the TLS handshake, then call `tls_established()`.
    NeedTls,
    /// Idle: `send()` the next transaction or `quit()`.
    Ready,
    /// A transaction is on the wire and another may follow it now (`send_pipelined()`); nothing
    /// need be done: `Ready` comes once every transaction finished.
    CanPipeline,
    /// A transaction finished; one result per recipient, in the transaction's order.
    TransactionDone {
        recipient_results: Vec<RecipientResult>,
    },
    /// The connection failed (a `Closed` follows). `reply` is the server's, or a local one
    /// (`ReplySource::Local`) for timeouts, protocol errors, a lost connection or a policy refusal.
    /// `temporary` is false only for a 5xx from the server (greeting, EHLO+HELO).
    Failed { reply: Reply, temporary: bool },
    /// The session is over; close the socket. Always the last event.
    Closed,
}

/// `send()` was called when the session was not `Ready`; the transaction is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the SMTP session is not ready for a transaction")]
pub struct NotReady(pub Transaction);

/// Which reply the session waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Rset,
    Mail,
    Rcpt(usize),
    Data,
    DataEnd,
    /// The reply to `BDAT <n> LAST` and its chunk: the message's outcome.
    BdatLast,
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Greeting and EHLO/HELO/STARTTLS exchanges.
    Opening,
    /// The driver runs the TLS handshake.
    TlsHandshake,
    Ready,
    Transaction,
    Quitting,
    Closed,
}

#[derive(Debug, Clone)]
enum RcptState {
    /// Not answered yet (or, in lock-step, not sent yet).
    Pending,
    /// 2xx to RCPT; the DATA outcome applies.
    Accepted,
    Done(Reply),
}

#[derive(Debug)]
struct OpenTransaction {
    tx: Transaction,
    rcpts: Vec<RcptState>,
    mail_accepted: bool,
    /// Lock-step: index of the next recipient whose RCPT may be sent.
    next_rcpt: usize,
}

impl OpenTransaction {
    fn any_accepted(&self) -> bool {
        self.rcpts.iter().any(|r| matches!(r, RcptState::Accepted))
    }

    /// Gives `reply` to every accepted recipient, and to unanswered ones when `pending_too`.
    fn settle(&mut self, reply: &Reply, pending_too: bool) {
        for r in &mut self.rcpts {
            let settle = match r {
                RcptState::Accepted => true,
                RcptState::Pending => pending_too,
                RcptState::Done(_) => false,
            };
            if settle {
                *r = RcptState::Done(reply.clone());
            }
        }
    }
}

/// One outbound SMTP connection's protocol state.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    parser: ReplyParser,
    phase: Phase,
    expect: VecDeque<Expect>,
    caps: Capabilities,
    tls_active: bool,
    /// The transaction whose replies come next.
    transaction: Option<OpenTransaction>,
    /// Transactions sent after it (`send_pipelined`), oldest first.
    behind: VecDeque<OpenTransaction>,
    needs_rset: bool,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Session {
    /// A session for a freshly connected socket: it waits for the greeting.
    pub fn new(config: SessionConfig) -> Session {
        Session {
            config,
            parser: ReplyParser::new(),
            phase: Phase::Opening,
            expect: VecDeque::from([Expect::Greeting]),
            caps: Capabilities::default(),
            tls_active: false,
            transaction: None,
            behind: VecDeque::new(),
            needs_rset: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// What the server announced in its last EHLO (empty for HELO servers).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether `tls_established()` was called.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Whether the session is over (after `Event::Closed`).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The next bytes to write, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// How long the driver may wait for the server (or, while `Ready`, for itself) before calling
    /// `on_timeout()`. Depends on the stage: re-read after every call into the session. During
    /// the TLS handshake the driver applies its own deadline.
    pub fn timeout(&self) -> Duration {
        let t = &self.config.timeouts;
        let ms = match self.phase {
            Phase::Ready | Phase::Closed => t.idle_ms,
            Phase::TlsHandshake => t.reply_ms,
            Phase::Opening | Phase::Transaction | Phase::Quitting => match self.expect.front() {
                Some(Expect::Greeting) => t.greeting_ms,
                Some(Expect::DataEnd | Expect::BdatLast) => t.data_ms,
                Some(_) | None => t.reply_ms,
            },
        };
        Duration::from_millis(ms)
    }

    /// The timer from `timeout()` expired. While `Ready` this QUITs; while quitting it closes;
    /// otherwise the connection fails temporarily, the current recipients are deferred, and the
    /// reply names the stage: "451 4.4.2 Timeout waiting for greeting from mx (192.0.2.1)".
    pub fn on_timeout(&mut self) {
        match self.phase {
            Phase::Closed => {}
            Phase::Ready => self.quit(),
            Phase::Quitting => self.close(),
            Phase::TlsHandshake => self.fail_io("Timeout in the TLS handshake with"),
            Phase::Opening | Phase::Transaction => {
                let stage = match self.expect.front() {
                    Some(Expect::Greeting) => "greeting",
                    Some(Expect::Ehlo) => "EHLO reply",
                    Some(Expect::Helo) => "HELO reply",
                    Some(Expect::StartTls) => "STARTTLS reply",
                    Some(Expect::Rset) => "RSET reply",
                    Some(Expect::Mail) => "MAIL reply",
                    Some(Expect::Rcpt(_)) => "RCPT reply",
                    Some(Expect::Data) => "DATA reply",
                    Some(Expect::DataEnd) => "end-of-data reply",
                    Some(Expect::BdatLast) => "BDAT reply",
                    Some(Expect::Quit) | None => "reply",
                };
                self.fail_io(&format!("Timeout waiting for {stage} from"));
            }
        }
    }

    /// The driver gave up on an I/O step (`what`, completed with the peer's name: "Timeout
    /// writing to"): the connection fails temporarily with 451 4.4.2 and the recipients of the
    /// transaction in progress are deferred with that reply.
    pub fn fail_io(&mut self, what: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        let reply = Reply::local(451, (4, 4, 2), format!("{what} {}", self.config.peer));
        self.defer_transaction(&reply);
        self.events.push_back(Event::Failed {
            reply,
            temporary: true,
        });
        self.close();
    }

    /// The socket reached EOF or failed. Expected after QUIT; a temporary failure otherwise.
    pub fn connection_lost(&mut self) {
        match self.phase {
            Phase::Closed => {}
            Phase::Quitting => self.close(),
            _ => self.fail_local("connection closed by the server"),
        }
    }

    /// The driver finished the TLS handshake after `Event::NeedTls`: EHLO is sent again.
    pub fn tls_established(&mut self) {
        if self.phase != Phase::TlsHandshake {
            return;
        }
        self.tls_active = true;
        self.caps = Capabilities::default();
        self.parser = ReplyParser::new();
        self.phase = Phase::Opening;
        self.send_ehlo();
    }

    /// Starts a transaction; only valid after `Event::Ready`. Recipients refused locally (a body
    /// the server cannot take, an unsafe address) get a `ReplySource::Local` reply at once.
    pub fn send(&mut self, tx: Transaction) -> Result<(), NotReady> {
        if self.phase != Phase::Ready {
            return Err(NotReady(tx));
        }
        if let Some(refusal) = self.refusal(&tx) {
            let mut flight = OpenTransaction {
                rcpts: vec![RcptState::Pending; tx.recipients.len()],
                tx,
                mail_accepted: false,
                next_rcpt: 0,
            };
            flight.settle(&refusal, true);
            self.transaction = Some(flight);
            self.finish_transaction(false);
            return Ok(());
        }
        let rcpts = tx
            .recipients
            .iter()
            .map(|r| {
                if can_be_sent(&r.address) {
                    RcptState::Pending
                } else {
                    RcptState::Done(Reply::local(
                        501,
                        (5, 1, 3),
                        "recipient address cannot be sent in an SMTP command",
                    ))
                }
            })
            .collect::<Vec<_>>();
        let none_left = rcpts.iter().all(|r| matches!(r, RcptState::Done(_)));
        self.transaction = Some(OpenTransaction {
            tx,
            rcpts,
            mail_accepted: false,
            next_rcpt: 0,
        });
        if none_left {
            self.finish_transaction(false);
            return Ok(());
        }
        self.phase = Phase::Transaction;
        if self.needs_rset {
            self.command(b"RSET\r\n", Expect::Rset);
            if !self.caps.pipelining {
                return Ok(());
            }
        }
        self.send_mail();
        if self.caps.pipelining {
            let pending: Vec<usize> = self
                .transaction
                .iter()
                .flat_map(|f| f.rcpts.iter().enumerate())
                .filter(|(_, r)| matches!(r, RcptState::Pending))
                .map(|(i, _)| i)
                .collect();
            for i in pending {
                self.send_rcpt(i);
            }
            if self.config.chunking && self.caps.chunking {
                self.send_bdat_last();
            } else {
                self.command(b"DATA\r\n", Expect::Data);
            }
        }
        self.offer_pipelining();
        Ok(())
    }

    /// Sends `tx` behind the transactions on the wire, without waiting for their replies: `RSET`
    /// first (whatever state a refused predecessor left the server in), then MAIL, every RCPT
    /// and `BDAT LAST`. Only after `Event::CanPipeline`; a transaction that would be refused
    /// locally, or has no recipient that can be sent, is handed back (send it when `Ready`).
    pub fn send_pipelined(&mut self, tx: Transaction) -> Result<(), NotReady> {
        let sendable = tx.recipients.iter().all(|r| can_be_sent(&r.address));
        if !self.can_pipeline() || !sendable || self.refusal(&tx).is_some() {
            return Err(NotReady(tx));
        }
        let out = out_buffer(&mut self.transmits);
        out.extend_from_slice(b"RSET\r\n");
        put_mail(out, &self.caps, &tx);
        for rcpt in &tx.recipients {
            put_rcpt(out, &self.caps, rcpt);
        }
        put_bdat_last(out, tx.body_bytes);
        self.expect.push_back(Expect::Rset);
        self.expect.push_back(Expect::Mail);
        self.expect
            .extend((0..tx.recipients.len()).map(Expect::Rcpt));
        self.expect.push_back(Expect::BdatLast);
        self.transmits.push_back(Transmit::RawBody);
        self.behind.push_back(OpenTransaction {
            rcpts: vec![RcptState::Pending; tx.recipients.len()],
            tx,
            mail_accepted: false,
            next_rcpt: 0,
        });
        self.offer_pipelining();
        Ok(())
    }

    /// Whether another transaction may go on the wire now: one is in progress, every command
    /// of the ones on the wire is sent (PIPELINING and CHUNKING), and there is room.
    fn can_pipeline(&self) -> bool {
        self.phase == Phase::Transaction
            && self.transaction.is_some()
            && self.caps.pipelining
            && self.caps.chunking
            && self.config.chunking
            && 1 + self.behind.len() < self.config.transactions_in_flight
    }

    fn offer_pipelining(&mut self) {
        if self.can_pipeline() {
            self.events.push_back(Event::CanPipeline);
        }
    }

    /// Ends the session politely with QUIT when idle; at any other time closes at once (recipients
    /// of a transaction in progress are deferred).
    pub fn quit(&mut self) {
        match self.phase {
            Phase::Closed | Phase::Quitting => {}
            Phase::Ready => {
                self.phase = Phase::Quitting;
                self.command(b"QUIT\r\n", Expect::Quit);
            }
            Phase::Opening | Phase::TlsHandshake | Phase::Transaction => {
                let reply = Reply::local(451, (4, 4, 0), "delivery aborted by Volley");
                self.defer_transaction(&reply);
                self.close();
            }
        }
    }

    /// Feeds bytes received from the server (after TLS decryption when TLS is active).
    pub fn handle_input(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match self.phase {
                Phase::Closed => return,
                Phase::TlsHandshake => {
                    // Plain text after "220 ready for TLS" would be injected into the TLS session.
                    self.fail_local("protocol error: data received before the TLS handshake");
                    return;
                }
                _ => {}
            }
            let (reply, used) = match self.parser.parse(input) {
                Ok(parsed) => parsed,
                Err(e) => {
                    self.fail_local(&format!("protocol error: {e}"));
                    return;
                }
            };
            input = input.get(used..).unwrap_or_default();
            if let Some(reply) = reply {
                if self.expect.front() == Some(&Expect::StartTls)
                    && reply.is_positive()
                    && (!input.is_empty() || self.parser.has_partial())
                {
                    self.fail_local("protocol error: data pipelined after the STARTTLS reply");
                    return;
                }
                self.on_reply(reply);
            }
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        let Some(expect) = self.expect.pop_front() else {
            if reply.code == 421 {
                return self.fail_reply(reply);
            }
            return self.fail_local(&format!("protocol error: unexpected reply \"{reply}\""));
        };
        if reply.code == 421 && expect != Expect::Quit {
            return self.fail_reply(reply);
        }
        match expect {
            Expect::Greeting => {
                if reply.is_positive() {
                    self.send_ehlo();
                } else {
                    self.fail_reply(reply);
                }
            }
            Expect::Ehlo => {
                if reply.is_positive() {
                    self.caps = Capabilities::from_ehlo(&reply);
                    self.after_ehlo();
                } else if reply.is_permanent() {
                    let helo = format!("HELO {}\r\n", self.config.ehlo_hostname);
                    self.command(helo.as_bytes(), Expect::Helo);
                } else {
                    self.fail_reply(reply);
                }
            }
            Expect::Helo => {
                if reply.is_positive() {
                    self.caps = Capabilities::default();
                    self.after_ehlo();
                } else {
                    self.fail_reply(reply);
                }
            }
            Expect::StartTls => {
                if reply.is_positive() {
                    self.phase = Phase::TlsHandshake;
                    self.events.push_back(Event::NeedTls);
                } else if self.config.tls == TlsPolicy::Required {
                    let by = &self.config.tls_required_by;
                    self.fail_tls(&format!(
                        "TLS required by {by} but STARTTLS was refused: {reply}"
                    ));
                } else {
                    self.become_ready();
                }
            }
            Expect::Rset => {
                if !reply.is_positive() {
                    return self.fail_reply(reply);
                }
                self.needs_rset = false;
                if !self.caps.pipelining {
                    self.send_mail();
                }
            }
            Expect::Mail => self.on_mail_reply(reply),
            Expect::Rcpt(i) => self.on_rcpt_reply(i, reply),
            Expect::Data => self.on_data_reply(reply),
            Expect::DataEnd => self.on_data_end_reply(reply),
            Expect::BdatLast => self.on_bdat_last_reply(reply),
            Expect::Quit => self.close(),
        }
    }

    fn on_mail_reply(&mut self, reply: Reply) {
        let Some(flight) = self.transaction.as_mut() else {
            return self.fail_local("protocol error: MAIL reply outside a transaction");
        };
        flight.mail_accepted = reply.is_positive();
        if !flight.mail_accepted {
            flight.settle(&reply, true);
            if !self.caps.pipelining {
                self.finish_transaction(false);
            }
        } else if !self.caps.pipelining {
            self.lock_step_next();
        }
    }

    fn on_rcpt_reply(&mut self, index: usize, reply: Reply) {
        let Some(flight) = self.transaction.as_mut() else {
            return self.fail_local("protocol error: RCPT reply outside a transaction");
        };
        if let Some(state) = flight.rcpts.get_mut(index)
            && matches!(state, RcptState::Pending)
        {
            *state = if reply.is_positive() {
                RcptState::Accepted
            } else {
                RcptState::Done(reply)
            };
        }
        if !self.caps.pipelining {
            self.lock_step_next();
        }
    }

    /// Lock-step: the next RCPT, or DATA once every recipient is answered, or the end when none
    /// was accepted (the server holds an open transaction then: RSET before the next MAIL).
    fn lock_step_next(&mut self) {
        let Some(flight) = self.transaction.as_mut() else {
            return;
        };
        let next = (flight.next_rcpt..flight.rcpts.len())
            .find(|&i| matches!(flight.rcpts.get(i), Some(RcptState::Pending)));
        if let Some(i) = next {
            flight.next_rcpt = i + 1;
            self.send_rcpt(i);
        } else if flight.any_accepted() {
            self.command(b"DATA\r\n", Expect::Data);
        } else {
            self.finish_transaction(true);
        }
    }

    fn on_data_reply(&mut self, reply: Reply) {
        let Some(flight) = self.transaction.as_mut() else {
            return self.fail_local("protocol error: DATA reply outside a transaction");
        };
        if reply.is_intermediate() {
            if flight.any_accepted() {
                self.transmits.push_back(Transmit::Body);
            } else {
                // RFC 2920 3.1: every RCPT failed yet DATA was accepted; send an empty message.
                self.write(END_AFTER_CRLF);
            }
            self.expect.push_back(Expect::DataEnd);
        } else if reply.is_positive() {
            self.fail_local(&format!("protocol error: DATA answered with \"{reply}\""));
        } else {
            let mail_accepted = flight.mail_accepted;
            flight.settle(&reply, false);
            self.finish_transaction(mail_accepted);
        }
    }

    fn on_data_end_reply(&mut self, reply: Reply) {
        let Some(flight) = self.transaction.as_mut() else {
            return self.fail_local("protocol error: end-of-data reply outside a transaction");
        };
        if reply.is_intermediate() {
            return self.fail_local(&format!("protocol error: end of data answered \"{reply}\""));
        }
        flight.settle(&reply, false);
        self.finish_transaction(false);
    }

    /// The server read the whole chunk whatever it answers (RFC 3030 §2). Recipients refused at
    /// RCPT keep their reply; the accepted ones get this one. After a refusal the server may hold
    /// a half-open transaction: RSET before the next MAIL.
    fn on_bdat_last_reply(&mut self, reply: Reply) {
        let Some(flight) = self.transaction.as_mut() else {
            return self.fail_local("protocol error: BDAT reply outside a transaction");
        };
        if reply.is_intermediate() {
            return self.fail_local(&format!("protocol error: BDAT answered \"{reply}\""));
        }
        flight.settle(&reply, false);
        self.finish_transaction(!reply.is_positive());
    }

    fn after_ehlo(&mut self) {
        if self.tls_active {
            return self.become_ready();
        }
        match (self.config.tls, self.caps.starttls) {
            (TlsPolicy::Off, _) | (TlsPolicy::Opportunistic, false) => self.become_ready(),
            (TlsPolicy::Opportunistic | TlsPolicy::Required, true) => {
                self.command(b"STARTTLS\r\n", Expect::StartTls);
            }
            (TlsPolicy::Required, false) => {
                let by = &self.config.tls_required_by;
                self.fail_tls(&format!(
                    "TLS required by {by} but STARTTLS not offered by the server"
                ))
            }
        }
    }

    fn become_ready(&mut self) {
        self.phase = Phase::Ready;
        self.events.push_back(Event::Ready);
    }

    /// Emits `TransactionDone`; then the next transaction on the wire is the one replies are
    /// for, or, with none, the session returns to `Ready`.
    fn finish_transaction(&mut self, needs_rset: bool) {
        self.needs_rset = needs_rset;
        if let Some(done) =
            self.take_results(&Reply::local(451, (4, 5, 0), "no reply for this recipient"))
        {
            self.events.push_back(done);
        }
        match self.behind.pop_front() {
            Some(next) => {
                self.transaction = Some(next);
                self.offer_pipelining();
            }
            None => self.become_ready(),
        }
    }

    /// The `TransactionDone` for the transaction in progress, giving `unsettled` to recipients
    /// without a final reply.
    fn take_results(&mut self, unsettled: &Reply) -> Option<Event> {
        let flight = self.transaction.take()?;
        let recipient_results = flight
            .tx
            .recipients
            .into_iter()
            .zip(flight.rcpts)
            .map(|(recipient, state)| RecipientResult {
                recipient,
                reply: match state {
                    RcptState::Done(reply) => reply,
                    RcptState::Pending | RcptState::Accepted => unsettled.clone(),
                },
            })
            .collect();
        Some(Event::TransactionDone { recipient_results })
    }

    /// Defers every recipient of the transaction in progress that has no final reply.
    fn defer_transaction(&mut self, cause: &Reply) {
        let deferral = if cause.is_transient() {
            cause.clone()
        } else {
            Reply {
                code: 451,
                enhanced: Some(EnhancedCode::new(4, 4, 0)),
                text: format!("4.4.0 connection failed: {cause}"),
                source: ReplySource::Local,
            }
        };
        // The one replies were for, then each sent behind it, in order.
        while let Some(done) = self.take_results(&deferral) {
            self.events.push_back(done);
            self.transaction = self.behind.pop_front();
        }
    }

    fn fail_reply(&mut self, reply: Reply) {
        let temporary = !reply.is_permanent();
        self.defer_transaction(&reply);
        self.events.push_back(Event::Failed { reply, temporary });
        self.close();
    }

    /// TLS is required and the server does not offer it or refused it: 4.7.4 (RFC 3463: security
    /// features not supported), nothing sent in clear.
    fn fail_tls(&mut self, reason: &str) {
        let reply = Reply::local(421, (4, 7, 4), reason);
        self.defer_transaction(&reply);
        self.events.push_back(Event::Failed {
            reply,
            temporary: true,
        });
        self.close();
    }

    fn fail_local(&mut self, reason: &str) {
        let reply = Reply::local(421, (4, 4, 2), reason);
        self.defer_transaction(&reply);
        self.events.push_back(Event::Failed {
            reply,
            temporary: true,
        });
        self.close();
    }

    fn close(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.expect.clear();
        self.transmits.clear();
        self.events.push_back(Event::Closed);
    }

    /// Why the server cannot take this message at all, decided before sending anything.
    fn refusal(&self, tx: &Transaction) -> Option<Reply> {
        if !is_safe_path(&tx.sender) {
            return Some(Reply::local(
                501,
                (5, 1, 7),
                "sender address cannot be sent in an SMTP command",
            ));
        }
        match tx.body_type {
            BodyType::BinaryMime => {
                return Some(Reply::local(
                    554,
                    (5, 6, 3),
                    "BINARYMIME body needs BDAT, which this client does not send",
                ));
            }
            BodyType::EightBitMime if !self.caps.eight_bit_mime => {
                return Some(Reply::local(
                    554,
                    (5, 6, 3),
                    "8-bit message but the server does not offer 8BITMIME",
                ));
            }
            _ => {}
        }
        if tx.smtputf8 && !self.caps.smtputf8 {
            return Some(Reply::local(
                553,
                (5, 6, 7),
                "message needs SMTPUTF8 but the server does not offer it",
            ));
        }
        if tx.requiretls && !(self.tls_active && self.config.tls_verified) {
            return Some(Reply::local(
                550,
                (5, 7, 10),
                format!(
                    "REQUIRETLS: the message needs TLS verified by DANE or MTA-STS, and {} \
                     has no such policy",
                    self.config.peer
                ),
            ));
        }
        if tx.requiretls && !self.caps.requiretls {
            return Some(Reply::local(
                550,
                (5, 7, 10),
                format!("REQUIRETLS: {} does not offer REQUIRETLS", self.config.peer),
            ));
        }
        if self.caps.exceeds_size(tx.body_bytes) {
            return Some(Reply::local(
                552,
                (5, 3, 4),
                format!(
                    "message of {} bytes exceeds the server's SIZE limit of {} bytes",
                    tx.body_bytes,
                    self.caps.size_limit_bytes.unwrap_or(0)
                ),
            ));
        }
        None
    }

    fn send_ehlo(&mut self) {
        let ehlo = format!("EHLO {}\r\n", self.config.ehlo_hostname);
        self.command(ehlo.as_bytes(), Expect::Ehlo);
    }

    fn send_mail(&mut self) {
        let Some(flight) = self.transaction.as_ref() else {
            return;
        };
        put_mail(out_buffer(&mut self.transmits), &self.caps, &flight.tx);
        self.expect.push_back(Expect::Mail);
    }

    fn send_rcpt(&mut self, index: usize) {
        let Some(rcpt) = self
            .transaction
            .as_ref()
            .and_then(|f| f.tx.recipients.get(index))
        else {
            return;
        };
        put_rcpt(out_buffer(&mut self.transmits), &self.caps, rcpt);
        self.expect.push_back(Expect::Rcpt(index));
    }

    /// `BDAT <n> LAST` and the body in the same flight as MAIL and RCPT (pipelining only).
    fn send_bdat_last(&mut self) {
        let Some(flight) = self.transaction.as_ref() else {
            return;
        };
        put_bdat_last(out_buffer(&mut self.transmits), flight.tx.body_bytes);
        self.expect.push_back(Expect::BdatLast);
        self.transmits.push_back(Transmit::RawBody);
    }

    fn command(&mut self, bytes: &[u8], expect: Expect) {
        self.write(bytes);
        self.expect.push_back(expect);
    }

    fn write(&mut self, bytes: &[u8]) {
        out_buffer(&mut self.transmits).extend_from_slice(bytes);
    }
}

/// The last `Transmit::Bytes`, where commands are appended so a pipelined flight is one write
/// (a new one after a body or when there is none).
fn out_buffer(transmits: &mut VecDeque<Transmit>) -> &mut Vec<u8> {
    if !matches!(transmits.back(), Some(Transmit::Bytes(_))) {
        transmits.push_back(Transmit::Bytes(Vec::with_capacity(256)));
    }
    match transmits.back_mut() {
        Some(Transmit::Bytes(last)) => last,
        _ => unreachable!("a Transmit::Bytes was pushed just above"),
    }
}

/// `MAIL FROM:<sender>` and the parameters the server announced support for.
fn put_mail(out: &mut Vec<u8>, caps: &Capabilities, tx: &Transaction) {
    out.extend_from_slice(b"MAIL FROM:<");
    out.extend_from_slice(tx.sender.as_bytes());
    out.push(b'>');
    if caps.size_limit_bytes.is_some() {
        out.extend_from_slice(b" SIZE=");
        push_decimal(out, tx.body_bytes);
    }
    if tx.body_type == BodyType::EightBitMime {
        out.extend_from_slice(b" BODY=8BITMIME");
    }
    if tx.smtputf8 && caps.smtputf8 {
        out.extend_from_slice(b" SMTPUTF8");
    }
    if tx.requiretls {
        out.extend_from_slice(b" REQUIRETLS");
    }
    if caps.dsn {
        match tx.ret {
            DsnRet::Full => out.extend_from_slice(b" RET=FULL"),
            DsnRet::Headers => out.extend_from_slice(b" RET=HDRS"),
            DsnRet::Unspecified => {}
        }
        if let Some(envid) = &tx.envid {
            out.extend_from_slice(b" ENVID=");
            xtext_encode(envid, out);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `RCPT TO:<address>`, with the DSN parameters when the server announced DSN.
fn put_rcpt(out: &mut Vec<u8>, caps: &Capabilities, rcpt: &Recipient) {
    out.extend_from_slice(b"RCPT TO:<");
    out.extend_from_slice(rcpt.address.as_bytes());
    out.push(b'>');
    if caps.dsn {
        push_notify(rcpt.notify, out);
        if let Some(orcpt) = &rcpt.orcpt {
            out.extend_from_slice(b" ORCPT=");
            // Kept verbatim (already xtext); only bytes that could break the command change.
            for c in orcpt.chars() {
                if c.is_ascii_graphic() {
                    out.push(c as u8);
                } else {
                    push_xtext_char(c, out);
                }
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn put_bdat_last(out: &mut Vec<u8>, body_bytes: u64) {
    out.extend_from_slice(b"BDAT ");
    push_decimal(out, body_bytes);
    out.extend_from_slice(b" LAST\r\n");
}

/// A recipient address that can go in `RCPT TO:<...>`: not empty, and safe there.
fn can_be_sent(address: &str) -> bool {
    !address.is_empty() && is_safe_path(address)
}

/// An address that cannot break out of `<...>` in a command: no controls, spaces or angle brackets.
fn is_safe_path(address: &str) -> bool {
    address
        .chars()
        .all(|c| !c.is_control() && c != ' ' && c != '<' && c != '>')
}

fn push_notify(notify: DsnNotify, cmd: &mut Vec<u8>) {
    if notify.never {
        cmd.extend_from_slice(b" NOTIFY=NEVER");
        return;
    }
    let kinds = [
        (notify.success, "SUCCESS"),
        (notify.failure, "FAILURE"),
        (notify.delay, "DELAY"),
    ];
    let mut first = true;
    for (_, name) in kinds.iter().filter(|(on, _)| *on) {
        cmd.extend_from_slice(if first { b" NOTIFY=" } else { b"," });
        cmd.extend_from_slice(name.as_bytes());
        first = false;
    }
}

/// RFC 3461 4: xtext, `+XX` for `+`, `=`, and everything outside `!`..`~`.
fn xtext_encode(value: &str, out: &mut Vec<u8>) {
    for c in value.chars() {
        if c.is_ascii_graphic() && c != '+' && c != '=' {
            out.push(c as u8);
        } else {
            push_xtext_char(c, out);
        }
    }
}

fn push_xtext_char(c: char, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        out.push(b'+');
        push_hex_upper(out, u64::from(b), 2);
    }
}
