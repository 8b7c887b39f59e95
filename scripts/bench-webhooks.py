#!/usr/bin/env python3
"""Webhook throughput and its cost to the relay (issue 13's target: >= 50,000 events/s from one node
to a receiver that answers at once, and no more than 5 % off the relay rate).

One `volley serve` (release build, one core, fsync on), a `volley-bench sink` as the destination,
`volley-bench blast` as the client, and an HTTP receiver in this process that answers 200 at once
and counts the events of each batch. Two measurements:

1. Relay cost, A/B alternating: the same blast with no webhook (A) and with one webhook taking every
   event (B), `--pairs` times each. Relay rate = messages / seconds until the sink had them all.
   Events arrive at the receiver while mail flows (the rate printed is events received during the
   run / its seconds).
2. Sender capacity: the receiver refuses (503) while a run fills the journal, then accepts; the
   rate of the catch-up (events / seconds from the first 2xx until the lag is 0) is what one sender
   thread can push, independent of how fast the relay makes events.

    python3 scripts/bench-webhooks.py [--messages 40000] [--pairs 3] [--recipients 1]
"""

from __future__ import annotations

import argparse
import http.server
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

# Beside this script: the harness the other benchmarks share.
from benchlib import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent


class Receiver:
    """Counts events (one `"event_id":` per event) and answers 200, or 503 while `refusing`."""

    def __init__(self) -> None:
        self.events = 0
        self.events_after_first = 0
        self.posts = 0
        self.refusing = False
        self.first_accept_at: float | None = None
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.refusing:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                n = body.count(b'"event_id":')
                with receiver.lock:
                    if receiver.first_accept_at is None:
                        # The clock of the catch-up starts here: this batch's events are not
                        # counted in its rate.
                        receiver.first_accept_at = time.monotonic()
                    else:
                        receiver.events_after_first += n
                    receiver.events += n
                    receiver.posts += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.events = 0
            self.events_after_first = 0
            self.posts = 0
            self.first_accept_at = None


