//! Intake: the one path by which a message becomes durable and routed, whichever way it came in:
//! SMTP (relay and submission), API injection, or a delivery status notification made here.
//! One order for all: the customer is settled, the message's tags read (Message-ID, campaign, its
//! choice of pool or VMTA, checked: `tags`), the spool checked for room, the customer's plan
//! charged, trace headers added, DKIM signed, the message spooled (the 250 or 202 waits for that),
//! its reception recorded, and its recipients handed to the cores that own their queues.
//!
//! A message handed over by a peer node (a drain, `xfer`) takes the same path with three
//! differences: its customer, first reception time and attempt count come from its
//! `X-Volley-Xfer` header; it is neither charged nor signed again (the first node did both); and
//! it is accounted `xfer_in` instead of `reception`.

mod refusal;
mod signing;
mod spam_check;
pub mod tags;
#[cfg(test)]
mod tests;
mod trace;
mod xfer;

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use refusal::Refusal;
pub use trace::{Sender, prefix_headers};
pub use xfer::{XFER_HEADER, XFER_HEADER_BYTES_MAX, Xfer, XferError};

use crate::accounting::{AccountingEvent, EventType};
use crate::config::Config;
use crate::envelope::{Envelope, MessageId};
use crate::limits::Charge;
use crate::placement::Placement;
use crate::shard::Shard;
use crate::smtp::reply::Reply;
use crate::spool::RecipientState;

/// The header that names the customer on relay listeners and the API; always removed before the
/// message is spooled, honoured only where the client is trusted to say whose mail it is.
pub const CUSTOMER_HEADER: &str = "X-Volley-Customer";

/// Where a message came from.
pub enum Origin<'a> {
    /// SMTP on one of the listeners.
    Smtp {
        helo: &'a str,
        ip: IpAddr,
        /// `ESMTP`, `ESMTPS`, `ESMTPSA`... for the trace line.
        protocol: &'a str,
        /// The AUTH identity: the customer.
        authenticated: Option<&'a str>,
        /// A relay network: `X-Volley-Customer` names the customer.
        relay_trusted: bool,
    },
    /// `POST /v1/inject`: `customer` was checked against the configuration by the API;
    /// `requested`: the request's `campaign`, `pool` and `vmta` (they win over the content's
    /// headers).
    Api {
        peer: IpAddr,
        customer: Option<String>,
        requested: tags::Requested,
    },
    /// A delivery status notification made here: not charged, the envelope's customer kept.
    /// `reserve`: a small notice (the original's headers only) that may use the spool's reserve
    /// beyond `max_spool_bytes`, because the bounce it allows is what frees room.
    Notice { reserve: bool },
}

impl Origin<'_> {
    fn sender(&self) -> Sender<'_> {
        match self {
            Origin::Smtp {
                helo,
                ip,
                protocol,
                authenticated,
                ..
            } => Sender {
                helo,
                ip: Some(*ip),
                protocol,
                authenticated: *authenticated,
            },
            Origin::Api { peer, .. } => Sender {
                helo: "api",
                ip: Some(*peer),
                protocol: "HTTP",
                authenticated: None,
            },
            Origin::Notice { .. } => Sender {
                helo: "",
                ip: None,
                protocol: "local",
                authenticated: None,
            },
        }
    }

    /// Who asks when the message names a pool or VMTA.
    fn asker(&self) -> tags::Asker<'_> {
        match self {
            Origin::Smtp {
                authenticated: Some(user),
                ..
            } => tags::Asker::Customer(user),
            Origin::Smtp {
                relay_trusted: true,
                ..
            }
            | Origin::Api { .. } => tags::Asker::Trusted,
            Origin::Smtp { .. } | Origin::Notice { .. } => tags::Asker::Untrusted,
        }
    }

    /// Whether the customer's plan is charged for the message.
    fn charged(&self) -> bool {
        !matches!(self, Origin::Notice { .. })
    }

    /// The customer of the message, from what the origin may say and the header it named.
    fn customer(&self, named: Option<String>, envelope: &Envelope) -> String {
        match self {
            Origin::Smtp {
                authenticated: Some(user),
                ..
            } => user.to_string(),
            Origin::Smtp {
                relay_trusted: true,
                ..
            } => named.unwrap_or_default(),
            Origin::Smtp { .. } => String::new(),
            Origin::Api { customer, .. } => customer.clone().or(named).unwrap_or_default(),
            Origin::Notice { .. } => envelope.customer.clone(),
        }
    }
}

