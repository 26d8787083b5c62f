"""
Every deadline of an http client's phases, on a L{Clock}: the request head
(empty lines before it included), the request body (between reads and in
all), a client that does not read what it is sent, a tunnel with no
traffic, and a backend silent inside its response.  The proxy's own
protocols run over StringTransports and a fake endpoint.
"""

from __future__ import annotations

from typing import Any, Tuple

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.backends.pool import BackendPool
from poolproxy.codecs.http import codec as http_codec
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.request import HttpBackend, HttpFactory, HttpLimits
from poolproxy.testing import FakeEndpoint, FakeTransport

POST_HEAD = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class SlowReader(FakeTransport):
    """
    A client transport that says how much of what was written to it it
    has not taken yet, as Twisted's TCP transports do (what
    L{poolproxy.proxy.output.unsent_bytes} reads): the test sets C{backlog}.
    """

    def __init__(self, protocol: Any) -> None:
        super().__init__(protocol)
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0

    def set_backlog(self, n: int) -> None:
        self._tempDataLen = n


class FillingTransport(SlowReader):
    """
    A client that reads nothing: what is written stays in the transport's
    backlog, which pauses its producer past 64 KiB, as Twisted's TCP
    transports do.
    """

    def write(self, data: bytes) -> None:
        super().write(data)
        self._tempDataLen += len(data)
        if self.producer is not None and self.streaming and self._tempDataLen > 65536:
            self.producer.pauseProducing()


