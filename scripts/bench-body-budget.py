#!/usr/bin/env python3
"""Memory under many large bodies in flight: N concurrent sessions each send one body of M MiB by
DATA (no SIZE=, so only the octets can hold a session to the budget), against a fresh `volley
serve` on loopback. Prints the daemon's peak RSS (VmHWM, and the peak of its anonymous memory
sampled every 20 ms), its RSS before and after, and how many sessions got 250, 452 4.3.1 (bodies
in flight: `[server] max_message_bytes_in_flight`), 452 for a full spool, or anything else.

    python3 scripts/bench-body-budget.py                      # 200 x 50 MiB, the default 1 GiB budget
    python3 scripts/bench-body-budget.py --sessions 40 --budget-bytes 1099511627776   # no budget in effect
    python3 scripts/bench-body-budget.py --volley target/debug/volley --sessions 100

Accepted messages are spooled (fsync on) under a temporary directory, deleted at the end; their
delivery goes to a closed loopback port and is deferred for an hour, so nothing leaves the machine.
`--max-spool-bytes` bounds the disk used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status, in bytes."""
    fields = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[key] = int(parts[0]) * 1024
    return fields


class Sampler(threading.Thread):
    """The peak of the daemon's VmRSS and RssAnon, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss = 0
        self.peak_anon = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            s = proc_status(self.pid)
            self.peak_rss = max(self.peak_rss, s.get("VmRSS", 0))
            self.peak_anon = max(self.peak_anon, s.get("RssAnon", 0))
            time.sleep(0.02)


def config(work: Path, args, relay_port: int, api_port: int, closed_port: int) -> str:
    budget = (
        f"max_message_bytes_in_flight = {args.budget_bytes}\n" if args.budget_bytes else ""
    )
    return f"""
[server]
hostname = "bench.volley.test"
cores = {args.cores}
spool_dir = "{work / 'spool'}"
max_connections_per_ip = {max(200, args.sessions)}
{budget}
[spool]
max_spool_bytes = {args.max_spool_bytes}

[[listener]]
address = "127.0.0.1:{relay_port}"
relay_networks = ["127.0.0.0/8"]

[[vmta]]
name = "v1"
source_ip = "127.0.0.1"
ehlo_hostname = "v1.volley.test"

[[pool]]
name = "default"
vmtas = ["v1"]

[[domain]]
match = "*"
retry_intervals = ["1h"]
max_queue_age = "1d"

[routes]
"dest.test" = "127.0.0.1:{closed_port}"

[dns]
nameservers = ["127.0.0.1:{closed_port}"]

[api]
address = "127.0.0.1:{api_port}"
"""


async def read_reply(reader: asyncio.StreamReader) -> str:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed: " + "".join(lines))
        lines.append(line.decode(errors="replace"))
        if len(line) >= 4 and line[3:4] == b" ":
            return "".join(lines)


async def session(port: int, body: bytes, start: asyncio.Event) -> str:
    """One transaction; returns the reply to the end of data (or the error)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        await read_reply(reader)
        for line in (b"EHLO bench\r\n", b"MAIL FROM:<a@src.test>\r\n", b"RCPT TO:<b@dest.test>\r\n"):
            writer.write(line)
            reply = await read_reply(reader)
            if not reply.startswith("250"):
                return reply.strip()
        await start.wait()
        writer.write(b"DATA\r\n")
        reply = await read_reply(reader)
        if not reply.startswith("354"):
            return reply.strip()
        view = memoryview(body)
        for offset in range(0, len(body), MIB):
            writer.write(view[offset : offset + MIB])
            await writer.drain()
        writer.write(b".\r\n")
        reply = (await read_reply(reader)).strip()
        writer.write(b"QUIT\r\n")
        await writer.drain()
        writer.close()
        return reply
    except (OSError, ConnectionError) as e:
        return f"error: {e}"


def classify(reply: str) -> str:
    if reply.startswith("250"):
        return "250"
    if reply.startswith("452 4.3.1") and "in flight" in reply:
        return "452 in flight"
    if reply.startswith("452 4.3.1"):
        return "452 spool"
    return "other"


async def run_sessions(port: int, n: int, body: bytes) -> list[str]:
    start = asyncio.Event()
    tasks = [asyncio.create_task(session(port, body, start)) for _ in range(n)]
    await asyncio.sleep(0.5)
    start.set()  # every session has its RCPT answered: the bodies start together
    return await asyncio.gather(*tasks)


def make_body(size: int) -> bytes:
    head = b"Subject: bench-body-budget\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    lines = (size - len(head)) // len(line)
    return head + line * lines


def wait_healthy(api_port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"volley exited {proc.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", api_port), timeout=1) as s:
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit("volley not healthy after 30 s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volley", default=str(ROOT / "target" / "release" / "volley"))
    p.add_argument("--sessions", type=int, default=200)
    p.add_argument("--body-mib", type=float, default=49.9, help="each body, MiB (max_message_bytes is 50 MiB)")
    p.add_argument("--budget-bytes", type=int, default=0, help="max_message_bytes_in_flight; 0 = the default")
    p.add_argument("--cores", type=int, default=0)
    p.add_argument("--max-spool-bytes", type=int, default=4 << 30)
    p.add_argument("--settle-s", type=float, default=5.0, help="wait before the RSS after")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-body-budget-"))
    relay_port, api_port, closed_port = free_port(), free_port(), free_port()
    (work / "volley.toml").write_text(config(work, args, relay_port, api_port, closed_port))
    log = open(work / "volley.log", "wb")
    proc = subprocess.Popen(
        [str(Path(args.volley).resolve()), "serve", "--config", str(work / "volley.toml")],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=work,
    )
    try:
        wait_healthy(api_port, proc)
        time.sleep(1)
        before = proc_status(proc.pid).get("VmRSS", 0)
        body = make_body(int(args.body_mib * MIB))
        sampler = Sampler(proc.pid)
        sampler.start()
        started = time.monotonic()
        replies = asyncio.run(run_sessions(relay_port, args.sessions, body))
        took = time.monotonic() - started
        time.sleep(args.settle_s)
        sampler.running = False
        sampler.join()
        status = proc_status(proc.pid)
        counts: dict[str, int] = {}
        for r in replies:
            counts[classify(r)] = counts.get(classify(r), 0) + 1
        others = sorted({r for r in replies if classify(r) == "other"})[:3]
        budget = args.budget_bytes or "default (1 GiB)"
        print(f"volley: {args.volley}, cores={args.cores or os.cpu_count()}, budget={budget}")
        print(f"{args.sessions} sessions x {len(body) / MIB:.1f} MiB by DATA, {took:.1f} s "
              f"({args.sessions * len(body) / MIB / took:.0f} MiB/s offered and read)")
        print("replies: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        if others:
            print(f"  other replies: {others}")
        print(f"RSS before {before / MIB:.0f} MiB, peak VmHWM {status.get('VmHWM', 0) / MIB:.0f} MiB "
              f"(sampled peak RSS {sampler.peak_rss / MIB:.0f} MiB, anonymous {sampler.peak_anon / MIB:.0f} MiB), "
              f"after {args.settle_s:.0f} s {status.get('VmRSS', 0) / MIB:.0f} MiB "
              f"(anonymous {status.get('RssAnon', 0) / MIB:.0f} MiB)")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
