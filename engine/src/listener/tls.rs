//! The server side of TLS: the configured certificate and key, or a self-signed certificate for the
//! host name made at start when none is configured (no `[tls]`, or one with only `trust_anchors`) (so the embedded default offers STARTTLS at once).
//! The self-signed one is valid for a year from its making (an hour back for clock skew), and its
//! making is logged as a warning: it is for trying Volley out, not for production.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

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
    let files = section.and_then(|s| Some((s.certificate.as_deref()?, s.private_key.as_deref()?)));
    let (chain, key) = match files {
        Some((certificate, private_key)) => load(certificate, private_key)?,
        None => {
            let made = self_signed(hostname, crate::clock::unix_s())?;
            log::warn!(
                "no [tls] section: TLS listeners serve a self-signed certificate for {hostname}, \
                 valid until {}; clients that verify certificates will refuse it",
                made.not_after.date()
            );
            (made.chain, made.key)
        }
    };
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

fn load(
    certificate: &str,
    private_key: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsSetupError> {
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsSetupError::Certificate {
            path: certificate.to_string(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: certificate.to_string(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_file(private_key).map_err(|source| TlsSetupError::PrivateKey {
            path: private_key.to_string(),
            source,
        })?;
    Ok((chain, key))
}

/// How long a self-signed certificate is valid.
const SELF_SIGNED_VALIDITY_DAYS: i64 = 365;

struct SelfSigned {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_after: OffsetDateTime,
}

fn self_signed(hostname: &str, now_s: u64) -> Result<SelfSigned, TlsSetupError> {
    let now = i64::try_from(now_s)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(SELF_SIGNED_VALIDITY_DAYS);
    let signing_key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&signing_key)?;
    Ok(SelfSigned {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(signing_key.serialize_der().into()),
        not_after: params.not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_config_builds() {
        assert!(server_config(None, "mta.test").is_ok());
    }

    #[test]
    fn self_signed_certificate_is_valid_for_a_year_from_now() {
        // 2026-12-01 12:00:00 UTC
        let made = self_signed("mta.test", 1_796_126_400).unwrap();
        let der: &[u8] = made.chain[0].as_ref();
        // X.509 validity before 2050 is UTCTime, YYMMDDHHMMSSZ.
        let has = |time: &[u8]| der.windows(time.len()).any(|w| w == time);
        assert!(has(b"261201110000Z"), "not before: an hour back");
        assert!(has(b"271201120000Z"), "not after: 365 days on");
        assert!(!has(b"750101000000Z"), "no longer from 1975");
        assert_eq!(made.not_after.year(), 2027);
    }

    #[test]
    fn missing_files_are_named() {
        let s = TlsSection {
            certificate: Some("/nonexistent/cert.pem".into()),
            private_key: Some("/nonexistent/key.pem".into()),
            trust_anchors: Vec::new(),
        };
        let e = server_config(Some(&s), "x").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    }
}
