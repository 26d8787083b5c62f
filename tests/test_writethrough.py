"""
poolproxy.util.writethrough over a real loopback TCP connection: bytes go out at
once when nothing is queued, and what the socket does not take is queued in
order behind them.
"""

from __future__ import annotations

from typing import Any, List

import trustme
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    wrapClientTLS,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import TestCase

from poolproxy.proxy.output import unsent_bytes
from poolproxy.util.writethrough import write_through
from tests.support import wait_for


class Collect(Protocol):
    def __init__(self) -> None:
        self.chunks: List[bytes] = []
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)


def _close(transport: Any) -> None:
    if transport.connected:
        transport.abortConnection()


class WriteThroughTests(TestCase):
    @inlineCallbacks
    def connected(self) -> Any:
        receiver = Collect()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: receiver))
        self.addCleanup(port.stopListening)
        sender = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            Factory.forProtocol(Protocol))
        self.addCleanup(sender.transport.abortConnection)
        yield wait_for(lambda: receiver.transport is not None, what="accepted")
        self.addCleanup(receiver.transport.abortConnection)
        return sender.transport, receiver

    @inlineCallbacks
    def test_small_write_is_sent_without_queueing(self) -> None:
        transport, receiver = yield self.connected()
        write_through(transport, b"hello")
        # Sent by the call itself: nothing is left for the reactor to write.
        self.assertEqual((transport._tempDataLen, transport.dataBuffer), (0, b""))
        yield wait_for(lambda: receiver.received == 5, what="hello")
        self.assertEqual(b"".join(receiver.chunks), b"hello")

    @inlineCallbacks
    def test_what_the_socket_does_not_take_is_queued_in_order(self) -> None:
        transport, receiver = yield self.connected()
        receiver.transport.pauseProducing()  # the receiver stops reading: buffers fill
        big = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than the socket buffers take
        write_through(transport, big)
        self.assertGreater(transport._tempDataLen, 0)  # the rest is queued
        write_through(transport, b"tail")  # queued behind it, not sent ahead
        receiver.transport.resumeProducing()
        yield wait_for(lambda: receiver.received == len(big) + 4, timeout=30, what="all bytes")
        self.assertEqual(b"".join(receiver.chunks), big + b"tail")

    @inlineCallbacks
    def test_closed_transport_is_left_to_twisted(self) -> None:
        transport, receiver = yield self.connected()
        lost: Deferred[None] = Deferred()
        transport.protocol.connectionLost = lambda reason: lost.callback(None)
        transport.loseConnection()
        yield lost
        write_through(transport, b"late")  # after the close: ignored, as write() does
        self.assertEqual(transport._tempDataLen, 0)

    @inlineCallbacks
    def tls_connected(self) -> Any:
        """
        A TLS connection on loopback, as an ssl: listener makes them: the
        server side's transport is Twisted's TLS protocol, whose attribute
        lookups fall through to the TCP transport beneath it.
        """
        ca = trustme.CA()
        issued = ca.issue_cert("localhost")
        server_cert = PrivateCertificate.loadPEM(
            issued.private_key_pem.bytes() + issued.cert_chain_pems[0].bytes())
        receiver = Collect()
        port = yield SSL4ServerEndpoint(reactor, 0, server_cert.options(),
                                        interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: receiver))
        self.addCleanup(port.stopListening)
        client = Collect()
        trust = Certificate.loadPEM(ca.cert_pem.bytes())
        yield wrapClientTLS(optionsForClientTLS("localhost", trust),
                            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
                            ).connect(Factory.forProtocol(lambda: client))
        self.addCleanup(_close, client.transport)
        # The first byte through proves the handshake done on both sides.
        client.transport.write(b"!")
        yield wait_for(lambda: receiver.received, what="the handshake")
        self.addCleanup(_close, receiver.transport)
        return receiver.transport, client

    @inlineCallbacks
    def test_tls_transport_is_written_through_tls(self) -> None:
        """
        On a TLS transport the bytes go through the TLS layer (write()):
        sent beneath it, they would reach the peer as plain text in the
        middle of the TLS stream (curl and redis-py said WRONG_VERSION_NUMBER).
        """
        transport, client = yield self.tls_connected()
        write_through(transport, b"hello")
        write_through(transport, b" over TLS")
        yield wait_for(lambda: client.received == 14, what="the reply")
        self.assertEqual(b"".join(client.chunks), b"hello over TLS")

    @inlineCallbacks
    def test_unsent_bytes_under_tls(self) -> None:
        """
        What a TLS transport holds for a peer that does not read is counted:
        the encrypted bytes queued on the socket beneath it.
        """
        transport, client = yield self.tls_connected()
        client.transport.pauseProducing()
        transport.write(b"x" * (8 * 1024 * 1024))
        yield wait_for(lambda: (unsent_bytes(transport) or 0) > 1024 * 1024,
                       what="bytes held beneath TLS")
        beneath = transport.transport
        self.assertEqual(unsent_bytes(transport),
                         len(beneath.dataBuffer) - beneath.offset + beneath._tempDataLen)

    def test_transport_without_tcp_internals(self) -> None:
        transport = StringTransport()
        write_through(transport, b"via write()")
        self.assertEqual(transport.value(), b"via write()")
