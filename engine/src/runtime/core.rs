//! One core's services, started inside its executor: its spool (recovered first) and shard, its
//! end of the router, placement, delivery, its listeners, and on core 0 the HTTP API. Each service
//! gets the narrow handle it needs (`DeliveryCore`, `ListenerCore`, `ApiCore`), and a reload
//! reaches each one explicitly from the core's tick.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::accounting::EventLog;
use crate::api::ApiCore;
use crate::delivery::{DeliveryCore, QueueBoard};
use crate::listener::{ListenerContext, ListenerCore};
use crate::metrics::Metrics;
use crate::placement::{Placement, VmtaBoard};
use crate::router::RouterSetup;
use crate::shard::{Control, Node, Shard};
use crate::spool::{SegmentReader, Spool, SpoolConfig};

/// How long a stopping core waits for sessions and deliveries in flight.
const STOP_GRACE_MS: u64 = 30_000;
/// Housekeeping period: accounting flush, reload and stop checks.
const TICK_MS: u64 = 100;
/// How long a stopping core waits for its leases to reach Redis.
const LINK_FLUSH_AT_STOP_MS: u64 = 1_000;
/// Queue lists for the API are published, and unmapped segments released, every this many ticks.
const SNAPSHOT_EVERY_TICKS: u64 = 10;

/// What all cores share, built once before the executors start: the node, and the boards of the
/// services above the shard (the queue list for the API, the VMTAs out of their pools).
#[derive(Clone)]
pub struct Shared {
    pub node: Node,
    pub queue_board: Arc<QueueBoard>,
    pub vmta_board: Arc<VmtaBoard>,
    /// With `[[webhook]]`: the event journal and the senders' progress (threads of their own).
    pub webhooks: Option<Arc<crate::webhook::Webhooks>>,
    /// The VMTAs' FCrDNS and DNSBL results (`[reputation]`): written by core 0's checks, read by
    /// the API.
    pub reputation: Arc<crate::reputation::ReputationBoard>,
}

impl Shared {
    pub fn new(control: Arc<Control>, cores: usize) -> Result<Shared, String> {
        let config = control.config();
        let events = EventLog::open(&config.server.accounting_log)
            .map_err(|e| format!("accounting log {}: {e}", config.server.accounting_log))?;
        let webhooks =
            crate::webhook::Webhooks::open(std::path::Path::new(&config.server.spool_dir), &config)
                .map_err(|e| e.to_string())?;
        if let Some(webhooks) = &webhooks {
            events.attach_journal(webhooks.journal().clone());
        }
        // Lines a kill -9 left unwritten go to the log (and the journal) before anything new.
        let spool_path = std::path::Path::new(&config.server.spool_dir);
        let leftovers = crate::accounting::unflushed::take_leftovers(spool_path)
            .map_err(|e| format!("unflushed accounting lines: {e}"))?;
        if !leftovers.is_empty() {
            let lines: usize = leftovers
                .iter()
                .map(|b| b.iter().filter(|&&c| c == b'\n').count())
                .sum();
            log::warn!("accounting: {lines} events recorded before a crash written to the log now");
            for batch in &leftovers {
                events.append_batch(batch);
            }
        }
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
        let limits =
            crate::limits::SendingLimits::open(std::path::Path::new(&config.server.spool_dir))
                .map_err(|e| format!("sending limits: {e}"))?;
        // A drain interrupted by a stop or a crash goes on (docs/drain.md).
        let spool_dir = std::path::absolute(&config.server.spool_dir)
            .map_err(|e| format!("spool_dir {}: {e}", config.server.spool_dir))?;
        let drain =
            Arc::new(crate::shard::Drain::open(&spool_dir).map_err(|e| format!("drain: {e}"))?);
        if let Some(target) = drain.target() {
            log::warn!(
                "draining to {} (since {}): no new mail is taken; DELETE /v1/drain to stop",
                target.to,
                target.since_s
            );
        }
        let metrics = Arc::new(Metrics::new(cores));
        let cluster = match &config.cluster {
            None => None,
            Some(section) => {
                let metrics = metrics.clone();
                let drain = drain.clone();
                let status = move || crate::cluster::NodeStatus {
                    queued_recipients: metrics.sum_gauge(|c| &c.queued_recipients),
                    messages_received: metrics.sum(|c| &c.messages_received),
                    delivered: metrics.sum(|c| &c.delivered),
                    bounced: metrics.sum(|c| &c.bounced),
                    draining: drain.is_draining(),
                };
                Some(
                    crate::cluster::Cluster::start(section, Box::new(status))
                        .map_err(|e| format!("cluster: {e}"))?,
                )
            }
        };
        let suppressions = crate::suppression::SuppressionList::open(&spool_dir)
            .map_err(|e| format!("suppression list: {e}"))?;
        Ok(Shared {
            node: Node {
                suppressions: Arc::new(suppressions),
                control,
                cores,
                metrics,
                events,
                tls,
                router: RouterSetup::new(cores),
                limits: Arc::new(limits),
                cluster,
                drain,
                xfers_seen: Arc::new(crate::shard::XferMemory::default()),
                tls_rpt: Arc::new(crate::transport_security::tls_rpt::Recorder::new(cores)),
            },
            queue_board: Arc::new(QueueBoard::new(cores)),
            vmta_board: Arc::new(VmtaBoard::default()),
            webhooks,
            reputation: Arc::default(),
        })
    }
}

