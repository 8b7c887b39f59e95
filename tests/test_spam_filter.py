"""Outbound spam filtering with a real rspamd (`[spam_filter]`, docs/spam-filter.md): GTUBE refused
with 550 5.7.1 end to end, "soft reject" as 451 4.7.1, "add header" delivered with X-Spam headers,
clean mail unchanged, per-customer off switch, rspamd down under both `on_error` modes, and a slow
rspamd holding only its own session."""

import http.server
import smtplib
import threading
import time

import pytest

from conftest import free_port, message, wait_until
from rspamdserver import Rspamd

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory):
    server = Rspamd(tmp_path_factory.mktemp("rspamd"), free_port()).start()
    yield server
    server.stop()


def mail(subject: str, body: str = "Hello.", customer: str = "acme") -> str:
    return (f"X-Volley-Customer: {customer}\r\nFrom: news@src.test\r\nTo: bob@dest.test\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@src.test>\r\n\r\n{body}\r\n")


def configure(volley, catcher, url: str, **extra) -> None:
    volley.route("dest.test", catcher.hostport)
    volley.config["customer"] = [{"name": "acme"}, {"name": "trusted", "spam_filter": False}]
    volley.config["spam_filter"] = {"url": url, "timeout_ms": 2000, **extra}


def send(volley, content: str) -> tuple[int, str]:
    """(code, reply) of the end of data."""
    with volley.smtp() as client:
        client.ehlo("client.test")
        client.mail("news@src.test")
        client.rcpt("bob@dest.test")
        code, reply = client.data(content.encode())
        return code, reply.decode()


def test_rspamd_actions_decide_at_the_end_of_data(volley, catcher_factory, rspamd):
    catcher = catcher_factory("127.0.0.11")
    configure(volley, catcher, rspamd.url)
    volley.start()

    code, reply = send(volley, mail("gtube", GTUBE))
    assert (code, reply[:5]) == (550, "5.7.1"), reply
    assert "spam" in reply and "GTUBE" in reply, reply
    [event] = volley.wait_acct("rejection")
    assert event["spam_score"] == 15.0 and event["spam_symbols"] == "GTUBE", event
    assert event["customer"] == "acme" and event["enhanced_code"] == "5.7.1", event

    code, reply = send(volley, mail("soft-me now"))
    assert (code, reply[:5]) == (451, "4.7.1"), reply

    code, _ = send(volley, mail("please flag-me"))
    assert code == 250
    code, _ = send(volley, mail("clean"))
    assert code == 250
    caught = {c.parsed["Subject"]: c for c in catcher.wait(2)}
    flagged = caught["please flag-me"].parsed
    assert flagged["X-Spam"] == "Yes", caught["please flag-me"].data[:600]
    assert flagged["X-Spam-Score"].startswith("7.00"), flagged["X-Spam-Score"]
    assert "VOLLEY_TEST_FLAG" in flagged["X-Spam-Symbols"]
    assert caught["clean"].parsed["X-Spam"] is None

    # A customer with spam_filter = false is not checked: even GTUBE goes.
    code, _ = send(volley, mail("trusted gtube", GTUBE, customer="trusted"))
    assert code == 250
    catcher.wait(3)
    metrics = volley.metrics()
    assert metrics["volley_spam_checks_total"] == 4
    assert metrics["volley_spam_refused_total"] == 2
    assert metrics["volley_spam_flagged_total"] == 1
    assert metrics["volley_spam_check_failures_total"] == 0

    # The API takes the same path: GTUBE by inject is 422.
    status, body = volley.api("POST", "/v1/inject", {
        "sender": "news@src.test", "recipients": ["bob@dest.test"], "customer": "acme",
        "content": f"Subject: api gtube\n\n{GTUBE}\n"})
    assert status == 422, body


def test_rspamd_down_accepts_or_tempfails_as_on_error_says(volley, catcher_factory):
    catcher = catcher_factory("127.0.0.11")
    dead = f"http://127.0.0.1:{free_port()}"
    configure(volley, catcher, dead)
    volley.start()
    code, _ = send(volley, mail("unchecked", GTUBE))
    assert code == 250  # on_error = "accept" is the default
    catcher.wait(1)
    assert volley.metrics()["volley_spam_check_failures_total"] == 1
    assert "spam filter:" in volley.stderr_tail(100)

    volley.config["spam_filter"]["on_error"] = "tempfail"
    volley.write_config()
    volley.signal(1)

    def tempfailed():
        code, reply = send(volley, mail("while down"))
        return (code, reply) if code == 451 else None

    code, reply = wait_until(tempfailed, 10, "451 once on_error = tempfail is reloaded")
    assert reply.startswith("4.7.1") and "unavailable" in reply, reply


class SlowRspamd:
    """Answers /checkv2 after `delay_s` with "no action"."""

    def __init__(self, delay_s: float) -> None:
        delay = delay_s

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(delay)
                body = b'{"action":"no action","score":0,"required_score":15,"symbols":{}}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_slow_check_holds_only_its_own_session(volley, catcher_factory):
    slow = SlowRspamd(3.0)
    catcher = catcher_factory("127.0.0.11")
    configure(volley, catcher, slow.url, timeout_ms=10000)
    volley.start()
    result = {}

    def checked_session():
        result["reply"] = send(volley, mail("slow check"))

    thread = threading.Thread(target=checked_session)
    thread.start()
    time.sleep(0.5)  # that session now waits for the slow check
    started = time.monotonic()
    with volley.smtp() as client:  # an unchecked customer's session on the same (only) core
        client.sendmail("a@src.test", ["bob@dest.test"],
                        "X-Volley-Customer: trusted\r\n" + message("meanwhile"))
    meanwhile_s = time.monotonic() - started
    thread.join(15)
    slow.server.shutdown()
    assert result["reply"][0] == 250, result
    assert meanwhile_s < 1.5, f"another session waited {meanwhile_s:.2f} s for the spam check"
