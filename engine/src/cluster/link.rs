//! The process's one connection to Redis, on a thread of its own.
//!
//! Cores never talk to Redis from their reactor: they queue a job (a closure that runs Redis
//! commands) on a bounded channel and await its answer through a oneshot, which wakes the core's
//! task from this thread. One thread and one connection per process: the calls are rare (a lease
//! per hundreds of messages, a heartbeat a second), so one connection is never the bottleneck,
//! and keeping it off the cores keeps blocking socket I/O and reconnect waits off every reactor.
//!
//! The link knows whether Redis is up: a command that fails on the connection (I/O error,
//! timeout, closed) marks it down, logs one WARN line and drops the connection; jobs queued while
//! it is down fail at once with [`LinkError::Down`] (no wait on a dead server), and the thread
//! tries to reconnect every [`RECONNECT_EVERY_MS`]. When it is back an INFO line says so and
//! [`Health::epoch`] moves, so that what was counted meanwhile can be reconciled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, RecvTimeoutError, TrySendError};

/// Jobs waiting for the link thread; beyond it a call fails with [`LinkError::Busy`].
pub const MAX_QUEUED_JOBS: usize = 4_096;
/// How often a down link tries to connect again.
pub const RECONNECT_EVERY_MS: u64 = 500;

/// Why a call did not get an answer from Redis.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("Redis is unreachable")]
    Down,
    #[error("too many Redis calls waiting")]
    Busy,
    #[error("Redis replied with an error: {0}")]
    Reply(String),
    #[error("the Redis link has stopped")]
    Stopped,
}

/// What the process knows about its Redis, readable by every core without a lock.
#[derive(Debug, Default)]
pub struct Health {
    up: AtomicBool,
    /// Moves each time the link comes (back) up.
    epoch: AtomicU64,
    /// Jobs run on Redis (each is one round trip: a command, a pipeline or a script).
    round_trips: AtomicU64,
    /// Times the link went down.
    outages: AtomicU64,
    /// Nodes whose heartbeat is recent (this one included), as of the last heartbeat.
    live_nodes: AtomicU32,
}

impl Health {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }
    /// At least 1 (this node).
    pub fn live_nodes(&self) -> u32 {
        self.live_nodes.load(Ordering::Relaxed).max(1)
    }
    pub(super) fn set_live_nodes(&self, n: u32) {
        self.live_nodes.store(n, Ordering::Relaxed);
    }
}

/// A job: runs on the link thread with the connection (None while Redis is down) and says
/// whether the connection broke under it.
type Job = Box<dyn FnOnce(Option<&mut redis::Connection>) -> Broken + Send>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Broken(bool);

/// Work the link thread does on its own every period (the registry heartbeat).
pub type Periodic =
    Box<dyn FnMut(&mut redis::Connection, &Health) -> redis::RedisResult<()> + Send>;

/// The cores' handle on the link thread.
#[derive(Clone)]
pub struct Link {
    jobs: channel::Sender<Job>,
    pub health: Arc<Health>,
}

/// Where and how to reach Redis.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub url: String,
    pub timeout: Duration,
    pub period: Duration,
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