/// The services of one core, for its tick.
struct Services {
    shard: Rc<Shard>,
    delivery: Rc<DeliveryCore>,
    listeners: Vec<Rc<ListenerContext>>,
    /// The configuration generation the services last applied.
    applied_generation: u64,
}

impl Services {
    /// A reload, made explicit: each service gets the new configuration once. Listeners rebuild
    /// their session settings (every key but `address` and `tls`); delivery gives its queues their
    /// new policies; intake, placement and the API read the configuration per message or request.
    fn apply_reload(&mut self) {
        let generation = self.shard.generation();
        if generation == self.applied_generation {
            return;
        }
        self.applied_generation = generation;
        let config = self.shard.config();
        for l in &self.listeners {
            l.reload(&config);
        }
        self.delivery.delivery.wake();
    }
}

pub async fn run(index: usize, shared: Shared) -> Result<(), String> {
    let node = shared.node.clone();
    let config = node.control.config();
    // Absolute, so segment paths handed between cores and to glommio never depend on the cwd.
    let spool_dir = std::path::absolute(&config.server.spool_dir)
        .map_err(|e| format!("spool_dir {}: {e}", config.server.spool_dir))?;
    let (spool, recovered) = Spool::open(SpoolConfig {
        dir: spool_dir.clone(),
        core: index as u16,
        segment_bytes: config.spool.segment_bytes,
        max_spool_bytes: config.spool.max_spool_bytes / node.cores as u64,
        fsync: config.spool.fsync,
        lazy_state_sync_ms: config.spool.lazy_state_sync_ms,
        min_sync_interval_us: config.spool.min_sync_interval_us,
        sync_on: config.spool.sync_on,
        free_segment_files: config.spool.free_segment_files,
    })
    .map_err(|e| format!("spool of core {index} in {}: {e}", spool_dir.display()))?;
    if !recovered.is_empty() {
        log::info!(
            "recovered {} messages with recipients to deliver",
            recovered.len()
        );
    }
    let unflushed = crate::accounting::unflushed::Unflushed::open(&spool_dir, index)
        .map_err(|e| format!("unflushed accounting lines of core {index}: {e}"))?;
    let shard = Rc::new(Shard::new(
        index,
        node.clone(),
        spool,
        SegmentReader::new(spool_dir),
    ));
    shard.accounting.keep_unflushed_in(unflushed);
    let placement = Rc::new(Placement::new(shard.clone(), shared.vmta_board.clone()));
    let core = Rc::new(DeliveryCore::new(
        placement.clone(),
        shared.queue_board.clone(),
    ));
    let weak = Rc::downgrade(&core);
    let connect = node.router.connect(
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
        while !node.control.stopping() {
            glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        }
        Err("stopped while starting: another core failed".to_string())
    };
    let router = futures_lite::future::or(connect, stopped).await?;
    shard.connect_router(router);
    crate::delivery::start(&core, recovered).await;
    let listener_core = Rc::new(ListenerCore::new(placement.clone()));
    let listeners = crate::listener::start(&listener_core)?;
    if index == 0 {
        crate::delivery::tls_reports::period::start(&shard).await;
        crate::api::start(Rc::new(ApiCore {
            shard: shard.clone(),
            placement: placement.clone(),
            queue_board: shared.queue_board.clone(),
            webhooks: shared.webhooks.clone(),
            reputation: shared.reputation.clone(),
        }))?;
        glommio::spawn_local(crate::reputation::run(
            shard.clone(),
            shared.vmta_board.clone(),
            shared.reputation.clone(),
        ))
        .detach();
    }
    node.control
        .cores_ready
        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let mut services = Services {
        applied_generation: shard.generation(),
        shard: shard.clone(),
        delivery: core.clone(),
        listeners,
    };
    let mut tick = 0u64;
    while !node.control.stopping() {
        glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        tick += 1;
        let flush_every_ticks = (shard.config().server.accounting_flush_ms / TICK_MS).max(1);
        if tick.is_multiple_of(flush_every_ticks) {
            shard.accounting.flush().await;
        }
        // The spool counts its group commits and sizes; the metrics follow within a tick.
        let spool = shard.spool.stats();
        let counters = shard.counters();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        counters.spool_commits.store(spool.commits, relaxed);
        counters
            .spool_bytes
            .store(spool.spool_bytes as i64, relaxed);
        counters
            .spool_max_bytes
            .store(spool.max_spool_bytes as i64, relaxed);
        services.apply_reload();
        if tick.is_multiple_of(SNAPSHOT_EVERY_TICKS) {
            crate::delivery::publish_snapshot(&core);
            shard.bodies.sweep().await;
            shard.resolver().sweep_cache();
            core.mta_sts.sweep();
            // The executor's blocking-pool thread frees memory too (accounting batches, jobs'
            // results): its mimalloc heap is collected only when that thread asks.
            glommio::executor()
                .spawn_blocking(crate::delivery::return_freed_memory)
                .await;
        }
        if index == 0 && tick.is_multiple_of(SNAPSHOT_EVERY_TICKS) {
            crate::delivery::tls_reports::period::tick(&placement).await;
        }
        if index == 0 && tick.is_multiple_of(crate::limits::SAVE_EVERY_MS / TICK_MS) {
            shard.save_limits().await;
        }
        if index == 0
            && tick.is_multiple_of(SNAPSHOT_EVERY_TICKS)
            && let Some(cluster) = &node.cluster
        {
            crate::limits::shared::maintain(cluster, &node.limits, crate::clock::unix_ms(), false);
        }
    }
    shard.trigger_stop();
    drain(&core).await;
    if let Some(cluster) = &node.cluster {
        // Unused leases go back so the other nodes can use them at once.
        crate::limits::shared::maintain(cluster, &node.limits, crate::clock::unix_ms(), true);
        if cluster.health().is_up()
            && !cluster
                .link
                .flush(Duration::from_millis(LINK_FLUSH_AT_STOP_MS))
                .await
        {
            log::warn!("cluster: Redis did not take the leases given back at stop; they expire");
        }
    }
    shard.save_limits().await;
    if index == 0 {
        crate::delivery::tls_reports::period::stop(&shard).await;
    }
    shard.accounting.flush_now();
    shard
        .spool
        .flush()
        .await
        .map_err(|e| format!("spool flush: {e}"))?;
    Ok(())
}

/// Waits until this core's sessions and deliveries have finished, at most `STOP_GRACE_MS`.
async fn drain(core: &DeliveryCore) {
    let deadline = std::time::Instant::now() + Duration::from_millis(STOP_GRACE_MS);
    while std::time::Instant::now() < deadline
        && (core.node.control.connections() > 0 || core.delivery.busy())
    {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        core.accounting.flush().await;
    }
}
