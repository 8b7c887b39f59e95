//! Transport security for one connection task (docs/transport-security.md): the destination's
//! MTA-STS policy, each MX host's TLSA records when DNSSEC is trusted, the decision
//! (`transport_security::plan`), and what each connection's TLS came to, counted in
//! `volley_tls_policy_connections_total`.

use std::rc::Rc;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use super::DeliveryCore;
use super::hops::{Hop, Hops};
use super::transaction::Connection;
use crate::config::{Dnssec, OutboundTls};
use crate::dns::DnsError;
use crate::metrics::{TlsPolicyLabel, TlsResult};
use crate::smtp::client::Reply;
use crate::transport_security::dane;
use crate::transport_security::mta_sts::Needs;
use crate::transport_security::plan::{self, DaneLookup, Destination, HopTls, Refusal};
use crate::transport_security::tls_rpt::session;
use crate::transport_security::tls_rpt::{FailureKey, PolicyKey, PolicyType, ResultType};

/// The destination as the policies see it: its MTA-STS policy is looked up (and fetched when
/// new) for MX deliveries with `[mta_sts] enabled`.
pub async fn destination(
    core: &Rc<DeliveryCore>,
    domain: &str,
    hops: &Hops,
    setting: OutboundTls,
) -> Destination {
    let config = core.config();
    let mta_sts = if hops.from_mx && config.mta_sts.enabled {
        core.mta_sts.policy(&mta_sts_needs(core), domain).await
    } else {
        None
    };
    Destination::new(domain, setting, mta_sts)
}

/// What an MTA-STS policy lookup of this core needs.
pub fn mta_sts_needs(core: &DeliveryCore) -> Needs {
    let config = core.config();
    Needs {
        resolver: core.resolver(),
        tls: core.client_tls().verified.clone(),
        fetch_timeout: Duration::from_millis(config.mta_sts.fetch_timeout_ms.max(1)),
        tls_rpt: config.tls_rpt.enabled.then(|| core.node.tls_rpt.clone()),
    }
}

/// How to connect to `hop`, or why not to (counted as a failure of its policy).
pub async fn hop_tls(
    core: &DeliveryCore,
    dest: &Destination,
    hops: &Hops,
    hop: &Hop,
) -> Result<HopTls, Refusal> {
    let trusted = core.config().dns.dnssec == Dnssec::TrustAd;
    let dane = if trusted && dest.dane && hops.from_mx && hop.authentic {
        tlsa(core, &hop.host).await
    } else {
        DaneLookup::NotApplicable
    };
    let decided = plan::decide(dest, &hop.host, dane);
    if let Err(refusal) = &decided {
        core.counters()
            .tls_policy
            .count(refusal.policy, TlsResult::Failed);
        report_refusal(core, dest, hop, refusal.policy);
    }
    decided
}

/// TLS-RPT: a hop refused by its policy before connecting (an MX host not in the MTA-STS
/// policy; a TLSA lookup that failed).
fn report_refusal(core: &DeliveryCore, dest: &Destination, hop: &Hop, policy: TlsPolicyLabel) {
    if !core.config().tls_rpt.enabled {
        return;
    }
    let (domain, key, result) = match (policy, &dest.mta_sts) {
        (TlsPolicyLabel::Dane, _) => (
            hop.host.to_ascii_lowercase(),
            PolicyKey {
                policy_type: PolicyType::Tlsa,
                policy_string: Vec::new(),
                mx_host: Vec::new(),
            },
            ResultType::DnssecInvalid,
        ),
        (TlsPolicyLabel::MtaSts, Some(cached)) => (
            dest.domain.to_ascii_lowercase(),
            session::sts_key(cached),
            ResultType::ValidationFailure,
        ),
        _ => return,
    };
    let failure = FailureKey {
        result_type: result,
        receiving_mx_hostname: hop.host.clone(),
        receiving_ip: hop.address.ip().to_string(),
    };
    core.node
        .tls_rpt
        .record(core.index, &domain, &key, Some(failure));
}

