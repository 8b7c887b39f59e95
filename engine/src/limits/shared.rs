//! Customer limits held across the cluster (with `[cluster]`): a message is charged to this node's
//! lease of the customer's quota; an empty lease is refilled from Redis (one round trip for a block
//! of messages, see `cluster::quota`); what a node does not use goes back after
//! [`LEASE_IDLE_MS`] without use and at stop.
//!
//! While Redis is down (`on_redis_down`): "tempfail" refuses what needs a new lease (451 4.3.0);
//! "local-share" lets this node accept up to limit / live nodes in the window on its own count, and
//! adds what it accepted meanwhile to Redis once it is back (no limit check), so the cluster's
//! totals stay true. What a lease already holds is spent in either mode.

use std::sync::Arc;

use super::{Charge, CustomerCounters, Plan, Refusal, SendingLimits, windows};
use crate::cluster::Cluster;
use crate::cluster::quota::{self, Exhausted, LeaseAsk, QuotaKeys};
use crate::config::OnRedisDown;

/// A lease unused this long goes back to Redis.
pub const LEASE_IDLE_MS: u64 = 2_000;
/// After Redis said a customer's quota is used up, MAIL and charges are refused for this long
/// without asking again (another node may give some back meanwhile).
pub const EXHAUSTED_FOR_MS: u64 = 1_000;
/// Refills one message may cause (other cores may take a fresh lease first).
const MAX_REFILLS_PER_MESSAGE: usize = 3;

fn refusal(name: &str, plan: &Plan, by_day: bool) -> Refusal {
    match (by_day, plan.per_hour, plan.per_day) {
        (true, _, Some(limit)) | (false, None, Some(limit)) => Refusal::Daily {
            limit,
            customer: name.to_string(),
        },
        (_, Some(limit), _) => Refusal::Hourly {
            limit,
            customer: name.to_string(),
        },
        (_, None, None) => Refusal::Unavailable {
            customer: name.to_string(),
        },
    }
}

/// The MAIL-time check: refused only while Redis said the quota is used up.
pub(super) fn check(
    counters: &CustomerCounters,
    name: &str,
    plan: &Plan,
    now_ms: u64,
) -> Result<(), Refusal> {
    let (hour, _) = windows(now_ms / 1000);
    if counters.lease.holds_any(hour) {
        return Ok(());
    }
    match counters.lease.exhausted(now_ms) {
        Some(by_day) => Err(refusal(name, plan, by_day)),
        None => Ok(()),
    }
}

/// Charges one message to the customer's share of the cluster's quota.
pub(super) async fn charge(
    cluster: &Cluster,
    counters: &CustomerCounters,
    name: &str,
    plan: &Plan,
    now_ms: u64,
) -> Result<Charge, Refusal> {
    let (hour, day) = windows(now_ms / 1000);
    let lease = &counters.lease;
    for _ in 0..MAX_REFILLS_PER_MESSAGE {
        if lease.take_plan(hour, now_ms) {
            counters.count_local(hour, day);
            return Ok(Charge::SharedPlan { hour, day });
        }
        if lease.take_credit(hour, now_ms) {
            counters.count_local_credit();
            return Ok(Charge::SharedCredit);
        }
        if let Some(by_day) = lease.exhausted(now_ms) {
            return Err(refusal(name, plan, by_day));
        }
        if !cluster.health().is_up() {
            return charge_during_outage(cluster, counters, name, plan, hour, day);
        }
        let ask = LeaseAsk {
            per_hour: plan.per_hour,
            per_day: plan.per_day,
            credits_bought: plan.credits,
            want: lease.next_want(now_ms),
            live_nodes: cluster.health().live_nodes(),
        };
        let keys = QuotaKeys::new(name, hour, day);
        let grant = match cluster
            .link
            .call(move |c| quota::lease(c, &keys, ask))
            .await
        {
            Ok(grant) => grant,
            Err(e) => {
                log::debug!("cluster: no lease for customer {name}: {e}");
                return charge_during_outage(cluster, counters, name, plan, hour, day);
            }
        };
        lease.note_totals(grant.hour_count, grant.day_count, grant.credits_spent);
        if let Some(old) = lease.add_grant(hour, grant.plan, grant.credits) {
            give_back(cluster, name, old.window, old.plan, 0);
        }
        if grant.plan == 0 && grant.credits == 0 {
            let by_day = grant.exhausted == Some(Exhausted::Day);
            lease.mark_exhausted(now_ms + EXHAUSTED_FOR_MS, by_day);
            return Err(refusal(name, plan, by_day));
        }
    }
    Err(refusal(name, plan, false))
}

