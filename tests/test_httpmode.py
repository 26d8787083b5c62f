"""
HTTP request mode end to end over real loopback sockets: a twisted.web
backend, twisted.web's Agent and raw sockets as clients.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.support import (
    BackendFactory,
    Client,
    connect,
    free_port,
    listener_port,
    serve,
    start_proxy,
    wait_for,
)


class EchoResource(Resource):
    """
    Describes the request it got, as JSON; some paths behave specially:
    /status/N answers N with no body, /big/N sends N bytes, /hang never answers.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hanging: List[Any] = []
        self.requests = 0

    def render(self, request: Any) -> Any:
        self.requests += 1
        parts = request.path.decode().strip("/").split("/")
        if parts[0] == "status":
            request.setResponseCode(int(parts[1]))
            return b""
        if parts[0] == "big":
            request.setHeader(b"content-type", b"application/octet-stream")
            return b"x" * int(parts[1])
        if parts[0] == "stream":
            # No Content-Length: twisted.web sends it chunked to HTTP/1.1.
            for i in range(int(parts[1])):
                request.write(b"part%d" % i)
            request.finish()
            return NOT_DONE_YET
        if parts[0] == "hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        body = request.content.read()
        headers = {k.decode().lower(): [v.decode() for v in vs]
                   for k, vs in request.requestHeaders.getAllRawHeaders()}
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({
            "method": request.method.decode(), "path": request.uri.decode(),
            "headers": headers, "length": len(body),
            "sha": hashlib.sha256(body).hexdigest(),
            "connection": id(request.channel),
        }).encode()


class CountingSite(Site):
    """A Site that counts the connections it accepted."""

    noisy = False

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        pass


class Upgrader(Protocol):
    """Answers any request with 101 and then echoes raw bytes."""

    def connectionMade(self) -> None:
        self.factory.opened()
        self.buffer = b""
        self.upgraded = False

    def dataReceived(self, data: bytes) -> None:
        if self.upgraded:
            self.transport.write(data.upper())
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            self.upgraded = True
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
                                 b"Connection: Upgrade\r\n\r\n" + rest.upper())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed()


class HttpTestCase(TestCase):
    def setUp(self) -> None:
        self.resource = EchoResource()
        self.site = CountingSite(self.resource)
        self.backend_port = serve(self, self.site)
        self.addCleanup(self._finish_hanging)
        # A client pool, so that its connections are closed when the test ends.
        self.client_pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.client_pool.closeCachedConnections)

    def _finish_hanging(self) -> None:
        for request in self.resource.hanging:
            if not request.finished and not request._disconnected:
                request.finish()

    def proxy(self, **settings: Any) -> Any:
        settings.setdefault("protocol", "http")
        self.service = start_proxy(self, self.backend_port, **settings)
        self.base = b"http://127.0.0.1:%d" % listener_port(self.service)
        return self.service

    @inlineCallbacks
    def get(self, path: bytes, method: bytes = b"GET", body: Any = None,
            headers: Any = None, persistent: bool = False) -> Any:
        pool = self.client_pool if persistent else HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, pool=pool)
        response = yield agent.request(method, self.base + path, Headers(headers or {}), body)
        content = yield readBody(response)
        return response, content

    @inlineCallbacks
    def raw(self, payload: bytes, until: Any = None) -> Any:
        client = connect(listener_port(self.service), Client(payload))
        if until is None:
            result = yield client.done
            return result
        yield wait_for(lambda: until(b"".join(client.received)), what="raw reply")
        client.transport.loseConnection()
        yield client.done
        return b"".join(client.received)


