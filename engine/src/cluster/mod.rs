//! Several nodes as one platform, on Redis: the link to Redis (its own thread), the node registry
//! (heartbeats), and the Lua scripts behind the shared customer limits (leases). What is shared and
//! what stays per node is in docs/cluster.md.

pub mod link;
pub mod quota;
pub mod registry;
#[cfg(test)]
mod tests;

use std::sync::Arc;
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
        }))
    }

    pub fn health(&self) -> &Health {
        &self.link.health
    }

    /// Every node of the registry (one round trip on the link).
    pub async fn nodes(&self) -> Result<Vec<NodeEntry>, LinkError> {
        let period_ms = self.heartbeat_ms;
        self.link
            .call(move |c| registry::list(c, period_ms, crate::clock::unix_ms()))
            .await
    }
}
