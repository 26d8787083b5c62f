"""
Helpers for integration tests over real loopback sockets: backends written
for the tests, a client that records what it got, a proxy service on
ephemeral ports, and waiting on a condition (never a fixed sleep).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any, Callable, List, Optional

from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.trial.util import suppress
from twisted.web.client import Agent, readBody
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from poolproxy.config import ProxyConfig
from poolproxy.service import ProxyService

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_LINEPROTO = os.path.join(ROOT, "examples", "lineproto")


def line_codec() -> Any:
    """The example line-protocol codec, imported from examples/lineproto."""
    if EXAMPLE_LINEPROTO not in sys.path:
        sys.path.append(EXAMPLE_LINEPROTO)
    import lineproto

    return lineproto.codec


@inlineCallbacks
def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """
    Poll C{predicate} every 10 ms until it is true; fail after C{timeout}
    seconds of real time.
    """
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield deferLater(reactor, 0.01, lambda: None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BackendFactory(Factory):
    """
    Counts the connections of a test backend.

    @ivar open: connections open now; C{peak}: the most ever open at once.
    """

    noisy = False

    def __init__(self, protocol: Callable[[], Protocol]) -> None:
        self.protocol = protocol  # type: ignore[assignment]
        self.connections: List[Protocol] = []
        self.open = 0
        self.peak = 0
        self.accepted = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        p = self.protocol()
        p.factory = self
        self.connections.append(p)
        return p

    def opened(self) -> None:
        self.accepted += 1
        self.open += 1
        self.peak = max(self.peak, self.open)

    def closed(self) -> None:
        self.open -= 1


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """Echoes; answers a half-close by closing."""

    def connectionMade(self) -> None:
        self.factory.opened()

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed()


def listen(factory: Factory, port: int = 0) -> Any:
    return reactor.listenTCP(port, factory, interface="127.0.0.1")


def serve(testcase: Any, factory: Factory, port: int = 0) -> int:
    """
    A test backend: C{factory} listening on 127.0.0.1 (an ephemeral port
    unless C{port} is given) until the test ends.  Returns the port number.
    """
    listening = listen(factory, port)
    testcase.addCleanup(listening.stopListening)
    return listening.getHost().port


def serve_web(testcase: Any, resource: Resource) -> int:
    """A twisted.web test backend serving C{resource}, with no access log; see L{serve}."""
    site = Site(resource)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return serve(testcase, site)


class Client(Protocol):
    """
    A test client: writes C{send} on connect (then half-closes if asked) and
    records what it receives; C{done} fires with the bytes when closed.
    """

    def __init__(self, send: bytes = b"", half_close: bool = False) -> None:
        self.send = send
        self.half_close = half_close
        self.received: List[bytes] = []
        self.done: "Deferred[bytes]" = Deferred()
        self.connected = False

    def connectionMade(self) -> None:
        self.connected = True
        if self.send:
            self.transport.write(self.send)
        if self.half_close:
            self.transport.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(b"".join(self.received))


class _ClientFactory(ClientFactory):
    noisy = False

    def __init__(self, client: Client) -> None:
        self.client = client

    def buildProtocol(self, addr: Any) -> Client:
        return self.client

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.client.done.errback(reason)


def connect(port: int, client: Client) -> Client:
    reactor.connectTCP("127.0.0.1", port, _ClientFactory(client))
    return client


def start_proxy(testcase: Any, backend_port: int, codec: Any = None,
                **settings: Any) -> ProxyService:
    """
    Start a L{ProxyService} on ephemeral ports in front of a backend on
    C{backend_port}; it is stopped when the test ends.
    """
    settings.setdefault("listen", ("tcp:0:interface=127.0.0.1:backlog=1024",))
    settings.setdefault("metrics", "tcp:0:interface=127.0.0.1")
    settings.setdefault("backend", (f"127.0.0.1:{backend_port}",))
    # Active checks open connections of their own; on only where a test asks.
    settings.setdefault("check_interval", 0.0)
    # Sessions a test leaves open would hold up its cleanup for the default 10s.
    settings.setdefault("shutdown_timeout", 0.5)
    service = ProxyService(ProxyConfig(**settings), codec=codec)
    service.startService()
    testcase.addCleanup(service.stopService)
    return service


def listener_port(service: ProxyService, index: int = 0) -> int:
    return service.listeners[index].service.port.getHost().port


def metrics_port(service: ProxyService) -> int:
    return service.web.port.getHost().port


@inlineCallbacks
def web_get(service: ProxyService, path: str) -> Any:
    """
    GET C{path} from the service's web endpoint (real HTTP, loopback).

    @return: a L{Deferred} firing with (response, body bytes).
    """
    url = f"http://127.0.0.1:{metrics_port(service)}{path}".encode("ascii")
    response = yield Agent(reactor).request(b"GET", url)
    body = yield readBody(response)
    return response, body


def twistd_command(*args: str) -> List[str]:
    """
    Run twistd in the foreground with this interpreter, so that the
    poolproxy plugin is found exactly as a user's C{twistd} finds it.
    """
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", *args]


def rss_bytes(pid: int) -> int:
    """The resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def spawn(args: List[str], log_path: str) -> subprocess.Popen:
    log = open(log_path, "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    log.close()
    return proc


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> Optional[int]:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout)
    return proc.returncode


class LeakCheckedTestCase(TestCase):
    """
    A test against services on loopback that leaves no socket behind: the
    last cleanup waits until every connection and port the test made is
    closed.  Also silences readBody's warning about transports without
    abortConnection.
    """

    suppress = [suppress(category=DeprecationWarning, message="Using readBody with a transport")]

    def setUp(self) -> None:
        baseline = self._sockets()
        # Registered first, so run last: after the service and backends stop.
        self.addCleanup(wait_for, lambda: self._sockets() <= baseline,
                        5.0, "every socket of the test to close")

    @staticmethod
    def _sockets() -> "set[Any]":
        """The TCP ports and connections the reactor watches now."""
        return {s for s in reactor.getReaders() + reactor.getWriters()
                if isinstance(s, (tcp.Connection, tcp.Port))}

