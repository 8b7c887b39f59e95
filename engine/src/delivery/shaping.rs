//! Cluster-wide shaping on this core (`[[domain]] cluster = true` with `[cluster]`): a connection
//! of such a queue opens only with a lease from Redis, and each of its transactions spends a send
//! time reserved in Redis (`cluster::shaping`). Every Redis call goes through the link thread; the
//! queue (`queue::ClusterShare`) keeps what was reserved and whether it waits.
//!
//! - **Connections.** Before connecting, a lease (member `node:core:n`) is taken in the key's
//!   sorted set if fewer than `max_connections` are held; it is renewed every `RENEW_EVERY_MS`
//!   for `LEASE_MS` while the connection lives and given back when it closes. A node killed
//!   with -9 stops renewing: its leases expire. Without a lease the queue opens no connection for
//!   `CONNECT_RETRY_S` (its open connections go on), then asks again: no busy loop.
//! - **Sends.** See `queue::cluster_share`: reserved send times, at most
//!   `room / (2 x live nodes)` per reservation.
//! - **Redis down** (`[cluster] on_redis_down`): "local-share" makes the queue enforce 1/N of its
//!   caps on its own count (N = live nodes, times the configured VMTAs for a domain-wide key, since
//!   each VMTA's queue counts apart); "tempfail" holds the queue (no new connection, no new
//!   transaction) until Redis is back. One WARN line per outage says which.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::DeliveryCore;
use crate::cluster::Cluster;
use crate::cluster::shaping::{self, LEASE_MS, RENEW_EVERY_MS, ShapingKeys};
use crate::config::OnRedisDown;
use crate::queue::{ClusterScope, QueueKey, RateWait};

/// Connection leases one core holds at most (each is an open connection of a cluster-shaped
/// queue); beyond it a queue waits as if the cluster's cap were reached.
pub const MAX_LEASES_PER_CORE: usize = 16_384;
/// A queue refused a connection lease asks again after this many seconds.
pub const CONNECT_RETRY_S: u64 = 1;
/// With Redis down and `on_redis_down = "tempfail"`, a queue is held this many seconds at a time.
pub const TEMPFAIL_HOLD_S: u64 = 1;
/// Reservations one send check makes at most (each answer may be used up by another connection
/// of the queue before this one looks).
const RESERVATIONS_PER_SEND_MAX: usize = 3;

/// The connection leases this core holds, renewed together.
#[derive(Debug, Default)]
pub struct LeaseBook {
    /// Lease number -> (Redis key, member).
    entries: HashMap<u64, (String, String)>,
    next: u64,
}

impl LeaseBook {
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every lease as (key, member), for a renewal.
    fn all(&self) -> Vec<(String, String)> {
        self.entries.values().cloned().collect()
    }
}

/// A connection's place under its queue's cluster cap: given back when dropped.
pub struct ConnectionLease {
    core: Rc<DeliveryCore>,
    id: u64,
}

impl Drop for ConnectionLease {
    fn drop(&mut self) {
        let entry = self
            .core
            .delivery
            .leases
            .borrow_mut()
            .entries
            .remove(&self.id);
        let Some(cluster) = &self.core.node.cluster else {
            return;
        };
        cluster
            .shaping
            .connection_leases
            .fetch_sub(1, Ordering::Relaxed);
        if let Some((key, member)) = entry {
            // Also when it was taken during an outage: a renewal may have added it since.
            cluster
                .link
                .post(move |c| shaping::release(c, &key, &member));
        }
    }
}

/// The cluster and the queue's scope, when the queue is cluster-shaped.
fn shaped(core: &DeliveryCore, key: &QueueKey) -> Option<(Arc<Cluster>, ClusterScope)> {
    let cluster = core.node.cluster.as_ref()?;
    let scope = core.delivery.queues.borrow().cluster_scope(key)?;
    Some((cluster.clone(), scope))
}

/// What a send check allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Go,
    /// Not before this many ms.
    Wait(u64),
    /// Redis is down and the queue holds (`tempfail`): hold it `TEMPFAIL_HOLD_S`, then look again.
    Hold,
}

