//! What a cluster-shaped queue (`[[domain]] cluster = true`) holds on this core of the caps that the
//! nodes share in Redis: the sends reserved for it, whether it waits for a connection slot, and the
//! local share in force while Redis is down. Pure: the delivery side asks Redis
//! (`cluster::shaping`) and hands the answers here.
//!
//! # Sends: reserved times, not counts
//! The cluster runs one GCRA per shaping key in Redis: a send every `interval_us`, cluster-wide. A
//! node reserves a block of consecutive send times (one Lua script), and each reserved send may
//! start from `early_us` before its time until its time, never after: a send whose time passed
//! unused is dropped. Every send of the cluster thus starts within `early_us` before a distinct
//! reserved time spaced `interval_us` apart, so any window as long as the period holds at most
//! `limit + early_us / interval_us + 1` sends: `limit + burst` as for a queue on one node (see
//! `rate.rs`), whatever the nodes do. A count per fixed window would not: two nodes at the full
//! local rate could each send a window's worth across its boundary.

/// A block of reserved sends larger than this is never asked for.
pub const MAX_RESERVE: u32 = 1_024;
/// The first block asked for; then it doubles while blocks are used up and shrinks to what was
/// used when sends passed unused (a node that cannot send as fast as its block wastes the rest).
const FIRST_RESERVE: u32 = 4;
/// While one reservation is asked for, the queue's other connections check again this often
/// instead of asking too.
const ASKING_POLL_MS: u64 = 5;
/// A reservation asked for longer ago than this is taken as lost (the link answers or fails well
/// within `[cluster] redis_timeout_ms`, at most 10 s).
const ASKING_LOST_AFTER_MS: u64 = 15_000;

const US_PER_MS: u64 = 1_000;

/// How the cluster spaces one queue's sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendSpacing {
    /// One send per this many µs, cluster-wide.
    pub interval_us: u64,
    /// A reserved send may start this long before its time.
    pub early_us: u64,
}

impl SendSpacing {
    /// The spacing for a per-minute and a per-hour limit; `None` without either. With both, the
    /// one allowing fewer sends per unit of time spaces them (it then also keeps the other), with
    /// its burst of 1 % (at least 1 send).
    pub fn of(per_minute: Option<u32>, per_hour: Option<u32>) -> Option<SendSpacing> {
        let spacing = |limit: u32, period_ms: u64| {
            let limit = limit.max(1);
            let interval_us = (period_ms * US_PER_MS / u64::from(limit)).max(1);
            let burst = u64::from((limit / 100).max(1));
            SendSpacing {
                interval_us,
                early_us: ((burst - 1) * interval_us).max(interval_us / 2),
            }
        };
        let minute = per_minute.map(|l| spacing(l, 60_000));
        let hour = per_hour.map(|l| spacing(l, 3_600_000));
        match (minute, hour) {
            (Some(m), Some(h)) => Some(if h.interval_us > m.interval_us { h } else { m }),
            (m, h) => m.or(h),
        }
    }
}

/// What a send may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotCheck {
    /// A reserved send was taken.
    Take,
    /// The next reserved send (or the next reservation) is this many ms away.
    Wait(u64),
    /// Nothing reserved: ask Redis (`begin_reserve`, then `granted` / `refused` / `failed`).
    Reserve,
}

/// The sends reserved for this queue on this core: `left` sends from `next_us` (unix µs, this
/// node's clock), `interval_us` apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendSlots {
    next_us: u64,
    left: u32,
    spacing: SendSpacing,
    /// Of the current block: granted, and dropped unused.
    granted: u32,
    missed: u32,
    want: u32,
    asking_since_ms: Option<u64>,
    /// Redis said the horizon is full: no reservation before this (unix ms).
    ask_after_ms: u64,
}

impl Default for SendSlots {
    fn default() -> SendSlots {
        SendSlots {
            next_us: 0,
            left: 0,
            spacing: SendSpacing {
                interval_us: 1,
                early_us: 0,
            },
            granted: 0,
            missed: 0,
            want: FIRST_RESERVE,
            asking_since_ms: None,
            ask_after_ms: 0,
        }
    }
}

