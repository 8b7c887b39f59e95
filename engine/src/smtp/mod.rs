//! The SMTP protocol as sans-IO state machines: bytes in, replies and events out, no runtime inside.
