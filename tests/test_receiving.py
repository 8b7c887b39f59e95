"""Receiving on the relay listener, then delivery from the VMTA's address and name."""

from conftest import message


def test_relay_message_reaches_sink_from_vmta_source_ip_and_ehlo(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    volley.start()

    refused = volley.send("alice@src.test", ["bob@dest.test"], message("hello"))
    assert refused == {}

    [line] = sink.wait_lines(1)
    assert line["peer_ip"] == "127.0.0.2"
    assert line["ehlo"] == "v1.volley.test"
    assert line["sender"] == "alice@src.test"
    assert line["recipients"] == ["bob@dest.test"]

    [delivery] = volley.wait_acct("delivery")
    assert delivery["recipient"] == "bob@dest.test"
    assert delivery["vmta"] == "v1"
    assert delivery["source_ip"] == "127.0.0.2"
    assert delivery["response"].startswith("250")
    [reception] = volley.acct("reception")
    assert reception["id"] == delivery["id"]
    assert reception["sender"] == "alice@src.test"


def test_received_header_is_prepended(volley, catcher_factory):
    catcher = catcher_factory("127.0.0.11")
    volley.route("dest.test", catcher.hostport)
    volley.start()

    content = message("received header")
    volley.send("alice@src.test", ["bob@dest.test"], content)

    [caught] = catcher.wait(1)
    received = caught.parsed.get_all("Received")
    assert received and len(received) == 1, caught.data[:500]
    # The first header line of the delivered message is Volley's trace header.
    assert caught.data.startswith(b"Received: from "), caught.data[:200]
    assert "[127.0.0.1]" in received[0]
    assert "by mta.volley.test" in received[0]
    assert "bob@dest.test" in received[0]
    # Everything the client sent follows it, unchanged.
    assert caught.parsed["Subject"] == "received header"
    assert caught.data.endswith(b"Hello.\r\n")
    # The accounting size is the spooled size, which includes the header.
    [delivery] = volley.wait_acct("delivery")
    assert delivery["size_bytes"] == len(caught.data)
    assert delivery["size_bytes"] > len(content.encode())


def test_recipients_of_one_domain_share_one_transaction(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    other = sink_factory("127.0.0.12")
    volley.route("dest.test", sink.hostport)
    volley.route("other.test", other.hostport)
    volley.start()

    volley.send(
        "alice@src.test",
        ["a@dest.test", "b@dest.test", "c@other.test", "d@dest.test"],
        message("grouped"),
    )

    [line] = sink.wait_lines(1)
    assert sorted(line["recipients"]) == ["a@dest.test", "b@dest.test", "d@dest.test"]
    [other_line] = other.wait_lines(1)
    assert other_line["recipients"] == ["c@other.test"]
    volley.wait_acct("delivery", count=4)
    # Still one message at the sink for dest.test: no duplicate transaction came later.
    assert len(sink.lines()) == 1
