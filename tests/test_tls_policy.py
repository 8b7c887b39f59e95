"""Transport security of outbound mail (docs/transport-security.md): `[tls] trust_anchors`, the
sink's STARTTLS, MTA-STS (RFC 8461) and DANE (RFC 7672), against a test DNS server, an HTTPS policy
server and sinks on 127.0.0.x port 25 presenting certificates of a test CA."""

from __future__ import annotations

import signal
import smtplib
import ssl
import time

import pytest

from conftest import DELIVERY_TIMEOUT_S, SMTP_TIMEOUT_S, free_port, message, wait_until
from pki import TestCa, cert_sha256, spki_sha256
from policyserver import PolicyServer


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
    assert delivery["tls"] == "webpki", delivery
    assert tls_count(volley, "required", "verified") == 1
    assert tls_count(volley, "required", "failed") >= 1
    assert [line["tls"] for line in sink.wait_lines(1)] == [True]


# ---------------------------------------------------------------------------------------------
# MTA-STS


def tls_count(volley, policy: str, result: str) -> float:
    return volley.metrics().get(
        f'volley_tls_policy_connections_total{{policy="{policy}",result="{result}"}}', 0.0
    )


def publish_policy(
    dns, ca, domain: str, address: str, policy_id: str = "1", ttl_s: int = 60
) -> PolicyServer:
    """`_mta-sts.<domain>` TXT and an HTTPS policy server for `mta-sts.<domain>` on `address`."""
    dns.txt(f"_mta-sts.{domain}", f"v=STSv1; id={policy_id};", ttl_s)
    dns.a(f"mta-sts.{domain}", address)
    cert, key = ca.issue([f"mta-sts.{domain}"])
    return PolicyServer(address, cert, key).start()


@pytest.fixture
def policy_servers():
    made: list[PolicyServer] = []
    yield made
    for server in made:
        server.stop()


def trusting(volley, ca) -> None:
    volley.config["tls"] = {"trust_anchors": [str(ca.cert)]}


def test_mta_sts_enforce_delivers_to_a_listed_mx_with_a_valid_certificate(
    volley, dns, ca, sink_factory, policy_servers
):
    sink = mx_sink(dns, sink_factory, ca, "sts.test", "mx.sts.test", "127.0.0.43")
    server = publish_policy(dns, ca, "sts.test", "127.0.0.143")
    policy_servers.append(server)
    server.policy("enforce", ["mx.sts.test"])
    trusting(volley, ca)
    volley.start()
    volley.send("a@src.test", ["r@sts.test"], message("sts enforce"))
    delivery = volley.wait_acct("delivery", recipient="r@sts.test")[0]
    assert delivery["tls"] == "mta-sts", delivery
    assert [line["tls"] for line in sink.wait_lines(1)] == [True]
    assert server.fetches() == ["mta-sts.sts.test"], "fetched once, with the policy host's name"
    assert volley.metrics()["volley_tls_policy_fetches_total"] == 1
    assert tls_count(volley, "mta_sts", "verified") >= 1
    assert (volley.dir / "spool" / "mta-sts" / "core-0.json").exists()


def test_mta_sts_enforce_defers_an_unlisted_mx_and_a_bad_certificate(
    volley, dns, ca, tmp_path, sink_factory, policy_servers
):
    unlisted = mx_sink(dns, sink_factory, ca, "sts2.test", "mx.sts2.test", "127.0.0.44")
    server = publish_policy(dns, ca, "sts2.test", "127.0.0.144")
    policy_servers.append(server)
    server.policy("enforce", ["mx.elsewhere.test", "*.sts2.example"])
    # Listed, but its certificate comes from a CA Volley does not trust.
    stranger = TestCa(tmp_path / "stranger", "Stranger CA")
    untrusted = mx_sink(dns, sink_factory, stranger, "sts3.test", "mx.sts3.test", "127.0.0.45")
    policy_servers.append(publish_policy(dns, ca, "sts3.test", "127.0.0.145"))
    policy_servers[-1].policy("enforce", ["mx.sts3.test"])
    trusting(volley, ca)
    volley.start()
    volley.send("a@src.test", ["r@sts2.test", "r@sts3.test"], message("sts refused"))
    transient = volley.wait_acct("transient", recipient="r@sts2.test")[0]
    assert "MTA-STS policy of sts2.test (id 1, mode enforce)" in transient["response"], transient
    assert "mx.sts2.test is not one of its mx hosts" in transient["response"], transient
    assert transient["enhanced_code"] == "4.7.5", transient
    transient = volley.wait_acct("transient", recipient="r@sts3.test")[0]
    assert "TLS required by the MTA-STS policy of sts3.test" in transient["response"], transient
    assert "UnknownIssuer" in transient["response"], transient
    assert unlisted.lines() == [] and untrusted.lines() == []
    assert tls_count(volley, "mta_sts", "failed") >= 2


