//! The one part of an X.509 certificate DANE needs besides the whole: its SubjectPublicKeyInfo
//! (RFC 5280 4.1), found by walking the DER of `TBSCertificate`. Pure, bounded by the input.

/// One DER element: its tag, its whole encoding, its contents.
struct Element<'a> {
    tag: u8,
    whole: &'a [u8],
    contents: &'a [u8],
}

/// The element at the start of `input`, and what follows it.
fn element(input: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (length, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = input.get(2..2 + count)?;
        let length = bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (length, 2 + count)
    };
    let end = header.checked_add(length)?;
    let whole = input.get(..end)?;
    let contents = input.get(header..end)?;
    Some((
        Element {
            tag,
            whole,
            contents,
        },
        input.get(end..)?,
    ))
}

const SEQUENCE: u8 = 0x30;
/// `[0] EXPLICIT Version`.
const VERSION: u8 = 0xa0;

/// The DER SubjectPublicKeyInfo of a DER certificate, or `None` when it does not parse.
pub fn subject_public_key_info(certificate: &[u8]) -> Option<&[u8]> {
    let (cert, _) = element(certificate)?;
    if cert.tag != SEQUENCE {
        return None;
    }
    let (tbs, _) = element(cert.contents)?;
    if tbs.tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs.contents;
    let (first, after) = element(rest)?;
    if first.tag == VERSION {
        rest = after;
    }
    // serialNumber, signature, issuer, validity, subject, then subjectPublicKeyInfo.
    for _ in 0..5 {
        let (_, after) = element(rest)?;
        rest = after;
    }
    let (spki, _) = element(rest)?;
    (spki.tag == SEQUENCE).then_some(spki.whole)
}

#[cfg(test)]
mod tests {
    use super::super::super::test_pki::Ca;
    use super::*;

    #[test]
    fn the_key_of_a_certificate_is_found() {
        let ca = Ca::new("X509 CA");
        let leaf = ca.issue(&["mx.a.test"]);
        assert_eq!(
            subject_public_key_info(&leaf.cert),
            Some(leaf.spki().as_slice())
        );
        assert_eq!(subject_public_key_info(b""), None);
        assert_eq!(subject_public_key_info(&leaf.cert[..40]), None, "cut short");
        assert_eq!(
            subject_public_key_info(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
