"""
poolproxy.util.tlsclient: a TLS client endpoint whose connection is made
once the handshake is done, tried in memory (iosim) against servers with the
right certificate, another CA's, another name's, and no TLS at all.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import trustme
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectingCancelledError, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import ConnectionCompleter
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.util.tlsclient import TLSClientEndpoint, TLSHandshakeFailed


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class Recorder(Protocol):
    """A client protocol that notes what happens to it."""

    def __init__(self) -> None:
        self.events: List[str] = []
        self.received = b""

    def connectionMade(self) -> None:
        self.events.append("made")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.events.append("lost")


def server_options(ca: trustme.CA, *names: str) -> Any:
    issued = ca.issue_cert(*names)
    return PrivateCertificate.loadPEM(
        issued.private_key_pem.bytes() + issued.cert_chain_pems[0].bytes()).options()


class TLSClientEndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.ca = trustme.CA()
        self.reactor = MemoryReactorClock()

    def connect(self, server_factory: Any, name: str = "backend.example",
                trust: "trustme.CA | None" = None) -> Tuple[Recorder, "Deferred[Any]"]:
        self.reactor.listenTCP(4321, server_factory)
        authority = Certificate.loadPEM((trust or self.ca).cert_pem.bytes())
        endpoint = TLSClientEndpoint(TCP4ClientEndpoint(self.reactor, "10.0.0.1", 4321),
                                     optionsForClientTLS(name, authority), clock=self.reactor)
        protocol = Recorder()
        d = endpoint.connect(Factory.forProtocol(lambda: protocol))
        return protocol, d

    def tls_server(self, *names: str) -> Any:
        return TLSMemoryBIOFactory(server_options(self.ca, *names), False,
                                   Factory.forProtocol(Echo), clock=self.reactor)

    def test_connected_once_the_handshake_is_done(self) -> None:
        """
        TCP connected is not enough: the protocol is connected, and
        connect() fires with it, only once the handshake is done; then its
        bytes go through TLS both ways.
        """
        protocol, d = self.connect(self.tls_server("backend.example"))
        pump = ConnectionCompleter(self.reactor).succeedOnce(greet=False)
        assert pump is not None
        self.assertNoResult(d)
        self.assertEqual(protocol.events, [])
        pump.flush()
        self.assertIs(self.successResultOf(d), protocol)
        self.assertEqual(protocol.events, ["made"])
        protocol.transport.write(b"PING\r\n")
        for _ in range(3):  # TLS sends small writes on the clock's next turn
            self.reactor.advance(0)
            pump.flush()
        self.assertEqual(protocol.received, b"PING\r\n")

    def failed_handshake(self, server_factory: Any, **kwargs: Any) -> str:
        protocol, d = self.connect(server_factory, **kwargs)
        pump = ConnectionCompleter(self.reactor).succeedOnce(greet=False)
        assert pump is not None
        pump.flush()
        failure = self.failureResultOf(d, TLSHandshakeFailed)
        self.assertEqual(protocol.events, [], "the protocol saw a connection")
        return failure.getErrorMessage()

    def test_untrusted_certificate(self) -> None:
        """A certificate from a CA not trusted fails the connect, saying so."""
        why = self.failed_handshake(self.tls_server("backend.example"), trust=trustme.CA())
        self.assertEqual(why, "TLS handshake failed: certificate verify failed")

    def test_wrong_name(self) -> None:
        """A trusted certificate for another name fails the connect, naming the name."""
        why = self.failed_handshake(self.tls_server("other.example"))
        self.assertEqual(why, "TLS handshake failed: the certificate does not match backend.example")

    def test_server_without_tls(self) -> None:
        """A backend that answers in plain text fails the connect as a TLS failure."""
        why = self.failed_handshake(Factory.forProtocol(Echo))
        self.assertTrue(why.startswith("TLS handshake failed: "), why)

    def test_cancel_during_the_handshake(self) -> None:
        """Cancelling while the handshake runs aborts the connection; the protocol never connects."""
        protocol, d = self.connect(self.tls_server("backend.example"))
        pump = ConnectionCompleter(self.reactor).succeedOnce(greet=False)
        assert pump is not None
        d.cancel()
        self.failureResultOf(d, CancelledError)
        pump.flush()
        self.assertTrue(pump.clientIO.disconnecting)
        self.assertEqual(protocol.events, [])

    def test_cancel_before_tcp_connects(self) -> None:
        """
        Cancelling before TCP connects stops the connect, which fails as the
        TCP endpoint's does.
        """
        protocol, d = self.connect(self.tls_server("backend.example"))
        d.cancel()
        self.failureResultOf(d, ConnectingCancelledError)
        self.assertEqual(protocol.events, [])

    def test_tcp_failure_is_not_a_tls_failure(self) -> None:
        """A TCP connect that fails fails with its own error, not a TLS one."""
        protocol, d = self.connect(self.tls_server("backend.example"))
        ConnectionCompleter(self.reactor).failOnce(Failure(ConnectionRefusedError()))
        self.failureResultOf(d, ConnectionRefusedError)
