//! The seam to glommio: one pinned executor per core, process limits, signals, and the start of
//! every per-core service (`core`).

mod control;
mod core;
pub use core::{CoreContext, Shared, StopSignal};
pub mod host_limits;
mod signals;

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::Arc;

use glommio::{LocalExecutorBuilder, Placement};

pub use control::{ConnectionRefusal, ConnectionSlot, Control};
pub use signals::reload;

use crate::config::Config;

thread_local! {
    static CURRENT_CORE: Cell<Option<usize>> = const { Cell::new(None) };
}

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

/// The index of the executor running on this thread, if any.
pub fn current_core() -> Option<usize> {
    CURRENT_CORE.with(|c| c.get())
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
    #[error("signal handling: {0}")]
    Signals(std::io::Error),
    #[error("spool_dir: {0}")]
    Spool(crate::spool::SpoolError),
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
    let control = Control::new(Arc::new(config), config_path);
    if let Ok(mut running) = RUNNING.lock() {
        *running = Some(control.clone());
    }
    signals::spawn_signal_thread(control.clone()).map_err(ServeError::Signals)?;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let shared = core::Shared::new(control.clone(), cores)
        .map_err(|message| ServeError::Core { core: 0, message })?;
    let mut handles = Vec::with_capacity(cores);
    for index in 0..cores {
        let shared = shared.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(index % cpus))
            .name(&format!("volley-core-{index}"))
            .spawn(move || async move {
                CURRENT_CORE.with(|c| c.set(Some(index)));
                core::run(index, shared).await
            })
            .map_err(|source| ServeError::Executor {
                core: index,
                source,
            })?;
        handles.push(handle);
    }
    log::info!("volley serving on {cores} cores");
    let mut first_error = None;
    for (index, handle) in handles.into_iter().enumerate() {
        let result = match handle.join() {
            Ok(Ok(())) => continue,
            Ok(Err(message)) => ServeError::Core {
                core: index,
                message,
            },
            Err(e) => ServeError::Core {
                core: index,
                message: format!("executor ended abnormally: {e}"),
            },
        };
        // One failing core stops the others, so the process exits instead of running crippled.
        control.request_stop();
        first_error.get_or_insert(result);
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
