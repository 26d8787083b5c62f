"""
poolproxy.reactor.LeanEPollReactor (twistd --reactor=poolproxy-epoll): Twisted's
own reactor tests for what its doPoll touches (file descriptors, time,
system events), run against it through Twisted's ReactorBuilder, and a
protocol that raises, over real loopback sockets.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.test.reactormixins import ReactorBuilder
from twisted.internet.test.test_core import SystemEventTestsBuilder
from twisted.internet.test.test_fdset import ReactorFDSetTestsBuilder
from twisted.internet.test.test_time import TimeTestsBuilder
from twisted.trial.unittest import SkipTest

from poolproxy.reactor import LeanEPollReactor

LEAN = ["poolproxy.reactor.LeanEPollReactor"]


class LeanFDSetTestsBuilder(ReactorFDSetTestsBuilder):
    _reactors = LEAN

    def test_lostFileDescriptor(self) -> None:
        # Twisted skips this for EPollReactor by class name: epoll drops a
        # closed descriptor without an event, so there is nothing to notice.
        raise SkipTest("EPollReactor cannot detect lost file descriptors (nor can this)")


class LeanTimeTestsBuilder(TimeTestsBuilder):
    _reactors = LEAN


class LeanSystemEventTestsBuilder(SystemEventTestsBuilder):
    _reactors = LEAN


class Boom(Exception):
    pass


class EchoUnlessBoom(Protocol):
    """Echoes, but raises on b"boom", as a buggy protocol would."""

    def dataReceived(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise Boom(data)
        self.transport.write(data)


class Client(Protocol):
    def __init__(self, send: bytes) -> None:
        self.send = send
        self.got = b""
        self.closed: "Deferred[bytes]" = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.send)

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if self.got == self.send:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(self.got)


class LeanReactorTestsBuilder(ReactorBuilder):
    _reactors = LEAN

    def test_is_epoll(self) -> None:
        """It is Twisted's EPollReactor, but for doPoll."""
        reactor = self.buildReactor()
        self.assertIsInstance(reactor, LeanEPollReactor)
        self.assertIsInstance(reactor, EPollReactor)
        self.assertIsNot(LeanEPollReactor.doPoll, EPollReactor.doPoll)

    def test_protocol_error_closes_only_its_connection(self) -> None:
        """
        A protocol that raises in dataReceived has its connection closed and
        the error logged, as under EPollReactor; a connection open beside it
        goes on being served.
        """
        reactor = self.buildReactor()
        results: List[Any] = []

        def client(port: int, protocol: Client) -> "Deferred[bytes]":
            end = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
            return end.connect(Factory.forProtocol(lambda: protocol)).addCallback(
                lambda _: protocol.closed)

        def run() -> None:
            server = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
            d = server.listen(Factory.forProtocol(EchoUnlessBoom))
            d.addCallback(lambda port: gatherResults(
                [client(port.getHost().port, Client(b"boom")),
                 client(port.getHost().port, Client(b"echo me"))]))
            d.addBoth(lambda r: (results.append(r), reactor.stop()))

        reactor.callWhenRunning(run)
        self.runReactor(reactor, timeout=30)
        self.assertEqual(results, [[b"", b"echo me"]])  # the raiser's client got nothing back
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)


globals().update(LeanFDSetTestsBuilder.makeTestCaseClasses())
globals().update(LeanTimeTestsBuilder.makeTestCaseClasses())
globals().update(LeanSystemEventTestsBuilder.makeTestCaseClasses())
globals().update(LeanReactorTestsBuilder.makeTestCaseClasses())
