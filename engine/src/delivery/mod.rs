//! delivery: not yet written.
