//! Counters for `GET /metrics`. Each core writes only its own cache-padded block with relaxed
//! atomics (no sharing of lines between cores on the hot path); the API sums the blocks when scraped.
//! The series labelled by VMTA, customer and destination are counted per core without atomics and
//! published once a second (`labelled`).

pub mod labelled;
pub mod top_destinations;

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crossbeam::utils::CachePadded;

/// Upper bounds of the latency histogram buckets, in microseconds.
const LATENCY_BOUNDS_US: [u64; 12] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

#[derive(Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Latency {
    pub fn record_us(&self, us: u64) {
        if let Some(i) = LATENCY_BOUNDS_US.iter().position(|&b| us <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// One core's counters.
#[derive(Default)]
pub struct CoreCounters {
    pub connections_accepted: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Connections on `proxy_protocol` listeners closed before the greeting: an untrusted peer,
    /// or a PROXY header malformed, missing or late.
    pub proxy_rejected: AtomicU64,
    pub messages_received: AtomicU64,
    pub recipients_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub messages_rejected: AtomicU64,
    pub delivered: AtomicU64,
    pub deferred: AtomicU64,
    pub bounced: AtomicU64,
    pub expired: AtomicU64,
    pub spool_commits: AtomicU64,
    /// Bytes of this core's spool segment files, and its share of `max_spool_bytes` (set each tick).
    pub spool_bytes: AtomicI64,
    pub spool_max_bytes: AtomicI64,
    /// Recipients waiting in this core's queues (ready or deferred).
    pub queued_recipients: AtomicI64,
    pub outbound_connections: AtomicI64,
    /// Adaptive backoff changes: entered, deepened, left, and rule suspensions.
    pub backoff_transitions: AtomicU64,
    /// Queues of this core in adaptive backoff now.
    pub queues_in_backoff: AtomicI64,
    /// Delivery queues that exist on this core now (set once a second).
    pub queues: AtomicI64,
    /// Seconds the oldest ready recipient of this core has waited with a connection slot free
    /// (set once a second; the scrape shows the highest of all cores).
    pub oldest_ready_seconds: AtomicI64,
    /// Messages refused by a customer's sending limit (MAIL or end of data).
    pub sending_limit_refusals: AtomicU64,
    /// VMTAs taken out of their pools because they were refused everywhere.
    pub vmtas_refused_out: AtomicU64,
    /// Customers paused by the bounce-rate guard.
    pub bounce_guard_pauses: AtomicU64,
    /// Messages `[spam_filter]` asked rspamd about, whatever the answer.
    pub spam_checks: AtomicU64,
    /// ... refused (rspamd's "reject" or "soft reject").
    pub spam_refused: AtomicU64,
    /// ... taken with the X-Spam headers ("add header", "rewrite subject").
    pub spam_flagged: AtomicU64,
    /// ... with no answer from rspamd (then `on_error` decides).
    pub spam_check_failures: AtomicU64,
    /// Messages over `max_scan_bytes`, taken unchecked.
    pub spam_checks_skipped: AtomicU64,
    /// Messages given a DKIM-Signature at reception.
    pub dkim_signed: AtomicU64,
    /// Messages that had a `[[dkim]]` entry but could not be signed (sent unsigned).
    pub dkim_sign_failures: AtomicU64,
    /// Recipients handed over to another node by a drain (the target answered 250).
    pub xfer_out: AtomicU64,
    /// Recipients handed over to this node by a peer (`X-Volley-Xfer` from `peer_networks`).
    pub xfer_in: AtomicU64,
    /// Recipients handed over to this node that it had received before (an interrupted drain).
    pub xfer_duplicates: AtomicU64,
    /// Messages refused for an `X-Volley-Xfer` header from outside `peer_networks`, or a bad one.
    pub xfer_refused: AtomicU64,
    /// MTA-STS policies fetched, and fetches that failed (no policy taken).
    pub mta_sts_fetches: AtomicU64,
    pub mta_sts_fetch_failures: AtomicU64,
    /// Outbound connections by transport security policy and result (`TlsOutcomes`).
    pub tls_policy: crate::metrics::TlsOutcomes,
    /// End of DATA to the 250, spool commit included.
    pub accept_latency: Latency,
    /// Reception to final outcome, per recipient.
    pub delivery_latency: Latency,
}

/// A counter's name, help text and field.
/// The transport security policy an outbound connection was made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicyLabel {
    /// Validated TLSA records (RFC 7672).
    Dane,
    /// An MTA-STS policy in mode `enforce` (or required by `tls = "mta-sts"`).
    MtaSts,
    /// An MTA-STS policy in mode `testing`: failures are counted, mail goes anyway.
    MtaStsTesting,
    /// The domain's `tls = "required"`.
    Required,
    /// None of them: opportunistic STARTTLS (or `tls = "off"`).
    None,
}

/// How it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsResult {
    /// TLS with the certificate checked as the policy asks.
    Verified,
    /// TLS without a checked certificate (opportunistic, or a failure `testing` lets through).
    Encrypted,
    /// No TLS (not offered, or `tls = "off"`).
    Plaintext,
    /// The policy refused the host (no TLS, a bad certificate, an MX outside an MTA-STS policy, a
    /// failed TLSA lookup): nothing sent to it.
    Failed,
}

