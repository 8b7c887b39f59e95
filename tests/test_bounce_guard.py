"""The bounce-rate guard: a customer whose hard bounces pass `max_bounce_percent` of its recent
delivery outcomes is paused (451 4.7.1, API 429) with an event, a metric and a WARN line, stays
paused across a restart, and is resumed by `POST /v1/customers/{name}/resume`."""

from conftest import message, wait_until


def send_as(volley, customer: str, rcpt: str, subject: str):
    """(code, reply text) of the end of data."""
    with volley.smtp() as client:
        client.ehlo("client.test")
        client.mail("alice@src.test")
        client.rcpt(rcpt)
        code, reply = client.data(f"X-Volley-Customer: {customer}\r\n{message(subject)}".encode())
        return code, reply.decode()


def usage(volley, customer: str) -> dict:
    status, body = volley.api("GET", f"/v1/customers/{customer}/usage")
    assert status == 200, body
    return body


def test_a_wall_of_hard_bounces_pauses_the_customer_until_resumed(volley_factory, catcher_factory):
    catcher = catcher_factory("127.0.0.11")
    volley = volley_factory()
    volley.route("dest.test", catcher.hostport)
    volley.route("src.test", catcher.hostport)  # the DSNs (they do not count for the guard)
    volley.config["customer"] = [
        {"name": "acme", "max_bounce_percent": 20, "bounce_window_messages": 20},
        {"name": "calm"},
    ]
    volley.start()
    for n in range(8):
        assert send_as(volley, "acme", f"ok{n}@dest.test", f"ok {n}")[0] == 250
    volley.wait_acct("delivery", 8, customer="acme")
    # 8 delivered and 2 bounced: 20 %, not over. The third bounce makes 3 of 11: over.
    for n in range(2):
        assert send_as(volley, "acme", "permfail@dest.test", f"bad {n}")[0] == 250
    volley.wait_acct("bounce", 2, customer="acme")
    assert usage(volley, "acme")["paused"] is None
    assert send_as(volley, "acme", "permfail@dest.test", "bad 2")[0] == 250
    [event] = volley.wait_acct("customer_paused", 1, customer="acme")
    assert "3 hard bounces among the last 11" in event["response"], event

    code, reply = send_as(volley, "acme", "ok9@dest.test", "while paused")
    assert code == 451 and reply.startswith("4.7.1"), reply
    assert "paused by the bounce-rate guard" in reply, reply
    status, body = volley.api("POST", "/v1/inject", {
        "sender": "alice@src.test", "recipients": ["ok@dest.test"], "customer": "acme",
        "content": "Subject: api\n\nhi\n"})
    assert status == 429, body
    # Another customer sends on.
    assert send_as(volley, "calm", "permfail@dest.test", "calm")[0] == 250
    u = usage(volley, "acme")
    assert u["paused"]["reason"] == event["response"], u
    assert u["bounce_window"]["hard_bounces"] == 3, u
    assert volley.metrics()["volley_bounce_guard_pauses_total"] == 1
    assert "customer acme paused by the bounce-rate guard" in volley.stderr_tail(200)

    # A restart keeps the pause.
    assert volley.stop() == 0
    volley.start()
    assert usage(volley, "acme")["paused"] is not None
    assert send_as(volley, "acme", "ok10@dest.test", "after restart")[0] == 451

    status, body = volley.api("POST", "/v1/customers/acme/resume")
    assert status == 200 and body == {"customer": "acme", "resumed": True}, body
    volley.wait_acct("customer_resumed", 1, customer="acme")
    assert usage(volley, "acme")["paused"] is None
    assert usage(volley, "acme")["bounce_window"]["outcomes"] == 0
    assert send_as(volley, "acme", "ok11@dest.test", "resumed")[0] == 250
    status, body = volley.api("POST", "/v1/customers/acme/resume")
    assert status == 200 and body["resumed"] is False, body
    status, _ = volley.api("POST", "/v1/customers/nobody/resume")
    assert status == 404
