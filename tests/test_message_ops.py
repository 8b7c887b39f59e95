"""Message and queue operations for a control plane: look a message up by its queue id, bounce it,
reroute a queue to another pool; the CLI for them and `volley status`."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone

from conftest import VOLLEY_BIN, free_port, message, wait_until

RETRY_S = 3600


def inject(volley, recipients, subject="injected", sender="alice@src.test"):
    status, body = volley.api(
        "POST",
        "/v1/inject",
        {"sender": sender, "recipients": recipients, "content": message(subject).replace("\r\n", "\n")},
    )
    assert status == 202, body
    return body["id"]


def cli(volley, *args, check=True):
    out = subprocess.run(
        [str(VOLLEY_BIN), *args, "--api", f"http://127.0.0.1:{volley.api_port}"],
        capture_output=True, text=True, timeout=30,
    )
    if check:
        assert out.returncode == 0, (out.stdout, out.stderr)
    return out


def rfc3339_s(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def deferred_setup(volley, sink_factory, cores=1):
    """dest.test answers 450 at end of data (retried in an hour); ok.test takes everything; the
    DSNs to src.test go to a sink too."""
    failing = sink_factory("127.0.0.10", args=["--tempfail-percent", "100"])
    ok = sink_factory("127.0.0.11")
    dsns = sink_factory("127.0.0.12")
    volley.route("dest.test", failing.hostport)
    volley.route("ok.test", ok.hostport)
    volley.route("src.test", dsns.hostport)
    volley.policy(retry_intervals=[f"{RETRY_S}s"])
    volley.config["server"]["cores"] = cores
    volley.start()
    return failing, ok, dsns


def test_a_deferred_message_shows_its_attempts_and_next_attempt(volley, sink_factory):
    # Two cores: the message's record lies on the API's core, its queues on whichever core owns
    # them: both are asked.
    _, ok, _ = deferred_setup(volley, sink_factory, cores=2)
    id = inject(volley, ["late@dest.test", "fine@ok.test"], subject="lookup")
    [transient] = volley.wait_acct("transient", recipient="late@dest.test")
    volley.wait_acct("delivery", recipient="fine@ok.test")
    [reception, _] = volley.wait_acct("reception", count=2)

    status, m = volley.api("GET", f"/v1/messages/{id}")
    assert status == 200, m
    assert m["id"] == id and m["status"] == "queued"
    assert m["sender"] == "alice@src.test"
    assert m["size_bytes"] == reception["size_bytes"]
    assert abs(rfc3339_s(m["received_at"]) - rfc3339_s(reception["time"][:19] + "Z")) <= 1
    assert m["vmta"] == "v1" and m["pool"] == "default"
    assert m["recipients_total"] == 2
    assert m["counts"] == {"deferred": 1, "delivered": 1}
    late, fine = m["recipients"]
    assert late["recipient"] == "late@dest.test" and late["state"] == "deferred"
    assert late["attempts"] == 1 and late["vmta"] == "v1" and late["queue"] == "dest.test"
    assert late["last_reply"] == transient["response"] and late["last_reply"].startswith("450")
    assert late["last_reply_at"] == transient["time"] and late["queue_held"] is None
    assert m["customer"] == transient["customer"]
    now = time.time()
    assert RETRY_S - 60 <= late["next_attempt_in_s"] <= RETRY_S
    assert abs(rfc3339_s(late["next_attempt"]) - (now + late["next_attempt_in_s"])) <= 2
    assert fine["state"] == "delivered" and fine["attempts"] == 1
    assert fine["last_reply"].startswith("250") and fine["next_attempt"] is None
    # The sink writes its log line after its 250: wait for it rather than race it.
    assert ok.wait_recipients(1) == ["fine@ok.test"]

    # The queue list shows the same retry time, as RFC 3339 beside the epoch seconds.
    def listed():
        _, body = volley.api("GET", "/v1/queues")
        return [q for q in body["queues"] if q["domain"] == "dest.test" and q["deferred"] == 1]

    [q] = wait_until(listed, 10, "dest.test listed (published every second)")
    assert q["next_attempt"] == late["next_attempt"]
    assert rfc3339_s(q["next_attempt"]) == q["next_attempt_s"]

    # The CLI: text, and the API's JSON with --json.
    out = cli(volley, "message", "show", id).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["message", id, "(queued)"], out
    assert "recipients  2: 1 deferred, 1 delivered" in out, out
    [late_line] = [l for l in lines if "late@dest.test" in l]
    assert "deferred" in late_line and late["next_attempt"] in late_line, out
    assert late_line.endswith(transient["response"]), out
    assert json.loads(cli(volley, "message", "show", id, "--json").stdout)["id"] == id


def test_bounce_a_message_with_its_dsn(volley, sink_factory):
    _, _, dsns = deferred_setup(volley, sink_factory)
    id = inject(volley, ["late@dest.test", "later@dest.test", "fine@ok.test"], subject="bounce me")
    volley.wait_acct("transient", count=2)
    volley.wait_acct("delivery", recipient="fine@ok.test")
    other = inject(volley, ["keep@dest.test"], subject="stays")
    volley.wait_acct("transient", recipient="keep@dest.test")

    out = cli(volley, "message", "bounce", id, "--reason", "customer asked").stdout
    assert json.loads(out) == {"id": id, "bounced": 2, "in_flight": 0}, out
    bounces = volley.wait_acct("bounce", count=2, id=id)
    assert sorted(b["recipient"] for b in bounces) == ["late@dest.test", "later@dest.test"]
    assert all("Bounced by the operator: customer asked" in b["response"] for b in bounces)
    # One DSN, to the sender, from the null sender.
    [dsn] = dsns.wait_lines(1)
    assert dsn["sender"] == "" and dsn["recipients"] == ["alice@src.test"]

    # Finished now: told from the kept events; nothing more to bounce; the other message stays.
    def finished():
        status, m = volley.api("GET", f"/v1/messages/{id}")
        return m if status == 200 and m["status"] == "finished" else None

    m = wait_until(finished, 10, "the bounced message finished")
    assert m["counts"] == {"bounced": 2, "delivered": 1}, m
    assert m["recipients"][0]["last_reply"].startswith("554 5.0.0 Bounced by the operator")
    status, body = volley.api("POST", f"/v1/messages/{id}/bounce", {})
    assert (status, body["bounced"]) == (200, 0), body
    status, m = volley.api("GET", f"/v1/messages/{other}")
    assert status == 200 and m["counts"] == {"deferred": 1}, m
    time.sleep(0.5)
    assert dsns.lines() == [dsn], "no second DSN"


def test_reroute_a_queue_to_another_pool(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    volley.config["vmta"].append(
        {"name": "v2", "source_ip": "127.0.0.3", "ehlo_hostname": "v2.volley.test"}
    )
    volley.config["pool"].append({"name": "other", "vmtas": ["v2"]})
    volley.start()
    # Held first, so the recipients wait in v1's queue.
    status, body = volley.api("POST", "/v1/queues/suspend", {"domain": "dest.test", "vmta": "v1"})
    assert status == 202, body
    ids = [inject(volley, [f"r{i}@dest.test"], subject=f"move {i}") for i in range(3)]

    def queued_on_v1():
        _, body = volley.api("GET", "/v1/queues")
        return [q for q in body["queues"] if q["vmta"] == "v1" and q["size"] == 3]

    wait_until(queued_on_v1, 10, "3 recipients in v1/dest.test")
    status, m = volley.api("GET", f"/v1/messages/{ids[0]}")
    assert m["recipients"][0]["state"] == "ready" and m["recipients"][0]["queue_held"], m

    out = cli(volley, "queue", "reroute", "--domain", "dest.test", "--vmta", "v1", "--to-pool", "other")
    answer = json.loads(out.stdout)
    assert (answer["moved"], answer["left"], answer["to_pool"]) == (3, 0, "other"), answer
    lines = sink.wait_lines(3)
    assert {l["peer_ip"] for l in lines} == {"127.0.0.3"}
    assert sorted(r for l in lines for r in l["recipients"]) == ["r0@dest.test", "r1@dest.test", "r2@dest.test"]
    deliveries = volley.wait_acct("delivery", count=3)
    assert {d["vmta"] for d in deliveries} == {"v2"}
    # Nothing left to move; a second reroute moves nothing.
    status, body = volley.api("POST", "/v1/queues/reroute", {"domain": "dest.test", "vmta": "v1", "to_pool": "other"})
    assert (status, body["moved"]) == (200, 0), body

    # Refusals: an unknown pool, a pool with no other VMTA, a bad body, an unknown queue and VMTA.
    for request, expected in [
        ({"domain": "dest.test", "vmta": "v1", "to_pool": "nope"}, 404),
        ({"domain": "dest.test", "vmta": "v2", "to_pool": "other"}, 409),
        ({"domain": "dest.test", "vmta": "v1"}, 400),
        ({"domain": "dest.test", "vmta": "v9", "to_pool": "other"}, 404),
    ]:
        status, body = volley.api("POST", "/v1/queues/reroute", request)
        assert status == expected, (request, status, body)


def test_a_reroute_is_not_kept_across_a_restart(volley, sink_factory):
    """Placement is made again at recovery: what was moved and not yet delivered goes back to its
    customer's pool after a restart (docs/api.md)."""
    failing = sink_factory("127.0.0.10", args=["--tempfail-percent", "100"])
    volley.route("dest.test", failing.hostport)
    volley.policy(retry_intervals=[f"{RETRY_S}s"])
    volley.config["vmta"].append(
        {"name": "v2", "source_ip": "127.0.0.3", "ehlo_hostname": "v2.volley.test"}
    )
    volley.config["pool"].append({"name": "other", "vmtas": ["v2"]})
    volley.start()
    id = inject(volley, ["late@dest.test"])
    volley.wait_acct("transient", vmta="v1")
    status, body = volley.api("POST", "/v1/queues/reroute", {"domain": "dest.test", "vmta": "v1", "to_pool": "other"})
    assert (status, body["moved"]) == (200, 1), body
    # Ready at once on v2, whose attempt fails too: deferred there with its attempts kept.
    [second] = volley.wait_acct("transient", vmta="v2")
    assert second["attempt"] == 2 and second["source_ip"] == "127.0.0.3"
    assert volley.stop() == 0
    volley.start()
    status, m = volley.api("GET", f"/v1/messages/{id}")
    assert status == 200, m
    [r] = m["recipients"]
    assert (r["state"], r["vmta"], r["attempts"]) == ("deferred", "v1", 2), m


