//! queue: the per-core delivery queues, one per (VMTA, destination domain).
//!
//! Pure logic: no IO, no clock. The delivery driver feeds it the time (`now_s`, `now_ms`) and asks:
//! which queues have work (`due`), when to wake next (`next_wakeup`), may a connection open
//! (`try_open_connection`), may a transaction start (`may_send`), and hands failures back (`defer`).
//! Once a second it runs `upkeep`: the queues changed since (for the API), the idle ones freed, the
//! oldest ready recipient waiting with a connection slot free, the stuck queues.
//!
//! Each queue holds a FIFO of ready recipients and its own min-heap of deferred ones; one core-wide
//! heap of wake-ups, one live entry per queue, tells `due` which queues to look at.
//! A cluster-shaped queue (`[[domain]] cluster = true`) also keeps what it holds of the cluster's
//! caps (`cluster_share.rs`): reserved send times, a wait for a connection lease, a local share. See `queues.rs`
//! for why a heap with lazy deletion rather than a timer wheel, and for the memory cost per recipient.

pub mod backoff;
mod cluster_share;
mod connection_cap;
mod policy;
mod queues;
mod rate;

pub use backoff::{BackoffSettings, BackoffState, LeaveReason, Transition};
pub use cluster_share::{MAX_RESERVE, SendSpacing};
pub use connection_cap::{CAP_RAISE_AFTER_DELIVERIES, CapChange};
pub use policy::{ClusterScope, MIN_RETRY_INTERVAL_S, PolicyError, QueuePolicy};
pub use queues::{
    DEFAULT_QUEUE_IDLE_S, DeferOutcome, FoundRecipient, MAX_REPLY_TEXT_BYTES, QueueKey,
    QueueSnapshot, QueueState, QueueStats, QueuedRecipient, Queues, RateWait, STUCK_AFTER_S,
    ScanCursor, Stuck, Upkeep,
};
pub use rate::{RateLimiter, SendRate};
