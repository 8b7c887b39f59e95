//! Cluster-wide shaping in Redis (`[[domain]] cluster = true`): connection leases and reserved
//! send times, shared by every node sending under one shaping key. Each function is one round trip
//! (one Lua script), run on the link thread; times are Redis's own clock (`TIME`), so the nodes'
//! clocks need not agree.
//!
//! Keys (`{domain}` is a Redis Cluster hash tag: one domain's keys live on one shard; the domain
//! is the queue's, so a `[[rollup]]` group's name):
//! - `volley:shape:{<domain>}:vmta:<vmta>:conn|rate`: scope (VMTA, domain), an entry with `vmta`;
//! - `volley:shape:{<domain>}:all:conn|rate`: scope domain, every VMTA of every node.
//!
//! `conn` is a sorted set: member = `node:core:connection`, score = when its lease expires (ms).
//! `rate` holds the theoretical arrival time (µs) of the cluster's GCRA for that key.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::queue::{ClusterScope, SendSpacing};

/// A connection lease lasts this long unless renewed: a node killed with -9 frees its
/// connections' slots after at most this long.
pub const LEASE_MS: u64 = 30_000;
/// Live connections' leases are renewed this often (3 renewals per lease: two may be missed).
pub const RENEW_EVERY_MS: u64 = 10_000;
/// Reserved sends reach at most this far ahead of now (or one interval, when longer): the room
/// that `room / (2 x live nodes)` divides.
pub const RESERVE_AHEAD_MS: u64 = 2_000;
/// Leases renewed in one script at most (a core with more renews in several).
pub const RENEW_BATCH: usize = 1_000;

/// Drops expired leases, then adds (or renews) the member if it holds one or the set is below
/// the cap. Returns {1 granted | 0 full, leases held now}.
const ACQUIRE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local held = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or held < cap then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2 * lease)
  return {1, redis.call('ZCARD', KEYS[1])}
end
return {0, held}
"#;

/// Renews leases: KEYS[i] with member ARGV[i + 1], whatever the cap (the connection is open: the
/// set must say so, also after Redis lost it). Returns how many.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local expiry = string.format('%.0f', now + lease)
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, expiry, ARGV[i + 1])
  redis.call('PEXPIRE', key, 2 * lease)
end
return #KEYS
"#;

/// Reserves up to `want` send times of the cluster's GCRA: from the later of its theoretical
/// arrival time and now + early, spaced `interval`, within `ahead` of that; at most
/// room / (2 x nodes) of the room left there (at least 1). Returns {count, µs from now to the
/// first, the first (Redis time, µs)}, or {0, µs until one fits, the next free time}.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local early = tonumber(ARGV[2])
local ahead = math.max(tonumber(ARGV[3]), interval)
local want = tonumber(ARGV[4])
local nodes = math.max(1, tonumber(ARGV[5]))
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = math.max(tat, now + early)
local last = now + early + ahead
if first > last then return {0, first - last, first} end
local room = math.floor((last - first) / interval) + 1
local n = math.min(want, math.max(1, math.floor(room / (2 * nodes))))
local after = first + n * interval
redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', math.floor((after - now) / 1000) + 1000)
return {n, first - now, first}
"#;

/// The Redis keys of one shaping key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapingKeys {
    pub conn: String,
    pub rate: String,
}

impl ShapingKeys {
    /// The keys for a queue of `vmta` to `domain` under `scope`.
    pub fn new(scope: ClusterScope, vmta: &str, domain: &str) -> ShapingKeys {
        let base = match scope {
            ClusterScope::Vmta => format!("volley:shape:{{{domain}}}:vmta:{vmta}"),
            ClusterScope::Domain => format!("volley:shape:{{{domain}}}:all"),
        };
        ShapingKeys {
            conn: format!("{base}:conn"),
            rate: format!("{base}:rate"),
        }
    }
}

/// What `acquire` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseAnswer {
    pub granted: bool,
    /// Leases of the key held now, across the cluster (this one included when granted).
    pub held: u32,
}

/// Takes (or renews) a connection lease for `member` if fewer than `cap` are held.
pub fn acquire(
    connection: &mut redis::Connection,
    conn_key: &str,
    member: &str,
    cap: u32,
    lease_ms: u64,
) -> redis::RedisResult<LeaseAnswer> {
    let (granted, held): (u8, u32) = redis::cmd("EVAL")
        .arg(ACQUIRE)
        .arg(1)
        .arg(conn_key)
        .arg(member)
        .arg(cap)
        .arg(lease_ms)
        .query(connection)?;
    Ok(LeaseAnswer {
        granted: granted == 1,
        held,
    })
}

