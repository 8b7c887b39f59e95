//! Core 0's part: load the open period at start, save it every `SAVE_EVERY_S` and at stop (off
//! the reactor), and send the reports when `[tls_rpt] interval_s` has passed.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;

use crate::placement::Placement;
use crate::shard::Shard;

/// How often the open period's counts are written to the spool directory.
pub const SAVE_EVERY_S: u64 = 10;

thread_local! {
    static LAST_SAVED_S: Cell<u64> = const { Cell::new(0) };
    static SENDING: Cell<bool> = const { Cell::new(false) };
}

fn spool_dir(shard: &Shard) -> PathBuf {
    PathBuf::from(&shard.config().server.spool_dir)
}

pub(super) async fn save(shard: &Shard) {
    let recorder = shard.node.tls_rpt.clone();
    let dir = spool_dir(shard);
    let result = glommio::executor()
        .spawn_blocking(move || recorder.save(&dir))
        .await;
    if let Err(e) = result {
        log::error!("TLS-RPT: saving the report period: {e}");
    }
}

/// Loads the counts saved before a restart.
pub async fn start(shard: &Shard) {
    let recorder = shard.node.tls_rpt.clone();
    let dir = spool_dir(shard);
    let result = glommio::executor()
        .spawn_blocking(move || recorder.load(&dir))
        .await;
    if let Err(e) = result {
        log::error!("TLS-RPT: loading the report period: {e}");
    }
    super::retry::start(shard).await;
}

/// Once a second on core 0.
pub async fn tick(placement: &Rc<Placement>) {
    let shard = &placement.shard;
    let config = shard.config();
    if !config.tls_rpt.enabled {
        return;
    }
    let now = crate::clock::unix_s();
    let started = shard.node.tls_rpt.started_s();
    if now >= started.saturating_add(config.tls_rpt.interval_s.max(1)) && !SENDING.get() {
        SENDING.set(true);
        let placement = placement.clone();
        glommio::spawn_local(async move {
            let sent = super::send::send_period(&placement).await;
            log::info!("TLS-RPT: period closed: {sent:?}");
            SENDING.set(false);
        })
        .detach();
    }
    if now >= LAST_SAVED_S.get().saturating_add(SAVE_EVERY_S) {
        LAST_SAVED_S.set(now);
        save(shard).await;
    }
    super::retry::tick(shard);
}

/// At stop, after the sessions ended.
pub async fn stop(shard: &Shard) {
    if shard.config().tls_rpt.enabled {
        save(shard).await;
    }
}