/// A message intake took: durable and routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub id: MessageId,
    pub recipients: usize,
}

/// MAIL-time admission of the sender's customer: refused while the plan's hourly or daily limit is
/// reached and no credits are left (the charge at the end of data is what counts).
pub fn admit_sender(core: &Shard, customer: Option<&str>) -> Result<(), Refusal> {
    let Some(name) = customer.filter(|c| !c.is_empty()) else {
        return Ok(());
    };
    let config = core.config();
    let result = core
        .limits
        .check(config.customer(name), crate::clock::unix_s());
    result.map_err(|limit| refused_by_limit(core, limit))
}

fn refused_by_limit(core: &Shard, limit: crate::limits::Refusal) -> Refusal {
    core.counters()
        .sending_limit_refusals
        .fetch_add(1, Ordering::Relaxed);
    Refusal::Limit(limit)
}

/// Makes a message durable and routes its recipients (see the module comment for the order).
/// `core`: this core's placement, which routes the message, and through it the core's shard.
pub async fn accept(
    core: &Rc<Placement>,
    origin: Origin<'_>,
    mut envelope: Envelope,
    body: Vec<u8>,
) -> Result<Accepted, Refusal> {
    let started = crate::clock::monotonic();
    let (named, body) = crate::rfc5322::take_field(body, CUSTOMER_HEADER);
    let config = core.config();
    let (xfer, body) = take_xfer(core, &config, &origin, body)?;
    let (found, body) = tags::take(body);
    envelope.customer = match &xfer {
        Some(x) => x.customer.clone(),
        None => origin.customer(named, &envelope),
    };
    envelope.tags.message_id = found.message_id;
    // RFC 8689 5: REQUIRETLS wins over the header.
    envelope.tls_optional = found.tls_required_no && !envelope.requiretls;
    let notice = matches!(origin, Origin::Notice { .. });
    if let Some(x) = &xfer {
        // Chosen on the first node; this node places it in the customer's pool here.
        envelope.tags.campaign = x.campaign.clone();
    } else if !notice {
        let requested = match &origin {
            Origin::Api { requested, .. } => requested.clone().or(found.requested),
            _ => found.requested,
        };
        envelope.tags.campaign = requested.campaign.clone().unwrap_or_default();
        envelope.tags.route = tags::choose_route(&config, &requested, origin.asker())
            .map_err(|e| rejected(core, &origin, &envelope, Refusal::Route(e)))?;
        drop_suppressed(core, &mut envelope)?;
    }
    let body = if xfer.is_none() && !notice {
        spam_check::check(core, &config, &origin, &envelope, body)
            .await
            .map_err(|refusal| rejected(core, &origin, &envelope, refusal))?
    } else {
        body
    };
    let customer = config.customer(&envelope.customer);
    let now_s = crate::clock::unix_s();
    // Handed over: `max_queue_age` still counts from the first reception.
    envelope.received_at_s = xfer.as_ref().map_or(now_s, |x| x.received_s.min(now_s));
    let id = core.spool.next_id();
    // A one-click unsubscribe link for the customer's one-recipient mail (not on hand-overs, whose
    // headers the first node made, nor on DSNs).
    let unsubscribe = match (customer.and_then(|c| c.list_unsubscribe.as_deref()), &xfer) {
        (Some(template), None) if !notice && envelope.recipients.len() == 1 => {
            config.unsubscribe.secrets.first().map(|secret| {
                let token = crate::reputation::unsubscribe::token(
                    secret,
                    &envelope.customer,
                    &envelope.recipients[0].address,
                );
                crate::reputation::unsubscribe::url(template, &token)
            })
        }
        _ => None,
    };
    let header = prefix_headers(
        &origin.sender(),
        &config.server.hostname,
        id,
        &envelope,
        &body,
        now_s,
        unsubscribe.as_deref(),
    );
    if envelope.tags.message_id.is_empty() {
        // Intake added the Message-ID the client left out: that one is the message's.
        envelope.tags.message_id = tags::message_id_in(&header);
    }
    let reserve = matches!(origin, Origin::Notice { reserve: true });
    // The DKIM signature adds a few hundred bytes: room is checked on the message before it.
    if !reserve && !core.spool.has_room((header.len() + body.len()) as u64) {
        return Err(rejected(core, &origin, &envelope, Refusal::SpoolFull));
    }
    // A hand-over was charged and signed on the node that first received it.
    let charge = if origin.charged() && xfer.is_none() {
        core.limits
            .charge(customer, crate::clock::unix_ms())
            .await
            .map_err(|limit| rejected(core, &origin, &envelope, refused_by_limit(core, limit)))?
    } else {
        Charge::Free
    };
    let (header, body) = if xfer.is_some() {
        (header, body)
    } else {
        signing::sign(
            core.dkim_signers(),
            core.counters(),
            header,
            body,
            &envelope.sender,
            now_s,
        )
        .await
    };
    let size = (header.len() + body.len()) as u64;
    let stored = if reserve {
        core.spool.store_notice(id, &envelope, &header, &body).await
    } else {
        core.spool.store(id, &envelope, &header, &body).await
    };
    let location = match stored {
        Ok(location) => location,
        Err(e) => {
            core.limits.refund(customer, charge);
            if !matches!(e, crate::spool::SpoolError::Full) {
                log::error!("spool store of {id} failed: {e}");
            }
            return Err(rejected(core, &origin, &envelope, Refusal::from(e)));
        }
    };
    if let Some(x) = &xfer {
        keep_attempts(core, id, envelope.recipients.len(), x.attempts).await;
        record_xfer_in(core, id, &envelope, size, x, &origin, started);
    }
    let attempts = xfer.as_ref().map_or(0, |x| x.attempts);
    let recipients = envelope.recipients.len();
    let envelope = Arc::new(envelope);
    let vmta =
        crate::placement::route_new_message(core, id, location, envelope.clone(), attempts).await;
    if xfer.is_none() {
        // After routing, so the event names the VMTA (and its source address) picked for it.
        let source_ip = config
            .vmta(&vmta)
            .map(|v| v.source_ip.to_string())
            .unwrap_or_default();
        let routed = Routed {
            vmta: &vmta,
            source_ip: &source_ip,
        };
        record_reception(
            core,
            id,
            &envelope,
            size,
            origin.sender().ip,
            routed,
            started,
        );
    }
    Ok(Accepted { id, recipients })
}

