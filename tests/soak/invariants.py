"""The soak's invariants, checked at the end from what the soak recorded: the messages the daemon
answered 250 (client side), the accounting log, the sinks' logs, `GET /v1/queues` samples, the
`volley_oldest_ready_seconds` gauge (when the daemon has it) and the daemon's RSS.

Pure functions over plain data, so that `test_invariants.py` can prove each check fails when it
must. Each check returns a `Check`: held, violated (with a precise message) or skipped (with why).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FINAL_TYPES = ("delivery", "bounce", "expiration")
# Anonymous resident memory (RssAnon) after a burst of distinct domains has drained may exceed the
# level after the burst before it (as many other new domains) by this much. The first burst is not
# held to it: it lifts the allocator to its high-water mark for such a burst (pages kept for blocks
# still live, as the event ring's; measured: about 5 MiB over the heap's live bytes, and the third
# burst of a run adds nothing to the second), which a leak would not stop at. File-backed pages
# (RssFile: the binary, touched pages of mapped spool segments) are page cache the kernel reclaims
# at will: reported, not held to the bound.
RSS_GROWTH_ALLOWED = 0.10
# How many example recipients or queues a message names.
EXAMPLES = 5
# A copy that reached a receiver this soon after a kill -9 may be one the killed daemon had sent
# without reading the reply: its second copy is an allowed duplicate (at least once), reported.
KILL_DUPLICATE_WINDOW_S = 5.0
# A DSN is required only for bounces this much older than the final snapshot: one made in the
# last seconds may still be on its way to the sender.
DSN_GRACE_S = 10.0


@dataclass
class Accepted:
    """One recipient of a message the daemon answered 250 for."""

    queue_id: str
    recipient: str
    message_id: str  # the Message-ID header value, as the sinks log it
    domain: str
    kind: str  # the destination class (healthy, tarpit, ...), for the report
    time_s: float


@dataclass
class QueueSample:
    """`GET /v1/queues` at one moment (unix seconds), with the stuck gauge if the daemon has it.
    The soak keeps only the queues that had ready recipients (all the stuck checks look at)."""

    time_s: float
    queues: list[dict[str, Any]]
    oldest_ready_s: float | None = None


@dataclass
class Evidence:
    accepted: list[Accepted]
    acct: list[dict[str, Any]]
    sink_lines: list[dict[str, Any]]
    final_queues: list[dict[str, Any]]
    final_time_s: float
    samples: list[QueueSample] = field(default_factory=list)
    gauge_present: bool = False
    longest_deadline_s: float = 600.0
    # /proc/PID/status VmRSS, RssAnon and RssFile in KiB, settled after the next-to-last burst round
    # (before any burst when there is one round) and after the last.
    memory_before_burst_kib: dict[str, int] | None = None
    memory_after_kib: dict[str, int] | None = None
    # Bytes of accounting lines written between the two memory readings: the daemon keeps the same
    # lines in its ring behind GET /v1/events (by design, up to 100 000 events), whatever the domains.
    events_logged_since_burst_bytes: int = 0
    # (X-Volley-Queue-Id, Final-Recipient) of every DSN that reached the senders' mailbox; None
    # when DSNs were not collected.
    dsns: set[tuple[str, str]] | None = None
    # The daemon's exit status on the final SIGTERM (None: not stopped by the soak).
    stop_exit: int | None = None
    stop_timeout_s: float = 30.0
    # The policy's max_queue_age and its longest retry interval, in seconds (None: not checked).
    max_queue_age_s: float | None = None
    longest_retry_s: float = 0.0
    # When the daemon was killed with SIGKILL (unix seconds).
    kill_times_s: list[float] = field(default_factory=list)


@dataclass
class Check:
    name: str
    status: str  # "held" | "violated" | "skipped"
    detail: str

    @property
    def violated(self) -> bool:
        return self.status == "violated"


def _examples(items) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:EXAMPLES])
    return shown + (f" (+{len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else "")


def _key(queue_id: str, recipient: str) -> tuple[str, str]:
    return (queue_id, recipient.lower())


def _acct_queue_id(event: dict[str, Any]) -> str:
    return str(event.get("id", ""))


def event_time_s(event: dict[str, Any]) -> float | None:
    """The accounting event's RFC 3339 `time` as unix seconds (nanoseconds cut to micro)."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", str(event.get("time", ""))).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def finals_by_recipient(acct: list[dict[str, Any]]) -> Counter:
    return Counter(
        _key(_acct_queue_id(e), e.get("recipient", ""))
        for e in acct
        if e.get("type") in FINAL_TYPES
    )


