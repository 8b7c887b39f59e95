"""A VMTA refused everywhere (its connections refused at several destination domains, none getting
through) is taken out of its pools for a while; its mail and later mail go through the others."""

from conftest import DELIVERY_TIMEOUT_S, message, wait_until

REFUSED_IP = "127.0.0.2"
GOOD_IP = "127.0.0.3"


def test_vmta_refused_at_three_domains_leaves_its_pool(volley, sink_factory):
    # The destination blocks 127.0.0.2 at the greeting, as a blocklisted IP would be.
    sink = sink_factory("127.0.0.40", None, ["--refuse-from", REFUSED_IP])
    domains = ["d1.test", "d2.test", "d3.test", "d4.test"]
    for d in domains:
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

    # Mail v1 held moves to v2; mail sent now goes through v2 only.
    later = [f"later{n}@d4.test" for n in range(6)]
    with volley.smtp() as client:
        for rcpt in later:
            client.sendmail("alice@src.test", [rcpt], message(f"after {rcpt}"))
    lines = sink.wait_lines(len(first) + len(later), timeout_s=DELIVERY_TIMEOUT_S * 2)
    assert {l["peer_ip"] for l in lines} == {GOOD_IP}
    assert sorted(r for l in lines for r in l["recipients"]) == sorted(first + later)
    deliveries = volley.wait_acct("delivery", count=len(first) + len(later))
    assert {d["vmta"] for d in deliveries} == {"v2"}
    # v1 was tried (and refused) before it was taken out.
    transients = volley.acct("transient")
    assert transients and {t["vmta"] for t in transients} == {"v1"}, transients
