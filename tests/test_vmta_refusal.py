"""A VMTA refused everywhere (refused at several destination domains, none of its mail delivered) is
taken out of its pools for a while; later mail, and mail it held, go through the other VMTAs."""

import pytest

from conftest import DELIVERY_TIMEOUT_S, message, wait_until

REFUSED_IP = "127.0.0.2"
GOOD_IP = "127.0.0.3"


@pytest.mark.parametrize(
    "block",
    [
        # The destination blocks 127.0.0.2 at the greeting, as a blocklisted IP would be ...
        ["--refuse-from", REFUSED_IP],
        # ... or at every RCPT, as Postfix's reject_rbl_client does (the greeting and MAIL pass).
        ["--block-rcpt-from", REFUSED_IP],
    ],
    ids=["greeting", "rcpt"],
)
def test_vmta_refused_at_three_domains_leaves_its_pool(volley, sink_factory, block):
    # Refusals count per next hop: each domain has its own receiver here.
    domains = ["d1.test", "d2.test", "d3.test", "d4.test"]
    sinks = [sink_factory(f"127.0.0.{40 + i}", None, block) for i in range(len(domains))]
    for d, sink in zip(domains, sinks):
        volley.route(d, sink.hostport)
    volley.config["vmta"] = [
        {"name": "v1", "source_ip": REFUSED_IP, "ehlo_hostname": "v1.volley.test"},
        {"name": "v2", "source_ip": GOOD_IP, "ehlo_hostname": "v2.volley.test"},
    ]
    volley.config["pool"] = [{"name": "default", "vmtas": ["v1", "v2"]}]
    volley.config["shaping"] = {
        "vmta_refusal_domains": 3,
        "vmta_refusal_window_s": 300,
        "vmta_refusal_out_s": 600,
    }
    volley.start()

    # Round robin over two VMTAs: with four messages per domain, v1 gets mail for each of them.
    first = []
    with volley.smtp() as client:
        for d in domains[:3]:
            for n in range(4):
                rcpt = f"r{n}@{d}"
                client.sendmail("alice@src.test", [rcpt], message(f"before {rcpt}"))
                first.append(rcpt)

    def v1_out():
        status, body = volley.api("GET", "/v1/vmta-status")
        assert status == 200, body
        return [v for v in body["disabled"] if v["vmta"] == "v1"]

    [out] = wait_until(v1_out, DELIVERY_TIMEOUT_S, "v1 taken out of its pool")
    assert "refused everywhere" in out["reason"], out
    assert "554" in out["reason"], out
    assert out["until_s"] - out["since_s"] == 600, out
    assert volley.metrics()["volley_vmtas_refused_out_total"] == 1
    assert "VMTA v1 out of its pools" in (volley.dir / "stderr.log").read_text()

    later = [f"later{n}@d4.test" for n in range(6)]
    with volley.smtp() as client:
        for rcpt in later:
            client.sendmail("alice@src.test", [rcpt], message(f"after {rcpt}"))
    # Every recipient ends delivered (through v2) or, refused by 5.7.1 at RCPT, bounced (a 5xx is
    # final); refused at the greeting, v1's mail was deferred and moves to v2.
    def settled():
        finished = volley.acct("bounce") + volley.acct("delivery")
        done = {e["recipient"] for e in finished if e["domain"] in domains}
        return done == set(first + later)

    wait_until(settled, DELIVERY_TIMEOUT_S * 2, "every recipient delivered or bounced")
    bounced = [b for b in volley.acct("bounce") if b["domain"] in domains]
    if block[0] == "--refuse-from":
        assert not bounced, bounced
    assert {b["vmta"] for b in bounced} <= {"v1"}, bounced
    assert not {b["recipient"] for b in bounced} & set(later), "later mail never goes through v1"
    expected = sorted(set(first + later) - {b["recipient"] for b in bounced})
    wait_until(
        lambda: sum(len(s.lines()) for s in sinks) >= len(expected),
        DELIVERY_TIMEOUT_S,
        f"{len(expected)} messages at the sinks",
    )
    lines = [l for s in sinks for l in s.lines()]
    assert {l["peer_ip"] for l in lines} == {GOOD_IP}
    assert sorted(r for l in lines for r in l["recipients"]) == expected
    deliveries = [d for d in volley.acct("delivery") if d["domain"] in domains]
    assert {d["vmta"] for d in deliveries} == {"v2"}
    # v1 was refused at several of the domains before it was taken out (at the greeting, the mail
    # of the last one moves to v2 instead of being deferred).
    refused = [e for e in volley.acct("transient") + bounced if e["domain"] in domains]
    assert {r["vmta"] for r in refused} == {"v1"}, refused
    assert len({r["domain"] for r in refused}) >= 2, refused
