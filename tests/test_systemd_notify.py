"""systemd's readiness protocol (Type=notify): `volley serve` with NOTIFY_SOCKET set sends READY=1
only once every core serves, RELOADING=1 then READY=1 around a SIGHUP reload, and STOPPING=1 at
SIGTERM. The test plays systemd: it listens on the datagram socket and polls /v1/health."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

from conftest import START_TIMEOUT_S, STOP_TIMEOUT_S, VOLLEY_BIN, Volley


def listen(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    return s


def next_state(s: socket.socket, timeout_s: float) -> tuple[float, str]:
    """(arrival time, datagram) of the next notification."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = s.recv(4096)
            return time.monotonic(), data.decode()
        except socket.timeout:
            continue
    raise AssertionError(f"no notification within {timeout_s}s")


def start_notified(v: Volley, notify_socket: str) -> None:
    """Starts `volley serve` as systemd would, without waiting for health (the test polls)."""
    v.write_config()
    v._stderr = open(v.stderr_path, "ab")
    v.process = subprocess.Popen(
        [str(VOLLEY_BIN), "serve", "--config", str(v.config_path)],
        stdin=subprocess.DEVNULL,
        stdout=v._stderr,
        stderr=v._stderr,
        cwd=v.dir,
        env={**os.environ, "NOTIFY_SOCKET": notify_socket},
    )


class HealthPoller(threading.Thread):
    """Polls /v1/health back to back and keeps (request start, serving?, cores_ready)."""

    def __init__(self, v: Volley) -> None:
        super().__init__(daemon=True)
        self.v = v
        self.seen: list[tuple[float, bool, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            try:
                status, body = self.v.api("GET", "/v1/health", timeout_s=1)
                serving = status == 200 and body["status"] == "serving"
                ready = body["cores_ready"] if isinstance(body, dict) else 0
            except OSError:
                serving, ready = False, 0
            self.seen.append((started, serving, ready))
            time.sleep(0.002)


def test_ready_only_after_every_core_serves_then_reloading_and_stopping(volley_factory, tmp_path):
    v = volley_factory()
    v.config["server"]["cores"] = 2
    path = str(tmp_path / "notify.sock")
    listener = listen(path)
    poller = HealthPoller(v)
    poller.start()
    try:
        start_notified(v, path)
        ready_at, state = next_state(listener, START_TIMEOUT_S)
        assert state.splitlines()[0] == "READY=1", state
        assert "STATUS=serving on 2 cores" in state, state
        assert f"MAINPID={v.process.pid}" in state, state
        # Every health request made after READY=1 arrived finds both cores serving.
        time.sleep(0.3)
        after = [s for s in poller.seen if s[0] > ready_at]
        assert after, "the poller made no request after READY=1"
        assert all(serving and ready == 2 for _, serving, ready in after), after[:5]
    finally:
        poller.done.set()
        poller.join(timeout=5)

    # A reload: RELOADING=1 (with systemd's clock), then READY=1 again.
    v.signal(signal.SIGHUP)
    _, state = next_state(listener, 10)
    assert state.splitlines()[0] == "RELOADING=1", state
    usec = int(next(line for line in state.splitlines() if line.startswith("MONOTONIC_USEC="))[15:])
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 30, state
    _, state = next_state(listener, 10)
    assert state.splitlines()[0] == "READY=1", state

    # The stop: STOPPING=1 while the process still runs its graceful stop, then exit 0.
    v.signal(signal.SIGTERM)
    _, state = next_state(listener, 10)
    assert state.splitlines()[0] == "STOPPING=1", state
    assert v.stop(STOP_TIMEOUT_S) == 0, v.stderr_tail()
    listener.close()


def test_abstract_notify_socket(volley_factory):
    v = volley_factory()
    name = f"volley-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(0.2)
    start_notified(v, "@" + name)
    _, state = next_state(listener, START_TIMEOUT_S)
    assert state.startswith("READY=1\n"), state
    status, body = v.api("GET", "/v1/health")
    assert status == 200 and body["cores_ready"] == body["cores"], body
    listener.close()
