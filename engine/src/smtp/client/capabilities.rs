//! The ESMTP extensions a server announced in its EHLO reply (RFC 5321 4.1.1.1).

use super::reply::Reply;

/// What the server offers. `Capabilities::default()` is a HELO-only server: nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870 `SIZE`: `Some(0)` means "announced, no fixed limit"; `None` means not announced.
    pub size_limit_bytes: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
    /// RFC 3030 `CHUNKING` (BDAT).
    pub chunking: bool,
    /// RFC 3030 `BINARYMIME`.
    pub binary_mime: bool,
    /// RFC 3461.
    pub dsn: bool,
    /// RFC 8689.
    pub requiretls: bool,
}

impl Capabilities {
    /// Reads the keyword lines of an EHLO reply; the first line is the server's greeting name.
    /// Unknown keywords are ignored; a malformed SIZE value counts as "SIZE with no limit".
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => {
                    let limit = words.next().and_then(|v| v.parse::<u64>().ok());
                    caps.size_limit_bytes = Some(limit.unwrap_or(0));
                }
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "STARTTLS" => caps.starttls = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                "BINARYMIME" => caps.binary_mime = true,
                "DSN" => caps.dsn = true,
                "REQUIRETLS" => caps.requiretls = true,
                _ => {}
            }
        }
        caps
    }

    /// Whether a message of `bytes` exceeds the announced SIZE limit (0 = no limit).
    pub fn exceeds_size(&self, bytes: u64) -> bool {
        matches!(self.size_limit_bytes, Some(limit) if limit > 0 && bytes > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::client::reply::ReplySource;

    fn ehlo(text: &str) -> Reply {
        Reply {
            code: 250,
            enhanced: None,
            text: text.into(),
            source: ReplySource::Remote,
        }
    }

    #[test]
    fn parses_known_keywords_case_insensitively() {
        let caps = Capabilities::from_ehlo(&ehlo(
            "mx.example greets you\npipelining\nSIZE 35882577\n8BITMIME\nSMTPUTF8\nSTARTTLS\n\
             ENHANCEDSTATUSCODES\nCHUNKING\nDSN\nAUTH PLAIN LOGIN\nX-UNKNOWN\nRequireTLS",
        ));
        assert_eq!(
            caps,
            Capabilities {
                pipelining: true,
                size_limit_bytes: Some(35882577),
                eight_bit_mime: true,
                smtputf8: true,
                starttls: true,
                enhanced_status_codes: true,
                chunking: true,
                binary_mime: false,
                dsn: true,
                requiretls: true,
            }
        );
        assert!(caps.exceeds_size(35882578));
        assert!(!caps.exceeds_size(35882577));
    }

    #[test]
    fn greeting_line_is_not_a_keyword_and_size_without_value_is_unlimited() {
        let caps = Capabilities::from_ehlo(&ehlo("PIPELINING\nSIZE\n\n"));
        assert!(!caps.pipelining, "first line is the server name");
        assert_eq!(caps.size_limit_bytes, Some(0));
        assert!(!caps.exceeds_size(u64::MAX));
    }
}
