//! volley-domains-bench: a burst of distinct destination domains through one core's queue state,
//! and what it leaves behind.
//!
//! One core's structures, driven through the daemon's own code on a simulated clock (one step = one
//! second): `Queues`, the `MessageTable` (`delivery::queue_handoff`, as `CoreDelivery` queues a
//! handoff) and the `QueueBoard` behind `GET /v1/queues`, fed by `Queues::upkeep` as
//! `delivery::publish_snapshot` does once a second, with its allocator collection.
//! 1. Steady load: `--steady-queues` domains each get one message a second, delivered the same
//!    second (connection opened, transaction taken, delivery counted, connection closed).
//! 2. RSS "before", and the cost of one second's upkeep + publish with those queues ever seen.
//! 3. A burst: `--domains` distinct new domains, one message each, `--burst-per-second` a second
//!    (steady load continuing), then all delivered, then `--idle-s` + a few seconds pass so the
//!    upkeep frees them.
//! 4. RSS "after" and the same per-second cost, now with a million queues ever seen. Also, for
//!    comparison, what the previous once-a-second publish (a sorted clone of every queue) cost at
//!    the burst's peak.
//!
//! Run in release: `cargo run --release -p volley-bench --bin volley-domains-bench`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use volley::delivery::{MessageTable, QueueBoard, queue_handoff, return_freed_memory};
use volley::envelope::MessageId;
use volley::queue::{QueueKey, QueuePolicy, Queues};
use volley::router::Handoff;
use volley::spool::RecordLocation;

/// mimalloc, as in the daemon, counting the bytes held by live allocations: what the structures
/// really keep, apart from what the allocator keeps around them.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to mimalloc.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const VMTA: &str = "vmta-1";
/// Real-time pauses before an RSS reading (see `settled_rss`).
const SETTLE_STEPS: u32 = 20;
const SETTLE_STEP_MS: u64 = 100;
/// The simulated epoch (any time after 2020).
const START_S: u64 = 1_790_000_000;

#[derive(Parser, Debug, Clone)]
#[command(about = "Pass a burst of distinct destination domains through one core's queues")]
struct Args {
    /// Distinct destination domains in the burst.
    #[arg(long, default_value_t = 1_000_000)]
    domains: u64,
    /// Domains that receive and deliver one message every second throughout.
    #[arg(long, default_value_t = 1_000)]
    steady_queues: u64,
    /// New domains queued per simulated second during the burst.
    #[arg(long, default_value_t = 50_000)]
    burst_per_second: u64,
    /// `[shaping] queue_idle_s`.
    #[arg(long, default_value_t = 300)]
    idle_s: u64,
    /// Seconds whose upkeep is timed for each per-second cost figure.
    #[arg(long, default_value_t = 200)]
    timed_seconds: usize,
}

/// One core's queue state on a simulated clock.
struct Core {
    queues: Queues,
    messages: MessageTable,
    board: QueueBoard,
    now_s: u64,
    seq: u64,
    steady: Vec<QueueKey>,
    /// The policy of every domain (the `*` entry of a configuration).
    policy: QueuePolicy,
}

impl Core {
    fn new(args: &Args) -> Core {
        let mut queues = Queues::new(QueuePolicy::default());
        queues.set_idle_s(args.idle_s);
        Core {
            queues,
            messages: MessageTable::default(),
            board: QueueBoard::new(1),
            now_s: START_S,
            seq: 0,
            policy: QueuePolicy {
                max_connections: 10,
                ..QueuePolicy::default()
            },
            steady: (0..args.steady_queues)
                .map(|n| QueueKey::new(VMTA, &format!("steady-{n}.example")))
                .collect(),
        }
    }

