"""Webhooks against a real receiver on loopback: signed batches of every accounting event, retries
while the receiver refuses, and at-least-once delivery across a kill -9 of the daemon (every event
id arrives, none skipped; duplicates allowed)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import free_port, message, wait_until

SECRET = "test-secret"


class Receiver:
    """An HTTP receiver in a thread: answers each POST with `status` (settable), keeps the events of
    every batch it answered 2xx, and checks each body's X-Volley-Signature."""

    def __init__(self, status: int = 200, accept_first: int | None = None) -> None:
        self.status = status
        # When set: the first `accept_first` POSTs get 200 whatever `status` is.
        self.accept_first = accept_first
        self.lock = threading.Lock()
        self.posts: list[tuple[int, list[dict]]] = []
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                good = hmac.compare_digest(self.headers.get("X-Volley-Signature", ""), expected)
                with receiver.lock:
                    if not good:
                        receiver.bad_signatures += 1
                    status = receiver.status
                    if receiver.accept_first is not None and len(receiver.posts) < receiver.accept_first:
                        status = 200
                    receiver.posts.append((status, json.loads(body) if status == 200 else []))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/volley-events"

    def events(self) -> list[dict]:
        with self.lock:
            return [e for status, batch in self.posts if status == 200 for e in batch]

    def refused(self) -> int:
        with self.lock:
            return sum(1 for status, _ in self.posts if status != 200)

    def accepted(self) -> int:
        with self.lock:
            return sum(1 for status, _ in self.posts if status == 200)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def configure(volley, receiver: Receiver, sink, batch_max_events: int = 100) -> None:
    volley.route("dest.test", sink.hostport)
    volley.config["webhook"] = [
        {
            "name": "cp",
            "url": receiver.url,
            "secret": SECRET,
            "batch_max_events": batch_max_events,
            "timeout_ms": 2000,
        }
    ]


def send_many(volley, first: int, count: int) -> list[str]:
    recipients = [f"r{i}@dest.test" for i in range(first, first + count)]
    with volley.smtp() as client:
        for r in recipients:
            client.sendmail("sender@src.test", [r], message(f"m{r}"))
    return recipients


def webhook_status(volley) -> dict:
    status, body = volley.api("GET", "/v1/webhooks")
    assert status == 200, body
    return body


def wait_lag_zero(volley, timeout_s: float = 30) -> dict:
    def caught_up():
        body = webhook_status(volley)
        return body if body["webhooks"][0]["lag_events"] == 0 else None

    return wait_until(caught_up, timeout_s, "webhook lag 0")


def assert_no_gap(events: list[dict], next_event_id: int) -> set[int]:
    ids = {e["event_id"] for e in events}
    missing = sorted(set(range(1, next_event_id)) - ids)
    assert not missing, f"event ids never delivered: {missing[:20]} (of {len(missing)})"
    return ids


