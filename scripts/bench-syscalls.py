#!/usr/bin/env python3
"""System calls and context switches of the volley process per message, counted with `perf stat`
on the kernel's syscall tracepoints (exact counts, unlike CPU time on a shared VM).

Two ways to load Volley:

    # a relay run (volley-bench relay --no-ceiling: every executor, delivery to the sink)
    python3 scripts/bench-syscalls.py --volley target/release/volley --messages 20000 \\
        -- --transactions-in-flight 4 --recipients 10 --rcpt-domains 10
    # a paced blast into `volley serve` with cores = 1 (as bench-accept-latency.py runs it)
    python3 scripts/bench-syscalls.py --volley target/release/volley --rate 4100 --seconds 2

Arguments after `--` go to `volley-bench relay`. Needs perf and the syscall tracepoints (root).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from benchlib import Relay, bin_dir

EVENTS = ["io_uring_enter", "pwritev", "pwrite64", "fdatasync", "sendto", "recvfrom",
          "membarrier", "futex"]


def perf_stat(pid: int, seconds: float | None, out: Path) -> subprocess.Popen:
    """`perf stat` on `pid`, for `seconds` or until interrupted."""
    events = ",".join(f"syscalls:sys_enter_{e}" for e in EVENTS) + ",context-switches"
    cmd = ["perf", "stat", "-e", events, "-p", str(pid), "-x,", "-o", str(out)]
    if seconds is not None:
        cmd += ["--", "sleep", str(seconds)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_counts(path: Path) -> dict[str, int]:
    counts = {}
    for line in path.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].isdigit():
            counts[fields[2].split(":")[-1].removeprefix("sys_enter_")] = int(fields[0])
    return counts


def relay_run(volley: Path, messages: int, extra: list[str], work: Path) -> tuple[dict, float, float]:
    out = work / "relay"
    relay = subprocess.Popen(
        [bin_dir() / "volley-bench", "relay", "--no-ceiling", "--messages", str(messages),
         "--volley", volley, "--out", out, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pattern = f"^{volley} serve --config {out}"
    pid = None
    for _ in range(200):
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        if found:
            pid = int(found[0])
            break
        time.sleep(0.05)
    if pid is None:
        relay.kill()
        raise SystemExit("volley did not start")
    stat = perf_stat(pid, None, work / "stat")
    relay.wait()
    stat.send_signal(2)
    stat.wait()
    rate = json.loads((out / "relay.json").read_text())["results"][-1]["msg_per_s"]
    return read_counts(work / "stat"), float(messages), rate


def paced_run(volley: Path, rate: int, seconds: float, work: Path) -> tuple[dict, float, float]:
    relay = Relay(volley, work / "paced")
    try:
        messages = int(rate * (seconds + 4))
        blast = relay.blast(["--messages", str(messages), "--size", "1024", "--connections", "50",
                             "--rate", str(rate)])
        time.sleep(2)  # past the connections' start
        accepted_before = relay.metric("volley_messages_received_total")
        stat = perf_stat(relay.volley.pid, seconds, work / "stat")
        stat.wait()
        accepted = relay.metric("volley_messages_received_total") - accepted_before
        report = blast.finish().report
    finally:
        relay.stop()
    return read_counts(work / "stat"), accepted, report["accepted_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volley", type=Path, default=bin_dir() / "volley")
    ap.add_argument("--messages", type=int, default=20000, help="relay run: messages")
    ap.add_argument("--rate", type=int, help="paced run: messages per second (cores = 1)")
    ap.add_argument("--seconds", type=float, default=2.0, help="paced run: how long to count")
    ap.add_argument("relay_args", nargs="*", help="after --: arguments for volley-bench relay")
    args = ap.parse_args()
    volley = args.volley.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.rate:
            counts, messages, rate = paced_run(volley, args.rate, args.seconds, work)
        else:
            counts, messages, rate = relay_run(volley, args.messages, args.relay_args, work)
    per = " ".join(f"{k}={v / max(messages, 1):.2f}" for k, v in sorted(counts.items()))
    print(f"{volley}: {rate:.0f} msg/s; per message: {per}")


if __name__ == "__main__":
    main()
