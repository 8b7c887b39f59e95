//! bounce: not yet written.
