//! The per-core stub resolver: questions to recursive nameservers with timeouts and retries,
//! CNAME chasing, and a TTL cache. `!Send` by design: one per executor.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use super::cache::{AnswerCache, CachedAnswer};
use super::transport::{ExchangeError, exchange};

/// Longest CNAME chain followed (hops, in answers and across re-queries).
pub const MAX_CNAME_HOPS: usize = 8;

/// Resolver limits, each with its unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    pub nameservers: Vec<SocketAddr>,
    /// Wait for one answer from one nameserver.
    pub query_timeout_ms: u64,
    /// Rounds over all nameservers before giving up.
    pub attempts: u32,
    /// Cached (name, type) answers per core.
    pub max_cache_entries: usize,
    /// Cap on positive TTLs.
    pub max_ttl_s: u32,
    /// Cap on NXDOMAIN/NODATA caching (from the SOA minimum, RFC 2308).
    pub max_negative_ttl_s: u32,
}

impl ResolverConfig {
    pub fn new(nameservers: Vec<SocketAddr>) -> ResolverConfig {
        ResolverConfig {
            nameservers,
            query_timeout_ms: 2_000,
            attempts: 2,
            max_cache_entries: 10_000,
            max_ttl_s: 86_400,
            max_negative_ttl_s: 900,
        }
    }
}

/// Why a name could not be resolved. `is_temporary()` tells deferral from bounce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist (permanent).
    #[error("{0}: no such domain")]
    NoSuchDomain(String),
    /// The domain exists but neither its MX hosts nor (without MX) itself have an address
    /// (permanent, 5.4.4).
    #[error("{0}: no address for any mail exchanger")]
    NoAddress(String),
    /// The name is not a valid DNS name (permanent).
    #[error("{0}: invalid domain name")]
    InvalidName(String),
    /// SERVFAIL, REFUSED or another error code from every nameserver (temporary).
    #[error("{name}: nameserver answered {rcode}")]
    ServerFailure { name: String, rcode: String },
    /// No nameserver answered in time (temporary).
    #[error("{0}: DNS timeout")]
    Timeout(String),
    /// A CNAME chain longer than `MAX_CNAME_HOPS` or looping (temporary: a misconfiguration).
    #[error("{0}: CNAME chain too long")]
    CnameChainTooLong(String),
    /// Socket error (temporary).
    #[error("{name}: {reason}")]
    Io { name: String, reason: String },
    /// No nameserver configured.
    #[error("no nameserver configured")]
    NoNameserver,
}

impl DnsError {
    /// Temporary errors defer the mail; the others bounce it.
    pub fn is_temporary(&self) -> bool {
        !matches!(
            self,
            DnsError::NoSuchDomain(_) | DnsError::NoAddress(_) | DnsError::InvalidName(_)
        )
    }
}

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    /// Lower-case, without the trailing dot; empty for the root (null MX).
    pub exchange: String,
}

/// The MX records of a domain as published (unsorted); empty when the domain has none (NODATA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxAnswer {
    pub records: Vec<MxRecord>,
}

impl MxAnswer {
    /// RFC 7505: a single MX whose exchange is the root ("."). Its preference should be 0; any is
    /// accepted.
    pub fn is_null_mx(&self) -> bool {
        matches!(self.records.as_slice(), [only] if only.exchange.is_empty())
    }
}

/// Records and whether the nameserver vouched for them: every response behind them (the CNAME
/// chain included) had the AD bit. Only worth anything from a local validating nameserver
/// (`[dns] dnssec = "trust-ad"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated<T> {
    pub value: T,
    pub authentic: bool,
}

/// The stub resolver of one core.
#[derive(Debug)]
pub struct Resolver {
    config: ResolverConfig,
    cache: RefCell<AnswerCache>,
}

impl Resolver {
    /// A resolver asking `nameservers` in order, with default limits.
    pub fn new(nameservers: Vec<SocketAddr>) -> Resolver {
        Resolver::with_config(ResolverConfig::new(nameservers))
    }

    pub fn with_config(config: ResolverConfig) -> Resolver {
        let cache = RefCell::new(AnswerCache::new(config.max_cache_entries));
        Resolver { config, cache }
    }

    /// The nameservers of /etc/resolv.conf; 127.0.0.1:53 when it lists none or cannot be read.
    pub fn from_system() -> Resolver {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Resolver::new(nameservers_from_resolv_conf(&text))
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// The MX records of `domain`. NXDOMAIN is `DnsError::NoSuchDomain`; no MX is an empty answer.
    pub async fn mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        Ok(self.mx_authenticated(domain).await?.value)
    }

    /// `mx`, with whether the answer (or the absence of MX records) was validated.
    pub async fn mx_authenticated(
        &self,
        domain: &str,
    ) -> Result<Authenticated<MxAnswer>, DnsError> {
        let found = self.lookup_authenticated(domain, RecordType::MX).await?;
        Ok(Authenticated {
            value: mx_answer(&found.value),
            authentic: found.authentic,
        })
    }

