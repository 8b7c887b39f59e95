//! The seam to glommio: one pinned executor per core, process limits, signals, and the start of
//! every per-core service (`core`).

mod core;
pub use core::Shared;
pub mod crash_only;
pub mod host_limits;
pub mod notify;
mod signals;

use std::path::PathBuf;
use std::sync::Arc;

use glommio::{CpuSet, LocalExecutorBuilder, Placement, PoolPlacement};

pub use crate::shard::{ConnectionRefusal, ConnectionSlot, Control, StopSignal};
pub use signals::reload;

use crate::config::Config;

/// The control of the `serve` running in this process, for embedders (`request_stop`).
static RUNNING: std::sync::Mutex<Option<Arc<Control>>> = std::sync::Mutex::new(None);

/// Asks the `serve` running in this process to stop as SIGTERM would; false when none runs.
pub fn request_stop() -> bool {
    match RUNNING.lock().ok().and_then(|r| r.clone()) {
        Some(control) => {
            control.request_stop();
            true
        }
        None => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Memlock(#[from] host_limits::MemlockTooLow),
    #[error(
        "cannot start executor {core}: {source}. io_uring needs Linux 5.8 or later and enough locked memory (ulimit -l)"
    )]
    Executor {
        core: usize,
        source: glommio::GlommioError<()>,
    },
    #[error("core {core} failed: {message}")]
    Core { core: usize, message: String },
    #[error(
        "cannot serve the {what} address {address}: another process listens there (is another volley or MTA running?)"
    )]
    AddressInUse {
        what: &'static str,
        address: std::net::SocketAddr,
    },
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
    #[error("spool_dir: {0}")]
    Spool(crate::spool::SpoolError),
}

/// How long the probe of an address waits for a connection (loopback answers in microseconds).
const ADDRESS_PROBE_MS: u64 = 500;
/// Probes of an address, `ADDRESS_PROBE_GAP_MS` apart: all must be answered to refuse the start.
/// A daemon that just exited still answers for a few milliseconds (io_uring releases its sockets
/// after the process is gone), so one answer proves nothing.
const ADDRESS_PROBES: u32 = 5;
const ADDRESS_PROBE_GAP_MS: u64 = 100;

