//! One round of checks, what a change does, and the task that runs rounds on core 0.

use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::{RData, RecordType};

use super::dnsbl::{self, Answer};
use super::fcrdns::{self, Verdict};
use super::{FcrdnsStatus, REASON_CHARS_MAX, ReputationBoard, VmtaReputation, ZoneStatus};
use crate::accounting::{AccountingEvent, EventType};
use crate::config::{Config, DnsblAction, ReputationSection};
use crate::dns::{DnsError, Resolver};
use crate::placement::VmtaBoard;
use crate::shard::Shard;

/// The task looks for a stop, a reload or the next round this often.
const WAKE_MS: u64 = 250;
/// PTR names kept per address (a PTR RRset may be long; FCrDNS needs one match).
const PTR_NAMES_MAX: usize = 8;

fn cut(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(REASON_CHARS_MAX)
        .collect()
}

/// Checks every VMTA with an address of its own (not 0.0.0.0 / ::), one after the other. Fresh
/// answers: `resolver` should have an empty cache, so a delisting shows at the next round.
pub async fn check_vmtas(
    config: &Config,
    section: &ReputationSection,
    resolver: &Resolver,
) -> Vec<VmtaReputation> {
    let mut out = Vec::with_capacity(config.vmtas.len());
    for v in &config.vmtas {
        if v.source_ip.is_unspecified() {
            continue;
        }
        let fcrdns = if section.fcrdns {
            Some(check_fcrdns(resolver, v.source_ip, &v.ehlo_hostname).await)
        } else {
            None
        };
        let mut zones = Vec::with_capacity(section.dnsbl.len());
        for zone in &section.dnsbl {
            zones.push(check_zone(resolver, v.source_ip, zone).await);
        }
        out.push(VmtaReputation {
            vmta: v.name.clone(),
            source_ip: v.source_ip,
            ehlo_hostname: fcrdns::normalized(&v.ehlo_hostname),
            fcrdns,
            dnsbl: zones,
            checked_unix_s: crate::clock::unix_s(),
        });
    }
    out
}

async fn check_fcrdns(resolver: &Resolver, ip: IpAddr, ehlo: &str) -> FcrdnsStatus {
    let ptr: Vec<String> = match resolver
        .lookup(&fcrdns::reverse_name(ip), RecordType::PTR)
        .await
    {
        Ok(records) => records
            .iter()
            .filter_map(|r| match r {
                RData::PTR(p) => Some(fcrdns::normalized(&p.0.to_ascii())),
                _ => None,
            })
            .take(PTR_NAMES_MAX)
            .collect(),
        Err(DnsError::NoSuchDomain(_)) => Vec::new(),
        Err(e) => return error_status(format!("PTR lookup of {ip}: {e}")),
    };
    let forward = match resolver.ip_addrs(ehlo).await {
        Ok(addrs) => addrs,
        Err(e) if !e.is_temporary() => Vec::new(),
        Err(e) => return error_status(format!("address lookup of {ehlo}: {e}")),
    };
    let (status, detail) = match fcrdns::verdict(ip, ehlo, &ptr, &forward) {
        Verdict::Pass => ("pass", String::new()),
        Verdict::Fail(why) => ("fail", why),
    };
    FcrdnsStatus {
        status,
        detail,
        ptr,
        forward: forward.iter().map(IpAddr::to_string).collect(),
    }
}

fn error_status(detail: String) -> FcrdnsStatus {
    FcrdnsStatus {
        status: "error",
        detail: cut(&detail),
        ptr: Vec::new(),
        forward: Vec::new(),
    }
}

