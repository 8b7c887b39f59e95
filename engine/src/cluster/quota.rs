//! A customer's plan and credits, shared by the nodes in Redis, handed out as leases.
//!
//! Redis holds, per customer, the messages counted in the current UTC hour and day and the credits
//! spent. A node never asks Redis per message: it leases a block (one Lua script, atomic), spends
//! it locally, and gives back what it did not use. A lease is taken from the room left under the
//! limit, so the total of all leases never exceeds the limit: the nodes together cannot accept one
//! message more than the plan (overrun 0). What a lease costs is the other side: quota leased by
//! one node is not available to another until used or given back, so a block is at most
//! `room / (2 x live nodes)` and shrinks as the room does (to 1 message near the limit).
//!
//! Keys (`{customer}` is a Redis Cluster hash tag: one customer's keys live on one shard):
//! `volley:{c}:h:<hours since epoch>`, `volley:{c}:d:<days since epoch>` (expire after their
//! window), `volley:{c}:credits_spent`, `volley:{c}:credits_added` (top-ups through the API, on
//! top of the configured `credits`).

/// Grants a lease: plan first (the smaller room of hour and day), credits once the plan is used
/// up. Returns {plan, credits, hour count, day count, credits spent, exhausted: 0 | 1 hour | 2 day}.
const LEASE: &str = r#"
local hl = tonumber(ARGV[1])
local dl = tonumber(ARGV[2])
local bought = tonumber(ARGV[3]) + tonumber(redis.call('GET', KEYS[4]) or '0')
local want = tonumber(ARGV[4])
local nodes = math.max(1, tonumber(ARGV[5]))
local h = tonumber(redis.call('GET', KEYS[1]) or '0')
local d = tonumber(redis.call('GET', KEYS[2]) or '0')
local spent = tonumber(redis.call('GET', KEYS[3]) or '0')
local limited = false
local room = 0
local which = 0
if hl >= 0 then limited = true; room = hl - h; which = 1 end
if dl >= 0 and ((not limited) or dl - d < room) then limited = true; room = dl - d; which = 2 end
local function share(r) return math.max(1, math.floor(r / (2 * nodes))) end
local plan = 0
if not limited then plan = want elseif room > 0 then plan = math.min(want, share(room)) end
if plan > 0 then
  h = redis.call('INCRBY', KEYS[1], plan)
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
  d = redis.call('INCRBY', KEYS[2], plan)
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
  which = 0
end
local credits = 0
if plan == 0 and bought > spent then
  credits = math.min(want, share(bought - spent))
  spent = redis.call('INCRBY', KEYS[3], credits)
end
return {plan, credits, h, d, spent, which}
"#;

/// Gives back an unused lease (never below zero).
const GIVE_BACK: &str = r#"
local p = tonumber(ARGV[1])
local c = tonumber(ARGV[2])
local function back(key, n)
  if n <= 0 then return end
  local v = tonumber(redis.call('GET', key) or '0')
  if v > 0 then redis.call('DECRBY', key, math.min(n, v)) end
end
back(KEYS[1], p)
back(KEYS[2], p)
back(KEYS[3], c)
return 1
"#;

const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// One customer's keys for one (hour, day) window pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaKeys {
    hour: String,
    day: String,
    credits: String,
    credits_added: String,
}

impl QuotaKeys {
    pub fn new(customer: &str, hour: u32, day: u32) -> QuotaKeys {
        QuotaKeys {
            hour: format!("volley:{{{customer}}}:h:{hour}"),
            day: format!("volley:{{{customer}}}:d:{day}"),
            credits: format!("volley:{{{customer}}}:credits_spent"),
            credits_added: format!("volley:{{{customer}}}:credits_added"),
        }
    }
}

/// What a lease asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseAsk {
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
    pub credits_bought: u64,
    pub want: u32,
    pub live_nodes: u32,
}

/// Which plan limit a lease found used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    Hour,
    Day,
}

