//! What `blast` measured: per-core statistics, merged into one report (text or JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms track, in microseconds (10 minutes).
pub const MAX_LATENCY_US: u64 = 600_000_000;

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// What one core (or the whole run, once merged) measured.
#[derive(Debug)]
pub struct Stats {
    /// TCP connect time.
    pub connect_us: Histogram<u64>,
    /// From writing the transaction's first command to reading its first reply.
    pub mail_reply_us: Histogram<u64>,
    /// From writing the final `.` (or the write that carried it) to reading its reply.
    pub end_of_data_reply_us: Histogram<u64>,
    /// Each message's final reply code (end of data, or the reply that stopped it earlier).
    pub replies_by_code: BTreeMap<u16, u64>,
    /// Every RCPT reply code.
    pub rcpt_replies_by_code: BTreeMap<u16, u64>,
    /// The first full text seen for each final reply code.
    pub reply_samples: BTreeMap<u16, String>,
    /// Messages whose body was sent.
    pub bodies_sent: u64,
    /// Transactions that got a final reply.
    pub messages_sent: u64,
    /// Messages answered 2xx at end of data.
    pub messages_accepted: u64,
    /// Messages never tried because their connection failed.
    pub messages_unsent: u64,
    /// Recipients of accepted messages whose RCPT got 2xx.
    pub recipients_accepted: u64,
    /// Message bytes (before dot-stuffing) of messages whose body was sent.
    pub message_bytes: u64,
    /// Connections that reached the greeting.
    pub connections_ok: u64,
    /// Connections that failed (connect, greeting, or mid-way).
    pub connection_errors: u64,
    /// The first connection error seen, to explain failures.
    pub first_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            connect_us: latency_histogram(),
            mail_reply_us: latency_histogram(),
            end_of_data_reply_us: latency_histogram(),
            replies_by_code: BTreeMap::new(),
            rcpt_replies_by_code: BTreeMap::new(),
            reply_samples: BTreeMap::new(),
            bodies_sent: 0,
            messages_sent: 0,
            messages_accepted: 0,
            messages_unsent: 0,
            recipients_accepted: 0,
            message_bytes: 0,
            connections_ok: 0,
            connection_errors: 0,
            first_error: None,
        }
    }
}

/// Records `d` in microseconds (at least 1, at most [`MAX_LATENCY_US`]).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

impl Stats {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: Stats) {
        let _ = self.connect_us.add(&other.connect_us);
        let _ = self.mail_reply_us.add(&other.mail_reply_us);
        let _ = self.end_of_data_reply_us.add(&other.end_of_data_reply_us);
        for (code, n) in other.replies_by_code {
            *self.replies_by_code.entry(code).or_default() += n;
        }
        for (code, n) in other.rcpt_replies_by_code {
            *self.rcpt_replies_by_code.entry(code).or_default() += n;
        }
        for (code, text) in other.reply_samples {
            self.reply_samples.entry(code).or_insert(text);
        }
        self.bodies_sent += other.bodies_sent;
        self.messages_sent += other.messages_sent;
        self.messages_accepted += other.messages_accepted;
        self.messages_unsent += other.messages_unsent;
        self.recipients_accepted += other.recipients_accepted;
        self.message_bytes += other.message_bytes;
        self.connections_ok += other.connections_ok;
        self.connection_errors += other.connection_errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Notes a connection failure.
    pub fn connection_failed(&mut self, error: String) {
        self.connection_errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error);
        }
    }
}

/// Latency percentiles of one stage, in microseconds.
#[derive(Debug, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Latencies per stage.
#[derive(Debug, Serialize)]
pub struct Latencies {
    /// TCP connect.
    pub connect: Percentiles,
    /// First command of a transaction to its reply.
    pub mail_reply: Percentiles,
    /// End of data to its reply.
    pub end_of_data_reply: Percentiles,
}

/// The final report (`--json` prints it as one object).
#[derive(Debug, Serialize)]
pub struct Report {
    /// `--messages`.
    pub messages_requested: u64,
    /// Transactions that got a final reply.
    pub messages_sent: u64,
    /// Accepted at end of data.
    pub messages_accepted: u64,
    /// Sent but refused (any stage).
    pub messages_failed: u64,
    /// Never tried because their connection failed.
    pub messages_unsent: u64,
    /// Recipients accepted within accepted messages.
    pub recipients_accepted: u64,
    /// Connections that reached the greeting.
    pub connections_ok: u64,
    /// Connections that failed.
    pub connection_errors: u64,
    /// The first connection error, if any.
    pub first_error: Option<String>,
    /// Wall time of the run.
    pub elapsed_s: f64,
    /// Transactions completed per second.
    pub messages_per_s: f64,
    /// Accepted messages per second.
    pub accepted_per_s: f64,
    /// Message bytes sent per second, MiB.
    pub mib_per_s: f64,
    /// Accepted recipients per second.
    pub recipients_per_s: f64,
    /// Mean size of the messages whose body was sent, bytes.
    pub mean_message_bytes: f64,
    /// Latency percentiles per stage, microseconds.
    pub latency_us: Latencies,
    /// Each message's final reply code.
    pub replies_by_code: BTreeMap<String, u64>,
    /// Every RCPT reply code.
    pub rcpt_replies_by_code: BTreeMap<String, u64>,
    /// The first full text seen for each final reply code (lines joined with `\n`).
    pub reply_samples: BTreeMap<String, String>,
}

