//! Where a queue's connections go: the hosts and addresses to try, in order, for a destination
//! domain, from its `[routes]` entry or its MX answer, kept to the family of the VMTA's source
//! address. Pure: the DNS answer comes in, the hop list goes out (`select`), so the order and the
//! refusals are tested as plain code; `resolve` only asks the resolver.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::config::parse_next_hop;
use crate::dns::{DnsError, NextHops, Resolver};
use crate::smtp::client::Reply;

/// The SMTP port of an MX host (RFC 5321 4.5.4.2 does not say otherwise).
const MX_PORT: u16 = 25;

/// A host to try: its name (for the log and TLS SNI) and one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub host: String,
    pub address: SocketAddr,
    /// An MX host whose MX answer and addresses were DNSSEC-validated (`NextHop::authentic`).
    pub authentic: bool,
}

/// The hops of one destination, in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hops {
    pub hops: Vec<Hop>,
    /// Names the receiver behind these hops, the same for every domain it serves: the route
    /// (`host:port`) of a routed domain, else the first MX host name in name order. The refusals
    /// of a VMTA are counted per next hop, so a smarthost refusing ten domains counts once.
    pub next_hop: String,
    /// The hops are the domain's MX hosts (not a `[routes]` entry): MTA-STS and DANE apply.
    pub from_mx: bool,
}

/// Why no host can be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoHops {
    Permanent(Reply),
    Temporary(Reply),
}

/// Where to look for a domain's hops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A `[routes]` entry: this host (a name or an address) and port.
    Route { host: String, port: u16 },
    /// The domain's MX records (or its own address without MX).
    Mx,
}

/// What DNS answered for a target.
#[derive(Debug)]
pub enum Answer {
    /// A route to an address literal: nothing was asked.
    Literal(IpAddr),
    /// The addresses of a route's host name.
    Addresses(Result<Vec<IpAddr>, DnsError>),
    /// The MX answer of the domain.
    Mx(Result<NextHops, DnsError>),
}

/// The target for `domain`: its route when `[routes]` has one (a bad route is a temporary error,
/// so mail waits for the operator's fix), else its MX.
pub fn target(routes: &BTreeMap<String, String>, domain: &str) -> Result<Target, NoHops> {
    let Some(route) = routes.get(domain) else {
        return Ok(Target::Mx);
    };
    match parse_next_hop(route) {
        Some((host, port)) => Ok(Target::Route { host, port }),
        None => Err(NoHops::Temporary(Reply::local(
            451,
            (4, 3, 5),
            format!("Bad route {route:?}"),
        ))),
    }
}

/// Asks the resolver what `target` needs.
pub async fn resolve(resolver: &Resolver, domain: &str, target: &Target) -> Answer {
    match target {
        Target::Route { host, .. } => match host.parse::<IpAddr>() {
            Ok(ip) => Answer::Literal(ip),
            Err(_) => Answer::Addresses(resolver.ip_addrs(host).await),
        },
        Target::Mx => Answer::Mx(resolver.next_hops(domain).await),
    }
}

/// The hops of `domain` from its target and DNS answer, in order (MX preference, then the order
/// of each host's addresses), keeping only those `source` can reach: an unspecified source (the
/// implicit VMTA) reaches both families, a VMTA's address only its own.
pub fn select(
    domain: &str,
    target: &Target,
    answer: Answer,
    source: IpAddr,
) -> Result<Hops, NoHops> {
    let (hops, next_hop) = match (target, answer) {
        (Target::Route { host, port }, Answer::Literal(ip)) => (
            vec![Hop {
                host: host.clone(),
                address: SocketAddr::new(ip, *port),
                authentic: false,
            }],
            route_name(host, *port),
        ),
        (Target::Route { host, port }, Answer::Addresses(Ok(ips))) => (
            ips.into_iter()
                .map(|ip| Hop {
                    host: host.clone(),
                    address: SocketAddr::new(ip, *port),
                    authentic: false,
                })
                .collect(),
            route_name(host, *port),
        ),
        (Target::Route { host, .. }, Answer::Addresses(Err(e))) => {
            return Err(NoHops::Temporary(Reply::local(
                451,
                (4, 4, 3),
                format!("Route host {host}: {e}"),
            )));
        }
        (_, Answer::Mx(answer)) => mx_hops(domain, answer)?,
        (Target::Mx, Answer::Literal(_) | Answer::Addresses(_)) => {
            return Err(NoHops::Temporary(Reply::local(
                451,
                (4, 3, 0),
                "internal error: an address answer for an MX target",
            )));
        }
    };
    let reachable: Vec<Hop> = hops
        .into_iter()
        .filter(|h| source.is_unspecified() || source.is_ipv4() == h.address.is_ipv4())
        .collect();
    if reachable.is_empty() {
        let family = if source.is_ipv4() { "IPv4" } else { "IPv6" };
        return Err(NoHops::Temporary(Reply::local(
            451,
            (4, 4, 1),
            format!("No next hop of {domain} has an {family} address for source {source}"),
        )));
    }
    Ok(Hops {
        hops: reachable,
        next_hop,
        from_mx: *target == Target::Mx,
    })
}

