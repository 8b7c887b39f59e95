"""TLS-RPT (RFC 8460, docs/transport-security.md): sessions under MTA-STS policies are counted per
policy domain, kept across a restart, and `POST /v1/tls-rpt/send` sends each domain's gzip JSON
report to the `rua` of its `_smtp._tls` record: an HTTPS endpoint and a mailbox."""

from __future__ import annotations

import datetime
import gzip
import json
import ssl
import threading
import time
from unittest import mock
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dkim

from conftest import DELIVERY_TIMEOUT_S, free_port, message, wait_until
from pki import TestCa
from test_dkim import dns_of, make_key
from test_tls_policy import mx_sink, publish_policy


class ReportServer:
    """An HTTPS endpoint on 127.0.0.1 (certificate for `localhost`) keeping each POST."""

    def __init__(self, cert, key, refuse: int = 0) -> None:
        self.port = free_port("127.0.0.1")
        self.posts: list[tuple[str, bytes]] = []
        self.refused: list[bytes] = []  # the bodies of the first `refuse` POSTs, answered 500
        self.refuse = refuse
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with server.lock:
                    refusing = len(server.refused) < server.refuse
                    if refusing:
                        server.refused.append(body)
                    else:
                        server.posts.append((self.headers.get("Content-Type", ""), body))
                self.send_response(500 if refusing else 200)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}/tlsrpt"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def domain_counts(volley, domain: str) -> tuple[int, int]:
    status, body = volley.api("GET", "/v1/tls-rpt")
    assert status == 200, body
    for d in body["domains"]:
        if d["domain"] == domain:
            s = d["policies"][0]["summary"]
            return s["total-successful-session-count"], s["total-failure-session-count"]
    return 0, 0