impl Report {
    /// Builds the report from merged statistics.
    pub fn new(stats: &Stats, messages_requested: u64, elapsed: Duration) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let codes = |m: &BTreeMap<u16, u64>| m.iter().map(|(c, n)| (c.to_string(), *n)).collect();
        Report {
            messages_requested,
            messages_sent: stats.messages_sent,
            messages_accepted: stats.messages_accepted,
            messages_failed: stats.messages_sent - stats.messages_accepted,
            messages_unsent: stats.messages_unsent,
            recipients_accepted: stats.recipients_accepted,
            connections_ok: stats.connections_ok,
            connection_errors: stats.connection_errors,
            first_error: stats.first_error.clone(),
            elapsed_s: elapsed.as_secs_f64(),
            messages_per_s: stats.messages_sent as f64 / secs,
            accepted_per_s: stats.messages_accepted as f64 / secs,
            mib_per_s: stats.message_bytes as f64 / (1024.0 * 1024.0) / secs,
            recipients_per_s: stats.recipients_accepted as f64 / secs,
            mean_message_bytes: stats.message_bytes as f64 / stats.bodies_sent.max(1) as f64,
            latency_us: Latencies {
                connect: Percentiles::of(&stats.connect_us),
                mail_reply: Percentiles::of(&stats.mail_reply_us),
                end_of_data_reply: Percentiles::of(&stats.end_of_data_reply_us),
            },
            replies_by_code: codes(&stats.replies_by_code),
            rcpt_replies_by_code: codes(&stats.rcpt_replies_by_code),
            reply_samples: stats
                .reply_samples
                .iter()
                .map(|(c, t)| (c.to_string(), t.clone()))
                .collect(),
        }
    }

    /// The human-readable form.
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "messages: {} sent, {} accepted, {} failed, {} unsent (of {} requested)",
            self.messages_sent,
            self.messages_accepted,
            self.messages_failed,
            self.messages_unsent,
            self.messages_requested
        );
        let _ = writeln!(
            t,
            "connections: {} ok, {} failed{}",
            self.connections_ok,
            self.connection_errors,
            self.first_error
                .as_ref()
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            t,
            "elapsed: {:.3} s; {:.0} msg/s ({:.0} accepted/s), {:.2} MiB/s, {:.0} recipients/s; mean size {:.0} B",
            self.elapsed_s,
            self.messages_per_s,
            self.accepted_per_s,
            self.mib_per_s,
            self.recipients_per_s,
            self.mean_message_bytes
        );
        let _ = writeln!(
            t,
            "latency (µs)          count      p50      p90      p99    p99.9      max"
        );
        for (name, p) in [
            ("connect", &self.latency_us.connect),
            ("MAIL -> reply", &self.latency_us.mail_reply),
            ("end of DATA -> reply", &self.latency_us.end_of_data_reply),
        ] {
            let _ = writeln!(
                t,
                "{name:<20} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
                p.count, p.p50, p.p90, p.p99, p.p999, p.max
            );
        }
        let join = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(t, "replies by code: {}", join(&self.replies_by_code));
        let _ = writeln!(
            t,
            "RCPT replies by code: {}",
            join(&self.rcpt_replies_by_code)
        );
        for (code, text) in &self.reply_samples {
            let _ = writeln!(t, "first {code} reply: {}", text.replace('\n', " | "));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_report() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        record(&mut a.end_of_data_reply_us, Duration::from_micros(100));
        record(&mut b.end_of_data_reply_us, Duration::from_micros(300));
        a.messages_sent = 2;
        a.messages_accepted = 1;
        b.messages_sent = 1;
        *a.replies_by_code.entry(250).or_default() += 1;
        *a.replies_by_code.entry(450).or_default() += 1;
        *b.replies_by_code.entry(450).or_default() += 1;
        b.connection_failed("boom".into());
        a.merge(b);
        let r = Report::new(&a, 3, Duration::from_secs(1));
        assert_eq!(r.messages_failed, 2);
        assert_eq!(r.replies_by_code.get("450"), Some(&2));
        assert_eq!(r.latency_us.end_of_data_reply.count, 2);
        assert!(r.latency_us.end_of_data_reply.max >= 300);
        assert_eq!(r.first_error.as_deref(), Some("boom"));
        assert!(r.to_text().contains("450: 2"));
    }
}
