//! What this node holds of one customer's cluster-wide quota: the unused part of its leases (plan
//! messages for one hour window, credits), shared lock-free by the cores like the counters are.
//! Redis is asked only when a lease runs dry; see `limits::shared` and `cluster::quota`.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// The smallest and largest block a node asks for. The block doubles while leases run dry within
/// [`GROW_WITHIN_MS`] and halves when one lasted longer than [`SHRINK_AFTER_MS`]: at full speed
/// a node asks Redis about once per `MAX_LEASE` messages, a slow sender holds little.
pub const MIN_LEASE: u32 = 8;
pub const MAX_LEASE: u32 = 1_024;
const FIRST_LEASE: u32 = 64;
const GROW_WITHIN_MS: u64 = 1_000;
const SHRINK_AFTER_MS: u64 = 10_000;

fn pack(window: u32, count: u32) -> u64 {
    (u64::from(window) << 32) | u64::from(count)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// Leased plan messages for one hour window, in one word (the window in the high half).
#[derive(Debug, Default)]
struct WindowLeft(AtomicU64);

impl WindowLeft {
    fn take(&self, window: u32) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (w, left) = unpack(word);
                (w == window && left > 0).then(|| pack(w, left - 1))
            })
            .is_ok()
    }

    /// Adds `n` for `window`; what was left of another window is returned (to give back).
    fn add(&self, window: u32, n: u32) -> Option<(u32, u32)> {
        let mut old = None;
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (w, left) = unpack(word);
                if w == window {
                    old = None;
                    Some(pack(w, left.saturating_add(n)))
                } else {
                    old = (left > 0).then_some((w, left));
                    Some(pack(window, n))
                }
            });
        old
    }

    /// Empties it: (window, what was left).
    fn take_all(&self) -> (u32, u32) {
        let word = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                Some(pack(unpack(word).0, 0))
            })
            .unwrap_or(0);
        unpack(word)
    }

    fn left(&self) -> (u32, u32) {
        unpack(self.0.load(Ordering::Acquire))
    }
}

/// One customer's leases and what the cluster said last.
#[derive(Debug)]
pub struct Lease {
    plan: WindowLeft,
    credits: AtomicU64,
    /// The hour whose plan was used up when the credits were granted.
    credits_for_hour: AtomicU32,
    /// The block to ask for next.
    want: AtomicU32,
    last_refill_ms: AtomicU64,
    last_take_ms: AtomicU64,
    /// Until when (unix ms) MAIL is refused without asking: Redis said the plan and credits are
    /// used up; a second later another node may have given some back.
    exhausted_until_ms: AtomicU64,
    exhausted_by_day: AtomicBool,
    /// Accepted while Redis was down (plan window and count, credits), to add once it is back.
    outage_plan: WindowLeft,
    outage_credits: AtomicU64,
    /// The cluster's totals at the last answer: hour, day, credits spent.
    pub cluster_hour: AtomicU64,
    pub cluster_day: AtomicU64,
    pub cluster_credits_spent: AtomicU64,
}

impl Default for Lease {
    fn default() -> Lease {
        Lease {
            plan: WindowLeft::default(),
            credits: AtomicU64::new(0),
            credits_for_hour: AtomicU32::new(0),
            want: AtomicU32::new(FIRST_LEASE),
            last_refill_ms: AtomicU64::new(0),
            last_take_ms: AtomicU64::new(0),
            exhausted_until_ms: AtomicU64::new(0),
            exhausted_by_day: AtomicBool::new(false),
            outage_plan: WindowLeft::default(),
            outage_credits: AtomicU64::new(0),
            cluster_hour: AtomicU64::new(0),
            cluster_day: AtomicU64::new(0),
            cluster_credits_spent: AtomicU64::new(0),
        }
    }
}

/// What a node gives back: plan messages of one window and credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unused {
    pub window: u32,
    pub plan: u32,
    pub credits: u32,
}

impl Lease {
    /// One plan message of `hour` from the lease.
    pub fn take_plan(&self, hour: u32, now_ms: u64) -> bool {
        let taken = self.plan.take(hour);
        if taken {
            self.last_take_ms.store(now_ms, Ordering::Relaxed);
        }
        taken
    }

