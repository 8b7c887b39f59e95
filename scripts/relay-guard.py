#!/usr/bin/env python3
"""Relay throughput regression guard (issue 16), run by scripts/test.sh.

A short relay run: `volley serve` (`cores = 1`, spool durable) relaying 1 KiB messages from
`volley-bench blast` (50 connections) to a `volley-bench sink`, --runs times on one daemon; the
best rate (messages / seconds from the start of blast to the last delivery) must reach half of the
figure docs/benchmarks.md documents for the build, on its line

    relay-guard <build>: <N> msg/s

(in the "Regression guard" section). Best of several short runs, against half the figure: a
machine shared with other work slows single runs by a third now and then, not every run by half.
When the best is under the bound, the runs are made once more after a pause (`--second-chances`):
a fresh-clone CI once read 817, 1017 and 1317 msg/s (bound 1363) with Volley at 448-512 us of CPU
per message, and the same build 2393 and 2506 msg/s (366-424 us) minutes later: the host, not the
code, was slow; a slower build stays slow in every run.
Exit status 1 when the best run falls below the bound, 2 when the guard cannot run.

    python3 scripts/relay-guard.py                 # debug build (CI), 3 runs of 5000 messages
    python3 scripts/relay-guard.py --build release --messages 20000
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, Relay, bin_dir, relay_run

DOC = ROOT / "docs" / "benchmarks.md"


def documented(doc: Path, build: str) -> float:
    match = re.search(rf"relay-guard {build}: ([\d  ,]+) msg/s", doc.read_text())
    if not match:
        print(f"relay-guard: no 'relay-guard {build}: N msg/s' line in {doc}", file=sys.stderr)
        sys.exit(2)
    return float(re.sub(r"[^\d]", "", match.group(1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", choices=["debug", "release"], default="debug")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--second-chances", type=int, default=1,
                    help="times --runs more runs are made, after --pause-s, when the best is under the bound")
    ap.add_argument("--pause-s", type=float, default=30.0)
    ap.add_argument("--doc", type=Path, default=DOC, help="where the documented figure is read")
    args = ap.parse_args()
    figure = documented(args.doc, args.build)
    bins = bin_dir(args.build)
    for tool in ("volley", "volley-bench"):
        if not (bins / tool).exists():
            print(f"relay-guard: {bins / tool} missing: build it first", file=sys.stderr)
            sys.exit(2)
    bound = figure / 2
    work = Path(tempfile.mkdtemp(prefix="relay-guard-"))
    rates = []
    try:
        relay = Relay(bins / "volley", work / "relay", bins=bins)
        try:
            for attempt in range(1 + args.second_chances):
                if attempt:
                    print(f"relay-guard: best {max(rates):.0f} msg/s is under {bound:.0f}; runs "
                          f"again in {args.pause_s:.0f} s (a slow spell of the host passes, a "
                          "slower build does not)", flush=True)
                    time.sleep(args.pause_s)
                for _ in range(args.runs):
                    r = relay_run(relay, args.messages)
                    rates.append(r["msg_per_s"])
                    print(f"relay-guard: {args.messages} messages at {r['msg_per_s']:.0f} msg/s "
                          f"(volley {r['volley_cpu_us']:.0f} us of CPU per message)", flush=True)
                if max(rates) >= bound:
                    break
        finally:
            relay.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = max(rates)
    verdict = "ok" if best >= bound else "REGRESSION"
    print(f"relay-guard {args.build}: best {best:.0f} msg/s, documented {figure:.0f}, bound {bound:.0f}: "
          f"{verdict}")
    sys.exit(0 if best >= bound else 1)


if __name__ == "__main__":
    main()
