//! The MTA-STS TXT record of `_mta-sts.<domain>` (RFC 8461 3.1): `v=STSv1; id=<1-32 alphanumerics>;`.
//! Pure: the TXT strings come in, the policy id (or why there is none) goes out.

/// Longest `id` value (RFC 8461 3.1: `1*32(ALPHA / DIGIT)`).
pub const ID_CHARS_MAX: usize = 32;

/// Why the TXT answer gives no policy id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("no TXT record starting with v=STSv1")]
    None,
    #[error("{0} TXT records start with v=STSv1 (exactly one is allowed)")]
    Several(usize),
    #[error("malformed MTA-STS record: {0}")]
    Malformed(String),
}

/// The policy id of the TXT records of `_mta-sts.<domain>`, each given as its strings joined.
/// Records that do not start with `v=STSv1` are ignored; there must be exactly one that does.
pub fn policy_id(records: &[Vec<u8>]) -> Result<String, RecordError> {
    let sts: Vec<&Vec<u8>> = records
        .iter()
        .filter(|r| r.starts_with(b"v=STSv1"))
        .collect();
    match sts.as_slice() {
        [] => Err(RecordError::None),
        [one] => parse(one),
        several => Err(RecordError::Several(several.len())),
    }
}

fn parse(record: &[u8]) -> Result<String, RecordError> {
    let malformed = |why: &str| RecordError::Malformed(why.to_string());
    let text = std::str::from_utf8(record).map_err(|_| malformed("not ASCII"))?;
    let mut fields = text.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=STSv1") {
        return Err(malformed("the version field must be exactly v=STSv1"));
    }
    let mut id = None;
    for field in fields {
        if field.is_empty() {
            continue; // the optional trailing ';'
        }
        let Some((name, value)) = field.split_once('=') else {
            return Err(malformed("a field without '='"));
        };
        if name == "id" {
            let valid = (1..=ID_CHARS_MAX).contains(&value.len())
                && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !valid {
                return Err(malformed("id must be 1 to 32 letters and digits"));
            }
            if id.replace(value.to_string()).is_some() {
                return Err(malformed("id given twice"));
            }
        }
        // Other fields are extensions (RFC 8461 3.1: ignored).
    }
    id.ok_or_else(|| malformed("no id field"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(records: &[&str]) -> Result<String, RecordError> {
        let records: Vec<Vec<u8>> = records.iter().map(|r| r.as_bytes().to_vec()).collect();
        policy_id(&records)
    }

    #[test]
    fn the_one_sts_record_gives_the_id() {
        assert_eq!(
            ids(&["v=STSv1; id=20160831085700Z;"]).unwrap(),
            "20160831085700Z"
        );
        assert_eq!(ids(&["v=STSv1;id=abc"]).unwrap(), "abc");
        assert_eq!(
            ids(&["v=spf1 -all", "v=STSv1;\tid=1; ext=thing;"]).unwrap(),
            "1",
            "other records and extension fields are ignored"
        );
    }

    #[test]
    fn no_record_several_or_malformed_give_no_policy() {
        assert_eq!(ids(&[]), Err(RecordError::None));
        assert_eq!(ids(&["v=spf1 -all"]), Err(RecordError::None));
        assert_eq!(
            ids(&["v=STSv1; id=1", "v=STSv1; id=2"]),
            Err(RecordError::Several(2))
        );
        for bad in [
            "v=STSv1",
            "v=STSv1; id=",
            "v=STSv1; id=has-dash",
            "v=STSv1; id=123456789012345678901234567890123",
            "v=STSv1; id=1; id=2",
            "v=STSv10; id=1",
            "v=STSv1; junk",
        ] {
            assert!(
                matches!(ids(&[bad]), Err(RecordError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
