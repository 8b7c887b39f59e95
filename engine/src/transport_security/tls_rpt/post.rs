//! `https:` report destinations: a blocking POST of the gzip report (RFC 8460 5.4), run off the
//! reactor. The server's certificate may chain to the Mozilla roots or to `[tls] trust_anchors`:
//! ureq verifies against one root set, and the Mozilla roots come as trust anchors, not
//! certificates, so with anchors the POST is made with them first and, when the certificate did
//! not verify against them, again with the Mozilla roots. A certificate failure ends the
//! handshake before anything of the request is sent, so the report is never sent twice.

use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{PemItem, RootCerts, TlsConfig};

/// The whole POST of one report: connect, send and answer (per root set tried).
pub const POST_TIMEOUT_MS: u64 = 30_000;

/// The root sets to try, in order: the anchors (when any file holds a certificate), then the
/// Mozilla roots.
fn root_sets(anchor_files: &[String]) -> Vec<RootCerts> {
    let certs: Vec<_> = anchor_files
        .iter()
        .filter_map(|f| std::fs::read(f).ok())
        .flat_map(|pem| {
            ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c.to_owned()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let mut sets = Vec::with_capacity(2);
    if !certs.is_empty() {
        sets.push(RootCerts::Specific(Arc::new(certs)));
    }
    sets.push(RootCerts::WebPki);
    sets
}

/// Why a POST failed.
#[derive(Debug)]
enum Failed {
    /// The server's certificate did not verify against the roots tried.
    Certificate(String),
    Other(String),
}

fn is_certificate_error(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Rustls(rustls::Error::InvalidCertificate(_)) => true,
        other => other.to_string().contains("invalid peer certificate"),
    }
}

fn post_with(url: &str, gzip: &[u8], roots: RootCerts) -> Result<(), Failed> {
    let t = Some(Duration::from_millis(POST_TIMEOUT_MS));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_global(t)
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .user_agent(concat!("volley/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let response = agent
        .post(url)
        .header("Content-Type", "application/tlsrpt+gzip")
        .send(gzip)
        .map_err(|e| {
            if is_certificate_error(&e) {
                Failed::Certificate(e.to_string())
            } else {
                Failed::Other(e.to_string())
            }
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(Failed::Other(format!(
            "HTTP {}",
            response.status().as_u16()
        )))
    }
}

/// POSTs one report; Ok on a 2xx, else what went wrong. Blocking.
pub fn post(url: &str, gzip: &[u8], anchor_files: &[String]) -> Result<(), String> {
    let mut last = String::new();
    for roots in root_sets(anchor_files) {
        match post_with(url, gzip, roots) {
            Ok(()) => return Ok(()),
            Err(Failed::Certificate(e)) => last = e,
            Err(Failed::Other(e)) => return Err(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::transport_security::test_pki::Ca;

    #[test]
    fn the_mozilla_roots_are_tried_besides_the_anchors() {
        assert!(matches!(root_sets(&[])[..], [RootCerts::WebPki]));
        let dir = std::env::temp_dir().join(format!("volley-post-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, Ca::new("Post CA").pem()).unwrap();
        let sets = root_sets(&[file.display().to_string()]);
        assert!(
            matches!(&sets[..], [RootCerts::Specific(c), RootCerts::WebPki] if c.len() == 1),
            "{sets:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_certificate_the_anchors_refuse_is_tried_against_the_mozilla_roots() {
        // A server whose certificate neither root set trusts: two handshakes, then the error.
        let stranger = Ca::new("Stranger CA");
        let leaf = stranger.issue(&["localhost"]);
        let server = leaf.server_config();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let seen = handshakes.clone();
        std::thread::spawn(move || {
            for socket in listener.incoming().take(2) {
                let Ok(socket) = socket else { continue };
                seen.fetch_add(1, Ordering::SeqCst);
                let connection = rustls::ServerConnection::new(server.clone()).unwrap();
                let mut stream = rustls::StreamOwned::new(connection, socket);
                let _ = stream.read(&mut [0u8; 1024]);
            }
        });
        let dir = std::env::temp_dir().join(format!("volley-post2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, Ca::new("Anchor CA").pem()).unwrap();
        let url = format!("https://localhost:{port}/r");
        let e = post(&url, b"x", &[file.display().to_string()]).unwrap_err();
        assert!(
            e.contains("UnknownIssuer") || e.contains("certificate"),
            "{e}"
        );
        assert_eq!(
            handshakes.load(Ordering::SeqCst),
            2,
            "anchors, then Mozilla roots"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
