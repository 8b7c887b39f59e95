//! The per-core scheduler: releases deferred recipients when their time comes, and opens a connection
//! for a queue whenever it has ready recipients and room under `max_connections`. It sleeps until the
//! next retry time or a wake-up (new recipients, a connection closed); there is no polling loop.

use std::rc::Rc;
use std::time::Duration;

use glommio::channels::local_channel::LocalReceiver;

use super::connection;
use crate::listener::reception::unix_now_s;
use crate::runtime::CoreContext;

/// Recipients that justify one more parallel connection to a queue.
const RECIPIENTS_PER_EXTRA_CONNECTION: usize = 20;

pub async fn run(core: Rc<CoreContext>, wake: LocalReceiver<()>) {
    let delivery = &core.delivery;
    let stop = core.stop_signal();
    loop {
        if core.shared.control.stopping() {
            break;
        }
        let now_s = unix_now_s();
        let _ = delivery.queues.borrow_mut().due(now_s);
        open_connections(&core);
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

/// Opens as many connections as each ready queue may and needs.
fn open_connections(core: &Rc<CoreContext>) {
    let delivery = &core.delivery;
    let snapshots = {
        let queues = delivery.queues.borrow();
        queues
            .ready_keys()
            .into_iter()
            .filter_map(|k| queues.queue_snapshot(&k).map(|s| (k, s)))
            .collect::<Vec<_>>()
    };
    for (key, snapshot) in snapshots {
        let wanted = snapshot.ready.div_ceil(RECIPIENTS_PER_EXTRA_CONNECTION) as u32;
        let mut open = snapshot.connections;
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
