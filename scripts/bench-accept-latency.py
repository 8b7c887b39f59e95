#!/usr/bin/env python3
"""Accept latency of one core (end of DATA to the 250, group commit and fdatasync included) at 25 %
and 50 % of its full load, with the fdatasync latency of the same disk printed beside it as the
floor (issue 16's goal: p99 <= 2 ms at 25 % and <= 5 ms at 50 %).

Each run starts a fresh `volley serve` (`cores = 1`: its executor on CPU 0, spool durable under
--dir), a `volley-bench sink` (CPU 1) it relays to, and `volley-bench blast` (CPU 1, 50 pipelining
connections, 1 KiB) paced with `--rate`. The full load is measured once per binary first (blast
unpaced), unless --full-rate gives it; the paced rates are fractions of the first binary's figure,
so both binaries of an A/B get the same load. Every round measures `volley-fsync-bench` too (4 KiB
pwrite + fdatasync in a loop on a plain thread, in the same directory), so floor and latency come
from the same minutes. Rounds alternate the binaries (A B, B A, ...).

    python3 scripts/bench-accept-latency.py                        # target/release/volley, 3 rounds
    python3 scripts/bench-accept-latency.py --volley /tmp/volley-old --volley target/release/volley
    python3 scripts/bench-accept-latency.py --loads 25,50 --messages 8000 --rounds 5

Per run it prints blast's latency (client side: includes the client's own wake-ups) and the
daemon's own `volley_accept_latency_seconds` histogram (server side: from the end of the body to
the 250 being queued), as the share of messages within 2 ms and 5 ms. At the end: medians per
binary and load, and a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{url} did not answer in {timeout_s} s")


def wait_port(port: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} did not open in {timeout_s} s")


def accept_histogram(api: int) -> dict[float, float]:
    """Cumulative `volley_accept_latency_seconds` buckets: upper bound (s) -> count."""
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=5) as r:
        text = r.read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("volley_accept_latency_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            key = float("inf") if bound == "+Inf" else float(bound)
            buckets[key] = buckets.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def share_within(buckets: dict[float, float], bound_s: float) -> float:
    total = buckets.get(float("inf"), 0.0)
    return buckets.get(bound_s, 0.0) / total if total else 0.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Daemon:
    """A sink and a one-core Volley relaying to it, in a fresh directory."""

    def __init__(self, volley: Path, work: Path, extra: str) -> None:
        self.work = work
        work.mkdir(parents=True)
        self.smtp, self.sink_port, self.api = free_port(), free_port(), free_port()
        (work / "volley.toml").write_text(
            f"""[server]
