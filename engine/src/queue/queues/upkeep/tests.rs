use super::*;
use crate::envelope::MessageId;
use crate::queue::{BackoffSettings, QueuePolicy, QueuedRecipient};

fn item(seq: u64, now_s: u64) -> QueuedRecipient {
    QueuedRecipient::new(MessageId { core: 0, seq }, 0, now_s)
}

fn key(domain: &str) -> QueueKey {
    QueueKey::new("vmta-1", domain)
}

fn queues(idle_s: u64) -> Queues {
    let mut q = Queues::new(QueuePolicy::default());
    q.set_idle_s(idle_s);
    q
}

fn domains(snapshots: &[QueueSnapshot]) -> Vec<&str> {
    snapshots.iter().map(|s| s.domain.as_str()).collect()
}

#[test]
fn only_the_queues_that_changed_are_handed_out() {
    let mut q = queues(300);
    for n in 0..1_000 {
        q.enqueue(&key(&format!("d{n}.test")), item(n, 0));
    }
    let first = q.upkeep(0);
    assert_eq!(first.updated.len(), 1_000);
    assert_eq!(first.live, 1_000);
    let quiet = q.upkeep(1);
    assert!(quiet.updated.is_empty(), "nothing changed");
    assert!(quiet.removed.is_empty());
    assert_eq!(q.take_batch(&key("d7.test"), 10).len(), 1);
    q.record_delivered(&key("d7.test"), 1);
    let one = q.upkeep(2);
    assert_eq!(domains(&one.updated), ["d7.test"]);
    assert_eq!(
        (one.updated[0].ready, one.updated[0].stats.delivered),
        (0, 1)
    );
}

#[test]
fn an_unused_queue_is_freed_after_idle_s_and_any_use_restarts_the_clock() {
    let mut q = queues(10);
    let (a, busy) = (key("a.test"), key("busy.test"));
    q.enqueue(&a, item(1, 0));
    assert!(q.try_open_connection(&busy));
    q.upkeep(0);
    q.take_batch(&a, 10);
    q.upkeep(1);
    assert!(q.upkeep(5).removed.is_empty());
    // A connection opened and closed is a use: the idle time starts again.
    assert!(q.try_open_connection(&a));
    q.connection_closed(&a);
    q.upkeep(6);
    assert!(q.upkeep(11).removed.is_empty(), "idle since 6 only");
    assert!(q.upkeep(15).removed.is_empty());
    let freed = q.upkeep(16);
    assert_eq!(freed.removed, std::slice::from_ref(&a));
    assert!(freed.updated.is_empty());
    assert_eq!(freed.live, 1);
    assert!(q.policy(&a).is_none(), "its policy went with it");
    assert!(
        q.upkeep(1_000).removed.is_empty(),
        "a queue with a connection open is never freed"
    );
    // Mail for it again makes a new queue, published as a change.
    q.enqueue(&a, item(2, 1_001));
    assert_eq!(domains(&q.upkeep(1_001).updated), ["a.test"]);
}

#[test]
fn a_rate_limit_still_counting_a_send_keeps_the_queue() {
    let mut q = queues(10);
    let k = key("hourly.test");
    let policy = QueuePolicy {
        max_messages_per_hour: Some(1),
        ..QueuePolicy::default()
    };
    q.set_policy(&k, policy);
    assert_eq!(q.may_send(&k, 0), Ok(()));
    let mut freed_at = None;
    for now_s in 0..4_000 {
        if !q.upkeep(now_s).removed.is_empty() {
            freed_at = Some(now_s);
            break;
        }
    }
    // One send an hour: forgetting the queue earlier would allow a second send within the hour.
    let freed_at = freed_at.expect("freed once the send no longer counts");
    assert!((3_600..=3_610).contains(&freed_at), "{freed_at}");
}