class ForwardingTests(HttpTestCase):
    @inlineCallbacks
    def test_backend_connection_reused_across_clients(self) -> None:
        """
        50 requests, each from a new client connection, are all served on one
        keep-alive backend connection.
        """
        self.proxy()
        seen = set()
        for i in range(50):
            response, content = yield self.get(b"/item/%d" % i)
            self.assertEqual(response.code, 200)
            body = json.loads(content)
            self.assertEqual(body["path"], "/item/%d" % i)
            seen.add(body["connection"])
        self.assertEqual(len(seen), 1)
        self.assertEqual(self.site.connections, 1)
        self.assertEqual(self.service.listeners[0].stats.requests_ok, 50)

    @inlineCallbacks
    def test_bodies_and_headers(self) -> None:
        """
        A Content-Length body and a chunked body reach the backend intact;
        hop-by-hop headers are removed and X-Forwarded-For is set.
        """
        from twisted.web.client import FileBodyProducer
        from io import BytesIO

        self.proxy()
        payload = bytes(range(256)) * 1000
        response, content = yield self.get(
            b"/upload", b"POST", FileBodyProducer(BytesIO(payload)),
            {b"X-Forwarded-For": [b"10.1.2.3"], b"Keep-Alive": [b"timeout=5"],
             b"X-Custom": [b"kept"]})
        body = json.loads(content)
        self.assertEqual((body["length"], body["sha"]),
                         (len(payload), hashlib.sha256(payload).hexdigest()))
        # From a client that is no trusted proxy, the proxy's own replaces it.
        self.assertEqual(body["headers"]["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(body["headers"]["x-custom"], ["kept"])
        self.assertNotIn("keep-alive", body["headers"])
        chunked = (b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        reply = yield self.raw(chunked, until=lambda r: r.endswith(b"}"))
        body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(body["sha"], hashlib.sha256(b"hello world").hexdigest())

    @inlineCallbacks
    def test_forwarded_for_without_or_with_empty_header(self) -> None:
        """
        A request without X-Forwarded-For gets one naming the client; an
        empty one is replaced by one naming the client, not kept beside it.
        """
        self.proxy()
        _, content = yield self.get(b"/none")
        self.assertEqual(json.loads(content)["headers"]["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(json.loads(content)["headers"]["x-forwarded-proto"], ["http"])
        reply = yield self.raw(b"GET /empty HTTP/1.1\r\nHost: x\r\nX-Forwarded-For:\r\n"
                               b"Connection: close\r\n\r\n")
        body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(body["headers"]["x-forwarded-for"], ["127.0.0.1"])

    @inlineCallbacks
    def test_large_response_streams(self) -> None:
        """A 20 MB response arrives whole."""
        self.proxy()
        response, content = yield self.get(b"/big/20000000")
        self.assertEqual(len(content), 20_000_000)

    @inlineCallbacks
    def test_bodyless_responses_keep_the_connection_in_step(self) -> None:
        """
        HEAD, 204 and 304 responses have no body: pipelined requests behind
        them on one client connection get their own responses.
        """
        self.proxy()
        requests = (b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = yield self.raw(requests)
        self.assertEqual(reply.count(b"HTTP/1.1 "), 4)
        self.assertIn(b"HTTP/1.1 204", reply)
        self.assertIn(b"HTTP/1.1 304", reply)
        self.assertTrue(reply.endswith(b"}"), reply[-200:])
        self.assertIn(b'"path": "/last"', reply)
        self.assertEqual(self.site.connections, 1)

    @inlineCallbacks
    def test_connection_close_honoured(self) -> None:
        """
        A client's Connection: close gets the response and then the close;
        the backend connection is still reused.
        """
        self.proxy()
        reply = yield self.raw(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertIn(b"Connection: close", reply)
        reply = yield self.raw(b"GET /y HTTP/1.0\r\nHost: x\r\n\r\n")
        self.assertIn(b'"path": "/y"', reply)
        self.assertEqual(self.site.connections, 1)

    @inlineCallbacks
    def test_http10_client_gets_chunked_body_decoded(self) -> None:
        """
        A chunked response to an HTTP/1.0 client arrives decoded, without
        Transfer-Encoding, ended by the close; an HTTP/1.1 client on the same
        backend connection still gets it chunked.
        """
        self.proxy()
        reply = yield self.raw(b"GET /stream/3 HTTP/1.0\r\nHost: x\r\n\r\n")
        head, body = reply.split(b"\r\n\r\n", 1)
        self.assertNotIn(b"transfer-encoding", head.lower())
        self.assertIn(b"Connection: close", head)
        self.assertEqual(body, b"part0part1part2")
        reply = yield self.raw(b"GET /stream/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertIn(b"transfer-encoding: chunked", reply.lower())
        self.assertEqual(self.site.connections, 1)

    @inlineCallbacks
    def test_upgrade_tunnel(self) -> None:
        """
        An Upgrade request answered with 101 becomes a raw tunnel; the
        backend connection is not reused afterwards.
        """
        upgrader = BackendFactory(Upgrader)
        self.backend_port = serve(self, upgrader)
        self.proxy()
        client = connect(listener_port(self.service), Client(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nhello"))
        yield wait_for(lambda: b"HELLO" in b"".join(client.received), what="tunnel")
        self.assertIn(b"101 Switching Protocols", b"".join(client.received))
        client.transport.write(b"more")
        yield wait_for(lambda: b"MORE" in b"".join(client.received), what="tunnel 2")
        client.transport.loseConnection()
        yield client.done
        yield wait_for(lambda: self.service.pools[0].total == 0, what="tunnel lease ended")
        self.assertEqual(self.service.admission.in_flight, 0)


class Overtalker(Protocol):
    """Answers each request, then sends bytes nobody asked for."""

    def connectionMade(self) -> None:
        self.factory.opened()
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed()


class ClosesOnReuse(Protocol):
    """
    Answers the first request on each connection (keep-alive), and drops the
    connection when another request arrives on it: the keep-alive race, made
    deterministic. Every request line it sees is recorded.
    """

    def connectionMade(self) -> None:
        self.factory.opened()
        self.buffer = b""
        self.answered = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.factory.seen.append(head.split(b"\r\n", 1)[0])
            if b"Content-Length: " in head:
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                self.buffer = self.buffer[length:]
            if self.answered:
                self.transport.abortConnection()
                return
            self.answered = True
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed()


class RetryTests(HttpTestCase):
    def closing_backend(self) -> BackendFactory:
        backend = BackendFactory(ClosesOnReuse)
        backend.seen = []
        self.backend_port = serve(self, backend)
        self.proxy(health_interval=30.0, pool_size=4)
        return backend

    @inlineCallbacks
    def test_safe_request_retried_on_fresh_connection(self) -> None:
        """
        A GET sent on a reused connection that the backend had closed is
        sent again, once, on a new connection: the client sees success.
        """
        backend = self.closing_backend()
        for path in (b"/one", b"/two", b"/three"):
            response, content = yield self.get(path)
            self.assertEqual((response.code, content), (200, b"ok"))
        self.assertEqual(backend.seen, [b"GET /one HTTP/1.1", b"GET /two HTTP/1.1",
                                        b"GET /two HTTP/1.1", b"GET /three HTTP/1.1",
                                        b"GET /three HTTP/1.1"])
        self.assertEqual(self.service.cluster.backends[0].retries, 2)

    @inlineCallbacks
    def test_unsafe_request_never_retried(self) -> None:
        """
        A POST in the same situation is not sent again (it may have had an
        effect): the client gets 502, and the backend saw it exactly once.
        """
        from io import BytesIO

        from twisted.web.client import FileBodyProducer

        backend = self.closing_backend()
        response, content = yield self.get(b"/warm")
        self.assertEqual(response.code, 200)
        response, content = yield self.get(b"/write", b"POST", FileBodyProducer(BytesIO(b"data")))
        self.assertEqual(response.code, 502)
        self.assertEqual(backend.seen.count(b"POST /write HTTP/1.1"), 1)
        self.assertEqual(self.service.cluster.backends[0].retries, 0)


class ErrorTests(HttpTestCase):
    @inlineCallbacks
    def test_leftover_bytes_close_backend_connection(self) -> None:
        """
        A backend that sends more than the response it owed: its connection
        is closed, never reused, and the next request gets a clean one.
        """
        talker = BackendFactory(Overtalker)
        self.backend_port = serve(self, talker)
        self.proxy(health_interval=30.0)
        for _ in range(3):
            response, content = yield self.get(b"/x")
            self.assertEqual(content, b"ok")
        yield wait_for(lambda: talker.accepted >= 3, what="a connection per request")
        self.assertEqual(self.service.pools[0].idle, 0)

    @inlineCallbacks
    def test_malformed_request(self) -> None:
        """A malformed request gets 400 and the connection is closed."""
        self.proxy()
        reply = yield self.raw(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply)
        self.assertIn(b"Connection: close", reply)
        self.assertEqual(self.resource.requests, 0)

    @inlineCallbacks
    def test_headers_too_large(self) -> None:
        """Headers beyond the limit get 431."""
        self.proxy()
        reply = yield self.raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 431 "), reply[:100])

    @inlineCallbacks
    def test_overloaded_503(self) -> None:
        """
        With every worker busy and no queue, a request gets 503 with
        Retry-After at once.
        """
        self.proxy(max_concurrency=1, queue_size=0)
        hung = self.get(b"/hang")
        yield wait_for(lambda: self.resource.hanging, what="hanging request")
        response, content = yield self.get(b"/x")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
        self.resource.hanging[0].write(b"late")
        self.resource.hanging[0].finish()
        response, content = yield hung
        self.assertEqual(content, b"late")

    @inlineCallbacks
    def test_backend_down_502(self) -> None:
        """With the backend refusing connections, a request gets 502."""
        self.backend_port = free_port()
        self.proxy(health_interval=30.0)
        response, content = yield self.get(b"/x")
        self.assertEqual(response.code, 502)
        self.assertIn(b"backend unavailable", content.lower())

    @inlineCallbacks
    def test_backend_timeout_504(self) -> None:
        """
        A backend that does not start answering within request_timeout gives
        504; its connection is closed, not reused.
        """
        self.proxy(request_timeout=0.3)
        response, content = yield self.get(b"/hang")
        self.assertEqual(response.code, 504)
        yield wait_for(lambda: self.service.pools[0].total == 0, what="connection closed")
        self.assertEqual(self.service.listeners[0].stats.requests["timeout"], 1)

    @inlineCallbacks
    def test_backend_dies_mid_response(self) -> None:
        """
        A backend that closes after sending part of the response: the client
        connection is closed (the response cannot be completed), and nothing
        leaks.
        """
        self.proxy()
        d = self.raw(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        yield wait_for(lambda: self.resource.hanging, what="hanging")
        request = self.resource.hanging[0]
        request.setHeader(b"content-length", b"100")
        request.write(b"partial")
        yield wait_for(lambda: self.service.listeners[0].stats.connections_open == 1,
                       what="client connected")
        request.channel.transport.loseConnection()
        reply = yield d
        self.assertIn(b"partial", reply)
        yield wait_for(lambda: self.service.pools[0].total == 0, what="lease ended")
        self.assertEqual(self.service.admission.in_flight, 0)


class LoadTests(HttpTestCase):
    @inlineCallbacks
    def test_concurrent_clients_no_cross_talk(self) -> None:
        """
        200 concurrent clients, each with its own path: every response
        belongs to the request that asked, over at most pool-size backend
        connections.
        """
        self.proxy(pool_size=8)
        results = yield gatherResults([self.get(b"/c/%d" % i) for i in range(200)])
        for i, (response, content) in enumerate(results):
            self.assertEqual(json.loads(content)["path"], "/c/%d" % i)
        self.assertLessEqual(self.site.connections, 8)


class OrphanTests(HttpTestCase):
    """A client that leaves while its response is on the way."""

    @inlineCallbacks
    def leave_while_hanging(self, **settings: Any) -> Any:
        self.proxy(**settings)
        client = connect(listener_port(self.service), Client(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n"))
        yield wait_for(lambda: self.resource.hanging, what="request at the backend")
        client.transport.abortConnection()
        yield client.done
        yield wait_for(lambda: self.service.listeners[0].stats.connections_open == 0,
                       what="client gone")
        return self.resource.hanging[0]

    @inlineCallbacks
    def test_response_drained_and_connection_reused(self) -> None:
        request = yield self.leave_while_hanging()
        pool = self.service.pools[0]
        self.assertEqual(pool.leased, 1)  # held while the response is on its way
        request.setHeader(b"content-length", b"5")
        request.write(b"hello")
        request.finish()
        yield wait_for(lambda: pool.idle == 1, what="connection back in the pool")
        response, _ = yield self.get(b"/after")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.site.connections, 1)  # the same backend connection served it
        stats = self.service.listeners[0].stats
        self.assertEqual((stats.requests["client_gone"], stats.requests_ok), (1, 1))
        self.assertEqual(self.service.admission.in_flight, 0)

    @inlineCallbacks
    def test_long_response_closes_the_connection(self) -> None:
        from poolproxy.proxy.exchange import ORPHAN_DRAIN_LIMIT
        request = yield self.leave_while_hanging()
        pool = self.service.pools[0]
        request.setHeader(b"content-length", b"%d" % (ORPHAN_DRAIN_LIMIT * 4))
        request.write(b"x" * (ORPHAN_DRAIN_LIMIT * 2))
        yield wait_for(lambda: pool.total == 0, what="connection closed")
        self.assertEqual(self.service.admission.in_flight, 0)

    @inlineCallbacks
    def test_drain_bounded_by_request_timeout(self) -> None:
        yield self.leave_while_hanging(request_timeout=0.2)
        pool = self.service.pools[0]
        yield wait_for(lambda: pool.total == 0, what="connection closed after the timeout")
        stats = self.service.listeners[0].stats
        self.assertEqual(stats.requests["timeout"], 0)  # the client was counted as gone
        self.assertEqual(self.service.cluster.backends[0].failures, 0)