    /// One credit from the lease, if its credits were granted in `hour` (the plan was used up in
    /// that hour); in a new hour the plan may have room again, so Redis is asked first.
    pub fn take_credit(&self, hour: u32, now_ms: u64) -> bool {
        if self.credits_for_hour.load(Ordering::Acquire) != hour {
            return false;
        }
        let taken = self
            .credits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
            .is_ok();
        if taken {
            self.last_take_ms.store(now_ms, Ordering::Relaxed);
        }
        taken
    }

    /// A refund: the message was not spooled after all.
    pub fn put_back_plan(&self, hour: u32) {
        if self.plan.left().0 == hour {
            let _ = self.plan.add(hour, 1);
        }
    }

    pub fn put_back_credit(&self) {
        self.credits.fetch_add(1, Ordering::AcqRel);
    }

    /// The block to ask for now, adapting to how fast the last one went.
    pub fn next_want(&self, now_ms: u64) -> u32 {
        let last = self.last_refill_ms.swap(now_ms, Ordering::Relaxed);
        let want = self.want.load(Ordering::Relaxed);
        if last == 0 {
            return want;
        }
        let since = now_ms.saturating_sub(last);
        let next = if since < GROW_WITHIN_MS {
            want.saturating_mul(2).min(MAX_LEASE)
        } else if since > SHRINK_AFTER_MS {
            (want / 2).max(MIN_LEASE)
        } else {
            want
        };
        self.want.store(next, Ordering::Relaxed);
        next
    }

    /// Adds a grant; returns what was left of an older window (to give back to Redis): plan
    /// messages of another hour, and credits granted in another hour once the plan has room again.
    pub fn add_grant(&self, hour: u32, plan: u32, credits: u32) -> Option<Unused> {
        let mut unused = Unused {
            window: hour,
            plan: 0,
            credits: 0,
        };
        if credits > 0 {
            self.credits.fetch_add(u64::from(credits), Ordering::AcqRel);
            self.credits_for_hour.store(hour, Ordering::Release);
        } else if plan > 0 && self.credits_for_hour.load(Ordering::Acquire) != hour {
            let old = self.credits.swap(0, Ordering::AcqRel);
            unused.credits = u32::try_from(old).unwrap_or(u32::MAX);
        }
        if plan > 0
            && let Some((window, left)) = self.plan.add(hour, plan)
        {
            unused.window = window;
            unused.plan = left;
        }
        (unused.plan > 0 || unused.credits > 0).then_some(unused)
    }

    /// Everything unused, when the lease has been idle since `idle_since_ms` (or always when
    /// `idle_since_ms` is `u64::MAX`, at stop).
    pub fn take_unused_if_idle(&self, idle_since_ms: u64) -> Option<Unused> {
        if self.last_take_ms.load(Ordering::Relaxed) > idle_since_ms {
            return None;
        }
        let (window, plan) = self.plan.take_all();
        let credits = self.credits.swap(0, Ordering::AcqRel);
        let credits = u32::try_from(credits).unwrap_or(u32::MAX);
        (plan > 0 || credits > 0).then_some(Unused {
            window,
            plan,
            credits,
        })
    }

    /// Redis said nothing is left; `day` when the daily limit was the one reached.
    pub fn mark_exhausted(&self, until_ms: u64, day: bool) {
        self.exhausted_by_day.store(day, Ordering::Relaxed);
        self.exhausted_until_ms.store(until_ms, Ordering::Relaxed);
    }

    /// `Some(day?)` while the last answer said nothing is left.
    pub fn exhausted(&self, now_ms: u64) -> Option<bool> {
        (now_ms < self.exhausted_until_ms.load(Ordering::Relaxed))
            .then(|| self.exhausted_by_day.load(Ordering::Relaxed))
    }

    /// Holds any plan or credits now.
    pub fn holds_any(&self, hour: u32) -> bool {
        let (w, left) = self.plan.left();
        (w == hour && left > 0) || self.credits.load(Ordering::Relaxed) > 0
    }

