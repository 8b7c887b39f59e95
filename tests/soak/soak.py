#!/usr/bin/env python3
"""The chaos soak: the real `volley serve` against healthy and hostile receivers for a while, then
the invariants of `invariants.py` checked from what happened.

Destinations (each a set of domains with MX records in the test DNS server, each MX a
`volley-bench sink` on 127.0.88.N:25 in a fault mode):
  healthy     accepts everything (also the target of the burst of distinct domains)
  flaky       random 4xx/5xx at MAIL, RCPT, DATA and end of data, resets, slow replies
  tarpit      accepts and never greets
  stall-tls   offers STARTTLS and never completes the handshake
  stop-read   stops reading during DATA
  busy        421 at the greeting for most connections (both forms)
  slow        answers end of data after 1.5 s (the spool-pressure phase sends big messages here)
  servfail    its MX lookup answers SERVFAIL
  dns-timeout its MX lookup is never answered
One healthy domain's DNS answers SERVFAIL for the first part of the run, then heals. The senders'
domain (src.soak.test) has its MX on a mail catcher (127.0.88.20:25) that keeps the DSNs whole.

Phases: traffic with a reload (SIGHUP) and a kill -9 + restart; steady traffic and the memory baseline;
a burst of distinct domains with another reload; the spool nearly full (a small max_spool_bytes and
big messages); drain; the memory; the burst, pressure and drain once more with other new domains;
then the memory (RssAnon after the second round is held to a bound from the first, see
MEMORY_FIELDS and invariants.RSS_GROWTH_ALLOWED), `GET /v1/queues`, SIGTERM and the checks.

Exit status: 0 when every invariant held (skipped ones are printed with the reason), 1 on any
violation, 2 when the harness itself failed. Standard library plus dnslib (tests/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))  # tests/: dnsserver
sys.path.insert(0, str(HERE))

from dnsserver import TestDns  # noqa: E402
from mailcatcher import MailCatcher  # noqa: E402
from invariants import Accepted, Evidence, QueueSample, check_all  # noqa: E402

START_TIMEOUT_S = 60.0
# The daemon waits up to 30 s (runtime STOP_GRACE_MS) for transactions in flight, then exits.
STOP_TIMEOUT_S = 45.0
SMTP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 5.0
SAMPLE_INTERVAL_S = 1.0
SINK_NET = "127.0.88"
DSN_CATCHER_ADDRESS = f"{SINK_NET}.20"
SENDER_DOMAIN = "src.soak.test"
# A DSN names the message and each failed recipient (RFC 3464 fields Volley writes).
DSN_QUEUE_ID = re.compile(rb"X-Volley-Queue-Id:\s*(\S+)")
DSN_RECIPIENT = re.compile(rb"Final-Recipient:\s*rfc822;\s*<?([^\s>]+)", re.IGNORECASE)

# Destination classes: (name, how many domains, sink fault arguments or a DNS failure, weight).
DESTINATIONS = [
    ("healthy", 20, [], 50),
    ("flaky", 4, ["--tempfail-percent", "15", "--permfail-percent", "5",
                  "--fail-at", "mail,rcpt,data,end-of-data", "--reset-percent", "5",
                  "--slow-reply-ms", "20"], 15),
    ("tarpit", 2, ["--tarpit"], 5),
    ("stall-tls", 2, ["--stall-tls"], 5),
    ("stop-read", 2, ["--stop-reading-in-data"], 5),
    ("busy", 3, ["--greeting-421-percent", "70"], 8),
    ("slow", 4, ["--delay-ms", "1500"], 4),
    ("servfail", 2, "servfail", 4),
    ("dns-timeout", 2, "timeout", 4),
]

# Optional configuration, kept only when this daemon's `volley check` accepts it.
DEADLINES_MS = {
    "connect_timeout_ms": 2000,
    "tls_timeout_ms": 3000,
    "greeting_timeout_ms": 3000,
    "reply_timeout_ms": 3000,
    "data_timeout_ms": 5000,
    "write_timeout_ms": 3000,
}
# RFC 5321 4.5.3.2 defaults of interface.md, used as "the longest deadline" when the daemon has no
# deadline keys.
DEFAULT_LONGEST_DEADLINE_S = 600.0
QUEUE_IDLE_S = 10


@dataclass
class Profile:
    name: str
    rate_per_s: float  # background messages per second
    phase_a_s: float  # traffic, reload, kill -9 + restart
    reload_at_s: tuple[float, ...]
    kill_at_s: float
    flap_dns_s: float  # one healthy domain answers SERVFAIL this long from the start
    phase_b_s: float  # steady traffic, memory baseline at its end
    burst_domains: int
    burst_rounds: int  # bursts of as many new domains; memory is bounded between the last two
    burst_s: float
    pressure_s: float
    drain_s: float
    max_queue_age: str
    max_spool_bytes: int
    big_message_bytes: int


SHORT = Profile("short", 6.0, 30, (8,), 18, 12, 15, 1200, 2, 25, 20, 40, "75s", 32 << 20, 512 << 10)
LONG = Profile("long", 15.0, 900, (120, 420, 720), 600, 300, 300, 30000, 2, 1200, 300, 600, "20m", 128 << 20,
               512 << 10)


RETRY_INTERVALS_A = ["5s", "10s", "20s"]
RETRY_INTERVALS_B = ["4s", "8s", "20s"]  # what each reload switches to and back


def duration_s(text: str) -> float:
    """A Volley duration ("90s", "20m", "2h", "3d") in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def log(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", flush=True)


def free_port(address: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_dumps(config: dict[str, Any]) -> str:
    out = []
    for name, section in config.items():
        tables = section if isinstance(section, list) else [section]
        for table in tables:
            out.append(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            out.extend(f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items())
            out.append("")
    return "\n".join(out)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by kill -9
    return lines


# The resident-memory fields of /proc/PID/status the soak records. The RSS invariant uses RssAnon:
# VmRSS also counts file-backed pages (the binary's code, and the pages of spool segments that the
# daemon's read-only mappings have touched, many during the spool-pressure phase of big messages).
# Those are the page cache, which the kernel reclaims under pressure, not memory the daemon holds.
MEMORY_FIELDS = ("VmRSS", "RssAnon", "RssFile")
# Before the memory is measured at the end, RssAnon must stop falling: no drop over
# MEMORY_SETTLED_KIB for MEMORY_SETTLED_S, waiting at most MEMORY_SETTLE_MOST_S.
MEMORY_SETTLED_KIB = 256
MEMORY_SETTLED_S = 15.0
MEMORY_SETTLE_MOST_S = 60.0


def memory_kib(pid: int) -> dict[str, int] | None:
    """VmRSS, RssAnon and RssFile of `pid` in KiB (None when it is gone)."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in MEMORY_FIELDS:
                found[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return found if len(found) == len(MEMORY_FIELDS) else None


def describe_memory(memory: dict[str, int] | None) -> str:
    if memory is None:
        return "not measured"
    return ", ".join(f"{k} {memory[k]} KiB" for k in MEMORY_FIELDS)


class DaemonDied(Exception):
    """The daemon exited when it should have been serving: a violation, not a harness failure."""


class Daemon:
    """`volley serve` with a config written from a dict; restartable after kill -9."""

    def __init__(self, bin_dir: Path, work: Path, config: dict[str, Any], api_port: int) -> None:
        self.bin = bin_dir / "volley"
        self.work = work
        self.config = config
        self.api_port = api_port
        self.config_path = work / "volley.toml"
        self.stderr_path = work / "volley.stderr"
        self.process: subprocess.Popen | None = None

    def write_config(self) -> None:
        self.config_path.write_text(toml_dumps(self.config))

    def check(self) -> tuple[bool, str]:
        self.write_config()
        r = subprocess.run([str(self.bin), "check", "--config", str(self.config_path)],
                           capture_output=True, text=True, timeout=60)
        return r.returncode == 0, (r.stdout + r.stderr).strip()

    def start(self) -> float:
        """Starts and waits for /v1/health 200; returns how long that took."""
        self.write_config()
        started = time.monotonic()
        with open(self.stderr_path, "ab") as err:
            self.process = subprocess.Popen(
                [str(self.bin), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=self.work)
        while time.monotonic() - started < START_TIMEOUT_S:
            if self.process.poll() is not None:
                raise RuntimeError(f"volley exited {self.process.returncode} at start:\n{self.tail()}")
            try:
                if self.api("GET", "/v1/health", timeout_s=1)[0] == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"volley not healthy after {START_TIMEOUT_S}s:\n{self.tail()}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None

    def kill9(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            return -9

    def tail(self, lines: int = 30) -> str:
        if not self.stderr_path.exists():
            return ""
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])

    def api(self, method: str, path: str, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text


class Sinks:
    def __init__(self, bin_dir: Path, work: Path) -> None:
        self.bin = bin_dir / "volley-bench"
        self.work = work
        self.processes: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def start(self, address: str, args: list[str]) -> None:
        log_path = self.work / f"sink-{address}.jsonl"
        err = open(self.work / f"sink-{address}.stderr", "ab")
        p = subprocess.Popen(
            [str(self.bin), "sink", "--listen", f"{address}:25", "--log", str(log_path),
             "--cores", "1", "--stats-interval-s", "0", *args],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        err.close()
        self.processes.append(p)
        self.logs.append(log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if p.poll() is not None:
                raise RuntimeError(f"sink on {address}:25 exited {p.returncode} (port 25 needs root)")
            try:
                with socket.create_connection((address, 25), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sink on {address}:25 not listening")
                time.sleep(0.05)

    def lines(self) -> list[dict[str, Any]]:
        return [line for path in self.logs for line in read_json_lines(path)]

    def stop(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


class Ledger:
    """What the clients saw: recipients answered 250, refusals by reply, errors."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: list[Accepted] = []
        self.refusals: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.spool_full_s: list[float] = []

    def refuse(self, reply: str) -> None:
        with self.lock:
            key = reply[:9]
            self.refusals[key] = self.refusals.get(key, 0) + 1
            if reply.startswith("452") and "4.3.1" in reply:
                self.spool_full_s.append(time.time())

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1


QUEUED_AS = re.compile(r"queued as (\S+)")


class Client:
    """One SMTP client thread's connection; reconnects after any error."""

    def __init__(self, port: int, ledger: Ledger, run_id: str) -> None:
        self.port = port
        self.ledger = ledger
        self.run_id = run_id
        self.smtp: smtplib.SMTP | None = None
        self.serial = 0

    def close(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.close()
            except OSError:
                pass
        self.smtp = None

    def send(self, recipients: list[tuple[str, str]], size_bytes: int) -> None:
        """`recipients`: (address, destination class)."""
        self.serial += 1
        message_id = f"<soak-{self.run_id}-{threading.get_ident()}-{self.serial}@src.soak.test>"
        body = ("x" * 76 + "\r\n") * max(1, size_bytes // 78)
        content = (f"From: <sender@src.soak.test>\r\nTo: <undisclosed@soak.test>\r\n"
                   f"Subject: soak {self.serial}\r\nMessage-ID: {message_id}\r\n\r\n{body}")
        try:
            if self.smtp is None:
                self.smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=SMTP_TIMEOUT_S)
                self.smtp.ehlo("client.soak.test")
            code, reply = self.smtp.mail("sender@src.soak.test")
            if code != 250:
                self.ledger.refuse(f"{code} {reply.decode(errors='replace')}")
                self.smtp.rset()
                return
            taken = []
            for address, kind in recipients:
                code, reply = self.smtp.rcpt(address)
                if code in (250, 251):
                    taken.append((address, kind))
                else:
                    self.ledger.refuse(f"{code} {reply.decode(errors='replace')}")
            if not taken:
                self.smtp.rset()
                return
            code, reply = self.smtp.data(content.encode())
            text = reply.decode(errors="replace")
            if code != 250:
                self.ledger.refuse(f"{code} {text}")
                return
            match = QUEUED_AS.search(text)
            queue_id = match.group(1) if match else ""
            now = time.time()
            with self.ledger.lock:
                for address, kind in taken:
                    self.ledger.accepted.append(Accepted(
                        queue_id, address, message_id, address.rsplit("@", 1)[1], kind, now))
        except (smtplib.SMTPException, OSError) as e:
            self.ledger.error(type(e).__name__)
            self.close()
            time.sleep(0.2)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.profile = LONG if args.long else SHORT
        self.bin_dir = Path(args.bin_dir)
        self.work = Path(args.out).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(args.seed)
        self.run_id = f"{int(time.time())}"
        self.ledger = Ledger()
        self.notes: list[str] = []
        self.timeline: list[str] = []
        self.samples: list[QueueSample] = []
        self.gauge_present = False
        self.sampling_paused = threading.Event()
        self.stop_sampling = threading.Event()
        self.domains: dict[str, list[str]] = {}
        self.memory_baseline: dict[str, int] | None = None
        # (memory, accounting-log bytes) once settled after each burst round.
        self.memory_rounds: list[tuple[dict[str, int] | None, int]] = []
        self.longest_deadline_s = DEFAULT_LONGEST_DEADLINE_S
        self.rss_series: list[tuple[float, dict[str, int]]] = []
        self.kill_times_s: list[float] = []
        self.most_queues = 0

    def mark(self, what: str) -> None:
        self.timeline.append(f"{time.time() - self.t0:6.1f}s {what}")
        log(what)

    # -- set-up

    def setup_destinations(self) -> None:
        self.dns = TestDns(free_port(kind=socket.SOCK_DGRAM))
        self.dns.start()
        self.sinks = Sinks(self.bin_dir, self.work)
        for index, (kind, count, mode, _) in enumerate(DESTINATIONS, start=1):
            address = f"{SINK_NET}.{index}"
            mx = f"mx.{kind}.soak.test"
            if isinstance(mode, list):
                self.sinks.start(address, mode)
                self.dns.a(mx, address)
            names = [f"{kind.replace('-', '')}{i}.soak.test" for i in range(count)]
            for name in names:
                self.dns.mx(name, 10, mx)
                if mode == "servfail":
                    self.dns.servfail(name)
                elif mode == "timeout":
                    self.dns.timeout(name)
            self.domains[kind] = names
        catcher = MailCatcher(DSN_CATCHER_ADDRESS, 25)
        catcher.start()
        self.catcher = catcher
        self.dns.mx(SENDER_DOMAIN, 10, "mx.dsn.soak.test")
        self.dns.a("mx.dsn.soak.test", DSN_CATCHER_ADDRESS)

    def dsns(self) -> set[tuple[str, str]]:
        """(queue id, failed recipient) of every DSN caught."""
        found = set()
        for caught in self.catcher.snapshot():
            queue_id = DSN_QUEUE_ID.search(caught.data)
            for recipient in DSN_RECIPIENT.findall(caught.data):
                found.add((queue_id.group(1).decode() if queue_id else "",
                           recipient.decode(errors="replace")))
        return found

    def config(self) -> dict[str, Any]:
        p = self.profile
        self.smtp_port, self.api_port = free_port(), free_port()
        return {
            "server": {"hostname": "mta.soak.test", "cores": self.args.cores,
                       "spool_dir": str(self.work / "spool"),
                       "accounting_log": str(self.work / "acct.jsonl")},
            "spool": {"segment_bytes": 1 << 20, "max_spool_bytes": p.max_spool_bytes},
            "listener": [{"address": f"127.0.0.1:{self.smtp_port}", "tls": "none", "auth": "off",
                          "relay_networks": ["127.0.0.0/8"]}],
            "vmta": [{"name": "v1", "source_ip": "127.0.0.2", "ehlo_hostname": "v1.soak.test"},
                     {"name": "v2", "source_ip": "127.0.0.3", "ehlo_hostname": "v2.soak.test"}],
            "pool": [{"name": "default", "vmtas": ["v1", "v2"]}],
            "domain": [{"match": "*", "retry_intervals": RETRY_INTERVALS_A,
                        "max_queue_age": p.max_queue_age, "max_connections": 4,
                        "transactions_in_flight": self.args.transactions_in_flight}],
            "dns": {"nameservers": [self.dns.nameserver]},
            "api": {"address": f"127.0.0.1:{self.api_port}"},
        }

    def setup_daemon(self) -> None:
        self.daemon = Daemon(self.bin_dir, self.work, self.config(), self.api_port)
        ok, text = self.daemon.check()
        if not ok:
            raise RuntimeError(f"the soak's base configuration is refused: {text}")
        # Optional keys that other work adds: kept only if this daemon knows them.
        self.daemon.config["domain"][0].update(DEADLINES_MS)
        ok, text = self.daemon.check()
        if ok:
            self.longest_deadline_s = max(DEADLINES_MS.values()) / 1000
        else:
            for key in DEADLINES_MS:
                self.daemon.config["domain"][0].pop(key)
            self.notes.append(
                "the daemon has no [[domain]] deadline keys (volley check: "
                f"{text.splitlines()[0] if text else '?'}); the longest deadline is taken as "
                f"{DEFAULT_LONGEST_DEADLINE_S:.0f}s (data_timeout_ms default)")
        self.daemon.config["shaping"] = {"queue_idle_s": QUEUE_IDLE_S}
        ok, text = self.daemon.check()
        self.queue_idle_known = ok
        if not ok:
            del self.daemon.config["shaping"]
            self.notes.append(
                f"the daemon has no [shaping] queue_idle_s (volley check: "
                f"{text.splitlines()[0] if text else '?'}); idle queues are never freed here")

    # -- traffic

    def pick_recipients(self) -> list[tuple[str, str]]:
        kinds = [d[0] for d in DESTINATIONS]
        weights = [d[3] for d in DESTINATIONS]
        out = []
        for _ in range(self.rng.choice((1, 1, 2, 3))):
            kind = self.rng.choices(kinds, weights)[0]
            domain = self.rng.choice(self.domains[kind])
            out.append((f"r{self.rng.randrange(10**6)}@{domain}", kind))
        return out

    def traffic(self, stop: threading.Event, rate_per_s: float, threads: int,
                recipients=None, size=None) -> list[threading.Thread]:
        """Client threads sending at `rate_per_s` in total until `stop` is set."""
        recipients = recipients or self.pick_recipients
        size = size or (lambda: self.rng.choice((2048,) * 49 + (100 << 10,)))
        interval = threads / rate_per_s if rate_per_s > 0 else 0

        def loop():
            client = Client(self.daemon_port(), self.ledger, self.run_id)
            while not stop.is_set():
                began = time.monotonic()
                client.send(recipients(), size())
                wait = interval - (time.monotonic() - began)
                if wait > 0:
                    stop.wait(wait)
            client.close()

        started = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
        for t in started:
            t.start()
        return started

    def daemon_port(self) -> int:
        return self.smtp_port

    # -- observation

    def sampler(self) -> None:
        while not self.stop_sampling.wait(SAMPLE_INTERVAL_S):
            if self.sampling_paused.is_set():
                continue
            try:
                status, body = self.daemon.api("GET", "/v1/queues")
                mstatus, metrics = self.daemon.api("GET", "/metrics")
            except OSError:
                continue
            if status != 200 or not isinstance(body, dict) or self.sampling_paused.is_set():
                continue
            gauge = None
            if mstatus == 200 and isinstance(metrics, str):
                for line in metrics.splitlines():
                    if line.startswith("volley_oldest_ready_seconds"):
                        self.gauge_present = True
                        gauge = max(gauge or 0.0, float(line.rsplit(" ", 1)[1]))
            now = time.time()
            queues = body.get("queues", [])
            self.most_queues = max(self.most_queues, len(queues))
            # Only queues with ready recipients matter to the stuck check: keeping just those
            # bounds the soak's own memory when tens of thousands of queues are listed.
            ready = [q for q in queues if int(q.get("ready", 0)) > 0]
            self.samples.append(QueueSample(now, ready, gauge))
            pid = self.daemon.pid
            memory = memory_kib(pid) if pid else None
            if memory:
                self.rss_series.append((now, memory))

    def acct_bytes(self) -> int:
        path = self.work / "acct.jsonl"
        return path.stat().st_size if path.exists() else 0

    def memory_now(self, over_s: float = 3.0) -> dict[str, int] | None:
        """Per field of MEMORY_FIELDS, the median of the last `over_s` seconds of samples."""
        cutoff = time.time() - over_s
        recent = [m for t, m in self.rss_series if t >= cutoff]
        if not recent:
            return None
        return {k: sorted(m[k] for m in recent)[len(recent) // 2] for k in MEMORY_FIELDS}

    def save_smaps(self, name: str) -> None:
        """Keeps /proc/PID/smaps beside the report: which mapping holds a step of memory."""
        if self.daemon.pid is None:
            return
        try:
            (self.work / name).write_text(Path(f"/proc/{self.daemon.pid}/smaps").read_text())
        except OSError:
            pass

    def wait_for_memory_to_settle(self) -> None:
        """Waits until RssAnon (the median of the last 3 s) has not fallen by more than
        MEMORY_SETTLED_KIB for MEMORY_SETTLED_S, at most MEMORY_SETTLE_MOST_S. The burst's state
        is freed on timers (DNS answers' TTL, a queue's idle time) counted from each domain's last
        delivery, which the spool-pressure phase delays: measured before those, a slower run saw
        memory still stepping down. A leak stays up and still fails."""
        began = time.monotonic()
        lowest, lowest_at = None, began
        while time.monotonic() - began < MEMORY_SETTLE_MOST_S:
            memory = self.memory_now()
            if memory:
                if lowest is None or memory["RssAnon"] < lowest - MEMORY_SETTLED_KIB:
                    lowest, lowest_at = memory["RssAnon"], time.monotonic()
                elif time.monotonic() - lowest_at >= MEMORY_SETTLED_S:
                    break
            time.sleep(1)
        self.mark(f"memory settled after {time.monotonic() - began:.0f}s")

    def reload(self, why: str) -> None:
        policy = self.daemon.config["domain"][0]
        policy["retry_intervals"] = (RETRY_INTERVALS_B if policy["retry_intervals"] == RETRY_INTERVALS_A
                                     else RETRY_INTERVALS_A)
        self.daemon.write_config()
        self.daemon.process.send_signal(signal.SIGHUP)
        time.sleep(1)
        if self.daemon.process.poll() is not None:
            raise DaemonDied(f"volley exited {self.daemon.process.returncode} after SIGHUP:\n"
                             f"{self.daemon.tail()}")
        self.mark(f"SIGHUP ({why}): retry_intervals now {policy['retry_intervals']}")

    def kill_and_restart(self) -> None:
        self.sampling_paused.set()
        self.daemon.kill9()
        self.kill_times_s.append(time.time())
        self.mark("kill -9")
        try:
            took = self.daemon.start()
        except RuntimeError as e:
            raise DaemonDied(f"no restart after kill -9: {e}") from e
        self.sampling_paused.clear()
        self.mark(f"restarted, healthy after {took:.1f}s")

    # -- the run

    def run(self) -> int:
        p = self.profile
        self.t0 = time.time()
        sampler = threading.Thread(target=self.sampler, daemon=True)
        try:
            self.setup_destinations()
            self.setup_daemon()
            took = self.daemon.start()
            self.mark(f"volley started ({self.bin_dir}), healthy after {took:.1f}s; profile {p.name}")
            sampler.start()
            return self.phases()
        except OSError as e:
            raise RuntimeError(f"{type(e).__name__}: {e}") from e
        finally:
            # Whatever was started is stopped, also when the set-up failed half-way.
            self.stop_sampling.set()
            if sampler.is_alive():
                sampler.join(timeout=5)
            for part in ("daemon", "sinks", "catcher", "dns"):
                if hasattr(self, part):
                    getattr(self, part).stop()

    def phases(self) -> int:
        p = self.profile
        flapping = self.domains["healthy"][0]
        self.dns.servfail(flapping)
        self.mark(f"phase A: mixed traffic {p.rate_per_s}/s; {flapping} answers SERVFAIL")
        stop = threading.Event()
        clients = self.traffic(stop, p.rate_per_s, 3)
        began = time.monotonic()
        pending = sorted([(p.flap_dns_s, "heal"), (p.kill_at_s, "kill")]
                         + [(at, "reload") for at in p.reload_at_s])
        for at, what in pending:
            time.sleep(max(0.0, at - (time.monotonic() - began)))
            if what == "heal":
                self.dns.heal(flapping)
                self.mark(f"{flapping} DNS healed")
            elif what == "reload":
                self.reload("phase A")
            else:
                self.kill_and_restart()
        time.sleep(max(0.0, p.phase_a_s - (time.monotonic() - began)))

        self.mark("phase B: steady traffic, memory baseline")
        time.sleep(p.phase_b_s)
        self.memory_baseline = self.memory_now()
        acct_bytes_baseline = self.acct_bytes()
        self.save_smaps("smaps-before-bursts.txt")
        self.mark(f"memory before the first burst: {describe_memory(self.memory_baseline)}")

        for round_ in range(1, p.burst_rounds + 1):
            self.burst_round(round_, background=(stop, clients) if round_ == 1 else None)
            self.drain(p.drain_s)
            if self.queue_idle_known:
                time.sleep(QUEUE_IDLE_S + 3)
            time.sleep(3)
            self.wait_for_memory_to_settle()
            memory = self.memory_now()
            self.memory_rounds.append((memory, self.acct_bytes()))
            self.save_smaps(f"smaps-after-burst-{round_}.txt")
            self.mark(f"memory after burst round {round_}: {describe_memory(memory)}")
        # The bound is held between the last two rounds: what one burst leaves with the allocator
        # (pages still holding a few live blocks, its caches) the next reuses; a leak grows again.
        memory_before, acct_bytes_before = (
            self.memory_rounds[-2] if len(self.memory_rounds) > 1
            else (self.memory_baseline, acct_bytes_baseline))
        memory_after, acct_bytes_after = self.memory_rounds[-1]
        if self.memory_baseline and len(self.memory_rounds) > 1:
            steps = [f"{m['RssAnon'] / 1024:.1f} MiB after round {i}"
                     for i, (m, _) in enumerate(self.memory_rounds, start=1) if m]
            self.notes.append(f"RssAnon {self.memory_baseline['RssAnon'] / 1024:.1f} MiB before the "
                              f"first burst, {', '.join(steps)}; the bound is held over the last round")
        if self.daemon.pid is None:
            raise DaemonDied(f"volley exited {self.daemon.process.returncode} during the run:\n"
                             f"{self.daemon.tail()}")
        status, body = self.daemon.api("GET", "/v1/queues", timeout_s=30)
        if status != 200:
            raise RuntimeError(f"GET /v1/queues at the end answered {status}: {body}")
        final_queues, final_time = body.get("queues", []), time.time()
        self.mark(f"end: {len(final_queues)} queues, memory {describe_memory(memory_after)}")
        self.stop_sampling.set()
        rc = self.daemon.stop()
        self.mark(f"volley stopped with SIGTERM, exit {rc}")
        evidence = Evidence(
            accepted=list(self.ledger.accepted),
            acct=read_json_lines(self.work / "acct.jsonl"),
            sink_lines=self.sinks.lines(),
            final_queues=final_queues,
            final_time_s=final_time,
            samples=list(self.samples),
            gauge_present=self.gauge_present,
            longest_deadline_s=self.longest_deadline_s,
            memory_before_burst_kib=memory_before,
            memory_after_kib=memory_after,
            events_logged_since_burst_bytes=max(0, acct_bytes_after - acct_bytes_before),
            dsns=self.dsns(),
            stop_exit=rc,
            stop_timeout_s=STOP_TIMEOUT_S,
            max_queue_age_s=duration_s(p.max_queue_age),
            kill_times_s=list(self.kill_times_s),
            longest_retry_s=max(duration_s(r) for r in RETRY_INTERVALS_A + RETRY_INTERVALS_B),
        )
        return self.report(evidence)

    def burst_round(self, round_: int, background: tuple[threading.Event, list] | None) -> None:
        """Phase C of one round: a burst of distinct, new domains with a reload (C1), then the spool
        nearly full (C2). The first round runs beside the background traffic and stops it after."""
        p = self.profile
        self.mark(f"phase C1 (round {round_}): burst of {p.burst_domains} distinct domains "
                  f"over {p.burst_s:.0f}s")
        mx = "mx.healthy.soak.test"
        names = [f"u{i}.r{round_}.burst.soak.test" for i in range(p.burst_domains)]
        for d in names:
            self.dns.mx(d, 10, mx)
        queue = list(names)
        lock = threading.Lock()

        def burst_recipients():
            with lock:
                taken = [queue.pop() for _ in range(min(4, len(queue)))]
            return [(f"b@{d}", "burst") for d in taken] or self.pick_recipients()

        burst_stop = threading.Event()
        per_s = p.burst_domains / 4 / p.burst_s
        burst = self.traffic(burst_stop, per_s, 3, recipients=burst_recipients, size=lambda: 1024)
        time.sleep(p.burst_s / 2)
        self.reload("burst")
        deadline = time.monotonic() + p.burst_s
        while queue and time.monotonic() < deadline:
            time.sleep(0.5)
        burst_stop.set()
        for t in burst:
            t.join(timeout=SMTP_TIMEOUT_S + 5)
        self.mark(f"burst sent ({len(names) - len(queue)} domains)")

        self.mark(f"phase C2 (round {round_}): spool pressure, {p.big_message_bytes >> 10} KiB "
                  "messages to slow domains")
        pressure_stop = threading.Event()
        pressure_began = time.time()

        def slow_recipients():
            return [(f"p{self.rng.randrange(10**6)}@{self.rng.choice(self.domains['slow'])}", "slow")]

        pressure = self.traffic(pressure_stop, 200.0, 3, recipients=slow_recipients,
                                size=lambda: p.big_message_bytes)
        time.sleep(p.pressure_s)
        pressure_stop.set()
        for t in pressure:
            t.join(timeout=SMTP_TIMEOUT_S + 5)
        full = [t for t in self.ledger.spool_full_s if t >= pressure_began]
        if full:
            self.mark(f"spool full: {len(full)} replies 452 4.3.1, "
                      f"{full[0] - self.t0:.0f}s to {full[-1] - self.t0:.0f}s")
        else:
            self.notes.append(f"the spool never answered 452 4.3.1 during round {round_}'s pressure phase")
        if background:
            stop, clients = background
            stop.set()
            for t in clients:
                t.join(timeout=SMTP_TIMEOUT_S + 5)
        self.mark(f"phase D (round {round_}): traffic stopped; draining up to {p.drain_s:.0f}s")

    def drain(self, budget_s: float) -> None:
        """Waits until every accepted recipient of a destination that can take mail has a final
        event, or `budget_s` passes."""
        deliverable = {"healthy", "burst", "slow", "flaky", "busy"}
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            finals = {(str(e.get("id")), str(e.get("recipient", "")).lower())
                      for e in read_json_lines(self.work / "acct.jsonl")
                      if e.get("type") in ("delivery", "bounce", "expiration")}
            open_ = [a for a in self.ledger.accepted
                     if a.kind in deliverable and (a.queue_id, a.recipient.lower()) not in finals]
            bounced = {(str(e.get("id")), str(e.get("recipient", "")).lower())
                       for e in read_json_lines(self.work / "acct.jsonl")
                       if e.get("type") in ("bounce", "expiration")
                       and e.get("sender") != ""}
            no_dsn = bounced - {(q, r.lower()) for q, r in self.dsns()}
            if not open_ and not no_dsn:
                self.mark("every recipient to a deliverable destination has a final event, "
                          "every bounce so far its DSN")
                return
            time.sleep(2)
        self.mark(f"drain budget spent; {len(open_)} recipients to deliverable destinations open, "
                  f"{len(no_dsn)} bounces without a DSN")

    def daemon_complaints(self, top: int = 12) -> list[tuple[str, int]]:
        counts: dict[str, int] = {}
        if self.daemon.stderr_path.exists():
            for line in self.daemon.stderr_path.read_text(errors="replace").splitlines():
                parts = line.split(" ", 2)
                if len(parts) == 3 and parts[1] in ("WARN", "ERROR"):
                    text = re.sub(r"[0-9A-F]{6,}-\d\d|\d+", "N", parts[1] + " " + parts[2])[:160]
                    counts[text] = counts.get(text, 0) + 1
        return sorted(counts.items(), key=lambda kv: -kv[1])[:top]

    def report(self, ev: Evidence) -> int:
        checks = check_all(ev)
        by_type: dict[str, int] = {}
        for e in ev.acct:
            by_type[e.get("type", "?")] = by_type.get(e.get("type", "?"), 0) + 1
        by_kind: dict[str, int] = {}
        for a in ev.accepted:
            by_kind[a.kind] = by_kind.get(a.kind, 0) + 1
        print("\n==== soak report ====")
        print("timeline:")
        for line in self.timeline:
            print(f"  {line}")
        print(f"accepted recipients: {len(ev.accepted)} {by_kind}")
        print(f"refusals seen by the clients: {self.ledger.refusals}")
        print(f"client errors: {self.ledger.errors}")
        print(f"accounting events: {by_type}")
        most_queues = self.most_queues
        peak_rss = max((m["VmRSS"] for _, m in self.rss_series), default=0)
        print(f"queue samples: {len(ev.samples)}, at most {most_queues} queues listed; RSS peak "
              f"{peak_rss / 1024:.1f} MiB; volley_oldest_ready_seconds "
              f"{'present' if ev.gauge_present else 'absent'}")
        for note in self.notes:
            print(f"note: {note}")
        print("the daemon's WARN and ERROR lines (digits folded):")
        for line, count in self.daemon_complaints():
            print(f"  {count:5} x {line}")
        print("invariants:")
        for c in checks:
            print(f"  [{c.status.upper():8}] {c.name}: {c.detail}")
        (self.work / "report.json").write_text(json.dumps({
            "profile": self.profile.name, "timeline": self.timeline, "notes": self.notes,
            "accepted": len(ev.accepted), "accepted_by_destination": by_kind,
            "refusals": self.ledger.refusals, "errors": self.ledger.errors,
            "accounting": by_type, "checks": [asdict(c) for c in checks],
            # Every memory sample (seconds from the start, KiB), to see when a growth came.
            "memory_series": [[round(t - self.t0, 2), m] for t, m in self.rss_series],
        }, indent=2))
        violated = [c for c in checks if c.violated]
        print(f"report: {self.work / 'report.json'}; logs and spool under {self.work}")
        if violated:
            print(f"SOAK FAILED: {len(violated)} invariant(s) violated: "
                  + "; ".join(c.name for c in violated))
            return 1
        print("SOAK PASSED")
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--short", action="store_true", help="about 3 minutes (CI); the default")
    form.add_argument("--long", action="store_true", help="about one hour")
    parser.add_argument("--bin-dir", default=str(ROOT / "target" / "debug"))
    parser.add_argument("--out", default=str(ROOT / "target" / "soak" / time.strftime("%Y%m%d-%H%M%S")))
    parser.add_argument("--cores", type=int, default=1, help="volley's executors")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the recipient and size draws (thread timing still varies)")
    parser.add_argument("--transactions-in-flight", type=int, default=1,
                        help="[[domain]] transactions_in_flight toward every receiver")
    args = parser.parse_args()
    for binary in ("volley", "volley-bench"):
        if not os.access(Path(args.bin_dir) / binary, os.X_OK):
            print(f"soak: {Path(args.bin_dir) / binary} missing: build first", file=sys.stderr)
            return 2
    soak = Soak(args)
    try:
        return soak.run()
    except DaemonDied as e:
        print(f"SOAK FAILED: {e}")
        return 1
    except RuntimeError as e:
        print(f"soak: harness failure: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
