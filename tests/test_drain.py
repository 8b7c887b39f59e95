"""Drain (docs/drain.md): node A, holding deferred mail, hands its whole queue to node B over SMTP
(`POST /v1/drain`) with each message's customer, first reception time and attempt count; B
delivers it. A takes no new mail meanwhile; B takes the hand-over header only from its peers.
Interrupted drains (kill -9 of either node) lose nothing."""

import signal
import smtplib
import time

import pytest

from conftest import SMTP_TIMEOUT_S, free_port, message, wait_until

CUSTOMER = "acme"


def cluster_node(volley, node: str, peers: list[str]) -> None:
    """`[cluster]` with a Redis where nothing listens (the drain needs none), a customer with its
    own pool and VMTA, and mail to dest.test and other.test on routes set by the test."""
    volley.config["cluster"] = {
        "node": node,
        "redis": f"redis://127.0.0.1:{free_port()}/0",
        "peer_networks": peers,
    }
    volley.config["vmta"].append(
        {"name": "v-acme", "source_ip": "127.0.0.3", "ehlo_hostname": "acme.volley.test"}
    )
    volley.config["pool"].append({"name": "acme-pool", "vmtas": ["v-acme"]})
    volley.config["customer"] = [
        {"name": CUSTOMER, "pool": "acme-pool", "max_messages_per_hour": 100_000}
    ]


def send_many(volley, count: int, recipients_of, subject: str) -> list[str]:
    """`count` messages of customer acme over few connections; their Message-IDs."""
    ids = []
    sent = 0
    while sent < count:
        with volley.smtp() as client:
            for _ in range(min(50, count - sent)):
                content = message(
                    f"{subject} {sent}", extra_headers=f"X-Volley-Customer: {CUSTOMER}\r\n"
                )
                ids.append(content.split("Message-ID: ")[1].split("\r\n")[0])
                client.sendmail("alice@src.test", recipients_of(sent), content)
                sent += 1
    return ids


def metric(volley, name: str) -> float:
    return volley.metrics().get(name, 0.0)


def drain_state(volley) -> dict:
    status, body = volley.api("GET", "/v1/drain")
    assert status == 200, body
    return body


def start_drain(a, b) -> None:
    status, body = a.api("POST", "/v1/drain", {"to": f"127.0.0.1:{b.relay_port}"})
    assert status == 200, body
    assert body["draining"] is True and body["to"] == f"127.0.0.1:{b.relay_port}", body


def kill9(volley) -> None:
    volley.process.send_signal(signal.SIGKILL)
    volley.process.wait(timeout=10)
    volley._stderr.close()
    volley.process = None


def assert_refused_at_connect(volley) -> None:
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", volley.relay_port, timeout=SMTP_TIMEOUT_S)
    assert refused.value.smtp_code == 421, refused.value
    assert b"4.3.2" in refused.value.smtp_error, refused.value


def message_ids_at(sink) -> list[str]:
    return [line["message_id"] for line in sink.lines() for _ in line["recipients"]]


@pytest.fixture
def nodes(volley_factory, sink_factory):
    """A (mail to dest.test and other.test refused: it defers, and retries only in an hour) and B
    (routes both to a sink), each a peer of the other on 127.0.0.1, and the sink."""
    sink = sink_factory("127.0.0.10")
    a = volley_factory("a")
    cluster_node(a, "mta-a", ["127.0.0.1/32"])
    dead = f"127.0.0.10:{free_port('127.0.0.10')}"
    a.route("dest.test", dead)
    a.route("other.test", dead)
    a.policy(retry_intervals=["1h"], max_queue_age="2h")
    b = volley_factory("b")
    cluster_node(b, "mta-b", ["127.0.0.1/32"])
    b.route("dest.test", sink.hostport)
    b.route("other.test", sink.hostport)
    b.policy(retry_intervals=["1s"], max_queue_age="2h")
    return a, b, sink