async fn check_zone(resolver: &Resolver, ip: IpAddr, zone: &str) -> ZoneStatus {
    let name = dnsbl::query_name(ip, zone);
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    let status = |status, codes: Vec<Ipv4Addr>, reason: String| ZoneStatus {
        zone: zone.clone(),
        status,
        codes: codes.iter().map(Ipv4Addr::to_string).collect(),
        reason,
    };
    let addresses: Vec<Ipv4Addr> = match resolver.lookup(&name, RecordType::A).await {
        Ok(records) => records
            .iter()
            .filter_map(|r| match r {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
        Err(DnsError::NoSuchDomain(_)) => Vec::new(),
        Err(e) => return status("error", Vec::new(), cut(&e.to_string())),
    };
    match dnsbl::interpret(&addresses) {
        Answer::Clear => status("clear", Vec::new(), String::new()),
        Answer::Refused(code) => status(
            "refused",
            vec![code],
            format!(
                "the zone answered {code}: it refuses this resolver (use your own, not a public one)"
            ),
        ),
        Answer::Listed(codes) => {
            let reason = match resolver.lookup(&name, RecordType::TXT).await {
                Ok(records) => records
                    .iter()
                    .find_map(|r| match r {
                        RData::TXT(t) => Some(
                            t.txt_data
                                .iter()
                                .map(|part| String::from_utf8_lossy(part).into_owned())
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .map(|t| cut(&t))
                    .unwrap_or_default(),
                Err(_) => String::new(),
            };
            status("listed", codes, reason)
        }
    }
}

/// One round from outside the daemon (`volley check --dns`), on an executor of its own: the file's
/// `[reputation]` settings, or FCrDNS only when it has none.
pub fn check_now(config: &Config) -> Result<Vec<VmtaReputation>, String> {
    let section = config.reputation.clone().unwrap_or_default();
    let nameservers = config.dns.nameservers.clone();
    let config = config.clone();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("volley-check-dns")
        .spawn(move || async move {
            let resolver = if nameservers.is_empty() {
                Resolver::from_system()
            } else {
                Resolver::new(nameservers)
            };
            check_vmtas(&config, &section, &resolver).await
        })
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|e| e.to_string())
}

/// One change from the previous round, for the log, the event and the pools.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    vmta: String,
    source_ip: IpAddr,
    /// The zone, or empty for FCrDNS.
    zone: String,
    text: String,
    warn: bool,
}

/// What changed for one VMTA. A lookup error changes nothing (no flapping on a DNS hiccup); the
/// first round reports every failure and listing.
fn changes(now: &VmtaReputation, before: Option<&VmtaReputation>) -> Vec<Change> {
    let mut out = Vec::new();
    let change = |zone: &str, text: String, warn: bool| Change {
        vmta: now.vmta.clone(),
        source_ip: now.source_ip,
        zone: zone.to_string(),
        text,
        warn,
    };
    if let Some(f) = &now.fcrdns {
        let was = before.and_then(|b| b.fcrdns.as_ref()).map(|f| f.status);
        match (f.status, was) {
            ("fail", Some("fail")) | ("pass", Some("pass") | None) | ("error", _) => {}
            ("fail", _) => out.push(change("", format!("FCrDNS fails: {}", f.detail), true)),
            ("pass", Some(_)) => out.push(change("", "FCrDNS passes".to_string(), false)),
            _ => {}
        }
    }
    for z in &now.dnsbl {
        let was = before
            .and_then(|b| b.dnsbl.iter().find(|o| o.zone == z.zone))
            .map(|o| o.status);
        let listed_before = was == Some("listed");
        match z.status {
            "listed" if !listed_before => out.push(change(
                &z.zone,
                format!(
                    "listed in {} ({}){}",
                    z.zone,
                    z.codes.join(", "),
                    if z.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", z.reason)
                    }
                ),
                true,
            )),
            "clear" if listed_before => {
                out.push(change(&z.zone, format!("delisted from {}", z.zone), false))
            }
            "refused" if was != Some("refused") => {
                out.push(change(&z.zone, z.reason.clone(), true))
            }
            _ => {}
        }
    }
    out
}

/// Keeps a round's results, and logs, records and acts on what changed.
fn apply(
    results: Vec<VmtaReputation>,
    section: &ReputationSection,
    board: &ReputationBoard,
    vmta_board: &VmtaBoard,
    record: &dyn Fn(&AccountingEvent),
) {
    let now_s = crate::clock::unix_s();
    let paired = board.replace(results);
    for (now, before) in &paired {
        for c in changes(now, before.as_ref()) {
            board
                .changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if c.warn {
                log::warn!("VMTA {} ({}): {}", c.vmta, c.source_ip, c.text);
            } else {
                log::info!("VMTA {} ({}): {}", c.vmta, c.source_ip, c.text);
            }
            record(&AccountingEvent {
                kind: Some(EventType::Reputation),
                time: crate::clock::now_rfc3339().into(),
                vmta: c.vmta.as_str().into(),
                source_ip: c.source_ip.to_string().into(),
                domain: c.zone.as_str().into(),
                response: c.text.as_str().into(),
                ..Default::default()
            });
        }
        // Out of its pools while listed anywhere (with "remove"); back once listed nowhere, and
        // only when this board took it out with the reason still in place.
        let listed = now.listed_in();
        let mut removed = super::locked(&board.removed);
        if section.dnsbl_action == DnsblAction::Remove && !listed.is_empty() {
            if !removed.contains_key(&now.vmta) {
                let reason = format!("listed in {}", listed.join(", "));
                log::warn!("VMTA {}: out of its pools: {reason}", now.vmta);
                vmta_board.disable(&now.vmta, &reason, now_s, None);
                removed.insert(now.vmta.clone(), reason);
            }
        } else if listed.is_empty()
            && let Some(reason) = removed.remove(&now.vmta)
            && put_back_if_ours(vmta_board, &now.vmta, &reason, now_s)
        {
            log::info!("VMTA {}: back in its pools (delisted)", now.vmta);
        }
    }
    // A VMTA gone from the configuration (or no longer removed by "warn") leaves nothing behind.
    let names: Vec<&str> = paired.iter().map(|(r, _)| r.vmta.as_str()).collect();
    let mut removed = super::locked(&board.removed);
    let stale: Vec<String> = removed
        .keys()
        .filter(|k| section.dnsbl_action != DnsblAction::Remove || !names.contains(&k.as_str()))
        .cloned()
        .collect();
    for name in stale {
        if let Some(reason) = removed.remove(&name) {
            put_back_if_ours(vmta_board, &name, &reason, now_s);
        }
    }
}

/// Enables `vmta` if it is still out for the `reason` this board gave (not, say, disabled by the
/// operator since); whether it did.
fn put_back_if_ours(vmta_board: &VmtaBoard, vmta: &str, reason: &str, now_s: u64) -> bool {
    let ours = vmta_board
        .list(now_s)
        .iter()
        .any(|(name, d)| name == vmta && d.reason == reason);
    if ours {
        vmta_board.enable(vmta);
    }
    ours
}

/// Core 0's task: a round at start, after every reload, and every `check_interval_s`; nothing
/// without `[reputation]`. Ends when the process stops.
pub async fn run(shard: Rc<Shard>, vmta_board: Arc<VmtaBoard>, board: Arc<ReputationBoard>) {
    let mut checked_generation = None;
    let mut next_round = Instant::now();
    while !shard.node.control.stopping() {
        let generation = shard.generation();
        if checked_generation != Some(generation) || Instant::now() >= next_round {
            checked_generation = Some(generation);
            let config = shard.config();
            match &config.reputation {
                Some(section) => {
                    // A resolver of its own with an empty cache: answers as fresh as the round.
                    let resolver = Resolver::with_config(shard.resolver().config().clone());
                    let results = check_vmtas(&config, section, &resolver).await;
                    apply(results, section, &board, &vmta_board, &|e| {
                        shard.accounting.record(e)
                    });
                    next_round = Instant::now() + Duration::from_secs(section.check_interval_s);
                }
                None => {
                    board.clear();
                    next_round = Instant::now() + Duration::from_secs(60);
                }
            }
        }
        glommio::timer::sleep(Duration::from_millis(WAKE_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(fcrdns: &'static str, zones: &[(&str, &'static str)]) -> VmtaReputation {
        VmtaReputation {
            vmta: "v1".into(),
            source_ip: "127.0.0.2".parse().unwrap(),
            ehlo_hostname: "v1.test".into(),
            fcrdns: Some(FcrdnsStatus {
                status: fcrdns,
                detail: "why".into(),
                ptr: Vec::new(),
                forward: Vec::new(),
            }),
            dnsbl: zones
                .iter()
                .map(|(z, s)| ZoneStatus {
                    zone: z.to_string(),
                    status: s,
                    codes: vec!["127.0.0.2".into()],
                    reason: String::new(),
                })
                .collect(),
            checked_unix_s: 0,
        }
    }

    #[test]
    fn first_round_reports_failures_and_listings_only() {
        let c = changes(&rep("pass", &[("bl.test", "clear")]), None);
        assert!(c.is_empty(), "{c:?}");
        let c = changes(&rep("fail", &[("bl.test", "listed")]), None);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|c| c.warn));
    }

    #[test]
    fn errors_change_nothing_and_recoveries_are_reported() {
        let before = rep("fail", &[("bl.test", "listed")]);
        assert!(changes(&rep("error", &[("bl.test", "error")]), Some(&before)).is_empty());
        let c = changes(&rep("pass", &[("bl.test", "clear")]), Some(&before));
        let texts: Vec<&str> = c.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, vec!["FCrDNS passes", "delisted from bl.test"]);
        assert!(c.iter().all(|c| !c.warn));
    }

    #[test]
    fn remove_takes_a_listed_vmta_out_and_brings_it_back_only_if_still_ours() {
        let section = ReputationSection {
            dnsbl: vec!["bl.test".into()],
            dnsbl_action: DnsblAction::Remove,
            ..Default::default()
        };
        let board = ReputationBoard::default();
        let vmtas = VmtaBoard::default();
        let events = std::cell::RefCell::new(Vec::new());
        let record = |e: &AccountingEvent| events.borrow_mut().push(e.response.to_string());
        let round = |zone_status: &'static str| {
            apply(
                vec![rep("pass", &[("bl.test", zone_status)])],
                &section,
                &board,
                &vmtas,
                &record,
            )
        };
        round("listed");
        assert_eq!(vmtas.list(crate::clock::unix_s()).len(), 1);
        round("clear");
        assert!(vmtas.list(crate::clock::unix_s()).is_empty());
        assert_eq!(events.borrow().len(), 2, "{:?}", events.borrow());
        // Listed again, then the operator disables it with a reason of their own: the delisting
        // leaves it out.
        round("listed");
        vmtas.disable("v1", "by the operator", crate::clock::unix_s(), None);
        round("clear");
        assert_eq!(
            vmtas.list(crate::clock::unix_s())[0].1.reason,
            "by the operator"
        );
    }
}
