#!/usr/bin/env python3
"""The relay loaded by a pipelining client and by one that waits for every reply: `volley-bench
blast` (RFC 2920 pipelining: the envelope in one write, each body with the next envelope) against
Postfix's `smtp-source -d` (one round trip per command: MAIL, RCPT, DATA, the body, as many real
injectors behave). Issue 16 asks what a command and a wake-up cost, not only a message.

Each run starts a fresh `volley serve` (`cores = 1`: its executor on CPU 0, spool durable) relaying
`d0.test` through `[routes]` to a `volley-bench sink` (CPU 1), then sends the same number of
messages of 1 KiB over 50 connections with one client pinned to CPU 1, and waits until the sink has
them all. Per run it prints:

- msg/s end to end: messages / seconds from the client's start to the last delivery;
- Volley's CPU time per message: utime + stime of the volley process (every thread) from
  /proc/PID/stat, as scripts/bench-cpu-per-message.sh takes it;
- the client's own CPU time per message (its rusage);
- with `perf` (linux-perf), counted over the run for every thread of the volley process: context
  switches, syscalls, recvfrom and sendto calls, io_uring_enter calls and io_uring requests
  submitted, per message. Without perf: the context switches of the threads alive at the end
  (/proc/PID/task/*/status), which misses io_uring workers that exited during the run.

Runs alternate the clients (blast smtp-source, smtp-source blast, ...); with two --volley binaries
every round runs both, alternating, for an A/B of an engine change. At the end: medians per binary
and client, and a JSON summary line.

    python3 scripts/bench-clients.py                            # 3 rounds, 20 000 messages
    python3 scripts/bench-clients.py --rounds 5 --messages 30000
    python3 scripts/bench-clients.py --volley /tmp/volley-old --volley target/release/volley
    python3 scripts/bench-clients.py --clients smtp-source --perf-record target/bench/clients-perf

`--perf-record DIR` also writes `perf record -g` of the volley process for every run
(DIR/<binary>-<client>-<round>.data): `perf report -i FILE --no-children` then says where the time
went. smtp-source comes from Debian's `postfix` package (`apt-get install -y postfix`; the Postfix
service itself is never started).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import GENERATOR_CPU, ROOT, Relay, bin_dir

BIN = bin_dir()
CLIENTS = ("blast", "smtp-source")
# Counted per run with `perf stat` when perf is there: (event, label in the output).
PERF_EVENTS = [
    ("context-switches", "cs"),
    ("raw_syscalls:sys_enter", "syscalls"),
    ("syscalls:sys_enter_recvfrom", "recvfrom"),
    ("syscalls:sys_enter_sendto", "sendto"),
    ("syscalls:sys_enter_io_uring_enter", "uring_enter"),
    ("io_uring:io_uring_submit_req", "uring_req"),
]


def perf_events() -> list[tuple[str, str]]:
    """The PERF_EVENTS this machine's perf can count (tracepoints need root or perf_event_paranoid)."""
    if not shutil.which("perf"):
        return []
    usable = []
    for event, label in PERF_EVENTS:
        probe = subprocess.run(["perf", "stat", "-x,", "-e", event, "--", "true"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and "<not supported>" not in probe.stderr:
            usable.append((event, label))
    return usable


def thread_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of the threads of `pid` alive now."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class PerfStat:
    """`perf stat` attached to every thread of a process until `stop`."""

    def __init__(self, pid: int, events: list[tuple[str, str]], out: Path) -> None:
        self.events, self.out = events, out
        self.proc = subprocess.Popen(
            ["perf", "stat", "-x,", "-o", str(out), "-p", str(pid),
             "-e", ",".join(e for e, _ in events)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # attached before the load starts

    def stop(self) -> dict[str, float]:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        counts: dict[str, float] = {}
        for line in self.out.read_text().splitlines():
            fields = line.split(",")
            if len(fields) < 3 or line.startswith("#"):
                continue
            for event, label in self.events:
                if fields[2] == event:
                    try:
                        counts[label] = float(fields[0])
                    except ValueError:
                        pass
        return counts


def start_client(client: str, relay: Relay, messages: int, connections: int, size: int, stderr
                 ) -> subprocess.Popen:
    if client == "blast":
        cmd = [str(relay.bins / "volley-bench"), "blast", "--to", f"127.0.0.1:{relay.smtp}",
               "--cpus", GENERATOR_CPU, "--progress-interval-s", "0", "--json",
               "--messages", str(messages), "--size", str(size), "--connections", str(connections)]
    else:
        # -d: the next message on the same connection; -l: the body's length (smtp-source adds
        # its From:, To:, Date:, Message-Id: headers, about 150 bytes).
        cmd = ["taskset", "-c", GENERATOR_CPU, "smtp-source", "-d", "-s", str(connections),
               "-m", str(messages), "-l", str(size), "-f", "blast@volley-bench.test",
               "-t", "user@d0.test", f"127.0.0.1:{relay.smtp}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr)


def one_run(volley: Path, client: str, work: Path, args: argparse.Namespace,
            events: list[tuple[str, str]], record: Path | None) -> dict:
    relay = Relay(volley, work, cores=1, fsync=True)
    try:
        pid = relay.volley.pid
        perf = PerfStat(pid, events, work / "perf-stat.csv") if events else None
        recorder = None
        if record is not None:
            recorder = subprocess.Popen(
                ["perf", "record", "-g", "-o", str(record), "-p", str(pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
        switches0 = thread_switches(pid)
        volley0, sink0 = relay.volley_cpu(), relay.sink_cpu()
        start = time.monotonic()
        errfile = tempfile.TemporaryFile()
        proc = start_client(client, relay, args.messages, args.connections, args.size, errfile)
        elapsed = relay.wait_delivered(args.messages, start)
        out = proc.stdout.read() if proc.stdout else b""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        client_cpu = usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            errfile.seek(0)
            sys.exit(f"{client} failed ({proc.returncode}): {errfile.read().decode(errors='replace')[-2000:]}")
        volley_cpu = relay.volley_cpu() - volley0
        sink_cpu = relay.sink_cpu() - sink0
        switches = thread_switches(pid) - switches0
        counts = perf.stop() if perf else {}
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(timeout=60)
        if client == "blast":
            report = json.loads(out)
            if report["messages_accepted"] != args.messages:
                sys.exit(f"blast: only {report['messages_accepted']} accepted")
    finally:
        relay.stop()
    n = args.messages
    row = {
        "msg_per_s": n / elapsed,
        "volley_cpu_us": volley_cpu * 1e6 / n,
        "client_cpu_us": client_cpu * 1e6 / n,
        "sink_cpu_us": sink_cpu * 1e6 / n,
        "threads_cs_per_msg": switches / n,
    }
    for label, value in counts.items():
        row[f"{label}_per_msg"] = value / n
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volley", action="append", type=Path,
                    help="volley binary (repeat for an A/B; default target/release/volley)")
    ap.add_argument("--clients", default=",".join(CLIENTS), help="blast,smtp-source or one of them")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--no-perf", action="store_true", help="do not count with perf stat")
    ap.add_argument("--perf-record", type=Path, help="directory for perf record -g of every run")
    ap.add_argument("--dir", type=Path, default=ROOT / "target" / "bench",
                    help="where the spools go (the disk measured)")
    args = ap.parse_args()
    clients = [c for c in args.clients.split(",") if c]
    for c in clients:
        if c not in CLIENTS:
            sys.exit(f"unknown client {c!r} (known: {', '.join(CLIENTS)})")
    if "smtp-source" in clients and not shutil.which("smtp-source"):
        sys.exit("smtp-source not found: apt-get install -y postfix")
    volleys = [v.resolve() for v in (args.volley or [BIN / "volley"])]
    events = [] if args.no_perf else perf_events()
    if args.perf_record:
        args.perf_record.mkdir(parents=True, exist_ok=True)
    args.dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="clients-", dir=args.dir))
    loadavg = lambda: Path("/proc/loadavg").read_text().split()[0]  # noqa: E731
    print(f"== {os.cpu_count()} CPUs, load average {loadavg()}; {args.messages} messages of "
          f"{args.size} B over {args.connections} connections; counting "
          f"{', '.join(label for _, label in events) or 'nothing with perf'}", flush=True)
    runs = [(v, c) for v in range(len(volleys)) for c in clients]
    results: dict[tuple[int, str], list[dict]] = {}
    seq = 0
    for rnd in range(args.rounds):
        order = runs if rnd % 2 == 0 else list(reversed(runs))
        for v, client in order:
            seq += 1
            record = None
            if args.perf_record:
                record = args.perf_record / f"{v}-{client}-{rnd + 1}.data"
            r = one_run(volleys[v], client, base / f"run-{seq}", args, events, record)
            results.setdefault((v, client), []).append(r)
            label = f"{'AB'[v]} " if len(volleys) > 1 else ""
            extra = "".join(f", {k.removesuffix('_per_msg')} {r[k]:.2f}"
                            for k in r if k.endswith("_per_msg") and k != "threads_cs_per_msg")
            print(f"-- round {rnd + 1} {label}{client}: {r['msg_per_s']:.0f} msg/s, volley CPU "
                  f"{r['volley_cpu_us']:.0f} us/msg, client {r['client_cpu_us']:.0f} us/msg, sink "
                  f"{r['sink_cpu_us']:.0f} us/msg; per message{extra} (load average {loadavg()})",
                  flush=True)
    shutil.rmtree(base, ignore_errors=True)
    print("== medians")
    summary = {"messages": args.messages, "size": args.size, "connections": args.connections,
               "volleys": [str(v) for v in volleys], "runs": []}
    for (v, client), rs in sorted(results.items()):
        row = {"volley": str(volleys[v]), "client": client,
               **{k: statistics.median(r[k] for r in rs) for k in rs[0]},
               "msg_per_s_runs": [round(r["msg_per_s"]) for r in rs],
               "volley_cpu_us_runs": [round(r["volley_cpu_us"]) for r in rs]}
        summary["runs"].append(row)
        label = f"{'AB'[v]} {volleys[v]} " if len(volleys) > 1 else ""
        print(f"{label}{client}: {row['msg_per_s']:.0f} msg/s (runs {row['msg_per_s_runs']}), volley CPU "
              f"{row['volley_cpu_us']:.0f} us/msg (runs {row['volley_cpu_us_runs']}), context switches "
              f"{row.get('cs_per_msg', row['threads_cs_per_msg']):.2f}/msg")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
