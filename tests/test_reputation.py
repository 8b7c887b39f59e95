"""Sender reputation self-checks (`[reputation]`, docs/reputation.md) against the test DNS server:
FCrDNS of each VMTA, and a DNSBL zone that lists one VMTA's address, then delists it."""

from conftest import DELIVERY_TIMEOUT_S, message, wait_until

GOOD_IP, LISTED_IP = "127.0.0.2", "127.0.0.3"
ZONE = "bl.volley.test"
LISTING = f"3.0.0.127.{ZONE}"


def vmta_checks(volley) -> dict[str, dict]:
    status, body = volley.api("GET", "/v1/vmta-status")
    assert status == 200, body
    return {v["vmta"]: v for v in body["vmtas"]}


def disabled(volley) -> list[dict]:
    status, body = volley.api("GET", "/v1/vmta-status")
    assert status == 200, body
    return body["disabled"]


def test_fcrdns_and_a_dnsbl_listing_take_the_vmta_out_until_delisted(volley, sink_factory, dns):
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    # v1: PTR and A agree. v2: its PTR names another host, and it is listed.
    dns.ptr(GOOD_IP, "v1.volley.test")
    dns.a("v1.volley.test", GOOD_IP)
    dns.ptr(LISTED_IP, "mail.elsewhere.test")
    dns.a("v2.volley.test", LISTED_IP)
    dns.a(LISTING, "127.0.0.2")
    dns.txt(LISTING, "listed for testing, see https://bl.volley.test/q")
    volley.config["vmta"] = [
        {"name": "v1", "source_ip": GOOD_IP, "ehlo_hostname": "v1.volley.test"},
        {"name": "v2", "source_ip": LISTED_IP, "ehlo_hostname": "v2.volley.test"},
    ]
    volley.config["pool"] = [{"name": "default", "vmtas": ["v1", "v2"]}]
    volley.config["reputation"] = {
        "dnsbl": [ZONE],
        "dnsbl_action": "remove",
        "check_interval_s": 1,
    }
    volley.start()

    checks = wait_until(
        lambda: (c := vmta_checks(volley)) and len(c) == 2 and c, 10, "both VMTAs checked"
    )
    assert checks["v1"]["fcrdns"]["status"] == "pass", checks
    assert checks["v1"]["dnsbl_listed"] == [], checks
    assert checks["v2"]["fcrdns"]["status"] == "fail", checks
    assert "mail.elsewhere.test" in checks["v2"]["fcrdns"]["detail"], checks
    assert checks["v2"]["dnsbl_listed"] == [ZONE], checks
    [zone] = checks["v2"]["dnsbl"]
    assert zone["codes"] == ["127.0.0.2"] and "listed for testing" in zone["reason"], zone

    [out] = wait_until(lambda: disabled(volley), 10, "v2 out of its pools")
    assert out["vmta"] == "v2" and ZONE in out["reason"], out
    metrics = volley.metrics()
    assert metrics['volley_vmta_fcrdns_ok{vmta="v1"}'] == 1
    assert metrics['volley_vmta_fcrdns_ok{vmta="v2"}'] == 0
    assert metrics[f'volley_vmta_dnsbl_listed{{vmta="v2",zone="{ZONE}"}}'] == 1
    assert metrics[f'volley_vmta_dnsbl_listed{{vmta="v1",zone="{ZONE}"}}'] == 0
    assert metrics["volley_reputation_checks_total"] >= 1
    log = volley.stderr_tail(400)
    assert "WARN" in log and f"listed in {ZONE}" in log and "FCrDNS fails" in log, log
    events = volley.wait_acct("reputation", 2)
    assert {(e["vmta"], e["domain"]) for e in events} >= {("v2", ZONE), ("v2", "")}, events
    assert all(e["source_ip"] == LISTED_IP for e in events), events

    # While v2 is out, all mail leaves from v1.
    with volley.smtp() as client:
        for n in range(4):
            client.sendmail("alice@src.test", [f"r{n}@dest.test"], message(f"while listed {n}"))
    lines = sink.wait_lines(4)
    assert {line["peer_ip"] for line in lines} == {GOOD_IP}, lines

    # Delisted: back in its pools, with an event and the metric at 0.
    dns.remove(LISTING)
    wait_until(lambda: not disabled(volley), 10, "v2 back in its pools after the delisting")
    volley.wait_acct("reputation", 1, response=f"delisted from {ZONE}")
    assert volley.metrics()[f'volley_vmta_dnsbl_listed{{vmta="v2",zone="{ZONE}"}}'] == 0
    with volley.smtp() as client:
        for n in range(4):
            client.sendmail("alice@src.test", [f"s{n}@dest.test"], message(f"after {n}"))
    lines = sink.wait_lines(8)
    assert {line["peer_ip"] for line in lines[4:]} == {GOOD_IP, LISTED_IP}, lines


