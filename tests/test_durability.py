"""Durability of what the daemon promises: no bounce without its notice, one daemon per spool."""

import subprocess
import time

from conftest import START_TIMEOUT_S, VOLLEY_BIN, free_port, message, wait_until

# One 1 MiB segment per core and a limit of one segment: the spool may also use one segment
# beyond the limit for bounce notices (headers only) and state records, no more.
SEGMENT_BYTES = 1 << 20
LINE = "x" * 74 + "\r\n"


def sized_message(subject: str, total_bytes: int, header_bytes: int = 0) -> str:
    """A message of about `total_bytes`, `header_bytes` of them in filler header fields."""
    headers = "".join(f"X-Filler-{n:04}: {'y' * 62}\r\n" for n in range(header_bytes // 76))
    head = message(subject, body="", extra_headers=headers)
    return head + LINE * max(0, (total_bytes - len(head)) // len(LINE))


def test_a_bounce_whose_dsn_cannot_be_spooled_is_not_recorded_and_comes_back(
    volley, sink_factory, catcher_factory
):
    sink = sink_factory("127.0.0.10")
    catcher = catcher_factory("127.0.0.11")
    closed = free_port("127.0.0.12")
    volley.route("held.test", f"127.0.0.12:{closed}")  # nothing listens: stays queued
    volley.route("dest.test", sink.hostport)
    volley.route("src.test", catcher.hostport)
    volley.policy(retry_intervals=["1h"])
    volley.config["spool"] = {"segment_bytes": SEGMENT_BYTES, "max_spool_bytes": SEGMENT_BYTES}
    volley.start()
    # A held message keeps segment 1; the restart starts segment 2: the reserve is in use.
    volley.send("alice@src.test", ["bob@held.test"], sized_message("held", 600_000))
    volley.wait_acct("transient")
    assert volley.stop() == 0
    volley.start()

    # Fills most of segment 2; its headers alone do not fit in the rest, so neither its DSN
    # (RET=FULL) nor the headers-only notice can be spooled.
    with volley.smtp() as client:
        client.ehlo()
        client.sendmail(
            "alice@src.test", ["permfail@dest.test"],
            sized_message("too big to return", 1_000_000, header_bytes=60_000),
            mail_options=["RET=FULL"],
        )
    wait_until(
        lambda: "not spooled (spool full)" in volley.stderr_tail(200), 15,
        "the DSN to be postponed",
    )
    time.sleep(1)
    assert volley.acct("bounce") == [], volley.acct("bounce")
    assert catcher.snapshot() == []
    assert volley.metrics()["volley_bounced_total"] == 0
    assert volley.stop() == 0

    # With room, the recovered recipient bounces again and this time its sender is told.
    volley.config["spool"]["max_spool_bytes"] = 8 * SEGMENT_BYTES
    volley.start()
    [bounce] = volley.wait_acct("bounce")
    assert bounce["recipient"] == "permfail@dest.test"
    [dsn] = catcher.wait(1)
    assert dsn.recipients == ["alice@src.test"]
    assert dsn.parsed.get_content_type() == "multipart/report"
    time.sleep(1)
    assert len(volley.acct("bounce")) == 1
    assert len(catcher.snapshot()) == 1


def test_a_full_spool_still_bounces_with_a_headers_only_notice(
    volley, sink_factory, catcher_factory
):
    sink = sink_factory("127.0.0.10")
    catcher = catcher_factory("127.0.0.11")
    volley.route("dest.test", sink.hostport)
    volley.route("src.test", catcher.hostport)
    volley.config["spool"] = {"segment_bytes": SEGMENT_BYTES, "max_spool_bytes": SEGMENT_BYTES}
    volley.start()
    with volley.smtp() as client:
        client.ehlo()
        client.sendmail(
            "alice@src.test", ["permfail@dest.test"], sized_message("returned", 700_000),
            mail_options=["RET=FULL"],
        )
    # The whole original does not fit beside it; the notice with its headers uses the reserve.
    [bounce] = volley.wait_acct("bounce")
    assert bounce["recipient"] == "permfail@dest.test"
    [dsn] = catcher.wait(1)
    parts = list(dsn.parsed.iter_parts())
    assert parts[2].get_content_type() == "text/rfc822-headers", parts[2].get_content_type()
    assert "Subject: returned" in parts[2].get_content()


def test_a_second_daemon_on_the_same_spool_refuses_to_start(volley_factory, sink_factory):
    sink = sink_factory("127.0.0.10")
    first = volley_factory("first")
    first.route("dest.test", sink.hostport)
    first.start()
    first.send("alice@src.test", ["bob@dest.test"], message("before"))
    sink.wait_lines(1)
    segments_before = sorted(p.name for p in (first.dir / "spool" / "core-0").iterdir())

    second = volley_factory("second")
    second.config["server"]["spool_dir"] = first.config["server"]["spool_dir"]
    second.route("dest.test", sink.hostport)
    second.write_config()
    run = subprocess.run(
        [str(VOLLEY_BIN), "serve", "--config", str(second.config_path)],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=START_TIMEOUT_S, cwd=second.dir,
    )
    output = (run.stdout + run.stderr).decode(errors="replace")
    assert run.returncode == 1, output
    assert f"pid {first.process.pid}" in output, output
    assert "lock" in output, output

    # The first daemon's spool is untouched and it still serves.
    assert sorted(p.name for p in (first.dir / "spool" / "core-0").iterdir()) == segments_before
    first.send("alice@src.test", ["carol@dest.test"], message("after"))
    assert sorted(r for line in sink.wait_lines(2) for r in line["recipients"]) == [
        "bob@dest.test", "carol@dest.test",
    ]


def dsn_fields(dsn) -> dict:
    """The per-recipient fields of a DSN with one reported recipient."""
    parts = list(dsn.parsed.iter_parts())
    assert parts[1].get_content_type() == "message/delivery-status"
    [per_recipient] = parts[1].get_payload()[1:]
    return dict(per_recipient.items())


def queue_figures(volley, domain):
    status, body = volley.api("GET", "/v1/queues")
    assert status == 200, body
    return [q for q in body["queues"] if q["domain"] == domain]


def test_an_operator_bounce_is_typed_x_volley_and_counted_once(volley, catcher_factory):
    catcher = catcher_factory("127.0.0.11")
    closed = free_port("127.0.0.10")
    volley.route("dest.test", f"127.0.0.10:{closed}")  # nothing listens: deferred
    volley.route("src.test", catcher.hostport)
    volley.policy(retry_intervals=["1h"])
    volley.start()
    volley.send("alice@src.test", ["bob@dest.test", "carol@dest.test"], message("held"))
    volley.wait_acct("transient", count=2)

    status, body = volley.api(
        "POST", "/v1/queues/bounce", {"domain": "dest.test", "reason": "cleanup"}
    )
    assert status == 202, body
    volley.wait_acct("bounce", count=2)
    [dsn] = catcher.wait(1)
    blocks = list(dsn.parsed.iter_parts())[1].get_payload()[1:]
    assert len(blocks) == 2, blocks
    for block in blocks:
        diagnostic = " ".join(block["Diagnostic-Code"].split())
        assert diagnostic == "X-Volley; 554 5.0.0 Bounced by the operator: cleanup", diagnostic
        assert block["Remote-MTA"] is None, dict(block.items())

    wait_until(
        lambda: (q := queue_figures(volley, "dest.test")) and q[0]["bounced"] >= 2,
        5, "the queue's bounced figure",
    )
    time.sleep(1.5)  # another snapshot: a second count would show by now
    [q] = queue_figures(volley, "dest.test")
    assert q["bounced"] == 2, q
    assert volley.metrics()["volley_bounced_total"] == 2


def test_a_remote_refusal_is_typed_smtp_once(volley, sink_factory, catcher_factory):
    sink = sink_factory("127.0.0.10")
    catcher = catcher_factory("127.0.0.11")
    volley.route("dest.test", sink.hostport)
    volley.route("src.test", catcher.hostport)
    volley.start()
    volley.send("alice@src.test", ["permfail@dest.test"], message("refused"))
    [dsn] = catcher.wait(1)
    fields = dsn_fields(dsn)
    diagnostic = " ".join(fields["Diagnostic-Code"].split())
    assert diagnostic.startswith("smtp; 550"), diagnostic
    assert "smtp; smtp;" not in diagnostic
    assert fields["Remote-MTA"].startswith("dns; "), fields


def test_spool_commits_are_counted(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    volley.start()
    assert volley.metrics()["volley_spool_commits_total"] == 0
    for n in range(3):
        volley.send("alice@src.test", [f"r{n}@dest.test"], message(f"m{n}"))
    sink.wait_lines(3)
    # Three messages each waited for a commit before their 250, and their delivered states too.
    commits = wait_until(
        lambda: (c := volley.metrics()["volley_spool_commits_total"]) >= 3 and c,
        5, "volley_spool_commits_total to count the commits",
    )
    assert commits <= 6, commits
