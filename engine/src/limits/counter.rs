//! A fixed-window counter in one `AtomicU64`: the window index in the high 32 bits, the count in the
//! low 32. A compare-and-swap loop rolls the window and counts in one step, so cores share it
//! without a lock and never count past the limit.

use std::sync::atomic::{AtomicU64, Ordering};

const COUNT_MASK: u64 = 0xffff_ffff;

/// Messages counted in the current window (an hour or a day, by the caller's window index).
#[derive(Debug, Default)]
pub struct WindowCounter(AtomicU64);

fn pack(window: u32, count: u32) -> u64 {
    (u64::from(window) << 32) | u64::from(count)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, (word & COUNT_MASK) as u32)
}

impl WindowCounter {
    /// A counter holding `count` in `window` (restored from disk).
    pub fn new(window: u32, count: u32) -> WindowCounter {
        WindowCounter(AtomicU64::new(pack(window, count)))
    }

    /// Counts one in `window` if the count there is below `limit`; a new window starts at zero.
    pub fn try_take(&self, window: u32, limit: u32) -> bool {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let (w, count) = unpack(current);
            let count = if w == window { count } else { 0 };
            if count >= limit {
                return false;
            }
            match self.0.compare_exchange_weak(
                current,
                pack(window, count + 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// Gives back one taken in `window` (a later check refused the message); a no-op once the
    /// window has moved on.
    pub fn give_back(&self, window: u32) {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let (w, count) = unpack(current);
            if w != window || count == 0 {
                return;
            }
            match self.0.compare_exchange_weak(
                current,
                pack(window, count - 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// The count in `window` (zero when the stored window is another one).
    pub fn count_in(&self, window: u32) -> u32 {
        let (w, count) = unpack(self.0.load(Ordering::Relaxed));
        if w == window { count } else { 0 }
    }

    /// The stored window and count, for persistence.
    pub fn raw(&self) -> (u32, u32) {
        unpack(self.0.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_limit_and_rolls_over() {
        let c = WindowCounter::default();
        assert!((0..3).all(|_| c.try_take(10, 3)));
        assert!(!c.try_take(10, 3));
        assert_eq!(c.count_in(10), 3);
        assert!(c.try_take(11, 3), "a new window starts at zero");
        assert_eq!(c.count_in(11), 1);
        assert_eq!(c.count_in(10), 0);
    }

    #[test]
    fn give_back_only_in_the_same_window() {
        let c = WindowCounter::new(5, 2);
        c.give_back(5);
        assert_eq!(c.count_in(5), 1);
        c.give_back(6);
        assert_eq!(c.count_in(5), 1);
    }

    #[test]
    fn threads_never_overshoot() {
        let c = std::sync::Arc::new(WindowCounter::default());
        let taken: usize = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).filter(|_| c.try_take(1, 5_000)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(taken, 5_000);
    }
}
