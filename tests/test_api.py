"""The HTTP control API: inject, queues (list, suspend, resume, bounce), metrics, events, running
configuration changes, and the bearer token."""

import time

from conftest import free_port, message, wait_until


def inject(volley, recipients, subject="injected", sender="alice@src.test"):
    status, body = volley.api(
        "POST",
        "/v1/inject",
        {"sender": sender, "recipients": recipients, "content": message(subject).replace("\r\n", "\n")},
    )
    assert status == 202, body
    assert body["id"], body
    assert body["recipients"] == len(recipients)
    return body["id"]


def queue(volley, domain):
    status, body = volley.api("GET", "/v1/queues")
    assert status == 200, body
    return [q for q in body["queues"] if q["domain"] == domain]


def test_inject_is_delivered(volley, sink_factory):
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.start()

    message_id = inject(volley, ["bob@dest.test", "carol@dest.test"])
    [line] = sink.wait_lines(1)
    assert sorted(line["recipients"]) == ["bob@dest.test", "carol@dest.test"]
    assert line["sender"] == "alice@src.test"
    deliveries = volley.wait_acct("delivery", count=2)
    assert {d["id"] for d in deliveries} == {message_id}
    # Bare LFs from JSON were made CRLF: the sink's size matches the spooled size.
    assert deliveries[0]["size_bytes"] == line["size_bytes"]
    # An injected message is received like any other: accounted and counted.
    receptions = volley.wait_acct("reception", count=2)
    assert {r["id"] for r in receptions} == {message_id}
    assert volley.metrics()["volley_messages_received_total"] == 1


def test_injected_received_header_names_the_queue_id(volley, catcher_factory):
    catcher = catcher_factory()
    volley.route("dest.test", catcher.hostport)
    volley.start()

    message_id = inject(volley, ["bob@dest.test"])
    [caught] = catcher.wait(1)
    received = caught.parsed["Received"]
    assert "with HTTP" in received, received
    assert f" id {message_id}" in received, (message_id, received)


def test_inject_rejects_bad_requests(volley):
    volley.start()
    status, _ = volley.api("POST", "/v1/inject", {"sender": "a@src.test", "recipients": [], "content": "x"})
    assert status == 400
    status, _ = volley.api("POST", "/v1/inject", {"sender": "a@src.test", "recipients": ["no-at-sign"], "content": "x"})
    assert status == 400
    status, _ = volley.api("POST", "/v1/inject", {"sender": "a@src.test", "recipients": ["b@dest.test"], "content": "x", "customer": "nobody"})
    assert status == 400
    assert volley.acct("reception") == []


def test_queues_lists_a_deferred_queue(volley):
    closed = free_port("127.0.0.10")
    volley.route("dest.test", f"127.0.0.10:{closed}")
    volley.policy(retry_intervals=["1h"])
    volley.start()

    inject(volley, ["bob@dest.test"])
    inject(volley, ["carol@dest.test"])
    volley.wait_acct("transient", count=2)
    # Each core publishes its queue snapshot every tick (100 ms).
    [q] = wait_until(
        lambda: (qs := queue(volley, "dest.test")) and qs[0]["deferred"] == 2 and qs,
        2,
        "the deferred queue in GET /v1/queues",
    )
    assert q["vmta"] == "v1"
    assert q["size"] == 2
    assert q["state"] == "active"
    assert q["deferred"] == 2
    assert q["next_attempt_s"] > 0
    assert q["last_deferral"], q


