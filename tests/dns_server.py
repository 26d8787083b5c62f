"""
A real twisted.names DNS server for the DNS interop tests, run as its own
process: C{python -m tests.dns_server PORT ZONE_FILE}.  It serves, on UDP
127.0.0.1:PORT, the records of ZONE_FILE, a JSON object the test rewrites
(atomically, by rename) to change them, read again at every query:

    {"ttl": 1,
     "a": {"cache.test": ["127.0.0.2", "127.0.0.3"]},
     "srv": {"_redis._tcp.cache.test": [[10, 1, 6379, "r1.cache.test"]]}}

A name in neither table is NXDOMAIN; a name in C{"servfail"} fails.
"""

from __future__ import annotations

import json
import sys
from typing import Any, List, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import dns, server
from twisted.names.common import ResolverBase
from twisted.names.error import DomainError, DNSServerError


class EditableAuthority(ResolverBase):
    """An authority whose records are the zone file's at the time of each query."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> "Deferred[Any]":
        with open(self.path) as f:
            zone = json.load(f)
        ttl = zone.get("ttl", 1)
        text = name.decode("ascii").rstrip(".").lower()
        if text in zone.get("servfail", ()):
            return fail(DNSServerError(text))
        answers: List[dns.RRHeader] = []
        known = False
        if text in zone.get("a", {}):
            known = True
            for address in zone["a"][text]:
                if ":" in address and type in (dns.AAAA, dns.ALL_RECORDS):
                    answers.append(dns.RRHeader(name, dns.AAAA, ttl=ttl, auth=True,
                                                payload=dns.Record_AAAA(address, ttl)))
                elif ":" not in address and type in (dns.A, dns.ALL_RECORDS):
                    answers.append(dns.RRHeader(name, dns.A, ttl=ttl, auth=True,
                                                payload=dns.Record_A(address, ttl)))
        if text in zone.get("srv", {}):
            known = True
            if type in (dns.SRV, dns.ALL_RECORDS):
                for priority, weight, port, target in zone["srv"][text]:
                    answers.append(dns.RRHeader(
                        name, dns.SRV, ttl=ttl, auth=True,
                        payload=dns.Record_SRV(priority, weight, port, target, ttl)))
        if not known:
            return fail(DomainError(text))
        result: Tuple[List[dns.RRHeader], List[dns.RRHeader], List[dns.RRHeader]] = (
            answers, [], [])
        return succeed(result)


def main(port: int, path: str) -> None:
    factory = server.DNSServerFactory(authorities=[EditableAuthority(path)])
    protocol = dns.DNSDatagramProtocol(factory)
    reactor.listenUDP(port, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"dns server on 127.0.0.1:{port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
