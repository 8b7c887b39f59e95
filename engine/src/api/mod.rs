//! api: not yet written.