#[test]
fn a_backoff_keeps_the_queue_until_its_quiet_period_ends() {
    let mut q = queues(10);
    let k = key("backoff.test");
    let policy = QueuePolicy {
        backoff: BackoffSettings {
            quiet_period: std::time::Duration::from_secs(100),
            ..BackoffSettings::default()
        },
        ..QueuePolicy::default()
    };
    q.set_policy(&k, policy);
    assert_eq!(q.backoff_match(&k, 0), Some(Transition::Entered));
    assert_eq!(q.queues_in_backoff(), 1);
    let mut left_at = None;
    let mut freed_at = None;
    for now_s in 0..200 {
        let u = q.upkeep(now_s);
        if !u.backoff_left.is_empty() {
            assert_eq!(u.backoff_left[0].0, k);
            left_at = Some(now_s);
        }
        if !u.removed.is_empty() {
            freed_at = Some(now_s);
            break;
        }
    }
    assert_eq!(left_at, Some(100), "the upkeep ends the quiet period");
    assert_eq!(q.queues_in_backoff(), 0);
    let freed_at = freed_at.expect("freed after the backoff");
    assert!((110..=120).contains(&freed_at), "{freed_at}");
}

#[test]
fn the_backoff_count_follows_entries_and_exits() {
    let mut q = queues(300);
    let (a, b) = (key("a.test"), key("b.test"));
    q.backoff_match(&a, 0);
    q.backoff_match(&a, 1);
    q.backoff_match(&b, 0);
    assert_eq!(q.queues_in_backoff(), 2);
    let recovery = BackoffSettings::default().recovery_deliveries;
    assert!(q.record_delivered(&a, u64::from(recovery)).is_some());
    assert_eq!(q.queues_in_backoff(), 1);
}

#[test]
fn the_oldest_ready_wait_counts_only_while_a_connection_slot_is_free() {
    let mut q = queues(300);
    let k = key("one.test");
    q.set_policy(
        &k,
        QueuePolicy {
            max_connections: 1,
            ..QueuePolicy::default()
        },
    );
    q.enqueue(&k, item(1, 100));
    assert_eq!(q.upkeep(100).oldest_ready_s, 0);
    assert_eq!(q.upkeep(101).oldest_ready_s, 1);
    assert_eq!(q.upkeep(130).oldest_ready_s, 30);
    // At its cap the queue is busy, not stuck.
    assert!(q.try_open_connection(&k));
    assert_eq!(q.upkeep(140).oldest_ready_s, 0);
    q.connection_closed(&k);
    assert_eq!(q.upkeep(150).oldest_ready_s, 0, "the wait starts again");
    assert_eq!(q.upkeep(160).oldest_ready_s, 10);
    // A suspended queue waits for the operator, not for a connection.
    q.suspend(&k, None, "hold");
    assert_eq!(q.upkeep(170).oldest_ready_s, 0);
    q.resume(&k);
    q.take_batch(&k, 10);
    assert_eq!(q.upkeep(180).oldest_ready_s, 0, "nothing ready");
}

#[test]
fn a_queue_is_reported_stuck_after_a_minute_with_a_slot_free_once_a_minute() {
    let mut q = queues(300);
    let (stuck, busy) = (key("stuck.test"), key("busy.test"));
    q.enqueue(&stuck, item(1, 0));
    q.set_policy(
        &busy,
        QueuePolicy {
            max_connections: 1,
            ..QueuePolicy::default()
        },
    );
    q.enqueue(&busy, item(2, 0));
    assert!(q.try_open_connection(&busy));
    assert!(q.try_open_connection(&stuck));
    q.upkeep(0);
    assert!(
        q.upkeep(STUCK_AFTER_S).stuck.is_empty(),
        "a minute is allowed"
    );
    let report = q.upkeep(STUCK_AFTER_S + 1);
    assert_eq!(
        report.stuck,
        [Stuck {
            key: stuck.clone(),
            waited_s: STUCK_AFTER_S + 1,
            ready: 1,
            connections: 1,
            max_connections: QueuePolicy::default().max_connections,
        }],
        "the queue at its cap is not stuck"
    );
    assert_eq!(report.oldest_ready_s, STUCK_AFTER_S + 1);
    assert!(
        q.upkeep(STUCK_AFTER_S + 2).stuck.is_empty(),
        "once a minute"
    );
    assert_eq!(q.upkeep(2 * STUCK_AFTER_S + 1).stuck.len(), 1);
    q.take_batch(&stuck, 10);
    assert!(q.upkeep(3 * STUCK_AFTER_S + 2).stuck.is_empty());
}

