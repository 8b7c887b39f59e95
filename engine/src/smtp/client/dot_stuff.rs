//! Transparency for DATA (RFC 5321 4.5.2): a `.` is added before every line that starts with `.`,
//! and the body ends with `CRLF.CRLF`.
//!
//! Two ways to use it, neither copies the body unless you ask for a copy:
//! - `DotStuffer::segments(chunk)` yields slices of the original chunk with `"."` slices between
//!   them, for a vectored or buffered writer (no copy of the body at all);
//! - `DotStuffer::push(chunk, &mut out)` / `dot_stuff(body, &mut out)` append the stuffed bytes to a
//!   buffer (one copy, in long runs found with `memchr`).
//!
//! The body may be fed in chunks of any size. The output never holds a line that any receiver,
//! however lax, can read as the end of data (SMTP smuggling):
//! - a `.` after **any** CR or LF is stuffed, bare or not, so a receiver that takes a bare CR or a
//!   bare LF as a line end still sees `..`, never a lone `.`;
//! - NUL octets are dropped (and the `.` test looks through them), because receivers that drop
//!   NUL would otherwise read `CRLF NUL . CRLF` as the end. Reception refuses NUL in text bodies
//!   already (`smtp::data::TextRules`), so only bodies from elsewhere (API, DSNs) lose them.

use memchr::memchr2;

/// Bytes that end the data when the body already ends with CRLF (or is empty).
pub const END_AFTER_CRLF: &[u8] = b".\r\n";
/// Bytes that end the data when the body does not end with CRLF: the final CRLF is supplied.
pub const END_WITH_CRLF: &[u8] = b"\r\n.\r\n";

/// Streaming dot-stuffer: remembers across chunks whether the last octet sent ended a line and how
/// the body ends.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// The last octet sent was CR or LF, or nothing was sent yet: a `.` now is stuffed.
    after_newline: bool,
    /// The last two octets sent (0 where none).
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
            after_newline: true,
            tail: [0, 0],
            empty: true,
        }
    }

    /// The stuffed form of `chunk` as slices to write in order: pieces of `chunk` and `"."`.
    pub fn segments<'a>(&mut self, chunk: &'a [u8]) -> Segments<'a> {
        let segments = Segments {
            rest: chunk,
            scan_from: 0,
            dot_next: false,
            after_newline: self.after_newline,
        };
        // The state after this chunk, from its last two octets that are sent (not NUL).
        let mut sent = chunk.iter().rev().filter(|&&b| b != 0);
        if let Some(&last) = sent.next() {
            let before = sent.next().copied().unwrap_or(self.tail[1]);
            self.tail = [before, last];
            self.after_newline = is_newline(last);
            self.empty = false;
        }
        segments
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

fn is_newline(byte: u8) -> bool {
    byte == b'\r' || byte == b'\n'
}

