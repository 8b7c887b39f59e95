//! Transport security of outbound SMTP: which TLS a connection to an MX host must use and how its
//! certificate is checked. The client configurations (`client`) with the Mozilla roots and
//! `[tls] trust_anchors` (`anchors`); see docs/transport-security.md.

pub mod anchors;
pub mod client;
pub mod dane;
pub mod mta_sts;
pub mod plan;
#[cfg(test)]
pub(crate) mod test_pki;
pub mod tls_rpt;

pub use client::{ClientTls, anchor_files};
