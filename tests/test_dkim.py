"""DKIM signing at reception: the delivered message verifies with dkimpy (RSA and Ed25519), the
entry for the From: domain (or its parent) signs, and mail from other domains is not signed."""

import base64
import smtplib
import ssl
import subprocess
from pathlib import Path

import dkim
import pytest

from conftest import SMTP_TIMEOUT_S, VOLLEY_BIN, free_port, message


def _openssl(*args: str) -> bytes:
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


def make_key(dir: Path, kind: str) -> tuple[Path, bytes]:
    """A new private key file and its DNS TXT record (`v=DKIM1; k=...; p=...`)."""
    path = dir / f"dkim-{kind}.pem"
    if kind == "rsa":
        _openssl("genrsa", "-out", str(path), "2048")
        public = _openssl("pkey", "-in", str(path), "-pubout", "-outform", "DER")
    else:
        _openssl("genpkey", "-algorithm", "ed25519", "-out", str(path))
        # RFC 8463: p= is the raw 32-byte key, the end of the DER SubjectPublicKeyInfo.
        public = _openssl("pkey", "-in", str(path), "-pubout", "-outform", "DER")[-32:]
    record = f"v=DKIM1; k={kind}; p={base64.b64encode(public).decode()}"
    return path, record.encode()


def dns_of(records: dict[str, bytes]):
    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return records.get(name.rstrip("."))

    return dnsfunc


def setup(volley, catcher_factory, tmp_path, entries):
    catcher = catcher_factory("127.0.0.11")
    volley.route("dest.test", catcher.hostport)
    volley.config["dkim"] = entries
    volley.start()
    return catcher


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_signed_message_verifies(volley, catcher_factory, tmp_path, kind):
    key, record = make_key(tmp_path, kind)
    catcher = setup(
        volley,
        catcher_factory,
        tmp_path,
        [{"domain": "acme.example", "selector": "s2026", "private_key": str(key)}],
    )
    content = message(
        "dkim test",
        body="Hello,  world \t\r\n.a line that starts with a dot\r\n\r\n\r\n",
        extra_headers="Cc: <carol@dest.test>\r\n",
    ).replace("From: <sender@src.test>", "From: Someone <someone@acme.example>")
    assert volley.send("bounces@src.test", ["bob@dest.test"], content) == {}

    [caught] = catcher.wait(1)
    data = caught.data
    assert data.startswith(b"Received: "), data[:300]
    signature = caught.parsed.get_all("DKIM-Signature")
    assert signature and len(signature) == 1, data[:800]
    tags = {k.strip(): v for k, v in (t.split("=", 1) for t in signature[0].split(";") if "=" in t)}
    assert tags["d"].strip() == "acme.example"
    assert tags["s"].strip() == "s2026"
    assert tags["a"].strip() == ("rsa-sha256" if kind == "rsa" else "ed25519-sha256")
    signed = "".join(tags["h"].split()).lower().split(":")
    assert "received" not in signed
    assert {"from", "to", "cc", "subject", "message-id"} <= set(signed)

    dnsfunc = dns_of({"s2026._domainkey.acme.example": record})
    assert dkim.verify(data, dnsfunc=dnsfunc), data[:1200]
    # And the signature really covers the content.
    tampered = data.replace(b"Hello,", b"Jello,")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)

    metrics = volley.metrics()
    assert metrics.get("volley_dkim_signed_total") == 1
    assert metrics.get("volley_dkim_sign_failures_total") == 0


def test_subdomain_signed_by_parent_entry_and_others_unsigned(volley, catcher_factory, tmp_path):
    key, record = make_key(tmp_path, "ed25519")
    catcher = setup(
        volley,
        catcher_factory,
        tmp_path,
        [{"domain": "acme.example", "selector": "ed", "private_key": str(key)}],
    )
    from_sub = message("sub").replace("From: <sender@src.test>", "From: <news@mail.acme.example>")
    volley.send("bounces@src.test", ["bob@dest.test"], from_sub)
    other = message("other")  # From: sender@src.test, envelope src.test: no entry.
    volley.send("alice@src.test", ["bob@dest.test"], other)

    caught = {c.parsed["Subject"]: c for c in catcher.wait(2)}
    signed = caught["sub"]
    assert signed.parsed.get_all("DKIM-Signature"), signed.data[:800]
    assert dkim.verify(signed.data, dnsfunc=dns_of({"ed._domainkey.acme.example": record}))
    assert caught["other"].parsed.get_all("DKIM-Signature") is None
    assert volley.metrics().get("volley_dkim_signed_total") == 1


