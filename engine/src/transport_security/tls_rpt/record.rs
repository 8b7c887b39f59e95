//! The TLS-RPT record (RFC 8460 section 3): TXT `_smtp._tls.<domain>`,
//! `v=TLSRPTv1; rua=mailto:reports@example.com,https://example.com/tlsrpt`.

/// Longest record accepted, in bytes: longer ones are ignored.
pub const MAX_RECORD_BYTES: usize = 2048;
/// Most report destinations taken from one record.
pub const MAX_RUAS: usize = 4;

/// One report destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:` address (the part after `mailto:`, without any `?` query).
    Mailto(String),
    /// `https:` URL, POSTed to.
    Https(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a TLSRPTv1 record")]
    NotTlsRpt,
    #[error("record longer than {MAX_RECORD_BYTES} bytes")]
    TooLong,
    #[error("no usable rua")]
    NoRua,
}

/// The destinations of a record; unknown URI schemes are skipped (RFC 8460 3).
pub fn parse_record(text: &str) -> Result<Vec<Rua>, RecordError> {
    if text.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLong);
    }
    let mut fields = text.split(';').map(str::trim);
    if fields.next() != Some("v=TLSRPTv1") {
        return Err(RecordError::NotTlsRpt);
    }
    let mut ruas = Vec::new();
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        if key.trim() != "rua" {
            continue;
        }
        for uri in value.split(',').map(str::trim) {
            if ruas.len() == MAX_RUAS {
                break;
            }
            let lower = uri.to_ascii_lowercase();
            if lower.starts_with("mailto:") {
                let address = uri["mailto:".len()..].split('?').next().unwrap_or_default();
                if address.contains('@') {
                    ruas.push(Rua::Mailto(address.to_string()));
                }
            } else if lower.starts_with("https://") {
                ruas.push(Rua::Https(uri.to_string()));
            }
        }
    }
    if ruas.is_empty() {
        return Err(RecordError::NoRua);
    }
    Ok(ruas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailto_and_https() {
        let ruas = parse_record(
            "v=TLSRPTv1; rua=mailto:tls@example.test?subject=x, https://r.example.test/v1/r",
        )
        .unwrap();
        assert_eq!(
            ruas,
            vec![
                Rua::Mailto("tls@example.test".into()),
                Rua::Https("https://r.example.test/v1/r".into())
            ]
        );
    }

    #[test]
    fn rejects_other_records_and_unknown_schemes() {
        assert_eq!(parse_record("v=spf1 -all"), Err(RecordError::NotTlsRpt));
        assert_eq!(
            parse_record("v=TLSRPTv1; rua=ftp://x.test/"),
            Err(RecordError::NoRua)
        );
        let long = format!(
            "v=TLSRPTv1; rua=mailto:{}@x.test",
            "a".repeat(MAX_RECORD_BYTES)
        );
        assert_eq!(parse_record(&long), Err(RecordError::TooLong));
    }
}