/// Renews the leases (key, member) for another `lease_ms`, whatever the caps.
pub fn renew(
    connection: &mut redis::Connection,
    leases: &[(String, String)],
    lease_ms: u64,
) -> redis::RedisResult<()> {
    for batch in leases.chunks(RENEW_BATCH) {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RENEW).arg(batch.len());
        for (key, _) in batch {
            cmd.arg(key);
        }
        cmd.arg(lease_ms);
        for (_, member) in batch {
            cmd.arg(member);
        }
        cmd.query::<u32>(connection)?;
    }
    Ok(())
}

/// Gives a lease back (the connection closed).
pub fn release(
    connection: &mut redis::Connection,
    conn_key: &str,
    member: &str,
) -> redis::RedisResult<()> {
    redis::cmd("ZREM")
        .arg(conn_key)
        .arg(member)
        .query::<u32>(connection)
        .map(|_| ())
}

/// What `reserve` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// Sends reserved (0: none fits in the horizon now).
    pub count: u32,
    /// With sends: µs from Redis's now to the first. Without: µs until asking again may help.
    pub in_us: u64,
    /// The first send's time (or the next free one), on Redis's clock (µs since the epoch).
    pub first_us: u64,
}

/// Reserves up to `want` sends of the key's GCRA for one of `live_nodes` nodes.
pub fn reserve(
    connection: &mut redis::Connection,
    rate_key: &str,
    spacing: SendSpacing,
    want: u32,
    live_nodes: u32,
) -> redis::RedisResult<Reservation> {
    let (count, in_us, first_us): (u32, u64, u64) = redis::cmd("EVAL")
        .arg(RESERVE)
        .arg(1)
        .arg(rate_key)
        .arg(spacing.interval_us)
        .arg(spacing.early_us)
        .arg(RESERVE_AHEAD_MS * 1_000)
        .arg(want)
        .arg(live_nodes)
        .query(connection)?;
    Ok(Reservation {
        count,
        in_us,
        first_us,
    })
}

/// This node's shaping figures for `GET /metrics`, shared by its cores.
#[derive(Debug)]
pub struct ShapingStats {
    /// Connections of cluster-shaped queues open now, each holding a lease (or, while Redis is
    /// down, a place in this node's local share).
    pub connection_leases: AtomicU64,
    /// Times a cluster-shaped queue waited for the cluster: no connection lease, no send time
    /// free now (the rate is reached cluster-wide), or Redis down with `on_redis_down =
    /// "tempfail"`.
    pub waits: AtomicU64,
    /// The link epoch of the last outage warned about (one WARN line per outage).
    pub warned_epoch: AtomicU64,
}

impl Default for ShapingStats {
    fn default() -> ShapingStats {
        ShapingStats {
            connection_leases: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            warned_epoch: AtomicU64::new(u64::MAX),
        }
    }
}