def test_envelope_sender_domain_signs_when_from_has_no_entry(volley, catcher_factory, tmp_path):
    key, record = make_key(tmp_path, "ed25519")
    catcher = setup(
        volley,
        catcher_factory,
        tmp_path,
        [{"domain": "bounce.example", "selector": "b", "private_key": str(key)}],
    )
    volley.send("bounces@bounce.example", ["bob@dest.test"], message("envelope"))
    [caught] = catcher.wait(1)
    assert "d=bounce.example" in "".join(caught.parsed["DKIM-Signature"].split())
    assert dkim.verify(caught.data, dnsfunc=dns_of({"b._domainkey.bounce.example": record}))


def test_check_reports_unparsable_key(volley, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    volley.config["dkim"] = [{"domain": "acme.example", "selector": "s", "private_key": str(bad)}]
    path = volley.write_config()
    result = subprocess.run(
        [str(VOLLEY_BIN), "check", "--config", str(path)], capture_output=True, text=True
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "dkim[0].private_key" in output and "bad.pem" in output, output
    assert "line " in output, output


def test_signature_covers_headers_added_on_submission(
    volley, catcher_factory, tmp_path, password_hash
):
    key, record = make_key(tmp_path, "rsa")
    port = free_port()
    volley.config["listener"].append(
        {"address": f"127.0.0.1:{port}", "tls": "starttls", "auth": "required"}
    )
    volley.config["customer"] = [
        {"name": "acme", "password_hash": password_hash("pw"), "pool": "default"}
    ]
    catcher = setup(
        volley,
        catcher_factory,
        tmp_path,
        [{"domain": "acme.example", "selector": "s", "private_key": str(key)}],
    )
    # No Message-ID and no Date: Volley adds both (RFC 6409 §8) and they must be signed.
    content = "From: <a@acme.example>\r\nTo: <bob@dest.test>\r\nSubject: submitted\r\n\r\nHi.\r\n"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=SMTP_TIMEOUT_S) as client:
        client.starttls(context=context)
        client.login("acme", "pw")
        client.sendmail("a@acme.example", ["bob@dest.test"], content)

    [caught] = catcher.wait(1)
    assert caught.parsed["Message-ID"] and caught.parsed["Date"], caught.data[:600]
    signed = "".join(caught.parsed["DKIM-Signature"].split()).lower()
    assert "message-id" in signed and "date" in signed, signed
    assert dkim.verify(caught.data, dnsfunc=dns_of({"s._domainkey.acme.example": record}))


def test_customer_header_removed_before_signing(volley, catcher_factory, tmp_path):
    key, record = make_key(tmp_path, "ed25519")
    catcher = setup(
        volley,
        catcher_factory,
        tmp_path,
        [{"domain": "acme.example", "selector": "ed", "private_key": str(key)}],
    )
    content = message("customer", extra_headers="X-Volley-Customer: acme\r\n").replace(
        "From: <sender@src.test>", "From: <a@acme.example>"
    )
    volley.send("a@acme.example", ["bob@dest.test"], content)
    [caught] = catcher.wait(1)
    assert b"X-Volley-Customer" not in caught.data
    assert dkim.verify(caught.data, dnsfunc=dns_of({"ed._domainkey.acme.example": record}))


def test_second_signature_adds_ed25519_beside_rsa(volley, catcher_factory, tmp_path):
    """`second_signature`: every message from the domain carries both signatures (RFC 8463 §4
    dual signing), and each verifies with dkimpy against its own selector's record."""
    rsa_key, rsa_record = make_key(tmp_path, "rsa")
    ed_key, ed_record = make_key(tmp_path, "ed25519")
    catcher = setup(
        volley,
        catcher_factory,
        tmp_path,
        [
            {
                "domain": "acme.example",
                "selector": "rsa2026",
                "private_key": str(rsa_key),
                "second_signature": {"selector": "ed2026", "private_key": str(ed_key)},
            }
        ],
    )
    content = message("dual", body="Hello\r\n").replace(
        "From: <sender@src.test>", "From: <someone@acme.example>"
    )
    assert volley.send("bounces@src.test", ["bob@dest.test"], content) == {}
    [caught] = catcher.wait(1)
    signatures = caught.parsed.get_all("DKIM-Signature")
    assert signatures and len(signatures) == 2, caught.data[:1500]
    algorithms = sorted("".join(s.split()).split("a=")[1].split(";")[0] for s in signatures)
    assert algorithms == ["ed25519-sha256", "rsa-sha256"]
    dnsfunc = dns_of(
        {
            "rsa2026._domainkey.acme.example": rsa_record,
            "ed2026._domainkey.acme.example": ed_record,
        }
    )
    verifier = dkim.DKIM(caught.data)
    for index in range(2):
        assert verifier.verify(idx=index, dnsfunc=dnsfunc), f"signature {index}"
    # Without the Ed25519 record only the RSA signature verifies: each stands alone.
    rsa_only = dns_of({"rsa2026._domainkey.acme.example": rsa_record})
    results = sorted(dkim.DKIM(caught.data).verify(idx=i, dnsfunc=rsa_only) for i in range(2))
    assert results == [False, True]