class Rig(SynchronousTestCase):
    """An http listener in front of one backend (pool of 4), on a Clock."""

    # Small buffers, so that tests reach past them with a few bytes.
    limits = HttpLimits(header_timeout=5.0, body_timeout=10.0, body_total_timeout=60.0,
                        send_timeout=20.0, tunnel_idle_timeout=30.0, request_buffer_size=8,
                        response_buffer_size=50000)
    request_timeout = 15.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        self.admission = Admission(100, 100, 5.0, clock=self.clock)
        self.pool = BackendPool("b", self.endpoint, lambda: HttpBackend(http_codec), size=4,
                                clock=self.clock)
        backend = Backend("b", self.pool)
        self.pool.backend = backend
        self.factory = HttpFactory("l", http_codec, None, self.admission,
                                   Cluster("c", [backend]), self.clock,
                                   request_timeout=self.request_timeout, limits=self.limits)
        self.stats = self.factory.stats

    def client(self, transport: Any = FakeTransport) -> Tuple[Any, Any]:
        protocol = self.factory.buildProtocol(None)
        t = transport(protocol)
        protocol.makeConnection(t)
        return protocol, t

    def backend(self) -> Any:
        [transport] = self.endpoint.succeed()
        return transport

    def connect_waiting(self) -> None:
        """Complete any connection the proxy is making for a request."""
        if self.endpoint.attempts:
            self.endpoint.succeed(len(self.endpoint.attempts))

    def settle(self) -> None:
        """Deliver every close asked for, as the reactor would."""
        self.endpoint.deliver_losses()
        for client in list(self.factory.clients):
            if client.transport.disconnecting and not client.transport.lost:
                client.transport.lose()

    def assertNoTimers(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HeadTests(Rig):
    def test_empty_lines_start_the_head_timer(self) -> None:
        """
        A client that sends a CRLF every 2 seconds and never a request line
        gets 408 header_timeout after its first CRLF: empty lines begin a
        head, they do not keep an idle connection alive.
        """
        protocol, transport = self.client()
        for _ in range(2):
            protocol.dataReceived(b"\r\n")
            self.clock.advance(2.0)
        protocol.dataReceived(b"\r\n")
        self.clock.advance(0.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.stats.timeouts["head"], 1)
        self.settle()
        self.assertNoTimers()

    def test_too_many_empty_lines(self) -> None:
        """More than 8 empty lines before a request line: 400 and the close."""
        protocol, transport = self.client()
        protocol.dataReceived(b"\r\n" * 8)
        self.assertEqual(transport.value(), b"")
        protocol.dataReceived(b"\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())
        self.assertTrue(transport.disconnecting)
        self.settle()
        self.assertNoTimers()

    def test_a_few_empty_lines_are_fine(self) -> None:
        """
        The CRLF some clients send after a POST body, and a few empty lines
        before a request, are ignored: the requests are served.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab\r\n")
        backend = self.backend()
        backend.protocol.dataReceived(OK)
        protocol.dataReceived(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        backend.protocol.dataReceived(OK)
        self.assertEqual(transport.value(), OK + OK)
        self.assertEqual(self.stats.requests_ok, 2)
        self.assertNoTimers()


class BodyTests(Rig):
    def test_pause_inside_body_gets_408(self) -> None:
        """
        A client that stops inside its request body gets 408 body_timeout
        after its last byte (each byte restarts that wait) and is closed; the
        backend connection holding part of the request is closed too.
        """
        protocol, transport = self.client()
        protocol.dataReceived(POST_HEAD + b"abc")
        self.connect_waiting()
        self.clock.advance(9.0)
        protocol.dataReceived(b"d")
        self.clock.advance(9.9)
        self.assertNotIn(b"408", transport.value())
        self.clock.advance(0.1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())
        self.assertIn(b"no byte of the request body for 10s", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual((self.stats.timeouts["body"], self.stats.requests["timeout"]), (1, 1))
        self.settle()
        self.assertEqual(self.pool.total, 0)
        self.assertEqual(self.admission.in_flight, 0)
        self.assertNoTimers()

    def test_trickled_body_bounded_in_all(self) -> None:
        """
        A byte every 5 seconds passes body_timeout, but the whole body must
        come within body_total_timeout of the head.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        self.connect_waiting()
        for _ in range(11):
            self.clock.advance(5.0)
            protocol.dataReceived(b"x")
            self.connect_waiting()  # once the buffer is full, the rest is streamed
        self.assertNotIn(b"408", transport.value())
        self.clock.advance(5.0)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())
        self.assertIn(b"not complete within 60s", transport.value())
        self.settle()
        self.assertNoTimers()

    def test_complete_body_stops_the_timer(self) -> None:
        """A body that completes in time leaves no timer and no 408."""
        protocol, transport = self.client()
        protocol.dataReceived(POST_HEAD + b"abcde")
        self.connect_waiting()
        self.clock.advance(5.0)
        protocol.dataReceived(b"fghij")
        self.connect_waiting()
        [backend] = self.endpoint.transports
        self.assertTrue(backend.value().endswith(b"abcdefghij"), backend.value())
        backend.protocol.dataReceived(OK)
        self.clock.advance(100.0)
        self.assertEqual(transport.value(), OK)
        self.assertFalse(transport.disconnecting)
        self.assertNoTimers()

    def test_backend_not_reading_is_not_the_clients_fault(self) -> None:
        """
        While a backend does not read (its send buffer full, so the client is
        paused), the client's silence is not timed; once the backend reads
        again, the client has a whole body_timeout.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                              b"more than the buffer")
        backend = self.backend()
        backend.producer.pauseProducing()  # as the backend's transport does when full
        self.assertEqual(transport.producerState, "paused")
        self.clock.advance(25.0)
        self.assertNotIn(b"408", transport.value())
        backend.producer.resumeProducing()
        self.clock.advance(9.9)
        self.assertNotIn(b"408", transport.value())
        self.clock.advance(10.1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())

    def test_drained_body_after_early_response(self) -> None:
        """
        A backend that answers before the whole body came: the client has its
        response, and the rest of its body is still timed; when it stops
        coming, the client is closed without another response.
        """
        protocol, transport = self.client()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                              b"more than the buffer")
        backend = self.backend()
        backend.protocol.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.clock.advance(10.0)
        self.assertNotIn(b"408", transport.value())
        self.assertTrue(transport.disconnecting)
        self.settle()
        self.assertNoTimers()


class SendTests(Rig):
    def big_response(self, transport: Any = SlowReader) -> Tuple[Any, Any, Any]:
        protocol, client = self.client(transport)
        protocol.dataReceived(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        backend = self.backend()
        backend.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
                                      + b"x" * 100000)
        return protocol, client, backend

    def test_client_not_reading_is_closed(self) -> None:
        """
        A client that takes nothing of what is written to it for
        send_timeout is aborted (nothing to flush to it); its backend
        connection, inside a response, is closed.
        """
        protocol, client, backend = self.big_response()
        client.set_backlog(100000)
        protocol.pauseProducing()  # as its transport does when its buffer is full
        self.assertEqual(backend.producerState, "paused")
        self.clock.advance(19.9)
        self.assertFalse(client.aborted)
        self.clock.advance(0.1)
        self.assertTrue(client.aborted)
        self.assertEqual(self.stats.timeouts["send"], 1)
        self.settle()
        self.assertEqual(self.pool.total, 0)
        self.assertNoTimers()

    def test_filled_by_one_write(self) -> None:
        """
        A client whose socket a single write fills, and that then reads
        nothing, is closed send_timeout later: the write that filled it is
        not taken for progress.
        """
        protocol, client = self.client(FillingTransport)
        protocol.dataReceived(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        backend = self.backend()
        backend.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
                                      + b"x" * 100000)
        self.assertTrue(protocol.write_blocked)
        self.clock.advance(19.9)
        self.assertFalse(client.aborted)
        self.clock.advance(0.1)
        self.assertTrue(client.aborted)

    def test_slow_steady_reader_is_not_closed(self) -> None:
        """
        A client that takes a little of its backlog every few seconds is
        reading: send_timeout runs from the last time it was seen to take
        something (the backlog is looked at when the timer fires, so a client
        that stops is closed between one and two send_timeouts later).
        """
        protocol, client, backend = self.big_response()
        backlog = 100000
        client.set_backlog(backlog)
        protocol.pauseProducing()
        for second in range(1, 151):
            self.clock.advance(1.0)
            if second % 15 == 0:
                backlog -= 1000
                client.set_backlog(backlog)
        self.assertFalse(client.aborted)
        self.clock.advance(19.0)
        self.assertFalse(client.aborted)
        for _ in range(21):
            self.clock.advance(1.0)
        self.assertTrue(client.aborted)

    def test_reading_again_stops_the_timer(self) -> None:
        """A client that catches up (its transport resumes us) is not timed."""
        protocol, client, backend = self.big_response()
        client.set_backlog(100000)
        protocol.pauseProducing()
        self.clock.advance(10.0)
        protocol.resumeProducing()
        self.assertEqual(backend.producerState, "producing")
        self.clock.advance(100.0)
        self.assertFalse(client.aborted)
        self.assertEqual(self.stats.timeouts["send"], 0)

    def test_closing_client_that_does_not_read(self) -> None:
        """
        A response with Connection: close, whose client does not take it: the
        close waits for the flush at most send_timeout, then aborts.
        """
        protocol, client = self.client(SlowReader)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        backend = self.backend()
        client.set_backlog(5000)
        backend.protocol.dataReceived(OK)
        self.assertTrue(client.disconnecting)
        self.assertIsNone(client.producer)  # else the transport would never close
        self.clock.advance(20.0)
        self.assertTrue(client.aborted)
        self.settle()
        self.assertNoTimers()


class TunnelTests(Rig):
    def tunnel(self) -> Tuple[Any, Any, Any]:
        protocol, client = self.client()
        protocol.dataReceived(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                              b"Upgrade: websocket\r\n\r\n")
        backend = self.backend()
        backend.protocol.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\n"
                                      b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        self.assertIn(b" 101 ", client.value())
        return protocol, client, backend

    def test_idle_tunnel_closed(self) -> None:
        """
        Bytes either way keep a tunnel open; tunnel_idle_timeout without any
        closes both sides and ends the lease.
        """
        protocol, client, backend = self.tunnel()
        self.clock.advance(20.0)
        protocol.dataReceived(b"ping")
        self.clock.advance(20.0)
        backend.protocol.dataReceived(b"pong")
        self.clock.advance(29.9)
        self.assertFalse(client.disconnecting)
        self.assertEqual(backend.value().rsplit(b"\r\n\r\n", 1)[1], b"ping")
        self.assertTrue(client.value().endswith(b"pong"))
        self.clock.advance(0.1)
        self.assertTrue(client.disconnecting)
        self.assertTrue(backend.disconnecting)
        self.assertEqual(self.stats.timeouts["tunnel"], 1)
        self.settle()
        self.assertEqual(self.pool.total, 0)
        self.assertNoTimers()

    def test_closed_tunnel_leaves_no_timer(self) -> None:
        """A tunnel its client closes ends its timer with it."""
        protocol, client, backend = self.tunnel()
        client.loseConnection()
        self.settle()
        self.assertEqual(self.pool.total, 0)
        self.assertNoTimers()


class ResponseTests(Rig):
    def test_backend_silent_inside_response(self) -> None:
        """
        A backend that stops inside its response for request_timeout: the
        client's connection is closed (a response begun cannot be replaced)
        and so is the backend's; each read of the response restarts the wait.
        """
        protocol, client = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        backend = self.backend()
        backend.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        self.clock.advance(10.0)
        backend.protocol.dataReceived(b"de")
        self.clock.advance(14.9)
        self.assertFalse(client.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(client.disconnecting)
        self.assertTrue(backend.aborted)
        self.assertEqual((self.stats.timeouts["response"], self.stats.requests["timeout"]), (1, 1))
        self.assertEqual(self.pool.backend.failures, 1)
        self.settle()
        self.assertEqual(self.pool.total, 0)
        self.assertNoTimers()

    def test_backend_paused_for_client_is_not_timed(self) -> None:
        """
        While the client does not read, the backend is not read either: its
        silence is not counted against it.
        """
        protocol, client = self.client()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        backend = self.backend()
        backend.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        protocol.pauseProducing()
        self.clock.advance(19.0)  # send_timeout is 20
        self.assertFalse(client.disconnecting)
        self.assertEqual(self.stats.timeouts["response"], 0)
        protocol.resumeProducing()
        backend.protocol.dataReceived(b"defghij")
        self.assertTrue(client.value().endswith(b"abcdefghij"))
        self.assertEqual(self.pool.idle, 1)
        self.assertNoTimers()
