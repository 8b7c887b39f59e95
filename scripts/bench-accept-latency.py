#!/usr/bin/env python3
"""Accept latency of one core (end of DATA to the 250, group commit and fdatasync included) at 25 %
and 50 % of its full load, with the fdatasync latency of the same disk printed beside it as the
floor (issue 16's goal: p99 <= 2 ms at 25 % and <= 5 ms at 50 %).

Each run starts a fresh `volley serve` (`cores = 1`: its executor on CPU 0, spool durable under
--dir), a `volley-bench sink` (CPU 1) it relays to, and `volley-bench blast` (CPU 1, 50 pipelining
connections, 1 KiB) paced with `--rate`. The full load is measured once per variant first (blast
unpaced), unless --full-rate gives it; the paced rates are fractions of the first variant's figure,
so every variant of an A/B gets the same load. Every round measures `volley-fsync-bench` too (4 KiB
pwrite + fdatasync in a loop on CPU 0, in the same directory: from a plain thread, and through
io_uring from a glommio executor as the spool does), so floor and latency come from the same
minutes. Rounds alternate the variants (A B, B A, ...). blast spreads its connections so messages
arrive evenly spaced; `--variant bursts=--rate-bursts` adds a variant where all 50 send at once
instead (how `scripts/bench.sh` measured before 2026-12-02).

Beside each paced run, `volley-stall-probe` (a SCHED_FIFO thread on CPU 0, Volley's, and one on
CPU 1, the load generator's) records how often and how long either CPU stopped running anything of
this machine's (on a VM: the hypervisor's stalls), and prints the p99 those stalls alone impose on
evenly arriving messages: from CPU 0's stalls (Volley's work waits for them) and from the times
either CPU was stalled (the client's stalls delay its sends and its reading of replies too, so the
truth lies between the two).

    python3 scripts/bench-accept-latency.py                        # target/release/volley, 3 rounds
    python3 scripts/bench-accept-latency.py --volley /tmp/volley-old --volley target/release/volley
    python3 scripts/bench-accept-latency.py --variant bursts=--rate-bursts --rounds 5
    python3 scripts/bench-accept-latency.py --loads 25,50 --messages 8000 --rounds 5
    python3 scripts/bench-accept-latency.py --setting-variant eager=spool.lazy_state_sync_ms=0

A variant is a binary (`--volley`, repeatable; default target/release/volley) or `LABEL=ARGS`
(`--variant`, repeatable): the first binary with ARGS added to the paced blast. Per run it prints
blast's latency (client side: includes the client's own wake-ups) and the daemon's own
`volley_accept_latency_seconds` histogram (server side: from the end of the body to the message
being routed, the 250 not yet written), as the share of messages within 2 ms and 5 ms, and the
daemon's CPU time per message. At the end: medians per variant and load, and a JSON summary line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import ROOT, Relay, bin_dir, parse_setting_variant, share_within

BIN = bin_dir()
GOALS_MS = {25.0: 2.0, 50.0: 5.0}


@dataclass
class Variant:
    label: str
    volley: Path
    blast_extra: list[str] = field(default_factory=list)
    settings: dict[str, list[str]] = field(default_factory=dict)


def fsync_floor(directory: Path, count: int, via: str) -> dict:
    """`volley-fsync-bench` on CPU 0 (where Volley's executor runs): 4 KiB pwrite + fdatasync."""
    out = subprocess.run(
        ["taskset", "-c", "0", BIN / "volley-fsync-bench", "--dir", directory, "--count", str(count),
         "--via", via],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


class StallProbe:
    """`volley-stall-probe` on CPU 0 (Volley) and CPU 1 (blast, sink) while a paced run goes: the
    stalls that no code in this machine causes (a real-time thread's wake-ups made late: on a VM,
    the hypervisor running something else), and the latency they alone impose on evenly arriving
    messages (from the times when either CPU was stalled)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([BIN / "volley-stall-probe", "--cpus", "0,1"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def finish(self) -> dict:
        out, _ = self.proc.communicate(timeout=30)  # closing stdin stops it
        return json.loads(out)


def one_run(v: Variant, work: Path, extra: str, messages: int, rate: float | None) -> dict:
    relay = Relay(v.volley, work, extra=extra, settings=v.settings)
    probe = None
    try:
        cpu0 = relay.volley_cpu()
        args = ["--messages", str(messages), "--size", "1024", "--connections", "50"]
        if rate is not None:
            args += ["--rate", f"{rate:.0f}", *v.blast_extra]
            probe = StallProbe()
        report = relay.blast(args).finish().report
        stalls = probe.finish() if probe else None
        probe = None
        cpu = relay.volley_cpu() - cpu0
        time.sleep(0.2)  # the commit counter is published every 100 ms
        commits = relay.metric("volley_spool_commits_total")
        buckets = relay.accept_histogram()
    finally:
        if probe:
            probe.proc.kill()
        relay.stop()
    lat = report["latency_us"]["end_of_data_reply"]
    host = {}
    if stalls:
        cpu0, cpu1 = stalls["cpus"]
        host = {"host_stalls": stalls["stalls"], "host_stalled_share": stalls["stalled_ms"] / 1000 / stalls["seconds"],
                "host_cpu0_stalls": cpu0["stalls"], "host_cpu1_stalls": cpu1["stalls"],
                "host_cpu0_p99_floor_ms": cpu0["p99_floor_ms"], "host_cpu0_past_2ms": cpu0["share_past_2ms"],
                "host_max_stall_ms": stalls["max_stall_ms"], "host_past_2ms": stalls["share_past_2ms"],
                "host_past_5ms": stalls["share_past_5ms"], "host_p99_floor_ms": stalls["p99_floor_ms"],
                "host_realtime": stalls["realtime"]}
    return {**host,
        "accepted_per_s": report["accepted_per_s"],
        "accepted": report["messages_accepted"],
        "p50_ms": lat["p50"] / 1000,
        "p99_ms": lat["p99"] / 1000,
        "p999_ms": lat["p999"] / 1000,
        "server_within_2ms": share_within(buckets, 0.002),
        "server_within_5ms": share_within(buckets, 0.005),
        "volley_cpu_us_per_msg": cpu * 1e6 / max(1, report["messages_accepted"]),
        # Reception and delivered-state records both commit: at low load each its own fsync.
        "commits_per_msg": commits / max(1, report["messages_accepted"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volley", action="append", type=Path,
                    help="volley binary (repeat for an A/B; default target/release/volley)")
    ap.add_argument("--variant", action="append", default=[],
                    help="LABEL=ARGS: the first binary with ARGS added to the paced blast")
    ap.add_argument("--setting-variant", action="append", default=[],
                    help="LABEL=TABLE.KEY=VALUE[,TABLE.KEY=VALUE...]: the first binary with these "
                         "[server] or [spool] settings, e.g. eager=spool.lazy_state_sync_ms=0")
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
    args = ap.parse_args()
    variants = [Variant(v.name, v.resolve()) for v in (args.volley or [BIN / "volley"])]
    for spec in args.variant:
        label, _, blast_args = spec.partition("=")
        variants.append(Variant(label, variants[0].volley, shlex.split(blast_args)))
    for spec in args.setting_variant:
        try:
            label, settings = parse_setting_variant(spec)
        except ValueError as e:
            ap.error(f"--setting-variant {e}")
        variants.append(Variant(label, variants[0].volley, settings=settings))
    loads = [float(x) for x in args.loads.split(",")]
    extra = args.config_extra.read_text() if args.config_extra else ""
    args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="accept-latency-", dir=args.dir))
    seq = 0

    def work() -> Path:
        nonlocal seq
        seq += 1
        return base / f"run-{seq}"

    def name(i: int) -> str:
        return f"{'ABCDEFGH'[i]} {variants[i].label}" if len(variants) > 1 else variants[i].label

    print(f"== machine: {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs, "
          f"load average {Path('/proc/loadavg').read_text().split()[0]}")
    full_rate = args.full_rate
    if full_rate is None:
        fulls = []
        for i, v in enumerate(variants):
            r = one_run(v, work(), extra, args.full_messages, None)
            fulls.append(r["accepted_per_s"])
            print(f"-- {name(i)}: full load {r['accepted_per_s']:.0f} msg/s (p50 {r['p50_ms']:.2f} ms, "
                  f"p99 {r['p99_ms']:.2f} ms)", flush=True)
        full_rate = fulls[0]
    print(f"== full load taken as {full_rate:.0f} msg/s", flush=True)
    results: dict[tuple[int, float], list[dict]] = {}
    floors, urings = [], []
    for rnd in range(args.rounds):
        order = list(range(len(variants)))
        if rnd % 2:
            order.reverse()
        floor = fsync_floor(args.dir, args.fsync_count, "syscall")
        uring = fsync_floor(args.dir, args.fsync_count, "uring")
        floors.append(floor)
        urings.append(uring)
        print(f"== round {rnd + 1}: fdatasync of 4 KiB on this disk: p50 {floor['p50_us'] / 1000:.2f} ms, "
              f"p99 {floor['p99_us'] / 1000:.2f} ms (through io_uring from a glommio executor: p50 "
              f"{uring['p50_us'] / 1000:.2f} ms, p99 {uring['p99_us'] / 1000:.2f} ms); load average "
              f"{Path('/proc/loadavg').read_text().split()[0]}", flush=True)
        for load in loads:
            for i in order:
                rate = full_rate * load / 100
                messages = int(args.messages * load / 25)
                r = one_run(variants[i], work(), extra, messages, rate)
                results.setdefault((i, load), []).append(r)
                print(f"-- {name(i)} {load:.0f} % (--rate {rate:.0f}): {r['accepted_per_s']:.0f} msg/s, "
                      f"accept latency p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms p99.9 "
                      f"{r['p999_ms']:.2f} ms; server side {r['server_within_2ms']:.1%} within 2 ms, "
                      f"{r['server_within_5ms']:.1%} within 5 ms; volley CPU "
                      f"{r['volley_cpu_us_per_msg']:.0f} us/msg, {r['commits_per_msg']:.2f} commits/msg",
                      flush=True)
                if "host_stalls" in r:
                    print(f"   CPU 0 or 1 stalled (hypervisor) {r['host_stalls']} times (CPU 0 {r['host_cpu0_stalls']}, "
                          f"CPU 1 {r['host_cpu1_stalls']}), {r['host_stalled_share']:.1%} of "
                          f"the run, longest {r['host_max_stall_ms']:.1f} ms: alone they make "
                          f"{r['host_past_2ms']:.1%} of messages wait past 2 ms, {r['host_past_5ms']:.1%} past "
                          f"5 ms, a p99 floor of {r['host_p99_floor_ms']:.2f} ms (CPU 0's alone: "
                          f"{r['host_cpu0_p99_floor_ms']:.2f} ms, {r['host_cpu0_past_2ms']:.1%} past 2 ms)"
                          + ("" if r["host_realtime"] else " (probe not real-time: includes this kernel's delays)"),
                          flush=True)
    shutil.rmtree(base, ignore_errors=True)
    print("== medians over rounds")
    med = statistics.median
    summary = {"full_rate": full_rate,
               "fsync_p50_ms": med(f["p50_us"] for f in floors) / 1000,
               "fsync_p99_ms": med(f["p99_us"] for f in floors) / 1000,
               "uring_fsync_p50_ms": med(f["p50_us"] for f in urings) / 1000,
               "uring_fsync_p99_ms": med(f["p99_us"] for f in urings) / 1000, "runs": []}
    print(f"fdatasync floor: p50 {summary['fsync_p50_ms']:.2f} ms, p99 {summary['fsync_p99_ms']:.2f} ms "
          f"(io_uring: p50 {summary['uring_fsync_p50_ms']:.2f} ms, p99 {summary['uring_fsync_p99_ms']:.2f} ms)")
    for (i, load), rs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row = {"variant": name(i), "volley": str(variants[i].volley), "blast_extra": variants[i].blast_extra,
               "load_percent": load, **{k: med(r[k] for r in rs) for k in rs[0]}}
        summary["runs"].append(row)
        goal = GOALS_MS.get(load)
        verdict = f" (goal p99 <= {goal:g} ms: {'met' if row['p99_ms'] <= goal else 'not met'})" if goal else ""
        print(f"{name(i)} {load:.0f} %: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms{verdict} "
              f"(per round: {', '.join('%.2f' % r['p99_ms'] for r in rs)}), server within 2 ms "
              f"{row['server_within_2ms']:.1%}, within 5 ms {row['server_within_5ms']:.1%}, volley CPU "
              f"{row['volley_cpu_us_per_msg']:.0f} us/msg, {row['commits_per_msg']:.2f} commits/msg"
              + (f"; host stalls alone: p99 floor {row['host_cpu0_p99_floor_ms']:.2f} ms from CPU 0's, "
                 f"{row['host_p99_floor_ms']:.2f} ms from either CPU's ({row['host_cpu0_past_2ms']:.1%} and "
                 f"{row['host_past_2ms']:.1%} past 2 ms)" if "host_p99_floor_ms" in row else ""))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
