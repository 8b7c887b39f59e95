#!/usr/bin/env python3
"""Crash test for Volley: SIGKILL the daemon at random moments under concurrent SMTP load, restart it
on the same spool, and prove that every message answered 250 reaches the sink at least once.

What it does:
  1. starts `volley-bench sink` (never killed; it logs one JSON line per accepted message),
  2. starts `volley serve` with a generated config routing d0.test..d<N-1>.test to the sink,
  3. runs --clients concurrent SMTP client threads; every message has a unique Message-ID and 1 to
     --max-recipients recipients; a Message-ID is "acknowledged" only when its end of DATA got 250,
  4. kills volley with SIGKILL after a random 0.2-2 s (counted from its start, so some kills land
     during recovery), restarts it on the same spool, and repeats for --rounds rounds,
  5. stops the clients, restarts volley one last time and waits for the sink to have every
     acknowledged (Message-ID, recipient) pair, then reports.

Exit status: 0 when nothing acknowledged was lost, 1 on a loss, 2 when the harness itself failed
(binaries missing, a process would not start).

Allowed and reported: duplicates (delivered more than once: the daemon was killed between the
sink's 250 and the durable "delivered" record) and deliveries never acknowledged (killed after the
spool commit but before the client read the 250).

Standard library only.
"""

import argparse
import json
import os
import random
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, timeout_s):
    """True once 127.0.0.1:port accepts a connection; False if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def write_config(path, args, work, ports, spool_dir=None, fsync=True):
    """Writes volley's config; the spool goes to `spool_dir` (default `<work>/spool`)."""
    spool_dir = spool_dir or f"{work}/spool"
    routes = "\n".join(
        f'"d{j}.test" = "127.0.0.1:{ports["sink"]}"' for j in range(args.domains)
    )
    text = f"""[server]
hostname = "mta.test"
cores = {args.cores}
spool_dir = "{spool_dir}"
accounting_log = "{work}/acct.jsonl"

[spool]
segment_bytes = {args.segment_bytes}
fsync = {"true" if fsync else "false"}
max_spool_bytes = {max(args.segment_bytes * 64, 1 << 30)}
{"".join(line + chr(10) for line in args.spool_setting)}
[[listener]]
address = "127.0.0.1:{ports["smtp"]}"
relay_networks = ["127.0.0.0/8"]

[[vmta]]
name = "v1"
source_ip = "127.0.0.2"
ehlo_hostname = "v1.test"

[[pool]]
name = "default"
vmtas = ["v1"]

[[domain]]
match = "*"
retry_intervals = ["1s"]

[routes]
{routes}

[api]
address = "127.0.0.1:{ports["api"]}"
"""
    with open(path, "w") as f:
        f.write(text)


REUSE_LINE = "made out of the finished file of segment"


def segments_reused(work):
    """Segments volley made out of finished files (from its logs): proof the run reused them."""
    count = 0
    for name in sorted(os.listdir(work)):
        if name.startswith("volley-") and name.endswith(".log"):
            with open(os.path.join(work, name), errors="replace") as f:
                count += sum(REUSE_LINE in line for line in f)
    return count


def reuse_expected(args):
    """False when the run turned reuse off (`--spool-setting free_segment_files=0`)."""
    return not any(s.replace(" ", "") == "free_segment_files=0" for s in args.spool_setting)


