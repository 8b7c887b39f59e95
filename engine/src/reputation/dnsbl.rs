//! DNS blocklist queries (RFC 5782): the name asked for an address in a zone, and what the answer
//! means.

use std::net::{IpAddr, Ipv4Addr};

/// `1.2.0.192.zen.example` for 192.0.2.1; IPv6 as 32 reversed nibbles (RFC 5782 section 2.4).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str(zone);
            name
        }
    }
}

/// What a zone's A records say about an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Not listed (NXDOMAIN, or no A record).
    Clear,
    /// Listed, with the return codes (127.0.0.x: the list's own meaning of x).
    Listed(Vec<Ipv4Addr>),
    /// The zone refused to answer this resolver (127.255.255.x, as Spamhaus answers queries through
    /// public resolvers or over its free limit): nothing is known.
    Refused(Ipv4Addr),
}

/// Reads the A records of a DNSBL query. Answers outside 127.0.0.0/8 are not listings (RFC 5782
/// section 2.1): a resolver that rewrites NXDOMAIN to an address must not list every VMTA.
pub fn interpret(addresses: &[Ipv4Addr]) -> Answer {
    if let Some(refused) = addresses
        .iter()
        .find(|a| a.octets()[..3] == [127, 255, 255])
    {
        return Answer::Refused(*refused);
    }
    let codes: Vec<Ipv4Addr> = addresses
        .iter()
        .copied()
        .filter(|a| a.octets()[0] == 127)
        .collect();
    if codes.is_empty() {
        Answer::Clear
    } else {
        Answer::Listed(codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_octets_are_reversed_under_the_zone() {
        assert_eq!(
            query_name("192.0.2.1".parse().unwrap(), "zen.example."),
            "1.2.0.192.zen.example"
        );
    }

    #[test]
    fn ipv6_is_32_reversed_nibbles() {
        // RFC 5782 section 2.4's example.
        let name = query_name(
            "2001:db8:1:2:3:4:567:89ab".parse().unwrap(),
            "ugly.example.com",
        );
        assert_eq!(
            name,
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
    }

    #[test]
    fn only_loopback_answers_list_and_255_means_refused() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(interpret(&[]), Answer::Clear);
        assert_eq!(
            interpret(&[a("127.0.0.2")]),
            Answer::Listed(vec![a("127.0.0.2")])
        );
        assert_eq!(interpret(&[a("203.0.113.9")]), Answer::Clear);
        assert_eq!(
            interpret(&[a("127.255.255.254")]),
            Answer::Refused(a("127.255.255.254"))
        );
    }
}
