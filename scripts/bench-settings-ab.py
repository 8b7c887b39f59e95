#!/usr/bin/env python3
"""A/B of configuration settings on the full-load relay: the same binary, variants differing only
in `[server]` / `[spool]` settings, run alternately (A B, B A, ...), each a fresh `volley serve`
(--cores executors, spool durable) relaying `--messages` messages of `--size` bytes (1 KiB) from `volley-bench blast`
(50 connections, as fast as it can) to a `volley-bench sink`. Per run: end-to-end msg/s (start of
blast to the last delivery), Volley's CPU per message and spool commits per message; at the end
the medians per variant.

    python3 scripts/bench-settings-ab.py --variant lazy= --variant eager=spool.lazy_state_sync_ms=0
    python3 scripts/bench-settings-ab.py --variant unpinned= \\
        --variant pinned=server.pin_blocking_threads=true --rounds 5

A variant is `LABEL=TABLE.KEY=VALUE[,TABLE.KEY=VALUE...]` (TABLE `server` or `spool`); an empty
right side runs the defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, Relay, bin_dir, parse_setting_variant, relay_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volley", type=Path, default=bin_dir() / "volley")
    ap.add_argument("--variant", action="append", required=True, help="LABEL=SETTINGS")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--cores", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024, help="message size in bytes")
    ap.add_argument("--dir", type=Path, default=ROOT / "target" / "bench")
    args = ap.parse_args()
    try:
        variants = [parse_setting_variant(spec) for spec in args.variant]
    except ValueError as e:
        ap.error(f"--variant {e}")
    args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="settings-ab-", dir=args.dir))
    results: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        order = list(range(len(variants)))
        if rnd % 2:
            order.reverse()
        for i in order:
            label, settings = variants[i]
            relay = Relay(args.volley, base / f"r{rnd}-{i}", cores=args.cores, settings=settings)
            try:
                r = relay_run(relay, args.messages, size=args.size)
                time.sleep(0.2)  # the commit counter is published every 100 ms
                r["commits_per_msg"] = relay.metric("volley_spool_commits_total") / args.messages
            finally:
                relay.stop()
            results.setdefault(label, []).append(r)
            load = Path("/proc/loadavg").read_text().split()[0]
            print(f"-- {label}: {r['msg_per_s']:.0f} msg/s end to end, volley CPU "
                  f"{r['volley_cpu_us']:.0f} us/msg, {r['commits_per_msg']:.2f} commits/msg "
                  f"(load average {load})", flush=True)
    med = statistics.median
    print("== medians")
    summary = {}
    for label, runs in results.items():
        summary[label] = {k: med(r[k] for r in runs) for k in runs[0]}
        row = summary[label]
        print(f"{label}: {row['msg_per_s']:.0f} msg/s (per round: "
              f"{', '.join('%.0f' % r['msg_per_s'] for r in runs)}), volley CPU "
              f"{row['volley_cpu_us']:.0f} us/msg, {row['commits_per_msg']:.2f} commits/msg")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
