"""
Memory stays flat when one side floods: the proxy runs as a real
C{twistd poolproxy} process so that its resident memory can be read from
/proc while a test client pushes 300 MB through it.
"""

from __future__ import annotations

import os
import platform
import signal
from typing import Any, Callable, List

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.interop import accepts
from tests.support import (
    BackendFactory,
    Client,
    connect,
    free_port,
    listen,
    rss_bytes,
    spawn,
    stop,
    twistd_command,
    wait_for,
)

MB = 1024 * 1024
FLOOD = 300 * MB
CHUNK = b"f" * (64 * 1024)
# The proxy holds a few 64 KiB transport buffers per session; allow for
# allocator noise, far below what buffering the flood would take.
# On PyPy the garbage collector's heap grows by a further 20-25 MB during a
# flood before its major collections catch up (measured on PyPy 7.3.11, after
# the warm-up flood): still a tenth of what buffering the flood would take.
RSS_GROWTH_LIMIT = (45 if platform.python_implementation() == "PyPy" else 20) * MB


class SinkWithAcks(Protocol):
    """Reads everything; writes a short reply for every MiB received."""

    def connectionMade(self) -> None:
        self.factory.opened()
        self._received = 0
        self._next_ack = MB

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += len(data)
        self._received += len(data)
        while self._received >= self._next_ack:
            self.transport.write(b"ack %d\n" % (self._next_ack // MB))
            self._next_ack += MB

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed()


class PoliteEcho(Protocol):
    """Echoes, and stops reading while its own replies are not being read."""

    def connectionMade(self) -> None:
        self.factory.opened()
        self.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += len(data)
        self.transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed()


@implementer(IPushProducer)
class Flooder(Protocol):
    """
    Writes C{total} bytes as fast as the transport takes them and never
    reads a reply.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.done: "Deferred[None]" = Deferred()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # never read what comes back
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < self.total:
            self.transport.write(CHUNK)
            self.sent += len(CHUNK)
        if self.sent >= self.total and not self.done.called:
            self.transport.unregisterProducer()
            self.done.callback(None)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.paused = True


def _stalled(progress: Callable[[], int], quiet: float) -> Callable[[], bool]:
    """
    A predicate that is true once C{progress()} has not changed for C{quiet}
    seconds.
    """
    state: List[Any] = [None, reactor.seconds()]

    def check() -> bool:
        value = progress()
        if value != state[0]:
            state[0], state[1] = value, reactor.seconds()
            return False
        return reactor.seconds() - state[1] >= quiet

    return check


class FloodTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def start_proxy_process(self, backend: BackendFactory) -> Any:
        backend_port = listen(backend)
        self.addCleanup(backend_port.stopListening)
        port, metrics = free_port(), free_port()
        log_path = os.path.abspath(self.mktemp())
        proc = spawn(twistd_command(
            "poolproxy", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--backend", f"127.0.0.1:{backend_port.getHost().port}",
            "--metrics", f"tcp:{metrics}:interface=127.0.0.1",
        ), log_path)
        self.addCleanup(stop, proc)

        def accepting() -> bool:
            return accepts(port) or proc.poll() is not None  # exited: fail below

        yield wait_for(accepting, timeout=30, what="proxy process listening")
        self.assertIsNone(proc.poll(), open(log_path).read())
        # Warm up: one whole session, so that code paths are loaded.
        warm = connect(port, Client(b"warm-up"))
        yield wait_for(lambda: backend.received >= 7, what="warm-up")
        warm.transport.loseConnection()
        yield warm.done
        return proc, port

    @inlineCallbacks
    def warm_up(self, port: int, backend: BackendFactory,
                until: Callable[[Any], Callable[[], bool]]) -> Any:
        """
        A first, smaller flood, so that the baseline is taken in steady state:
        on PyPy the JIT and the GC grow the process while the hot path is
        first compiled, whatever the proxy buffers.
        """
        flooder = Flooder(20 * MB)
        connect(port, flooder)  # type: ignore[arg-type]
        yield wait_for(until(flooder), timeout=60, what="warm-up flood")
        flooder.transport.abortConnection()
        yield wait_for(lambda: backend.open == 0, what="warm-up session over")

    @inlineCallbacks
    def flood(self, proc: Any, port: int, until: Callable[[], Any]) -> Any:
        baseline = rss_bytes(proc.pid)
        peak = [baseline]
        sampler = LoopingCall(lambda: peak.__setitem__(0, max(peak[0], rss_bytes(proc.pid))))
        sampler.start(0.02)
        flooder = Flooder(FLOOD)
        started = reactor.seconds()
        connect(port, flooder)  # type: ignore[arg-type]
        try:
            yield wait_for(until(flooder), timeout=120, what="flood")
        finally:
            sampler.stop()
        flooder.transport.abortConnection()
        Logger().info(
            "flood: sent {sent:.1f} MB in {secs:.1f}s, paused {pauses} times; proxy RSS "
            "{before:.1f} MB before, {peak:.1f} MB at peak", sent=flooder.sent / MB,
            secs=reactor.seconds() - started, pauses=flooder.pauses,
            before=baseline / MB, peak=peak[0] / MB)
        return flooder, baseline, peak[0]

    @inlineCallbacks
    def test_300mb_without_reading_replies(self) -> None:
        """
        A client sends 300 MB and never reads the replies the backend sends
        back: all of it reaches the backend while the proxy's resident memory
        grows by less than 20 MB (45 MB on PyPy, see RSS_GROWTH_LIMIT).
        """
        backend = BackendFactory(SinkWithAcks)
        backend.received = 0
        proc, port = yield self.start_proxy_process(backend)
        yield self.warm_up(port, backend, lambda f: lambda: f.done.called)
        start = backend.received
        flooder, baseline, peak = yield self.flood(
            proc, port, lambda f: lambda: backend.received >= start + FLOOD)
        self.assertEqual(flooder.sent, FLOOD)
        self.assertLess(peak - baseline, RSS_GROWTH_LIMIT,
                        f"proxy RSS grew from {baseline / MB:.1f} to {peak / MB:.1f} MB")

    @inlineCallbacks
    def test_flood_into_echo_stalls_instead_of_buffering(self) -> None:
        """
        A client floods an echo backend and never reads the echoes: the
        proxy stops reading from the backend, the backend stops reading from
        the proxy, and the proxy stops reading from the client, so the client
        is paused long before 300 MB and the proxy's memory stays flat.
        """
        backend = BackendFactory(PoliteEcho)
        backend.received = 0
        proc, port = yield self.start_proxy_process(backend)
        yield self.warm_up(port, backend, lambda f: _stalled(lambda: f.sent, quiet=0.5))
        flooder, baseline, peak = yield self.flood(
            proc, port, lambda f: _stalled(lambda: f.sent, quiet=0.5))
        self.assertTrue(flooder.paused)
        self.assertLess(flooder.sent, 100 * MB)
        self.assertLess(peak - baseline, RSS_GROWTH_LIMIT,
                        f"proxy RSS grew from {baseline / MB:.1f} to {peak / MB:.1f} MB")
        # The vanished client's backend connection was aborted, not left
        # waiting to flush to a backend that stopped reading: SIGTERM ends
        # the proxy promptly.
        proc.terminate()
        yield wait_for(lambda: proc.poll() is not None, timeout=15, what="exit on SIGTERM")
        # twistd re-raises the signal it stopped on, so -SIGTERM is a clean exit.
        self.assertIn(proc.returncode, (0, -signal.SIGTERM))
