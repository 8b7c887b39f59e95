//! DKIM signing (RFC 6376; RFC 8463 for Ed25519): each message from a domain with a `[[dkim]]`
//! entry gets one `DKIM-Signature:` header at reception, before it is spooled.
//!
//! `canon` holds the relaxed canonicalizations, `key` the key files, `sign` the choice of entry
//! and the signature header. Keys are loaded once per configuration (per core, at start and on
//! reload).

mod canon;
mod key;
mod sign;

pub use canon::{relaxed_body, relaxed_header};
pub use key::{KeyError, SigningKey};
pub use sign::{
    DkimSigner, DkimSigners, SIGNED_HEADERS, SignError, from_domain, select_for_domain,
    select_signer,
};

/// Parses every `[[dkim]]` key as the cores will load it, so that a bad key stops `volley check`,
/// a start and a reload. Reads files: call it off a core's reactor.
pub fn check_keys(config: &crate::config::Config) -> Vec<crate::config::ConfigError> {
    let mut errors = Vec::new();
    for (i, d) in config.dkim.iter().enumerate() {
        let second = d.second_signature.as_ref().map(|s| {
            (
                format!("dkim[{i}].second_signature.private_key"),
                &s.private_key,
            )
        });
        for (key, file) in
            std::iter::once((format!("dkim[{i}].private_key"), &d.private_key)).chain(second)
        {
            if let Err(e) = SigningKey::load(std::path::Path::new(file)) {
                errors.push(crate::config::ConfigError {
                    key,
                    line: None,
                    message: e.to_string(),
                });
            }
        }
    }
    errors
}

