"""
Buffering in http mode, on a L{Clock}: a request body is read before a
backend connection is asked for (up to request_buffer_size), and a
response is read for a client that is not reading (up to
response_buffer_size), so that neither holds a backend connection at a
slow client's pace; both bounded, per client and for the process.
"""

from __future__ import annotations

from poolproxy.proxy.output import OutputBudget
from poolproxy.proxy.request import HttpLimits
from tests.test_http_deadlines import OK, Rig, SlowReader


class RequestBufferTests(Rig):
    limits = HttpLimits(request_buffer_size=1000, response_buffer_size=50000)

    def test_trickled_body_holds_no_connection(self) -> None:
        """
        A body that comes a few bytes at a time is read whole before a
        connection is asked for; then head and body go in one write, and the
        request counts as buffered.
        """
        protocol, client = self.client()
        protocol.dataReceived(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 33\r\n\r\nabc")
        for i in range(9):
            self.clock.advance(2.0)
            protocol.dataReceived(b"%03d" % i)
            self.assertEqual((self.endpoint.attempts, self.pool.total), ([], 0))
            self.assertEqual(self.admission.in_flight, 0)
        self.assertEqual(self.factory.output.bodies, 30)
        protocol.dataReceived(b"end")
        backend = self.backend()
        self.assertTrue(backend.value().endswith(b"\r\n\r\nabc000001002003004005006007008end"),
                        backend.value())
        self.assertEqual(len(backend.value().split(b"\r\n\r\n")), 2)
        self.assertEqual((self.factory.output.bodies, self.stats.requests_buffered), (0, 1))
        backend.protocol.dataReceived(OK)
        self.assertEqual(client.value(), OK)
        self.assertNoTimers()

    def test_body_larger_than_the_buffer_is_streamed(self) -> None:
        """
        Once the buffer is full a connection is asked for; what came so far
        goes with the head, the rest as it comes (not counted as buffered).
        """
        protocol, client = self.client()
        protocol.dataReceived(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 3000\r\n\r\n"
                              + b"a" * 999)
        self.assertEqual(self.endpoint.attempts, [])
        protocol.dataReceived(b"b")
        backend = self.backend()
        self.assertTrue(backend.value().endswith(b"a" * 999 + b"b"))
        self.assertEqual(self.factory.output.bodies, 0)
        protocol.dataReceived(b"c" * 2000)
        self.assertTrue(backend.value().endswith(b"b" + b"c" * 2000))
        backend.protocol.dataReceived(OK)
        self.assertEqual((client.value(), self.stats.requests_buffered), (OK, 0))

    def test_reading_pauses_while_waiting_for_a_connection(self) -> None:
        """
        A large body whose connection is not there yet: reading the client
        pauses past EARLY_LIMIT, and resumes once the connection takes it.
        """
        protocol, client = self.client()
        protocol.dataReceived(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n"
                              + b"a" * 1000)
        self.assertEqual(client.producerState, "producing")
        protocol.dataReceived(b"a" * 70000)
        self.assertEqual(client.producerState, "paused")
        self.assertEqual(self.factory.output.bodies, 71000)
        backend = self.backend()
        self.assertEqual(client.producerState, "producing")
        self.assertEqual(self.factory.output.bodies, 0)
        self.assertTrue(backend.value().endswith(b"a" * 71000))

    def test_expect_continue_answered_by_the_proxy(self) -> None:
        """
        A client that waits for 100 Continue before its body gets it from
        the proxy, which reads the body; the backend gets the request
        without Expect.
        """
        protocol, client = self.client()
        protocol.dataReceived(b"PUT /f HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                              b"Content-Length: 4\r\n\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(self.endpoint.attempts, [])
        protocol.dataReceived(b"data")
        backend = self.backend()
        self.assertNotIn(b"expect", backend.value().lower())
        self.assertTrue(backend.value().endswith(b"\r\n\r\ndata"))

    def test_process_cap_stops_buffering(self) -> None:
        """
        When the process holds all it may for slow clients, a body is not
        buffered: its connection is asked for at its head, as without buffers.
        """
        self.factory.output = OutputBudget(cap=100)
        protocol, client = self.client()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
                              + b"a" * 50)
        self.assertEqual(len(self.endpoint.attempts), 0)  # under the cap: buffered
        protocol.dataReceived(b"a" * 60)
        self.assertEqual(len(self.endpoint.attempts), 1)  # over it: a connection now
        other, _ = self.client()
        other.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
        self.assertEqual(len(self.endpoint.attempts), 2)

    def test_no_buffer(self) -> None:
        """request_buffer_size 0: a connection is asked for at the head."""
        self.factory.limits = HttpLimits(request_buffer_size=0)
        protocol, client = self.client()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
        backend = self.backend()
        self.assertTrue(backend.value().endswith(b"\r\n\r\nab"))

    def test_client_gone_while_buffering(self) -> None:
        """A client that leaves with its body half read: nothing held, nothing leaked."""
        protocol, client = self.client()
        protocol.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nabc")
        client.lose()
        self.assertEqual((self.factory.output.bodies, self.admission.in_flight), (0, 0))
        self.assertEqual(self.endpoint.attempts, [])
        self.assertNoTimers()


class ResponseBufferTests(Rig):
    limits = HttpLimits(send_timeout=20.0, response_buffer_size=50000)

    def response(self, size: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size

    def test_response_that_fits_frees_its_connection(self) -> None:
        """
        A client not reading a response smaller than response_buffer_size:
        the backend is read to the end of it and its connection released at
        once, while the client still holds the response; the bytes held are
        counted until the client has read them.
        """
        protocol, client = self.client(SlowReader)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        backend = self.backend()
        backend.protocol.dataReceived(self.response(40000) + b"x" * 30000)
        client.set_backlog(30000)
        protocol.pauseProducing()  # its transport: the client is not reading
        self.assertEqual(backend.producerState, "producing")
        backend.protocol.dataReceived(b"x" * 10000)
        client.set_backlog(40000)
        self.assertEqual(self.pool.idle, 1)  # released, the client still reading
        self.assertEqual(self.stats.responses_buffered, 1)
        self.assertGreater(self.factory.output.held, 0)
        protocol.resumeProducing()
        self.assertEqual(self.factory.output.held, 0)
        self.assertNoTimers()

    def test_larger_response_pauses_the_backend(self) -> None:
        """
        Past response_buffer_size unread, the backend is paused until the
        client has caught up: the streaming path, one connection held.
        """
        protocol, client = self.client(SlowReader)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        backend = self.backend()
        backend.protocol.dataReceived(self.response(200000) + b"x" * 40000)
        client.set_backlog(40000)
        protocol.pauseProducing()
        self.assertEqual(backend.producerState, "producing")
        client.set_backlog(60000)
        backend.protocol.dataReceived(b"x" * 20000)
        self.assertEqual(backend.producerState, "paused")
        client.set_backlog(0)
        protocol.resumeProducing()
        self.assertEqual(backend.producerState, "producing")
        self.assertEqual(self.pool.leased, 1)

    def test_process_cap_pauses_the_backend(self) -> None:
        """Under its own buffer, a client is still paused past the process's cap."""
        self.factory.output = OutputBudget(cap=10000)
        protocol, client = self.client(SlowReader)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        backend = self.backend()
        backend.protocol.dataReceived(self.response(40000) + b"x" * 20000)
        client.set_backlog(20000)
        protocol.pauseProducing()
        self.assertEqual(backend.producerState, "paused")
        self.assertEqual(self.factory.output.peak, 20000)

    def test_client_gone_releases_what_it_held(self) -> None:
        """A client that goes with bytes unread gives its share back."""
        protocol, client = self.client(SlowReader)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        backend = self.backend()
        backend.protocol.dataReceived(self.response(10) + b"x" * 10)
        client.set_backlog(30000)
        protocol.pauseProducing()
        self.assertEqual(self.factory.output.held, 30000)
        client.lose()
        self.assertEqual(self.factory.output.held, 0)
        self.assertNoTimers()

    def test_tunnel_is_not_buffered(self) -> None:
        """A tunnel's backend is paused as soon as its client stops reading."""
        protocol, client = self.client(SlowReader)
        protocol.dataReceived(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
                              b"Upgrade: websocket\r\n\r\n")
        backend = self.backend()
        backend.protocol.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\n"
                                      b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")
        client.set_backlog(70000)
        protocol.pauseProducing()
        self.assertEqual(backend.producerState, "paused")
