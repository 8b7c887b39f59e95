//! MX rollup by the DNS answer: a recipient domain that no `[[rollup]]` lists, but whose every MX
//! host matches one rollup's `mx` patterns (a custom domain on Google Workspace or Microsoft 365),
//! shares that rollup's queue, and so its limits, like PowerMTA's mx-rollup.
//!
//! Placement asks `queue_domain` first. A domain it cannot answer for yet has its MX looked up in
//! the background (`route_after_lookup`): the reply to the client never waits on DNS, and the
//! recipients, already on disk, are routed when the answer is in. A failed lookup, no MX or a null
//! MX routes to the domain's own queue: rollup never holds mail. Answers are remembered per core,
//! with an expiry, in a map of bounded size.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use super::Placement;
use crate::config::{Config, rollup_of};
use crate::dns::MxAnswer;
use crate::envelope::MessageId;
use crate::spool::RecordLocation;

/// Domains whose MX answer a core remembers at most.
pub const MX_ROLLUP_MEMORY_DOMAINS_MAX: usize = 100_000;
/// How long an MX answer decides a domain's queue, in seconds (MX records change rarely; the
/// delivery itself always uses the resolver's TTL-cached answer of the group's name).
pub const MX_ROLLUP_REMEMBER_S: u64 = 3_600;
/// How long a failed lookup sends a domain to its own queue, in seconds: short, so the domain joins
/// its group soon after DNS recovers.
pub const MX_ROLLUP_FAILURE_REMEMBER_S: u64 = 60;
/// Domains whose MX lookup a core waits for at once at most; a domain beyond that goes to its own
/// queue without a lookup (rollup never holds mail).
pub const MX_ROLLUP_LOOKUPS_MAX: usize = 10_000;
/// Messages waiting for one domain's lookup at most; more mail to that domain meanwhile goes to
/// the domain's own queue without waiting.
pub const MX_ROLLUP_WAITING_PER_LOOKUP_MAX: usize = 10_000;
/// How often expired answers are dropped and the memory's table shrunk, in seconds.
pub const MX_ROLLUP_SWEEP_EVERY_S: u64 = 60;

/// Whether MX host `host` (lower-case, no trailing dot) matches `pattern`: equal, or for
/// `*.example.com` any name ending in `.example.com`.
pub fn mx_host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host
                    .get(host.len() - suffix.len()..)
                    .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
                && host.as_bytes().get(host.len() - suffix.len() - 1) == Some(&b'.')
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// The rollup group whose `mx` patterns match every one of `hosts`; none for no hosts (a domain
/// with MX hosts of several providers is not rolled up).
pub fn group_of_mx_hosts<'a>(config: &'a Config, hosts: &[&str]) -> Option<&'a str> {
    if hosts.is_empty() {
        return None;
    }
    config
        .rollups
        .iter()
        .filter(|r| !r.mx.is_empty())
        .find(|r| {
            hosts
                .iter()
                .all(|h| r.mx.iter().any(|p| mx_host_matches(p, h)))
        })
        .map(|r| r.name.as_str())
}

/// The group an MX answer puts a domain in: none for a null MX or no MX.
pub fn group_of_answer<'a>(config: &'a Config, answer: &MxAnswer) -> Option<&'a str> {
    if answer.is_null_mx() {
        return None;
    }
    let hosts: Vec<&str> = answer
        .records
        .iter()
        .map(|r| r.exchange.as_str())
        .filter(|h| !h.is_empty())
        .collect();
    group_of_mx_hosts(config, &hosts)
}

/// One remembered answer: the domain's group (none = its own queue) until `expires_s`.
#[derive(Debug, Clone)]
struct Remembered {
    group: Option<Box<str>>,
    expires_s: u64,
}

/// A core's memory of which group each looked-up domain is in. Forgotten when the configuration
/// changes (the groups may have), and bounded: when full, expired entries go first, then an eighth
/// of the others. Expired answers are also dropped every `MX_ROLLUP_SWEEP_EVERY_S`, and a domain's
/// answer when its own queue is freed, so the table shrinks back after a burst of new domains.
#[derive(Debug)]
pub struct MxRollupMemory {
    domains_max: usize,
    config: Weak<Config>,
    /// Whether `config` has a rollup with `mx` patterns and rollup is on: derived once per
    /// configuration, not per recipient.
    by_mx: bool,
    domains: HashMap<Box<str>, Remembered>,
    /// When `sweep` next drops expired answers.
    next_sweep_s: u64,
}