def metric(api: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=5) as r:
        total = 0.0
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def webhook_lag(api: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/v1/webhooks", timeout=5) as r:
        hooks = json.load(r)["webhooks"]
    return sum(h["lag_events"] for h in hooks)


class Node:
    def __init__(self, bins: Path, work: Path, sink_port: int, webhook_port: int | None,
                 batch: int) -> None:
        self.smtp, self.api = free_port(), free_port()
        self.dir = work
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        hook = ""
        if webhook_port is not None:
            hook = f"""
[[webhook]]
name = "bench"
url = "http://127.0.0.1:{webhook_port}/events"
batch_max_events = {batch}
secret = "bench-secret"
"""
        (work / "volley.toml").write_text(f"""
[server]
hostname = "bench.volley.test"
cores = 1
spool_dir = "{work}/spool"
accounting_log = ""
[[listener]]
address = "127.0.0.1:{self.smtp}"
relay_networks = ["127.0.0.0/8"]
[[domain]]
match = "*"
max_connections = 50
max_messages_per_connection = 10000
[routes]
"d0.test" = "127.0.0.1:{sink_port}"
[api]
address = "127.0.0.1:{self.api}"
{hook}""")
        self.log = open(work / "stderr.log", "wb")
        self.proc = subprocess.Popen([str(bins / "volley"), "serve", "--config", str(work / "volley.toml"),
                                      ], stdout=self.log, stderr=self.log)
        wait_http(f"http://127.0.0.1:{self.api}/v1/health")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def blast(bins: Path, node: Node, messages: int, recipients: int) -> dict:
    out = subprocess.run([str(bins / "volley-bench"), "blast", "--to", f"127.0.0.1:{node.smtp}",
                          "--messages", str(messages), "--connections", "50",
                          "--recipients", str(recipients), "--json", "--progress-interval-s", "0",
                          "--cpus", "1"],
                         capture_output=True, text=True, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def relay_run(bins: Path, work: Path, sink_port: int, receiver: Receiver | None, args) -> dict:
    node = Node(bins, work, sink_port, receiver.port if receiver else None, args.batch)
    try:
        if receiver:
            receiver.reset()
        want = args.messages * args.recipients
        before = metric(node.api, "volley_delivered_total")
        started = time.monotonic()
        report = blast(bins, node, args.messages, args.recipients)
        while metric(node.api, "volley_delivered_total") - before < want:
            if time.monotonic() - started > 600:
                sys.exit("relay did not finish in 600 s")
            time.sleep(0.02)
        seconds = time.monotonic() - started
        result = {"relay_per_s": args.messages / seconds, "accepted_per_s": report["accepted_per_s"],
                  "seconds": seconds}
        if receiver:
            with receiver.lock:
                result["events_during_run"] = receiver.events
            result["events_per_s_during_run"] = result["events_during_run"] / seconds
            drain_started = time.monotonic()
            while webhook_lag(node.api) > 0 and time.monotonic() - drain_started < 120:
                time.sleep(0.05)
            result["lag_drained_after_s"] = time.monotonic() - started
        return result
    finally:
        node.stop()


def capacity_run(bins: Path, work: Path, sink_port: int, receiver: Receiver, args) -> dict:
    node = Node(bins, work, sink_port, receiver.port, args.batch)
    try:
        receiver.reset()
        receiver.refusing = True
        want = args.messages * args.recipients
        blast(bins, node, args.messages, args.recipients)
        while metric(node.api, "volley_delivered_total") < want:
            time.sleep(0.05)
        time.sleep(1.5)  # the last accounting batches reach the journal
        backlog = webhook_lag(node.api)
        receiver.reset()
        receiver.refusing = False
        # The sender is in backoff after the refusals (at most RETRY_MAX_MS); time from its first
        # accepted batch.
        deadline = time.monotonic() + 600
        while webhook_lag(node.api) > 0:
            if time.monotonic() > deadline:
                sys.exit("backlog not drained in 600 s")
            time.sleep(0.01)
        done = time.monotonic()
        with receiver.lock:
            events, posts, first = receiver.events, receiver.posts, receiver.first_accept_at
            timed = receiver.events_after_first
        seconds = done - (first or done)
        return {"backlog": backlog, "events": events, "posts": posts, "seconds": seconds,
                "events_per_s": timed / seconds if seconds > 0 else 0.0}
    finally:
        node.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=40_000)
    ap.add_argument("--recipients", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1000, help="the webhook's batch_max_events")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    args = ap.parse_args()
    bins = Path(args.bin_dir)
    work = Path(tempfile.mkdtemp(prefix="volley-webhook-bench-"))
    sink_port = free_port()
    sink = subprocess.Popen([str(bins / "volley-bench"), "sink", "--listen", f"127.0.0.1:{sink_port}",
                             "--cpus", "1", "--stats-interval-s", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    receiver = Receiver()
    try:
        print(f"== {args.messages} messages x {args.recipients} recipient(s), 1 core, fsync on, "
              f"batch_max_events {args.batch}")
        a_rates, b_rates = [], []
        for i in range(args.pairs):
            a = relay_run(bins, work / "a", sink_port, None, args)
            b = relay_run(bins, work / "b", sink_port, receiver, args)
            a_rates.append(a["relay_per_s"])
            b_rates.append(b["relay_per_s"])
            print(f"pair {i + 1}: no webhook {a['relay_per_s']:.0f} msg/s | webhook "
                  f"{b['relay_per_s']:.0f} msg/s, {b['events_during_run']} events during the run "
                  f"({b['events_per_s_during_run']:.0f} events/s), lag 0 after {b['lag_drained_after_s']:.1f} s")
        a_mean, b_mean = sum(a_rates) / len(a_rates), sum(b_rates) / len(b_rates)
        print(f"relay rate: no webhook {a_mean:.0f} msg/s, webhook {b_mean:.0f} msg/s: "
              f"{(b_mean - a_mean) / a_mean * 100:+.1f} %")
        c = capacity_run(bins, work / "c", sink_port, receiver, args)
        print(f"sender capacity: backlog {c['backlog']} events, {c['events']} received in "
              f"{c['posts']} POSTs; after the first POST {c['seconds']:.2f} s: "
              f"{c['events_per_s']:.0f} events/s")
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=10)
        receiver.server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
