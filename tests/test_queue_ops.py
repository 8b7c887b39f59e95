"""Queue operations for a control plane: retry a deferred queue now (API and CLI)."""

from __future__ import annotations

import subprocess

from conftest import VOLLEY_BIN, free_port, message, wait_until


def test_retry_makes_deferred_recipients_ready_now(volley, sink_factory):
    port = free_port("127.0.0.10")
    volley.route("fixed.test", f"127.0.0.10:{port}")
    volley.route("later.test", f"127.0.0.10:{port}")
    volley.policy(retry_intervals=["1h"])
    volley.start()
    volley.send("s@x.test", ["a@fixed.test"], message("one"))
    volley.send("s@x.test", ["b@later.test"], message("two"))
    # Nothing listens yet: both are deferred for an hour.
    volley.wait_acct("transient", count=2)
    sink = sink_factory("127.0.0.10", port)
    status, body = volley.api("POST", "/v1/queues/retry", {"domain": "fixed.test"})
    assert status == 202, body
    assert sink.wait_recipients(1) == ["a@fixed.test"]
    # Only the queue named: the other still waits for its hour.
    assert sink.recipients() == ["a@fixed.test"]
    # The CLI does the same.
    out = subprocess.run(
        [str(VOLLEY_BIN), "queue", "retry", "--domain", "later.test",
         "--api", f"http://127.0.0.1:{volley.api_port}"],
        capture_output=True, text=True, timeout=20,
    )
    assert out.returncode == 0, out.stderr
    wait_until(lambda: sorted(sink.recipients()) == ["a@fixed.test", "b@later.test"], 15, "both")
