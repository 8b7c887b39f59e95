//! Message bodies on the wire: the DATA decoder (RFC 5321 section 4.1.1.4 and 4.5.2) and the
//! capped body buffer shared with BDAT (RFC 3030).
//!
//! The decoder is incremental (input may be split anywhere) and scans with `memchr`. Only
//! `CRLF . CRLF` ends the data: a bare CR or LF never does, so a message cannot smuggle a second
//! one past a less strict next hop; a message containing them is refused after its real end
//! (like Postfix `smtpd_forbid_bare_newline`).
//!
//! [`TextRules`] holds the rules every text body must meet, whichever command carried it: DATA
//! runs the octets it reads through them, and so does BDAT for any body not declared
//! `BODY=BINARYMIME` (binary bodies may hold any octet, RFC 3030 section 3, and never leave by
//! DATA: the client refuses to send them without BDAT).
//!
//! [`LineEndings`]: `Strict` refuses any bare LF and any line over 1000 octets. `Normalize` (the
//! listeners' default, as Postfix's `smtpd_forbid_bare_newline = normalize`) takes a bare LF as a
//! line end and stores it as CRLF, and folds lines over 998 octets with CRLF SP (as Postfix's
//! `smtp_line_length_limit` does on the way out; here before DKIM signs, so the signature covers
//! what is sent). Either way only `CRLF . CRLF` ends DATA, a bare CR is refused, and a line holding
//! a single dot next to a bare LF (`LF . LF`, `LF . CRLF`, `CRLF . LF`: an end of data to a lax
//! server, the SMTP smuggling pattern) refuses the message.

use memchr::{memchr2, memchr3};

use crate::smtp::reply::{EnhancedCode, Reply};

/// The longest text line in DATA, in octets including CRLF (RFC 5321 section 4.5.3.1.6).
pub const MAX_TEXT_LINE_BYTES: usize = 1000;
/// `Normalize`: a longer line (CRLF not counted) is folded with CRLF SP (RFC 5322's 998).
pub const FOLD_LINE_BYTES: usize = 998;

/// What a listener does with bare LF line ends and lines over 1000 octets (`line_endings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LineEndings {
    /// Refuse them: 550 5.6.11 for a bare LF, 500 5.5.6 for a long line.
    #[default]
    Strict,
    /// Store a bare LF as CRLF and fold long lines.
    Normalize,
}
/// The most a body buffer reserves ahead of the octets it has, so an announced chunk that never
/// arrives costs little.
pub const MAX_RESERVE_BYTES: usize = 1 << 20;

/// A body being received, never holding more than `max_bytes`: once over, it stops buffering
/// (and frees what it held) but keeps counting.
#[derive(Debug)]
pub struct BodyBuffer {
    bytes: Vec<u8>,
    max_bytes: usize,
    received_bytes: u64,
    overflowed: bool,
}

impl BodyBuffer {
    pub fn new(max_bytes: usize) -> BodyBuffer {
        BodyBuffer {
            bytes: Vec::new(),
            max_bytes,
            received_bytes: 0,
            overflowed: false,
        }
    }

    /// Appends `data`, or marks the body too big if it would exceed `max_bytes`.
    pub fn push(&mut self, data: &[u8]) {
        self.received_bytes = self.received_bytes.saturating_add(data.len() as u64);
        if self.overflowed || data.is_empty() {
            return;
        }
        let needed = self.bytes.len().saturating_add(data.len());
        if needed > self.max_bytes {
            self.overflowed = true;
            self.bytes = Vec::new();
            return;
        }
        if self.bytes.capacity() < needed {
            // Grow geometrically, but never past the cap.
            let target = needed
                .max(self.bytes.capacity().saturating_mul(2))
                .max(4096)
                .min(self.max_bytes);
            self.bytes.reserve_exact(target - self.bytes.len());
        }
        self.bytes.extend_from_slice(data);
    }

    /// Declares `additional` octets about to arrive (a BDAT chunk): marks the body too big at once
    /// if they cannot fit, else reserves room for them (at most `MAX_RESERVE_BYTES` ahead).
    pub fn announce(&mut self, additional: u64) {
        if self.overflowed {
            return;
        }
        let room = (self.max_bytes - self.bytes.len().min(self.max_bytes)) as u64;
        if additional > room {
            self.overflowed = true;
            self.bytes = Vec::new();
            return;
        }
        let ahead = additional.min(MAX_RESERVE_BYTES as u64) as usize;
        if self.bytes.capacity() - self.bytes.len() < ahead {
            self.bytes.reserve_exact(ahead);
        }
    }

    /// Memory the body holds now, in octets: its allocation, which grows ahead of the octets kept.
    pub fn held_bytes(&self) -> usize {
        self.bytes.capacity()
    }

    /// Frees what the body holds and keeps none of what follows (the memory budget for bodies in
    /// flight is gone); it keeps counting, and its verdict is then that of an overflow.
    pub fn discard(&mut self) {
        self.overflowed = true;
        self.bytes = Vec::new();
    }

