//! The resolver against an in-test DNS server (hickory-proto over std sockets on a thread, UDP and
//! TCP on the same 127.0.0.1 port) serving canned answers.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::LocalExecutor;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::*;

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn rec(owner: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name(owner), ttl, data)
}

fn a(owner: &str, ip: [u8; 4]) -> Record {
    rec(owner, 300, RData::A(A::from(std::net::Ipv4Addr::from(ip))))
}

fn mx(owner: &str, pref: u16, exchange: &str) -> Record {
    rec(owner, 300, RData::MX(MX::new(pref, name(exchange))))
}

fn cname(owner: &str, target: &str) -> Record {
    rec(owner, 300, RData::CNAME(CNAME(name(target))))
}

fn soa() -> Record {
    let soa = SOA::new(
        name("ns.test."),
        name("hostmaster.test."),
        1,
        3600,
        600,
        86400,
        60,
    );
    rec("test.", 3600, RData::SOA(soa))
}

#[derive(Clone)]
enum Canned {
    Records(Vec<Record>),
    NoData,
    NxDomain,
    ServFail,
    Silent,
    /// TC over UDP; these records over TCP.
    Truncated(Vec<Record>),
    /// A forged answer with the wrong ID first, then the real one.
    WrongIdFirst(Vec<Record>, Vec<Record>),
}

fn zone(qname: &str, rtype: RecordType) -> Canned {
    use RecordType::{A as TA, AAAA as TAAAA, MX as TMX};
    match (qname, rtype) {
        ("mx-order.test.", TMX) => Canned::Records(vec![
            mx("mx-order.test.", 20, "c.mx-order.test."),
            mx("mx-order.test.", 10, "a.mx-order.test."),
            mx("mx-order.test.", 30, "d.mx-order.test."),
            mx("mx-order.test.", 10, "b.mx-order.test."),
            mx("mx-order.test.", 40, "gone.test."),
        ]),
        ("a.mx-order.test.", TA) => Canned::Records(vec![a("a.mx-order.test.", [127, 0, 0, 1])]),
        ("b.mx-order.test.", TA) => Canned::Records(vec![a("b.mx-order.test.", [127, 0, 0, 2])]),
        ("c.mx-order.test.", TA) => Canned::Records(vec![a("c.mx-order.test.", [127, 0, 0, 3])]),
        ("d.mx-order.test.", TAAAA) => Canned::Records(vec![rec(
            "d.mx-order.test.",
            300,
            RData::AAAA(AAAA::from(std::net::Ipv6Addr::LOCALHOST)),
        )]),
        ("implicit.test.", TA) => Canned::Records(vec![a("implicit.test.", [127, 0, 0, 5])]),
        ("nullmx.test.", TMX) => Canned::Records(vec![mx("nullmx.test.", 0, ".")]),
        ("servfail.test.", _) => Canned::ServFail,
        ("silent.test.", _) => Canned::Silent,
        ("cname.test.", TA) => Canned::Records(vec![
            cname("cname.test.", "c1.test."),
            cname("c1.test.", "c2.test."),
            a("c2.test.", [127, 0, 0, 9]),
        ]),
        ("split.test.", _) => Canned::Records(vec![cname("split.test.", "c3.test.")]),
        ("c3.test.", TA) => Canned::Records(vec![a("c3.test.", [127, 0, 0, 10])]),
        ("loop.test.", _) => Canned::Records(vec![
            cname("loop.test.", "loop2.test."),
            cname("loop2.test.", "loop.test."),
        ]),
        ("big.test.", TA) => {
            Canned::Truncated((0..40).map(|i| a("big.test.", [127, 0, 1, i])).collect())
        }
        ("wrongid.test.", TA) => Canned::WrongIdFirst(
            vec![a("wrongid.test.", [10, 9, 9, 9])],
            vec![a("wrongid.test.", [127, 0, 0, 12])],
        ),
        ("cached.test.", TA) => Canned::Records(vec![a("cached.test.", [127, 0, 0, 13])]),
        // Answers under secure.test carry the AD bit (see `respond`).
        ("secure.test.", TMX) => Canned::Records(vec![
            mx("secure.test.", 10, "mx.secure.test."),
            mx("secure.test.", 20, "mx.unsigned.test."),
        ]),
        ("mx.secure.test.", TA) => Canned::Records(vec![a("mx.secure.test.", [127, 0, 0, 20])]),
        ("mx.unsigned.test.", TA) => Canned::Records(vec![a("mx.unsigned.test.", [127, 0, 0, 21])]),
        ("alias.secure.test.", TA) => {
            Canned::Records(vec![cname("alias.secure.test.", "c3.test.")])
        }
        (n, _) if n.starts_with("nx") || n.starts_with("gone") => Canned::NxDomain,
        _ => Canned::NoData,
    }
}

