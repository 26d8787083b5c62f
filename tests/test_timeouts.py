"""
Timing rules on a L{Clock}: the HTTP header-read timeout, the idle sweep
(client_idle_timeout, and session_idle_timeout for tcp), send_timeout in tcp
and multiplexed modes, and the per-request backend timeout of multiplexed
mode.  The proxy's own
protocol classes run over Twisted's StringTransport and a fake endpoint.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.backends.pool import BackendPool
from poolproxy.codecs.http import codec as http_codec
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.idle import IdleSweeper
from poolproxy.proxy.multiplexed.client import MultiplexFactory
from poolproxy.proxy.multiplexed.server import Multiplexer, PipelineBackend
from poolproxy.proxy.request import HttpBackend, HttpFactory, HttpLimits
from poolproxy.proxy.session import SessionBackend, SessionFactory
from poolproxy.testing import FakeEndpoint
from tests.support import line_codec


def connected(factory: Any) -> Tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


class Setup(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.admission = Admission(100, 100, 5.0, clock=self.clock)

    def cluster(self, protocol_factory: Any) -> Cluster:
        pool = BackendPool("b", self.endpoint, protocol_factory, size=4, clock=self.clock)
        backend = Backend("b", pool)
        pool.backend = backend
        return Cluster("c", [backend])


class HeaderTimeoutTests(Setup):
    def factory(self) -> HttpFactory:
        cluster = self.cluster(lambda: HttpBackend(http_codec))
        return HttpFactory("l", http_codec, None, self.admission, cluster, self.clock,
                           request_timeout=30.0, limits=HttpLimits(header_timeout=5.0))

    def test_slow_head_gets_408(self) -> None:
        """
        A request head still incomplete header_timeout after its first byte
        gets 408 and the connection is closed.
        """
        protocol, transport = connected(self.factory())
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
        self.clock.advance(4.9)
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"X-Slow: 1\r\n")  # trickling does not restart the clock
        self.clock.advance(0.1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())
        self.assertIn(b"Connection: close", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_complete_head_in_time(self) -> None:
        """
        A head completed in time cancels the timer: the request goes on to a
        backend, and no 408 follows.
        """
        protocol, transport = connected(self.factory())
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(3.0)
        protocol.dataReceived(b"Host: x\r\n\r\n")
        self.assertEqual(len(self.endpoint.attempts), 1)  # on its way to the backend
        self.clock.advance(10.0)
        self.assertNotIn(b"408", transport.value())
        protocol.connectionLost(None)

    def test_idle_keepalive_is_not_a_slow_head(self) -> None:
        """A connection that sends nothing is not timed by the header timeout."""
        protocol, transport = connected(self.factory())
        self.clock.advance(60.0)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        protocol.connectionLost(None)


class IdleSweepTests(Setup):
    def factory(self) -> MultiplexFactory:
        codec = line_codec()
        cluster = self.cluster(lambda: PipelineBackend(codec, [], self.admission))
        backend = cluster.backends[0]
        backend.shared = Multiplexer(backend.pool, 1)
        return MultiplexFactory("l", codec, None, self.admission, cluster, clock=self.clock)

    def test_idle_client_closed(self) -> None:
        """
        A client that sends nothing for the idle timeout is closed by the
        sweep (within 1.25 x the timeout); one that keeps talking is not.
        """
        factory = self.factory()
        sweeper = IdleSweeper(factory.clients, 10.0, self.clock)
        sweeper.start()
        self.addCleanup(sweeper.stop)
        quiet, quiet_transport = connected(factory)
        chatty, chatty_transport = connected(factory)
        for _ in range(4):
            self.clock.advance(2.0)
            chatty.dataReceived(b"QUIT")  # a partial line: activity, no request
        self.assertFalse(quiet_transport.disconnecting)  # idle 8s
        for _ in range(3):
            self.clock.advance(2.0)
            chatty.dataReceived(b"QUIT")
        self.assertTrue(quiet_transport.disconnecting)  # idle 14s, swept at 10s
        self.assertFalse(chatty_transport.disconnecting)
        self.assertEqual(sweeper.closed, 1)

    def test_busy_client_not_closed(self) -> None:
        """A client waiting for a reply is not idle, however long it waits."""
        factory = self.factory()
        sweeper = IdleSweeper(factory.clients, 10.0, self.clock)
        sweeper.start()
        self.addCleanup(sweeper.stop)
        client, transport = connected(factory)
        client.dataReceived(b"GET k\n")  # waits for a backend connection
        self.clock.advance(60.0)
        self.assertFalse(transport.disconnecting)


class MultiplexRequestTimeoutTests(Setup):
    def test_hung_backend_answers_with_timeout_error(self) -> None:
        """
        A backend that does not answer within request_timeout: every request
        in flight on that connection gets the codec's timeout error at once,
        and the connection is closed.  A backend that keeps answering, if
        slowly, is not timed out.
        """
        codec = line_codec()
        cluster = self.cluster(
            lambda: PipelineBackend(codec, [], self.admission, None, self.clock, 5.0))
        backend = cluster.backends[0]
        backend.shared = Multiplexer(backend.pool, 1)
        factory = MultiplexFactory("l", codec, None, self.admission, cluster, clock=self.clock)
        client, transport = connected(factory)
        client.dataReceived(b"GET a\nGET b\n")
        [backend_transport] = self.endpoint.succeed()
        self.assertEqual(backend_transport.value(), b"GET a\nGET b\n")
        self.clock.advance(4.0)
        backend_transport.protocol.dataReceived(b"A\n")  # progress: the clock restarts
        self.clock.advance(4.0)
        self.assertEqual(transport.value(), b"A\n")
        self.clock.advance(1.0)
        self.assertEqual(transport.value(), b"A\nERR timeout backend timed out after 5s\n")
        self.assertTrue(backend_transport.aborted)
        backend_transport.lose()
        self.assertEqual(self.admission.in_flight, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HttpRequestTimeoutTests(Setup):
    def test_no_response_gives_504(self) -> None:
        """
        A backend that has not begun its response request_timeout after the
        request was sent: the client gets 504 and the backend connection is
        closed, not reused; the timer is gone afterwards.
        """
        cluster = self.cluster(lambda: HttpBackend(http_codec))
        factory = HttpFactory("l", http_codec, None, self.admission, cluster, self.clock,
                              request_timeout=3.0, limits=HttpLimits(header_timeout=0.0))
        protocol, transport = connected(factory)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        [backend_transport] = self.endpoint.succeed()
        self.assertTrue(backend_transport.value().startswith(b"GET / HTTP/1.1\r\n"))
        self.clock.advance(2.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 504 "), transport.value())
        self.assertTrue(backend_transport.disconnecting)
        self.assertFalse(transport.disconnecting)  # the client may go on
        self.endpoint.deliver_losses()
        self.assertEqual(cluster.backends[0].pool.total, 0)
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AccessLogTests(Setup):
    def test_sampled_lines(self) -> None:
        """
        With a sample of 0.5 and a random source alternating below and above
        it, every other request gets one access log line with its method,
        target, status, backend and duration; with 0, none.
        """
        from twisted.logger import capturedLogs

        cluster = self.cluster(lambda: HttpBackend(http_codec))
        draws = iter([0.1, 0.9] * 10)
        factory = HttpFactory("l", http_codec, None, self.admission, cluster, self.clock,
                              request_timeout=30.0, access_log_sample=0.5,
                              random=lambda: next(draws))
        protocol, transport = connected(factory)
        with capturedLogs() as events:
            for i in range(4):
                protocol.dataReceived(b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
                if i == 0:
                    [backend_transport] = self.endpoint.succeed()
                self.clock.advance(0.25)
                backend_transport.protocol.dataReceived(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        lines = [e for e in events if e.get("log_namespace") == "poolproxy.access"]
        self.assertEqual([(e["method"], e["target"], e["status"], e["backend"]) for e in lines],
                         [("GET", "/r0", 200, "b"), ("GET", "/r2", 200, "b")])
        self.assertAlmostEqual(lines[0]["ms"], 250.0)
        protocol.connectionLost(None)


class Buffered(StringTransport):
    """
    A client transport that says how much it holds unsent, as Twisted's TCP
    transports do (what L{poolproxy.proxy.output.unsent_bytes} reads): a
    test fills it (the client does not read) and drains it (it reads).
    """

    def __init__(self) -> None:
        super().__init__()
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.aborted = False

    def write(self, data: bytes) -> None:
        super().write(data)
        self._tempDataLen += len(data)  # nothing is taken until the test says so

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class SessionSetup(Setup):
    def setUp(self) -> None:
        super().setUp()
        pool = BackendPool("b", self.endpoint, SessionBackend, size=4, clock=self.clock,
                           connect_timeout=1000.0, acquire_timeout=1000.0)
        backend = Backend("b", pool)
        pool.backend = backend
        self.pool = pool
        self.sessions = Cluster("c", [backend])

    def factory(self, send_timeout: float = 0.0) -> SessionFactory:
        return SessionFactory("l", self.admission, self.sessions, clock=self.clock,
                              send_timeout=send_timeout)

    def session(self, factory: SessionFactory,
                transport: Optional[StringTransport] = None) -> Tuple[Any, Any, Any]:
        """A client whose session has its backend connection: (frontend, client, backend transports)."""
        protocol = factory.buildProtocol(None)
        client = transport or StringTransport()
        protocol.makeConnection(client)
        [backend] = self.endpoint.succeed()
        return protocol, client, backend


class SessionIdleTests(SessionSetup):
    def test_idle_session_closed_both_sides(self) -> None:
        """
        Bytes either way keep a tcp session open; a session that passes no
        byte for the timeout is closed (never sooner, by 1.5x at the
        latest): its client connection and its backend connection, which is
        discarded, never pooled again.
        """
        factory = self.factory()
        sweeper = IdleSweeper(factory.clients, 10.0, self.clock, factory.stats)
        sweeper.start()
        self.addCleanup(sweeper.stop)
        protocol, client, backend = self.session(factory)
        for i in range(6):  # 24 seconds of traffic, each way in turn
            self.clock.pump([0.5] * 8)
            if i % 2:
                protocol.dataReceived(b"ping")
            else:
                backend.protocol.dataReceived(b"pong")
        self.assertFalse(client.disconnecting)
        self.clock.pump([0.1] * 99)
        self.assertFalse(client.disconnecting)  # idle 9.9s
        self.clock.pump([0.1] * 51)
        self.assertTrue(client.disconnecting)  # idle 15s: closed by now
        self.assertTrue(backend.disconnecting)
        self.assertEqual(factory.stats.timeouts["idle"], 1)
        self.endpoint.deliver_losses()
        protocol.connectionLost(None)
        self.assertEqual((self.pool.total, self.pool.closes["session_end"]), (0, 1))
        self.assertEqual(self.admission.in_flight, 0)

    def test_waiting_session_is_not_idle(self) -> None:
        """A session still waiting for its backend connection is not idle-closed."""
        factory = self.factory()
        sweeper = IdleSweeper(factory.clients, 10.0, self.clock, factory.stats)
        sweeper.start()
        self.addCleanup(sweeper.stop)
        protocol = factory.buildProtocol(None)
        client = StringTransport()
        protocol.makeConnection(client)
        self.clock.advance(60.0)
        self.assertFalse(client.disconnecting)
        protocol.connectionLost(None)

    def test_idle_from_the_lease_on(self) -> None:
        """
        A session that waited 30s for its backend connection is not closed
        as soon as it gets it: its idle time starts then.
        """
        factory = self.factory()
        sweeper = IdleSweeper(factory.clients, 10.0, self.clock, factory.stats)
        sweeper.start()
        self.addCleanup(sweeper.stop)
        protocol = factory.buildProtocol(None)
        client = StringTransport()
        protocol.makeConnection(client)
        self.clock.pump([0.5] * 60)
        self.endpoint.succeed()
        self.clock.pump([0.1] * 99)
        self.assertFalse(client.disconnecting)
        self.clock.pump([0.1] * 51)
        self.assertTrue(client.disconnecting)
        protocol.connectionLost(None)

    def test_service_sweeps_sessions_by_their_own_timeout(self) -> None:
        """
        The service times tcp sessions by session_idle_timeout (3600s by
        default) and redis clients by client_idle_timeout (600s by default).
        """
        from twisted.internet.testing import MemoryReactorClock

        from poolproxy.config import ProxyConfig
        from poolproxy.service import ProxyService

        for protocol, timeout in (("tcp", 3600.0), ("redis", 600.0)):
            service = ProxyService(ProxyConfig(listen=("tcp:7001",), backend=("h:1",),
                                               protocol=protocol),
                                   reactor=MemoryReactorClock(), open_files=1024)
            self.assertEqual([s.timeout for s in service.sweepers], [timeout])
        service = ProxyService(ProxyConfig(listen=("tcp:7001",), backend=("h:1",),
                                           session_idle_timeout=0.0),
                               reactor=MemoryReactorClock(), open_files=1024)
        self.assertEqual(service.sweepers, [])


class ClientIdleDefaultTests(SynchronousTestCase):
    """client_idle_timeout, on by default, in a redis listener (MultiplexHarness)."""

    def setUp(self) -> None:
        from poolproxy.codecs.redis import codec as redis_codec
        from poolproxy.config import ProxyConfig
        from poolproxy.testing import MultiplexHarness
        from tests.redis_model import ModelRedis

        self.assertEqual(ProxyConfig().client_idle_timeout, 600.0)
        self.harness = MultiplexHarness(redis_codec, mux_connections=1,
                                        allow_commands=("MONITOR",))
        self.model = ModelRedis()
        factory = self.harness.factory
        self.sweeper = IdleSweeper(factory.clients, self.harness.config.client_idle_timeout,
                                   self.harness.clock, factory.stats)
        self.sweeper.start()
        self.addCleanup(self.sweeper.stop)

    def test_idle_closed_busy_kept(self) -> None:
        """
        After 750 seconds (1.25x the default), a client that sent nothing
        for that long is closed; a subscriber, a MONITOR client and a client
        whose blocking command is still waiting are busy, and kept.
        """
        from tests.test_multiplex_sessions import cmd

        h = self.harness
        idle, subscriber, monitor, blocked = (h.client() for _ in range(4))
        idle.send(cmd("PING"))
        subscriber.send(cmd("SUBSCRIBE", "news"))
        monitor.send(cmd("MONITOR"))
        h.serve(self.model)
        blocked.send(cmd("BLPOP", "queue", "0"))  # its reply does not come
        h.connect()
        self.assertEqual(idle.received(), b"+PONG\r\n")
        h.clock.pump([1.0] * 599)
        self.assertFalse(idle.closed)
        h.clock.pump([1.0] * 151)
        self.assertEqual([c.closed for c in (idle, subscriber, monitor, blocked)],
                         [True, False, False, False])
        self.assertEqual(h.factory.stats.timeouts["idle"], 1)
        for client in (subscriber, monitor, blocked):
            client.close()
        h.deliver_losses()


class SessionSendTimeoutTests(SessionSetup):
    def test_client_that_takes_nothing_is_closed(self) -> None:
        """
        A tcp client whose socket stays full pauses its backend connection;
        after send_timeout with nothing taken it is aborted and its backend
        connection discarded.  A client that took some bytes meanwhile gets
        another send_timeout: slow is not stalled.
        """
        factory = self.factory(send_timeout=60.0)
        protocol, client, backend = self.session(factory, Buffered())
        self.assertIs(client.producer, protocol)
        backend.protocol.dataReceived(b"x" * 200000)
        client.producer.pauseProducing()  # what the transport does when its buffer fills
        self.assertEqual(backend.producerState, "paused")
        self.clock.advance(59.0)
        client._tempDataLen -= 50000  # the client read some
        self.clock.advance(1.0)
        self.assertFalse(client.aborted)
        self.clock.advance(59.9)
        self.assertFalse(client.aborted)
        self.clock.advance(0.1)  # a whole send_timeout with nothing taken
        self.assertTrue(client.aborted)
        self.assertEqual(factory.stats.timeouts["send"], 1)
        protocol.connectionLost(None)
        self.assertTrue(backend.aborted)
        self.endpoint.deliver_losses()
        self.assertEqual(self.pool.total, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_client_that_catches_up(self) -> None:
        """
        A client whose socket empties before send_timeout resumes its
        backend connection and has no deadline left.
        """
        factory = self.factory(send_timeout=60.0)
        protocol, client, backend = self.session(factory, Buffered())
        client.producer.pauseProducing()
        self.clock.advance(30.0)
        client.producer.resumeProducing()
        self.assertEqual(backend.producerState, "producing")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100.0)
        self.assertFalse(client.aborted)
        protocol.connectionLost(None)

    def test_zero_is_no_limit(self) -> None:
        """send_timeout 0 sets no deadline at all."""
        factory = self.factory(send_timeout=0.0)
        protocol, client, backend = self.session(factory, Buffered())
        client.producer.pauseProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        protocol.connectionLost(None)


class MultiplexSendTimeoutTests(Setup):
    def factory(self, send_timeout: float) -> MultiplexFactory:
        codec = line_codec()
        cluster = self.cluster(lambda: PipelineBackend(codec, [], self.admission))
        backend = cluster.backends[0]
        backend.shared = Multiplexer(backend.pool, 1)
        return MultiplexFactory("l", codec, None, self.admission, cluster, clock=self.clock,
                                send_timeout=send_timeout)

    def test_replies_unread_past_send_timeout(self) -> None:
        """
        A redis-like client that stops reading: replies written to it while
        it is paused are not progress; its socket taking bytes is.  Past a
        send_timeout with nothing taken it is aborted, what it held released.
        """
        factory = self.factory(5.0)
        client = factory.buildProtocol(None)
        transport = Buffered()
        client.makeConnection(transport)
        client.dataReceived(b"GET a\n")
        [backend] = self.endpoint.succeed()
        transport._tempDataLen = 100000  # its socket is full
        client.pauseProducing()
        self.clock.advance(3.0)
        backend.protocol.dataReceived(b"A\n")  # a reply written while it is paused
        self.assertEqual(transport.value(), b"A\n")
        self.clock.advance(2.0)
        self.assertTrue(transport.aborted)
        self.assertEqual(factory.stats.timeouts["send"], 1)
        client.connectionLost(None)
        self.assertEqual(factory.output.held, 0)

    def test_reading_slowly_is_not_stalled(self) -> None:
        """A client whose socket takes bytes within each send_timeout stays."""
        factory = self.factory(5.0)
        client = factory.buildProtocol(None)
        transport = Buffered()
        client.makeConnection(transport)
        transport._tempDataLen = 100000
        client.pauseProducing()
        for _ in range(5):
            self.clock.advance(4.0)
            transport._tempDataLen -= 1000
        self.assertFalse(transport.aborted)
        client.resumeProducing()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        client.connectionLost(None)
