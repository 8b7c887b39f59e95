#!/usr/bin/env python3
"""Messages of several recipients through Volley against the ceiling, the recipients in one domain
and spread over several (issue 16: 10 recipients, one domain and ten domains, >= 35 % of the
ceiling).

Each run is one `volley-bench relay --recipients R --rcpt-domains D` (the ceiling: blast straight
into the sink; then blast into a fresh `volley serve`, every executor, spool durable, relaying
`d0.test` .. through `[routes]` to the sink). Volley's share of the ceiling is the two end-to-end
rates of the same run. While Volley runs, the CPU time (utime + stime, /proc/PID/stat) and context
switches of its threads are sampled every 100 ms, and reported per message; the sink's log gives
the delivery transactions per message (one per recipient domain). Runs alternate the domain counts
(1 10, 10 1, ...); at the end: medians per domain count and a JSON summary line.

    python3 scripts/bench-recipients.py                                  # 3 rounds, 10 x 1 and 10 x 10
    python3 scripts/bench-recipients.py --rounds 5 --messages 5000 --domains 1,10
    python3 scripts/bench-recipients.py --volley /tmp/volley-old --volley target/release/volley
    python3 scripts/bench-recipients.py --relay-args "--volley-cores 1"

With two --volley binaries every round runs both (an A/B of an engine change), alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchlib import ROOT, bin_dir

BIN = bin_dir()


def process_counters(pid: int) -> tuple[float, int]:
    """(CPU seconds of every thread, context switches of the live threads) of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        raise ProcessLookupError(pid)  # exited: its threads' figures are gone
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        except OSError:
            pass
    return cpu, switches


class Sampler(threading.Thread):
    """Samples the `volley serve` started with `config` until it exits; keeps the last figures."""

    def __init__(self, config: Path) -> None:
        super().__init__(daemon=True)
        self.config = str(config)
        self.cpu_s, self.switches, self.done = 0.0, 0, False

    def run(self) -> None:
        pid = None
        while not self.done:
            if pid is None:
                pid = find_process(self.config)
            if pid is not None:
                try:
                    self.cpu_s, switches = process_counters(pid)
                except OSError:
                    return  # exited: the last sample stands
                # Threads exit at shutdown, taking their counts: the highest sum stands.
                self.switches = max(self.switches, switches)
            time.sleep(0.1)


def find_process(config: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(cmd) >= 4 and cmd[1] == b"serve" and cmd[3].decode(errors="replace") == config:
            return int(entry.name)
    return None


def one_run(volley: Path, out: Path, args: argparse.Namespace, domains: int) -> dict:
    config = out / "volley" / "volley.toml"
    sampler = Sampler(config)
    sampler.start()
    cmd = [str(BIN / "volley-bench"), "relay", "--messages", str(args.messages), "--size",
           str(args.size), "--recipients", str(args.recipients), "--rcpt-domains", str(domains),
           "--volley", str(volley), "--out", str(out), *shlex.split(args.relay_args)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sampler.done = True
    sampler.join()
    report = json.loads((out / "relay.json").read_text())
    ceiling = next(r for r in report["results"] if r["name"].startswith("ceiling"))
    through = next(r for r in report["results"] if r["name"].startswith("Volley"))
    n = args.messages
    return {
        "ceiling_msg_per_s": ceiling["msg_per_s"],
        "volley_msg_per_s": through["msg_per_s"],
        "percent_of_ceiling": 100 * through["msg_per_s"] / ceiling["msg_per_s"],
        "volley_cpu_us": sampler.cpu_s * 1e6 / n,
        "cs_per_msg": sampler.switches / n,
        "transactions_per_msg": through.get("sink_transactions", 0) / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volley", action="append", type=Path,
                    help="volley binary (repeat for an A/B; default target/release/volley)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--recipients", type=int, default=10)
    ap.add_argument("--domains", default="1,10", help="recipient domain counts, comma-separated")
    ap.add_argument("--relay-args", default="", help="more arguments for volley-bench relay")
    ap.add_argument("--dir", type=Path, default=ROOT / "target" / "bench")
    args = ap.parse_args()
    volleys = [v.resolve() for v in (args.volley or [BIN / "volley"])]
    domain_counts = [int(d) for d in args.domains.split(",") if d]
    args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="recipients-", dir=args.dir))
    loadavg = lambda: Path("/proc/loadavg").read_text().split()[0]  # noqa: E731
    print(f"== {os.cpu_count()} CPUs, load average {loadavg()}; {args.messages} messages of "
          f"{args.size} B, {args.recipients} recipients, 50 connections", flush=True)
    runs = [(v, d) for d in domain_counts for v in range(len(volleys))]
    results: dict[tuple[int, int], list[dict]] = {}
    seq = 0
    for rnd in range(args.rounds):
        for v, d in (runs if rnd % 2 == 0 else list(reversed(runs))):
            seq += 1
            r = one_run(volleys[v], base / f"run-{seq}", args, d)
            results.setdefault((v, d), []).append(r)
            label = f"{'AB'[v]} " if len(volleys) > 1 else ""
            print(f"-- round {rnd + 1} {label}{d} domain(s): ceiling {r['ceiling_msg_per_s']:.0f} msg/s, "
                  f"Volley {r['volley_msg_per_s']:.0f} msg/s = {r['percent_of_ceiling']:.1f} % of the "
                  f"ceiling; volley CPU {r['volley_cpu_us']:.0f} us/msg, {r['cs_per_msg']:.2f} context "
                  f"switches/msg, {r['transactions_per_msg']:.2f} delivery transactions/msg (load "
                  f"average {loadavg()})", flush=True)
    print("== medians")
    summary = {"messages": args.messages, "recipients": args.recipients, "runs": []}
    for (v, d), rs in sorted(results.items()):
        row = {"volley": str(volleys[v]), "domains": d,
               **{k: statistics.median(r[k] for r in rs) for k in rs[0]},
               "percent_runs": [round(r["percent_of_ceiling"], 1) for r in rs]}
        summary["runs"].append(row)
        label = f"{'AB'[v]} {volleys[v]} " if len(volleys) > 1 else ""
        print(f"{label}{d} domain(s): Volley {row['volley_msg_per_s']:.0f} msg/s, "
              f"{row['percent_of_ceiling']:.1f} % of the ceiling (runs {row['percent_runs']}), volley "
              f"CPU {row['volley_cpu_us']:.0f} us/msg")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