/// What Redis granted, and the cluster's totals after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grant {
    pub plan: u32,
    pub credits: u32,
    pub hour_count: u64,
    pub day_count: u64,
    pub credits_spent: u64,
    /// Set when nothing of the plan was left (`plan` is then 0).
    pub exhausted: Option<Exhausted>,
}

fn limit_arg(limit: Option<u32>) -> i64 {
    limit.map_or(-1, i64::from)
}

/// Takes a lease (one round trip).
pub fn lease(
    connection: &mut redis::Connection,
    keys: &QuotaKeys,
    ask: LeaseAsk,
) -> redis::RedisResult<Grant> {
    let (plan, credits, hour_count, day_count, credits_spent, which): (
        u32,
        u32,
        u64,
        u64,
        u64,
        u8,
    ) = redis::cmd("EVAL")
        .arg(LEASE)
        .arg(4)
        .arg(&keys.hour)
        .arg(&keys.day)
        .arg(&keys.credits)
        .arg(&keys.credits_added)
        .arg(limit_arg(ask.per_hour))
        .arg(limit_arg(ask.per_day))
        .arg(ask.credits_bought)
        .arg(ask.want)
        .arg(ask.live_nodes)
        .arg(2 * HOUR_MS)
        .arg(2 * DAY_MS)
        .query(connection)?;
    Ok(Grant {
        plan,
        credits,
        hour_count,
        day_count,
        credits_spent,
        exhausted: match which {
            1 => Some(Exhausted::Hour),
            2 => Some(Exhausted::Day),
            _ => None,
        },
    })
}

/// Gives back what a lease did not use (one round trip).
pub fn give_back(
    connection: &mut redis::Connection,
    keys: &QuotaKeys,
    plan: u32,
    credits: u32,
) -> redis::RedisResult<()> {
    redis::cmd("EVAL")
        .arg(GIVE_BACK)
        .arg(3)
        .arg(&keys.hour)
        .arg(&keys.day)
        .arg(&keys.credits)
        .arg(plan)
        .arg(credits)
        .query::<i64>(connection)
        .map(|_| ())
}

/// Adds what a node accepted on its own while Redis was down, with no limit check: the cluster's
/// totals then show what was really sent (one round trip).
pub fn add_usage(
    connection: &mut redis::Connection,
    keys: &QuotaKeys,
    plan: u32,
    credits: u32,
) -> redis::RedisResult<()> {
    redis::pipe()
        .atomic()
        .cmd("INCRBY")
        .arg(&keys.hour)
        .arg(plan)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&keys.hour)
        .arg(2 * HOUR_MS)
        .ignore()
        .cmd("INCRBY")
        .arg(&keys.day)
        .arg(plan)
        .ignore()
        .cmd("PEXPIRE")
        .arg(&keys.day)
        .arg(2 * DAY_MS)
        .ignore()
        .cmd("INCRBY")
        .arg(&keys.credits)
        .arg(credits)
        .ignore()
        .query::<()>(connection)
}

/// The cluster's counts of a customer for a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub hour: u64,
    pub day: u64,
    pub credits_spent: u64,
    pub credits_added: u64,
}

/// The cluster's counts for a window (one round trip).
pub fn usage(connection: &mut redis::Connection, keys: &QuotaKeys) -> redis::RedisResult<Usage> {
    let values: Vec<Option<u64>> = redis::cmd("MGET")
        .arg(&keys.hour)
        .arg(&keys.day)
        .arg(&keys.credits)
        .arg(&keys.credits_added)
        .query(connection)?;
    let at = |i: usize| values.get(i).copied().flatten().unwrap_or(0);
    Ok(Usage {
        hour: at(0),
        day: at(1),
        credits_spent: at(2),
        credits_added: at(3),
    })
}

/// Adds prepaid credits (a top-up); returns the credits added so far. Atomic with every lease:
/// the lease script reads them in the same step it spends them.
pub fn add_credits(
    connection: &mut redis::Connection,
    keys: &QuotaKeys,
    add: u64,
) -> redis::RedisResult<u64> {
    redis::cmd("INCRBY")
        .arg(&keys.credits_added)
        .arg(add)
        .query(connection)
}
