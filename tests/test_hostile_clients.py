"""Clients that try to hold or abuse the inbound side, against the real daemon with short deadlines:
slowloris in command and DATA state, TLS handshakes that never finish, clients that stop reading,
over-long command lines, SMTP smuggling through BDAT, and the metric that counts refused messages."""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import time

import pytest

from conftest import SMTP_TIMEOUT_S, VOLLEY_BIN, free_port, wait_until

COMMAND_TIMEOUT_MS = 1500
DATA_TIMEOUT_MS = 2500
TLS_TIMEOUT_MS = 1000
WRITE_TIMEOUT_MS = 1000
# Slack for a debug build on a busy 2-core machine; every bound below is far under what a
# per-read timeout would allow (the trickling clients would never be cut at all).
SLACK_S = 2.5


@pytest.fixture
def hostile(volley):
    """A daemon whose plain and implicit-TLS listeners have short deadlines."""
    volley.implicit_port = free_port()
    deadlines = {
        "command_timeout_ms": COMMAND_TIMEOUT_MS,
        "data_timeout_ms": DATA_TIMEOUT_MS,
        "tls_timeout_ms": TLS_TIMEOUT_MS,
        "write_timeout_ms": WRITE_TIMEOUT_MS,
    }
    volley.config["listener"][0].update(deadlines)
    volley.config["listener"].append(
        {"address": f"127.0.0.1:{volley.implicit_port}", "tls": "implicit", **deadlines}
    )
    return volley.start()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=SMTP_TIMEOUT_S)


def read_reply(sock: socket.socket) -> str:
    """One complete (possibly multi-line) reply."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
        lines = data.split(b"\r\n")
        complete = lines[:-1]
        if complete and len(complete[-1]) >= 4 and complete[-1][3:4] == b" ":
            return data.decode()


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes; the time the close took."""
    start = time.monotonic()
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


def greeted(port: int) -> socket.socket:
    sock = connect(port)
    assert read_reply(sock).startswith("220 ")
    return sock


def trickle(sock: socket.socket, pieces: list[bytes], interval_s: float) -> None:
    """Sends one piece every `interval_s` until the server says something (or all are sent).
    Never sends after the server spoke, so its reply is not lost to a reset."""
    for piece in pieces:
        readable, _, _ = select.select([sock], [], [], interval_s)
        if readable:
            return
        sock.sendall(piece)


def test_byte_per_interval_client_is_cut_by_the_command_deadline(hostile):
    sock = greeted(hostile.relay_port)
    start = time.monotonic()
    # One octet every 0.3 s: each read is far inside any per-read timeout.
    trickle(sock, [bytes([b]) for b in b"EHLO " + b"x" * 200], 0.3)
    data, _ = read_until_closed(sock, SMTP_TIMEOUT_S)
    took = time.monotonic() - start
    assert data.decode().endswith("421 4.4.2 mta.volley.test command timeout\r\n"), data
    assert took < COMMAND_TIMEOUT_MS / 1000 + SLACK_S, took
    wait_until(
        lambda: "command timeout" in hostile.stderr_path.read_text(errors="replace"),
        5,
        "the log line naming the stage",
    )


def test_trickled_body_is_cut_by_the_data_deadline(hostile):
    sock = greeted(hostile.relay_port)
    for command in (b"EHLO c\r\n", b"MAIL FROM:<a@src.test>\r\n", b"RCPT TO:<b@dest.test>\r\n"):
        sock.sendall(command)
        assert read_reply(sock)[0] == "2"
    sock.sendall(b"DATA\r\n")
    assert read_reply(sock).startswith("354")
    start = time.monotonic()
    # A line every 0.5 s: the body never ends, no single read is late.
    trickle(sock, [b"line\r\n"] * 100, 0.5)
    data, _ = read_until_closed(sock, SMTP_TIMEOUT_S)
    took = time.monotonic() - start
    assert data.decode().endswith("421 4.4.2 mta.volley.test data timeout\r\n"), data
    assert DATA_TIMEOUT_MS / 1000 - 0.5 < took < DATA_TIMEOUT_MS / 1000 + SLACK_S, took


