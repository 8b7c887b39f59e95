//! queue: not yet written.