    /// Counts one message accepted while Redis was down.
    pub fn count_outage(&self, hour: u32, credit: bool) -> Option<Unused> {
        if credit {
            self.outage_credits.fetch_add(1, Ordering::AcqRel);
            return None;
        }
        self.outage_plan.add(hour, 1).map(|(window, plan)| Unused {
            window,
            plan,
            credits: 0,
        })
    }

    /// Credits spent while Redis was down (not yet added to Redis).
    pub fn outage_credits(&self) -> u64 {
        self.outage_credits.load(Ordering::Relaxed)
    }

    /// What was accepted while Redis was down, emptied (to add to Redis).
    pub fn take_outage(&self) -> Option<Unused> {
        let (window, plan) = self.outage_plan.take_all();
        let credits = self.outage_credits.swap(0, Ordering::AcqRel);
        (plan > 0 || credits > 0).then_some(Unused {
            window,
            plan,
            credits: u32::try_from(credits).unwrap_or(u32::MAX),
        })
    }

    /// Remembers the cluster's totals from an answer.
    pub fn note_totals(&self, hour: u64, day: u64, credits_spent: u64) {
        self.cluster_hour.store(hour, Ordering::Relaxed);
        self.cluster_day.store(day, Ordering::Relaxed);
        self.cluster_credits_spent
            .store(credits_spent, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_spent_then_empty_and_a_new_window_returns_the_old_rest() {
        let lease = Lease::default();
        assert!(!lease.take_plan(5, 0));
        assert_eq!(lease.add_grant(5, 2, 1), None);
        assert!(lease.take_plan(5, 0) && lease.take_plan(5, 0));
        assert!(!lease.take_plan(5, 0), "two leased, two taken");
        assert!(lease.take_credit(5, 0) && !lease.take_credit(5, 0));
        assert_eq!(lease.add_grant(5, 3, 0), None);
        assert!(lease.take_plan(5, 0));
        assert!(!lease.take_plan(6, 0), "another window");
        let old = lease.add_grant(6, 4, 0).expect("the rest of hour 5");
        assert_eq!((old.window, old.plan), (5, 2));
        lease.put_back_plan(5);
        assert!(
            lease.take_plan(6, 0),
            "a refund of an old window is dropped"
        );
    }

    #[test]
    fn credits_wait_while_a_new_hour_may_have_plan_room() {
        let lease = Lease::default();
        lease.add_grant(5, 0, 4);
        assert!(lease.take_credit(5, 0));
        assert!(!lease.take_credit(6, 0), "hour 6: ask for plan first");
        let back = lease.add_grant(6, 10, 0).expect("the old credits go back");
        assert_eq!((back.plan, back.credits), (0, 3));
        assert!(lease.take_plan(6, 0));
    }

    #[test]
    fn only_an_idle_lease_is_given_back() {
        let lease = Lease::default();
        lease.add_grant(7, 10, 3);
        assert!(lease.take_plan(7, 1_000));
        assert_eq!(lease.take_unused_if_idle(500), None, "used after 500");
        let unused = lease.take_unused_if_idle(1_000).unwrap();
        assert_eq!(
            unused,
            Unused {
                window: 7,
                plan: 9,
                credits: 3
            }
        );
        assert!(!lease.holds_any(7));
    }

    #[test]
    fn the_block_grows_when_leases_run_dry_fast_and_shrinks_when_slow() {
        let lease = Lease::default();
        let first = lease.next_want(100_000);
        assert_eq!(
            first, FIRST_LEASE,
            "the first refill after a long time keeps the start"
        );
        assert_eq!(lease.next_want(100_100), FIRST_LEASE * 2);
        let mut want = 0;
        for i in 0..20 {
            want = lease.next_want(100_200 + i);
        }
        assert_eq!(want, MAX_LEASE);
        assert_eq!(lease.next_want(200_000), MAX_LEASE / 2);
    }

    #[test]
    fn outage_usage_is_counted_and_handed_over_once() {
        let lease = Lease::default();
        for _ in 0..3 {
            assert_eq!(lease.count_outage(9, false), None);
        }
        lease.count_outage(9, true);
        assert_eq!(
            lease.take_outage(),
            Some(Unused {
                window: 9,
                plan: 3,
                credits: 1
            })
        );
        assert_eq!(lease.take_outage(), None);
    }
}