def test_reports_go_to_https_and_mailto_with_counts_kept_across_a_restart(
    volley, dns, tmp_path, sink_factory, catcher_factory
):
    ca = TestCa(tmp_path / "pki")
    servers = []
    sink = mx_sink(dns, sink_factory, ca, "rpt.test", "mx.rpt.test", "127.0.0.51")
    servers.append(publish_policy(dns, ca, "rpt.test", "127.0.0.151"))
    servers[-1].policy("enforce", ["mx.rpt.test"])
    mx_sink(dns, sink_factory, ca, "rpt2.test", "mx.rpt2.test", "127.0.0.52")
    servers.append(publish_policy(dns, ca, "rpt2.test", "127.0.0.152"))
    servers[-1].policy("enforce", ["mx.elsewhere.test"])
    # Counted, but no `_smtp._tls` record: no report.
    mx_sink(dns, sink_factory, ca, "rpt4.test", "mx.rpt4.test", "127.0.0.55")
    servers.append(publish_policy(dns, ca, "rpt4.test", "127.0.0.155"))
    servers[-1].policy("enforce", ["mx.rpt4.test"])
    cert, key = ca.issue(["localhost"])
    reports = ReportServer(cert, key)
    catcher = catcher_factory("127.0.0.53")
    dns.txt("_smtp._tls.rpt.test", f"v=TLSRPTv1; rua={reports.url}")
    dns.txt("_smtp._tls.rpt2.test", "v=TLSRPTv1; rua=mailto:tls@reports.test")
    volley.config["routes"]["reports.test"] = catcher.hostport
    volley.config["tls"] = {"trust_anchors": [str(ca.cert)]}
    volley.config["tls_rpt"] = {"enabled": True, "interval_s": 86400}
    try:
        volley.start()
        volley.send("a@src.test", ["r@rpt.test"], message("rpt ok"))
        volley.send("a@src.test", ["r@rpt2.test"], message("rpt refused"))
        volley.send("a@src.test", ["r@rpt4.test"], message("rpt no record"))
        volley.wait_acct("delivery", recipient="r@rpt.test")
        volley.wait_acct("delivery", recipient="r@rpt4.test")
        volley.wait_acct("transient", recipient="r@rpt2.test")
        sink.wait_lines(1)
        assert domain_counts(volley, "rpt.test") == (1, 0)
        assert domain_counts(volley, "rpt2.test")[1] >= 1
        assert domain_counts(volley, "rpt4.test") == (1, 0)
        started_before = volley.api("GET", "/v1/tls-rpt")[1]["started_s"]

        # Counts recorded before a restart are reported after it.
        assert volley.stop() == 0
        assert (volley.dir / "spool" / "tls-rpt.json").exists()
        volley.start()
        assert domain_counts(volley, "rpt.test") == (1, 0)
        status, shown = volley.api("GET", "/v1/tls-rpt")
        assert shown["enabled"] is True and shown["domain_count"] == 3, shown
        assert shown["started_s"] == started_before, "the period goes on across the restart"

        status, sent = volley.api("POST", "/v1/tls-rpt/send")
        assert status == 200, sent
        assert sent["https"] == 1 and sent["mailto"] == 1 and sent["failed"] == 0, sent
        assert sent["domains"] == 3 and sent["no_record"] == 1, sent
        assert domain_counts(volley, "rpt.test") == (0, 0), "the period was closed"
        assert volley.api("GET", "/v1/tls-rpt")[1]["started_s"] >= started_before

        assert len(reports.posts) == 1
        content_type, body = reports.posts[0]
        assert content_type == "application/tlsrpt+gzip"
        report = json.loads(gzip.decompress(body))
        assert report["organization-name"] == "mta.volley.test"
        assert report["contact-info"] == "tlsrpt-noreply@mta.volley.test"
        policy = report["policies"][0]
        assert policy["policy"]["policy-type"] == "sts"
        assert policy["policy"]["policy-domain"] == "rpt.test"
        assert "mode: enforce" in policy["policy"]["policy-string"]
        assert policy["summary"] == {
            "total-successful-session-count": 1,
            "total-failure-session-count": 0,
        }

        caught = catcher.wait(1, DELIVERY_TIMEOUT_S)[0]
        assert caught.recipients == ["tls@reports.test"]
        assert caught.sender == "tlsrpt-noreply@mta.volley.test"
        mail = caught.parsed
        assert mail["TLS-Report-Domain"] == "rpt2.test"
        assert mail["TLS-Report-Submitter"] == "mta.volley.test"
        assert mail.get_content_type() == "multipart/report"
        assert mail.get_param("report-type") == "tlsrpt"
        parts = [p for p in mail.iter_attachments() if p.get_content_type() == "application/tlsrpt+gzip"]
        assert len(parts) == 1
        mailed = json.loads(gzip.decompress(parts[0].get_content()))
        detail = mailed["policies"][0]["failure-details"][0]
        assert detail["result-type"] == "validation-failure"
        assert detail["receiving-mx-hostname"] == "mx.rpt2.test"
        assert detail["receiving-ip"] == "127.0.0.52"
        assert mailed["policies"][0]["summary"]["total-failure-session-count"] >= 1
        assert mailed["policies"][0]["summary"]["total-successful-session-count"] == 0
    finally:
        reports.stop()
        for s in servers:
            s.stop()


def test_disabled_records_nothing(volley):
    volley.start()
    status, body = volley.api("GET", "/v1/tls-rpt")
    assert status == 200 and body["enabled"] is False and body["domains"] == [], body
    status, sent = volley.api("POST", "/v1/tls-rpt/send")
    assert status == 200 and sent["domains"] == 0, sent
    # Without `[server] test_clock` the clock cannot be moved.
    status, body = volley.api("POST", "/v1/clock/advance", {"seconds": 86400})
    assert status == 404, body


def mailed_report(caught) -> dict:
    parts = [
        p for p in caught.parsed.iter_attachments() if p.get_content_type() == "application/tlsrpt+gzip"
    ]
    assert len(parts) == 1, caught.data[:2000]
    return json.loads(gzip.decompress(parts[0].get_content()))


