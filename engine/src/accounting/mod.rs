//! accounting: not yet written.