/// One query as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    rtype: RecordType,
    tcp: bool,
    from: SocketAddr,
    /// The query asked for the AD bit.
    ad: bool,
}

struct TestDns {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestDns {
    fn start() -> TestDns {
        // The TCP port must equal the UDP one; another test may hold it for TCP, so try again.
        let (udp, addr, tcp) = (0..100)
            .find_map(|_| {
                let udp = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
                let addr = udp.local_addr().ok()?;
                let tcp = std::net::TcpListener::bind(addr).ok()?;
                Some((udp, addr, tcp))
            })
            .expect("a port free for both UDP and TCP");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                for reply in respond(&query, false, from, &log) {
                    let _ = udp.send_to(&reply.to_vec().unwrap(), from);
                }
            }
        });
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in tcp.incoming() {
                let Ok(mut stream) = stream else { continue };
                let from = stream.peer_addr().unwrap();
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
                if stream.read_exact(&mut body).is_err() {
                    continue;
                }
                let query = Message::from_vec(&body).unwrap();
                for reply in respond(&query, true, from, &log) {
                    let bytes = reply.to_vec().unwrap();
                    let _ = stream.write_all(&(bytes.len() as u16).to_be_bytes());
                    let _ = stream.write_all(&bytes);
                }
            }
        });
        TestDns { addr, seen }
    }

    fn count(&self, qname: &str, rtype: RecordType) -> usize {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.name == qname && s.rtype == rtype)
            .count()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn resolver(&self) -> Resolver {
        let mut config = ResolverConfig::new(vec![self.addr]);
        config.query_timeout_ms = 300;
        Resolver::with_config(config)
    }
}

