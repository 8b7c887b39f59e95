"""Cluster: several nodes sharing customer limits and a registry through a real Redis."""

from __future__ import annotations

import smtplib
import threading
import time

import pytest

from conftest import SMTP_TIMEOUT_S, free_port, message, wait_until
from redisserver import RedisServer

HEARTBEAT_MS = 200


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis", free_port()).start()
    yield server
    server.kill()


def cluster_node(volley_factory, redis, sink, name: str, customers: list[dict], mode: str = "local-share"):
    v = volley_factory(name)
    v.config["cluster"] = {
        "node": name,
        "redis": redis.url,
        "on_redis_down": mode,
        "heartbeat_ms": HEARTBEAT_MS,
        "redis_timeout_ms": 300,
    }
    v.config["customer"] = customers
    v.route("dest.test", sink.hostport)
    return v


def inject(node, count: int, customer: str, results: list, lock: threading.Lock) -> None:
    """Sends `count` messages on one connection; appends (node name, code) per message."""
    content = message("limit", extra_headers=f"X-Volley-Customer: {customer}\r\n")
    with smtplib.SMTP("127.0.0.1", node.relay_port, timeout=SMTP_TIMEOUT_S) as client:
        for i in range(count):
            try:
                client.sendmail("s@customer.test", [f"r{i}@dest.test"], content)
                code = 250
            except smtplib.SMTPDataError as e:
                code = e.smtp_code
            except smtplib.SMTPRecipientsRefused as e:
                code = list(e.recipients.values())[0][0]
            except smtplib.SMTPSenderRefused as e:
                code = e.smtp_code
            with lock:
                results.append((node.dir.name, code))


