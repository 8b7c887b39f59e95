//! Outcomes and queued recipients by VMTA, by customer and by destination (docs/metrics.md).
//!
//! A core counts into its own `CoreLabels` (plain maps: no atomic, no lock per message). Once a
//! second it publishes into the node's `LabelBoard` under its lock: the outcomes since the last
//! publish are added to the node's totals, and its queued figures replace what it published
//! before. A scrape reads the board. Label values are bounded: `vmta` by the configured VMTAs,
//! `customer` by the configured customers, and `destination` by the top N destinations
//! (`top_destinations`); the rest count as `other`.
//!
//! One family per label, never a product of labels: the series are (VMTAs + customers + N + a few)
//! x (4 outcomes + 1 gauge), where a family labelled by all three would be their product.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write;
use std::rc::Rc;
use std::sync::{Arc, Mutex, TryLockError};

use super::top_destinations::{Sketch, TopSet, choose};

/// The label value of every VMTA, customer or destination not named.
pub const OTHER: &str = "other";
/// The `customer` label value of mail with no customer.
pub const NONE: &str = "none";

/// What happened to a recipient's delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// A temporary failure, tried again later (each deferral counts).
    Deferred,
    Bounced,
    /// Given up at `max_queue_age`.
    Expired,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Delivered,
        Outcome::Deferred,
        Outcome::Bounced,
        Outcome::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
            Outcome::Expired => "expired",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counts per outcome, in `Outcome::ALL` order.
type Counts = [u64; 4];

fn add_counts(into: &mut Counts, from: &Counts) {
    for (a, b) in into.iter_mut().zip(from) {
        *a = a.saturating_add(*b);
    }
}

/// Publishes in a row a core may skip because the board is held, before it waits for it.
const PUBLISH_SKIPS_MAX: u32 = 3;

/// A map of this many entries or fewer is never shrunk.
const SHRINK_MIN_CAPACITY: usize = 64;

fn shrink<K: Eq + std::hash::Hash, V>(map: &mut foldhash::HashMap<K, V>) {
    if map.capacity() > SHRINK_MIN_CAPACITY && map.capacity() > 4 * map.len() {
        map.shrink_to(2 * map.len());
    }
}

/// One core's labelled figures, owned by its delivery (never shared). Its maps, updated for every
/// outcome, hash with foldhash (randomly seeded) rather than SipHash.
#[derive(Debug)]
pub struct CoreLabels {
    /// Outcomes since the last publish, by VMTA and customer name as queued (resolved to label
    /// values at publish), and by destination label (a member of `top` when counted, or `other`).
    outcomes_vmta: foldhash::HashMap<Rc<str>, Counts>,
    outcomes_customer: foldhash::HashMap<Rc<str>, Counts>,
    outcomes_destination: foldhash::HashMap<Arc<str>, Counts>,
    /// Recipients queued (or in flight) on this core now, by VMTA and by queue domain: an entry
    /// lives while the core has recipients for it, like the queues themselves.
    queued_vmta: foldhash::HashMap<Rc<str>, u64>,
    queued_domain: foldhash::HashMap<Rc<str>, u64>,
    queued_total: u64,
    sketch: Sketch,
    /// The node's top destinations as of this core's last publish.
    top: Arc<TopSet>,
    other: Arc<str>,
    no_customer: Rc<str>,
    /// Publishes skipped in a row because the board was held.
    publish_skips: u32,
}

impl Default for CoreLabels {
    fn default() -> Self {
        CoreLabels {
            outcomes_vmta: foldhash::HashMap::default(),
            outcomes_customer: foldhash::HashMap::default(),
            outcomes_destination: foldhash::HashMap::default(),
            queued_vmta: foldhash::HashMap::default(),
            queued_domain: foldhash::HashMap::default(),
            queued_total: 0,
            sketch: Sketch::default(),
            top: Arc::new(TopSet::default()),
            other: Arc::from(OTHER),
            no_customer: Rc::from(""),
            publish_skips: 0,
        }
    }
}

