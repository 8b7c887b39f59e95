//! Transparency for DATA (RFC 5321 4.5.2): a `.` is added before every line that starts with `.`,
//! and the body ends with `CRLF.CRLF`.
//!
//! Two ways to use it, neither copies the body unless you ask for a copy:
//! - `DotStuffer::segments(chunk)` yields slices of the original chunk with `"."` slices between
//!   them, for a vectored or buffered writer (no copy of the body at all);
//! - `DotStuffer::push(chunk, &mut out)` / `dot_stuff(body, &mut out)` append the stuffed bytes to a
//!   buffer (one copy, in long runs found with `memchr::memmem`).
//!
//! The body may be fed in chunks of any size. A `.` after a bare LF is stuffed too: receivers that
//! accept bare LF as a line end would otherwise see `LF.CRLF` as the end of data (SMTP smuggling).

use memchr::memmem;

/// Bytes that end the data when the body already ends with CRLF (or is empty).
pub const END_AFTER_CRLF: &[u8] = b".\r\n";
/// Bytes that end the data when the body does not end with CRLF: the final CRLF is supplied.
pub const END_WITH_CRLF: &[u8] = b"\r\n.\r\n";

/// Streaming dot-stuffer: remembers across chunks whether the next byte starts a line and how the
/// body ends.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    /// The last two body bytes seen (0 where none).
    tail: [u8; 2],
    empty: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    pub fn new() -> DotStuffer {
        DotStuffer {
            at_line_start: true,
            tail: [0, 0],
            empty: true,
        }
    }

    /// The stuffed form of `chunk` as slices to write in order: pieces of `chunk` and `"."`.
    pub fn segments<'a>(&mut self, chunk: &'a [u8]) -> Segments<'a> {
        let dot_first = self.at_line_start && chunk.first() == Some(&b'.');
        if let Some(&last) = chunk.last() {
            self.at_line_start = last == b'\n';
            self.tail = match chunk {
                [.., a, b] => [*a, *b],
                _ => [self.tail[1], last],
            };
            self.empty = false;
        }
        Segments {
            rest: chunk,
            dot_next: dot_first,
        }
    }

    /// Appends the stuffed form of `chunk` to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + 1);
        for segment in self.segments(chunk) {
            out.extend_from_slice(segment);
        }
    }

    /// The bytes that end the data: `.CRLF`, preceded by CRLF when the body did not end with one.
    pub fn end(&self) -> &'static [u8] {
        if self.empty || self.tail == *b"\r\n" {
            END_AFTER_CRLF
        } else {
            END_WITH_CRLF
        }
    }

    /// Appends the end of data to `out`.
    pub fn finish(self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.end());
    }
}

/// Iterator over the stuffed form of one chunk (see `DotStuffer::segments`).
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a [u8],
    dot_next: bool,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.dot_next {
            self.dot_next = false;
            return Some(b".");
        }
        if self.rest.is_empty() {
            return None;
        }
        match memmem::find(self.rest, b"\n.") {
            Some(nl) => {
                let (head, tail) = self.rest.split_at(nl + 1);
                self.rest = tail;
                self.dot_next = true;
                Some(head)
            }
            None => Some(std::mem::take(&mut self.rest)),
        }
    }
}

/// Appends the whole DATA payload for `body` to `out`: the stuffed body and the end of data.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    let mut stuffer = DotStuffer::new();
    out.reserve(body.len() + END_WITH_CRLF.len() + body.len() / 64);
    stuffer.push(body, out);
    stuffer.finish(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        dot_stuff(body, &mut out);
        out
    }

    /// The receiver's view (RFC 5321 4.5.2): strip one leading dot per line up to `CRLF.CRLF`.
    fn unstuff(data: &[u8]) -> Vec<u8> {
        let text = data.strip_suffix(b".\r\n").expect("ends with .CRLF");
        let mut out = Vec::new();
        for line in text.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        out
    }

    #[test]
    fn lines_starting_with_dot_are_stuffed() {
        assert_eq!(
            stuffed(b".hidden\r\nok\r\n..two\r\n.\r\n"),
            b"..hidden\r\nok\r\n...two\r\n..\r\n.\r\n"
        );
        assert_eq!(stuffed(b"a.b\r\n"), b"a.b\r\n.\r\n", "inner dots untouched");
    }

    #[test]
    fn final_crlf_is_ensured() {
        assert_eq!(stuffed(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(stuffed(b"bare lf\n"), b"bare lf\n\r\n.\r\n");
        assert_eq!(stuffed(b"cr\r"), b"cr\r\r\n.\r\n");
        assert_eq!(stuffed(b""), b".\r\n");
        assert_eq!(stuffed(b"\r\n"), b"\r\n.\r\n");
    }

    #[test]
    fn dot_after_bare_lf_is_stuffed() {
        assert_eq!(stuffed(b"a\n.\r\nb\r\n"), b"a\n..\r\nb\r\n.\r\n");
    }

    #[test]
    fn chunked_equals_whole_for_every_split() {
        let body = b".a\r\n.\r\n..b\r\nc.\r\n.";
        let whole = stuffed(body);
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let mut s = DotStuffer::new();
                let mut out = Vec::new();
                s.push(&body[..i], &mut out);
                s.push(&body[i..j], &mut out);
                s.push(&body[j..], &mut out);
                s.finish(&mut out);
                assert_eq!(out, whole, "split {i} {j}");
            }
        }
        assert_eq!(unstuff(&whole), [&body[..], b"\r\n"].concat());
    }

    #[test]
    fn segments_borrow_the_body() {
        let body = b"x\r\n.y\r\n";
        let mut s = DotStuffer::new();
        let segs: Vec<&[u8]> = s.segments(body).collect();
        assert_eq!(segs, [&b"x\r\n"[..], b".", b".y\r\n"]);
        assert_eq!(segs[0].as_ptr(), body.as_ptr());
        assert_eq!(s.end(), END_AFTER_CRLF);
    }

    #[test]
    fn unstuffing_restores_random_bodies() {
        let alphabet = [b'.', b'\r', b'\n', b'a'];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..24);
            let mut body: Vec<u8> = (0..len).map(|_| alphabet[rng.usize(0..4)]).collect();
            // Receivers only see CRLF line ends; keep the check to CRLF-normalised bodies.
            body.retain(|&b| b != b'\r' && b != b'\n');
            let body: Vec<u8> = body
                .split(|&b| b == b'a')
                .collect::<Vec<_>>()
                .join(&b"\r\n"[..]);
            let out = stuffed(&body);
            let expected = if body.is_empty() || body.ends_with(b"\r\n") {
                body.clone()
            } else {
                [&body[..], b"\r\n"].concat()
            };
            assert_eq!(unstuff(&out), expected, "{body:?}");
            assert!(memmem::find(&out[..out.len() - 3], b"\r\n.\r\n").is_none());
        }
    }
}