def check_receptions_logged(ev: Evidence) -> Check:
    logged = {_key(_acct_queue_id(e), e.get("recipient", "")) for e in ev.acct if e.get("type") == "reception"}
    missing = [a for a in ev.accepted if _key(a.queue_id, a.recipient) not in logged]
    if missing:
        return Check(
            "every accepted recipient has a reception event",
            "violated",
            f"{len(missing)} of {len(ev.accepted)} recipients answered 250 have no reception event: "
            + _examples(f"{a.queue_id} {a.recipient}" for a in missing),
        )
    return Check("every accepted recipient has a reception event", "held", f"{len(ev.accepted)} recipients")


def check_at_most_one_final(ev: Evidence) -> Check:
    finals = finals_by_recipient(ev.acct)
    twice = [(a, finals[_key(a.queue_id, a.recipient)]) for a in ev.accepted if finals[_key(a.queue_id, a.recipient)] > 1]
    name = "no accepted recipient has more than one final event"
    if twice:
        return Check(
            name,
            "violated",
            f"{len(twice)} recipients have several final events (delivery/bounce/expiration): "
            + _examples(f"{a.queue_id} {a.recipient} x{n}" for a, n in twice),
        )
    return Check(name, "held", f"{sum(finals.values())} final events")


def check_no_duplicate_delivery(ev: Evidence) -> Check:
    """At most once per recipient, except a copy in flight when the daemon was killed."""
    copies: dict[tuple[str, str], list[float]] = defaultdict(list)
    for line in ev.sink_lines:
        for r in line.get("recipients", []):
            copies[(line.get("message_id") or "", r.lower())].append(event_time_s(line) or 0.0)
    ours = {(a.message_id, a.recipient.lower()) for a in ev.accepted}

    def around_a_kill(times: list[float]) -> bool:
        return any(k <= t <= k + KILL_DUPLICATE_WINDOW_S for t in times for k in ev.kill_times_s)

    twice = {k: v for k, v in copies.items() if len(v) > 1 and k in ours}
    excused = {k for k, v in twice.items() if around_a_kill(v)}
    name = "no accepted recipient reached a receiver twice (except around a kill -9)"
    unexcused = [(k, len(v)) for k, v in twice.items() if k not in excused]
    if unexcused:
        return Check(
            name,
            "violated",
            f"{len(unexcused)} recipients were accepted by a sink more than once: "
            + _examples(f"{mid} {r} x{n}" for (mid, r), n in unexcused),
        )
    total = sum(len(v) for v in copies.values())
    allowed = f"; {len(excused)} duplicates of a copy in flight at a kill -9" if excused else ""
    return Check(name, "held", f"{total} recipients at the sinks{allowed}")


