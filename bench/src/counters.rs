//! Live counters: each core writes only its own cache-line-padded slot; a reporter thread sums.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One core's counters (own cache line, so cores never contend).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreCounters {
    /// Messages that completed (any verdict).
    pub messages: AtomicU64,
    /// Messages accepted with 250.
    pub accepted: AtomicU64,
    /// Connections opened so far.
    pub connections_opened: AtomicU64,
    /// Connections closed so far.
    pub connections_closed: AtomicU64,
}

impl CoreCounters {
    /// Adds one to `counter` (only this core writes it, so a plain load+store would do; this is
    /// as cheap on x86 and obviously right).
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Totals over every core.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    /// Sum of [`CoreCounters::messages`].
    pub messages: u64,
    /// Sum of [`CoreCounters::accepted`].
    pub accepted: u64,
    /// Sum of [`CoreCounters::connections_opened`].
    pub connections_opened: u64,
    /// Sum of [`CoreCounters::connections_closed`].
    pub connections_closed: u64,
}

/// The counters of every core.
#[derive(Debug)]
pub struct Counters {
    cores: Box<[CoreCounters]>,
}

impl Counters {
    /// Counters for `cores` cores.
    pub fn new(cores: usize) -> Arc<Counters> {
        Arc::new(Counters {
            cores: (0..cores.max(1)).map(|_| CoreCounters::default()).collect(),
        })
    }

    /// The slot of core `index` (clamped to the last one).
    pub fn core(&self, index: usize) -> &CoreCounters {
        let last = self.cores.len() - 1;
        &self.cores[index.min(last)]
    }

    /// Sums every core.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in self.cores.iter() {
            t.messages += c.messages.load(Ordering::Relaxed);
            t.accepted += c.accepted.load(Ordering::Relaxed);
            t.connections_opened += c.connections_opened.load(Ordering::Relaxed);
            t.connections_closed += c.connections_closed.load(Ordering::Relaxed);
        }
        t
    }
}

/// Starts a thread that calls `line(totals, previous, elapsed_since_start, interval)` every
/// `interval` until `stop` is set, printing what it returns on stderr.
pub fn spawn_reporter(
    counters: Arc<Counters>,
    interval: Duration,
    stop: Arc<AtomicBool>,
    line: impl Fn(Totals, Totals, Duration, Duration) -> String + Send + 'static,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut previous = counters.totals();
        let mut next = start + interval;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            let totals = counters.totals();
            eprintln!("{}", line(totals, previous, now - start, interval));
            previous = totals;
            next += interval;
        }
    })
}
