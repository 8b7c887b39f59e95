//! Webhooks (`[[webhook]]`, docs/webhooks.md): accounting events pushed to a control plane as
//! batched, signed JSON POSTs, at least once across restarts and crashes.
//!
//! The cores' accounting batches go, besides the log and the ring, to the event journal
//! (`accounting::journal`, in the spool directory) from their blocking-pool threads. One sender
//! thread per webhook (`sender`) reads the journal from the webhook's saved position (`position`),
//! builds batches of the types it takes (`batch`), and retries refused ones with backoff
//! (`backoff`). Nothing here runs on a core. What the API and the metrics show is read from the
//! atomics of each `WebhookState`.

mod backoff;
mod batch;
mod position;
mod sender;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::accounting::journal::{Journal, JournalLimits};
use crate::config::Config;

pub use batch::signature;
pub use sender::{POSITION_SAVE_MS, SenderContext};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook positions in {dir}: {source}")]
    Positions {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("event journal in {dir}: {source}")]
    Journal {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("starting the sender of webhook {name}: {source}")]
    Thread {
        name: String,
        source: std::io::Error,
    },
}

/// One webhook's progress, written by its sender and read by the API and the metrics.
pub struct WebhookState {
    pub name: String,
    file_stem: String,
    /// The id of the next event to send: all below were answered 2xx (or are of other types).
    position: AtomicU64,
    /// The position last saved to disk (the journal keeps everything from the lowest one).
    saved_position: AtomicU64,
    posts: AtomicU64,
    post_failures: AtomicU64,
    events_sent: AtomicU64,
    /// Events gone from the journal before this webhook had them (its size bound).
    skipped: AtomicU64,
    last_success_ms: AtomicU64,
    /// When the current run of failures began; 0 = none.
    failing_since_ms: AtomicU64,
    /// When a refused batch is tried again; 0 = not waiting.
    next_attempt_ms: AtomicU64,
    /// The last error and when (Unix ms). Locked by the sender per failure and by the API per
    /// request, never on the message path.
    last_error: Mutex<Option<(u64, String)>>,
}

impl WebhookState {
    fn new(name: &str, position: u64) -> WebhookState {
        WebhookState {
            name: name.to_string(),
            file_stem: position::file_stem(name),
            position: AtomicU64::new(position),
            saved_position: AtomicU64::new(position),
            posts: AtomicU64::new(0),
            post_failures: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            last_success_ms: AtomicU64::new(0),
            failing_since_ms: AtomicU64::new(0),
            next_attempt_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    fn note_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some((crate::clock::unix_ms(), error));
        }
    }

    pub fn position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    /// Events in the journal this webhook has not had yet.
    pub fn lag(&self, journal: &Journal) -> u64 {
        journal.next_seq().saturating_sub(self.position())
    }
}

