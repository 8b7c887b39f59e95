//! DANE for SMTP (RFC 7672): the usable TLSA records of an MX host (`tlsa`), the SPKI of a
//! certificate (`x509`), and the certificate check of a connection under them (`verifier`).
//! Whether DNS answers are validated comes from the resolver (`[dns] dnssec = "trust-ad"`).

pub mod tlsa;
pub mod verifier;
pub mod x509;

pub use tlsa::{Tlsa, usable};
pub use verifier::DaneVerifier;
