//! The C ABI: not yet written.