    /// Whether the body went over `max_bytes`.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Octets received so far, including those not kept after an overflow.
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes
    }

    /// The body, or `None` if it overflowed.
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        (!self.overflowed).then_some(self.bytes)
    }
}

/// A body arriving in BDAT chunks (RFC 3030): the capped buffer, and the text rules unless the
/// body was declared `BODY=BINARYMIME`.
#[derive(Debug)]
pub struct ChunkedBody {
    buffer: BodyBuffer,
    rules: Option<TextRules>,
}

impl ChunkedBody {
    pub fn new(max_bytes: usize, binary: bool, endings: LineEndings) -> ChunkedBody {
        ChunkedBody {
            buffer: BodyBuffer::new(max_bytes),
            rules: (!binary).then(|| TextRules::new(endings)),
        }
    }

    /// See [`BodyBuffer::announce`].
    pub fn announce(&mut self, additional: u64) {
        self.buffer.announce(additional);
    }

    /// See [`BodyBuffer::held_bytes`].
    pub fn held_bytes(&self) -> usize {
        self.buffer.held_bytes()
    }

    /// See [`BodyBuffer::discard`].
    pub fn discard(&mut self) {
        self.buffer.discard();
    }

    /// The next octets of a chunk.
    pub fn push(&mut self, data: &[u8]) {
        if let Some(rules) = &mut self.rules {
            rules.scan(data);
        }
        self.buffer.push(data);
    }

    /// Why the body is already refused, if it is: over the size cap, or a text rule broken.
    pub fn broken(&self) -> Option<DataError> {
        if self.buffer.overflowed() {
            return Some(DataError::TooBig);
        }
        self.rules.as_ref().and_then(TextRules::broken)
    }

    /// The verdict after the LAST chunk.
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        if let Some(rules) = &self.rules {
            rules.finish()?;
        }
        let max_bytes = self.buffer.max_bytes;
        let body = self.buffer.into_bytes().ok_or(DataError::TooBig)?;
        match &self.rules {
            Some(rules) if rules.bare_lf || rules.long_line => normalized(body, max_bytes),
            _ => Ok(body),
        }
    }
}

/// `body` with every bare LF made CRLF and every line over `FOLD_LINE_BYTES` folded with CRLF SP;
/// `TooBig` when that makes it larger than `max_bytes`.
pub fn normalized(body: Vec<u8>, max_bytes: usize) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 16);
    let mut line = 0usize;
    let mut rest = &body[..];
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let (piece, after) = rest.split_at(end);
        let (content, newline) = match piece {
            [c @ .., b'\r', b'\n'] => (c, true),
            [c @ .., b'\n'] => (c, true),
            c => (c, false),
        };
        let mut content = content;
        while line + content.len() > FOLD_LINE_BYTES {
            let room = FOLD_LINE_BYTES - line;
            out.extend_from_slice(&content[..room]);
            out.extend_from_slice(b"\r\n ");
            line = 1;
            content = &content[room..];
        }
        out.extend_from_slice(content);
        line += content.len();
        if newline {
            out.extend_from_slice(b"\r\n");
            line = 0;
        }
        rest = after;
    }
    if out.len() > max_bytes {
        return Err(DataError::TooBig);
    }
    Ok(out)
}

/// Why a body was refused after its end (DATA) or at the chunk that broke a rule (BDAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("bare CR or LF in message")]
    BareNewline,
    #[error("NUL octet in message")]
    NulOctet,
    #[error("message larger than the maximum size")]
    TooBig,
    #[error("text line longer than {MAX_TEXT_LINE_BYTES} octets")]
    LineTooLong,
    /// `Normalize`: a line holding a single dot next to a bare LF (the SMTP smuggling pattern).
    #[error("a line with a single dot next to a bare LF")]
    DotLineBareNewline,
}

impl DataError {
    /// The reply this error earns.
    pub fn reply(self) -> Reply {
        match self {
            DataError::BareNewline => Reply::BARE_NEWLINE_IN_DATA,
            // RFC 5322 text and RFC 6152 8-bit data exclude NUL; some receivers drop it, which
            // would turn `CRLF NUL . CRLF` into an end of data (see docs/security.md).
            DataError::NulOctet => Reply::new(
                550,
                Some(EnhancedCode::new(5, 6, 0)),
                "Message contains NUL octets; send binary content as MIME-encoded text",
            ),
            DataError::TooBig => Reply::MESSAGE_TOO_BIG,
            DataError::LineTooLong => Reply::LINE_TOO_LONG,
            DataError::DotLineBareNewline => Reply::new(
                550,
                Some(EnhancedCode::new(5, 6, 11)),
                "Message contains a line with a single dot next to a bare LF (SMTP smuggling); use CRLF line endings",
            ),
        }
    }
}

