//! One-click unsubscribe tokens (RFC 8058): `{token}` in a customer's `list_unsubscribe` URL names
//! the customer and the recipient, with an HMAC so that nobody can make one for an address of their
//! choosing. Several secrets may verify (`[reputation] unsubscribe_secrets`, newest first): the
//! first signs, so a key is rotated by putting the new one first and dropping the old one once the
//! mail that carries it is old.
//!
//! Token: `base64url(customer NUL recipient) "." base64url(first 16 bytes of HMAC-SHA256)`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

/// A token longer than this is refused unread (a customer name and an address make at most ~450).
pub const TOKEN_BYTES_MAX: usize = 600;
/// MAC bytes kept: 128 bits.
const MAC_BYTES: usize = 16;

fn mac(secret: &str, payload: &[u8]) -> ring::hmac::Tag {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, payload)
}

fn payload(customer: &str, recipient: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(customer.len() + 1 + recipient.len());
    p.extend_from_slice(customer.as_bytes());
    p.push(0);
    p.extend_from_slice(recipient.to_ascii_lowercase().as_bytes());
    p
}

/// The token for (`customer`, `recipient`) under `secret`. The recipient is compared lowercased.
pub fn token(secret: &str, customer: &str, recipient: &str) -> String {
    let payload = payload(customer, recipient);
    let tag = mac(secret, &payload);
    format!(
        "{}.{}",
        B64.encode(&payload),
        B64.encode(&tag.as_ref()[..MAC_BYTES])
    )
}

/// (customer, recipient) when `token` was made with one of `secrets`; None for anything else.
pub fn verify(secrets: &[String], token: &str) -> Option<(String, String)> {
    if token.len() > TOKEN_BYTES_MAX {
        return None;
    }
    let (payload, tag) = token.split_once('.')?;
    let payload = B64.decode(payload).ok()?;
    let tag = B64.decode(tag).ok()?;
    if tag.len() != MAC_BYTES {
        return None;
    }
    let genuine = secrets.iter().filter(|s| !s.is_empty()).any(|s| {
        let expected = mac(s, &payload);
        // Constant time over the kept bytes.
        expected.as_ref()[..MAC_BYTES]
            .iter()
            .zip(&tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    });
    if !genuine {
        return None;
    }
    let text = String::from_utf8(payload).ok()?;
    let (customer, recipient) = text.split_once('\0')?;
    Some((customer.to_string(), recipient.to_string()))
}

/// The customer's URL template with `{token}` filled in.
pub fn url(template: &str, token: &str) -> String {
    template.replace("{token}", token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_customer_and_recipient_and_nothing_else_verifies() {
        let secrets = vec!["k1".to_string()];
        let t = token("k1", "acme", "Bob@Example.test");
        assert!(t.len() < 100 && !t.contains(['/', '+', '=', '?']), "{t}");
        assert_eq!(
            verify(&secrets, &t),
            Some(("acme".into(), "bob@example.test".into()))
        );
        // Another customer's name with the same MAC, a changed MAC, garbage.
        let (_, mac) = t.split_once('.').unwrap();
        let forged = format!("{}.{mac}", B64.encode(b"evil\0bob@example.test"));
        assert_eq!(verify(&secrets, &forged), None);
        let mut flipped = t.clone();
        let last = flipped.pop().unwrap();
        flipped.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(verify(&secrets, &flipped), None);
        assert_eq!(verify(&secrets, "x"), None);
        assert_eq!(verify(&secrets, &"a".repeat(TOKEN_BYTES_MAX + 1)), None);
        assert_eq!(verify(&[], &t), None);
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_until_their_key_goes() {
        let old = token("old", "acme", "a@b.test");
        let both = vec!["new".to_string(), "old".to_string()];
        assert!(verify(&both, &old).is_some());
        assert!(verify(&["new".to_string()], &old).is_none());
        assert_eq!(
            url("https://u.example/{token}?x=1", "T"),
            "https://u.example/T?x=1"
        );
    }
}