hostname = "bench.volley.test"
cores = 1
spool_dir = "{work / 'spool'}"
[[listener]]
address = "127.0.0.1:{self.smtp}"
relay_networks = ["127.0.0.0/8"]
[[domain]]
match = "*"
max_connections = 50
max_messages_per_connection = 10000
[routes]
"d0.test" = "127.0.0.1:{self.sink_port}"
[api]
address = "127.0.0.1:{self.api}"
{extra}"""
        )
        self.sink = subprocess.Popen(
            [BIN / "volley-bench", "sink", "--listen", f"127.0.0.1:{self.sink_port}",
             "--cpus", "1", "--stats-interval-s", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.log = open(work / "volley.log", "w")
        self.volley = subprocess.Popen(
            [volley, "serve", "--config", work / "volley.toml"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.sink_port)
        wait_http(f"http://127.0.0.1:{self.api}/v1/health")

    def blast(self, messages: int, rate: float | None, extra: list[str]) -> dict:
        cmd = [BIN / "volley-bench", "blast", "--to", f"127.0.0.1:{self.smtp}",
               "--messages", str(messages), "--size", "1024", "--connections", "50",
               "--cpus", "1", "--progress-interval-s", "0", "--json", *extra]
        if rate is not None:
            cmd += ["--rate", f"{rate:.0f}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    def stop(self) -> None:
        for p in (self.volley, self.sink):
            p.terminate()
        for p in (self.volley, self.sink):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)


def fsync_floor(directory: Path, count: int) -> dict:
    out = subprocess.run(
        [BIN / "volley-fsync-bench", "--dir", directory, "--count", str(count), "--via", "syscall"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def one_run(volley: Path, work: Path, extra: str, messages: int, rate: float | None,
            blast_extra: list[str]) -> dict:
    d = Daemon(volley, work, extra)
    try:
        cpu0 = cpu_seconds(d.volley.pid)
        report = d.blast(messages, rate, blast_extra)
        cpu = cpu_seconds(d.volley.pid) - cpu0
        buckets = accept_histogram(d.api)
    finally:
        d.stop()
    lat = report["latency_us"]["end_of_data_reply"]
    return {
        "accepted_per_s": report["accepted_per_s"],
        "accepted": report["messages_accepted"],
        "p50_ms": lat["p50"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "p999_ms": lat["p999"] / 1000,
        "server_within_2ms": share_within(buckets, 0.002),
        "server_within_5ms": share_within(buckets, 0.005),
        "volley_cpu_us_per_msg": cpu * 1e6 / max(1, report["messages_accepted"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volley", action="append", type=Path,
                    help="volley binary (repeat for an A/B; default target/release/volley)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loads", default="25,50", help="percentages of the full load")
    ap.add_argument("--messages", type=int, default=6000,
                    help="messages of a run at 25 %% (runs at other loads: scaled to the same duration)")
    ap.add_argument("--full-messages", type=int, default=20000)
    ap.add_argument("--full-rate", type=float, help="skip measuring the full load")
    ap.add_argument("--fsync-count", type=int, default=1000)
    ap.add_argument("--dir", type=Path, default=ROOT / "target" / "bench",
                    help="where spools and the fsync file go (the disk measured)")
    ap.add_argument("--config-extra", type=Path, help="TOML appended to Volley's configuration")
    ap.add_argument("--blast-arg", action="append", default=[],
                    help="extra argument for the paced blast (repeatable)")
    args = ap.parse_args()
    volleys = [v.resolve() for v in (args.volley or [BIN / "volley"])]
    loads = [float(x) for x in args.loads.split(",")]
    extra = args.config_extra.read_text() if args.config_extra else ""
    args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="accept-latency-", dir=args.dir))
    seq = 0

    def work() -> Path:
        nonlocal seq
        seq += 1
        return base / f"run-{seq}"

    print(f"== machine: {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs, "
          f"load average {Path('/proc/loadavg').read_text().split()[0]}")
    full_rate = args.full_rate
    if full_rate is None:
        fulls = []
        for v in volleys:
            r = one_run(v, work(), extra, args.full_messages, None, [])
            fulls.append(r["accepted_per_s"])
            print(f"-- {v}: full load {r['accepted_per_s']:.0f} msg/s (p50 {r['p50_ms']:.2f} ms, "
                  f"p99 {r['p99_ms']:.2f} ms)", flush=True)
        full_rate = fulls[0]
    print(f"== full load taken as {full_rate:.0f} msg/s", flush=True)
    results: dict[tuple[int, float], list[dict]] = {}
    floors = []
    for rnd in range(args.rounds):
        order = list(range(len(volleys)))
        if rnd % 2:
            order.reverse()
        floor = fsync_floor(args.dir, args.fsync_count)
        floors.append(floor)
        print(f"== round {rnd + 1}: fdatasync of 4 KiB on this disk: p50 {floor['p50_us'] / 1000:.2f} ms, "
              f"p99 {floor['p99_us'] / 1000:.2f} ms", flush=True)
        for load in loads:
            for i in order:
                rate = full_rate * load / 100
                messages = int(args.messages * load / 25)
                r = one_run(volleys[i], work(), extra, messages, rate, args.blast_arg)
                results.setdefault((i, load), []).append(r)
                print(f"-- {'AB'[i] if len(volleys) > 1 else ''} {volleys[i].name} {load:.0f} % "
                      f"(--rate {rate:.0f}): {r['accepted_per_s']:.0f} msg/s, accept latency p50 "
                      f"{r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms p99.9 {r['p999_ms']:.2f} ms; "
                      f"server side {r['server_within_2ms']:.1%} within 2 ms, "
                      f"{r['server_within_5ms']:.1%} within 5 ms; volley CPU "
                      f"{r['volley_cpu_us_per_msg']:.0f} us/msg", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    print("== medians over rounds")
    summary = {"full_rate": full_rate, "fsync_p50_ms": statistics.median(f["p50_us"] for f in floors) / 1000,
               "fsync_p99_ms": statistics.median(f["p99_us"] for f in floors) / 1000, "runs": []}
    print(f"fdatasync floor: p50 {summary['fsync_p50_ms']:.2f} ms, p99 {summary['fsync_p99_ms']:.2f} ms")
    for (i, load), rs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row = {"volley": str(volleys[i]), "load_percent": load,
               **{k: statistics.median(r[k] for r in rs) for k in rs[0]}}
        summary["runs"].append(row)
        print(f"{'AB'[i] if len(volleys) > 1 else ''} {volleys[i]} {load:.0f} %: p50 {row['p50_ms']:.2f} ms, "
              f"p99 {row['p99_ms']:.2f} ms (per round: "
              f"{', '.join('%.2f' % r['p99_ms'] for r in rs)}), server within 2 ms "
              f"{row['server_within_2ms']:.1%}, within 5 ms {row['server_within_5ms']:.1%}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
