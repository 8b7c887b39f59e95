//! Signals, handled on a plain thread outside the executors: SIGTERM and SIGINT request a graceful
//! stop; SIGHUP re-reads the configuration file and publishes it when it validates.

use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::control::Control;

pub fn spawn_signal_thread(control: Arc<Control>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("volley-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => reload(&control),
                    _ => {
                        log::info!("signal {signal}: stopping: no new connections, finishing transactions in flight");
                        control.request_stop();
                    }
                }
            }
        })?;
    Ok(())
}

/// Re-reads the configuration file; a file with errors is reported and the running one kept.
pub fn reload(control: &Control) {
    let Some(path) = control.config_path.as_deref() else {
        log::info!("reload: running on the embedded default, nothing to re-read");
        return;
    };
    match crate::dkim::load_config(path) {
        Ok(config) => {
            control.publish(Arc::new(config));
            log::info!("reload: {} applied", path.display());
        }
        Err(errors) => {
            for e in errors.0 {
                log::error!(
                    "reload: {}: {e}; keeping the running configuration",
                    path.display()
                );
            }
        }
    }
}