    /// IPv4 then IPv6 addresses of `host` (A and AAAA asked concurrently). An empty list when the
    /// host exists without addresses; an error when no address was found and a lookup failed.
    pub async fn ip_addrs(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        Ok(self.ip_addrs_authenticated(host).await?.value)
    }

    /// `ip_addrs`, with whether both answers were validated (a failed one is not).
    pub async fn ip_addrs_authenticated(
        &self,
        host: &str,
    ) -> Result<Authenticated<Vec<IpAddr>>, DnsError> {
        let (v4, v6) = futures_lite::future::zip(
            self.lookup_authenticated(host, RecordType::A),
            self.lookup_authenticated(host, RecordType::AAAA),
        )
        .await;
        let authentic = matches!((&v4, &v6), (Ok(a), Ok(b)) if a.authentic && b.authentic);
        let mut addrs = Vec::new();
        for found in [&v4, &v6].into_iter().flatten() {
            addrs.extend(found.value.iter().filter_map(|r| match r {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            }));
        }
        if !addrs.is_empty() {
            return Ok(Authenticated {
                value: addrs,
                authentic,
            });
        }
        match (v4, v6) {
            (Ok(_), Ok(_)) => Ok(Authenticated {
                value: addrs,
                authentic,
            }),
            // Prefer reporting a temporary failure: the name may well exist.
            (Err(a), Err(b)) if !a.is_temporary() && b.is_temporary() => Err(b),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    /// Frees the cache's expired answers (and its table once mostly empty); returns how many.
    /// Walks the cache at most once every `cache::SWEEP_EVERY`; the core's tick calls it.
    pub fn sweep_cache(&self) -> usize {
        self.cache.borrow_mut().sweep(crate::clock::monotonic())
    }

    /// Answers in the cache, expired or not (for tests and stats).
    pub fn cached_answers(&self) -> usize {
        self.cache.borrow().len()
    }

    /// The answer to (`name`, `rtype`), following CNAMEs, from the cache when fresh.
    pub async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Rc<Vec<RData>>, DnsError> {
        Ok(self.lookup_authenticated(name, rtype).await?.value)
    }

    /// `lookup`, with whether every response behind the answer had the AD bit.
    pub async fn lookup_authenticated(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<Authenticated<Rc<Vec<RData>>>, DnsError> {
        let original = parse_name(name)?;
        let original_key = original.to_ascii();
        let mut current = original.clone();
        let mut hops = 0usize;
        // Along a CNAME chain asked in several questions: every answer must be validated.
        let mut chain_authentic = true;
        loop {
            let key = current.to_ascii();
            let hit = self
                .cache
                .borrow_mut()
                .get_authenticated(&key, rtype, Instant::now());
            if let Some((hit, authentic)) = hit {
                let authentic = chain_authentic && authentic;
                return match hit {
                    CachedAnswer::Records(r) => Ok(Authenticated {
                        value: r,
                        authentic,
                    }),
                    CachedAnswer::NoData => Ok(Authenticated {
                        value: Rc::new(Vec::new()),
                        authentic,
                    }),
                    CachedAnswer::NxDomain => Err(DnsError::NoSuchDomain(name_to_host(&current))),
                };
            }
            let response = self.query(&current, rtype).await?;
            let now = Instant::now();
            let authentic = chain_authentic && response.metadata.authentic_data;
            match response.metadata.response_code {
                ResponseCode::NoError => {}
                ResponseCode::NXDomain => {
                    let ttl = self.negative_ttl(&response);
                    self.cache
                        .borrow_mut()
                        .insert(&key, rtype, CachedAnswer::NxDomain, ttl, now);
                    return Err(DnsError::NoSuchDomain(name_to_host(&current)));
                }
                other => {
                    return Err(DnsError::ServerFailure {
                        name: name_to_host(&current),
                        rcode: other.to_string(),
                    });
                }
            }
            match chase_answer(&response, &current, rtype, self.config.max_ttl_s, &mut hops) {
                Chased::Records { records, ttl_s } => {
                    let found = Rc::new(records);
                    let ttl = Duration::from_secs(u64::from(ttl_s));
                    let mut cache = self.cache.borrow_mut();
                    let answer = CachedAnswer::Records(found.clone());
                    cache.insert_authenticated(&key, rtype, answer.clone(), authentic, ttl, now);
                    cache.insert_authenticated(&original_key, rtype, answer, authentic, ttl, now);
                    return Ok(Authenticated {
                        value: found,
                        authentic,
                    });
                }
                Chased::NoData => {
                    let ttl = self.negative_ttl(&response);
                    let mut cache = self.cache.borrow_mut();
                    for k in [&key, &original_key] {
                        let answer = CachedAnswer::NoData;
                        cache.insert_authenticated(k, rtype, answer, authentic, ttl, now);
                    }
                    return Ok(Authenticated {
                        value: Rc::new(Vec::new()),
                        authentic,
                    });
                }
                Chased::ChainTooLong => {
                    return Err(DnsError::CnameChainTooLong(name_to_host(&original)));
                }
                Chased::Malformed => {
                    return Err(DnsError::ServerFailure {
                        name: name_to_host(&current),
                        rcode: "a record without data".into(),
                    });
                }
                // The chain left the answer without data: ask for its end.
                Chased::Ask(target) => {
                    chain_authentic = authentic;
                    current = target;
                }
            }
        }
    }

    /// Asks the nameservers in turn, `attempts` rounds, until one gives NOERROR or NXDOMAIN.
    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Message, DnsError> {
        if self.config.nameservers.is_empty() {
            return Err(DnsError::NoNameserver);
        }
        let timeout = Duration::from_millis(self.config.query_timeout_ms.max(1));
        let host = name_to_host(name);
        let mut last = DnsError::Timeout(host.clone());
        for _ in 0..self.config.attempts.max(1) {
            for &server in &self.config.nameservers {
                match exchange(server, name, rtype, timeout).await {
                    Ok(m)
                        if matches!(
                            m.metadata.response_code,
                            ResponseCode::NoError | ResponseCode::NXDomain
                        ) =>
                    {
                        return Ok(m);
                    }
                    Ok(m) => {
                        last = DnsError::ServerFailure {
                            name: host.clone(),
                            rcode: m.metadata.response_code.to_string(),
                        }
                    }
                    Err(ExchangeError::Timeout) => {
                        // A SERVFAIL seen elsewhere says more than a silent server.
                        if !matches!(last, DnsError::ServerFailure { .. }) {
                            last = DnsError::Timeout(host.clone());
                        }
                    }
                    Err(ExchangeError::Io(reason)) => {
                        last = DnsError::Io {
                            name: host.clone(),
                            reason,
                        }
                    }
                }
            }
        }
        Err(last)
    }

    /// RFC 2308 section 5: the SOA's own TTL and its minimum, the smaller; capped. No SOA: no
    /// caching.
    fn negative_ttl(&self, response: &Message) -> Duration {
        Duration::from_secs(u64::from(negative_ttl_s(
            response,
            self.config.max_negative_ttl_s,
        )))
    }
}

/// What one NOERROR answer says about the name asked, after the CNAMEs inside it.
#[derive(Debug)]
pub(crate) enum Chased {
    /// Records of the asked type, with the smallest TTL along the chain (capped).
    Records { records: Vec<RData>, ttl_s: u32 },
    /// The name has no records of this type.
    NoData,
    /// The chain ends at a name this answer has no data for: ask for it.
    Ask(Name),
    /// More than `MAX_CNAME_HOPS` CNAMEs, counting `hops` already followed.
    ChainTooLong,
    /// A record of the asked type with no data (RDLENGTH 0): not an answer, and not a NODATA
    /// either (taking an empty MX answer as "no MX" would deliver to the domain's A record).
    Malformed,
}

/// Follows the CNAME chain from `asked` inside `response`'s answer section. Pure: the resolver
/// and the DNS fuzz target (`fuzz/`) run it on whatever bytes a nameserver sent.
pub(crate) fn chase_answer(
    response: &Message,
    asked: &Name,
    rtype: RecordType,
    max_ttl_s: u32,
    hops: &mut usize,
) -> Chased {
    let mut target = asked.clone();
    let mut min_ttl = max_ttl_s;
    loop {
        let of_type = || {
            response
                .answers
                .iter()
                .filter(|r| r.name == target && r.record_type() == rtype)
        };
        // hickory reads a record with RDLENGTH 0 as an RFC 2136 update placeholder.
        if of_type().any(|r| matches!(r.data, RData::Update0(_))) {
            return Chased::Malformed;
        }
        let found: Vec<RData> = of_type()
            .inspect(|r| min_ttl = min_ttl.min(r.ttl))
            .map(|r| r.data.clone())
            .collect();
        if !found.is_empty() {
            return Chased::Records {
                records: found,
                ttl_s: min_ttl,
            };
        }
        let next = response.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if r.name == target => Some((c.0.clone(), r.ttl)),
            _ => None,
        });
        let Some((next, ttl)) = next else {
            break;
        };
        *hops += 1;
        if *hops > MAX_CNAME_HOPS {
            return Chased::ChainTooLong;
        }
        min_ttl = min_ttl.min(ttl);
        target = next;
    }
    if target == *asked {
        Chased::NoData
    } else {
        Chased::Ask(target)
    }
}

/// The MX records among `records`, exchanges as lower-case host names.
pub(crate) fn mx_answer(records: &[RData]) -> MxAnswer {
    let records = records
        .iter()
        .filter_map(|r| match r {
            RData::MX(mx) => Some(MxRecord {
                preference: mx.preference,
                exchange: name_to_host(&mx.exchange),
            }),
            _ => None,
        })
        .collect();
    MxAnswer { records }
}

/// RFC 2308 section 5 for a negative answer: the SOA's own TTL and its minimum, the smaller,
/// capped at `max_s`; 0 (no caching) without a SOA.
pub(crate) fn negative_ttl_s(response: &Message, max_s: u32) -> u32 {
    let soa_ttl = response.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
        _ => None,
    });
    soa_ttl.unwrap_or(0).min(max_s)
}

