//! spool: not yet written.
