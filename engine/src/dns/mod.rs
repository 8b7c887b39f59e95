//! DNS for delivery: a per-core stub resolver on hickory-proto messages over glommio UDP (TCP when
//! truncated), with a TTL cache and negative caching, and the RFC 5321 5.1 next-hop selection.

mod cache;
#[doc(hidden)]
pub mod fuzzing;
mod next_hop;
mod resolver;
#[cfg(test)]
mod tests;
mod transport;

pub use cache::{AnswerCache, CachedAnswer};
pub use next_hop::{NextHop, NextHops, order_by_preference};
pub use resolver::{
    Authenticated, DnsError, MAX_CNAME_HOPS, MxAnswer, MxRecord, Resolver, ResolverConfig,
    nameservers_from_resolv_conf,
};
pub use transport::EDNS_UDP_PAYLOAD_BYTES;