def test_suspend_holds_and_resume_releases(volley, sink_factory):
    port = free_port("127.0.0.10")  # nothing listens yet: the first message is deferred
    volley.route("dest.test", f"127.0.0.10:{port}")
    volley.policy(retry_intervals=["1s"])
    volley.start()
    inject(volley, ["early@dest.test"])
    volley.wait_acct("transient")  # the queue exists, with a retry due in 1 s

    status, body = volley.api("POST", "/v1/queues/suspend", {"domain": "dest.test", "reason": "test hold"})
    assert status == 202, body
    sink = sink_factory("127.0.0.10", port)
    inject(volley, ["bob@dest.test"])
    volley.wait_acct("reception", count=2)
    time.sleep(2)  # the retry comes due and the new message is ready: both held
    assert sink.lines() == []
    [q] = queue(volley, "dest.test")
    assert q["state"] == "suspended"
    assert q["reason"] == "test hold"
    assert q["size"] == 2

    status, body = volley.api("POST", "/v1/queues/resume", {"domain": "dest.test"})
    assert status == 202, body
    assert sorted(sink.wait_recipients(2)) == ["bob@dest.test", "early@dest.test"]
    # GET /v1/queues shows each core's snapshot, published every tick (100 ms).
    wait_until(lambda: queue(volley, "dest.test")[0]["state"] == "active", 2, "state active")


def test_suspend_before_any_mail_holds_it(volley, sink_factory):
    """An operator pausing a domain before its mail arrives (PowerMTA `pause queue`)."""
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.start()

    status, body = volley.api("POST", "/v1/queues/suspend", {"domain": "dest.test", "reason": "test hold"})
    assert status == 202, body
    inject(volley, ["bob@dest.test"])
    volley.wait_acct("reception")
    time.sleep(2)
    assert sink.lines() == []
    [q] = queue(volley, "dest.test")
    assert q["state"] == "suspended"
    assert q["reason"] == "test hold"
    assert q["size"] == 1

    status, body = volley.api("POST", "/v1/queues/resume", {"domain": "dest.test"})
    assert status == 202, body
    [line] = sink.wait_lines(1)
    assert line["recipients"] == ["bob@dest.test"]


def test_bounce_drains_queue_with_dsns(volley, catcher_factory):
    catcher = catcher_factory()
    closed = free_port("127.0.0.10")
    volley.route("dest.test", f"127.0.0.10:{closed}")
    volley.route("src.test", catcher.hostport)
    volley.policy(retry_intervals=["1h"])
    volley.start()

    inject(volley, ["bob@dest.test"], subject="first")
    inject(volley, ["carol@dest.test"], subject="second")
    volley.wait_acct("transient", count=2)

    status, body = volley.api("POST", "/v1/queues/bounce", {"domain": "dest.test", "reason": "operator bounce"})
    assert status == 202, body
    bounces = volley.wait_acct("bounce", count=2)
    assert sorted(b["recipient"] for b in bounces) == ["bob@dest.test", "carol@dest.test"]
    dsns = catcher.wait(2)
    assert all(d.recipients == ["alice@src.test"] for d in dsns)
    assert all(d.parsed.get_content_type() == "multipart/report" for d in dsns)
    time.sleep(0.5)
    [q] = queue(volley, "dest.test") or [{"size": 0}]
    assert q["size"] == 0


def test_metrics_count_received_and_delivered(volley, sink_factory):
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.start()
    before = volley.metrics()
    assert before["volley_messages_received_total"] == 0
    assert before["volley_delivered_total"] == 0

    volley.send("alice@src.test", ["a@dest.test", "b@dest.test"], message("one"))
    volley.send("alice@src.test", ["c@dest.test"], message("two"))
    sink.wait_recipients(3)
    volley.wait_acct("delivery", count=3)
    after = volley.metrics()
    assert after["volley_messages_received_total"] == 2
    assert after["volley_recipients_received_total"] == 3
    assert after["volley_delivered_total"] == 3
    assert after["volley_bounced_total"] == 0