def test_mta_sts_testing_delivers_anyway_and_counts(volley, dns, ca, sink_factory, policy_servers):
    sink = mx_sink(dns, sink_factory, None, "sts4.test", "mx.sts4.test", "127.0.0.46")
    server = publish_policy(dns, ca, "sts4.test", "127.0.0.146")
    policy_servers.append(server)
    server.policy("testing", ["mx.other.test"])
    trusting(volley, ca)
    volley.start()
    volley.send("a@src.test", ["r@sts4.test"], message("sts testing"))
    delivery = volley.wait_acct("delivery", recipient="r@sts4.test")[0]
    assert delivery["tls"] == "none", "no STARTTLS at this sink: delivered in clear anyway"
    assert [line["tls"] for line in sink.wait_lines(1)] == [False]
    assert tls_count(volley, "mta_sts_testing", "plaintext") >= 1
    assert tls_count(volley, "mta_sts", "failed") == 0
    wait_until(
        lambda: "mode testing" in volley.stderr_tail(200),
        DELIVERY_TIMEOUT_S,
        "the testing failure in the log",
    )


def test_a_policy_kept_across_a_restart_is_enforced_with_its_server_down(
    volley, dns, ca, sink_factory, policy_servers
):
    sink = mx_sink(dns, sink_factory, ca, "sts5.test", "mx.sts5.test", "127.0.0.47")
    server = publish_policy(dns, ca, "sts5.test", "127.0.0.147")
    server.policy("enforce", ["mx.sts5.test"])
    trusting(volley, ca)
    volley.start()
    volley.send("a@src.test", ["first@sts5.test"], message("before restart"))
    volley.wait_acct("delivery", recipient="first@sts5.test")
    assert volley.stop() == 0
    server.stop()
    # The domain moves its MX to a host the (unchanged) policy does not list.
    dns.remove("sts5.test")
    mx_sink(dns, sink_factory, ca, "sts5.test", "mx.moved.test", "127.0.0.48")
    volley.start()
    volley.send("a@src.test", ["second@sts5.test"], message("after restart"))
    transient = volley.wait_acct("transient", recipient="second@sts5.test")[0]
    assert "MTA-STS policy of sts5.test (id 1, mode enforce)" in transient["response"], transient
    assert volley.metrics().get("volley_tls_policy_fetches_total") == 0, "the kept copy, no fetch"
    assert len(sink.lines()) == 1


def test_a_new_policy_id_is_fetched_and_a_policy_refreshed_before_it_expires(
    volley, dns, ca, sink_factory, policy_servers
):
    sink = mx_sink(dns, sink_factory, ca, "sts7.test", "mx.sts7.test", "127.0.0.60")
    # TXT answers live 1 s in the resolver's cache, so a new id is seen at once.
    server = publish_policy(dns, ca, "sts7.test", "127.0.0.160", ttl_s=1)
    policy_servers.append(server)
    server.policy("enforce", ["mx.sts7.test"], max_age_s=4)
    trusting(volley, ca)
    volley.start()
    volley.send("a@src.test", ["r1@sts7.test"], message("first"))
    volley.wait_acct("delivery", recipient="r1@sts7.test")
    assert len(server.fetches()) == 1
    # Past half of max_age: a use fetches the same policy again, in the background.
    time.sleep(2.5)
    volley.send("a@src.test", ["r2@sts7.test"], message("refresh"))
    volley.wait_acct("delivery", recipient="r2@sts7.test")
    wait_until(lambda: len(server.fetches()) == 2, DELIVERY_TIMEOUT_S, "the refresh fetch")
    # A new id: fetched before the next connection, and this one leaves the MX out.
    server.policy("enforce", ["mx.other.test"], max_age_s=86400)
    dns.remove("_mta-sts.sts7.test")
    dns.txt("_mta-sts.sts7.test", "v=STSv1; id=2;", 1)
    time.sleep(1.5)
    volley.send("a@src.test", ["r3@sts7.test"], message("new id"))
    transient = volley.wait_acct("transient", recipient="r3@sts7.test")[0]
    assert "MTA-STS policy of sts7.test (id 2, mode enforce)" in transient["response"], transient
    assert len(server.fetches()) == 3
    assert len(sink.lines()) == 2