/// The rules of a text body, checked incrementally over the octets as sent (before unstuffing):
/// every CR is followed by LF and every LF preceded by CR, no line is longer than
/// `MAX_TEXT_LINE_BYTES` (CRLF included), and no octet is NUL.
#[derive(Debug, Default)]
pub struct TextRules {
    endings: LineEndings,
    /// The last octet seen was a CR whose LF has not been seen yet.
    after_cr: bool,
    line_bytes: usize,
    bare_newline: bool,
    nul: bool,
    line_too_long: bool,
    /// `Normalize`: a bare LF was seen (the body is normalized at its end).
    bare_lf: bool,
    /// `Normalize`: a line over the limit was seen (folded at the end).
    long_line: bool,
    /// `Normalize`: the current line so far is exactly "." (octets as sent).
    line_is_dot: bool,
    /// `Normalize`: the previous line ended with a bare LF.
    previous_bare_lf: bool,
    dot_line_bare_newline: bool,
}

impl TextRules {
    pub fn new(endings: LineEndings) -> TextRules {
        TextRules {
            endings,
            ..TextRules::default()
        }
    }

    /// Notes the octets of a line between its line ends (no CR or LF in `text`).
    fn line_text(&mut self, text: &[u8]) {
        if text.is_empty() {
            return;
        }
        self.line_is_dot = self.line_bytes == 0 && text == b".";
    }

    /// A line ended: by CRLF, or by a bare LF (`bare`).
    fn line_end(&mut self, bare: bool) {
        if bare {
            match self.endings {
                LineEndings::Strict => self.bare_newline = true,
                LineEndings::Normalize => self.bare_lf = true,
            }
        }
        // Strictly, any bare LF already refuses the message with its own reply.
        if self.endings == LineEndings::Normalize
            && self.line_is_dot
            && (bare || self.previous_bare_lf)
        {
            self.dot_line_bare_newline = true;
        }
        self.previous_bare_lf = bare;
        self.line_is_dot = false;
        self.line_bytes = 0;
    }

    /// Takes the plain lines at the start of `bytes`, if a line starts there: whole lines that
    /// break no rule and need no closer look, each ending in CRLF with no other CR or LF, no NUL,
    /// at most `MAX_TEXT_LINE_BYTES` long, and not starting with a dot (stuffing, the end of data,
    /// a dot line's rules). Returns their length; the rules then stand as after a CRLF. A body of
    /// ordinary text goes through here in about one search and one pass per 1000 octets
    /// (`whole_plain_lines`) and one copy per read, where `scan` and the decoder's states take
    /// several calls per line.
    pub fn take_plain_lines(&mut self, bytes: &[u8]) -> usize {
        if self.line_bytes != 0 || self.after_cr {
            return 0;
        }
        let whole = whole_plain_lines(bytes);
        let taken = whole + plain_lines_one_by_one(bytes.get(whole..).unwrap_or_default());
        if taken > 0 {
            self.line_end(false);
        }
        taken
    }

    /// Checks the next octets of the body.
    pub fn scan(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let plain = self.take_plain_lines(rest);
            rest = rest.get(plain..).unwrap_or_default();
            if rest.is_empty() {
                return;
            }
            let Some(i) = memchr3(b'\r', b'\n', 0, rest) else {
                if self.after_cr {
                    self.bare_newline = true;
                    self.after_cr = false;
                }
                self.line_text(rest);
                self.count_line_bytes(rest.len());
                return;
            };
            let cr_before = self.after_cr && i == 0;
            if self.after_cr && i > 0 {
                self.bare_newline = true;
            }
            self.after_cr = false;
            self.line_text(rest.get(..i).unwrap_or_default());
            self.count_line_bytes(i + 1);
            match rest.get(i) {
                Some(b'\r') => {
                    if cr_before {
                        self.bare_newline = true;
                    }
                    self.after_cr = true;
                }
                Some(b'\n') => self.line_end(!cr_before),
                _ => {
                    if cr_before {
                        self.bare_newline = true;
                    }
                    self.nul = true;
                }
            }
            rest = rest.get(i + 1..).unwrap_or_default();
        }
    }

    fn count_line_bytes(&mut self, n: usize) {
        self.line_bytes = self.line_bytes.saturating_add(n);
        if self.line_bytes > MAX_TEXT_LINE_BYTES {
            match self.endings {
                LineEndings::Strict => self.line_too_long = true,
                LineEndings::Normalize => self.long_line = true,
            }
        }
    }

    /// A rule already broken by the octets seen so far (a CR at the very end is not yet one).
    /// A bare CR or LF outranks NUL, which outranks line length.
    pub fn broken(&self) -> Option<DataError> {
        if self.dot_line_bare_newline {
            Some(DataError::DotLineBareNewline)
        } else if self.bare_newline {
            Some(DataError::BareNewline)
        } else if self.nul {
            Some(DataError::NulOctet)
        } else if self.line_too_long {
            Some(DataError::LineTooLong)
        } else {
            None
        }
    }

    /// The verdict at the end of the body: a body may not end in a bare CR.
    pub fn finish(&self) -> Result<(), DataError> {
        if self.after_cr {
            return Err(DataError::BareNewline);
        }
        self.broken().map_or(Ok(()), Err)
    }
}