def test_every_event_arrives_signed_and_the_lag_goes_to_zero(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    receiver = Receiver()
    try:
        configure(volley, receiver, sink, batch_max_events=7)
        volley.start()
        recipients = send_many(volley, 0, 20)
        volley.wait_acct("delivery", 20)
        body = wait_lag_zero(volley)
        hook = body["webhooks"][0]
        events = receiver.events()
        assert receiver.bad_signatures == 0
        # Every reception and every delivery, each once, in batches of 7 at most.
        kinds = {(e["type"], e["recipient"]) for e in events}
        for r in recipients:
            assert ("reception", r) in kinds and ("delivery", r) in kinds, r
        assert_no_gap(events, body["journal"]["next_event_id"])
        assert len(events) == len({e["event_id"] for e in events}) == 40
        assert all(len(batch) <= 7 for _, batch in receiver.posts)
        # The events are the accounting log's, with their id added.
        logged = {(e["type"], e["recipient"], e["id"]) for e in volley.acct()}
        assert {(e["type"], e["recipient"], e["id"]) for e in events} == logged
        assert hook["name"] == "cp" and hook["url"] == receiver.url
        assert hook["events_sent"] == 40 and hook["post_failures"] == 0
        assert hook["last_success_unix_ms"] > 0 and hook["last_error"] is None
        metrics = volley.metrics()
        assert metrics['volley_webhook_lag_events{webhook="cp"}'] == 0
        assert metrics['volley_webhook_events_sent_total{webhook="cp"}'] == 40
        assert metrics['volley_webhook_posts_total{webhook="cp"}'] >= 6
        assert metrics["volley_webhook_journal_bytes"] > 0
    finally:
        receiver.stop()


def test_a_refusing_receiver_gets_the_batches_again_and_nothing_is_skipped(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    receiver = Receiver(status=500)
    try:
        configure(volley, receiver, sink, batch_max_events=5)
        volley.start()
        recipients = send_many(volley, 0, 10)
        volley.wait_acct("delivery", 10)
        wait_until(lambda: receiver.refused() >= 2, 15, "two refused POSTs")
        hook = webhook_status(volley)["webhooks"][0]
        assert hook["lag_events"] == 20
        assert hook["post_failures"] >= 2 and "HTTP 500" in hook["last_error"]
        assert hook["failing_since_unix_ms"] > 0
        # The next try, as an RFC 3339 time too, is the same second as next_attempt_unix_ms.
        if hook["next_attempt_unix_ms"] is not None:
            from datetime import datetime
            at = datetime.fromisoformat(hook["next_attempt"].replace("Z", "+00:00")).timestamp()
            assert int(at) == hook["next_attempt_unix_ms"] // 1000, hook
        assert volley.metrics()['volley_webhook_post_failures_total{webhook="cp"}'] >= 2
        assert receiver.events() == []
        receiver.status = 200
        body = wait_lag_zero(volley, timeout_s=30)
        events = receiver.events()
        assert_no_gap(events, body["journal"]["next_event_id"])
        kinds = {(e["type"], e["recipient"]) for e in events}
        assert all(("delivery", r) in kinds for r in recipients)
        hook = body["webhooks"][0]
        assert hook["failing_since_unix_ms"] is None and hook["events_sent"] == 20
        assert hook["last_success"].endswith("Z"), hook
    finally:
        receiver.stop()


def test_kill_9_mid_stream_loses_and_skips_no_event(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    # Down at first; then it takes two batches and is down again while the daemon is killed.
    receiver = Receiver(status=500)
    try:
        configure(volley, receiver, sink, batch_max_events=10)
        volley.start()
        first = send_many(volley, 0, 30)
        volley.wait_acct("delivery", 30)
        wait_until(lambda: receiver.refused() >= 2, 15, "the receiver refusing")
        with receiver.lock:
            receiver.accept_first = len(receiver.posts) + 2
        wait_until(lambda: receiver.accepted() >= 2, 30, "two batches taken")
        assert webhook_status(volley)["webhooks"][0]["lag_events"] > 0
        # More traffic while the webhook is behind, then kill -9.
        second = send_many(volley, 30, 10)
        volley.wait_acct("delivery", 40)
        volley.kill9()
        taken_before = len(receiver.events())
        assert 0 < taken_before < 80

        receiver.accept_first = None
        receiver.status = 200
        volley.start()
        third = send_many(volley, 40, 10)
        volley.wait_acct("delivery", 50)
        body = wait_lag_zero(volley, timeout_s=40)
        events = receiver.events()
        ids = assert_no_gap(events, body["journal"]["next_event_id"])
        # The ids went on from where the killed daemon stopped: one sequence, never reused.
        assert max(ids) == body["journal"]["next_event_id"] - 1
        by_id: dict[int, tuple] = {}
        for e in events:
            key = (e["type"], e["recipient"])
            assert by_id.setdefault(e["event_id"], key) == key, "one id, two events"
        kinds = set(by_id.values())
        for r in first + second + third:
            assert ("reception", r) in kinds and ("delivery", r) in kinds, r
        assert receiver.bad_signatures == 0
    finally:
        receiver.stop()


def test_webhook_settings_change_on_reload_and_new_ones_need_a_restart(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    old, new = Receiver(), Receiver()
    try:
        configure(volley, old, sink)
        volley.start()
        send_many(volley, 0, 2)
        wait_until(lambda: len(old.events()) >= 4, 15, "4 events at the first receiver")
        volley.config["webhook"][0]["url"] = new.url
        volley.config["webhook"].append({"name": "second", "url": new.url})
        volley.write_config()
        volley.signal(1)  # SIGHUP
        wait_until(
            lambda: "webhook" in volley.stderr_tail(200) and "restart" in volley.stderr_tail(200),
            10,
            "the reload naming the webhook change as needing a restart",
        )
        wait_until(lambda: webhook_status(volley)["webhooks"][0]["url"] == new.url, 10, "new url")
        send_many(volley, 2, 2)
        wait_until(lambda: len(new.events()) >= 4, 15, "4 events at the new URL")
        assert len(old.events()) == 4
        # The added webhook does not run until a restart.
        assert [h["name"] for h in webhook_status(volley)["webhooks"]] == ["cp"]
    finally:
        old.stop()
        new.stop()


def test_no_webhook_no_journal(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    volley.start()
    send_many(volley, 0, 1)
    volley.wait_acct("delivery")
    assert webhook_status(volley) == {"webhooks": []}
    assert not (volley.dir / "spool" / "events").exists()
    assert not any(k.startswith("volley_webhook") for k in volley.metrics())


def test_a_journal_over_its_bound_drops_the_oldest_events_and_counts_them(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    receiver = Receiver(status=503)
    try:
        configure(volley, receiver, sink, batch_max_events=1000)
        volley.config["webhook_journal"] = {"max_bytes": 1 << 20}  # the smallest bound
        volley.start()
        # About 3,000 events of some 500 bytes while the receiver refuses: past 1 MiB.
        with volley.smtp() as client:
            for i in range(1500):
                client.sendmail("sender@src.test", [f"d{i}@dest.test"], message(f"drop {i}"))
        wait_until(
            lambda: webhook_status(volley)["journal"]["dropped_events"] > 0, 30,
            "the journal dropping its oldest segments",
        )
        receiver.status = 200
        status = wait_lag_zero(volley, timeout_s=60)
        [hook] = status["webhooks"]
        assert hook["skipped_events"] > 0, hook
        metrics = volley.metrics()
        assert metrics['volley_webhook_skipped_events_total{webhook="cp"}'] == hook["skipped_events"]
        assert metrics["volley_webhook_journal_dropped_events_total"] >= hook["skipped_events"]
        assert "are gone from the journal and were not sent" in volley.stderr_tail(400)
        # Every event arrived but the skipped ones (the batch being retried went out whole).
        ids = set(e["event_id"] for e in receiver.events())
        missing = set(range(1, status["journal"]["next_event_id"])) - ids
        assert len(missing) == hook["skipped_events"], (len(missing), hook)
    finally:
        receiver.stop()