def test_mta_sts_fetch_timeout_and_enabled(volley, dns, ca, sink_factory, policy_servers):
    sink = mx_sink(dns, sink_factory, ca, "sts6.test", "mx.sts6.test", "127.0.0.49")
    server = publish_policy(dns, ca, "sts6.test", "127.0.0.149")
    policy_servers.append(server)
    server.policy("enforce", ["mx.nowhere.test"])
    server.hang_s = 8.0
    trusting(volley, ca)
    volley.config["mta_sts"] = {"fetch_timeout_ms": 1000}
    volley.start()
    started = time.monotonic()
    volley.send("a@src.test", ["r@sts6.test"], message("slow policy"))
    # No policy in time: delivered as without one (the default fetch timeout is 10 s).
    delivery = volley.wait_acct("delivery", recipient="r@sts6.test", timeout_s=6)[0]
    assert time.monotonic() - started < 6
    assert delivery["tls"] == "encrypted", delivery
    assert volley.metrics()["volley_tls_policy_fetch_failures_total"] == 1
    assert volley.stop() == 0

    dns.queries.clear()
    volley.config["mta_sts"] = {"enabled": False}
    volley.start()
    volley.send("a@src.test", ["r2@sts6.test"], message("no mta-sts"))
    volley.wait_acct("delivery", recipient="r2@sts6.test")
    assert not dns.asked("_mta-sts.sts6.test", "TXT")
    assert len(sink.wait_lines(2)) == 2


# ---------------------------------------------------------------------------------------------
# DANE


def dane_destination(volley, dns, sink_factory, ca, domain, address, record=None, starttls=True):
    """`domain` in a signed zone, its MX host at `address` with a sink (STARTTLS with a certificate
    of `ca` unless `starttls` is false), and the TLSA record `record(cert)` (default: DANE-EE of
    the certificate's key, 3 1 1)."""
    host = f"mx.{domain}"
    cert, key = ca.issue([host])
    dns.mx(domain, 10, host)
    dns.a(host, address)
    data = (record or spki_sha256)(cert)
    usage, selector, matching = (3, 0, 1) if record is cert_sha256 else (3, 1, 1)
    dns.tlsa(f"_25._tcp.{host}", usage, selector, matching, data)
    dns.signed(domain)
    args = ["--tls-cert", str(cert), "--tls-key", str(key)] if starttls else []
    volley.config["dns"]["dnssec"] = "trust-ad"
    return sink_factory(address, 25, args)


def test_dane_ee_match_and_mismatch(volley, dns, ca, sink_factory):
    # The sink's CA is not trusted: DANE-EE needs no CA at all.
    good = dane_destination(volley, dns, sink_factory, ca, "dane.test", "127.0.0.50")
    by_cert = dane_destination(
        volley, dns, sink_factory, ca, "dane3.test", "127.0.0.52", record=cert_sha256
    )
    bad = dane_destination(
        volley, dns, sink_factory, ca, "dane2.test", "127.0.0.51", record=lambda _: "00" * 32
    )
    volley.start()
    volley.send("a@src.test", ["r@dane.test", "r@dane2.test", "r@dane3.test"], message("dane"))
    for recipient, sink in (("r@dane.test", good), ("r@dane3.test", by_cert)):
        delivery = volley.wait_acct("delivery", recipient=recipient)[0]
        assert delivery["tls"] == "dane", delivery
        assert [line["tls"] for line in sink.wait_lines(1)] == [True]
    transient = volley.wait_acct("transient", recipient="r@dane2.test")[0]
    assert "TLS required by DANE (validated TLSA records of _25._tcp.mx.dane2.test)" in (
        transient["response"]
    ), transient
    assert "no TLSA record matches" in transient["response"], transient
    assert bad.lines() == []
    assert tls_count(volley, "dane", "verified") >= 2
    assert tls_count(volley, "dane", "failed") >= 1


def test_without_the_ad_bit_tlsa_records_are_ignored(volley, dns, ca, sink_factory):
    sink = dane_destination(
        volley, dns, sink_factory, ca, "unsigned.test", "127.0.0.53", record=lambda _: "00" * 32
    )
    dns.unsigned("unsigned.test")
    volley.start()
    volley.send("a@src.test", ["r@unsigned.test"], message("no ad"))
    delivery = volley.wait_acct("delivery", recipient="r@unsigned.test")[0]
    assert delivery["tls"] == "encrypted", "opportunistic: the wrong TLSA record did not count"
    assert [line["tls"] for line in sink.wait_lines(1)] == [True]
    assert tls_count(volley, "none", "encrypted") >= 1
    assert tls_count(volley, "dane", "failed") == 0


