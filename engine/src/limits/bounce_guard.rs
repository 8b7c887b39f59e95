//! The bounce-rate guard (`[[customer]] max_bounce_percent`, docs/reputation.md): a customer whose
//! hard bounces pass `max_bounce_percent` of its last `bounce_window_messages` delivery outcomes is
//! paused (451 4.7.1 at MAIL and at the end of data) until `POST /v1/customers/{name}/resume`.
//! A list bought or scraped shows first as a wall of 5xx: pausing it early keeps the shared IPs'
//! reputation.
//!
//! The window is two buckets of half a window each (lock-free: one packed atomic word each): the
//! rate is taken over the last half to whole window of outcomes. It is judged only once it holds
//! `min_sample` outcomes, so a customer's first few bounces do not pause it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A packed bucket: outcomes in the high 32 bits, hard bounces in the low 32.
const TOTAL_ONE: u64 = 1 << 32;

fn unpack(word: u64) -> (u64, u64) {
    (word >> 32, word & 0xffff_ffff)
}

/// Why a customer is paused (kept across restarts in `limits.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub reason: String,
    pub since_s: u64,
}

/// One customer's guard.
#[derive(Debug, Default)]
pub struct BounceWindow {
    current: AtomicU64,
    previous: AtomicU64,
    /// Locked only when a pause starts or ends and by the API: never per outcome.
    pause: Mutex<Option<Pause>>,
    /// Mirrors `pause.is_some()` for the per-message check.
    paused: std::sync::atomic::AtomicBool,
}

/// The outcomes a judgement needs at least: a tenth of the window, at least 10.
pub fn min_sample(window: u32) -> u64 {
    u64::from(window / 10).max(10)
}

impl BounceWindow {
    pub fn restored(pause: Option<Pause>) -> BounceWindow {
        BounceWindow {
            paused: std::sync::atomic::AtomicBool::new(pause.is_some()),
            pause: Mutex::new(pause),
            ..BounceWindow::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pause>> {
        match self.pause.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub fn pause(&self) -> Option<Pause> {
        self.lock().clone()
    }

    /// (outcomes, hard bounces) in the window now.
    pub fn counts(&self) -> (u64, u64) {
        let (t1, b1) = unpack(self.current.load(Ordering::Acquire));
        let (t2, b2) = unpack(self.previous.load(Ordering::Acquire));
        (t1 + t2, b1 + b2)
    }

    /// Counts one delivery outcome (`bounced`: a hard bounce). Returns the pause when this outcome
    /// started one (exactly one caller gets it), so it is logged and recorded once.
    pub fn record(
        &self,
        bounced: bool,
        window: u32,
        max_percent: u32,
        now_s: u64,
    ) -> Option<Pause> {
        let half = u64::from(window / 2).max(1);
        let word = self
            .current
            .fetch_add(TOTAL_ONE + u64::from(bounced), Ordering::AcqRel)
            + TOTAL_ONE
            + u64::from(bounced);
        if unpack(word).0 >= half {
            // The bucket is full: it becomes the previous one. A racing core that swapped first
            // leaves a small bucket here, which goes back.
            let full = self.current.swap(0, Ordering::AcqRel);
            if unpack(full).0 >= half {
                self.previous.store(full, Ordering::Release);
            } else {
                self.current.fetch_add(full, Ordering::AcqRel);
            }
        }
        if !bounced || self.is_paused() {
            return None;
        }
        let (total, bounces) = self.counts();
        if total < min_sample(window) || bounces * 100 <= total * u64::from(max_percent) {
            return None;
        }
        let mut pause = self.lock();
        if pause.is_some() {
            return None;
        }
        let started = Pause {
            reason: format!(
                "{bounces} hard bounces among the last {total} delivery outcomes, over max_bounce_percent = {max_percent}"
            ),
            since_s: now_s,
        };
        *pause = Some(started.clone());
        self.paused.store(true, Ordering::Release);
        Some(started)
    }

    /// Ends a pause and starts the window afresh; the pause that ended, if any.
    pub fn resume(&self) -> Option<Pause> {
        let mut pause = self.lock();
        self.current.store(0, Ordering::Release);
        self.previous.store(0, Ordering::Release);
        self.paused.store(false, Ordering::Release);
        pause.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_early_bounces_do_not_pause_but_a_wall_of_them_does() {
        let w = BounceWindow::default();
        // Window 100: judged from 10 outcomes on.
        for _ in 0..9 {
            assert!(w.record(true, 100, 10, 1).is_none());
        }
        let pause = w.record(true, 100, 10, 2).expect("the tenth bounce pauses");
        assert!(
            pause
                .reason
                .starts_with("10 hard bounces among the last 10")
        );
        assert!(w.is_paused());
        assert!(
            w.record(true, 100, 10, 3).is_none(),
            "one pause, reported once"
        );
        assert_eq!(w.resume(), Some(pause));
        assert!(!w.is_paused());
        assert_eq!(w.counts(), (0, 0));
    }

    #[test]
    fn the_rate_is_over_the_recent_window_only() {
        let w = BounceWindow::default();
        // 50 bounces long ago, then 200 deliveries: the old bounces leave the window (100).
        for _ in 0..50 {
            w.record(false, 100, 10, 0);
        }
        for i in 0..200 {
            // 5 % bounces: under 10 %.
            assert!(w.record(i % 20 == 0, 100, 10, 0).is_none());
        }
        let (total, _) = w.counts();
        assert!((50..=100).contains(&total), "{total}");
        // Then 20 % bounces: paused within a window.
        let paused = (0..100).any(|i| w.record(i % 5 == 0, 100, 10, 0).is_some());
        assert!(paused);
    }

    #[test]
    fn a_pause_survives_as_restored_state() {
        let p = Pause {
            reason: "r".into(),
            since_s: 5,
        };
        let w = BounceWindow::restored(Some(p.clone()));
        assert!(w.is_paused());
        assert_eq!(w.pause(), Some(p));
    }
}
