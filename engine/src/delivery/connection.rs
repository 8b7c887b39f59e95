//! One outbound connection for one (VMTA, domain) queue: its hops (`hops`), a socket bound to the
//! VMTA's source IP, failover to the next host or address, then the driver (`driver`) and the
//! transactions (`transaction`) for as many messages as the queue has and
//! `max_messages_per_connection` allows.
//!
//! What a connection may cost: it connects only when the queue has ready mail and its rate allows
//! a send (`rate_allows_connecting`), and for a cluster-shaped queue with a lease under the
//! cluster's connection cap (`shaping::open_connection`, held as long as the task); it moves to the next hop only when one failed; a connection
//! that ends cleanly (the queue emptied, a reload, a rate wait) ends there, deferring nothing. A
//! failure defers only what the connection took (its transaction in flight); the queue's ready
//! mail is deferred only when every hop failed and no other connection of the queue got through
//! greeting and EHLO (a real outage, or a receiver that stalls every connection). A 421 at the greeting or "too many connections" caps the queue's connections at
//! those the receiver admitted (`Queues::connection_refused`), raised again by deliveries.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::DeliveryCore;
use super::deadlines::{self, Step};
use super::hops::{self, NoHops};
use super::outcome;
use super::shaping::Permit;
use super::transaction::{Connection, RATE_WAIT_IN_CONNECTION_MS_MAX};
use super::{Queued, connect_from_timeout};
use crate::config::{Config, DomainPolicy};
use crate::placement::BIND_FAILURE_RETRY_S;
use crate::placement::IMPLICIT_VMTA;
use crate::queue::{CapChange, QueueKey};
use crate::smtp::client::{Reply, ReplySource, Session, SessionConfig};
use crate::transport_security::plan::Destination;

/// Reply texts (lower case) that say the receiver takes no more connections from us: Postfix
/// ("too many connections"), Exim ("too many concurrent SMTP connections"), Exchange ("the
/// maximum number of concurrent server connections has exceeded a limit").
const CONNECTION_LIMIT_PHRASES: [&str; 4] = [
    "too many connections",
    "too many concurrent",
    "maximum number of concurrent",
    "connection limit",
];

/// How a connection task ended, for the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The scheduler looks at the queue again (it may open another connection).
    Done,
    /// Nothing done because other open connections of the queue serve it: they wake the scheduler
    /// when they close; waking it now would only start another connection that does the same.
    LeftToOthers,
}

pub async fn run(core: Rc<DeliveryCore>, key: QueueKey) {
    let ended = deliver(&core, &key).await;
    core.delivery.queues.borrow_mut().connection_closed(&key);
    core.delivery
        .connections
        .set(core.delivery.connections.get().saturating_sub(1));
    if ended == Ended::Done {
        core.delivery.wake_queue(&key);
    }
}

/// One open outbound socket, counted in `volley_outbound_connections` while it lives.
struct OpenSocket<'a>(&'a DeliveryCore);

