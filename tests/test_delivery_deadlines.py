"""Outbound delivery that never sticks: every I/O step has a deadline that names its stage, a failed
connection defers only what it took, a receiver's connection limit is learned, and a connection with
nothing to send touches no other hop. The receivers are tiny Python SMTP servers on loopback that
misbehave on purpose."""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from conftest import DELIVERY_TIMEOUT_S, free_port, message, wait_until

# Small deadlines: a stage that hangs must cost this much, not the RFC's minutes.
GREETING_TIMEOUT_MS = 1500
WRITE_TIMEOUT_MS = 1500
# What a timeout may take beyond its deadline here: the accounting log is written in batches and the
# daemon is a debug build on a busy machine.
SLACK_S = 3.0
LINE_BYTES_MAX = 4096


class Receiver:
    """A threaded SMTP server on `address`:`port` that can misbehave:

    - `tarpit`: accepts and never greets;
    - `stall_data`: reads nothing after answering 354 to DATA;
    - `admit`: at most this many sessions at once, the others get 421 "too many connections" at the
      greeting (Postfix's `smtpd_client_connection_count_limit`);
    - `mute`: answers nothing from this command on: `b"MAIL"`, `b"."` (the end of data), or
      `b"STARTTLS"` (offered, answered 220, then no handshake).

    Counts connections and keeps the recipients of each message accepted. No PIPELINING, no CHUNKING:
    the client talks in lock-step, so each reply answers one command.
    """

    def __init__(
        self, address: str, port: int, *, tarpit=False, stall_data=False, admit=None, mute=None
    ):
        self.address, self.port = address, port
        self.tarpit, self.stall_data, self.admit = tarpit, stall_data, admit
        # `mute`: the command (b"MAIL", b"STARTTLS", b".") after which the server says nothing more.
        self.mute = mute
        self.lock = threading.Lock()
        self.connections = 0
        self.refused = 0
        self.active = 0
        self.messages: list[list[str]] = []
        self.data_started_at: float | None = None
        self.closed = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A small receive buffer, inherited by accepted sockets: a stalled reader fills up fast.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind((address, port))
        self.sock.listen(128)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def hostport(self) -> str:
        return f"{self.address}:{self.port}"

    def recipients(self) -> list[str]:
        with self.lock:
            return [r for m in self.messages for r in m]

    def stop(self) -> None:
        self.closed.set()
        self.sock.close()
        for s in self.held:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            self.held.append(conn)
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        if self.tarpit:
            self.closed.wait()  # never a word
            return
        with self.lock:
            admitted = self.admit is None or self.active < self.admit
            if admitted:
                self.active += 1
            else:
                self.refused += 1
        if not admitted:
            conn.sendall(b"421 4.7.0 rx.test Error: too many connections from you\r\n")
            conn.close()
            return
        counted = [True]  # until the session leaves, once
        try:
            self._talk(conn, counted)
        except OSError:
            pass
        finally:
            self._leave(counted)
            conn.close()

    def _leave(self, counted: list[bool]) -> None:
        with self.lock:
            if counted[0]:
                counted[0] = False
                self.active -= 1

    def _talk(self, conn: socket.socket, counted: list[bool]) -> None:
        f = conn.makefile("rb")

        def reply(text: str) -> None:
            conn.sendall(text.encode() + b"\r\n")

        reply("220 rx.test ESMTP")
        recipients: list[str] = []
        while True:
            line = f.readline(LINE_BYTES_MAX)
            if not line:
                return
            verb = line[:4].upper()
            if self.mute is not None and line.upper().startswith(self.mute):
                if self.mute == b"STARTTLS":
                    reply("220 2.0.0 Ready to start TLS")
                self.closed.wait()
                return
            if verb in (b"EHLO", b"HELO"):
                tls = "250-STARTTLS\r\n" if self.mute == b"STARTTLS" else ""
                reply(f"250-rx.test\r\n{tls}250-8BITMIME\r\n250 ENHANCEDSTATUSCODES")
            elif verb == b"MAIL":
                recipients = []
                reply("250 2.1.0 Ok")
            elif verb == b"RCPT":
                addr = line.decode(errors="replace").split(":", 1)[1].strip().strip("<>")
                recipients.append(addr.split(">")[0])
                reply("250 2.1.5 Ok")
            elif verb == b"DATA":
                reply("354 go ahead")
                if self.stall_data:
                    self.data_started_at = time.monotonic()
                    self.closed.wait()  # reads nothing more: the client's writes stall
                    return
                while True:
                    data = f.readline(LINE_BYTES_MAX)
                    if not data:
                        return
                    if data == b".\r\n":
                        break
                if self.mute == b".":
                    self.closed.wait()
                    return
                with self.lock:
                    self.messages.append(recipients)
                reply("250 2.0.0 Ok: queued")
            elif verb == b"RSET":
                recipients = []
                reply("250 2.0.0 Ok")
            elif verb == b"QUIT":
                # Counted out before the 221: the client never sees an admitted session close
                # while this server still counts it.
                self._leave(counted)
                reply("221 2.0.0 Bye")
                return
            else:
                reply("502 5.5.2 Not implemented")


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(address: str, port: int | None = None, **modes) -> Receiver:
        r = Receiver(address, port or free_port(address), **modes)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stop()


