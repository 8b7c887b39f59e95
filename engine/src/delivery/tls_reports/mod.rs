//! TLS-RPT reports leaving this node (RFC 8460, docs/transport-security.md): core 0 closes each
//! period (`period`) and sends its reports (`send`), by HTTPS POST or as mail through intake;
//! failed POSTs are retried (`retry`). The
//! counting and the report format are `transport_security::tls_rpt`'s; this is the part that
//! needs the shard, placement and intake, so it lives above them, with delivery.

pub mod period;
pub mod retry;
pub mod send;
