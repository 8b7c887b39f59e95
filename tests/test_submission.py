"""Relay control, and submission: STARTTLS or implicit TLS, then AUTH PLAIN or LOGIN."""

import base64
import re
import smtplib
import socket
import ssl
import subprocess

import pytest

from conftest import SMTP_TIMEOUT_S, free_port, message

PASSWORD = "correct horse battery staple"


def unverified_tls() -> ssl.SSLContext:
    # The daemon makes a self-signed certificate at start: nothing to verify it against.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_relay_refused_outside_relay_networks(volley, sink_factory):
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    volley.config["listener"][0]["relay_networks"] = ["127.0.0.1/32"]
    volley.start()

    with volley.smtp(source="127.0.0.5") as outsider:
        outsider.ehlo("outsider.test")
        assert outsider.mail("alice@src.test")[0] == 250
        code, text = outsider.rcpt("bob@dest.test")
        assert code == 554, text
        assert text.startswith(b"5.7.1"), text

    # From inside relay_networks the same transaction is accepted and delivered.
    with volley.smtp(source="127.0.0.1") as insider:
        insider.sendmail("alice@src.test", ["bob@dest.test"], message("inside"))
    [line] = sink.wait_lines(1)
    assert line["recipients"] == ["bob@dest.test"]
    volley.wait_acct("reception", count=1)
    assert len(volley.acct("reception")) == 1


@pytest.fixture
def submission(volley, sink_factory, password_hash):
    """A daemon with a STARTTLS and an implicit-TLS listener (AUTH required) and customer acme."""
    sink = sink_factory("127.0.0.10")
    volley.route("dest.test", sink.hostport)
    volley.starttls_port = free_port()
    volley.implicit_port = free_port()
    volley.config["listener"] += [
        {"address": f"127.0.0.1:{volley.starttls_port}", "tls": "starttls", "auth": "required"},
        {"address": f"127.0.0.1:{volley.implicit_port}", "tls": "implicit", "auth": "required"},
    ]
    volley.config["customer"] = [
        {"name": "acme", "password_hash": password_hash(PASSWORD), "pool": "default"}
    ]
    volley.start()
    return volley, sink


def starttls_client(volley) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", volley.starttls_port, timeout=SMTP_TIMEOUT_S)
    client.ehlo("client.test")
    client.starttls(context=unverified_tls())
    client.ehlo("client.test")
    return client


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "LOGIN-challenge"])
def test_starttls_auth_then_send(submission, mechanism):
    volley, sink = submission
    with starttls_client(volley) as client:
        assert client.has_extn("auth")
        assert "PLAIN" in client.esmtp_features["auth"] and "LOGIN" in client.esmtp_features["auth"]
        client.user, client.password = "acme", PASSWORD
        if mechanism == "PLAIN":
            code, _ = client.auth("PLAIN", client.auth_plain)
        elif mechanism == "LOGIN":
            code, _ = client.auth("LOGIN", client.auth_login)
        else:  # no initial response: the server must send the Username:/Password: challenges
            code, _ = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
        assert code == 235
        client.sendmail("alice@src.test", ["bob@dest.test"], message(f"auth {mechanism}"))

    [line] = sink.wait_lines(1)
    assert line["recipients"] == ["bob@dest.test"]
    [reception] = volley.wait_acct("reception")
    assert reception["customer"] == "acme"


def test_wrong_password_gets_535(submission):
    volley, _ = submission
    with starttls_client(volley) as client:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("acme", "wrong password")
        assert refused.value.smtp_code == 535
        assert refused.value.smtp_error.startswith(b"5.7.8"), refused.value.smtp_error


def test_mail_before_auth_gets_530(submission):
    volley, _ = submission
    with starttls_client(volley) as client:
        code, text = client.mail("alice@src.test")
        assert code == 530, text
        assert text.startswith(b"5.7.0"), text


def test_auth_not_offered_before_starttls(submission):
    volley, _ = submission
    with smtplib.SMTP("127.0.0.1", volley.starttls_port, timeout=SMTP_TIMEOUT_S) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        assert not client.has_extn("auth"), client.esmtp_features
        token = base64.b64encode(f"\0acme\0{PASSWORD}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {token}")
        # RFC 4954 section 6: 538 5.7.11 (encryption required); any 5xx refusal is acceptable.
        assert 500 <= code < 600, (code, text)
        # And no mail without it.
        code, text = client.mail("alice@src.test")
        assert code == 530, text


def test_implicit_tls_with_smtp_ssl(submission):
    volley, sink = submission
    with smtplib.SMTP_SSL(
        "127.0.0.1", volley.implicit_port, context=unverified_tls(), timeout=SMTP_TIMEOUT_S
    ) as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")  # already encrypted
        client.login("acme", PASSWORD)
        client.sendmail("alice@src.test", ["carol@dest.test"], message("implicit"))
    [line] = sink.wait_lines(1)
    assert line["recipients"] == ["carol@dest.test"]


def test_swaks_submission(submission):
    volley, sink = submission
    result = subprocess.run(
        [
            "swaks", "--server", f"127.0.0.1:{volley.starttls_port}", "--tls",
            "--auth", "PLAIN", "--auth-user", "acme", "--auth-password", PASSWORD,
            "--from", "alice@src.test", "--to", "dave@dest.test", "--helo", "swaks.test",
            "--timeout", "10",
        ],
        capture_output=True,
        timeout=30,
    )
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, out + result.stderr.decode(errors="replace")
    assert "<~  235" in out
    [line] = sink.wait_lines(1)
    assert line["recipients"] == ["dave@dest.test"]


def test_openssl_starttls_shows_certificate_then_ehlo(submission):
    volley, _ = submission
    result = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{volley.starttls_port}",
            "-starttls", "smtp", "-name", "client.test", "-ign_eof", "-nocommands", "-crlf",
        ],
        input=b"EHLO client.test\nQUIT\n",
        capture_output=True,
        timeout=30,
    )
    out = result.stdout.decode(errors="replace")
    assert "-----BEGIN CERTIFICATE-----" in out, out + result.stderr.decode(errors="replace")
    assert "mta.volley.test" in out  # the self-signed certificate names server.hostname
    # s_client consumes the plaintext EHLO and STARTTLS itself: every reply it prints came over
    # TLS. EHLO there lists AUTH (and no second STARTTLS); QUIT gets 221.
    replies = [line for line in out.splitlines() if re.match(r"^[2-5][0-9][0-9][ -]", line)]
    assert any(re.match(r"^250[ -]AUTH .*PLAIN", line) for line in replies), out
    assert not any("STARTTLS" in line for line in replies), replies
    assert replies[-1].startswith("221"), replies
