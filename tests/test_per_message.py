"""Per-message choices and tags: X-Volley-Pool / X-Volley-VMTA (and the inject fields pool / vmta)
pick the VMTA a message leaves from, X-Volley-Campaign (inject `campaign`) and the Message-ID are
carried on every accounting event of the message, all of it kept in the spool across a restart;
and `[server] log_deliveries` writes one Postfix-style line per outcome."""

import re
import signal
import smtplib

import pytest

from conftest import SMTP_TIMEOUT_S, free_port, message, wait_until
from test_submission import PASSWORD, unverified_tls


def two_pools(volley, hostport: str) -> None:
    """v1 (127.0.0.2) alone in `default`, v2 (127.0.0.3) alone in `p2`; dest.test -> hostport."""
    volley.route("dest.test", hostport)
    volley.config["vmta"] = [
        {"name": "v1", "source_ip": "127.0.0.2", "ehlo_hostname": "v1.volley.test"},
        {"name": "v2", "source_ip": "127.0.0.3", "ehlo_hostname": "v2.volley.test"},
    ]
    volley.config["pool"] = [
        {"name": "default", "vmtas": ["v1"]},
        {"name": "p2", "vmtas": ["v2"]},
    ]


def message_id_of(content: str) -> str:
    return re.search(r"Message-ID: <([^>]+)>", content).group(1)


@pytest.mark.parametrize("header", ["X-Volley-Pool: p2", "X-Volley-VMTA: v2"])
def test_header_routes_through_the_chosen_vmta_and_is_taken_off(volley, catcher_factory, header):
    catcher = catcher_factory("127.0.0.11")
    two_pools(volley, catcher.hostport)
    volley.start()

    chosen = message("chosen", extra_headers=f"{header}\r\nX-Volley-Campaign: spring-2026\r\n")
    plain = message("plain")
    volley.send("alice@src.test", ["chosen@dest.test"], chosen)
    volley.send("alice@src.test", ["plain@dest.test"], plain)

    caught = {m.recipients[0]: m for m in catcher.wait(2)}
    assert caught["chosen@dest.test"].peer_ip == "127.0.0.3"
    assert caught["chosen@dest.test"].ehlo == "v2.volley.test"
    # Without a choice: the customer's pool (no customer: `default`).
    assert caught["plain@dest.test"].peer_ip == "127.0.0.2"
    for m in caught.values():
        assert b"X-Volley-Pool" not in m.data and b"X-Volley-VMTA" not in m.data, m.data[:400]
        assert b"X-Volley-Campaign" not in m.data, m.data[:400]
    assert caught["chosen@dest.test"].parsed["Message-ID"] == f"<{message_id_of(chosen)}>"

    # Reception and delivery both carry the Message-ID (no brackets) and the campaign.
    for kind in ("reception", "delivery"):
        events = {e["recipient"]: e for e in volley.wait_acct(kind, count=2)}
        assert events["chosen@dest.test"]["message_id"] == message_id_of(chosen)
        assert events["chosen@dest.test"]["campaign"] == "spring-2026"
        assert events["chosen@dest.test"]["vmta"] == "v2"
        assert events["plain@dest.test"]["message_id"] == message_id_of(plain)
        assert events["plain@dest.test"]["campaign"] == ""
        assert events["plain@dest.test"]["vmta"] == "v1"


def test_both_headers_or_an_unknown_name_are_refused(volley, catcher_factory):
    catcher = catcher_factory("127.0.0.11")
    two_pools(volley, catcher.hostport)
    volley.start()

    cases = {
        "both@dest.test": ("X-Volley-Pool: p2\r\nX-Volley-VMTA: v2\r\n", "5.6.0", "both given"),
        "unknown@dest.test": ("X-Volley-VMTA: v9\r\n", "5.6.0", 'no VMTA "v9"'),
    }
    for rcpt, (headers, code, text) in cases.items():
        with pytest.raises(smtplib.SMTPDataError) as refused:
            volley.send("alice@src.test", [rcpt], message(rcpt, extra_headers=headers))
        assert refused.value.smtp_code == 550
        assert refused.value.smtp_error.decode().startswith(code), refused.value.smtp_error
        assert text in refused.value.smtp_error.decode(), refused.value.smtp_error
    rejections = {e["recipient"]: e for e in volley.wait_acct("rejection", count=2)}
    assert set(rejections) == set(cases)
    assert all(e["response"].startswith("550 5.6.0") for e in rejections.values())
    assert volley.acct("reception") == []
    assert volley.metrics()["volley_messages_rejected_total"] == 2


