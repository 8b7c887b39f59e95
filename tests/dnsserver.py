"""A small authoritative DNS server for the integration tests (dnslib over UDP on loopback).

Each test sets the records it needs; every other name is NXDOMAIN. A name that has records, but not
of the asked type, answers NOERROR with no answers (NODATA), like a real zone.

Failures per name, for every query type: `servfail(name)` answers SERVFAIL (a broken zone or a
resolver that cannot reach it), `timeout(name)` never answers (a dead authoritative server), and
`heal(name)` ends either. A failure wins over records the name has, so a test can break a working
domain for a while and heal it again.

DNSSEC as a local validating resolver reports it: `signed(zone)` sets the AD bit on every answer
for the zone and the names under it (NXDOMAIN and NODATA included), `unsigned(zone)` stops it;
SERVFAIL is what such a resolver answers for a bogus zone. `tlsa` adds DANE records.
"""

from __future__ import annotations

import threading

from dnslib import AAAA, MX, PTR, QTYPE, RCODE, RR, SOA, TLSA, TXT, A, DNSLabel, DNSRecord
from dnslib.dns import DNSError
from dnslib.server import BaseResolver, DNSLogger, DNSServer

TTL_S = 60


def _key(name: str) -> str:
    return str(DNSLabel(name)).lower().rstrip(".") + "."


class _ZoneResolver(BaseResolver):
    def __init__(self, zone: "TestDns") -> None:
        self.zone = zone

    def resolve(self, request: DNSRecord, handler) -> DNSRecord:
        reply = request.reply()
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        name = _key(str(qname))
        with self.zone.lock:
            self.zone.queries.append((name, qtype))
            records = list(self.zone.records.get(name, []))
            failure = self.zone.failures.get(name)
            signed = any(name == z or name.endswith("." + z) for z in self.zone.signed_zones)
        # The AD bit of a validating resolver: only for answers it could validate.
        reply.header.ad = 1 if signed else 0
        if failure == "timeout":
            # dnslib's handler sends nothing when the resolver raises DNSError.
            raise DNSError(f"{name} set to time out")
        if failure == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if not records:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(_soa(name))
            return reply
        answers = [rr for rr in records if QTYPE[rr.rtype] == qtype]
        for rr in answers:
            reply.add_answer(rr)
        if not answers:
            reply.add_auth(_soa(name))
        return reply


def _soa(name: str) -> RR:
    # Negative answers carry an SOA so resolvers know how long to cache them (RFC 2308).
    return RR(
        name,
        QTYPE.SOA,
        ttl=TTL_S,
        rdata=SOA("ns.test.", "hostmaster.test.", (1, 3600, 600, 86400, TTL_S)),
    )


class _QuietLogger(DNSLogger):
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error,-recv,-send,-data")


class TestDns:
    """The records of one test, served on 127.0.0.1:`port` over UDP."""

    __test__ = False  # not a pytest test class

    def __init__(self, port: int, address: str = "127.0.0.1") -> None:
        self.address = address
        self.port = port
        self.lock = threading.Lock()
        self.records: dict[str, list[RR]] = {}
        self.failures: dict[str, str] = {}  # name -> "servfail" | "timeout"
        self.signed_zones: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self._server = DNSServer(
            _ZoneResolver(self), address=address, port=port, logger=_QuietLogger()
        )

    @property
    def nameserver(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> None:
        self._server.start_thread()

    def stop(self) -> None:
        self._server.stop()
        self._server.server.server_close()

    def _add(self, name: str, rr: RR) -> None:
        with self.lock:
            self.records.setdefault(_key(name), []).append(rr)

    def mx(self, domain: str, preference: int, exchange: str) -> None:
        self._add(domain, RR(domain, QTYPE.MX, ttl=TTL_S, rdata=MX(exchange, preference)))

    def null_mx(self, domain: str) -> None:
        """RFC 7505: `MX 0 .`, the domain accepts no mail."""
        self._add(domain, RR(domain, QTYPE.MX, ttl=TTL_S, rdata=MX(".", 0)))

    def a(self, name: str, address: str) -> None:
        self._add(name, RR(name, QTYPE.A, ttl=TTL_S, rdata=A(address)))

    def aaaa(self, name: str, address: str) -> None:
        self._add(name, RR(name, QTYPE.AAAA, ttl=TTL_S, rdata=AAAA(address)))

    def ptr(self, address: str, host: str) -> None:
        """The PTR record of an IPv4 address (`2.0.0.127.in-addr.arpa` for 127.0.0.2)."""
        name = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
        self._add(name, RR(name, QTYPE.PTR, ttl=TTL_S, rdata=PTR(host)))

    def txt(self, name: str, text: str, ttl_s: int = TTL_S) -> None:
        self._add(name, RR(name, QTYPE.TXT, ttl=ttl_s, rdata=TXT(text)))

    def tlsa(self, name: str, usage: int, selector: int, matching: int, data_hex: str) -> None:
        """A TLSA record (RFC 6698), e.g. `tlsa("_25._tcp.mx.a.test", 3, 1, 1, sha256_hex)`."""
        rdata = TLSA(usage, selector, matching, bytes.fromhex(data_hex))
        self._add(name, RR(name, QTYPE.TLSA, ttl=TTL_S, rdata=rdata))

    def signed(self, zone: str) -> None:
        """Answers for `zone` and every name under it carry the AD bit (validated)."""
        with self.lock:
            self.signed_zones.add(_key(zone))

    def unsigned(self, zone: str) -> None:
        with self.lock:
            self.signed_zones.discard(_key(zone))

    def remove(self, name: str) -> None:
        """Every record of `name` goes: it is NXDOMAIN from now on."""
        with self.lock:
            self.records.pop(_key(name), None)

    def servfail(self, name: str) -> None:
        """Every query for `name` answers SERVFAIL until `heal(name)`."""
        with self.lock:
            self.failures[_key(name)] = "servfail"

    def timeout(self, name: str) -> None:
        """Queries for `name` get no answer at all until `heal(name)`."""
        with self.lock:
            self.failures[_key(name)] = "timeout"

    def heal(self, name: str) -> None:
        """`name` answers from its records again."""
        with self.lock:
            self.failures.pop(_key(name), None)

    def asked(self, name: str, qtype: str) -> bool:
        with self.lock:
            return (_key(name), qtype) in self.queries
