//! DKIM private keys: read once per configuration from PEM (PKCS#1 RSA, PKCS#8 RSA or Ed25519).

use std::path::Path;

use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("no PEM private key in {path}: {detail}")]
    Pem { path: String, detail: String },
    #[error("{path}: EC (SEC1) keys are not supported for DKIM; use RSA or Ed25519")]
    Unsupported { path: String },
    #[error("{path}: not a usable RSA or Ed25519 key: {detail}")]
    Rejected { path: String, detail: String },
}

/// A parsed signing key and the DKIM algorithm it signs with.
pub enum SigningKey {
    /// `a=rsa-sha256`.
    Rsa(RsaKeyPair),
    /// `a=ed25519-sha256` (RFC 8463).
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "SigningKey({})", self.algorithm())
    }
}

impl SigningKey {
    /// Reads and parses a PEM key file.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: shown.clone(),
            source,
        })?;
        SigningKey::from_pem(&pem, &shown)
    }

    /// Parses a PEM key; `path` only names it in errors.
    pub fn from_pem(pem: &[u8], path: &str) -> Result<SigningKey, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| KeyError::Pem {
            path: path.to_string(),
            detail: e.to_string(),
        })?;
        let rejected = |detail: String| KeyError::Rejected {
            path: path.to_string(),
            detail,
        };
        match der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
                .map(SigningKey::Rsa)
                .map_err(|e| rejected(e.to_string())),
            PrivateKeyDer::Pkcs8(k) => {
                let der = k.secret_pkcs8_der();
                match RsaKeyPair::from_pkcs8(der) {
                    Ok(rsa) => Ok(SigningKey::Rsa(rsa)),
                    // OpenSSL writes Ed25519 keys as PKCS#8 v1 (no public key inside).
                    Err(rsa_error) => Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                        .map(SigningKey::Ed25519)
                        .map_err(|ed_error| {
                            rejected(format!("as RSA: {rsa_error}; as Ed25519: {ed_error}"))
                        }),
                }
            }
            PrivateKeyDer::Sec1(_) => Err(KeyError::Unsupported {
                path: path.to_string(),
            }),
            _ => Err(KeyError::Unsupported {
                path: path.to_string(),
            }),
        }
    }

    /// The `a=` tag value.
    pub fn algorithm(&self) -> &'static str {
        match self {
            SigningKey::Rsa(_) => "rsa-sha256",
            SigningKey::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// The `k=` tag value of the DNS record.
    pub fn key_type(&self) -> &'static str {
        match self {
            SigningKey::Rsa(_) => "rsa",
            SigningKey::Ed25519(_) => "ed25519",
        }
    }

    /// The public key bytes: PKCS#1 RSAPublicKey DER for RSA, the raw 32 bytes for Ed25519.
    pub fn public_key(&self) -> &[u8] {
        match self {
            SigningKey::Rsa(k) => k.public().as_ref(),
            SigningKey::Ed25519(k) => k.public_key().as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_PKCS8: &[u8] = include_bytes!("../../tests/data/dkim-test-rsa2048.pem");
    const RSA_PKCS1: &[u8] = include_bytes!("../../tests/data/dkim-test-rsa2048-pkcs1.pem");

    #[test]
    fn rsa_in_both_pem_forms() {
        let a = SigningKey::from_pem(RSA_PKCS8, "a.pem").unwrap();
        let b = SigningKey::from_pem(RSA_PKCS1, "b.pem").unwrap();
        assert_eq!(a.algorithm(), "rsa-sha256");
        assert_eq!(a.public_key(), b.public_key());
    }

    #[test]
    fn ed25519_pkcs8() {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, doc.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let key = SigningKey::from_pem(pem.as_bytes(), "ed.pem").unwrap();
        assert_eq!(key.algorithm(), "ed25519-sha256");
        assert_eq!(key.public_key().len(), 32);
    }

    #[test]
    fn bad_files_give_typed_errors() {
        assert!(matches!(
            SigningKey::from_pem(b"not pem", "x.pem"),
            Err(KeyError::Pem { .. })
        ));
        let junk = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let e = SigningKey::from_pem(junk, "x.pem").unwrap_err();
        assert!(matches!(e, KeyError::Rejected { .. }), "{e}");
        assert!(e.to_string().contains("x.pem"));
        assert!(matches!(
            SigningKey::load(Path::new("/nonexistent/dkim.pem")),
            Err(KeyError::Read { .. })
        ));
    }
}
