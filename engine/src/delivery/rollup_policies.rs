//! The MTA-STS policies of recipient domains rolled up into another's queue (`[[rollup]]`): the
//! queue connects under its own name's policy, and each transaction's recipients of another
//! domain are checked against that domain's policy (looked up, and fetched when new, like the
//! queue's own). A domain whose policy is `enforce` (or whose `tls` is `"mta-sts"`) takes the
//! connection only when its MX host is one of the policy's `mx` hosts and the certificate was
//! checked for that name (WebPKI) or by DANE; else its recipients are deferred with a reply naming
//! the policy. See docs/transport-security.md.

use std::rc::Rc;

use super::transaction::Connection;
use super::{DeliveryCore, Queued};
use crate::config::OutboundTls;
use crate::smtp::client::Reply;
use crate::spool::StoredMessage;
use crate::transport_security::mta_sts::{CachedPolicy, Mode};
use crate::transport_security::plan::HopTls;

/// Whether the queue of `conn` is a `[[rollup]]` group (its recipients' domains may differ).
fn is_rollup_queue(conn: &Connection) -> bool {
    conn.from_mx
        && conn.config.mta_sts.enabled
        && conn.config.shaping.mx_rollup
        && conn
            .config
            .rollups
            .iter()
            .any(|r| r.name.eq_ignore_ascii_case(&conn.key.domain))
}

/// The certificate of this connection was checked for its MX host name (WebPKI) or by DANE.
fn certificate_checked(conn: &Connection) -> bool {
    if !conn.tls_up {
        return false;
    }
    match &conn.hop_tls {
        HopTls::Dane(_) | HopTls::MtaSts(_) | HopTls::Required => true,
        HopTls::MtaStsTesting { .. } => conn
            .observed
            .as_deref()
            .is_some_and(|o| o.failure().is_none()),
        HopTls::DaneUnusable | HopTls::Opportunistic | HopTls::Off => false,
    }
}

/// Why `policy` keeps `host` of this connection from mail of its domain, if it does.
pub fn refusal(policy: &CachedPolicy, host: &str, checked: bool) -> Option<String> {
    let head = format!(
        "MTA-STS policy of {} (id {}, mode enforce)",
        policy.domain, policy.id
    );
    if !policy.policy.matches(host) {
        return Some(format!(
            "{head}: {host} is not one of its mx hosts {:?}",
            policy.policy.mx
        ));
    }
    (!checked).then(|| format!("{head}: the certificate of {host} was not checked for its name"))
}

fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// Keeps the recipients this connection may carry; defers the others (rolled-up domains whose
/// policy it does not meet). Recipients of the queue's own domain, and every recipient of a queue
/// that is not a rollup group, are kept without a look.
pub async fn keep_allowed(
    conn: &Connection,
    items: Vec<Queued>,
    message: &StoredMessage,
) -> Vec<Queued> {
    // RFC 8689 5: mail saying `TLS-Required: No` asked for no policy at all.
    if !is_rollup_queue(conn) || message.envelope.tls_optional() {
        return items;
    }
    let core: &Rc<DeliveryCore> = &conn.core;
    let host = conn
        .mx
        .split_once(" (")
        .map_or(conn.mx.as_str(), |(h, _)| h);
    let checked = certificate_checked(conn);
    let needs = super::security::mta_sts_needs(core);
    let mut kept = Vec::with_capacity(items.len());
    // Per domain of this transaction: None (may go) or the refusal.
    let mut decided: Vec<(String, Option<Reply>, Vec<Queued>)> = Vec::new();
    for item in items {
        let address = message
            .envelope
            .address(item.recipient as usize)
            .unwrap_or_default();
        let domain = domain_of(address).to_ascii_lowercase();
        if domain.is_empty() || domain.eq_ignore_ascii_case(&conn.key.domain) {
            kept.push(item);
            continue;
        }
        if let Some(entry) = decided.iter_mut().find(|(d, _, _)| *d == domain) {
            match entry.1 {
                None => kept.push(item),
                Some(_) => entry.2.push(item),
            }
            continue;
        }
        let setting = conn.config.policy_for(&conn.key.vmta, &domain).tls;
        let policy = core
            .mta_sts
            .policy(&needs, &domain)
            .await
            .filter(|p| p.policy.mode != Mode::None);
        let reason = match policy {
            Some(p) if p.policy.mode == Mode::Enforce || setting == OutboundTls::MtaSts => {
                refusal(&p, host, checked)
            }
            Some(_) => None,
            None if setting == OutboundTls::MtaSts => Some(format!(
                "MTA-STS required for {domain} (tls = \"mta-sts\") but it has no policy"
            )),
            None => None,
        };
        let reply = reason.map(|text| Reply::local(451, (4, 7, 5), text));
        match reply {
            None => {
                kept.push(item);
                decided.push((domain, None, Vec::new()));
            }
            Some(reply) => decided.push((domain, Some(reply), vec![item])),
        }
    }
    for (domain, reply, refused) in decided {
        if let (Some(reply), false) = (reply, refused.is_empty()) {
            log::info!("{}: {}: {domain}: {reply}", conn.key, conn.mx);
            super::outcome::defer_items(core, &conn.key, refused, &reply, Some(conn.attempt()))
                .await;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport_security::mta_sts::policy::parse;

    fn policy() -> CachedPolicy {
        CachedPolicy {
            domain: "googlemail.test".into(),
            id: "7".into(),
            policy: parse(
                b"version: STSv1\r\nmode: enforce\r\nmx: *.google.test\r\nmax_age: 600\r\n",
            )
            .unwrap(),
            fetched_at_s: 0,
        }
    }

    #[test]
    fn an_enforce_policy_wants_a_listed_host_and_a_checked_certificate() {
        let p = policy();
        assert_eq!(refusal(&p, "mx1.google.test", true), None);
        let unlisted = refusal(&p, "mx.other.test", true).unwrap();
        assert!(
            unlisted.starts_with("MTA-STS policy of googlemail.test (id 7, mode enforce)"),
            "{unlisted}"
        );
        assert!(unlisted.contains("mx.other.test is not one of its mx hosts"));
        let unchecked = refusal(&p, "mx1.google.test", false).unwrap();
        assert!(unchecked.contains("was not checked"), "{unchecked}");
        assert_eq!(domain_of("a@B.test"), "B.test");
        assert_eq!(domain_of("postmaster"), "");
    }
}
