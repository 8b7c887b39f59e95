//! One core's services, started inside its executor: its spool (recovered first), its end of the
//! router, its delivery queues, its listeners, and on core 0 the HTTP API.

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::sync::Semaphore;

use super::control::Control;
use crate::accounting::{CoreAccounting, EventLog};
use crate::auth::{AuthThrottle, Credentials};
use crate::config::Config;
use crate::metrics::{CoreCounters, Metrics};
use crate::router::{Router, RouterSetup};
use crate::spool::{SegmentReader, Spool, SpoolConfig};

/// How long a stopping core waits for sessions and deliveries in flight.
const STOP_GRACE_MS: u64 = 30_000;
/// Housekeeping period: accounting flush, reload and stop checks.
const TICK_MS: u64 = 100;
/// Queue lists for the API are published, and unmapped segments released, every this many ticks.
const SNAPSHOT_EVERY_TICKS: u64 = 10;

/// What all cores share, built once before the executors start.
#[derive(Clone)]
pub struct Shared {
    pub control: Arc<Control>,
    pub cores: usize,
    pub metrics: Arc<Metrics>,
    pub events: Arc<EventLog>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub router: Arc<RouterSetup>,
    pub queues: Arc<crate::delivery::QueueBoard>,
    /// Per-customer sending limits, shared lock-free by the cores.
    pub limits: Arc<crate::limits::SendingLimits>,
    /// VMTAs taken out of their pools (by the API or a failed bind).
    pub vmtas: Arc<crate::delivery::VmtaBoard>,
}