def test_silent_tls_client_is_closed_after_tls_timeout(hostile):
    sock = connect(hostile.implicit_port)
    # Half a TLS record header, then nothing: the handshake never completes.
    sock.sendall(b"\x16\x03")
    data, took = read_until_closed(sock, SMTP_TIMEOUT_S)
    assert data == b""
    assert TLS_TIMEOUT_MS / 1000 - 0.3 < took < TLS_TIMEOUT_MS / 1000 + SLACK_S, took
    wait_until(
        lambda: "tls timeout" in hostile.stderr_path.read_text(errors="replace"),
        5,
        "the log line naming the stage",
    )
    # No [tls] section: the certificate is self-signed, and the log says so.
    log = hostile.stderr_path.read_text(errors="replace")
    assert "self-signed certificate for mta.volley.test" in log, log


def test_stalled_starttls_handshake_is_closed(volley):
    volley.config["listener"][0].update({"tls": "starttls", "tls_timeout_ms": TLS_TIMEOUT_MS})
    volley.start()
    sock = greeted(volley.relay_port)
    sock.sendall(b"EHLO c\r\n")
    assert "STARTTLS" in read_reply(sock)
    sock.sendall(b"STARTTLS\r\n")
    assert read_reply(sock).startswith("220 ")
    data, took = read_until_closed(sock, SMTP_TIMEOUT_S)
    assert data == b""
    assert took < TLS_TIMEOUT_MS / 1000 + SLACK_S, took


def test_client_that_stops_reading_is_closed_after_write_timeout(hostile):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A tiny receive window so the server's replies back up quickly.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(SMTP_TIMEOUT_S)
    sock.connect(("127.0.0.1", hostile.relay_port))
    sock.setblocking(False)
    noops = b"NOOP\r\n" * 4096
    deadline = time.monotonic() + 20
    # Pipeline NOOPs without reading a reply until the server stops reading too.
    while time.monotonic() < deadline:
        try:
            sock.send(noops)
        except BlockingIOError:
            break
        except (BrokenPipeError, ConnectionResetError):
            break
    wait_until(
        lambda: "write timeout" in hostile.stderr_path.read_text(errors="replace"),
        WRITE_TIMEOUT_MS / 1000 + SLACK_S + 5,
        "the write deadline to close the session",
    )
    sock.close()


def test_over_long_line_is_answered_before_crlf(hostile):
    sock = greeted(hostile.relay_port)
    sock.sendall(b"MAIL FROM:<" + b"a" * 600)
    reply = read_reply(sock)
    assert reply == "500 5.5.2 Command line too long\r\n", reply
    # The rest of that line is dropped without another reply; the session goes on.
    sock.sendall(b"aaaa>\r\nNOOP\r\n")
    assert read_reply(sock) == "250 2.0.0 Ok\r\n"


def rejected(volley) -> float:
    return volley.metrics().get("volley_messages_rejected_total", 0.0)