/// Takes the hand-over header (`X-Volley-Xfer`) off the message. Only an SMTP client inside
/// `[cluster] peer_networks` may hand mail over: from anyone else (another SMTP client, the API)
/// a message carrying it is refused, counted and logged. Notices, made here, are not looked at.
fn take_xfer(
    core: &Shard,
    config: &Config,
    origin: &Origin<'_>,
    body: Vec<u8>,
) -> Result<(Option<Xfer>, Vec<u8>), Refusal> {
    let (peer, smtp) = match origin {
        Origin::Notice { .. } => return Ok((None, body)),
        Origin::Smtp { ip, .. } => (*ip, true),
        Origin::Api { peer, .. } => (*peer, false),
    };
    if crate::rfc5322::find_field(&body, XFER_HEADER).is_none() {
        return Ok((None, body));
    }
    let refused = |refusal: Refusal| {
        core.counters().xfer_refused.fetch_add(1, Ordering::Relaxed);
        refusal
    };
    let trusted = smtp
        && config
            .cluster
            .as_ref()
            .is_some_and(|c| c.peer_networks.iter().any(|n| n.contains(peer)));
    if !trusted {
        log::warn!(
            "refused a message carrying {XFER_HEADER} from {peer}: not a peer node (see \
             [cluster] peer_networks)"
        );
        return Err(refused(Refusal::XferUntrusted));
    }
    let (value, body) = crate::rfc5322::take_field(body, XFER_HEADER);
    // The node puts one header in front; a second one is not its word.
    if crate::rfc5322::find_field(&body, XFER_HEADER).is_some() {
        log::warn!("refused a hand-over from {peer}: {XFER_HEADER} twice");
        return Err(refused(Refusal::XferMalformed(XferError::Repeated(
            XFER_HEADER,
        ))));
    }
    match Xfer::parse(value.as_deref().unwrap_or_default()) {
        Ok(xfer) => Ok((Some(xfer), body)),
        Err(e) => {
            log::warn!("refused a hand-over from {peer}: {e}");
            Err(refused(Refusal::XferMalformed(e)))
        }
    }
}

