//! runtime: not yet written.
