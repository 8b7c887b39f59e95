"""Cluster-wide shaping: `[[domain]] cluster = true` makes a domain's connection cap and message
rate hold across the nodes sharing a Redis (connection leases, reserved send times)."""

from __future__ import annotations

import smtplib
import socketserver
import threading
import time

import pytest

from conftest import SMTP_TIMEOUT_S, free_port, message, wait_until
from redisserver import RedisServer

HEARTBEAT_MS = 200
SINK_IP = "127.0.0.41"


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis", free_port()).start()
    yield server
    server.kill()


class _Handler(socketserver.StreamRequestHandler):
    timeout = 30

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        sink: CountingSink = self.server.sink  # type: ignore[attr-defined]
        sink._opened()
        closed = False
        try:
            self.reply("220 counting.test ESMTP")
            recipients: list[str] = []
            started = time.monotonic()
            while True:
                line = self.rfile.readline(4096)
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    self.reply("250 counting.test")
                elif verb == b"MAIL":
                    recipients, started = [], time.monotonic()
                    self.reply("250 2.1.0 Ok")
                elif verb == b"RCPT":
                    arg = line.decode("utf-8", "replace")
                    recipients.append(arg[arg.find("<") + 1 : arg.find(">")])
                    self.reply("250 2.1.5 Ok")
                elif verb == b"DATA":
                    self.reply("354 End data with <CR><LF>.<CR><LF>")
                    while (data := self.rfile.readline(65536)) not in (b".\r\n", b""):
                        pass
                    time.sleep(sink.delay_s)
                    sink._accepted(started, recipients)
                    self.reply("250 2.0.0 Ok")
                elif verb == b"QUIT":
                    # Counted closed before the 221: the client gives its lease back only after it.
                    sink._closed()
                    closed = True
                    self.reply("221 2.0.0 Bye")
                    return
                else:
                    self.reply("250 2.0.0 Ok")
        finally:
            if not closed:
                sink._closed()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class CountingSink:
    """An SMTP sink that counts the connections open at once (from accept to QUIT or close) and
    stamps each message with its MAIL command (the transaction's start, what a rate limits);
    `delay_s` before each end-of-data reply keeps connections open."""

    def __init__(self, address: str, port: int, delay_s: float = 0.0) -> None:
        self.address, self.port, self.delay_s = address, port, delay_s
        self.lock = threading.Lock()
        self.open = self.peak = 0
        self.messages: list[tuple[float, list[str]]] = []
        self._server = _Server((address, port), _Handler)
        self._server.sink = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def hostport(self) -> str:
        return f"{self.address}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _opened(self) -> None:
        with self.lock:
            self.open += 1
            self.peak = max(self.peak, self.open)

    def _closed(self) -> None:
        with self.lock:
            self.open -= 1

    def _accepted(self, started: float, recipients: list[str]) -> None:
        with self.lock:
            self.messages.append((started, recipients))

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def stamps(self) -> list[float]:
        with self.lock:
            return [at for at, _ in self.messages]

    def recipients(self) -> list[str]:
        with self.lock:
            return [r for _, rs in self.messages for r in rs]


@pytest.fixture
def counting_sink():
    made: list[CountingSink] = []

    def make(delay_s: float = 0.0) -> CountingSink:
        s = CountingSink(SINK_IP, free_port(SINK_IP), delay_s)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def shaped_node(volley_factory, redis, sink, name: str, domain: dict, mode: str = "local-share"):
    v = volley_factory(name)
    v.config["cluster"] = {
        "node": name,
        "redis": redis.url,
        "on_redis_down": mode,
        "heartbeat_ms": HEARTBEAT_MS,
        "redis_timeout_ms": 300,
    }
    v.config["domain"].append({"match": "dest.test", **domain})
    v.route("dest.test", sink.hostport)
    return v


def inject(node, prefix: str, count: int) -> None:
    """`count` messages of one recipient each, on one connection."""
    with smtplib.SMTP("127.0.0.1", node.relay_port, timeout=SMTP_TIMEOUT_S) as client:
        for i in range(count):
            client.sendmail("s@src.test", [f"{prefix}{i}@dest.test"], message(f"{prefix}{i}"))


