"""PROXY protocol (v1 and v2) on listeners behind a load balancer: a real HAProxy in front of two
Volley nodes, the client address it hands on used for relay networks, per-IP caps, the `Received:`
line and the accounting log; untrusted peers and malformed headers closed before any greeting.

HAProxy is started by the test (never the system service) on a loopback port and connects to the
nodes from 127.0.0.1 (`source 127.0.0.1`); the clients connect to it from 127.0.0.5 and 127.0.0.6.
"""

from __future__ import annotations

import shutil
import smtplib
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SMTP_TIMEOUT_S, START_TIMEOUT_S, can_connect, free_port, message, wait_until

PROXY = "127.0.0.1"  # HAProxy's address, as the nodes see it: the only trusted proxy
OUTSIDER = "127.0.0.5"  # a client outside relay_networks
INSIDER = "127.0.0.6"  # a client inside relay_networks
STRANGER = "127.0.0.7"  # a peer that is not a trusted proxy

REJECTED = "volley_proxy_rejected_total"


def haproxy_bin() -> str:
    path = shutil.which("haproxy")
    # Not a skip: the cluster tests need it, and scripts/test-deps.sh installs it.
    assert path, "haproxy is not installed: run scripts/test-deps.sh"
    return path


class HaProxy:
    """One HAProxy in TCP mode, in the foreground, in front of `servers`."""

    def __init__(self, dir: Path, servers: list[int], send_proxy: str) -> None:
        self.port = free_port(PROXY)
        self.config_path = dir / "haproxy.cfg"
        self.log_path = dir / "haproxy.log"
        lines = [
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 30s",
            "    timeout server 30s",
            "frontend smtp",
            f"    bind {PROXY}:{self.port}",
            "    default_backend volley",
            "backend volley",
            "    balance roundrobin",
            f"    source {PROXY}",
        ]
        lines += [f"    server n{i} 127.0.0.1:{p} {send_proxy}" for i, p in enumerate(servers)]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> "HaProxy":
        binary = haproxy_bin()
        check = subprocess.run(
            [binary, "-c", "-f", str(self.config_path)], capture_output=True, timeout=30
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )

        def listening():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"haproxy exited {self.process.returncode}: {self.log_path.read_text()}"
                )
            return can_connect(PROXY, self.port)

        wait_until(listening, START_TIMEOUT_S, f"haproxy on {PROXY}:{self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
            self._log.close()
            self.process = None

    def smtp(self, source: str) -> smtplib.SMTP:
        return smtplib.SMTP(
            PROXY,
            self.port,
            local_hostname="client.test",
            timeout=SMTP_TIMEOUT_S,
            source_address=(source, 0),
        )


@pytest.fixture
def haproxy_factory(tmp_path):
    made: list[HaProxy] = []

    def make(servers: list[int], send_proxy: str = "send-proxy-v2") -> HaProxy:
        h = HaProxy(tmp_path, servers, send_proxy)
        made.append(h)
        return h.start()

    yield make
    for h in made:
        h.stop()


def behind_proxy(volley, catcher, **listener) -> None:
    """A proxy_protocol listener trusting only HAProxy's address; HAProxy's own address and
    INSIDER may relay."""
    volley.config["listener"][0].update(
        {
            "relay_networks": [f"{PROXY}/32", f"{INSIDER}/32"],
            "proxy_protocol": True,
            "trusted_proxies": [f"{PROXY}/32"],
            **listener,
        }
    )
    volley.route("dest.test", catcher.hostport)


def relay_refused(client: smtplib.SMTP) -> tuple[int, bytes]:
    client.ehlo()
    code, _ = client.mail("a@src.test")
    assert code == 250
    return client.rcpt("b@dest.test")


def test_haproxy_v2_hands_on_the_client_address(volley_factory, catcher_factory, haproxy_factory):
    catcher = catcher_factory("127.0.0.11")
    nodes = [volley_factory("n1"), volley_factory("n2")]
    for node in nodes:
        behind_proxy(node, catcher)
        node.start()
    haproxy = haproxy_factory([n.relay_port for n in nodes])

    # Outside relay_networks, though HAProxy's own address is inside: refused at RCPT, on both
    # nodes (round robin).
    for _ in range(2):
        with haproxy.smtp(OUTSIDER) as client:
            code, text = relay_refused(client)
            assert code in (550, 554) and text.startswith(b"5.7.1"), (code, text)

    # Inside: relayed, and the client's address is what the trace line and accounting name.
    for i in range(4):
        with haproxy.smtp(INSIDER) as client:
            refused = client.sendmail(
                "alice@src.test", ["bob@dest.test"], message(f"proxied {i}")
            )
            assert refused == {}
    caught = catcher.wait(4)
    for c in caught:
        [received] = c.parsed.get_all("Received")
        assert received.startswith(f"from client.test ([{INSIDER}])"), received
        assert PROXY not in received, received
    for node in nodes:
        receptions = node.wait_acct("reception", client_ip=INSIDER)
        assert all(r["client_ip"] == INSIDER for r in node.acct("reception")), node.acct()
        assert receptions[0]["sender"] == "alice@src.test"
        # Nothing was refused at the PROXY step.
        assert node.metrics()[REJECTED] == 0
        log = node.stderr_path.read_text(errors="replace")
        assert "closed without greeting" not in log, log


def test_haproxy_v1_hands_on_the_client_address(volley, catcher_factory, haproxy_factory):
    catcher = catcher_factory("127.0.0.11")
    behind_proxy(volley, catcher)
    volley.start()
    haproxy = haproxy_factory([volley.relay_port], send_proxy="send-proxy")

    with haproxy.smtp(OUTSIDER) as client:
        code, text = relay_refused(client)
        assert code in (550, 554) and text.startswith(b"5.7.1"), (code, text)
    with haproxy.smtp(INSIDER) as client:
        assert client.sendmail("alice@src.test", ["bob@dest.test"], message("v1")) == {}
    [caught] = catcher.wait(1)
    assert caught.parsed["Received"].startswith(f"from client.test ([{INSIDER}])")
    [reception] = volley.wait_acct("reception")
    assert reception["client_ip"] == INSIDER


def closed_without_greeting(sock: socket.socket) -> bool:
    """True when the server closes (or resets) without sending one octet."""
    sock.settimeout(SMTP_TIMEOUT_S)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def connect(volley, source: str) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", volley.relay_port), timeout=SMTP_TIMEOUT_S, source_address=(source, 0)
    )


