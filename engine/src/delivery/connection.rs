//! One outbound connection for one (VMTA, domain) queue: next hops from `[routes]` or DNS, a socket
//! bound to the VMTA's source IP, failover to the next host or address, STARTTLS per policy, and as
//! many transactions as the queue has and `max_messages_per_connection` allows.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::TlsConnector;
use rustls::pki_types::ServerName;

use super::outcome::{self, Attempt};
use super::placement::IMPLICIT_VMTA;
use super::{BIND_FAILURE_RETRY_S, Queued, connect_from_timeout};
use crate::config::{Config, OutboundTls, parse_next_hop};
use crate::dns::{DnsError, NextHops};
use crate::queue::QueueKey;
use crate::runtime::CoreContext;
use crate::smtp::client::{
    Event, Reply, Session, SessionConfig, TlsPolicy, Transaction, Transmit, dot_stuff,
};
use crate::spool::{BodyBytes, StoredMessage};

/// Recipients in one SMTP transaction at most (RFC 5321 4.5.3.1.8 requires servers to take 100).
const RECIPIENTS_PER_TRANSACTION_MAX: usize = 100;
const CONNECT_TIMEOUT_MS: u64 = 30_000;
/// A rate limit that asks to wait longer than this closes the connection instead.
const RATE_WAIT_IN_CONNECTION_MS_MAX: u64 = 10_000;
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// How long an idle connection waits for more recipients of its queue before QUIT.
const IDLE_LINGER_MS: u64 = 1_000;

/// A host to try: its name (for the log and TLS SNI) and one address.
struct Hop {
    host: String,
    address: SocketAddr,
}

/// Why no host can be tried.
enum NoHops {
    Permanent(Reply),
    Temporary(Reply),
}

pub async fn run(core: Rc<CoreContext>, key: QueueKey) {
    deliver(&core, &key).await;
    core.delivery.queues.borrow_mut().connection_closed(&key);
    core.delivery
        .connections
        .set(core.delivery.connections.get().saturating_sub(1));
    core.delivery.wake_queue(&key);
}

/// Takes every ready recipient of the queue (they share the fate of a failed connection).
fn take_all_ready(core: &CoreContext, key: &QueueKey) -> Vec<Queued> {
    core.delivery
        .queues
        .borrow_mut()
        .take_batch(key, usize::MAX)
}