def inject_all(nodes, count: int) -> None:
    threads = [threading.Thread(target=inject, args=(n, n.dir.name, count)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def wait_live(node, count: int) -> None:
    wait_until(
        lambda: node.metrics().get("volley_cluster_live_nodes") == count, 15, f"{count} live nodes"
    )


def metric(node, name: str) -> float:
    return node.metrics().get(name, 0.0)


@pytest.mark.parametrize("cluster", [True, False], ids=["cluster", "control"])
def test_two_nodes_hold_one_connection_cap(volley_factory, redis, counting_sink, cluster):
    # Each end-of-data waits, so a node with a backlog keeps both its connections busy.
    sink = counting_sink(delay_s=0.15)
    domain = {"max_connections": 2, "cluster": cluster}
    nodes = [shaped_node(volley_factory, redis, sink, n, domain).start() for n in ("a", "b")]
    for n in nodes:
        wait_live(n, 2)
    per_node = 30
    inject_all(nodes, per_node)
    leases_seen = 0.0
    if cluster:
        # While both deliver, the gauge shows the leases held (never more than the cap).
        def leases():
            nonlocal leases_seen
            held = sum(metric(n, "volley_cluster_connection_leases") for n in nodes)
            assert held <= 2, held
            leases_seen = max(leases_seen, held)
            return leases_seen == 2

        wait_until(leases, 20, "2 connection leases held")
    wait_until(lambda: sink.count() >= 2 * per_node, 60, f"{2 * per_node} deliveries")
    assert sorted(sink.recipients()) == sorted(
        f"{n}{i}@dest.test" for n in ("a", "b") for i in range(per_node)
    ), "every message once"
    if cluster:
        assert sink.peak == 2, f"{sink.peak} connections at once from the two nodes"
        waits = sum(metric(n, "volley_cluster_shaping_waits_total") for n in nodes)
        assert waits > 0, "a node waited for a lease"
        wait_until(
            lambda: sum(metric(n, "volley_cluster_connection_leases") for n in nodes) == 0,
            10,
            "the leases given back",
        )
        assert redis.command("ZCARD", "volley:shape:{dest.test}:all:conn").startswith(b":0")
    else:
        assert sink.peak == 4, f"each node alone opens its 2: {sink.peak}"


def test_two_nodes_hold_one_message_rate(volley_factory, redis, counting_sink):
    sink = counting_sink()
    # 120/min: a send every 0.5 s for the two nodes together (each alone would send that much).
    domain = {"max_messages_per_minute": 120, "cluster": True}
    nodes = [shaped_node(volley_factory, redis, sink, n, domain).start() for n in ("a", "b")]
    for n in nodes:
        wait_live(n, 2)
    inject_all(nodes, 15)
    wait_until(lambda: sink.count() >= 24, 40, "12 s of deliveries")
    stamps = sorted(sink.stamps())
    most = max(sum(1 for u in stamps if t <= u < t + 10.0) for t in stamps)
    print(f"most deliveries in 10 s: {most} (limit 20 + burst 1)")
    assert 18 <= most <= 21, f"{most} deliveries in 10 s at 120/min"
    senders = {r[0] for r in sink.recipients()}
    assert senders == {"a", "b"}, "both nodes sent"
    assert sum(metric(n, "volley_cluster_shaping_waits_total") for n in nodes) > 0
    wait_until(lambda: sink.count() == 30, 30, "all 30 delivered")


def test_redis_down_tempfail_holds_and_local_share_goes_on(volley_factory, redis, counting_sink):
    sink = counting_sink()
    domain = {"max_connections": 2, "cluster": True}
    held = shaped_node(volley_factory, redis, sink, "held", domain, mode="tempfail").start()
    local = shaped_node(volley_factory, redis, sink, "local", domain).start()
    wait_live(held, 2)
    redis.kill()
    for n in (held, local):
        wait_until(lambda: metric(n, "volley_cluster_redis_up") == 0.0, 15, "Redis seen down")
    inject_all([held, local], 5)
    # local-share: each node on its own share of the cap (2 / 2 live nodes).
    wait_until(lambda: sink.count() == 5, 20, "the local-share node's 5")
    time.sleep(2)
    assert all(r.startswith("local") for r in sink.recipients()), "the tempfail node holds"
    assert metric(held, "volley_cluster_shaping_waits_total") > 0
    assert "hold (no new connection" in held.stderr_tail(200)
    assert "share of their caps" in local.stderr_tail(200)
    redis.start()
    wait_until(lambda: sink.count() == 10, 30, "the held mail once Redis is back")
    assert sorted(sink.recipients()) == sorted(
        f"{n}{i}@dest.test" for n in ("held", "local") for i in range(5)
    ), "nothing lost"
