//! Several nodes as one platform, on Redis: the link to Redis (its own thread), the node registry
//! (heartbeats), and the Lua scripts behind the shared customer limits (leases). What is shared and
//! what stays per node is in docs/cluster.md.

pub mod link;
pub mod quota;
pub mod registry;
pub mod shaping;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::{ClusterSection, OnRedisDown};
pub use link::{Health, Link, LinkError, LinkStartError};
pub use registry::{NodeEntry, NodeStatus};

/// This node's membership: its name, the Redis link, and what to do while Redis is down.
pub struct Cluster {
    pub node: String,
    pub on_redis_down: OnRedisDown,
    pub heartbeat_ms: u64,
    pub link: Link,
    /// Connection leases and waits of cluster-shaped queues (`delivery::shaping`).
    pub shaping: shaping::ShapingStats,
}

impl Cluster {
    /// Starts the link thread; `status` is read at every heartbeat (from that thread).
    pub fn start(
        section: &ClusterSection,
        status: Box<dyn Fn() -> NodeStatus + Send>,
    ) -> Result<Arc<Cluster>, LinkStartError> {
        let node = section.node.clone();
        let period_ms = section.heartbeat_ms;
        let beat_node = node.clone();
        let link = Link::start(
            link::LinkSettings {
                url: section.redis.clone(),
                timeout: Duration::from_millis(section.redis_timeout_ms),
                period: Duration::from_millis(period_ms),
            },
            Box::new(move |connection, health| {
                registry::heartbeat(
                    connection,
                    health,
                    &beat_node,
                    &status(),
                    period_ms,
                    crate::clock::unix_ms(),
                )
            }),
        )?;
        Ok(Arc::new(Cluster {
            node,
            on_redis_down: section.on_redis_down,
            heartbeat_ms: period_ms,
            link,
            shaping: shaping::ShapingStats::default(),
        }))
    }

    pub fn health(&self) -> &Health {
        &self.link.health
    }

    /// The `volley_cluster_*` lines of `GET /metrics`.
    pub fn render_metrics(&self) -> String {
        let h = self.health();
        let lines: [(&str, &str, &str, u64); 6] = [
            (
                "volley_cluster_redis_up",
                "gauge",
                "1 while this node reaches Redis",
                u64::from(h.is_up()),
            ),
            (
                "volley_cluster_live_nodes",
                "gauge",
                "Nodes with a recent heartbeat, this one included",
                u64::from(h.live_nodes()),
            ),
            (
                "volley_cluster_redis_round_trips_total",
                "counter",
                "Commands, pipelines and scripts run on Redis",
                h.round_trips(),
            ),
            (
                "volley_cluster_redis_outages_total",
                "counter",
                "Times the connection to Redis was lost",
                h.outages(),
            ),
            (
                "volley_cluster_connection_leases",
                "gauge",
                "Connections of cluster-shaped queues open on this node, each holding a lease",
                self.shaping.connection_leases.load(Ordering::Relaxed),
            ),
            (
                "volley_cluster_shaping_waits_total",
                "counter",
                "Times a cluster-shaped queue waited for the cluster (connection cap, send rate reached, Redis down in tempfail)",
                self.shaping.waits.load(Ordering::Relaxed),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in lines {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
        out
    }

    /// Every node of the registry (one round trip on the link).
    pub async fn nodes(&self) -> Result<Vec<NodeEntry>, LinkError> {
        let period_ms = self.heartbeat_ms;
        self.link
            .call(move |c| registry::list(c, period_ms, crate::clock::unix_ms()))
            .await
    }
}
