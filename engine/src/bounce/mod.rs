//! bounce: what to tell the sender when a recipient fails.
//!
//! `category` turns a remote SMTP reply into a `BounceCategory` for accounting and the API;
//! `dsn` builds the RFC 3464 delivery status notification and decides whether one is due at all
//! (never for the null sender, and only as NOTIFY asks). Pure logic: no IO, no clock.

mod category;
mod dsn;

pub use category::{BounceCategory, classify};
pub use dsn::{
    DEFAULT_MAX_RETURNED_BYTES, DiagnosticType, DsnAction, DsnInput, RecipientReport, build_dsn,
    build_dsn_with_rng, dsn_envelope, should_bounce, should_report,
};