/// TLS-RPT: one session of `conn`, met or failed with `result`. A session to a domain's MX
/// hosts under no policy counts as `no-policy-found` for the domain when it went over TLS (the
/// report is sent only if the domain publishes `_smtp._tls`, looked up once per period).
fn report_session(conn: &Connection, result: Option<ResultType>) {
    if !conn.config.tls_rpt.enabled {
        return;
    }
    let (host, ip) = conn
        .mx
        .split_once(" (")
        .map_or((conn.mx.as_str(), ""), |(h, rest)| {
            (h, rest.trim_end_matches(')'))
        });
    let recipient_domain = conn.from_mx.then_some(&*conn.key.domain);
    let Some((domain, key)) = session::policy_of(&conn.hop_tls, host, recipient_domain) else {
        return;
    };
    if key.policy_type == PolicyType::NoPolicyFound && result.is_some() {
        return;
    }
    let failure = result.map(|result_type| FailureKey {
        result_type,
        receiving_mx_hostname: host.to_string(),
        receiving_ip: ip.to_string(),
    });
    conn.core
        .node
        .tls_rpt
        .record(conn.core.index, &domain, &key, failure);
}

/// The TLSA records of `_25._tcp.<host>`: validated ones make DANE apply; none, or not
/// validated, leave it out; a failed lookup (a bogus answer is SERVFAIL) keeps mail from the host.
async fn tlsa(core: &DeliveryCore, host: &str) -> DaneLookup {
    let name = format!("_25._tcp.{host}");
    match core
        .resolver()
        .lookup_authenticated(&name, RecordType::TLSA)
        .await
    {
        Ok(found) if found.authentic && !found.value.is_empty() => {
            DaneLookup::Records(dane::usable(&found.value))
        }
        Ok(_) | Err(DnsError::NoSuchDomain(_)) => DaneLookup::NotApplicable,
        Err(e) => DaneLookup::Failed(e.to_string()),
    }
}

/// Counts what the connection's TLS came to once its session is open (after EHLO, over TLS or
/// not); logs what an MTA-STS `testing` policy would have refused.
pub fn count_open(conn: &Connection) {
    let tls = &conn.hop_tls;
    let result = if conn.tls_up {
        tls.result_with_tls(conn.observed.as_deref())
    } else {
        TlsResult::Plaintext
    };
    conn.core.counters().tls_policy.count(tls.label(), result);
    let observed = conn.observed.as_deref().and_then(|o| o.failure());
    let report = match (conn.tls_up, observed, tls) {
        (false, _, _) => Some(ResultType::StarttlsNotSupported),
        (true, Some(text), _) => Some(ResultType::of_certificate_error(text)),
        (true, None, HopTls::MtaStsTesting { listed: false, .. }) => {
            Some(ResultType::ValidationFailure)
        }
        (true, None, _) => None,
    };
    report_session(conn, report);
    if let Some(failure) = tls.testing_failure(conn.observed.as_deref(), conn.tls_up) {
        log::warn!("{}: {}: {failure}; delivered anyway", conn.key, conn.mx);
    }
}

/// Counts a connection that ended before its session opened because of its TLS policy: a failed
/// handshake (`ended`, the driver's own failure) or TLS required and not offered (4.7.4).
pub fn count_unopened(conn: &Connection, ended: Option<&Reply>) {
    if conn.opened {
        return;
    }
    let tls_missing = conn
        .failure
        .as_ref()
        .and_then(|r| r.enhanced)
        .is_some_and(|e| (e.class, e.subject, e.detail) == (4, 7, 4));
    if ended.is_some() || tls_missing {
        conn.core
            .counters()
            .tls_policy
            .count(conn.hop_tls.label(), TlsResult::Failed);
        let result = match ended {
            Some(reply) if !tls_missing => session::handshake_failure(&conn.hop_tls, &reply.text),
            _ => ResultType::StarttlsNotSupported,
        };
        report_session(conn, Some(result));
    }
}
