//! The cost of reading a DATA body: `DataDecoder::feed` (dot-unstuffing, the end of data, and the
//! checks on line ends, line lengths and NUL octets, with the copy into the body buffer) over
//! bodies of text lines, fed as a socket read would hand them over.
//!
//! `volley-data-bench [--size BYTES] [--line-bytes N] [--read-bytes N] [--messages N]`: prints one
//! JSON object with the time per message and per octet (median of five runs).

use std::time::Instant;

use clap::Parser;
use volley::smtp::data::{DataDecoder, LineEndings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Measure DATA body decoding per message and per octet")]
struct Args {
    /// Body size in octets (the end-of-data line not included).
    #[arg(long, default_value_t = 102_400)]
    size: usize,
    /// Length of each text line, CRLF included (76 + 2: base64 and quoted-printable).
    #[arg(long, default_value_t = 78)]
    line_bytes: usize,
    /// Octets handed to the decoder at a time (a socket read).
    #[arg(long, default_value_t = 65_536)]
    read_bytes: usize,
    /// Messages decoded per run.
    #[arg(long, default_value_t = 2_000)]
    messages: u32,
}

fn body(size: usize, line_bytes: usize) -> Vec<u8> {
    let text_bytes = line_bytes.saturating_sub(2).max(1);
    let mut body = Vec::with_capacity(size + line_bytes + 5);
    let mut n = 0u8;
    while body.len() < size {
        body.extend((0..text_bytes).map(|i| b'A' + (n.wrapping_add(i as u8) % 26)));
        body.extend_from_slice(b"\r\n");
        n = n.wrapping_add(1);
    }
    body.extend_from_slice(b".\r\n");
    body
}

fn main() {
    let args = Args::parse();
    let input = body(args.size, args.line_bytes);
    let read_bytes = args.read_bytes.max(1);
    let mut runs_ns = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..args.messages {
            let mut decoder = DataDecoder::new(input.len() * 2, LineEndings::Strict);
            decoder.expect(input.len() as u64);
            let mut ended = false;
            for read in input.chunks(read_bytes) {
                let mut rest = read;
                while !rest.is_empty() && !ended {
                    let (used, end) = decoder.feed(rest);
                    rest = rest.get(used..).unwrap_or_default();
                    ended = end;
                }
            }
            assert!(ended, "the end of data was not found");
            let decoded = decoder.finish().expect("a plain body");
            assert_eq!(decoded.len(), input.len() - 3);
        }
        runs_ns.push(started.elapsed().as_nanos() as f64 / f64::from(args.messages.max(1)));
    }
    runs_ns.sort_by(f64::total_cmp);
    let per_message_ns = runs_ns[runs_ns.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "size_bytes": args.size,
            "line_bytes": args.line_bytes,
            "read_bytes": read_bytes,
            "us_per_message": per_message_ns / 1e3,
            "ns_per_byte": per_message_ns / input.len() as f64,
            "runs_us": runs_ns.iter().map(|ns| ns / 1e3).collect::<Vec<_>>(),
        })
    );
}