def test_drain_hands_deferred_mail_over_once_with_customer_time_and_attempts(nodes):
    a, b, sink = nodes
    a.start()
    b.start()
    count = 20
    # Every third message also goes to a second domain: two queues, one transaction.
    recipients_of = lambda n: [f"r{n}@dest.test"] + ([f"r{n}@other.test"] if n % 3 == 0 else [])
    ids = send_many(a, count, recipients_of, "drained")
    total = sum(len(recipients_of(n)) for n in range(count))
    a.wait_acct("transient", count=total)
    received_at = time.time()
    assert a.acct("delivery") == [] and sink.lines() == []

    start_drain(a, b)
    assert_refused_at_connect(a)
    status, body = a.api(
        "POST", "/v1/inject",
        {"sender": "alice@src.test", "recipients": ["x@dest.test"], "content": message("late")},
    )
    assert status == 503, body

    # Deferred for an hour on A, yet handed over at once and delivered by B.
    sink.wait_recipients(total)
    wait_until(lambda: drain_state(a)["complete"], 15, "A's drain complete")
    time.sleep(0.5)  # nothing more may come
    at_sink = message_ids_at(sink)
    assert sorted(at_sink) == sorted(
        mid for n, mid in enumerate(ids) for _ in recipients_of(n)
    ), "every recipient exactly once"

    state = drain_state(a)
    assert state["recipients_left"] == 0 and state["recipients_handed_over"] == total, state
    assert state["messages_handed_over"] == count, state
    assert state["last_error"] == "", state

    xfer_out = a.wait_acct("xfer_out", count=total)
    xfer_in = b.wait_acct("xfer_in", count=total)
    assert len(xfer_out) == len(xfer_in) == total
    assert {(e["xfer_id"], e["recipient"]) for e in xfer_out} == {
        (e["xfer_id"], e["recipient"]) for e in xfer_in
    }, "the same hand-overs on both sides"
    for e in xfer_out:
        assert e["node"] == "mta-a" and e["customer"] == CUSTOMER, e
        assert e["mx"].startswith(f"127.0.0.1:{b.relay_port}"), e
        assert e["response"].startswith("250"), e
        assert e["attempt"] == 1, e
    for e in xfer_in:
        assert e["node"] == "mta-a" and e["customer"] == CUSTOMER, e
        assert e["attempt"] == 1, "A's attempt went along"
        assert e["source_ip"] == "127.0.0.1", e
    assert b.acct("reception") == [], "a hand-over is not a new reception"

    deliveries = b.wait_acct("delivery", count=total)
    for d in deliveries:
        assert d["customer"] == CUSTOMER, d
        assert d["vmta"] == "v-acme", "routed to the customer's pool on B"
        assert d["attempt"] == 2, "B's first try is the message's second"

    # Charged once, on A.
    _, usage_a = a.api("GET", f"/v1/customers/{CUSTOMER}/usage")
    _, usage_b = b.api("GET", f"/v1/customers/{CUSTOMER}/usage")
    assert usage_a["messages_this_hour"] == count, usage_a
    assert usage_b["messages_this_hour"] == 0, usage_b
    assert metric(a, "volley_xfer_out_total") == total
    assert metric(b, "volley_xfer_in_total") == total
    assert metric(b, "volley_xfer_duplicates_total") == 0

    # A's spool is empty: after a restart nothing comes back, and the drain goes on (drain.json).
    assert a.stop() == 0
    a.start()
    assert drain_state(a)["draining"] is True
    assert metric(a, "volley_queued_recipients") == 0
    assert "with recipients to deliver" not in a.stderr_path.read_text(), "nothing recovered"
    assert_refused_at_connect(a)

    # Cancelled: A takes mail again.
    status, body = a.api("DELETE", "/v1/drain")
    assert status == 200 and body["draining"] is False, body
    with a.smtp() as client:
        assert client.noop()[0] == 250


def test_max_queue_age_counts_from_the_first_reception(volley_factory):
    a = volley_factory("a")
    b = volley_factory("b")
    cluster_node(a, "mta-a", ["127.0.0.1/32"])
    cluster_node(b, "mta-b", ["127.0.0.1/32"])
    dead = f"127.0.0.10:{free_port('127.0.0.10')}"
    for v in (a, b):
        v.route("dest.test", dead)  # nobody ever takes it: it can only expire
        v.policy(retry_intervals=["1s"], max_queue_age="8s")
    a.policy(retry_intervals=["1h"])
    a.start()
    b.start()
    t0 = time.time()
    send_many(a, 1, lambda n: ["late@dest.test"], "aging")
    a.wait_acct("transient")
    time.sleep(max(0.0, t0 + 4 - time.time()))
    start_drain(a, b)
    b.wait_acct("xfer_in")
    [expired] = b.wait_acct("expiration", timeout_s=15)
    expired_after = time.time() - t0
    # From B's own reception (4 s after A's) it would expire 12 s after A's at the earliest.
    assert expired_after < 10.5, expired_after
    assert expired["queue_ms"] >= 7000, expired
    assert expired["customer"] == CUSTOMER, expired
    assert a.acct("expiration") == []