def test_status_shows_queue_totals_and_vmtas_out_of_their_pools(volley, sink_factory):
    deferred_setup(volley, sink_factory)
    inject(volley, ["a@dest.test", "b@dest.test"])
    volley.wait_acct("transient", count=2)
    status, body = volley.api("POST", "/v1/queues/suspend", {"domain": "held.test", "reason": "warming up"})
    assert status == 202
    status, body = volley.api("POST", "/v1/vmtas/v1/disable", {"reason": "blocklisted at example"})
    assert status == 200, body

    def listed():
        _, body = volley.api("GET", "/v1/queues")
        return len(body["queues"]) >= 2

    wait_until(listed, 10, "both queues listed")
    summary = json.loads(cli(volley, "status", "--json").stdout)
    assert summary["health"]["status"] == "serving"
    assert summary["queues"]["deferred"] == 2 and summary["queues"]["recipients"] == 2
    assert summary["queues"]["by_state"]["suspended"]["queues"] == 1
    assert summary["queues"]["by_state"]["active"]["deferred"] == 2
    assert [v["vmta"] for v in summary["vmtas_out"]] == ["v1"]

    out = cli(volley, "status").stdout
    lines = out.splitlines()
    assert lines[0] == "volley: serving, 1 of 1 cores ready, 0 inbound connections", out
    [all_line] = [l for l in lines if l.startswith("all ")]
    # (A connection may still be listed: the queue list is published once a second.)
    assert all_line.split()[:5] == ["all", "2", "2", "0", "2"], out
    [vmta_line] = [l for l in lines if l.startswith("v1 ")]
    assert vmta_line.endswith("blocklisted at example"), out


