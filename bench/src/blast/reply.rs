//! Reading SMTP replies: a buffered parser that yields one reply code per (multi-line) reply.

use std::io;

use futures_lite::{AsyncRead, AsyncReadExt};

/// Bytes read from the socket at once.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Longest reply line accepted.
pub const MAX_REPLY_LINE_BYTES: usize = 4096;
/// How much of the last reply's text is kept for [`ReplyReader::last_text`].
pub const MAX_REPLY_TEXT_BYTES: usize = 1024;

/// Buffers what the server sent and splits it into replies.
#[derive(Debug)]
pub struct ReplyReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The lines of the latest (or current, if incomplete) reply, joined with `\n`.
    text: Vec<u8>,
    /// A reply's first line is still expected (its continuation lines are not).
    at_reply_start: bool,
}

impl Default for ReplyReader {
    fn default() -> Self {
        ReplyReader {
            buf: vec![0; READ_BUFFER_BYTES],
            start: 0,
            end: 0,
            text: Vec::with_capacity(256),
            at_reply_start: true,
        }
    }
}

impl ReplyReader {
    /// The code of the next complete reply already buffered, if any.
    pub fn parse_next(&mut self) -> io::Result<Option<u16>> {
        loop {
            let pending = self.buf.get(self.start..self.end).unwrap_or_default();
            let Some(lf) = memchr::memchr(b'\n', pending) else {
                if pending.len() > MAX_REPLY_LINE_BYTES {
                    return Err(bad_reply("reply line too long"));
                }
                return Ok(None);
            };
            let line = pending.get(..lf).unwrap_or_default();
            let code = match line.get(..3) {
                Some(digits) if digits.iter().all(u8::is_ascii_digit) => digits
                    .iter()
                    .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')),
                _ => return Err(bad_reply("reply does not start with a code")),
            };
            let more = line.get(3) == Some(&b'-');
            if self.at_reply_start {
                self.text.clear();
            } else if self.text.len() < MAX_REPLY_TEXT_BYTES {
                self.text.push(b'\n');
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let room = MAX_REPLY_TEXT_BYTES.saturating_sub(self.text.len());
            self.text
                .extend_from_slice(line.get(..room.min(line.len())).unwrap_or_default());
            self.at_reply_start = !more;
            self.start += lf + 1;
            if !more {
                return Ok(Some(code));
            }
        }
    }

    /// The full text of the reply last returned (lines joined with `\n`, at most
    /// [`MAX_REPLY_TEXT_BYTES`]).
    pub fn last_text(&self) -> &[u8] {
        &self.text
    }

    /// Waits for the next reply and returns its code.
    pub async fn next_code<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> io::Result<u16> {
        loop {
            if let Some(code) = self.parse_next()? {
                return Ok(code);
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = stream
                .read(self.buf.get_mut(self.end..).unwrap_or_default())
                .await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            self.end += n;
        }
    }
}

fn bad_reply(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_and_split_replies() {
        let input = b"250-a\r\n250-b\r\n250 c\r\n354 go\r\n45";
        let mut r = ReplyReader::default();
        r.buf[..input.len()].copy_from_slice(input);
        r.end = input.len();
        assert_eq!(r.parse_next().unwrap(), Some(250));
        assert_eq!(r.last_text(), b"250-a\n250-b\n250 c");
        assert_eq!(r.parse_next().unwrap(), Some(354));
        assert_eq!(r.last_text(), b"354 go");
        assert_eq!(r.parse_next().unwrap(), None);
        let rest = b"0 x\r\n";
        r.buf[r.end..r.end + rest.len()].copy_from_slice(rest);
        r.end += rest.len();
        assert_eq!(r.parse_next().unwrap(), Some(450));
    }

    #[test]
    fn garbage_is_an_error() {
        let mut r = ReplyReader::default();
        r.buf[..6].copy_from_slice(b"hello\n");
        r.end = 6;
        assert!(r.parse_next().is_err());
    }

    #[test]
    fn reads_from_a_stream() {
        let mut data: &[u8] = b"220 hi\r\n250-x\r\n250 y\r\n";
        let mut r = ReplyReader::default();
        futures_lite::future::block_on(async {
            assert_eq!(r.next_code(&mut data).await.unwrap(), 220);
            assert_eq!(r.next_code(&mut data).await.unwrap(), 250);
            assert!(r.next_code(&mut data).await.is_err());
        });
    }
}
