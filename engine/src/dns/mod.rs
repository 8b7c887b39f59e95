//! dns: not yet written.
