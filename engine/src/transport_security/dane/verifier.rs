//! The certificate check of a DANE connection (RFC 7672 3.1, RFC 7671 5) as a rustls
//! `ServerCertVerifier`: the server's chain must match one of the MX host's usable TLSA records.
//!
//! - DANE-EE(3): the server's own certificate (or its key) matches; its names and dates are not
//!   checked (RFC 7672 3.1.1).
//! - DANE-TA(2): a certificate of the chain the server sent (or the record itself, for a full
//!   certificate) matches and is taken as the only trust anchor; the server's certificate must
//!   chain to it, be within its dates, and carry the MX host name or the destination domain
//!   (RFC 7672 3.2.2).
//!
//! The handshake's signature is checked as always, against the presented certificate's key.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

use super::tlsa::{Matching, Selector, Tlsa, Usage};

#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    /// The reference identifiers for DANE-TA: the MX host name, then the destination domain.
    names: Vec<ServerName<'static>>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// A verifier for `records` (the usable TLSA records of `mx_host`) for mail to `domain`.
    pub fn new(
        records: Vec<Tlsa>,
        mx_host: &str,
        domain: &str,
        provider: Arc<CryptoProvider>,
    ) -> DaneVerifier {
        let names = [mx_host, domain]
            .iter()
            .filter_map(|n| ServerName::try_from(n.trim_end_matches('.').to_string()).ok())
            .collect();
        DaneVerifier {
            records,
            names,
            provider,
        }
    }

    /// Checks the chain (the pure part of the verifier).
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), String> {
        let end_entity_records = self.records.iter().filter(|r| r.usage == Usage::EndEntity);
        for record in end_entity_records {
            if record.matches(end_entity) {
                return Ok(());
            }
        }
        let mut tried = false;
        let mut last = String::new();
        for anchor in self.anchors(intermediates) {
            tried = true;
            match self.chains_to(&anchor, end_entity, intermediates, now) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        if tried {
            return Err(format!("DANE-TA: {last}"));
        }
        Err("DANE: no TLSA record matches the server's certificate chain".into())
    }

    /// The trust anchors DANE-TA records designate: chain certificates that match one, and
    /// records that hold a whole certificate.
    fn anchors(&self, intermediates: &[CertificateDer<'_>]) -> Vec<CertificateDer<'static>> {
        let ta: Vec<&Tlsa> = self
            .records
            .iter()
            .filter(|r| r.usage == Usage::TrustAnchor)
            .collect();
        let mut anchors: Vec<CertificateDer<'static>> = intermediates
            .iter()
            .filter(|c| ta.iter().any(|r| r.matches(c)))
            .map(|c| c.clone().into_owned())
            .collect();
        anchors.extend(
            ta.iter()
                .filter(|r| r.selector == Selector::Certificate && r.matching == Matching::Exact)
                .map(|r| CertificateDer::from(r.data.clone())),
        );
        anchors
    }

    fn chains_to(
        &self,
        anchor: &CertificateDer<'static>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone())
            .map_err(|e| format!("the trust anchor does not parse: {e}"))?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
        let mut last = String::from("no reference identifier");
        for name in &self.names {
            match webpki.verify_server_cert(end_entity, intermediates, name, &[], now) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.check(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
            .map_err(Error::General)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::test_pki::Ca;
    use super::*;
    use time::{Duration, OffsetDateTime};

    fn sha256(bytes: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA256, bytes)
            .as_ref()
            .to_vec()
    }

    fn sha512(bytes: &[u8]) -> Vec<u8> {
        ring::digest::digest(&ring::digest::SHA512, bytes)
            .as_ref()
            .to_vec()
    }

    fn verifier(records: Vec<Tlsa>) -> DaneVerifier {
        DaneVerifier::new(
            records,
            "mx.dane.test",
            "dane.test",
            Arc::new(rustls::crypto::ring::default_provider()),
        )
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn dane_ee_matches_by_key_or_certificate_ignoring_names_and_dates() {
        let ca = Ca::new("Anyone");
        let long_ago = OffsetDateTime::now_utc() - Duration::days(400);
        // Expired, and for another name: DANE-EE does not care.
        let leaf = ca.issue_valid(&["elsewhere.test"], long_ago, long_ago + Duration::days(30));
        for record in [
            Tlsa::new(3, 1, 1, sha256(&leaf.spki())),
            Tlsa::new(3, 1, 2, sha512(&leaf.spki())),
            Tlsa::new(3, 1, 0, leaf.spki()),
            Tlsa::new(3, 0, 1, sha256(&leaf.cert)),
            Tlsa::new(3, 0, 0, leaf.cert.to_vec()),
        ] {
            let record = record.unwrap();
            assert_eq!(
                verifier(vec![record.clone()]).check(&leaf.cert, &[], now()),
                Ok(()),
                "{record:?}"
            );
        }
        let other = ca.issue(&["mx.dane.test"]);
        let e = verifier(vec![Tlsa::new(3, 1, 1, sha256(&other.spki())).unwrap()])
            .check(&leaf.cert, &[], now())
            .unwrap_err();
        assert!(e.contains("no TLSA record matches"), "{e}");
        let wrong_digest = Tlsa::new(3, 1, 1, sha256(&leaf.cert)).unwrap();
        assert!(
            verifier(vec![wrong_digest])
                .check(&leaf.cert, &[], now())
                .is_err(),
            "selector 1 hashes the key, not the certificate"
        );
    }

    #[test]
    fn dane_ta_checks_the_chain_the_name_and_the_dates() {
        let root = Ca::new("Root");
        let issuing = root.intermediate("Issuing");
        let ta_record = Tlsa::new(2, 1, 1, sha256(&spki_of(&issuing.der()))).unwrap();
        let chain = [issuing.der()];

        let mx = issuing.issue(&["mx.dane.test"]);
        assert_eq!(
            verifier(vec![ta_record.clone()]).check(&mx.cert, &chain, now()),
            Ok(())
        );
        let domain = issuing.issue(&["dane.test"]);
        assert_eq!(
            verifier(vec![ta_record.clone()]).check(&domain.cert, &chain, now()),
            Ok(()),
            "the destination domain is a reference identifier too"
        );
        let wrong_name = issuing.issue(&["other.test"]);
        let e = verifier(vec![ta_record.clone()])
            .check(&wrong_name.cert, &chain, now())
            .unwrap_err();
        assert!(e.contains("not valid for name"), "{e}");
        let long_ago = OffsetDateTime::now_utc() - Duration::days(400);
        let expired =
            issuing.issue_valid(&["mx.dane.test"], long_ago, long_ago + Duration::days(30));
        let e = verifier(vec![ta_record.clone()])
            .check(&expired.cert, &chain, now())
            .unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e = verifier(vec![ta_record.clone()])
            .check(&mx.cert, &[], now())
            .unwrap_err();
        assert!(
            e.contains("no TLSA record matches"),
            "the anchor must be in the chain: {e}"
        );
        let stranger = Ca::new("Stranger").issue(&["mx.dane.test"]);
        assert!(
            verifier(vec![ta_record])
                .check(&stranger.cert, &chain, now())
                .is_err(),
            "a certificate of another CA does not chain to the anchor"
        );
        // A record holding the whole anchor certificate needs no copy in the chain.
        let full = Tlsa::new(2, 0, 0, issuing.der().to_vec()).unwrap();
        assert_eq!(verifier(vec![full]).check(&mx.cert, &[], now()), Ok(()));
    }

    fn spki_of(cert: &CertificateDer<'_>) -> Vec<u8> {
        super::super::x509::subject_public_key_info(cert)
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_real_handshake_goes_through_the_verifier() {
        use super::super::super::client::tests::handshake;
        let ca = Ca::new("Handshake CA");
        let leaf = ca.issue(&["mx.dane.test"]);
        let config = |record: Tlsa| {
            Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier(vec![record])))
                .with_no_client_auth(),
            )
        };
        let good = Tlsa::new(3, 1, 1, sha256(&leaf.spki())).unwrap();
        handshake(
            config(good),
            "mx.dane.test",
            vec![leaf.cert.clone()],
            leaf.private_key(),
        )
        .unwrap();
        let bad = Tlsa::new(3, 1, 1, vec![7; 32]).unwrap();
        let e = handshake(
            config(bad),
            "mx.dane.test",
            vec![leaf.cert.clone()],
            leaf.private_key(),
        )
        .unwrap_err();
        assert!(e.contains("DANE"), "{e}");
    }
}
