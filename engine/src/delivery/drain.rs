//! The drain on one core: while the node drains (`shard::Drain`), every recipient queued on this
//! core, ready or deferred (at once, whatever its retry time), is handed over to the target node
//! over SMTP, and deleted here only once the target answered 250 for it.
//!
//! Each round takes up to `DRAIN_ROUND_RECIPIENTS_MAX` recipients out of the core's queues,
//! groups them into transactions (one message and one attempt count each: the header carries
//! one count), opens one connection to the target and sends them, each with an `X-Volley-Xfer`
//! header in front of the stored message (its customer, first reception time and attempts;
//! `intake::Xfer`). A recipient the target took is recorded `xfer_out` in the accounting log and
//! `delivered` in the spool (the message is gone from here once all its recipients are); one it
//! did not take, or that was never sent (a refused or broken connection), goes back to its queue
//! as it was, and the next round waits a little (doubling up to `DRAIN_RETRY_MAX_MS`). A drain
//! never bounces or expires anything itself: the target does, by the same rules.
//!
//! Meanwhile the scheduler opens no delivery connection (`scheduler`), and those open finish their
//! transaction and quit; what they defer is handed over in a later round. A kill of either node
//! loses nothing: a recipient is marked here only after the target's 250, which the target sends
//! only once the message is in its spool. A kill between the two makes a duplicate, which the
//! target counts (`XferMemory`).

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::deadlines::Step;
use super::outcome::{self, Attempt};
use super::{DeliveryCore, Queued, connect_from_timeout};
use crate::accounting::EventType;
use crate::config::Deadlines;
use crate::intake::Xfer;
use crate::queue::QueueKey;
use crate::shard::DrainTarget;
use crate::smtp::client::{RecipientResult, Reply, Session, SessionConfig, TlsPolicy, Transaction};
use crate::spool::{BodyBytes, RecipientState, StoredMessage};

/// Recipients taken out of the queues for one connection to the target, at most: what a failed
/// round puts back stays bounded, and what is left shows in `GET /v1/drain`.
pub const DRAIN_ROUND_RECIPIENTS_MAX: usize = 1_000;
/// Recipients in one hand-over transaction at most (RFC 5321 4.5.3.1.8 servers take 100).
const RECIPIENTS_PER_TRANSACTION_MAX: usize = 100;
/// How often a core with nothing queued looks again while draining (mail deferred by a delivery
/// connection that was open when the drain began, a DSN made here), and for a drain to begin.
const DRAIN_IDLE_MS: u64 = 200;
/// Wait after a round that left recipients behind; doubled after each such round.
const DRAIN_RETRY_FIRST_MS: u64 = 500;
const DRAIN_RETRY_MAX_MS: u64 = 30_000;

/// The deadlines of a hand-over connection: between nodes of one platform, so shorter than the
/// RFC's for the open Internet. A target that stalls fails the round, and the next one tries again.
pub const DRAIN_DEADLINES: Deadlines = Deadlines {
    connect_ms: 10_000,
    tls_ms: 10_000,
    greeting_ms: 30_000,
    reply_ms: 60_000,
    data_ms: 120_000,
    write_ms: 60_000,
};

/// Runs this core's drain for the life of the core: idle (one atomic load every
/// `DRAIN_IDLE_MS`) until the node drains, then rounds until the queues are empty, and on.
pub async fn run(core: Rc<DeliveryCore>) {
    let drain = core.node.drain.clone();
    let stop = core.stop_signal();
    let mut generation = drain.generation();
    let mut retry_ms = DRAIN_RETRY_FIRST_MS;
    while !core.node.control.stopping() {
        if drain.generation() != generation {
            generation = drain.generation();
            retry_ms = DRAIN_RETRY_FIRST_MS;
            if !drain.is_draining() {
                // Cancelled: the scheduler delivers again, from every queue.
                core.delivery.wake();
            }
        }
        let wait_ms = match drain.target() {
            None => DRAIN_IDLE_MS,
            Some(target) => {
                let taken = take_round(&core);
                if taken.is_empty() {
                    DRAIN_IDLE_MS
                } else {
                    match hand_over(&core, &target, taken).await {
                        Ok(()) => {
                            retry_ms = DRAIN_RETRY_FIRST_MS;
                            drain.set_last_error("");
                            0
                        }
                        Err(e) => {
                            log::warn!("drain to {}: {e}; tried again in {retry_ms} ms", target.to);
                            drain.set_last_error(&e);
                            let wait = retry_ms;
                            retry_ms = (retry_ms * 2).min(DRAIN_RETRY_MAX_MS);
                            wait
                        }
                    }
                }
            }
        };
        if wait_ms > 0 {
            futures_lite::future::or(
                glommio::timer::sleep(Duration::from_millis(wait_ms)),
                stop.wait(),
            )
            .await;
        }
    }
}

