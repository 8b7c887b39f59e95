"""Adaptive backoff end to end: a [[backoff]] rule matching a receiver's temporary failure puts
the queue into backoff (log line, `volley_backoff_transitions_total`, `volley_queues_in_backoff`,
the queue's state in the API), and a suspend rule holds the queue."""

from conftest import message, wait_until


def test_a_matching_tempfail_puts_the_queue_into_backoff(volley, sink_factory):
    sink = sink_factory("127.0.0.10", None, ["--tempfail-percent", "100", "--fail-at", "data"])
    volley.route("dest.test", sink.hostport)
    volley.config["backoff"] = [{"pattern": "temporary failure injected", "action": "backoff"}]
    volley.start()
    volley.send("alice@src.test", ["bob@dest.test"], message("into backoff"))
    volley.wait_acct("transient", 1)
    wait_until(lambda: volley.metrics().get("volley_queues_in_backoff") == 1, 10, "one queue in backoff")
    assert volley.metrics()["volley_backoff_transitions_total"] >= 1
    assert "entered backoff" in volley.stderr_tail(200)

    def queue():
        status, body = volley.api("GET", "/v1/queues")
        assert status == 200, body
        return next((q for q in body["queues"] if q["domain"] == "dest.test"), None)

    q = wait_until(lambda: (q := queue()) and q["backoff_level"] == 1 and q, 10, "backoff level 1")
    assert q["deferred"] == 1, q


def test_a_suspend_rule_holds_the_queue(volley, sink_factory):
    sink = sink_factory("127.0.0.10", None, ["--tempfail-percent", "100", "--fail-at", "mail"])
    volley.route("dest.test", sink.hostport)
    volley.config["backoff"] = [
        {"pattern": "injected at MAIL", "action": "suspend", "duration": "1h"}
    ]
    volley.start()
    volley.send("alice@src.test", ["bob@dest.test"], message("suspended"))
    volley.wait_acct("transient", 1)

    def state():
        status, body = volley.api("GET", "/v1/queues")
        assert status == 200, body
        q = next((q for q in body["queues"] if q["domain"] == "dest.test"), None)
        return q and q["state"] == "suspended" and q

    q = wait_until(state, 10, "the queue suspended by the rule")
    assert "backoff rule" in (q["reason"] or ""), q
    assert "suspended for 3600 s" in volley.stderr_tail(200)
