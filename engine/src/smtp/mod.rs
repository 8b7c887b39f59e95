//! The SMTP protocol as sans-IO state machines: bytes in, replies and events out, no runtime inside.
//! `server` is the receiving side (driven by `listener`), `client` the sending side (driven by
//! `delivery`). Unit tests and fuzzers drive them directly.

pub mod client;
pub mod command;
pub mod data;
pub mod reply;
pub mod server;
