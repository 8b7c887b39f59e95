"""PAYG top-ups: `POST /v1/customers/{name}/credits {"add": N}`, on one node and across a cluster."""

from __future__ import annotations

import smtplib
import time

import pytest

from conftest import free_port, message
from redisserver import RedisServer


def send_as(node, customer: str, rcpt: str) -> int:
    content = message("credits", extra_headers=f"X-Volley-Customer: {customer}\r\n")
    try:
        node.send("s@customer.test", [rcpt], content)
        return 250
    except smtplib.SMTPDataError as e:
        return e.smtp_code


def test_top_up_is_spent_after_the_plan_and_survives_a_restart(volley, sink_factory):
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.config["customer"] = [{"name": "acme", "max_messages_per_hour": 1}]
    volley.start()
    assert send_as(volley, "acme", "a@dest.test") == 250
    assert send_as(volley, "acme", "b@dest.test") == 451, "plan used up, no credits"
    [rejection] = volley.wait_acct("rejection", customer="acme")
    assert rejection["recipient"] == "b@dest.test" and rejection["response"].startswith("451 4.7.1"), rejection
    status, body = volley.api("POST", "/v1/customers/acme/credits", {"add": 2})
    assert status == 200 and body["credits_added"] == 2, body
    assert send_as(volley, "acme", "c@dest.test") == 250
    assert send_as(volley, "acme", "d@dest.test") == 250
    assert send_as(volley, "acme", "e@dest.test") == 451
    status, usage = volley.api("GET", "/v1/customers/acme/usage")
    assert (usage["credits"], usage["credits_added"], usage["credits_spent"], usage["credits_left"]) == (
        2, 2, 2, 0,
    ), usage
    event = volley.wait_acct("credits", customer="acme")[0]
    assert event["credits_added"] == 2
    # Durable once acknowledged: a kill -9 right after the 200 keeps it.
    status, _ = volley.api("POST", "/v1/customers/acme/credits", {"add": 5})
    assert status == 200
    volley.process.kill()
    volley.process.wait(timeout=10)
    volley._stderr.close()
    volley.process = None
    volley.start()
    status, usage = volley.api("GET", "/v1/customers/acme/usage")
    assert usage["credits_added"] == 7 and usage["credits_left"] == 5, usage


@pytest.mark.parametrize(
    "body, status",
    [({"add": 0}, 400), ({"add": -1}, 400), ({"set": 5}, 400), ("nope", 400)],
)
def test_bad_top_ups_are_refused(volley, body, status):
    volley.config["customer"] = [{"name": "acme", "max_messages_per_hour": 1}]
    volley.start()
    got, text = volley.api("POST", "/v1/customers/acme/credits", body)
    assert got == status, text
    got, _ = volley.api("POST", "/v1/customers/nobody/credits", {"add": 1})
    assert got == 404


def test_a_top_up_on_one_node_is_spent_on_another(volley_factory, sink_factory, tmp_path):
    redis = RedisServer(tmp_path / "redis", free_port()).start()
    try:
        sink = sink_factory()
        nodes = []
        for name in ("a", "b"):
            v = volley_factory(name)
            v.config["cluster"] = {"node": name, "redis": redis.url, "heartbeat_ms": 200}
            v.config["customer"] = [{"name": "acme", "max_messages_per_hour": 1}]
            v.route("dest.test", sink.hostport)
            nodes.append(v.start())
        a, b = nodes
        assert send_as(a, "acme", "one@dest.test") == 250
        assert send_as(b, "acme", "two@dest.test") == 451, "the plan is the cluster's"
        status, body = a.api("POST", "/v1/customers/acme/credits", {"add": 3})
        assert status == 200, body
        # b's lease of nothing expires within a second; then it leases the new credits.
        time.sleep(1.1)
        accepted = sum(send_as(b, "acme", f"c{i}@dest.test") == 250 for i in range(5))
        assert accepted == 3
        status, usage = b.api("GET", "/v1/customers/acme/usage")
        assert usage["scope"] == "cluster" and usage["credits_added"] == 3, usage
        assert usage["credits_spent"] == 3 and usage["credits_left"] == 0, usage
    finally:
        redis.kill()