fn charge_during_outage(
    cluster: &Cluster,
    counters: &CustomerCounters,
    name: &str,
    plan: &Plan,
    hour: u32,
    day: u32,
) -> Result<Charge, Refusal> {
    if cluster.on_redis_down == OnRedisDown::Tempfail {
        return Err(Refusal::Unavailable {
            customer: name.to_string(),
        });
    }
    let live = cluster.health().live_nodes();
    let share = Plan {
        per_hour: plan.per_hour.map(|l| l / live),
        per_day: plan.per_day.map(|l| l / live),
        credits: 0,
    };
    let lease = &counters.lease;
    match counters.take_plan(&share, hour, day) {
        Ok(()) => {
            lease.count_outage(hour, false);
            Ok(Charge::Plan { hour, day })
        }
        Err(refused) => {
            let spent = lease
                .cluster_credits_spent
                .load(std::sync::atomic::Ordering::Relaxed);
            let credit_share = plan.credits.saturating_sub(spent) / u64::from(live);
            if lease.outage_credits() < credit_share {
                lease.count_outage(hour, true);
                counters.count_local_credit();
                return Ok(Charge::Credit);
            }
            Err(match refused {
                Refusal::Daily { .. } => refusal(name, plan, true),
                _ => refusal(name, plan, false),
            })
        }
    }
}

/// Gives back part of a lease in the background (the link thread does it).
fn give_back(cluster: &Cluster, name: &str, window: u32, plan: u32, credits: u32) {
    let keys = QuotaKeys::new(name, window, window / 24);
    cluster
        .link
        .post(move |c| quota::give_back(c, &keys, plan, credits));
}

/// Once a second (core 0) and at stop: idle leases go back, and what was accepted during an outage
/// is added to Redis once it is back. `stopping`: every lease goes back.
pub fn maintain(cluster: &Cluster, limits: &SendingLimits, now_ms: u64, stopping: bool) {
    if !cluster.health().is_up() {
        return;
    }
    let idle_since = if stopping {
        u64::MAX
    } else {
        now_ms.saturating_sub(LEASE_IDLE_MS)
    };
    for (name, counters) in limits.all() {
        let lease = &counters.lease;
        if let Some(outage) = lease.take_outage() {
            let keys = QuotaKeys::new(&name, outage.window, outage.window / 24);
            log::info!(
                "cluster: adding {} messages and {} credits of customer {name} accepted while Redis was down",
                outage.plan,
                outage.credits
            );
            cluster
                .link
                .post(move |c| quota::add_usage(c, &keys, outage.plan, outage.credits));
        }
        if let Some(unused) = lease.take_unused_if_idle(idle_since) {
            give_back(cluster, &name, unused.window, unused.plan, unused.credits);
        }
    }
}

/// Adds prepaid credits in Redis (a top-up through the API); returns the credits added so far.
pub async fn add_cluster_credits(
    cluster: &Arc<Cluster>,
    name: &str,
    add: u64,
) -> Result<u64, crate::cluster::LinkError> {
    let keys = QuotaKeys::new(name, 0, 0);
    cluster
        .link
        .call(move |c| quota::add_credits(c, &keys, add))
        .await
}