def spread(nodes, per_connection: int, connections_per_node: int, customer: str) -> list:
    results: list = []
    lock = threading.Lock()
    threads = [
        threading.Thread(target=inject, args=(n, per_connection, customer, results, lock))
        for n in nodes
        for _ in range(connections_per_node)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def wait_redis_up(node, up: bool) -> None:
    wait_until(
        lambda: node.metrics().get("volley_cluster_redis_up") == (1.0 if up else 0.0),
        15,
        f"{node.dir.name} to see Redis {'up' if up else 'down'}",
    )


def wait_live(node, count: int) -> None:
    wait_until(lambda: node.metrics().get("volley_cluster_live_nodes") == count, 15, f"{count} live nodes")


def test_three_nodes_hold_one_hourly_limit_and_credits(volley_factory, redis, sink_factory):
    sink = sink_factory()
    customers = [
        {"name": "acme", "max_messages_per_hour": 1000},
        {"name": "prepaid", "max_messages_per_hour": 10, "credits": 300},
    ]
    nodes = [
        cluster_node(volley_factory, redis, sink, f"mta{i}", customers).start() for i in range(3)
    ]
    for n in nodes:
        wait_live(n, 3)
    # As fast as the clients go: 3 connections per node, 1500 attempts for a limit of 1000.
    results = spread(nodes, per_connection=167, connections_per_node=3, customer="acme")
    accepted = sum(1 for _, code in results if code == 250)
    refused = {code for _, code in results if code != 250}
    overrun = (accepted - 1000) / 1000 * 100
    trips = sum(n.metrics()["volley_cluster_redis_round_trips_total"] for n in nodes)
    print(f"accepted {accepted} of limit 1000 (overrun {overrun:+.1f} %), Redis round trips {trips:.0f}")
    assert 990 <= accepted <= 1000, f"accepted {accepted}"
    assert refused == {451}, refused
    per_node = {n.dir.name: sum(1 for m, c in results if m == n.dir.name and c == 250) for n in nodes}
    assert all(v > 0 for v in per_node.values()), per_node
    status, usage = nodes[1].api("GET", "/v1/customers/acme/usage")
    assert status == 200 and usage["scope"] == "cluster", usage
    assert usage["messages_this_hour"] >= accepted - 5, usage
    # Plan of 10 then 300 credits, across the nodes.
    results = spread(nodes, per_connection=60, connections_per_node=2, customer="prepaid")
    accepted = sum(1 for _, code in results if code == 250)
    assert 307 <= accepted <= 310, f"accepted {accepted} of 310"
    # Nothing accepted is lost: every accepted message reaches the sink.
    total = sum(1 for _, c in results if c == 250) + sum(per_node.values())
    wait_until(lambda: len(sink.recipients()) >= total, 60, f"{total} deliveries")


def test_redis_down_local_share_then_back(volley_factory, redis, sink_factory):
    sink = sink_factory()
    customers = [{"name": "acme", "max_messages_per_hour": 100}]
    a = cluster_node(volley_factory, redis, sink, "a", customers).start()
    b = cluster_node(volley_factory, redis, sink, "b", customers).start()
    wait_live(a, 2)
    wait_live(b, 2)
    redis.kill()
    wait_redis_up(a, False)
    assert a.metrics()["volley_cluster_redis_outages_total"] >= 1
    # Each node alone: limit / 2 live nodes on its own count.
    results = spread([a], per_connection=80, connections_per_node=1, customer="acme")
    accepted_a = sum(1 for _, c in results if c == 250)
    assert accepted_a == 50, results[-3:]
    assert "went away" in a.stderr_tail(200) or "cannot reach Redis" in a.stderr_tail(200)
    redis.start()
    wait_redis_up(a, True)
    wait_redis_up(b, True)
    # What a accepted alone reaches Redis; the cluster's limit then holds for b too.
    wait_until(
        lambda: a.api("GET", "/v1/customers/acme/usage")[1].get("messages_this_hour") == 50,
        15,
        "the outage's 50 counted in Redis",
    )
    results = spread([b], per_connection=80, connections_per_node=1, customer="acme")
    accepted_b = sum(1 for _, c in results if c == 250)
    assert accepted_b == 50, accepted_b
    wait_until(lambda: len(sink.recipients()) >= 100, 30, "100 deliveries")
    assert len(sink.recipients()) == 100


def test_redis_down_tempfail_refuses_with_451_then_recovers(volley_factory, redis, sink_factory):
    sink = sink_factory()
    customers = [{"name": "acme", "max_messages_per_hour": 100}]
    a = cluster_node(volley_factory, redis, sink, "a", customers, mode="tempfail").start()
    wait_redis_up(a, True)
    redis.kill()
    wait_redis_up(a, False)
    content = message("t", extra_headers="X-Volley-Customer: acme\r\n")
    with a.smtp() as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("s@customer.test", ["r@dest.test"], content)
    assert refused.value.smtp_code == 451
    assert b"4.3.0" in refused.value.smtp_error
    # Mail of customers without a limit is not held up.
    a.send("s@other.test", ["free@dest.test"], message("free"))
    redis.start()
    wait_redis_up(a, True)
    a.send("s@customer.test", ["r2@dest.test"], content)
    wait_until(lambda: sorted(sink.recipients()) == ["free@dest.test", "r2@dest.test"], 20, "deliveries")


def test_registry_lists_nodes_with_queue_totals_and_last_seen(volley_factory, redis, sink_factory):
    sink = sink_factory()
    a = cluster_node(volley_factory, redis, sink, "a", []).start()
    b = cluster_node(volley_factory, redis, sink, "b", []).start()
    wait_live(a, 2)
    status, body = a.api("GET", "/v1/cluster")
    assert status == 200, body
    names = {n["node"]: n for n in body["nodes"]}
    assert set(names) == {"a", "b"}
    assert all(n["live"] and n["status"]["queued_recipients"] == 0 for n in names.values())
    assert body["node"] == "a"
    a.send("s@x.test", ["one@dest.test"], message("one"))
    wait_until(
        lambda: {n["node"]: n for n in a.api("GET", "/v1/cluster")[1]["nodes"]}["a"]["status"]["messages_received"] == 1,
        10,
        "a's heartbeat to carry its count",
    )
    b.stop()
    wait_until(
        lambda: not {n["node"]: n for n in a.api("GET", "/v1/cluster")[1]["nodes"]}["b"]["live"],
        10,
        "b to be seen as not live",
    )
    wait_live(a, 1)
    last_seen = {n["node"]: n for n in a.api("GET", "/v1/cluster")[1]["nodes"]}["b"]["last_seen_ms"]
    assert time.time() * 1000 - last_seen > 3 * HEARTBEAT_MS


def test_a_graceful_stop_gives_the_unused_lease_back(volley_factory, redis, sink_factory):
    sink = sink_factory()
    customers = [{"name": "acme", "max_messages_per_hour": 1000}]
    a = cluster_node(volley_factory, redis, sink, "a", customers).start()
    b = cluster_node(volley_factory, redis, sink, "b", customers).start()
    wait_live(b, 2)
    results = spread([a], per_connection=3, connections_per_node=1, customer="acme")
    assert [c for _, c in results] == [250, 250, 250]
    # a leased a block (64 at first): Redis counts it all while a holds it.
    assert b.api("GET", "/v1/customers/acme/usage")[1]["messages_this_hour"] > 3
    assert a.stop() == 0
    assert b.api("GET", "/v1/customers/acme/usage")[1]["messages_this_hour"] == 3
