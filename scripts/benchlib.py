"""What the Python benchmark scripts share: a `volley-bench sink` and a `volley serve` relaying to
it in a fresh directory, `volley-bench blast` runs against it, and the CPU time of each process.

Used by bench-accept-latency.py, bench-scaling.py, bench-dkim.py, bench-clients.py and
relay-guard.py (imported from the same directory). Loopback only; every port is picked free.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where the load generator (blast, the sink) runs: the second CPU, away from Volley's first
# executor; the only one on a one-CPU machine.
GENERATOR_CPU = "1" if (os.cpu_count() or 1) > 1 else "0"


def bin_dir(build: str = "release") -> Path:
    return ROOT / "target" / build


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


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class BlastResult:
    report: dict
    cpu_s: float  # blast's own user + system time
    wall_s: float


class Blast:
    """A running `volley-bench blast --json`; `finish` waits and reads its report and rusage."""

    def __init__(self, bins: Path, port: int, args: list[str], cpus: str = GENERATOR_CPU) -> None:
        cmd = [str(bins / "volley-bench"), "blast", "--to", f"127.0.0.1:{port}", "--cpus", cpus,
               "--progress-interval-s", "0", "--json", *args]
        self.started = time.monotonic()
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr)

    def finish(self) -> BlastResult:
        out = self.proc.stdout.read() if self.proc.stdout else b""
        self.stderr.seek(0)
        err = self.stderr.read()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - self.started
        if self.proc.returncode != 0:
            sys.exit(f"blast failed ({self.proc.returncode}): {err.decode(errors='replace')[-2000:]}")
        return BlastResult(json.loads(out), usage.ru_utime + usage.ru_stime, wall)


class Relay:
    """A sink and a Volley relaying `d0.test` to it, in `work` (removed by `stop`)."""

    def __init__(self, volley: Path, work: Path, *, cores: int = 1, extra: str = "",
                 sink_cpus: str = GENERATOR_CPU, bins: Path | None = None, fsync: bool = True,
                 max_messages_per_connection: int = 10000,
                 settings: dict[str, list[str]] | None = None) -> None:
        """`settings`: TOML lines (`key = value`) added to the `server` or `spool` table."""
        self.bins = bins or bin_dir()
        settings = settings or {}
        server_lines = "".join(f"{line}\n" for line in settings.get("server", []))
        spool_lines = "".join(f"{line}\n" for line in settings.get("spool", []))
        self.work = work
        work.mkdir(parents=True)
        self.smtp, self.sink_port, self.api = free_port(), free_port(), free_port()
        (work / "volley.toml").write_text(
            f"""[server]
hostname = "bench.volley.test"
cores = {cores}
spool_dir = "{work / 'spool'}"
{server_lines}[spool]
fsync = {'true' if fsync else 'false'}
{spool_lines}[[listener]]
address = "127.0.0.1:{self.smtp}"
relay_networks = ["127.0.0.0/8"]
[[domain]]
match = "*"
max_connections = 50
max_messages_per_connection = {max_messages_per_connection}
[routes]
"d0.test" = "127.0.0.1:{self.sink_port}"
[api]
address = "127.0.0.1:{self.api}"
{extra}"""
        )
        self.sink = subprocess.Popen(
            [self.bins / "volley-bench", "sink", "--listen", f"127.0.0.1:{self.sink_port}",
             "--cpus", sink_cpus, "--stats-interval-s", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.log = open(work / "volley.log", "w")
        self.volley = subprocess.Popen(
            [volley, "serve", "--config", work / "volley.toml"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.sink_port)
        wait_http(f"http://127.0.0.1:{self.api}/v1/health")

    def blast(self, args: list[str], cpus: str = GENERATOR_CPU) -> Blast:
        return Blast(self.bins, self.smtp, args, cpus)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def accept_histogram(self) -> dict[float, float]:
        """Cumulative `volley_accept_latency_seconds` buckets: upper bound (s) -> count."""
        buckets: dict[float, float] = {}
        for line in self.metrics().splitlines():
            if line.startswith("volley_accept_latency_seconds_bucket{"):
                bound = line.split('le="', 1)[1].split('"', 1)[0]
                key = float("inf") if bound == "+Inf" else float(bound)
                buckets[key] = buckets.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return buckets

    def wait_delivered(self, count: int, since: float, timeout_s: float = 300) -> float:
        """Seconds from `since` (time.monotonic) until `count` recipients were delivered."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.metric("volley_delivered_total") >= count:
                return time.monotonic() - since
            time.sleep(0.02)
        sys.exit(f"{count} deliveries not reached in {timeout_s} s")

    def volley_cpu(self) -> float:
        return cpu_seconds(self.volley.pid)

    def sink_cpu(self) -> float:
        return cpu_seconds(self.sink.pid)

    def stop(self, keep: bool = False) -> None:
        for p in (self.volley, self.sink):
            p.terminate()
        for p in (self.volley, self.sink):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()
        if not keep:
            shutil.rmtree(self.work, ignore_errors=True)


def parse_setting_variant(spec: str) -> tuple[str, dict[str, list[str]]]:
    """`LABEL=TABLE.KEY=VALUE[,TABLE.KEY=VALUE...]` (TABLE `server` or `spool`; an empty right
    side: the defaults) as the label and `Relay`'s `settings`; ValueError when malformed."""
    label, _, assignments = spec.partition("=")
    settings: dict[str, list[str]] = {}
    for assignment in filter(None, assignments.split(",")):
        dotted, _, value = assignment.partition("=")
        table, _, key = dotted.partition(".")
        if table not in ("server", "spool") or not key or not value:
            raise ValueError(f"{spec!r}: want LABEL=TABLE.KEY=VALUE with TABLE server or spool")
        settings.setdefault(table, []).append(f"{key} = {value}")
    return label, settings


def share_within(buckets: dict[float, float], bound_s: float) -> float:
    total = buckets.get(float("inf"), 0.0)
    return buckets.get(bound_s, 0.0) / total if total else 0.0


def relay_run(relay: Relay, messages: int, blast_args: list[str] | None = None,
              size: int = 1024) -> dict:
    """Blasts `messages` messages of `size` bytes (50 connections) through `relay` and waits until all are
    delivered. End-to-end rate = messages / seconds from the start of blast to the last delivery;
    CPU time of volley, the sink and blast over the run, per message."""
    volley0, sink0 = relay.volley_cpu(), relay.sink_cpu()
    delivered0 = relay.metric("volley_delivered_total")
    start = time.monotonic()
    blast = relay.blast(["--messages", str(messages), "--size", str(size), "--connections", "50",
                         *(blast_args or [])])
    elapsed = relay.wait_delivered(int(delivered0) + messages, start)
    result = blast.finish()
    volley_cpu = relay.volley_cpu() - volley0
    sink_cpu = relay.sink_cpu() - sink0
    accepted = result.report["messages_accepted"]
    if accepted != messages:
        sys.exit(f"only {accepted} of {messages} accepted: {result.report.get('replies_by_code')}")
    return {
        "msg_per_s": messages / elapsed,
        "accept_per_s": result.report["accepted_per_s"],
        "elapsed_s": elapsed,
        "volley_cpu_us": volley_cpu * 1e6 / messages,
        "sink_cpu_us": sink_cpu * 1e6 / messages,
        "blast_cpu_us": result.cpu_s * 1e6 / messages,
        # Share of the machine's CPU time (every online CPU over the run) the three used.
        "machine_busy": (volley_cpu + sink_cpu + result.cpu_s) / (elapsed * os.cpu_count()),
    }