/// The cluster's counts of a customer now, asked of Redis.
pub async fn cluster_usage(
    cluster: &Arc<Cluster>,
    name: &str,
    now_ms: u64,
) -> Result<quota::Usage, crate::cluster::LinkError> {
    let (hour, day) = windows(now_ms / 1000);
    let keys = QuotaKeys::new(name, hour, day);
    cluster.link.call(move |c| quota::usage(c, &keys)).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cluster::tests::RedisServer;
    use crate::config::{ClusterSection, CustomerConfig};
    use crate::limits::CoreLimits;

    fn node(redis: &RedisServer, name: &str, mode: OnRedisDown) -> CoreLimits {
        let section = ClusterSection {
            node: name.into(),
            redis: redis.url(),
            on_redis_down: mode,
            redis_timeout_ms: 300,
            heartbeat_ms: 100,
            peer_networks: Vec::new(),
        };
        let cluster = Cluster::start(&section, Box::new(Default::default)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cluster.health().is_up() {
            assert!(std::time::Instant::now() < deadline, "no Redis");
            std::thread::sleep(Duration::from_millis(10));
        }
        CoreLimits::new(Arc::new(SendingLimits::in_memory()), Some(cluster))
    }

    fn customer(per_hour: u64, credits: u64) -> CustomerConfig {
        CustomerConfig {
            name: "acme".into(),
            password_hash: None,
            pool: None,
            max_messages_per_hour: Some(per_hour),
            max_messages_per_day: None,
            credits,
            list_unsubscribe: None,
            spam_filter: None,
            max_bounce_percent: None,
            bounce_window_messages: 1000,
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(f)
    }

    /// Charges until `tries` attempts were made; returns the accepted count.
    fn send(limits: &CoreLimits, c: &CustomerConfig, tries: usize) -> usize {
        run(async {
            let mut ok = 0;
            for _ in 0..tries {
                if limits
                    .charge(Some(c), crate::clock::unix_ms())
                    .await
                    .is_ok()
                {
                    ok += 1;
                }
            }
            ok
        })
    }

    #[test]
    fn three_nodes_sending_at_once_never_pass_the_plan_and_credits_and_use_them_up() {
        let redis = RedisServer::start();
        let c = customer(1000, 30);
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let limits = node(&redis, &format!("n{i}"), OnRedisDown::LocalShare);
                let c = c.clone();
                std::thread::spawn(move || {
                    let ok = send(&limits, &c, 800);
                    (limits, ok)
                })
            })
            .collect();
        let results: Vec<(CoreLimits, usize)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut accepted: usize = results.iter().map(|r| r.1).sum();
        assert!(
            accepted <= 1030,
            "never more than plan + credits: {accepted}"
        );
        // Leases a node holds unused go back (idle, or at stop); then the others can use them.
        for _ in 0..2 {
            for (limits, _) in &results {
                let cluster = limits.cluster().unwrap();
                maintain(cluster, limits.shared(), crate::clock::unix_ms(), true);
            }
            std::thread::sleep(Duration::from_millis(EXHAUSTED_FOR_MS + 100));
            for (limits, _) in &results {
                accepted += send(limits, &c, 1100);
                let cluster = limits.cluster().unwrap();
                maintain(cluster, limits.shared(), crate::clock::unix_ms(), true);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        assert_eq!(accepted, 1030, "the plan and the credits, exactly");
    }

    #[test]
    fn at_full_speed_a_node_asks_redis_about_once_per_hundreds_of_messages() {
        let redis = RedisServer::start();
        let limits = node(&redis, "fast", OnRedisDown::LocalShare);
        let c = customer(1_000_000, 0);
        let before = limits.cluster().unwrap().health().round_trips();
        assert_eq!(send(&limits, &c, 20_000), 20_000);
        let trips = limits.cluster().unwrap().health().round_trips() - before;
        // Heartbeats (every 100 ms here) are counted too: the bound is loose on purpose.
        assert!(
            trips * 100 <= 20_000,
            "{trips} round trips for 20000 messages"
        );
    }

    #[test]
    fn redis_down_tempfail_refuses_once_the_lease_is_spent() {
        let mut redis = RedisServer::start();
        let limits = node(&redis, "t", OnRedisDown::Tempfail);
        let c = customer(1000, 0);
        assert_eq!(send(&limits, &c, 1), 1, "takes a lease");
        redis.stop();
        let cluster = limits.cluster().unwrap().clone();
        // What the lease holds is still good; then 451 4.3.0.
        let results = run(async {
            let mut results = Vec::new();
            for _ in 0..200 {
                results.push(limits.charge(Some(&c), crate::clock::unix_ms()).await);
            }
            results
        });
        let refused = results.iter().filter(|r| r.is_err()).count();
        assert!(refused > 0, "the lease of 64 ran out");
        assert!(matches!(
            results.last(),
            Some(Err(Refusal::Unavailable { .. }))
        ));
        assert!(!cluster.health().is_up());
    }

    #[test]
    fn redis_down_local_share_enforces_its_share_then_reconciles() {
        let mut redis = RedisServer::start();
        let limits = node(&redis, "l", OnRedisDown::LocalShare);
        let c = customer(100, 0);
        let cluster = limits.cluster().unwrap().clone();
        redis.stop();
        // One live node (this one): its share is the whole limit, on its own count.
        let accepted = send(&limits, &c, 150);
        assert_eq!(accepted, 100);
        redis.restart();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cluster.health().is_up() {
            assert!(std::time::Instant::now() < deadline, "Redis back");
            std::thread::sleep(Duration::from_millis(20));
        }
        maintain(&cluster, limits.shared(), crate::clock::unix_ms(), false);
        let totals = run(async {
            let mut totals = quota::Usage::default();
            for _ in 0..100 {
                totals = cluster_usage(&cluster, "acme", crate::clock::unix_ms())
                    .await
                    .unwrap();
                if totals.hour > 0 {
                    break;
                }
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            totals
        });
        assert_eq!(
            totals.hour, 100,
            "what was accepted during the outage reached Redis"
        );
        assert_eq!(send(&limits, &c, 10), 0, "and the cluster's limit holds");
    }
}
