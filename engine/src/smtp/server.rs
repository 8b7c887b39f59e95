//! server: not yet written.
