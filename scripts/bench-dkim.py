#!/usr/bin/env python3
"""What DKIM signing costs the relay, and whether an RSA-signing customer slows other mail on the
same core (issue 16).

1. Throughput (`--part throughput`): the same relay run (1 KiB, 50 connections, as fast as blast
   can; Volley with --cores executors, spool durable; sink on CPU 0, blast on CPU 1, as
   `volley-bench relay` places them) with signing off, with an RSA-2048 `[[dkim]]` entry and with an
   Ed25519 one for the From: domain of every message. Rate = messages / seconds from the start of
   blast to the last delivery. The runs check `volley_dkim_signed_total` (every message signed, or
   none). The keys are the fixed test keys of engine/tests/data.
2. Latency (`--part latency`): one core (`cores = 1`, CPU 0; sink and both blasts on CPU 1). The
   measured blast sends unsigned mail (its From: domain has no `[[dkim]]` entry) at --load % of the
   core's full unsigned rate; meanwhile a second blast (--background-connections) sends
   --background-rate messages/s that are (a) absent, (b) unsigned, or (c) RSA-2048 signed (its From:
   domain has the entry). p50/p99 of the measured blast's end-of-data reply latency, per variant.

Each RSA variant runs twice: with the signing thread free to run on any CPU (the default) and with
`[server] pin_blocking_threads = true` (`rsa-pinned`: on the core's own CPU, as before 2026-12-02).

Rounds alternate the variants' order.

    python3 scripts/bench-dkim.py                          # both parts, 3 rounds
    python3 scripts/bench-dkim.py --part latency --rounds 5 --background-rate 400
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, Relay, bin_dir, relay_run

KEYS = {"rsa": ROOT / "engine/tests/data/dkim-test-rsa2048.pem",
        "ed25519": ROOT / "engine/tests/data/dkim-test-ed25519.pem"}
SIGNED_FROM = "news@signed.test"


def dkim_entry(key: str) -> str:
    return f"""
[[dkim]]
domain = "signed.test"
selector = "bench"
private_key = "{KEYS[key]}"
"""


# `[server] pin_blocking_threads = true`: the signing thread on its core's CPU (before 2026-12-02).
PINNED = {"server": ["pin_blocking_threads = true"]}


def throughput(args, base: Path) -> dict:
    variants = ["off", "rsa", "rsa-pinned", "ed25519"]
    results: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
        for v in order:
            extra = "" if v == "off" else dkim_entry(v.removesuffix("-pinned"))
            relay = Relay(args.volley, base / f"t{rnd}-{v}", cores=args.cores, extra=extra,
                          sink_cpus="0", settings=PINNED if v.endswith("-pinned") else None)
            try:
                r = relay_run(relay, args.messages, ["--from", SIGNED_FROM])
                signed = relay.metric("volley_dkim_signed_total")
            finally:
                relay.stop()
            expected = 0 if v == "off" else args.messages
            if signed != expected:
                raise SystemExit(f"{v}: {signed:.0f} messages signed, expected {expected}")
            results.setdefault(v, []).append(r)
            print(f"-- signing {v}: {r['msg_per_s']:.0f} msg/s end to end, volley CPU "
                  f"{r['volley_cpu_us']:.0f} us/msg ({signed:.0f} signed)", flush=True)
    med = statistics.median
    summary = {v: {k: med(r[k] for r in rs) for k in rs[0]} for v, rs in results.items()}
    print("== throughput, medians")
    for v, row in summary.items():
        print(f"signing {v}: {row['msg_per_s']:.0f} msg/s (per round: "
              f"{', '.join('%.0f' % r['msg_per_s'] for r in results[v])}), "
              f"{row['msg_per_s'] / summary['off']['msg_per_s']:.0%} of unsigned; volley CPU "
              f"{row['volley_cpu_us']:.0f} us/msg")
    return summary


def latency(args, base: Path) -> dict:
    full = args.full_rate
    if full is None:
        relay = Relay(args.volley, base / "full")
        try:
            full = relay.blast(["--messages", "20000", "--size", "1024", "--connections", "50"]
                               ).finish().report["accepted_per_s"]
        finally:
            relay.stop()
    rate = full * args.load / 100
    duration_s = args.latency_messages / rate
    print(f"== latency: unsigned mail at {rate:.0f} msg/s ({args.load:g} % of {full:.0f}), "
          f"{args.latency_messages} messages (~{duration_s:.1f} s); background {args.background_rate:g} "
          f"msg/s over {args.background_connections} connections", flush=True)
    variants = ["none", "unsigned", "rsa", "rsa-pinned"]
    results: dict[str, list[dict]] = {}
    for rnd in range(args.rounds):
        order = variants[rnd % len(variants):] + variants[:rnd % len(variants)]
        for v in order:
            relay = Relay(args.volley, base / f"l{rnd}-{v}", extra=dkim_entry("rsa"),
                          settings=PINNED if v.endswith("-pinned") else None)
            try:
                background = None
                if v != "none":
                    # Starts first and outlasts the measured blast.
                    n = int(args.background_rate * (duration_s + 1.0))
                    background = relay.blast(
                        ["--messages", str(n), "--size", "1024", "--connections",
                         str(args.background_connections), "--rate", f"{args.background_rate:g}",
                         *(["--from", SIGNED_FROM] if v.startswith("rsa") else [])])
                    time.sleep(0.3)
                measured = relay.blast(["--messages", str(args.latency_messages), "--size", "1024",
                                        "--connections", "50", "--rate", f"{rate:.0f}"]).finish()
                if background:
                    background.finish()
                signed = relay.metric("volley_dkim_signed_total")
            finally:
                relay.stop()
            lat = measured.report["latency_us"]["end_of_data_reply"]
            r = {"p50_ms": lat["p50"] / 1000, "p99_ms": lat["p99"] / 1000, "p999_ms": lat["p999"] / 1000,
                 "signed": signed}
            results.setdefault(v, []).append(r)
            print(f"-- background {v}: unsigned mail p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                  f"p99.9 {r['p999_ms']:.2f} ms ({signed:.0f} signed)", flush=True)
    med = statistics.median
    summary = {v: {k: med(r[k] for r in rs) for k in rs[0]} for v, rs in results.items()}
    print("== latency of unsigned mail, medians")
    for v, row in summary.items():
        print(f"background {v}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms (per round: "
              f"{', '.join('%.2f' % r['p99_ms'] for r in results[v])})")
    return {"rate": rate, **summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volley", type=Path, default=bin_dir() / "volley")
    ap.add_argument("--part", choices=["throughput", "latency", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2, help="Volley's executors in the throughput part")
    ap.add_argument("--messages", type=int, default=20000, help="messages of a throughput run")
    ap.add_argument("--load", type=float, default=25, help="%% of full load of the measured blast")
    ap.add_argument("--full-rate", type=float, help="the core's full unsigned rate (else measured)")
    ap.add_argument("--latency-messages", type=int, default=8000)
    ap.add_argument("--background-rate", type=float, default=300)
    ap.add_argument("--background-connections", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=ROOT / "target" / "bench")
    args = ap.parse_args()
    args.volley = args.volley.resolve()
    args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="dkim-", dir=args.dir))
    print(f"== load average {Path('/proc/loadavg').read_text().split()[0]}")
    out = {}
    try:
        if args.part in ("throughput", "both"):
            out["throughput"] = throughput(args, base)
        if args.part in ("latency", "both"):
            out["latency"] = latency(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
