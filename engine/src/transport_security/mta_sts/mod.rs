//! MTA-STS (RFC 8461) for outbound mail: the TXT record (`record`), the policy file (`policy`),
//! its HTTPS fetch off the reactor (`fetch`), the per-core cache kept across restarts (`cache`),
//! and what a core does to know a domain's policy (`Policies`).
//!
//! For each connection to a domain's MX hosts the core asks `_mta-sts.<domain>` TXT (answers are
//! cached by the resolver): a cached policy with the same `id` is used as is (and fetched again in
//! the background once half its `max_age` has passed); a new `id`, or none cached, fetches it now
//! (the connection waits, within `fetch_timeout_ms`). A failed fetch keeps the cached policy until
//! it expires (none: the domain is treated as having no policy) and is not tried again for
//! `FETCH_RETRY_S`. A TXT record that disappears does not end a cached policy (RFC 8461 5.1); a
//! fetched `mode: none` replaces it. With TLS-RPT on, each failed fetch is recorded once for the
//! policy domain (`sts-policy-fetch-error`, `sts-policy-invalid`, `sts-webpki-invalid`).

pub mod cache;
pub mod fetch;
pub mod policy;
pub mod record;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_channel::oneshot;
use hickory_proto::rr::{RData, RecordType};
use rustls::ClientConfig;

pub use cache::{CachedPolicy, PolicyCache};
pub use policy::{Mode, Policy};

use super::tls_rpt::{FailureKey, PolicyKey, PolicyType, Recorder, ResultType};
use crate::dns::{DnsError, Resolver};
use crate::metrics::Metrics;

/// After a failed fetch, the domain's policy is not fetched again for this long.
pub const FETCH_RETRY_S: u64 = 300;
/// Fetches one core runs at once (each on a thread of its own); more wait for a later connection.
pub const FETCHES_IN_FLIGHT_MAX: usize = 8;
/// Domains whose failed fetch is remembered (for `FETCH_RETRY_S`) per core.
pub const FAILED_FETCHES_MAX: usize = 10_000;
/// A fetch thread that overruns its own deadline is given up after this much more.
const FETCH_SLACK: Duration = Duration::from_secs(2);
/// `sweep` walks the cache at most this often (a walk of 10 000 policies is not free).
pub const SWEEP_EVERY_S: u64 = 60;

/// What a policy lookup needs from the core.
#[derive(Clone)]
pub struct Needs {
    pub resolver: Rc<Resolver>,
    /// Verifies the policy host's certificate (Mozilla roots and `[tls] trust_anchors`).
    pub tls: Arc<ClientConfig>,
    pub fetch_timeout: Duration,
    /// With `[tls_rpt] enabled`: where failed fetches are recorded.
    pub tls_rpt: Option<Arc<Recorder>>,
}

/// Why a fetch failed, as TLS-RPT names it (RFC 8460 4.3.2), and the text for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFailure {
    pub result_type: ResultType,
    pub reason: String,
}

impl FetchFailure {
    fn fetch_error(reason: impl Into<String>) -> FetchFailure {
        FetchFailure {
            result_type: ResultType::StsPolicyFetchError,
            reason: reason.into(),
        }
    }

    fn of(error: fetch::FetchError) -> FetchFailure {
        use fetch::FetchError as E;
        let result_type = match &error {
            E::Certificate { .. } => ResultType::StsWebpkiInvalid,
            // An answer that is there but not a policy file.
            E::ContentType(_) | E::TooLarge(_) => ResultType::StsPolicyInvalid,
            E::NoAddress(_)
            | E::Connect { .. }
            | E::Io { .. }
            | E::Timeout(_)
            | E::Status(_)
            | E::Malformed(_) => ResultType::StsPolicyFetchError,
        };
        FetchFailure {
            result_type,
            reason: error.to_string(),
        }
    }
}

/// The TLS-RPT policy of a failed fetch: `sts`, with no policy text (none was had).
pub fn fetch_failure_policy() -> PolicyKey {
    PolicyKey {
        policy_type: PolicyType::Sts,
        policy_string: Vec::new(),
        mx_host: Vec::new(),
    }
}

/// One core's MTA-STS state.
pub struct Policies {
    core: usize,
    /// `<spool_dir>/mta-sts`.
    dir: PathBuf,
    metrics: Arc<Metrics>,
    cache: RefCell<PolicyCache>,
    /// Domains being fetched, with the lookups waiting for them.
    fetching: RefCell<HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// Domains whose last fetch failed: not before this time again.
    retry_at_s: RefCell<HashMap<String, u64>>,
    /// A write of the cache file runs; `dirty`: the cache changed since it started.
    writing: Cell<bool>,
    dirty: Cell<bool>,
    /// `sweep` does nothing before this time.
    next_sweep_s: Cell<u64>,
}

