"""The life of a delivery queue: it appears with its mail, stays while it holds recipients, and is
freed `[shaping] queue_idle_s` after it is empty and unconnected (gone from `GET /v1/queues` and
`volley_queues`). The stuck detector's gauge, `volley_oldest_ready_seconds`, counts a ready
recipient whose queue has a connection slot free but no connection delivering (here: a receiver
that accepts and never greets).
"""

from __future__ import annotations

import signal
import socket
import threading
import time

from conftest import free_port, message, wait_until

IDLE_S = 3


def queues(volley, domain: str) -> list[dict]:
    status, body = volley.api("GET", "/v1/queues")
    assert status == 200, body
    return [q for q in body["queues"] if q["domain"] == domain]


def all_queues(volley) -> list[dict]:
    status, body = volley.api("GET", "/v1/queues")
    assert status == 200, body
    return body["queues"]


class Tarpit:
    """Accepts TCP connections and never says anything; `close()` drops them all."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.port = free_port(address)
        self.listener = socket.create_server((address, self.port))
        self.listener.settimeout(0.1)
        self.accepted: list[socket.socket] = []
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def hostport(self) -> str:
        return f"{self.address}:{self.port}"

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.closing.set()
        self.thread.join(timeout=2)
        self.listener.close()
        for conn in self.accepted:
            conn.close()


def test_a_drained_queue_is_freed_after_queue_idle_s_and_a_holding_one_stays(volley, sink_factory):
    sink = sink_factory()
    volley.route("life.test", sink.hostport)
    # Nothing listens there: its recipient is deferred again and again, so its queue holds mail.
    volley.route("held.test", f"127.0.0.1:{free_port()}")
    volley.config["shaping"] = {"queue_idle_s": IDLE_S}
    volley.start()
    assert volley.metrics()["volley_queues"] == 0

    volley.send("a@src.test", ["r@held.test"], message("held"))
    wait_until(lambda: queues(volley, "held.test"), 5, "the held.test queue listed")
    volley.send("a@src.test", ["r@life.test"], message("life"))
    sink.wait_recipients(1)
    delivered_at = time.monotonic()

    # Empty but kept while idle, with its counters.
    [q] = wait_until(
        lambda: [q for q in queues(volley, "life.test") if q["delivered"] == 1],
        3,
        "the drained life.test queue listed",
    )
    assert q["size"] == 0, q
    wait_until(lambda: volley.metrics()["volley_queues"] == 2, 3, "volley_queues = 2")

    # Freed after queue_idle_s (the default, 300 s, would fail this wait).
    wait_until(lambda: not queues(volley, "life.test"), IDLE_S + 5, "life.test freed")
    idle_for = time.monotonic() - delivered_at
    assert idle_for >= IDLE_S - 0.5, f"freed {idle_for:.1f} s after its delivery: before queue_idle_s"
    wait_until(lambda: volley.metrics()["volley_queues"] == 1, 3, "volley_queues = 1")

    # The queue that holds a recipient outlives queue_idle_s.
    time.sleep(IDLE_S + 1)
    [held] = queues(volley, "held.test")
    assert held["size"] == 1, held
    assert [q["domain"] for q in all_queues(volley)] == ["held.test"]
    assert volley.metrics()["volley_queues"] == 1


def test_a_reload_applies_a_shorter_queue_idle_s_to_queues_already_idle(volley, sink_factory):
    sink = sink_factory()
    volley.route("life.test", sink.hostport)
    volley.start()  # queue_idle_s: the default, 300 s
    volley.send("a@src.test", ["r@life.test"], message("reload"))
    sink.wait_recipients(1)
    wait_until(
        lambda: [q for q in queues(volley, "life.test") if q["delivered"] == 1],
        3,
        "the drained life.test queue listed",
    )
    time.sleep(2)  # idle for a while under the old value
    assert queues(volley, "life.test")
    volley.config["shaping"] = {"queue_idle_s": 1}
    volley.write_config()
    volley.signal(signal.SIGHUP)
    wait_until(lambda: not queues(volley, "life.test"), 5, "life.test freed after the reload")
    assert volley.metrics()["volley_queues"] == 0


def test_a_ready_recipient_waiting_for_a_greeting_shows_in_oldest_ready_seconds(volley):
    tarpit = Tarpit("127.0.0.12")
    try:
        volley.route("tarpit.test", tarpit.hostport)
        # No retry while the test watches: once the connection is lost the recipient is deferred.
        volley.config["domain"].append(
            {"match": "tarpit.test", "retry_intervals": ["1h"], "max_queue_age": "2h"}
        )
        volley.start()
        assert volley.metrics()["volley_oldest_ready_seconds"] == 0

        volley.send("a@src.test", ["r@tarpit.test"], message("tarpit"))
        wait_until(lambda: tarpit.accepted, 5, "a connection to the tarpit")
        # One connection of 20 is open and waits for a greeting: the recipient is still ready.
        wait_until(
            lambda: volley.metrics()["volley_oldest_ready_seconds"] >= 2,
            6,
            "volley_oldest_ready_seconds >= 2",
        )
        [q] = queues(volley, "tarpit.test")
        assert (q["ready"], q["connections"]) == (1, 1), q

        # The connection is lost: the recipient is deferred, no longer waiting for a connection.
        tarpit.close()
        wait_until(
            lambda: volley.metrics()["volley_oldest_ready_seconds"] == 0,
            5,
            "volley_oldest_ready_seconds back to 0",
        )
        wait_until(
            lambda: (q := queues(volley, "tarpit.test")) and q[0]["deferred"] == 1,
            3,
            "the recipient deferred",
        )
    finally:
        tarpit.close()