impl CoreLabels {
    /// `count` recipients queued for (`vmta`, `domain`); they count toward the domain's volume.
    pub fn queued(&mut self, vmta: &Rc<str>, domain: &Rc<str>, count: u32) {
        let count = u64::from(count);
        if count == 0 {
            return;
        }
        *self.queued_vmta.entry(vmta.clone()).or_insert(0) += count;
        *self.queued_domain.entry(domain.clone()).or_insert(0) += count;
        self.queued_total += count;
        self.sketch.add(domain, count);
    }

    /// One recipient of (`vmta`, `domain`) finished here (an outcome, or handed elsewhere).
    pub fn released(&mut self, vmta: &str, domain: &str) {
        fn one_less(map: &mut foldhash::HashMap<Rc<str>, u64>, key: &str) {
            if let Some(n) = map.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(key);
                    shrink(map);
                }
            }
        }
        one_less(&mut self.queued_vmta, vmta);
        one_less(&mut self.queued_domain, domain);
        self.queued_total = self.queued_total.saturating_sub(1);
    }

    /// One outcome of a recipient of `customer` (`None`: no customer) queued for (`vmta`,
    /// `domain`).
    pub fn outcome(
        &mut self,
        vmta: &Rc<str>,
        customer: Option<&Rc<str>>,
        domain: &str,
        outcome: Outcome,
    ) {
        let i = outcome.index();
        match self.outcomes_vmta.get_mut(&**vmta) {
            Some(c) => c[i] += 1,
            None => {
                let mut c = Counts::default();
                c[i] = 1;
                self.outcomes_vmta.insert(vmta.clone(), c);
            }
        }
        let customer = customer.unwrap_or(&self.no_customer);
        match self.outcomes_customer.get_mut(&**customer) {
            Some(c) => c[i] += 1,
            None => {
                let mut c = Counts::default();
                c[i] = 1;
                self.outcomes_customer.insert(customer.clone(), c);
            }
        }
        let label = self.top.member(domain).unwrap_or(&self.other);
        match self.outcomes_destination.get_mut(label) {
            Some(c) => c[i] += 1,
            None => {
                let mut c = Counts::default();
                c[i] = 1;
                self.outcomes_destination.insert(label.clone(), c);
            }
        }
    }
}

/// The names the running configuration gives label values to.
#[derive(Debug, Default)]
pub struct LabelNames {
    pub vmtas: HashSet<String>,
    pub customers: HashSet<String>,
}

/// One label's series: outcome totals by label value, and each core's queued recipients.
#[derive(Debug)]
struct Family {
    outcomes: BTreeMap<String, Counts>,
    queued: Vec<HashMap<String, u64>>,
}

impl Family {
    fn new(cores: usize) -> Family {
        Family {
            outcomes: BTreeMap::new(),
            queued: vec![HashMap::new(); cores],
        }
    }

    fn add(&mut self, label: &str, counts: &Counts) {
        match self.outcomes.get_mut(label) {
            Some(c) => add_counts(c, counts),
            None => {
                self.outcomes.insert(label.to_string(), *counts);
            }
        }
    }

    fn set_queued(&mut self, core: usize, queued: HashMap<String, u64>) {
        if let Some(slot) = self.queued.get_mut(core) {
            *slot = queued;
        }
    }