def transients(volley, domain: str) -> list[dict]:
    return [e for e in volley.acct("transient") if e["domain"] == domain]


def test_a_receiver_that_never_greets_costs_the_greeting_deadline(volley, receivers):
    tarpit = receivers("127.0.0.60", tarpit=True)
    volley.route("dest.test", tarpit.hostport)
    volley.policy(greeting_timeout_ms=GREETING_TIMEOUT_MS, retry_intervals=["1h"])
    volley.start()

    sent_at = time.monotonic()
    volley.send("alice@src.test", ["bob@dest.test"], message("tarpit"))
    # While the tarpit holds it, the connection is open and counted.
    wait_until(lambda: tarpit.connections == 1, DELIVERY_TIMEOUT_S, "a connection to the tarpit")
    assert volley.metrics()["volley_outbound_connections"] == 1
    [transient] = volley.wait_acct("transient", timeout_s=GREETING_TIMEOUT_MS / 1000 + 10)
    waited_s = time.monotonic() - sent_at
    assert waited_s <= GREETING_TIMEOUT_MS / 1000 + SLACK_S, waited_s
    assert transient["recipient"] == "bob@dest.test"
    assert transient["enhanced_code"] == "4.4.2", transient
    assert "Timeout waiting for greeting from" in transient["response"], transient
    assert "127.0.0.60" in transient["response"], transient
    assert transient["response"].startswith("451"), transient
    wait_until(
        lambda: volley.metrics()["volley_outbound_connections"] == 0,
        DELIVERY_TIMEOUT_S,
        "the connection closed",
    )
    assert tarpit.connections == 1, "one hop, tried once: the mail waits for its retry"


@pytest.mark.parametrize(
    "mute, key, stage",
    [
        (b"MAIL", "reply_timeout_ms", "Timeout waiting for MAIL reply from"),
        (b".", "data_timeout_ms", "Timeout waiting for end-of-data reply from"),
        (b"STARTTLS", "tls_timeout_ms", "Timeout in the TLS handshake with"),
    ],
    ids=["reply", "data", "tls"],
)
def test_a_receiver_that_stops_answering_costs_that_stage_deadline(
    volley, receivers, mute, key, stage
):
    mute_rx = receivers("127.0.0.67", mute=mute)
    volley.route("dest.test", mute_rx.hostport)
    deadline_ms = 1500
    volley.policy(**{key: deadline_ms}, retry_intervals=["1h"])
    volley.start()

    sent_at = time.monotonic()
    volley.send("alice@src.test", ["bob@dest.test"], message(f"mute {key}"))
    [transient] = volley.wait_acct("transient", timeout_s=deadline_ms / 1000 + 10)
    waited_s = time.monotonic() - sent_at
    assert waited_s <= deadline_ms / 1000 + SLACK_S, waited_s
    assert transient["enhanced_code"] == "4.4.2", transient
    assert stage in transient["response"], transient
    assert "127.0.0.67" in transient["response"], transient
    assert volley.acct("delivery") == []


