"""Fixtures for Volley's integration tests: the real `volley serve` daemon, `volley-bench sink`s, a
body-keeping mail catcher and a DNS server, all on loopback (127.0.0.0/8), like a deployment.

The binaries are built beforehand (`cargo build --workspace`); the tests never run cargo. Set
VOLLEY_BIN_DIR to test binaries elsewhere than target/debug.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from dnsserver import TestDns
from mailcatcher import MailCatcher, can_connect

ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = Path(os.environ.get("VOLLEY_BIN_DIR", ROOT / "target" / "debug"))
VOLLEY_BIN = BIN_DIR / "volley"
BENCH_BIN = BIN_DIR / "volley-bench"

# Every wait in the suite is bounded by one of these.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0
DELIVERY_TIMEOUT_S = 15.0
SMTP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 5.0


# ---------------------------------------------------------------------------------------------
# Small helpers


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05):
    """Polls `predicate` until it returns something truthy (returned) or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


_ports_given: set[tuple[str, int]] = set()
_ports_lock = threading.Lock()


def free_port(address: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel says is free on `address`, never the same one twice in a session."""
    with _ports_lock:
        for _ in range(50):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind((address, 0))
                port = s.getsockname()[1]
            if (address, port) not in _ports_given:
                _ports_given.add((address, port))
                return port
    raise RuntimeError("no free port")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def toml_dumps(config: dict[str, Any]) -> str:
    """Tables (dict) and arrays of tables (list of dict) of scalars, lists and inline tables."""
    out: list[str] = []
    for name, section in config.items():
        tables = section if isinstance(section, list) else [section]
        header = f"[[{name}]]" if isinstance(section, list) else f"[{name}]"
        for table in tables:
            out.append(header)
            for key, value in table.items():
                out.append(f"{json.dumps(key)} = {_toml_value(value)}")
            out.append("")
    return "\n".join(out)


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        # A line being written may be incomplete: keep only whole ones.
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return lines


def message(subject: str = "test", body: str = "Hello.\r\n", extra_headers: str = "") -> str:
    return (
        f"From: <sender@src.test>\r\nTo: <rcpt@dest.test>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}-{time.monotonic_ns()}@src.test>\r\n"
        f"{extra_headers}\r\n{body}"
    )


# ---------------------------------------------------------------------------------------------
# The daemon


class Volley:
    """One `volley serve` with its own config, spool and logs under `dir`.

    Tests change `self.config` (a dict written as TOML) before `start()`.
    """

    def __init__(self, dir: Path, dns: TestDns, name: str = "volley") -> None:
        self.dir = dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "volley.toml"
        self.acct_path = self.dir / "acct.jsonl"
        self.stderr_path = self.dir / "stderr.log"
        self.relay_port = free_port()
        self.api_port = free_port()
        self.process: subprocess.Popen | None = None
        self.token = ""
        self.config: dict[str, Any] = {
            "server": {
                "hostname": "mta.volley.test",
                "cores": 1,
                "spool_dir": str(self.dir / "spool"),
                "accounting_log": str(self.acct_path),
            },
            "listener": [
                {
                    "address": f"127.0.0.1:{self.relay_port}",
                    "tls": "none",
                    "auth": "off",
                    "relay_networks": ["127.0.0.0/8"],
                }
            ],
            "vmta": [
                {"name": "v1", "source_ip": "127.0.0.2", "ehlo_hostname": "v1.volley.test"},
            ],
            "pool": [{"name": "default", "vmtas": ["v1"]}],
            "domain": [{"match": "*", "retry_intervals": ["1s"], "max_queue_age": "1h"}],
            # Always our DNS server: no query may leave loopback.
            "dns": {"nameservers": [dns.nameserver]},
            "routes": {},
            "api": {"address": f"127.0.0.1:{self.api_port}"},
            # Segments are preallocated (fallocate): 16 MiB instead of the default 64 keeps a run
            # of the whole suite within a small CI disk.
            "spool": {"segment_bytes": 16 << 20},
        }

    # -- lifecycle

    def write_config(self) -> Path:
        self.config_path.write_text(toml_dumps(self.config))
        return self.config_path

    def start(self) -> "Volley":
        self.write_config()
        self.token = self.config.get("api", {}).get("token", "")
        self._stderr = open(self.stderr_path, "ab")
        self.process = subprocess.Popen(
            [str(VOLLEY_BIN), "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            cwd=self.dir,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"volley exited {self.process.returncode} at start:\n{self.stderr_tail()}"
                )
            try:
                status, _ = self.api("GET", "/v1/health", timeout_s=1)
                if status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise AssertionError(f"volley not healthy after {START_TIMEOUT_S}s:\n{self.stderr_tail()}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then the exit code (killed and reported as -9 after `timeout_s`)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            rc = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            rc = -9
        self._stderr.close()
        self.process = None
        return rc

    def kill9(self) -> None:
        """SIGKILL, as a crash: nothing the daemon holds in memory is written."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        self._stderr.close()
        self.process = None

    def stderr_tail(self, lines: int = 40) -> str:
        if not self.stderr_path.exists():
            return ""
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])

    # -- configuration shortcuts

    def route(self, domain: str, hostport: str) -> None:
        self.config["routes"][domain] = hostport

    def policy(self, **fields: Any) -> None:
        """Changes the `*` domain policy."""
        self.config["domain"][0].update(fields)

    # -- SMTP

    def smtp(self, port: int | None = None, source: str | None = None) -> smtplib.SMTP:
        kwargs = {"source_address": (source, 0)} if source else {}
        return smtplib.SMTP("127.0.0.1", port or self.relay_port, timeout=SMTP_TIMEOUT_S, **kwargs)

    def send(self, sender: str, recipients: list[str], content: str) -> dict:
        with self.smtp() as client:
            return client.sendmail(sender, recipients, content)

    # -- API

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> tuple[int, Any]:
        """(status, parsed JSON or text); HTTP errors are returned, not raised."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}", data=data, method=method
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        token = self.token if token is None else token
        if token:
            request.add_header("Authorization", f"Bearer {token}")
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

    def metrics(self) -> dict[str, float]:
        status, text = self.api("GET", "/metrics")
        assert status == 200, text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    # -- accounting log

    def acct(self, kind: str | None = None) -> list[dict[str, Any]]:
        events = read_json_lines(self.acct_path)
        return [e for e in events if kind is None or e["type"] == kind]

    def wait_acct(
        self, kind: str, count: int = 1, timeout_s: float = DELIVERY_TIMEOUT_S, **match: Any
    ) -> list[dict[str, Any]]:
        """At least `count` accounting events of `kind` whose fields equal `match`."""

        def found():
            events = [
                e for e in self.acct(kind) if all(e.get(k) == v for k, v in match.items())
            ]
            return events if len(events) >= count else None

        try:
            return wait_until(found, timeout_s, f"{count} {kind} event(s) {match}")
        except AssertionError as e:
            raise AssertionError(
                f"{e}\naccounting log:\n"
                + "\n".join(json.dumps(x) for x in self.acct())
                + f"\nstderr:\n{self.stderr_tail()}"
            ) from None


# ---------------------------------------------------------------------------------------------
# The sink


class Sink:
    """`volley-bench sink` on `address`:`port`, logging one JSON line per accepted message."""

    def __init__(self, dir: Path, address: str, port: int, args: list[str]) -> None:
        self.address = address
        self.port = port
        self.args = args
        self.log_path = dir / f"sink-{address}-{port}.jsonl"
        self.stderr_path = dir / f"sink-{address}-{port}.stderr"
        self.process: subprocess.Popen | None = None

    @property
    def hostport(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> "Sink":
        self._stderr = open(self.stderr_path, "ab")
        self.process = subprocess.Popen(
            [
                str(BENCH_BIN), "sink", "--listen", self.hostport, "--log", str(self.log_path),
                "--cores", "1", "--stats-interval-s", "0", *self.args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
        )

        def listening():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"sink on {self.hostport} exited {self.process.returncode}: "
                    f"{self.stderr_path.read_text(errors='replace')}"
                )
            return can_connect(self.address, self.port)

        wait_until(listening, START_TIMEOUT_S, f"sink on {self.hostport}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process is not None:
            self._stderr.close()
        self.process = None

    def lines(self) -> list[dict[str, Any]]:
        return read_json_lines(self.log_path)

    def recipients(self) -> list[str]:
        return [r for line in self.lines() for r in line["recipients"]]

    def wait_lines(self, count: int, timeout_s: float = DELIVERY_TIMEOUT_S) -> list[dict[str, Any]]:
        return wait_until(
            lambda: (lines := self.lines()) and len(lines) >= count and lines,
            timeout_s,
            f"{count} message(s) at the sink {self.hostport} (has {len(self.lines())})",
        )

    def wait_recipients(self, count: int, timeout_s: float = DELIVERY_TIMEOUT_S) -> list[str]:
        return wait_until(
            lambda: (r := self.recipients()) and len(r) >= count and r,
            timeout_s,
            f"{count} recipient(s) at the sink {self.hostport} (has {len(self.recipients())})",
        )


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session", autouse=True)
def binaries() -> None:
    """The suite tests built binaries; it never builds them."""
    missing = [str(b) for b in (VOLLEY_BIN, BENCH_BIN) if not os.access(b, os.X_OK)]
    if missing:
        pytest.exit(f"missing {missing}: run `cargo build --workspace` first", returncode=2)


@pytest.fixture
def dns():
    server = TestDns(free_port(kind=socket.SOCK_DGRAM))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def volley_factory(tmp_path, dns):
    """Makes daemons (not started); at teardown each running one gets SIGTERM and must exit 0."""
    made: list[Volley] = []

    def make(name: str = "volley") -> Volley:
        v = Volley(tmp_path, dns, name)
        made.append(v)
        return v

    yield make
    failures = []
    for v in made:
        if v.process is not None:
            rc = v.stop()
            if rc != 0:
                failures.append(f"{v.dir.name} exited {rc}:\n{v.stderr_tail()}")
    assert not failures, "\n".join(failures)


@pytest.fixture
def volley(volley_factory) -> Volley:
    return volley_factory()


@pytest.fixture
def sink_factory(tmp_path):
    """`make(address="127.0.0.10", port=None, *args)` starts a sink; all are stopped at teardown."""
    made: list[Sink] = []

    def make(address: str = "127.0.0.10", port: int | None = None, args: list[str] = ()) -> Sink:
        s = Sink(tmp_path, address, port or free_port(address), list(args))
        made.append(s)
        return s.start()

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def catcher_factory():
    """`make(address="127.0.0.11", port=None)` starts a MailCatcher; all stopped at teardown."""
    made: list[MailCatcher] = []

    def make(address: str = "127.0.0.11", port: int | None = None,
             chunking: bool = False) -> MailCatcher:
        c = MailCatcher(address, port or free_port(address), chunking)
        c.start()
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture(scope="session")
def password_hash() -> Callable[[str], str]:
    """`volley hash-password` for a password, memoised (argon2id is slow in debug builds)."""
    cache: dict[str, str] = {}

    def make(password: str) -> str:
        if password not in cache:
            result = subprocess.run(
                [str(VOLLEY_BIN), "hash-password"],
                input=password.encode(),
                capture_output=True,
                timeout=60,
                check=True,
            )
            cache[password] = result.stdout.decode().strip()
            assert cache[password].startswith("$argon2id$"), cache[password]
        return cache[password]

    return make