/// A recipient taken from its queue for the drain.
#[derive(Debug, Clone)]
struct Taken {
    key: QueueKey,
    item: Queued,
}

/// Up to `DRAIN_ROUND_RECIPIENTS_MAX` recipients out of this core's queues.
fn take_round(core: &DeliveryCore) -> Vec<Taken> {
    let keys = core.delivery.queues.borrow().keys();
    let mut taken = Vec::new();
    for key in keys {
        let room = DRAIN_ROUND_RECIPIENTS_MAX.saturating_sub(taken.len());
        if room == 0 {
            break;
        }
        let items = core
            .delivery
            .queues
            .borrow_mut()
            .take_for_handover(&key, room);
        taken.extend(items.into_iter().map(|item| Taken {
            key: key.clone(),
            item,
        }));
    }
    taken
}

/// The recipients of one hand-over transaction: one message, one attempt count.
#[derive(Debug, Clone)]
struct Group(Vec<Taken>);

/// Splits what a round took into transactions: by message and attempt count, at most
/// `RECIPIENTS_PER_TRANSACTION_MAX` recipients each, in message order.
fn transactions(mut taken: Vec<Taken>) -> VecDeque<Group> {
    taken.sort_by_key(|t| (t.item.message, t.item.attempts, t.item.recipient));
    let mut groups: VecDeque<Group> = VecDeque::new();
    for t in taken {
        match groups.back_mut() {
            Some(Group(last))
                if last.len() < RECIPIENTS_PER_TRANSACTION_MAX
                    && last.first().is_some_and(|f| {
                        f.item.message == t.item.message && f.item.attempts == t.item.attempts
                    }) =>
            {
                last.push(t)
            }
            _ => groups.push_back(Group(vec![t])),
        }
    }
    groups
}

/// Puts recipients the target did not take back in their queues, as they were (a deferred one on
/// its timer, for the day the drain is cancelled).
fn put_back(core: &DeliveryCore, taken: impl IntoIterator<Item = Taken>) {
    let now_s = crate::clock::unix_s();
    for Taken { key, item } in taken {
        core.delivery.give_policy(core, &key);
        let mut queues = core.delivery.queues.borrow_mut();
        if item.next_attempt_s > now_s {
            queues.schedule(&key, item);
        } else {
            queues.return_unsent(&key, vec![item]);
        }
    }
}

/// A transaction on its way to the target.
pub(super) struct Flight {
    group: Group,
    message: Rc<StoredMessage>,
    /// `X-Volley-Xfer: ...\r\n`, sent in front of `body`.
    pub header: Vec<u8>,
    pub body: BodyBytes,
}

/// One connection's worth of hand-overs: what is left to send, what is in flight, how it ended.
pub(super) struct Handover {
    pub core: Rc<DeliveryCore>,
    /// The drain generation the round started under: a cancel or a new target ends it.
    generation: u64,
    node: String,
    /// Where the target is ("host:port (address)"), for the log and the accounting `mx`.
    pub peer: String,
    /// The target's host (its name for TLS) and the address connected to.
    pub host: String,
    pub address: SocketAddr,
    /// This end's address, for the accounting `source_ip`.
    local_ip: String,
    pending: VecDeque<Group>,
    pub in_flight: Option<Flight>,
    /// Why the round did not hand everything over (a reply, a broken connection).
    failure: Option<String>,
}

