//! listener: not yet written.
