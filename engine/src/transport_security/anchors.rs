//! `[tls] trust_anchors`: CA certificates (PEM files) trusted for outbound verification besides the
//! Mozilla roots, for a private PKI and for the tests. Read by whoever publishes a configuration
//! (start-up, the signal thread), never on a core.

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Certificates one trust anchor file may hold (a bound on what a wrong path could load).
pub const CERTIFICATES_PER_FILE_MAX: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no certificate")]
    Empty { path: String },
    #[error("{path} holds more than {CERTIFICATES_PER_FILE_MAX} certificates")]
    TooMany { path: String },
    #[error("{path}: certificate {index} is not a usable trust anchor: {reason}")]
    Unusable {
        path: String,
        index: usize,
        reason: String,
    },
}

/// The certificates of one PEM file, each checked to be usable as a trust anchor.
pub fn load_file(path: &str) -> Result<Vec<CertificateDer<'static>>, AnchorError> {
    let read = |reason: String| AnchorError::Read {
        path: path.to_string(),
        reason,
    };
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| read(e.to_string()))? {
        if certs.len() == CERTIFICATES_PER_FILE_MAX {
            return Err(AnchorError::TooMany {
                path: path.to_string(),
            });
        }
        certs.push(cert.map_err(|e| read(e.to_string()))?);
    }
    if certs.is_empty() {
        return Err(AnchorError::Empty {
            path: path.to_string(),
        });
    }
    for (index, cert) in certs.iter().enumerate() {
        RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| AnchorError::Unusable {
                path: path.to_string(),
                index,
                reason: e.to_string(),
            })?;
    }
    Ok(certs)
}

/// Every file's certificates, in order.
pub fn load(paths: &[String]) -> Result<Vec<CertificateDer<'static>>, AnchorError> {
    let mut all = Vec::new();
    for path in paths {
        all.extend(load_file(path)?);
    }
    Ok(all)
}

/// The Mozilla roots (webpki-roots) and `extra`.
pub fn root_store(extra: &[CertificateDer<'static>]) -> RootCertStore {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // Each was checked by `load_file`; none is refused here.
    let _ = roots.add_parsable_certificates(extra.iter().cloned());
    roots
}

/// `[tls] trust_anchors` as the cores will load them: a configuration error per bad file.
pub fn check(config: &crate::config::Config) -> Vec<crate::config::ConfigError> {
    let Some(tls) = &config.tls else {
        return Vec::new();
    };
    tls.trust_anchors
        .iter()
        .enumerate()
        .filter_map(|(i, path)| {
            load_file(path).err().map(|e| crate::config::ConfigError {
                key: format!("tls.trust_anchors[{i}]"),
                line: None,
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_loads_and_other_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = super::super::test_pki::Ca::new("Test CA");
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        let certs = load_file(good.to_str().unwrap()).unwrap();
        assert_eq!(certs.len(), 1);
        let store = root_store(&certs);
        assert_eq!(
            store.roots.len(),
            webpki_roots::TLS_SERVER_ROOTS.len() + 1,
            "added to the Mozilla roots"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no PEM here\n").unwrap();
        let e = load_file(empty.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, AnchorError::Empty { .. }), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = load_file(missing.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = load_file(garbage.to_str().unwrap()).unwrap_err();
        assert!(matches!(e, AnchorError::Unusable { .. }), "{e}");
    }
}