impl Policies {
    pub fn new(core: usize, spool_dir: &std::path::Path, metrics: Arc<Metrics>) -> Policies {
        Policies {
            core,
            dir: cache::directory(spool_dir),
            metrics,
            cache: RefCell::new(PolicyCache::new(cache::POLICIES_PER_CORE_MAX)),
            fetching: RefCell::new(HashMap::new()),
            retry_at_s: RefCell::new(HashMap::new()),
            writing: Cell::new(false),
            dirty: Cell::new(false),
            next_sweep_s: Cell::new(0),
        }
    }

    /// Reads back the policies every core kept (on the blocking pool), at start.
    pub async fn restore(&self) {
        let dir = self.dir.clone();
        let now_s = crate::clock::unix_s();
        let read = glommio::executor()
            .spawn_blocking(move || cache::read_all(&dir, now_s))
            .await;
        let count = read.len();
        self.cache.borrow_mut().restore(read, now_s);
        if count > 0 {
            log::info!("MTA-STS: {count} cached policies read back");
        }
    }

    /// Policies cached on this core now (expired ones included until swept).
    pub fn cached(&self) -> usize {
        self.cache.borrow().len()
    }

    /// Drops expired policies and stale fetch failures (the core's tick), at most once every
    /// `SWEEP_EVERY_S`; expired policies are also dropped when looked up.
    pub fn sweep(&self) {
        let now_s = crate::clock::unix_s();
        if now_s < self.next_sweep_s.get() {
            return;
        }
        self.next_sweep_s.set(now_s + SWEEP_EVERY_S);
        self.cache.borrow_mut().sweep(now_s);
        let mut retry = self.retry_at_s.borrow_mut();
        retry.retain(|_, at| *at > now_s);
        if retry.capacity() > 4 * retry.len().max(64) {
            retry.shrink_to_fit();
        }
    }

    /// The policy of `domain` in force now, if any (`mode: none` included: the caller applies
    /// it as no policy).
    pub async fn policy(self: &Rc<Self>, needs: &Needs, domain: &str) -> Option<Rc<CachedPolicy>> {
        let now_s = crate::clock::unix_s();
        let cached = self.cache.borrow_mut().get(domain, now_s);
        let id = match txt_id(&needs.resolver, domain).await {
            Ok(id) => id,
            Err(why) => {
                log::debug!("MTA-STS {domain}: {why}");
                return cached;
            }
        };
        match &cached {
            Some(c) if c.id == id => {
                if now_s >= c.refresh_at_s() && self.may_fetch(domain, now_s) {
                    let me = self.clone();
                    let (needs, domain, id) = (needs.clone(), domain.to_string(), id);
                    glommio::spawn_local(async move { me.fetch(&needs, &domain, &id).await })
                        .detach();
                }
                cached
            }
            _ if !self.may_fetch(domain, now_s) => cached,
            _ => {
                self.fetch(needs, domain, &id).await;
                self.cache
                    .borrow_mut()
                    .get(domain, crate::clock::unix_s())
                    .or(cached)
            }
        }
    }

    fn may_fetch(&self, domain: &str, now_s: u64) -> bool {
        self.retry_at_s
            .borrow()
            .get(domain)
            .is_none_or(|at| *at <= now_s)
    }

    /// Fetches `domain`'s policy (published under `id`) into the cache; a lookup that finds the
    /// domain already being fetched waits for that fetch instead.
    async fn fetch(self: &Rc<Self>, needs: &Needs, domain: &str, id: &str) {
        let wait = {
            let mut fetching = self.fetching.borrow_mut();
            if let Some(waiters) = fetching.get_mut(domain) {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                Some(rx)
            } else if fetching.len() >= FETCHES_IN_FLIGHT_MAX {
                log::info!("MTA-STS {domain}: {FETCHES_IN_FLIGHT_MAX} fetches in flight; later");
                return;
            } else {
                fetching.insert(domain.to_string(), Vec::new());
                None
            }
        };
        if let Some(rx) = wait {
            let limit = needs.fetch_timeout + FETCH_SLACK;
            let _ = glommio::timer::timeout(limit, async { Ok(rx.await) }).await;
            return;
        }
        let result = fetch_policy(needs, domain).await;
        let counters = self.metrics.core(self.core);
        let now_s = crate::clock::unix_s();
        match result {
            Ok(policy) => {
                counters.mta_sts_fetches.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "MTA-STS {domain}: policy id {id}, mode {}, max_age {} s, mx {:?}",
                    policy.mode.as_str(),
                    policy.max_age_s,
                    policy.mx
                );
                self.retry_at_s.borrow_mut().remove(domain);
                self.cache.borrow_mut().put(
                    CachedPolicy {
                        domain: domain.to_string(),
                        id: id.to_string(),
                        policy,
                        fetched_at_s: now_s,
                    },
                    now_s,
                );
                self.save();
            }
            Err(why) => {
                counters
                    .mta_sts_fetch_failures
                    .fetch_add(1, Ordering::Relaxed);
                log::warn!("MTA-STS {domain}: policy fetch failed: {}", why.reason);
                if let Some(recorder) = &needs.tls_rpt {
                    let failure = FailureKey {
                        result_type: why.result_type,
                        receiving_mx_hostname: String::new(),
                        receiving_ip: String::new(),
                    };
                    let policy = fetch_failure_policy();
                    recorder.record(self.core, domain, &policy, Some(failure));
                }
                let mut retry = self.retry_at_s.borrow_mut();
                if retry.len() < FAILED_FETCHES_MAX || retry.contains_key(domain) {
                    retry.insert(domain.to_string(), now_s + FETCH_RETRY_S);
                }
            }
        }
        for waiter in self
            .fetching
            .borrow_mut()
            .remove(domain)
            .unwrap_or_default()
        {
            let _ = waiter.send(());
        }
    }

    /// Writes the cache file off the reactor; changes made while a write runs are written after it.
    fn save(self: &Rc<Self>) {
        self.dirty.set(true);
        if self.writing.replace(true) {
            return;
        }
        let me = self.clone();
        glommio::spawn_local(async move {
            while me.dirty.replace(false) {
                let policies = me.cache.borrow().snapshot();
                let (dir, core) = (me.dir.clone(), me.core);
                let written = glommio::executor()
                    .spawn_blocking(move || cache::write(&dir, core, policies))
                    .await;
                if let Err(e) = written {
                    log::warn!("MTA-STS cache {}: {e}", me.dir.display());
                }
            }
            me.writing.set(false);
        })
        .detach();
    }
}