@pytest.fixture
def submission(volley, catcher_factory, password_hash):
    """Two pools, and customer acme (pool `default`) submitting with AUTH after STARTTLS."""
    catcher = catcher_factory("127.0.0.11")
    two_pools(volley, catcher.hostport)
    volley.starttls_port = free_port()
    volley.config["listener"].append(
        {"address": f"127.0.0.1:{volley.starttls_port}", "tls": "starttls", "auth": "required"}
    )
    volley.config["customer"] = [
        {"name": "acme", "password_hash": password_hash(PASSWORD), "pool": "default"}
    ]
    volley.start()
    return volley, catcher


def submit(volley, rcpt: str, content: str):
    client = smtplib.SMTP("127.0.0.1", volley.starttls_port, timeout=SMTP_TIMEOUT_S)
    with client:
        client.ehlo("client.test")
        client.starttls(context=unverified_tls())
        client.ehlo("client.test")
        client.login("acme", PASSWORD)
        return client.sendmail("acme@src.test", [rcpt], content)


def test_auth_customer_may_choose_only_its_own_pool(submission):
    volley, catcher = submission
    for header in ("X-Volley-Pool: p2", "X-Volley-VMTA: v2"):
        content = message("foreign", extra_headers=f"{header}\r\nX-Volley-Campaign: c9\r\n")
        with pytest.raises(smtplib.SMTPDataError) as refused:
            submit(volley, "foreign@dest.test", content)
        assert refused.value.smtp_code == 550
        reply = refused.value.smtp_error.decode()
        assert reply.startswith("5.7.1 " + header.split(":")[0]), reply
        assert "is not in the pool of customer acme" in reply, reply
    rejections = volley.wait_acct("rejection", count=2)
    assert {e["customer"] for e in rejections} == {"acme"}
    assert {e["campaign"] for e in rejections} == {"c9"}
    assert all(e["response"].startswith("550 5.7.1") for e in rejections)
    assert all(e["message_id"] for e in rejections), rejections

    # Its own pool, and a VMTA of it, are taken.
    for n, header in enumerate(("X-Volley-Pool: default", "X-Volley-VMTA: v1")):
        submit(volley, f"own{n}@dest.test", message(f"own {n}", extra_headers=f"{header}\r\n"))
    caught = catcher.wait(2)
    assert {m.peer_ip for m in caught} == {"127.0.0.2"}
    assert all(b"X-Volley-" not in m.data for m in caught)


def test_inject_fields_pool_vmta_campaign(volley, catcher_factory):
    catcher = catcher_factory("127.0.0.11")
    two_pools(volley, catcher.hostport)
    volley.start()

    def inject(rcpt: str, extra_headers: str = "", **fields):
        body = {
            "sender": "alice@src.test",
            "recipients": [rcpt],
            "content": message(rcpt, extra_headers=extra_headers),
            **fields,
        }
        return volley.api("POST", "/v1/inject", body)

    status, answer = inject("pool@dest.test", pool="p2", campaign="api-spring")
    assert status == 202, answer
    status, answer = inject("vmta@dest.test", vmta="v2")
    assert status == 202, answer
    # The field wins over a header in the content.
    status, answer = inject(
        "plain@dest.test", extra_headers="X-Volley-Campaign: from-header\r\n", campaign="from-field"
    )
    assert status == 202, answer

    for fields, what in [
        ({"pool": "nope"}, 'no pool "nope"'),
        ({"vmta": "v9"}, 'no VMTA "v9"'),
        ({"pool": "p2", "vmta": "v2"}, "both given"),
        ({"campaign": "x" * 129}, "at most 128 bytes"),
        ({"campaign": "a\nb"}, "no control characters"),
    ]:
        status, answer = inject("refused@dest.test", **fields)
        assert status == 400, (fields, answer)
        assert what in str(answer), (fields, answer)

    caught = {m.recipients[0]: m.peer_ip for m in catcher.wait(3)}
    assert caught == {
        "pool@dest.test": "127.0.0.3",
        "vmta@dest.test": "127.0.0.3",
        "plain@dest.test": "127.0.0.2",
    }
    deliveries = {e["recipient"]: e for e in volley.wait_acct("delivery", count=3)}
    assert deliveries["pool@dest.test"]["campaign"] == "api-spring"
    assert deliveries["vmta@dest.test"]["campaign"] == ""
    assert deliveries["plain@dest.test"]["campaign"] == "from-field"
    assert all(e["message_id"].endswith("@src.test") for e in deliveries.values()), deliveries