def check_final_or_queued(ev: Evidence) -> Check:
    """None lost: an accepted recipient without a final event is still in its domain's queues."""
    finals = finals_by_recipient(ev.acct)
    delivered_at_sink = {
        (line.get("message_id") or "", r.lower())
        for line in ev.sink_lines
        for r in line.get("recipients", [])
    }
    unfinished: dict[str, list[Accepted]] = defaultdict(list)
    unlogged_deliveries = []
    for a in ev.accepted:
        if finals[_key(a.queue_id, a.recipient)] == 0:
            if (a.message_id, a.recipient.lower()) in delivered_at_sink:
                unlogged_deliveries.append(a)
            else:
                unfinished[a.domain.lower()].append(a)
    queued: Counter = Counter()
    connections: Counter = Counter()
    for q in ev.final_queues:
        queued[str(q.get("domain", "")).lower()] += int(q.get("size", 0))
        connections[str(q.get("domain", "")).lower()] += int(q.get("connections", 0))
    problems = []
    if unlogged_deliveries:
        problems.append(
            f"{len(unlogged_deliveries)} recipients reached a sink but have no final event in the "
            "accounting log: " + _examples(f"{a.queue_id} {a.recipient}" for a in unlogged_deliveries)
        )
    # Recipients taken by a connection are neither ready nor deferred: with a connection still
    # open they are in flight (how long is for the stuck and max_queue_age checks); with none,
    # nothing holds them any more.
    missing = {d: len(items) - queued[d] for d, items in unfinished.items() if len(items) > queued[d]}
    lost = {d: n for d, n in missing.items() if connections[d] == 0}
    in_flight = {d: n for d, n in missing.items() if connections[d] > 0}
    if lost:
        by_kind = Counter()
        for d, n in lost.items():
            by_kind[unfinished[d][0].kind] += n
        problems.append(
            f"{sum(lost.values())} recipients have no final event, are not queued (neither ready nor "
            "deferred in GET /v1/queues) and no connection of their domain is open: lost; by "
            "destination: " + ", ".join(f"{k} {n}" for k, n in by_kind.most_common())
            + "; domains: " + _examples(f"{d} ({n})" for d, n in sorted(lost.items()))
        )
    name = "every accepted recipient reached a final event or is still queued"
    if problems:
        return Check(name, "violated", "; ".join(problems))
    left = sum(len(v) for v in unfinished.values())
    flying = sum(in_flight.values())
    detail = f"{len(ev.accepted) - left} final, {left - flying} still queued"
    if flying:
        detail += (f", {flying} in flight on connections still open ("
                   + _examples(f"{d} {n}" for d, n in sorted(in_flight.items())) + ")")
    return Check(name, "held", detail)


def check_queued_have_a_future_attempt(ev: Evidence) -> Check:
    """At the end, a queue holding recipients either retries them later or is sending them now."""
    stuck = []
    for q in ev.final_queues:
        ready, deferred = int(q.get("ready", 0)), int(q.get("deferred", 0))
        if ready == 0 and deferred > 0 and q.get("next_attempt_s") is None:
            stuck.append(f"{q.get('vmta')}/{q.get('domain')}: {deferred} deferred without a next attempt")
        free = int(q.get("connections", 0)) < int(q.get("max_connections", 1) or 1)
        if ready > 0 and free and q.get("state") == "active":
            stuck.append(
                f"{q.get('vmta')}/{q.get('domain')}: {ready} ready with "
                f"{q.get('connections')}/{q.get('max_connections')} connections"
            )
    name = "queued recipients have a future attempt"
    if stuck:
        # A queue with ready mail and free connections in one snapshot may be between two
        # connections; it counts only if it stayed so (see the stuck-ready check) - here only the
        # deferred-without-time case is a violation on its own.
        hard = [s for s in stuck if "without a next attempt" in s]
        if hard:
            return Check(name, "violated", _examples(hard))
        return Check(name, "held", "ready-with-free-connections at the end: " + _examples(stuck))
    return Check(name, "held", f"{len(ev.final_queues)} queues at the end")


