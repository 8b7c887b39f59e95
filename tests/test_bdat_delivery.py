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
