//! Server replies as the client sees them: an incremental parser that accepts replies split at any
//! byte boundary, and the `Reply` value handed to the delivery code (code, enhanced code, full text).

use std::fmt;

/// Longest reply line accepted, CRLF included. RFC 5321 4.5.3.1.5 says 512; real servers exceed it.
pub const MAX_REPLY_LINE_BYTES: usize = 4096;
/// Most lines accepted in one multi-line reply (EHLO answers are the longest in practice).
pub const MAX_REPLY_LINES: usize = 128;

pub use crate::smtp::reply::EnhancedCode;

/// Parses `X.Y.Z` at the start of `text` (followed by a space or the end), returning the code and
/// the length consumed. Subject and detail are 1 to 3 digits (RFC 3463 section 2).
fn parse_enhanced_prefix(text: &str) -> Option<(EnhancedCode, usize)> {
    let bytes = text.as_bytes();
    let class = match bytes.first()? {
        b'2' => 2,
        b'4' => 4,
        b'5' => 5,
        _ => return None,
    };
    if bytes.get(1) != Some(&b'.') {
        return None;
    }
    let (subject, n1) = digits(bytes.get(2..)?)?;
    let after_subject = 2 + n1;
    if bytes.get(after_subject) != Some(&b'.') {
        return None;
    }
    let (detail, n2) = digits(bytes.get(after_subject + 1..)?)?;
    let end = after_subject + 1 + n2;
    match bytes.get(end) {
        None | Some(b' ') | Some(b'\t') => Some((EnhancedCode::new(class, subject, detail), end)),
        Some(_) => None,
    }
}

/// 1 to 3 leading ASCII digits as a number and how many bytes they took.
fn digits(bytes: &[u8]) -> Option<(u16, usize)> {
    let n = bytes
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if n == 0 || n > 3 {
        return None;
    }
    let value = bytes
        .iter()
        .take(n)
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    Some((value, n))
}

/// Where a reply came from: the remote server, or Volley itself (a synthetic reply for a refusal
/// decided before sending, a timeout, a lost connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplySource {
    Remote,
    Local,
}

/// One complete SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, 200..=599.
    pub code: u16,
    /// The enhanced status code of the first line, when the server gave one.
    pub enhanced: Option<EnhancedCode>,
    /// The text of every line after `NNN-`/`NNN `, joined with `\n` (enhanced codes kept).
    pub text: String,
    pub source: ReplySource,
}

impl Reply {
    /// A synthetic reply made by Volley, e.g. `Reply::local(554, (5, 6, 3), "...")`.
    pub fn local(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Reply {
        let enhanced = EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2);
        Reply {
            code,
            enhanced: Some(enhanced),
            text: format!("{enhanced} {}", text.into()),
            source: ReplySource::Local,
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx (only 354 in practice).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not try again with this message.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The text lines (without codes).
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.text.split('\n')
    }
}

impl fmt::Display for Reply {
    /// The reply as the server sent it, one line per text line, `NNN-` continuation marks included,
    /// without the final CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            write!(f, "{}{}{}", self.code, sep, line)?;
            if lines.peek().is_some() {
                f.write_str("\r\n")?;
            }
        }
        Ok(())
    }
}

/// Why the server's bytes are not a valid reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line longer than {MAX_REPLY_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("reply with more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    #[error("multi-line reply changed code from {first} to {next}")]
    CodeChanged { first: u16, next: u16 },
}

/// Builds replies from bytes arriving in any split. Lines end in CRLF; a bare LF is accepted too.
#[derive(Debug, Default)]
pub struct ReplyParser {
    /// Bytes of the current, incomplete line.
    partial: Vec<u8>,
    /// The code of the current, incomplete multi-line reply.
    code: Option<u16>,
    /// Its text lines so far, joined by `\n` as `Reply::text` holds them (one buffer, not one
    /// per line: every delivery reads a few replies).
    text: String,
    /// How many lines `text` holds (an empty line leaves `text` as it was).
    line_count: usize,
}

