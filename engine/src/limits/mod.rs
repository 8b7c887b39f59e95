//! Sending limits per customer: `max_messages_per_hour` and `max_messages_per_day` (the plan), then
//! prepaid `credits` spent one per message beyond the plan. Checked at MAIL (AUTH customers) and
//! charged when a message is accepted (after DATA, once the customer is known for every path).
//!
//! Counters are process-wide and shared by the cores without a lock: each customer has an `Arc` of
//! atomics ([`counter::WindowCounter`] packs window and count into one word). Each core keeps its
//! own map from customer name to that `Arc`, so the registry's mutex is taken once per customer
//! per core, never per message. Windows are fixed: the UTC clock hour and the UTC day.
//!
//! The counters survive a restart: [`SendingLimits::save`] writes `limits.json` in the spool
//! directory (temporary file, fsync, rename) every few seconds when something changed and at stop;
//! [`SendingLimits::open`] reads it at start. After a crash, what was counted since the last save
//! (at most `SAVE_EVERY_MS`) is lost, so a customer may send that much beyond the limits.

pub mod bounce_guard;
pub mod counter;
pub mod lease;
pub mod shared;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::config::CustomerConfig;
use counter::WindowCounter;

/// The counters file in the spool directory.
pub const LIMITS_FILE: &str = "limits.json";
/// How often the counters are written when they changed (and at every stop).
pub const SAVE_EVERY_MS: u64 = 5_000;

const HOUR_S: u64 = 3_600;
const DAY_S: u64 = 86_400;

/// One customer's counters.
#[derive(Debug, Default)]
pub struct CustomerCounters {
    /// What this node accepted in the hour and day (with `[cluster]`: its own part).
    hour: WindowCounter,
    day: WindowCounter,
    credits_spent: AtomicU64,
    /// Credits added through the API (`POST /v1/customers/{name}/credits`), on top of the
    /// configured `credits` (without `[cluster]`; with it, Redis holds them).
    credits_added: AtomicU64,
    /// This node's lease of the cluster-wide quota (with `[cluster]` only).
    pub lease: lease::Lease,
    /// The bounce-rate guard (`max_bounce_percent`): this node's delivery outcomes.
    pub bounce: bounce_guard::BounceWindow,
}

impl CustomerCounters {
    /// Credits left of `bought`.
    pub fn credits_left(&self, bought: u64) -> u64 {
        bought.saturating_sub(self.credits_spent.load(Ordering::Relaxed))
    }
}

/// What accepting one message cost, to give back if it is not spooled after all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// No limit applies (no customer, an unknown one, or a plan without limits).
    Free,
    /// Counted in the plan's hour and day windows.
    Plan { hour: u32, day: u32 },
    /// One prepaid credit.
    Credit,
    /// One message of this node's lease of the cluster's plan.
    SharedPlan { hour: u32, day: u32 },
    /// One credit of this node's lease of the cluster's credits.
    SharedCredit,
}

/// Which plan limit refused a message (no credits were left either).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Hourly {
        limit: u32,
        customer: String,
    },
    Daily {
        limit: u32,
        customer: String,
    },
    /// The limits are shared through Redis, Redis is down and `on_redis_down = "tempfail"`.
    Unavailable {
        customer: String,
    },
    /// The bounce-rate guard paused the customer until the operator resumes it.
    Paused {
        customer: String,
        reason: String,
    },
}

impl std::fmt::Display for Refusal {
    /// `Hourly sending limit of N messages reached for customer X and no credits left`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (period, limit, customer) = match self {
            Refusal::Hourly { limit, customer } => ("Hourly", limit, customer),
            Refusal::Daily { limit, customer } => ("Daily", limit, customer),
            Refusal::Unavailable { customer } => {
                return write!(
                    f,
                    "Sending limits of customer {customer} cannot be checked (cluster store unreachable)"
                );
            }
            Refusal::Paused { customer, reason } => {
                return write!(
                    f,
                    "Customer {customer} is paused by the bounce-rate guard ({reason}) until the operator resumes it"
                );
            }
        };
        write!(
            f,
            "{period} sending limit of {limit} messages reached for customer {customer} and no credits left"
        )
    }
}