/// The policy id published for `domain`, or why there is none to use.
async fn txt_id(resolver: &Resolver, domain: &str) -> Result<String, String> {
    let name = format!("_mta-sts.{domain}");
    let records = match resolver.lookup(&name, RecordType::TXT).await {
        Ok(r) => r,
        Err(DnsError::NoSuchDomain(_)) => return Err(format!("{name}: no such name")),
        Err(e) => return Err(e.to_string()),
    };
    let texts: Vec<Vec<u8>> = records
        .iter()
        .filter_map(|r| match r {
            RData::TXT(t) => Some(t.txt_data.iter().flat_map(|s| s.iter().copied()).collect()),
            _ => None,
        })
        .collect();
    record::policy_id(&texts).map_err(|e| e.to_string())
}

/// Resolves `mta-sts.<domain>` with Volley's resolver, fetches on a thread of its own, parses.
async fn fetch_policy(needs: &Needs, domain: &str) -> Result<Policy, FetchFailure> {
    let host = format!("mta-sts.{domain}");
    let addresses = needs
        .resolver
        .ip_addrs(&host)
        .await
        .map_err(|e| FetchFailure::fetch_error(e.to_string()))?;
    if addresses.is_empty() {
        return Err(FetchFailure::fetch_error(format!("{host} has no address")));
    }
    let request = fetch::Request::new(domain, addresses, needs.tls.clone(), needs.fetch_timeout);
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("volley-mta-sts".into())
        .spawn(move || {
            let _ = tx.send(fetch::fetch(&request));
        })
        .map_err(|e| FetchFailure::fetch_error(format!("cannot start a fetch thread: {e}")))?;
    let limit = needs.fetch_timeout + FETCH_SLACK;
    let body = match glommio::timer::timeout(limit, async { Ok(rx.await) }).await {
        Ok(Ok(Ok(body))) => body,
        Ok(Ok(Err(e))) => return Err(FetchFailure::of(e)),
        Ok(Err(_)) => {
            return Err(FetchFailure::fetch_error(
                "the fetch thread ended without an answer",
            ));
        }
        Err(_) => {
            return Err(FetchFailure::fetch_error(format!(
                "{host}: no answer within the fetch timeout"
            )));
        }
    };
    policy::parse(&body).map_err(|e| FetchFailure {
        result_type: ResultType::StsPolicyInvalid,
        reason: format!("{host}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::fetch::FetchError;
    use super::*;

    #[test]
    fn fetch_failures_map_to_tls_rpt_result_types() {
        let host = || "mta-sts.a.test".to_string();
        let cases = [
            (
                FetchError::Certificate {
                    host: host(),
                    reason: "UnknownIssuer".into(),
                },
                ResultType::StsWebpkiInvalid,
            ),
            (FetchError::Status(404), ResultType::StsPolicyFetchError),
            (FetchError::Timeout(host()), ResultType::StsPolicyFetchError),
            (
                FetchError::Connect {
                    host: host(),
                    reason: "refused".into(),
                },
                ResultType::StsPolicyFetchError,
            ),
            (
                FetchError::ContentType("text/html".into()),
                ResultType::StsPolicyInvalid,
            ),
            (FetchError::TooLarge(1), ResultType::StsPolicyInvalid),
        ];
        for (error, want) in cases {
            assert_eq!(FetchFailure::of(error.clone()).result_type, want, "{error}");
        }
    }
}
