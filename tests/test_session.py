"""
tcp mode end to end over real loopback sockets: bytes both ways, half-close,
servers that speak first, admission, backend outages, and 1000 concurrent
sessions against a pool of 10.
"""

from __future__ import annotations

import socket
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.support import (
    BackendFactory,
    Client,
    connect,
    Echo,
    free_port,
    listener_port,
    serve,
    start_proxy,
    wait_for,
)


@implementer(IHalfCloseableProtocol)
class CountThenReport(Protocol):
    """Reads until the client half-closes, then reports the count and closes."""

    def connectionMade(self) -> None:
        self.factory.opened()
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"got %d bytes" % (self.count,))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed()


class Greeter(Protocol):
    """Speaks first, like an SMTP or MySQL server, then echoes."""

    def connectionMade(self) -> None:
        self.factory.opened()
        self.transport.write(b"220 hello\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed()


class Gated(Protocol):
    """
    Holds every session until the test opens the gate, then answers and
    closes: so that the number of sessions at once can be counted.
    """

    def connectionMade(self) -> None:
        self.factory.opened()
        if self.factory.gate_open:
            self.answer()

    def answer(self) -> None:
        self.transport.write(b"served")
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed()


class SessionTestCase(TestCase):
    def backend(self, protocol: Any, port: int = 0) -> BackendFactory:
        factory = BackendFactory(protocol)
        factory.port = serve(self, factory, port)
        return factory


class ForwardingTests(SessionTestCase):
    @inlineCallbacks
    def test_bytes_both_ways_and_connection_not_reused(self) -> None:
        """
        Bytes reach the backend and come back unchanged; after the session
        the backend connection is closed, not returned to the pool.
        """
        backend = self.backend(Echo)
        service = start_proxy(self, backend.port)
        payload = bytes(range(256)) * 4096
        client = connect(listener_port(service), Client(payload, half_close=True))
        received = yield client.done
        self.assertEqual(received, payload)
        pool = service.pools[0]
        yield wait_for(lambda: backend.open == 0 and pool.leased == 0, what="session end")
        self.assertEqual(pool.idle, 0)
        stats = service.listeners[0].stats
        self.assertEqual(stats.sessions["ok"], 1)
        self.assertEqual(stats.bytes_upstream, len(payload))
        self.assertEqual(stats.bytes_downstream, len(payload))
        self.assertEqual(service.admission.in_flight, 0)

    @inlineCallbacks
    def test_half_close_forwarded(self) -> None:
        """
        A client that half-closes after sending still gets the backend's
        answer, which the backend sends only once it sees the end of input.
        """
        backend = self.backend(CountThenReport)
        service = start_proxy(self, backend.port)
        client = connect(listener_port(service), Client(b"x" * 100_000, half_close=True))
        received = yield client.done
        self.assertEqual(received, b"got 100000 bytes")

    @inlineCallbacks
    def test_server_speaks_first_on_warm_connection(self) -> None:
        """
        A greeting the backend sent while its connection sat idle in the pool
        reaches the client that leases it, before anything else.
        """
        backend = self.backend(Greeter)
        service = start_proxy(self, backend.port, pool_min_idle=1)
        yield wait_for(lambda: service.pools[0].idle == 1, what="warm connection")
        client = connect(listener_port(service), Client(b"ping", half_close=False))
        yield wait_for(lambda: b"".join(client.received) == b"220 hello\r\nping", what="greeting")
        client.transport.loseConnection()
        yield client.done


class AdmissionTests(SessionTestCase):
    @inlineCallbacks
    def test_rejected_session_closed_at_once(self) -> None:
        """
        With every worker busy and no queue, a new session is closed at once
        without reaching the backend, and counted as rejected.
        """
        backend = self.backend(Echo)
        service = start_proxy(self, backend.port, max_concurrency=1, queue_size=0)
        first = connect(listener_port(service), Client(b"a"))
        yield wait_for(lambda: first.received, what="first session")
        second = connect(listener_port(service), Client(b"b"))
        received = yield second.done
        self.assertEqual(received, b"")
        self.assertEqual(backend.accepted, 1)
        self.assertEqual(service.listeners[0].stats.sessions["rejected"], 1)
        self.assertEqual(service.admission.rejected["queue_full"], 1)
        first.transport.loseConnection()
        yield first.done

    @inlineCallbacks
    def test_queued_session_served_when_worker_frees(self) -> None:
        """
        A session that queues is served, with the bytes it sent while queued,
        once the session ahead of it ends.
        """
        backend = self.backend(Echo)
        service = start_proxy(self, backend.port, max_concurrency=1, queue_size=1)
        first = connect(listener_port(service), Client(b"a"))
        yield wait_for(lambda: first.received, what="first session")
        second = connect(listener_port(service), Client(b"queued bytes", half_close=True))
        yield wait_for(lambda: service.admission.queued == 1, what="queued")
        self.assertEqual(backend.accepted, 1)
        first.transport.loseConnection()
        received = yield second.done
        self.assertEqual(received, b"queued bytes")
        self.assertEqual(service.listeners[0].stats.sessions["ok"], 2)


class BackendOutageTests(SessionTestCase):
    @inlineCallbacks
    def test_backend_down_then_back(self) -> None:
        """
        With the backend down, a client is closed at once, a log line says
        why and the service is not ready; once the backend listens again the
        service becomes ready and serves without a restart.
        """
        port = free_port()
        with capturedLogs() as events:
            service = start_proxy(self, port, health_interval=0.05, connect_timeout=1.0)
            yield wait_for(lambda: service.pools[0].state == "down", what="down")
            self.assertFalse(service.ready)
            client = connect(listener_port(service), Client(b"hello"))
            received = yield client.done
        self.assertEqual(received, b"")
        self.assertEqual(service.listeners[0].stats.sessions["backend_unavailable"], 1)
        down = [e for e in events if e.get("log_format") == "backend {backend} is down: {why}"]
        self.assertEqual(len(down), 1)
        self.assertIn("refused", down[0]["why"].lower())

        backend = self.backend(Echo, port)
        yield wait_for(lambda: service.ready, what="ready again")
        client = connect(listener_port(service), Client(b"hello", half_close=True))
        received = yield client.done
        self.assertEqual(received, b"hello")
        self.assertEqual(backend.accepted, 1)

    @inlineCallbacks
    def test_backend_not_answering_connects(self) -> None:
        """
        A backend whose accept queue is full never completes a connect: the
        client is closed once C{connect_timeout} has passed, and the log says
        the connect timed out.
        """
        black_hole = socket.socket()
        self.addCleanup(black_hole.close)
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(0)
        # Fill the accept queue until a connect hangs (how many fit depends on
        # the kernel and the interpreter's listen()).
        for _ in range(100):
            filler = socket.socket()
            self.addCleanup(filler.close)
            filler.settimeout(0.2)
            try:
                filler.connect(black_hole.getsockname())
            except socket.timeout:
                break
        else:
            self.fail("the accept queue never filled")
        with capturedLogs() as events:
            service = start_proxy(self, black_hole.getsockname()[1], connect_timeout=0.3,
                                  health_interval=30.0)
            yield wait_for(lambda: service.pools[0].state == "down", what="probe timed out")
            started = reactor.seconds()
            client = connect(listener_port(service), Client(b"hello"))
            received = yield client.done
            waited = reactor.seconds() - started
        self.assertEqual(received, b"")
        self.assertGreaterEqual(waited, 0.25)
        self.assertLess(waited, 3.0)
        self.assertEqual(service.listeners[0].stats.sessions["backend_unavailable"], 1)
        self.assertEqual(service.pools[0].connects["timeout"], 2)
        down = [e for e in events if e.get("log_format") == "backend {backend} is down: {why}"]
        self.assertEqual([e["why"] for e in down], ["connect timed out after 0.3s"])
        self.assertFalse(service.ready)

    @inlineCallbacks
    def test_backend_dies_mid_session(self) -> None:
        """
        When the backend drops a session's connection, the client is closed,
        the lease and the worker are given back.
        """
        backend = self.backend(Echo)
        service = start_proxy(self, backend.port)
        client = connect(listener_port(service), Client(b"hi"))
        yield wait_for(lambda: client.received, what="echo")
        backend.connections[0].transport.abortConnection()
        yield client.done
        yield wait_for(lambda: service.pools[0].total == 0, what="lease ended")
        self.assertEqual(service.admission.in_flight, 0)

    @inlineCallbacks
    def test_client_leaves_while_queued(self) -> None:
        """
        A client that resets its connection while waiting for a backend
        connection gives its place back; nothing leaks.
        """
        backend = self.backend(Gated)
        backend.gate_open = False
        service = start_proxy(self, backend.port, pool_size=1, max_concurrency=5)
        holder = connect(listener_port(service), Client(b"x"))
        yield wait_for(lambda: backend.open == 1, what="holder")
        waiting = connect(listener_port(service), Client(b"y"))
        yield wait_for(lambda: service.pools[0].waiters == 1, what="pool waiter")
        waiting.transport.abortConnection()
        yield waiting.done
        yield wait_for(lambda: service.pools[0].waiters == 0, what="waiter gone")
        self.assertEqual(service.admission.in_flight, 1)
        backend.connections[0].answer()
        self.assertEqual((yield holder.done), b"served")
        yield wait_for(lambda: service.admission.in_flight == 0, what="all released")
        self.assertEqual(backend.accepted, 1)


class ConcurrencyTests(SessionTestCase):
    @inlineCallbacks
    def test_thousand_sessions_pool_of_ten(self) -> None:
        """
        1000 concurrent sessions against pool-size 10 and max-concurrency 10
        with a queue of 200: exactly 10 are served at once, 200 wait and are
        served later, 790 are rejected at once; the backend never sees more
        than 10 connections, and every pooled connection is accounted for.
        """
        backend = self.backend(Gated)
        backend.gate_open = False
        service = start_proxy(self, backend.port, pool_size=10, max_concurrency=10,
                              queue_size=200, queue_timeout=120.0,
                              pool_acquire_timeout=120.0)
        port = listener_port(service)
        clients: List[Client] = [connect(port, Client(b"hello")) for _ in range(1000)]
        stats = service.listeners[0].stats
        yield wait_for(lambda: stats.connections_total == 1000 and backend.open == 10,
                       timeout=60, what="all clients accepted")
        self.assertEqual(service.admission.queued, 200)
        self.assertEqual(service.admission.in_flight, 10)
        self.assertEqual(service.admission.rejected["queue_full"], 790)

        backend.gate_open = True
        for p in list(backend.connections):
            p.answer()
        results = yield gatherResults([c.done for c in clients])
        served = [r for r in results if r == b"served"]
        self.assertEqual(len(served), 210)
        self.assertEqual(results.count(b""), 790)
        self.assertEqual(backend.peak, 10)
        self.assertEqual(backend.accepted, 210)
        yield wait_for(lambda: stats.connections_open == 0, what="proxy saw every close")
        self.assertEqual(stats.sessions["ok"], 210)
        self.assertEqual(stats.sessions["rejected"], 790)
        pool = service.pools[0]
        yield wait_for(lambda: pool.leased == 0 and backend.open == 0, what="leases ended")
        self.assertEqual(service.admission.in_flight, 0)
        self.assertEqual(pool.connects["ok"], 210)
        self.assertEqual(sum(n for _, n in pool.closes.items()), 210)
        self.assertEqual(pool.total, 0)


class IdleTests(SessionTestCase):
    @inlineCallbacks
    def test_idle_session_closed_active_one_kept(self) -> None:
        """
        With session_idle_timeout 1s, a session that goes quiet is closed,
        both sides (its backend connection too); one that sends a byte
        every 50 ms is not, for many times the timeout.
        """
        backend = self.backend(Echo)
        service = start_proxy(self, backend.port, session_idle_timeout=1.0)
        port = listener_port(service)
        idle = connect(port, Client(b"hello"))
        active = connect(port, Client(b"."))
        ticks = LoopingCall(lambda: active.transport.write(b"."))
        yield wait_for(lambda: active.connected and idle.received, what="both sessions")
        ticks.start(0.05)
        self.addCleanup(lambda: ticks.running and ticks.stop())
        received = yield idle.done
        self.assertEqual(received, b"hello")
        yield wait_for(lambda: backend.open == 1, what="the idle session's backend closed")
        echoed = len(b"".join(active.received))
        # 40 more round trips, 2s at least: past the latest an idle one closes.
        yield wait_for(lambda: len(b"".join(active.received)) >= echoed + 40,
                       what="the active session going on")
        self.assertTrue(active.transport.connected)
        self.assertEqual(service.listeners[0].stats.timeouts["idle"], 1)
        ticks.stop()
        active.transport.loseConnection()
        yield active.done
