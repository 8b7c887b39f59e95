//! One webhook's sender, on its own thread (never a core's): reads the journal from the webhook's
//! position, sends batches, retries a refused batch with backoff until it is answered 2xx, and
//! saves the position. At least once: the position moves only past answered batches, so a crash
//! sends again at most what was answered since the last save (`POSITION_SAVE_MS`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::batch::{Batch, BatchBuilder, EventFilter, signature};
use super::{WebhookState, backoff, position};
use crate::accounting::journal::{Journal, JournalReader, Next};
use crate::config::WebhookConfig;

/// A position is saved at most this often while batches flow (each save costs two fsyncs), and at
/// stop; at worst a crash sends this much again.
pub const POSITION_SAVE_MS: u64 = 1_000;
/// The journal is fdatasync'd this often by the first sender.
const JOURNAL_SYNC_MS: u64 = 1_000;
/// A sender with nothing to send looks at the stop flag this often.
const IDLE_WAIT_MS: u64 = 200;
/// Waits are cut in steps this long, to see a stop.
const STOP_CHECK_MS: u64 = 100;
/// A response body read (and thrown away) at most, so the connection can be reused.
const RESPONSE_BYTES_MAX: u64 = 64 << 10;
/// The part of a refusing response kept as the last error.
const ERROR_TEXT_MAX: usize = 200;

/// What a sender asks of the process: the webhook's current settings (a reload may change them;
/// none when it is gone from the configuration), and whether to stop.
pub struct SenderContext {
    pub settings: Box<dyn Fn() -> Option<WebhookConfig> + Send>,
    pub stopping: Box<dyn Fn() -> bool + Send>,
}

pub struct Sender {
    pub state: Arc<WebhookState>,
    pub all: Arc<[Arc<WebhookState>]>,
    pub journal: Arc<Journal>,
    pub positions_dir: PathBuf,
    /// The settings at start, then the last ones seen in the configuration.
    pub settings: WebhookConfig,
    pub syncs_journal: bool,
    pub context: SenderContext,
}

struct Client {
    timeout_ms: u64,
    agent: ureq::Agent,
}

