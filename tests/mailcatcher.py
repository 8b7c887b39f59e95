"""A small SMTP server that keeps every message whole, for the tests that must read what was
delivered (DSNs, Received: headers). `volley-bench sink` is the fast one, but it discards bodies.

Not a general server: one thread per connection, no TLS, no PIPELINING advertised (it still answers
pipelined commands in order), recipients starting `permfail@` get 550 5.1.1 at RCPT.
"""

from __future__ import annotations

import email
import email.policy
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage

LINE_BYTES_MAX = 4096
MESSAGE_BYTES_MAX = 10 << 20


@dataclass
class CaughtMessage:
    peer_ip: str
    ehlo: str
    sender: str
    recipients: list[str]
    data: bytes = b""
    parsed: EmailMessage = field(init=False)

    def __post_init__(self) -> None:
        self.parsed = email.message_from_bytes(self.data, policy=email.policy.default)


def _address(arg: str) -> str:
    start, end = arg.find("<"), arg.find(">")
    if start < 0 or end < start:
        return arg.strip()
    return arg[start + 1 : end]


class _Handler(socketserver.StreamRequestHandler):
    timeout = 30

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")
        self.wfile.flush()

    def _more_sent(self) -> bool:
        """The client sent more before this reply (buffered here or waiting on the socket)."""
        self.connection.settimeout(0.0)
        try:
            return bool(self.rfile.peek(1))
        except (BlockingIOError, TimeoutError, OSError):
            return False
        finally:
            self.connection.settimeout(self.timeout)

    def handle(self) -> None:
        catcher: MailCatcher = self.server.catcher  # type: ignore[attr-defined]
        peer_ip = self.client_address[0]
        ehlo, sender, recipients = "", None, []
        chunks: list[bytes] = []
        self.reply("220 catcher.test ESMTP")
        while True:
            line = self.rfile.readline(LINE_BYTES_MAX)
            if not line:
                return
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = cmd[:4].upper()
            if verb in ("EHLO", "HELO"):
                ehlo = cmd[5:].strip()
                if verb == "EHLO":
                    # Volley sends BDAT only with PIPELINING (its commands then come at once).
                    chunking = "250-PIPELINING\r\n250-CHUNKING\r\n" if catcher.chunking else ""
                    self.reply(f"250-catcher.test\r\n250-8BITMIME\r\n{chunking}250 ENHANCEDSTATUSCODES")
                else:
                    self.reply("250 catcher.test")
            elif verb == "MAIL":
                sender, recipients = _address(cmd[5:].split(":", 1)[1]), []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpt = _address(cmd[5:].split(":", 1)[1])
                if rcpt.lower().startswith("permfail@"):
                    self.reply("550 5.1.1 No such user")
                else:
                    recipients.append(rcpt)
                    self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if sender is None or not recipients:
                    self.reply("503 5.5.1 No valid recipients")
                    continue
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                size = 0
                while True:
                    data_line = self.rfile.readline(LINE_BYTES_MAX)
                    if not data_line:
                        return
                    if data_line == b".\r\n":
                        break
                    if data_line.startswith(b"."):
                        data_line = data_line[1:]
                    size += len(data_line)
                    if size > MESSAGE_BYTES_MAX:
                        self.reply("552 5.3.4 Too big")
                        return
                    lines.append(data_line)
                catcher._add(CaughtMessage(peer_ip, ehlo, sender, recipients, b"".join(lines)))
                sender, recipients = None, []
                self.reply("250 2.0.0 Ok: caught")
            elif verb == "BDAT" and catcher.chunking:
                # RFC 3030: `BDAT <size> [LAST]`, the chunk's octets follow at once, as they are.
                words = cmd.split()
                size = int(words[1]) if len(words) > 1 and words[1].isdigit() else -1
                if size < 0 or size > MESSAGE_BYTES_MAX:
                    self.reply("501 5.5.4 Bad BDAT")
                    return
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    return
                chunks.append(chunk)
                catcher.chunk_sizes.append(size)
                if len(words) > 2 and words[2].upper() == "LAST":
                    catcher._add(CaughtMessage(peer_ip, ehlo, sender, recipients, b"".join(chunks)))
                    sender, recipients, chunks = None, [], []
                    if catcher.bdat_reply_delay_s:
                        time.sleep(catcher.bdat_reply_delay_s)
                        if self._more_sent():
                            catcher.pipelined_after_bdat += 1
                    self.reply("250 2.0.0 Ok: caught")
                else:
                    self.reply(f"250 2.0.0 {size} octets")
            elif verb == "RSET":
                sender, recipients = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.1 Not implemented")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class MailCatcher:
    """Listens on `address`:`port` and keeps every message it accepts (DATA, and BDAT when made
    with `chunking=True`)."""

    def __init__(self, address: str, port: int, chunking: bool = False) -> None:
        self.address = address
        self.port = port
        # `chunking`: PIPELINING and CHUNKING offered, BDAT taken (each chunk's size is kept).
        self.chunking = chunking
        self.chunk_sizes: list[int] = []
        # With a delay, each `BDAT LAST` is answered that much later, and
        # `pipelined_after_bdat` counts the replies the client did not wait for (it had sent
        # more by then).
        self.bdat_reply_delay_s = 0.0
        self.pipelined_after_bdat = 0
        self.messages: list[CaughtMessage] = []
        self._cond = threading.Condition()
        self._server = _Server((address, port), _Handler)
        self._server.catcher = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def hostport(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _add(self, message: CaughtMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait(self, count: int, timeout_s: float = 15.0) -> list[CaughtMessage]:
        """The first `count` messages, waiting at most `timeout_s` for them."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"catcher {self.hostport}: {len(self.messages)} of {count} messages "
                        f"after {timeout_s}s"
                    )
                self._cond.wait(left)
            return list(self.messages[:count])

    def snapshot(self) -> list[CaughtMessage]:
        with self._cond:
            return list(self.messages)


def can_connect(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False