impl SendSlots {
    /// Takes a reserved send at `now_ms` if one is usable.
    pub fn take(&mut self, now_ms: u64) -> SlotCheck {
        let now_us = now_ms.saturating_mul(US_PER_MS);
        let interval = self.spacing.interval_us;
        if self.left > 0 && self.next_us < now_us {
            // Sends whose time passed unused are gone: using them late could crowd a window.
            let passed = (now_us - self.next_us).div_ceil(interval);
            let passed = u32::try_from(passed).unwrap_or(u32::MAX).min(self.left);
            self.left -= passed;
            self.missed = self.missed.saturating_add(passed);
            self.next_us = self
                .next_us
                .saturating_add(u64::from(passed).saturating_mul(interval));
        }
        if self.left > 0 {
            let usable_us = self.next_us.saturating_sub(self.spacing.early_us);
            if usable_us <= now_us {
                self.left -= 1;
                self.next_us = self.next_us.saturating_add(interval);
                return SlotCheck::Take;
            }
            return SlotCheck::Wait((usable_us - now_us).div_ceil(US_PER_MS));
        }
        if let Some(since_ms) = self.asking_since_ms {
            if now_ms < since_ms.saturating_add(ASKING_LOST_AFTER_MS) {
                return SlotCheck::Wait(ASKING_POLL_MS);
            }
            self.asking_since_ms = None;
        }
        if now_ms < self.ask_after_ms {
            return SlotCheck::Wait(self.ask_after_ms - now_ms);
        }
        SlotCheck::Reserve
    }

    /// A reservation is being asked for at `now_ms`: how many sends to ask for.
    pub fn begin_reserve(&mut self, now_ms: u64) -> u32 {
        self.asking_since_ms = Some(now_ms);
        self.want
    }

    /// Redis reserved `count` sends, the first `first_in_us` after its answer reached us at
    /// `now_ms`. The block replaces what is left of the last one (nothing, or passed sends).
    pub fn granted(&mut self, now_ms: u64, count: u32, first_in_us: u64, spacing: SendSpacing) {
        self.asking_since_ms = None;
        if self.granted > 0 {
            let used = self.granted.saturating_sub(self.missed + self.left);
            self.want = if self.missed == 0 && self.left == 0 {
                self.want.saturating_mul(2).min(MAX_RESERVE)
            } else {
                used.clamp(1, MAX_RESERVE)
            };
        }
        self.spacing = spacing;
        self.next_us = now_ms.saturating_mul(US_PER_MS).saturating_add(first_in_us);
        self.left = count;
        self.granted = count;
        self.missed = 0;
    }

    /// Redis reserved nothing: the horizon is full until `retry_in_ms` from `now_ms`.
    pub fn refused(&mut self, now_ms: u64, retry_in_ms: u64) {
        self.asking_since_ms = None;
        self.ask_after_ms = now_ms.saturating_add(retry_in_ms.max(1));
    }

    /// The reservation got no answer (Redis unreachable).
    pub fn failed(&mut self) {
        self.asking_since_ms = None;
    }

    /// Reserved sends not yet taken.
    #[cfg(test)]
    pub fn left(&self) -> u32 {
        self.left
    }
}

