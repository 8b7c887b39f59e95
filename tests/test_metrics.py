"""GET /metrics: the series labelled by VMTA, customer and destination (the top N destinations, the
rest as `other`) move with the right labels; every documented metric is exported and every exported
one documented; a real scrape passes `promtool check metrics`; the Grafana dashboard in docs/ is
well formed and queries only metrics Volley exports (docs/metrics.md)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import smtplib
import subprocess
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT, free_port, message, wait_until
from redisserver import RedisServer

DOCS = ROOT / "docs"
DASHBOARD = DOCS / "grafana-dashboard.json"
# Labelled figures are published by each core once a second.
PUBLISH_WAIT_S = 10.0

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
METRIC_NAME = re.compile(r"\bvolley_[a-z0-9_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# The full scenario's spool limit (one core: all of it is that core's).
SPOOL_MAX_BYTES = 3 << 30


# ---------------------------------------------------------------------------------------------
# Reading a scrape


def scrape(volley) -> str:
    status, text = volley.api("GET", "/metrics")
    assert status == 200, text
    return text


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(LABEL.findall(m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample of `name` whose labels are exactly `labels`, if any."""
    for n, ls, v in samples(text):
        if n == name and ls == labels:
            return v
    return None


def label_values(text: str, name: str, label: str) -> set[str]:
    return {ls[label] for n, ls, _ in samples(text) if n == name and label in ls}


