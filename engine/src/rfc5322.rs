//! The one scanner of RFC 5322 header sections: intake (finding and removing fields), DKIM (the
//! fields it signs) and DSNs (the returned headers) all read a message's header block through it.
//! Works on bytes; any input (no colon, bare LF, no body) gives some answer and never panics.

/// One header field as it appears in the message: `name` without the colon, `raw` the whole field
/// including continuation lines and its line end, at `start..start + raw.len()` of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField<'m> {
    pub name: &'m [u8],
    pub raw: &'m [u8],
    pub start: usize,
}

impl<'m> HeaderField<'m> {
    /// The field's byte range in the message.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.raw.len()
    }

    /// The value after the colon, continuation lines included, white space trimmed at both ends.
    pub fn value(&self) -> &'m [u8] {
        let colon = memchr::memchr(b':', self.raw).map_or(self.raw.len(), |c| c + 1);
        self.raw.get(colon..).unwrap_or_default().trim_ascii()
    }

    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// Splits a message into its header fields (in order) and its body (after the empty line; empty
/// when there is none). A line ends at LF (CRLF or bare). A line without a colon is skipped: it is
/// not a field anyone can find or sign.
pub fn split_message(message: &[u8]) -> (Vec<HeaderField<'_>>, &[u8]) {
    let mut lines: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    let mut body_start = message.len();
    while pos < message.len() {
        let line_end = memchr::memchr(b'\n', &message[pos..])
            .map(|i| pos + i + 1)
            .unwrap_or(message.len());
        let line = &message[pos..line_end];
        if line == b"\r\n" || line == b"\n" {
            body_start = line_end;
            break;
        }
        match (line.first(), lines.last_mut()) {
            // A continuation line belongs to the field above.
            (Some(b' ' | b'\t'), Some(last)) => last.1 = line_end,
            _ => lines.push((pos, line_end)),
        }
        pos = line_end;
    }
    let fields = lines
        .into_iter()
        .filter_map(|(start, end)| {
            let raw = message.get(start..end)?;
            let colon = memchr::memchr(b':', raw)?;
            Some(HeaderField {
                name: raw.get(..colon)?.trim_ascii_end(),
                raw,
                start,
            })
        })
        .collect();
    (fields, message.get(body_start..).unwrap_or_default())
}

/// The first field called `name` (case-insensitive) in the header section.
pub fn find_field<'m>(message: &'m [u8], name: &str) -> Option<HeaderField<'m>> {
    split_message(message).0.into_iter().find(|f| f.is(name))
}

/// The message without its first field called `name`, and that field's value; the message
/// unchanged when it has none.
pub fn take_field(message: Vec<u8>, name: &str) -> (Option<String>, Vec<u8>) {
    let Some((value, range)) = find_field(&message, name)
        .map(|f| (String::from_utf8_lossy(f.value()).into_owned(), f.range()))
    else {
        return (None, message);
    };
    let mut rest = Vec::with_capacity(message.len() - range.len());
    rest.extend_from_slice(&message[..range.start]);
    rest.extend_from_slice(&message[range.end..]);
    (Some(value), rest)
}

/// The header section including the line end of its last field, without the blank line.
pub fn header_section(message: &[u8]) -> &[u8] {
    let (fields, body) = split_message(message);
    if body.is_empty() && fields.is_empty() {
        // No field at all: a message that starts with its blank line, or no header section.
        return if message.starts_with(b"\r\n") || message.starts_with(b"\n") {
            &[]
        } else {
            message
        };
    }
    let body_start = message.len() - body.len();
    let blank = if body_start == message.len() && !message.ends_with(b"\n\r\n") {
        // No blank line: everything is header section.
        0
    } else if message[..body_start].ends_with(b"\r\n") {
        2
    } else {
        1
    };
    message.get(..body_start - blank).unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_is_found_and_removed() {
        let body = b"From: a@b\r\nX-Volley-Customer: acme\r\nSubject: hi\r\n\r\nX-Volley-Customer: not a header\r\n".to_vec();
        let (name, rest) = take_field(body, "X-Volley-Customer");
        assert_eq!(name.as_deref(), Some("acme"));
        assert_eq!(
            rest,
            b"From: a@b\r\nSubject: hi\r\n\r\nX-Volley-Customer: not a header\r\n".to_vec()
        );
    }

    #[test]
    fn folded_field_is_removed_whole() {
        let body = b"x-volley-customer: ac\r\n me\r\nSubject: s\r\n\r\nbody\r\n".to_vec();
        let (name, rest) = take_field(body, "X-Volley-Customer");
        assert_eq!(name.as_deref(), Some("ac\r\n me"));
        assert_eq!(rest, b"Subject: s\r\n\r\nbody\r\n".to_vec());
    }

    #[test]
    fn fields_only_searched_in_header_section() {
        assert!(find_field(b"Subject: x\r\n\r\nDate: y\r\n", "Date").is_none());
        assert!(find_field(b"Date: y\r\n", "Date").is_some());
        assert!(find_field(b"\r\nDate: y\r\n", "Date").is_none());
    }

    #[test]
    fn header_section_ends_before_the_blank_line() {
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section(b"A: 1\r\n"), b"A: 1\r\n");
        assert_eq!(header_section(b"\r\nbody"), b"");
        assert_eq!(header_section(b"A: 1\n\nbody"), b"A: 1\n");
        assert_eq!(header_section(b""), b"");
    }

    #[test]
    fn odd_input_does_not_panic() {
        for m in [
            &b"no colon\r\n\tcontinued\r\nX:\r\n"[..],
            b" lead\r\n",
            b":\r\n\r\n",
            b"\n",
        ] {
            let _ = split_message(m);
            let _ = header_section(m);
            let _ = take_field(m.to_vec(), "X");
        }
    }
}
