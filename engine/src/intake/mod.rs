//! Intake: the one path by which a message becomes durable and routed, whichever way it came in:
//! SMTP (relay and submission), API injection, or a delivery status notification made here.
//! One order for all: the customer is settled, the spool checked for room, the customer's plan
//! charged, trace headers added, DKIM signed, the message spooled (the 250 or 202 waits for that),
//! its reception recorded, and its recipients handed to the cores that own their queues.

mod refusal;
mod signing;
#[cfg(test)]
mod tests;
mod trace;

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use refusal::Refusal;
pub use trace::{Sender, prefix_headers};

use crate::accounting::{AccountingEvent, EventType};
use crate::envelope::{Envelope, MessageId};
use crate::limits::Charge;
use crate::placement::Placement;
use crate::shard::Shard;

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
    /// `POST /v1/inject`: `customer` was checked against the configuration by the API.
    Api {
        peer: IpAddr,
        customer: Option<String>,
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
    envelope.customer = origin.customer(named, &envelope);
    let config = core.config();
    let customer = config.customer(&envelope.customer);
    let now_s = crate::clock::unix_s();
    envelope.received_at_s = now_s;
    let id = core.spool.next_id();
    let header = prefix_headers(
        &origin.sender(),
        &config.server.hostname,
        id,
        &envelope,
        &body,
        now_s,
    );
    let reserve = matches!(origin, Origin::Notice { reserve: true });
    // The DKIM signature adds a few hundred bytes: room is checked on the message before it.
    if !reserve && !core.spool.has_room((header.len() + body.len()) as u64) {
        return Err(Refusal::SpoolFull);
    }
    let charge = if origin.charged() {
        core.limits
            .charge(customer, crate::clock::unix_ms())
            .await
            .map_err(|limit| refused_by_limit(core, limit))?
    } else {
        Charge::Free
    };
    let (header, body) = signing::sign(
        core.dkim_signers(),
        core.counters(),
        header,
        body,
        &envelope.sender,
        now_s,
    )
    .await;
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
            return Err(Refusal::from(e));
        }
    };
    let client_ip = origin.sender().ip;
    record_reception(core, id, &envelope, size, client_ip, started);
    let recipients = envelope.recipients.len();
    crate::placement::route_new_message(core, id, location, Arc::new(envelope), now_s).await;
    Ok(Accepted { id, recipients })
}

/// Counts a spooled message and writes its reception events (one per recipient).
fn record_reception(
    core: &Shard,
    id: MessageId,
    envelope: &Envelope,
    size: u64,
    client_ip: Option<IpAddr>,
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
    for r in &envelope.recipients {
        core.accounting.record(&AccountingEvent {
            kind: Some(EventType::Reception),
            time: crate::clock::now_rfc3339(),
            id: id_text.clone(),
            customer: envelope.customer.clone(),
            sender: envelope.sender.clone(),
            recipient: r.address.clone(),
            domain: r.domain(),
            client_ip: client_ip.clone(),
            size_bytes: size,
            ..Default::default()
        });
    }
}
