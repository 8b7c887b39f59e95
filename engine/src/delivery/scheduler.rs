//! The per-core scheduler: releases deferred recipients when their time comes, and opens a connection
//! for a queue whenever it has ready recipients and room under `max_connections`. It sleeps until the
//! next retry time or a wake-up (new recipients, a connection closed); there is no polling loop.
//! A wake-up names the queue that changed, so a busy core with many queues only looks at those.
//! While the node drains it opens nothing: the drain task hands the queues over.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::local_channel::LocalReceiver;

use super::DeliveryCore;
use super::connection;

/// Recipients that justify one more parallel connection to a queue.
const RECIPIENTS_PER_EXTRA_CONNECTION: usize = 20;

pub async fn run(core: Rc<DeliveryCore>, wake: LocalReceiver<()>) {
    let delivery = &core.delivery;
    let stop = core.stop_signal();
    let mut config = core.config();
    loop {
        if core.node.control.stopping() {
            break;
        }
        let running = core.config();
        if !Arc::ptr_eq(&config, &running) {
            config = running;
            apply_reloaded_policies(&core);
        }
        let now_s = crate::clock::unix_s();
        let mut keys = delivery.queues.borrow_mut().due(now_s);
        keys.extend(delivery.queues_to_look_at());
        keys.sort_unstable();
        keys.dedup();
        open_connections(&core, keys, false);
        open_connections(&core, delivery.take_starved(), true);
        let sleep_ms = delivery
            .queues
            .borrow_mut()
            .next_wakeup()
            .map(|at_s| at_s.saturating_sub(now_s).saturating_mul(1000).max(1));
        let timer = async {
            match sleep_ms {
                Some(ms) => glommio::timer::sleep(Duration::from_millis(ms)).await,
                None => futures_lite::future::pending::<()>().await,
            }
        };
        futures_lite::future::or(
            async {
                let _ = wake.recv().await;
            },
            futures_lite::future::or(timer, stop.wait()),
        )
        .await;
    }
}

/// A reload changes the limits of the queues that already exist, not only of those created after.
fn apply_reloaded_policies(core: &Rc<DeliveryCore>) {
    let delivery = &core.delivery;
    let keys = delivery.queues.borrow().keys();
    let mut changed = 0;
    for key in keys {
        let policy = super::CoreDelivery::policy(core, &key);
        if delivery.queues.borrow_mut().update_policy(&key, policy) {
            changed += 1;
        }
    }
    if changed > 0 {
        log::info!("configuration reloaded: new limits for {changed} existing queues");
    }
    delivery.wake();
}

/// Opens as many connections as each of these queues may and needs; with `one_more`, one beyond
/// what its ready recipients call for (its open connections are held by a slow receiver).
fn open_connections(core: &Rc<DeliveryCore>, keys: Vec<crate::queue::QueueKey>, one_more: bool) {
    // A draining node hands its queues to another (`drain`): it delivers nothing itself. A
    // cancelled drain wakes the scheduler to look at every queue again.
    if core.node.drain.is_draining() {
        return;
    }
    let delivery = &core.delivery;
    for key in keys {
        let Some((ready, connections)) = delivery.queues.borrow().ready_and_connections(&key)
        else {
            continue;
        };
        if ready == 0 {
            continue;
        }
        // Connections lingering for this queue take its recipients first.
        let queues = &delivery.queues;
        delivery
            .idle
            .wake_ready(&key, ready, || queues.borrow().has_ready_tls_optional(&key));
        let wanted = if one_more {
            connections + 1
        } else {
            ready.div_ceil(RECIPIENTS_PER_EXTRA_CONNECTION) as u32
        };
        let mut open = connections;
        while open < wanted.max(1) {
            if !delivery.queues.borrow_mut().try_open_connection(&key) {
                break;
            }
            open += 1;
            delivery.connections.set(delivery.connections.get() + 1);
            glommio::spawn_local(connection::run(core.clone(), key.clone())).detach();
        }
    }
}
