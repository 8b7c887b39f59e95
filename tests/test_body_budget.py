"""The global budget on message bodies held in memory (`[server] max_message_bytes_in_flight`),
against the real daemon with a 1 MiB budget: a body that finds no room is read to its end and
answered 452 4.3.1 (DATA at the end of data, BDAT at the chunk, SIZE= at MAIL), and the budget
comes back when a message is spooled, refused, or its session ends.

Which session holds the budget is made certain by BDAT: the server answers a chunk only after
it has read (and holds) it."""

from __future__ import annotations

import signal
import smtplib
import socket

import pytest

from conftest import SMTP_TIMEOUT_S, wait_until

BUDGET_BYTES = 1 << 20
BODY_BYTES = 800 * 1024
HALF_BYTES = BODY_BYTES // 2
REFUSAL = "452 4.3.1 Insufficient system storage: too many messages in flight, try again later\r\n"


@pytest.fixture
def budgeted(volley):
    volley.config["server"]["max_message_bytes_in_flight"] = BUDGET_BYTES
    # The budget must hold the largest message a listener accepts (`volley check` says so).
    volley.config["listener"][0]["max_message_bytes"] = BUDGET_BYTES
    return volley.start()


def body(size: int) -> bytes:
    """A text message of exactly `size` octets, in lines of 80."""
    head = b"Subject: budget\r\n\r\n"
    line = b"x" * 78 + b"\r\n"
    lines, rest = divmod(size - len(head), len(line))
    assert rest >= 2 or rest == 0
    return head + line * lines + (b"y" * (rest - 2) + b"\r\n" if rest else b"")


def read_reply(sock: socket.socket) -> str:
    """One complete (possibly multi-line) reply."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
        complete = data.split(b"\r\n")[:-1]
        if complete and len(complete[-1]) >= 4 and complete[-1][3:4] == b" ":
            return data.decode()


def command(sock: socket.socket, line: bytes) -> str:
    sock.sendall(line)
    return read_reply(sock)


def in_transaction(port: int, mail: bytes = b"MAIL FROM:<a@src.test>\r\n") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=SMTP_TIMEOUT_S)
    assert read_reply(sock).startswith("220 ")
    assert command(sock, b"EHLO c\r\n").startswith("250")
    assert command(sock, mail).startswith("250 "), mail
    assert command(sock, b"RCPT TO:<b@dest.test>\r\n").startswith("250 ")
    return sock


def holding_half_a_body(port: int) -> socket.socket:
    """A session whose first BDAT chunk (400 KiB) the server has read and holds."""
    sock = in_transaction(port)
    reply = command(sock, b"BDAT %d\r\n" % HALF_BYTES + body(HALF_BYTES))
    assert reply == f"250 2.0.0 {HALF_BYTES} octets received\r\n", reply
    return sock


def rejected(volley) -> float:
    return volley.metrics().get("volley_messages_rejected_total", 0.0)


def send_data(volley, size: int) -> None:
    with volley.smtp() as client:
        client.sendmail("a@src.test", ["b@dest.test"], body(size))


def test_second_concurrent_body_gets_452_and_the_budget_comes_back(budgeted):
    before = rejected(budgeted)
    holder = holding_half_a_body(budgeted.relay_port)
    # A client that lies about SIZE is held to the budget by the octets it sends.
    late = in_transaction(budgeted.relay_port, b"MAIL FROM:<a@src.test> SIZE=1000\r\n")
    assert command(late, b"DATA\r\n").startswith("354")
    # 400 KiB held + this body's buffer past 512 KiB (1 MiB) is over the budget: it is read
    # to its end and refused there, and the session goes on.
    assert command(late, body(BODY_BYTES) + b".\r\n") == REFUSAL
    assert command(late, b"NOOP\r\n") == "250 2.0.0 Ok\r\n"
    # The refused body's share came back: the first session's message completes.
    reply = command(holder, b"BDAT %d LAST\r\n" % HALF_BYTES + body(HALF_BYTES))
    assert reply.startswith("250 2.0.0 Ok: queued as "), reply
    # Both are done: a third 800 KiB message fits again.
    send_data(budgeted, BODY_BYTES)
    assert rejected(budgeted) == before + 1
    log = budgeted.stderr_path.read_text(errors="replace")
    assert "message bytes in flight at the limit" in log, log
    for sock in (holder, late):
        assert command(sock, b"QUIT\r\n").startswith("221")
        sock.close()


def test_size_and_bdat_chunk_refused_while_held_and_given_back_on_disconnect(budgeted):
    holder = holding_half_a_body(budgeted.relay_port)
    sock = socket.create_connection(("127.0.0.1", budgeted.relay_port), timeout=SMTP_TIMEOUT_S)
    assert read_reply(sock).startswith("220 ")
    assert command(sock, b"EHLO c\r\n").startswith("250")
    # A declared SIZE that does not fit what is free is refused at MAIL, before any body.
    assert command(sock, b"MAIL FROM:<a@src.test> SIZE=%d\r\n" % BODY_BYTES) == REFUSAL
    assert command(sock, b"MAIL FROM:<a@src.test>\r\n").startswith("250 ")
    assert command(sock, b"RCPT TO:<b@dest.test>\r\n").startswith("250 ")
    # The announced chunk does not fit beside the one held: refused at the chunk.
    assert command(sock, b"BDAT %d LAST\r\n" % BODY_BYTES + body(BODY_BYTES)) == REFUSAL
    assert command(sock, b"QUIT\r\n").startswith("221")
    sock.close()
    # The holder goes away mid-transaction, without QUIT: its share is given back.
    holder.close()

    def accepted() -> bool:
        try:
            send_data(budgeted, BODY_BYTES)
            return True
        except smtplib.SMTPDataError as e:
            assert e.smtp_code == 452, e
            return False

    wait_until(accepted, 10, "an 800 KiB message accepted after the holder left")


def test_reload_applies_a_new_budget_at_once(budgeted):
    holder = holding_half_a_body(budgeted.relay_port)
    budgeted.config["server"]["max_message_bytes_in_flight"] = 4 * BUDGET_BYTES
    budgeted.write_config()
    budgeted.signal(signal.SIGHUP)
    wait_until(
        lambda: "configuration generation" in budgeted.stderr_path.read_text(errors="replace"),
        10,
        "the reload to be applied",
    )
    # With 1 MiB this second body would get 452 (the first test); with 4 MiB both fit.
    send_data(budgeted, BODY_BYTES)
    reply = command(holder, b"BDAT %d LAST\r\n" % HALF_BYTES + body(HALF_BYTES))
    assert reply.startswith("250 2.0.0 Ok: queued as "), reply
    holder.close()