fn route_name(host: &str, port: u16) -> String {
    format!("{}:{port}", host.to_ascii_lowercase())
}

fn mx_hops(domain: &str, answer: Result<NextHops, DnsError>) -> Result<(Vec<Hop>, String), NoHops> {
    match answer {
        Ok(NextHops::Hosts(hosts)) => {
            let next_hop = hosts
                .iter()
                .map(|h| h.host.trim_end_matches('.').to_ascii_lowercase())
                .min()
                .unwrap_or_else(|| domain.to_string());
            let hops = hosts
                .into_iter()
                .flat_map(|h| {
                    let (host, authentic) = (h.host, h.authentic);
                    h.addresses.into_iter().map(move |ip| Hop {
                        host: host.clone(),
                        address: SocketAddr::new(ip, MX_PORT),
                        authentic,
                    })
                })
                .collect();
            Ok((hops, next_hop))
        }
        Ok(NextHops::NullMx) => Err(NoHops::Permanent(Reply::local(
            556,
            (5, 1, 10),
            format!("Domain {domain} does not accept mail (null MX)"),
        ))),
        Err(e @ (DnsError::NoSuchDomain(_) | DnsError::InvalidName(_))) => Err(NoHops::Permanent(
            Reply::local(550, (5, 1, 2), format!("Bad destination domain: {e}")),
        )),
        Err(e) if !e.is_temporary() => Err(NoHops::Permanent(Reply::local(
            550,
            (5, 4, 4),
            format!("Unable to route: {e}"),
        ))),
        Err(e) => Err(NoHops::Temporary(Reply::local(
            451,
            (4, 4, 3),
            format!("DNS: {e}"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::NextHop;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn v4_source() -> IpAddr {
        ip("192.0.2.1")
    }

    fn mx(hosts: &[(&str, &[&str])]) -> Answer {
        Answer::Mx(Ok(NextHops::Hosts(
            hosts
                .iter()
                .enumerate()
                .map(|(i, (host, addresses))| NextHop {
                    host: host.to_string(),
                    preference: i as u16 * 10,
                    addresses: addresses.iter().map(|a| ip(a)).collect(),
                    authentic: i == 0,
                })
                .collect(),
        )))
    }

    fn addresses(hops: &Hops) -> Vec<String> {
        hops.hops.iter().map(|h| h.address.to_string()).collect()
    }

    #[test]
    fn a_route_wins_over_mx_and_a_bad_route_waits() {
        let mut routes = BTreeMap::new();
        routes.insert("a.test".to_string(), "Relay.Example:2525".to_string());
        routes.insert("b.test".to_string(), "no port".to_string());
        let target_a = target(&routes, "a.test").unwrap();
        assert_eq!(
            target_a,
            Target::Route {
                host: "Relay.Example".into(),
                port: 2525
            }
        );
        assert_eq!(target(&routes, "c.test").unwrap(), Target::Mx);
        let Err(NoHops::Temporary(reply)) = target(&routes, "b.test") else {
            panic!("a bad route is temporary");
        };
        assert_eq!(reply.code, 451);
        let hops = select(
            "a.test",
            &target_a,
            Answer::Addresses(Ok(vec![ip("192.0.2.7"), ip("192.0.2.8")])),
            v4_source(),
        )
        .unwrap();
        assert_eq!(addresses(&hops), ["192.0.2.7:2525", "192.0.2.8:2525"]);
        assert_eq!(hops.hops[0].host, "Relay.Example");
        assert_eq!(hops.next_hop, "relay.example:2525");
        assert!(
            !hops.from_mx && !hops.hops[0].authentic,
            "a route: no DANE, no MTA-STS"
        );
    }

    #[test]
    fn mx_hosts_in_preference_order_each_address_a_hop() {
        let hops = select(
            "d.test",
            &Target::Mx,
            mx(&[
                ("mx2.d.test", &["192.0.2.20", "192.0.2.21"]),
                ("mx1.d.test", &["192.0.2.10"]),
            ]),
            v4_source(),
        )
        .unwrap();
        assert_eq!(
            addresses(&hops),
            ["192.0.2.20:25", "192.0.2.21:25", "192.0.2.10:25"],
            "the resolver's order (preference) is kept"
        );
        assert_eq!(hops.next_hop, "mx1.d.test", "first MX name in name order");
        assert!(hops.from_mx);
        let authentic: Vec<bool> = hops.hops.iter().map(|h| h.authentic).collect();
        assert_eq!(
            authentic,
            [true, true, false],
            "per host, from the resolver"
        );
    }

    #[test]
    fn domains_sharing_a_receiver_share_a_next_hop() {
        let a = select(
            "a.test",
            &Target::Mx,
            mx(&[
                ("mx.provider.test", &["192.0.2.1"]),
                ("alt.provider.test", &["192.0.2.2"]),
            ]),
            v4_source(),
        )
        .unwrap();
        let b = select(
            "b.test",
            &Target::Mx,
            mx(&[
                ("alt.provider.test", &["192.0.2.2"]),
                ("MX.provider.test.", &["192.0.2.1"]),
            ]),
            v4_source(),
        )
        .unwrap();
        assert_eq!(a.next_hop, b.next_hop);
        let route = Target::Route {
            host: "192.0.2.9".into(),
            port: 25,
        };
        let c = select(
            "c.test",
            &route,
            Answer::Literal(ip("192.0.2.9")),
            v4_source(),
        )
        .unwrap();
        let d = select(
            "d.test",
            &route,
            Answer::Literal(ip("192.0.2.9")),
            v4_source(),
        )
        .unwrap();
        assert_eq!(c.next_hop, d.next_hop, "one smarthost, one next hop");
    }

    #[test]
    fn only_the_source_family_is_kept() {
        let answer = || mx(&[("mx.e.test", &["2001:db8::1", "192.0.2.5"])]);
        let v4 = select("e.test", &Target::Mx, answer(), v4_source()).unwrap();
        assert_eq!(addresses(&v4), ["192.0.2.5:25"]);
        let v6 = select("e.test", &Target::Mx, answer(), ip("2001:db8::99")).unwrap();
        assert_eq!(addresses(&v6), ["[2001:db8::1]:25"]);
        let any = select("e.test", &Target::Mx, answer(), ip("0.0.0.0")).unwrap();
        assert_eq!(addresses(&any).len(), 2, "the implicit VMTA reaches both");
        let only_v6 = mx(&[("mx.e.test", &["2001:db8::1"])]);
        let Err(NoHops::Temporary(reply)) = select("e.test", &Target::Mx, only_v6, v4_source())
        else {
            panic!("no reachable hop is temporary");
        };
        assert!(reply.text.contains("IPv4"), "{reply}");
    }

    #[test]
    fn dns_answers_that_end_delivery() {
        let null = select(
            "n.test",
            &Target::Mx,
            Answer::Mx(Ok(NextHops::NullMx)),
            v4_source(),
        );
        assert!(matches!(null, Err(NoHops::Permanent(r)) if r.code == 556));
        let nx = Answer::Mx(Err(DnsError::NoSuchDomain("x.test".into())));
        assert!(matches!(
            select("x.test", &Target::Mx, nx, v4_source()),
            Err(NoHops::Permanent(r)) if r.code == 550
        ));
        let servfail = Answer::Mx(Err(DnsError::ServerFailure {
            name: "y.test".into(),
            rcode: "SERVFAIL".into(),
        }));
        assert!(matches!(
            select("y.test", &Target::Mx, servfail, v4_source()),
            Err(NoHops::Temporary(r)) if r.code == 451
        ));
    }
}