/// What placement should do with a recipient domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueDomain {
    /// Route to this queue domain now.
    Known(String),
    /// The domain's MX decides: look it up before routing.
    NeedsLookup,
}

impl MxRollupMemory {
    pub fn new(domains_max: usize) -> MxRollupMemory {
        MxRollupMemory {
            domains_max: domains_max.max(1),
            config: Weak::new(),
            by_mx: false,
            domains: HashMap::new(),
            next_sweep_s: 0,
        }
    }

    /// Forgets `domain`'s answer (its queue was freed: the next mail to it looks it up again).
    pub fn forget(&mut self, domain: &str) {
        self.domains.remove(domain);
    }

    /// Drops expired answers and gives the table's spare capacity back, every
    /// `MX_ROLLUP_SWEEP_EVERY_S` at most (the scan is O(remembered domains)).
    pub fn sweep(&mut self, now_s: u64) {
        if now_s < self.next_sweep_s {
            return;
        }
        self.next_sweep_s = now_s.saturating_add(MX_ROLLUP_SWEEP_EVERY_S);
        self.domains.retain(|_, r| r.expires_s > now_s);
        let len = self.domains.len();
        if self.domains.capacity() > 64 && self.domains.capacity() > 4 * len {
            self.domains.shrink_to(2 * len);
        }
    }

    /// Forgets everything when `config` is not the one the answers were judged under.
    fn follow(&mut self, config: &Arc<Config>) {
        if !std::ptr::eq(self.config.as_ptr(), Arc::as_ptr(config)) {
            self.domains.clear();
            self.config = Arc::downgrade(config);
            self.by_mx =
                config.shaping.mx_rollup && config.rollups.iter().any(|r| !r.mx.is_empty());
        }
    }

    /// The queue domain for `domain` (lower-case), when it is known without a lookup.
    pub fn queue_domain(&mut self, config: &Arc<Config>, domain: &str, now_s: u64) -> QueueDomain {
        self.follow(config);
        let listed = rollup_of(config, domain);
        let by_mx = self.by_mx
            && listed == domain
            && !config.routes.contains_key(domain)
            && !config
                .rollups
                .iter()
                .any(|r| r.name.eq_ignore_ascii_case(domain));
        if !by_mx {
            return QueueDomain::Known(listed.to_ascii_lowercase());
        }
        match self.domains.get(domain) {
            Some(r) if r.expires_s > now_s => {
                QueueDomain::Known(r.group.as_deref().unwrap_or(domain).to_ascii_lowercase())
            }
            _ => QueueDomain::NeedsLookup,
        }
    }

