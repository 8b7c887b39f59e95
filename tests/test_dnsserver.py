"""The test DNS server's failure modes (SERVFAIL, never answering), seen by a plain client and by
the daemon: a DNS outage defers mail, and mail moves once the name heals."""

from __future__ import annotations

import socket

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from conftest import message

QUERY_TIMEOUT_S = 1.0


def ask(dns, name: str, qtype: str = "MX") -> DNSRecord:
    """One UDP query to the test server; raises socket.timeout when it does not answer."""
    raw = DNSRecord.question(name, qtype).send(dns.address, dns.port, timeout=QUERY_TIMEOUT_S)
    return DNSRecord.parse(raw)


def test_servfail_answers_servfail_for_every_type_until_healed(dns):
    dns.a("broken.test", "127.0.0.30")
    assert ask(dns, "broken.test", "A").header.rcode == RCODE.NOERROR
    dns.servfail("broken.test")
    for qtype in ("A", "MX", "AAAA"):
        reply = ask(dns, "broken.test", qtype)
        assert reply.header.rcode == RCODE.SERVFAIL, qtype
        assert reply.rr == []
    # Other names are untouched.
    assert ask(dns, "other.test", "A").header.rcode == RCODE.NXDOMAIN
    dns.heal("Broken.TEST.")  # names match case-insensitively, with or without the root dot
    reply = ask(dns, "broken.test", "A")
    assert reply.header.rcode == RCODE.NOERROR
    assert str(reply.rr[0].rdata) == "127.0.0.30"


def test_timeout_never_answers_until_healed(dns):
    dns.mx("silent.test", 10, "mx.silent.test")
    dns.timeout("silent.test")
    with pytest.raises(socket.timeout):
        ask(dns, "silent.test")
    assert dns.asked("silent.test", "MX"), "the query reached the server and was dropped"
    # The server itself is alive for other names.
    assert ask(dns, "alive.test", "A").header.rcode == RCODE.NXDOMAIN
    dns.heal("silent.test")
    reply = ask(dns, "silent.test")
    assert reply.header.rcode == RCODE.NOERROR
    assert QTYPE[reply.rr[0].rtype] == "MX"


def test_the_daemon_defers_on_servfail_and_delivers_after_healing(volley, dns, sink_factory):
    dns.mx("flaky.test", 10, "mx.flaky.test")
    dns.a("mx.flaky.test", "127.0.0.31")
    sink = sink_factory("127.0.0.31", 25)
    dns.servfail("flaky.test")
    volley.start()

    volley.send("alice@src.test", ["bob@flaky.test"], message("servfail"))
    [transient] = volley.wait_acct("transient", count=1, recipient="bob@flaky.test")[:1]
    assert transient["response"].startswith("4"), transient
    assert volley.acct("bounce") == []
    assert sink.lines() == []
    dns.heal("flaky.test")
    [line] = sink.wait_lines(1)
    assert line["recipients"] == ["bob@flaky.test"]
    volley.wait_acct("delivery", recipient="bob@flaky.test")
    assert volley.acct("bounce") == []


def test_signed_zones_answer_with_the_ad_bit_and_tlsa_records(dns):
    dns.a("mx.signed.test", "127.0.0.32")
    dns.tlsa("_25._tcp.mx.signed.test", 3, 1, 1, "ab" * 32)
    assert ask(dns, "mx.signed.test", "A").header.ad == 0
    dns.signed("signed.test")
    assert ask(dns, "mx.signed.test", "A").header.ad == 1, "names under the zone"
    assert ask(dns, "nothing.signed.test", "A").header.ad == 1, "NXDOMAIN too"
    assert ask(dns, "other.test", "A").header.ad == 0
    reply = ask(dns, "_25._tcp.mx.signed.test", "TLSA")
    assert reply.header.ad == 1
    assert str(reply.rr[0].rdata) == "3 1 1 " + "AB" * 32
    dns.unsigned("signed.test")
    assert ask(dns, "mx.signed.test", "A").header.ad == 0
