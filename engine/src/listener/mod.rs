//! Accepting connections: one SO_REUSEPORT socket per listener on every core, TLS (STARTTLS and
//! implicit), and the driver that moves bytes between a socket and `smtp::server::Session`.

pub mod tls;
