"""Pools: the VMTAs of a pool share its mail, each from its own address and name."""

from conftest import message


def test_pool_of_two_vmtas_uses_both_source_ips(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    volley.config["vmta"] = [
        {"name": "v1", "source_ip": "127.0.0.2", "ehlo_hostname": "v1.volley.test"},
        {"name": "v2", "source_ip": "127.0.0.3", "ehlo_hostname": "v2.volley.test"},
    ]
    volley.config["pool"] = [{"name": "default", "vmtas": ["v1", "v2"]}]
    volley.config["server"]["cores"] = 2
    volley.start()

    count = 20
    with volley.smtp() as client:
        for n in range(count):
            client.sendmail("alice@src.test", [f"r{n}@dest.test"], message(f"pool {n}"))
    lines = sink.wait_lines(count)
    by_ip = {}
    for line in lines:
        by_ip.setdefault(line["peer_ip"], []).append(line["ehlo"])
    assert set(by_ip) == {"127.0.0.2", "127.0.0.3"}, by_ip
    assert set(by_ip["127.0.0.2"]) == {"v1.volley.test"}
    assert set(by_ip["127.0.0.3"]) == {"v2.volley.test"}
    # Equal weights: neither VMTA is starved.
    assert min(len(v) for v in by_ip.values()) >= count // 4, {k: len(v) for k, v in by_ip.items()}
    deliveries = volley.wait_acct("delivery", count=count)
    assert {(d["vmta"], d["source_ip"]) for d in deliveries} == {("v1", "127.0.0.2"), ("v2", "127.0.0.3")}


def test_customer_pool_selects_its_vmta(volley, catcher_factory):
    catcher = catcher_factory("127.0.0.11")
    volley.route("dest.test", catcher.hostport)
    volley.config["vmta"] = [
        {"name": "v1", "source_ip": "127.0.0.2", "ehlo_hostname": "v1.volley.test"},
        {"name": "v2", "source_ip": "127.0.0.3", "ehlo_hostname": "v2.volley.test"},
    ]
    volley.config["pool"] = [
        {"name": "default", "vmtas": ["v1"]},
        {"name": "acme-pool", "vmtas": ["v2"]},
    ]
    volley.config["customer"] = [{"name": "acme", "pool": "acme-pool"}]
    volley.start()

    # A trusted relay client names the customer with X-Volley-Customer (removed before delivery).
    volley.send(
        "alice@src.test", ["acme@dest.test"],
        message("for acme", extra_headers="X-Volley-Customer: acme\r\n"),
    )
    volley.send("alice@src.test", ["plain@dest.test"], message("no customer"))
    caught = catcher.wait(2)
    by_rcpt = {m.recipients[0]: (m.peer_ip, m.ehlo) for m in caught}
    assert by_rcpt == {
        "acme@dest.test": ("127.0.0.3", "v2.volley.test"),
        "plain@dest.test": ("127.0.0.2", "v1.volley.test"),
    }
    for m in caught:
        assert m.parsed["X-Volley-Customer"] is None, m.data[:400]
        assert b"X-Volley-Customer" not in m.data
    receptions = volley.wait_acct("reception", count=2)
    assert {r["recipient"]: r["customer"] for r in receptions} == {
        "acme@dest.test": "acme", "plain@dest.test": "",
    }
    # The reception event names the VMTA the message was routed to, and its source address.
    assert {r["recipient"]: (r["vmta"], r["source_ip"]) for r in receptions} == {
        "acme@dest.test": ("v2", "127.0.0.3"), "plain@dest.test": ("v1", "127.0.0.2"),
    }
