"""
Timing rules on a L{Clock}: the HTTP header-read timeout, the idle sweep,
and the per-request backend timeout of multiplexed mode.  The proxy's own
protocol classes run over Twisted's StringTransport and a fake endpoint.
"""

from __future__ import annotations

from typing import Any, Tuple

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
