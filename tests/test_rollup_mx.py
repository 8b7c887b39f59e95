"""MX rollup by the DNS answer: custom domains whose MX hosts belong to a provider (a `[[rollup]]`
with `mx` patterns) share the provider's queue, and so its limits."""

import datetime
import threading
import time

from dnslib import QTYPE
from dnslib.dns import DNSError

from conftest import DELIVERY_TIMEOUT_S, message, wait_until

SINK_IP = "127.0.0.31"


def _max_overlap(lines):
    """The most connections seen open at once, each spanning its first to its last message."""
    spans = {}
    for line in lines:
        at = datetime.datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()
        first, last = spans.get(line["connection_id"], (at, at))
        spans[line["connection_id"]] = (min(first, at), max(last, at))
    edges = sorted(
        [(first, 1) for first, _ in spans.values()] + [(last, -1) for _, last in spans.values()],
        key=lambda e: (e[0], -e[1]),
    )
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


def test_custom_domains_on_one_provider_share_its_queue_and_limits(volley, dns, sink_factory):
    # Two custom domains hosted at "bigprovider", one domain mixing providers, and the
    # provider's own domain, whose MX the rolled-up queue delivers to.
    dns.mx("bigprovider.test", 10, "mx1.bigprovider.test")
    dns.mx("acme.test", 10, "mx1.bigprovider.test")
    dns.mx("acme.test", 20, "mx2.bigprovider.test")
    dns.mx("beta.test", 10, "mx2.bigprovider.test")
    dns.mx("mixed.test", 10, "mx1.bigprovider.test")
    dns.mx("mixed.test", 20, "mx.elsewhere.test")
    for host in ("mx1.bigprovider.test", "mx2.bigprovider.test", "mx.elsewhere.test"):
        dns.a(host, SINK_IP)
    # Each end-of-data reply waits, so a second connection would overlap the first.
    sink = sink_factory(SINK_IP, 25, ["--delay-ms", "150"])
    volley.config["server"]["cores"] = 2
    volley.config["rollup"] = [{"name": "bigprovider.test", "mx": ["*.bigprovider.test"]}]
    volley.config["domain"].append({"match": "bigprovider.test", "max_connections": 1})
    volley.start()

    count = 12
    with volley.smtp() as client:
        for n in range(count):
            domain = "acme.test" if n % 2 else "beta.test"
            client.sendmail("alice@src.test", [f"r{n}@{domain}"], message(f"rollup {n}"))
        client.sendmail("alice@src.test", ["m@mixed.test"], message("mixed"))

    seen = set()

    def queue_domains():
        status, body = volley.api("GET", "/v1/queues")
        assert status == 200, body
        seen.update(q["domain"] for q in body["queues"])
        return "bigprovider.test" in seen and "mixed.test" in seen

    wait_until(queue_domains, DELIVERY_TIMEOUT_S, "the rolled-up queue in GET /v1/queues")
    lines = sink.wait_lines(count + 1, timeout_s=DELIVERY_TIMEOUT_S * 2)
    queue_domains()
    assert "acme.test" not in seen and "beta.test" not in seen, seen
    assert "mixed.test" in seen, "a domain with MX hosts of two providers keeps its own queue"

    provider_lines = [l for l in lines if l["recipients"] != ["m@mixed.test"]]
    assert len(provider_lines) == count
    assert _max_overlap(provider_lines) <= 1, "max_connections = 1 holds across both domains"
    # One connection serves one queue: both domains on one connection proves they share it.
    by_connection = {}
    for line in provider_lines:
        domains = by_connection.setdefault(line["connection_id"], set())
        domains.update(r.split("@")[1] for r in line["recipients"])
    assert any(d == {"acme.test", "beta.test"} for d in by_connection.values()), by_connection

    # The custom domains' MX were looked up to decide the queue; delivery used the group's MX.
    assert dns.asked("acme.test", "MX") and dns.asked("beta.test", "MX")
    assert dns.asked("bigprovider.test", "MX")
    deliveries = volley.wait_acct("delivery", count=count + 1)
    assert {d["domain"] for d in deliveries} == {"acme.test", "beta.test", "mixed.test"}


def test_failed_mx_lookup_never_holds_mail(volley, dns, sink_factory):
    # plain.test has no MX (only an A record): it is not rolled up, its mail goes to its own
    # queue and is delivered to the domain itself at once.
    sink = sink_factory(SINK_IP, 25)
    dns.a("plain.test", SINK_IP)
    volley.config["rollup"] = [{"name": "bigprovider.test", "mx": ["*.bigprovider.test"]}]
    volley.start()

    started = time.monotonic()
    volley.send("alice@src.test", ["bob@plain.test"], message("own queue"))
    [line] = sink.wait_lines(1)
    assert line["recipients"] == ["bob@plain.test"]
    assert time.monotonic() - started < DELIVERY_TIMEOUT_S
    status, body = volley.api("GET", "/v1/queues")
    assert status == 200
    assert "bigprovider.test" not in {q["domain"] for q in body["queues"]}


class _DropMx:
    """Wraps the test DNS server's resolver: the first `drops` MX questions for `name` get no
    answer at all (a timeout for the asker), later ones the zone's answer."""

    def __init__(self, inner, name: str, drops: int) -> None:
        self.inner = inner
        self.name = name.lower().rstrip(".") + "."
        self.drops = drops
        self.lock = threading.Lock()

    def resolve(self, request, handler):
        asked = str(request.q.qname).lower()
        if asked == self.name and QTYPE[request.q.qtype] == "MX":
            with self.lock:
                if self.drops > 0:
                    self.drops -= 1
                    raise DNSError("dropped by the test")  # dnslib then sends nothing
        return self.inner.resolve(request, handler)


def test_timed_out_mx_lookup_routes_to_own_queue_and_never_holds_the_reply(
    volley, dns, sink_factory
):
    # slow.test would join the group by its MX, but the rollup lookup times out (both attempts
    # dropped): its mail goes to its own queue, and is delivered by the MX answered afterwards.
    dns.mx("bigprovider.test", 10, "mx1.bigprovider.test")
    dns.mx("slow.test", 10, "mx1.bigprovider.test")
    dns.a("mx1.bigprovider.test", SINK_IP)
    sink = sink_factory(SINK_IP, 25)
    volley.config["rollup"] = [{"name": "bigprovider.test", "mx": ["*.bigprovider.test"]}]
    volley.start()
    udp_server = dns._server.server
    udp_server.resolver = _DropMx(udp_server.resolver, "slow.test", drops=2)

    started = time.monotonic()
    volley.send("alice@src.test", ["bob@slow.test"], message("slow dns"))
    reply_s = time.monotonic() - started
    # The resolver gives up after 2 attempts of 2 s: the 250 came long before.
    assert reply_s < 1.5, f"the reply waited {reply_s:.1f} s"
    [line] = sink.wait_lines(1)
    assert line["recipients"] == ["bob@slow.test"]
    assert time.monotonic() - started >= 3.5, "delivered only after the lookup gave up"

    def queue_domains():
        status, body = volley.api("GET", "/v1/queues")
        assert status == 200, body
        return {q["domain"] for q in body["queues"]}

    domains = wait_until(queue_domains, DELIVERY_TIMEOUT_S, "the queue list")
    assert "slow.test" in domains and "bigprovider.test" not in domains, domains
