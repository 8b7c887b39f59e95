//! Once a second each core runs its queues' upkeep and publishes what changed: the queues that
//! changed since the last second replace their entry on the board `GET /v1/queues` reads, the
//! queues freed leave it. The cost follows the queues that changed, not the queues that exist or
//! ever existed. The same pass sets the `volley_queues` and `volley_oldest_ready_seconds` gauges,
//! warns about stuck queues, lets MX rollup forget what it kept for freed queues, and lets the
//! allocator return what was freed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::DeliveryCore;
use super::backoff_watch;
use crate::config::Config;
use crate::metrics::labelled::{LabelNames, Publish};
use crate::placement::IMPLICIT_VMTA;
use crate::queue::{QueueKey, QueueSnapshot, STUCK_AFTER_S, Stuck};

/// Stuck queues named in the log per core and second at most; the rest are counted in one line.
pub const STUCK_WARNINGS_PER_UPKEEP_MAX: usize = 10;

/// Every core's live queues as the API lists them, by (VMTA, domain). Each core applies its own
/// changes about once a second; the API reads them all. Locked once per publish and per API call,
/// never per message. An entry lives as long as its queue: the board shrinks as queues are freed.
pub struct QueueBoard {
    cores: Mutex<Vec<CoreBoard>>,
}

/// One core's queues by VMTA, then domain: found by `&str`, so updating a listed queue allocates
/// no key.
type CoreBoard = BTreeMap<String, BTreeMap<String, QueueSnapshot>>;

impl QueueBoard {
    pub fn new(cores: usize) -> QueueBoard {
        QueueBoard {
            cores: Mutex::new(vec![BTreeMap::new(); cores]),
        }
    }

    /// Applies one core's changes: each updated queue replaces its entry, then freed ones leave.
    pub fn apply(&self, core: usize, updated: Vec<QueueSnapshot>, removed: &[QueueKey]) {
        if updated.is_empty() && removed.is_empty() {
            return;
        }
        if let Ok(mut cores) = self.cores.lock()
            && let Some(vmtas) = cores.get_mut(core)
        {
            for q in updated {
                let domains = match vmtas.get_mut(q.vmta.as_str()) {
                    Some(domains) => domains,
                    None => vmtas.entry(q.vmta.clone()).or_default(),
                };
                match domains.get_mut(q.domain.as_str()) {
                    Some(entry) => *entry = q,
                    None => {
                        domains.insert(q.domain.clone(), q);
                    }
                }
            }
            for key in removed {
                if let Some(domains) = vmtas.get_mut(&*key.vmta) {
                    domains.remove(&*key.domain);
                    if domains.is_empty() {
                        vmtas.remove(&*key.vmta);
                    }
                }
            }
        }
    }

