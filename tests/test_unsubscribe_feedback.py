"""One-click unsubscribe (RFC 8058) and ARF abuse reports (RFC 5965) against the daemon: both put
the recipient on the customer's suppression list durably, write an event, and refuse what is forged
or malformed without changing anything."""

import base64
import hashlib
import hmac
import http.client
import json

SECRET = "unsubscribe-secret-0123456789"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(secret: str, customer: str, recipient: str) -> str:
    payload = f"{customer}\0{recipient.lower()}".encode()
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()[:16]
    return f"{b64(payload)}.{b64(mac)}"


def configure(volley) -> None:
    volley.config["customer"] = [
        {"name": "acme", "list_unsubscribe": "https://unsub.volley.test/u/{token}"},
        {"name": "other"},
    ]
    volley.config["unsubscribe"] = {"secrets": [SECRET]}
    volley.config["api"]["token"] = "api-token"


def post_public(volley, path: str, body: bytes = b"List-Unsubscribe=One-Click"):
    """A POST without the API token, as a mailbox provider sends it."""
    conn = http.client.HTTPConnection("127.0.0.1", volley.api_port, timeout=10)
    try:
        conn.request("POST", path, body=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def suppressed(volley, customer: str, address: str) -> bool:
    status, _ = volley.api("GET", f"/v1/suppressions/{customer}/{address}")
    return status == 200


def test_one_click_unsubscribe_suppresses_and_a_forged_token_changes_nothing(volley):
    configure(volley)
    volley.start()
    good = token(SECRET, "acme", "Bob@Dest.test")
    status, body = post_public(volley, f"/v1/unsubscribe/{good}")
    assert status == 200, body
    assert json.loads(body) == {"customer": "acme", "recipient": "bob@dest.test", "unsubscribed": True}
    assert suppressed(volley, "acme", "bob@dest.test")
    [event] = volley.wait_acct("unsubscribe")
    assert (event["customer"], event["recipient"], event["client_ip"]) == ("acme", "bob@dest.test", "127.0.0.1")

    # Forged: another key, another customer with acme's MAC, garbage. 404, nothing suppressed.
    for forged in [
        token("not-the-secret-0123456789", "acme", "eve@dest.test"),
        f"{b64(b'other' + bytes([0]) + b'eve@dest.test')}.{good.split('.')[1]}",
        "garbage",
    ]:
        status, body = post_public(volley, f"/v1/unsubscribe/{forged}")
        assert status == 404, (forged, body)
    assert not suppressed(volley, "acme", "eve@dest.test")
    assert not suppressed(volley, "other", "eve@dest.test")
    assert len(volley.acct("unsubscribe")) == 1
    # Only the unsubscribe path is public: the rest of the API still wants the token.
    status, _ = post_public(volley, "/v1/suppressions/acme", b'{"addresses":["x@y.test"]}')
    assert status == 401
    # A suppressed recipient gets nothing more from that customer.
    status, body = volley.api("POST", "/v1/inject", {
        "sender": "news@src.test", "recipients": ["bob@dest.test"],
        "content": "Subject: again\n\nhello\n", "customer": "acme"})
    assert status == 422, body


def test_rotation_a_token_of_the_old_key_works_while_the_old_key_is_listed(volley):
    configure(volley)
    volley.config["unsubscribe"] = {"secrets": ["new-secret-0123456789abc", SECRET]}
    volley.start()
    status, body = post_public(volley, f"/v1/unsubscribe/{token(SECRET, 'acme', 'old@dest.test')}")
    assert status == 200, body
    volley.config["unsubscribe"] = {"secrets": ["new-secret-0123456789abc"]}
    volley.write_config()
    volley.signal(1)
    import time
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, _ = post_public(volley, f"/v1/unsubscribe/{token(SECRET, 'acme', 'old2@dest.test')}")
        if status == 404:
            break
        time.sleep(0.2)
    assert status == 404, "the dropped key still verifies after the reload"


def arf(original_headers: str, rcpt: str | None = "<Bob@Dest.test>", feedback_type: str = "abuse") -> bytes:
    rcpt_line = f"Original-Rcpt-To: {rcpt}\r\n" if rcpt else ""
    return (
        "From: <fbl@mailbox.test>\r\n"
        "To: <fbl@volley.test>\r\n"
        "Subject: complaint\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report;\r\n\tboundary="b1"\r\n'
        "\r\n"
        "--b1\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n"
        "--b1\r\nContent-Type: message/feedback-report\r\n\r\n"
        f"Feedback-Type: {feedback_type}\r\nUser-Agent: TestFBL/1.0\r\nVersion: 1\r\n"
        f"{rcpt_line}Source-IP: 127.0.0.2\r\n\r\n"
        "--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"{original_headers}\r\n"
        "--b1--\r\n"
    ).encode()


def _raw(volley, body: bytes, query: str):
    conn = http.client.HTTPConnection("127.0.0.1", volley.api_port, timeout=10)
    try:
        conn.request("POST", f"/v1/feedback{query}", body=body,
                     headers={"Authorization": "Bearer api-token", "Content-Type": "message/rfc822"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_an_arf_report_suppresses_the_complaining_recipient(volley):
    configure(volley)
    volley.start()
    # The original carries acme's unsubscribe link: the token names the customer and recipient.
    lu = f"<https://unsub.volley.test/u/{token(SECRET, 'acme', 'carol@dest.test')}>"
    status, body = _raw(volley, arf(f"From: news@src.test\r\nTo: carol@dest.test\r\nList-Unsubscribe: {lu}", rcpt=None), "")
    assert status == 200, body
    assert json.loads(body)["customer"] == "acme"
    assert suppressed(volley, "acme", "carol@dest.test")
    [event] = volley.wait_acct("complaint")
    assert event["recipient"] == "carol@dest.test" and event["source_ip"] == "127.0.0.2", event
    assert "abuse" in event["response"] and "TestFBL/1.0" in event["response"], event

    # No token of ours: the customer named in the query, the recipient from Original-Rcpt-To.
    status, body = _raw(volley, arf("From: news@src.test\r\nTo: someone@dest.test"), "?customer=other")
    assert status == 200, body
    assert suppressed(volley, "other", "bob@dest.test")

    # not-spam: recorded, nothing suppressed.
    status, body = _raw(volley, arf("To: dan@dest.test", rcpt="<dan@dest.test>", feedback_type="not-spam"), "?customer=acme")
    assert status == 200 and json.loads(body)["suppressed"] is False, body
    assert not suppressed(volley, "acme", "dan@dest.test")

    # Malformed, or no way to tell the customer: 400, nothing changes.
    before = len(volley.acct("complaint"))
    for bad, query in [
        (b"Content-Type: text/plain\r\n\r\nnot a report\r\n", "?customer=acme"),
        (arf("To: x@dest.test").replace(b"Feedback-Type: abuse\r\n", b""), "?customer=acme"),
        (arf("To: x@dest.test"), ""),
    ]:
        status, body = _raw(volley, bad, query)
        assert status == 400, body
    status, body = _raw(volley, arf("To: x@dest.test"), "?customer=nobody")
    assert status == 404, body
    assert not suppressed(volley, "acme", "x@dest.test")
    assert len(volley.acct("complaint")) == before


def test_list_unsubscribe_needs_secrets_and_a_token_placeholder(tmp_path):
    import subprocess

    from conftest import VOLLEY_BIN

    bad = tmp_path / "bad.toml"
    bad.write_text('[[listener]]\naddress = "127.0.0.1:2525"\n[[customer]]\nname = "a"\n'
                   'list_unsubscribe = "https://u.test/no-token"\n')
    result = subprocess.run([str(VOLLEY_BIN), "check", "--config", str(bad)],
                            capture_output=True, text=True, timeout=30)
    out = result.stdout + result.stderr
    assert result.returncode == 1
    assert "customer[0].list_unsubscribe" in out and "{token}" in out and "[unsubscribe] secrets" in out, out


def test_one_recipient_mail_gets_signed_unsubscribe_headers_and_the_link_works(
    volley, catcher_factory, tmp_path
):
    import dkim

    from test_dkim import dns_of, make_key

    key, record = make_key(tmp_path, "ed25519")
    catcher = catcher_factory("127.0.0.11")
    volley.route("dest.test", catcher.hostport)
    configure(volley)
    volley.config["dkim"] = [{"domain": "acme.example", "selector": "s", "private_key": str(key)}]
    volley.start()
    plain = ("X-Volley-Customer: acme\r\nFrom: <news@acme.example>\r\nTo: <bob@dest.test>\r\n"
             "Subject: {}\r\n\r\nHello.\r\n")
    with volley.smtp() as client:
        # One recipient, no List-Unsubscribe, no Message-ID, no Date: all added, all signed.
        client.sendmail("news@acme.example", ["Dora@Dest.test"], plain.format("one"))
        # Two recipients: no per-recipient link can be made.
        client.sendmail("news@acme.example", ["e1@dest.test", "e2@dest.test"], plain.format("two"))
        # The sender's own List-Unsubscribe is kept as it is.
        client.sendmail("news@acme.example", ["f@dest.test"],
                        plain.format("own").replace("Subject:", "List-Unsubscribe: <mailto:u@acme.example>\r\nSubject:"))
    caught = {c.parsed["Subject"]: c for c in catcher.wait(3)}
    one = caught["one"].parsed
    url = one["List-Unsubscribe"]
    assert url.startswith("<https://unsub.volley.test/u/") and url.endswith(">"), url
    assert one["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert one["Message-ID"] and one["Date"], caught["one"].data[:800]
    signed = "".join(one["DKIM-Signature"].split()).lower()
    for name in ["list-unsubscribe", "list-unsubscribe-post", "message-id", "date"]:
        assert name in signed, (name, signed)
    assert dkim.verify(caught["one"].data, dnsfunc=dns_of({"s._domainkey.acme.example": record}))
    assert caught["two"].parsed["List-Unsubscribe"] is None
    assert caught["own"].parsed["List-Unsubscribe"] == "<mailto:u@acme.example>"
    assert caught["own"].parsed["List-Unsubscribe-Post"] is None

    # What a mailbox provider does with the header: POST to the URL (the operator's proxy maps
    # https://unsub.volley.test/u/ to the API's /v1/unsubscribe/).
    token_part = url.strip("<>").rsplit("/", 1)[1]
    status, body = post_public(volley, f"/v1/unsubscribe/{token_part}")
    assert status == 200, body
    assert json.loads(body)["recipient"] == "dora@dest.test"
    status, body = volley.api("POST", "/v1/inject", {
        "sender": "news@acme.example", "recipients": ["dora@dest.test"],
        "content": "Subject: again\n\nhello\n", "customer": "acme"})
    assert status == 422, body
