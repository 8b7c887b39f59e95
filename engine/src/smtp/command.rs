//! command: not yet written.