/// The plan of a customer, from its `[[customer]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
    pub credits: u64,
}

impl Plan {
    pub fn of(customer: &CustomerConfig) -> Plan {
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Plan {
            per_hour: customer.max_messages_per_hour.map(clamp),
            per_day: customer.max_messages_per_day.map(clamp),
            credits: customer.credits,
        }
    }

    fn is_unlimited(&self) -> bool {
        self.per_hour.is_none() && self.per_day.is_none()
    }
}

fn windows(now_s: u64) -> (u32, u32) {
    ((now_s / HOUR_S) as u32, (now_s / DAY_S) as u32)
}

impl CustomerCounters {
    /// Would a message be accepted now? (No side effect: the MAIL-time check.)
    pub fn check(&self, name: &str, plan: &Plan, now_s: u64) -> Result<(), Refusal> {
        if plan.is_unlimited() {
            return Ok(());
        }
        let (hour, day) = windows(now_s);
        let refusal = if let Some(limit) = plan.per_hour
            && self.hour.count_in(hour) >= limit
        {
            Refusal::Hourly {
                limit,
                customer: name.to_string(),
            }
        } else if let Some(limit) = plan.per_day
            && self.day.count_in(day) >= limit
        {
            Refusal::Daily {
                limit,
                customer: name.to_string(),
            }
        } else {
            return Ok(());
        };
        if self.credits_left(plan.credits) > 0 {
            return Ok(());
        }
        Err(refusal)
    }

    /// Counts one accepted message: in the plan while it has room, else one credit.
    pub fn charge(&self, name: &str, plan: &Plan, now_s: u64) -> Result<Charge, Refusal> {
        if plan.is_unlimited() {
            return Ok(Charge::Free);
        }
        let (hour, day) = windows(now_s);
        let refusal = match self.take_plan(plan, hour, day) {
            Ok(()) => return Ok(Charge::Plan { hour, day }),
            Err(r) => r,
        };
        let spent = self.credits_spent.fetch_add(1, Ordering::AcqRel);
        if spent < plan.credits {
            return Ok(Charge::Credit);
        }
        self.credits_spent.fetch_sub(1, Ordering::AcqRel);
        Err(match refusal {
            Refusal::Hourly { limit, .. } => Refusal::Hourly {
                limit,
                customer: name.to_string(),
            },
            Refusal::Daily { limit, .. } => Refusal::Daily {
                limit,
                customer: name.to_string(),
            },
            Refusal::Unavailable { .. } => Refusal::Unavailable {
                customer: name.to_string(),
            },
            paused @ Refusal::Paused { .. } => paused,
        })
    }

    /// Counts one message this node accepted under a lease (no limit: the lease is the limit).
    fn count_local(&self, hour: u32, day: u32) {
        self.hour.try_take(hour, u32::MAX);
        self.day.try_take(day, u32::MAX);
    }

    fn count_local_credit(&self) {
        self.credits_spent.fetch_add(1, Ordering::AcqRel);
    }

    fn take_plan(&self, plan: &Plan, hour: u32, day: u32) -> Result<(), Refusal> {
        let customer = String::new();
        if let Some(limit) = plan.per_hour
            && !self.hour.try_take(hour, limit)
        {
            return Err(Refusal::Hourly { limit, customer });
        }
        if let Some(limit) = plan.per_day
            && !self.day.try_take(day, limit)
        {
            if plan.per_hour.is_some() {
                self.hour.give_back(hour);
            }
            return Err(Refusal::Daily { limit, customer });
        }
        Ok(())
    }

