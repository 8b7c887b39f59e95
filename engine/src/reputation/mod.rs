//! Sender reputation self-checks (`[reputation]`, docs/reputation.md): forward-confirmed reverse
//! DNS of every VMTA, and DNSBL listings of its address, at start, after a reload and every
//! `check_interval_s`. Core 0 runs the checks as one background task (DNS queries only, async, with
//! the resolver's timeouts); the results live on the `ReputationBoard`, which the API and the
//! metrics read. With `dnsbl_action = "remove"`, a listed VMTA leaves its pools through the
//! `VmtaBoard` (as refusals take it out) and comes back when delisted.

mod check;
pub mod dnsbl;
pub mod fcrdns;
pub mod feedback;
pub mod unsubscribe;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

pub use check::{check_now, check_vmtas, run};

/// Characters of a DNSBL's TXT reason kept (the zone's text is untrusted).
pub const REASON_CHARS_MAX: usize = 200;

/// The FCrDNS outcome of one VMTA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FcrdnsStatus {
    /// "pass", "fail", or "error" (a lookup failed for a reason other than the name's absence).
    pub status: &'static str,
    pub detail: String,
    pub ptr: Vec<String>,
    pub forward: Vec<String>,
}

/// One DNSBL zone's answer about one VMTA address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ZoneStatus {
    pub zone: String,
    /// "clear", "listed", "refused" (the zone refuses this resolver: nothing known), or "error".
    pub status: &'static str,
    /// The A records of a listing (127.0.0.x).
    pub codes: Vec<String>,
    /// The TXT record of a listing, or what went wrong.
    pub reason: String,
}

/// What the last round found for one VMTA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmtaReputation {
    pub vmta: String,
    pub source_ip: IpAddr,
    pub ehlo_hostname: String,
    /// None when `fcrdns = false`.
    pub fcrdns: Option<FcrdnsStatus>,
    pub dnsbl: Vec<ZoneStatus>,
    pub checked_unix_s: u64,
}

impl VmtaReputation {
    /// The zones listing this VMTA.
    pub fn listed_in(&self) -> Vec<&str> {
        self.dnsbl
            .iter()
            .filter(|z| z.status == "listed")
            .map(|z| z.zone.as_str())
            .collect()
    }
}

/// The latest results, one entry per configured VMTA with a checkable address (bounded by the
/// configuration; entries of VMTAs gone from it are dropped at the next round).
#[derive(Debug, Default)]
pub struct ReputationBoard {
    /// Locked once per round and per API request or scrape, never on the message path.
    vmtas: Mutex<BTreeMap<String, VmtaReputation>>,
    /// VMTAs this board took out of their pools (`dnsbl_action = "remove"`), with the reason it
    /// gave: only those are put back when delisted, not ones the operator disabled.
    removed: Mutex<BTreeMap<String, String>>,
    rounds: AtomicU64,
    changes: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl ReputationBoard {
    pub fn get(&self, vmta: &str) -> Option<VmtaReputation> {
        locked(&self.vmtas).get(vmta).cloned()
    }

    pub fn all(&self) -> Vec<VmtaReputation> {
        locked(&self.vmtas).values().cloned().collect()
    }

    /// Keeps `results` as the current view; returns the previous entry of each.
    fn replace(
        &self,
        results: Vec<VmtaReputation>,
    ) -> Vec<(VmtaReputation, Option<VmtaReputation>)> {
        let mut map = locked(&self.vmtas);
        let mut old = std::mem::take(&mut *map);
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            let before = old.remove(&r.vmta);
            map.insert(r.vmta.clone(), r.clone());
            out.push((r, before));
        }
        self.rounds.fetch_add(1, Ordering::Relaxed);
        out
    }

    fn clear(&self) {
        locked(&self.vmtas).clear();
    }

    /// The `volley_vmta_fcrdns_ok`, `volley_vmta_dnsbl_listed` and `volley_reputation_*` metrics.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let all = self.all();
        out.push_str(
            "# HELP volley_vmta_fcrdns_ok 1 when the VMTA's PTR names its EHLO host and that host resolves back to its address\n# TYPE volley_vmta_fcrdns_ok gauge\n",
        );
        for r in &all {
            if let Some(f) = &r.fcrdns {
                let _ = writeln!(
                    out,
                    "volley_vmta_fcrdns_ok{{vmta=\"{}\"}} {}",
                    r.vmta,
                    u8::from(f.status == "pass")
                );
            }
        }
        out.push_str(
            "# HELP volley_vmta_dnsbl_listed 1 while the VMTA's address is listed in the zone\n# TYPE volley_vmta_dnsbl_listed gauge\n",
        );
        for r in &all {
            for z in &r.dnsbl {
                let _ = writeln!(
                    out,
                    "volley_vmta_dnsbl_listed{{vmta=\"{}\",zone=\"{}\"}} {}",
                    r.vmta,
                    z.zone,
                    u8::from(z.status == "listed")
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP volley_reputation_checks_total Rounds of FCrDNS and DNSBL checks\n# TYPE volley_reputation_checks_total counter\nvolley_reputation_checks_total {}",
            self.rounds.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP volley_reputation_changes_total FCrDNS or DNSBL results that changed from one round to the next\n# TYPE volley_reputation_changes_total counter\nvolley_reputation_changes_total {}",
            self.changes.load(Ordering::Relaxed)
        );
        out
    }
}