/// Iterator over the stuffed form of one chunk (see `DotStuffer::segments`).
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    /// What is left to send; `rest[..scan_from]` is known to hold no NUL and no `.` to stuff.
    rest: &'a [u8],
    scan_from: usize,
    dot_next: bool,
    /// The last octet sent before `rest` was CR or LF (or none was sent).
    after_newline: bool,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.dot_next {
            self.dot_next = false;
            return Some(b".");
        }
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let unscanned = self.rest.get(self.scan_from..).unwrap_or_default();
            let Some(offset) = memchr2(b'.', 0, unscanned) else {
                let all = std::mem::take(&mut self.rest);
                self.scan_from = 0;
                return Some(all);
            };
            let i = self.scan_from + offset;
            let newline_before = match i.checked_sub(1) {
                None => self.after_newline,
                Some(prev) => self.rest.get(prev).copied().is_some_and(is_newline),
            };
            let head = self.rest.get(..i).unwrap_or_default();
            if self.rest.get(i) == Some(&0) {
                // Drop the NUL; what was sent before it still decides for a `.` after it.
                self.rest = self.rest.get(i + 1..).unwrap_or_default();
                self.scan_from = 0;
                self.after_newline = newline_before;
                if !head.is_empty() {
                    return Some(head);
                }
                continue;
            }
            if !newline_before {
                self.scan_from = i + 1;
                continue;
            }
            // A `.` that starts a line for some receiver: send one more before it.
            self.rest = self.rest.get(i..).unwrap_or_default();
            self.scan_from = 1;
            self.after_newline = false;
            if head.is_empty() {
                return Some(b".");
            }
            self.dot_next = true;
            return Some(head);
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

    /// Where a lax receiver sees the end of data: it drops NUL, takes CR, LF or CRLF as a line
    /// end, and stops at the first line that is a lone `.`. Returns the octets it consumed.
    fn lax_end(data: &[u8]) -> Option<usize> {
        let mut line: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < data.len() {
            match data[i] {
                0 => {}
                b'\r' | b'\n' => {
                    let crlf = data[i] == b'\r' && data.get(i + 1) == Some(&b'\n');
                    if crlf {
                        i += 1;
                    }
                    if line == b"." {
                        return Some(i + 1);
                    }
                    line.clear();
                }
                b => line.push(b),
            }
            i += 1;
        }
        None
    }

    #[test]
    fn smuggling_attack_through_bare_cr_is_defused() {
        // The exact attack: a bare CR, a dot, CRLF, then a second transaction.
        let body = b"Subject: hi\r\n\r\nx\r.\r\nMAIL FROM:<ceo@bank.example>\r\nRCPT TO:<v@x.example>\r\nDATA\r\nspoofed\r\n";
        let out = stuffed(body);
        assert!(
            memchr::memmem::find(&out, b"x\r..\r\nMAIL FROM").is_some(),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(
            lax_end(&out),
            Some(out.len()),
            "only the real end ends the data"
        );
        for evil in [
            &b"a\r.\rMAIL"[..],
            b"a\n.\nMAIL",
            b"a\r\n.\nMAIL",
            b"a\n.\r\nMAIL",
            b"a\r\n\x00.\r\nMAIL",
            b"a\r\x00\x00.\x00\rMAIL",
            b".\rMAIL",
            b"\x00.\r\nMAIL",
        ] {
            let out = stuffed(evil);
            assert_eq!(lax_end(&out), Some(out.len()), "{evil:?} -> {out:?}");
        }
    }

    #[test]
    fn nul_octets_are_dropped() {
        assert_eq!(stuffed(b"a\x00b\r\n"), b"ab\r\n.\r\n");
        assert_eq!(stuffed(b"\x00"), b".\r\n", "nothing sent: no CRLF to add");
        assert_eq!(stuffed(b"a\r\n\x00"), b"a\r\n.\r\n");
        assert_eq!(stuffed(b"a\r\n\x00.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(
            stuffed(b"x\x00.\r\n"),
            b"x.\r\n.\r\n",
            "a dot inside a line stays"
        );
    }

    #[test]
    fn lax_receivers_never_see_an_early_end_in_random_bodies() {
        let alphabet = [b'.', b'\r', b'\n', b'a', 0];
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let len = rng.usize(0..16);
            let body: Vec<u8> = (0..len).map(|_| alphabet[rng.usize(0..5)]).collect();
            let whole = stuffed(&body);
            assert_eq!(lax_end(&whole), Some(whole.len()), "{body:?} -> {whole:?}");
            assert!(!whole[..whole.len() - 3].contains(&0));
            // Any split gives the same octets.
            let cut = rng.usize(0..=body.len());
            let mut s = DotStuffer::new();
            let mut out = Vec::new();
            s.push(&body[..cut], &mut out);
            s.push(&body[cut..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, whole, "{body:?} split at {cut}");
        }
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
            assert!(memchr::memmem::find(&out[..out.len() - 3], b"\r\n.\r\n").is_none());
        }
    }
}