/// The divisor of a queue's caps while Redis is down (local-share): the live nodes, times the
/// configured VMTAs when the key is the whole domain's.
fn local_divisor(core: &DeliveryCore, cluster: &Cluster, scope: ClusterScope) -> u32 {
    let nodes = cluster.health().live_nodes();
    match scope {
        ClusterScope::Vmta => nodes,
        ClusterScope::Domain => {
            let vmtas = u32::try_from(core.config().vmtas.len()).unwrap_or(u32::MAX);
            nodes.saturating_mul(vmtas.max(1))
        }
    }
}

/// Redis cannot be asked: what `on_redis_down` says for this queue. `Some(divisor)`: enforce a
/// local share; `None`: hold. Warns once per outage.
fn outage(
    core: &DeliveryCore,
    cluster: &Cluster,
    key: &QueueKey,
    scope: ClusterScope,
) -> Option<u32> {
    let epoch = cluster.health().epoch();
    let local = cluster.on_redis_down == OnRedisDown::LocalShare;
    if cluster.shaping.warned_epoch.swap(epoch, Ordering::Relaxed) != epoch {
        if local {
            log::warn!(
                "cluster: Redis is unreachable: cluster-shaped queues enforce this node's share of \
                 their caps on their own until it is back"
            );
        } else {
            log::warn!(
                "cluster: Redis is unreachable: cluster-shaped queues hold (no new connection, no \
                 new transaction) until it is back (on_redis_down = \"tempfail\")"
            );
        }
    }
    if !local {
        return None;
    }
    let divisor = local_divisor(core, cluster, scope);
    core.delivery
        .queues
        .borrow_mut()
        .set_local_share(key, Some(divisor));
    Some(divisor)
}

/// Redis answered: the queue is back on the cluster's caps.
fn redis_answers(core: &DeliveryCore, key: &QueueKey) {
    core.delivery.queues.borrow_mut().set_local_share(key, None);
}

/// Takes a connection lease for a new connection of `key` (whose local slot is already taken).
/// `Ok(None)`: the queue is not cluster-shaped. `Err(NoLease)`: the queue waits
/// `CONNECT_RETRY_S` before another connection (its open ones go on) and the task ends.
pub async fn open_connection(
    core: &Rc<DeliveryCore>,
    key: &QueueKey,
) -> Result<Option<ConnectionLease>, NoLease> {
    let Some((cluster, scope)) = shaped(core, key) else {
        return Ok(None);
    };
    let cap = core
        .delivery
        .queues
        .borrow()
        .policy(key)
        .map_or(1, |p| p.max_connections);
    let keys = ShapingKeys::new(scope, &key.vmta, &key.domain);
    if core.delivery.leases.borrow().len() >= MAX_LEASES_PER_CORE {
        return Err(refuse(core, &cluster, key));
    }
    let id = {
        let mut book = core.delivery.leases.borrow_mut();
        book.next += 1;
        book.next
    };
    let member = format!("{}:{}:{id}", cluster.node, core.delivery.core);
    let granted = if cluster.health().is_up() {
        let (conn_key, asked) = (keys.conn.clone(), member.clone());
        match cluster
            .link
            .call(move |c| shaping::acquire(c, &conn_key, &asked, cap, LEASE_MS))
            .await
        {
            Ok(answer) => {
                redis_answers(core, key);
                Some(answer.granted)
            }
            Err(e) => {
                log::debug!("{key}: no connection lease from Redis: {e}");
                None
            }
        }
    } else {
        None
    };
    let granted = match granted {
        Some(granted) => granted,
        // Redis down: local-share counts this node's connections against its share (the local
        // slot taken for this one included); tempfail holds.
        None => match outage(core, &cluster, key, scope) {
            Some(_) => {
                let queues = core.delivery.queues.borrow();
                queues.connections(key) <= queues.max_connections(key)
            }
            None => false,
        },
    };
    if !granted {
        return Err(refuse(core, &cluster, key));
    }
    core.delivery
        .leases
        .borrow_mut()
        .entries
        .insert(id, (keys.conn, member));
    cluster
        .shaping
        .connection_leases
        .fetch_add(1, Ordering::Relaxed);
    Ok(Some(ConnectionLease {
        core: core.clone(),
        id,
    }))
}

