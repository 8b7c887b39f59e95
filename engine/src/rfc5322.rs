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

/// The header fields of a message, in order, read lazily (nothing is allocated: intake looks for
/// a few fields in every message). A line ends at LF (CRLF or bare); the fields end at the first
/// empty line. A line without a colon is skipped: it is not a field anyone can find or sign.
pub struct HeaderFields<'m> {
    message: &'m [u8],
    pos: usize,
    /// Where the body starts, once the empty line (or the end) is reached.
    body_start: Option<usize>,
}

impl<'m> HeaderFields<'m> {
    pub fn new(message: &'m [u8]) -> HeaderFields<'m> {
        HeaderFields {
            message,
            pos: 0,
            body_start: None,
        }
    }

    /// The end of the line that starts at `pos` (after its LF, or the message's end).
    fn line_end(&self, pos: usize) -> usize {
        memchr::memchr(b'\n', &self.message[pos..]).map_or(self.message.len(), |i| pos + i + 1)
    }

    /// The next line with the continuation lines below it, up to the empty line.
    fn next_lines(&mut self) -> Option<(usize, usize)> {
        if self.body_start.is_some() {
            return None;
        }
        let start = self.pos;
        if start >= self.message.len() {
            self.body_start = Some(self.message.len());
            return None;
        }
        let mut end = self.line_end(start);
        if matches!(&self.message[start..end], b"\r\n" | b"\n") {
            self.body_start = Some(end);
            return None;
        }
        // Continuation lines belong to the field above.
        while matches!(self.message.get(end), Some(b' ' | b'\t')) {
            end = self.line_end(end);
        }
        self.pos = end;
        Some((start, end))
    }

    /// The body (after the empty line; empty when there is none). Reads past the fields not
    /// yet read.
    pub fn body(mut self) -> &'m [u8] {
        while self.next_lines().is_some() {}
        let start = self.body_start.unwrap_or(self.message.len());
        self.message.get(start..).unwrap_or_default()
    }
}

impl<'m> Iterator for HeaderFields<'m> {
    type Item = HeaderField<'m>;

    fn next(&mut self) -> Option<HeaderField<'m>> {
        loop {
            let (start, end) = self.next_lines()?;
            let raw = &self.message[start..end];
            if let Some(colon) = memchr::memchr(b':', raw) {
                return Some(HeaderField {
                    name: raw[..colon].trim_ascii_end(),
                    raw,
                    start,
                });
            }
        }
    }
}

/// Splits a message into its header fields (in order) and its body (after the empty line; empty
/// when there is none), as `HeaderFields` reads them.
pub fn split_message(message: &[u8]) -> (Vec<HeaderField<'_>>, &[u8]) {
    let mut fields = HeaderFields::new(message);
    let list = fields.by_ref().collect();
    (list, fields.body())
}

/// The first field called `name` (case-insensitive) in the header section.
pub fn find_field<'m>(message: &'m [u8], name: &str) -> Option<HeaderField<'m>> {
    HeaderFields::new(message).find(|f| f.is(name))
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

    /// The eager splitter `HeaderFields` replaced, kept as the reference it must agree with.
    fn split_reference(message: &[u8]) -> (Vec<HeaderField<'_>>, &[u8]) {
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
                (Some(b' ' | b'\t'), Some(last)) => last.1 = line_end,
                _ => lines.push((pos, line_end)),
            }
            pos = line_end;
        }
        let fields = lines
            .into_iter()
            .filter_map(|(start, end)| {
                let raw = &message[start..end];
                let colon = memchr::memchr(b':', raw)?;
                Some(HeaderField {
                    name: raw[..colon].trim_ascii_end(),
                    raw,
                    start,
                })
            })
            .collect();
        (fields, &message[body_start..])
    }

    #[test]
    fn lazy_fields_agree_with_the_eager_split_on_random_messages() {
        let mut rng = fastrand::Rng::with_seed(5322);
        let alphabet = b"ab:: \t\r\n\n";
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let message: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            assert_eq!(
                split_message(&message),
                split_reference(&message),
                "{:?}",
                String::from_utf8_lossy(&message)
            );
            for name in ["a", "b", "ab", ""] {
                assert_eq!(
                    find_field(&message, name),
                    split_reference(&message).0.into_iter().find(|f| f.is(name))
                );
            }
        }
    }

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
