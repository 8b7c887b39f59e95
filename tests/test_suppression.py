"""Suppression lists per customer: API, RCPT refusal for AUTH clients, drops for relay and API
mail, durability."""

from __future__ import annotations

import smtplib
import ssl
import time

import pytest

from conftest import SMTP_TIMEOUT_S, free_port, message

PASSWORD = "correct horse battery staple"


def tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
def node(volley, sink_factory, password_hash):
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    volley.submission_port = free_port()
    volley.config["listener"].append(
        {"address": f"127.0.0.1:{volley.submission_port}", "tls": "starttls", "auth": "required"}
    )
    volley.config["customer"] = [
        {"name": "acme", "password_hash": password_hash(PASSWORD)},
        {"name": "other"},
    ]
    volley.sink = sink
    return volley.start()


def test_api_put_get_delete_and_bulk(node):
    status, body = node.api("PUT", "/v1/suppressions/acme/Bob%40Dest.test")
    assert status == 200 and body["entries"] == 1, body
    assert node.api("GET", "/v1/suppressions/acme/bob@dest.test")[0] == 200, "case-blind"
    assert node.api("GET", "/v1/suppressions/other/bob@dest.test")[0] == 404, "per customer"
    assert node.api("PUT", "/v1/suppressions/acme/not-an-address")[0] == 400
    status, body = node.api(
        "POST", "/v1/suppressions/acme", {"addresses": [f"u{i}@dest.test" for i in range(1000)]}
    )
    assert status == 200 and body["entries"] == 1001, body
    assert node.api("POST", "/v1/suppressions/acme", {"addresses": ["ok@x.test", "bad"]})[0] == 400
    assert node.api("GET", "/v1/suppressions")[1]["entries"] == 1001
    assert node.api("DELETE", "/v1/suppressions/acme/bob@dest.test")[0] == 200
    assert node.api("DELETE", "/v1/suppressions/acme/bob@dest.test")[0] == 404
    assert node.api("GET", "/v1/suppressions/acme/bob@dest.test")[0] == 404


def test_an_auth_client_gets_550_at_rcpt_and_a_rejection_event(node):
    assert node.api("PUT", "/v1/suppressions/acme/gone@dest.test")[0] == 200
    with smtplib.SMTP("127.0.0.1", node.submission_port, timeout=SMTP_TIMEOUT_S) as client:
        client.starttls(context=tls())
        client.login("acme", PASSWORD)
        client.mail("s@acme.test")
        code, text = client.rcpt("gone@dest.test")
        assert (code, text) == (550, b"5.7.1 Recipient suppressed")
        assert client.rcpt("here@dest.test")[0] == 250
        code, _ = client.data(message("suppressed"))
        assert code == 250
    assert node.sink.wait_recipients(1) == ["here@dest.test"]
    [event] = node.wait_acct("rejection", customer="acme")
    assert event["recipient"] == "gone@dest.test" and event["enhanced_code"] == "5.7.1", event


def test_relay_and_api_mail_drops_suppressed_recipients(node):
    assert node.api("POST", "/v1/suppressions/other", {"addresses": ["a@dest.test", "b@dest.test"]})[0] == 200
    content = message("relay", extra_headers="X-Volley-Customer: other\r\n")
    node.send("s@other.test", ["a@dest.test", "c@dest.test"], content)
    # Every recipient suppressed: the message is refused at the end of data.
    with pytest.raises(smtplib.SMTPDataError) as refused:
        node.send("s@other.test", ["a@dest.test", "b@dest.test"], content)
    assert refused.value.smtp_code == 550 and b"5.7.1" in refused.value.smtp_error
    status, body = node.api(
        "POST",
        "/v1/inject",
        {"sender": "s@other.test", "recipients": ["b@dest.test"], "content": message("api"), "customer": "other"},
    )
    assert status == 422, body
    assert node.sink.wait_recipients(1) == ["c@dest.test"]
    suppressed = node.wait_acct("suppressed", count=4, customer="other")
    assert sorted(e["recipient"] for e in suppressed) == ["a@dest.test", "a@dest.test", "b@dest.test", "b@dest.test"]
    # A customer without the entries is not affected.
    node.send("s@acme.test", ["a@dest.test"], message("free"))
    node.sink.wait_recipients(2)


def test_suppressions_survive_kill_9_and_bulk_is_fast(node):
    many = [f"user{i}@bulk.test" for i in range(200_000)]
    started = time.monotonic()
    status, body = node.api("POST", "/v1/suppressions/acme", {"addresses": many}, timeout_s=60)
    elapsed = time.monotonic() - started
    assert status == 200 and body["entries"] == 200_000, body
    print(f"bulk load of 200000 addresses: {elapsed:.2f} s (debug build, JSON included)")
    assert node.api("DELETE", "/v1/suppressions/acme/user7@bulk.test")[0] == 200
    node.process.kill()
    node.process.wait(timeout=10)
    node._stderr.close()
    node.process = None
    node.start()
    assert node.api("GET", "/v1/suppressions")[1]["entries"] == 199_999
    assert node.api("GET", "/v1/suppressions/acme/user199999@bulk.test")[0] == 200
    assert node.api("GET", "/v1/suppressions/acme/user7@bulk.test")[0] == 404