fn respond(query: &Message, tcp: bool, from: SocketAddr, log: &Mutex<Vec<Seen>>) -> Vec<Message> {
    let Some(q) = query.queries.first() else {
        return vec![];
    };
    let qname = q.name.to_lowercase().to_ascii();
    log.lock().unwrap().push(Seen {
        name: qname.clone(),
        rtype: q.query_type,
        tcp,
        from,
        ad: query.metadata.authentic_data,
    });
    let reply = |id: u16, rcode: ResponseCode, answers: Vec<Record>, authority: Vec<Record>| {
        let mut m = Message::response(id, OpCode::Query);
        m.metadata.message_type = MessageType::Response;
        m.metadata.recursion_desired = true;
        m.metadata.recursion_available = true;
        m.metadata.response_code = rcode;
        m.add_query(q.clone());
        m.add_answers(answers);
        m.add_authorities(authority);
        // A validating resolver's AD bit, for the names of a signed zone.
        m.metadata.authentic_data = qname.ends_with("secure.test.");
        m
    };
    let id = query.metadata.id;
    match zone(&qname, q.query_type) {
        Canned::Records(r) => vec![reply(id, ResponseCode::NoError, r, vec![])],
        Canned::NoData => vec![reply(id, ResponseCode::NoError, vec![], vec![soa()])],
        Canned::NxDomain => vec![reply(id, ResponseCode::NXDomain, vec![], vec![soa()])],
        Canned::ServFail => vec![reply(id, ResponseCode::ServFail, vec![], vec![])],
        Canned::Silent => vec![],
        Canned::Truncated(r) if tcp => vec![reply(id, ResponseCode::NoError, r, vec![])],
        Canned::Truncated(_) => {
            let mut m = reply(id, ResponseCode::NoError, vec![], vec![]);
            m.metadata.truncation = true;
            vec![m]
        }
        Canned::WrongIdFirst(forged, real) => vec![
            reply(id.wrapping_add(1), ResponseCode::NoError, forged, vec![]),
            reply(id, ResponseCode::NoError, real, vec![]),
        ],
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    LocalExecutor::default().run(f)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn the_ad_bit_is_asked_for_and_kept_per_host_chain_and_cache() {
    let dns = TestDns::start();
    let r = dns.resolver();
    let hops = run(async { r.next_hops("secure.test").await }).unwrap();
    let NextHops::Hosts(hosts) = hops else {
        panic!("{hops:?}")
    };
    let authentic: Vec<(&str, bool)> = hosts
        .iter()
        .map(|h| (h.host.as_str(), h.authentic))
        .collect();
    assert_eq!(
        authentic,
        [("mx.secure.test", true), ("mx.unsigned.test", false)],
        "a secure MX answer, then each host's own addresses"
    );
    assert!(dns.seen().iter().all(|s| s.ad), "every query sets AD");
    let again = run(async {
        r.lookup_authenticated("mx.secure.test", RecordType::A)
            .await
    })
    .unwrap();
    assert!(again.authentic, "kept in the cache");
    assert_eq!(dns.count("mx.secure.test.", RecordType::A), 1);
    let chained = run(async { r.ip_addrs_authenticated("alias.secure.test").await }).unwrap();
    assert_eq!(chained.value, [ip("127.0.0.10")]);
    assert!(
        !chained.authentic,
        "the end of the CNAME chain was not validated"
    );
    let insecure = run(async { r.mx_authenticated("mx-order.test").await }).unwrap();
    assert!(!insecure.authentic);
}

#[test]
fn mx_ordering_with_addresses() {
    let dns = TestDns::start();
    let r = dns.resolver();
    let hops = run(async { r.next_hops("MX-Order.test").await }).unwrap();
    let NextHops::Hosts(hosts) = hops else {
        panic!("{hops:?}")
    };
    let prefs: Vec<u16> = hosts.iter().map(|h| h.preference).collect();
    assert_eq!(prefs, [10, 10, 20, 30], "gone.test (NXDOMAIN) is skipped");
    let mut first_two: Vec<&str> = hosts[..2].iter().map(|h| h.host.as_str()).collect();
    first_two.sort();
    assert_eq!(first_two, ["a.mx-order.test", "b.mx-order.test"]);
    assert_eq!(hosts[2].host, "c.mx-order.test");
    assert_eq!(hosts[2].addresses, [ip("127.0.0.3")]);
    assert_eq!(hosts[3].addresses, [ip("::1")], "AAAA-only host");

    let answer = run(async { r.mx("mx-order.test").await }).unwrap();
    assert_eq!(answer.records.len(), 5);
    assert_eq!(
        dns.count("mx-order.test.", RecordType::MX),
        1,
        "second MX from cache"
    );
}

#[test]
fn implicit_mx_uses_the_domain_itself() {
    let dns = TestDns::start();
    let r = dns.resolver();
    let hops = run(async { r.next_hops("implicit.test").await }).unwrap();
    assert_eq!(
        hops,
        NextHops::Hosts(vec![NextHop {
            host: "implicit.test".into(),
            preference: 0,
            addresses: vec![ip("127.0.0.5")],
            authentic: false,
        }])
    );
    // No MX and no address at all: permanent.
    let err = run(async { r.next_hops("empty.test").await }).unwrap_err();
    assert_eq!(err, DnsError::NoAddress("empty.test".into()));
    assert!(!err.is_temporary());
}

#[test]
fn null_mx() {
    let dns = TestDns::start();
    let r = dns.resolver();
    assert_eq!(
        run(async { r.next_hops("nullmx.test").await }),
        Ok(NextHops::NullMx)
    );
}

#[test]
fn nxdomain_is_permanent_and_negatively_cached() {
    let dns = TestDns::start();
    let r = dns.resolver();
    for _ in 0..3 {
        let err = run(async { r.next_hops("nx.test").await }).unwrap_err();
        assert_eq!(err, DnsError::NoSuchDomain("nx.test".into()));
        assert!(!err.is_temporary());
    }
    assert_eq!(dns.count("nx.test.", RecordType::MX), 1);
}

#[test]
fn nodata_is_negatively_cached() {
    let dns = TestDns::start();
    let r = dns.resolver();
    for _ in 0..2 {
        assert_eq!(
            run(async { r.mx("implicit.test").await }).unwrap().records,
            []
        );
    }
    assert_eq!(dns.count("implicit.test.", RecordType::MX), 1);
}

#[test]
fn servfail_is_temporary() {
    let dns = TestDns::start();
    let r = dns.resolver();
    let err = run(async { r.next_hops("servfail.test").await }).unwrap_err();
    assert!(matches!(err, DnsError::ServerFailure { .. }), "{err:?}");
    assert!(err.is_temporary());
    assert_eq!(
        dns.count("servfail.test.", RecordType::MX),
        2,
        "both attempts"
    );
}

#[test]
fn timeout_is_temporary_after_all_attempts() {
    let dns = TestDns::start();
    let r = dns.resolver();
    let started = Instant::now();
    let err = run(async { r.mx("silent.test").await }).unwrap_err();
    assert_eq!(err, DnsError::Timeout("silent.test".into()));
    assert!(err.is_temporary());
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(started.elapsed() < Duration::from_secs(5));
    let seen = dns.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(
        seen[0].from.port(),
        seen[1].from.port(),
        "fresh source port per query"
    );
}

#[test]
fn falls_over_to_the_next_nameserver() {
    let dns = TestDns::start();
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = ResolverConfig::new(vec![dead.local_addr().unwrap(), dns.addr]);
    config.query_timeout_ms = 200;
    let r = Resolver::with_config(config);
    let addrs = run(async { r.ip_addrs("cached.test").await }).unwrap();
    assert_eq!(addrs, [ip("127.0.0.13")]);
}

#[test]
fn cname_chains() {
    let dns = TestDns::start();
    let r = dns.resolver();
    assert_eq!(
        run(async { r.ip_addrs("cname.test").await }).unwrap(),
        [ip("127.0.0.9")]
    );
    // The chain stops without data: the resolver asks for its end.
    assert_eq!(
        run(async { r.ip_addrs("split.test").await }).unwrap(),
        [ip("127.0.0.10")]
    );
    assert_eq!(dns.count("c3.test.", RecordType::A), 1);
    let err = run(async { r.ip_addrs("loop.test").await }).unwrap_err();
    assert_eq!(err, DnsError::CnameChainTooLong("loop.test".into()));
}

#[test]
fn cache_hit_avoids_the_server() {
    let dns = TestDns::start();
    let r = dns.resolver();
    for _ in 0..3 {
        assert_eq!(
            run(async { r.ip_addrs("cached.test").await }).unwrap(),
            [ip("127.0.0.13")]
        );
    }
    assert_eq!(dns.count("cached.test.", RecordType::A), 1);
    assert_eq!(dns.count("cached.test.", RecordType::AAAA), 1);
}

#[test]
fn truncated_answer_is_retried_over_tcp() {
    let dns = TestDns::start();
    let r = dns.resolver();
    let addrs = run(async { r.ip_addrs("big.test").await }).unwrap();
    assert_eq!(addrs.len(), 40);
    assert_eq!(addrs[39], ip("127.0.1.39"));
    let seen: Vec<bool> = dns
        .seen()
        .iter()
        .filter(|s| s.name == "big.test." && s.rtype == RecordType::A)
        .map(|s| s.tcp)
        .collect();
    assert_eq!(seen, [false, true]);
}

#[test]
fn answer_with_wrong_id_is_ignored() {
    let dns = TestDns::start();
    let r = dns.resolver();
    assert_eq!(
        run(async { r.ip_addrs("wrongid.test").await }).unwrap(),
        [ip("127.0.0.12")]
    );
}

#[test]
fn invalid_names_and_no_nameserver() {
    let r = Resolver::new(vec![]);
    assert_eq!(
        run(async { r.mx("a..b").await }),
        Err(DnsError::InvalidName("a..b".into()))
    );
    assert_eq!(
        run(async { r.mx("ok.test").await }),
        Err(DnsError::NoNameserver)
    );
}
