//! The PROXY protocol header parser (`listener::proxy_header::parse`) on arbitrary octets: it never
//! panics; its answer for a prefix is `NeedMore` or the answer for the whole input (more octets
//! never change a decision); a header's length is within the input and the bounds, and that many
//! octets alone give the same answer; the addresses it names, written again as v1 and v2, parse
//! back to the same addresses.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use volley::listener::proxy_header::{
    HEADER_BYTES_MAX, Parse, V1_LINE_BYTES_MAX, V2_SIGNATURE, parse,
};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    // Past the bound every input is decided.
    if data.len() >= HEADER_BYTES_MAX {
        assert_ne!(whole, Parse::NeedMore);
    }
    for cut in 0..data.len().min(HEADER_BYTES_MAX + 1) {
        let part = parse(&data[..cut]);
        assert!(
            part == Parse::NeedMore || part == whole,
            "cut {cut}: {part:?} then {whole:?}"
        );
    }
    let length = match whole {
        Parse::Proxied { length, .. } | Parse::Local { length } => length,
        Parse::NeedMore | Parse::Malformed(_) => return,
    };
    assert!(length <= data.len() && length <= HEADER_BYTES_MAX);
    if data.starts_with(b"PROXY ") {
        assert!(length <= V1_LINE_BYTES_MAX);
    }
    assert_eq!(parse(&data[..length]), whole);
    if let Parse::Proxied {
        source,
        destination,
        ..
    } = whole
    {
        assert_eq!(source.is_ipv4(), destination.is_ipv4());
        for again in [v1(source, destination), v2(source, destination)] {
            match parse(&again) {
                Parse::Proxied {
                    source: s,
                    destination: d,
                    length,
                } => {
                    assert_eq!((s, d, length), (source, destination, again.len()));
                }
                other => panic!("{again:?} parsed as {other:?}"),
            }
        }
    }
});

fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let protocol = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {protocol} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

fn v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut block = Vec::new();
    let family = match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
            0x11
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V6(a) => a.ip().octets(),
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
            };
            block.extend_from_slice(&v6(s));
            block.extend_from_slice(&v6(d));
            0x21
        }
    };
    block.extend_from_slice(&source.port().to_be_bytes());
    block.extend_from_slice(&destination.port().to_be_bytes());
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, family]);
    header.extend_from_slice(&(block.len() as u16).to_be_bytes());
    header.extend_from_slice(&block);
    header
}
