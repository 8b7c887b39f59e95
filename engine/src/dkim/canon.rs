//! RFC 6376 §3.4.2 and §3.4.4: the "relaxed" header and body canonicalizations (the message is
//! split into fields by `crate::rfc5322`). Works on bytes; any input (no colon, bare LF, no body)
//! gives some output and never panics.

/// The relaxed canonical form of one header field (§3.4.2), ending in CRLF: lowercase name, no
/// white space around the colon, unfolded, runs of white space as one space, none at the end.
pub fn relaxed_header(raw: &[u8], out: &mut Vec<u8>) {
    let colon = memchr::memchr(b':', raw).unwrap_or(raw.len());
    let (name, value) = raw.split_at(colon);
    out.extend(name.trim_ascii_end().iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let value = value.get(1..).unwrap_or_default();
    let mut pending_space = false;
    let mut started = false;
    for &b in value {
        match b {
            // Unfolding removes line ends; folding white space becomes one space.
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = started,
            _ => {
                if pending_space {
                    out.push(b' ');
                    pending_space = false;
                }
                out.push(b);
                started = true;
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Feeds the relaxed canonical body (§3.4.4) to `sink`: white space runs as one space, none at
/// line ends, empty lines at the end dropped, every line ended by CRLF, an empty body empty. A
/// bare LF counts as a line end.
pub fn relaxed_body(body: &[u8], mut sink: impl FnMut(&[u8])) {
    let mut empty_lines_held = 0usize;
    let mut line_out: Vec<u8> = Vec::with_capacity(1000);
    let mut pos = 0;
    while pos < body.len() {
        let (line, next) = match memchr::memchr(b'\n', &body[pos..]) {
            Some(i) => (&body[pos..pos + i], pos + i + 1),
            None => (&body[pos..], body.len()),
        };
        pos = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Fast path, the usual line: nothing to compress or strip, so no copy.
        let already_canonical = !line.is_empty()
            && !matches!(line.last(), Some(b' ' | b'\t'))
            && memchr::memchr(b'\t', line).is_none()
            && memchr::memmem::find(line, b"  ").is_none();
        if already_canonical {
            for _ in 0..empty_lines_held {
                sink(b"\r\n");
            }
            empty_lines_held = 0;
            sink(line);
            sink(b"\r\n");
            continue;
        }
        line_out.clear();
        let mut pending_space = false;
        for &b in line {
            if b == b' ' || b == b'\t' {
                pending_space = true;
            } else {
                if pending_space {
                    line_out.push(b' ');
                    pending_space = false;
                }
                line_out.push(b);
            }
        }
        if line_out.is_empty() {
            // Held back: only kept if a non-empty line follows.
            empty_lines_held += 1;
            continue;
        }
        for _ in 0..empty_lines_held {
            sink(b"\r\n");
        }
        empty_lines_held = 0;
        line_out.extend_from_slice(b"\r\n");
        sink(&line_out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfc5322::split_message;

    fn body_of(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        relaxed_body(b, |part| out.extend_from_slice(part));
        out
    }

    fn header_of(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        relaxed_header(raw, &mut out);
        out
    }

    /// RFC 6376 §3.4.5, the worked example.
    #[test]
    fn rfc6376_example_relaxed() {
        let message = b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n";
        let (fields, body) = split_message(message);
        let mut headers = Vec::new();
        for f in &fields {
            relaxed_header(f.raw, &mut headers);
        }
        assert_eq!(headers, b"a:X\r\nb:Y Z\r\n");
        assert_eq!(body_of(body), b" C\r\nD E\r\n");
        assert_eq!(fields[1].name, b"B");
    }

    #[test]
    fn empty_body_is_empty_and_missing_final_crlf_is_added() {
        assert_eq!(body_of(b""), b"");
        assert_eq!(body_of(b"\r\n\r\n"), b"");
        assert_eq!(body_of(b"abc"), b"abc\r\n");
        assert_eq!(body_of(b"a\r\n\r\nb\r\n\r\n"), b"a\r\n\r\nb\r\n");
        // Lines with and without white space to compress, each way round.
        assert_eq!(
            body_of(b"a b\r\n \r\na  b \r\n\t\r\nc"),
            b"a b\r\n\r\na b\r\n\r\nc\r\n"
        );
        assert_eq!(body_of(b" lead\r\n"), b" lead\r\n");
    }

    #[test]
    fn bare_lf_counts_as_line_end() {
        assert_eq!(body_of(b"a \nb\n\n"), b"a\r\nb\r\n");
        let (fields, body) = split_message(b"From: a@b\nSubject: x\n\nhi\n");
        assert_eq!(fields.len(), 2);
        assert_eq!(body, b"hi\n");
    }

    #[test]
    fn odd_headers_do_not_panic() {
        let (fields, body) = split_message(b"no colon here\r\n\tcontinued\r\nX:\r\n");
        assert_eq!(fields.len(), 1);
        assert_eq!(fields[0].name, b"X");
        assert!(body.is_empty());
        assert_eq!(header_of(b"X:\r\n"), b"x:\r\n");
        assert_eq!(header_of(b"Subject:   \r\n"), b"subject:\r\n");
        assert_eq!(header_of(b"nocolon"), b"nocolon:\r\n");
        let (fields, _) = split_message(b"\r\nbody only");
        assert!(fields.is_empty());
        let (fields, _) = split_message(b" leading continuation\r\n");
        assert!(fields.is_empty());
    }
}
