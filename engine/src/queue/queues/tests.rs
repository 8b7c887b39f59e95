use std::mem::size_of;
use std::time::Duration;

use super::*;

type Item = QueuedRecipient;

const MINUTE: u64 = 60;

fn item(seq: u64, recipient: u32, now_s: u64) -> Item {
    QueuedRecipient::new(MessageId { core: 0, seq }, recipient, now_s)
}

fn key(domain: &str) -> QueueKey {
    QueueKey::new("vmta-1", domain)
}

fn queues() -> Queues {
    Queues::new(QueuePolicy::default())
}

fn seqs(items: &[Item]) -> Vec<u64> {
    items.iter().map(|i| i.message.seq).collect()
}

#[test]
fn item_fits_the_memory_budget() {
    // 16 (MessageId) + 4 + 2 + 1 (`tls_optional`, +1 padding) + 8 = 32 bytes; containers keep capacity within twice
    // the length, so at worst 64 bytes per queued recipient.
    assert_eq!(size_of::<QueuedRecipient>(), 32);
    // The heap wrapper adds nothing.
    assert_eq!(size_of::<Deferred>(), size_of::<QueuedRecipient>());
}

#[test]
fn tls_optional_recipients_are_taken_apart() {
    let mut q = queues();
    let k = key("example.com");
    let optional = |seq, recipient| {
        let mut i = item(seq, recipient, 0);
        i.tls_optional = true;
        i
    };
    for i in [
        item(1, 0, 0),
        optional(2, 0),
        optional(2, 1),
        item(3, 0, 0),
        optional(4, 0),
    ] {
        q.enqueue(&k, i);
    }
    assert!(q.has_ready_tls_optional(&k));
    let taken = q.take_tls_optional_transaction(&k, 100);
    assert_eq!(seqs(&taken), [2, 2]);
    assert!(taken.iter().all(|i| i.tls_optional));
    let required = q.take_ready_tls_required(&k);
    assert_eq!(seqs(&required), [1, 3]);
    assert_eq!(
        seqs(&q.take_batch(&k, 10)),
        [4],
        "the others stay, in order"
    );
    assert!(!q.has_ready_tls_optional(&k));
    assert!(q.take_tls_optional_transaction(&k, 100).is_empty());
}

#[test]
fn containers_are_trimmed_after_a_drain() {
    let mut q = queues();
    let k = key("example.com");
    for seq in 0..10_000 {
        q.enqueue(&k, item(seq, 0, 0));
    }
    let taken = q.take_batch(&k, 9_900);
    assert_eq!(taken.len(), 9_900);
    let slot = q.index[&k] as usize;
    let queue = q.slots[slot].as_ref().unwrap();
    assert!(queue.ready.capacity() <= 2 * queue.ready.len().max(SHRINK_MIN_CAPACITY));
}

#[test]
fn key_normalises_domain() {
    assert_eq!(
        QueueKey::new("v", "Example.COM."),
        QueueKey::new("v", "example.com")
    );
    assert_eq!(QueueKey::new("v", "a.example").to_string(), "v/a.example");
}

#[test]
fn ready_fifo_keeps_order() {
    let mut q = queues();
    let k = key("example.com");
    for seq in 0..10 {
        q.enqueue(&k, item(seq, 0, 0));
    }
    assert_eq!(seqs(&q.take_batch(&k, 3)), [0, 1, 2]);
    assert_eq!(seqs(&q.take_batch(&k, 100)), [3, 4, 5, 6, 7, 8, 9]);
    assert!(q.take_batch(&k, 10).is_empty());
    assert!(q.take_batch(&key("unknown.example"), 10).is_empty());
}

#[test]
fn queues_are_separate() {
    let mut q = queues();
    q.enqueue(&key("a.example"), item(1, 0, 0));
    q.enqueue(&QueueKey::new("vmta-2", "a.example"), item(2, 0, 0));
    assert_eq!(seqs(&q.take_batch(&key("a.example"), 10)), [1]);
    assert_eq!(q.queue_count(), 2);
    assert_eq!(q.len(), 1);
}

