//! auth: not yet written.
