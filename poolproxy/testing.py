"""
Test helpers for poolproxy and for people extending it, in the spirit of
L{treq.testing}: fakes of Twisted's interfaces, never of poolproxy's own code.

L{FakeEndpoint} is an L{IStreamClientEndpoint} whose connection attempts the
test completes or fails by hand; connected protocols get a
L{FakeTransport}, a L{StringTransport} that records the request to close and
delivers C{connectionLost} when the test says so, as a reactor would later.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.defer import Deferred
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectingCancelledError, ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer


class FakeTransport(StringTransport):
    """
    A L{StringTransport} for one protocol; L{loseConnection} only marks it,
    and L{FakeEndpoint.deliver_losses} (or L{lose}) tells the protocol.
    """

    def __init__(self, protocol: Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.lost = False
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def lose(self, reason: Optional[Failure] = None) -> None:
        """
        The connection is gone: tell the protocol once.
        """
        if not self.lost:
            self.lost = True
            self.disconnecting = True
            self.protocol.connectionLost(reason or Failure(ConnectionDone()))


class _Attempt:
    def __init__(self, factory: IProtocolFactory, deferred: "Deferred[Any]") -> None:
        self.factory = factory
        self.deferred = deferred


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    A client endpoint whose connection attempts wait for the test.

    @ivar attempts: attempts not yet completed, oldest first.
    @ivar transports: the transport of every connection made.
    @ivar cancelled: how many attempts were cancelled (connect timeouts).
    """

    address = IPv4Address("TCP", "127.0.0.1", 1)

    def __init__(self) -> None:
        self.attempts: List[_Attempt] = []
        self.transports: List[FakeTransport] = []
        self.cancelled = 0

    def connect(self, factory: IProtocolFactory) -> "Deferred[Any]":
        def cancel(d: "Deferred[Any]") -> None:
            # As Twisted's TCP endpoints do: not a CancelledError.
            self.cancelled += 1
            self.attempts[:] = [a for a in self.attempts if a.deferred is not d]
            d.errback(ConnectingCancelledError(self.address))

        d: "Deferred[Any]" = Deferred(cancel)
        self.attempts.append(_Attempt(factory, d))
        return d

    def succeed(self, count: int = 1) -> List[FakeTransport]:
        """
        Complete the oldest C{count} attempts.

        @return: the new transports.
        """
        made = []
        for _ in range(count):
            attempt = self.attempts.pop(0)
            protocol = attempt.factory.buildProtocol(self.address)
            assert protocol is not None, "the factory refused the connection"
            transport = FakeTransport(protocol)  # type: ignore[arg-type]
            protocol.makeConnection(transport)
            self.transports.append(transport)
            made.append(transport)
            attempt.deferred.callback(protocol)
        return made

    def fail(self, count: int = 1, reason: Optional[Exception] = None) -> None:
        """
        Fail the oldest C{count} attempts (connection refused by default).
        """
        for _ in range(count):
            attempt = self.attempts.pop(0)
            attempt.deferred.errback(reason or ConnectionRefusedError("fake refusal"))

    def open_transports(self) -> List[FakeTransport]:
        """The transports whose connection is not lost yet."""
        return [t for t in self.transports if not t.lost]

    def deliver_losses(self) -> int:
        """
        Deliver C{connectionLost} to every protocol whose transport was
        asked to close.

        @return: how many were delivered.
        """
        closing = [t for t in self.transports if t.disconnecting and not t.lost]
        for t in closing:
            t.lose()
        return len(closing)
