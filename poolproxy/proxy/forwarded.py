"""
What a request tells its backend about where it came from: the
X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host headers.

Only a client the operator trusts may say it: a proxy in front of this one,
named by address in C{trusted_proxies}.  From any other client those
headers (and C{Forwarded}, which the proxy does not write but a backend
may read) are removed and the proxy's own are sent: the client's address,
C{https} on a TLS listener or C{http}, and the request's Host.  A backend
or framework that believes the first X-Forwarded-For or -Proto value (most
do) can then not be told a client's chosen address or scheme.  From a
trusted proxy the client's values are kept and the proxy's appended after
them, each header's values joined into one (as nginx's
C{$proxy_add_x_forwarded_for} and HAProxy's C{option forwardfor} do).
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

_FOR, _PROTO, _HOST = b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"
#: The headers a client may send only through a trusted proxy.
FORWARDING_HEADERS = (_FOR, _PROTO, _HOST, b"forwarded")
_FORWARDING = frozenset(FORWARDING_HEADERS)


class TrustedProxies:
    """The networks (CIDRs, IPv4 or IPv6) whose clients may set X-Forwarded-*."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = tuple(ip_network(n, strict=False) for n in networks)

    def trusts(self, host: str) -> bool:
        """Whether a client at address C{host} is a trusted proxy."""
        if not self.networks:
            return False
        try:
            address: Any = ip_address(host.split("%", 1)[0])
        except ValueError:
            return False  # not an IP client (a UNIX socket)
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


class ClientForwarding:
    """
    The forwarding headers for one client connection's requests: what they
    add (computed once per connection, but for the Host) and what they drop.
    """

    __slots__ = ("peer", "proto", "trusted", "_lines")

    def __init__(self, peer: bytes, tls: bool, trusted: bool) -> None:
        self.peer = peer
        self.proto = b"https" if tls else b"http"
        self.trusted = trusted
        self._lines = b"X-Forwarded-For: " + peer + b"\r\nX-Forwarded-Proto: " + self.proto

    def headers(self, head: Any) -> Tuple[Union[bytes, List[Tuple[bytes, bytes]]],
                                          Sequence[bytes]]:
        """
        (the header lines to add, the header names to drop) for a request
        with head C{head}, as L{poolproxy.codecs.http_parse.serialize_request_head}
        takes them.
        """
        host = head.header(b"host")
        names = head.names
        if names is not None and _FORWARDING.isdisjoint(names):
            drop: Sequence[bytes] = ()  # the common case: nothing to look for again
        elif not self.trusted:
            drop = FORWARDING_HEADERS
        else:
            return self._appended(head, host)
        if host:
            return self._lines + b"\r\nX-Forwarded-Host: " + host, drop
        return self._lines, drop

    def _appended(self, head: Any, host: Optional[bytes]) -> Tuple[List[Tuple[bytes, bytes]],
                                                                   Sequence[bytes]]:
        """A trusted proxy's request: ours after theirs."""
        extra = []
        for name, title, ours in ((_FOR, b"X-Forwarded-For", self.peer),
                                  (_PROTO, b"X-Forwarded-Proto", self.proto),
                                  (_HOST, b"X-Forwarded-Host", host)):
            theirs = b", ".join(v for n, v in head.headers if n.lower() == name and v)
            value = theirs + b", " + ours if theirs and ours else theirs or ours
            if value:
                extra.append((title, value))
        return extra, (_FOR, _PROTO, _HOST)
