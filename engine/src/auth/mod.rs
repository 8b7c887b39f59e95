//! AUTH: argon2id password checks against the customers' PHC strings, and throttling of clients that
//! keep failing. The SASL exchange itself (PLAIN, LOGIN) lives in `smtp::server`.

mod throttle;

use std::collections::HashMap;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

pub use throttle::{AuthThrottle, ThrottleVerdict};

/// A hash that no password matches, verified for unknown users so that timing does not tell which
/// user names exist.
const UNKNOWN_USER_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$dm9sbGV5LXVua25vd24$0Xr0V3yR9yYJ1mZz8mG3jS2XQn1k5m2oT9x4q8N7wYk";

/// The customers who may AUTH, by name.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    hashes: Arc<HashMap<String, String>>,
}

impl Credentials {
    pub fn from_config(config: &crate::config::Config) -> Credentials {
        let hashes = config
            .customers
            .iter()
            .filter_map(|c| Some((c.name.clone(), c.password_hash.clone()?)))
            .collect();
        Credentials {
            hashes: Arc::new(hashes),
        }
    }

    /// Whether `password` is the customer's. Costs one argon2 verification (tens of milliseconds):
    /// call it off the reactor thread.
    pub fn verify(&self, username: &str, password: &str) -> bool {
        let (hash, known) = match self.hashes.get(username) {
            Some(h) => (h.as_str(), true),
            None => (UNKNOWN_USER_HASH, false),
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        ok && known
    }
}

/// An argon2id PHC string for `password` with a random salt (`volley hash-password`).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:25\"\n[[customer]]\nname = \"acme\"\npassword_hash = \"{hash}\"\n"
        );
        let config = crate::config::Config::parse(&text).unwrap();
        let creds = Credentials::from_config(&config);
        assert!(creds.verify("acme", "s3cret"));
        assert!(!creds.verify("acme", "wrong"));
        assert!(!creds.verify("nobody", "s3cret"));
    }
}