    /// Every live queue of every core, sorted by VMTA then domain.
    pub fn all(&self) -> Vec<QueueSnapshot> {
        let mut all: Vec<QueueSnapshot> = self
            .cores
            .lock()
            .map(|c| {
                c.iter()
                    .flat_map(|vmtas| vmtas.values())
                    .flat_map(|domains| domains.values())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        all.sort_by(|a, b| (&a.vmta, &a.domain).cmp(&(&b.vmta, &b.domain)));
        all
    }

    /// Queues on the board.
    pub fn len(&self) -> usize {
        self.cores
            .lock()
            .map(|c| {
                c.iter()
                    .flat_map(|vmtas| vmtas.values())
                    .map(BTreeMap::len)
                    .sum()
            })
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// This core's once-a-second pass over its queues (see the module comment).
pub fn publish_snapshot(core: &DeliveryCore) {
    let now_s = crate::clock::unix_s();
    let idle_s = core.config().shaping.queue_idle_s;
    let upkeep = {
        let mut queues = core.delivery.queues.borrow_mut();
        queues.set_idle_s(idle_s);
        queues.upkeep(now_s)
    };
    backoff_watch::after_upkeep(core, upkeep.backoff_left);
    for key in &upkeep.removed {
        core.placement.mx_rollup.forget(&key.domain);
    }
    core.placement.mx_rollup.sweep(now_s);
    let counters = core.counters();
    counters.queues.store(upkeep.live as i64, Ordering::Relaxed);
    // A draining node delivers nothing: its ready mail waits for the drain (`drain`), not for a
    // connection, so it is neither stuck nor starved.
    let draining = core.node.drain.is_draining();
    let oldest_ready_s = if draining { 0 } else { upkeep.oldest_ready_s };
    counters
        .oldest_ready_seconds
        .store(oldest_ready_s as i64, Ordering::Relaxed);
    if !draining {
        warn_stuck(core, &upkeep.stuck);
        for key in upkeep.starved {
            core.delivery.open_one_more(key);
        }
    }
    if !upkeep.removed.is_empty() {
        log::debug!(
            "{} idle queues freed, {} left",
            upkeep.removed.len(),
            upkeep.live
        );
    }
    core.queue_board
        .apply(core.index, upkeep.updated, &upkeep.removed);
    publish_labels(core, now_s);
    return_freed_memory();
}

/// Publishes this core's outcomes and queued figures by VMTA, customer and destination.
fn publish_labels(core: &DeliveryCore, now_s: u64) {
    let config = core.config();
    let messages = core.delivery.messages.borrow();
    core.node.metrics.labels.publish(
        core.index,
        &mut core.delivery.labels.borrow_mut(),
        messages.customers().queued(),
        Publish {
            now_s,
            top_destinations: config.metrics.top_destinations,
            generation: core.generation(),
            names: || label_names(&config),
        },
    );
}

/// The VMTAs and customers the labelled metrics name under the running configuration: the
/// configured ones (the implicit VMTA when none is).
fn label_names(config: &Config) -> LabelNames {
    let mut vmtas: HashSet<String> = config.vmtas.iter().map(|v| v.name.clone()).collect();
    if vmtas.is_empty() {
        vmtas.insert(IMPLICIT_VMTA.to_string());
    }
    LabelNames {
        vmtas,
        customers: config.customers.iter().map(|c| c.name.clone()).collect(),
    }
}

/// Lets the allocator give back to the OS what was freed. mimalloc returns freed pages only once
/// its purge delay has passed and something makes it look: after a burst of domains was freed,
/// the process could otherwise keep hundreds of MiB it no longer uses (volley-domains-bench:
/// 366 MiB left of a 1.2 GiB peak without this, 23 MiB with it). A non-forced collection of this
/// thread's heap costs a few µs; it costs more (about 5 ms after a million queues were freed)
/// only when it returns memory, work the allocator would otherwise do inside a later allocation.
pub fn return_freed_memory() {
    unsafe extern "C" {
        fn mi_collect(force: bool);
    }
    // Naming the crate links mimalloc, and so `mi_collect`, into every binary of this crate.
    let _ = &mimalloc::MiMalloc;
    // SAFETY: a C function of the allocator linked in; it takes no pointer and reads no Rust state.
    unsafe { mi_collect(false) }
}

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, the 16th option of `mi_option_e`).
const MI_OPTION_PURGE_DELAY: i32 = 15;

unsafe extern "C" {
    fn mi_option_set(option: i32, value: std::ffi::c_long);
    fn mi_option_get(option: i32) -> std::ffi::c_long;
}

/// Sets how long (ms; -1 never) the allocator keeps freed memory before giving it back
/// (`[server] allocator_purge_delay_ms`). Process-wide; call before the cores start.
pub fn set_allocator_purge_delay(ms: i64) {
    let _ = &mimalloc::MiMalloc;
    // SAFETY: C functions of the allocator linked in; they take no pointer.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, ms as std::ffi::c_long) }
}

/// The allocator's purge delay now (ms).
pub fn allocator_purge_delay() -> std::ffi::c_long {
    let _ = &mimalloc::MiMalloc;
    // SAFETY: as above.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

/// One WARN line per stuck queue (each at most once per `STUCK_AFTER_S`, at most
/// `STUCK_WARNINGS_PER_UPKEEP_MAX` a second); a stuck queue with no connection at all has lost
/// its wake-up, so the scheduler is woken for it.
fn warn_stuck(core: &DeliveryCore, stuck: &[Stuck]) {
    for line in stuck_warnings(stuck) {
        log::warn!("{line}");
    }
    for s in stuck {
        if s.connections == 0 {
            core.delivery.wake_queue(&s.key);
        }
    }
}

/// The WARN lines for `stuck`: one per queue up to `STUCK_WARNINGS_PER_UPKEEP_MAX`, then a count.
fn stuck_warnings(stuck: &[Stuck]) -> Vec<String> {
    let mut lines: Vec<String> = stuck
        .iter()
        .take(STUCK_WARNINGS_PER_UPKEEP_MAX)
        .map(|s| {
            format!(
                "queue {}: stuck: a ready recipient has waited {} s (over {STUCK_AFTER_S} s) with \
                 {} of {} connections open; {} ready",
                s.key, s.waited_s, s.connections, s.max_connections, s.ready
            )
        })
        .collect();
    let more = stuck.len().saturating_sub(STUCK_WARNINGS_PER_UPKEEP_MAX);
    if more > 0 {
        lines.push(format!(
            "{more} more queues stuck (over {STUCK_AFTER_S} s with connections free)"
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueueState, QueueStats};

    fn snapshot(vmta: &str, domain: &str, ready: usize) -> QueueSnapshot {
        QueueSnapshot {
            vmta: vmta.into(),
            domain: domain.into(),
            ready,
            deferred: 0,
            state: QueueState::Active,
            connections: 0,
            next_attempt_s: None,
            stats: QueueStats::default(),
            last_deferral: None,
            backoff_level: 0,
            max_connections: 20,
        }
    }

    #[test]
    fn stuck_queues_get_one_line_each_up_to_the_cap_then_a_count() {
        let stuck: Vec<Stuck> = (0..STUCK_WARNINGS_PER_UPKEEP_MAX + 3)
            .map(|n| Stuck {
                key: QueueKey::new("v1", &format!("d{n}.test")),
                waited_s: 61,
                ready: 4,
                connections: 1,
                max_connections: 20,
            })
            .collect();
        let lines = stuck_warnings(&stuck);
        assert_eq!(lines.len(), STUCK_WARNINGS_PER_UPKEEP_MAX + 1);
        assert_eq!(
            lines[0],
            "queue v1/d0.test: stuck: a ready recipient has waited 61 s (over 60 s) with 1 of 20 \
             connections open; 4 ready"
        );
        assert_eq!(
            lines[STUCK_WARNINGS_PER_UPKEEP_MAX],
            "3 more queues stuck (over 60 s with connections free)"
        );
        assert!(stuck_warnings(&[]).is_empty());
    }

    #[test]
    fn the_board_applies_changes_and_removals_per_core() {
        let board = QueueBoard::new(2);
        board.apply(
            0,
            vec![snapshot("v", "b.test", 1), snapshot("v", "a.test", 2)],
            &[],
        );
        board.apply(1, vec![snapshot("v", "c.test", 3)], &[]);
        let domains = |b: &QueueBoard| {
            b.all()
                .into_iter()
                .map(|q| (q.domain, q.ready))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            domains(&board),
            [
                ("a.test".into(), 2),
                ("b.test".into(), 1),
                ("c.test".into(), 3)
            ]
        );
        // Only what changed is sent: a.test updated, b.test freed, c.test (other core) untouched.
        board.apply(
            0,
            vec![snapshot("v", "a.test", 0)],
            &[QueueKey::new("v", "b.test")],
        );
        assert_eq!(
            domains(&board),
            [("a.test".into(), 0), ("c.test".into(), 3)]
        );
        board.apply(1, Vec::new(), &[QueueKey::new("v", "c.test")]);
        board.apply(0, Vec::new(), &[QueueKey::new("v", "a.test")]);
        assert!(board.is_empty());
    }
}