pub const TLS_POLICY_LABELS: [(TlsPolicyLabel, &str); 5] = [
    (TlsPolicyLabel::Dane, "dane"),
    (TlsPolicyLabel::MtaSts, "mta_sts"),
    (TlsPolicyLabel::MtaStsTesting, "mta_sts_testing"),
    (TlsPolicyLabel::Required, "required"),
    (TlsPolicyLabel::None, "none"),
];
pub const TLS_RESULT_LABELS: [(TlsResult, &str); 4] = [
    (TlsResult::Verified, "verified"),
    (TlsResult::Encrypted, "encrypted"),
    (TlsResult::Plaintext, "plaintext"),
    (TlsResult::Failed, "failed"),
];

/// `volley_tls_policy_connections_total{policy, result}`: 5 x 4 series, all always exported.
#[derive(Debug, Default)]
pub struct TlsOutcomes([[AtomicU64; 4]; 5]);

impl TlsOutcomes {
    pub fn count(&self, policy: TlsPolicyLabel, result: TlsResult) {
        let p = TLS_POLICY_LABELS.iter().position(|(l, _)| *l == policy);
        let r = TLS_RESULT_LABELS.iter().position(|(l, _)| *l == result);
        if let Some(cell) = p
            .zip(r)
            .and_then(|(p, r)| self.0.get(p).and_then(|row| row.get(r)))
        {
            cell.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn get(&self, p: usize, r: usize) -> u64 {
        self.0
            .get(p)
            .and_then(|row| row.get(r))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

type CounterField = (&'static str, &'static str, fn(&CoreCounters) -> &AtomicU64);
/// A gauge's name, help text and field.
type GaugeField = (&'static str, &'static str, fn(&CoreCounters) -> &AtomicI64);

pub struct Metrics {
    pub cores: Box<[CachePadded<CoreCounters>]>,
    /// Outcomes and queued recipients by VMTA, customer and destination.
    pub labels: labelled::LabelBoard,
}

impl Metrics {
    pub fn new(cores: usize) -> Metrics {
        Metrics {
            cores: (0..cores)
                .map(|_| CachePadded::new(CoreCounters::default()))
                .collect(),
            labels: labelled::LabelBoard::new(cores),
        }
    }

    /// This core's block; core indexes beyond the table share the last block.
    pub fn core(&self, index: usize) -> &CoreCounters {
        &self.cores[index.min(self.cores.len() - 1)]
    }

    /// A counter summed over the cores.
    pub fn sum(&self, field: impl Fn(&CoreCounters) -> &AtomicU64) -> u64 {
        self.cores
            .iter()
            .map(|c| field(c).load(Ordering::Relaxed))
            .sum()
    }

    /// A gauge summed over the cores.
    pub fn sum_gauge(&self, field: impl Fn(&CoreCounters) -> &AtomicI64) -> i64 {
        self.cores
            .iter()
            .map(|c| field(c).load(Ordering::Relaxed))
            .sum()
    }

    fn max_gauge(&self, field: impl Fn(&CoreCounters) -> &AtomicI64) -> i64 {
        self.cores
            .iter()
            .map(|c| field(c).load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let counters: [CounterField; 29] = [
            (
                "volley_connections_accepted_total",
                "Inbound SMTP connections accepted",
                |c| &c.connections_accepted,
            ),
            (
                "volley_connections_refused_total",
                "Inbound connections refused by a connection limit",
                |c| &c.connections_refused,
            ),
            (
                "volley_proxy_rejected_total",
                "Connections on proxy_protocol listeners closed before the greeting: peer not in trusted_proxies, or PROXY header malformed, missing or late",
                |c| &c.proxy_rejected,
            ),
            (
                "volley_messages_received_total",
                "Messages accepted and spooled",
                |c| &c.messages_received,
            ),
            (
                "volley_recipients_received_total",
                "Recipients of accepted messages",
                |c| &c.recipients_received,
            ),
            (
                "volley_bytes_received_total",
                "Bytes of accepted messages",
                |c| &c.bytes_received,
            ),
            (
                "volley_messages_rejected_total",
                "Messages refused at end of data",
                |c| &c.messages_rejected,
            ),
            ("volley_delivered_total", "Recipients delivered", |c| {
                &c.delivered
            }),
            (
                "volley_deferred_total",
                "Delivery attempts deferred (4xx or no connection)",
                |c| &c.deferred,
            ),
            ("volley_bounced_total", "Recipients bounced", |c| &c.bounced),
            (
                "volley_expired_total",
                "Recipients expired at max_queue_age",
                |c| &c.expired,
            ),
            (
                "volley_backoff_transitions_total",
                "Adaptive backoff transitions (entered, deepened, left) and rule suspensions",
                |c| &c.backoff_transitions,
            ),
            (
                "volley_sending_limit_refusals_total",
                "Messages refused by a customer's hourly or daily limit with no credits left",
                |c| &c.sending_limit_refusals,
            ),
            (
                "volley_bounce_guard_pauses_total",
                "Customers paused by the bounce-rate guard (max_bounce_percent)",
                |c| &c.bounce_guard_pauses,
            ),
            (
                "volley_spam_checks_total",
                "Messages the spam filter asked rspamd about",
                |c| &c.spam_checks,
            ),
            (
                "volley_spam_refused_total",
                "Messages refused by the spam filter (reject or soft reject)",
                |c| &c.spam_refused,
            ),
            (
                "volley_spam_flagged_total",
                "Messages taken with X-Spam headers (add header, rewrite subject)",
                |c| &c.spam_flagged,
            ),
            (
                "volley_spam_check_failures_total",
                "Spam checks without an answer from rspamd (on_error decides)",
                |c| &c.spam_check_failures,
            ),
            (
                "volley_spam_checks_skipped_total",
                "Messages over max_scan_bytes, taken without a spam check",
                |c| &c.spam_checks_skipped,
            ),
            (
                "volley_vmtas_refused_out_total",
                "VMTAs taken out of their pools because destinations refused them everywhere",
                |c| &c.vmtas_refused_out,
            ),
            (
                "volley_spool_commits_total",
                "Group commits (fdatasync) of the spool",
                |c| &c.spool_commits,
            ),
            (
                "volley_dkim_signed_total",
                "Messages DKIM-signed at reception",
                |c| &c.dkim_signed,
            ),
            (
                "volley_dkim_sign_failures_total",
                "Messages with a [[dkim]] entry that could not be signed and were sent unsigned",
                |c| &c.dkim_sign_failures,
            ),
            (
                "volley_xfer_out_total",
                "Recipients handed over to another node by a drain",
                |c| &c.xfer_out,
            ),
            (
                "volley_xfer_in_total",
                "Recipients handed over to this node by a peer node",
                |c| &c.xfer_in,
            ),
            (
                "volley_xfer_duplicates_total",
                "Recipients handed over to this node again (an interrupted drain), delivered again",
                |c| &c.xfer_duplicates,
            ),
            (
                "volley_xfer_refused_total",
                "Messages refused for an X-Volley-Xfer header from outside peer_networks, or a bad one",
                |c| &c.xfer_refused,
            ),
            (
                "volley_tls_policy_fetches_total",
                "MTA-STS policies fetched over HTTPS",
                |c| &c.mta_sts_fetches,
            ),
            (
                "volley_tls_policy_fetch_failures_total",
                "MTA-STS policy fetches that failed (no answer, bad certificate, not a policy)",
                |c| &c.mta_sts_fetch_failures,
            ),
        ];
        for (name, help, field) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                self.sum(field)
            );
        }
        let gauges: [GaugeField; 6] = [
            (
                "volley_queued_recipients",
                "Recipients waiting in delivery queues",
                |c| &c.queued_recipients,
            ),
            (
                "volley_queues_in_backoff",
                "Delivery queues in adaptive backoff",
                |c| &c.queues_in_backoff,
            ),
            (
                "volley_outbound_connections",
                "Open outbound SMTP connections",
                |c| &c.outbound_connections,
            ),
            (
                "volley_queues",
                "Delivery queues that exist (idle ones are freed after queue_idle_s)",
                |c| &c.queues,
            ),
            (
                "volley_spool_bytes",
                "Bytes of spool segment files (a preallocated segment counts whole)",
                |c| &c.spool_bytes,
            ),
            (
                "volley_spool_max_bytes",
                "The spool's size limit, max_spool_bytes",
                |c| &c.spool_max_bytes,
            ),
        ];
        for (name, help, field) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                self.sum_gauge(field)
            );
        }
        // The oldest wait is the highest of the cores, not their sum.
        let (name, help) = (
            "volley_oldest_ready_seconds",
            "Seconds the oldest ready recipient has waited while its queue had a connection slot free",
        );
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
            self.max_gauge(|c| &c.oldest_ready_seconds)
        );
        let name = "volley_tls_policy_connections_total";
        let _ = writeln!(
            out,
            "# HELP {name} Outbound connections by transport security policy and result\n\
             # TYPE {name} counter"
        );
        for (p, (_, policy)) in TLS_POLICY_LABELS.iter().enumerate() {
            for (r, (_, result)) in TLS_RESULT_LABELS.iter().enumerate() {
                let total: u64 = self.cores.iter().map(|c| c.tls_policy.get(p, r)).sum();
                let _ = writeln!(
                    out,
                    "{name}{{policy=\"{policy}\",result=\"{result}\"}} {total}"
                );
            }
        }
        self.render_latency(
            &mut out,
            "volley_accept_latency_seconds",
            "End of DATA to the 250 reply, spool commit included",
            |c| &c.accept_latency,
        );
        self.render_latency(
            &mut out,
            "volley_delivery_latency_seconds",
            "Reception to final outcome, per recipient",
            |c| &c.delivery_latency,
        );
        self.labels.render(&mut out);
        out
    }