/// No connection lease: the cluster's cap is reached (or Redis cannot be asked and the node's
/// share is used, or it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoLease;

/// The queue waits `CONNECT_RETRY_S` before its next connection.
fn refuse(core: &DeliveryCore, cluster: &Cluster, key: &QueueKey) -> NoLease {
    cluster.shaping.waited();
    core.delivery
        .queues
        .borrow_mut()
        .wait_for_cluster_connection(key, crate::clock::unix_s() + CONNECT_RETRY_S);
    NoLease
}

/// Takes one send for a transaction of `key` (call before MAIL FROM): from the queue's own
/// limiter, or for a cluster-shaped queue from its reserved send times, reserving more from Redis
/// when none is left.
pub async fn take_send(core: &Rc<DeliveryCore>, key: &QueueKey) -> Permit {
    let shaped = shaped(core, key);
    if let Some((cluster, scope)) = &shaped {
        if cluster.health().is_up() {
            // Back from an outage: the reserved sends rule again, not the local share.
            redis_answers(core, key);
        } else if outage(core, cluster, key, *scope).is_none() {
            cluster.shaping.waited();
            return Permit::Hold;
        }
    }
    for _ in 0..RESERVATIONS_PER_SEND_MAX {
        let now_ms = crate::clock::unix_ms();
        let may_send = core.delivery.queues.borrow_mut().may_send(key, now_ms);
        match may_send {
            Ok(()) => return Permit::Go,
            Err(RateWait::For(ms)) => return Permit::Wait(ms),
            Err(RateWait::Reserve) => {}
        }
        let Some((cluster, scope)) = &shaped else {
            return Permit::Go; // not cluster-shaped: never asked to reserve
        };
        let Some((want, spacing)) = core.delivery.queues.borrow_mut().begin_reserve(key, now_ms)
        else {
            return Permit::Go;
        };
        let keys = ShapingKeys::new(*scope, &key.vmta, &key.domain);
        let nodes = cluster.health().live_nodes();
        let answer = cluster
            .link
            .call(move |c| shaping::reserve(c, &keys.rate, spacing, want, nodes))
            .await;
        match answer {
            Ok(r) => {
                redis_answers(core, key);
                // None free, or the first free one is not usable yet: the rate is reached
                // cluster-wide and this queue waits its turn.
                if r.count == 0 || r.in_us > spacing.early_us {
                    cluster.shaping.waited();
                }
                core.delivery.queues.borrow_mut().reserved(
                    key,
                    crate::clock::unix_ms(),
                    r.count,
                    r.in_us,
                    spacing,
                );
            }
            Err(e) => {
                log::debug!("{key}: no send times from Redis: {e}");
                core.delivery.queues.borrow_mut().reserve_failed(key);
                if outage(core, cluster, key, *scope).is_none() {
                    cluster.shaping.waited();
                    return Permit::Hold;
                }
            }
        }
    }
    Permit::Wait(1)
}

/// Renews this core's connection leases every `RENEW_EVERY_MS` until the core stops (one
/// script per renewal, on the link thread).
pub async fn renew_leases(core: Rc<DeliveryCore>) {
    let Some(cluster) = core.node.cluster.clone() else {
        return;
    };
    let stop = core.stop_signal();
    loop {
        let stopped = futures_lite::future::or(
            async {
                glommio::timer::sleep(Duration::from_millis(RENEW_EVERY_MS)).await;
                false
            },
            async {
                stop.wait().await;
                true
            },
        )
        .await;
        if stopped || core.node.control.stopping() {
            return;
        }
        let leases = core.delivery.leases.borrow().all();
        if leases.is_empty() || !cluster.health().is_up() {
            continue;
        }
        cluster
            .link
            .post(move |c| shaping::renew(c, &leases, LEASE_MS));
    }
}
