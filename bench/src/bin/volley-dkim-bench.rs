//! What DKIM signing costs per message at reception: the relaxed body hash, the header
//! canonicalization and one private-key operation, for an RSA-2048 and an Ed25519 key and three
//! message sizes. Prints µs per message. The keys are the fixed test keys of engine/tests/data.
//!
//! Run in release: `cargo run --release -p volley-bench --bin volley-dkim-bench [MESSAGES]`.

use std::hint::black_box;
use std::time::Instant;

use volley::dkim::{DkimSigner, SigningKey};

const RSA_KEY: &[u8] = include_bytes!("../../../engine/tests/data/dkim-test-rsa2048.pem");
const ED25519_KEY: &[u8] = include_bytes!("../../../engine/tests/data/dkim-test-ed25519.pem");

/// A message of about `bytes` bytes: the usual headers, then 78-character body lines.
fn message(bytes: usize) -> Vec<u8> {
    let mut m = b"From: News <news@acme.example>\r\nTo: <bob@example.net>\r\n\
Subject: Your weekly digest\r\nDate: Mon, 30 Nov 2026 03:00:00 +0000\r\n\
Message-ID: <1234@acme.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
        .to_vec();
    let line = format!(
        "{}\r\n",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(2)
    );
    while m.len() < bytes {
        m.extend_from_slice(&line.as_bytes()[..78.min(line.len())]);
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn main() {
    let messages: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    for (name, pem) in [("rsa-2048", RSA_KEY), ("ed25519", ED25519_KEY)] {
        let key = match SigningKey::from_pem(pem, name) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        };
        let signer = DkimSigner {
            domain: "acme.example".into(),
            selector: "bench".into(),
            key,
        };
        for size in [1_000, 10_000, 100_000] {
            let m = message(size);
            let start = Instant::now();
            for _ in 0..messages {
                black_box(signer.sign(black_box(&m), 0).ok());
            }
            let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(messages);
            println!("{name:>9} {:>7} bytes: {us:8.1} us per message", m.len());
        }
    }
}