def test_dnssec_off_ignores_the_ad_bit(volley, dns, ca, sink_factory):
    sink = dane_destination(
        volley, dns, sink_factory, ca, "adoff.test", "127.0.0.54", record=lambda _: "00" * 32
    )
    volley.config["dns"]["dnssec"] = "off"
    volley.start()
    volley.send("a@src.test", ["r@adoff.test"], message("dnssec off"))
    assert volley.wait_acct("delivery", recipient="r@adoff.test")[0]["tls"] == "encrypted"
    assert not dns.asked("_25._tcp.mx.adoff.test", "TLSA"), "no TLSA lookup without trust"
    assert len(sink.wait_lines(1)) == 1


def test_tlsa_without_starttls_defers_never_clear_text(volley, dns, ca, sink_factory):
    sink = dane_destination(
        volley, dns, sink_factory, ca, "stripped.test", "127.0.0.55", starttls=False
    )
    volley.start()
    volley.send("a@src.test", ["r@stripped.test"], message("stripped"))
    transient = volley.wait_acct("transient", recipient="r@stripped.test")[0]
    assert transient["enhanced_code"] == "4.7.4", transient
    assert "TLS required by DANE" in transient["response"], transient
    assert "STARTTLS not offered" in transient["response"], transient
    time.sleep(1.5)  # a retry (retry_intervals 1s) defers again
    assert sink.lines() == [], "nothing sent in clear"
    assert tls_count(volley, "dane", "failed") >= 1


def test_a_failed_tlsa_lookup_defers(volley, dns, ca, sink_factory):
    sink = dane_destination(volley, dns, sink_factory, ca, "bogus.test", "127.0.0.56")
    dns.servfail("_25._tcp.mx.bogus.test")  # what a validating resolver answers for bogus data
    volley.start()
    volley.send("a@src.test", ["r@bogus.test"], message("bogus"))
    transient = volley.wait_acct("transient", recipient="r@bogus.test")[0]
    assert "DANE: TLSA lookup of _25._tcp.mx.bogus.test failed" in transient["response"], transient
    assert sink.lines() == []
    dns.heal("_25._tcp.mx.bogus.test")
    assert volley.wait_acct("delivery", recipient="r@bogus.test", timeout_s=30)[0]["tls"] == "dane"


def test_required_policies_without_the_policy_defer(volley, dns, ca, sink_factory):
    sink = mx_sink(dns, sink_factory, ca, "needdane.test", "mx.needdane.test", "127.0.0.57")
    mx_sink(dns, sink_factory, ca, "needsts.test", "mx.needsts.test", "127.0.0.58")
    volley.config["dns"]["dnssec"] = "trust-ad"
    volley.config["domain"] += [
        {"match": "needdane.test", "tls": "dane"},
        {"match": "needsts.test", "tls": "mta-sts"},
    ]
    volley.start()
    volley.send("a@src.test", ["r@needdane.test", "r@needsts.test"], message("required"))
    transient = volley.wait_acct("transient", recipient="r@needdane.test")[0]
    assert 'DANE required for needdane.test (tls = "dane")' in transient["response"], transient
    transient = volley.wait_acct("transient", recipient="r@needsts.test")[0]
    assert 'MTA-STS required for needsts.test (tls = "mta-sts")' in transient["response"], transient
    assert sink.lines() == []


def test_dane_ta_with_the_anchor_in_the_chain(volley, dns, ca, tmp_path, sink_factory):
    host = "mx.daneta.test"
    cert, key = ca.issue([host])
    chain = tmp_path / "chain.pem"
    chain.write_text(cert.read_text() + ca.cert.read_text())
    dns.mx("daneta.test", 10, host)
    dns.a(host, "127.0.0.59")
    dns.tlsa(f"_25._tcp.{host}", 2, 1, 1, spki_sha256(ca.cert))
    dns.signed("daneta.test")
    volley.config["dns"]["dnssec"] = "trust-ad"
    sink = sink_factory("127.0.0.59", 25, ["--tls-cert", str(chain), "--tls-key", str(key)])
    volley.start()
    volley.send("a@src.test", ["r@daneta.test"], message("dane-ta"))
    assert volley.wait_acct("delivery", recipient="r@daneta.test")[0]["tls"] == "dane"
    assert [line["tls"] for line in sink.wait_lines(1)] == [True]