impl<'a> OpenSocket<'a> {
    fn new(core: &'a DeliveryCore) -> OpenSocket<'a> {
        core.counters()
            .outbound_connections
            .fetch_add(1, Ordering::Relaxed);
        OpenSocket(core)
    }
}

impl Drop for OpenSocket<'_> {
    fn drop(&mut self) {
        self.0
            .counters()
            .outbound_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes every ready recipient of the queue: only for what concerns the whole queue (its VMTA
/// cannot send, its domain has no hop, every hop failed with no other connection open).
fn take_all_ready(core: &DeliveryCore, key: &QueueKey) -> Vec<Queued> {
    core.delivery
        .queues
        .borrow_mut()
        .take_batch(key, usize::MAX)
}

/// Connections of the queue open besides this one that got through greeting and EHLO. A failure
/// while one is open is this attempt's (the receiver turns away extra connections, a hop is
/// down): the ready mail is left to it. With none, every attempt fails alike (a tarpit, a stalled
/// TLS handshake, DNS down): the ready mail is deferred now, or overlapping attempts would keep
/// it waiting until it expires.
fn established_connections(core: &DeliveryCore, key: &QueueKey) -> u32 {
    core.delivery.queues.borrow().established_connections(key)
}

/// Connections of the queue open besides this one.
fn other_connections(core: &DeliveryCore, key: &QueueKey) -> u32 {
    core.delivery
        .queues
        .borrow()
        .connections(key)
        .saturating_sub(1)
}

/// Whether to connect at all (`None`), or how the task ends without a socket. A connection opens
/// only for ready mail and a send the rate allows: taken now for its first transaction, or after
/// a short wait spent here, without a socket. A longer wait holds the queue (`hold_for_rate`)
/// when this is its only connection; with others open they meet the wait and hold it themselves.
async fn rate_allows_connecting(core: &Rc<DeliveryCore>, key: &QueueKey) -> Option<Ended> {
    loop {
        if core.node.control.stopping()
            || core.node.drain.is_draining()
            || !core.delivery.queues.borrow().has_ready(key)
        {
            return Some(Ended::Done);
        }
        match super::shaping::take_send(core, key).await {
            Permit::Go => return None,
            Permit::Hold => {
                let until_s = crate::clock::unix_s() + super::shaping::TEMPFAIL_HOLD_S;
                core.delivery
                    .queues
                    .borrow_mut()
                    .hold_for_rate(key, until_s);
                return Some(Ended::Done);
            }
            Permit::Wait(wait_ms) if wait_ms <= RATE_WAIT_IN_CONNECTION_MS_MAX => {
                glommio::timer::sleep(Duration::from_millis(wait_ms.max(1))).await;
            }
            Permit::Wait(_) if other_connections(core, key) > 0 => {
                return Some(Ended::LeftToOthers);
            }
            Permit::Wait(wait_ms) => {
                let until_s = crate::clock::unix_s() + wait_ms.div_ceil(1000);
                core.delivery
                    .queues
                    .borrow_mut()
                    .hold_for_rate(key, until_s);
                return Some(Ended::Done);
            }
        }
    }
}

/// Whether `reply` says the receiver takes no more connections: a 421 before the session was
/// open (greeting, EHLO), or a connection-limit text at any time.
fn is_connection_limit(reply: &Reply, opened: bool) -> bool {
    if reply.source != ReplySource::Remote {
        return false;
    }
    let text = reply.text.to_ascii_lowercase();
    (reply.code == 421 && !opened) || CONNECTION_LIMIT_PHRASES.iter().any(|p| text.contains(p))
}

/// The receiver refused a connection: cap the queue at the connections it admitted (logged).
fn connection_refused(core: &DeliveryCore, key: &QueueKey, mx: &str, reply: &Reply) {
    let change = core.delivery.queues.borrow_mut().connection_refused(key);
    if let Some(CapChange::Lowered(cap)) = change {
        log::info!(
            "queue {key}: {mx} refused a connection ({reply}): at most {cap} connections until \
             deliveries show it takes more"
        );
    }
}

async fn deliver(core: &Rc<DeliveryCore>, key: &QueueKey) -> Ended {
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
            return Ended::Done;
        }
    };
    // A cluster-shaped queue connects only under the cluster's cap (the lease lives as long as
    // this task, so as the socket); without a lease it waits, and its open connections go on.
    let Ok(_lease) = super::shaping::open_connection(core, key).await else {
        return Ended::Done;
    };
    if let Some(ended) = rate_allows_connecting(core, key).await {
        return ended;
    }
    let policy = config.policy_for(&key.vmta, &key.domain);
    let source_text = source_ip.to_string();
    let hops = match hops_of(core, &key.domain, source_ip).await {
        Ok(h) => h,
        Err(NoHops::Permanent(reply)) => {
            outcome::bounce_items(core, key, take_all_ready(core, key), &reply, None).await;
            return Ended::Done;
        }
        Err(NoHops::Temporary(reply)) => {
            if established_connections(core, key) > 0 {
                log::info!("{key}: {reply}; left to the other open connections");
                return Ended::LeftToOthers;
            }
            outcome::defer_items(core, key, take_all_ready(core, key), &reply, None).await;
            return Ended::Done;
        }
    };
    // MTA-STS (and, per host below, DANE) over the domain's own `tls` setting.
    let destination = super::security::destination(core, &key.domain, &hops, policy.tls).await;
    let attempt = Attempt {
        core,
        key,
        config: &config,
        policy: &policy,
        source_ip,
        source_text: &source_text,
        ehlo: &ehlo,
        hops: &hops,
    };
    let mut rate_token = true;
    let failed = match try_hops(&attempt, &destination, false, &mut rate_token).await {
        Tried::Ended(ended) => return ended,
        Tried::AllFailed(failed) => failed,
    };
    let others = if failed.turned_away {
        other_connections(core, key)
    } else {
        established_connections(core, key)
    };
    if others > 0 {
        log::info!(
            "{key}: no host reached ({}); {others} other connections serve the queue: nothing \
             deferred",
            failed.last_failure
        );
        return Ended::LeftToOthers;
    }
    let mut last_failure = failed.last_failure;
    if failed.policy_kept && core.delivery.queues.borrow().has_ready_tls_optional(key) {
        // RFC 8689 5: mail saying `TLS-Required: No` does not wait for DANE or MTA-STS. The rest
        // waits for its policy; that mail gets a connection of its own, planned without them.
        let required = core
            .delivery
            .queues
            .borrow_mut()
            .take_ready_tls_required(key);
        outcome::defer_items(core, key, required, &last_failure, None).await;
        let without = Destination::ignoring_policies(&key.domain, policy.tls);
        match try_hops(&attempt, &without, true, &mut rate_token).await {
            Tried::Ended(ended) => return ended,
            Tried::AllFailed(failed) => last_failure = failed.last_failure,
        }
    }
    outcome::defer_items(core, key, take_all_ready(core, key), &last_failure, None).await;
    Ended::Done
}

/// What one connection attempt of a queue works with.
struct Attempt<'a> {
    core: &'a Rc<DeliveryCore>,
    key: &'a QueueKey,
    config: &'a Arc<Config>,
    policy: &'a DomainPolicy,
    source_ip: IpAddr,
    source_text: &'a str,
    ehlo: &'a str,
    hops: &'a hops::Hops,
}

