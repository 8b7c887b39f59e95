//! Report POSTs that failed, POSTed again (core 0): kept in `spool_dir/tls-rpt-posts.json`
//! (`tls_rpt::pending` has the bounds and the schedule), read back at start, retried from the
//! once-a-second tick, off the reactor.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;

use crate::shard::Shard;
use crate::transport_security::tls_rpt::pending::PendingPosts;
use crate::transport_security::tls_rpt::post;

thread_local! {
    static PENDING: RefCell<PendingPosts> = RefCell::new(PendingPosts::default());
    static RETRYING: Cell<bool> = const { Cell::new(false) };
}

fn spool_dir(shard: &Shard) -> PathBuf {
    PathBuf::from(&shard.config().server.spool_dir)
}

/// POSTs waiting for a retry on this core.
pub fn pending() -> usize {
    PENDING.with_borrow(PendingPosts::len)
}

/// Writes the waiting POSTs to the spool directory, off the reactor.
async fn save(shard: &Shard) {
    let snapshot = PENDING.with_borrow(Clone::clone);
    let dir = spool_dir(shard);
    let result = glommio::executor()
        .spawn_blocking(move || snapshot.save(&dir))
        .await;
    if let Err(e) = result {
        log::error!("TLS-RPT: saving the report POSTs to retry: {e}");
    }
}

/// Reads back the POSTs that waited for a retry before a restart.
pub async fn start(shard: &Shard) {
    let dir = spool_dir(shard);
    match glommio::executor()
        .spawn_blocking(move || PendingPosts::load(&dir))
        .await
    {
        Ok(read) => PENDING.with_borrow_mut(|p| *p = read),
        Err(e) => log::error!("TLS-RPT: reading the report POSTs to retry: {e}"),
    }
}

/// First POSTs of a period that failed: kept for a retry; how many were kept.
pub async fn failed(shard: &Shard, failures: Vec<(String, Vec<u8>)>) -> usize {
    if failures.is_empty() {
        return 0;
    }
    let now_s = crate::clock::unix_s();
    let mut kept = 0;
    PENDING.with_borrow_mut(|pending| {
        for (url, body) in failures {
            if pending.failed(&url, &body, now_s) {
                kept += 1;
            } else {
                log::warn!("TLS-RPT: report for {url} dropped: too many reports wait for a retry");
            }
        }
    });
    save(shard).await;
    kept
}

/// From the tick: starts POSTing the reports that are due again (a task of its own, one run at a
/// time, so the tick never waits for a report server).
pub fn tick(shard: &Rc<Shard>) {
    let now_s = crate::clock::unix_s();
    if RETRYING.get() || !PENDING.with_borrow(|p| p.any_due(now_s)) {
        return;
    }
    RETRYING.set(true);
    let shard = shard.clone();
    glommio::spawn_local(async move {
        retry_due(&shard, now_s).await;
        RETRYING.set(false);
    })
    .detach();
}

async fn retry_due(shard: &Shard, now_s: u64) {
    let (due, old) = PENDING.with_borrow_mut(|p| p.take_due(now_s));
    for post in &old {
        log::warn!(
            "TLS-RPT: report for {} dropped after {} failed POSTs",
            post.url,
            post.attempts
        );
    }
    let anchors = shard.config().trust_anchor_files();
    let results = glommio::executor()
        .spawn_blocking(move || {
            due.into_iter()
                .map(|p| {
                    let result = post::post(&p.url, &p.body(), &anchors);
                    (p, result)
                })
                .collect::<Vec<_>>()
        })
        .await;
    let now_s = crate::clock::unix_s();
    PENDING.with_borrow_mut(|pending| {
        for (p, result) in results {
            match result {
                Ok(()) => log::info!(
                    "TLS-RPT: report POSTed to {} on retry {}",
                    p.url,
                    p.attempts
                ),
                Err(e) => {
                    log::warn!("TLS-RPT: POST {} (retry {}): {e}", p.url, p.attempts);
                    let url = p.url.clone();
                    if !pending.failed_again(p, now_s) {
                        log::warn!("TLS-RPT: report for {url} dropped: no retry left");
                    }
                }
            }
        }
    });
    save(shard).await;
}