/// Where in a line the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// After CRLF (or at the start of the data).
    LineStart,
    /// A `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line: an LF now ends the data.
    DotCr,
    /// Inside a line.
    Text,
    /// Inside a line, after a CR not yet known to start a CRLF.
    Cr,
}

/// The incremental DATA decoder: finds the end (`CRLF . CRLF`), removes dot-stuffing, and runs
/// the octets as sent through [`TextRules`] and the size cap.
#[derive(Debug)]
pub struct DataDecoder {
    body: BodyBuffer,
    state: LineState,
    rules: TextRules,
    endings: LineEndings,
    /// `Normalize`: the current line began after a bare LF, so a dot line here is no end of data.
    after_bare_lf: bool,
}

impl DataDecoder {
    /// A decoder positioned just after the DATA command's CRLF.
    pub fn new(max_message_bytes: usize, endings: LineEndings) -> DataDecoder {
        DataDecoder {
            body: BodyBuffer::new(max_message_bytes),
            state: LineState::LineStart,
            rules: TextRules::new(endings),
            endings,
            after_bare_lf: false,
        }
    }

    /// Consumes input up to and including the end-of-data line. Returns the octets consumed and
    /// whether the end was reached; after the end, the rest of `input` is not looked at.
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while let Some(&byte) = input.get(i) {
            match self.state {
                LineState::LineStart => {
                    let rest = input.get(i..).unwrap_or_default();
                    let plain = self.rules.take_plain_lines(rest);
                    if plain > 0 {
                        self.body.push(rest.get(..plain).unwrap_or_default());
                        self.after_bare_lf = false;
                        i += plain;
                        continue;
                    }
                    if byte == b'.' {
                        self.state = LineState::Dot;
                        i += 1;
                    } else {
                        self.state = LineState::Text;
                    }
                }
                LineState::Dot => {
                    if byte == b'\r' {
                        self.state = LineState::DotCr;
                        i += 1;
                    } else {
                        // Dot-stuffing: the leading dot goes; the rest of the line is text.
                        self.rules.scan(b".");
                        self.state = LineState::Text;
                    }
                }
                LineState::DotCr => {
                    if byte == b'\n' && self.after_bare_lf {
                        // `LF . CRLF`: no end of data (only CRLF . CRLF is one); the rules refuse
                        // the message for it.
                        self.text(b".\r\n");
                        self.after_bare_lf = false;
                        self.state = LineState::LineStart;
                        i += 1;
                        continue;
                    }
                    if byte == b'\n' {
                        return (i + 1, true);
                    }
                    // `.` CR x: a bare CR; the dot was stuffing.
                    self.rules.scan(b".\r");
                    self.body.push(b"\r");
                    self.state = LineState::Text;
                }
                LineState::Text => {
                    let rest = input.get(i..).unwrap_or_default();
                    match memchr2(b'\r', b'\n', rest) {
                        None => {
                            self.text(rest);
                            i = input.len();
                        }
                        Some(offset) if rest.get(offset) == Some(&b'\r') => {
                            // The CR goes to the body with what follows it.
                            self.text(rest.get(..offset).unwrap_or_default());
                            self.rules.scan(b"\r");
                            self.state = LineState::Cr;
                            i += offset + 1;
                        }
                        Some(offset) => {
                            // A bare LF: strictly not a line end, and the rules refuse it;
                            // normalized, a line end for dot-stuffing (never for the end of data).
                            self.text(rest.get(..=offset).unwrap_or_default());
                            i += offset + 1;
                            if self.endings == LineEndings::Normalize {
                                self.state = LineState::LineStart;
                                self.after_bare_lf = true;
                            }
                        }
                    }
                }
                LineState::Cr => {
                    if byte == b'\n' {
                        self.rules.scan(b"\n");
                        self.body.push(b"\r\n");
                        self.state = LineState::LineStart;
                        self.after_bare_lf = false;
                        i += 1;
                    } else {
                        self.body.push(b"\r");
                        self.state = LineState::Text;
                    }
                }
            }
        }
        (i, false)
    }

    fn text(&mut self, bytes: &[u8]) {
        self.rules.scan(bytes);
        self.body.push(bytes);
    }

    /// The client declared the body's size (MAIL `SIZE=`, RFC 1870): room for it is reserved now
    /// (at most `MAX_RESERVE_BYTES`, never past the cap), so the buffer does not grow, copying
    /// what it holds each time, while the body arrives. A wrong estimate costs nothing more
    /// than growing as without one.
    pub fn expect(&mut self, size: u64) {
        self.body.announce(size.min(self.body.max_bytes as u64));
    }

    /// Body octets received so far (after unstuffing), including any not kept after an overflow.
    pub fn received_bytes(&self) -> u64 {
        self.body.received_bytes()
    }

    /// See [`BodyBuffer::held_bytes`].
    pub fn held_bytes(&self) -> usize {
        self.body.held_bytes()
    }

    /// Frees the body kept so far and keeps none of the rest; the end of the data is still found
    /// and the text rules still run (see [`BodyBuffer::discard`]).
    pub fn discard_body(&mut self) {
        self.body.discard();
    }

    /// The verdict once `feed` reported the end: the unstuffed body (ending in the CRLF of its last
    /// line), or why it is refused. A bare CR/LF outranks NUL, which outranks the size, which
    /// outranks line length.
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        let rules = self.rules.finish();
        if let Err(
            e @ (DataError::BareNewline | DataError::NulOctet | DataError::DotLineBareNewline),
        ) = rules
        {
            return Err(e);
        }
        let max_bytes = self.body.max_bytes;
        let body = self.body.into_bytes().ok_or(DataError::TooBig)?;
        rules?;
        if self.rules.bare_lf || self.rules.long_line {
            return normalized(body, max_bytes);
        }
        Ok(body)
    }
}

