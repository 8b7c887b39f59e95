"""Transport security of outbound mail (docs/transport-security.md): `[tls] trust_anchors`, the
sink's STARTTLS, MTA-STS (RFC 8461) and DANE (RFC 7672), against a test DNS server, an HTTPS policy
server and sinks on 127.0.0.x port 25 presenting certificates of a test CA."""

from __future__ import annotations

import signal
import smtplib
import ssl

import pytest

from conftest import SMTP_TIMEOUT_S, message
from pki import TestCa


def mx_sink(dns, sink_factory, ca, domain: str, host: str, address: str, extra=()):
    """`domain` MX `host` A `address`, where a sink listens on port 25 with a certificate of `ca`
    for `host` (STARTTLS offered)."""
    dns.mx(domain, 10, host)
    dns.a(host, address)
    args = list(extra)
    if ca is not None:
        cert, key = ca.issue([host])
        args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    return sink_factory(address, 25, args)


@pytest.fixture
def ca(tmp_path):
    return TestCa(tmp_path / "pki")


def test_the_sink_offers_starttls_with_its_certificate(ca, sink_factory):
    cert, key = ca.issue(["mx.sink.test"])
    sink = sink_factory("127.0.0.41", None, ["--tls-cert", str(cert), "--tls-key", str(key)])
    context = ssl.create_default_context(cafile=str(ca.cert))
    with smtplib.SMTP(sink.address, sink.port, timeout=SMTP_TIMEOUT_S) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        client._host = "mx.sink.test"  # the name smtplib checks the certificate against
        client.starttls(context=context)
        client.ehlo("client.test")
        assert not client.has_extn("starttls"), "offered once, before TLS"
        client.sendmail("a@src.test", ["over-tls@dest.test"], message("over tls"))
    with smtplib.SMTP(sink.address, sink.port, timeout=SMTP_TIMEOUT_S) as client:
        client.sendmail("a@src.test", ["in-clear@dest.test"], message("in clear"))
    lines = sink.wait_lines(2)
    tls = {line["recipients"][0]: line["tls"] for line in lines}
    assert tls == {"over-tls@dest.test": True, "in-clear@dest.test": False}


def test_trust_anchors_verify_a_private_ca_and_apply_on_reload(volley, dns, ca, sink_factory):
    sink = mx_sink(dns, sink_factory, ca, "anchored.test", "mx.anchored.test", "127.0.0.42")
    volley.config["domain"].append({"match": "anchored.test", "tls": "required"})
    volley.start()
    volley.send("a@src.test", ["r@anchored.test"], message("anchored"))
    transient = volley.wait_acct("transient", recipient="r@anchored.test")[0]
    assert "TLS handshake" in transient["response"], transient
    assert "UnknownIssuer" in transient["response"], transient
    assert sink.lines() == [], "nothing delivered without the CA"

    volley.config["tls"] = {"trust_anchors": [str(ca.cert)]}
    volley.write_config()
    volley.signal(signal.SIGHUP)
    delivery = volley.wait_acct("delivery", recipient="r@anchored.test", timeout_s=30)[0]
    assert delivery["mx"].startswith("mx.anchored.test"), delivery
    assert [line["tls"] for line in sink.wait_lines(1)] == [True]
