//! Choosing the signing domain for a message and writing its `DKIM-Signature:` header
//! (RFC 6376 §5, relaxed/relaxed, SHA-256; RFC 8463 for Ed25519).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::digest;

use super::canon::{relaxed_body, relaxed_header};
use super::key::{KeyError, SigningKey};
use crate::config::DkimConfig;
use crate::rfc5322::split_message;

/// The header fields signed when present (every instance; From always, present or not).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

/// Folded lines stay under this many characters where the content allows.
const LINE_WIDTH_CHARS: usize = 78;

/// Why a message could not be signed (it is then sent unsigned).
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the {algorithm} signing operation failed")]
    Crypto { algorithm: &'static str },
}

/// One `[[dkim]]` entry with its key loaded.
#[derive(Debug)]
pub struct DkimSigner {
    /// Lowercase, no trailing dot.
    pub domain: String,
    pub selector: String,
    pub key: SigningKey,
}

/// Every usable `[[dkim]]` entry of one configuration.
#[derive(Debug, Default)]
pub struct DkimSigners {
    signers: Vec<DkimSigner>,
    /// Per entry (same index), the `second_signature` key when it has one.
    seconds: Vec<Option<DkimSigner>>,
    /// The entries these were loaded from, so a reload that left them alone keeps the keys.
    source: Vec<DkimConfig>,
}

fn normalize_domain(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The domain of the first address in a From: value (`Name <a@b>` or `a@b (comment)`), lowercase.
pub fn from_domain(from_value: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(from_value);
    let address = match (text.find('<'), text.rfind('>')) {
        (Some(open), Some(close)) if open < close => text.get(open + 1..close)?.to_string(),
        _ => text.split(',').next()?.split('(').next()?.to_string(),
    };
    let address = address.split(',').next()?;
    let (_, domain) = address.trim().rsplit_once('@')?;
    let domain = normalize_domain(domain.trim_end_matches('>'));
    (!domain.is_empty() && !domain.contains(|c: char| c.is_whitespace())).then_some(domain)
}

/// The index of the entry that signs for `domain`: equal to it or a parent of it, the most
/// specific (longest) winning.
pub fn select_for_domain<'a>(
    domains: impl IntoIterator<Item = &'a str>,
    domain: &str,
) -> Option<usize> {
    let domain = normalize_domain(domain);
    domains
        .into_iter()
        .enumerate()
        .filter(|(_, d)| {
            let d = normalize_domain(d);
            !d.is_empty()
                && (domain == d
                    || domain
                        .strip_suffix(d.as_str())
                        .is_some_and(|rest| rest.ends_with('.')))
        })
        .max_by_key(|(_, d)| d.len())
        .map(|(i, _)| i)
}

/// Which entry signs: the one for the From: domain, else the one for the envelope sender's.
pub fn select_signer(
    domains: &[&str],
    from_domain: Option<&str>,
    envelope_sender: &str,
) -> Option<usize> {
    from_domain
        .and_then(|d| select_for_domain(domains.iter().copied(), d))
        .or_else(|| {
            let (_, d) = envelope_sender.rsplit_once('@')?;
            select_for_domain(domains.iter().copied(), d)
        })
}

/// Appends `tag` to the header being built, starting a new folded line when it would pass the
/// line width.
fn push_tag(header: &mut String, line_len: &mut usize, tag: &str) {
    if *line_len + 1 + tag.len() > LINE_WIDTH_CHARS {
        header.push_str("\r\n\t");
        *line_len = 1;
    } else {
        header.push(' ');
        *line_len += 1;
    }
    header.push_str(tag);
    *line_len += tag.len();
}