    /// Remembers `domain`'s group (none = its own queue) for `remember_s` seconds.
    pub fn remember(
        &mut self,
        config: &Arc<Config>,
        domain: &str,
        group: Option<&str>,
        now_s: u64,
        remember_s: u64,
    ) {
        self.follow(config);
        if self.domains.len() >= self.domains_max && !self.domains.contains_key(domain) {
            self.domains.retain(|_, r| r.expires_s > now_s);
            if self.domains.len() >= self.domains_max {
                // An eighth at once, so a memory full of live answers is not scanned per insert.
                let victims: Vec<Box<str>> = self
                    .domains
                    .keys()
                    .take((self.domains_max / 8).max(1))
                    .cloned()
                    .collect();
                for victim in victims {
                    self.domains.remove(&victim);
                }
            }
        }
        self.domains.insert(
            Box::from(domain),
            Remembered {
                group: group.map(Box::from),
                expires_s: now_s.saturating_add(remember_s),
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.domains.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}

/// One core's MX rollup state: what it learned, and the lookups it is waiting for.
pub struct CoreMxRollup {
    memory: RefCell<MxRollupMemory>,
    /// Lookups in flight, by domain, with what waits for each: a burst of mail to a new domain (or
    /// a restart recovering much of it) asks DNS once, not once per message.
    lookups: RefCell<HashMap<String, Vec<Waiting>>>,
}

impl Default for CoreMxRollup {
    fn default() -> CoreMxRollup {
        CoreMxRollup {
            memory: RefCell::new(MxRollupMemory::new(MX_ROLLUP_MEMORY_DOMAINS_MAX)),
            lookups: RefCell::new(HashMap::new()),
        }
    }
}

impl CoreMxRollup {
    /// The queue domain for a recipient domain (lower-case), when known without a lookup.
    pub fn queue_domain(&self, config: &Arc<Config>, domain: &str, now_s: u64) -> QueueDomain {
        let answer = self.memory.borrow_mut().queue_domain(config, domain, now_s);
        if answer == QueueDomain::NeedsLookup
            && let Some(why) = lookup_refused(&self.lookups.borrow(), domain)
        {
            log::debug!("MX rollup: {domain} goes to its own queue: {why}");
            return QueueDomain::Known(domain.to_ascii_lowercase());
        }
        answer
    }

    /// Forgets what was learned about `domain` (its queue was freed).
    pub fn forget(&self, domain: &str) {
        self.memory.borrow_mut().forget(domain);
    }

    /// Drops expired answers now and then (see `MxRollupMemory::sweep`).
    pub fn sweep(&self, now_s: u64) {
        self.memory.borrow_mut().sweep(now_s);
    }
}

/// Why a recipient of `domain` may not wait for an MX lookup, given the lookups under way: too
/// many domains looked up at once, or too much mail waiting for this one.
fn lookup_refused(lookups: &HashMap<String, Vec<Waiting>>, domain: &str) -> Option<&'static str> {
    match lookups.get(domain) {
        Some(waiting) if waiting.len() >= MX_ROLLUP_WAITING_PER_LOOKUP_MAX => {
            Some("too much mail waiting for its lookup")
        }
        Some(_) => None,
        None if lookups.len() >= MX_ROLLUP_LOOKUPS_MAX => Some("too many lookups under way"),
        None => None,
    }
}

/// Recipients routed once their domain's MX answer is in.
struct Waiting {
    id: MessageId,
    /// The message's spool record: its envelope is read back when the answer comes.
    record: RecordLocation,
    vmta: Arc<str>,
    recipients: Vec<(u32, u32, u64)>,
}

/// Looks up `domain`'s MX in the background (once per domain at a time), remembers its group, then
/// routes `recipients` (index, attempts, not-before) of message `id` to the queues of `vmta`.
pub fn route_after_lookup(
    core: &Rc<Placement>,
    id: MessageId,
    record: RecordLocation,
    vmta: &Arc<str>,
    domain: String,
    recipients: Vec<(u32, u32, u64)>,
) {
    let waiting = Waiting {
        id,
        record,
        vmta: vmta.clone(),
        recipients,
    };
    let first = {
        let mut lookups = core.mx_rollup.lookups.borrow_mut();
        let queue = lookups.entry(domain.clone()).or_default();
        queue.push(waiting);
        queue.len() == 1
    };
    if first {
        glommio::spawn_local(look_up_and_route(core.clone(), domain)).detach();
    }
}

async fn look_up_and_route(core: Rc<Placement>, domain: String) {
    let resolver = core.resolver();
    let answer = resolver.mx(&domain).await;
    let config = core.config();
    let now_s = crate::clock::unix_s();
    let (group, remember_s) = match &answer {
        Ok(mx) => (group_of_answer(&config, mx), MX_ROLLUP_REMEMBER_S),
        Err(e) => {
            log::debug!("MX rollup: {domain} goes to its own queue: {e}");
            let remember_s = if e.is_temporary() {
                MX_ROLLUP_FAILURE_REMEMBER_S
            } else {
                MX_ROLLUP_REMEMBER_S
            };
            (None, remember_s)
        }
    };
    if let Some(group) = group {
        log::info!("MX rollup: {domain} joins {group} (by its MX hosts)");
    }
    let rollup = &core.mx_rollup;
    rollup
        .memory
        .borrow_mut()
        .remember(&config, &domain, group, now_s, remember_s);
    let waiting = rollup
        .lookups
        .borrow_mut()
        .remove(&domain)
        .unwrap_or_default();
    // The answer is remembered: placement now knows the queue without another lookup.
    for w in waiting {
        let stored = match core.bodies.message(w.id, w.record) {
            Ok(stored) => stored,
            Err(e) => {
                // Left in the spool: the next start routes it again.
                log::error!("message {} not routed after the MX lookup: {e}", w.id);
                continue;
            }
        };
        super::routing::hand_off_to(
            &core,
            w.id,
            w.record,
            &stored.envelope,
            w.vmta,
            w.recipients.into_iter(),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::MxRecord;

    const TEXT: &str = r#"
[[listener]]
address = "127.0.0.1:25"
[[rollup]]
name = "gmail.com"
domains = ["gmail.com", "googlemail.com"]
mx = ["*.google.com", "*.googlemail.com"]
[[rollup]]
name = "outlook.com"
mx = ["*.mail.protection.outlook.com"]
[[rollup]]
name = "listed.test"
domains = ["listed.test", "other.test"]
[routes]
"routed.test" = "127.0.0.1:2525"
"#;

    fn config() -> Arc<Config> {
        Arc::new(Config::parse(TEXT).unwrap())
    }

    fn answer(hosts: &[&str]) -> MxAnswer {
        MxAnswer {
            records: hosts
                .iter()
                .enumerate()
                .map(|(i, h)| MxRecord {
                    preference: i as u16 * 10,
                    exchange: h.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn host_patterns_match_exact_names_and_suffixes_at_a_dot() {
        assert!(mx_host_matches("*.google.com", "aspmx.l.google.com"));
        assert!(mx_host_matches("*.google.com", "ALT1.ASPMX.L.GOOGLE.COM."));
        assert!(!mx_host_matches("*.google.com", "google.com"));
        assert!(!mx_host_matches("*.google.com", "evilgoogle.com"));
        assert!(!mx_host_matches("*.google.com", "google.com.evil.test"));
        assert!(mx_host_matches("aspmx.l.google.com", "aspmx.l.google.com"));
        assert!(!mx_host_matches(
            "aspmx.l.google.com",
            "alt1.aspmx.l.google.com"
        ));
        assert!(!mx_host_matches("*.google.com", ""));
    }

    #[test]
    fn every_mx_host_must_match_one_group() {
        let c = config();
        let google = answer(&["aspmx.l.google.com", "alt1.aspmx.l.google.com"]);
        assert_eq!(group_of_answer(&c, &google), Some("gmail.com"));
        let m365 = answer(&["acme-test.mail.protection.outlook.com"]);
        assert_eq!(group_of_answer(&c, &m365), Some("outlook.com"));
        let mixed = answer(&["aspmx.l.google.com", "mx.acme.test"]);
        assert_eq!(group_of_answer(&c, &mixed), None, "mixed providers");
        assert_eq!(group_of_answer(&c, &answer(&[])), None, "no MX");
        assert_eq!(group_of_answer(&c, &answer(&[""])), None, "null MX");
    }

    #[test]
    fn listed_routed_and_group_domains_need_no_lookup() {
        let c = config();
        let mut m = MxRollupMemory::new(10);
        let known = |d: &str| QueueDomain::Known(d.to_string());
        assert_eq!(m.queue_domain(&c, "googlemail.com", 0), known("gmail.com"));
        assert_eq!(m.queue_domain(&c, "other.test", 0), known("listed.test"));
        assert_eq!(m.queue_domain(&c, "routed.test", 0), known("routed.test"));
        assert_eq!(m.queue_domain(&c, "outlook.com", 0), known("outlook.com"));
        assert_eq!(m.queue_domain(&c, "acme.test", 0), QueueDomain::NeedsLookup);
        let mut off = (*c).clone();
        off.shaping.mx_rollup = false;
        let off = Arc::new(off);
        assert_eq!(m.queue_domain(&off, "acme.test", 0), known("acme.test"));
        assert_eq!(
            m.queue_domain(&off, "googlemail.com", 0),
            known("googlemail.com")
        );
    }

    #[test]
    fn answers_are_remembered_until_they_expire() {
        let c = config();
        let mut m = MxRollupMemory::new(10);
        m.remember(&c, "acme.test", Some("gmail.com"), 100, 60);
        m.remember(&c, "solo.test", None, 100, 60);
        assert_eq!(
            m.queue_domain(&c, "acme.test", 159),
            QueueDomain::Known("gmail.com".into())
        );
        assert_eq!(
            m.queue_domain(&c, "solo.test", 159),
            QueueDomain::Known("solo.test".into())
        );
        assert_eq!(
            m.queue_domain(&c, "acme.test", 160),
            QueueDomain::NeedsLookup
        );
    }

    #[test]
    fn a_new_configuration_forgets_every_answer() {
        let c = config();
        let mut m = MxRollupMemory::new(10);
        m.remember(&c, "acme.test", Some("gmail.com"), 0, 60);
        let reloaded = Arc::new((*c).clone());
        assert_eq!(
            m.queue_domain(&reloaded, "acme.test", 1),
            QueueDomain::NeedsLookup
        );
        assert!(m.is_empty());
    }

    #[test]
    fn expired_and_freed_answers_leave_and_the_table_shrinks() {
        let c = config();
        let mut m = MxRollupMemory::new(100_000);
        for n in 0..10_000 {
            m.remember(&c, &format!("{n}.test"), None, 0, 10);
        }
        m.remember(&c, "kept.test", Some("gmail.com"), 0, 1_000);
        m.remember(&c, "freed.test", None, 0, 1_000);
        let full = m.domains.capacity();
        m.forget("freed.test");
        m.sweep(5);
        assert_eq!(m.len(), 10_001, "nothing expired yet");
        m.sweep(20);
        assert_eq!(
            m.len(),
            10_001,
            "at most one sweep per MX_ROLLUP_SWEEP_EVERY_S"
        );
        m.sweep(5 + MX_ROLLUP_SWEEP_EVERY_S);
        assert_eq!(m.len(), 1);
        assert!(m.domains.capacity() < full / 8, "{}", m.domains.capacity());
        assert_eq!(
            m.queue_domain(&c, "kept.test", 70),
            QueueDomain::Known("gmail.com".into())
        );
        assert_eq!(
            m.queue_domain(&c, "freed.test", 70),
            QueueDomain::NeedsLookup
        );
    }

    #[test]
    fn lookups_and_the_mail_waiting_for_each_are_bounded() {
        let waiting = |n: usize| {
            (0..n)
                .map(|i| Waiting {
                    id: MessageId {
                        core: 0,
                        seq: i as u64,
                    },
                    record: RecordLocation {
                        core: 0,
                        segment: 0,
                        offset: 0,
                    },
                    vmta: Arc::from("v"),
                    recipients: Vec::new(),
                })
                .collect::<Vec<_>>()
        };
        let mut lookups = HashMap::new();
        lookups.insert(
            "busy.test".to_string(),
            waiting(MX_ROLLUP_WAITING_PER_LOOKUP_MAX),
        );
        lookups.insert("quiet.test".to_string(), waiting(1));
        assert!(lookup_refused(&lookups, "busy.test").is_some());
        assert_eq!(lookup_refused(&lookups, "quiet.test"), None);
        assert_eq!(lookup_refused(&lookups, "new.test"), None);
        for n in 0..MX_ROLLUP_LOOKUPS_MAX {
            lookups.insert(format!("{n}.test"), Vec::new());
        }
        assert!(lookup_refused(&lookups, "new.test").is_some());
        assert_eq!(
            lookup_refused(&lookups, "quiet.test"),
            None,
            "a lookup under way still takes mail"
        );
    }

    #[test]
    fn memory_is_bounded_expired_entries_go_first() {
        let c = config();
        let mut m = MxRollupMemory::new(3);
        m.remember(&c, "old.test", None, 0, 10);
        m.remember(&c, "a.test", None, 0, 1_000);
        m.remember(&c, "b.test", None, 0, 1_000);
        m.remember(&c, "c.test", Some("gmail.com"), 20, 1_000);
        assert_eq!(m.len(), 3);
        assert_eq!(m.queue_domain(&c, "old.test", 20), QueueDomain::NeedsLookup);
        for d in ["a.test", "b.test"] {
            assert_eq!(m.queue_domain(&c, d, 20), QueueDomain::Known(d.into()));
        }
        m.remember(&c, "d.test", None, 20, 1_000);
        assert_eq!(m.len(), 3, "full of live answers: one gives way");
        let mut big = MxRollupMemory::new(16);
        for n in 0..40 {
            big.remember(&c, &format!("{n}.test"), None, 0, 1_000);
            assert!(big.len() <= 16);
        }
        assert!(big.len() >= 14, "an eighth at a time: {}", big.len());
        assert_eq!(
            m.queue_domain(&c, "d.test", 21),
            QueueDomain::Known("d.test".into()),
            "the new answer is always kept"
        );
    }
}