#[test]
fn transaction_takes_one_message_capped() {
    let mut q = queues();
    let k = key("example.com");
    for r in 0..5 {
        q.enqueue(&k, item(7, r, 0));
    }
    q.enqueue(&k, item(8, 0, 0));
    let first = q.take_transaction(&k, 3);
    assert_eq!(
        first.iter().map(|i| i.recipient).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let second = q.take_transaction(&k, 100);
    assert_eq!(
        second.iter().map(|i| i.recipient).collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(seqs(&q.take_transaction(&k, 100)), [8]);
}

#[test]
fn unsent_items_go_back_to_the_head_in_order() {
    let mut q = queues();
    let k = key("example.com");
    for seq in 0..5 {
        q.enqueue(&k, item(seq, 0, 0));
    }
    let batch = q.take_batch(&k, 3);
    q.return_unsent(&k, batch);
    assert_eq!(seqs(&q.take_batch(&k, 10)), [0, 1, 2, 3, 4]);
}

#[test]
fn retry_schedule_follows_intervals_and_repeats_the_last() {
    let mut q = queues();
    let k = key("example.com");
    let mut it = item(1, 0, 0);
    let mut now_s = 0;
    let mut waits_min = Vec::new();
    for _ in 0..8 {
        match q.defer(&k, it, 0, "451 4.3.0 try later", now_s) {
            DeferOutcome::Retry { at_s } => {
                waits_min.push((at_s - now_s) / MINUTE);
                now_s = at_s;
            }
            DeferOutcome::Expired { .. } => panic!("expired too early"),
        }
        assert!(q.due(now_s - 1).is_empty(), "released before its time");
        assert_eq!(q.due(now_s), std::slice::from_ref(&k));
        it = q.take_batch(&k, 1)[0];
    }
    assert_eq!(waits_min, [5, 10, 30, 60, 120, 240, 240, 240]);
    assert_eq!(it.attempts, 8);
    assert_eq!(it.next_attempt_s, now_s);
    let snap = q.queue_snapshot(&k).unwrap();
    assert_eq!(snap.stats.deferred, 8);
    assert_eq!(snap.last_deferral.as_deref(), Some("451 4.3.0 try later"));
}

#[test]
fn expires_at_max_queue_age() {
    let policy = QueuePolicy {
        retry_intervals: vec![Duration::from_secs(40 * MINUTE)],
        max_queue_age: Duration::from_secs(100 * MINUTE),
        ..QueuePolicy::default()
    };
    let mut q = Queues::new(policy);
    let k = key("example.com");
    let start_s = 1_000;
    let mut it = item(1, 0, start_s);
    // Tries at +0, +40, +80 min; the next retry is clamped to the expiry time (+100 min).
    let mut times = Vec::new();
    let mut now_s = start_s;
    loop {
        match q.defer(&k, it, start_s, "421 4.4.2 timeout", now_s) {
            DeferOutcome::Retry { at_s } => {
                times.push((at_s - start_s) / MINUTE);
                now_s = at_s;
                q.due(now_s);
                it = q.take_batch(&k, 1)[0];
            }
            DeferOutcome::Expired { item } => {
                assert_eq!(now_s - start_s, 100 * MINUTE);
                assert_eq!(item.attempts, 4);
                break;
            }
        }
    }
    assert_eq!(times, [40, 80, 100]);
    assert_eq!(q.queue_snapshot(&k).unwrap().stats.expired, 1);
    // Just under the age it is still retried.
    let young = item(2, 0, start_s);
    assert!(matches!(
        q.defer(&k, young, start_s, "x", start_s + 100 * MINUTE - 1),
        DeferOutcome::Retry { at_s } if at_s == start_s + 100 * MINUTE
    ));
}

#[test]
fn due_releases_exactly_the_items_whose_time_came() {
    let mut q = queues();
    let (a, b) = (key("a.example"), key("b.example"));
    for (seq, at_s) in [(1, 100), (2, 200), (3, 100), (4, 300)] {
        let mut it = item(seq, 0, 0);
        it.next_attempt_s = at_s;
        q.schedule(if seq % 2 == 1 { &a } else { &b }, it);
    }
    assert_eq!(q.next_wakeup(), Some(100));
    assert!(q.due(99).is_empty());
    assert_eq!(q.due(100), std::slice::from_ref(&a));
    assert_eq!(seqs(&q.take_batch(&a, 10)), [1, 3]);
    assert_eq!(q.next_wakeup(), Some(200));
    assert_eq!(q.due(250), std::slice::from_ref(&b));
    assert_eq!(seqs(&q.take_batch(&b, 10)), [2]);
    assert_eq!(q.queue_snapshot(&b).unwrap().next_attempt_s, Some(300));
    assert!(q.due(299).is_empty());
    assert_eq!(q.due(1_000), std::slice::from_ref(&b));
    assert_eq!(seqs(&q.take_batch(&b, 10)), [4]);
    assert_eq!(q.next_wakeup(), None);
    assert!(q.is_empty());
}

#[test]
fn an_earlier_deferral_moves_the_wakeup() {
    let mut q = queues();
    let k = key("example.com");
    let mut late = item(1, 0, 0);
    late.next_attempt_s = 1_000;
    q.schedule(&k, late);
    let mut early = item(2, 0, 0);
    early.next_attempt_s = 10;
    q.schedule(&k, early);
    assert_eq!(q.next_wakeup(), Some(10));
    assert_eq!(q.due(10), std::slice::from_ref(&k));
    assert_eq!(seqs(&q.take_batch(&k, 10)), [2]);
    // The stale entry for 1 000 was superseded, and a live one for 1 000 remains.
    assert_eq!(q.next_wakeup(), Some(1_000));
    assert_eq!(q.due(1_000), std::slice::from_ref(&k));
    assert_eq!(q.next_wakeup(), None);
}

#[test]
fn suspend_holds_items_until_resume() {
    let mut q = queues();
    let k = key("example.com");
    q.enqueue(&k, item(1, 0, 0));
    q.suspend(&k, None, "blocklisted at provider");
    assert!(q.take_batch(&k, 10).is_empty());
    assert!(q.take_transaction(&k, 10).is_empty());
    assert!(!q.try_open_connection(&k));
    // Retries still come due while suspended, but are not announced.
    let mut it = item(2, 0, 0);
    it.next_attempt_s = 50;
    q.schedule(&k, it);
    assert!(q.due(60).is_empty());
    let snap = q.queue_snapshot(&k).unwrap();
    assert_eq!((snap.ready, snap.deferred), (2, 0));
    assert!(
        matches!(snap.state, QueueState::Suspended { until_s: None, ref reason } if reason == "blocklisted at provider")
    );
    // Mail arriving for a suspended queue is held too.
    q.enqueue(&k, item(3, 0, 0));
    assert!(q.resume(&k));
    assert_eq!(seqs(&q.take_batch(&k, 10)), [1, 2, 3]);
    assert!(!q.resume(&key("unknown.example")));
}

#[test]
fn timed_suspension_ends_in_due() {
    let mut q = queues();
    let k = key("example.com");
    q.enqueue(&k, item(1, 0, 0));
    q.suspend(&k, Some(500), "rate complaint");
    assert_eq!(q.next_wakeup(), Some(500));
    assert!(q.due(499).is_empty());
    assert!(q.take_batch(&k, 10).is_empty());
    assert_eq!(q.due(500), std::slice::from_ref(&k));
    assert_eq!(q.queue_snapshot(&k).unwrap().state, QueueState::Active);
    assert_eq!(seqs(&q.take_batch(&k, 10)), [1]);
}

#[test]
fn suspension_on_an_unknown_queue_holds_later_mail() {
    let mut q = queues();
    let k = key("example.com");
    q.suspend(&k, None, "manual");
    q.enqueue(&k, item(1, 0, 0));
    assert!(q.take_batch(&k, 1).is_empty());
    q.set_idle_s(10);
    q.upkeep(0);
    assert!(q.upkeep(1_000).removed.is_empty(), "a suspension is kept");
    assert!(q.resume(&k));
}

#[test]
fn bounce_all_drains_ready_and_deferred() {
    let mut q = queues();
    let k = key("example.com");
    q.enqueue(&k, item(1, 0, 0));
    q.defer(&k, item(2, 0, 0), 0, "451", 0);
    q.defer(&k, item(3, 0, 0), 0, "451", 10);
    let drained = q.bounce_all(&k);
    assert_eq!(seqs(&drained), [1, 2, 3]);
    assert!(q.is_empty());
    assert_eq!(q.next_wakeup(), None);
    assert!(q.due(u64::MAX).is_empty());
    // Counted by the caller once each bounce is recorded, not twice.
    assert_eq!(q.queue_snapshot(&k).unwrap().stats.bounced, 0);
    assert!(q.bounce_all(&key("unknown.example")).is_empty());
}

#[test]
fn take_for_handover_takes_ready_then_deferred_even_suspended() {
    let mut q = queues();
    let k = key("example.com");
    q.enqueue(&k, item(1, 0, 0));
    q.defer(&k, item(3, 0, 0), 0, "451", 50);
    q.defer(&k, item(2, 0, 0), 0, "451", 10);
    q.enqueue(&k, item(4, 0, 0));
    q.suspend(&k, None, "by the operator");
    assert_eq!(seqs(&q.take_for_handover(&k, 3)), [1, 4, 2]);
    assert_eq!(q.len(), 1);
    let rest = q.take_for_handover(&k, 10);
    assert_eq!(seqs(&rest), [3]);
    assert_eq!(rest[0].attempts, 1, "the attempt count goes along");
    assert!(q.is_empty());
    assert_eq!(q.next_wakeup(), None, "no timer left for what was taken");
    assert!(q.take_for_handover(&key("unknown.example"), 10).is_empty());
    // What the other node did not take comes back as it was.
    q.schedule(&k, rest[0]);
    assert_eq!(q.next_wakeup(), Some(rest[0].next_attempt_s));
}

#[test]
fn connection_cap_is_respected() {
    let mut q = queues();
    let k = key("example.com");
    q.set_policy(
        &k,
        QueuePolicy {
            max_connections: 3,
            ..QueuePolicy::default()
        },
    );
    assert_eq!(q.policy(&k).map(|p| p.max_connections), Some(3));
    assert_eq!((0..5).filter(|_| q.try_open_connection(&k)).count(), 3);
    assert_eq!(q.queue_snapshot(&k).unwrap().connections, 3);
    q.connection_closed(&k);
    assert!(q.try_open_connection(&k));
    assert!(!q.try_open_connection(&k));
    for _ in 0..10 {
        q.connection_closed(&k);
    }
    assert_eq!(q.queue_snapshot(&k).unwrap().connections, 0);
}

#[test]
fn may_send_follows_the_queue_policy() {
    let mut q = queues();
    let limited = key("limited.example");
    q.set_policy(
        &limited,
        QueuePolicy {
            max_messages_per_minute: Some(60),
            ..QueuePolicy::default()
        },
    );
    assert_eq!(q.may_send(&limited, 0), Ok(()));
    assert_eq!(q.may_send(&limited, 0), Err(RateWait::For(1_000)));
    assert_eq!(q.may_send(&limited, 1_000), Ok(()));
    let free = key("free.example");
    assert!((0..1_000).all(|_| q.may_send(&free, 0).is_ok()));
}

#[test]
fn rate_limit_holds_within_one_percent_over_an_hour_via_queues() {
    let mut q = queues();
    let k = key("example.com");
    q.set_policy(
        &k,
        QueuePolicy {
            max_messages_per_minute: Some(300),
            ..QueuePolicy::default()
        },
    );
    let (mut now_ms, mut sent) = (0u64, 0u64);
    while now_ms < 3_600_000 {
        match q.may_send(&k, now_ms) {
            Ok(()) => sent += 1,
            Err(RateWait::For(wait_ms)) => now_ms += wait_ms,
            Err(RateWait::Reserve) => panic!("not cluster-shaped"),
        }
    }
    assert!((18_000..=18_180).contains(&sent), "sent {sent}");
}

#[test]
fn snapshot_lists_every_queue() {
    let mut q = queues();
    q.enqueue(&key("b.example"), item(1, 0, 0));
    q.defer(
        &key("a.example"),
        item(2, 0, 0),
        0,
        "452 4.2.2 mailbox full",
        100,
    );
    q.record_delivered(&key("b.example"), 4);
    q.record_bounced(&key("b.example"), 1);
    let snap = q.snapshot();
    assert_eq!(snap.len(), 2);
    assert_eq!(snap[0].domain, "a.example");
    assert_eq!(
        (snap[0].size(), snap[0].deferred, snap[0].next_attempt_s),
        (1, 1, Some(400))
    );
    assert_eq!(snap[1].domain, "b.example");
    assert_eq!(
        (
            snap[1].ready,
            snap[1].stats.delivered,
            snap[1].stats.bounced
        ),
        (1, 4, 1)
    );
    assert_eq!(snap[1].vmta, "vmta-1");
}

#[test]
fn long_replies_are_cut_on_a_char_boundary() {
    let mut q = queues();
    let k = key("example.com");
    let reply = "é".repeat(MAX_REPLY_TEXT_BYTES);
    q.defer(&k, item(1, 0, 0), 0, &reply, 0);
    let kept = q.queue_snapshot(&k).unwrap().last_deferral.unwrap();
    assert!(kept.len() <= MAX_REPLY_TEXT_BYTES && kept.len() >= MAX_REPLY_TEXT_BYTES - 1);
}

#[test]
fn idle_queues_are_removed_and_slots_reused() {
    let mut q = queues();
    q.set_idle_s(10);
    let (a, b) = (key("a.example"), key("b.example"));
    q.enqueue(&a, item(1, 0, 0));
    q.defer(&b, item(2, 0, 0), 0, "451", 0);
    q.upkeep(0);
    q.take_batch(&a, 10);
    q.upkeep(1);
    assert!(q.upkeep(10).removed.is_empty(), "idle for 9 s only");
    assert_eq!(q.upkeep(11).removed, [a]);
    assert_eq!(q.queue_count(), 1);
    q.enqueue(&key("c.example"), item(3, 0, 0));
    assert_eq!(q.slots.len(), 2, "the freed slot is reused");
    // The deferred recipient of b is unaffected by the slot reuse.
    assert_eq!(q.due(300), std::slice::from_ref(&b));
    assert_eq!(seqs(&q.take_batch(&b, 10)), [2]);
}

#[test]
fn a_million_deferred_recipients_drain_in_order() {
    const ITEMS: u64 = 1_000_000;
    const QUEUES: u64 = 10;
    let mut q = queues();
    let keys: Vec<QueueKey> = (0..QUEUES).map(|d| key(&format!("d{d}.example"))).collect();
    let mut rng = fastrand::Rng::with_seed(7);
    for seq in 0..ITEMS {
        let mut it = item(seq, 0, 0);
        it.next_attempt_s = rng.u64(1..=10_000);
        q.schedule(&keys[(seq % QUEUES) as usize], it);
    }
    assert_eq!(q.len(), ITEMS as usize);
    let mut released = 0u64;
    let mut last = (0, MessageId { core: 0, seq: 0 });
    while let Some(now_s) = q.next_wakeup() {
        for k in q.due(now_s) {
            for it in q.take_batch(&k, usize::MAX) {
                assert_eq!(it.next_attempt_s, now_s, "released late or early");
                let order = (it.next_attempt_s, it.message);
                // Within one wake time queues come in turn; within a queue messages are in order.
                assert!(order.0 >= last.0);
                last = order;
                released += 1;
            }
        }
    }
    assert_eq!(released, ITEMS);
    assert!(q.is_empty());
}

#[test]
fn a_new_policy_reaches_an_existing_queue_and_ends_its_rate_wait() {
    let mut q = queues();
    let k = key("example.com");
    let slow = QueuePolicy {
        max_messages_per_minute: Some(1),
        ..QueuePolicy::default()
    };
    q.set_policy(&k, slow.clone());
    q.enqueue(&k, item(1, 0, 0));
    q.hold_for_rate(&k, 60);
    assert!(
        q.take_batch(&k, 10).is_empty(),
        "held while waiting for the rate"
    );
    assert_eq!(
        q.queue_snapshot(&k)
            .map(|s| s.state.reason().map(str::to_string)),
        Some(Some(
            "rate limit reached: waiting for the next send".to_string()
        ))
    );
    assert!(!q.update_policy(&k, slow), "same policy: nothing changes");
    assert!(q.take_batch(&k, 10).is_empty());
    let fast = QueuePolicy {
        max_messages_per_minute: Some(6_000),
        ..QueuePolicy::default()
    };
    assert!(q.update_policy(&k, fast.clone()));
    assert_eq!(q.policy(&k), Some(&fast));
    assert_eq!(
        seqs(&q.take_batch(&k, 10)),
        [1],
        "the wait for the old rate ended"
    );
    assert_eq!(q.keys(), vec![k.clone()]);
    assert!(!q.update_policy(&key("unknown.example"), fast));
}

#[test]
fn a_new_policy_keeps_an_operator_suspension_and_rate_wait_does_not_override_it() {
    let mut q = queues();
    let k = key("example.com");
    q.enqueue(&k, item(1, 0, 0));
    q.suspend(&k, None, "operator");
    q.hold_for_rate(&k, 60);
    let other = QueuePolicy {
        max_connections: 7,
        ..QueuePolicy::default()
    };
    assert!(q.update_policy(&k, other));
    assert!(
        q.take_batch(&k, 10).is_empty(),
        "still suspended by the operator"
    );
    assert!(matches!(
        q.queue_snapshot(&k).map(|s| s.state),
        Some(QueueState::Suspended { until_s: None, .. })
    ));
}

#[test]
fn a_rate_wait_ends_by_itself_in_due() {
    let mut q = queues();
    let k = key("example.com");
    q.enqueue(&k, item(1, 0, 0));
    q.hold_for_rate(&k, 100);
    assert_eq!(q.next_wakeup(), Some(100));
    assert!(q.due(99).is_empty());
    assert_eq!(q.due(100), vec![k.clone()]);
    assert_eq!(seqs(&q.take_batch(&k, 10)), [1]);
}

#[test]
fn established_connections_count_only_open_ones_that_got_through() {
    let mut q = Queues::new(QueuePolicy::default());
    let k = QueueKey::new("v", "example.test");
    assert!(q.try_open_connection(&k));
    assert!(q.try_open_connection(&k));
    assert_eq!(q.established_connections(&k), 0);
    q.connection_established(&k);
    assert_eq!(q.established_connections(&k), 1);
    q.connection_established(&k);
    q.connection_established(&k);
    assert_eq!(
        q.established_connections(&k),
        2,
        "never more than the open connections"
    );
    q.established_connection_ended(&k);
    q.connection_closed(&k);
    assert_eq!(q.established_connections(&k), 1);
}

#[test]
fn a_cluster_shaped_queue_spends_reserved_sends_and_waits_for_a_connection_slot() {
    use crate::queue::{ClusterScope, SendSpacing};
    let mut q = queues();
    let k = key("cluster.example");
    q.set_policy(
        &k,
        QueuePolicy {
            max_connections: 4,
            max_messages_per_minute: Some(60),
            cluster: Some(ClusterScope::Domain),
            ..QueuePolicy::default()
        },
    );
    assert_eq!(q.cluster_scope(&k), Some(ClusterScope::Domain));
    assert_eq!(q.cluster_scope(&key("other.example")), None);
    // No send without a reservation; then the reserved ones, on time.
    assert_eq!(q.may_send(&k, 5_000), Err(RateWait::Reserve));
    let (want, spacing) = q.begin_reserve(&k, 5_000).unwrap();
    assert_eq!(spacing, SendSpacing::of(Some(60), None).unwrap());
    assert!(want >= 1);
    q.reserved(&k, 5_000, 2, 500_000, spacing);
    assert_eq!(q.may_send(&k, 5_000), Ok(()));
    assert_eq!(q.may_send(&k, 5_000), Err(RateWait::For(1_000)));
    assert_eq!(q.may_send(&k, 6_000), Ok(()));
    assert_eq!(q.may_send(&k, 6_000), Err(RateWait::Reserve));
    // A full horizon: wait for what Redis said.
    q.begin_reserve(&k, 6_000);
    q.reserved(&k, 6_000, 0, 300_000, spacing);
    assert_eq!(q.may_send(&k, 6_000), Err(RateWait::For(300)));

    // The cluster's connection cap is full: no new connection until `due` passes the wait; the
    // open one goes on (its queue stays active).
    q.enqueue(&k, item(1, 0, 10));
    assert!(q.try_open_connection(&k));
    q.wait_for_cluster_connection(&k, 11);
    assert!(!q.try_open_connection(&k));
    assert!(q.has_ready(&k), "the open connection still takes mail");
    assert_eq!(q.next_wakeup(), Some(11));
    assert!(q.due(10).is_empty());
    assert_eq!(q.due(11), vec![k.clone()]);
    assert!(q.try_open_connection(&k));

    // Redis down, local-share over 2 nodes: half the caps, on the queue's own count.
    assert!(q.set_local_share(&k, Some(2)));
    assert!(!q.set_local_share(&k, Some(2)), "no change");
    assert_eq!(q.max_connections(&k), 2);
    assert!(!q.try_open_connection(&k), "2 open: the share is used");
    assert_eq!(q.may_send(&k, 100_000), Ok(()));
    assert_eq!(q.may_send(&k, 100_000), Err(RateWait::For(2_000)), "30/min");
    assert!(q.set_local_share(&k, None));
    assert_eq!(q.max_connections(&k), 4);
    assert_eq!(
        q.may_send(&k, 100_000),
        Err(RateWait::Reserve),
        "back on Redis"
    );
}

#[test]
fn a_policy_without_cluster_leaves_the_queue_local() {
    let mut q = queues();
    let k = key("local.example");
    q.set_policy(
        &k,
        QueuePolicy {
            max_messages_per_minute: Some(60),
            ..QueuePolicy::default()
        },
    );
    assert_eq!(q.cluster_scope(&k), None);
    assert!(q.begin_reserve(&k, 0).is_none());
    assert!(!q.set_local_share(&k, Some(2)));
    assert_eq!(q.may_send(&k, 0), Ok(()));
}
