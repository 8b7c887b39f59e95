//! The client side of TLS for delivery. Opportunistic STARTTLS (RFC 3207 as practised by MTAs)
//! encrypts without authenticating: most MX hosts present certificates that would not verify, and
//! refusing them would only push the mail to plain text. A domain whose policy is `tls = "required"`
//! (and an MX host under an MTA-STS policy) gets full verification against the Mozilla roots
//! (webpki-roots) and `[tls] trust_anchors`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

/// Both client configurations, built when a configuration with other trust anchors is published
/// (`Control`), shared by the cores.
pub struct ClientTls {
    pub opportunistic: Arc<ClientConfig>,
    pub verified: Arc<ClientConfig>,
    /// The Mozilla roots and the trust anchors, for the verifiers made per connection.
    pub roots: Arc<RootCertStore>,
    pub provider: Arc<CryptoProvider>,
    /// The `[tls] trust_anchors` files they were loaded from.
    anchor_files: Vec<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.len())
            .field("anchor_files", &self.anchor_files)
            .finish()
    }
}

#[derive(Debug)]
pub struct AcceptAnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientTls {
    /// With the Mozilla roots only.
    pub fn new() -> Result<ClientTls, Error> {
        ClientTls::with_anchors(&[], Vec::new())
    }

    /// With the Mozilla roots and `anchors`, read from `anchor_files`.
    pub fn with_anchors(
        anchors: &[CertificateDer<'static>],
        anchor_files: Vec<String>,
    ) -> Result<ClientTls, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let opportunistic = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider.clone())))
            .with_no_client_auth();
        let roots = Arc::new(super::anchors::root_store(anchors));
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        Ok(ClientTls {
            opportunistic: Arc::new(opportunistic),
            verified: Arc::new(verified),
            roots,
            provider,
            anchor_files,
        })
    }

    /// The configurations for `[tls] trust_anchors` (`files`), read now (blocking). A file that
    /// cannot be read is logged and left out: `volley check` and the start refuse such a file, so
    /// this happens only when one changed under a running daemon.
    pub fn load_logged(files: &[String]) -> ClientTls {
        let mut anchors = Vec::new();
        for file in files {
            match super::anchors::load_file(file) {
                Ok(certs) => anchors.extend(certs),
                Err(e) => log::error!("[tls] trust_anchors: {e}; left out"),
            }
        }
        match ClientTls::with_anchors(&anchors, files.to_vec()) {
            Ok(t) => t,
            Err(e) => panic!("the ring provider supports the default TLS versions: {e}"),
        }
    }

    /// Whether these configurations were made for `files`.
    pub fn loaded_from(&self, files: &[String]) -> bool {
        self.anchor_files == files
    }
}

/// The `[tls] trust_anchors` files of `config`.
pub fn anchor_files(config: &crate::config::Config) -> &[String] {
    config
        .tls
        .as_ref()
        .map_or(&[][..], |t| t.trust_anchors.as_slice())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::test_pki::Ca;
    use super::*;
    use futures_rustls::{TlsAcceptor, TlsConnector};

    /// A TLS handshake over a loopback socket pair with `client` against a server presenting
    /// `chain`: `Ok` when the client accepted it.
    pub(crate) fn handshake(
        client: Arc<ClientConfig>,
        name: &str,
        chain: Vec<CertificateDer<'static>>,
        key: rustls_pki_types::PrivateKeyDer<'static>,
    ) -> Result<(), String> {
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        glommio::LocalExecutorBuilder::default()
            .make()
            .unwrap()
            .run(async move {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let accept = glommio::spawn_local(async move {
                    let stream = listener.accept().await.unwrap();
                    let _ = TlsAcceptor::from(Arc::new(server)).accept(stream).await;
                });
                let stream = glommio::net::TcpStream::connect(addr).await.unwrap();
                let result = TlsConnector::from(client)
                    .connect(name, stream)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                drop(accept);
                result
            })
    }

    #[test]
    fn a_trust_anchor_makes_its_certificates_verify() {
        let ca = Ca::new("Private CA");
        let leaf = ca.issue(&["mx.private.test"]);
        let plain = ClientTls::new().unwrap();
        let e = handshake(
            plain.verified.clone(),
            "mx.private.test",
            vec![leaf.cert.clone()],
            leaf.private_key(),
        )
        .unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");
        let anchored = ClientTls::with_anchors(&[ca.der()], vec!["ca.pem".into()]).unwrap();
        assert!(anchored.loaded_from(&["ca.pem".into()]));
        handshake(
            anchored.verified.clone(),
            "mx.private.test",
            vec![leaf.cert.clone()],
            leaf.private_key(),
        )
        .unwrap();
        let e = handshake(
            anchored.verified.clone(),
            "other.private.test",
            vec![leaf.cert.clone()],
            leaf.private_key(),
        )
        .unwrap_err();
        assert!(
            e.contains("not valid for name"),
            "the name is still checked: {e}"
        );
        handshake(
            anchored.opportunistic.clone(),
            "other.private.test",
            vec![leaf.cert.clone()],
            leaf.private_key(),
        )
        .unwrap();
    }
}
