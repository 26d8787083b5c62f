"""
poolproxy.util.writethrough over a real loopback TCP connection: bytes go out at
once when nothing is queued, and what the socket does not take is queued in
order behind them.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import TestCase

from poolproxy.util.writethrough import write_through
from tests.support import wait_for


class Collect(Protocol):
    def __init__(self) -> None:
        self.chunks: List[bytes] = []
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)


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

    def test_transport_without_tcp_internals(self) -> None:
        transport = StringTransport()
        write_through(transport, b"via write()")
        self.assertEqual(transport.value(), b"via write()")