impl ShapingStats {
    pub fn waited(&self) {
        self.waits.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::tests::RedisServer;

    fn held(c: &mut redis::Connection, key: &str) -> u32 {
        redis::cmd("ZCARD").arg(key).query(c).unwrap()
    }

    #[test]
    fn keys_name_the_scope() {
        let k = ShapingKeys::new(ClusterScope::Vmta, "v1", "gmail.com");
        assert_eq!(k.conn, "volley:shape:{gmail.com}:vmta:v1:conn");
        let k = ShapingKeys::new(ClusterScope::Domain, "v1", "gmail.com");
        assert_eq!(k.rate, "volley:shape:{gmail.com}:all:rate");
    }

    #[test]
    fn connection_leases_stop_at_the_cap_and_come_back_at_release() {
        let redis = RedisServer::start();
        let mut c = redis.connection();
        let key = "volley:shape:{d.test}:all:conn";
        let a = acquire(&mut c, key, "a:0:1", 2, LEASE_MS).unwrap();
        assert_eq!((a.granted, a.held), (true, 1));
        assert!(acquire(&mut c, key, "b:0:1", 2, LEASE_MS).unwrap().granted);
        let full = acquire(&mut c, key, "b:0:2", 2, LEASE_MS).unwrap();
        assert_eq!((full.granted, full.held), (false, 2));
        // A holder asking again renews its own lease; it does not take a second one.
        assert!(acquire(&mut c, key, "a:0:1", 2, LEASE_MS).unwrap().granted);
        assert_eq!(held(&mut c, key), 2);
        release(&mut c, key, "a:0:1").unwrap();
        assert!(acquire(&mut c, key, "b:0:2", 2, LEASE_MS).unwrap().granted);
        assert_eq!(held(&mut c, key), 2);
    }

    #[test]
    fn a_dead_nodes_leases_expire_and_renewed_ones_stay() {
        let redis = RedisServer::start();
        let mut c = redis.connection();
        let key = "volley:shape:{d.test}:vmta:v1:conn";
        // "dead" (killed with -9) never renews; "live" does.
        assert!(acquire(&mut c, key, "dead:0:1", 2, 300).unwrap().granted);
        assert!(acquire(&mut c, key, "live:0:1", 2, 300).unwrap().granted);
        assert!(!acquire(&mut c, key, "new:0:1", 2, 300).unwrap().granted);
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(150));
            renew(&mut c, &[(key.to_string(), "live:0:1".to_string())], 300).unwrap();
        }
        let answer = acquire(&mut c, key, "new:0:1", 2, 300).unwrap();
        assert_eq!(
            (answer.granted, answer.held),
            (true, 2),
            "the dead node's slot is free, the renewed one still held"
        );
        // A renewal puts back a lease that Redis lost (restarted empty), over the cap if need be:
        // the set says what is open.
        redis::cmd("DEL").arg(key).query::<u32>(&mut c).unwrap();
        assert!(acquire(&mut c, key, "x:0:1", 1, 300).unwrap().granted);
        renew(&mut c, &[(key.to_string(), "live:0:1".to_string())], 300).unwrap();
        assert_eq!(held(&mut c, key), 2);
        assert!(!acquire(&mut c, key, "y:0:1", 2, 300).unwrap().granted);
    }

    #[test]
    fn reservations_are_spaced_shared_and_bounded_by_the_horizon() {
        let redis = RedisServer::start();
        let mut c = redis.connection();
        let key = "volley:shape:{d.test}:all:rate";
        // 6000/min: a send every 10 ms, usable 590 ms early (a burst of 60); 2 s ahead of the
        // first usable time hold 201 sends.
        let spacing = SendSpacing::of(Some(6_000), None).unwrap();
        let first = reserve(&mut c, key, spacing, 100, 2).unwrap();
        assert_eq!(first.count, 50, "room 201 / (2 x 2 nodes)");
        assert!(
            (585_000..=590_000).contains(&first.in_us),
            "the first send is `early` ahead: {}",
            first.in_us
        );
        let second = reserve(&mut c, key, spacing, 100, 2).unwrap();
        assert_eq!(second.count, 37, "room 151 / 4");
        let gap = second.in_us.saturating_sub(first.in_us);
        assert!(
            (495_000..=500_000).contains(&gap),
            "the second block follows the first: {gap}"
        );
        let mut total = first.count + second.count;
        loop {
            let r = reserve(&mut c, key, spacing, 100, 2).unwrap();
            if r.count == 0 {
                assert!(r.in_us <= 10_000, "one interval at most: {}", r.in_us);
                break;
            }
            total += r.count;
        }
        assert!(
            (201..=205).contains(&total),
            "never more than the horizon: {total}"
        );
        // One node alone: half the room; never more than asked.
        let key = "volley:shape:{e.test}:all:rate";
        assert_eq!(reserve(&mut c, key, spacing, 1_000, 1).unwrap().count, 100);
        assert_eq!(reserve(&mut c, key, spacing, 3, 1).unwrap().count, 3);
    }

    /// Two nodes reserving as fast as they can for 3 s at 1200/min: the reserved times never
    /// come closer than the interval, so no window holds more than the limit allows.
    #[test]
    fn two_nodes_reserving_at_full_speed_get_distinct_spaced_times() {
        let redis = RedisServer::start();
        let spacing = SendSpacing::of(Some(1_200), None).unwrap();
        let key = "volley:shape:{f.test}:all:rate";
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let url = redis.url();
                std::thread::spawn(move || {
                    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
                    let start = std::time::Instant::now();
                    let mut times = Vec::new();
                    while start.elapsed() < Duration::from_secs(3) {
                        let r = reserve(&mut c, key, spacing, 8, 2).unwrap();
                        if r.count == 0 {
                            std::thread::sleep(Duration::from_micros(r.in_us));
                            continue;
                        }
                        let first = r.first_us;
                        times.extend((0..u64::from(r.count)).map(|i| first + i * 50_000));
                    }
                    times
                })
            })
            .collect();
        let mut times: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        times.sort_unstable();
        let closest = times.windows(2).map(|w| w[1] - w[0]).min().unwrap();
        assert!(closest >= 50_000, "two sends {closest} µs apart");
        assert!(times.len() >= 55, "{} sends reserved in 3 s", times.len());
    }
}