impl Shared {
    pub fn new(control: Arc<Control>, cores: usize) -> Result<Shared, String> {
        let config = control.config();
        let events = EventLog::open(&config.server.accounting_log)
            .map_err(|e| format!("accounting log {}: {e}", config.server.accounting_log))?;
        let needs_tls = config
            .listeners
            .iter()
            .any(|l| l.tls != crate::config::ListenerTls::None);
        let tls = if needs_tls {
            Some(
                crate::listener::tls::server_config(config.tls.as_ref(), &config.server.hostname)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        Ok(Shared {
            control,
            cores,
            metrics: Arc::new(Metrics::new(cores)),
            events,
            tls,
            router: RouterSetup::new(cores),
            queues: Arc::new(crate::delivery::QueueBoard::new(cores)),
            limits: Arc::new(
                crate::limits::SendingLimits::open(std::path::Path::new(&config.server.spool_dir))
                    .map_err(|e| format!("sending limits: {e}"))?,
            ),
            vmtas: Arc::new(crate::delivery::VmtaBoard::default()),
        })
    }
}

/// Resolves every waiter once the core is asked to stop.
#[derive(Clone)]
pub struct StopSignal(Rc<Semaphore>);

impl StopSignal {
    pub async fn wait(&self) {
        // A closed semaphore fails every acquire at once: that is the signal.
        let _ = self.0.acquire(1).await;
    }

    fn trigger(&self) {
        self.0.close();
    }
}

/// One core's state. Lives in an `Rc`: it never leaves its executor.
pub struct CoreContext {
    pub index: usize,
    pub shared: Shared,
    config: RefCell<Arc<Config>>,
    generation: Cell<u64>,
    /// The generation the listeners' session settings were last built from.
    listeners_generation: Cell<u64>,
    pub spool: Spool,
    pub bodies: SegmentReader,
    pub accounting: CoreAccounting,
    router: OnceCell<Router>,
    credentials: RefCell<Credentials>,
    /// The `[[dkim]]` keys of the running configuration, loaded once per change of them.
    dkim: RefCell<Arc<crate::dkim::DkimSigners>>,
    pub throttle: RefCell<AuthThrottle>,
    stop: StopSignal,
    pool_turn: Cell<u64>,
    client_tls: OnceCell<Rc<crate::delivery::ClientTls>>,
    pub delivery: crate::delivery::CoreDelivery,
    pub limits: crate::limits::CoreLimits,
}

impl CoreContext {
    /// The running configuration. A reload is picked up here at once (one atomic load when nothing
    /// changed), so no core routes or delivers on an old configuration after it was published.
    pub fn config(&self) -> Arc<Config> {
        let generation = self.shared.control.generation();
        if generation != self.generation.get() {
            self.apply_generation(generation);
        }
        self.config.borrow().clone()
    }

    fn apply_generation(&self, generation: u64) {
        self.generation.set(generation);
        let config = self.shared.control.config();
        *self.credentials.borrow_mut() = Credentials::from_config(&config);
        if !self.dkim.borrow().loaded_from(&config.dkim) {
            *self.dkim.borrow_mut() = Arc::new(crate::dkim::DkimSigners::load_logged(&config.dkim));
        }
        *self.config.borrow_mut() = config;
        // The scheduler gives the existing queues their new limits when it wakes.
        self.delivery.wake();
        log::info!("configuration generation {generation} applied");
    }

    pub fn counters(&self) -> &CoreCounters {
        self.shared.metrics.core(self.index)
    }

    /// The DKIM signers of the running configuration.
    pub fn dkim_signers(&self) -> Arc<crate::dkim::DkimSigners> {
        let _ = self.config();
        self.dkim.borrow().clone()
    }

    pub fn credentials(&self) -> Credentials {
        self.credentials.borrow().clone()
    }

    pub fn router(&self) -> &Router {
        self.router
            .get()
            .expect("the router is connected before any service starts")
    }

    pub fn stop_signal(&self) -> StopSignal {
        self.stop.clone()
    }

    /// The next turn of weighted round robin over a pool's VMTAs.
    pub fn next_pool_turn(&self) -> u64 {
        let turn = self.pool_turn.get();
        self.pool_turn.set(turn.wrapping_add(1));
        turn
    }

    /// The outbound TLS configurations, built on first use.
    pub fn client_tls(&self) -> Rc<crate::delivery::ClientTls> {
        self.client_tls
            .get_or_init(|| match crate::delivery::ClientTls::new() {
                Ok(t) => Rc::new(t),
                Err(e) => panic!("the ring provider supports the default TLS versions: {e}"),
            })
            .clone()
    }

    /// Writes the sending-limit counters if they changed, off the reactor thread.
    async fn save_limits(&self) {
        let limits = self.shared.limits.clone();
        if !limits.is_dirty() {
            return;
        }
        let result = glommio::executor()
            .spawn_blocking(move || limits.save())
            .await;
        if let Err(e) = result {
            log::error!("saving the sending-limit counters: {e}");
        }
    }

    /// Rebuilds the listeners' session settings after a reload.
    fn refresh_config(&self, listeners: &[Rc<crate::listener::ListenerContext>]) {
        let config = self.config();
        if self.listeners_generation.get() == self.generation.get() {
            return;
        }
        self.listeners_generation.set(self.generation.get());
        for l in listeners {
            l.reload(&config);
        }
    }
}

pub async fn run(index: usize, shared: Shared) -> Result<(), String> {
    let config = shared.control.config();
    // Absolute, so segment paths handed between cores and to glommio never depend on the cwd.
    let spool_dir = std::path::absolute(&config.server.spool_dir)
        .map_err(|e| format!("spool_dir {}: {e}", config.server.spool_dir))?;
    let (spool, recovered) = Spool::open(SpoolConfig {
        dir: spool_dir.clone(),
        core: index as u16,
        segment_bytes: config.spool.segment_bytes,
        max_spool_bytes: config.spool.max_spool_bytes / shared.cores as u64,
        fsync: config.spool.fsync,
    })
    .map_err(|e| format!("spool of core {index} in {}: {e}", spool_dir.display()))?;
    if !recovered.is_empty() {
        log::info!(
            "recovered {} messages with recipients to deliver",
            recovered.len()
        );
    }
    let core = Rc::new(CoreContext {
        index,
        shared: shared.clone(),
        config: RefCell::new(config.clone()),
        generation: Cell::new(shared.control.generation()),
        listeners_generation: Cell::new(shared.control.generation()),
        spool,
        bodies: SegmentReader::new(spool_dir),
        accounting: CoreAccounting::new(shared.events.clone()),
        router: OnceCell::new(),
        credentials: RefCell::new(Credentials::from_config(&config)),
        dkim: RefCell::new(Arc::new(crate::dkim::DkimSigners::load_logged(
            &config.dkim,
        ))),
        throttle: RefCell::new(AuthThrottle::default()),
        stop: StopSignal(Rc::new(Semaphore::new(0))),
        pool_turn: Cell::new(index as u64),
        client_tls: OnceCell::new(),
        delivery: crate::delivery::CoreDelivery::new(index),
        limits: crate::limits::CoreLimits::new(shared.limits.clone()),
    });
    let weak = Rc::downgrade(&core);
    let connect = shared.router.connect(
        index,
        Rc::new(move |message| {
            if let Some(core) = weak.upgrade() {
                crate::delivery::on_core_message(&core, message);
            }
        }),
    );
    // The rings connect once every core got here; a core that failed before never will, and the
    // stop it requested ends the wait.
    let stopped = async {
        while !shared.control.stopping() {
            glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        }
        Err("stopped while starting: another core failed".to_string())
    };
    let router = futures_lite::future::or(connect, stopped).await?;
    let _ = core.router.set(router);
    crate::delivery::start(&core, recovered).await;
    let listeners = crate::listener::start(&core)?;
    if index == 0 {
        crate::api::start(&core)?;
    }
    shared
        .control
        .cores_ready
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let mut tick = 0u64;
    while !shared.control.stopping() {
        glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        tick += 1;
        core.accounting.flush().await;
        // The spool counts its group commits; the metric follows within a tick.
        core.counters().spool_commits.store(
            core.spool.stats().commits,
            std::sync::atomic::Ordering::Relaxed,
        );
        core.refresh_config(&listeners);
        if tick.is_multiple_of(SNAPSHOT_EVERY_TICKS) {
            crate::delivery::publish_snapshot(&core);
            core.bodies.sweep();
        }
        if index == 0 && tick.is_multiple_of(crate::limits::SAVE_EVERY_MS / TICK_MS) {
            core.save_limits().await;
        }
    }
    core.stop.trigger();
    drain(&core).await;
    core.save_limits().await;
    core.accounting.flush_now();
    core.spool
        .flush()
        .await
        .map_err(|e| format!("spool flush: {e}"))?;
    Ok(())
}

/// Waits until this core's sessions and deliveries have finished, at most `STOP_GRACE_MS`.
async fn drain(core: &CoreContext) {
    let deadline = std::time::Instant::now() + Duration::from_millis(STOP_GRACE_MS);
    while std::time::Instant::now() < deadline
        && (core.shared.control.connections() > 0 || core.delivery.busy())
    {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        core.accounting.flush().await;
    }
}