def test_warn_keeps_a_listed_vmta_and_an_operator_disable_survives_the_delisting(volley, dns):
    dns.a(LISTING, "127.0.0.4")
    volley.config["vmta"] = [
        {"name": "v2", "source_ip": LISTED_IP, "ehlo_hostname": "v2.volley.test"},
    ]
    volley.config["pool"] = [{"name": "default", "vmtas": ["v2"]}]
    volley.config["reputation"] = {"dnsbl": [ZONE], "check_interval_s": 1, "fcrdns": False}
    volley.start()
    checks = wait_until(lambda: vmta_checks(volley).get("v2"), 10, "v2 checked")
    assert checks["dnsbl_listed"] == [ZONE] and checks["fcrdns"] is None, checks
    assert disabled(volley) == []  # "warn" is the default: listed, still in its pool
    volley.wait_acct("reputation", 1, vmta="v2", domain=ZONE)

    # "remove" by a reload: out; the operator then disables it too; the delisting keeps it out.
    volley.config["reputation"]["dnsbl_action"] = "remove"
    volley.write_config()
    volley.signal(1)
    wait_until(lambda: disabled(volley), 10, "v2 out after the reload")
    status, _ = volley.api("POST", "/v1/vmtas/v2/disable", {"reason": "maintenance"})
    assert status == 200
    dns.remove(LISTING)
    volley.wait_acct("reputation", 1, response=f"delisted from {ZONE}")
    [out] = disabled(volley)
    assert out["reason"] == "maintenance", out


def test_check_rejects_a_bad_zone_and_interval(tmp_path):
    import subprocess

    from conftest import VOLLEY_BIN

    bad = tmp_path / "bad.toml"
    bad.write_text('[reputation]\ndnsbl = ["not a zone"]\ncheck_interval_s = 0\n')
    result = subprocess.run([str(VOLLEY_BIN), "check", "--config", str(bad)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "reputation.dnsbl[0]" in result.stdout + result.stderr
    assert "reputation.check_interval_s" in result.stdout + result.stderr


def test_volley_check_dns_runs_the_checks_once(tmp_path, dns):
    import subprocess

    from conftest import VOLLEY_BIN

    dns.ptr(GOOD_IP, "v1.volley.test")
    dns.a("v1.volley.test", GOOD_IP)
    dns.a(f"2.0.0.127.{ZONE}", "127.0.0.2")
    config = tmp_path / "volley.toml"

    def run(vmta_ip: str, zones: list[str]):
        config.write_text(f"""
[server]
spool_dir = "{tmp_path}/spool"
[[listener]]
address = "127.0.0.1:2525"
[[vmta]]
name = "v1"
source_ip = "{vmta_ip}"
ehlo_hostname = "v1.volley.test"
[[pool]]
name = "default"
vmtas = ["v1"]
[dns]
nameservers = ["{dns.nameserver}"]
[reputation]
dnsbl = {zones!r}
""".replace("'", '"'))
        return subprocess.run([str(VOLLEY_BIN), "check", "--dns", "--config", str(config)],
                              capture_output=True, text=True, timeout=60)

    ok = run(GOOD_IP, [])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"v1 {GOOD_IP} fcrdns pass" in ok.stdout, ok.stdout
    listed = run(GOOD_IP, [ZONE])
    assert listed.returncode == 1, listed.stdout
    assert f"v1 {GOOD_IP} dnsbl {ZONE} listed" in listed.stdout, listed.stdout
    wrong = run(LISTED_IP, [])
    assert wrong.returncode == 1, wrong.stdout
    assert "fcrdns fail" in wrong.stdout and "no PTR" in wrong.stdout, wrong.stdout