def test_a_connect_that_never_completes_costs_the_connect_deadline(volley):
    # A listener that never accepts, its accept queue filled: the kernel drops further SYNs.
    listener = socket.socket()
    listener.bind(("127.0.0.69", 0))
    listener.listen(0)
    address = listener.getsockname()
    filler = socket.create_connection(address, timeout=5)
    try:
        volley.route("dest.test", f"{address[0]}:{address[1]}")
        volley.policy(connect_timeout_ms=1500, retry_intervals=["1h"])
        volley.start()
        sent_at = time.monotonic()
        volley.send("alice@src.test", ["bob@dest.test"], message("black hole"))
        [transient] = volley.wait_acct("transient", timeout_s=1.5 + 10)
        assert time.monotonic() - sent_at <= 1.5 + SLACK_S
        assert transient["enhanced_code"] == "4.4.2", transient
        assert "Timeout connecting to 127.0.0.69" in transient["response"], transient
        assert volley.metrics()["volley_outbound_connections"] == 0, "never connected"
    finally:
        filler.close()
        listener.close()


def test_a_reload_applies_new_deadlines_to_the_next_connection(volley, receivers):
    tarpit = receivers("127.0.0.68", tarpit=True)
    volley.route("dest.test", tarpit.hostport)
    volley.policy(greeting_timeout_ms=600_000, retry_intervals=["1h"])
    volley.start()
    volley.policy(greeting_timeout_ms=GREETING_TIMEOUT_MS)
    volley.write_config()
    volley.signal(signal.SIGHUP)
    wait_until(
        lambda: "applied" in volley.stderr_path.read_text(errors="replace"),
        DELIVERY_TIMEOUT_S,
        "the reload",
    )

    sent_at = time.monotonic()
    volley.send("alice@src.test", ["bob@dest.test"], message("after reload"))
    [transient] = volley.wait_acct("transient", timeout_s=GREETING_TIMEOUT_MS / 1000 + 10)
    assert time.monotonic() - sent_at <= GREETING_TIMEOUT_MS / 1000 + SLACK_S
    assert "Timeout waiting for greeting from" in transient["response"], transient


def test_a_receiver_that_stops_reading_during_data_costs_the_write_deadline(volley, receivers):
    stall = receivers("127.0.0.61", stall_data=True)
    volley.route("dest.test", stall.hostport)
    volley.policy(write_timeout_ms=WRITE_TIMEOUT_MS, retry_intervals=["1h"])
    volley.start()

    # Larger than every buffer between the two (4 MiB send buffer, 4 KiB receive buffer).
    body = ("x" * 998 + "\r\n") * 12_000
    volley.send("alice@src.test", ["bob@dest.test"], message("stall", body=body))
    [transient] = volley.wait_acct("transient", timeout_s=WRITE_TIMEOUT_MS / 1000 + 20)
    assert stall.data_started_at is not None
    waited_s = time.monotonic() - stall.data_started_at
    assert waited_s <= WRITE_TIMEOUT_MS / 1000 + SLACK_S, waited_s
    assert transient["enhanced_code"] == "4.4.2", transient
    assert "Timeout writing to" in transient["response"], transient
    assert "127.0.0.61" in transient["response"], transient
    assert volley.acct("delivery") == []


def test_a_receiver_admitting_few_connections_still_gets_all_mail(volley, receivers):
    """The livelock against Postfix's smtpd_client_connection_count_limit: the refused connections
    took nothing, so they defer nothing, and the queue learns how many connections it gets."""
    admit = 3
    limited = receivers("127.0.0.62", admit=admit)
    volley.route("dest.test", limited.hostport)
    # A deferral would wait an hour: every message must go through on the admitted connections.
    volley.policy(retry_intervals=["1h"], max_messages_per_connection=1000)
    volley.start()

    # Held until all are queued, so the scheduler opens its 10 connections (one per 20) at once.
    status, body = volley.api("POST", "/v1/queues/suspend", {"domain": "dest.test"})
    assert status == 202, body
    count = 200
    rcpts = [f"r{n}@dest.test" for n in range(count)]
    with volley.smtp() as client:
        for rcpt in rcpts:
            client.sendmail("alice@src.test", [rcpt], message(f"limit {rcpt}"))
    status, body = volley.api("POST", "/v1/queues/resume", {"domain": "dest.test"})
    assert status == 202, body
    wait_until(
        lambda: len(limited.recipients()) >= count,
        DELIVERY_TIMEOUT_S * 4,
        f"{count} recipients at the receiver",
    )
    assert sorted(limited.recipients()) == sorted(rcpts)
    assert transients(volley, "dest.test") == [], "nothing was deferred"
    assert limited.refused >= 1, "the receiver did refuse connections"
    log = volley.stderr_path.read_text(errors="replace")
    assert "refused a connection" in log and "too many connections" in log, log[-2000:]
    volley.wait_acct("delivery", count=count)


