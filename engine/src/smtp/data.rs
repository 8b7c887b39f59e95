//! data: not yet written.
