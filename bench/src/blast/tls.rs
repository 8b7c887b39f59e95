//! The TLS client of `blast --starttls`: rustls with ring, accepting any server certificate.
//!
//! The bench loads servers on loopback with self-signed certificates; verifying them would prove
//! nothing and only add setup. Signatures are still checked, so the handshake does the same work
//! as a verifying client. It is the engine's opportunistic delivery configuration, reused.

use std::sync::Arc;

use rustls::{ClientConfig, Error};

/// A client configuration that accepts any certificate (see the module comment).
pub fn client_config() -> Result<Arc<ClientConfig>, Error> {
    Ok(volley::delivery::ClientTls::new()?.opportunistic)
}
