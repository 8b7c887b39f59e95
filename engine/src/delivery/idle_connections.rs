//! Open connections waiting for their queue's next recipient (`transaction::wait_for_work`). The
//! scheduler wakes them when it finds the queue ready, so a lingering connection neither polls on
//! a timer (each idle connection woke up to seven times a second, and mail that came meanwhile
//! waited up to 64 ms for the next look) nor misses mail.
//!
//! Bounded by the connections open on the core: each waits here at most once at a time, and
//! leaves (its entry, and its queue's entry once no other waits) when woken, timed out or dropped;
//! once nobody waits, a table grown by a burst of domains is freed.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::queue::QueueKey;

/// Queues the table keeps room for once nobody waits.
const KEEP_CAPACITY_QUEUES: usize = 64;

/// What a waiting connection may take: any ready recipient, or (planned without DANE and
/// MTA-STS) only those whose message says `TLS-Required: No`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    Any,
    TlsOptionalOnly,
}

struct Waiter {
    takes: Takes,
    woken: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Waiter {
    fn wake(&self) {
        self.woken.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// One core's waiting connections, by queue.
#[derive(Default)]
pub struct IdleConnections {
    waiting: RefCell<foldhash::HashMap<QueueKey, Vec<Rc<Waiter>>>>,
}

impl IdleConnections {
    /// Waits until `wake_ready` or `wake_all` wakes this connection, or `timeout` passes. The
    /// caller checks the queue again either way (another connection may have taken the mail).
    pub async fn wait(&self, key: &QueueKey, takes: Takes, timeout: Duration) {
        let waiter = Rc::new(Waiter {
            takes,
            woken: Cell::new(false),
            waker: RefCell::new(None),
        });
        self.waiting
            .borrow_mut()
            .entry(key.clone())
            .or_default()
            .push(waiter.clone());
        let _leave = Leave {
            idle: self,
            key,
            waiter: &waiter,
        };
        futures_lite::future::or(Woken(&waiter), glommio::timer::sleep(timeout)).await;
    }

    /// The queue `key` has `ready` recipients: wakes up to that many of its waiting connections
    /// that take any recipient (counting those woken before and not yet back), and those taking
    /// only `TLS-Required: No` mail when `tls_optional_ready` says the queue has some (asked only
    /// if one waits). Returns how many it woke.
    pub fn wake_ready(
        &self,
        key: &QueueKey,
        ready: usize,
        tls_optional_ready: impl FnOnce() -> bool,
    ) -> usize {
        let waiting = self.waiting.borrow();
        let Some(waiters) = waiting.get(key) else {
            return 0;
        };
        let mut tls_optional_ready = Some(tls_optional_ready);
        let mut tls_optional = None;
        // Those woken before and not yet back are already on their way to this mail.
        let on_their_way = waiters
            .iter()
            .filter(|w| w.woken.get() && w.takes == Takes::Any)
            .count();
        let mut left = ready.saturating_sub(on_their_way);
        let mut woken = 0;
        for waiter in waiters.iter().filter(|w| !w.woken.get()) {
            let wake = match waiter.takes {
                Takes::Any => left > 0,
                Takes::TlsOptionalOnly => *tls_optional
                    .get_or_insert_with(|| tls_optional_ready.take().is_some_and(|f| f())),
            };
            if wake {
                waiter.wake();
                woken += 1;
                if waiter.takes == Takes::Any {
                    left -= 1;
                }
            }
        }
        woken
    }

    /// Wakes every waiting connection (a reload, a cancelled drain, a queue resumed: each looks
    /// again whether it may go on; a stop reaches them through the core's stop signal).
    pub fn wake_all(&self) {
        for waiter in self.waiting.borrow().values().flatten() {
            waiter.wake();
        }
    }

    /// Connections waiting now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting.borrow().values().map(Vec::len).sum()
    }

    /// Queues with a waiting connection now.
    #[cfg(test)]
    pub fn queues(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Queues the table has room for.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.waiting.borrow().capacity()
    }
}

/// Removes a waiter from its queue's list, and the list once empty, however the wait ended.
struct Leave<'a> {
    idle: &'a IdleConnections,
    key: &'a QueueKey,
    waiter: &'a Rc<Waiter>,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut waiting = self.idle.waiting.borrow_mut();
        if let Some(waiters) = waiting.get_mut(self.key) {
            waiters.retain(|w| !Rc::ptr_eq(w, self.waiter));
            if waiters.is_empty() {
                waiting.remove(self.key);
                if waiting.is_empty() && waiting.capacity() > KEEP_CAPACITY_QUEUES {
                    // A burst of domains leaves no table sized for it.
                    *waiting = foldhash::HashMap::default();
                }
            }
        }
    }
}

struct Woken<'a>(&'a Waiter);

