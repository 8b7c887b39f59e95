//! The node registry in Redis: each node writes a heartbeat (its status and the time) every
//! `heartbeat_ms`; `GET /v1/cluster` reads them all. A node silent for [`LIVE_PERIODS`] heartbeats
//! is not live (it no longer counts in "limit / live nodes"); one silent for [`FORGET_AFTER_MS`]
//! leaves the registry, so the registry stays bounded by the nodes of the last day.
//!
//! Keys: `volley:nodes` (sorted set: node -> last heartbeat, unix ms) and `volley:node:<name>`
//! (that node's status as JSON, expiring with the registry entry).

use serde::{Deserialize, Serialize};

use super::link::Health;

pub const NODES_KEY: &str = "volley:nodes";
/// Heartbeats a node may miss and still count as live.
pub const LIVE_PERIODS: u64 = 3;
/// A node silent this long is dropped from the registry.
pub const FORGET_AFTER_MS: u64 = 86_400_000;
/// Nodes `GET /v1/cluster` lists at most.
pub const MAX_LISTED_NODES: isize = 1_000;

fn node_key(node: &str) -> String {
    format!("volley:node:{node}")
}

/// What a node says about itself in its heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    /// Recipients waiting in its queues (ready or deferred).
    pub queued_recipients: i64,
    pub messages_received: u64,
    pub delivered: u64,
    pub bounced: u64,
    /// Handing its queue to another node.
    #[serde(default)]
    pub draining: bool,
}

/// One node as `GET /v1/cluster` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeEntry {
    pub node: String,
    pub last_seen_ms: u64,
    pub live: bool,
    /// Absent when its status expired before its registry entry.
    pub status: Option<NodeStatus>,
}

/// Writes this node's heartbeat and refreshes the live-node count, in one round trip.
pub fn heartbeat(
    connection: &mut redis::Connection,
    health: &Health,
    node: &str,
    status: &NodeStatus,
    period_ms: u64,
    now_ms: u64,
) -> redis::RedisResult<()> {
    let json = serde_json::to_string(status).unwrap_or_default();
    let live_since = now_ms.saturating_sub(LIVE_PERIODS * period_ms);
    let (live,): (u32,) = redis::pipe()
        .atomic()
        .cmd("ZADD")
        .arg(NODES_KEY)
        .arg(now_ms)
        .arg(node)
        .ignore()
        .cmd("SET")
        .arg(node_key(node))
        .arg(json)
        .arg("PX")
        .arg(FORGET_AFTER_MS)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(NODES_KEY)
        .arg("-inf")
        .arg(format!("({}", now_ms.saturating_sub(FORGET_AFTER_MS)))
        .ignore()
        .cmd("ZCOUNT")
        .arg(NODES_KEY)
        .arg(live_since)
        .arg("+inf")
        .query(connection)?;
    health.set_live_nodes(live);
    Ok(())
}

/// Every node of the registry, most recently seen first.
pub fn list(
    connection: &mut redis::Connection,
    period_ms: u64,
    now_ms: u64,
) -> redis::RedisResult<Vec<NodeEntry>> {
    let seen: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
        .arg(NODES_KEY)
        .arg(0)
        .arg(MAX_LISTED_NODES - 1)
        .arg("WITHSCORES")
        .query(connection)?;
    if seen.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = seen.iter().map(|(n, _)| node_key(n)).collect();
    let statuses: Vec<Option<String>> = redis::cmd("MGET").arg(keys).query(connection)?;
    let live_since = now_ms.saturating_sub(LIVE_PERIODS * period_ms);
    Ok(seen
        .into_iter()
        .zip(statuses)
        .map(|((node, score), status)| {
            let last_seen_ms = score as u64;
            NodeEntry {
                node,
                last_seen_ms,
                live: last_seen_ms >= live_since,
                status: status.and_then(|s| serde_json::from_str(&s).ok()),
            }
        })
        .collect())
}
