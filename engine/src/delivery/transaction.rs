//! The transactions of one outbound connection: which recipients it took from its queue, the
//! message and body in flight, and what each result means for them (`outcome`). The driver calls
//! `on_ready` when the session is idle and `on_done` when a transaction finished; what the
//! connection took and did not finish is deferred by `fail_in_flight`, and nothing else.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::DeliveryCore;
use super::Queued;
use super::idle_connections::Takes;
use super::outcome::{self, Attempt};
use super::shaping::Permit;
use crate::config::Config;
use crate::queue::{CapChange, QueueKey};
use crate::smtp::client::{Reply, Session, Transaction};
use crate::spool::{BodyBytes, StoredMessage};

/// Recipients in one SMTP transaction at most (RFC 5321 4.5.3.1.8 requires servers to take 100).
const RECIPIENTS_PER_TRANSACTION_MAX: usize = 100;
/// A rate limit that asks to wait longer than this closes the connection instead.
pub const RATE_WAIT_IN_CONNECTION_MS_MAX: u64 = 10_000;
/// How long an idle connection waits for more recipients of its queue before QUIT.
const IDLE_LINGER_MS: u64 = 1_000;

pub struct InFlight {
    pub items: Vec<Queued>,
    pub message: Rc<StoredMessage>,
    pub body: BodyBytes,
    /// The session asked for this body (`Transmit::Body`/`RawBody`, in the order sent).
    pub body_sent: bool,
}

/// What `Connection::take_next` found.
enum Next {
    Send(Transaction, InFlight),
    /// The queue has nothing for this connection.
    Empty,
    /// The message could not be read: its recipients were deferred.
    Unreadable,
}

pub struct Connection {
    pub core: Rc<DeliveryCore>,
    pub key: QueueKey,
    /// "host (address)" of the server, for the log and the accounting `mx` field.
    pub mx: String,
    pub source_ip: String,
    pub max_messages: u32,
    /// Transactions started on this connection.
    pub sent: u32,
    /// The session got through the greeting and EHLO (a 421 before that refuses the connection).
    pub opened: bool,
    /// The transactions on the wire, oldest first (one, or up to the policy's
    /// `transactions_in_flight` when the server pipelines).
    pub in_flight: VecDeque<InFlight>,
    /// The connection-level failure, if the session reported one.
    pub failure: Option<Reply>,
    /// A send taken from the queue's rate and not spent yet.
    pub rate_token: bool,
    /// The receiver behind the hops (`hops::Hops::next_hop`): VMTA refusals count per next hop.
    pub next_hop: String,
    /// The configuration the connection was opened under: after a reload it finishes its
    /// transaction and closes, so new routes and policies apply to the next one.
    pub config: Arc<Config>,
    /// How the connection is secured, for the accounting log: `none` until a TLS handshake.
    pub tls: &'static str,
    /// The STARTTLS handshake completed.
    pub tls_up: bool,
    /// MTA-STS `testing`: what the certificate check found.
    pub observed: Option<Arc<crate::transport_security::plan::Observed>>,
    /// The transport security this connection is under.
    pub hop_tls: crate::transport_security::plan::HopTls,
    /// The server is one of the domain's MX hosts (or the domain itself), not a `[routes]` hop.
    pub from_mx: bool,
    /// Planned without DANE and MTA-STS: takes only mail saying `TLS-Required: No`.
    pub tls_optional_only: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.opened {
            self.core
                .delivery
                .queues
                .borrow_mut()
                .established_connection_ended(&self.key);
        }
    }
}

