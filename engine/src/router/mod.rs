//! router: not yet written.