    fn render(&self, out: &mut String, family: &str, label: &str, always: &[&str]) {
        let values: BTreeSet<&str> = self
            .outcomes
            .keys()
            .map(String::as_str)
            .chain(
                self.queued
                    .iter()
                    .flat_map(|q| q.keys().map(String::as_str)),
            )
            .chain(always.iter().copied())
            .collect();
        let name = format!("volley_{family}_outcomes_total");
        let _ = writeln!(
            out,
            "# HELP {name} Recipient outcomes by {label} (deferred counts each deferral); updated every second\n# TYPE {name} counter"
        );
        for value in &values {
            let counts = self.outcomes.get(*value).copied().unwrap_or_default();
            let value = escape(value);
            for outcome in Outcome::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{{label}=\"{value}\",outcome=\"{}\"}} {}",
                    outcome.as_str(),
                    counts[outcome.index()]
                );
            }
        }
        let name = format!("volley_{family}_queued_recipients");
        let _ = writeln!(
            out,
            "# HELP {name} Recipients queued by {label}; updated every second\n# TYPE {name} gauge"
        );
        for value in &values {
            let queued: u64 = self.queued.iter().filter_map(|q| q.get(*value)).sum();
            let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {queued}", escape(value));
        }
    }
}

/// A label value in the text format: backslash, double quote and line feed escaped.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Debug)]
struct Board {
    vmta: Family,
    customer: Family,
    destination: Family,
    /// The configuration generation `names` was taken from.
    generation: Option<u64>,
    names: LabelNames,
    /// Each core's sketch as last published.
    sketches: Vec<Vec<(Arc<str>, u64)>>,
    top: Arc<TopSet>,
    /// When `top` was chosen (seconds since the epoch).
    chosen_s: u64,
}

impl Board {
    fn vmta_label<'a>(&self, name: &'a str) -> &'a str {
        if self.names.vmtas.contains(name) {
            name
        } else {
            OTHER
        }
    }

    fn customer_label<'a>(&self, name: &'a str) -> &'a str {
        if name.is_empty() {
            NONE
        } else if self.names.customers.contains(name) {
            name
        } else {
            OTHER
        }
    }

    /// Names the `top_destinations` of most volume over the cores' sketches; a destination no
    /// longer named leaves with its series (its mail counts as other from now on).
    fn choose_top(&mut self, now_s: u64, top_destinations: usize) {
        self.chosen_s = now_s;
        self.top = Arc::new(choose(&self.sketches, &self.top, top_destinations, OTHER));
        let top = self.top.clone();
        self.destination
            .outcomes
            .retain(|d, _| d == OTHER || top.contains(d));
    }

    /// Adds a core's outcomes since its last publish to the totals.
    fn add_outcomes(&mut self, labels: &mut CoreLabels) {
        for (name, counts) in labels.outcomes_vmta.drain() {
            let label = self.vmta_label(&name);
            self.vmta.add(label, &counts);
        }
        for (name, counts) in labels.outcomes_customer.drain() {
            let label = self.customer_label(&name);
            self.customer.add(label, &counts);
        }
        for (name, counts) in labels.outcomes_destination.drain() {
            // Counted under a destination named then, but no longer.
            let label = if self.top.contains(&name) {
                &*name
            } else {
                OTHER
            };
            self.destination.add(label, &counts);
        }
        shrink(&mut labels.outcomes_vmta);
        shrink(&mut labels.outcomes_customer);
        shrink(&mut labels.outcomes_destination);
    }

    /// Replaces what core `core` published of its queued recipients.
    fn set_queued<'a>(
        &mut self,
        core: usize,
        labels: &CoreLabels,
        customers: impl Iterator<Item = (&'a str, u64)>,
    ) {
        let mut queued: HashMap<String, u64> = HashMap::new();
        for (name, n) in &labels.queued_vmta {
            *queued.entry(self.vmta_label(name).to_string()).or_insert(0) += n;
        }
        self.vmta.set_queued(core, queued);
        let mut queued: HashMap<String, u64> = HashMap::new();
        for (name, n) in customers {
            *queued
                .entry(self.customer_label(name).to_string())
                .or_insert(0) += n;
        }
        self.customer.set_queued(core, queued);
        let mut queued: HashMap<String, u64> = HashMap::new();
        let mut named = 0;
        for member in self.top.iter() {
            if let Some(&n) = labels.queued_domain.get(&**member) {
                named += n;
                queued.insert(member.to_string(), n);
            }
        }
        let rest = labels.queued_total.saturating_sub(named);
        if rest > 0 {
            queued.insert(OTHER.to_string(), rest);
        }
        self.destination.set_queued(core, queued);
    }

    /// Label values of VMTAs and customers no longer configured leave with their series.
    fn take_names(&mut self, generation: u64, names: LabelNames) {
        self.generation = Some(generation);
        self.names = names;
        let vmtas = &self.names.vmtas;
        self.vmta
            .outcomes
            .retain(|v, _| v == OTHER || vmtas.contains(v));
        let customers = &self.names.customers;
        self.customer
            .outcomes
            .retain(|c, _| c == OTHER || c == NONE || customers.contains(c));
    }
}