    /// Gives back what `charge` took (the message was not spooled).
    pub fn refund(&self, plan: &Plan, charge: Charge) {
        match charge {
            Charge::Free => {}
            Charge::Plan { hour, day } => {
                if plan.per_hour.is_some() {
                    self.hour.give_back(hour);
                }
                if plan.per_day.is_some() {
                    self.day.give_back(day);
                }
            }
            Charge::Credit => {
                let _ = self
                    .credits_spent
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |s| s.checked_sub(1));
            }
            Charge::SharedPlan { hour, day } => {
                self.hour.give_back(hour);
                self.day.give_back(day);
                self.lease.put_back_plan(hour);
            }
            Charge::SharedCredit => {
                let _ = self
                    .credits_spent
                    .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |s| s.checked_sub(1));
                self.lease.put_back_credit();
            }
        }
    }

    /// Messages counted in the current hour and day, and credits spent (for the API and tests).
    pub fn usage(&self, now_s: u64) -> (u32, u32, u64) {
        let (hour, day) = windows(now_s);
        (
            self.hour.count_in(hour),
            self.day.count_in(day),
            self.credits_spent.load(Ordering::Relaxed),
        )
    }
}

/// The counters file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedLimits {
    customers: BTreeMap<String, SavedCustomer>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedCustomer {
    /// `[window index, count]`; the window is hours since the epoch.
    hour: (u32, u32),
    /// `[window index, count]`; the window is days since the epoch.
    day: (u32, u32),
    credits_spent: u64,
    #[serde(default)]
    credits_added: u64,
    /// The bounce-rate guard's pause: (reason, since in Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    paused: Option<(String, u64)>,
}

/// Every customer's counters, shared by all cores.
#[derive(Debug, Default)]
pub struct SendingLimits {
    /// Locked when a core meets a customer for the first time and when saving; never per message.
    customers: Mutex<HashMap<String, Arc<CustomerCounters>>>,
    path: Option<PathBuf>,
    /// Something was charged since the last save.
    dirty: AtomicBool,
    /// Serialises saves (every core saves at stop); never taken per message.
    save_lock: Mutex<()>,
}

/// Why the counters file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a counters file: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
}

impl SendingLimits {
    /// Counters kept in memory only (tests, tools).
    pub fn in_memory() -> SendingLimits {
        SendingLimits::default()
    }