/// `nameserver` lines of resolv.conf(5) as socket addresses on port 53; 127.0.0.1:53 when none.
pub fn nameservers_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next()? != "nameserver" {
                return None;
            }
            // Drop an IPv6 zone ("fe80::1%eth0"): not representable here.
            let addr = words.next()?.split('%').next()?;
            addr.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect();
    if servers.is_empty() {
        servers.push(SocketAddr::from(([127, 0, 0, 1], 53)));
    }
    servers
}

/// `domain` as an absolute DNS name (a trailing dot is added when missing).
fn parse_name(domain: &str) -> Result<Name, DnsError> {
    let invalid = || DnsError::InvalidName(domain.to_string());
    if domain.is_empty() || domain.len() > 253 + 1 {
        return Err(invalid());
    }
    let fqdn = if domain.ends_with('.') {
        domain.to_string()
    } else {
        format!("{domain}.")
    };
    let name = if fqdn.is_ascii() {
        Name::from_ascii(&fqdn)
    } else {
        Name::from_utf8(&fqdn)
    };
    name.map_err(|_| invalid())
}

/// A name as a host string: lower-case, no trailing dot, empty for the root.
fn name_to_host(name: &Name) -> String {
    let mut s = name.to_lowercase().to_ascii();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example.com\nnameserver 10.0.0.2\nnameserver ::1\n\
                    nameserver fe80::1%eth0\nnameserver bogus\n options ndots:2\n";
        assert_eq!(
            nameservers_from_resolv_conf(text),
            [
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
            ]
        );
        assert_eq!(
            nameservers_from_resolv_conf("search x\n"),
            ["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
    }

    /// Found by the DNS fuzz target: an MX record with RDLENGTH 0 counted as an answer, and
    /// `mx()` then found no MX in it, which means "deliver to the domain's A record".
    #[test]
    fn a_record_without_data_is_a_malformed_answer() {
        let name = parse_name("example.test").unwrap();
        // A response to `example.test MX` whose one answer is an MX record with RDLENGTH 0, which
        // hickory reads only in an UPDATE (opcode 5): the transport refuses that opcode too.
        let mut wire = vec![0, 1, 0xa9, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        wire.extend_from_slice(b"\x07example\x04test\x00\x00\x0f\x00\x01");
        wire.extend_from_slice(&[0xc0, 12, 0, 15, 0, 1, 0, 0, 1, 44, 0, 0]);
        let empty = Message::from_vec(&wire).unwrap();
        assert!(!super::super::transport::answers(
            &empty,
            1,
            &name,
            RecordType::MX
        ));
        let mut hops = 0;
        assert!(matches!(
            chase_answer(&empty, &name, RecordType::MX, 86_400, &mut hops),
            Chased::Malformed
        ));
        let exchange = parse_name("mx.example.test").unwrap();
        let mut real = Message::query();
        real.add_answer(hickory_proto::rr::Record::from_rdata(
            name.clone(),
            300,
            RData::MX(hickory_proto::rr::rdata::MX::new(10, exchange)),
        ));
        match chase_answer(&real, &name, RecordType::MX, 86_400, &mut hops) {
            Chased::Records { records, ttl_s } => {
                assert_eq!(ttl_s, 300);
                assert_eq!(mx_answer(&records).records[0].exchange, "mx.example.test");
            }
            other => panic!("expected the MX record, got {other:?}"),
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            name_to_host(&parse_name("Example.TEST").unwrap()),
            "example.test"
        );
        assert_eq!(name_to_host(&Name::root()), "");
        assert!(parse_name("").is_err());
        assert!(parse_name("a..b").is_err());
        assert!(parse_name(&"a".repeat(64)).is_err(), "label over 63 bytes");
    }

    #[test]
    fn error_classes() {
        assert!(!DnsError::NoSuchDomain("x".into()).is_temporary());
        assert!(DnsError::Timeout("x".into()).is_temporary());
        assert!(
            DnsError::ServerFailure {
                name: "x".into(),
                rcode: "SERVFAIL".into()
            }
            .is_temporary()
        );
    }
}