/// What the cores publish once a second and `GET /metrics` reads. Locked once per core and
/// second and once per scrape, never per message.
#[derive(Debug)]
pub struct LabelBoard {
    board: Mutex<Board>,
}

impl LabelBoard {
    pub fn new(cores: usize) -> LabelBoard {
        LabelBoard {
            board: Mutex::new(Board {
                vmta: Family::new(cores),
                customer: Family::new(cores),
                destination: Family::new(cores),
                generation: None,
                names: LabelNames::default(),
                sketches: vec![Vec::new(); cores],
                top: Arc::new(TopSet::default()),
                chosen_s: 0,
            }),
        }
    }

    /// Core `core`'s once-a-second publish: its outcomes since the last one, its queued figures
    /// (`customers`: recipients queued by customer name, "" for none) and its destination
    /// volumes; the node's top `top_destinations` are chosen again when a second has passed.
    /// `names` is asked only when `generation` is newer than the one the board knows.
    ///
    /// A core does not wait for a scrape (or another core) holding the board: it keeps its
    /// figures and publishes them the next second, waiting only after `PUBLISH_SKIPS_MAX` misses.
    pub fn publish<'a>(
        &self,
        core: usize,
        labels: &mut CoreLabels,
        customers: impl Iterator<Item = (&'a str, u64)>,
        publish: Publish<impl FnOnce() -> LabelNames>,
    ) {
        labels.sketch.set_top_destinations(publish.top_destinations);
        labels.sketch.halve_when_due(publish.now_s);
        let mut board = match self.board.try_lock() {
            Ok(board) => board,
            Err(TryLockError::WouldBlock) if labels.publish_skips < PUBLISH_SKIPS_MAX => {
                labels.publish_skips += 1;
                return;
            }
            Err(TryLockError::WouldBlock) => match self.board.lock() {
                Ok(board) => board,
                Err(_) => return,
            },
            Err(TryLockError::Poisoned(_)) => return,
        };
        labels.publish_skips = 0;
        if board.generation.is_none_or(|g| publish.generation > g) {
            board.take_names(publish.generation, (publish.names)());
        }
        if let Some(sketch) = board.sketches.get_mut(core) {
            sketch.clear();
            sketch.extend_from_slice(labels.sketch.entries());
        }
        if publish.now_s != board.chosen_s {
            board.choose_top(publish.now_s, publish.top_destinations);
        }
        labels.top = board.top.clone();
        board.add_outcomes(labels);
        board.set_queued(core, labels, customers);
    }

    /// The labelled families in the text format.
    pub fn render(&self, out: &mut String) {
        let Ok(board) = self.board.lock() else {
            return;
        };
        board.vmta.render(out, "vmta", "vmta", &[]);
        board.customer.render(out, "customer", "customer", &[]);
        // The destinations named now show even before their first outcome.
        let members: Vec<&str> = board.top.iter().map(|m| &**m).collect();
        board
            .destination
            .render(out, "destination", "destination", &members);
    }
}

