#!/usr/bin/env python3
"""The same relay load through Volley with `cores = 1` and with `cores = 2`, as a ratio, with the
load generator's own CPU time accounted for (issue 16).

Each run starts a fresh `volley serve` (spool durable) relaying `d0.test` to a `volley-bench sink`,
and `volley-bench blast` sends --messages 1 KiB messages over 50 connections as fast as it can. The
load generator (blast and the sink) is pinned to CPU 1 in every run; Volley's executors are pinned
to CPU 0 (`cores = 1`) or to CPUs 0 and 1 (`cores = 2`). Rate = messages / seconds from the start
of blast to the last delivery (`volley_delivered_total`). CPU time per message of each process
comes from /proc (Volley, the sink) and from blast's rusage; "machine busy" is their sum over the
CPU time of every online CPU during the run. Rounds alternate the order (1 2, 2 1, ...).

    python3 scripts/bench-scaling.py                 # 3 rounds of 40 000 messages
    python3 scripts/bench-scaling.py --rounds 5 --messages 30000 --volley target/release/volley
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from benchlib import ROOT, Relay, bin_dir, relay_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volley", type=Path, default=bin_dir() / "volley")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=40000)
    ap.add_argument("--cores", default="1,2")
    ap.add_argument("--dir", type=Path, default=ROOT / "target" / "bench")
    args = ap.parse_args()
    cores = [int(c) for c in args.cores.split(",")]
    args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="scaling-", dir=args.dir))
    print(f"== load average {Path('/proc/loadavg').read_text().split()[0]}; blast and sink on CPU 1")
    results: dict[int, list[dict]] = {}
    for rnd in range(args.rounds):
        order = cores if rnd % 2 == 0 else list(reversed(cores))
        for c in order:
            relay = Relay(args.volley.resolve(), base / f"r{rnd}-c{c}", cores=c, sink_cpus="1")
            try:
                r = relay_run(relay, args.messages)
            finally:
                relay.stop()
            results.setdefault(c, []).append(r)
            print(f"-- cores = {c}: {r['msg_per_s']:.0f} msg/s end to end; CPU per message: volley "
                  f"{r['volley_cpu_us']:.0f} us, blast {r['blast_cpu_us']:.0f} us, sink "
                  f"{r['sink_cpu_us']:.0f} us; machine busy {r['machine_busy']:.0%}", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    med = statistics.median
    summary = {c: {k: med(r[k] for r in rs) for k in rs[0]} for c, rs in results.items()}
    print("== medians")
    for c, row in summary.items():
        gen = row["blast_cpu_us"] + row["sink_cpu_us"]
        print(f"cores = {c}: {row['msg_per_s']:.0f} msg/s (per round: "
              f"{', '.join('%.0f' % r['msg_per_s'] for r in results[c])}); volley {row['volley_cpu_us']:.0f} "
              f"us/msg, load generator {gen:.0f} us/msg; machine busy {row['machine_busy']:.0%}")
    if len(cores) == 2:
        a, b = (summary[c] for c in cores)
        print(f"ratio cores = {cores[1]} / cores = {cores[0]}: {b['msg_per_s'] / a['msg_per_s']:.2f} "
              f"(per round: {', '.join('%.2f' % (y['msg_per_s'] / x['msg_per_s']) for x, y in zip(results[cores[0]], results[cores[1]]))})")
    print(json.dumps({str(c): row for c, row in summary.items()}))


if __name__ == "__main__":
    main()
