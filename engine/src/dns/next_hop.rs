//! Where mail for a domain goes (RFC 5321 section 5.1): MX hosts by preference, equal preferences
//! shuffled; the domain itself when it has no MX; nowhere when it publishes a null MX (RFC 7505).

use std::net::IpAddr;

use super::resolver::{DnsError, MxRecord, Resolver};

/// One host to try, with its addresses (IPv4 first, then IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// The MX exchange, or the domain itself for an implicit MX.
    pub host: String,
    /// The MX preference; 0 for an implicit MX.
    pub preference: u16,
    pub addresses: Vec<IpAddr>,
    /// The MX answer (or, for an implicit MX, the absence of MX records) and this host's
    /// addresses were all validated by the nameserver (the AD bit): DANE may apply (RFC 7672
    /// 2.2). Trusted only with `[dns] dnssec = "trust-ad"`.
    pub authentic: bool,
}

/// The answer to "where does mail for this domain go".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHops {
    /// Hosts in the order to try them; never empty, every host has at least one address.
    Hosts(Vec<NextHop>),
    /// RFC 7505 null MX: the domain accepts no mail (bounce with 5.1.10).
    NullMx,
}

impl Resolver {
    /// The next hops for mail to `domain`. Errors: `NoSuchDomain` (NXDOMAIN) and `NoAddress`
    /// (nothing to connect to) are permanent; SERVFAIL and timeouts are temporary.
    ///
    /// MX hosts whose address lookup fails are skipped; if none is left, a temporary failure among
    /// them wins over `NoAddress`, so a DNS outage never bounces mail.
    pub async fn next_hops(&self, domain: &str) -> Result<NextHops, DnsError> {
        let found = self.mx_authenticated(domain).await?;
        let (answer, mx_authentic) = (found.value, found.authentic);
        if answer.is_null_mx() {
            return Ok(NextHops::NullMx);
        }
        let host_of = |d: &str| d.trim_end_matches('.').to_ascii_lowercase();
        let mut records: Vec<MxRecord> = answer
            .records
            .into_iter()
            .filter(|r| !r.exchange.is_empty())
            .collect();
        if records.is_empty() {
            // No MX (or only a stray root MX among none): the implicit MX is the domain itself.
            let found = self.ip_addrs_authenticated(domain).await?;
            if found.value.is_empty() {
                return Err(DnsError::NoAddress(host_of(domain)));
            }
            return Ok(NextHops::Hosts(vec![NextHop {
                host: host_of(domain),
                preference: 0,
                addresses: found.value,
                authentic: mx_authentic && found.authentic,
            }]));
        }
        order_by_preference(&mut records, &mut fastrand::Rng::new());
        records.dedup_by(|a, b| a.exchange == b.exchange);
        let mut hops = Vec::with_capacity(records.len());
        let mut temporary: Option<DnsError> = None;
        for record in records {
            match self.ip_addrs_authenticated(&record.exchange).await {
                Ok(found) if !found.value.is_empty() => hops.push(NextHop {
                    host: record.exchange,
                    preference: record.preference,
                    addresses: found.value,
                    authentic: mx_authentic && found.authentic,
                }),
                Ok(_) => {}
                Err(e) if e.is_temporary() => temporary = temporary.or(Some(e)),
                Err(_) => {}
            }
        }
        if !hops.is_empty() {
            return Ok(NextHops::Hosts(hops));
        }
        Err(temporary.unwrap_or_else(|| DnsError::NoAddress(host_of(domain))))
    }
}

/// Sorts by preference, shuffling each run of equal preferences (RFC 5321 5.1 load spreading).
pub fn order_by_preference(records: &mut [MxRecord], rng: &mut fastrand::Rng) {
    rng.shuffle(records);
    // A stable sort keeps the shuffled order within each preference.
    records.sort_by_key(|r| r.preference);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_preferences_are_shuffled_and_order_kept() {
        let mx = |p, e: &str| MxRecord {
            preference: p,
            exchange: e.into(),
        };
        let records = vec![mx(20, "c"), mx(10, "a"), mx(10, "b"), mx(30, "d")];
        let mut firsts = std::collections::HashSet::new();
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..64 {
            let mut r = records.clone();
            order_by_preference(&mut r, &mut rng);
            let prefs: Vec<u16> = r.iter().map(|m| m.preference).collect();
            assert_eq!(prefs, [10, 10, 20, 30]);
            firsts.insert(r[0].exchange.clone());
        }
        assert_eq!(
            firsts.len(),
            2,
            "both preference-10 hosts come first sometimes"
        );
    }
}