/// Every hop failed: the last failure, and why.
struct AllFailed {
    last_failure: Reply,
    /// A receiver said it takes no more connections.
    turned_away: bool,
    /// A DANE or MTA-STS policy refused a host or failed its connection.
    policy_kept: bool,
}

enum Tried {
    /// The task ends here (delivered, a clean end, or the queue's mail dealt with).
    Ended(Ended),
    AllFailed(AllFailed),
}

/// Tries the hops in order under `destination`'s policies until a connection ends cleanly;
/// `tls_optional_only`: the connection takes only mail saying `TLS-Required: No`.
async fn try_hops(
    attempt: &Attempt<'_>,
    destination: &Destination,
    tls_optional_only: bool,
    rate_token: &mut bool,
) -> Tried {
    let Attempt {
        core,
        key,
        config,
        policy,
        source_ip,
        source_text,
        ehlo,
        hops,
    } = *attempt;
    let deadlines = policy.deadlines;
    // The receiver said it takes no more connections: it works, and the queue's other attempts
    // (established or not yet) may be admitted, so the ready mail is left to them.
    let mut turned_away = false;
    let mut policy_kept = false;
    let mut last_failure = Reply::local(451, (4, 4, 1), "No next hop could be reached");
    for hop in &hops.hops {
        let source = if source_ip.is_unspecified() {
            match hop.address {
                SocketAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
                SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
            }
        } else {
            source_ip
        };
        let mx = format!("{} ({})", hop.host, hop.address.ip());
        let hop_tls = match super::security::hop_tls(core, destination, hops, hop).await {
            Ok(t) => t,
            Err(refusal) => {
                log::info!("{key}: {mx} not used: {}", refusal.reply);
                last_failure = refusal.reply;
                policy_kept = true;
                continue;
            }
        };
        let connect_limit = Step::Connect.limit(&deadlines);
        let stream = match connect_from_timeout(source, hop.address, connect_limit).await {
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
                core.placement.board.disable(
                    &key.vmta,
                    &reason,
                    now_s,
                    Some(now_s + BIND_FAILURE_RETRY_S),
                );
                let stuck = super::reroute::reroute(core, key, take_all_ready(core, key)).await;
                let reply = Reply::local(451, (4, 4, 0), reason);
                outcome::defer_items(core, key, stuck, &reply, None).await;
                return Tried::Ended(Ended::Done);
            }
            Err(e) => {
                log::info!("{key}: connect to {mx} from {source}: {e}");
                last_failure = if e.kind() == std::io::ErrorKind::TimedOut {
                    Step::Connect.timeout_reply(&mx)
                } else {
                    Reply::local(451, (4, 4, 1), format!("Connection to {mx} failed: {e}"))
                };
                if super::vmta_status::observe_connect_error(core, key, &hops.next_hop, &e) {
                    let stuck = super::reroute::reroute(core, key, take_all_ready(core, key)).await;
                    outcome::defer_items(core, key, stuck, &last_failure, None).await;
                    return Tried::Ended(Ended::Done);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let open = OpenSocket::new(core);
        let mut conn = Connection {
            core: core.clone(),
            key: key.clone(),
            mx: mx.clone(),
            source_ip: source_text.to_string(),
            max_messages: policy.queue.max_messages_per_connection,
            sent: 0,
            opened: false,
            in_flight: std::collections::VecDeque::new(),
            failure: None,
            rate_token: *rate_token,
            next_hop: hops.next_hop.clone(),
            config: config.clone(),
            tls: "none",
            tls_up: false,
            observed: None,
            hop_tls: hop_tls.clone(),
            from_mx: hops.from_mx,
            tls_optional_only,
        };
        let mut session_config = SessionConfig::new(ehlo.to_string(), hop_tls.session_policy());
        session_config.tls_required_by = hop_tls.required_by(&hop.host, &key.domain);
        session_config.tls_verified = hop_tls.verifies();
        session_config.chunking = policy.chunking;
        session_config.transactions_in_flight = policy.transactions_in_flight;
        session_config.timeouts = deadlines::session_timeouts(&deadlines);
        session_config.peer = mx.clone();
        let session = Session::new(session_config);
        let ended =
            super::driver::converse(stream, session, &mut conn, hop, &hop_tls, &deadlines).await;
        drop(open); // the socket was closed when `converse` returned
        super::security::count_unopened(&conn, ended.as_ref().err());
        if let Err(reply) = ended {
            log::info!("{key}: {mx}: {reply}");
            conn.fail_in_flight(reply.clone()).await;
            conn.failure = Some(reply);
        }
        *rate_token = conn.rate_token;
        let Some(failure) = conn.failure.take() else {
            // A clean end (QUIT): the queue emptied, a reload, a rate wait, enough messages.
            return Tried::Ended(Ended::Done);
        };
        if is_connection_limit(&failure, conn.opened) {
            connection_refused(core, key, &mx, &failure);
            turned_away = true;
        }
        if conn.sent > 0 {
            // It failed after sending: its own transaction in flight was deferred, nothing else.
            return Tried::Ended(Ended::Done);
        }
        policy_kept |= hop_tls.policy_requires_tls();
        // Nothing was sent here: a refusing greeting, a 421, a timeout or a TLS failure.
        let out = super::vmta_status::observe_failed_session(core, key, &hops.next_hop, &failure);
        last_failure = failure;
        if out {
            let stuck = super::reroute::reroute(core, key, take_all_ready(core, key)).await;
            outcome::defer_items(core, key, stuck, &last_failure, None).await;
            return Tried::Ended(Ended::Done);
        }
    }
    Tried::AllFailed(AllFailed {
        last_failure,
        turned_away,
        policy_kept,
    })
}

/// The hops of `domain` reachable from `source`.
async fn hops_of(core: &DeliveryCore, domain: &str, source: IpAddr) -> Result<hops::Hops, NoHops> {
    let config = core.config();
    let target = hops::target(&config.routes, domain)?;
    let resolver = core.resolver();
    let answer = hops::resolve(&resolver, domain, &target).await;
    hops::select(domain, &target, answer, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(code: u16, text: &str) -> Reply {
        Reply {
            code,
            enhanced: None,
            text: text.into(),
            source: ReplySource::Remote,
        }
    }

    #[test]
    fn what_says_the_receiver_takes_no_more_connections() {
        let postfix = remote(
            421,
            "4.7.0 mx.test Error: too many connections from 192.0.2.1",
        );
        assert!(is_connection_limit(&postfix, false));
        assert!(is_connection_limit(&postfix, true), "the text says so");
        let busy = remote(421, "4.3.2 Service shutting down");
        assert!(is_connection_limit(&busy, false), "a 421 at the greeting");
        assert!(!is_connection_limit(&busy, true), "a 421 later is not");
        let exim = remote(
            451,
            "Too many concurrent SMTP connections; please try again later.",
        );
        assert!(is_connection_limit(&exim, true));
        assert!(!is_connection_limit(
            &remote(450, "4.2.1 mailbox busy"),
            false
        ));
        let local = Reply::local(421, (4, 4, 2), "too many connections");
        assert!(
            !is_connection_limit(&local, false),
            "only the receiver's word"
        );
    }
}