/// What a core publishes with, besides its figures.
pub struct Publish<F> {
    pub now_s: u64,
    /// `[metrics] top_destinations` of the running configuration.
    pub top_destinations: usize,
    pub generation: u64,
    /// The configured names, asked for when `generation` is new to the board.
    pub names: F,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(vmtas: &[&str], customers: &[&str]) -> LabelNames {
        LabelNames {
            vmtas: vmtas.iter().map(|s| s.to_string()).collect(),
            customers: customers.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn publish(
        board: &LabelBoard,
        core: usize,
        labels: &mut CoreLabels,
        customers: &[(&str, u64)],
        now_s: u64,
        generation: u64,
        label_names: LabelNames,
    ) {
        board.publish(
            core,
            labels,
            customers.iter().copied(),
            Publish {
                now_s,
                top_destinations: 2,
                generation,
                names: || label_names,
            },
        );
    }

    /// The value of one series of a scrape, if it is there.
    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn rc(s: &str) -> Rc<str> {
        Rc::from(s)
    }

    #[test]
    fn outcomes_are_counted_per_label_summed_over_cores_and_bounded() {
        let board = LabelBoard::new(2);
        let (mut a, mut b) = (CoreLabels::default(), CoreLabels::default());
        let (v1, gone) = (rc("v1"), rc("v-gone"));
        let (acme, stranger) = (rc("acme"), rc("stranger"));
        let (big, mid, small) = (rc("big.test"), rc("mid.test"), rc("small.test"));
        // Volume first: big and mid are the top 2, small is not.
        a.queued(&v1, &big, 10);
        b.queued(&v1, &mid, 5);
        b.queued(&gone, &small, 1);
        publish(
            &board,
            0,
            &mut a,
            &[("acme", 10)],
            100,
            1,
            names(&["v1"], &["acme"]),
        );
        publish(&board, 1, &mut b, &[("", 6)], 100, 1, names(&[], &[]));
        // Core 1 published in the same second: the set is chosen again at the next one.
        publish(&board, 0, &mut a, &[("acme", 10)], 101, 1, names(&[], &[]));
        publish(&board, 1, &mut b, &[("", 6)], 101, 1, names(&[], &[]));
        let text = {
            let mut out = String::new();
            board.render(&mut out);
            out
        };
        // Named before any outcome.
        assert_eq!(
            value(
                &text,
                "volley_destination_queued_recipients{destination=\"big.test\"}"
            ),
            Some(10),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "volley_destination_queued_recipients{destination=\"mid.test\"}"
            ),
            Some(5)
        );
        assert_eq!(
            value(
                &text,
                "volley_destination_queued_recipients{destination=\"other\"}"
            ),
            Some(1)
        );
        assert_eq!(
            value(&text, "volley_vmta_queued_recipients{vmta=\"v1\"}"),
            Some(15)
        );
        assert_eq!(
            value(&text, "volley_vmta_queued_recipients{vmta=\"other\"}"),
            Some(1)
        );
        assert_eq!(
            value(
                &text,
                "volley_customer_queued_recipients{customer=\"none\"}"
            ),
            Some(6)
        );

        a.outcome(&v1, Some(&acme), &big, Outcome::Delivered);
        a.outcome(&v1, Some(&acme), &big, Outcome::Delivered);
        a.outcome(&v1, Some(&stranger), &big, Outcome::Deferred);
        b.outcome(&v1, None, &mid, Outcome::Bounced);
        b.outcome(&gone, None, &small, Outcome::Expired);
        a.released(&v1, &big);
        a.released(&v1, &big);
        publish(&board, 0, &mut a, &[("acme", 8)], 102, 1, names(&[], &[]));
        publish(&board, 1, &mut b, &[("", 6)], 102, 1, names(&[], &[]));
        let mut text = String::new();
        board.render(&mut text);
        let outcome = |family: &str, label: &str, v: &str, o: &str| {
            value(
                &text,
                &format!("volley_{family}_outcomes_total{{{label}=\"{v}\",outcome=\"{o}\"}}"),
            )
        };
        assert_eq!(
            outcome("vmta", "vmta", "v1", "delivered"),
            Some(2),
            "{text}"
        );
        assert_eq!(outcome("vmta", "vmta", "v1", "deferred"), Some(1));
        assert_eq!(outcome("vmta", "vmta", "v1", "bounced"), Some(1));
        assert_eq!(outcome("vmta", "vmta", "other", "expired"), Some(1));
        assert_eq!(
            outcome("customer", "customer", "acme", "delivered"),
            Some(2)
        );
        assert_eq!(
            outcome("customer", "customer", "other", "deferred"),
            Some(1)
        );
        assert_eq!(outcome("customer", "customer", "none", "bounced"), Some(1));
        assert_eq!(outcome("customer", "customer", "none", "expired"), Some(1));
        assert_eq!(
            outcome("destination", "destination", "big.test", "delivered"),
            Some(2)
        );
        assert_eq!(
            outcome("destination", "destination", "mid.test", "bounced"),
            Some(1)
        );
        assert_eq!(
            outcome("destination", "destination", "other", "expired"),
            Some(1)
        );
        // Every label value has all four outcomes.
        assert_eq!(
            outcome("destination", "destination", "big.test", "expired"),
            Some(0)
        );
        assert_eq!(
            value(&text, "volley_vmta_queued_recipients{vmta=\"v1\"}"),
            Some(13)
        );
        assert!(!text.contains("small.test"), "{text}");
        assert!(
            !text.contains("stranger") && !text.contains("v-gone"),
            "{text}"
        );
        // Outcomes are added once: a publish with nothing new changes nothing.
        publish(&board, 0, &mut a, &[("acme", 8)], 103, 1, names(&[], &[]));
        let mut again = String::new();
        board.render(&mut again);
        assert_eq!(
            value(
                &again,
                "volley_vmta_outcomes_total{vmta=\"v1\",outcome=\"delivered\"}"
            ),
            Some(2)
        );
    }

    #[test]
    fn a_reload_renames_removed_names_other_and_drops_their_series() {
        let board = LabelBoard::new(1);
        let mut core = CoreLabels::default();
        let (v1, v2, d) = (rc("v1"), rc("v2"), rc("d.test"));
        let (acme, beta) = (rc("acme"), rc("beta"));
        core.outcome(&v2, Some(&beta), &d, Outcome::Delivered);
        core.outcome(&v1, Some(&acme), &d, Outcome::Delivered);
        publish(
            &board,
            0,
            &mut core,
            &[],
            10,
            1,
            names(&["v1", "v2"], &["acme", "beta"]),
        );
        let mut text = String::new();
        board.render(&mut text);
        assert!(text.contains("vmta=\"v2\""), "{text}");
        assert!(text.contains("customer=\"beta\""), "{text}");
        // Generation 2 has neither v2 nor beta: their series go, later mail counts as other.
        core.outcome(&v2, Some(&beta), &d, Outcome::Deferred);
        publish(&board, 0, &mut core, &[], 11, 2, names(&["v1"], &["acme"]));
        // An older generation (a core that has not seen the reload yet) changes no names.
        publish(&board, 0, &mut core, &[], 12, 1, names(&["v2"], &["beta"]));
        let mut text = String::new();
        board.render(&mut text);
        assert!(
            !text.contains("\"v2\"") && !text.contains("\"beta\""),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "volley_vmta_outcomes_total{vmta=\"other\",outcome=\"deferred\"}"
            ),
            Some(1)
        );
        assert_eq!(
            value(
                &text,
                "volley_customer_outcomes_total{customer=\"other\",outcome=\"deferred\"}"
            ),
            Some(1)
        );
        assert_eq!(
            value(
                &text,
                "volley_vmta_outcomes_total{vmta=\"v1\",outcome=\"delivered\"}"
            ),
            Some(1)
        );
    }