# ---------------------------------------------------------------------------------------------
# REQUIRETLS (RFC 8689)


def test_requiretls_is_taken_over_tls_only_and_leaves_only_over_verified_tls(
    volley, dns, ca, sink_factory
):
    plain_sink = mx_sink(dns, sink_factory, ca, "plain.test", "mx.plain.test", "127.0.0.61")
    dane_sink = dane_destination(volley, dns, sink_factory, ca, "rtls.test", "127.0.0.62")
    starttls_port = free_port()
    volley.config["listener"].append(
        {
            "address": f"127.0.0.1:{starttls_port}",
            "tls": "starttls",
            "auth": "off",
            "relay_networks": ["127.0.0.0/8"],
        }
    )
    volley.start()
    with volley.smtp() as client:
        client.ehlo("client.test")
        assert not client.has_extn("requiretls"), "not offered in clear text"
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("a@src.test", ["r@rtls.test"], message("clear"), ["REQUIRETLS"])
        assert refused.value.smtp_code == 530 and b"5.7.10" in refused.value.smtp_error
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # Volley's self-signed listener certificate
    with volley.smtp(port=starttls_port) as client:
        client.starttls(context=context)
        client.ehlo("client.test")
        assert client.has_extn("requiretls")
        client.sendmail(
            "a@src.test", ["r@rtls.test", "r@plain.test"], message("requiretls"), ["REQUIRETLS"]
        )
    delivery = volley.wait_acct("delivery", recipient="r@rtls.test")[0]
    assert delivery["tls"] == "dane", delivery
    [line] = dane_sink.wait_lines(1)
    assert line["tls"] and line["requiretls"], "passed on to the next hop"
    bounce = volley.wait_acct("bounce", recipient="r@plain.test")[0]
    assert bounce["enhanced_code"] == "5.7.10", bounce
    assert "REQUIRETLS" in bounce["response"], bounce
    assert plain_sink.lines() == [], "an unverified destination never gets it"


def test_inject_requiretls_is_the_same_request(volley, dns, ca, sink_factory):
    plain_sink = mx_sink(dns, sink_factory, ca, "plain2.test", "mx.plain2.test", "127.0.0.67")
    dane_sink = dane_destination(volley, dns, sink_factory, ca, "rtls2.test", "127.0.0.68")
    volley.start()
    status, body = volley.api(
        "POST",
        "/v1/inject",
        {
            "sender": "a@src.test",
            "recipients": ["r@rtls2.test", "r@plain2.test"],
            "content": message("inject requiretls"),
            "requiretls": True,
        },
    )
    assert status == 202, body
    assert volley.wait_acct("delivery", recipient="r@rtls2.test")[0]["tls"] == "dane"
    [line] = dane_sink.wait_lines(1)
    assert line["requiretls"], "REQUIRETLS on MAIL FROM to the next hop"
    bounce = volley.wait_acct("bounce", recipient="r@plain2.test")[0]
    assert bounce["enhanced_code"] == "5.7.10", bounce
    assert plain_sink.lines() == []
    # Without it, the same destination takes the mail.
    status, body = volley.api(
        "POST",
        "/v1/inject",
        {"sender": "a@src.test", "recipients": ["s@plain2.test"], "content": message("plain")},
    )
    assert status == 202, body
    volley.wait_acct("delivery", recipient="s@plain2.test")
    assert [line["requiretls"] for line in plain_sink.wait_lines(1)] == [False]


def test_tls_required_no_ignores_the_recipient_policies(
    volley, dns, ca, sink_factory, policy_servers
):
    """RFC 8689 5: a message saying `TLS-Required: No` is delivered where an `enforce` MTA-STS
    policy keeps other mail (its MX host is not one the policy names), still over STARTTLS; with
    REQUIRETLS the header does not count."""
    sink = mx_sink(dns, sink_factory, ca, "trn.test", "mx.trn.test", "127.0.0.69")
    server = publish_policy(dns, ca, "trn.test", "127.0.0.169")
    policy_servers.append(server)
    server.policy("enforce", ["mx.elsewhere.test"])
    trusting(volley, ca)
    volley.start()
    no_policy = "TLS-Required: No\r\n"
    volley.send("a@src.test", ["normal@trn.test"], message("policy applies"))
    volley.send("a@src.test", ["optional@trn.test"], message("no policy", extra_headers=no_policy))
    status, body = volley.api(
        "POST",
        "/v1/inject",
        {
            "sender": "a@src.test",
            "recipients": ["both@trn.test"],
            "content": message("requiretls wins", extra_headers=no_policy),
            "requiretls": True,
        },
    )
    assert status == 202, body
    delivery = volley.wait_acct("delivery", recipient="optional@trn.test")[0]
    assert delivery["tls"] == "encrypted", delivery
    [line] = sink.wait_lines(1)
    assert line["recipients"] == ["optional@trn.test"] and line["tls"], line
    for recipient in ("normal@trn.test", "both@trn.test"):
        transient = volley.wait_acct("transient", recipient=recipient)[0]
        assert "MTA-STS policy of trn.test" in transient["response"], transient
    time.sleep(1.5)  # retried every second: still kept from the host
    assert [line["recipients"] for line in sink.lines()] == [["optional@trn.test"]]
    assert not volley.acct("delivery")[1:], "only the message that asked is delivered"