    /// Queues one message with one recipient for `key`, as a handoff from the router.
    fn queue_one(&mut self, key: &QueueKey) {
        // As `CoreDelivery::accept_handoff`: a new queue gets the configured policy.
        if self.queues.policy(key).is_none() {
            self.queues.set_policy(key, self.policy.clone());
        }
        self.seq += 1;
        let handoff = Handoff {
            id: MessageId {
                core: 0,
                seq: self.seq,
            },
            record: RecordLocation {
                core: 0,
                segment: (self.seq >> 16) as u32,
                offset: (self.seq & 0xffff) as u32 * 512,
            },
            vmta: Arc::from(&*key.vmta),
            domain: Arc::from(&*key.domain),
            customer: Arc::from(""),
            recipients: vec![(0, 0)],
            not_before_s: 0,
            tls_optional: false,
        };
        queue_handoff(
            &mut self.queues,
            &mut self.messages,
            key,
            &handoff,
            self.now_s,
        );
    }

    /// Delivers what `key` has ready over one connection, as `delivery::connection` does.
    fn deliver(&mut self, key: &QueueKey) {
        if !self.queues.try_open_connection(key) {
            return;
        }
        loop {
            let batch = self.queues.take_transaction(key, 100);
            if batch.is_empty() {
                break;
            }
            self.queues.record_delivered(key, batch.len() as u64);
            for item in batch {
                self.messages.release(item.message);
            }
        }
        self.queues.connection_closed(key);
    }

    /// The steady load of one second.
    fn steady_second(&mut self) {
        let steady = std::mem::take(&mut self.steady);
        for key in &steady {
            self.queue_one(key);
            self.deliver(key);
        }
        self.steady = steady;
    }

    /// Ends the second: the upkeep and publish of `publish_snapshot`; returns what they took.
    fn end_second(&mut self) -> Duration {
        let start = Instant::now();
        let upkeep = self.queues.upkeep(self.now_s);
        self.board.apply(0, upkeep.updated, &upkeep.removed);
        return_freed_memory();
        let took = start.elapsed();
        self.now_s += 1;
        took
    }

    /// Per-second upkeep cost over `seconds` steady seconds: (median, 99th percentile).
    fn timed_seconds(&mut self, seconds: usize) -> (Duration, Duration) {
        let mut took: Vec<Duration> = (0..seconds)
            .map(|_| {
                self.steady_second();
                self.end_second()
            })
            .collect();
        took.sort_unstable();
        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
        (at(0.5), at(0.99))
    }
}

/// Resident memory (VmRSS) in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

unsafe extern "C" {
    /// mimalloc's own: frees its cached empty pages and returns free memory to the OS.
    fn mi_collect(force: bool);
}

/// RSS after mimalloc was asked to give back everything it can (a forced collection; the daemon
/// only runs the non-forced one); returns (RSS, how long the collection took).
fn collected_rss() -> (u64, Duration) {
    let start = Instant::now();
    // SAFETY: mimalloc is linked (it is the global allocator); the call takes no pointer.
    unsafe { mi_collect(true) };
    let took = start.elapsed();
    (rss(), took)
}

