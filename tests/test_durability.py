"""Durability of what the daemon promises: no bounce without its notice, one daemon per spool."""

import time

from conftest import message

# One 1 MiB segment per core: a message of LARGE_BODY_LINES lines fills most of it, so its DSN
# (which returns it whole with RET=FULL) cannot be spooled until the limit is raised.
SEGMENT_BYTES = 1 << 20
LARGE_BODY_LINES = 9000  # 76-character lines: about 700 kB


def large_message(subject: str) -> str:
    line = "x" * 74 + "\r\n"
    return message(subject, body=line * LARGE_BODY_LINES)


def test_a_bounce_whose_dsn_cannot_be_spooled_is_not_recorded_and_comes_back(
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
            "alice@src.test", ["permfail@dest.test"], large_message("too big to return"),
            mail_options=["RET=FULL"],
        )
    # The 550 arrives, the DSN does not fit: no bounce is recorded, and it is tried again.
    def postponed():
        return "DSN for" in volley.stderr_tail(200) and "not spooled" in volley.stderr_tail(200)

    deadline = time.monotonic() + 15
    while not postponed():
        assert time.monotonic() < deadline, volley.stderr_tail()
        time.sleep(0.1)
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