def test_unknown_and_malformed_ids(volley):
    volley.start()
    assert volley.api("GET", "/v1/messages/00000000FFFF-00")[0] == 404
    assert volley.api("GET", "/v1/messages/not-an-id")[0] == 400
    assert volley.api("GET", "/v1/messages/1-7F")[0] == 404, "a core this node does not have"
    assert volley.api("POST", "/v1/messages/00000000FFFF-00/bounce")[0] == 404
    assert volley.api("POST", "/v1/messages/00000000FFFF-00/bounce", {"nope": 1})[0] == 400
    assert volley.api("POST", "/v1/messages/00000000FFFF-00/bounce", {"reason": "x" * 513})[0] == 400
    out = cli(volley, "message", "show", "00000000FFFF-00", check=False)
    assert out.returncode == 1 and "HTTP 404" in out.stderr, out
    out = cli(volley, "message", "bounce", "bad/id", check=False)
    assert out.returncode == 1 and "HTTP 400" in out.stderr, out


def test_queue_help_describes_every_subcommand_and_flag():
    for args in [["queue"], ["message"], ["queue", "suspend"], ["queue", "reroute"], ["status"],
                 ["message", "show"], ["serve"], ["check"]]:
        out = subprocess.run([str(VOLLEY_BIN), *args, "--help"], capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        entries = [l for l in out.stdout.splitlines() if l.startswith("  ") and l.strip()]
        assert entries, out.stdout
        blank = [l for l in entries if len(l.strip().split("  ")) < 2]
        assert not blank, f"volley {' '.join(args)} --help: no description for {blank}"
