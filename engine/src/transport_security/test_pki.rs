//! Certificates for the unit tests: a CA, intermediates and server certificates made with rcgen.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, PublicKeyData,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate and its key.
pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
}

impl Leaf {
    /// The DER SubjectPublicKeyInfo of its key (TLSA selector 1).
    pub fn spki(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.serialize_der().into())
    }

    /// A TLS server presenting this certificate alone (ring, safe defaults, no client auth).
    pub fn server_config(&self) -> std::sync::Arc<rustls::ServerConfig> {
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_no_client_auth()
        .with_single_cert(vec![self.cert.clone()], self.private_key())
        .expect("a certificate and its own key");
        std::sync::Arc::new(config)
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(30);
    params
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(ca_params(name), key).expect("CA"),
        }
    }

    /// A CA whose certificate this one signs.
    pub fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::signed_by(ca_params(name), key, &self.issuer)
                .expect("intermediate"),
        }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names`, valid from yesterday for 30 days.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let now = OffsetDateTime::now_utc();
        self.issue_valid(names, now - Duration::days(1), now + Duration::days(30))
    }

    /// A server certificate for `names` valid from `not_before` to `not_after`.
    pub fn issue_valid(
        &self,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("names");
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            cert: cert.der().clone(),
            key,
        }
    }
}