def stuck_queue_spans(samples: list[QueueSample], bound_s: float) -> list[str]:
    """Queues that had ready recipients and free connections, active, in every sample for longer
    than `bound_s` (samples missing during a restart break a span)."""
    since: dict[tuple[str, str], float] = {}
    worst: dict[tuple[str, str], float] = {}
    for sample in samples:
        now_stuck = set()
        for q in sample.queues:
            key = (str(q.get("vmta")), str(q.get("domain")))
            free = int(q.get("connections", 0)) < int(q.get("max_connections", 1) or 1)
            if int(q.get("ready", 0)) > 0 and free and q.get("state") == "active":
                now_stuck.add(key)
                start = since.setdefault(key, sample.time_s)
                worst[key] = max(worst.get(key, 0.0), sample.time_s - start)
        for key in list(since):
            if key not in now_stuck:
                del since[key]
    return [f"{v}/{d} for {w:.0f}s" for (v, d), w in sorted(worst.items(), key=lambda kv: -kv[1]) if w > bound_s]


# volley_oldest_ready_seconds subtracts two whole-second clock readings (the recipient's ready
# time and now, both truncated), so it reads up to a second more than the wait it measures.
GAUGE_ROUNDING_S = 1.0


def check_no_stuck_ready(ev: Evidence) -> Check:
    bound = ev.longest_deadline_s + 1.0 + GAUGE_ROUNDING_S
    name = (f"no ready recipient waited over {bound:.0f}s (longest deadline + 1s, + 1s for the "
            f"gauge's whole seconds) with connections free")
    spans = stuck_queue_spans(ev.samples, bound)
    if not ev.gauge_present:
        longest = stuck_queue_spans(ev.samples, 0.0)
        observed = (
            "; GET /v1/queues samples show queues with ready recipients and free connections for "
            + _examples(longest)
        ) if longest else ""
        return Check(
            name,
            "skipped",
            "volley_oldest_ready_seconds is not exported by this daemon" + observed,
        )
    over = [
        s for s in ev.samples
        if s.oldest_ready_s is not None and s.oldest_ready_s > bound
        and any(
            int(q.get("ready", 0)) > 0
            and int(q.get("connections", 0)) < int(q.get("max_connections", 1) or 1)
            and q.get("state") == "active"
            for q in s.queues
        )
    ]
    # The gauge measures one recipient's wait (the oldest ready one, while its queue had a slot
    # free). A span of queue samples only says the queue always had *some* ready recipient: in a
    # queue that keeps receiving mail behind a slow receiver those are different recipients, each
    # taken in turn, so spans are reported, not judged, when the gauge is there.
    seen = ("; queues that always had some ready recipient and a free slot: " + _examples(spans)) if spans else ""
    if over:
        worst = max(over, key=lambda s: s.oldest_ready_s or 0)
        return Check(
            name,
            "violated",
            f"volley_oldest_ready_seconds over {bound:.0f}s in {len(over)} samples with a queue "
            f"having free connections (worst {worst.oldest_ready_s:.0f}s)" + seen,
        )
    worst_s = max((s.oldest_ready_s or 0 for s in ev.samples), default=0)
    return Check(name, "held", f"{len(ev.samples)} samples, gauge at most {worst_s:.0f}s" + seen)


def check_rss_returned(ev: Evidence) -> Check:
    name = (f"anonymous memory (RssAnon) after a burst of distinct domains within "
            f"{RSS_GROWTH_ALLOWED:.0%} of its level before it (after the previous burst)")
    before, after = ev.memory_before_burst_kib, ev.memory_after_kib
    if before is None or after is None:
        return Check(name, "skipped", "memory was not measured (the daemon was not running)")
    # The events ring grows with all traffic, not with distinct domains: its lines are allowed on
    # top of the 10 %.
    ring_kib = ev.events_logged_since_burst_bytes / 1024
    limit = before["RssAnon"] * (1 + RSS_GROWTH_ALLOWED) + ring_kib
    detail = (f"RssAnon before {before['RssAnon'] / 1024:.1f} MiB, after {after['RssAnon'] / 1024:.1f} MiB, "
              f"events logged meanwhile {ring_kib / 1024:.1f} MiB")
    others = [f"{k} {before[k] / 1024:.1f} -> {after[k] / 1024:.1f} MiB"
              for k in ("VmRSS", "RssFile") if k in before and k in after]
    if others:
        detail += " (" + ", ".join(others) + ")"
    if after["RssAnon"] > limit:
        return Check(name, "violated", detail + f"; limit {limit / 1024:.1f} MiB")
    return Check(name, "held", detail)