class Ledger:
    """What the clients were told: acknowledged Message-IDs with their recipients."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acked = {}  # message_id -> tuple of recipients
        self.attempted = 0
        self.errors = Counter()

    def ack(self, message_id, recipients):
        with self.lock:
            self.acked[message_id] = tuple(recipients)

    def attempt(self):
        with self.lock:
            self.attempted += 1

    def error(self, kind):
        with self.lock:
            self.errors[kind] += 1


def client_loop(index, args, port, run_id, ledger, stop, rng_seed):
    rng = random.Random(rng_seed)
    seq = 0
    body_pad = "x" * max(0, args.size - 300)
    smtp = None
    while not stop.is_set():
        try:
            if smtp is None:
                smtp = smtplib.SMTP("127.0.0.1", port, local_hostname="crash.test", timeout=5)
                smtp.ehlo("crash.test")
            seq += 1
            message_id = f"<crash-{run_id}-{index}-{seq}@crash.test>"
            count = rng.randint(1, args.max_recipients)
            recipients = [
                f"user{index}.{seq}.{r}@d{rng.randrange(args.domains)}.test"
                for r in range(count)
            ]
            message = (
                f"From: <crash@crash.test>\r\nTo: <{recipients[0]}>\r\n"
                f"Subject: crash test {index}.{seq}\r\nMessage-ID: {message_id}\r\n\r\n"
                f"client {index} message {seq}\r\n{body_pad}\r\n"
            )
            ledger.attempt()
            code, _ = smtp.mail("crash@crash.test")
            if code != 250:
                ledger.error(f"MAIL {code}")
                smtp.rset()
                continue
            for r in recipients:
                code, _ = smtp.rcpt(r)
                if code != 250:
                    raise smtplib.SMTPException(f"RCPT {code}")
            code, _ = smtp.data(message.encode())
            if code == 250:
                ledger.ack(message_id, recipients)
            else:
                ledger.error(f"DATA {code}")
        except (OSError, smtplib.SMTPException) as e:
            # Killed daemon, refused connection, timeout: the message (if any) is unacknowledged.
            ledger.error(type(e).__name__)
            if smtp is not None:
                try:
                    smtp.close()
                except OSError:
                    pass
            smtp = None
            stop.wait(0.05)
    if smtp is not None:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            pass


def read_sink_log(path):
    """Counter of (message_id, recipient) -> deliveries, and of message_id -> deliveries."""
    pairs = Counter()
    messages = Counter()
    if not os.path.exists(path):
        return pairs, messages
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = json.loads(raw)
            except ValueError:
                continue  # a line being appended right now
            mid = line.get("message_id")
            if not mid:
                continue
            messages[mid] += 1
            for r in line.get("recipients", []):
                pairs[(mid, r.lower())] += 1
    return pairs, messages


class Daemon:
    def __init__(self, args, config_path, work, smtp_port):
        self.args = args
        self.config_path = config_path
        self.work = work
        self.smtp_port = smtp_port
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        log = open(os.path.join(self.work, f"volley-{self.starts:03}.log"), "wb")
        self.proc = subprocess.Popen(
            [self.args.volley, "serve", "--config", self.config_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        log.close()
        return self.proc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()



def add_load_arguments(p, root, settle_s):
    """The arguments the crash test and the power-loss test share: binaries, load, volley's shape."""
    p.add_argument("--volley", default=os.path.join(root, "target/debug/volley"))
    p.add_argument("--bench", default=os.path.join(root, "target/debug/volley-bench"))
    p.add_argument("--clients", type=int, default=12, help="concurrent SMTP client threads")
    p.add_argument("--domains", type=int, default=3, help="d0.test.. all routed to the sink")
    p.add_argument("--max-recipients", type=int, default=3)
    p.add_argument("--size", type=int, default=1024, help="approximate message bytes")
    p.add_argument("--cores", type=int, default=2, help="volley cores")
    p.add_argument("--segment-bytes", type=int, default=1 << 20,
                   help="the smallest allowed: rollover, reclaim and reuse of files happen during the run")
    p.add_argument("--spool-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="a line added to volley's [spool] table, e.g. 'sync_on = \"blocking-thread\"'")
    p.add_argument("--start-timeout-s", type=float, default=20.0)
    p.add_argument("--drain-timeout-s", type=float, default=60.0)
    p.add_argument("--settle-s", type=float, default=settle_s,
                   help="after everything arrived, wait this long for late duplicates")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workdir", default=None, help="keep files here (default: temp, removed on PASS)")


def start_sink(args, work, port, sink_log):
    """The sink (never killed), logging one JSON line per message; returns it and its output file."""
    sink_out = open(os.path.join(work, "sink.out"), "wb")
    sink = subprocess.Popen(
        [args.bench, "sink", "--listen", f"127.0.0.1:{port}", "--log", sink_log,
         "--cores", "1", "--stats-interval-s", "0"],
        stdout=sink_out, stderr=subprocess.STDOUT,
    )
    return sink, sink_out


def start_clients(args, port, run_id, ledger, stop, rng):
    """--clients SMTP client threads, started, each with its own seed."""
    threads = [
        threading.Thread(
            target=client_loop,
            args=(i, args, port, run_id, ledger, stop, rng.randrange(1 << 32)),
            daemon=True,
        )
        for i in range(args.clients)
    ]
    for t in threads:
        t.start()
    return threads

