//! The MTA-STS policy file (RFC 8461 3.2), `key: value` lines, parsed within limits, and its `mx`
//! patterns (4.1). Pure.

use serde::{Deserialize, Serialize};

/// Largest policy body read (RFC 8461 3.3: senders may refuse bodies over 64 KiB).
pub const POLICY_BYTES_MAX: usize = 64 * 1024;
/// Most lines a policy may have.
pub const POLICY_LINES_MAX: usize = 1_000;
/// Most `mx` patterns kept from one policy.
pub const MX_PATTERNS_MAX: usize = 100;
/// Largest `max_age` (RFC 8461 3.2: 31557600 seconds, about a year); larger values are capped.
pub const MAX_AGE_S_MAX: u64 = 31_557_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deliver only to matching MX hosts with a valid certificate.
    Enforce,
    /// Deliver anyway; failures are logged and counted.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// Lower-case patterns: `mx.example.com` or `*.example.com`.
    pub mx: Vec<String>,
    pub max_age_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy over {POLICY_BYTES_MAX} bytes")]
    TooLarge,
    #[error("policy over {POLICY_LINES_MAX} lines")]
    TooManyLines,
    #[error("policy is not UTF-8 text")]
    NotText,
    #[error("line {0} is not `key: value`")]
    BadLine(usize),
    #[error("version is not STSv1")]
    Version,
    #[error("mode missing or not enforce, testing or none")]
    Mode,
    #[error("max_age missing or not a number of seconds")]
    MaxAge,
    #[error("no mx pattern in an {0} policy")]
    NoMx(&'static str),
}

/// Parses a policy body. Unknown keys are ignored; for a repeated key other than `mx` the first
/// value counts.
pub fn parse(body: &[u8]) -> Result<Policy, PolicyError> {
    if body.len() > POLICY_BYTES_MAX {
        return Err(PolicyError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotText)?;
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for (n, line) in text.split('\n').enumerate() {
        if n == POLICY_LINES_MAX {
            return Err(PolicyError::TooManyLines);
        }
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.trim_matches([' ', '\t']);
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once(':').ok_or(PolicyError::BadLine(n + 1))?;
        let (key, value) = (
            key.trim_matches([' ', '\t']),
            value.trim_matches([' ', '\t']),
        );
        match key {
            "version" => {
                version.get_or_insert(value);
            }
            "mode" => {
                mode.get_or_insert(value);
            }
            "max_age" => {
                max_age.get_or_insert(value);
            }
            "mx" if mx.len() < MX_PATTERNS_MAX => mx.push(value.to_ascii_lowercase()),
            _ => {}
        }
    }
    if version != Some("STSv1") {
        return Err(PolicyError::Version);
    }
    let mode = match mode {
        Some("enforce") => Mode::Enforce,
        Some("testing") => Mode::Testing,
        Some("none") => Mode::None,
        _ => return Err(PolicyError::Mode),
    };
    let max_age = max_age.ok_or(PolicyError::MaxAge)?;
    // RFC 8461 3.2: `1*10DIGIT`.
    if max_age.is_empty() || max_age.len() > 10 || !max_age.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PolicyError::MaxAge);
    }
    let max_age_s = max_age
        .parse::<u64>()
        .map_err(|_| PolicyError::MaxAge)?
        .min(MAX_AGE_S_MAX);
    if mode != Mode::None && mx.is_empty() {
        return Err(PolicyError::NoMx(mode.as_str()));
    }
    Ok(Policy {
        mode,
        mx,
        max_age_s,
    })
}

impl Policy {
    /// Whether MX host `host` matches one of the policy's `mx` patterns.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| pattern_matches(p, &host))
    }
}

/// RFC 8461 4.1: a pattern is a host name, or `*.` and a domain matching exactly one more label
/// on the left (`*.example.com` matches `mx.example.com`, not `example.com` nor `a.b.example.com`).
fn pattern_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => !pattern.is_empty() && pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n\
                          mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

    #[test]
    fn the_rfc_example_parses_and_matches() {
        let p = parse(POLICY.as_bytes()).unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age_s, 604_800);
        assert_eq!(p.mx.len(), 3);
        assert!(p.matches("mail.example.com"));
        assert!(
            p.matches("MAIL.Example.COM."),
            "case and a trailing dot do not matter"
        );
        assert!(p.matches("mx1.example.net"));
        assert!(!p.matches("example.net"), "the wildcard takes one label");
        assert!(!p.matches("a.b.example.net"), "and only one");
        assert!(!p.matches("mail.example.org"));
        assert!(!p.matches("xmail.example.com"));
    }

    #[test]
    fn lf_line_ends_unknown_keys_and_spacing() {
        let p =
            parse(b"version:STSv1\nmode:  testing  \nmax_age: 86400\nmx: mx.a.test\nfoo: bar\n\n")
                .unwrap();
        assert_eq!(p.mode, Mode::Testing);
        assert_eq!(p.mx, ["mx.a.test"]);
        let none = parse(b"version: STSv1\nmode: none\nmax_age: 1\n").unwrap();
        assert_eq!(none.mode, Mode::None, "mode none needs no mx");
    }

    #[test]
    fn limits_and_bad_policies() {
        let huge = format!("{POLICY}{}", "x: y\n".repeat(POLICY_BYTES_MAX / 5));
        assert_eq!(parse(huge.as_bytes()), Err(PolicyError::TooLarge));
        let lines = format!("{POLICY}{}", "\n".repeat(POLICY_LINES_MAX));
        assert_eq!(parse(lines.as_bytes()), Err(PolicyError::TooManyLines));
        let many_mx: String = (0..MX_PATTERNS_MAX + 50)
            .map(|i| format!("mx: mx{i}.a.test\n"))
            .collect();
        let p = parse(format!("version: STSv1\nmode: enforce\nmax_age: 9\n{many_mx}").as_bytes())
            .unwrap();
        assert_eq!(p.mx.len(), MX_PATTERNS_MAX);
        let capped = parse(b"version: STSv1\nmode: none\nmax_age: 9999999999\n").unwrap();
        assert_eq!(capped.max_age_s, MAX_AGE_S_MAX);
        for (bad, error) in [
            ("mode: enforce\nmx: a\nmax_age: 1\n", PolicyError::Version),
            (
                "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
                PolicyError::Version,
            ),
            (
                "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                PolicyError::Mode,
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a\n",
                PolicyError::MaxAge,
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
                PolicyError::MaxAge,
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: 12345678901\n",
                PolicyError::MaxAge,
            ),
            (
                "version: STSv1\nmode: enforce\nmax_age: 1\n",
                PolicyError::NoMx("enforce"),
            ),
            ("version: STSv1\nmode enforce\n", PolicyError::BadLine(2)),
        ] {
            assert_eq!(parse(bad.as_bytes()), Err(error), "{bad:?}");
        }
        assert_eq!(parse(b"\xff\xfe"), Err(PolicyError::NotText));
    }
}