    #[test]
    fn a_destination_that_leaves_the_top_takes_its_series_and_idle_state_empties() {
        let board = LabelBoard::new(1);
        let mut core = CoreLabels::default();
        let v = rc("v");
        let d = |name: &str| rc(name);
        let (a, b, c) = (d("a.test"), d("b.test"), d("c.test"));
        core.queued(&v, &a, 4);
        core.queued(&v, &b, 5);
        publish(&board, 0, &mut core, &[], 1_000, 1, names(&["v"], &[]));
        core.outcome(&v, None, &a, Outcome::Delivered);
        core.released(&v, &a);
        publish(&board, 0, &mut core, &[], 1_001, 1, names(&[], &[]));
        let mut text = String::new();
        board.render(&mut text);
        assert!(text.contains("destination=\"a.test\""), "{text}");
        // c.test outgrows a.test by far: a.test leaves the top 2 and its series with it.
        core.queued(&v, &c, 100);
        publish(&board, 0, &mut core, &[], 1_002, 1, names(&[], &[]));
        let mut text = String::new();
        board.render(&mut text);
        assert!(!text.contains("a.test"), "{text}");
        assert!(text.contains("destination=\"c.test\""), "{text}");
        // a.test's queued recipients now count as other.
        assert_eq!(
            value(
                &text,
                "volley_destination_queued_recipients{destination=\"other\"}"
            ),
            Some(3)
        );
        // All delivered, then idle: the queued maps and, after the halvings, the sketch empty.
        for _ in 0..3 {
            core.released(&v, &a);
        }
        for _ in 0..5 {
            core.released(&v, &b);
        }
        for _ in 0..100 {
            core.released(&v, &c);
        }
        assert!(core.queued_domain.is_empty() && core.queued_vmta.is_empty());
        let mut now = 1_002;
        for _ in 0..10 {
            now += super::super::top_destinations::VOLUME_HALF_LIFE_S;
            publish(&board, 0, &mut core, &[], now, 1, names(&[], &[]));
        }
        assert!(core.sketch.entries().is_empty());
        assert!(core.top.is_empty());
        let mut text = String::new();
        board.render(&mut text);
        assert!(!text.contains("c.test"), "{text}");
    }