def iso_s(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_a_day_of_simulated_time_ends_the_period_and_sends_its_reports(
    volley, dns, tmp_path, sink_factory, catcher_factory
):
    """`interval_s` at its default (a day); the test clock moves a day forward: the reports go to
    an HTTPS endpoint and a mailbox without `POST /v1/tls-rpt/send`. The mailed report is signed
    with the `[[dkim]]` key of the host name's domain."""
    ca = TestCa(tmp_path / "pki")
    servers = []
    mx_sink(dns, sink_factory, ca, "day.test", "mx.day.test", "127.0.0.56")
    servers.append(publish_policy(dns, ca, "day.test", "127.0.0.156"))
    servers[-1].policy("enforce", ["mx.day.test"])
    # `testing` with an MX host it does not list: delivered, and reported as a failure.
    mx_sink(dns, sink_factory, ca, "day2.test", "mx.day2.test", "127.0.0.57")
    servers.append(publish_policy(dns, ca, "day2.test", "127.0.0.157"))
    servers[-1].policy("testing", ["mx.elsewhere.test"])
    cert, key = ca.issue(["localhost"])
    reports = ReportServer(cert, key)
    catcher = catcher_factory("127.0.0.58")
    dns.txt("_smtp._tls.day.test", f"v=TLSRPTv1; rua={reports.url}")
    dns.txt("_smtp._tls.day2.test", "v=TLSRPTv1; rua=mailto:tls@reports.test")
    volley.config["routes"]["reports.test"] = catcher.hostport
    volley.config["tls"] = {"trust_anchors": [str(ca.cert)]}
    volley.config["tls_rpt"] = {"enabled": True}
    volley.config["server"]["test_clock"] = True
    dkim_key, dkim_record = make_key(tmp_path, "rsa")
    volley.config["dkim"] = [
        {"domain": "volley.test", "selector": "rpt", "private_key": str(dkim_key)}
    ]
    try:
        volley.start()
        volley.send("a@src.test", ["r@day.test"], message("a day, enforce"))
        volley.send("a@src.test", ["r@day2.test"], message("a day, testing"))
        volley.wait_acct("delivery", recipient="r@day.test")
        volley.wait_acct("delivery", recipient="r@day2.test")
        assert domain_counts(volley, "day.test") == (1, 0)
        assert domain_counts(volley, "day2.test") == (0, 1)
        started_s = volley.api("GET", "/v1/tls-rpt")[1]["started_s"]
        time.sleep(2.5)  # the period is checked once a second
        assert reports.posts == [] and catcher.snapshot() == [], "a day has not passed yet"

        status, moved = volley.api("POST", "/v1/clock/advance", {"seconds": 86400})
        assert status == 200 and moved["offset_s"] == 86400, moved
        assert moved["now_s"] >= started_s + 86400
        wait_until(lambda: reports.posts, DELIVERY_TIMEOUT_S, "the report POSTed after a day")
        assert len(reports.posts) == 1
        report = json.loads(gzip.decompress(reports.posts[0][1]))
        start, end = (iso_s(report["date-range"][k]) for k in ("start-datetime", "end-datetime"))
        assert start == started_s, report["date-range"]
        assert 86400 <= end - start < 86400 + 60, report["date-range"]
        policy = report["policies"][0]
        assert policy["policy"]["policy-domain"] == "day.test"
        assert policy["summary"] == {
            "total-successful-session-count": 1,
            "total-failure-session-count": 0,
        }

        caught = catcher.wait(1, DELIVERY_TIMEOUT_S)[0]
        assert caught.recipients == ["tls@reports.test"]
        assert caught.parsed["TLS-Report-Domain"] == "day2.test"
        signature = "".join(caught.parsed["DKIM-Signature"].split())
        assert "d=volley.test" in signature and "s=rpt" in signature, signature
        # Signed on the moved clock: `t=` is a day ahead of this process's.
        with mock.patch("dkim.time.time", return_value=time.time() + moved["offset_s"]):
            keys = dns_of({"rpt._domainkey.volley.test": dkim_record})
            assert dkim.verify(caught.data, dnsfunc=keys), caught.data[:1500]
        mailed = mailed_report(caught)
        assert mailed["date-range"] == report["date-range"]
        summary = mailed["policies"][0]["summary"]
        assert summary == {"total-successful-session-count": 0, "total-failure-session-count": 1}
        detail = mailed["policies"][0]["failure-details"][0]
        assert detail["result-type"] == "validation-failure"
        assert detail["receiving-mx-hostname"] == "mx.day2.test"
        assert detail["failed-session-count"] == 1
        # A new period started when the old one closed, on the moved clock.
        assert volley.api("GET", "/v1/tls-rpt")[1]["started_s"] >= started_s + 86400
        assert domain_counts(volley, "day.test") == (0, 0)
    finally:
        reports.stop()
        for s in servers:
            s.stop()


def test_a_period_ends_by_itself_after_interval_s(volley, dns, tmp_path, sink_factory):
    ca = TestCa(tmp_path / "pki")
    mx_sink(dns, sink_factory, ca, "rpt3.test", "mx.rpt3.test", "127.0.0.54")
    server = publish_policy(dns, ca, "rpt3.test", "127.0.0.154")
    server.policy("enforce", ["mx.rpt3.test"])
    cert, key = ca.issue(["localhost"])
    reports = ReportServer(cert, key)
    dns.txt("_smtp._tls.rpt3.test", f"v=TLSRPTv1; rua={reports.url}")
    volley.config["tls"] = {"trust_anchors": [str(ca.cert)]}
    volley.config["tls_rpt"] = {"enabled": True, "interval_s": 3}
    try:
        volley.start()
        volley.send("a@src.test", ["r@rpt3.test"], message("rpt period"))
        volley.wait_acct("delivery", recipient="r@rpt3.test")
        wait_until(lambda: reports.posts, DELIVERY_TIMEOUT_S, "a report without POST /v1/tls-rpt/send")
        sent = [json.loads(gzip.decompress(body)) for _, body in reports.posts]
        successes = sum(
            r["policies"][0]["summary"]["total-successful-session-count"] for r in sent
        )
        assert successes == 1, sent
    finally:
        reports.stop()
        server.stop()


def policies_of(volley, domain: str) -> list[dict]:
    status, body = volley.api("GET", "/v1/tls-rpt")
    assert status == 200, body
    for d in body["domains"]:
        if d["domain"] == domain:
            return d["policies"]
    return []


def test_sessions_without_a_policy_and_failed_policy_fetches_are_counted(
    volley, dns, tmp_path, sink_factory
):
    ca = TestCa(tmp_path / "pki")
    stranger = TestCa(tmp_path / "stranger", "Stranger CA")
    servers = []
    # No MTA-STS, no DANE: a TLS session is `no-policy-found`; a clear-text one is not counted.
    mx_sink(dns, sink_factory, ca, "np.test", "mx.np.test", "127.0.0.61")
    mx_sink(dns, sink_factory, None, "clear.test", "mx.clear.test", "127.0.0.62")
    # `_mta-sts` published, but the policy cannot be had: 404, a certificate Volley does not
    # trust, a file that is not a policy.
    mx_sink(dns, sink_factory, ca, "fe.test", "mx.fe.test", "127.0.0.63")
    servers.append(publish_policy(dns, ca, "fe.test", "127.0.0.163"))
    mx_sink(dns, sink_factory, ca, "wi.test", "mx.wi.test", "127.0.0.64")
    servers.append(publish_policy(dns, stranger, "wi.test", "127.0.0.164"))
    servers[-1].policy("enforce", ["mx.wi.test"])
    mx_sink(dns, sink_factory, ca, "pi.test", "mx.pi.test", "127.0.0.65")
    servers.append(publish_policy(dns, ca, "pi.test", "127.0.0.165"))
    servers[-1].body = "version: STSv1\r\nmode: sometimes\r\n"
    volley.config["tls"] = {"trust_anchors": [str(ca.cert)]}
    volley.config["tls_rpt"] = {"enabled": True}
    try:
        volley.start()
        for domain in ("np", "clear", "fe", "wi", "pi"):
            volley.send("a@src.test", [f"r@{domain}.test"], message(f"{domain} no policy"))
        for domain in ("np", "clear", "fe", "wi", "pi"):
            volley.wait_acct("delivery", recipient=f"r@{domain}.test")

        [np] = policies_of(volley, "np.test")
        assert np["policy"]["policy-type"] == "no-policy-found", np
        assert np["policy"]["policy-domain"] == "np.test"
        assert np["summary"] == {
            "total-successful-session-count": 1,
            "total-failure-session-count": 0,
        }
        assert policies_of(volley, "clear.test") == [], "a clear-text session is not counted"

        for domain, result_type in (
            ("fe.test", "sts-policy-fetch-error"),
            ("wi.test", "sts-webpki-invalid"),
            ("pi.test", "sts-policy-invalid"),
        ):
            policies = {p["policy"]["policy-type"]: p for p in policies_of(volley, domain)}
            sts = policies["sts"]
            assert sts["summary"]["total-failure-session-count"] == 1, (domain, sts)
            assert sts["failure-details"] == [
                {"result-type": result_type, "failed-session-count": 1}
            ], (domain, sts)
            # The mail then went as to a domain without a policy.
            assert policies["no-policy-found"]["summary"]["total-successful-session-count"] == 1
    finally:
        for s in servers:
            s.stop()


def test_a_refused_post_is_retried_later_and_kept_across_a_restart(
    volley, dns, tmp_path, sink_factory
):
    ca = TestCa(tmp_path / "pki")
    mx_sink(dns, sink_factory, ca, "retry.test", "mx.retry.test", "127.0.0.66")
    server = publish_policy(dns, ca, "retry.test", "127.0.0.166")
    server.policy("enforce", ["mx.retry.test"])
    cert, key = ca.issue(["localhost"])
    reports = ReportServer(cert, key, refuse=1)
    dns.txt("_smtp._tls.retry.test", f"v=TLSRPTv1; rua={reports.url}")
    volley.config["tls"] = {"trust_anchors": [str(ca.cert)]}
    volley.config["tls_rpt"] = {"enabled": True}
    volley.config["server"]["test_clock"] = True
    try:
        volley.start()
        volley.send("a@src.test", ["r@retry.test"], message("retry"))
        volley.wait_acct("delivery", recipient="r@retry.test")
        status, sent = volley.api("POST", "/v1/tls-rpt/send")
        assert status == 200, sent
        assert (sent["https"], sent["failed"], sent["retrying"]) == (0, 1, 1), sent
        assert len(reports.refused) == 1 and reports.posts == []
        assert volley.api("GET", "/v1/tls-rpt")[1]["pending_posts"] == 1
        assert (volley.dir / "spool" / "tls-rpt-posts.json").exists()

        # Kept across a restart, and not retried before its time.
        assert volley.stop() == 0
        volley.start()
        assert volley.api("GET", "/v1/tls-rpt")[1]["pending_posts"] == 1
        time.sleep(2.5)
        assert reports.posts == [], "the first retry waits a minute"

        status, _ = volley.api("POST", "/v1/clock/advance", {"seconds": 61})
        assert status == 200
        wait_until(lambda: reports.posts, DELIVERY_TIMEOUT_S, "the report POSTed again")
        assert len(reports.posts) == 1
        content_type, body = reports.posts[0]
        assert content_type == "application/tlsrpt+gzip"
        assert body == reports.refused[0], "the same report"
        report = json.loads(gzip.decompress(body))
        assert report["policies"][0]["summary"]["total-successful-session-count"] == 1
        wait_until(
            lambda: volley.api("GET", "/v1/tls-rpt")[1]["pending_posts"] == 0,
            DELIVERY_TIMEOUT_S,
            "no POST left to retry",
        )
    finally:
        reports.stop()
        server.stop()
