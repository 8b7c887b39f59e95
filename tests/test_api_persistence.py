"""Changes through PUT/DELETE /v1/{section}/{name} survive a restart and a reload; where the file
changes the same entry, the file wins."""

from __future__ import annotations

import signal

from conftest import wait_until


def customers(node) -> dict:
    return {c["name"]: c for c in node.api("GET", "/v1/customers")[1]["customers"]}


def test_api_changes_survive_restart_and_reload_but_the_file_wins_its_entries(volley):
    volley.config["customer"] = [
        {"name": "acme", "max_messages_per_hour": 10},
        {"name": "beta", "max_messages_per_hour": 5},
    ]
    volley.start()
    assert volley.api("PUT", "/v1/customers/acme", {"max_messages_per_hour": 99})[0] == 200
    assert volley.api("PUT", "/v1/customers/gamma", {"credits": 7})[0] == 200
    assert volley.api("DELETE", "/v1/customers/beta")[0] == 200
    status, body = volley.api("GET", "/v1/config")
    assert status == 200
    assert {(c["name"], c["deleted"]) for c in body["from_api"]} == {
        ("acme", False), ("gamma", False), ("beta", True)
    }
    assert any(c["name"] == "acme" for c in body["config"]["customer"])

    # A restart (kill -9: the changes were durable before the 200s) keeps them.
    volley.kill9()
    volley.start()
    now = customers(volley)
    assert now["acme"]["max_messages_per_hour"] == 99 and "gamma" in now and "beta" not in now, now

    # A reload of an unchanged file keeps them too.
    volley.signal(signal.SIGHUP)
    wait_until(lambda: "reload:" in volley.stderr_tail(50), 10, "the reload")
    now = customers(volley)
    assert now["acme"]["max_messages_per_hour"] == 99 and "gamma" in now and "beta" not in now, now

    # The file changes acme: the file's version wins for acme, the other changes stay.
    volley.config["customer"][0]["max_messages_per_hour"] = 20
    volley.write_config()
    volley.signal(signal.SIGHUP)
    wait_until(lambda: customers(volley)["acme"]["max_messages_per_hour"] == 20, 10, "the file's acme")
    now = customers(volley)
    assert "gamma" in now and "beta" not in now, now
    assert "API change of customers/acme dropped: the file changed this entry" in volley.stderr_tail(50)
    assert {c["name"] for c in volley.api("GET", "/v1/config")[1]["from_api"]} == {"gamma", "beta"}
