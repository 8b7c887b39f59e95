//! The server side of TLS: the configured certificate and key, or a self-signed certificate for the
//! host name made at start when none is configured (so the embedded default offers STARTTLS at once).

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSection;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("reading certificate {path}: {source}")]
    Certificate {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("reading private key {path}: {source}")]
    PrivateKey {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("making a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The acceptor configuration for every TLS listener.
pub fn server_config(
    section: Option<&TlsSection>,
    hostname: &str,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let (chain, key) = match section {
        Some(s) => load(s)?,
        None => self_signed(hostname)?,
    };
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

fn load(
    s: &TlsSection,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let chain = CertificateDer::pem_file_iter(&s.certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsSetupError::Certificate {
            path: s.certificate.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: s.certificate.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&s.private_key).map_err(|source| {
        TlsSetupError::PrivateKey {
            path: s.private_key.clone(),
            source,
        }
    })?;
    Ok((chain, key))
}

fn self_signed(
    hostname: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let made = rcgen::generate_simple_self_signed(vec![hostname.to_string()])?;
    let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    Ok((vec![made.cert.der().clone()], key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_config_builds() {
        assert!(server_config(None, "mta.test").is_ok());
    }

    #[test]
    fn missing_files_are_named() {
        let s = TlsSection {
            certificate: "/nonexistent/cert.pem".into(),
            private_key: "/nonexistent/key.pem".into(),
        };
        let e = server_config(Some(&s), "x").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    }
}
