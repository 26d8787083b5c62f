"""
Graceful shutdown: stop accepting, let what is in flight finish (up to
shutdown_timeout), then close.  In-process, and with a real SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.interop import accepts
from tests.support import (
    BackendFactory,
    Client,
    connect,
    free_port,
    line_codec,
    listener_port,
    serve,
    serve_web,
    spawn,
    start_proxy,
    twistd_command,
    wait_for,
)
from tests.test_multiplex import LineBackend, LineClient


class Holding(Resource):
    """Holds every request until the test answers it."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: List[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.held.append(request)
        return NOT_DONE_YET

    def answer_all(self, body: bytes) -> None:
        held, self.held = self.held, []
        for request in held:
            if not request._disconnected:
                request.write(body)
                request.finish()


class ShutdownTestCase(TestCase):
    def web_backend(self) -> Holding:
        resource = Holding()
        self.web_port = serve_web(self, resource)
        self.addCleanup(resource.answer_all, b"")
        return resource


class InProcessTests(ShutdownTestCase):
    @inlineCallbacks
    def test_http_in_flight_finishes(self) -> None:
        """
        Stopping with a request in flight: the listener stops accepting at
        once, the request still gets its response, and only then does the
        stop complete.
        """
        backend = self.web_backend()
        service = start_proxy(self, self.web_port, protocol="http", shutdown_timeout=30.0)
        port = listener_port(service)
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        in_flight = agent.request(b"GET", b"http://127.0.0.1:%d/slow" % port)
        yield wait_for(lambda: backend.held, what="request at the backend")
        stopping = service.stopService()
        yield wait_for(lambda: not service.listeners[0].service.running, what="listener stopped")
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        self.assertFalse(stopping.called)
        backend.answer_all(b"finished")
        response = yield in_flight
        self.assertEqual((yield readBody(response)), b"finished")
        yield stopping
        self.assertEqual(service.pools[0].total, 0)

    @inlineCallbacks
    def test_timeout_closes_what_is_left(self) -> None:
        """
        A request that never finishes holds shutdown only for
        shutdown_timeout; then its client is closed and the stop completes.
        """
        backend = self.web_backend()
        service = start_proxy(self, self.web_port, protocol="http", shutdown_timeout=0.3,
                              request_timeout=0)
        client = connect(listener_port(service), Client(b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n"))
        yield wait_for(lambda: backend.held, what="request at the backend")
        started = reactor.seconds()
        yield service.stopService()
        self.assertGreaterEqual(reactor.seconds() - started, 0.25)
        yield client.done

    @inlineCallbacks
    def test_multiplexed_replies_then_close(self) -> None:
        """
        A redis-like client with a reply owed gets it, then is closed; an
        idle client is closed at once.
        """
        lines = BackendFactory(LineBackend)
        service = start_proxy(self, serve(self, lines), codec=line_codec(), protocol="line",
                              shutdown_timeout=30.0)
        busy = connect(listener_port(service), LineClient(b"GET HOLD-1\n"))
        idle = connect(listener_port(service), LineClient(b""))
        yield wait_for(lambda: lines.connections and lines.connections[0].lines, what="held")
        stopping = service.stopService()
        yield idle.done
        self.assertFalse(stopping.called)
        lines.connections[0].release()
        yield busy.done
        self.assertEqual(busy.lines(), [b"GET HOLD-1"])
        yield stopping

    @inlineCallbacks
    def test_request_right_after_accept_is_answered(self) -> None:
        """
        A client accepted just before the stop whose first request arrives
        only after it (as on a socket shared with the worker replacing this
        one) gets its reply, then is closed: not closed unanswered.
        """
        lines = BackendFactory(LineBackend)
        service = start_proxy(self, serve(self, lines), codec=line_codec(), protocol="line",
                              shutdown_timeout=30.0)
        late = connect(listener_port(service), LineClient(b""))
        yield wait_for(lambda: late.transport is not None
                       and len(service.listeners[0].factory.clients) == 1, what="accepted")
        stopping = service.stopService()
        late.transport.write(b"GET LATE\n")
        yield late.done
        self.assertEqual(late.lines(), [b"GET LATE"])
        yield stopping


class SigtermTests(ShutdownTestCase):
    @inlineCallbacks
    def test_sigterm_lets_request_finish(self) -> None:
        """
        twistd poolproxy receiving SIGTERM with a request in flight: the
        client still gets its response, then the process exits cleanly.
        """
        backend = self.web_backend()
        port, metrics = free_port(), free_port()
        log = os.path.abspath(self.mktemp())
        proc = spawn(twistd_command(
            "poolproxy", "--protocol", "http", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--backend", f"127.0.0.1:{self.web_port}", "--check-interval", "0",
            "--metrics", f"tcp:{metrics}:interface=127.0.0.1"), log)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())

        def accepting() -> bool:
            return accepts(port) or proc.poll() is not None  # exited: fail below

        yield wait_for(accepting, timeout=30, what="proxy listening")
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        in_flight = agent.request(b"GET", b"http://127.0.0.1:%d/slow" % port)
        yield wait_for(lambda: backend.held, what="request at the backend")
        proc.send_signal(signal.SIGTERM)
        yield wait_for(lambda: not accepting() or proc.poll() is not None, what="stopped accepting")
        self.assertIsNone(proc.poll(), open(log).read()[-2000:])
        backend.answer_all(b"done despite SIGTERM")
        response = yield in_flight
        self.assertEqual((yield readBody(response)), b"done despite SIGTERM")
        yield wait_for(lambda: proc.poll() is not None, timeout=30, what="exit")
        self.assertIn(proc.returncode, (0, -signal.SIGTERM))