def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10, help="kill/restart rounds")
    p.add_argument("--kill-min-s", type=float, default=0.2)
    p.add_argument("--kill-max-s", type=float, default=2.0)
    add_load_arguments(p, root, settle_s=3.0)
    args = p.parse_args()

    for binary in (args.volley, args.bench):
        if not os.access(binary, os.X_OK):
            print(f"crash_test: {binary} not found; build with `cargo build -p volley-engine -p volley-bench`",
                  file=sys.stderr)
            return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    work = args.workdir or tempfile.mkdtemp(prefix="volley-crash-")
    os.makedirs(work, exist_ok=True)
    ports = {"smtp": free_port(), "sink": free_port(), "api": free_port()}
    config_path = os.path.join(work, "volley.toml")
    write_config(config_path, args, work, ports)
    sink_log = os.path.join(work, "sink.jsonl")
    run_id = f"{seed:08x}"
    print(f"crash_test: seed {seed}, workdir {work}, {args.rounds} rounds, {args.clients} clients")

    sink, sink_out = start_sink(args, work, ports["sink"], sink_log)
    daemon = Daemon(args, config_path, work, ports["smtp"])
    ledger = Ledger()
    stop = threading.Event()
    threads = []
    status = 2
    try:
        if not wait_for_port(ports["sink"], sink, 10):
            print("crash_test: the sink did not start (see sink.out)", file=sys.stderr)
            return 2
        threads = start_clients(args, ports["smtp"], run_id, ledger, stop, rng)
        started = time.monotonic()
        for round_no in range(1, args.rounds + 1):
            proc = daemon.start()
            delay = rng.uniform(args.kill_min_s, args.kill_max_s)
            time.sleep(delay)
            if proc.poll() is not None:
                print(f"crash_test: volley exited by itself in round {round_no} "
                      f"(status {proc.returncode}; see {work}/volley-{daemon.starts:03}.log)",
                      file=sys.stderr)
                return 2
            daemon.kill()
            with ledger.lock:
                acked = len(ledger.acked)
            print(f"  round {round_no:2}: killed after {delay:.2f} s, {acked} acknowledged so far")
        stop.set()
        for t in threads:
            t.join(timeout=10)
        load_s = time.monotonic() - started

        # Final start: let recovery and delivery finish.
        proc = daemon.start()
        if not wait_for_port(ports["smtp"], proc, args.start_timeout_s):
            print(f"crash_test: volley did not come back for the drain "
                  f"(see {work}/volley-{daemon.starts:03}.log)", file=sys.stderr)
            return 2
        wanted = {(mid, r.lower()) for mid, rs in ledger.acked.items() for r in rs}
        deadline = time.monotonic() + args.drain_timeout_s
        while True:
            pairs, messages = read_sink_log(sink_log)
            missing = wanted - set(pairs)
            if not missing or time.monotonic() > deadline or proc.poll() is not None:
                break
            time.sleep(0.25)
        if not missing:
            time.sleep(args.settle_s)
            pairs, messages = read_sink_log(sink_log)
            missing = wanted - set(pairs)
        drain_s = time.monotonic() - started - load_s
        daemon.stop()

        acked_ids = set(ledger.acked)
        delivered_ids = set(messages)
        missing_ids = sorted({mid for mid, _ in missing})
        dup_pairs = {k: n for k, n in pairs.items() if n > 1}
        dup_ids = sorted({mid for mid, _ in dup_pairs})
        unacked = sorted(mid for mid in delivered_ids - acked_ids if mid.startswith(f"<crash-{run_id}-"))
        print(f"crash_test: {args.rounds} rounds in {load_s:.1f} s, drain {drain_s:.1f} s")
        print(f"  attempted                 {ledger.attempted}")
        print(f"  acknowledged (250)        {len(acked_ids)} messages, {len(wanted)} recipients")
        print(f"  delivered to the sink     {len(delivered_ids)} messages, {len(pairs)} recipients")
        print(f"  lost (acked, never seen)  {len(missing_ids)} messages, {len(missing)} recipients")
        print(f"  duplicates                {len(dup_ids)} messages, {len(dup_pairs)} recipients "
              f"({sum(n - 1 for n in dup_pairs.values())} extra deliveries)")
        print(f"  delivered, never acked    {len(unacked)} messages")
        print(f"  client errors             {dict(ledger.errors.most_common(6))}")
        reused = segments_reused(work)
        print(f"  segments from free files  {reused}")
        if missing_ids:
            print("FAIL: acknowledged messages never reached the sink:")
            for mid in missing_ids[:50]:
                rcpts = sorted(r for m, r in missing if m == mid)
                print(f"  {mid} {' '.join(rcpts)}")
            if len(missing_ids) > 50:
                print(f"  ... and {len(missing_ids) - 50} more")
            print(f"  files kept in {work}")
            status = 1
        elif not acked_ids:
            print("FAIL: no message was acknowledged at all; the test proved nothing")
            status = 2
        elif reused == 0 and reuse_expected(args):
            print("FAIL: no segment was made out of a finished file; the run did not test reuse")
            status = 2
        else:
            print("PASS: every acknowledged message reached the sink")
            status = 0
        return status
    finally:
        stop.set()
        daemon.kill()
        sink.send_signal(signal.SIGTERM)
        try:
            sink.wait(timeout=5)
        except subprocess.TimeoutExpired:
            sink.kill()
            sink.wait()
        sink_out.close()
        if status == 0 and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        elif status != 0:
            print(f"crash_test: files kept in {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