/// Most of the plain lines at the start of `bytes` (see `TextRules::take_plain_lines`), found
/// without a search per line: a backward search for the last LF within each `MAX_TEXT_LINE_BYTES`
/// window bounds the lengths of the lines in it, and one pass over its pairs of neighbouring
/// octets (`plain_segment`) checks them all. Stops before the first window with a line that needs
/// a closer look; `plain_lines_one_by_one` goes on from there.
fn whole_plain_lines(bytes: &[u8]) -> usize {
    let mut start = 0;
    while let Some(window) = bytes.get(start..bytes.len().min(start + MAX_TEXT_LINE_BYTES)) {
        let Some(last_lf) = memchr::memrchr(b'\n', window) else {
            break;
        };
        match window.get(..=last_lf) {
            Some(segment) if plain_segment(segment) => start += last_lf + 1,
            _ => break,
        }
    }
    start
}

/// Whether `segment` (lines from a line start, ending with an LF, none longer than the limit)
/// holds only plain lines: no CR but before an LF, no LF but after a CR, no dot starting a line,
/// no NUL. Branch-free over octet pairs, so the compiler vectorizes it.
fn plain_segment(segment: &[u8]) -> bool {
    if matches!(segment.first(), Some(b'.' | b'\n' | 0) | None) {
        return false;
    }
    let before = segment.get(..segment.len() - 1).unwrap_or_default();
    let after = segment.get(1..).unwrap_or_default();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2, checked just above.
        return unsafe { pair_flaws_avx2(before, after) } == 0;
    }
    pair_flaws(before, after) == 0
}

/// Non-zero when a pair of neighbouring octets (`before[i]`, `after[i]`) is a flaw for
/// `plain_segment`.
#[inline(always)]
fn pair_flaws(before: &[u8], after: &[u8]) -> u8 {
    let mut flaw = 0u8;
    for (&x, &y) in before.iter().zip(after) {
        flaw |= u8::from((x == b'\r') != (y == b'\n'))
            | u8::from(x == b'\n' && y == b'.')
            | u8::from(y == 0);
    }
    flaw
}

/// `pair_flaws` compiled for AVX2 (32 octets a step instead of the baseline's 16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pair_flaws_avx2(before: &[u8], after: &[u8]) -> u8 {
    pair_flaws(before, after)
}

