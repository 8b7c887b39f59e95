//! The SASL exchange of the session (RFC 4954 with PLAIN, RFC 4616, and LOGIN): the 334
//! challenges, decoding the responses, and the `Event::Auth` that asks the driver to check them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{Event, InputPhase, Session, Waiting};
use crate::smtp::command::AuthMechanism;
use crate::smtp::reply::Reply;

/// The next line expected in an AUTH exchange.
#[derive(Debug)]
pub(super) enum AuthStep {
    PlainResponse,
    LoginUsername,
    LoginPassword { username: String },
}

impl Session {
    pub(super) fn auth(&mut self, mechanism: AuthMechanism, initial_response: Option<String>) {
        let refusal = if !self.config.auth_enabled {
            Some(Reply::AUTH_NOT_AVAILABLE)
        } else if !self.tls_active {
            Some(Reply::ENCRYPTION_REQUIRED)
        } else if self.greeting.is_none() {
            Some(Reply::HELO_FIRST)
        } else if self.authenticated.is_some() {
            Some(Reply::ALREADY_AUTHENTICATED)
        } else if self.transaction.is_some() {
            Some(Reply::NOT_IN_TRANSACTION)
        } else {
            None
        };
        if let Some(reply) = refusal {
            return self.reply_error(reply);
        }
        match (mechanism, initial_response) {
            (AuthMechanism::Plain, None) => {
                self.reply(Reply::new(334, None, ""));
                self.phase = InputPhase::AuthResponse(AuthStep::PlainResponse);
            }
            (AuthMechanism::Plain, Some(response)) => self.auth_plain(response.as_bytes()),
            (AuthMechanism::Login, None) => {
                // base64("Username:")
                self.reply(Reply::new(334, None, "VXNlcm5hbWU6"));
                self.phase = InputPhase::AuthResponse(AuthStep::LoginUsername);
            }
            (AuthMechanism::Login, Some(response)) => self.login_username(response.as_bytes()),
        }
    }

    pub(super) fn auth_response(&mut self, step: AuthStep, line: &[u8]) {
        if line == b"*" {
            return self.reply_error(Reply::AUTH_CANCELLED);
        }
        match step {
            AuthStep::PlainResponse => self.auth_plain(line),
            AuthStep::LoginUsername => self.login_username(line),
            AuthStep::LoginPassword { username } => {
                match decode_base64(line).and_then(|p| String::from_utf8(p).ok()) {
                    Some(password) => self.request_auth(username, password),
                    None => self.reply_error(Reply::AUTH_BAD_RESPONSE),
                }
            }
        }
    }

    /// RFC 4616: `authzid NUL authcid NUL passwd`; an authzid other than the authcid is refused.
    fn auth_plain(&mut self, response: &[u8]) {
        let Some(message) = decode_base64(response) else {
            return self.reply_error(Reply::AUTH_BAD_RESPONSE);
        };
        let mut parts = message.split(|b| *b == 0);
        let (Some(authzid), Some(authcid), Some(passwd), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.reply_error(Reply::AUTH_BAD_RESPONSE);
        };
        let (Ok(username), Ok(password)) = (
            String::from_utf8(authcid.to_vec()),
            String::from_utf8(passwd.to_vec()),
        ) else {
            return self.reply_error(Reply::AUTH_BAD_RESPONSE);
        };
        if username.is_empty() {
            return self.reply_error(Reply::AUTH_BAD_RESPONSE);
        }
        if !authzid.is_empty() && authzid != authcid {
            return self.reply_error(Reply::AUTH_FAILED);
        }
        self.request_auth(username, password);
    }

    fn login_username(&mut self, response: &[u8]) {
        match decode_base64(response).and_then(|u| String::from_utf8(u).ok()) {
            Some(username) if !username.is_empty() => {
                // base64("Password:")
                self.reply(Reply::new(334, None, "UGFzc3dvcmQ6"));
                self.phase = InputPhase::AuthResponse(AuthStep::LoginPassword { username });
            }
            _ => self.reply_error(Reply::AUTH_BAD_RESPONSE),
        }
    }

    fn request_auth(&mut self, username: String, password: String) {
        self.events.push_back(Event::Auth { username, password });
        self.waiting = Some(Waiting::Auth);
    }
}

/// Base64 of an AUTH response; `=` is the empty response (RFC 4954 section 4).
fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    if text == b"=" {
        return Some(Vec::new());
    }
    BASE64.decode(text).ok()
}