def check_nothing_outlives_max_queue_age(ev: Evidence) -> Check:
    """A recipient still without a final event at the end is younger than max_queue_age, give or
    take one retry interval and one deadline (expiry is decided at an attempt)."""
    name = "no recipient outlived max_queue_age"
    if ev.max_queue_age_s is None:
        return Check(name, "skipped", "max_queue_age not given")
    bound = ev.max_queue_age_s + ev.longest_retry_s + ev.longest_deadline_s + 1.0
    finals = finals_by_recipient(ev.acct)
    old = [
        a for a in ev.accepted
        if finals[_key(a.queue_id, a.recipient)] == 0 and ev.final_time_s - a.time_s > bound
    ]
    if old:
        by_kind = Counter(a.kind for a in old)
        return Check(
            name,
            "violated",
            f"{len(old)} recipients older than {bound:.0f}s (max_queue_age + longest retry + longest "
            "deadline + 1s) have neither expired nor reached any other final event; by destination: "
            + ", ".join(f"{k} {n}" for k, n in by_kind.most_common())
            + "; e.g. " + _examples(f"{a.queue_id} {a.recipient} ({ev.final_time_s - a.time_s:.0f}s)" for a in old),
        )
    return Check(name, "held", f"bound {bound:.0f}s")


def check_bounces_have_dsns(ev: Evidence) -> Check:
    """No lost notice: every bounce or expiration of an accepted recipient (all have a sender)
    produced a DSN that reached the sender."""
    name = "every bounced or expired recipient got a DSN to its sender"
    if ev.dsns is None:
        return Check(name, "skipped", "DSNs were not collected")
    ours = {_key(a.queue_id, a.recipient) for a in ev.accepted}
    cutoff = ev.final_time_s - DSN_GRACE_S
    failed = {
        _key(_acct_queue_id(e), e.get("recipient", ""))
        for e in ev.acct
        if e.get("type") in ("bounce", "expiration") and (event_time_s(e) or 0.0) <= cutoff
    } & ours
    dsns = {_key(q, r) for q, r in ev.dsns}
    missing = sorted(failed - dsns)
    if missing:
        return Check(
            name,
            "violated",
            f"{len(missing)} of {len(failed)} bounced or expired recipients have no DSN at the "
            "sender (lost, or still queued at the end): " + _examples(f"{q} {r}" for q, r in missing),
        )
    return Check(name, "held", f"{len(failed)} bounced or expired, {len(dsns)} DSN reports")


def check_clean_stop(ev: Evidence) -> Check:
    name = f"volley stops on SIGTERM within {ev.stop_timeout_s:.0f}s"
    if ev.stop_exit is None:
        return Check(name, "skipped", "the daemon was not stopped by the soak")
    if ev.stop_exit != 0:
        how = "killed after the timeout" if ev.stop_exit == -9 else f"exit status {ev.stop_exit}"
        return Check(name, "violated", how)
    return Check(name, "held", "exit 0")


def check_all(ev: Evidence) -> list[Check]:
    return [
        check_receptions_logged(ev),
        check_at_most_one_final(ev),
        check_no_duplicate_delivery(ev),
        check_final_or_queued(ev),
        check_queued_have_a_future_attempt(ev),
        check_no_stuck_ready(ev),
        check_nothing_outlives_max_queue_age(ev),
        check_rss_returned(ev),
        check_bounces_have_dsns(ev),
        check_clean_stop(ev),
    ]