/// A hand-over's attempt count, written as each recipient's state (deferred, due now), so that a
/// restart keeps it too. The records join one group commit. One that fails only makes the
/// retry schedule start again from the first interval after a restart: logged, not refused.
async fn keep_attempts(core: &Shard, id: MessageId, recipients: usize, attempts: u32) {
    if attempts == 0 {
        return;
    }
    let state = RecipientState::Deferred {
        next_attempt_s: crate::clock::unix_s(),
        attempts,
    };
    let writes: Vec<_> = (0..recipients as u32)
        .map(|recipient| {
            let spool = core.spool.clone();
            glommio::spawn_local(async move { spool.set_state(id, recipient, state).await })
        })
        .collect();
    for write in writes {
        if let Err(e) = write.await {
            log::warn!("{id}: the attempt count of a hand-over was not recorded: {e}");
        }
    }
}

/// Counts a message handed over by a peer and writes its `xfer_in` events (one per recipient),
/// in place of the reception: recipients this node received from the same node and message
/// before are counted as duplicates (they are delivered again).
fn record_xfer_in(
    core: &Shard,
    id: MessageId,
    envelope: &Envelope,
    size: u64,
    xfer: &Xfer,
    origin: &Origin<'_>,
    started: std::time::Instant,
) {
    let counters = core.counters();
    counters
        .xfer_in
        .fetch_add(envelope.recipients.len() as u64, Ordering::Relaxed);
    counters
        .accept_latency
        .record_us(started.elapsed().as_micros() as u64);
    let id_text = id.to_string();
    let source_ip = origin
        .sender()
        .ip
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let queue_ms = crate::clock::unix_s()
        .saturating_sub(envelope.received_at_s)
        .saturating_mul(1000);
    for r in &envelope.recipients {
        if core
            .node
            .xfers_seen
            .remember(&xfer.node, &xfer.id, &r.address)
        {
            counters.xfer_duplicates.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "{id_text}: <{}> of {} was handed over by {} before: a duplicate (an interrupted \
                 drain), delivered again",
                r.address,
                xfer.id,
                xfer.node
            );
        }
        core.accounting.record(&AccountingEvent {
            kind: Some(EventType::XferIn),
            time: crate::clock::now_rfc3339().into(),
            id: id_text.as_str().into(),
            message_id: envelope.tags.message_id.as_str().into(),
            customer: envelope.customer.as_str().into(),
            campaign: envelope.tags.campaign.as_str().into(),
            source_ip: source_ip.as_str().into(),
            sender: envelope.sender.as_str().into(),
            recipient: r.address.as_str().into(),
            domain: r.domain().into(),
            attempt: xfer.attempts,
            size_bytes: size,
            queue_ms,
            node: xfer.node.as_str().into(),
            xfer_id: xfer.id.as_str().into(),
            ..Default::default()
        });
    }
}

/// Takes the customer's suppressed recipients out of the envelope, each with a `suppressed` event
/// (an AUTH client was refused them at RCPT already; a relay client or the API names its customer
/// only in the message, so here is the first place they can be known). None left: refused.
fn drop_suppressed(core: &Shard, envelope: &mut Envelope) -> Result<(), Refusal> {
    if envelope.customer.is_empty() {
        return Ok(());
    }
    let customer = envelope.customer.clone();
    let before = envelope.recipients.len();
    let mut dropped = Vec::new();
    envelope.recipients.retain(|r| {
        let suppressed = core.suppressions.is_suppressed(&customer, &r.address);
        if suppressed {
            dropped.push(r.address.clone());
        }
        !suppressed
    });
    for address in &dropped {
        core.accounting.record(&AccountingEvent {
            kind: Some(EventType::Suppressed),
            time: crate::clock::now_rfc3339().into(),
            message_id: envelope.tags.message_id.as_str().into(),
            customer: customer.as_str().into(),
            campaign: envelope.tags.campaign.as_str().into(),
            sender: envelope.sender.as_str().into(),
            recipient: address.as_str().into(),
            domain: crate::envelope::domain_of(address).into(),
            response: Reply::RECIPIENT_SUPPRESSED.to_string().into(),
            enhanced_code: "5.7.1".into(),
            ..Default::default()
        });
    }
    if before > 0 && envelope.recipients.is_empty() {
        return Err(Refusal::Suppressed);
    }
    Ok(())
}

