"""A kill -9 loses no accounting event: lines a core recorded but had not yet written to the log
(`[server] accounting_flush_ms`) are kept in `spool_dir/unflushed-events` and written at the next
start, before anything new."""

from __future__ import annotations

import signal
import time

from conftest import message, wait_until


def test_events_recorded_before_a_kill_reach_the_log_at_the_next_start(
    volley, sink_factory, catcher_factory
):
    sink = sink_factory("127.0.0.10")
    catcher = catcher_factory("127.0.0.11")
    volley.route("dest.test", sink.hostport)
    volley.route("src.test", catcher.hostport)
    # Lines stay in the core for a minute: only the unflushed-events files can save them.
    volley.config["server"]["accounting_flush_ms"] = 60_000
    volley.start()

    volley.send("alice@src.test", ["ok@dest.test", "permfail@dest.test"], message("crash"))
    wait_until(lambda: sink.lines(), 15, "the delivery")
    catcher.wait(1)  # the bounce's DSN: the bounce is recorded
    wait_until(lambda: "DSN" in volley.stderr_tail(50), 10, "the DSN's log line")
    assert volley.acct() == [], "nothing written before the flush interval"
    volley.kill9()

    volley.start()
    wait_until(lambda: volley.acct("bounce"), 10, "the events kept across the kill")
    kinds = [(e["type"], e["recipient"]) for e in volley.acct()]
    assert ("reception", "ok@dest.test") in kinds, kinds
    assert ("reception", "permfail@dest.test") in kinds, kinds
    assert ("delivery", "ok@dest.test") in kinds, kinds
    assert ("bounce", "permfail@dest.test") in kinds, kinds
    # Each once: the slots were emptied when read, and a second start writes nothing again.
    assert len(kinds) == len(set(kinds)), kinds
    assert "events recorded before a crash written to the log now" in volley.stderr_tail(200)
    assert volley.stop() == 0
    volley.start()
    again = [(e["type"], e["recipient"]) for e in volley.acct()]
    assert len(again) == len(set(again)), again


def test_accounting_flush_ms_takes_effect_on_reload(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    volley.config["server"]["accounting_flush_ms"] = 60_000
    volley.start()
    volley.send("alice@src.test", ["ok@dest.test"], message("held back"))
    wait_until(lambda: sink.lines(), 15, "the delivery")
    time.sleep(0.5)
    assert volley.acct() == [], "held for a minute"
    volley.config["server"]["accounting_flush_ms"] = 100
    volley.write_config()
    volley.signal(signal.SIGHUP)
    [delivery] = volley.wait_acct("delivery", timeout_s=5)
    assert delivery["recipient"] == "ok@dest.test"


def test_events_unwritten_at_a_kill_reach_the_webhook_after_the_restart(volley, sink_factory):
    from test_webhooks import Receiver, configure

    sink = sink_factory("127.0.0.10")
    receiver = Receiver()
    try:
        configure(volley, receiver, sink)
        volley.config["server"]["accounting_flush_ms"] = 60_000
        volley.start()
        volley.send("alice@src.test", ["ok@dest.test"], message("to the webhook"))
        wait_until(lambda: sink.lines(), 15, "the delivery")
        time.sleep(0.3)
        assert receiver.events() == [], "nothing written before the flush interval"
        volley.kill9()
        volley.start()

        def both():
            kinds = {(e["type"], e["recipient"]) for e in receiver.events()}
            return {("reception", "ok@dest.test"), ("delivery", "ok@dest.test")} <= kinds

        wait_until(both, 20, "the events kept across the kill at the webhook")
    finally:
        receiver.stop()
