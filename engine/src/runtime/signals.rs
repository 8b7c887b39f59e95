//! Signals, handled on a plain thread outside the executors: SIGTERM and SIGINT request a graceful
//! stop; SIGHUP re-reads the configuration file and publishes it when it validates; SIGUSR1 (and
//! SIGHUP) reopen the accounting log, for logrotate.

use std::sync::Arc;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::accounting::EventLog;
use crate::shard::Control;

pub fn spawn_signal_thread(control: Arc<Control>, events: Arc<EventLog>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])?;
    std::thread::Builder::new()
        .name("volley-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => {
                        super::notify::reloading();
                        reload(&control);
                        reopen_accounting(&control, &events);
                        super::notify::reloaded(control.core_count);
                    }
                    SIGUSR1 => reopen_accounting(&control, &events),
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
            let running = control.config();
            let effective = control.publish_file(config);
            let restart = crate::config::keys_needing_restart(&running, &effective);
            if restart.is_empty() {
                log::info!("reload: {} applied", path.display());
            } else {
                log::warn!(
                    "reload: {} applied except {}: these take effect after a restart",
                    path.display(),
                    restart.join(", ")
                );
            }
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

/// Reopens the accounting log at the running configuration's `accounting_log`.
fn reopen_accounting(control: &Control, events: &EventLog) {
    let path = control.config().server.accounting_log.clone();
    match events.reopen(&path) {
        Ok(()) => log::info!("accounting log reopened: {path:?}"),
        Err(e) => {
            log::error!("accounting log {path:?} cannot be opened, still writing the old one: {e}")
        }
    }
}