/// The plain lines at the start of `bytes`, one search per line: where `whole_plain_lines` finds
/// a line that is not plain, the lines before it.
fn plain_lines_one_by_one(bytes: &[u8]) -> usize {
    let mut taken = 0;
    while let Some(rest) = bytes.get(taken..).filter(|r| r.first() != Some(&b'.')) {
        let Some(i) = memchr3(b'\r', b'\n', 0, rest) else {
            break;
        };
        if rest.get(i) != Some(&b'\r')
            || rest.get(i + 1) != Some(&b'\n')
            || i + 2 > MAX_TEXT_LINE_BYTES
        {
            break;
        }
        taken += i + 2;
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_plain_lines_agree_with_the_search_per_line() {
        let mut rng = fastrand::Rng::with_seed(5321);
        let mut all_plain = 0;
        for _ in 0..20_000 {
            let mut bytes = Vec::new();
            for _ in 0..rng.usize(0..6) {
                // Mostly plain lines, some near the length limit, now and then a flaw.
                let len = match rng.u8(0..4) {
                    0 => rng.usize(MAX_TEXT_LINE_BYTES - 4..MAX_TEXT_LINE_BYTES + 2),
                    _ => rng.usize(0..80),
                };
                bytes.extend((0..len).map(|_| b'a' + rng.u8(0..26)));
                bytes.extend_from_slice(b"\r\n");
                if rng.u8(0..8) == 0 {
                    let at = rng.usize(0..=bytes.len());
                    let flaw = [b'\r', b'\n', b'.', 0][rng.usize(0..4)];
                    bytes.insert(at, flaw);
                }
            }
            if rng.bool() {
                bytes.extend_from_slice(&b"tail\r"[..rng.usize(0..6)]);
            }
            let exact = plain_lines_one_by_one(&bytes);
            let whole = whole_plain_lines(&bytes);
            // The fast part never takes a line the search per line would not...
            assert!(whole <= exact, "{whole} {exact} {bytes:?}");
            assert_eq!(
                whole + plain_lines_one_by_one(&bytes[whole..]),
                exact,
                "{bytes:?}"
            );
            // ...and stops short only within the window of a line that is not plain.
            assert!(
                exact - whole < MAX_TEXT_LINE_BYTES || exact == 0,
                "{bytes:?}"
            );
            let lines_end = memchr::memrchr(b'\n', &bytes).map_or(0, |i| i + 1);
            if exact == lines_end && exact > 0 {
                assert_eq!(whole, exact, "{bytes:?}");
                all_plain += 1;
            }
        }
        assert!(all_plain > 1_000, "{all_plain}");
    }

    /// Feeds `input` in pieces of `step` octets; returns the octets consumed and the verdict.
    fn decode(
        input: &[u8],
        step: usize,
        max: usize,
    ) -> Option<(usize, Result<Vec<u8>, DataError>)> {
        decode_with(input, step, max, LineEndings::Strict)
    }

    fn decode_with(
        input: &[u8],
        step: usize,
        max: usize,
        endings: LineEndings,
    ) -> Option<(usize, Result<Vec<u8>, DataError>)> {
        let mut decoder = DataDecoder::new(max, endings);
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + step).min(input.len());
            let (used, done) = decoder.feed(&input[pos..end]);
            pos += used;
            if done {
                return Some((pos, decoder.finish()));
            }
            assert_eq!(pos, end, "an unfinished feed consumes everything");
        }
        None
    }

    fn decode_all_splits(input: &[u8]) -> Option<(usize, Result<Vec<u8>, DataError>)> {
        let whole = decode(input, input.len().max(1), 1 << 20);
        for step in 1..input.len().max(1) {
            assert_eq!(decode(input, step, 1 << 20), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn plain_body_ends_at_crlf_dot_crlf() {
        let input = b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        let (used, body) = decode_all_splits(input).unwrap();
        assert_eq!(used, input.len() - 6);
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\nhello\r\n");
    }

    #[test]
    fn empty_body() {
        assert_eq!(decode(b".\r\n", 3, 10), Some((3, Ok(Vec::new()))));
    }

    #[test]
    fn dot_unstuffing() {
        let input = b"..leading\r\n...\r\nmid.dle\r\n..\r\n.\r\n";
        let (_, body) = decode_all_splits(input).unwrap();
        assert_eq!(body.unwrap(), b".leading\r\n..\r\nmid.dle\r\n.\r\n");
    }

    #[test]
    fn smuggling_sequences_never_end_data() {
        for evil in [
            &b"a\n.\nb"[..],
            b"a\r.\rb",
            b"a\n.\r\nb",
            b"a\r\n.\nb",
            b"a\r\n.\rb",
            b"a\r.\r\nb",
            b"a\r\n.\r\rb",
        ] {
            let mut decoder = DataDecoder::new(1000, LineEndings::Strict);
            let (used, done) = decoder.feed(evil);
            assert!(!done, "{evil:?}");
            assert_eq!(used, evil.len());
            let mut input = evil.to_vec();
            input.extend_from_slice(b"\r\n.\r\n");
            let (used, verdict) = decode_all_splits(&input).unwrap();
            assert_eq!(used, input.len(), "{evil:?}");
            assert_eq!(verdict, Err(DataError::BareNewline), "{evil:?}");
        }
    }

    #[test]
    fn bare_newlines_are_flagged() {
        for input in [
            &b"a\nb\r\n.\r\n"[..],
            b"a\rb\r\n.\r\n",
            b"a\r\r\n.\r\n",
            b"\n.\r\n.\r\n",
        ] {
            assert_eq!(
                decode_all_splits(input).unwrap().1,
                Err(DataError::BareNewline)
            );
        }
    }

    #[test]
    fn line_length_limit_includes_crlf() {
        let mut ok = vec![b'x'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert!(decode(&ok, 7, 1 << 20).unwrap().1.is_ok());
        let mut stuffed = vec![b'.'; 999];
        stuffed.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(
            decode(&stuffed, 7, 1 << 20).unwrap().1,
            Err(DataError::LineTooLong)
        );
        let mut long = vec![b'x'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let (used, verdict) = decode(&long, 7, 1 << 20).unwrap();
        assert_eq!(used, long.len());
        assert_eq!(verdict, Err(DataError::LineTooLong));
    }

    #[test]
    fn size_cap_stops_buffering_but_reads_to_the_end() {
        let mut input = b"0123456789\r\n".repeat(10);
        input.extend_from_slice(b".\r\n");
        let (used, verdict) = decode(&input, 5, 50).unwrap();
        assert_eq!(used, input.len());
        assert_eq!(verdict, Err(DataError::TooBig));
        let (_, verdict) = decode(&input, 5, 120).unwrap();
        assert_eq!(verdict.unwrap().len(), 120);
        let mut decoder = DataDecoder::new(50, LineEndings::Strict);
        decoder.feed(&input);
        assert_eq!(decoder.received_bytes(), 120);
    }

    #[test]
    fn body_buffer_never_exceeds_its_cap() {
        let mut body = BodyBuffer::new(10_000);
        for _ in 0..99 {
            body.push(&[1; 100]);
            assert!(body.bytes.capacity() <= 10_000);
        }
        body.announce(100);
        assert!(body.bytes.capacity() <= 10_000);
        body.push(&[1; 100]);
        assert!(!body.overflowed());
        body.push(&[1]);
        assert!(body.overflowed());
        assert_eq!(body.received_bytes(), 10_001);
        assert_eq!(body.into_bytes(), None);
        let mut body = BodyBuffer::new(10);
        body.announce(11);
        assert!(body.overflowed());
    }

    #[test]
    fn errors_map_to_replies() {
        assert_eq!(DataError::BareNewline.reply().code(), 550);
        assert_eq!(
            DataError::BareNewline
                .reply()
                .enhanced()
                .unwrap()
                .to_string(),
            "5.6.11"
        );
        assert_eq!(DataError::TooBig.reply().code(), 552);
        assert_eq!(
            DataError::LineTooLong
                .reply()
                .enhanced()
                .unwrap()
                .to_string(),
            "5.5.6"
        );
    }

    #[test]
    fn text_rules_on_raw_octets_match_the_decoder_for_every_split() {
        for (body, verdict) in [
            (&b"a\r\nb\r\n"[..], Ok(())),
            (b"a\nb\r\n", Err(DataError::BareNewline)),
            (b"a\rb\r\n", Err(DataError::BareNewline)),
            (b"a\r\r\n", Err(DataError::BareNewline)),
            (b"a\r", Err(DataError::BareNewline)),
            (b"a\x00\r\n", Err(DataError::NulOctet)),
            (b"\r\x00\n", Err(DataError::BareNewline)),
        ] {
            for cut in 0..=body.len() {
                let mut rules = TextRules::new(LineEndings::Strict);
                rules.scan(&body[..cut]);
                rules.scan(&body[cut..]);
                assert_eq!(rules.finish(), verdict, "{body:?} cut at {cut}");
            }
            let mut data = body.to_vec();
            if !data.ends_with(b"\r\n") {
                data.extend_from_slice(b"\r\n");
            }
            data.extend_from_slice(b".\r\n");
            let decoded = decode_all_splits(&data).unwrap().1.map(|_| ());
            assert_eq!(decoded, verdict, "DATA {data:?}");
        }
        let mut long = TextRules::new(LineEndings::Strict);
        long.scan(&[b'x'; 999]);
        assert_eq!(long.broken(), None, "999 octets and no CRLF yet");
        long.scan(b"\r\n");
        assert_eq!(long.broken(), Some(DataError::LineTooLong));
    }

    /// Random bodies from an alphabet rich in what matters (dots, CR, LF, NUL, long lines).
    fn random_body(rng: &mut fastrand::Rng) -> Vec<u8> {
        let mut body = Vec::new();
        for _ in 0..rng.usize(1..60) {
            match rng.u8(0..20) {
                0 => body.push(b'.'),
                1 => body.push(b'\r'),
                2 => body.push(b'\n'),
                3 => body.push(0),
                4 => body.extend(std::iter::repeat_n(b'x', rng.usize(990..1000))),
                5 => body.extend_from_slice(b"\r\n."),
                6 => body.extend_from_slice(b"\r\n.\r\n"),
                _ => body.extend_from_slice(b"text\r\n"),
            }
        }
        body
    }

    #[test]
    fn plain_lines_taken_whole_agree_with_the_octet_by_octet_path() {
        // One octet at a time no line is ever whole, so `take_plain_lines` takes nothing: that is
        // the path without it, against which the fast one is checked.
        let mut rng = fastrand::Rng::with_seed(16);
        for _ in 0..3_000 {
            let body = random_body(&mut rng);
            for endings in [LineEndings::Strict, LineEndings::Normalize] {
                for max in [1 << 20, 3_000] {
                    let whole = decode_with(&body, body.len().max(1), max, endings);
                    let octets = decode_with(&body, 1, max, endings);
                    assert_eq!(whole, octets, "DATA {endings:?} {body:?}");
                }
                let mut whole = TextRules::new(endings);
                whole.scan(&body);
                let mut octets = TextRules::new(endings);
                body.chunks(1).for_each(|b| octets.scan(b));
                assert_eq!(format!("{whole:?}"), format!("{octets:?}"), "{body:?}");
            }
        }
        let mut plain = TextRules::new(LineEndings::Strict);
        assert_eq!(plain.take_plain_lines(b"ab\r\n\r\ncd\r\n.x\r\n"), 10);
        assert_eq!(plain.take_plain_lines(b"ab"), 0, "no line end");
    }

    #[test]
    fn chunked_body_applies_text_rules_unless_binary() {
        let mut text = ChunkedBody::new(100, false, LineEndings::Strict);
        text.push(b"a\x00\r\n");
        assert_eq!(text.broken(), Some(DataError::NulOctet));
        let mut binary = ChunkedBody::new(100, true, LineEndings::Strict);
        binary.push(b"a\x00\r\r\n.\n");
        assert_eq!(binary.broken(), None);
        assert_eq!(binary.finish().unwrap(), b"a\x00\r\r\n.\n");
        let mut big = ChunkedBody::new(4, false, LineEndings::Strict);
        big.push(b"a\r\nb\r\n");
        assert_eq!(big.broken(), Some(DataError::TooBig));
    }

    fn decode_normalized(input: &[u8], max: usize) -> Option<(usize, Result<Vec<u8>, DataError>)> {
        let whole = decode_with(input, input.len().max(1), max, LineEndings::Normalize);
        for step in 1..input.len().clamp(1, 64) {
            assert_eq!(
                decode_with(input, step, max, LineEndings::Normalize),
                whole,
                "step {step}"
            );
        }
        whole
    }

    #[test]
    fn normalized_bare_lf_lines_are_stored_as_crlf_and_only_crlf_dot_crlf_ends() {
        let input = b"Subject: x\n\nline one\nline two\r\n.\r\n";
        let (used, body) = decode_normalized(input, 1 << 20).unwrap();
        assert_eq!(used, input.len());
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\nline one\r\nline two\r\n");
        // Dot-stuffing after a bare LF is undone, as after CRLF.
        let (_, body) = decode_normalized(b"a\n..b\r\n.\r\n", 1 << 20).unwrap();
        assert_eq!(body.unwrap(), b"a\r\n.b\r\n");
    }

    #[test]
    fn normalized_a_dot_line_next_to_a_bare_lf_is_smuggling_and_refused() {
        for input in [
            &b"hello\n.\nMAIL FROM:<e@x>\r\n.\r\n"[..],
            b"hello\n.\r\nMAIL FROM:<e@x>\r\n.\r\n",
            b"hello\r\n.\nMAIL FROM:<e@x>\r\n.\r\n",
        ] {
            let (used, verdict) = decode_normalized(input, 1 << 20).unwrap();
            assert_eq!(
                used,
                input.len(),
                "{:?}: only the final CRLF . CRLF ends",
                String::from_utf8_lossy(input)
            );
            assert_eq!(verdict, Err(DataError::DotLineBareNewline));
            assert!(
                DataError::DotLineBareNewline
                    .reply()
                    .to_string()
                    .starts_with("550 5.6.11")
            );
        }
        // A bare CR is refused as before.
        let (_, verdict) = decode_normalized(b"a\rb\r\n.\r\n", 1 << 20).unwrap();
        assert_eq!(verdict, Err(DataError::BareNewline));
        // A dot line between CRLFs inside the text is ordinary stuffed text.
        let (_, body) = decode_normalized(b"a\r\n..\r\nb\r\n.\r\n", 1 << 20).unwrap();
        assert_eq!(body.unwrap(), b"a\r\n.\r\nb\r\n");
    }

    #[test]
    fn normalized_long_lines_are_folded_at_998_with_crlf_space() {
        let mut input = b"Subject: long\r\n\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 2500));
        input.extend_from_slice(b"\r\n.\r\n");
        let (_, body) = decode_normalized(&input, 1 << 20).unwrap();
        let body = body.unwrap();
        let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
        assert!(
            lines.iter().all(|l| l.len() <= FOLD_LINE_BYTES + 1),
            "every line fits"
        );
        assert_eq!(lines[2].len(), FOLD_LINE_BYTES + 1);
        assert!(
            lines[3].starts_with(b" x"),
            "a continuation starts with a space"
        );
        let xs = body.iter().filter(|&&b| b == b'x').count();
        assert_eq!(xs, 2500, "nothing lost");
        // Strict still refuses it.
        let (_, strict) = decode(&input, input.len(), 1 << 20).unwrap();
        assert_eq!(strict, Err(DataError::LineTooLong));
    }

    #[test]
    fn normalized_bdat_bodies_too_and_the_size_cap_holds_after_normalizing() {
        let mut chunked = ChunkedBody::new(1 << 20, false, LineEndings::Normalize);
        chunked.push(b"a\nb\n");
        assert_eq!(chunked.finish().unwrap(), b"a\r\nb\r\n");
        assert_eq!(normalized(b"a\nb\n".to_vec(), 5), Err(DataError::TooBig));
        let mut binary = ChunkedBody::new(1 << 20, true, LineEndings::Normalize);
        binary.push(b"a\nb");
        assert_eq!(
            binary.finish().unwrap(),
            b"a\nb",
            "binary bodies are not touched"
        );
    }
}