impl Future for Woken<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.woken.get() {
            return Poll::Ready(());
        }
        let mut waker = self.0.waker.borrow_mut();
        match waker.as_ref() {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn key(domain: &str) -> QueueKey {
        QueueKey::new("default", domain)
    }

    fn run<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .spawn(f)
            .and_then(|handle| handle.join())
            .expect("the executor ran");
    }

    /// A task waiting (30 s at most) for work of `domain`'s queue; it returns how long it waited.
    fn waiter(idle: &Rc<IdleConnections>, domain: String, takes: Takes) -> glommio::Task<Duration> {
        let idle = idle.clone();
        glommio::spawn_local(async move {
            let started = Instant::now();
            idle.wait(&key(&domain), takes, Duration::from_secs(30))
                .await;
            started.elapsed()
        })
    }

    #[test]
    fn a_ready_queue_wakes_as_many_waiters_as_it_has_recipients_and_they_leave() {
        run(|| async {
            let idle = Rc::new(IdleConnections::default());
            let tasks: Vec<_> = (0..3)
                .map(|_| waiter(&idle, "a.test".into(), Takes::Any))
                .collect();
            glommio::timer::sleep(Duration::from_millis(5)).await;
            assert_eq!(idle.len(), 3);
            assert_eq!(idle.queues(), 1);
            assert_eq!(idle.wake_ready(&key("b.test"), 5, || true), 0);
            assert_eq!(idle.wake_ready(&key("a.test"), 2, || true), 2);
            // The two woken are on their way to the same two recipients: nobody else is woken.
            assert_eq!(idle.wake_ready(&key("a.test"), 2, || true), 0);
            assert_eq!(idle.wake_ready(&key("a.test"), 3, || true), 1);
            glommio::timer::sleep(Duration::from_millis(5)).await;
            assert_eq!(idle.len(), 0, "the three woken left");
            for task in tasks {
                assert!(task.await < Duration::from_secs(10), "woken, not timed out");
            }
            assert_eq!(idle.len(), 0);
            assert_eq!(idle.queues(), 0, "the queue's entry is freed");
        });
    }

    #[test]
    fn a_waiter_times_out_and_leaves() {
        run(|| async {
            let idle = IdleConnections::default();
            let started = Instant::now();
            idle.wait(&key("a.test"), Takes::Any, Duration::from_millis(20))
                .await;
            assert!(started.elapsed() >= Duration::from_millis(20));
            assert_eq!(idle.len(), 0);
            assert_eq!(idle.queues(), 0);
        });
    }

    #[test]
    fn a_tls_optional_waiter_is_woken_only_for_tls_optional_mail() {
        run(|| async {
            let idle = Rc::new(IdleConnections::default());
            let optional = waiter(&idle, "a.test".into(), Takes::TlsOptionalOnly);
            glommio::timer::sleep(Duration::from_millis(5)).await;
            let asked = Cell::new(0);
            let ask = |answer: bool| {
                asked.set(asked.get() + 1);
                answer
            };
            assert_eq!(idle.wake_ready(&key("a.test"), 4, || ask(false)), 0);
            assert_eq!(idle.len(), 1);
            assert_eq!(idle.wake_ready(&key("a.test"), 4, || ask(true)), 1);
            optional.await;
            assert_eq!(asked.get(), 2, "asked once per call");
            assert_eq!(idle.len(), 0);
            // Nobody waits: the question is not asked.
            assert_eq!(idle.wake_ready(&key("a.test"), 4, || ask(true)), 0);
            assert_eq!(asked.get(), 2);
        });
    }

    #[test]
    fn wake_all_wakes_every_queue_s_waiters() {
        run(|| async {
            let idle = Rc::new(IdleConnections::default());
            let tasks = [
                waiter(&idle, "a.test".into(), Takes::Any),
                waiter(&idle, "b.test".into(), Takes::TlsOptionalOnly),
            ];
            glommio::timer::sleep(Duration::from_millis(5)).await;
            assert_eq!((idle.len(), idle.queues()), (2, 2));
            idle.wake_all();
            for task in tasks {
                assert!(task.await < Duration::from_secs(10), "woken, not timed out");
            }
            assert_eq!((idle.len(), idle.queues()), (0, 0));
        });
    }

    #[test]
    fn a_burst_of_waiting_queues_leaves_no_large_table() {
        run(|| async {
            let idle = Rc::new(IdleConnections::default());
            let tasks: Vec<_> = (0..1000)
                .map(|n| waiter(&idle, format!("d{n}.test"), Takes::Any))
                .collect();
            glommio::timer::sleep(Duration::from_millis(20)).await;
            assert_eq!(idle.queues(), 1000);
            assert!(idle.capacity() >= 1000);
            idle.wake_all();
            for task in tasks {
                task.await;
            }
            assert_eq!(idle.queues(), 0);
            assert!(
                idle.capacity() <= KEEP_CAPACITY_QUEUES,
                "{}",
                idle.capacity()
            );
        });
    }
}
