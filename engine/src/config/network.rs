//! IP networks in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address) for relay control,
//! on `ipnet`; this wrapper adds the bare-address form, IPv4-mapped clients and serde as a string.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(IpNet);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network {0:?}: expected CIDR like \"10.0.0.0/8\" or an address")]
pub struct NetworkError(pub String);

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client seen through an IPv6 socket is still that IPv4 client.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

impl std::str::FromStr for Network {
    type Err = NetworkError;
    fn from_str(text: &str) -> Result<Self, NetworkError> {
        let text = text.trim();
        let net = match text.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => IpNet::from(
                text.parse::<IpAddr>()
                    .map_err(|_| NetworkError(text.into()))?,
            ),
        };
        Ok(Network(net))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0.addr(), self.0.prefix_len())
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Network {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn contains() {
        let n: Network = "127.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("127.0.0.5")));
        assert!(n.contains(ip("::ffff:127.0.0.9")));
        assert!(!n.contains(ip("128.0.0.1")));
        let n: Network = "10.1.2.0/23".parse().unwrap();
        assert!(n.contains(ip("10.1.3.200")));
        assert!(!n.contains(ip("10.1.4.1")));
        let n: Network = "::1".parse().unwrap();
        assert!(n.contains(ip("::1")));
        assert!(!n.contains(ip("127.0.0.1")));
        let any: Network = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains(ip("192.0.2.1")));
    }

    #[test]
    fn rejects_bad_prefix() {
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("nonsense".parse::<Network>().is_err());
    }
}