#[test]
fn a_new_idle_time_applies_to_the_queues_already_idle() {
    let mut q = queues(300);
    let k = key("a.test");
    q.suspend(&k, None, "x");
    q.resume(&k);
    q.upkeep(0);
    q.set_idle_s(5);
    assert!(q.upkeep(4).removed.is_empty());
    assert_eq!(q.upkeep(5).removed, [k]);
}

#[test]
fn a_burst_of_domains_gives_its_memory_back_and_the_survivors_keep_their_timers() {
    const DOMAINS: u64 = 100_000;
    const SURVIVORS: u64 = 1_000;
    let mut q = queues(1);
    for n in 0..DOMAINS {
        let k = key(&format!("d{n}.test"));
        q.enqueue(&k, item(n, 0));
        if n < SURVIVORS {
            q.defer(&k, item(DOMAINS + n, 0), 0, "451 later", 0);
        }
    }
    q.upkeep(0);
    for n in 0..DOMAINS {
        assert_eq!(q.take_batch(&key(&format!("d{n}.test")), 10).len(), 1);
    }
    q.upkeep(1);
    let freed = q.upkeep(2);
    assert_eq!(freed.removed.len() as u64, DOMAINS - SURVIVORS);
    assert_eq!(freed.live as u64, SURVIVORS);
    // The slots were compacted and the tables sized to what is left.
    assert_eq!(q.slots.len() as u64, SURVIVORS);
    assert!(q.free_slots.is_empty());
    assert!(
        q.index.capacity() < 4 * SURVIVORS as usize,
        "{}",
        q.index.capacity()
    );
    assert!(q.idle_checks.len() <= SURVIVORS as usize);
    assert!(q.upkeep(3).updated.is_empty());
    // Every survivor's retry still comes due, through the rebuilt wake heap.
    let mut due = q.due(300);
    due.sort();
    let mut expected: Vec<QueueKey> = (0..SURVIVORS).map(|n| key(&format!("d{n}.test"))).collect();
    expected.sort();
    assert_eq!(due, expected);
    // And a queue made after the compaction works like any other.
    let late = key("late.test");
    q.enqueue(&late, item(0, 400));
    assert_eq!(domains(&q.upkeep(400).updated).last(), Some(&"late.test"));
    assert_eq!(q.take_batch(&late, 10).len(), 1);
}

#[test]
fn queues_given_equal_policies_share_one() {
    let mut q = queues(300);
    let policy = QueuePolicy {
        max_connections: 3,
        ..QueuePolicy::default()
    };
    for n in 0..100 {
        q.set_policy(&key(&format!("d{n}.test")), policy.clone());
    }
    let first = &q.slots[0].as_ref().unwrap().policy;
    assert_eq!(
        std::rc::Rc::strong_count(first),
        101,
        "100 queues and the last-policy slot"
    );
    assert_eq!(q.policy(&key("d99.test")), Some(&policy));
}

#[test]
fn a_queue_whose_connections_are_held_may_open_one_more() {
    let mut q = queues(300);
    let k = key("slow.test");
    q.set_policy(
        &k,
        QueuePolicy {
            max_connections: 3,
            ..QueuePolicy::default()
        },
    );
    q.enqueue(&k, item(1, 100));
    // No connection: the scheduler opens one for the ready recipient anyway; not "starved".
    assert!(q.upkeep(100).starved.is_empty());
    assert!(q.upkeep(100 + STARVED_AFTER_S).starved.is_empty());
    // One connection held by a stalled receiver while mail waits with two slots free.
    assert!(q.try_open_connection(&k));
    assert_eq!(q.upkeep(110).starved, std::slice::from_ref(&k));
    // At the cap nothing more is asked for.
    assert!(q.try_open_connection(&k));
    assert!(q.try_open_connection(&k));
    assert!(q.upkeep(120).starved.is_empty());
}