/// A cluster-shaped queue's state on this core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterShare {
    pub slots: SendSlots,
    /// The cluster's connection cap was full: no new connection before this (unix s).
    pub connect_after_s: Option<u64>,
    /// Redis is down and `on_redis_down = "local-share"`: this node enforces 1/divisor of the
    /// caps on its own.
    pub local_divisor: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PER_SECOND: SendSpacing = SendSpacing {
        interval_us: 1_000_000,
        early_us: 500_000,
    };

    #[test]
    fn spacing_follows_the_tighter_limit_with_its_burst() {
        assert_eq!(SendSpacing::of(None, None), None);
        assert_eq!(SendSpacing::of(Some(60), None), Some(PER_SECOND));
        let s = SendSpacing::of(Some(6_000), None).unwrap();
        assert_eq!(s.interval_us, 10_000);
        assert_eq!(s.early_us, 59 * 10_000, "a burst of 60 (1 %)");
        // 600/min allows 36 000 an hour: 1000/hour spaces the sends.
        let s = SendSpacing::of(Some(600), Some(1_000)).unwrap();
        assert_eq!(s.interval_us, 3_600_000);
        assert_eq!(s.early_us, 9 * 3_600_000);
    }

    #[test]
    fn reserved_sends_are_taken_on_time_and_dropped_once_passed() {
        let mut slots = SendSlots::default();
        assert_eq!(slots.take(10_000), SlotCheck::Reserve);
        assert_eq!(slots.begin_reserve(10_000), FIRST_RESERVE);
        assert_eq!(slots.take(10_000), SlotCheck::Wait(ASKING_POLL_MS));
        // Three sends at 10.5 s, 11.5 s and 12.5 s, each usable from half a second before.
        slots.granted(10_000, 3, 500_000, PER_SECOND);
        assert_eq!(slots.take(10_000), SlotCheck::Take);
        assert_eq!(slots.take(10_000), SlotCheck::Wait(1_000));
        assert_eq!(slots.take(11_000), SlotCheck::Take);
        // 12.5 s passes unused: dropped, not sent late.
        assert_eq!(slots.take(12_600), SlotCheck::Reserve);
        assert_eq!(slots.left(), 0);
        // 2 of 3 used: the next block asks for what was used.
        assert_eq!(slots.begin_reserve(12_600), FIRST_RESERVE);
        slots.granted(12_600, 1, 0, PER_SECOND);
        assert_eq!(slots.begin_reserve(12_600), 2);
    }

    #[test]
    fn blocks_grow_while_used_up_and_a_full_horizon_waits() {
        let mut slots = SendSlots::default();
        let mut now_ms = 0;
        for _ in 0..12 {
            let want = slots.begin_reserve(now_ms);
            slots.granted(now_ms, want, 0, PER_SECOND);
            while slots.take(now_ms) == SlotCheck::Take {
                now_ms += 1_000;
            }
        }
        assert_eq!(slots.begin_reserve(now_ms), MAX_RESERVE);
        slots.refused(now_ms, 700);
        assert_eq!(slots.take(now_ms), SlotCheck::Wait(700));
        assert_eq!(slots.take(now_ms + 700), SlotCheck::Reserve);
        // A lost answer does not block the queue for good.
        slots.begin_reserve(now_ms);
        assert_eq!(
            slots.take(now_ms + ASKING_LOST_AFTER_MS),
            SlotCheck::Reserve
        );
    }

    /// However the nodes' blocks interleave and however late they use them, any window as long
    /// as the period holds at most limit + burst sends (120/min: 20 + 1 in 10 s).
    #[test]
    fn sends_from_interleaved_blocks_never_crowd_a_window() {
        let spacing = SendSpacing::of(Some(120), None).unwrap();
        // The cluster's GCRA as the Lua script runs it, on a fake clock (µs).
        let mut tat_us = 0u64;
        let mut reserve = |now_us: u64, want: u32| {
            let first = tat_us.max(now_us + spacing.early_us);
            tat_us = first + u64::from(want) * spacing.interval_us;
            first - now_us
        };
        let mut nodes = [SendSlots::default(), SendSlots::default()];
        let mut sent_ms = Vec::new();
        let mut now_ms = 1_000_000u64;
        let mut step = 0u64;
        while now_ms < 1_120_000 {
            for (i, node) in nodes.iter_mut().enumerate() {
                // Node 1 checks at odd moments, so some of its sends pass unused.
                if i == 1 && step % 7 == 3 {
                    continue;
                }
                match node.take(now_ms) {
                    SlotCheck::Take => sent_ms.push(now_ms),
                    SlotCheck::Reserve => {
                        let want = node.begin_reserve(now_ms);
                        let first_in = reserve(now_ms * 1000, want.min(2));
                        node.granted(now_ms, want.min(2), first_in, spacing);
                    }
                    SlotCheck::Wait(_) => {}
                }
            }
            step += 1;
            now_ms += 37;
        }
        let most = sent_ms
            .iter()
            .map(|&t| {
                sent_ms
                    .iter()
                    .filter(|&&u| u >= t && u < t + 10_000)
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert!(most <= 21, "{most} sends in 10 s at 120/min");
        assert!(sent_ms.len() >= 200, "the nodes kept up: {}", sent_ms.len());
    }
}
