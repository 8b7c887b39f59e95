//! Volley: a thread-per-core mail transfer agent.
//!
//! The modules follow the path of a message: `listener` accepts connections and drives the sans-IO
//! `smtp::server`; `spool` makes each message durable; `router` hands recipients to the core that owns
//! their (VMTA, domain) `queue`; `delivery` drives `smtp::client` over source-bound sockets; `bounce`
//! reports failures; `accounting` records every outcome.

pub mod accounting;
pub mod api;
pub mod auth;
pub mod bounce;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod dkim;
pub mod dns;
pub mod envelope;
pub mod intake;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod number_text;
pub mod placement;
pub mod queue;
pub mod reputation;
pub mod rfc5322;
pub mod router;
pub mod runtime;
pub mod shard;
pub mod smtp;
pub mod spam_filter;
pub mod spool;
pub mod suppression;
pub mod transport_security;
pub mod webhook;
