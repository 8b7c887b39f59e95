#!/usr/bin/env python3
"""The cluster's shared-limit benchmark: 3 nodes on 127.0.0.x sharing one Redis, one customer with
`max_messages_per_hour = LIMIT`, and three `volley-bench blast` runs (one per node) sending more than
the limit as fast as they can. Prints the accepted total, the overrun in % of the limit, and the
Redis round trips of the limit scripts per accepted message (Redis's own `cmdstat_eval` count).

    python3 scripts/bench-cluster-limits.py                 # release binaries, LIMIT=100000
    python3 scripts/bench-cluster-limits.py --limit 20000 --bin-dir target/debug

Needs redis-server (scripts/test-deps.sh) and the binaries built (`cargo build --release`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start")


def redis_info(port: int, section: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(f"*2\r\n$4\r\nINFO\r\n${len(section)}\r\n{section}\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            if not chunk or (data.startswith(b"$") and data.count(b"\r\n") >= 2 and
                             len(data) >= int(data[1:data.index(b"\r\n")]) + data.index(b"\r\n") + 4):
                break
    return data.decode(errors="replace")


def eval_calls(port: int) -> int:
    for line in redis_info(port, "commandstats").splitlines():
        if line.startswith("cmdstat_eval:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=100_000)
    ap.add_argument("--overshoot", type=float, default=1.3, help="messages sent = limit x this")
    ap.add_argument("--bin-dir", default=str(ROOT / "target" / "release"))
    ap.add_argument("--connections", type=int, default=8, help="per node")
    args = ap.parse_args()
    bins = Path(args.bin_dir)
    redis_bin = shutil.which("redis-server")
    if not redis_bin:
        sys.exit("redis-server missing: run scripts/test-deps.sh")
    work = Path(tempfile.mkdtemp(prefix="volley-cluster-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        redis_port = free_port()
        procs.append(subprocess.Popen([redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL))
        wait_port(redis_port, "redis-server")
        sink_port = free_port()
        procs.append(subprocess.Popen([str(bins / "volley-bench"), "sink", "--listen",
                                       f"127.0.0.10:{sink_port}"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        nodes = []
        for i in range(3):
            smtp, api = free_port(), free_port()
            d = work / f"mta{i}"
            d.mkdir()
            (d / "volley.toml").write_text(f"""
[server]
hostname = "mta{i}.volley.test"
cores = 1
spool_dir = "{d}/spool"
accounting_log = ""
[[listener]]
address = "127.0.0.1:{smtp}"
relay_networks = ["127.0.0.0/8"]
[[vmta]]
name = "v{i}"
source_ip = "127.0.0.{2 + i}"
ehlo_hostname = "v{i}.volley.test"
[[pool]]
name = "default"
vmtas = ["v{i}"]
[[customer]]
name = "acme"
max_messages_per_hour = {args.limit}
[routes]
"d0.test" = "127.0.0.10:{sink_port}"
[api]
address = "127.0.0.1:{api}"
[cluster]
node = "mta{i}"
redis = "redis://127.0.0.1:{redis_port}/0"
""")
            log = open(d / "stderr.log", "wb")
            procs.append(subprocess.Popen([str(bins / "volley"), "serve", "--config", str(d / "volley.toml")],
                                          stdout=log, stderr=log))
            nodes.append((smtp, api))
        for smtp, _ in nodes:
            wait_port(smtp, "a node")
        time.sleep(2.5)  # heartbeats: every node sees 3 live nodes
        evals_before = eval_calls(redis_port)
        per_node = int(args.limit * args.overshoot / 3)
        started = time.monotonic()
        blasts = [subprocess.Popen([str(bins / "volley-bench"), "blast", "--to", f"127.0.0.1:{smtp}",
                                    "--messages", str(per_node), "--connections", str(args.connections),
                                    "--header", "X-Volley-Customer:acme", "--json",
                                    "--progress-interval-s", "0", "--cores", "1"],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                  for smtp, _ in nodes]
        reports = [json.loads(b.communicate(timeout=900)[0].strip().splitlines()[-1]) for b in blasts]
        seconds = time.monotonic() - started
        accepted = sum(r["messages_accepted"] for r in reports)
        evals = eval_calls(redis_port) - evals_before
        with urllib.request.urlopen(f"http://127.0.0.1:{nodes[0][1]}/v1/customers/acme/usage", timeout=5) as r:
            usage = json.load(r)
        overrun = (accepted - args.limit) / args.limit * 100
        print(f"nodes 3, limit {args.limit}/hour, sent {per_node * 3} in {seconds:.1f} s "
              f"({per_node * 3 / seconds:.0f} attempts/s)")
        print(f"accepted {accepted} (Redis counter {usage['messages_this_hour']}), "
              f"overrun {overrun:+.2f} % of the limit")
        print(f"Redis lease scripts {evals}: {evals / max(accepted, 1):.4f} round trips per accepted message "
              f"(1 per {accepted / max(evals, 1):.0f})")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
