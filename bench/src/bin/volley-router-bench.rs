//! The cost of a cross-core handoff: core 0 sends `Handoff`s (what reception sends to the core owning
//! a queue) through the router to core 1, which answers each with an `Outcomes` (what delivery sends
//! back to the spooling core). Two runs: one handoff in flight at a time (the latency of a round
//! trip), then as many as the rings hold (the throughput).
//!
//! `volley-router-bench [--messages N]` (default 200,000). Pins core 0 and core 1 to CPUs 0 and 1.

use std::cell::OnceCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::{LocalExecutorBuilder, Placement};
use volley::envelope::MessageId;
use volley::router::{CoreMessage, Handoff, Router, RouterSetup};
use volley::spool::{RecipientState, RecordLocation};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn handoff(seq: u64) -> CoreMessage {
    CoreMessage::Deliver(Handoff {
        id: MessageId { core: 0, seq },
        record: RecordLocation {
            core: 0,
            segment: 0,
            offset: seq as u32,
        },
        vmta: Arc::from("v1"),
        domain: Arc::from("d0.test"),
        customer: Arc::from(""),
        recipients: vec![(0, 0)],
        not_before_s: 0,
        tls_optional: false,
    })
}

/// Sends `messages` handoffs with at most `in_flight` unanswered; returns the elapsed time.
async fn run(
    router: &Router,
    answered: &LocalReceiver<()>,
    messages: u64,
    in_flight: u64,
) -> Duration {
    let started = Instant::now();
    let mut answers = 0;
    for seq in 0..messages {
        while seq - answers >= in_flight {
            let _ = answered.recv().await;
            answers += 1;
        }
        router.send(1, handoff(seq)).await;
    }
    while answers < messages {
        let _ = answered.recv().await;
        answers += 1;
    }
    started.elapsed()
}

fn main() {
    let messages: u64 = std::env::args()
        .skip_while(|a| a != "--messages")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let setup = RouterSetup::new(2);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let receiver = {
        let setup = setup.clone();
        let done = done.clone();
        LocalExecutorBuilder::new(Placement::Fixed(1))
            .spawn(move || async move {
                // Core 1 answers every handoff with an outcome, as delivery does.
                let cell: Rc<OnceCell<Router>> = Rc::new(OnceCell::new());
                let reply_via = cell.clone();
                let router = setup
                    .connect(
                        1,
                        Rc::new(move |m| {
                            if let CoreMessage::Deliver(h) = m {
                                let via = reply_via.clone();
                                glommio::spawn_local(async move {
                                    // The first handoffs may come before this core's router is stored.
                                    while via.get().is_none() {
                                        glommio::timer::sleep(Duration::from_millis(1)).await;
                                    }
                                    if let Some(r) = via.get() {
                                        let state = RecipientState::Delivered;
                                        r.send(
                                            0,
                                            CoreMessage::Outcomes {
                                                id: h.id,
                                                states: vec![(0, state)],
                                            },
                                        )
                                        .await;
                                    }
                                })
                                .detach();
                            }
                        }),
                    )
                    .await
                    .expect("router of core 1");
                let _ = cell.set(router);
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            })
            .expect("executor 1")
    };
    let sender = LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move {
            let (answer, answered) = local_channel::new_unbounded();
            let router = setup
                .connect(
                    0,
                    Rc::new(move |m| {
                        if let CoreMessage::Outcomes { .. } = m {
                            let _ = answer.try_send(());
                        }
                    }),
                )
                .await
                .expect("router of core 0");
            let one = run(&router, &answered, messages / 10, 1).await;
            let many = run(&router, &answered, messages, 1024).await;
            (one, many)
        })
        .expect("executor 0");
    let (one, many) = sender.join().expect("sender");
    done.store(true, std::sync::atomic::Ordering::Release);
    receiver.join().expect("receiver");
    let latency_us = one.as_secs_f64() * 1e6 / (messages / 10) as f64;
    let per_s = messages as f64 / many.as_secs_f64();
    println!(
        "profile: {}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "one in flight:  {:.2} us per round trip (Deliver core 0 -> 1, Outcomes 1 -> 0)",
        latency_us
    );
    println!(
        "1024 in flight: {per_s:.0} handoffs/s ({:.2} us per handoff and answer)",
        1e6 / per_s
    );
}