impl Connection {
    pub fn attempt(&self) -> Attempt<'_> {
        Attempt {
            source_ip: &self.source_ip,
            mx: &self.mx,
            tls: self.tls,
        }
    }

    /// Waits a little for recipients when the queue is empty, so a steady stream of mail reuses the
    /// connection instead of paying a new connect and EHLO per burst. False when none came. The
    /// scheduler wakes the wait when the queue gets recipients (`IdleConnections`); a reload or a
    /// stop wakes it too. A drain that starts meanwhile is seen when the wait ends (within the
    /// linger).
    async fn wait_for_work(&self) -> bool {
        let until = Instant::now() + Duration::from_millis(IDLE_LINGER_MS);
        let takes = if self.tls_optional_only {
            Takes::TlsOptionalOnly
        } else {
            Takes::Any
        };
        let stop = self.core.stop_signal();
        loop {
            // Checked before the queue, every time: mail that arrives after a reload must not
            // leave on a connection opened under the old routes.
            if self.core.node.control.stopping()
                || self.core.node.drain.is_draining()
                || !Arc::ptr_eq(&self.config, &self.core.config())
            {
                return false;
            }
            if self.queue_has_work() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            futures_lite::future::or(
                self.core.delivery.idle.wait(&self.key, takes, left),
                stop.wait(),
            )
            .await;
        }
    }

    /// The queue has recipients this connection may take now.
    fn queue_has_work(&self) -> bool {
        let queues = self.core.delivery.queues.borrow();
        if self.tls_optional_only {
            queues.has_ready_tls_optional(&self.key)
        } else {
            queues.has_ready(&self.key)
        }
    }

    /// Whether this connection may start another transaction: its message count, the queue's
    /// connection cap, a stop, a drain (which hands the queue over), a reload (new routes and
    /// policies apply to the next connection).
    fn may_start(&self) -> bool {
        let core = &self.core;
        self.sent < self.max_messages
            && !core.delivery.queues.borrow().over_connection_cap(&self.key)
            && !core.node.control.stopping()
            && !core.node.drain.is_draining()
            && Arc::ptr_eq(&self.config, &core.config())
    }

    fn started(&mut self, flight: InFlight) {
        self.sent += 1;
        self.in_flight.push_back(flight);
    }

    /// The session is idle: start the next transaction, or QUIT.
    pub async fn on_ready(&mut self, session: &mut Session) {
        let core = self.core.clone();
        if !self.may_start() || !self.wait_for_work().await {
            session.quit();
            return;
        }
        // The first transaction spends the send the connection took from the rate before it
        // connected (see `connection::rate_allows_connecting`).
        while !std::mem::take(&mut self.rate_token) {
            match super::shaping::take_send(&core, &self.key).await {
                Permit::Go => self.rate_token = true,
                Permit::Wait(wait_ms) if wait_ms <= RATE_WAIT_IN_CONNECTION_MS_MAX => {
                    glommio::timer::sleep(Duration::from_millis(wait_ms.max(1))).await;
                }
                wait => {
                    // A long wait, or Redis down with a cluster-shaped queue in tempfail: close,
                    // and hold the queue until then (a timed suspension that the scheduler ends by
                    // itself), so no connection is opened only to wait again.
                    let wait_s = match wait {
                        Permit::Wait(wait_ms) => wait_ms.div_ceil(1000),
                        _ => super::shaping::TEMPFAIL_HOLD_S,
                    };
                    let until_s = crate::clock::unix_s() + wait_s;
                    core.delivery
                        .queues
                        .borrow_mut()
                        .hold_for_rate(&self.key, until_s);
                    session.quit();
                    return;
                }
            }
        }
        match self.take_next().await {
            Next::Send(tx, flight) => match session.send(tx) {
                Ok(()) => self.started(flight),
                Err(_) => {
                    core.delivery
                        .queues
                        .borrow_mut()
                        .return_unsent(&self.key, flight.items);
                    session.quit();
                }
            },
            Next::Empty | Next::Unreadable => session.quit(),
        }
    }

    /// A transaction is on the wire and the session takes another behind it: send the next one
    /// now if the queue has it and nothing would make it wait (rate, caps). Never waits for work
    /// and never quits: the replies of the ones on the wire are being waited for.
    pub async fn try_pipeline(&mut self, session: &mut Session) {
        let core = self.core.clone();
        if !self.queue_has_work() || !self.may_start() {
            return;
        }
        if !std::mem::take(&mut self.rate_token) {
            match super::shaping::take_send(&core, &self.key).await {
                Permit::Go => {}
                // Waiting is for `on_ready`, once the wire is empty.
                _ => return,
            }
        }
        match self.take_next().await {
            Next::Send(tx, flight) => match session.send_pipelined(tx) {
                Ok(()) => self.started(flight),
                Err(_) => {
                    // Sent once the session is idle (`on_ready`), with the send taken here.
                    self.rate_token = true;
                    core.delivery
                        .queues
                        .borrow_mut()
                        .return_unsent(&self.key, flight.items);
                }
            },
            Next::Empty | Next::Unreadable => self.rate_token = true,
        }
    }

    /// Takes the next transaction of the queue. A transaction whose recipients a rolled-up
    /// domain's policy keeps from this host is deferred, and the next one taken.
    async fn take_next(&mut self) -> Next {
        let core = self.core.clone();
        let (first, items, message) = loop {
            let items = {
                let mut queues = core.delivery.queues.borrow_mut();
                if self.tls_optional_only {
                    queues.take_tls_optional_transaction(&self.key, RECIPIENTS_PER_TRANSACTION_MAX)
                } else {
                    queues.take_transaction(&self.key, RECIPIENTS_PER_TRANSACTION_MAX)
                }
            };
            let Some(first) = items.first().copied() else {
                return Next::Empty;
            };
            let message = match core.delivery.message(&core.bodies, first.message) {
                Ok(m) => m,
                Err(e) => {
                    outcome::unreadable(&core, &self.key, items, &e).await;
                    return Next::Unreadable;
                }
            };
            let items = super::rollup_policies::keep_allowed(self, items, &message).await;
            if !items.is_empty() {
                break (first, items, message);
            }
        };
        let envelope = &message.envelope;
        let body = match core.bodies.body(message.body) {
            Ok(b) => b,
            Err(e) => {
                log::error!("{}: body of {}: {e}", self.key, first.message);
                let reply = Reply::local(451, (4, 3, 0), format!("Spool read error: {e}"));
                outcome::defer_items(&core, &self.key, items, &reply, None).await;
                return Next::Unreadable;
            }
        };
        let recipients = items
            .iter()
            .filter_map(|i| envelope.recipient(i.recipient as usize))
            .collect();
        let tx = Transaction::from_envelope(
            &envelope.without_recipients(),
            recipients,
            body.len() as u64,
        );
        Next::Send(
            tx,
            InFlight {
                items,
                message,
                body,
                body_sent: false,
            },
        )
    }

    pub async fn on_done(&mut self, results: Vec<crate::smtp::client::RecipientResult>) {
        // The session finishes its transactions in the order they were sent.
        let Some(flight) = self.in_flight.pop_front() else {
            return;
        };
        super::vmta_status::observe_transaction(&self.core, &self.key, &self.next_hop, &results);
        let delivered = results.iter().filter(|r| r.reply.is_positive()).count();
        if delivered > 0 {
            self.cap_delivered(u32::try_from(delivered).unwrap_or(u32::MAX));
        }
        let replies = results
            .into_iter()
            .map(|r| (r.outcome(), r.reply))
            .collect();
        let core = self.core.clone();
        let key = self.key.clone();
        outcome::apply(
            &core,
            &key,
            flight.items,
            &flight.message,
            replies,
            self.attempt(),
        )
        .await;
    }

    /// Deliveries raise a connection cap learned from the receiver (logged).
    fn cap_delivered(&self, count: u32) {
        let change = self
            .core
            .delivery
            .queues
            .borrow_mut()
            .connection_cap_delivered(&self.key, count);
        match change {
            Some(CapChange::Raised(cap)) => {
                log::info!(
                    "queue {}: deliveries raise its connections to {cap}",
                    self.key
                )
            }
            Some(CapChange::Lifted) => log::info!(
                "queue {}: deliveries lift its learned connection cap",
                self.key
            ),
            Some(CapChange::Lowered(_)) | None => {}
        }
    }

    /// The connection broke with transactions open and no result: defer their recipients.
    pub async fn fail_in_flight(&mut self, reply: Reply) {
        while let Some(flight) = self.in_flight.pop_front() {
            let core = self.core.clone();
            let key = self.key.clone();
            let attempt = self.attempt();
            let replies = flight
                .items
                .iter()
                .map(|_| (crate::smtp::client::Outcome::Deferred, reply.clone()))
                .collect();
            outcome::apply(&core, &key, flight.items, &flight.message, replies, attempt).await;
        }
    }
}