    fn render_latency(
        &self,
        out: &mut String,
        name: &str,
        help: &str,
        field: impl Fn(&CoreCounters) -> &Latency,
    ) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
            cumulative += self
                .cores
                .iter()
                .map(|c| field(c).buckets[i].load(Ordering::Relaxed))
                .sum::<u64>();
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let count: u64 = self
            .cores
            .iter()
            .map(|c| field(c).count.load(Ordering::Relaxed))
            .sum();
        let sum_us: u64 = self
            .cores
            .iter()
            .map(|c| field(c).sum_us.load(Ordering::Relaxed))
            .sum();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cores_and_renders_histogram() {
        let m = Metrics::new(2);
        m.core(0).messages_received.fetch_add(3, Ordering::Relaxed);
        m.core(1).messages_received.fetch_add(4, Ordering::Relaxed);
        m.core(0).accept_latency.record_us(400);
        m.core(1).accept_latency.record_us(3_000);
        let text = m.render();
        assert!(text.contains("volley_messages_received_total 7"), "{text}");
        assert!(
            text.contains("volley_accept_latency_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("volley_accept_latency_seconds_bucket{le=\"0.005\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("volley_accept_latency_seconds_count 2"),
            "{text}"
        );
    }

    #[test]
    fn queues_are_summed_and_the_oldest_wait_is_the_highest_of_the_cores() {
        let m = Metrics::new(3);
        m.core(0).queues.store(5, Ordering::Relaxed);
        m.core(2).queues.store(7, Ordering::Relaxed);
        m.core(0).oldest_ready_seconds.store(12, Ordering::Relaxed);
        m.core(1).oldest_ready_seconds.store(90, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("\nvolley_queues 12\n"), "{text}");
        assert!(
            text.contains("\nvolley_oldest_ready_seconds 90\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE volley_oldest_ready_seconds gauge"),
            "{text}"
        );
    }
}
