"""Outbound BDAT (RFC 3030) to a receiver offering CHUNKING: bodies of every size arrive intact,
each message as one `BDAT <size> LAST`. Bodies of 16 KiB and more are written straight from the
spool segment's mapping (delivery/driver.rs), smaller ones beside their command: both paths."""

import random

from conftest import message


def test_bodies_small_and_large_arrive_intact_over_bdat(volley, catcher_factory):
    catcher = catcher_factory("127.0.0.11", chunking=True)
    volley.route("dest.test", catcher.hostport)
    volley.start()
    rng = random.Random(7)
    sent = {}
    # Below, at and far above the direct-write threshold (and above a socket buffer).
    for size in (1_000, 16_384, 40_000, 700_000):
        lines = []
        total = 0
        while total < size:
            line = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz .") for _ in range(76))
            lines.append(line)
            total += 78
        body = "\r\n".join(lines) + "\r\n"
        content = message(f"size {size}", body=body)
        assert volley.send("s@src.test", [f"r{size}@dest.test"], content) == {}
        sent[f"r{size}@dest.test"] = content.encode() if isinstance(content, str) else content
    caught = catcher.wait(len(sent), 30)
    for m in caught:
        original = sent[m.recipients[0]]
        # Volley adds its Received: line on top; everything after it is the message as sent.
        assert m.data.endswith(original), (m.recipients, len(m.data), len(original))
        assert len(m.data) - len(original) < 1000
    # BDAT, not DATA, carried them: one LAST chunk per message, the whole message each.
    assert len(catcher.chunk_sizes) == len(sent)
    assert sorted(catcher.chunk_sizes) == sorted(len(m.data) for m in caught)


def pipelined_run(volley, catcher_factory, in_flight: int):
    """Six messages held, then released at once to a catcher that answers each `BDAT LAST`
    0.2 s late: (what arrived, replies the client did not wait for)."""
    catcher = catcher_factory("127.0.0.11", chunking=True)
    catcher.bdat_reply_delay_s = 0.2
    volley.route("dest.test", catcher.hostport)
    volley.policy(max_connections=1, transactions_in_flight=in_flight)
    volley.start()
    status, body = volley.api("POST", "/v1/queues/suspend", {"domain": "dest.test", "reason": "hold"})
    assert status == 202, body
    for i in range(6):
        volley.send("s@src.test", [f"r{i}@dest.test", f"x{i}@dest.test"], message(f"m{i}", body=f"body {i}\r\n"))
    volley.wait_acct("reception", count=12)
    status, body = volley.api("POST", "/v1/queues/resume", {"domain": "dest.test"})
    assert status == 202, body
    caught = catcher.wait(6, 30)
    volley.wait_acct("delivery", count=12)
    return caught, catcher.pipelined_after_bdat


def test_transactions_in_flight_go_out_without_waiting_and_arrive_whole(volley, catcher_factory):
    caught, pipelined = pipelined_run(volley, catcher_factory, in_flight=4)
    # Each message once, with its own recipients and body.
    by_rcpt = {tuple(m.recipients): m for m in caught}
    assert sorted(by_rcpt) == [(f"r{i}@dest.test", f"x{i}@dest.test") for i in range(6)]
    for i in range(6):
        assert by_rcpt[(f"r{i}@dest.test", f"x{i}@dest.test")].data.endswith(f"body {i}\r\n".encode())
    assert len(volley.acct("delivery")) == 12
    # One connection: the next messages were on the wire before the catcher answered.
    assert pipelined >= 3, pipelined


def test_one_transaction_in_flight_waits_for_each_reply(volley, catcher_factory):
    caught, pipelined = pipelined_run(volley, catcher_factory, in_flight=1)
    assert len(caught) == 6
    assert pipelined == 0
