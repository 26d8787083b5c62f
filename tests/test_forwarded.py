"""
The X-Forwarded-* headers (L{poolproxy.proxy.forwarded}), and how an http
client connection sets them: C{https} on a TLS transport.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.backends.pool import BackendPool
from poolproxy.codecs.http import codec as http_codec
from poolproxy.codecs.http_parse import RequestParser, serialize_request_head
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.forwarded import ClientForwarding, TrustedProxies
from poolproxy.proxy.request import HttpBackend, HttpFactory
from poolproxy.testing import FakeEndpoint, FakeTransport


def forwarded(request: bytes, forwarding: ClientForwarding) -> bytes:
    head = RequestParser().feed(request)[0]
    return serialize_request_head(head, *forwarding.headers(head))


class TrustedProxiesTests(SynchronousTestCase):
    def test_networks(self) -> None:
        """
        Addresses in the CIDR blocks are trusted, IPv4 (also as an IPv4-mapped
        IPv6 address) and IPv6 alike; anything else, or what is no address,
        is not; with no networks nothing is.
        """
        trusted = TrustedProxies(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"])
        for host in ("10.1.2.3", "::ffff:10.1.2.3", "2001:db8::1", "192.0.2.7"):
            self.assertTrue(trusted.trusts(host), host)
        for host in ("11.0.0.1", "192.0.2.8", "::1", "", "/tmp/sock", "fe80::1%eth0"):
            self.assertFalse(trusted.trusts(host), host)
        self.assertFalse(TrustedProxies().trusts("10.1.2.3"))


class ClientForwardingTests(SynchronousTestCase):
    REQUEST = (b"GET / HTTP/1.1\r\nHost: site\r\nX-Forwarded-For: 6.6.6.6\r\n"
               b"x-forwarded-for: 7.7.7.7\r\nX-Forwarded-Proto: https\r\n\r\n")

    def test_plain_request(self) -> None:
        """A request without any: the proxy's three, Host as sent."""
        out = forwarded(b"GET / HTTP/1.1\r\nHost: site\r\n\r\n",
                        ClientForwarding(b"1.2.3.4", False, False))
        self.assertEqual(out, b"GET / HTTP/1.1\r\nHost: site\r\nX-Forwarded-For: 1.2.3.4\r\n"
                              b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: site\r\n\r\n")

    def test_untrusted_replaced(self) -> None:
        """Every value a client that is no trusted proxy sent is replaced."""
        out = forwarded(self.REQUEST, ClientForwarding(b"1.2.3.4", True, False))
        self.assertEqual(out, b"GET / HTTP/1.1\r\nHost: site\r\nX-Forwarded-For: 1.2.3.4\r\n"
                              b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: site\r\n\r\n")

    def test_trusted_appended(self) -> None:
        """A trusted proxy's values (all of them, joined) come first, ours after."""
        out = forwarded(self.REQUEST, ClientForwarding(b"10.0.0.5", False, True))
        self.assertEqual(out, b"GET / HTTP/1.1\r\nHost: site\r\n"
                              b"X-Forwarded-For: 6.6.6.6, 7.7.7.7, 10.0.0.5\r\n"
                              b"X-Forwarded-Proto: https, http\r\nX-Forwarded-Host: site\r\n\r\n")

    def test_no_host(self) -> None:
        """An HTTP/1.0 request without Host gets no X-Forwarded-Host."""
        out = forwarded(b"GET / HTTP/1.0\r\n\r\n", ClientForwarding(b"1.2.3.4", False, False))
        self.assertNotIn(b"X-Forwarded-Host", out)


@implementer(ISSLTransport)
class TLSTransport(FakeTransport):
    """A transport that says it is TLS, as Twisted's TLS transports do."""

    def getPeerCertificate(self) -> Any:
        return None


class TLSListenerTests(SynchronousTestCase):
    def test_https_on_tls(self) -> None:
        """
        A client on a TLS transport: X-Forwarded-Proto is https; on a plain
        one, http.
        """
        clock = Clock()
        endpoint = FakeEndpoint()
        pool = BackendPool("b", endpoint, lambda: HttpBackend(http_codec), size=2, clock=clock)
        backend = Backend("b", pool)
        pool.backend = backend
        factory = HttpFactory("l", http_codec, None, Admission(10, 10, 5.0, clock=clock),
                              Cluster("c", [backend]), clock, request_timeout=30.0)
        for transport_type, proto in ((TLSTransport, b"https"), (FakeTransport, b"http")):
            protocol = factory.buildProtocol(None)
            transport = transport_type(protocol)
            transport.peerAddr = IPv4Address("TCP", "192.0.2.1", 1234)
            protocol.makeConnection(transport)
            protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            if endpoint.attempts:
                endpoint.succeed()
            sent = endpoint.transports[0].value()
            self.assertIn(b"\r\nX-Forwarded-Proto: " + proto + b"\r\n", sent)
            self.assertIn(b"\r\nX-Forwarded-For: 192.0.2.1\r\n", sent)
            endpoint.transports[0].clear()
            endpoint.transports[0].protocol.dataReceived(
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