    #[test]
    fn a_core_does_not_wait_for_a_held_board_and_publishes_later() {
        let board = LabelBoard::new(1);
        let mut core = CoreLabels::default();
        core.outcome(&rc("v1"), None, "d.test", Outcome::Delivered);
        {
            let _scrape = board.board.lock().unwrap();
            for second in 0..PUBLISH_SKIPS_MAX {
                // Returns at once: the board is held.
                publish(
                    &board,
                    0,
                    &mut core,
                    &[],
                    u64::from(second),
                    1,
                    names(&["v1"], &[]),
                );
            }
            assert_eq!(core.publish_skips, PUBLISH_SKIPS_MAX);
        }
        let mut text = String::new();
        board.render(&mut text);
        assert!(
            !text.contains("vmta=\"v1\""),
            "nothing published yet: {text}"
        );
        publish(&board, 0, &mut core, &[], 9, 1, names(&["v1"], &[]));
        assert_eq!(core.publish_skips, 0);
        let mut text = String::new();
        board.render(&mut text);
        assert_eq!(
            value(
                &text,
                "volley_vmta_outcomes_total{vmta=\"v1\",outcome=\"delivered\"}"
            ),
            Some(1),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let board = LabelBoard::new(1);
        let mut core = CoreLabels::default();
        core.outcome(&rc("v\"1"), None, "d", Outcome::Delivered);
        publish(&board, 0, &mut core, &[], 1, 1, names(&["v\"1"], &[]));
        let mut text = String::new();
        board.render(&mut text);
        assert!(
            text.contains("volley_vmta_outcomes_total{vmta=\"v\\\"1\",outcome=\"delivered\"} 1"),
            "{text}"
        );
    }
}
