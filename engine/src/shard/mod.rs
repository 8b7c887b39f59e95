//! One core's shard of the node: what every service of a core (intake, placement, delivery, the
//! listeners, the API) reaches, and nothing that belongs to one of them. A service holds an
//! `Rc<Shard>` next to its own state, so what a function may touch is what its service's handle
//! holds: the configuration view, the spool, the router, the accounting buffer, the sending
//! limits, the DKIM signers, the resolver, the metrics and the stop signal.
//!
//! `Node` is what all cores of the process share (built once before the executors start);
//! `Control` is what they share with the signal thread (stop, reload, connection counters);
//! `Drain` and `XferMemory` what they know of hand-overs between cluster nodes.

mod control;
mod drain;

use std::cell::{Cell, OnceCell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use glommio::sync::Semaphore;

pub use control::{ConnectionRefusal, ConnectionSlot, Control, MessageBytesHeld};
pub use drain::{
    DRAIN_ERROR_BYTES_MAX, DRAIN_FILE_NAME, Drain, DrainFileError, DrainTarget, XFER_MEMORY_SLOTS,
    XferMemory,
};

use crate::accounting::{CoreAccounting, EventLog};
use crate::config::Config;
use crate::dkim::DkimSigners;
use crate::dns::Resolver;
use crate::limits::{CoreLimits, SendingLimits};
use crate::metrics::{CoreCounters, Metrics};
use crate::router::{Router, RouterSetup};
use crate::spool::{SegmentReader, Spool};

/// What all cores share, built once before the executors start.
#[derive(Clone)]
pub struct Node {
    pub control: Arc<Control>,
    pub cores: usize,
    pub metrics: Arc<Metrics>,
    pub events: Arc<EventLog>,
    /// The listeners' TLS server configuration (certificate and key), when a listener uses TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub router: Arc<RouterSetup>,
    /// Per-customer sending limits, shared lock-free by the cores.
    pub limits: Arc<SendingLimits>,
    /// Per-customer suppression lists, read lock-free by every core.
    pub suppressions: Arc<crate::suppression::SuppressionList>,
    /// With `[cluster]`: the Redis link, this node's name, shared limits and the registry.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Whether this node is draining to another, and where (`POST /v1/drain`).
    pub drain: Arc<Drain>,
    /// Hand-overs received lately, to count those received again.
    pub xfers_seen: Arc<XferMemory>,
    /// TLS-RPT counts of the open report period (`[tls_rpt]`), per core.
    pub tls_rpt: Arc<crate::transport_security::tls_rpt::Recorder>,
}

/// Resolves every waiter once the core is asked to stop.
#[derive(Clone)]
pub struct StopSignal(Rc<Semaphore>);

impl StopSignal {
    fn new() -> StopSignal {
        StopSignal(Rc::new(Semaphore::new(0)))
    }

    pub async fn wait(&self) {
        // A closed semaphore fails every acquire at once: that is the signal.
        let _ = self.0.acquire(1).await;
    }

    fn trigger(&self) {
        self.0.close();
    }
}

/// One core's shard. Lives in an `Rc`: it never leaves its executor.
pub struct Shard {
    pub index: usize,
    pub node: Node,
    config: RefCell<Arc<Config>>,
    generation: Cell<u64>,
    pub spool: Spool,
    /// Read-only maps of every core's spool segments (bodies and records read back).
    pub bodies: SegmentReader,
    pub accounting: CoreAccounting,
    pub limits: CoreLimits,
    pub suppressions: crate::suppression::CoreSuppressions,
    router: OnceCell<Router>,
    /// The `[[dkim]]` keys of the running configuration (loaded off the reactor by `Control`).
    dkim: RefCell<Arc<DkimSigners>>,
    /// The outbound TLS configurations (`[tls] trust_anchors`), picked up with the configuration.
    client_tls: RefCell<Arc<crate::transport_security::ClientTls>>,
    /// The resolver, and the nameservers it was made for.
    resolver: RefCell<Option<(Vec<SocketAddr>, Rc<Resolver>)>>,
    stop: StopSignal,
}

impl Shard {
    pub fn new(index: usize, node: Node, spool: Spool, bodies: SegmentReader) -> Shard {
        let control = node.control.clone();
        Shard {
            index,
            config: RefCell::new(control.config()),
            generation: Cell::new(control.generation()),
            spool,
            bodies,
            accounting: CoreAccounting::new(node.events.clone()),
            limits: CoreLimits::new(node.limits.clone(), node.cluster.clone()),
            suppressions: crate::suppression::CoreSuppressions::new(node.suppressions.clone()),
            router: OnceCell::new(),
            dkim: RefCell::new(control.dkim_signers()),
            client_tls: RefCell::new(control.client_tls()),
            resolver: RefCell::new(None),
            stop: StopSignal::new(),
            node,
        }
    }

    /// The running configuration. A reload is picked up here at once (one atomic load when nothing
    /// changed), so no core routes or delivers on an old configuration after it was published.
    pub fn config(&self) -> Arc<Config> {
        let generation = self.node.control.generation();
        if generation != self.generation.get() {
            self.generation.set(generation);
            *self.config.borrow_mut() = self.node.control.config();
            *self.dkim.borrow_mut() = self.node.control.dkim_signers();
            *self.client_tls.borrow_mut() = self.node.control.client_tls();
            log::info!("configuration generation {generation} applied");
        }
        self.config.borrow().clone()
    }

    /// The configuration generation this core runs on (services compare it to see a reload).
    pub fn generation(&self) -> u64 {
        let _ = self.config();
        self.generation.get()
    }

    pub fn counters(&self) -> &CoreCounters {
        self.node.metrics.core(self.index)
    }

    /// The DKIM signers of the running configuration.
    pub fn dkim_signers(&self) -> Arc<DkimSigners> {
        let _ = self.config();
        self.dkim.borrow().clone()
    }

    /// The outbound TLS configurations of the running configuration.
    pub fn client_tls(&self) -> Arc<crate::transport_security::ClientTls> {
        let _ = self.config();
        self.client_tls.borrow().clone()
    }

    /// The resolver of the running `[dns] nameservers`: made anew (with an empty cache) when a
    /// reload changed them.
    pub fn resolver(&self) -> Rc<Resolver> {
        let config = self.config();
        let nameservers = &config.dns.nameservers;
        if let Some((servers, r)) = self.resolver.borrow().as_ref()
            && servers == nameservers
        {
            return r.clone();
        }
        let r = Rc::new(if nameservers.is_empty() {
            Resolver::from_system()
        } else {
            Resolver::new(nameservers.clone())
        });
        *self.resolver.borrow_mut() = Some((nameservers.clone(), r.clone()));
        r
    }

    pub fn router(&self) -> &Router {
        self.router
            .get()
            .expect("the router is connected before any service starts")
    }

    /// Keeps this core's end of the router (once, at start).
    pub fn connect_router(&self, router: Router) {
        let _ = self.router.set(router);
    }

    pub fn stop_signal(&self) -> StopSignal {
        self.stop.clone()
    }

    /// Wakes every waiter of the stop signal (the core is stopping).
    pub fn trigger_stop(&self) {
        self.stop.trigger();
    }

    /// Writes the sending-limit counters now, off the reactor thread (a top-up is acknowledged only
    /// once it is on disk).
    pub async fn save_limits_now(&self) -> std::io::Result<()> {
        let limits = self.node.limits.clone();
        glommio::executor()
            .spawn_blocking(move || limits.save())
            .await
    }

    /// Writes the sending-limit counters if they changed, off the reactor thread.
    pub async fn save_limits(&self) {
        let limits = self.node.limits.clone();
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
}
