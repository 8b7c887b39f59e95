"""The daemon's life: checking configurations, the embedded default, SIGHUP reload, SIGTERM."""

import signal
import subprocess
import time
import tomllib

from conftest import VOLLEY_BIN, SMTP_TIMEOUT_S, free_port, message, wait_until


def volley_cmd(*args, timeout_s=30):
    return subprocess.run([str(VOLLEY_BIN), *args], capture_output=True, timeout=timeout_s)


BAD_CONFIG = """\
[server]
hostname = "mta.volley.test"
cores = 1

[[listener]]
address = "127.0.0.1:2525"
tls = "sometimes"
"""

BAD_REFERENCE = """\
[server]
hostname = "mta.volley.test"

[[listener]]
address = "127.0.0.1:2525"

[[vmta]]
name = "v1"
source_ip = "127.0.0.2"
ehlo_hostname = "v1.volley.test"

[[pool]]
name = "default"
vmtas = ["v1", "missing"]
"""


def test_check_reports_key_and_line_and_exits_1(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_CONFIG)
    result = volley_cmd("check", "--config", str(bad))
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 1, out
    assert "line 7" in out, out
    assert "tls" in out and "sometimes" in out, out

    bad.write_text(BAD_REFERENCE)
    result = volley_cmd("check", "--config", str(bad))
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 1, out
    assert "line 14" in out, out
    assert "pool[0].vmtas" in out and "missing" in out, out


def test_check_lists_every_value_of_the_wrong_shape_not_only_the_first(tmp_path):
    bad = tmp_path / "shapes.toml"
    bad.write_text('[server]\ncores = "two"\n\n[api]\nadress = "127.0.0.1:1"\n'
                   '\n[[listener]]\naddress = "127.0.0.1:2525"\ntls = "sometimes"\n')
    result = volley_cmd("check", "--config", str(bad))
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 1, out
    for line, key in [(2, "server.cores"), (5, "api.adress"), (9, "listener[0].tls")]:
        assert f"line {line}: {key}" in out, out


