"""Limits on input: message size, recipients, line length, and bare LF (SMTP smuggling)."""

import socket
import time

import pytest

from conftest import SMTP_TIMEOUT_S, message


class RawSmtp:
    """A byte-exact SMTP client, for what smtplib would normalise away."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=SMTP_TIMEOUT_S)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, str]:
        """One whole (possibly multi-line) reply: (code, text of the last line)."""
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; unread {self.buffer!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            if len(text) >= 4 and text[3] == " ":
                return int(text[:3]), text[4:]

    def cmd(self, line: bytes) -> tuple[int, str]:
        self.send(line + b"\r\n")
        return self.reply()

    def nothing_within(self, seconds: float) -> bool:
        """True if the server sends nothing for `seconds`."""
        if self.buffer:
            return False
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(SMTP_TIMEOUT_S)
        self.buffer += data
        return False


@pytest.fixture
def raw(volley):
    clients = []

    def connect() -> RawSmtp:
        client = RawSmtp(volley.relay_port)
        clients.append(client)
        code, _ = client.reply()
        assert code == 220
        code, _ = client.cmd(b"EHLO raw.test")
        assert code == 250
        return client

    yield connect
    for c in clients:
        c.close()


def test_size_over_max_message_bytes_gets_552(volley, sink_factory):
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.config["listener"][0]["max_message_bytes"] = 10_000
    volley.start()
    with volley.smtp() as client:
        client.ehlo("client.test")
        assert client.esmtp_features["size"] == "10000"
        code, text = client.mail("alice@src.test", ["SIZE=10001"])
        assert code == 552, text
        assert text.startswith(b"5.3.4"), text
        # A body over the limit without SIZE is refused at the end of data, and not delivered.
        assert client.mail("alice@src.test")[0] == 250
        assert client.rcpt("bob@dest.test")[0] == 250
        code, text = client.data(message("big", body="x" * 70 + "\r\n") * 200)
        assert code == 552, text
        assert text.startswith(b"5.3.4"), text
        # Within the limit, the same session still works.
        client.sendmail("alice@src.test", ["bob@dest.test"], message("small"))
    [line] = sink.wait_lines(1)
    assert line["size_bytes"] <= 10_000 + 1_000  # the small one, plus Received:
    time.sleep(0.5)
    assert len(sink.lines()) == 1


def test_more_than_max_recipients_gets_452(volley, sink_factory):
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.config["listener"][0]["max_recipients"] = 3
    volley.start()
    with volley.smtp() as client:
        client.ehlo("client.test")
        assert client.mail("alice@src.test")[0] == 250
        for n in range(3):
            assert client.rcpt(f"r{n}@dest.test")[0] == 250
        code, text = client.rcpt("r3@dest.test")
        assert code == 452, text
        assert text.startswith(b"4.5.3"), text
        code, _ = client.data(message("three"))
        assert code == 250
    [line] = sink.wait_lines(1)
    assert sorted(line["recipients"]) == ["r0@dest.test", "r1@dest.test", "r2@dest.test"]


def test_overlong_command_line_gets_500_and_session_continues(volley, raw):
    volley.start()
    client = raw()
    line = b"NOOP " + b"x" * 595  # 600 octets before CRLF: over RFC 5321's 512
    assert len(line) == 600
    code, text = client.cmd(line)
    assert code == 500, text
    assert text.startswith("5.5."), text
    code, _ = client.cmd(b"NOOP")
    assert code == 250
    assert client.cmd(b"MAIL FROM:<alice@src.test>")[0] == 250


def test_bare_lf_in_data_is_refused_by_a_strict_listener(volley, sink_factory, raw):
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.config["listener"][0]["line_endings"] = "strict"
    volley.start()
    client = raw()
    assert client.cmd(b"MAIL FROM:<alice@src.test>")[0] == 250
    assert client.cmd(b"RCPT TO:<bob@dest.test>")[0] == 250
    assert client.cmd(b"DATA")[0] == 354
    client.send(b"Subject: bare\r\n\r\nline one\nline two\r\n.\r\n")
    code, text = client.reply()
    assert code == 550, text
    assert text.startswith("5.6."), text
    # The session goes on, and nothing was delivered.
    assert client.cmd(b"NOOP")[0] == 250
    time.sleep(1)
    assert sink.lines() == []
    assert volley.acct("reception") == []


def test_lf_dot_lf_does_not_end_data(volley, sink_factory, raw):
    """SMTP smuggling: `\\n.\\n` must not end DATA, so a second transaction cannot hide inside."""
    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.start()
    client = raw()
    assert client.cmd(b"MAIL FROM:<alice@src.test>")[0] == 250
    assert client.cmd(b"RCPT TO:<bob@dest.test>")[0] == 250
    assert client.cmd(b"DATA")[0] == 354
    client.send(
        b"Subject: outer\r\n\r\nhello\n.\n"
        b"MAIL FROM:<evil@src.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nsmuggled\r\n"
    )
    # Still inside DATA: no reply to anything above.
    assert client.nothing_within(1.0), client.buffer
    client.send(b".\r\n")
    code, text = client.reply()
    # Exactly one reply for the whole DATA, and it refuses the message with the bare LFs.
    assert code == 550, text
    assert text.startswith("5.6."), text
    assert client.nothing_within(0.5), client.buffer
    time.sleep(1)
    assert sink.lines() == []
    assert volley.acct("reception") == []


def test_bare_lf_lines_and_long_lines_are_normalized_by_default(volley, catcher_factory):
    """What `curl --upload-file` sends from a LF file, and a minified HTML line of 5,000 octets:
    accepted, delivered with CRLF line ends and the long line folded (CRLF SP at 998 octets)."""
    import subprocess

    catcher = catcher_factory("127.0.0.11")
    volley.route("dest.test", catcher.hostport)
    volley.start()
    mail = volley.dir / "lf.eml"
    long_line = "<p>" + "x" * 4993 + "</p>"
    mail.write_bytes(
        f"From: <alice@src.test>\nTo: <bob@dest.test>\nSubject: from curl\n\nfirst line\n{long_line}\nlast line\n".encode()
    )
    result = subprocess.run(
        ["curl", "-s", "-S", f"smtp://127.0.0.1:{volley.relay_port}", "--mail-from", "alice@src.test",
         "--mail-rcpt", "bob@dest.test", "--upload-file", str(mail)],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    [caught] = catcher.wait(1)
    data = caught.data
    assert b"\n" not in data.replace(b"\r\n", b""), "every line end is CRLF"
    assert all(len(line) <= 998 for line in data.split(b"\r\n")), "no line over 998 octets"
    # (curl ends a body that lacks a final CRLF with one of its own: an empty last line.)
    assert b"first line\r\n" in data and b"\r\nlast line\r\n" in data
    # Unfolding (removing each CRLF SP) gives the line back.
    assert long_line.encode() in data.replace(b"\r\n ", b"")
    assert caught.parsed["Subject"] == "from curl"
