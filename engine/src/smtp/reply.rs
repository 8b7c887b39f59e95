//! reply: not yet written.
