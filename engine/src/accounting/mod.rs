//! The accounting log: one JSON line per reception and per delivery outcome (interface.md). Each core
//! buffers its lines and flushes them in batches, off the reactor thread, to the log file (O_APPEND,
//! one write per batch, so cores never interleave inside a line) and to the bounded in-memory ring
//! behind `GET /v1/events`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Reception,
    Delivery,
    Transient,
    Bounce,
    Expiration,
}

/// One accounting record; empty strings and zeros are written as they are, so every line has
/// every field.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AccountingEvent {
    #[serde(rename = "type")]
    pub kind: Option<EventType>,
    pub time: String,
    pub id: String,
    pub customer: String,
    pub vmta: String,
    pub source_ip: String,
    pub sender: String,
    pub recipient: String,
    pub domain: String,
    pub mx: String,
    pub response: String,
    pub enhanced_code: String,
    pub bounce_category: String,
    pub attempt: u32,
    pub size_bytes: u64,
    pub queue_ms: u64,
}

/// Now, as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Events kept for the API, at most.
const RING_EVENTS_MAX: usize = 100_000;

/// What every core shares: the file and the ring. Locked once per flushed batch, never per event.
pub struct EventLog {
    file: Option<Mutex<File>>,
    ring: Mutex<Ring>,
}

struct Ring {
    next_id: u64,
    events: VecDeque<(u64, Arc<str>)>,
}

impl EventLog {
    pub fn open(path: &str) -> std::io::Result<Arc<EventLog>> {
        let file = if path.is_empty() {
            None
        } else {
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)?;
            }
            Some(Mutex::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            ))
        };
        Ok(Arc::new(EventLog {
            file,
            ring: Mutex::new(Ring {
                next_id: 1,
                events: VecDeque::new(),
            }),
        }))
    }

    /// Appends a batch of JSON lines (each ending in '\n').
    pub fn append_batch(&self, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        if let Some(file) = &self.file {
            let batch: String = lines.concat();
            if let Ok(mut f) = file.lock()
                && let Err(e) = f.write_all(batch.as_bytes())
            {
                log::error!("accounting log write failed: {e}");
            }
        }
        if let Ok(mut ring) = self.ring.lock() {
            for line in lines {
                let id = ring.next_id;
                ring.next_id += 1;
                ring.events
                    .push_back((id, Arc::from(line.trim_end_matches('\n'))));
                if ring.events.len() > RING_EVENTS_MAX {
                    ring.events.pop_front();
                }
            }
        }
    }

    /// Events with an id above `after`, oldest first, at most `limit`, as `{"event_id": n, ...}`.
    pub fn after(&self, after: u64, limit: usize) -> Vec<(u64, Arc<str>)> {
        let Ok(ring) = self.ring.lock() else {
            return Vec::new();
        };
        let start = ring.events.partition_point(|(id, _)| *id <= after);
        ring.events
            .iter()
            .skip(start)
            .take(limit)
            .cloned()
            .collect()
    }
}

/// A core's buffer of lines not yet flushed.
pub struct CoreAccounting {
    log: Arc<EventLog>,
    pending: std::cell::RefCell<Vec<String>>,
}

/// Lines buffered before a flush is forced.
const BATCH_EVENTS_MAX: usize = 4096;

impl CoreAccounting {
    pub fn new(log: Arc<EventLog>) -> CoreAccounting {
        CoreAccounting {
            log,
            pending: Default::default(),
        }
    }

    pub fn record(&self, event: &AccountingEvent) {
        let mut line = serde_json::to_string(event).unwrap_or_default();
        line.push('\n');
        let full = {
            let mut pending = self.pending.borrow_mut();
            pending.push(line);
            pending.len() >= BATCH_EVENTS_MAX
        };
        if full {
            self.flush_now();
        }
    }

    /// Writes what is pending from the calling thread (used at stop and when a batch is full).
    pub fn flush_now(&self) {
        let lines = std::mem::take(&mut *self.pending.borrow_mut());
        self.log.append_batch(&lines);
    }

    /// Writes what is pending on glommio's blocking pool, so a slow disk never stalls the reactor.
    pub async fn flush(&self) {
        let lines = std::mem::take(&mut *self.pending.borrow_mut());
        if lines.is_empty() {
            return;
        }
        let log = self.log.clone();
        glommio::executor()
            .spawn_blocking(move || log.append_batch(&lines))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_and_file_get_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct/acct.jsonl");
        let log = EventLog::open(path.to_str().unwrap()).unwrap();
        let core = CoreAccounting::new(log.clone());
        for i in 0..3 {
            core.record(&AccountingEvent {
                kind: Some(EventType::Delivery),
                recipient: format!("r{i}@example.test"),
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
}