fn agent(timeout_ms: u64) -> ureq::Agent {
    let t = Some(Duration::from_millis(timeout_ms));
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Where events go is the configured URL only: no proxy from the environment, no redirect.
        .proxy(None)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_resolve(t)
        .timeout_connect(t)
        .timeout_send_request(t)
        .timeout_send_body(t)
        .timeout_per_write(t)
        .timeout_recv_response(t)
        .timeout_recv_body(t)
        .user_agent(concat!("volley/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// POSTs `batch`; Ok on a 2xx, else what went wrong.
fn post(agent: &ureq::Agent, settings: &WebhookConfig, batch: &Batch) -> Result<(), String> {
    let mut request = agent
        .post(&settings.url)
        .header("Content-Type", "application/json")
        .header("X-Volley-Events", batch.events.to_string());
    if !settings.secret.is_empty() {
        request = request.header(
            "X-Volley-Signature",
            signature(&settings.secret, &batch.body),
        );
    }
    let mut response = request.send(&batch.body[..]).map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(RESPONSE_BYTES_MAX)
        .read_to_vec()
        .unwrap_or_default();
    if status.is_success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&text);
    let text: String = text.trim().chars().take(ERROR_TEXT_MAX).collect();
    Err(format!("HTTP {}: {text}", status.as_u16()))
}

impl Sender {
    fn stopping(&self) -> bool {
        (self.context.stopping)()
    }

    /// Sleeps `ms`, or less when asked to stop.
    fn pause(&self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while !self.stopping() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(STOP_CHECK_MS)));
        }
    }

    /// The next batch from the reader: up to `batch_max_events` events of the webhook's types, as
    /// many as the journal has now. None when there is none (the reader may still have moved past
    /// events of other types).
    fn next_batch(&self, reader: &mut JournalReader) -> std::io::Result<Option<Batch>> {
        let filter = EventFilter::new(self.settings.events.as_deref());
        let mut builder = BatchBuilder::new();
        loop {
            match reader.read_next()? {
                Next::End => break,
                Next::Skipped { from, to } => {
                    self.state.skipped.fetch_add(to - from, Ordering::Relaxed);
                    log::warn!(
                        "webhook {}: events {from}..{to} are gone from the journal and were not sent",
                        self.state.name
                    );
                }
                Next::Line(id) => {
                    let line = reader.line();
                    if !filter.accepts(line) {
                        continue;
                    }
                    if !builder.has_room(self.settings.batch_max_events, line.len()) {
                        // The next batch starts with this event.
                        reader.unread();
                        return Ok(builder.finish(reader.position()));
                    }
                    if !builder.push(id, line) {
                        log::warn!(
                            "webhook {}: event {id} in the journal is not a JSON object: skipped",
                            self.state.name
                        );
                    }
                    if builder.events() >= self.settings.batch_max_events {
                        break;
                    }
                }
            }
        }
        Ok(builder.finish(reader.position()))
    }

    /// Saves the position when it moved and `force` or the last save is old enough, then lets the
    /// journal go of what every webhook has saved.
    fn save_position(&self, last_save: &mut Instant, force: bool) {
        let position = self.state.position.load(Ordering::Relaxed);
        if position == self.state.saved_position.load(Ordering::Relaxed)
            || !(force || last_save.elapsed() >= Duration::from_millis(POSITION_SAVE_MS))
        {
            return;
        }
        *last_save = Instant::now();
        if let Err(e) = position::save(&self.positions_dir, &self.state.file_stem, position) {
            log::error!(
                "webhook {}: cannot save its position {position}: {e}",
                self.state.name
            );
            self.state.note_error(format!("saving the position: {e}"));
            return;
        }
        self.state.saved_position.store(position, Ordering::Relaxed);
        let lowest = self
            .all
            .iter()
            .map(|s| s.saved_position.load(Ordering::Relaxed))
            .min()
            .unwrap_or(position);
        self.journal.release(lowest);
    }

    pub fn run(mut self) {
        let mut reader = JournalReader::new(
            self.journal.clone(),
            self.state.position.load(Ordering::Relaxed),
        );
        let mut pending: Option<Batch> = None;
        let mut client: Option<Client> = None;
        let mut failures = 0u32;
        let mut last_save = Instant::now();
        let mut last_sync = Instant::now();
        while !self.stopping() {
            if let Some(settings) = (self.context.settings)() {
                self.settings = settings;
            }
            if self.syncs_journal && last_sync.elapsed() >= Duration::from_millis(JOURNAL_SYNC_MS) {
                last_sync = Instant::now();
                self.journal.sync();
            }
            if pending.is_none() {
                match self.next_batch(&mut reader) {
                    Ok(Some(batch)) => pending = Some(batch),
                    Ok(None) => {
                        // Events of other types only: the position moves past them.
                        self.state
                            .position
                            .store(reader.position(), Ordering::Relaxed);
                        self.save_position(&mut last_save, false);
                        self.journal
                            .wait_past(reader.position(), Duration::from_millis(IDLE_WAIT_MS));
                        continue;
                    }
                    Err(e) => {
                        log::error!("webhook {}: reading the journal: {e}", self.state.name);
                        self.state.note_error(format!("reading the journal: {e}"));
                        reader = JournalReader::new(
                            self.journal.clone(),
                            self.state.position.load(Ordering::Relaxed),
                        );
                        self.pause(backoff::RETRY_FIRST_MS);
                        continue;
                    }
                }
            }
            let Some(batch) = pending.as_ref() else {
                continue;
            };
            if client
                .as_ref()
                .is_none_or(|c| c.timeout_ms != self.settings.timeout_ms)
            {
                client = Some(Client {
                    timeout_ms: self.settings.timeout_ms,
                    agent: agent(self.settings.timeout_ms),
                });
            }
            let Some(agent) = client.as_ref().map(|c| &c.agent) else {
                continue;
            };
            self.state.posts.fetch_add(1, Ordering::Relaxed);
            match post(agent, &self.settings, batch) {
                Ok(()) => {
                    if failures > 0 {
                        log::info!(
                            "webhook {}: sending again after {failures} failed attempts",
                            self.state.name
                        );
                    }
                    failures = 0;
                    self.state.failing_since_ms.store(0, Ordering::Relaxed);
                    self.state
                        .events_sent
                        .fetch_add(u64::from(batch.events), Ordering::Relaxed);
                    self.state
                        .last_success_ms
                        .store(crate::clock::unix_ms(), Ordering::Relaxed);
                    self.state.position.store(batch.end, Ordering::Relaxed);
                    pending = None;
                    self.save_position(&mut last_save, false);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.state.post_failures.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff::retry_delay_ms(failures, fastrand::f64());
                    if failures == 1 {
                        self.state
                            .failing_since_ms
                            .store(crate::clock::unix_ms(), Ordering::Relaxed);
                    }
                    // The first failure and then one in ten are logged; all are counted.
                    if failures == 1 || failures.is_multiple_of(10) {
                        log::warn!(
                            "webhook {}: events {}..={} not taken ({e}); attempt {failures}, next in {} ms",
                            self.state.name,
                            batch.first_id,
                            batch.last_id,
                            delay
                        );
                    }
                    self.state.note_error(e);
                    // What was taken before this refusal is saved now: the wait is longer
                    // than the save.
                    self.save_position(&mut last_save, true);
                    self.state
                        .next_attempt_ms
                        .store(crate::clock::unix_ms() + delay, Ordering::Relaxed);
                    self.pause(delay);
                    self.state.next_attempt_ms.store(0, Ordering::Relaxed);
                }
            }
        }
        self.save_position(&mut last_save, true);
    }
}