def test_default_config_is_toml_and_passes_check(tmp_path):
    result = volley_cmd("default-config")
    assert result.returncode == 0
    text = result.stdout.decode()
    parsed = tomllib.loads(text)
    assert [l["address"] for l in parsed["listener"]] == [
        "127.0.0.1:2525", "127.0.0.1:2587", "127.0.0.1:2465",
    ]
    assert parsed["api"]["address"] == "127.0.0.1:8025"
    assert "#" in text  # commented
    path = tmp_path / "default.toml"
    path.write_text(text)
    result = volley_cmd("check", "--config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_sighup_reload_changes_the_route(volley, sink_factory):
    first = sink_factory("127.0.0.10")
    second = sink_factory("127.0.0.12")
    volley.route("dest.test", first.hostport)
    volley.start()

    with volley.smtp() as client:  # a connection open across the reload keeps working
        client.ehlo("client.test")
        client.sendmail("alice@src.test", ["one@dest.test"], message("before reload"))
        assert first.wait_lines(1)[0]["recipients"] == ["one@dest.test"]

        volley.route("dest.test", second.hostport)
        volley.write_config()
        volley.signal(signal.SIGHUP)
        wait_until(
            lambda: "configuration generation" in volley.stderr_path.read_text(errors="replace"),
            10,
            "the reload to be applied",
        )
        client.sendmail("alice@src.test", ["two@dest.test"], message("after reload"))
    [line] = second.wait_lines(1)
    assert line["recipients"] == ["two@dest.test"]
    assert len(first.lines()) == 1
    assert volley.process.poll() is None


def test_sighup_with_a_broken_config_keeps_the_running_one(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    volley.start()
    volley.config_path.write_text(BAD_CONFIG)
    volley.signal(signal.SIGHUP)
    time.sleep(1)
    assert volley.process.poll() is None, volley.stderr_tail()
    status, _ = volley.api("GET", "/v1/health")
    assert status == 200
    volley.send("alice@src.test", ["bob@dest.test"], message("still routed"))
    assert sink.wait_lines(1)[0]["recipients"] == ["bob@dest.test"]


def test_sigterm_finishes_the_open_transaction_then_exits_0(volley_factory, sink_factory):
    sink = sink_factory("127.0.0.10")
    volley = volley_factory()
    volley.route("dest.test", sink.hostport)
    volley.start()

    client = volley.smtp()
    client.ehlo("client.test")
    assert client.mail("alice@src.test")[0] == 250
    assert client.rcpt("bob@dest.test")[0] == 250
    code, _ = client.docmd("DATA")
    assert code == 354
    client.send(b"Subject: in flight\r\n\r\nhalf of the body\r\n")

    volley.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert volley.process.poll() is None, "exited with a transaction in flight"
    client.send(b"the other half\r\n.\r\n")
    code, text = client.getreply()
    assert code == 250, text
    try:
        client.quit()
    except Exception:
        pass  # the daemon may close right after the transaction
    client.close()

    rc = volley.process.wait(timeout=20)
    assert rc == 0, volley.stderr_tail()
    volley.process = None
    # The accepted message is not lost: delivered before exit, or after a restart from the spool.
    receptions = volley.acct("reception")
    assert [r["recipient"] for r in receptions] == ["bob@dest.test"]
    if not sink.lines():
        volley.start()
    [line] = sink.wait_lines(1)
    assert line["recipients"] == ["bob@dest.test"]


def test_restart_recovers_queued_mail(volley, sink_factory):
    """Durability: mail deferred at stop is delivered after a restart from the same spool."""
    from conftest import free_port

    port = free_port("127.0.0.10")
    volley.route("dest.test", f"127.0.0.10:{port}")
    volley.policy(retry_intervals=["1s"])
    volley.start()
    volley.send("alice@src.test", ["a@dest.test", "b@dest.test"], message("recover me"))
    volley.wait_acct("transient", count=2)
    assert volley.stop() == 0

    sink = sink_factory("127.0.0.10", port)
    volley.start()
    assert sorted(sink.wait_recipients(2)) == ["a@dest.test", "b@dest.test"]
    time.sleep(1)
    assert len(sink.recipients()) == 2  # each delivered once


def test_admin_commands_talk_to_the_api(volley):
    volley.config["api"]["token"] = "cli-token"
    volley.start()
    api = f"http://127.0.0.1:{volley.api_port}"
    result = volley_cmd("status", "--api", api, "--token", "cli-token")
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"serving" in result.stdout
    result = volley_cmd("queue", "suspend", "--domain", "dest.test", "--api", api, "--token", "cli-token")
    assert result.returncode == 0, result.stdout + result.stderr
    def table():
        result = volley_cmd("queue", "list", "--api", api, "--token", "cli-token")
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.decode().splitlines()
        assert lines[0].split()[:3] == ["VMTA", "DOMAIN", "SIZE"], lines
        return any("dest.test" in l and "suspended" in l for l in lines[1:])

    # Cores publish their queues once a second.
    wait_until(table, 10, "the suspended queue in the table")
    result = volley_cmd("queue", "list", "--json", "--api", api, "--token", "cli-token")
    assert result.returncode == 0 and b'"queues"' in result.stdout, result.stdout
    result = volley_cmd("status", "--api", api, "--token", "wrong")
    assert result.returncode != 0


def test_embedded_default_accepts_mail_with_its_relative_spool(tmp_path):
    """The README's first command: `volley serve` with no configuration, in an empty folder.

    Its spool_dir is relative (./volley-spool); a message on the relay port must be answered 250
    (durable), and SIGTERM must end the daemon with exit 0.
    """
    import smtplib
    import urllib.request

    process = subprocess.Popen(
        [str(VOLLEY_BIN), "serve"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        def healthy():
            try:
                with urllib.request.urlopen("http://127.0.0.1:8025/v1/health", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(healthy, 20, "the embedded default to serve")
        # The default delivers through the system resolver, which is not on loopback: hold the
        # queue so that no DNS query leaves this machine.
        request = urllib.request.Request(
            "http://127.0.0.1:8025/v1/queues/suspend",
            data=b'{"domain": "example.invalid", "reason": "test: no DNS"}',
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as r:
            assert r.status == 202
        time.sleep(0.3)  # the suspension reaches every core through the router
        with smtplib.SMTP("127.0.0.1", 2525, timeout=SMTP_TIMEOUT_S) as client:
            code, text = client.ehlo("client.test")
            assert code == 250
            refused = client.sendmail(
                "alice@src.test", ["bob@example.invalid"], message("from the default")
            )
            assert refused == {}
        assert (tmp_path / "volley-spool" / "core-0").is_dir()
        with urllib.request.urlopen("http://127.0.0.1:8025/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert "volley_messages_received_total 1" in metrics
        assert "volley_delivered_total 0" in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]


def test_sighup_reload_gives_existing_queues_their_new_limits(volley, sink_factory):
    """A queue held by a slow rate gets the reloaded (faster) rate at once, not only new queues."""
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    volley.policy(max_messages_per_minute=2, max_connections=1)
    volley.start()
    with volley.smtp() as client:
        for i in range(6):
            client.sendmail("alice@src.test", [f"r{i}@dest.test"], message(f"slow {i}"))
    sink.wait_lines(1)
    time.sleep(1.5)
    assert len(sink.lines()) <= 2, "the old rate (2 a minute) holds before the reload"
    status, queues = volley.api("GET", "/v1/queues")
    assert status == 200
    [queue] = [q for q in queues["queues"] if q["domain"] == "dest.test"]
    assert queue["size"] >= 4, queue

    volley.policy(max_messages_per_minute=6000)
    volley.write_config()
    volley.signal(signal.SIGHUP)
    lines = sink.wait_lines(6, timeout_s=10)
    assert sorted(r for line in lines for r in line["recipients"]) == [
        f"r{i}@dest.test" for i in range(6)
    ]
    assert "new limits for 1 existing queues" in volley.stderr_path.read_text(errors="replace")


def run_to_exit(v, timeout_s=20):
    """Runs `volley serve` on `v`'s configuration to its exit; (exit code, output)."""
    path = v.write_config()
    done = subprocess.run(
        [str(VOLLEY_BIN), "serve", "--config", str(path)],
        capture_output=True,
        timeout=timeout_s,
        cwd=v.dir,
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


def test_a_second_daemon_on_the_same_addresses_refuses_to_start(volley_factory):
    first = volley_factory("first").start()
    second = volley_factory("second")
    second.config["listener"][0]["address"] = f"127.0.0.1:{first.relay_port}"
    rc, out = run_to_exit(second)
    assert rc == 1, out
    assert f"127.0.0.1:{first.relay_port}" in out and "another volley" in out, out
    # The same for the API address alone.
    third = volley_factory("third")
    third.config["api"]["address"] = f"127.0.0.1:{first.api_port}"
    rc, out = run_to_exit(third)
    assert rc == 1, out
    assert f"API address 127.0.0.1:{first.api_port}" in out, out
    # The first one still serves every client.
    with first.smtp() as s:
        assert s.noop()[0] == 250


def test_a_core_that_fails_at_start_stops_the_process_with_exit_1(volley_factory):
    v = volley_factory()
    v.config["server"]["cores"] = 2
    spool = v.dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    # Core 1's spool directory is a file: its spool cannot open, core 0 waits for its rings.
    (spool / "core-1").write_text("not a directory")
    started = time.monotonic()
    rc, out = run_to_exit(v)
    assert rc == 1, out
    assert "core 1" in out, out
    assert time.monotonic() - started < 15, out


def test_sigusr1_reopens_the_accounting_log_and_sighup_follows_a_new_path(volley, sink_factory):
    from conftest import read_json_lines

    sink = sink_factory()
    volley.route("dest.test", sink.hostport)
    volley.start()
    volley.send("alice@src.test", ["one@dest.test"], message("one"))
    volley.wait_acct("delivery", count=1)
    # logrotate: move the file away, then SIGUSR1; the next events go to a new file at the path.
    rotated = volley.acct_path.with_suffix(".1")
    volley.acct_path.rename(rotated)
    volley.signal(signal.SIGUSR1)
    wait_until(lambda: "accounting log reopened" in volley.stderr_path.read_text(errors="replace"), 10, "the reopen")
    volley.send("alice@src.test", ["two@dest.test"], message("two"))
    volley.wait_acct("delivery", count=1, recipient="two@dest.test")
    assert all(e["recipient"] != "two@dest.test" for e in read_json_lines(rotated))
    # A reload that changes `accounting_log` writes to the new path from then on.
    moved = volley.dir / "logs" / "acct-new.jsonl"
    volley.config["server"]["accounting_log"] = str(moved)
    volley.write_config()
    volley.signal(signal.SIGHUP)
    wait_until(lambda: str(moved) in volley.stderr_path.read_text(errors="replace"), 10, "the new path")
    volley.send("alice@src.test", ["three@dest.test"], message("three"))
    wait_until(
        lambda: moved.exists() and any(e["recipient"] == "three@dest.test" for e in read_json_lines(moved)),
        10,
        "events at the new path",
    )
    assert all(e["recipient"] != "three@dest.test" for e in volley.acct())


def test_check_against_the_running_config_names_the_keys_a_reload_cannot_apply(tmp_path):
    running = tmp_path / "running.toml"
    running.write_text('[[listener]]\naddress = "127.0.0.1:2525"\nrelay_networks = ["127.0.0.0/8"]\n')
    same_but_relay = tmp_path / "relay.toml"
    same_but_relay.write_text('[[listener]]\naddress = "127.0.0.1:2525"\nrelay_networks = ["10.0.0.0/8"]\n')
    moved = tmp_path / "moved.toml"
    moved.write_text('[server]\nspool_dir = "/tmp/elsewhere"\n\n[[listener]]\naddress = "127.0.0.1:2600"\n')
    done = volley_cmd("check", "--config", str(same_but_relay), "--against", str(running))
    assert done.returncode == 0, done
    assert b"a reload applies every change" in done.stdout, done.stdout
    done = volley_cmd("check", "--config", str(moved), "--against", str(running))
    assert done.returncode == 0, done
    out = done.stdout.decode()
    assert "server.spool_dir: changed; needs a restart" in out, out
    assert "listener.address: changed; needs a restart" in out, out


def test_sighup_applies_new_dns_nameservers(volley, sink_factory, dns):
    import socket as _socket

    from conftest import free_port
    from dnsserver import TestDns

    first = sink_factory("127.0.0.10")
    second = sink_factory("127.0.0.12")
    port_first = int(first.hostport.rsplit(":", 1)[1])
    port_second = int(second.hostport.rsplit(":", 1)[1])
    other = TestDns(free_port(kind=_socket.SOCK_DGRAM))
    other.start()
    try:
        dns.a("relay.test", "127.0.0.10")
        other.a("relay.test", "127.0.0.12")
        # One route by name; the port differs per sink, so each sink gets its own route port.
        volley.route("dest.test", f"relay.test:{port_first}")
        volley.start()
        volley.send("alice@src.test", ["one@dest.test"], message("one"))
        assert first.wait_lines(1)[0]["recipients"] == ["one@dest.test"]
        volley.config["dns"]["nameservers"] = [other.nameserver]
        volley.route("dest.test", f"relay.test:{port_second}")
        volley.write_config()
        volley.signal(signal.SIGHUP)
        wait_until(lambda: "configuration generation" in volley.stderr_path.read_text(errors="replace"), 10, "the reload")
        volley.send("alice@src.test", ["two@dest.test"], message("two"))
        # The old resolver's cache says 127.0.0.10; the new nameserver says 127.0.0.12.
        assert second.wait_lines(1)[0]["recipients"] == ["two@dest.test"]
        assert other.asked("relay.test", "A")
    finally:
        other.stop()


def test_a_reload_names_the_changes_that_need_a_restart(volley):
    from conftest import free_port

    volley.start()
    volley.config["api"]["address"] = f"127.0.0.1:{free_port()}"
    volley.config["server"]["cores"] = 2
    volley.write_config()
    volley.signal(signal.SIGHUP)
    line = wait_until(
        lambda: next(
            (l for l in volley.stderr_path.read_text(errors="replace").splitlines() if "take effect after a restart" in l),
            None,
        ),
        10,
        "the reload's warning",
    )
    assert "server.cores" in line and "api.address" in line, line
    # The running API still answers where it was bound.
    assert volley.api("GET", "/v1/health")[0] == 200


def test_the_start_up_log_names_every_listener_and_the_spool(volley_factory):
    v = volley_factory()
    v.config["listener"].append({"address": f"127.0.0.1:{free_port()}", "tls": "none", "auth": "off"})
    v.start()
    log = v.stderr_tail(200)
    first, second = v.config["listener"]
    assert f"listener {first['address']}: tls none, auth off, relay networks 127.0.0.0/8" in log, log
    assert f"listener {second['address']}: tls none, auth off, relay networks none" in log, log
    assert f"spool {v.config['server']['spool_dir']}: segments of {16 << 20} bytes" in log, log
    assert "fsync on" in log, log


def test_serve_applies_the_allocator_purge_delay(volley_factory):
    # The start-up line reads the delay back from mimalloc: were the key not applied, it would
    # show mimalloc v3's own default (1000 ms) instead.
    default = volley_factory("default").start()
    assert "allocator: freed memory given back after 10 ms" in default.stderr_tail(200)
    chosen = volley_factory("chosen")
    chosen.config["server"]["allocator_purge_delay_ms"] = 250
    chosen.start()
    assert "allocator: freed memory given back after 250 ms" in chosen.stderr_tail(200)