impl Handover {
    /// The session is idle: send the next transaction, or QUIT.
    pub async fn on_ready(&mut self, session: &mut Session) {
        let core = self.core.clone();
        let drain = &core.node.drain;
        loop {
            if core.node.control.stopping() || drain.generation() != self.generation {
                session.quit();
                return;
            }
            let Some(group) = self.pending.pop_front() else {
                session.quit();
                return;
            };
            let Some(first) = group.0.first().map(|t| t.item) else {
                continue;
            };
            let message = match core.delivery.message(&core.bodies, first.message) {
                Ok(m) => m,
                Err(e) => {
                    // The same as for a delivery: retried later, or dropped when damaged.
                    for t in group.0 {
                        outcome::unreadable(&core, &t.key, vec![t.item], &e).await;
                    }
                    continue;
                }
            };
            let body = match core.bodies.body(message.body) {
                Ok(b) => b,
                Err(e) => {
                    self.failure = Some(format!("body of {}: {e}", first.message));
                    put_back(&core, group.0);
                    continue;
                }
            };
            let envelope = &message.envelope;
            let xfer = Xfer {
                node: self.node.clone(),
                id: first.message.to_string(),
                customer: envelope.customer().to_string(),
                received_s: envelope.received_at_s(),
                attempts: u32::from(first.attempts),
                campaign: envelope.tags().campaign.clone(),
            };
            let header = xfer.header_line().into_bytes();
            let recipients = group
                .0
                .iter()
                .filter_map(|t| envelope.recipient(t.item.recipient as usize))
                .collect();
            let tx = Transaction::from_envelope(
                &envelope.without_recipients(),
                recipients,
                (header.len() + body.len()) as u64,
            );
            match session.send(tx) {
                Ok(()) => {
                    self.in_flight = Some(Flight {
                        group,
                        message,
                        header,
                        body,
                    });
                }
                Err(_) => {
                    put_back(&core, group.0);
                    session.quit();
                }
            }
            return;
        }
    }

    /// The target answered the transaction in flight.
    pub async fn on_done(&mut self, results: Vec<RecipientResult>) {
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        let core = self.core.clone();
        let mut refused = Vec::new();
        let mut taken_over = 0u64;
        for (taken, result) in flight.group.0.into_iter().zip(results) {
            if result.reply.is_positive() {
                self.handed_over(&taken, &flight.message, &result.reply)
                    .await;
                taken_over += 1;
            } else {
                self.failure.get_or_insert_with(|| {
                    format!(
                        "{} did not take <{}>: {}",
                        self.peer, result.recipient.address, result.reply
                    )
                });
                refused.push(taken);
            }
        }
        if taken_over > 0 {
            core.node
                .drain
                .handed_over_messages
                .fetch_add(1, Ordering::Relaxed);
        }
        put_back(&core, refused);
    }

    /// The target took one recipient: accounted `xfer_out`, and done here (the spool records it
    /// delivered; the message goes once all its recipients are).
    async fn handed_over(&self, taken: &Taken, message: &StoredMessage, reply: &Reply) {
        let core = &self.core;
        core.counters().xfer_out.fetch_add(1, Ordering::Relaxed);
        core.node
            .drain
            .handed_over_recipients
            .fetch_add(1, Ordering::Relaxed);
        let attempt = Attempt {
            source_ip: &self.local_ip,
            mx: &self.peer,
            tls: "",
        };
        let mut e = outcome::event(
            EventType::XferOut,
            &taken.key,
            &taken.item,
            message,
            reply,
            Some(attempt),
        );
        e.attempt = u32::from(taken.item.attempts);
        e.node = self.node.as_str().into();
        e.xfer_id = taken.item.message.to_string().into();
        core.accounting.record(&e);
        outcome::record_state(
            core,
            taken.item.message,
            taken.item.recipient,
            RecipientState::Delivered,
        )
        .await;
        core.delivery.release(core, &taken.key, taken.item.message);
    }

    /// The connection ended: what was in flight or not sent yet goes back to its queue.
    fn finish(&mut self) {
        let mut left: Vec<Taken> = Vec::new();
        if let Some(flight) = self.in_flight.take() {
            left.extend(flight.group.0);
        }
        for Group(group) in self.pending.drain(..) {
            left.extend(group);
        }
        if !left.is_empty() {
            self.failure
                .get_or_insert_with(|| format!("{} recipients not handed over", left.len()));
            put_back(&self.core, left);
        }
    }

    pub fn fail(&mut self, reply: &Reply) {
        self.failure = Some(format!("{}: {reply}", self.peer));
    }
}

/// The addresses of the target (`HOST:PORT`: an address, or a name looked up in DNS).
async fn target_addresses(
    core: &DeliveryCore,
    to: &str,
) -> Result<(String, Vec<SocketAddr>), String> {
    let (host, port) =
        crate::config::parse_next_hop(to).ok_or_else(|| format!("bad target {to:?}"))?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((host, vec![SocketAddr::new(ip, port)]));
    }
    let ips = core
        .resolver()
        .ip_addrs(&host)
        .await
        .map_err(|e| format!("target {host}: {e}"))?;
    let addresses = ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    Ok((host, addresses))
}

