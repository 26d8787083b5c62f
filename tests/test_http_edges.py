"""
The edges of HTTP request mode over real loopback sockets: what a client
sends after an Upgrade or CONNECT head, framing errors inside a body,
request size, the X-Forwarded-* headers, HTTP/1.0 keep-alive, strict
heads, and error messages that say nothing of the inside.
"""

from __future__ import annotations

import json
from typing import Any, List

from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from tests.support import BackendFactory, Client, connect, free_port, listener_port, serve, wait_for
from tests.test_httpmode import HttpTestCase


def responses(raw: bytes) -> List[Any]:
    """The JSON bodies of the echo backend's responses in C{raw}, in order."""
    out = []
    for part in raw.split(b"HTTP/1.1 ")[1:]:
        head, _, body = part.partition(b"\r\n\r\n")
        out.append((int(head[:3]), json.loads(body) if body.startswith(b"{") else body))
    return out


def complete(raw: bytes) -> bool:
    """Whether C{raw} holds a whole response (the echo backend's, or the proxy's own)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    return bool(sep) and (body.endswith(b"}") or body.endswith(b"\n"))


class HeldUpgrader(Protocol):
    """
    Reads a request head and what comes after it, and answers only when
    the test calls C{answer(response)}; then echoes upper-cased if it said 101.
    """

    def connectionMade(self) -> None:
        self.factory.opened()
        self.factory.instances.append(self)
        self.received = b""
        self.upgraded = False

    def dataReceived(self, data: bytes) -> None:
        if self.upgraded:
            self.transport.write(data.upper())
            return
        self.received += data

    def answer(self, response: bytes) -> None:
        self.transport.write(response)
        if b" 101 " in response.split(b"\r\n", 1)[0]:
            self.upgraded = True

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed()


class UpgradeTests(HttpTestCase):
    timeout = 20
    @inlineCallbacks
    def test_bytes_after_upgrade_head_held_until_101(self) -> None:
        """
        What a client sends after an Upgrade head reaches the backend only
        once the backend has switched protocols.
        """
        factory = BackendFactory(HeldUpgrader)
        factory.instances = []
        self.backend_port = serve(self, factory)
        self.proxy()
        client = connect(listener_port(self.service), Client(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
            b"early bytes"))
        yield wait_for(lambda: factory.instances and b"\r\n\r\n" in factory.instances[0].received,
                       what="the head at the backend")
        backend = factory.instances[0]
        client.transport.write(b" and more")
        [frontend] = self.service.listeners[0].factory.clients
        yield wait_for(lambda: frontend.queued_bytes == len(b"early bytes and more"),
                       what="the proxy holding what followed the head")
        self.assertTrue(backend.received.endswith(b"\r\n\r\n"), backend.received)
        backend.answer(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                       b"Upgrade: echo\r\n\r\n")
        yield wait_for(lambda: b"EARLY BYTES AND MORE" in b"".join(client.received),
                       what="the held bytes through the tunnel")
        client.transport.loseConnection()
        yield client.done

    @inlineCallbacks
    def test_refused_upgrade_goes_on_as_http(self) -> None:
        """
        A backend that answers an Upgrade request with 200 (it does not
        upgrade): what the client sent after the head is parsed as requests,
        which get X-Forwarded-For like any other, and are answered in turn.
        """
        self.proxy()
        reply = yield self.raw(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n"
            b"Connection: close\r\n\r\n")
        got = responses(reply)
        self.assertEqual([(status, body["path"]) for status, body in got],
                         [(200, "/ws"), (200, "/second")])
        self.assertEqual(got[1][1]["headers"]["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(self.site.connections, 1)  # the backend connection was reused

    @inlineCallbacks
    def test_refused_connect_goes_on_as_http(self) -> None:
        """A CONNECT answered 405 is not a tunnel: the next request is served."""
        self.proxy()
        # (The echo backend answers any method; its /status/N path says N.)
        reply = yield self.raw(
            b"CONNECT status/405 HTTP/1.1\r\nHost: db:5432\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = responses(reply)
        self.assertEqual(got[0][0], 405, reply)
        self.assertEqual(got[1][1]["path"], "/next")


class FramingTests(HttpTestCase):
    timeout = 20
    @inlineCallbacks
    def test_bad_chunk_inside_body(self) -> None:
        """
        A malformed chunk after good ones: 400 at once, the client closed,
        and the backend connection that had the start of the request closed
        too (not left leased until the backend gives up).
        """
        self.proxy()
        client = connect(listener_port(self.service), Client(
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"))
        yield wait_for(lambda: self.service.pools[0].leased == 1 or
                       self.service.listeners[0].stats.connections_open == 1, what="request")
        client.transport.write(b"zz\r\n")
        yield client.done
        reply = b"".join(client.received)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply)
        yield wait_for(lambda: self.service.pools[0].leased == 0, what="lease ended", timeout=2)
        self.assertEqual(self.service.admission.in_flight, 0)

    @inlineCallbacks
    def test_content_length_over_max_request_size(self) -> None:
        """
        A Content-Length over max_request_size: 413 at once, before any body,
        and the request never reaches the backend.
        """
        self.proxy(max_request_size=1000)
        reply = yield self.raw(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
                               b"abc")
        self.assertTrue(reply.startswith(b"HTTP/1.1 413 "), reply)
        self.assertEqual(self.resource.requests, 0)
        self.assertEqual(self.service.listeners[0].stats.requests["too_large"], 1)

    @inlineCallbacks
    def test_chunked_body_over_max_request_size(self) -> None:
        """A chunked body is refused with 413 as soon as it passes the limit."""
        self.proxy(max_request_size=1000)
        reply = yield self.raw(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                               + b"200\r\n" + b"x" * 512 + b"\r\n"
                               + b"200\r\n" + b"x" * 512 + b"\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 413 "), reply)
        yield wait_for(lambda: self.service.pools[0].leased == 0, what="lease ended", timeout=2)


class HeadTests(HttpTestCase):
    timeout = 20
    @inlineCallbacks
    def test_http11_without_host(self) -> None:
        """An HTTP/1.1 request without Host gets 400 (RFC 9112 3.2); 1.0 may omit it."""
        self.proxy()
        reply = yield self.raw(b"GET / HTTP/1.1\r\n\r\n", until=complete)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply)
        reply = yield self.raw(b"GET /old HTTP/1.0\r\n\r\n")
        self.assertEqual(responses(reply)[0][1]["path"], "/old")
        self.assertEqual(self.resource.requests, 1)

    @inlineCallbacks
    def test_control_character_in_header_value(self) -> None:
        """A control character in a header value: 400."""
        self.proxy()
        reply = yield self.raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
                               until=complete)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply)
        self.assertEqual(self.resource.requests, 0)

    @inlineCallbacks
    def test_chunk_size_past_2_63(self) -> None:
        """A chunk size of 2^63 or more: 400."""
        self.proxy()
        reply = yield self.raw(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"8000000000000000\r\n", until=complete)
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply)

    @inlineCallbacks
    def test_http10_keep_alive(self) -> None:
        """
        An HTTP/1.0 client that asks for keep-alive is told Connection:
        keep-alive, and its connection serves a second request.
        """
        self.proxy()
        client = connect(listener_port(self.service), Client(
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
        yield wait_for(lambda: b"}" in b"".join(client.received), what="first response")
        self.assertIn(b"\r\nConnection: keep-alive\r\n", b"".join(client.received))
        client.transport.write(b"GET /b HTTP/1.0\r\n\r\n")
        yield client.done
        got = responses(b"".join(client.received))
        self.assertEqual([body["path"] for _, body in got], ["/a", "/b"])


class ForwardedTests(HttpTestCase):
    timeout = 20
    SPOOFED = (b"GET /h HTTP/1.1\r\nHost: site.example\r\nX-Forwarded-For: 6.6.6.6\r\n"
               b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n"
               b"Forwarded: for=6.6.6.6\r\nConnection: close\r\n\r\n")

    @inlineCallbacks
    def test_untrusted_client_cannot_set_them(self) -> None:
        """
        From a client not in trusted_proxies, X-Forwarded-For, -Proto and
        -Host (and Forwarded) are removed and the proxy's own are sent.
        """
        self.proxy()
        reply = yield self.raw(self.SPOOFED)
        headers = responses(reply)[0][1]["headers"]
        self.assertEqual((headers["x-forwarded-for"], headers["x-forwarded-proto"],
                          headers["x-forwarded-host"]),
                         (["127.0.0.1"], ["http"], ["site.example"]))
        self.assertNotIn("forwarded", headers)

    @inlineCallbacks
    def test_trusted_proxy_appends(self) -> None:
        """From a trusted proxy, the proxy's values are appended to the client's."""
        self.proxy(trusted_proxies=("10.0.0.0/8", "127.0.0.0/8"))
        reply = yield self.raw(self.SPOOFED)
        headers = responses(reply)[0][1]["headers"]
        self.assertEqual((headers["x-forwarded-for"], headers["x-forwarded-proto"],
                          headers["x-forwarded-host"], headers["forwarded"]),
                         (["6.6.6.6, 127.0.0.1"], ["https, http"],
                          ["evil.example, site.example"], ["for=6.6.6.6"]))


class ErrorMessageTests(HttpTestCase):
    timeout = 20
    @inlineCallbacks
    def test_backend_down_says_nothing_of_the_inside(self) -> None:
        """
        A backend that refuses connections: the client's 502 names neither
        its address nor the OS error; the log has them, once per interval.
        """
        self.backend_port = free_port()
        self.proxy(health_interval=30.0)
        events: List[Any] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for _ in range(3):
            response, content = yield self.get(b"/x")
            self.assertEqual(response.code, 502)
            for secret in (b"127.0.0.1", b"%d" % self.backend_port, b"refused", b"111"):
                self.assertNotIn(secret, content.lower())
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn
                    and "refused" in str(e.get("why", "")).lower()]
        self.assertEqual(len(warnings), 1, [e.get("log_format") for e in events])

    @inlineCallbacks
    def test_bad_response_says_nothing_of_it(self) -> None:
        """A backend's broken response: 502 without the parser's details."""
        class Garbage(Protocol):
            def connectionMade(self) -> None:
                self.factory.opened()

            def dataReceived(self, data: bytes) -> None:
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")

            def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
                self.factory.closed()

        self.backend_port = serve(self, BackendFactory(Garbage))
        self.proxy(health_interval=30.0)
        response, content = yield self.get(b"/x")
        self.assertEqual(response.code, 502)
        self.assertNotIn(b"content-length", content.lower())
