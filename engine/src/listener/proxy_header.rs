//! The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that a load
//! balancer sends before anything else on a connection, naming the client it accepted. Sans-IO:
//! `parse` looks at the octets read so far and says whether it needs more, found a header (and how
//! many octets it takes), or can already tell the input is no header at all.
//!
//! Accepted: v1 `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` and `PROXY UNKNOWN ...\r\n`
//! (at most 107 octets); v2 with the LOCAL command (any family) or the PROXY command over TCP on
//! IPv4 or IPv6 (and UNSPEC), its TLVs skipped, at most `V2_PAYLOAD_BYTES_MAX` octets after the
//! 16-octet fixed part. Everything else is `Malformed`, decided as early as the octets allow, so
//! a reader never holds more than `HEADER_BYTES_MAX` octets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest v1 line, CRLF included (the spec's bound:
/// `PROXY UNKNOWN ffff:...:ffff ffff:...:ffff 65535 65535\r\n`).
pub const V1_LINE_BYTES_MAX: usize = 107;
/// The v2 signature: it cannot start an SMTP command or a TLS record.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family and transport, length.
pub const V2_FIXED_BYTES: usize = 16;
/// The longest v2 address block and TLVs accepted (the wire allows 65535): the addresses take
/// at most 216 octets (AF_UNIX), so this leaves room for the TLVs HAProxy sends.
pub const V2_PAYLOAD_BYTES_MAX: usize = 1024;
/// The most octets a header can take: what a reader needs to hold at most.
pub const HEADER_BYTES_MAX: usize = V2_FIXED_BYTES + V2_PAYLOAD_BYTES_MAX;

const V1_PREFIX: &[u8] = b"PROXY ";
/// v2 family and transport octets: high nibble the family, low nibble the transport.
const V2_UNSPEC: u8 = 0x00;
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
/// Address block of each: two addresses, two ports.
const V2_TCP4_ADDRESS_BYTES: usize = 2 * 4 + 2 * 2;
const V2_TCP6_ADDRESS_BYTES: usize = 2 * 16 + 2 * 2;

/// What the octets read so far hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// A header may still come: read more.
    NeedMore,
    /// The client's connection as the proxy saw it; the header is the first `length` octets.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
        length: usize,
    },
    /// A header that names no client (v2 LOCAL, as in the proxy's health checks; v2 UNSPEC; v1
    /// UNKNOWN): the connection's own peer stands for the client.
    Local {
        length: usize,
    },
    Malformed(Malformed),
}

/// Why the input is no acceptable header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("no PROXY header (neither \"PROXY \" nor the v2 signature)")]
    NoSignature,
    #[error("v1 header without CRLF in its first {V1_LINE_BYTES_MAX} octets")]
    V1TooLong,
    #[error("v1 header with a CR or LF other than its final CRLF")]
    V1LineEnd,
    #[error("v1 header with a protocol other than TCP4, TCP6 or UNKNOWN")]
    V1Protocol,
    #[error("v1 header without exactly two addresses and two ports, single-space separated")]
    V1Fields,
    #[error("v1 header with an address that is not of its protocol's family")]
    V1Address,
    #[error("v1 header with a port that is not a decimal 0-65535 without leading zeros")]
    V1Port,
    #[error("v2 header of version {0} (only 2 is defined)")]
    V2Version(u8),
    #[error("v2 header with command {0} (only LOCAL 0 and PROXY 1 are defined)")]
    V2Command(u8),
    #[error("v2 header with family and transport {0:#04x} (only TCP over IPv4 or IPv6)")]
    V2Family(u8),
    #[error("v2 header of {0} octets after the fixed part (at most {V2_PAYLOAD_BYTES_MAX})")]
    V2TooLong(usize),
    #[error("v2 header of {length} octets after the fixed part, too short for its addresses")]
    V2ShortAddresses { length: usize },
}

/// Reads a header at the start of `input` (the octets read so far from the connection).
///
/// Given more octets after the same start, the answer only ever moves from `NeedMore` to one of
/// the others, and the others never change.
pub fn parse(input: &[u8]) -> Parse {
    if is_prefix_of(input, V1_PREFIX) {
        return if input.len() < V1_PREFIX.len() {
            Parse::NeedMore
        } else {
            parse_v1(input)
        };
    }
    if is_prefix_of(input, &V2_SIGNATURE) {
        return if input.len() < V2_FIXED_BYTES {
            Parse::NeedMore
        } else {
            parse_v2(input)
        };
    }
    Parse::Malformed(Malformed::NoSignature)
}