class Replies:
    """Reads whole SMTP replies from a socket, keeping what arrives after one for the next."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def next(self) -> bytes:
        while True:
            end = 0
            while (cr := self.buffer.find(b"\r\n", end)) >= 0:
                line = self.buffer[end:cr]
                end = cr + 2
                if line[3:4] != b"-":
                    reply, self.buffer = self.buffer[:end], self.buffer[end:]
                    return reply
            chunk = self.sock.recv(4096)
            assert chunk, f"closed after {self.buffer!r}"
            self.buffer += chunk


def v2_header(source: str, destination: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    block = socket.inet_aton(source) + socket.inet_aton(destination) + struct.pack("!HH", sport, dport)
    block += tlvs
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(block)) + block


def wait_rejected(volley, count: int) -> None:
    wait_until(lambda: volley.metrics()[REJECTED] >= count, 5, f"{REJECTED} >= {count}")
    assert volley.metrics()[REJECTED] == count


def test_untrusted_peer_and_malformed_headers_are_closed_without_greeting(volley, catcher_factory):
    catcher = catcher_factory("127.0.0.11")
    behind_proxy(volley, catcher, proxy_timeout_ms=500)
    volley.start()

    # A peer that is not a trusted proxy, even sending a good header: closed at once.
    with connect(volley, STRANGER) as sock:
        sock.sendall(b"PROXY TCP4 127.0.0.6 127.0.0.1 40000 25\r\n")
        assert closed_without_greeting(sock)
    wait_rejected(volley, 1)

    # A trusted peer with a malformed header, or an SMTP client speaking first.
    bad = [
        b"PROXY TCP4 127.0.0.6 127.0.0.1 40000\r\n",
        b"PROXY TCP4 ::1 127.0.0.1 40000 25\r\n",
        b"EHLO client.test\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",  # 65535 octets announced
        b"PROXY UNKNOWN " + b"x" * 120,  # no CRLF within 107 octets
    ]
    for header in bad:
        with connect(volley, PROXY) as sock:
            sock.sendall(header)
            assert closed_without_greeting(sock), header
    wait_rejected(volley, 1 + len(bad))

    # Nothing sent within proxy_timeout_ms: closed too.
    started = time.monotonic()
    with connect(volley, PROXY) as sock:
        assert closed_without_greeting(sock)
    assert 0.4 < time.monotonic() - started < 5
    wait_rejected(volley, 2 + len(bad))

    log = volley.stderr_path.read_text(errors="replace")
    assert f"proxy {STRANGER}:" in log and "not in trusted_proxies" in log, log
    assert "v1 header without exactly two addresses and two ports" in log, log
    assert "v1 header with an address that is not of its protocol's family" in log, log
    assert "no PROXY header" in log, log
    assert "v2 header of 65535 octets" in log, log
    assert "v1 header without CRLF in its first 107 octets" in log, log
    assert "no whole PROXY header within 500 ms" in log, log
    assert catcher.messages == []


def test_octets_after_the_header_reach_the_session(volley, catcher_factory):
    """A client's first commands in the same segment as the header (v2 with a TLV, then v1), and a
    v2 LOCAL header (the proxy's own health check), which leaves the proxy's address in place."""
    catcher = catcher_factory("127.0.0.11")
    behind_proxy(volley, catcher)
    volley.config["listener"][0]["relay_networks"] = [f"{INSIDER}/32"]
    volley.start()

    noop_tlv = b"\x04\x00\x02\x00\x00"
    pipelined = b"EHLO a.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@dest.test>\r\n"
    for header, expected in (
        (v2_header(INSIDER, "127.0.0.1", 40000, 25, noop_tlv), b"250 "),
        (b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 25\r\n", b"554 5.7.1"),
        # LOCAL: the connection's own peer (127.0.0.1, not a relay network here) stands.
        (b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00", b"554 5.7.1"),
    ):
        with connect(volley, PROXY) as sock:
            sock.sendall(header + pipelined)
            replies = Replies(sock)
            assert replies.next().startswith(b"220 ")
            assert replies.next().startswith(b"250-")  # EHLO
            assert replies.next().startswith(b"250 ")  # MAIL
            assert replies.next().startswith(expected), header
    assert volley.metrics()[REJECTED] == 0


def test_per_ip_cap_counts_the_client_behind_the_proxy(volley, catcher_factory):
    catcher = catcher_factory("127.0.0.11")
    behind_proxy(volley, catcher)
    volley.config["server"]["max_connections_per_ip"] = 1
    volley.start()

    first = connect(volley, PROXY)
    first.sendall(b"PROXY TCP4 127.0.0.6 127.0.0.1 40000 25\r\n")
    assert Replies(first).next().startswith(b"220 ")
    try:
        # Same client behind the same proxy: over its cap.
        with connect(volley, PROXY) as sock:
            sock.sendall(b"PROXY TCP4 127.0.0.6 127.0.0.1 40001 25\r\n")
            reply = Replies(sock).next()
            assert reply.startswith(b"421 4.7.0 Too many connections from your address"), reply
        # Another client through the same proxy connection address: welcome.
        with connect(volley, PROXY) as sock:
            sock.sendall(b"PROXY TCP4 127.0.0.8 127.0.0.1 40002 25\r\n")
            assert Replies(sock).next().startswith(b"220 ")
    finally:
        first.close()
    log = volley.stderr_path.read_text(errors="replace")
    assert "refused 127.0.0.6:40001" in log, log


def test_implicit_tls_listener_reads_the_header_before_the_handshake(volley, catcher_factory):
    catcher = catcher_factory("127.0.0.11")
    behind_proxy(volley, catcher, tls="implicit")
    volley.start()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    for client, expected in ((INSIDER, b"250 "), (OUTSIDER, b"554 5.7.1")):
        raw = connect(volley, PROXY)
        raw.sendall(f"PROXY TCP4 {client} 127.0.0.1 40000 465\r\n".encode())
        with context.wrap_socket(raw, server_hostname="mta.volley.test") as sock:
            replies = Replies(sock)
            assert replies.next().startswith(b"220 ")
            sock.sendall(b"EHLO tls.test\r\n")
            assert replies.next().startswith(b"250-")
            sock.sendall(b"MAIL FROM:<a@src.test>\r\n")
            assert replies.next().startswith(b"250 ")
            sock.sendall(b"RCPT TO:<b@dest.test>\r\n")
            assert replies.next().startswith(expected), client
    assert volley.metrics()[REJECTED] == 0
