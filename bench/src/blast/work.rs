//! Which message a connection sends next.
//!
//! Unpaced runs draw from one pool shared by every connection (an atomic counter), as Postfix's
//! `smtp-source` and real injectors do: a connection whose server answers faster sends more, and
//! all connections run until the last message. With fixed shares (`--fixed-shares`, and every
//! paced run, whose schedule is per connection) connection `k` sends its own contiguous range:
//! connections served by a busier server core then finish last, and the run's tail measured one
//! core of the server, not all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The messages of a run, as the connections take them.
#[derive(Debug, Clone)]
pub enum Pool {
    /// One counter for all connections.
    Shared { next: Arc<AtomicU64>, total: u64 },
    /// Connection `k` of `connections` sends its own range.
    Fixed { connections: u64, total: u64 },
}

impl Pool {
    pub fn new(total: u64, connections: u64, fixed: bool) -> Pool {
        if fixed {
            Pool::Fixed {
                connections: connections.max(1),
                total,
            }
        } else {
            Pool::Shared {
                next: Arc::new(AtomicU64::new(0)),
                total,
            }
        }
    }

    /// Connection `k`'s source of message indexes.
    pub fn for_connection(&self, k: u64) -> Work {
        match self {
            Pool::Shared { next, total } => Work {
                source: Source::Shared {
                    next: next.clone(),
                    total: *total,
                },
                taken: 0,
            },
            Pool::Fixed { connections, total } => {
                let (first, count) = fixed_share(k, *connections, *total);
                Work {
                    source: Source::Range {
                        next: first,
                        end: first + count,
                    },
                    taken: 0,
                }
            }
        }
    }

    /// Messages no connection took (all of them failed before the pool ran dry): unsent too.
    pub fn never_taken(&self) -> u64 {
        match self {
            Pool::Shared { next, total } => total.saturating_sub(next.load(Ordering::Relaxed)),
            // Each connection counts its own untaken range as unsent.
            Pool::Fixed { .. } => 0,
        }
    }
}

/// First message and count of connection `k` of `connections`.
fn fixed_share(k: u64, connections: u64, messages: u64) -> (u64, u64) {
    let base = messages / connections;
    let extra = messages % connections;
    (k * base + k.min(extra), base + u64::from(k < extra))
}

#[derive(Debug)]
enum Source {
    Shared { next: Arc<AtomicU64>, total: u64 },
    Range { next: u64, end: u64 },
}

/// One connection's view of the pool.
#[derive(Debug)]
pub struct Work {
    source: Source,
    /// Indexes this connection took so far (its ordinal for pacing).
    taken: u64,
}

impl Work {
    /// The next message's index, or `None` when the run has no more.
    pub fn take(&mut self) -> Option<u64> {
        let index = match &mut self.source {
            Source::Shared { next, total } => {
                // fetch_add past the end is harmless: `never_taken` saturates.
                let i = next.fetch_add(1, Ordering::Relaxed);
                (i < *total).then_some(i)
            }
            Source::Range { next, end } => {
                let i = *next;
                (i < *end).then(|| {
                    *next += 1;
                    i
                })
            }
        }?;
        self.taken += 1;
        Some(index)
    }

    /// Whether this connection surely has nothing to send (its range is done, or the pool dry).
    pub fn exhausted(&self) -> bool {
        match &self.source {
            Source::Shared { next, total } => next.load(Ordering::Relaxed) >= *total,
            Source::Range { next, end } => next >= end,
        }
    }

    /// Messages taken so far.
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Messages of this connection never taken (its fixed range's rest; 0 for the pool, whose
    /// rest another connection may still take).
    pub fn untaken_share(&self) -> u64 {
        match &self.source {
            Source::Shared { .. } => 0,
            Source::Range { next, end } => end - next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(pool: &Pool, connections: u64) -> Vec<u64> {
        let mut works: Vec<Work> = (0..connections).map(|k| pool.for_connection(k)).collect();
        let mut got = Vec::new();
        // Round robin, one message each, as interleaved connections would take them.
        loop {
            let mut any = false;
            for w in &mut works {
                if let Some(i) = w.take() {
                    got.push(i);
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        assert!(works.iter().all(Work::exhausted));
        got.sort_unstable();
        got
    }

    #[test]
    fn every_message_is_taken_once_either_way() {
        for (messages, connections) in [(10, 3), (3, 10), (20_000, 50), (0, 4), (7, 7)] {
            for fixed in [false, true] {
                let pool = Pool::new(messages, connections, fixed);
                assert_eq!(
                    drain(&pool, connections),
                    (0..messages).collect::<Vec<_>>(),
                    "{messages} over {connections}, fixed {fixed}"
                );
                assert_eq!(pool.never_taken(), 0);
            }
        }
    }

    #[test]
    fn a_fast_connection_takes_more_from_the_pool_but_not_from_fixed_shares() {
        let pool = Pool::new(100, 4, false);
        let mut fast = pool.for_connection(0);
        let mut slow = pool.for_connection(1);
        while fast.take().is_some() {}
        assert_eq!(fast.taken(), 100);
        assert_eq!(slow.take(), None);

        let fixed = Pool::new(100, 4, true);
        let mut fast = fixed.for_connection(0);
        while fast.take().is_some() {}
        assert_eq!(fast.taken(), 25);
        let mut slow = fixed.for_connection(1);
        assert_eq!(slow.untaken_share(), 25);
        assert_eq!(slow.take(), Some(25));
        assert_eq!(slow.untaken_share(), 24);
    }

    #[test]
    fn a_pool_no_connection_drew_from_is_unsent() {
        let pool = Pool::new(30, 3, false);
        let mut w = pool.for_connection(0);
        w.take();
        w.take();
        assert_eq!(pool.never_taken(), 28);
        assert_eq!(w.untaken_share(), 0);
    }
}
