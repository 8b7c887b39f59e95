//! The accounting log: one JSON line per reception and per delivery outcome (interface.md). Each core
//! buffers its lines and flushes them in batches, off the reactor thread, to the log file (O_APPEND,
//! one write per batch, so cores never interleave inside a line) and to the bounded in-memory ring
//! behind `GET /v1/events`; with webhooks, also to the event journal (`journal`).

pub mod journal;
mod line;
pub mod unflushed;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use unflushed::Unflushed;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Reception,
    Delivery,
    Transient,
    Bounce,
    Expiration,
    /// Prepaid credits added to a customer through the API.
    Credits,
    /// A recipient or message refused at RCPT or at the end of data (the reply says why).
    Rejection,
    /// A recipient dropped at reception because the customer's suppression list has it.
    Suppressed,
    /// Handed over to another node by a drain (the target answered 250): gone from here.
    #[serde(rename = "xfer_out")]
    XferOut,
    /// Handed over to this node by a peer: written instead of `reception`.
    #[serde(rename = "xfer_in")]
    XferIn,
    /// A VMTA's FCrDNS or DNSBL result changed (`[reputation]`): `vmta`, `source_ip`, `domain`
    /// (the DNSBL zone; empty for FCrDNS) and `response` (what changed).
    Reputation,
    /// A recipient unsubscribed through a one-click link (`POST /v1/unsubscribe/{token}`):
    /// `customer`, `recipient`, `client_ip`; the recipient is on the customer's suppression list.
    Unsubscribe,
    /// An abuse report (ARF, `POST /v1/feedback`): `customer`, `recipient`, `response` = the
    /// feedback type and the reporter's User-Agent.
    Complaint,
    /// The bounce-rate guard paused a customer: `customer`, `response` = why.
    #[serde(rename = "customer_paused")]
    CustomerPaused,
    /// `POST /v1/customers/{name}/resume` ended a pause: `customer`, `response` = the pause's reason.
    #[serde(rename = "customer_resumed")]
    CustomerResumed,
}

/// One accounting record; empty strings and zeros are written as they are, so every line has
/// every field. Its strings are borrowed where the caller has them (a message makes two events
/// or more, and each is only written into the core's pending batch).
#[derive(Debug, Clone, Serialize, Default)]
pub struct AccountingEvent<'a> {
    #[serde(rename = "type")]
    pub kind: Option<EventType>,
    pub time: Cow<'a, str>,
    pub id: Cow<'a, str>,
    /// The message's RFC 5322 Message-ID without angle brackets (empty when it has none, or
    /// unknown: a recipient refused at RCPT, a credits event).
    pub message_id: Cow<'a, str>,
    pub customer: Cow<'a, str>,
    /// The campaign the message named (`X-Volley-Campaign`, inject `campaign`); empty when none.
    pub campaign: Cow<'a, str>,
    pub vmta: Cow<'a, str>,
    pub source_ip: Cow<'a, str>,
    /// For `reception`: the client's address (behind a PROXY-protocol load balancer, the one it
    /// names); empty for mail made here and for the other types.
    pub client_ip: Cow<'a, str>,
    pub sender: Cow<'a, str>,
    pub recipient: Cow<'a, str>,
    pub domain: Cow<'a, str>,
    pub mx: Cow<'a, str>,
    /// Delivery attempts that connected: how the connection was secured (`dane`, `mta-sts`,
    /// `webpki`, `encrypted`, `none`); empty otherwise.
    pub tls: Cow<'a, str>,
    pub response: Cow<'a, str>,
    pub enhanced_code: Cow<'a, str>,
    pub bounce_category: Cow<'a, str>,
    pub attempt: u32,
    pub size_bytes: u64,
    pub queue_ms: u64,
    /// `rejection` by the spam filter: rspamd's score and matched symbols (space-separated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spam_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spam_symbols: Option<String>,
    /// `credits` events only: how many were added by this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits_added: Option<u64>,
    /// `xfer_out` and `xfer_in`: the `[cluster] node` that handed the message over.
    pub node: Cow<'a, str>,
    /// `xfer_out` and `xfer_in`: the message's queue id on that node (with `node` and
    /// `recipient`, it joins the two events).
    pub xfer_id: Cow<'a, str>,
}