/// Whether `input` and `expected` agree on their common length.
fn is_prefix_of(input: &[u8], expected: &[u8]) -> bool {
    let n = input.len().min(expected.len());
    input[..n] == expected[..n]
}

fn parse_v1(input: &[u8]) -> Parse {
    let window = &input[..input.len().min(V1_LINE_BYTES_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        // A CR not at the end of what arrived can no longer be part of the final CRLF.
        if window
            .iter()
            .position(|&b| b == b'\r')
            .is_some_and(|cr| cr + 1 < window.len())
        {
            return Parse::Malformed(Malformed::V1LineEnd);
        }
        return if window.len() == V1_LINE_BYTES_MAX {
            Parse::Malformed(Malformed::V1TooLong)
        } else {
            Parse::NeedMore
        };
    };
    let line = &window[..lf];
    let Some(line) = line.strip_suffix(b"\r") else {
        return Parse::Malformed(Malformed::V1LineEnd);
    };
    if line.contains(&b'\r') {
        return Parse::Malformed(Malformed::V1LineEnd);
    }
    let length = lf + 1;
    let mut fields = line[V1_PREFIX.len()..].split(|&b| b == b' ');
    let protocol = fields.next().unwrap_or_default();
    let parse_ip: fn(&str) -> Option<IpAddr> = match protocol {
        // The spec: whatever follows UNKNOWN is ignored.
        b"UNKNOWN" => return Parse::Local { length },
        b"TCP4" => |s: &str| s.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        b"TCP6" => |s: &str| s.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        _ => return Parse::Malformed(Malformed::V1Protocol),
    };
    let rest: Vec<&[u8]> = fields.collect();
    let [source, destination, source_port, destination_port] = rest.as_slice() else {
        return Parse::Malformed(Malformed::V1Fields);
    };
    if rest.iter().any(|f| f.is_empty()) {
        return Parse::Malformed(Malformed::V1Fields);
    }
    let ip = |field: &[u8]| {
        std::str::from_utf8(field)
            .ok()
            .and_then(parse_ip)
            .ok_or(Malformed::V1Address)
    };
    let port = |field: &[u8]| v1_port(field).ok_or(Malformed::V1Port);
    let parsed = (|| {
        let source_ip = ip(source)?;
        let destination_ip = ip(destination)?;
        Ok(Parse::Proxied {
            source: SocketAddr::new(source_ip, port(source_port)?),
            destination: SocketAddr::new(destination_ip, port(destination_port)?),
            length,
        })
    })();
    parsed.unwrap_or_else(Parse::Malformed)
}

/// A decimal port, 0-65535, without leading zeros (the spec's form).
fn v1_port(field: &[u8]) -> Option<u16> {
    let digits_only = !field.is_empty() && field.len() <= 5 && field.iter().all(u8::is_ascii_digit);
    if !digits_only || (field.len() > 1 && field[0] == b'0') {
        return None;
    }
    std::str::from_utf8(field).ok()?.parse().ok()
}

fn parse_v2(input: &[u8]) -> Parse {
    let version_command = input[12];
    let family = input[13];
    let payload = usize::from(u16::from_be_bytes([input[14], input[15]]));
    let version = version_command >> 4;
    if version != 2 {
        return Parse::Malformed(Malformed::V2Version(version));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        command => return Parse::Malformed(Malformed::V2Command(command)),
    };
    if payload > V2_PAYLOAD_BYTES_MAX {
        return Parse::Malformed(Malformed::V2TooLong(payload));
    }
    // LOCAL ignores the family (the spec); PROXY needs one this reader understands.
    let address_bytes = match family {
        _ if local => 0,
        V2_UNSPEC => 0,
        V2_TCP4 => V2_TCP4_ADDRESS_BYTES,
        V2_TCP6 => V2_TCP6_ADDRESS_BYTES,
        other => return Parse::Malformed(Malformed::V2Family(other)),
    };
    if payload < address_bytes {
        return Parse::Malformed(Malformed::V2ShortAddresses { length: payload });
    }
    let length = V2_FIXED_BYTES + payload;
    let Some(block) = input.get(V2_FIXED_BYTES..length) else {
        return Parse::NeedMore;
    };
    if local || family == V2_UNSPEC {
        return Parse::Local { length };
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    let (source_ip, destination_ip, ports_at) = if family == V2_TCP4 {
        let ip =
            |at: usize| IpAddr::from(<[u8; 4]>::try_from(&block[at..at + 4]).unwrap_or_default());
        (ip(0), ip(4), 8)
    } else {
        let ip =
            |at: usize| IpAddr::from(<[u8; 16]>::try_from(&block[at..at + 16]).unwrap_or_default());
        (ip(0), ip(16), 32)
    };
    Parse::Proxied {
        source: SocketAddr::new(source_ip, port(ports_at)),
        destination: SocketAddr::new(destination_ip, port(ports_at + 2)),
        length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proxied(source: &str, destination: &str, length: usize) -> Parse {
        Parse::Proxied {
            source: addr(source),
            destination: addr(destination),
            length,
        }
    }

    fn malformed(m: Malformed) -> Parse {
        Parse::Malformed(m)
    }

    /// A v2 header: version/command, family, addresses and TLVs as given.
    fn v2(version_command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(version_command);
        h.push(family);
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    fn tcp4_block() -> Vec<u8> {
        let mut b = vec![127, 0, 0, 6, 127, 0, 0, 1];
        b.extend_from_slice(&40000u16.to_be_bytes());
        b.extend_from_slice(&2525u16.to_be_bytes());
        b
    }

    /// Every proper prefix of a valid header needs more; the header and anything after it parse
    /// to the same answer.
    fn assert_whole_header(header: &[u8], expected: Parse) {
        for cut in 0..header.len() {
            assert_eq!(parse(&header[..cut]), Parse::NeedMore, "cut at {cut}");
        }
        assert_eq!(parse(header), expected);
        let mut more = header.to_vec();
        more.extend_from_slice(b"EHLO client.test\r\n");
        assert_eq!(parse(&more), expected, "pipelined octets are not taken");
    }

    #[test]
    fn v1_tcp4() {
        let h = b"PROXY TCP4 127.0.0.6 127.0.0.1 40000 2525\r\n";
        assert_whole_header(h, proxied("127.0.0.6:40000", "127.0.0.1:2525", h.len()));
    }

    #[test]
    fn v1_tcp6() {
        let h = b"PROXY TCP6 2001:db8::6 ::1 65535 0\r\n";
        assert_whole_header(h, proxied("[2001:db8::6]:65535", "[::1]:0", h.len()));
    }

    #[test]
    fn v1_unknown_ignores_the_rest() {
        let h = b"PROXY UNKNOWN\r\n";
        assert_whole_header(h, Parse::Local { length: h.len() });
        let h = b"PROXY UNKNOWN whatever 1.2.3.4 x y\r\n";
        assert_whole_header(h, Parse::Local { length: h.len() });
    }

    #[test]
    fn v1_longest_line_is_accepted() {
        let ff = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let h = format!("PROXY TCP6 {ff} {ff} 65535 65535\r\n");
        assert_eq!(h.len(), 104);
        let h = format!("PROXY UNKNOWN {ff} {ff} 65535 65535\r\n");
        assert_eq!(h.len(), V1_LINE_BYTES_MAX);
        assert_whole_header(h.as_bytes(), Parse::Local { length: 107 });
    }

    #[test]
    fn v1_too_long() {
        let mut h = b"PROXY UNKNOWN ".to_vec();
        h.resize(V1_LINE_BYTES_MAX - 1, b'x');
        assert_eq!(parse(&h), Parse::NeedMore);
        h.push(b'x');
        assert_eq!(parse(&h), malformed(Malformed::V1TooLong));
        // The CRLF one octet too late changes nothing.
        h.extend_from_slice(b"\r\n");
        assert_eq!(parse(&h), malformed(Malformed::V1TooLong));
    }

    #[test]
    fn v1_line_ends() {
        for h in [
            &b"PROXY TCP4 127.0.0.6 127.0.0.1 40000 2525\n"[..],
            b"PROXY TCP4 127.0.0.6 127.0.0.1 40000 2525\r\r\n",
            b"PROXY TCP4 127.0.0.6\r127.0.0.1 40000 2525\r\n",
            b"PROXY \n",
        ] {
            assert_eq!(parse(h), malformed(Malformed::V1LineEnd), "{h:?}");
        }
        // A stray CR is refused without waiting for the LF.
        assert_eq!(parse(b"PROXY TCP4\r1"), malformed(Malformed::V1LineEnd));
        assert_eq!(parse(b"PROXY TCP4\r"), Parse::NeedMore);
    }

    #[test]
    fn v1_protocols() {
        for h in [
            &b"PROXY TCP5 127.0.0.6 127.0.0.1 40000 2525\r\n"[..],
            b"PROXY tcp4 127.0.0.6 127.0.0.1 40000 2525\r\n",
            b"PROXY UDP4 127.0.0.6 127.0.0.1 40000 2525\r\n",
            b"PROXY  TCP4 127.0.0.6 127.0.0.1 40000 2525\r\n",
            b"PROXY \r\n",
            b"PROXY UNKNOWNX\r\n",
        ] {
            assert_eq!(parse(h), malformed(Malformed::V1Protocol), "{h:?}");
        }
    }

    #[test]
    fn v1_fields() {
        for h in [
            &b"PROXY TCP4\r\n"[..],
            b"PROXY TCP4 127.0.0.6 127.0.0.1 40000\r\n",
            b"PROXY TCP4 127.0.0.6 127.0.0.1 40000 2525 1\r\n",
            b"PROXY TCP4 127.0.0.6  127.0.0.1 40000 2525\r\n",
            b"PROXY TCP4 127.0.0.6 127.0.0.1 40000 2525 \r\n",
            b"PROXY TCP4 127.0.0.6 127.0.0.1 40000 \r\n",
        ] {
            assert_eq!(parse(h), malformed(Malformed::V1Fields), "{h:?}");
        }
    }

    #[test]
    fn v1_addresses() {
        for h in [
            &b"PROXY TCP4 ::1 127.0.0.1 40000 2525\r\n"[..],
            b"PROXY TCP6 127.0.0.6 ::1 40000 2525\r\n",
            b"PROXY TCP4 127.0.0.6 127.0.0 40000 2525\r\n",
            b"PROXY TCP4 127.0.0.256 127.0.0.1 40000 2525\r\n",
            b"PROXY TCP4 127.0.0.06 127.0.0.1 40000 2525\r\n",
            b"PROXY TCP4 host.test 127.0.0.1 40000 2525\r\n",
            b"PROXY TCP4 127.0.0.6 127.0.0.\xff 40000 2525\r\n",
        ] {
            assert_eq!(parse(h), malformed(Malformed::V1Address), "{h:?}");
        }
    }

    #[test]
    fn v1_ports() {
        for h in [
            &b"PROXY TCP4 127.0.0.6 127.0.0.1 65536 2525\r\n"[..],
            b"PROXY TCP4 127.0.0.6 127.0.0.1 040000 2525\r\n",
            b"PROXY TCP4 127.0.0.6 127.0.0.1 00 2525\r\n",
            b"PROXY TCP4 127.0.0.6 127.0.0.1 -1 2525\r\n",
            b"PROXY TCP4 127.0.0.6 127.0.0.1 +1 2525\r\n",
            b"PROXY TCP4 127.0.0.6 127.0.0.1 40000 99999\r\n",
            b"PROXY TCP4 127.0.0.6 127.0.0.1 40000 0x10\r\n",
            b"PROXY TCP4 127.0.0.6 127.0.0.1 4294967296 25\r\n",
        ] {
            assert_eq!(parse(h), malformed(Malformed::V1Port), "{h:?}");
        }
    }

    #[test]
    fn no_signature() {
        for h in [
            &b"EHLO client.test\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"proxy TCP4 ",
            b"PROXYTCP4",
            b"\r\n\r\n\0\r\nQUIX\n",
            b"\r\nX",
        ] {
            assert_eq!(parse(h), malformed(Malformed::NoSignature), "{h:?}");
        }
        // Decided from the first octet that disagrees.
        assert_eq!(parse(b"E"), malformed(Malformed::NoSignature));
        assert_eq!(parse(b""), Parse::NeedMore);
        assert_eq!(parse(b"PROX"), Parse::NeedMore);
        assert_eq!(parse(b"\r\n\r\n"), Parse::NeedMore);
    }

    #[test]
    fn v2_tcp4() {
        let h = v2(0x21, V2_TCP4, &tcp4_block());
        assert_whole_header(&h, proxied("127.0.0.6:40000", "127.0.0.1:2525", 28));
    }

    #[test]
    fn v2_tcp6() {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::6".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        block.extend_from_slice(&[0x9c, 0x40, 0x09, 0xdd]);
        let h = v2(0x21, V2_TCP6, &block);
        assert_whole_header(&h, proxied("[2001:db8::6]:40000", "[::1]:2525", 52));
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut block = tcp4_block();
        // PP2_TYPE_UNIQUE_ID and PP2_TYPE_NOOP, as HAProxy may add them.
        block.extend_from_slice(&[0x05, 0x00, 0x03, b'a', b'b', b'c', 0x04, 0x00, 0x00]);
        let h = v2(0x21, V2_TCP4, &block);
        assert_whole_header(&h, proxied("127.0.0.6:40000", "127.0.0.1:2525", h.len()));
    }

    #[test]
    fn v2_local_and_unspec() {
        let h = v2(0x20, V2_UNSPEC, b"");
        assert_whole_header(&h, Parse::Local { length: 16 });
        // LOCAL ignores whatever family and addresses it carries.
        let h = v2(0x20, 0x31, &[0; 7]);
        assert_whole_header(&h, Parse::Local { length: 23 });
        let h = v2(0x21, V2_UNSPEC, &[1, 2, 3]);
        assert_whole_header(&h, Parse::Local { length: 19 });
    }

    #[test]
    fn v2_longest_payload() {
        let mut block = tcp4_block();
        block.resize(V2_PAYLOAD_BYTES_MAX, 0);
        let h = v2(0x21, V2_TCP4, &block);
        assert_eq!(h.len(), HEADER_BYTES_MAX);
        assert_whole_header(
            &h,
            proxied("127.0.0.6:40000", "127.0.0.1:2525", HEADER_BYTES_MAX),
        );
    }

    #[test]
    fn v2_too_long_is_refused_from_the_fixed_part() {
        let mut h = v2(0x21, V2_TCP4, b"");
        h[14..16].copy_from_slice(&1025u16.to_be_bytes());
        assert_eq!(parse(&h), malformed(Malformed::V2TooLong(1025)));
        h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&h), malformed(Malformed::V2TooLong(65535)));
        // Also for LOCAL: the reader must never hold more.
        h[12] = 0x20;
        assert_eq!(parse(&h), malformed(Malformed::V2TooLong(65535)));
    }

    #[test]
    fn v2_versions_and_commands() {
        for (vc, expected) in [
            (0x11, Malformed::V2Version(1)),
            (0x31, Malformed::V2Version(3)),
            (0x01, Malformed::V2Version(0)),
            (0x22, Malformed::V2Command(2)),
            (0x2f, Malformed::V2Command(15)),
        ] {
            let h = v2(vc, V2_TCP4, &tcp4_block());
            assert_eq!(parse(&h[..V2_FIXED_BYTES]), malformed(expected), "{vc:#x}");
            assert_eq!(parse(&h), malformed(expected), "{vc:#x}");
        }
    }

    #[test]
    fn v2_families() {
        // UDP over IPv4 and IPv6, AF_UNIX stream and datagram, unknown.
        for family in [0x12, 0x22, 0x31, 0x32, 0x41, 0x10, 0x01] {
            let h = v2(0x21, family, &[0; 216]);
            assert_eq!(
                parse(&h[..V2_FIXED_BYTES]),
                malformed(Malformed::V2Family(family)),
                "{family:#x}"
            );
        }
    }

    #[test]
    fn v2_short_addresses() {
        let h = v2(0x21, V2_TCP4, &[0; 11]);
        assert_eq!(
            parse(&h[..V2_FIXED_BYTES]),
            malformed(Malformed::V2ShortAddresses { length: 11 })
        );
        let h = v2(0x21, V2_TCP6, &[0; 35]);
        assert_eq!(
            parse(&h),
            malformed(Malformed::V2ShortAddresses { length: 35 })
        );
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            Malformed::V2TooLong(2000).to_string(),
            "v2 header of 2000 octets after the fixed part (at most 1024)"
        );
        assert_eq!(
            Malformed::V2Family(0x31).to_string(),
            "v2 header with family and transport 0x31 (only TCP over IPv4 or IPv6)"
        );
    }
}