/// RSS once the allocator has had the real time it takes to give freed pages back: the simulated
/// seconds last microseconds here, while mimalloc returns memory after a delay in real time (its
/// purge delay), at the once-a-second collection of `end_second`.
fn settled_rss(core: &mut Core) -> u64 {
    for _ in 0..SETTLE_STEPS {
        std::thread::sleep(Duration::from_millis(SETTLE_STEP_MS));
        core.steady_second();
        core.end_second();
    }
    rss()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn burst_key(n: u64) -> QueueKey {
    QueueKey::new(VMTA, &format!("user-domain-{n:07}.example"))
}

fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let mut core = Core::new(&args);

    // 1-2. Steady load, then the "before" figures.
    for _ in 0..30 {
        core.steady_second();
        core.end_second();
    }
    let rss_before = settled_rss(&mut core);
    let heap_before = LIVE_BYTES.load(Ordering::Relaxed);
    let (rss_before_collected, _) = collected_rss();
    let (before_median, before_p99) = core.timed_seconds(args.timed_seconds);
    let live_before = core.queues.queue_count();

    // 3. The burst: queued...
    let mut next = 0;
    while next < args.domains {
        let end = (next + args.burst_per_second).min(args.domains);
        for n in next..end {
            core.queue_one(&burst_key(n));
        }
        next = end;
        core.steady_second();
        core.end_second();
    }
    let live_peak = core.queues.queue_count();
    let rss_peak = rss();
    let heap_peak = LIVE_BYTES.load(Ordering::Relaxed);
    let start = Instant::now();
    let full = core.queues.snapshot();
    let full_snapshot = start.elapsed();
    let listed_peak = core.board.len();
    drop(full);

    // ... drained ...
    let mut next = 0;
    while next < args.domains {
        let end = (next + args.burst_per_second).min(args.domains);
        for n in next..end {
            core.deliver(&burst_key(n));
        }
        next = end;
        core.steady_second();
        core.end_second();
    }
    // ... and idled out.
    for _ in 0..args.idle_s + 3 {
        core.steady_second();
        core.end_second();
    }
    let live_after = core.queues.queue_count();
    let listed_after = core.board.len();
    let rss_after = settled_rss(&mut core);
    let heap_after = LIVE_BYTES.load(Ordering::Relaxed);
    let (rss_after_collected, collect_took) = collected_rss();
    let (after_median, after_p99) = core.timed_seconds(args.timed_seconds);

    let ratio = rss_after as f64 / rss_before.max(1) as f64;
    let ratio_collected = rss_after_collected as f64 / rss_before_collected.max(1) as f64;
    println!(
        "burst: {} distinct domains, {} a second; steady: {} domains, one message each a second; queue_idle_s {}",
        args.domains, args.burst_per_second, args.steady_queues, args.idle_s
    );
    println!(
        "live queues: before {live_before}, at the peak {live_peak} (listed {listed_peak}), after {live_after} (listed {listed_after})"
    );
    println!(
        "RSS: before {:.1} MiB, at the peak {:.1} MiB, after the burst drained and idled out {:.1} MiB: {ratio:.2}x before (target <= 1.2x: {})",
        mib(rss_before),
        mib(rss_peak),
        mib(rss_after),
        if ratio <= 1.2 { "met" } else { "MISSED" }
    );
    println!(
        "RSS with a forced mimalloc collection (mi_collect, {:.1} ms after the burst): before {:.1} MiB, after {:.1} MiB: {ratio_collected:.2}x",
        collect_took.as_secs_f64() * 1e3,
        mib(rss_before_collected),
        mib(rss_after_collected),
    );
    println!(
        "heap in live allocations: before {:.1} MiB, at the peak {:.1} MiB ({} B per burst queue), after {:.1} MiB",
        mib(heap_before as u64),
        mib(heap_peak as u64),
        (heap_peak.saturating_sub(heap_before) as u64) / args.domains.max(1),
        mib(heap_after as u64)
    );
    println!(
        "upkeep + publish per second, {} queues changing: {:.1} us median, {:.1} us p99 with {} queues ever seen; {:.1} us median, {:.1} us p99 with {} ever seen",
        args.steady_queues,
        before_median.as_secs_f64() * 1e6,
        before_p99.as_secs_f64() * 1e6,
        live_before,
        after_median.as_secs_f64() * 1e6,
        after_p99.as_secs_f64() * 1e6,
        args.domains + args.steady_queues,
    );
    println!(
        "for comparison, the previous publish (sorted clone of every queue) at the peak: {:.1} ms per second",
        full_snapshot.as_secs_f64() * 1e3
    );
    println!("wall time {:.1} s", started.elapsed().as_secs_f64());
    if live_after as u64 != args.steady_queues || listed_after as u64 != args.steady_queues {
        eprintln!("volley-domains-bench: the burst's queues were not all freed");
        std::process::exit(1);
    }
}
