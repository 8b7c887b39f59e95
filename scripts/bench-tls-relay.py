#!/usr/bin/env python3
"""Relay throughput with TLS on both hops against none: `volley-bench blast` (with `--starttls`
or not) into a fresh `volley serve` (a STARTTLS listener with its self-signed certificate), which
relays through a `[routes]` entry to a `volley-bench sink` (with `--tls-cert/--tls-key` from a test
CA, or without). Volley's outbound STARTTLS is opportunistic, so the second hop is encrypted
exactly when the sink offers it. Runs alternate (plain, tls, plain, tls, ...); each reports
messages per second from the first accepted message to the last one the sink logged.

    python3 scripts/bench-tls-relay.py                            # release binaries, 20 000 x 1 KiB
    python3 scripts/bench-tls-relay.py --bin-dir target/debug --messages 2000 --runs 1

Everything runs on loopback in a temporary directory (spool with fsync on), deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from pki import TestCa  # noqa: E402

SINK_ADDRESS = "127.0.0.70"
DEADLINE_S = 600.0


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def wait_port(address: str, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {address}:{port}")


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def run_once(args, dir: Path, ca: TestCa, tls: bool) -> dict:
    bins = Path(args.bin_dir)
    work = Path(tempfile.mkdtemp(dir=dir))
    sink_port, relay_port, api_port = free_port(SINK_ADDRESS), free_port(), free_port()
    sink_log = work / "sink.jsonl"
    sink_args = [str(bins / "volley-bench"), "sink", "--listen", f"{SINK_ADDRESS}:{sink_port}",
                 "--log", str(sink_log), "--cores", "1", "--stats-interval-s", "0"]
    if tls:
        cert, key = ca.issue(["sink.bench.test"], stem=f"sink-{work.name}")
        sink_args += ["--tls-cert", str(cert), "--tls-key", str(key)]
    config = work / "volley.toml"
    config.write_text(
        f"""[server]
hostname = "relay.bench.test"
cores = {args.volley_cores}
spool_dir = "{work / 'spool'}"
accounting_log = "{work / 'acct.jsonl'}"

[[listener]]
address = "127.0.0.1:{relay_port}"
tls = "starttls"
auth = "off"
relay_networks = ["127.0.0.0/8"]

[api]
address = "127.0.0.1:{api_port}"

[mta_sts]
enabled = false

[routes]
"d0.test" = "{SINK_ADDRESS}:{sink_port}"
"""
    )
    processes = []
    try:
        deadline = time.monotonic() + 30
        sink = subprocess.Popen(sink_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(sink)
        wait_port(SINK_ADDRESS, sink_port, deadline)
        volley = subprocess.Popen(
            [str(bins / "volley"), "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=open(work / "volley.log", "wb"),
        )
        processes.append(volley)
        wait_port("127.0.0.1", relay_port, deadline)
        blast = [str(bins / "volley-bench"), "blast", "--to", f"127.0.0.1:{relay_port}",
                 "--messages", str(args.messages), "--size", str(args.size),
                 "--connections", str(args.connections), "--cores", "1", "--json",
                 "--progress-interval-s", "0"]
        if tls:
            blast.append("--starttls")
        started = time.monotonic()
        report = json.loads(subprocess.run(blast, check=True, capture_output=True,
                                           timeout=DEADLINE_S).stdout)
        accepted_s = time.monotonic() - started
        while count_lines(sink_log) < args.messages:
            if time.monotonic() - started > DEADLINE_S:
                raise SystemExit(f"only {count_lines(sink_log)} messages reached the sink")
            time.sleep(0.05)
        relayed_s = time.monotonic() - started
        return {
            "tls": tls,
            "accepted_per_s": round(args.messages / accepted_s),
            "relayed_per_s": round(args.messages / relayed_s),
            "blast": {k: report.get(k) for k in ("messages_accepted", "messages_failed",
                                                 "connection_errors")},
        }
    finally:
        for p in reversed(processes):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--volley-cores", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode, alternating")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dir = Path(tmp)
        ca = TestCa(dir / "pki", "Bench CA")
        results = []
        for _ in range(args.runs):
            for tls in (False, True):
                result = run_once(args, dir, ca, tls)
                print(json.dumps(result), flush=True)
                results.append(result)
        for tls in (False, True):
            rates = sorted(r["relayed_per_s"] for r in results if r["tls"] == tls)
            print(f"{'TLS both hops' if tls else 'no TLS'}: relayed msg/s {rates}, "
                  f"median {rates[len(rates) // 2]}")


if __name__ == "__main__":
    main()