impl Link {
    /// Starts the link thread; it connects in the background (the node serves meanwhile).
    pub fn start(settings: LinkSettings, periodic: Periodic) -> Result<Link, LinkStartError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| LinkStartError::Url(e.to_string()))?;
        let (jobs, queue) = channel::bounded::<Job>(MAX_QUEUED_JOBS);
        let health = Arc::new(Health::default());
        let thread_health = health.clone();
        std::thread::Builder::new()
            .name("volley-redis".into())
            .spawn(move || run(client, settings, queue, thread_health, periodic))
            .map_err(|e| LinkStartError::Thread(e.to_string()))?;
        Ok(Link { jobs, health })
    }

    /// Queues `f` without waiting for it (giving back a lease); false when it could not be queued.
    /// A failure is logged by the caller's closure if it matters; Redis being down drops it.
    pub fn post<F>(&self, f: F) -> bool
    where
        F: FnOnce(&mut redis::Connection) -> redis::RedisResult<()> + Send + 'static,
    {
        let job: Job = Box::new(move |connection| match connection {
            None => Broken(false),
            Some(connection) => match f(connection) {
                Ok(()) => Broken(false),
                Err(e) => {
                    let broken = is_connection_error(&e);
                    if !broken {
                        log::warn!("cluster: Redis refused an update: {e}");
                    }
                    Broken(broken)
                }
            },
        });
        self.jobs.try_send(job).is_ok()
    }

    /// Waits, at most `limit`, until every job queued before this call has run (jobs run in
    /// order): at stop, so the leases given back reach Redis before the process exits.
    pub async fn flush(&self, limit: Duration) -> bool {
        let done = async { self.call(|_| Ok(())).await.is_ok() };
        let late = async {
            glommio::timer::sleep(limit).await;
            false
        };
        futures_lite::future::or(done, late).await
    }

    /// Runs `f` on the connection and returns its answer. Fails at once when Redis is down.
    pub async fn call<T, F>(&self, f: F) -> Result<T, LinkError>
    where
        T: Send + 'static,
        F: FnOnce(&mut redis::Connection) -> redis::RedisResult<T> + Send + 'static,
    {
        let (tx, rx) = futures_channel::oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let Some(connection) = connection else {
                let _ = tx.send(Err(LinkError::Down));
                return Broken(false);
            };
            let result = f(connection);
            let broken = matches!(&result, Err(e) if is_connection_error(e));
            let answer = result.map_err(|e| {
                if broken {
                    LinkError::Down
                } else {
                    LinkError::Reply(e.to_string())
                }
            });
            let _ = tx.send(answer);
            Broken(broken)
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(LinkError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(LinkError::Stopped),
        }
        rx.await.unwrap_or(Err(LinkError::Stopped))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkStartError {
    #[error("invalid Redis URL: {0}")]
    Url(String),
    #[error("cannot start the Redis thread: {0}")]
    Thread(String),
}

fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let connection = client.get_connection_with_timeout(timeout)?;
    connection.set_read_timeout(Some(timeout))?;
    connection.set_write_timeout(Some(timeout))?;
    Ok(connection)
}

fn run(
    client: redis::Client,
    settings: LinkSettings,
    queue: channel::Receiver<Job>,
    health: Arc<Health>,
    mut periodic: Periodic,
) {
    let mut connection: Option<redis::Connection> = None;
    let mut last_attempt: Option<Instant> = None;
    let mut next_period = Instant::now();
    let mut warned = false;
    loop {
        if connection.is_none()
            && last_attempt.is_none_or(|t| t.elapsed() >= Duration::from_millis(RECONNECT_EVERY_MS))
        {
            last_attempt = Some(Instant::now());
            match connect(&client, settings.timeout) {
                Ok(c) => {
                    connection = Some(c);
                    health.up.store(true, Ordering::Release);
                    health.epoch.fetch_add(1, Ordering::AcqRel);
                    log::info!("cluster: connected to Redis at {}", settings.url);
                    warned = false;
                    next_period = Instant::now();
                }
                Err(e) if !warned => {
                    warned = true;
                    log::warn!("cluster: cannot reach Redis at {}: {e}", settings.url);
                }
                Err(_) => {}
            }
        }
        let mut broken = Broken(false);
        let wait = next_period.saturating_duration_since(Instant::now());
        let wait = if connection.is_none() {
            wait.min(Duration::from_millis(RECONNECT_EVERY_MS))
        } else {
            wait
        };
        match queue.recv_timeout(wait) {
            Ok(job) => {
                if connection.is_some() {
                    health.round_trips.fetch_add(1, Ordering::Relaxed);
                }
                broken = job(connection.as_mut());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !broken.0
            && Instant::now() >= next_period
            && let Some(c) = connection.as_mut()
        {
            next_period = Instant::now() + settings.period;
            health.round_trips.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = periodic(c, &health) {
                broken = Broken(is_connection_error(&e));
                if !broken.0 {
                    log::warn!("cluster: heartbeat refused by Redis: {e}");
                }
            }
        }
        if broken.0 {
            connection = None;
            last_attempt = Some(Instant::now());
            health.up.store(false, Ordering::Release);
            health.outages.fetch_add(1, Ordering::Relaxed);
            warned = true;
            log::warn!(
                "cluster: Redis at {} went away; shared limits fall back to the configured on_redis_down until it is back",
                settings.url
            );
        }
    }
}
