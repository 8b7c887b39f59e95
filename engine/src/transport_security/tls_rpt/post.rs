//! `https:` report destinations: a blocking POST of the gzip report (RFC 8460 5.4), run off the
//! reactor. With `[tls] trust_anchors` only those anchors verify the server (ureq takes one root
//! set); without, the Mozilla roots.

use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{PemItem, RootCerts, TlsConfig};

/// The whole POST of one report: connect, send and answer.
pub const POST_TIMEOUT_MS: u64 = 30_000;

fn roots(anchor_files: &[String]) -> RootCerts {
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
    if certs.is_empty() {
        RootCerts::WebPki
    } else {
        RootCerts::Specific(Arc::new(certs))
    }
}

/// POSTs one report; Ok on a 2xx, else what went wrong. Blocking.
pub fn post(url: &str, gzip: &[u8], anchor_files: &[String]) -> Result<(), String> {
    let t = Some(Duration::from_millis(POST_TIMEOUT_MS));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .timeout_global(t)
        .tls_config(TlsConfig::builder().root_certs(roots(anchor_files)).build())
        .user_agent(concat!("volley/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let response = agent
        .post(url)
        .header("Content-Type", "application/tlsrpt+gzip")
        .send(gzip)
        .map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", response.status().as_u16()))
    }
}
