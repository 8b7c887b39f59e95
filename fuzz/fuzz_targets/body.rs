//! The DATA body decoder (`smtp::data`) and the outbound DATA encoder (`smtp::client::dot_stuff`).
//!
//! The first octet picks the split seed; the rest is used twice:
//! - as wire bytes after DATA, in both line-ending modes: fed in random splits, the decoder must
//!   reach the same verdict as fed whole, consume everything until the end, end only at
//!   `CRLF . CRLF`, and hand back only bodies that meet the line rules (normalized: CRLF only,
//!   lines folded at 998) and the size cap;
//! - as a body to send: what the encoder makes of it must be read back by the decoder up to the
//!   last octet and no further, give back the body when it is clean CRLF text, and never end
//!   early for a lax receiver (one that takes a bare CR or LF as a line end and drops NUL): that
//!   is SMTP smuggling.
//!
//! The BDAT path keeps octets as they come through `BodyBuffer`, fuzzed here for its cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use volley::smtp::client::{DotStuffer, dot_stuff};
use volley::smtp::data::{
    BodyBuffer, DataDecoder, DataError, FOLD_LINE_BYTES, LineEndings, MAX_TEXT_LINE_BYTES,
};

/// Small enough that the fuzzer reaches the cap.
const MAX_MESSAGE_BYTES: usize = 1500;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let mut rng = Xorshift(u32::from(seed) | 1);
    decode_wire_bytes(input, &mut rng, LineEndings::Strict);
    decode_wire_bytes(input, &mut rng, LineEndings::Normalize);
    encode_then_decode(input, &mut rng);
    body_buffer_cap(input, &mut rng);
});

struct Xorshift(u32);

impl Xorshift {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0 as usize % below.max(1)
    }
}

type Verdict = Option<(usize, Result<Vec<u8>, DataError>)>;

/// Feeds `input` in pieces chosen by `rng` (whole when `rng` is `None`).
fn decode(
    input: &[u8],
    max: usize,
    mut rng: Option<&mut Xorshift>,
    endings: LineEndings,
) -> Verdict {
    let mut decoder = DataDecoder::new(max, endings);
    let mut pos = 0;
    while pos < input.len() {
        let step = match rng.as_deref_mut() {
            Some(rng) => rng.next(40) + 1,
            None => input.len(),
        };
        let end = (pos + step).min(input.len());
        let (used, done) = decoder.feed(&input[pos..end]);
        assert!(used <= end - pos);
        pos += used;
        if done {
            return Some((pos, decoder.finish()));
        }
        assert_eq!(pos, end, "an unfinished feed consumes everything");
    }
    None
}

fn decode_wire_bytes(input: &[u8], rng: &mut Xorshift, endings: LineEndings) {
    let whole = decode(input, MAX_MESSAGE_BYTES, None, endings);
    assert_eq!(decode(input, MAX_MESSAGE_BYTES, Some(rng), endings), whole);
    let Some((used, verdict)) = whole else {
        return;
    };
    let consumed = &input[..used];
    assert!(consumed == b".\r\n" || consumed.ends_with(b"\r\n.\r\n"));
    // Nothing before the end that the decoder read was itself an end of data.
    assert!(decode(&consumed[..used - 1], MAX_MESSAGE_BYTES, None, endings).is_none());
    if let Ok(body) = verdict {
        assert!(body.len() <= MAX_MESSAGE_BYTES);
        assert!(body.is_empty() || body.ends_with(b"\r\n"));
        for line in body.split_inclusive(|&b| b == b'\n') {
            let text = line.strip_suffix(b"\r\n").expect("only CRLF line ends");
            assert!(!text.contains(&b'\r') && !text.contains(&b'\n'));
            match endings {
                LineEndings::Strict => assert!(line.len() <= MAX_TEXT_LINE_BYTES),
                LineEndings::Normalize => assert!(text.len() <= FOLD_LINE_BYTES),
            }
        }
    }
}

fn encode_then_decode(body: &[u8], rng: &mut Xorshift) {
    let mut wire = Vec::new();
    dot_stuff(body, &mut wire);
    // The streaming form, in random chunks, sends the same octets.
    let mut stuffer = DotStuffer::new();
    let mut chunked = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let end = (pos + rng.next(40) + 1).min(body.len());
        stuffer.push(&body[pos..end], &mut chunked);
        pos = end;
    }
    stuffer.finish(&mut chunked);
    assert_eq!(chunked, wire);

    // A strict receiver reads it to the last octet and no further.
    let (used, verdict) =
        decode(&wire, usize::MAX, None, LineEndings::Strict).expect("the encoder ends the data");
    assert_eq!(used, wire.len(), "the data ended early: {wire:?}");
    let clean = !body.contains(&0) && crlf_only(body);
    let longest_line = body
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    if clean {
        let mut expected = body.to_vec();
        if !expected.is_empty() && !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        match verdict {
            Ok(decoded) => assert_eq!(decoded, expected),
            // A stuffing dot can push a line of 999 octets over the limit.
            Err(DataError::LineTooLong) => assert!(longest_line + 1 > MAX_TEXT_LINE_BYTES - 2),
            Err(e) => panic!("clean body refused: {e}"),
        }
    }

    // A lax receiver never finds an end before the real one.
    assert_eq!(
        lax_end(&wire),
        Some(wire.len()),
        "smuggling: {body:?} -> {wire:?}"
    );
}

/// Every CR is followed by LF and every LF preceded by CR.
fn crlf_only(body: &[u8]) -> bool {
    body.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => body.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && body[i - 1] == b'\r',
        _ => true,
    })
}

/// Where a lax receiver sees the end of data: it drops NUL, takes CR, LF or CRLF as a line end,
/// and stops at the first line that is a lone `.`. Returns the octets it consumed.
fn lax_end(data: &[u8]) -> Option<usize> {
    let mut line: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            0 => {}
            b'\r' | b'\n' => {
                if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
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

fn body_buffer_cap(input: &[u8], rng: &mut Xorshift) {
    let max = rng.next(600);
    let mut buffer = BodyBuffer::new(max);
    let mut kept = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        if rng.next(4) == 0 {
            buffer.announce(rng.next(800) as u64);
        }
        let end = (pos + rng.next(40) + 1).min(input.len());
        buffer.push(&input[pos..end]);
        kept.extend_from_slice(&input[pos..end]);
        pos = end;
    }
    assert_eq!(buffer.received_bytes(), input.len() as u64);
    let overflowed = buffer.overflowed();
    match buffer.into_bytes() {
        Some(bytes) => {
            assert!(!overflowed);
            assert_eq!(bytes, kept);
            assert!(bytes.len() <= max);
        }
        None => assert!(overflowed),
    }
}