def test_bdat_with_bare_cr_is_refused_and_counted(hostile):
    before = rejected(hostile)
    sock = greeted(hostile.relay_port)
    for command in (b"EHLO c\r\n", b"MAIL FROM:<a@src.test>\r\n", b"RCPT TO:<b@dest.test>\r\n"):
        sock.sendall(command)
        assert read_reply(sock)[0] == "2"
    # The smuggling attack: a bare CR before the dot, then a second transaction.
    body = (
        b"Subject: hi\r\n\r\nx\r.\r\nMAIL FROM:<ceo@bank.test>\r\nRCPT TO:<v@dest.test>\r\n"
        b"DATA\r\nspoofed\r\n"
    )
    sock.sendall(b"BDAT %d LAST\r\n" % len(body) + body)
    reply = read_reply(sock)
    assert reply.startswith("550 5.6.11 "), reply
    # The same through DATA, with a bare LF.
    for command in (b"MAIL FROM:<a@src.test>\r\n", b"RCPT TO:<b@dest.test>\r\n"):
        sock.sendall(command)
        assert read_reply(sock)[0] == "2"
    sock.sendall(b"DATA\r\n")
    assert read_reply(sock).startswith("354")
    sock.sendall(b"Subject: x\r\n\r\na\n.\nb\r\n.\r\n")
    reply = read_reply(sock)
    assert reply.startswith("550 5.6.11 "), reply
    # And a NUL in a text body.
    for command in (b"MAIL FROM:<a@src.test>\r\n", b"RCPT TO:<b@dest.test>\r\n"):
        sock.sendall(command)
        assert read_reply(sock)[0] == "2"
    sock.sendall(b"DATA\r\n")
    assert read_reply(sock).startswith("354")
    sock.sendall(b"Subject: x\r\n\r\na\x00.\r\n.\r\n")
    reply = read_reply(sock)
    assert reply.startswith("550 5.6.0 Message contains NUL octets"), reply
    sock.sendall(b"QUIT\r\n")
    read_reply(sock)
    assert rejected(hostile) == before + 3
    # Nothing was queued: no reception event for either message.
    assert hostile.acct("reception") == []


def test_reload_applies_the_listener_deadlines(volley):
    volley.implicit_port = free_port()
    volley.config["listener"][0].update({"command_timeout_ms": 60000})
    volley.config["listener"].append(
        {"address": f"127.0.0.1:{volley.implicit_port}", "tls": "implicit", "tls_timeout_ms": 60000}
    )
    volley.start()
    volley.config["listener"][0]["command_timeout_ms"] = COMMAND_TIMEOUT_MS
    volley.config["listener"][1]["tls_timeout_ms"] = TLS_TIMEOUT_MS
    volley.write_config()
    volley.signal(signal.SIGHUP)
    wait_until(
        lambda: "configuration generation" in volley.stderr_path.read_text(errors="replace"),
        10,
        "the reload to be read",
    )
    time.sleep(0.5)  # each core applies it at its next tick (100 ms)
    sock = greeted(volley.relay_port)
    data, took = read_until_closed(sock, SMTP_TIMEOUT_S)
    assert data.decode().endswith("command timeout\r\n"), data
    assert took < COMMAND_TIMEOUT_MS / 1000 + SLACK_S, took
    sock = connect(volley.implicit_port)
    data, took = read_until_closed(sock, SMTP_TIMEOUT_S)
    assert data == b""
    assert took < TLS_TIMEOUT_MS / 1000 + SLACK_S, took


def test_reload_removing_a_relay_network_stops_relaying_for_it(volley):
    volley.start()
    with volley.smtp() as client:
        client.ehlo("c")
        client.mail("a@src.test")
        assert client.rcpt("b@dest.test")[0] == 250
    volley.config["listener"][0]["relay_networks"] = ["10.0.0.0/8"]
    volley.write_config()
    volley.signal(signal.SIGHUP)
    wait_until(
        lambda: "configuration generation" in volley.stderr_path.read_text(errors="replace"),
        10,
        "the reload to be read",
    )
    time.sleep(0.5)  # each core applies it at its next tick (100 ms)
    with volley.smtp() as client:
        client.ehlo("c")
        client.mail("a@src.test")
        code, text = client.rcpt("b@dest.test")
        assert (code, text.split()[0]) == (554, b"5.7.1"), (code, text)


@pytest.mark.parametrize(
    "key", ["command_timeout_ms", "data_timeout_ms", "tls_timeout_ms", "write_timeout_ms"]
)
def test_check_refuses_a_zero_deadline(volley, key):
    volley.config["listener"][0][key] = 0
    path = volley.write_config()
    result = subprocess.run(
        [str(VOLLEY_BIN), "check", "--config", str(path)], capture_output=True, timeout=30
    )
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 1, out
    assert f"listener[0].{key}" in out and "at least 1 ms" in out, out