def test_a_connection_with_nothing_to_send_does_not_touch_the_next_mx(volley, dns, receivers):
    dns.mx("dest.test", 10, "mx1.dest.test")
    dns.mx("dest.test", 20, "mx2.dest.test")
    dns.a("mx1.dest.test", "127.0.0.63")
    dns.a("mx2.dest.test", "127.0.0.64")
    mx1 = receivers("127.0.0.63", 25)
    mx2 = receivers("127.0.0.64", 25)
    volley.start()

    # One message, 41 recipients: the scheduler opens three connections (one per 20 recipients),
    # the first takes the whole transaction, the other two find the queue empty and QUIT.
    rcpts = [f"r{n}@dest.test" for n in range(41)]
    volley.send("alice@src.test", rcpts, message("one transaction"))
    wait_until(lambda: len(mx1.recipients()) >= len(rcpts), DELIVERY_TIMEOUT_S, "the delivery")
    volley.wait_acct("delivery", count=len(rcpts))
    # The idle connections linger a second for more mail, then QUIT: give them time to go wrong.
    time.sleep(3)
    assert sorted(mx1.recipients()) == sorted(rcpts)
    assert mx1.connections >= 2, "several connections were opened"
    assert mx2.connections == 0, "a clean end tries no other hop"
    assert transients(volley, "dest.test") == []


def test_a_rate_wait_opens_no_connection(volley, receivers):
    rx = receivers("127.0.0.65")
    volley.route("dest.test", rx.hostport)
    # One send per 30 s: the first goes at once, the rest wait without a socket.
    volley.policy(max_messages_per_minute=2, retry_intervals=["1h"])
    volley.start()

    # Held until all are queued, so the scheduler opens two connections (one per 20) at once.
    status, body = volley.api("POST", "/v1/queues/suspend", {"domain": "dest.test"})
    assert status == 202, body
    with volley.smtp() as client:
        for n in range(25):
            client.sendmail("alice@src.test", [f"r{n}@dest.test"], message(f"rate {n}"))
    # The queue made by the suspension runs under its configured policy (no reload needed).
    status, body = volley.api("POST", "/v1/queues/resume", {"domain": "dest.test"})
    assert status == 202, body
    wait_until(lambda: len(rx.recipients()) == 1, DELIVERY_TIMEOUT_S, "the first message")
    time.sleep(3)
    assert len(rx.recipients()) == 1
    assert rx.connections == 1, "no connection was opened only to wait for the rate"
    assert transients(volley, "dest.test") == []


def test_a_smarthost_refusing_many_domains_is_one_refusal(volley, sink_factory):
    smarthost = sink_factory("127.0.0.66", None, ["--refuse-from", "127.0.0.2"])
    domains = ["d1.test", "d2.test", "d3.test", "d4.test"]
    for d in domains:
        volley.route(d, smarthost.hostport)
    volley.policy(retry_intervals=["1h"])
    volley.config["shaping"] = {"vmta_refusal_domains": 3, "vmta_refusal_window_s": 300}
    volley.start()

    with volley.smtp() as client:
        for d in domains:
            client.sendmail("alice@src.test", [f"bob@{d}"], message(f"via smarthost {d}"))
    wait_until(
        lambda: {e["domain"] for e in volley.acct("transient")} >= set(domains),
        DELIVERY_TIMEOUT_S,
        "every domain refused",
    )
    status, body = volley.api("GET", "/v1/vmta-status")
    assert status == 200, body
    assert body["disabled"] == [], "one next hop refusing is not 'refused everywhere'"
    assert volley.metrics()["volley_vmtas_refused_out_total"] == 0
