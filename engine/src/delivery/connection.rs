//! One outbound connection for one (VMTA, domain) queue: its hops (`hops`), a socket bound to the
//! VMTA's source IP, failover to the next host or address, then the driver (`driver`) and the
//! transactions (`transaction`) for as many messages as the queue has and
//! `max_messages_per_connection` allows.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use super::deadlines::{self, Step};
use super::hops::{self, NoHops};
use super::outcome;
use super::placement::IMPLICIT_VMTA;
use super::transaction::Connection;
use super::{BIND_FAILURE_RETRY_S, Queued, connect_from_timeout};
use crate::config::OutboundTls;
use crate::queue::QueueKey;
use crate::runtime::CoreContext;
use crate::smtp::client::{Reply, Session, SessionConfig, TlsPolicy};

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
    let hops = match hops_of(core, &key.domain, source_ip).await {
        Ok(h) => h.hops,
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
        let source = if source_ip.is_unspecified() {
            match hop.address {
                SocketAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
                SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
            }
        } else {
            source_ip
        };
        let mx = format!("{} ({})", hop.host, hop.address.ip());
        let connect_limit = Step::Connect.limit(&policy.deadlines);
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
                last_failure = if e.kind() == std::io::ErrorKind::TimedOut {
                    Step::Connect.timeout_reply(&mx)
                } else {
                    Reply::local(451, (4, 4, 1), format!("Connection to {mx} failed: {e}"))
                };
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
            mx: mx.clone(),
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
        session_config.timeouts = deadlines::session_timeouts(&policy.deadlines);
        session_config.peer = mx.clone();
        let session = Session::new(session_config);
        let deadlines = policy.deadlines;
        let ended =
            super::driver::converse(stream, session, &mut conn, &hop, policy.tls, &deadlines).await;
        if let Err(reply) = ended {
            log::info!("{key}: {mx}: {reply}");
            conn.fail_in_flight(reply.clone()).await;
            conn.failure = Some(reply);
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

/// The hops of `domain` reachable from `source`.
async fn hops_of(core: &CoreContext, domain: &str, source: IpAddr) -> Result<hops::Hops, NoHops> {
    let config = core.config();
    let target = hops::target(&config.routes, domain)?;
    let resolver = core.delivery.resolver(core);
    let answer = hops::resolve(&resolver, domain, &target).await;
    hops::select(domain, &target, answer, source)
}