impl ReplyParser {
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Whether bytes of an unfinished reply are buffered (used as the STARTTLS injection guard).
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty() || self.code.is_some()
    }

    /// Consumes bytes from `input` until one complete reply is formed, returning it and the number of
    /// bytes consumed. `Ok((None, input.len()))` means more bytes are needed. After an error the
    /// parser must not be used again (the connection is failed).
    pub fn parse(&mut self, input: &[u8]) -> Result<(Option<Reply>, usize), ReplyError> {
        let mut consumed = 0;
        while consumed < input.len() {
            let rest = input.get(consumed..).unwrap_or_default();
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if self.partial.len() + rest.len() > MAX_REPLY_LINE_BYTES {
                    return Err(ReplyError::LineTooLong);
                }
                self.partial.extend_from_slice(rest);
                return Ok((None, input.len()));
            };
            let piece = rest.get(..nl).unwrap_or_default();
            consumed += nl + 1;
            if self.partial.len() + piece.len() + 1 > MAX_REPLY_LINE_BYTES {
                return Err(ReplyError::LineTooLong);
            }
            let line = if self.partial.is_empty() {
                self.line_done(piece)?
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(piece);
                self.line_done(&whole)?
            };
            if let Some(reply) = line {
                return Ok((Some(reply), consumed));
            }
        }
        Ok((None, consumed))
    }

    /// Handles one line without its LF; returns the reply if this was its last line.
    fn line_done(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let malformed = || ReplyError::Malformed(String::from_utf8_lossy(line).into_owned());
        let code_bytes = line.get(..3).ok_or_else(malformed)?;
        let code = match code_bytes {
            [a @ b'2'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
            }
            _ => return Err(malformed()),
        };
        let (last, text) = match line.get(3) {
            None => (true, &b""[..]),
            Some(b' ') => (true, line.get(4..).unwrap_or_default()),
            Some(b'-') => (false, line.get(4..).unwrap_or_default()),
            Some(_) => return Err(malformed()),
        };
        if let Some(first) = self.code
            && first != code
        {
            return Err(ReplyError::CodeChanged { first, next: code });
        }
        if self.line_count >= MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
        self.code = Some(code);
        if self.line_count > 0 {
            self.text.push('\n');
        }
        self.text.push_str(&String::from_utf8_lossy(text));
        self.line_count += 1;
        if !last {
            return Ok(None);
        }
        self.code = None;
        self.line_count = 0;
        let text = std::mem::take(&mut self.text);
        // The first line: lines are split at LF, so none holds one.
        let first_line = text.split('\n').next().unwrap_or_default();
        let enhanced = parse_enhanced_prefix(first_line)
            .map(|(e, _)| e)
            // The enhanced class must agree with the reply class to be meaningful.
            .filter(|e| u16::from(e.class) == code / 100);
        Ok(Some(Reply {
            code,
            enhanced,
            text,
            source: ReplySource::Remote,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut p = ReplyParser::new();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (reply, n) = p.parse(&bytes[at..])?;
            at += n;
            out.extend(reply);
        }
        Ok(out)
    }

    #[test]
    fn single_and_multi_line() {
        let r = parse_all(b"250-mx.example Hello\r\n250-SIZE 1000\r\n250 8BITMIME\r\n").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].code, 250);
        assert_eq!(r[0].text, "mx.example Hello\nSIZE 1000\n8BITMIME");
        assert_eq!(r[0].enhanced, None);
        assert_eq!(
            r[0].to_string(),
            "250-mx.example Hello\r\n250-SIZE 1000\r\n250 8BITMIME"
        );
    }

    #[test]
    fn enhanced_code_is_parsed() {
        let r = parse_all(b"550 5.1.1 <x@y> User unknown\r\n").unwrap();
        assert_eq!(r[0].enhanced, Some(EnhancedCode::new(5, 1, 1)));
        assert_eq!(r[0].text, "5.1.1 <x@y> User unknown");
        let r = parse_all(b"250 2.0.0\r\n451 4.7.1234 no\r\n550 4.1.1 mismatch\r\n").unwrap();
        assert_eq!(r[0].enhanced, Some(EnhancedCode::new(2, 0, 0)));
        assert_eq!(
            r[1].enhanced, None,
            "detail of 4 digits is not an enhanced code"
        );
        assert_eq!(r[2].enhanced, None, "class must match the reply code");
        // Read from the first line of a multi-line reply only.
        let r = parse_all(b"250-2.1.5 first\r\n250 2.0.0 last\r\n550-no code\r\n550 5.1.1 x\r\n")
            .unwrap();
        assert_eq!(r[0].enhanced, Some(EnhancedCode::new(2, 1, 5)));
        assert_eq!(r[1].enhanced, None);
        assert_eq!(r[1].text, "no code\n5.1.1 x");
    }

    #[test]
    fn split_at_every_boundary() {
        let bytes = b"220 hi\r\n250-a\r\n250 b\n354 go\r\n";
        let whole = parse_all(bytes).unwrap();
        assert_eq!(whole.len(), 3);
        for cut in 0..bytes.len() {
            let mut p = ReplyParser::new();
            let mut out = Vec::new();
            for part in [&bytes[..cut], &bytes[cut..]] {
                let mut at = 0;
                while at < part.len() {
                    let (r, n) = p.parse(&part[at..]).unwrap();
                    at += n;
                    out.extend(r);
                }
            }
            assert_eq!(out, whole, "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"hello\r\n"[..],
            b"25\r\n",
            b"600 x\r\n",
            b"250x\r\n",
            b"250-a\r\n251 b\r\n",
            b"\r\n",
            b"\xff\xfe\xfd\n",
        ] {
            assert!(parse_all(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_all(&vec![b'2'; MAX_REPLY_LINE_BYTES + 1]),
            Err(ReplyError::LineTooLong)
        );
        let many: Vec<u8> = b"250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        assert_eq!(parse_all(&many), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn bare_code_line_is_final() {
        let r = parse_all(b"250\r\n").unwrap();
        assert_eq!(r[0].code, 250);
        assert_eq!(r[0].text, "");
    }
}