/// Refuses to start when another process already serves one of the listener or API addresses.
/// Every core binds with SO_REUSEPORT, which the kernel would let a second daemon share silently
/// (splitting clients between the two). A bind probe cannot tell a listener from the previous
/// run's connections still closing on the port, so the probe connects: whoever keeps answering
/// listens.
fn check_addresses_free(config: &Config) -> Result<(), ServeError> {
    let addresses = config
        .listeners
        .iter()
        .map(|l| ("listener", l.address))
        .chain(std::iter::once(("API", config.api.address)));
    for (what, address) in addresses {
        let mut target = address;
        if address.ip().is_unspecified() {
            target.set_ip(match address {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let timeout = std::time::Duration::from_millis(ADDRESS_PROBE_MS);
        let answered = (0..ADDRESS_PROBES).all(|probe| {
            if probe > 0 {
                std::thread::sleep(std::time::Duration::from_millis(ADDRESS_PROBE_GAP_MS));
            }
            std::net::TcpStream::connect_timeout(&target, timeout).is_ok()
        });
        if answered {
            return Err(ServeError::AddressInUse { what, address });
        }
    }
    Ok(())
}

/// A webhook sender's view of the process: its settings in the running configuration (a reload
/// changes them) and the stop flag.
fn webhook_context(control: &Arc<Control>, name: &str) -> crate::webhook::SenderContext {
    let (settings_control, stop_control) = (control.clone(), control.clone());
    let name = name.to_string();
    crate::webhook::SenderContext {
        settings: Box::new(move || {
            let config = settings_control.config();
            config.webhooks.iter().find(|w| w.name() == name).cloned()
        }),
        stopping: Box::new(move || stop_control.stopping()),
    }
}

/// Names at start what this process serves and where it keeps mail, so an operator reading the log
/// sees a listener without TLS or a spool on the wrong disk at once.
fn log_what_serves(config: &Config) {
    for l in &config.listeners {
        log::info!(
            "listener {}: tls {}, auth {}, relay networks {}{}",
            l.address,
            match l.tls {
                crate::config::ListenerTls::None => "none",
                crate::config::ListenerTls::Starttls => "starttls",
                crate::config::ListenerTls::Implicit => "implicit",
            },
            match l.auth {
                crate::config::ListenerAuth::Off => "off",
                crate::config::ListenerAuth::Optional => "optional",
                crate::config::ListenerAuth::Required => "required",
            },
            if l.relay_networks.is_empty() {
                "none".to_string()
            } else {
                l.relay_networks
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            },
            if l.proxy_protocol {
                ", PROXY protocol"
            } else {
                ""
            },
        );
    }
    log::info!(
        "spool {}: segments of {} bytes, at most {} bytes, fsync {}",
        config.server.spool_dir,
        config.spool.segment_bytes,
        config.spool.max_spool_bytes,
        if config.spool.fsync { "on" } else { "OFF" },
    );
    log::info!("api {}", config.api.address);
}

/// Where a core's blocking threads run (`[server] blocking_threads_per_core`,
/// `pin_blocking_threads`): on any CPU by default, or on the core's own.
pub fn blocking_placement(server: &crate::config::ServerSection, cpu: usize) -> PoolPlacement {
    let threads = server.blocking_threads_per_core.max(1);
    if !server.pin_blocking_threads {
        return PoolPlacement::Unbound(threads);
    }
    match CpuSet::online() {
        Ok(online) => PoolPlacement::Fenced(threads, online.filter(|l| l.cpu == cpu)),
        Err(_) => PoolPlacement::Unbound(threads),
    }
}

/// Runs Volley in the foreground until SIGTERM; returns once every core has stopped.
pub fn serve(config: Config, config_path: Option<PathBuf>) -> Result<(), ServeError> {
    host_limits::check_memlock()?;
    if let Some(files) = host_limits::raise_open_files() {
        log::info!("open files limit: {files}");
    }
    // Before anything else touches the spool directory: a second daemon stops here.
    let _spool_lock = crate::spool::lock_spool_dir(std::path::Path::new(&config.server.spool_dir))
        .map_err(ServeError::Spool)?;
    let cores = config.core_count();
    crate::delivery::set_allocator_purge_delay(config.server.allocator_purge_delay_ms);
    // Read back from the allocator, so the line shows what it applies, not what was asked.
    log::info!(
        "allocator: freed memory given back after {} ms (-1: never)",
        crate::delivery::allocator_purge_delay()
    );
    check_addresses_free(&config)?;
    log_what_serves(&config);
    let control = Control::new(Arc::new(config), config_path);
    control.load_api_changes().map_err(|e| ServeError::Core {
        core: 0,
        message: format!("API changes: {e}"),
    })?;
    if let Ok(mut running) = RUNNING.lock() {
        *running = Some(control.clone());
    }
    let shared = core::Shared::new(control.clone(), cores)
        .map_err(|message| ServeError::Core { core: 0, message })?;
    signals::spawn_signal_thread(control.clone(), shared.node.events.clone())
        .map_err(ServeError::Signals)?;
    if let Some(webhooks) = &shared.webhooks {
        let config = control.config();
        webhooks
            .start(&config, |name| webhook_context(&control, name))
            .map_err(|e| ServeError::Core {
                core: 0,
                message: e.to_string(),
            })?;
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // Each core reports how it ended on this channel, in whatever order: a core that fails at
    // start must stop the process even while others wait for it (the router's rings).
    let (ended_tx, ended_rx) = std::sync::mpsc::channel::<(usize, Result<(), String>)>();
    let mut handles = Vec::with_capacity(cores);
    for index in 0..cores {
        let shared = shared.clone();
        let ended_tx = ended_tx.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(index % cpus))
            .blocking_thread_pool_placement(blocking_placement(
                &control.config().server,
                index % cpus,
            ))
            .name(&format!("volley-core-{index}"))
            .spawn(move || async move {
                crate::logging::set_current_core(index);
                let result = core::run(index, shared).await;
                let _ = ended_tx.send((index, result));
            })
            .map_err(|source| ServeError::Executor {
                core: index,
                source,
            });
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                control.request_stop();
                return Err(e);
            }
        }
    }
    drop(ended_tx);
    log::info!("volley starting on {cores} cores");
    let mut first_error = None;
    let notifier = notify::notifier();
    let mut readiness = notify::Readiness::default();
    let watch = std::time::Duration::from_millis(notify::WATCH_EVERY_MS);
    // Ends when every core has reported (or its executor is gone without a word). Under systemd
    // this thread also tells it when every core serves and when the stop begins.
    loop {
        let ended = match notifier {
            None => ended_rx.recv().ok(),
            Some(notifier) => {
                readiness.observe(notifier, &control);
                match ended_rx.recv_timeout(watch) {
                    Ok(ended) => Some(ended),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => None,
                }
            }
        };
        let Some((index, result)) = ended else {
            break;
        };
        if let Err(message) = result {
            // One failing core stops the others, so the process exits instead of running crippled.
            log::error!("core {index} failed: {message}");
            control.request_stop();
            first_error.get_or_insert(ServeError::Core {
                core: index,
                message,
            });
        }
    }
    for (index, handle) in handles.into_iter().enumerate() {
        if let Err(e) = handle.join() {
            control.request_stop();
            first_error.get_or_insert(ServeError::Core {
                core: index,
                message: format!("executor ended abnormally: {e}"),
            });
        }
    }
    if let Some(webhooks) = &shared.webhooks {
        webhooks.join();
    }
    if let Ok(mut running) = RUNNING.lock() {
        *running = None;
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            log::info!("volley stopped");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// CPUs the calling thread may run on.
    fn allowed_cpus() -> usize {
        // SAFETY: a zeroed cpu_set_t is a valid empty set, filled by the kernel for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return 0;
            }
            libc::CPU_COUNT(&set) as usize
        }
    }

    /// Runs two blocking jobs that each wait for the other, on an executor pinned to CPU 0 with
    /// `server`'s blocking pool: whether they met (two threads) and the CPUs each could use.
    fn two_blocking_jobs(server: crate::config::ServerSection) -> (bool, Vec<usize>) {
        LocalExecutorBuilder::new(Placement::Fixed(0))
            .blocking_thread_pool_placement(blocking_placement(&server, 0))
            .spawn(|| async move {
                let (a_tx, a_rx) = std::sync::mpsc::channel::<()>();
                let (b_tx, b_rx) = std::sync::mpsc::channel::<()>();
                let wait = Duration::from_secs(2);
                let first = glommio::executor().spawn_blocking(move || {
                    let _ = a_tx.send(());
                    (b_rx.recv_timeout(wait).is_ok(), allowed_cpus())
                });
                let second = glommio::executor().spawn_blocking(move || {
                    let _ = b_tx.send(());
                    (a_rx.recv_timeout(wait).is_ok(), allowed_cpus())
                });
                let (first, second) = futures_lite::future::zip(first, second).await;
                (first.0 && second.0, vec![first.1, second.1])
            })
            .expect("executor")
            .join()
            .expect("joined")
    }

    #[test]
    fn blocking_threads_run_on_any_cpu_unless_pinned_and_as_many_as_set() {
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let server = crate::config::ServerSection {
            blocking_threads_per_core: 2,
            ..Default::default()
        };
        let (met, cpus) = two_blocking_jobs(server.clone());
        assert!(met, "two blocking threads run the two jobs at once");
        assert_eq!(cpus, vec![online, online], "unpinned: every CPU");
        let (met, cpus) = two_blocking_jobs(crate::config::ServerSection {
            pin_blocking_threads: true,
            ..server.clone()
        });
        assert!(met);
        assert_eq!(cpus, vec![1, 1], "pinned: the core's CPU only");
        let (met, _) = two_blocking_jobs(crate::config::ServerSection {
            blocking_threads_per_core: 1,
            ..server
        });
        assert!(!met, "one thread runs the jobs one after the other");
    }
}
