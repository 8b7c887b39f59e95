//! What shaping costs per message when no limit binds: the queue operations of one delivered
//! message (take a transaction, count the delivery) without shaping, then with every check the
//! engine makes on that path (connection cap, GCRA rate per minute and per hour, backoff
//! bookkeeping, and the customer's hourly/daily counters at reception), all with limits too high
//! to bind. Prints ns per message for both and the difference.
//!
//! Run in release: `cargo run --release -p volley-bench --bin volley-shaping-bench [MESSAGES]`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use volley::config::CustomerConfig;
use volley::envelope::MessageId;
use volley::limits::{CoreLimits, SendingLimits};
use volley::queue::{QueueKey, QueuePolicy, QueuedRecipient, Queues};

const QUEUES: usize = 64;

fn fill(queues: &mut Queues, keys: &[QueueKey], messages: usize) {
    for i in 0..messages {
        let key = &keys[i % keys.len()];
        let id = MessageId {
            core: 0,
            seq: i as u64,
        };
        queues.enqueue(key, QueuedRecipient::new(id, 0, 0));
    }
}

/// ns per message of delivering `messages` through `QUEUES` queues.
fn run(messages: usize, shaping: bool) -> f64 {
    let policy = if shaping {
        QueuePolicy {
            max_messages_per_minute: Some(60_000_000),
            max_messages_per_hour: Some(u32::MAX),
            max_connections: 1_000,
            ..QueuePolicy::default()
        }
    } else {
        QueuePolicy::default()
    };
    let mut queues: Queues = Queues::new(policy);
    let keys: Vec<QueueKey> = (0..QUEUES)
        .map(|i| QueueKey::new("vmta", &format!("d{i}.example")))
        .collect();
    let limits = CoreLimits::new(Arc::new(SendingLimits::in_memory()), None);
    let customer = CustomerConfig {
        name: "acme".into(),
        password_hash: None,
        pool: None,
        max_messages_per_hour: Some(u64::from(u32::MAX)),
        max_messages_per_day: Some(u64::from(u32::MAX)),
        credits: 0,
        list_unsubscribe: None,
        spam_filter: None,
        max_bounce_percent: None,
        bounce_window_messages: 1000,
    };
    fill(&mut queues, &keys, messages);
    let start = Instant::now();
    for i in 0..messages {
        // One message per simulated millisecond: far below the limits, so none binds.
        let now_ms = 1_000_000 + i as u64;
        let key = &keys[i % keys.len()];
        if shaping {
            // Reception: the customer's counters (MAIL check and the charge at end of data).
            black_box(limits.check(Some(&customer), now_ms / 1000)).ok();
            black_box(futures_lite::future::block_on(
                limits.charge(Some(&customer), now_ms),
            ))
            .ok();
            // Delivery: the connection cap and the rate, before the transaction.
            black_box(queues.over_connection_cap(key));
            black_box(queues.may_send(key, now_ms)).ok();
        }
        let batch = queues.take_transaction(key, 100);
        black_box(&batch);
        // The delivery is counted; with shaping, this also feeds the backoff state machine.
        black_box(queues.record_delivered(key, batch.len() as u64));
    }
    start.elapsed().as_nanos() as f64 / messages as f64
}

fn main() {
    let messages: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    // Warm up, then take the best of five of each (the least disturbed by other load).
    run(messages / 10, true);
    let best = |shaping| {
        (0..5)
            .map(|_| run(messages, shaping))
            .fold(f64::INFINITY, f64::min)
    };
    let without = best(false);
    let with = best(true);
    let extra = with - without;
    println!("messages per run        {messages}");
    println!("without shaping         {without:.1} ns/message");
    println!("with shaping (no bind)  {with:.1} ns/message");
    println!("shaping cost            {extra:.1} ns/message");
    for rate in [10_000.0, 50_000.0, 100_000.0] {
        println!(
            "  share of a core at {:>6} msg/s: {:.2} %",
            rate,
            extra * rate / 1e7
        );
    }
}