def test_hand_over_header_only_from_peers(volley_factory, sink_factory):
    sink = sink_factory("127.0.0.10")
    b = volley_factory("b")
    cluster_node(b, "mta-b", ["127.0.0.1/32"])
    b.route("dest.test", sink.hostport)
    b.start()
    header = (
        "X-Volley-Xfer: node=mta-a; id=00000000002A-00; customer=acme; "
        f"received={int(time.time()) - 60}; attempts=2\r\n"
    )
    # 127.0.0.5 is in relay_networks but not a peer: refused, logged, counted.
    with b.smtp(source="127.0.0.5") as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("alice@src.test", ["x@dest.test"], header + message("forged"))
    assert refused.value.smtp_code == 550, refused.value
    assert b"5.7.1" in refused.value.smtp_error
    assert metric(b, "volley_xfer_refused_total") == 1
    assert "refused a message carrying X-Volley-Xfer from 127.0.0.5" in b.stderr_tail(100)
    assert b.acct("reception") == [] and b.acct("xfer_in") == []
    # The API never hands over.
    status, body = b.api(
        "POST", "/v1/inject",
        {"sender": "alice@src.test", "recipients": ["x@dest.test"], "content": header + message("api")},
    )
    assert status == 403, body

    # From the peer's address the same header is a hand-over: taken off, its customer kept.
    with b.smtp(source="127.0.0.1") as client:
        client.sendmail("alice@src.test", ["x@dest.test"], header + message("handed"))
    [e] = b.wait_acct("xfer_in")
    assert e["customer"] == "acme" and e["node"] == "mta-a" and e["attempt"] == 2, e
    assert e["queue_ms"] >= 59_000, "from the first reception"
    [line] = sink.wait_lines(1)
    assert line["message_id"].startswith("<handed")
    [delivery] = b.wait_acct("delivery")
    assert delivery["attempt"] == 3 and delivery["customer"] == "acme", delivery


def test_drain_survives_kill_9_of_the_draining_node(nodes):
    a, b, sink = nodes
    a.start()
    b.start()
    count = 500
    ids = send_many(a, count, lambda n: [f"r{n}@dest.test"], "killed")
    a.wait_acct("transient", count=count, timeout_s=60)

    start_drain(a, b)
    wait_until(lambda: metric(b, "volley_xfer_in_total") >= 10, 15, "the drain under way")
    kill9(a)
    handed_before_kill = metric(b, "volley_xfer_in_total")
    assert handed_before_kill < count, "killed mid-drain"

    a.start()  # drain.json: the drain goes on by itself
    assert drain_state(a)["draining"] is True
    sink.wait_recipients(count, timeout_s=60)
    wait_until(lambda: drain_state(a)["complete"], 30, "A's drain complete")
    time.sleep(0.5)
    at_sink = message_ids_at(sink)
    assert set(at_sink) == set(ids), "none lost"
    duplicates = metric(b, "volley_xfer_duplicates_total")
    assert len(at_sink) - count == duplicates, (len(at_sink), duplicates)
    assert metric(a, "volley_queued_recipients") == 0


def test_drain_survives_kill_9_of_the_target(nodes):
    a, b, sink = nodes
    a.start()
    b.start()
    count = 500
    ids = send_many(a, count, lambda n: [f"r{n}@dest.test"], "target killed")
    a.wait_acct("transient", count=count, timeout_s=60)

    start_drain(a, b)
    wait_until(lambda: metric(b, "volley_xfer_in_total") >= 10, 15, "the drain under way")
    kill9(b)
    wait_until(lambda: drain_state(a)["last_error"], 15, "A sees the target gone")
    assert drain_state(a)["recipients_left"] > 0, "killed mid-drain"

    b.start()  # recovers what it took; A hands over the rest
    sink.wait_recipients(count, timeout_s=90)
    wait_until(lambda: drain_state(a)["complete"], 60, "A's drain complete")
    time.sleep(0.5)
    at_sink = message_ids_at(sink)
    # Duplicates are allowed (B took a message and was killed before A heard its 250); none lost.
    assert set(at_sink) == set(ids), "none lost"
    assert metric(a, "volley_queued_recipients") == 0