/// One round: connects to the target and hands `taken` over. `Err` names why some were left.
async fn hand_over(
    core: &Rc<DeliveryCore>,
    target: &DrainTarget,
    taken: Vec<Taken>,
) -> Result<(), String> {
    let config = core.config();
    let Some(node) = config.cluster.as_ref().map(|c| c.node.clone()) else {
        put_back(core, taken);
        return Err("no [cluster] node name to hand mail over with".into());
    };
    let (host, addresses) = match target_addresses(core, &target.to).await {
        Ok((host, a)) if !a.is_empty() => (host, a),
        Ok(_) => {
            put_back(core, taken);
            return Err(format!("{}: no address", target.to));
        }
        Err(e) => {
            put_back(core, taken);
            return Err(e);
        }
    };
    let mut last_error = String::new();
    for address in addresses {
        let source = match address {
            SocketAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
            SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
        };
        let peer = format!("{} ({})", target.to, address.ip());
        let stream = match connect_from_timeout(
            source,
            address,
            Step::Connect.limit(&DRAIN_DEADLINES),
        )
        .await
        {
            Ok(s) => s,
            Err(e) => {
                last_error = format!("connection to {peer} failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local_ip = stream
            .local_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let mut handover = Handover {
            core: core.clone(),
            generation: core.node.drain.generation(),
            node,
            peer: peer.clone(),
            host,
            address,
            local_ip,
            pending: transactions(taken),
            in_flight: None,
            failure: None,
        };
        let mut session_config =
            SessionConfig::new(config.server.hostname.clone(), TlsPolicy::Opportunistic);
        session_config.timeouts = super::deadlines::session_timeouts(&DRAIN_DEADLINES);
        session_config.peer = peer;
        // Counted as a delivery connection: a graceful stop waits for its transaction.
        let open = OpenConnection::new(core);
        let ended =
            super::drain_session::converse(stream, Session::new(session_config), &mut handover)
                .await;
        drop(open);
        if let Err(reply) = ended {
            handover.fail(&reply);
        }
        handover.finish();
        return match handover.failure {
            None => Ok(()),
            Some(e) => Err(e),
        };
    }
    put_back(core, taken);
    Err(last_error)
}

/// A hand-over connection, counted with the core's delivery connections (the graceful stop
/// waits for them) and in `volley_outbound_connections`, while it lives.
struct OpenConnection<'a>(&'a DeliveryCore);

impl<'a> OpenConnection<'a> {
    fn new(core: &'a DeliveryCore) -> OpenConnection<'a> {
        core.delivery
            .connections
            .set(core.delivery.connections.get() + 1);
        core.counters()
            .outbound_connections
            .fetch_add(1, Ordering::Relaxed);
        OpenConnection(core)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        let delivery = &self.0.delivery;
        delivery
            .connections
            .set(delivery.connections.get().saturating_sub(1));
        self.0
            .counters()
            .outbound_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MessageId;

    fn taken(seq: u64, recipient: u32, attempts: u16, domain: &str) -> Taken {
        let mut item = Queued::new(MessageId { core: 0, seq }, recipient, 0);
        item.attempts = attempts;
        Taken {
            key: QueueKey::new("v1", domain),
            item,
        }
    }

    fn shape(groups: &VecDeque<Group>) -> Vec<Vec<(u64, u32)>> {
        groups
            .iter()
            .map(|g| {
                g.0.iter()
                    .map(|t| (t.item.message.seq, t.item.recipient))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn transactions_hold_one_message_and_one_attempt_count() {
        let groups = transactions(vec![
            taken(2, 1, 0, "b.test"),
            taken(1, 0, 3, "a.test"),
            taken(2, 0, 0, "a.test"),
            taken(1, 1, 3, "b.test"),
            taken(1, 2, 1, "a.test"),
        ]);
        assert_eq!(
            shape(&groups),
            vec![vec![(1, 2)], vec![(1, 0), (1, 1)], vec![(2, 0), (2, 1)]],
            "recipients of one message in two queues go together; another attempt count apart"
        );
        assert_eq!(
            groups[1].0[1].key.domain.as_ref(),
            "b.test",
            "each keeps its queue"
        );
    }

    #[test]
    fn a_transaction_has_at_most_100_recipients() {
        let many = (0..250).map(|r| taken(7, r, 0, "a.test")).collect();
        let sizes: Vec<usize> = transactions(many).iter().map(|g| g.0.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }
}
