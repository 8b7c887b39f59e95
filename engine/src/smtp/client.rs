//! client: not yet written.