/// The webhooks of this process, their journal and their sender threads.
pub struct Webhooks {
    journal: Arc<Journal>,
    positions_dir: PathBuf,
    states: Arc<[Arc<WebhookState>]>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// How long the process waits at stop for senders in the middle of a POST.
const STOP_WAIT_MS: u64 = 3_000;

impl Webhooks {
    /// Opens the journal and the positions in `spool_dir` (blocking; before the cores start).
    /// None without `[[webhook]]`: no journal is written, and what a previous run left is removed
    /// (positions and the journal are of no use once no webhook reads them).
    pub fn open(spool_dir: &Path, config: &Config) -> Result<Option<Arc<Webhooks>>, WebhookError> {
        let positions_dir = spool_dir.join("webhooks");
        let journal_dir = spool_dir.join("events");
        if config.webhooks.is_empty() {
            remove_leftovers(&positions_dir, &journal_dir);
            return Ok(None);
        }
        let positions_error = |source| WebhookError::Positions {
            dir: positions_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&positions_dir).map_err(positions_error)?;
        let mut saved = Vec::with_capacity(config.webhooks.len());
        for w in &config.webhooks {
            let stem = position::file_stem(w.name());
            saved.push(position::load(&positions_dir, &stem).map_err(positions_error)?);
        }
        let stems: Vec<String> = config
            .webhooks
            .iter()
            .map(|w| position::file_stem(w.name()))
            .collect();
        for gone in position::remove_others(&positions_dir, &stems).map_err(positions_error)? {
            log::info!("webhook position {gone} removed: no such webhook is configured");
        }
        let floor = saved.iter().flatten().copied().max().unwrap_or(0);
        let journal = Journal::open(
            &journal_dir,
            JournalLimits::for_max_bytes(config.webhook_journal.max_bytes),
            floor,
        )
        .map_err(|source| WebhookError::Journal {
            dir: journal_dir.clone(),
            source,
        })?;
        let mut states = Vec::with_capacity(config.webhooks.len());
        for (w, saved) in config.webhooks.iter().zip(saved) {
            let position = match saved {
                Some(p) => p,
                None => {
                    // A new webhook gets the events from now on; saved at once, so a crash
                    // before its first batch does not move its start later.
                    let now = journal.next_seq();
                    position::save(&positions_dir, &position::file_stem(w.name()), now)
                        .map_err(positions_error)?;
                    log::info!("webhook {}: new, starting at event {now}", w.name());
                    now
                }
            };
            states.push(Arc::new(WebhookState::new(w.name(), position)));
        }
        if let Some(lowest) = states.iter().map(|s| s.position()).min() {
            journal.release(lowest);
        }
        Ok(Some(Arc::new(Webhooks {
            journal,
            positions_dir,
            states: states.into(),
            threads: Mutex::new(Vec::new()),
        })))
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    pub fn states(&self) -> &[Arc<WebhookState>] {
        &self.states
    }

    /// Starts one sender thread per webhook. `context` gives each its settings and the stop flag.
    pub fn start(
        &self,
        config: &Config,
        context: impl Fn(&str) -> SenderContext,
    ) -> Result<(), WebhookError> {
        for (i, state) in self.states.iter().enumerate() {
            let Some(settings) = config.webhooks.iter().find(|w| w.name() == state.name) else {
                continue;
            };
            let sender = sender::Sender {
                state: state.clone(),
                all: self.states.clone(),
                journal: self.journal.clone(),
                positions_dir: self.positions_dir.clone(),
                settings: settings.clone(),
                syncs_journal: i == 0,
                context: context(&state.name),
            };
            let handle = std::thread::Builder::new()
                .name(format!("volley-webhook-{i}"))
                .spawn(move || sender.run())
                .map_err(|source| WebhookError::Thread {
                    name: state.name.clone(),
                    source,
                })?;
            if let Ok(mut threads) = self.threads.lock() {
                threads.push(handle);
            }
            log::info!(
                "webhook {} to {}: from event {}, {} behind",
                state.name,
                settings.url,
                state.position(),
                state.lag(&self.journal)
            );
        }
        Ok(())
    }

    /// Waits for the senders (already asked to stop) to save their positions, a few seconds at
    /// most: one in the middle of a POST to a slow receiver is left behind, and sends that batch
    /// again after the restart.
    pub fn join(&self) {
        let Ok(mut threads) = self.threads.lock() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_millis(STOP_WAIT_MS);
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for t in threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }

    /// `GET /v1/webhooks`: each webhook's settings (not its secret) and progress.
    pub fn status(&self, config: &Config) -> Value {
        let now_ms = crate::clock::unix_ms();
        let next = self.journal.next_seq();
        let list: Vec<Value> = self
            .states
            .iter()
            .map(|s| {
                let settings = config.webhooks.iter().find(|w| w.name() == s.name);
                let (error_ms, error) = s
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .map_or((None, None), |(at, e)| (Some(at), Some(e)));
                let ms = |a: &AtomicU64| match a.load(Ordering::Relaxed) {
                    0 => None,
                    v => Some(v),
                };
                json!({
                    "name": s.name,
                    "url": settings.map(|w| w.url.clone()),
                    "events": settings.map(|w| w.events.clone()),
                    "batch_max_events": settings.map(|w| w.batch_max_events),
                    "configured": settings.is_some(),
                    "lag_events": s.lag(&self.journal),
                    "position": s.position(),
                    "saved_position": s.saved_position.load(Ordering::Relaxed),
                    "posts": s.posts.load(Ordering::Relaxed),
                    "post_failures": s.post_failures.load(Ordering::Relaxed),
                    "events_sent": s.events_sent.load(Ordering::Relaxed),
                    "skipped_events": s.skipped.load(Ordering::Relaxed),
                    "last_success_unix_ms": ms(&s.last_success_ms),
                    "last_success_age_s": ms(&s.last_success_ms).map(|t| now_ms.saturating_sub(t) / 1000),
                    "failing_since_unix_ms": ms(&s.failing_since_ms),
                    "next_attempt_unix_ms": ms(&s.next_attempt_ms),
                    "next_attempt": ms(&s.next_attempt_ms).map(|t| crate::clock::rfc3339(t / 1000)),
                    "last_success": ms(&s.last_success_ms).map(|t| crate::clock::rfc3339(t / 1000)),
                    "last_error": error,
                    "last_error_unix_ms": error_ms,
                })
            })
            .collect();
        json!({
            "webhooks": list,
            "journal": {
                "next_event_id": next,
                "bytes": self.journal.bytes(),
                "max_bytes": config.webhook_journal.max_bytes,
                "segments": self.journal.segment_count(),
                "dropped_events": self.journal.dropped_events(),
            },
        })
    }

    /// The `volley_webhook_*` metrics, one series per webhook.
    pub fn render_metrics(&self) -> String {
        type Field = fn(&WebhookState, &Journal) -> u64;
        let series: [(&str, &str, &str, Field); 6] = [
            (
                "volley_webhook_lag_events",
                "gauge",
                "Events in the journal the webhook has not had yet",
                |s, j| s.lag(j),
            ),
            (
                "volley_webhook_posts_total",
                "counter",
                "POSTs made (each batch attempt)",
                |s, _| s.posts.load(Ordering::Relaxed),
            ),
            (
                "volley_webhook_post_failures_total",
                "counter",
                "POSTs not answered 2xx (transport error, timeout or status)",
                |s, _| s.post_failures.load(Ordering::Relaxed),
            ),
            (
                "volley_webhook_events_sent_total",
                "counter",
                "Events in batches answered 2xx",
                |s, _| s.events_sent.load(Ordering::Relaxed),
            ),
            (
                "volley_webhook_skipped_events_total",
                "counter",
                "Events gone from the journal (its size bound) before the webhook had them",
                |s, _| s.skipped.load(Ordering::Relaxed),
            ),
            (
                "volley_webhook_last_success_timestamp_seconds",
                "gauge",
                "Unix time of the last batch answered 2xx (0 = none since start)",
                |s, _| s.last_success_ms.load(Ordering::Relaxed) / 1000,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, field) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in self.states.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{webhook=\"{}\"}} {}",
                    label_value(&s.name),
                    field(s, &self.journal)
                );
            }
        }
        let journal: [(&str, &str, &str, u64); 3] = [
            (
                "volley_webhook_journal_bytes",
                "gauge",
                "Bytes of the event journal in the spool directory",
                self.journal.bytes(),
            ),
            (
                "volley_webhook_journal_dropped_events_total",
                "counter",
                "Events dropped by the journal's size bound before every webhook had them",
                self.journal.dropped_events(),
            ),
            (
                "volley_webhook_journal_write_failures_total",
                "counter",
                "Batches of events that could not be written to the journal",
                self.journal.write_failures(),
            ),
        ];
        for (name, kind, help, value) in journal {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Positions and journal segments a previous run left when no webhook is configured any more.
fn remove_leftovers(positions_dir: &Path, journal_dir: &Path) {
    if positions_dir.exists() {
        match position::remove_others(positions_dir, &[]) {
            Ok(gone) if !gone.is_empty() => {
                log::info!("no webhook configured: removed the positions of {gone:?}")
            }
            Ok(_) => {}
            Err(e) => log::warn!("webhook positions in {}: {e}", positions_dir.display()),
        }
    }
    if journal_dir.exists() {
        match std::fs::remove_dir_all(journal_dir) {
            Ok(()) => log::info!(
                "no webhook configured: removed the event journal {}",
                journal_dir.display()
            ),
            Err(e) => log::warn!("event journal {}: {e}", journal_dir.display()),
        }
    }
}

#[cfg(test)]
mod tests;