/// A message refused at the end of its data (limits, spool, its choice of route): a `rejection`
/// event per recipient, with the reply the client gets and the tags read so far. Notices are made
/// here: nobody to tell, not accounted.
fn rejected(core: &Shard, origin: &Origin<'_>, envelope: &Envelope, refusal: Refusal) -> Refusal {
    if !matches!(origin, Origin::Notice { .. }) {
        let reply = refusal.smtp_reply();
        for r in &envelope.recipients {
            let mut event = rejection_event(&envelope.customer, &r.address, &reply);
            event.message_id = envelope.tags.message_id.as_str().into();
            event.campaign = envelope.tags.campaign.as_str().into();
            if let Refusal::Spam { score, symbols, .. } = &refusal {
                event.spam_score = Some(*score);
                event.spam_symbols = Some(symbols.join(" "));
            }
            core.accounting.record(&event);
        }
    }
    refusal
}

/// A `rejection` event: a recipient refused with `reply` at RCPT (before the message and its tags
/// are known).
pub fn record_rejection(core: &Shard, customer: &str, recipient: &str, reply: &Reply) {
    core.accounting
        .record(&rejection_event(customer, recipient, reply));
}

fn rejection_event<'a>(
    customer: &'a str,
    recipient: &'a str,
    reply: &Reply,
) -> AccountingEvent<'a> {
    AccountingEvent {
        kind: Some(EventType::Rejection),
        time: crate::clock::now_rfc3339().into(),
        customer: customer.into(),
        recipient: recipient.into(),
        domain: crate::envelope::domain_of(recipient).into(),
        response: reply.to_string().into(),
        enhanced_code: reply
            .enhanced()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .into(),
        ..Default::default()
    }
}

/// Counts a spooled message and writes its reception events (one per recipient).
/// Where a message was routed: its VMTA and that VMTA's source address.
struct Routed<'a> {
    vmta: &'a str,
    source_ip: &'a str,
}

fn record_reception(
    core: &Shard,
    id: MessageId,
    envelope: &Envelope,
    size: u64,
    client_ip: Option<IpAddr>,
    routed: Routed<'_>,
    started: std::time::Instant,
) {
    let counters = core.counters();
    counters.messages_received.fetch_add(1, Ordering::Relaxed);
    counters
        .recipients_received
        .fetch_add(envelope.recipients.len() as u64, Ordering::Relaxed);
    counters.bytes_received.fetch_add(size, Ordering::Relaxed);
    counters
        .accept_latency
        .record_us(started.elapsed().as_micros() as u64);
    let id_text = id.to_string();
    let client_ip = client_ip.map(|ip| ip.to_string()).unwrap_or_default();
    // Every recipient was received at the same instant.
    let time = crate::clock::now_rfc3339();
    for r in &envelope.recipients {
        core.accounting.record(&AccountingEvent {
            kind: Some(EventType::Reception),
            time: time.as_str().into(),
            id: id_text.as_str().into(),
            message_id: envelope.tags.message_id.as_str().into(),
            customer: envelope.customer.as_str().into(),
            campaign: envelope.tags.campaign.as_str().into(),
            vmta: routed.vmta.into(),
            source_ip: routed.source_ip.into(),
            sender: envelope.sender.as_str().into(),
            recipient: r.address.as_str().into(),
            domain: r.domain().into(),
            client_ip: client_ip.as_str().into(),
            size_bytes: size,
            ..Default::default()
        });
    }
}