impl DkimSigners {
    /// Loads the key of every entry. Entries whose key cannot be loaded are left out and returned
    /// with their index, for the caller to log (`volley check` reports them before a start).
    pub fn load(entries: &[DkimConfig]) -> (DkimSigners, Vec<(usize, KeyError)>) {
        let mut signers = Vec::new();
        let mut seconds = Vec::new();
        let mut errors = Vec::new();
        let signer = |domain: &str, selector: &str, file: &str| {
            SigningKey::load(std::path::Path::new(file)).map(|key| DkimSigner {
                domain: normalize_domain(domain),
                selector: selector.trim().to_string(),
                key,
            })
        };
        for (i, entry) in entries.iter().enumerate() {
            // An entry signs only when all its keys load: half of a dual signature would
            // change what receivers see without a word in the configuration.
            let second = entry
                .second_signature
                .as_ref()
                .map(|s| signer(&entry.domain, &s.selector, &s.private_key))
                .transpose();
            match (
                signer(&entry.domain, &entry.selector, &entry.private_key),
                second,
            ) {
                (Ok(first), Ok(second)) => {
                    signers.push(first);
                    seconds.push(second);
                }
                (Err(e), _) | (_, Err(e)) => errors.push((i, e)),
            }
        }
        let source = entries.to_vec();
        (
            DkimSigners {
                signers,
                seconds,
                source,
            },
            errors,
        )
    }

    /// Loads the keys, logging (and leaving out) each entry whose key cannot be used.
    pub fn load_logged(entries: &[DkimConfig]) -> DkimSigners {
        let (signers, errors) = DkimSigners::load(entries);
        for (i, e) in errors {
            let domain = entries
                .get(i)
                .map(|d| d.domain.as_str())
                .unwrap_or_default();
            log::error!("dkim[{i}] ({domain}): not signing: {e}");
        }
        signers
    }

    /// Whether these signers were loaded from exactly `entries`.
    pub fn loaded_from(&self, entries: &[DkimConfig]) -> bool {
        self.source == entries
    }

    /// A set from already-loaded signers.
    pub fn from_signers(signers: Vec<DkimSigner>) -> DkimSigners {
        DkimSigners {
            seconds: signers.iter().map(|_| None).collect(),
            signers: signers
                .into_iter()
                .map(|s| DkimSigner {
                    domain: normalize_domain(&s.domain),
                    ..s
                })
                .collect(),
            source: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// The signer for a message, by its From: domain, else its envelope sender's domain.
    pub fn signer_for(&self, message: &[u8], envelope_sender: &str) -> Option<&DkimSigner> {
        self.entry_for(message, envelope_sender)
            .and_then(|i| self.signers.get(i))
    }

    /// Whether signing a message costs about a millisecond (an RSA key signs it).
    pub fn is_costly_for(&self, message: &[u8], envelope_sender: &str) -> bool {
        self.entry_for(message, envelope_sender).is_some_and(|i| {
            self.signers.get(i).is_some_and(DkimSigner::is_costly)
                || self
                    .seconds
                    .get(i)
                    .and_then(Option::as_ref)
                    .is_some_and(DkimSigner::is_costly)
        })
    }

    /// The index of the entry that signs a message.
    fn entry_for(&self, message: &[u8], envelope_sender: &str) -> Option<usize> {
        if self.signers.is_empty() {
            return None;
        }
        let (fields, _) = split_message(message);
        let from = fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(b"From"))
            .and_then(|f| {
                let colon = memchr::memchr(b':', f.raw)?;
                from_domain(f.raw.get(colon + 1..)?)
            });
        let domains: Vec<&str> = self.signers.iter().map(|s| s.domain.as_str()).collect();
        select_signer(&domains, from.as_deref(), envelope_sender)
    }

    /// The `DKIM-Signature:` header (CRLF-ended) for a message, two with a
    /// `second_signature` (the second key's first), or `None` when no entry signs for it.
    pub fn sign(
        &self,
        message: &[u8],
        envelope_sender: &str,
        now_s: u64,
    ) -> Result<Option<Vec<u8>>, SignError> {
        let Some(i) = self.entry_for(message, envelope_sender) else {
            return Ok(None);
        };
        let Some(signer) = self.signers.get(i) else {
            return Ok(None);
        };
        // Neither signature covers the other (DKIM-Signature is not in `SIGNED_HEADERS`), so
        // each verifies alone and the order does not matter to receivers.
        let mut headers = match self.seconds.get(i).and_then(Option::as_ref) {
            Some(second) => second.sign(message, now_s)?,
            None => Vec::new(),
        };
        headers.extend_from_slice(&signer.sign(message, now_s)?);
        Ok(Some(headers))
    }
}

impl DkimSigner {
    /// Whether signing costs about a millisecond (RSA) rather than tens of microseconds (Ed25519):
    /// such signatures are made off the core's reactor.
    pub fn is_costly(&self) -> bool {
        matches!(self.key, SigningKey::Rsa(_))
    }