def families(text: str) -> dict[str, str]:
    """Metric family -> type, from the `# TYPE` lines."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            out[name] = kind
    return out


def documented_metrics() -> set[str]:
    """Every `volley_...` name written as code in docs/*.md (wildcards like `volley_cluster_*` are
    not names)."""
    names = set()
    for doc in DOCS.glob("*.md"):
        names |= set(re.findall(r"`(volley_[a-z0-9_]+)`", doc.read_text()))
    return names


# ---------------------------------------------------------------------------------------------
# Labelled series


def test_outcomes_and_queued_recipients_by_vmta_customer_and_destination(volley, sink_factory):
    sink = sink_factory()
    for domain in ("big.test", "mid.test", "small.test", "late.test", "src.test"):
        volley.route(domain, sink.hostport)
    volley.config["customer"] = [{"name": "acme"}]
    volley.config["metrics"] = {"top_destinations": 2}
    volley.policy(retry_intervals=["1s"])
    # late.test gives up after its first deferral: an expiry.
    volley.config["domain"].append(
        {"match": "late.test", "retry_intervals": ["1s"], "max_queue_age": "1s"}
    )
    volley.start()

    # Held while the node learns the volumes: big.test 3 recipients, mid.test 2.
    for domain in ("big.test", "mid.test"):
        status, body = volley.api("POST", "/v1/queues/suspend", {"domain": domain})
        assert status == 202, body
    acme = message("acme", extra_headers="X-Volley-Customer: acme\r\n")
    volley.send("alice@src.test", ["ok@big.test", "tempfail@big.test", "permfail@big.test"], acme)
    volley.send("bob@src.test", ["ok@mid.test", "ok2@mid.test"], message("no customer"))

    def named():
        text = scrape(volley)
        big = value(text, "volley_destination_queued_recipients", destination="big.test")
        mid = value(text, "volley_destination_queued_recipients", destination="mid.test")
        return text if (big, mid) == (3, 2) else None

    text = wait_until(named, PUBLISH_WAIT_S, "big.test and mid.test named with their queued recipients")
    assert value(text, "volley_vmta_queued_recipients", vmta="v1") == 5, text
    assert value(text, "volley_customer_queued_recipients", customer="acme") == 3, text
    assert value(text, "volley_customer_queued_recipients", customer="none") == 2, text
    assert value(text, "volley_queued_recipients") == 5
    # A destination named shows all its outcomes, at 0 before the first.
    for outcome in ("delivered", "deferred", "bounced", "expired"):
        assert value(
            text, "volley_destination_outcomes_total", destination="big.test", outcome=outcome
        ) == 0, text

    # The top 2 are taken: smaller destinations count as other.
    volley.send("carol@src.test", ["ok@small.test"], message("small"))
    volley.send("dave@src.test", ["tempfail@late.test"], message("late"))
    for domain in ("big.test", "mid.test"):
        status, body = volley.api("POST", "/v1/queues/resume", {"domain": domain})
        assert status == 202, body

    volley.wait_acct("bounce", recipient="permfail@big.test")
    volley.wait_acct("expiration", recipient="tempfail@late.test")
    volley.wait_acct("transient", recipient="tempfail@big.test")
    # ok@big, ok@mid, ok2@mid, ok@small, and the DSNs of the bounce and the expiry to src.test.
    volley.wait_acct("delivery", count=6)

    def settled():
        text = scrape(volley)
        by_domain = Counter(e["domain"] for e in volley.acct("delivery"))

        def dest(d, o):
            return value(text, "volley_destination_outcomes_total", destination=d, outcome=o)

        done = (
            dest("big.test", "delivered") == 1
            and dest("mid.test", "delivered") == 2
            and dest("other", "delivered") == by_domain["small.test"] + by_domain["src.test"]
            and dest("big.test", "bounced") == 1
            and dest("other", "expired") == 1
            and (dest("big.test", "deferred") or 0) >= 1
            and value(text, "volley_vmta_outcomes_total", vmta="v1", outcome="delivered")
            == value(text, "volley_delivered_total")
        )
        return text if done else None

    text = wait_until(settled, PUBLISH_WAIT_S, "the labelled outcomes to match the accounting log")

    def outcome(family, label, v, o):
        return value(text, f"volley_{family}_outcomes_total", **{label: v, "outcome": o})

    # By destination: small.test, late.test and src.test are never named.
    assert label_values(text, "volley_destination_outcomes_total", "destination") == {
        "big.test", "mid.test", "other"
    }, text
    assert outcome("destination", "destination", "mid.test", "bounced") == 0
    assert outcome("destination", "destination", "other", "bounced") == 0
    # By customer, as in the accounting log (a DSN is accounted to its original's customer).
    by_customer = Counter(e["customer"] for e in volley.acct("delivery"))
    assert by_customer["acme"] == 2 and by_customer[""] == 4, by_customer
    assert outcome("customer", "customer", "acme", "delivered") == 2, text
    assert outcome("customer", "customer", "acme", "bounced") == 1
    assert outcome("customer", "customer", "acme", "deferred") >= 1
    assert outcome("customer", "customer", "acme", "expired") == 0
    assert outcome("customer", "customer", "none", "delivered") == 4
    assert outcome("customer", "customer", "none", "expired") == 1
    assert outcome("customer", "customer", "none", "bounced") == 0
    # By VMTA: one VMTA, so the unlabelled totals.
    assert outcome("vmta", "vmta", "v1", "bounced") == value(text, "volley_bounced_total") == 1
    assert outcome("vmta", "vmta", "v1", "expired") == value(text, "volley_expired_total") == 1
    assert label_values(text, "volley_vmta_outcomes_total", "vmta") == {"v1"}
    # Only tempfail@big.test is still queued (retried every second).
    assert value(text, "volley_destination_queued_recipients", destination="big.test") == 1
    assert value(text, "volley_customer_queued_recipients", customer="acme") == 1
    assert value(text, "volley_vmta_queued_recipients", vmta="v1") == 1
    assert value(text, "volley_customer_queued_recipients", customer="none") in (None, 0)


def test_top_destinations_zero_names_none(volley, sink_factory):
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.config["metrics"] = {"top_destinations": 0}
    volley.start()
    volley.send("alice@src.test", ["a@dest.test", "b@dest.test"], message("zero"))
    sink.wait_recipients(2)

    def counted():
        text = scrape(volley)
        n = value(text, "volley_destination_outcomes_total", destination="other", outcome="delivered")
        return text if n == 2 else None

    text = wait_until(counted, PUBLISH_WAIT_S, "both deliveries under other")
    assert label_values(text, "volley_destination_outcomes_total", "destination") == {"other"}


def test_a_vmta_and_a_customer_removed_by_a_reload_count_as_other(volley, sink_factory):
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.config["vmta"].append(
        {"name": "v2", "source_ip": "127.0.0.3", "ehlo_hostname": "v2.volley.test"}
    )
    volley.config["pool"].append({"name": "p2", "vmtas": ["v2"]})
    volley.config["customer"] = [{"name": "gone", "pool": "p2"}]
    volley.policy(retry_intervals=["1s"])
    volley.start()
    status, body = volley.api("POST", "/v1/queues/suspend", {"domain": "dest.test"})
    assert status == 202, body
    volley.send(
        "alice@src.test", ["a@dest.test"],
        message("gone", extra_headers="X-Volley-Customer: gone\r\n"),
    )
    wait_until(
        lambda: value(scrape(volley), "volley_vmta_queued_recipients", vmta="v2") == 1
        and value(scrape(volley), "volley_customer_queued_recipients", customer="gone") == 1,
        PUBLISH_WAIT_S,
        "the recipient queued for v2 and customer gone",
    )

    volley.config["vmta"] = volley.config["vmta"][:1]
    volley.config["pool"] = volley.config["pool"][:1]
    volley.config["customer"] = []
    volley.write_config()
    volley.signal(signal.SIGHUP)

    def renamed():
        text = scrape(volley)
        moved = (
            value(text, "volley_vmta_queued_recipients", vmta="other") == 1
            and value(text, "volley_customer_queued_recipients", customer="other") == 1
        )
        return text if moved else None

    text = wait_until(renamed, PUBLISH_WAIT_S, "the queued recipient under other after the reload")
    assert label_values(text, "volley_vmta_queued_recipients", "vmta") <= {"v1", "other"}, text
    assert "gone" not in label_values(text, "volley_customer_queued_recipients", "customer"), text

    status, body = volley.api("POST", "/v1/queues/resume", {"domain": "dest.test"})
    assert status == 202, body
    # v2's queue has no VMTA to send from any more: each attempt is deferred.
    [transient] = volley.wait_acct("transient", vmta="v2")[:1]
    assert "VMTA v2 is not configured" in transient["response"], transient

    def counted():
        text = scrape(volley)
        vmta = value(text, "volley_vmta_outcomes_total", vmta="other", outcome="deferred") or 0
        customer = value(text, "volley_customer_outcomes_total", customer="other", outcome="deferred") or 0
        return text if vmta >= 1 and customer >= 1 else None

    text = wait_until(counted, PUBLISH_WAIT_S, "the deferral counted under other")
    assert "v2" not in label_values(text, "volley_vmta_outcomes_total", "vmta"), text
    assert "gone" not in label_values(text, "volley_customer_outcomes_total", "customer"), text


# ---------------------------------------------------------------------------------------------
# Every metric, documented, checked by promtool, and on the dashboard


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis", free_port()).start()
    yield server
    server.kill()


class Receiver:
    """An HTTP server in a thread answering every POST 200: a webhook's receiver."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def full_scrape(volley, sink_factory, redis, receiver) -> str:
    """A scrape of a node with every optional part on ([cluster], webhooks), after mail of each
    outcome went through it, a message over its customer's hourly limit, a message refused at end
    of data, and a connection over the per-IP limit."""
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.route("src.test", sink.hostport)
    volley.policy(retry_intervals=["1s"])
    volley.config["server"]["max_connections_per_ip"] = 2
    volley.config["spool"]["max_spool_bytes"] = SPOOL_MAX_BYTES
    volley.config["customer"] = [{"name": "acme", "max_messages_per_hour": 1}]
    volley.config["cluster"] = {"node": "m1", "redis": redis.url}
    volley.config["webhook"] = [
        {"name": "ok", "url": f"http://127.0.0.1:{receiver.port}/events"},
        # Nothing listens there: every post fails and the lag grows.
        {"name": "down", "url": f"http://127.0.0.1:{free_port()}/events"},
    ]
    volley.start()
    acme = message("all", extra_headers="X-Volley-Customer: acme\r\n")
    volley.send("alice@src.test", ["ok@dest.test", "tempfail@dest.test", "permfail@dest.test"], acme)
    volley.wait_acct("bounce")
    volley.wait_acct("transient")
    volley.wait_acct("delivery", count=2)  # ok@dest.test and the DSN
    # Over acme's hourly limit of 1 message.
    with pytest.raises(smtplib.SMTPDataError) as refused:
        volley.send("alice@src.test", ["more@dest.test"], message("over", extra_headers="X-Volley-Customer: acme\r\n"))
    assert refused.value.smtp_code == 451, refused.value
    # A NUL in the body: refused at the end of data.
    with pytest.raises(smtplib.SMTPDataError) as refused:
        volley.send("alice@src.test", ["nul@dest.test"], "Subject: nul\r\n\r\nNUL \x00 here\r\n")
    assert refused.value.smtp_code >= 500, refused.value
    # A third connection from one address (limit 2) is refused.
    held = [volley.smtp(source="127.0.0.9") for _ in range(2)]
    try:
        with pytest.raises(smtplib.SMTPConnectError) as over:
            volley.smtp(source="127.0.0.9")
        assert over.value.smtp_code == 421, over.value
    finally:
        for client in held:
            client.close()

    def published():
        text = scrape(volley)
        bounced = value(text, "volley_customer_outcomes_total", customer="acme", outcome="bounced")
        sent = value(text, "volley_webhook_events_sent_total", webhook="ok") or 0
        return text if bounced == 1 and sent > 0 else None

    return wait_until(published, PUBLISH_WAIT_S, "the labelled series and a webhook batch")


def total(text: str, name: str) -> float:
    """The sum of every sample of `name`, whatever its labels."""
    return sum(v for n, _, v in samples(text) if n == name)


# What the scenario of `full_scrape` makes move, each checked above 0. Other documented metrics need
# other circumstances, and other tests move them (named in the comment).
MOVED_BY_THE_SCENARIO = [
    "volley_connections_accepted_total",
    "volley_connections_refused_total",
    "volley_messages_received_total",
    "volley_recipients_received_total",
    "volley_bytes_received_total",
    "volley_messages_rejected_total",
    "volley_sending_limit_refusals_total",
    "volley_delivered_total",
    "volley_deferred_total",
    "volley_bounced_total",
    "volley_queued_recipients",
    "volley_queues",
    "volley_spool_commits_total",
    "volley_spool_bytes",
    "volley_spool_max_bytes",
    "volley_accept_latency_seconds_count",
    "volley_delivery_latency_seconds_count",
    "volley_vmta_outcomes_total",
    "volley_vmta_queued_recipients",
    "volley_customer_outcomes_total",
    "volley_customer_queued_recipients",
    "volley_destination_outcomes_total",
    "volley_destination_queued_recipients",
    "volley_cluster_redis_up",
    "volley_cluster_live_nodes",
    "volley_cluster_redis_round_trips_total",
    "volley_webhook_lag_events",
    "volley_webhook_posts_total",
    "volley_webhook_post_failures_total",
    "volley_webhook_events_sent_total",
    "volley_webhook_last_success_timestamp_seconds",
    "volley_webhook_journal_bytes",
]


def test_every_documented_metric_is_exported_and_every_exported_one_documented(full_scrape):
    exported = families(full_scrape)
    documented = documented_metrics()
    assert documented, "no metric found in docs/*.md"
    assert sorted(documented - set(exported)) == [], "documented but not exported"
    assert sorted(set(exported) - documented) == [], "exported but not documented"
    still = [name for name in MOVED_BY_THE_SCENARIO if not total(full_scrape, name) > 0]
    assert still == [], f"did not move: {still}\n{full_scrape}"
    # The spool holds its segments within the limit, max_spool_bytes as configured.
    assert value(full_scrape, "volley_spool_bytes") <= value(full_scrape, "volley_spool_max_bytes")
    assert value(full_scrape, "volley_spool_max_bytes") == SPOOL_MAX_BYTES
    # The failing webhook is behind, the other got its batches.
    assert value(full_scrape, "volley_webhook_lag_events", webhook="down") > 0
    assert value(full_scrape, "volley_webhook_post_failures_total", webhook="ok") == 0


def test_promtool_accepts_a_real_scrape(full_scrape, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/test-deps.sh (Debian package prometheus)"
    # The scrape has every family: the labelled ones, the cluster's and the webhook's.
    assert "volley_destination_outcomes_total{" in full_scrape
    assert "volley_cluster_redis_up " in full_scrape
    assert "volley_webhook_lag_events{" in full_scrape
    assert 'volley_customer_outcomes_total{customer="acme",outcome="bounced"} 1' in full_scrape
    result = subprocess.run(
        [promtool, "check", "metrics"], input=full_scrape, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def dashboard_expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows' nested panels included, and of
    the query variables."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']}", query))
    return out


def test_the_dashboard_is_well_formed_and_queries_only_exported_metrics(full_scrape, tmp_path):
    dashboard = json.loads(DASHBOARD.read_text())
    for key in ("title", "uid", "panels", "templating", "schemaVersion", "time"):
        assert key in dashboard, key
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells = set()
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 20
    for p in panels:
        assert p["type"] in ("row", "timeseries"), p["type"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["title"] and p["targets"], p
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "topk"} <= variables

    exported = families(full_scrape)
    documented = documented_metrics()
    expressions = dashboard_expressions(dashboard)
    used = set()
    for title, expr in expressions:
        names = METRIC_NAME.findall(expr)
        assert names, f"{title}: no Volley metric in {expr}"
        for name in names:
            family = name
            if name not in exported:
                base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
                assert base and exported.get(base) == "histogram", f"{title}: {name} is not exported"
                family = base
            assert family in documented, f"{title}: {family} is not documented"
            used.add(family)
    # Every labelled family is on the dashboard.
    for family in exported:
        if family.startswith(("volley_vmta_", "volley_customer_", "volley_destination_")):
            assert family in used, f"{family} has no panel"

    # Every expression parses as PromQL: promtool checks them as recording rules, with the
    # dashboard's variables given values.
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/test-deps.sh (Debian package prometheus)"
    rules = []
    for i, (title, expr) in enumerate(expressions):
        if title.startswith("variable "):
            continue  # label_values() is Grafana's, not PromQL
        expr = (
            expr.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$topk", "10")
        )
        assert "$" not in expr, f"{title}: unknown variable in {expr}"
        rules.append({"record": f"volley:panel_{i}", "expr": expr})
    rules_file = tmp_path / "dashboard-rules.json"  # YAML is a superset of JSON
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout
