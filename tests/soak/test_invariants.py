"""Each soak invariant fails when its condition is broken and holds when it is not (plain data, no
daemon)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from invariants import (  # noqa: E402
    Accepted,
    Evidence,
    QueueSample,
    check_all,
    check_bounces_have_dsns,
    check_clean_stop,
    check_nothing_outlives_max_queue_age,
    check_at_most_one_final,
    check_final_or_queued,
    check_no_duplicate_delivery,
    check_no_stuck_ready,
    check_queued_have_a_future_attempt,
    check_receptions_logged,
    check_rss_returned,
)


def accepted(n: int, domain: str = "a.test", kind: str = "healthy") -> list[Accepted]:
    return [Accepted(f"q{i}", f"r{i}@{domain}", f"<m{i}@x>", domain, kind, 0.0) for i in range(n)]


def event(kind: str, a: Accepted, time: str = "1970-01-01T00:00:30.123456789Z") -> dict:
    return {"type": kind, "id": a.queue_id, "recipient": a.recipient, "domain": a.domain,
            "time": time}


def queue(domain: str, ready=0, deferred=0, connections=0, max_connections=4, next_attempt_s=None,
          state="active") -> dict:
    return {"vmta": "v1", "domain": domain, "ready": ready, "deferred": deferred,
            "size": ready + deferred, "connections": connections,
            "max_connections": max_connections, "next_attempt_s": next_attempt_s, "state": state}


def evidence(acc, acct, sink=(), queues=(), **kw) -> Evidence:
    return Evidence(accepted=acc, acct=acct, sink_lines=list(sink), final_queues=list(queues),
                    final_time_s=100.0, **kw)


def test_a_clean_run_holds_everything_but_the_skipped_gauge():
    acc = accepted(3)
    acct = [event("reception", a) for a in acc] + [event("delivery", a) for a in acc[:2]]
    sink = [{"message_id": a.message_id, "recipients": [a.recipient]} for a in acc[:2]]
    queues = [queue("a.test", deferred=1, next_attempt_s=150)]
    checks = check_all(evidence(acc, acct, sink, queues, memory_before_burst_kib=memory(1000),
                                memory_after_kib=memory(1050)))
    assert [c.status for c in checks] == ["held"] * 5 + ["skipped", "skipped", "held", "skipped", "skipped"], checks


def test_a_missing_reception_is_a_violation():
    acc = accepted(2)
    check = check_receptions_logged(evidence(acc, [event("reception", acc[0])]))
    assert check.violated and "q1 r1@a.test" in check.detail


def test_two_final_events_are_a_violation():
    acc = accepted(1)
    check = check_at_most_one_final(evidence(acc, [event("delivery", acc[0]), event("bounce", acc[0])]))
    assert check.violated and "x2" in check.detail


def test_a_recipient_delivered_twice_is_a_violation_unless_in_flight_at_a_kill():
    acc = accepted(1)
    line = {"message_id": acc[0].message_id, "recipients": [acc[0].recipient],
            "time": "1970-01-01T00:00:50.500Z"}
    assert check_no_duplicate_delivery(evidence(acc, [], [line, line])).violated
    assert not check_no_duplicate_delivery(evidence(acc, [], [line])).violated
    around = check_no_duplicate_delivery(evidence(acc, [], [line, line], kill_times_s=[48.0]))
    assert around.status == "held" and "1 duplicates" in around.detail
    assert check_no_duplicate_delivery(evidence(acc, [], [line, line], kill_times_s=[40.0])).violated


def test_an_unfinished_recipient_not_queued_is_lost():
    acc = accepted(3, "t.test", "tarpit")
    check = check_final_or_queued(evidence(acc, [], queues=[queue("t.test", deferred=1, next_attempt_s=9)]))
    assert check.violated and "2 recipients have no final event, are not queued" in check.detail
    assert "tarpit 2" in check.detail
    # With a connection of the domain open, they are in flight, not lost.
    flying = check_final_or_queued(
        evidence(acc, [], queues=[queue("t.test", deferred=1, connections=1, next_attempt_s=9)]))
    assert not flying.violated and "2 in flight" in flying.detail
    held = check_final_or_queued(evidence(acc, [], queues=[queue("t.test", deferred=3, next_attempt_s=9)]))
    assert not held.violated


def test_a_delivery_without_a_final_event_is_named():
    acc = accepted(1)
    sink = [{"message_id": acc[0].message_id, "recipients": [acc[0].recipient]}]
    check = check_final_or_queued(evidence(acc, [], sink))
    assert check.violated and "reached a sink but have no final event" in check.detail


def test_deferred_without_a_next_attempt_is_a_violation():
    assert check_queued_have_a_future_attempt(
        evidence([], [], queues=[queue("a.test", deferred=2, next_attempt_s=None)])).violated
    assert not check_queued_have_a_future_attempt(
        evidence([], [], queues=[queue("a.test", ready=2, connections=4)])).violated


def test_stuck_ready_needs_the_gauge_and_then_catches_long_waits():
    stuck = [QueueSample(t, [queue("a.test", ready=1)], oldest_ready_s=float(t)) for t in range(0, 20)]
    skipped = check_no_stuck_ready(evidence([], [], samples=stuck, longest_deadline_s=5.0))
    assert skipped.status == "skipped" and "a.test for 19s" in skipped.detail
    violated = check_no_stuck_ready(
        evidence([], [], samples=stuck, longest_deadline_s=5.0, gauge_present=True))
    assert violated.violated, violated
    # The bound is the deadline + 1 s + the gauge's rounding (1 s): 7 s passes, 8 s does not.
    def at_most(gauge_s):
        samples = [QueueSample(0, [queue("a.test", ready=1)], oldest_ready_s=gauge_s)]
        return check_no_stuck_ready(
            evidence([], [], samples=samples, longest_deadline_s=5.0, gauge_present=True))
    assert not at_most(7.0).violated
    assert at_most(8.0).violated
    busy = [QueueSample(t, [queue("a.test", ready=1, connections=4)], oldest_ready_s=float(t))
            for t in range(0, 20)]
    assert not check_no_stuck_ready(
        evidence([], [], samples=busy, longest_deadline_s=5.0, gauge_present=True)).violated


def memory(anon_kib: int, file_kib: int = 5000) -> dict[str, int]:
    return {"VmRSS": anon_kib + file_kib, "RssAnon": anon_kib, "RssFile": file_kib}


def test_rss_growth_over_ten_percent_is_a_violation():
    def check(before: dict[str, int], after: dict[str, int]):
        return check_rss_returned(evidence([], [], memory_before_burst_kib=before,
                                           memory_after_kib=after))
    assert check(memory(1000), memory(1101)).violated
    assert not check(memory(1000), memory(1100)).violated
    assert check_rss_returned(evidence([], [])).status == "skipped"


def test_rss_invariant_holds_anonymous_memory_only():
    # File-backed pages (mapped spool segments) growing tenfold do not count; anonymous ones do.
    assert not check_rss_returned(evidence([], [], memory_before_burst_kib=memory(1000, 500),
                                           memory_after_kib=memory(1000, 5000))).violated
    assert check_rss_returned(evidence([], [], memory_before_burst_kib=memory(1000, 5000),
                                       memory_after_kib=memory(1200, 500))).violated


def test_a_bounce_without_a_dsn_is_a_violation():
    acc = accepted(2)
    acct = [event("bounce", acc[0]), event("expiration", acc[1])]
    check = check_bounces_have_dsns(evidence(acc, acct, dsns={("q0", "r0@a.test")}))
    assert check.violated and "q1 r1@a.test" in check.detail
    assert not check_bounces_have_dsns(
        evidence(acc, acct, dsns={("q0", "R0@a.test"), ("q1", "r1@a.test")})).violated
    # A bounce in the last seconds before the end (100 s) may still have its DSN on the way.
    late = [event("bounce", acc[0]), event("expiration", acc[1], "1970-01-01T00:01:35Z")]
    assert not check_bounces_have_dsns(evidence(acc, late, dsns={("q0", "r0@a.test")})).violated


def test_a_stop_that_needs_kill_is_a_violation():
    assert check_clean_stop(evidence([], [], stop_exit=-9)).violated
    assert check_clean_stop(evidence([], [], stop_exit=0)).status == "held"


def test_a_recipient_older_than_max_queue_age_without_a_final_event_is_a_violation():
    acc = accepted(2)  # accepted at time 0; the end is at 100 s
    kw = dict(max_queue_age_s=60.0, longest_retry_s=20.0, longest_deadline_s=5.0)
    check = check_nothing_outlives_max_queue_age(evidence(acc, [event("expiration", acc[0])], **kw))
    assert check.violated and "q1 r1@a.test (100s)" in check.detail
    kw["longest_deadline_s"] = 30.0
    assert not check_nothing_outlives_max_queue_age(
        evidence(acc, [event("expiration", acc[0])], **kw)).violated


def test_a_queue_that_keeps_some_mail_ready_is_not_stuck_while_the_gauge_stays_low():
    flowing = [QueueSample(t, [queue("a.test", ready=1)], oldest_ready_s=1.0) for t in range(0, 20)]
    check = check_no_stuck_ready(
        evidence([], [], samples=flowing, longest_deadline_s=5.0, gauge_present=True))
    assert not check.violated, check
    assert "a.test for 19s" in check.detail, "the spans are still reported"


def test_the_events_ring_is_allowed_on_top_of_the_memory_bound():
    before, after = memory(30_000), memory(33_500)
    ev = evidence([], [])
    ev.memory_before_burst_kib, ev.memory_after_kib = before, after
    assert check_rss_returned(ev).violated
    ev.events_logged_since_burst_bytes = 1_000 * 1024
    assert not check_rss_returned(ev).violated