def test_events_after_zero(volley, sink_factory):
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.start()
    volley.send("alice@src.test", ["bob@dest.test"], message("events"))
    sink.wait_lines(1)
    volley.wait_acct("delivery")

    status, body = volley.api("GET", "/v1/events?after=0")
    assert status == 200, body
    events = body["events"]
    assert [e["type"] for e in events] == ["reception", "delivery"]
    assert all(e["recipient"] == "bob@dest.test" for e in events)
    assert events[0]["id"] == events[1]["id"]
    ids = [e["event_id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == 2
    # after=<last> returns nothing newer.
    status, body = volley.api("GET", f"/v1/events?after={ids[-1]}")
    assert status == 200 and body["events"] == []


def test_put_vmta_and_pool_change_the_running_configuration(volley, sink_factory):
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.start()

    status, body = volley.api("GET", "/v1/vmtas/v2")
    assert status == 404
    status, body = volley.api(
        "PUT", "/v1/vmtas/v2", {"source_ip": "127.0.0.3", "ehlo_hostname": "v2.volley.test"}
    )
    assert status == 200, body
    status, body = volley.api("GET", "/v1/vmtas/v2")
    assert status == 200, body
    assert body["name"] == "v2" and body["source_ip"] == "127.0.0.3"
    assert body["ehlo_hostname"] == "v2.volley.test"

    # Point the default pool at the new VMTA: the next message leaves from 127.0.0.3.
    status, body = volley.api("PUT", "/v1/pools/default", {"vmtas": ["v2"]})
    assert status == 200, body
    # Cores pick up a published configuration on their next tick (100 ms).
    time.sleep(0.5)
    volley.send("alice@src.test", ["bob@dest.test"], message("via v2"))
    [line] = sink.wait_lines(1)
    assert line["peer_ip"] == "127.0.0.3"
    assert line["ehlo"] == "v2.volley.test"

    # A change that breaks validation is refused and changes nothing.
    status, body = volley.api("PUT", "/v1/pools/default", {"vmtas": ["no-such-vmta"]})
    assert status in (400, 409), body
    status, body = volley.api("GET", "/v1/pools/default")
    assert body["vmtas"] == ["v2"]


def test_token_required_when_set(volley):
    volley.config["api"]["token"] = "s3cret-token"
    volley.start()
    status, _ = volley.api("GET", "/v1/queues", token="")
    assert status == 401
    status, _ = volley.api("GET", "/metrics", token="wrong")
    assert status == 401
    status, _ = volley.api("POST", "/v1/inject", {"sender": "a@src.test", "recipients": ["b@dest.test"], "content": "x"}, token="")
    assert status == 401
    status, _ = volley.api("GET", "/v1/queues")  # with the token
    assert status == 200
    assert volley.acct("reception") == []


def test_a_request_without_the_token_is_refused_from_its_head(volley):
    import socket

    volley.config["api"]["token"] = "s3cret"
    volley.start()
    with socket.create_connection(("127.0.0.1", volley.api_port), timeout=5) as s:
        # Announces 50 MB and sends none of it: the 401 must come from the head alone.
        s.sendall(b"POST /v1/inject HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 401"), reply
        # ... and the connection is closed, the body never read.
        s.settimeout(5)
        assert s.recv(4096) == b""


def test_a_reload_applies_a_new_api_token(volley):
    import signal

    volley.config["api"]["token"] = "old-token"
    volley.start()
    assert volley.api("GET", "/v1/queues")[0] == 200
    volley.config["api"]["token"] = "new-token"
    volley.write_config()
    volley.signal(signal.SIGHUP)
    wait_until(lambda: volley.api("GET", "/v1/queues", token="new-token")[0] == 200, 5, "the new token")
    assert volley.api("GET", "/v1/queues", token="old-token")[0] == 401
    volley.token = "new-token"


def test_a_value_toml_cannot_hold_is_refused_and_the_entry_stays_visible(volley):
    volley.config["customer"] = [{"name": "acme", "max_messages_per_hour": 10}]
    volley.start()
    status, body = volley.api(
        "PUT", "/v1/customers/acme", {"name": "acme", "max_messages_per_hour": 10, "credits": 2**63}
    )
    assert status == 400, body
    status, body = volley.api("GET", "/v1/customers/acme")
    assert status == 200 and body["name"] == "acme" and body.get("credits", 0) == 0, body


def test_api_connections_are_capped(volley):
    import socket

    volley.start()
    idle = [socket.create_connection(("127.0.0.1", volley.api_port), timeout=5) for _ in range(64)]
    try:
        wait_until(lambda: True, 0.5, "accepts")
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", volley.api_port), timeout=5) as s:
            reply = s.recv(4096)
            assert reply.startswith(b"HTTP/1.1 503"), reply
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: volley.api("GET", "/v1/health")[0] == 200, 5, "the API after the idle clients left")