def test_the_choice_and_tags_survive_a_restart_with_mail_queued(volley, catcher_factory):
    port = free_port("127.0.0.11")
    two_pools(volley, f"127.0.0.11:{port}")  # nothing listens there yet: deferred
    volley.start()

    sent = {
        "pool@dest.test": message("pool", extra_headers="X-Volley-Pool: p2\r\nX-Volley-Campaign: c-pool\r\n"),
        "vmta@dest.test": message("vmta", extra_headers="X-Volley-VMTA: v2\r\nX-Volley-Campaign: c-vmta\r\n"),
    }
    for rcpt, content in sent.items():
        volley.send("alice@src.test", [rcpt], content)
    transients = volley.wait_acct("transient", count=2)
    assert {e["vmta"] for e in transients} == {"v2"}
    assert {e["campaign"] for e in transients} == {"c-pool", "c-vmta"}
    assert volley.stop() == 0

    catcher = catcher_factory("127.0.0.11", port)
    volley.start()
    caught = {m.recipients[0]: m for m in catcher.wait(2)}
    assert {r: m.peer_ip for r, m in caught.items()} == {
        "pool@dest.test": "127.0.0.3",
        "vmta@dest.test": "127.0.0.3",
    }
    deliveries = {e["recipient"]: e for e in volley.wait_acct("delivery", count=2)}
    for rcpt, content in sent.items():
        assert deliveries[rcpt]["vmta"] == "v2"
        assert deliveries[rcpt]["message_id"] == message_id_of(content)
        assert deliveries[rcpt]["campaign"] == f"c-{rcpt.split('@')[0]}"


def delivery_log_lines(volley) -> list[str]:
    return [line for line in volley.stderr_path.read_text().splitlines() if " status=" in line]


def test_log_deliveries_writes_a_line_per_outcome(volley_factory, catcher_factory):
    catcher = catcher_factory("127.0.0.11")
    closed = free_port("127.0.0.12")
    on = volley_factory("on")
    two_pools(on, catcher.hostport)
    on.route("later.test", f"127.0.0.12:{closed}")  # nothing listens: deferred
    on.config["server"]["log_deliveries"] = True
    on.start()

    on.send("alice@src.test", ["ok@dest.test"], message("ok"))
    on.send("alice@src.test", ["permfail@dest.test"], message("bounce"))
    on.send("alice@src.test", ["wait@later.test"], message("deferred"))
    on.wait_acct("delivery")
    on.wait_acct("bounce")
    on.wait_acct("transient")
    [ok] = on.acct("delivery")

    def lines():
        found = delivery_log_lines(on)
        return found if len(found) >= 3 else None

    found = wait_until(lines, 10, "three delivery log lines")
    sent = [l for l in found if "status=sent" in l]
    assert len(sent) == 1, found
    assert re.search(
        rf"id={ok['id']} to=<ok@dest\.test> relay=127\.0\.0\.11\[127\.0\.0\.11\] vmta=v1 "
        r"status=sent \(250 2\.0\.0 Ok: caught\)",
        sent[0],
    ), sent[0]
    assert " INFO " in sent[0], sent[0]
    assert any(
        re.search(r"to=<permfail@dest\.test> relay=\S+ vmta=v1 status=bounced \(550 5\.1\.1 ", l)
        for l in found
    ), found
    assert any(
        re.search(r"to=<wait@later\.test> relay=none vmta=v1 status=deferred \(4\d\d ", l)
        for l in found
    ), found

    # Off (the default): the same outcomes, no such line.
    off = volley_factory("off")
    two_pools(off, catcher.hostport)
    off.start()
    off.send("alice@src.test", ["ok@dest.test"], message("ok off"))
    off.send("alice@src.test", ["permfail@dest.test"], message("bounce off"))
    off.wait_acct("delivery")
    # The permanent failure, then its DSN to alice@src.test (src.test does not resolve).
    off.wait_acct("bounce", count=2)
    assert delivery_log_lines(off) == []

    # Turned on by a reload: the next outcome is logged.
    off.config["server"]["log_deliveries"] = True
    off.write_config()
    off.signal(signal.SIGHUP)
    wait_until(
        lambda: "reload: " in off.stderr_path.read_text(errors="replace"),
        10,
        "the reload to be applied",
    )
    off.send("alice@src.test", ["after@dest.test"], message("after reload"))
    found = wait_until(lambda: delivery_log_lines(off), 10, "a delivery log line after the reload")
    assert len(found) == 1 and "to=<after@dest.test>" in found[0] and "status=sent" in found[0], found