    /// Loads `limits.json` from `dir` (an absent file is a fresh start).
    pub fn open(dir: &Path) -> Result<SendingLimits, LimitsError> {
        let path = dir.join(LIMITS_FILE);
        let mut customers = HashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let saved: SavedLimits =
                    serde_json::from_slice(&bytes).map_err(|source| LimitsError::Parse {
                        path: path.display().to_string(),
                        source,
                    })?;
                for (name, c) in saved.customers {
                    let counters = CustomerCounters {
                        hour: WindowCounter::new(c.hour.0, c.hour.1),
                        day: WindowCounter::new(c.day.0, c.day.1),
                        credits_spent: AtomicU64::new(c.credits_spent),
                        credits_added: AtomicU64::new(c.credits_added),
                        lease: lease::Lease::default(),
                        bounce: bounce_guard::BounceWindow::restored(
                            c.paused
                                .map(|(reason, since_s)| bounce_guard::Pause { reason, since_s }),
                        ),
                    };
                    customers.insert(name, Arc::new(counters));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(LimitsError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
        Ok(SendingLimits {
            customers: Mutex::new(customers),
            path: Some(path),
            dirty: AtomicBool::new(false),
            save_lock: Mutex::new(()),
        })
    }

    /// The counters of `name`, created on first use.
    pub fn counters(&self, name: &str) -> Arc<CustomerCounters> {
        let mut map = match self.customers.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(name.to_string()).or_default().clone()
    }

    /// Every customer's counters (the registry's lock is taken once, not per message).
    pub fn all(&self) -> Vec<(String, Arc<CustomerCounters>)> {
        let map = match self.customers.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.iter().map(|(n, c)| (n.clone(), c.clone())).collect()
    }

    fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Whether a save has something new to write.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Writes the counters (temporary file, fsync, rename). Blocking: call it off the reactor.
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let _saving = match self.save_lock.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.dirty.store(false, Ordering::Release);
        let saved = {
            let map = match self.customers.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            SavedLimits {
                customers: map
                    .iter()
                    .map(|(name, c)| {
                        (
                            name.clone(),
                            SavedCustomer {
                                hour: c.hour.raw(),
                                day: c.day.raw(),
                                credits_spent: c.credits_spent.load(Ordering::Relaxed),
                                credits_added: c.credits_added.load(Ordering::Relaxed),
                                paused: c.bounce.pause().map(|p| (p.reason, p.since_s)),
                            },
                        )
                    })
                    .collect(),
            }
        };
        let bytes = serde_json::to_vec_pretty(&saved).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent()
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// One core's view of the limits: its own name → counters map in front of the shared registry.
pub struct CoreLimits {
    shared: Arc<SendingLimits>,
    cache: RefCell<HashMap<Box<str>, Arc<CustomerCounters>>>,
    /// With `[cluster]`: plans and credits are held across the nodes (see `shared`).
    cluster: Option<Arc<Cluster>>,
}

impl CoreLimits {
    pub fn new(shared: Arc<SendingLimits>, cluster: Option<Arc<Cluster>>) -> CoreLimits {
        CoreLimits {
            shared,
            cache: RefCell::new(HashMap::new()),
            cluster,
        }
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    pub fn shared(&self) -> &Arc<SendingLimits> {
        &self.shared
    }

    fn counters(&self, name: &str) -> Arc<CustomerCounters> {
        if let Some(c) = self.cache.borrow().get(name) {
            return c.clone();
        }
        let c = self.shared.counters(name);
        self.cache.borrow_mut().insert(name.into(), c.clone());
        c
    }

    /// The MAIL-time check for `customer` (unknown or none: always admitted).
    pub fn check(&self, customer: Option<&CustomerConfig>, now_s: u64) -> Result<(), Refusal> {
        let Some(c) = customer else {
            return Ok(());
        };
        let counters = self.counters(&c.name);
        paused(&counters, &c.name)?;
        let plan = self.plan(c, &counters);
        if plan.is_unlimited() {
            return Ok(());
        }
        match &self.cluster {
            Some(_) => shared::check(&counters, &c.name, &plan, now_s * 1000),
            None => counters.check(&c.name, &plan, now_s),
        }
    }

    /// Charges one message to `customer`; `Err` names the limit that refuses it. With `[cluster]`
    /// this may wait for one Redis round trip (a new lease); otherwise it never waits.
    pub async fn charge(
        &self,
        customer: Option<&CustomerConfig>,
        now_ms: u64,
    ) -> Result<Charge, Refusal> {
        let Some(c) = customer else {
            return Ok(Charge::Free);
        };
        let counters = self.counters(&c.name);
        paused(&counters, &c.name)?;
        let plan = self.plan(c, &counters);
        if plan.is_unlimited() {
            return Ok(Charge::Free);
        }
        let result = match &self.cluster {
            Some(cluster) => shared::charge(cluster, &counters, &c.name, &plan, now_ms).await,
            None => counters.charge(&c.name, &plan, now_ms / 1000),
        };
        if result.is_ok() {
            self.shared.mark_dirty();
        }
        result
    }

    /// The customer's plan; its credits are the configured ones plus those added through the API
    /// (with `[cluster]`, Redis adds those in the lease script).
    fn plan(&self, c: &CustomerConfig, counters: &CustomerCounters) -> Plan {
        let mut plan = Plan::of(c);
        if self.cluster.is_none() {
            plan.credits = plan
                .credits
                .saturating_add(counters.credits_added.load(Ordering::Acquire));
        }
        plan
    }

    /// Gives back a charge for a message that was not spooled.
    pub fn refund(&self, customer: Option<&CustomerConfig>, charge: Charge) {
        if let Some(c) = customer
            && charge != Charge::Free
        {
            let counters = self.counters(&c.name);
            let plan = self.plan(c, &counters);
            counters.refund(&plan, charge);
        }
    }

    /// Adds prepaid credits to `name` on this node (without `[cluster]`): one atomic add, seen by
    /// the next charge on any core. Returns the credits added so far. The caller saves the
    /// counters before answering, so the top-up is durable when acknowledged.
    pub fn add_credits(&self, name: &str, add: u64) -> u64 {
        let counters = self.counters(name);
        let total = counters
            .credits_added
            .fetch_add(add, Ordering::AcqRel)
            .saturating_add(add);
        self.shared.mark_dirty();
        total
    }

    /// Credits added through the API on this node.
    pub fn credits_added(&self, name: &str) -> u64 {
        self.counters(name).credits_added.load(Ordering::Acquire)
    }

    /// This customer's messages in the current hour and day, and credits spent.
    pub fn usage(&self, name: &str, now_s: u64) -> (u32, u32, u64) {
        self.counters(name).usage(now_s)
    }

    /// Counts a delivery outcome of `customer`'s mail for the bounce-rate guard (when it has
    /// `max_bounce_percent`); the pause it started, if it started one (saved with the counters).
    pub fn record_outcome(
        &self,
        customer: Option<&CustomerConfig>,
        bounced: bool,
        now_s: u64,
    ) -> Option<bounce_guard::Pause> {
        let c = customer?;
        let max_percent = c.max_bounce_percent?;
        let started = self.counters(&c.name).bounce.record(
            bounced,
            c.bounce_window_messages,
            max_percent,
            now_s,
        );
        if started.is_some() {
            self.shared.mark_dirty();
        }
        started
    }

    /// Ends `name`'s pause (the caller saves the counters); the pause that ended, if any.
    pub fn resume(&self, name: &str) -> Option<bounce_guard::Pause> {
        let ended = self.counters(name).bounce.resume();
        self.shared.mark_dirty();
        ended
    }

    /// `name`'s pause now, and its window's (outcomes, hard bounces).
    pub fn bounce_state(&self, name: &str) -> (Option<bounce_guard::Pause>, (u64, u64)) {
        let counters = self.counters(name);
        (counters.bounce.pause(), counters.bounce.counts())
    }
}

/// `Err(Paused)` while the bounce-rate guard holds the customer.
fn paused(counters: &CustomerCounters, name: &str) -> Result<(), Refusal> {
    if !counters.bounce.is_paused() {
        return Ok(());
    }
    let reason = counters
        .bounce
        .pause()
        .map(|p| p.reason)
        .unwrap_or_default();
    Err(Refusal::Paused {
        customer: name.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Charges without a cluster: the future is ready at once.
    fn charge(
        limits: &CoreLimits,
        c: Option<&CustomerConfig>,
        now_s: u64,
    ) -> Result<Charge, Refusal> {
        futures_lite::future::block_on(limits.charge(c, now_s * 1000))
    }

    fn customer(hour: Option<u64>, day: Option<u64>, credits: u64) -> CustomerConfig {
        CustomerConfig {
            name: "acme".into(),
            password_hash: None,
            pool: None,
            max_messages_per_hour: hour,
            max_messages_per_day: day,
            credits,
            list_unsubscribe: None,
            spam_filter: None,
            max_bounce_percent: None,
            bounce_window_messages: 1000,
        }
    }

    /// The start of an hour, eight hours into a UTC day.
    const T0: u64 = 1_800_000_000;

    #[test]
    fn hourly_limit_then_credits_then_refusal() {
        let limits = CoreLimits::new(Arc::new(SendingLimits::in_memory()), None);
        let c = customer(Some(3), None, 2);
        for _ in 0..3 {
            assert!(matches!(
                charge(&limits, Some(&c), T0),
                Ok(Charge::Plan { .. })
            ));
        }
        assert_eq!(limits.check(Some(&c), T0), Ok(()), "credits remain");
        assert_eq!(charge(&limits, Some(&c), T0), Ok(Charge::Credit));
        assert_eq!(charge(&limits, Some(&c), T0), Ok(Charge::Credit));
        let refused = limits.check(Some(&c), T0).unwrap_err();
        assert!(matches!(refused, Refusal::Hourly { limit: 3, .. }));
        let text = refused.to_string();
        assert!(
            text.contains("Hourly sending limit of 3 messages reached for customer acme"),
            "{text}"
        );
        assert!(text.contains("no credits left"), "{text}");
        assert!(charge(&limits, Some(&c), T0).is_err());
        // The next hour the plan has room again; spent credits stay spent.
        assert!(matches!(
            charge(&limits, Some(&c), T0 + HOUR_S),
            Ok(Charge::Plan { .. })
        ));
        assert_eq!(
            limits.usage("acme", T0 + HOUR_S),
            (1, 0, 2),
            "no daily limit: no day count"
        );
    }

    #[test]
    fn daily_limit_refuses_and_gives_the_hour_back() {
        let limits = CoreLimits::new(Arc::new(SendingLimits::in_memory()), None);
        let c = customer(Some(10), Some(2), 0);
        assert!(charge(&limits, Some(&c), T0).is_ok());
        assert!(charge(&limits, Some(&c), T0).is_ok());
        let e = charge(&limits, Some(&c), T0).unwrap_err();
        assert!(e.to_string().contains("Daily sending limit of 2"), "{e}");
        assert_eq!(limits.usage("acme", T0), (2, 2, 0));
    }

    #[test]
    fn refund_gives_back() {
        let limits = CoreLimits::new(Arc::new(SendingLimits::in_memory()), None);
        let c = customer(Some(1), None, 1);
        let a = charge(&limits, Some(&c), T0).unwrap();
        let b = charge(&limits, Some(&c), T0).unwrap();
        assert_eq!(b, Charge::Credit);
        limits.refund(Some(&c), b);
        limits.refund(Some(&c), a);
        assert_eq!(limits.usage("acme", T0), (0, 0, 0));
    }

    #[test]
    fn no_customer_or_no_plan_is_free() {
        let limits = CoreLimits::new(Arc::new(SendingLimits::in_memory()), None);
        assert_eq!(charge(&limits, None, T0), Ok(Charge::Free));
        let c = customer(None, None, 0);
        assert_eq!(charge(&limits, Some(&c), T0), Ok(Charge::Free));
    }

    #[test]
    fn counters_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = customer(Some(5), Some(100), 1);
        {
            let shared = Arc::new(SendingLimits::open(dir.path()).unwrap());
            let limits = CoreLimits::new(shared.clone(), None);
            for _ in 0..6 {
                charge(&limits, Some(&c), T0).unwrap();
            }
            assert!(shared.is_dirty());
            shared.save().unwrap();
            assert!(!shared.is_dirty());
        }
        let limits = CoreLimits::new(Arc::new(SendingLimits::open(dir.path()).unwrap()), None);
        assert_eq!(
            limits.usage("acme", T0),
            (5, 5, 1),
            "the sixth was a credit"
        );
        assert!(charge(&limits, Some(&c), T0).is_err());
    }

    #[test]
    fn added_credits_are_spent_after_the_plan_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = customer(Some(1), None, 0);
        {
            let shared = Arc::new(SendingLimits::open(dir.path()).unwrap());
            let limits = CoreLimits::new(shared.clone(), None);
            assert!(charge(&limits, Some(&c), T0).is_ok());
            assert!(
                charge(&limits, Some(&c), T0).is_err(),
                "plan used, no credits"
            );
            assert_eq!(limits.add_credits("acme", 2), 2);
            assert_eq!(charge(&limits, Some(&c), T0), Ok(Charge::Credit));
            shared.save().unwrap();
        }
        let limits = CoreLimits::new(Arc::new(SendingLimits::open(dir.path()).unwrap()), None);
        assert_eq!(limits.credits_added("acme"), 2);
        assert_eq!(charge(&limits, Some(&c), T0), Ok(Charge::Credit));
        assert!(
            charge(&limits, Some(&c), T0).is_err(),
            "both added credits spent"
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LIMITS_FILE), b"{nope").unwrap();
        assert!(matches!(
            SendingLimits::open(dir.path()),
            Err(LimitsError::Parse { .. })
        ));
    }
}