    /// Signs `message` (header block, empty line, body) as it will be stored and sent.
    pub fn sign(&self, message: &[u8], now_s: u64) -> Result<Vec<u8>, SignError> {
        let (fields, body) = split_message(message);
        let mut body_hash = digest::Context::new(&digest::SHA256);
        relaxed_body(body, |part| body_hash.update(part));
        let body_hash = BASE64.encode(body_hash.finish());

        // §5.4.2: each instance is signed, bottom-most first, its name listed once per instance.
        let mut signed = Vec::with_capacity(1024);
        let mut names: Vec<String> = Vec::new();
        for name in SIGNED_HEADERS {
            let instances: Vec<_> = fields
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
                .collect();
            for f in instances.iter().rev() {
                relaxed_header(f.raw, &mut signed);
                names.push(name.to_ascii_lowercase());
            }
            if instances.is_empty() && *name == "From" {
                // A From: added later cannot pass: a missing field signs as an empty string.
                names.push("from".to_string());
            }
        }

        let mut header = String::with_capacity(512);
        header.push_str("DKIM-Signature: v=1;");
        let mut line_len = header.len();
        for tag in [
            format!("a={};", self.key.algorithm()),
            "c=relaxed/relaxed;".to_string(),
            format!("d={};", self.domain),
            format!("s={};", self.selector),
            format!("t={now_s};"),
        ] {
            push_tag(&mut header, &mut line_len, &tag);
        }
        let h_tag = format!("h={};", names.join(":"));
        if line_len + 1 + h_tag.len() > LINE_WIDTH_CHARS {
            // Folding between names (before a colon) keeps h= valid; FWS is allowed there.
            header.push_str("\r\n\th=");
            line_len = 3;
            for (i, name) in names.iter().enumerate() {
                let piece = if i == 0 {
                    name.clone()
                } else {
                    format!(":{name}")
                };
                if line_len + piece.len() + 1 > LINE_WIDTH_CHARS {
                    header.push_str("\r\n\t");
                    line_len = 1;
                }
                header.push_str(&piece);
                line_len += piece.len();
            }
            header.push(';');
        } else {
            push_tag(&mut header, &mut line_len, &h_tag);
        }
        header.push_str("\r\n\tbh=");
        header.push_str(&body_hash);
        header.push_str(";\r\n\tb=");

        // §3.7: the signature header itself, b= empty, canonicalized, without its final CRLF.
        let mut own = Vec::with_capacity(header.len());
        relaxed_header(header.as_bytes(), &mut own);
        own.truncate(own.len().saturating_sub(2));
        signed.extend_from_slice(&own);

        let signature = match &self.key {
            SigningKey::Rsa(k) => {
                let rng = ring::rand::SystemRandom::new();
                let mut out = vec![0u8; k.public().modulus_len()];
                k.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, &signed, &mut out)
                    .map_err(|_| SignError::Crypto {
                        algorithm: "rsa-sha256",
                    })?;
                out
            }
            // RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data.
            SigningKey::Ed25519(k) => k
                .sign(digest::digest(&digest::SHA256, &signed).as_ref())
                .as_ref()
                .to_vec(),
        };
        let b = BASE64.encode(signature);
        // "\tb=" then 75 characters fills the first line; later lines hold a tab and 75.
        let mut line_len = 3;
        for chunk in b.as_bytes().chunks(LINE_WIDTH_CHARS - 3) {
            if line_len + chunk.len() > LINE_WIDTH_CHARS {
                header.push_str("\r\n\t");
                line_len = 1;
            }
            // Base64 is ASCII, so any chunk is valid UTF-8.
            header.push_str(&String::from_utf8_lossy(chunk));
            line_len += chunk.len();
        }
        header.push_str("\r\n");
        Ok(header.into_bytes())
    }
}