async fn deliver(core: &Rc<CoreContext>, key: &QueueKey) {
    let config = core.config();
    let (source_ip, ehlo) = match config.vmta(&key.vmta) {
        Some(v) => (v.source_ip, v.ehlo_hostname.clone()),
        None if &*key.vmta == IMPLICIT_VMTA => {
            (IpAddr::from([0, 0, 0, 0]), config.server.hostname.clone())
        }
        None => {
            let reply = Reply::local(
                451,
                (4, 3, 5),
                format!("VMTA {} is not configured", key.vmta),
            );
            outcome::defer_items(core, key, take_all_ready(core, key), &reply, None).await;
            return;
        }
    };
    let policy = config.policy_for(&key.vmta, &key.domain);
    let source_text = source_ip.to_string();
    let hops = match next_hops(core, &key.domain).await {
        Ok(h) => h,
        Err(NoHops::Permanent(reply)) => {
            outcome::bounce_items(core, key, take_all_ready(core, key), &reply, None).await;
            return;
        }
        Err(NoHops::Temporary(reply)) => {
            outcome::defer_items(core, key, take_all_ready(core, key), &reply, None).await;
            return;
        }
    };
    let mut last_failure = Reply::local(451, (4, 4, 1), "No next hop could be reached");
    for hop in hops {
        if source_ip.is_ipv4() != hop.address.is_ipv4() && !source_ip.is_unspecified() {
            continue;
        }
        let source = if source_ip.is_unspecified() {
            match hop.address {
                SocketAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
                SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
            }
        } else {
            source_ip
        };
        let stream = match connect_from_timeout(
            source,
            hop.address,
            Duration::from_millis(CONNECT_TIMEOUT_MS),
        )
        .await
        {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                // The VMTA's address is not on this host: no hop can work from it. Take the VMTA
                // out of its pools for a while and move its mail to another VMTA.
                let now_s = crate::clock::unix_s();
                let reason = format!("source address {source} cannot be bound: {e}");
                log::warn!(
                    "VMTA {} disabled for {BIND_FAILURE_RETRY_S} s: {reason}",
                    key.vmta
                );
                core.shared.vmtas.disable(
                    &key.vmta,
                    &reason,
                    now_s,
                    Some(now_s + BIND_FAILURE_RETRY_S),
                );
                let stuck = super::placement::reroute(core, key, take_all_ready(core, key)).await;
                let reply = Reply::local(451, (4, 4, 0), reason);
                outcome::defer_items(core, key, stuck, &reply, None).await;
                return;
            }
            Err(e) => {
                log::info!(
                    "{key}: connect to {} ({}) from {source}: {e}",
                    hop.host,
                    hop.address
                );
                last_failure = Reply::local(
                    451,
                    (4, 4, 1),
                    format!("Connection to {} failed: {e}", hop.address),
                );
                if super::vmta_status::observe_connect_error(core, key, &e) {
                    let stuck =
                        super::placement::reroute(core, key, take_all_ready(core, key)).await;
                    outcome::defer_items(core, key, stuck, &last_failure, None).await;
                    return;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut conn = Connection {
            core: core.clone(),
            key: key.clone(),
            mx: format!("{} ({})", hop.host, hop.address.ip()),
            source_ip: source_text.clone(),
            max_messages: policy.queue.max_messages_per_connection,
            sent: 0,
            in_flight: None,
            failure: None,
            config: config.clone(),
        };
        let tls_policy = match policy.tls {
            OutboundTls::Opportunistic => TlsPolicy::Opportunistic,
            OutboundTls::Required => TlsPolicy::Required,
            OutboundTls::Off => TlsPolicy::Off,
        };
        let mut session_config = SessionConfig::new(ehlo.clone(), tls_policy);
        session_config.chunking = policy.chunking;
        let session = Session::new(session_config);
        if let Err(e) = converse(stream, session, &mut conn, &hop, policy.tls).await {
            log::debug!("{key}: connection to {}: {e}", hop.address);
            conn.fail_in_flight(Reply::local(
                451,
                (4, 4, 2),
                format!("Connection lost: {e}"),
            ))
            .await;
        }
        if conn.sent > 0 {
            return;
        }
        // Nothing was sent here: a refusing greeting, a 421 or a TLS failure: try the next host.
        if let Some(reply) = conn.failure {
            let out = super::vmta_status::observe_failed_session(core, key, &reply);
            last_failure = reply;
            if out {
                let stuck = super::placement::reroute(core, key, take_all_ready(core, key)).await;
                outcome::defer_items(core, key, stuck, &last_failure, None).await;
                return;
            }
        }
    }
    outcome::defer_items(core, key, take_all_ready(core, key), &last_failure, None).await;
}

/// The hosts to try in order, each address a hop.
async fn next_hops(core: &CoreContext, domain: &str) -> Result<Vec<Hop>, NoHops> {
    let config = core.config();
    let resolver = core.delivery.resolver(core);
    if let Some(route) = config.routes.get(domain) {
        let Some((host, port)) = parse_next_hop(route) else {
            return Err(NoHops::Temporary(Reply::local(
                451,
                (4, 3, 5),
                format!("Bad route {route:?}"),
            )));
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![Hop {
                host,
                address: SocketAddr::new(ip, port),
            }]);
        }
        return match resolver.ip_addrs(&host).await {
            Ok(ips) => Ok(ips
                .into_iter()
                .map(|ip| Hop {
                    host: host.clone(),
                    address: SocketAddr::new(ip, port),
                })
                .collect()),
            Err(e) => Err(NoHops::Temporary(Reply::local(
                451,
                (4, 4, 3),
                format!("Route host {host}: {e}"),
            ))),
        };
    }
    match resolver.next_hops(domain).await {
        Ok(NextHops::Hosts(hosts)) => Ok(hosts
            .into_iter()
            .flat_map(|h| {
                let host = h.host;
                h.addresses.into_iter().map(move |ip| Hop {
                    host: host.clone(),
                    address: SocketAddr::new(ip, 25),
                })
            })
            .collect()),
        Ok(NextHops::NullMx) => Err(NoHops::Permanent(Reply::local(
            556,
            (5, 1, 10),
            format!("Domain {domain} does not accept mail (null MX)"),
        ))),
        Err(e @ (DnsError::NoSuchDomain(_) | DnsError::InvalidName(_))) => Err(NoHops::Permanent(
            Reply::local(550, (5, 1, 2), format!("Bad destination domain: {e}")),
        )),
        Err(e) if !e.is_temporary() => Err(NoHops::Permanent(Reply::local(
            550,
            (5, 4, 4),
            format!("Unable to route: {e}"),
        ))),
        Err(e) => Err(NoHops::Temporary(Reply::local(
            451,
            (4, 4, 3),
            format!("DNS: {e}"),
        ))),
    }
}

struct InFlight {
    items: Vec<Queued>,
    message: Rc<StoredMessage>,
    body: BodyBytes,
}

struct Connection {
    core: Rc<CoreContext>,
    key: QueueKey,
    mx: String,
    source_ip: String,
    max_messages: u32,
    sent: u32,
    in_flight: Option<InFlight>,
    /// The connection-level failure, if the session reported one.
    failure: Option<Reply>,
    /// The configuration the connection was opened under: after a reload it finishes its
    /// transaction and closes, so new routes and policies apply to the next one.
    config: Arc<Config>,
}

impl Connection {
    fn attempt(&self) -> Attempt<'_> {
        Attempt {
            source_ip: &self.source_ip,
            mx: &self.mx,
        }
    }

    /// Waits a little for recipients when the queue is empty, so a steady stream of mail reuses the
    /// connection instead of paying a new connect and EHLO per burst. False when none came.
    async fn wait_for_work(&self) -> bool {
        let queues = &self.core.delivery.queues;
        let mut waited_ms = 0;
        let mut step_ms = 1;
        loop {
            // Checked before the queue, every time: mail that arrives after a reload must not
            // leave on a connection opened under the old routes.
            if self.core.shared.control.stopping()
                || !Arc::ptr_eq(&self.config, &self.core.config())
            {
                return false;
            }
            if queues.borrow().has_ready(&self.key) {
                return true;
            }
            if waited_ms >= IDLE_LINGER_MS {
                return false;
            }
            glommio::timer::sleep(Duration::from_millis(step_ms)).await;
            waited_ms += step_ms;
            step_ms = (step_ms * 2).min(64);
        }
    }

    /// The session is idle: start the next transaction, or QUIT.
    async fn on_ready(&mut self, session: &mut Session) {
        let core = self.core.clone();
        let over_cap = core.delivery.queues.borrow().over_connection_cap(&self.key);
        if self.sent >= self.max_messages
            || over_cap
            || core.shared.control.stopping()
            || !Arc::ptr_eq(&self.config, &core.config())
            || !self.wait_for_work().await
        {
            session.quit();
            return;
        }
        loop {
            let may_send = core
                .delivery
                .queues
                .borrow_mut()
                .may_send(&self.key, crate::clock::unix_ms());
            match may_send {
                Ok(()) => break,
                Err(wait_ms) if wait_ms <= RATE_WAIT_IN_CONNECTION_MS_MAX => {
                    glommio::timer::sleep(Duration::from_millis(wait_ms.max(1))).await;
                }
                Err(wait_ms) => {
                    // A long wait: close, and hold the queue until then (a timed suspension that the
                    // scheduler ends by itself), so no connection is opened only to wait again.
                    let until_s = crate::clock::unix_s() + wait_ms.div_ceil(1000);
                    core.delivery
                        .queues
                        .borrow_mut()
                        .hold_for_rate(&self.key, until_s);
                    session.quit();
                    return;
                }
            }
        }
        let items = core
            .delivery
            .queues
            .borrow_mut()
            .take_transaction(&self.key, RECIPIENTS_PER_TRANSACTION_MAX);
        let Some(first) = items.first().copied() else {
            session.quit();
            return;
        };
        let message = match core.delivery.message(&core.bodies, first.message) {
            Ok(m) => m,
            Err(e) => {
                outcome::unreadable(&core, &self.key, items, &e).await;
                session.quit();
                return;
            }
        };
        let envelope = &message.envelope;
        let body = match core.bodies.body(message.body) {
            Ok(b) => b,
            Err(e) => {
                log::error!("{}: body of {}: {e}", self.key, first.message);
                let reply = Reply::local(451, (4, 3, 0), format!("Spool read error: {e}"));
                outcome::defer_items(&core, &self.key, items, &reply, None).await;
                session.quit();
                return;
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
        match session.send(tx) {
            Ok(()) => {
                self.sent += 1;
                self.in_flight = Some(InFlight {
                    items,
                    message,
                    body,
                });
            }
            Err(_) => {
                core.delivery
                    .queues
                    .borrow_mut()
                    .return_unsent(&self.key, items);
                session.quit();
            }
        }
    }

    async fn on_done(&mut self, results: Vec<crate::smtp::client::RecipientResult>) {
        let Some(flight) = self.in_flight.take() else {
            return;
        };
        super::vmta_status::observe_transaction(&self.core, &self.key, &results);
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

    /// The connection broke with a transaction open and no result: defer its recipients.
    async fn fail_in_flight(&mut self, reply: Reply) {
        if let Some(flight) = self.in_flight.take() {
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

enum Next {
    Closed,
    StartTls(Box<Session>),
}

async fn converse(
    stream: glommio::net::TcpStream,
    session: Session,
    conn: &mut Connection,
    hop: &Hop,
    tls: OutboundTls,
) -> io::Result<()> {
    let mut plain = stream;
    let session = match drive(&mut plain, session, conn).await? {
        Next::Closed => return Ok(()),
        Next::StartTls(s) => *s,
    };
    let client_tls = conn.core.client_tls();
    let config = match tls {
        OutboundTls::Required => client_tls.verified.clone(),
        _ => client_tls.opportunistic.clone(),
    };
    let name = ServerName::try_from(hop.host.clone())
        .unwrap_or_else(|_| ServerName::IpAddress(hop.address.ip().into()));
    let mut secured = match TlsConnector::from(config).connect(name, plain).await {
        Ok(s) => s,
        Err(e) => {
            conn.failure = Some(Reply::local(
                451,
                (4, 7, 5),
                format!("TLS handshake with {} failed: {e}", hop.host),
            ));
            return Ok(());
        }
    };
    let mut session = session;
    session.tls_established();
    match drive(&mut secured, session, conn).await? {
        Next::Closed | Next::StartTls(_) => Ok(()),
    }
}

async fn drive<S>(io: &mut S, mut session: Session, conn: &mut Connection) -> io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut out = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        let mut start_tls = false;
        let mut progressed = false;
        while let Some(event) = session.poll_event() {
            progressed = true;
            match event {
                Event::NeedTls => start_tls = true,
                Event::Ready => conn.on_ready(&mut session).await,
                Event::TransactionDone { recipient_results } => {
                    conn.on_done(recipient_results).await
                }
                Event::Failed { reply, temporary } => {
                    log::info!(
                        "{}: {} failed ({}): {reply}",
                        conn.key,
                        conn.mx,
                        if temporary { "temporary" } else { "permanent" }
                    );
                    super::backoff_watch::observe_failure(&conn.core, &conn.key, &reply);
                    conn.failure = Some(reply);
                }
                Event::Closed => {
                    flush_transmits(io, &mut session, conn, &mut out).await?;
                    return Ok(Next::Closed);
                }
            }
        }
        flush_transmits(io, &mut session, conn, &mut out).await?;
        if start_tls {
            return Ok(Next::StartTls(Box::new(session)));
        }
        if progressed {
            // Answering an event (send, quit) may have produced new events.
            continue;
        }
        let timeout = session.timeout();
        let read = futures_lite::future::or(async { Some(io.read(&mut buf).await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        match read {
            None => session.on_timeout(),
            Some(Ok(0)) | Some(Err(_)) => session.connection_lost(),
            Some(Ok(n)) => session.handle_input(&buf[..n]),
        }
    }
}

async fn flush_transmits<S: AsyncWrite + Unpin>(
    io: &mut S,
    session: &mut Session,
    conn: &Connection,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    while let Some(t) = session.poll_transmit() {
        match t {
            Transmit::Bytes(bytes) => out.extend_from_slice(&bytes),
            Transmit::Body => {
                if let Some(flight) = &conn.in_flight {
                    dot_stuff(&flight.body, out);
                }
            }
            Transmit::RawBody => {
                if let Some(flight) = &conn.in_flight {
                    out.extend_from_slice(&flight.body);
                }
            }
        }
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        io.flush().await?;
        out.clear();
    }
    Ok(())
}