/// Loads and validates a configuration file, DKIM keys and `[tls] trust_anchors` included.
pub fn load_config(
    path: &std::path::Path,
) -> Result<crate::config::Config, crate::config::ConfigErrors> {
    crate::config::Config::load_checked(path, |c| {
        let mut errors = check_keys(c);
        errors.extend(crate::transport_security::anchors::check(c));
        errors
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfc5322::split_message;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use ring::signature::{ED25519, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    const RSA_PKCS8: &[u8] = include_bytes!("../../tests/data/dkim-test-rsa2048.pem");

    const MESSAGE: &[u8] =
        b"Received: from x\r\n\tby y\r\nFrom: Alice <alice@mail.acme.example>\r\n\
To: bob@example.net\r\nSubject:  Hello \t world\r\nTo: carol@example.net\r\nX-Other: no\r\n\
\r\nHi Bob,  \r\n\r\nbye\r\n\r\n\r\n";

    fn rsa_signer() -> DkimSigner {
        DkimSigner {
            domain: "acme.example".into(),
            selector: "s2026".into(),
            key: SigningKey::from_pem(RSA_PKCS8, "test").unwrap(),
        }
    }

    fn ed25519_signer() -> DkimSigner {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            BASE64.encode(doc.as_ref())
        );
        DkimSigner {
            domain: "acme.example".into(),
            selector: "ed".into(),
            key: SigningKey::from_pem(pem.as_bytes(), "test").unwrap(),
        }
    }

    /// The tags of a signature header, values with white space removed.
    fn tags(header: &[u8]) -> Vec<(String, String)> {
        let text = String::from_utf8(header.to_vec()).unwrap();
        let value = text.split_once(':').unwrap().1;
        value
            .split(';')
            .filter(|t| !t.trim().is_empty())
            .map(|t| {
                let (k, v) = t.split_once('=').unwrap();
                (k.trim().to_string(), v.split_whitespace().collect())
            })
            .collect()
    }

    fn tag(header: &[u8], name: &str) -> String {
        tags(header)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    /// An independent verifier: rebuilds the signed data from h= and the header as received.
    fn verify(header: &[u8], message: &[u8], public_key: &[u8], ed25519: bool) -> bool {
        let (fields, body) = split_message(message);
        let mut body_hash = ring::digest::Context::new(&ring::digest::SHA256);
        relaxed_body(body, |p| body_hash.update(p));
        if BASE64.encode(body_hash.finish()) != tag(header, "bh") {
            return false;
        }
        let mut data = Vec::new();
        let mut used = vec![0usize; fields.len()];
        for name in tag(header, "h").split(':') {
            // The bottom-most unused instance.
            if let Some(i) = (0..fields.len())
                .rev()
                .find(|&i| used[i] == 0 && fields[i].name.eq_ignore_ascii_case(name.as_bytes()))
            {
                used[i] = 1;
                relaxed_header(fields[i].raw, &mut data);
            }
        }
        let text = String::from_utf8(header.to_vec()).unwrap();
        let b_at = text.rfind("b=").unwrap();
        let mut own = Vec::new();
        relaxed_header(&header[..b_at + 2], &mut own);
        own.truncate(own.len() - 2);
        data.extend_from_slice(&own);
        let signature = BASE64.decode(tag(header, "b")).unwrap();
        if ed25519 {
            let hash = ring::digest::digest(&ring::digest::SHA256, &data);
            UnparsedPublicKey::new(&ED25519, public_key)
                .verify(hash.as_ref(), &signature)
                .is_ok()
        } else {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
                .verify(&data, &signature)
                .is_ok()
        }
    }

    fn assert_lines_fit(header: &[u8]) {
        let text = String::from_utf8(header.to_vec()).unwrap();
        for line in text.split("\r\n") {
            assert!(line.len() <= 78, "{line:?} in {text}");
        }
        assert!(!text.contains("b=\r\n"), "{text}");
    }

    #[test]
    fn long_h_tag_folds_and_verifies() {
        let mut message = String::new();
        for name in SIGNED_HEADERS {
            message.push_str(&format!("{name}: value of {name}\r\n"));
        }
        message.push_str("\r\nbody\r\n");
        let signer = ed25519_signer();
        let header = signer.sign(message.as_bytes(), 0).unwrap();
        assert_lines_fit(&header);
        let expected: Vec<String> = SIGNED_HEADERS
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        assert_eq!(tag(&header, "h"), expected.join(":"));
        assert!(verify(
            &header,
            message.as_bytes(),
            signer.key.public_key(),
            true
        ));
    }

    #[test]
    fn rsa_round_trip() {
        let signer = rsa_signer();
        let header = signer.sign(MESSAGE, 1_700_000_000).unwrap();
        assert!(header.starts_with(b"DKIM-Signature: v=1;"));
        assert!(header.ends_with(b"\r\n"));
        assert_eq!(tag(&header, "a"), "rsa-sha256");
        assert_eq!(tag(&header, "d"), "acme.example");
        assert_eq!(tag(&header, "s"), "s2026");
        assert_eq!(tag(&header, "t"), "1700000000");
        assert_eq!(tag(&header, "c"), "relaxed/relaxed");
        // Both To: instances, no Received:, no X-Other.
        assert_eq!(tag(&header, "h"), "from:to:to:subject");
        assert_lines_fit(&header);
        assert!(verify(&header, MESSAGE, signer.key.public_key(), false));
        // The signature covers the body and the headers.
        let tampered = [MESSAGE, b"more\r\n"].concat();
        assert!(!verify(&header, &tampered, signer.key.public_key(), false));
        let mut tampered = MESSAGE.to_vec();
        let at = memchr::memmem::find(&tampered, b"Hello").unwrap();
        tampered[at] = b'J';
        assert!(!verify(&header, &tampered, signer.key.public_key(), false));
    }

    #[test]
    fn ed25519_round_trip() {
        let signer = ed25519_signer();
        let header = signer.sign(MESSAGE, 1).unwrap();
        assert_eq!(tag(&header, "a"), "ed25519-sha256");
        assert!(verify(&header, MESSAGE, signer.key.public_key(), true));
        // Whitespace changes that relaxed canonicalization ignores still verify.
        let relaxed = String::from_utf8(MESSAGE.to_vec())
            .unwrap()
            .replace("Hi Bob,  ", "Hi   Bob,")
            .replace("Subject:  Hello", "subject : Hello");
        assert!(verify(
            &header,
            relaxed.as_bytes(),
            signer.key.public_key(),
            true
        ));
    }

    #[test]
    fn odd_messages_sign_without_panic() {
        let signer = ed25519_signer();
        for message in [
            &b""[..],
            b"no colon\r\n\r\nbody",
            b"From: a@acme.example\nSubject: bare lf\n\nline\nline2",
            b"\r\n\r\n",
            b"Subject: no from\r\n",
            b"From:\r\n\r\n",
        ] {
            let header = signer.sign(message, 0).unwrap();
            assert!(tag(&header, "h").starts_with("from"));
            assert!(verify(&header, message, signer.key.public_key(), true));
        }
    }

    #[test]
    fn signing_cost_is_printed() {
        // Informative only: speed goals live in benchmarks, not in assertions.
        let body = "x".repeat(70) + "\r\n";
        let message = [MESSAGE, body.repeat(140).as_bytes()].concat(); // about 10 kB
        for signer in [rsa_signer(), ed25519_signer()] {
            let rounds = 20;
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                signer.sign(&message, 0).unwrap();
            }
            println!(
                "dkim {}: {} us per {}-byte message (debug build)",
                signer.key.algorithm(),
                started.elapsed().as_micros() / rounds,
                message.len()
            );
        }
    }

    #[test]
    fn from_domain_parses_common_forms() {
        assert_eq!(
            from_domain(b" a@Acme.Example").as_deref(),
            Some("acme.example")
        );
        assert_eq!(
            from_domain(b" \"A, B\" <a@x.acme.example>").as_deref(),
            Some("x.acme.example")
        );
        assert_eq!(
            from_domain(b" a@b.example (Alice)").as_deref(),
            Some("b.example")
        );
        assert_eq!(
            from_domain(b" a@b.example, c@d.example").as_deref(),
            Some("b.example")
        );
        assert_eq!(from_domain(b" undisclosed"), None);
        assert_eq!(from_domain(b""), None);
    }

    #[test]
    fn most_specific_entry_wins() {
        let domains = ["acme.example", "news.acme.example", "other.example"];
        assert_eq!(select_for_domain(domains, "acme.example"), Some(0));
        assert_eq!(select_for_domain(domains, "a.news.acme.example"), Some(1));
        assert_eq!(select_for_domain(domains, "NEWS.acme.example."), Some(1));
        assert_eq!(select_for_domain(domains, "x.acme.example"), Some(0));
        // A suffix that is not a parent domain does not match.
        assert_eq!(select_for_domain(domains, "notacme.example"), None);
        assert_eq!(select_for_domain(domains, "example"), None);
    }

    #[test]
    fn from_domain_before_envelope_sender() {
        let domains = ["acme.example", "bounce.example"];
        assert_eq!(
            select_signer(&domains, Some("acme.example"), "b@bounce.example"),
            Some(0)
        );
        assert_eq!(
            select_signer(&domains, Some("x.test"), "b@bounce.example"),
            Some(1)
        );
        assert_eq!(select_signer(&domains, None, "b@bounce.example"), Some(1));
        assert_eq!(select_signer(&domains, Some("x.test"), ""), None);
        assert_eq!(select_signer(&domains, None, "no-at-sign"), None);
    }

    #[test]
    fn signers_pick_by_from_header() {
        let signers = DkimSigners::from_signers(vec![rsa_signer()]);
        let chosen = signers.signer_for(MESSAGE, "").map(|s| s.domain.as_str());
        assert_eq!(chosen, Some("acme.example"));
        let other = b"From: x@other.example\r\n\r\nhi\r\n";
        assert!(signers.sign(other, "x@other.example", 0).unwrap().is_none());
        assert!(
            signers
                .sign(other, "bounces@acme.example", 0)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn dkim_key_that_does_not_parse_names_key_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a key").unwrap();
        let good = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/dkim-test-rsa2048.pem"
        );
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:25\"\n\n[[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\nprivate_key = \"{good}\"\n\n[[dkim]]\ndomain = \"b.test\"\nselector = \"s\"\nprivate_key = \"{}\"\n",
            bad.display()
        );
        let path = dir.path().join("volley.toml");
        std::fs::write(&path, &text).unwrap();
        let e = super::load_config(&path).expect_err("a bad key");
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].key, "dkim[1].private_key");
        assert_eq!(e.0[0].line, Some(12), "{e}");
        assert!(e.0[0].message.contains("bad.pem"), "{e}");
    }

    #[test]
    fn second_signature_adds_an_ed25519_signature_beside_the_rsa_one() {
        let dir = tempfile::tempdir().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = dir.path().join("ed.pem");
        std::fs::write(
            &ed,
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                BASE64.encode(doc.as_ref())
            ),
        )
        .unwrap();
        let rsa = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/dkim-test-rsa2048.pem"
        );
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:25\"\n\n[[dkim]]\ndomain = \"acme.example\"\n\
             selector = \"rsa\"\nprivate_key = \"{rsa}\"\n\
             second_signature = {{ selector = \"ed\", private_key = \"{}\" }}\n",
            ed.display()
        );
        let path = dir.path().join("volley.toml");
        std::fs::write(&path, &text).unwrap();
        let config = super::load_config(&path).expect("valid");
        let (signers, errors) = DkimSigners::load(&config.dkim);
        assert!(errors.is_empty());
        assert!(signers.is_costly_for(MESSAGE, ""));
        let headers = signers.sign(MESSAGE, "", 1_700_000_000).unwrap().unwrap();
        let signed = String::from_utf8(headers.clone()).unwrap();
        let at = signed.find("\r\nDKIM-Signature:").expect("two signatures") + 2;
        let (first, second) = headers.split_at(at);
        assert_eq!(tag(first, "a"), "ed25519-sha256");
        assert_eq!(tag(first, "s"), "ed");
        assert_eq!(tag(second, "a"), "rsa-sha256");
        assert_eq!(tag(second, "s"), "rsa");
        let ed_key = SigningKey::load(&ed).unwrap();
        let rsa_key = SigningKey::load(std::path::Path::new(rsa)).unwrap();
        // Each verifies alone, against the message without the other signature.
        assert!(verify(first, MESSAGE, ed_key.public_key(), true));
        assert!(verify(second, MESSAGE, rsa_key.public_key(), false));

        // A second key that does not load keeps the whole entry from signing, and is named.
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a key").unwrap();
        std::fs::write(
            &path,
            text.replace(&ed.display().to_string(), &bad.display().to_string()),
        )
        .unwrap();
        let e = super::load_config(&path).expect_err("a bad second key");
        assert_eq!(e.0[0].key, "dkim[0].second_signature.private_key", "{e}");
        let mut entries = config.dkim.clone();
        if let Some(second) = entries[0].second_signature.as_mut() {
            second.private_key = bad.display().to_string();
        }
        let (signers, errors) = DkimSigners::load(&entries);
        assert_eq!(errors.len(), 1);
        assert!(signers.is_empty());
        // The same selector twice is refused.
        std::fs::write(
            &path,
            text.replace("selector = \"ed\"", "selector = \"rsa\""),
        )
        .unwrap();
        let e = super::load_config(&path).expect_err("same selector");
        assert_eq!(e.0[0].key, "dkim[0].second_signature.selector", "{e}");
    }
}