/// Events kept for the API, at most.
const RING_EVENTS_MAX: usize = 100_000;
/// Below this a batch is kept by the ring at its exact size (copied out of a larger buffer).
const SMALL_BATCH_BYTES: usize = 256 << 10;

/// What every core shares: the file and the ring. Locked once per flushed batch, never per event,
/// and only from blocking-pool threads (and the signal thread that reopens the file).
pub struct EventLog {
    /// The log file and its path; none when `accounting_log` is empty.
    file: Mutex<Option<(String, File)>>,
    ring: Mutex<Ring>,
    /// The durable, numbered copy the webhooks send from; set at start when any is configured.
    journal: OnceLock<Arc<journal::Journal>>,
}

fn open_append(path: &str) -> std::io::Result<File> {
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// The latest events for the API. Each flushed batch is one shared allocation and an event is a
/// line of it: a batch's thousands of lines cost one allocation, not one each.
struct Ring {
    next_id: u64,
    events: VecDeque<RingEvent>,
}

struct RingEvent {
    id: u64,
    batch: Arc<String>,
    start: u32,
    end: u32,
}

impl RingEvent {
    fn line(&self) -> &str {
        self.batch
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
}

impl EventLog {
    pub fn open(path: &str) -> std::io::Result<Arc<EventLog>> {
        let file = if path.is_empty() {
            None
        } else {
            Some((path.to_string(), open_append(path)?))
        };
        Ok(Arc::new(EventLog {
            file: Mutex::new(file),
            ring: Mutex::new(Ring {
                next_id: 1,
                events: VecDeque::new(),
            }),
            journal: OnceLock::new(),
        }))
    }

    /// Opens `path` anew and writes there from the next batch on: after logrotate moved the file
    /// (SIGUSR1, SIGHUP) or a reload changed `accounting_log`. On error the old file stays in use.
    /// Blocking: called from the signal thread.
    pub fn reopen(&self, path: &str) -> std::io::Result<()> {
        let file = if path.is_empty() {
            None
        } else {
            Some((path.to_string(), open_append(path)?))
        };
        if let Ok(mut current) = self.file.lock() {
            *current = file;
        }
        Ok(())
    }

    /// From now on every batch is also appended to `journal` (once, at start).
    pub fn attach_journal(&self, journal: Arc<journal::Journal>) {
        let _ = self.journal.set(journal);
    }

    /// Appends a batch of JSON lines, each ending in '\n'. The ring keeps a copy.
    pub fn append_batch(&self, batch: &[u8]) {
        if batch.is_empty() {
            return;
        }
        self.write_out(batch);
        // serde_json writes UTF-8; a batch that is not would not be ours, so it is not served.
        if let Ok(text) = std::str::from_utf8(batch) {
            self.keep(Arc::new(text.to_string()));
        }
    }

    /// Appends a batch as `append_batch` does, and the ring keeps the batch itself instead of a
    /// copy. Returns an empty buffer for the core's next batch: one the ring let go of (a batch
    /// whose every line it dropped), so the core reuses warm memory, or a new one as large.
    pub fn append_batch_owned(&self, mut batch: Vec<u8>) -> Vec<u8> {
        if batch.is_empty() {
            return batch;
        }
        let capacity = batch.capacity();
        self.write_out(&batch);
        // The ring may hold thousands of batches (a quiet core flushes a few lines every tick),
        // each with the buffer it came in: a small batch, or one far smaller than its buffer (a
        // quiet tick after a busy one), is kept at its lines' size. Copying a small batch costs
        // little; a large one at least half full (the busy case) is kept as it is.
        if batch.len() < SMALL_BATCH_BYTES || batch.len() < capacity / 2 {
            batch.shrink_to_fit();
        }
        let recycled = match String::from_utf8(batch) {
            Ok(text) => self.keep(Arc::new(text)),
            Err(not_utf8) => Some(not_utf8.into_bytes()),
        };
        let mut spare = recycled.unwrap_or_else(|| Vec::with_capacity(capacity));
        spare.clear();
        spare
    }

    fn write_out(&self, batch: &[u8]) {
        if let Some(journal) = self.journal.get() {
            journal.append(batch);
        }
        if let Ok(mut file) = self.file.lock()
            && let Some((_, f)) = file.as_mut()
            && let Err(e) = f.write_all(batch)
        {
            log::error!("accounting log write failed: {e}");
        }
    }

    /// Adds a batch's lines to the ring, dropping the oldest past `RING_EVENTS_MAX`. Returns the
    /// buffer of a batch whose last line was dropped, when nothing else holds it.
    fn keep(&self, shared: Arc<String>) -> Option<Vec<u8>> {
        // Offsets are u32: a batch is at most PENDING_EVENTS_MAX lines, far below 4 GiB.
        u32::try_from(shared.len()).ok()?;
        let mut ring = self.ring.lock().ok()?;
        let mut recycled = None;
        let mut start = 0;
        for line in shared.split_inclusive('\n') {
            let end = start + line.trim_end_matches('\n').len();
            if end > start {
                let id = ring.next_id;
                ring.next_id += 1;
                ring.events.push_back(RingEvent {
                    id,
                    batch: shared.clone(),
                    start: start as u32,
                    end: end as u32,
                });
                if ring.events.len() > RING_EVENTS_MAX
                    && let Some(dropped) = ring.events.pop_front()
                    && let Ok(text) = Arc::try_unwrap(dropped.batch)
                {
                    recycled = Some(text.into_bytes());
                }
            }
            start += line.len();
        }
        recycled
    }

    /// Events with an id above `after`, oldest first, at most `limit`: (id, JSON line).
    pub fn after(&self, after: u64, limit: usize) -> Vec<(u64, String)> {
        let Ok(ring) = self.ring.lock() else {
            return Vec::new();
        };
        let start = ring.events.partition_point(|e| e.id <= after);
        ring.events
            .iter()
            .skip(start)
            .take(limit)
            .map(|e| (e.id, e.line().to_string()))
            .collect()
    }
}

impl EventLog {
    /// The kept events whose line contains `needle`, oldest first, at most `limit` (the latest
    /// ones when more match). Goes through the whole ring (at most `RING_EVENTS_MAX` lines), so
    /// it is for the blocking pool, never a reactor; the lock is held only to take the batches
    /// (one reference each), not while they are searched.
    pub fn lines_containing(&self, needle: &str, limit: usize) -> Vec<String> {
        if limit == 0 {
            return Vec::new();
        }
        let batches: Vec<(Arc<String>, usize, usize)> = {
            let Ok(ring) = self.ring.lock() else {
                return Vec::new();
            };
            let mut batches: Vec<(Arc<String>, usize, usize)> = Vec::new();
            for e in &ring.events {
                match batches.last_mut() {
                    Some((batch, _, end)) if Arc::ptr_eq(batch, &e.batch) => {
                        *end = e.end as usize;
                    }
                    _ => batches.push((e.batch.clone(), e.start as usize, e.end as usize)),
                }
            }
            batches
        };
        let mut lines: VecDeque<String> = VecDeque::new();
        for (batch, start, end) in &batches {
            let text = batch.get(*start..*end).unwrap_or_default();
            for line in text.split('\n').filter(|l| l.contains(needle)) {
                if lines.len() == limit {
                    lines.pop_front();
                }
                lines.push_back(line.to_string());
            }
        }
        lines.into()
    }
}

/// A core's lines not yet flushed, in one buffer. A flush hands the buffer to the ring (no copy of
/// a batch of thousands of lines) and gets back one the ring let go of, so the core keeps filling
/// warm memory: a new buffer per flush, freed on the blocking pool's thread, made the allocator
/// fault in fresh (huge, zeroed) pages on the core over and over (seen in `perf`).
pub struct CoreAccounting {
    log: Arc<EventLog>,
    pending: RefCell<Vec<u8>>,
    /// Lines in `pending`.
    lines: Cell<usize>,
    /// The other buffer, empty, while `pending` fills.
    spare: RefCell<Vec<u8>>,
    /// A copy of `pending` a kill -9 cannot take (`unflushed`); none in unit tests.
    unflushed: RefCell<Option<Unflushed>>,
    /// A batch is on its way to the log: the next waits (its slot is still taken).
    flushing: Cell<bool>,
}

/// Lines buffered at most before a flush is forced on the calling thread (about a second of
/// events at full relay speed).
const PENDING_EVENTS_MAX: usize = 65_536;

impl CoreAccounting {
    pub fn new(log: Arc<EventLog>) -> CoreAccounting {
        CoreAccounting {
            log,
            pending: RefCell::new(Vec::new()),
            lines: Cell::new(0),
            spare: RefCell::new(Vec::new()),
            unflushed: RefCell::new(None),
            flushing: Cell::new(false),
        }
    }

    /// From now on every line is also kept in `unflushed` until it is in the log.
    pub fn keep_unflushed_in(&self, unflushed: Unflushed) {
        *self.unflushed.borrow_mut() = Some(unflushed);
    }

    pub fn record(&self, event: &AccountingEvent) {
        let kept = {
            let mut pending = self.pending.borrow_mut();
            let before = pending.len();
            line::write_event(event, &mut pending);
            pending.push(b'\n');
            match self.unflushed.borrow_mut().as_mut() {
                Some(u) => u.push(pending.get(before..).unwrap_or_default()),
                None => true,
            }
        };
        self.lines.set(self.lines.get() + 1);
        // The core's tick flushes on the blocking pool (`accounting_flush_ms`); only a burst
        // beyond what the tick drains (or a writer stuck on a slow disk) writes here, on the
        // calling thread.
        if self.lines.get() >= PENDING_EVENTS_MAX || !kept {
            self.flush_now();
        }
    }

    /// Writes what is pending from the calling thread (used at stop and when a batch is full).
    pub fn flush_now(&self) {
        let mut pending = self.pending.borrow_mut();
        self.log.append_batch(&pending);
        pending.clear();
        self.lines.set(0);
        if let Some(u) = self.unflushed.borrow_mut().as_mut() {
            u.written_active();
        }
    }

    /// Writes what is pending on glommio's blocking pool, so a slow disk never stalls the reactor.
    /// Records made meanwhile go to the spare buffer.
    pub async fn flush(&self) {
        if self.pending.borrow().is_empty() || self.flushing.get() {
            return;
        }
        self.flushing.set(true);
        let spare = std::mem::take(&mut *self.spare.borrow_mut());
        let batch = std::mem::replace(&mut *self.pending.borrow_mut(), spare);
        self.lines.set(0);
        let slot = self.unflushed.borrow_mut().as_mut().map(Unflushed::take);
        let log = self.log.clone();
        // The ring keeps the batch itself; the buffer back is one it let go of.
        let spare = glommio::executor()
            .spawn_blocking(move || log.append_batch_owned(batch))
            .await;
        if let (Some(u), Some(slot)) = (self.unflushed.borrow_mut().as_mut(), slot) {
            u.written(slot);
        }
        self.flushing.set(false);
        *self.spare.borrow_mut() = spare;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_a_batch_without_a_copy_and_hands_it_back_once_done_with_it() {
        let log = EventLog::open("").unwrap();
        let lines = |tag: &str| {
            let mut batch = Vec::new();
            for i in 0..RING_EVENTS_MAX {
                batch.extend_from_slice(format!("{{\"{tag}\":{i}}}\n").as_bytes());
            }
            batch
        };
        let first = lines("a");
        let first_at = first.as_ptr();
        let spare = log.append_batch_owned(first);
        assert!(spare.is_empty());
        assert_ne!(
            spare.as_ptr(),
            first_at,
            "the ring still serves every line of it"
        );
        assert_eq!(log.after(0, 1)[0].1, "{\"a\":0}");
        // A second full batch drops every line of the first: its buffer comes back.
        let spare = log.append_batch_owned(lines("b"));
        assert!(spare.is_empty());
        assert_eq!(spare.as_ptr(), first_at);
        let kept = log.after(0, usize::MAX);
        assert_eq!(kept.len(), RING_EVENTS_MAX);
        assert_eq!(kept[0].1, "{\"b\":0}");
    }

    #[test]
    fn a_small_batch_in_a_large_buffer_is_kept_at_its_size() {
        let log = EventLog::open("").unwrap();
        let mut batch = Vec::with_capacity(1 << 20);
        batch.extend_from_slice(b"{\"a\":1}\n");
        let spare = log.append_batch_owned(batch);
        assert_eq!(
            spare.capacity(),
            1 << 20,
            "the core's next buffer keeps the room"
        );
        let ring = log.ring.lock().unwrap();
        let kept = &ring.events.back().unwrap().batch;
        assert!(kept.capacity() < 1024, "kept {} bytes", kept.capacity());
    }

    #[test]
    fn ring_and_file_get_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct/acct.jsonl");
        let log = EventLog::open(path.to_str().unwrap()).unwrap();
        let core = CoreAccounting::new(log.clone());
        for i in 0..3 {
            core.record(&AccountingEvent {
                kind: Some(EventType::Delivery),
                recipient: format!("r{i}@example.test").into(),
                ..Default::default()
            });
        }
        core.flush_now();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["type"], "delivery");
        assert_eq!(v["recipient"], "r0@example.test");
        let after = log.after(1, 10);
        assert_eq!(after.len(), 2);
        assert_eq!(after[0].0, 2);
    }

    #[test]
    fn lines_containing_keeps_the_latest_matches_in_order() {
        let log = EventLog::open("").unwrap();
        let core = CoreAccounting::new(log.clone());
        for i in 0..5 {
            core.record(&AccountingEvent {
                kind: Some(EventType::Transient),
                id: if i % 2 == 0 { "A-00" } else { "B-00" }.into(),
                attempt: i,
                ..Default::default()
            });
        }
        core.flush_now();
        let attempts = |lines: Vec<String>| -> Vec<u64> {
            lines
                .iter()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["attempt"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        assert_eq!(
            attempts(log.lines_containing("\"id\":\"A-00\"", 10)),
            [0, 2, 4]
        );
        assert_eq!(attempts(log.lines_containing("\"id\":\"A-00\"", 2)), [2, 4]);
        assert!(log.lines_containing("\"id\":\"C-00\"", 10).is_empty());
        assert!(log.lines_containing("\"id\":\"A-00\"", 0).is_empty());
        // Lines of several batches: each whole, in order.
        core.record(&AccountingEvent {
            kind: Some(EventType::Delivery),
            id: "A-00".into(),
            attempt: 9,
            ..Default::default()
        });
        core.flush_now();
        assert_eq!(
            attempts(log.lines_containing("\"id\":\"A-00\"", 10)),
            [0, 2, 4, 9]
        );
    }

    #[test]
    fn flushes_on_the_blocking_pool_keep_every_line_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.jsonl");
        let log = EventLog::open(path.to_str().unwrap()).unwrap();
        let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
        ex.run(async {
            let core = CoreAccounting::new(log.clone());
            for round in 0..3 {
                for i in 0..2 {
                    core.record(&AccountingEvent {
                        kind: Some(EventType::Reception),
                        recipient: format!("r{round}-{i}@example.test").into(),
                        ..Default::default()
                    });
                }
                core.flush().await;
            }
            core.flush().await; // nothing pending: nothing written
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let recipients: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["recipient"].to_string())
            .collect();
        assert_eq!(recipients.len(), 6);
        assert_eq!(recipients[0], "\"r0-0@example.test\"");
        assert_eq!(recipients[5], "\"r2-1@example.test\"");
        let ids: Vec<u64> = log.after(0, 100).iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    }
}
