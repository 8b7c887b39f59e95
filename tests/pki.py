"""A test certificate authority made with openssl: a CA, server certificates it signs, and the
hashes DANE TLSA records carry. Everything lives in a test's temporary directory."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

VALIDITY_DAYS = "30"


def _openssl(*args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(
        ["openssl", *args], check=True, capture_output=True, input=input, timeout=60
    ).stdout


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))


class TestCa:
    """A self-signed CA (`ca.pem`) in `dir`; `issue` signs server certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, dir: Path, name: str = "Volley Test CA") -> None:
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        stem = name.lower().replace(" ", "-")
        self.key = dir / f"{stem}.key"
        self.cert = dir / f"{stem}.pem"
        _new_key(self.key)
        _openssl(
            "req", "-x509", "-new", "-key", str(self.key), "-out", str(self.cert),
            "-days", VALIDITY_DAYS, "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )

    def issue(self, names: list[str], stem: str | None = None) -> tuple[Path, Path]:
        """A server certificate for `names` (the first is also its CN): (chain PEM, key PEM)."""
        stem = stem or names[0]
        key = self.dir / f"{stem}.key"
        csr = self.dir / f"{stem}.csr"
        cert = self.dir / f"{stem}.pem"
        ext = self.dir / f"{stem}.ext"
        _new_key(key)
        _openssl("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}")
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n"
        )
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-CAcreateserial", "-days", VALIDITY_DAYS, "-out", str(cert), "-extfile", str(ext),
        )
        return cert, key


def spki_sha256(cert: Path) -> str:
    """SHA-256 of the certificate's DER SubjectPublicKeyInfo (TLSA selector 1, matching 1), hex."""
    public = _openssl("x509", "-in", str(cert), "-pubkey", "-noout")
    der = _openssl("pkey", "-pubin", "-outform", "DER", input=public)
    return hashlib.sha256(der).hexdigest()


def cert_sha256(cert: Path) -> str:
    """SHA-256 of the whole DER certificate (TLSA selector 0, matching 1), hex."""
    der = _openssl("x509", "-in", str(cert), "-outform", "DER")
    return hashlib.sha256(der).hexdigest()