def test_tls_required_no_ignores_dane_too(volley, dns, ca, sink_factory):
    """A TLSA record no certificate matches keeps other mail; `TLS-Required: No` mail goes, over
    STARTTLS without the DANE check."""
    sink = dane_destination(
        volley, dns, sink_factory, ca, "trn2.test", "127.0.0.70", record=lambda _: "00" * 32
    )
    volley.start()
    volley.send("a@src.test", ["normal@trn2.test"], message("dane applies"))
    volley.send(
        "a@src.test",
        ["optional@trn2.test"],
        message("no dane", extra_headers="TLS-Required: no\r\n"),
    )
    delivery = volley.wait_acct("delivery", recipient="optional@trn2.test")[0]
    assert delivery["tls"] == "encrypted", delivery
    transient = volley.wait_acct("transient", recipient="normal@trn2.test")[0]
    assert "no TLSA record matches" in transient["response"], transient
    assert [line["recipients"] for line in sink.wait_lines(1)] == [["optional@trn2.test"]]


def test_rolled_up_domains_are_held_to_their_own_mta_sts_policy(
    volley, dns, ca, sink_factory, policy_servers
):
    """A `[[rollup]]` queue connects under its own name's policy; each rolled-up recipient domain
    with an `enforce` policy takes the connection only to a host its policy lists, with a
    certificate checked for that name."""
    # rollup.test: TLS required (so the certificate is checked); rollup2.test: opportunistic.
    sink = mx_sink(dns, sink_factory, ca, "rollup.test", "mx.rollup.test", "127.0.0.71")
    sink2 = mx_sink(dns, sink_factory, ca, "rollup2.test", "mx.rollup2.test", "127.0.0.72")
    for domain, address, mx in (
        ("m1.test", "127.0.0.171", ["mx.rollup.test"]),
        ("m2.test", "127.0.0.172", ["mx.elsewhere.test"]),
        ("m4.test", "127.0.0.174", ["mx.rollup2.test"]),
    ):
        server = publish_policy(dns, ca, domain, address)
        server.policy("enforce", mx)
        policy_servers.append(server)
    volley.config["rollup"] = [
        {"name": "rollup.test", "domains": ["m1.test", "m2.test", "m3.test"]},
        {"name": "rollup2.test", "domains": ["m4.test"]},
    ]
    volley.config["domain"].append({"match": "rollup.test", "tls": "required"})
    trusting(volley, ca)
    volley.start()
    volley.send(
        "a@src.test", ["r@m1.test", "r@m2.test", "r@m3.test"], message("rolled up")
    )
    volley.send("a@src.test", ["r@m4.test"], message("rolled up, unchecked"))
    for recipient in ("r@m1.test", "r@m3.test"):
        delivery = volley.wait_acct("delivery", recipient=recipient)[0]
        assert delivery["mx"].startswith("mx.rollup.test"), delivery
    assert sorted(sink.wait_recipients(2)) == ["r@m1.test", "r@m3.test"]
    unlisted = volley.wait_acct("transient", recipient="r@m2.test")[0]
    assert "MTA-STS policy of m2.test (id 1, mode enforce)" in unlisted["response"], unlisted
    assert "mx.rollup.test is not one of its mx hosts" in unlisted["response"], unlisted
    unchecked = volley.wait_acct("transient", recipient="r@m4.test")[0]
    assert "MTA-STS policy of m4.test" in unchecked["response"], unchecked
    assert "was not checked" in unchecked["response"], unchecked
    assert sink2.lines() == []
    assert "r@m2.test" not in sink.recipients()
