"""
Multiplexed mode end to end over real loopback sockets, with the example
line-protocol codec (and variants of it that set pinning, passthrough,
noreply and setup): replies in each client's order, no cross-talk, pinning,
admission, bad input, dead backends, cancelled requests.
"""

from __future__ import annotations

import random
from typing import Any, List

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from poolproxy.codec import PASSTHROUGH, PIN, UNPIN, Frame
from tests.support import (
    BackendFactory,
    Client,
    connect,
    line_codec,
    listen,
    listener_port,
    start_proxy,
    wait_for,
)


class LineBackend(Protocol):
    """
    Answers each line with the same line, except: SETUP -> OK, BADSETUP ->
    NO, a line with HOLD in it -> answered (with everything after it) only
    when the test calls release(), NOREPLY ...
    -> no answer, PUSH -> three lines at once (a server push).
    """

    def connectionMade(self) -> None:
        self.factory.opened()
        self.buffer = b""
        self.lines: List[bytes] = []
        self.held: List[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.lines.append(line)
            word = line.split(b" ", 1)[0]
            if word == b"SETUP":
                self.answer(b"OK\n")
            elif word == b"BADSETUP":
                self.answer(b"NO\n")
            elif b"HOLD" in line:
                self.held.append(line + b"\n")  # and everything after it waits
            elif word == b"NOREPLY":
                pass
            elif word == b"EXTRA":
                self.answer(line + b"\nunasked\n")  # one reply too many
            elif word == b"SUB":
                self.answer(b"subscribed\nmessage 1\nmessage 2\n")
            else:
                self.answer(line + b"\n")

    def answer(self, reply: bytes) -> None:
        # Strictly in order, as a real server: nothing overtakes a HOLD.
        if self.held:
            self.held.append(reply)
        else:
            self.transport.write(reply)

    def release(self) -> None:
        held, self.held = self.held, []
        self.transport.write(b"".join(held))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.closed()


def flag_codec(setup: List[bytes] = ()) -> Any:  # type: ignore[assignment]
    """
    The example codec, with flags by first word: PIN, UNPIN (PIN|UNPIN),
    SUB (PIN|PASSTHROUGH), NOREPLY (no reply), and setup lines.
    """
    base = line_codec()
    from lineproto import LineCodec, LineFramer

    class FlagFramer(LineFramer):
        def frame(self, line: bytes) -> Frame:
            frame = super().frame(line)
            word = line.split(b" ", 1)[0].strip()
            if word == b"PIN":
                frame.flags |= PIN
            elif word == b"UNPIN":
                frame.flags |= PIN | UNPIN
            elif word == b"EXTRA":
                self.answer(line + b"\nunasked\n")  # one reply too many
            elif word == b"SUB":
                frame.flags |= PIN | PASSTHROUGH
            elif word == b"NOREPLY":
                frame.replies = 0
            return frame

    class FlagCodec(LineCodec):
        def request_framer(self, config: Any) -> FlagFramer:
            return FlagFramer(getattr(config, "max_request_size", 65536), requests=True)

        def setup_frames(self, config: Any) -> List[Frame]:
            return [Frame(line + b"\n") for line in setup]

        def check_setup_reply(self, frame: Frame, response: bytes) -> Any:
            return None if response == b"OK\n" else response.decode().strip()

    del base
    return FlagCodec()


class LineClient(Client):
    """A client that counts the lines it got."""

    def lines(self) -> List[bytes]:
        return b"".join(self.received).split(b"\n")[:-1]


class MultiplexTestCase(TestCase):
    def backend(self) -> BackendFactory:
        factory = BackendFactory(LineBackend)
        port = listen(factory)
        self.addCleanup(port.stopListening)
        factory.port = port.getHost().port
        factory.listening = port  # the test stops it early
        return factory

    def proxy(self, backend: BackendFactory, codec: Any = None, **settings: Any) -> Any:
        settings.setdefault("protocol", "line")
        return start_proxy(self, backend.port, codec=codec or line_codec(), **settings)

    @inlineCallbacks
    def ask(self, service: Any, payload: bytes, replies: int) -> Any:
        client = connect(listener_port(service), LineClient(payload))
        yield wait_for(lambda: len(client.lines()) >= replies, what=f"{replies} replies")
        return client


class OrderTests(MultiplexTestCase):
    @inlineCallbacks
    def test_cross_talk(self) -> None:
        """
        300 clients each pipeline 30 requests of their own, sent in random
        chunks: every client gets exactly its own replies, in its own order,
        over no more than mux_connections backend connections.
        """
        backend = self.backend()
        service = self.proxy(backend, mux_connections=2)
        rng = random.Random(1234)
        clients = []
        expected = {}
        for c in range(300):
            lines = [b"GET client%d:%d" % (c, i) for i in range(30)]
            payload = b"".join(line + b"\n" for line in lines)
            client = connect(listener_port(service), LineClient())
            clients.append((client, payload))
            expected[id(client)] = lines
        yield wait_for(lambda: all(c.connected for c, _ in clients), what="clients connected")
        for client, payload in clients:
            cut = sorted(rng.sample(range(1, len(payload)), 5))
            for a, b in zip([0] + cut, cut + [len(payload)]):
                client.transport.write(payload[a:b])
        yield wait_for(lambda: all(len(c.lines()) >= 30 for c, _ in clients),
                       timeout=30, what="all replies")
        for client, _ in clients:
            self.assertEqual(client.lines(), expected[id(client)])
        self.assertLessEqual(backend.peak, 2)
        self.assertEqual(service.listeners[0].stats.requests_ok, 9000)
        for client, _ in clients:
            client.transport.loseConnection()
        yield gatherResults([c.done for c, _ in clients])
        yield wait_for(lambda: service.admission.in_flight == 0, what="admission released")

    @inlineCallbacks
    def test_short_sessions_reuse_connections(self) -> None:
        """
        2,000 short sessions (connect, one request, close), 100 at a time:
        the backend sees no more connections than mux_connections.
        """
        backend = self.backend()
        service = self.proxy(backend, mux_connections=2, pool_size=4)
        port = listener_port(service)
        for batch in range(20):
            clients = [connect(port, LineClient(b"GET k%d\n" % i, half_close=True))
                       for i in range(100)]
            results = yield gatherResults([c.done for c in clients])
            self.assertEqual(results, [b"GET k%d\n" % i for i in range(100)])
        self.assertLessEqual(backend.accepted, 2)


class PinningTests(MultiplexTestCase):
    @inlineCallbacks
    def test_pinned_requests_use_own_connection_in_order(self) -> None:
        """
        A PIN frame moves the client to a connection of its own only after its
        earlier requests are answered; UNPIN gives it back; replies stay in
        order and other clients never see the pinned connection.
        """
        backend = self.backend()
        service = self.proxy(backend, codec=flag_codec(), mux_connections=1, pool_size=3)
        client = yield self.ask(service, b"GET a\nPIN b\nPIN c\nUNPIN d\nGET e\n", 5)
        self.assertEqual(client.lines(), [b"GET a", b"PIN b", b"PIN c", b"UNPIN d", b"GET e"])
        by_conn = {id(p): p.lines for p in backend.connections}
        shared = [lines for lines in by_conn.values() if b"GET a" in lines][0]
        pinned = [lines for lines in by_conn.values() if b"PIN b" in lines][0]
        self.assertEqual(shared, [b"GET a", b"GET e"])
        self.assertEqual(pinned, [b"PIN b", b"PIN c", b"UNPIN d"])
        pool = service.pools[0]
        self.assertEqual(pool.idle, 1)  # the pinned connection went back, state clear

    @inlineCallbacks
    def test_pinned_connection_not_shared_while_held(self) -> None:
        """
        While one client holds a pinned connection, another client's pinned
        requests get a different connection.
        """
        backend = self.backend()
        service = self.proxy(backend, codec=flag_codec(), mux_connections=1, pool_size=3)
        first = connect(listener_port(service), LineClient(b"PIN HOLD-1\n"))
        yield wait_for(lambda: any(p.lines == [b"PIN HOLD-1"] for p in backend.connections),
                       what="first pinned")
        second = yield self.ask(service, b"PIN x\nUNPIN y\n", 2)
        self.assertEqual(second.lines(), [b"PIN x", b"UNPIN y"])
        self.assertEqual(first.lines(), [])
        first.transport.loseConnection()
        yield first.done
        # The pinned connection of a client that left is closed, not reused.
        yield wait_for(lambda: service.pools[0].leased == 1, what="pinned discarded")

    @inlineCallbacks
    def test_passthrough(self) -> None:
        """
        After a PASSTHROUGH frame the pinned connection is a raw pipe: the
        backend's unsolicited lines reach the client as they come.
        """
        backend = self.backend()
        service = self.proxy(backend, codec=flag_codec(), mux_connections=1, pool_size=3)
        client = yield self.ask(service, b"GET a\nSUB news\n", 4)
        self.assertEqual(client.lines(), [b"GET a", b"subscribed", b"message 1", b"message 2"])
        client.transport.write(b"anything at all\n")
        yield wait_for(lambda: len(client.lines()) == 5, what="raw echo")
        self.assertEqual(client.lines()[-1], b"anything at all")


class ProtocolRuleTests(MultiplexTestCase):
    @inlineCallbacks
    def test_noreply_takes_no_slot(self) -> None:
        """
        Frames that expect no reply take no slot: the replies that follow
        still pair with the right requests.
        """
        backend = self.backend()
        service = self.proxy(backend, codec=flag_codec(), mux_connections=1)
        client = yield self.ask(service, b"NOREPLY 1\nGET a\nNOREPLY 2\nNOREPLY 3\nGET b\n", 2)
        self.assertEqual(client.lines(), [b"GET a", b"GET b"])
        self.assertEqual(backend.connections[0].lines,
                         [b"NOREPLY 1", b"GET a", b"NOREPLY 2", b"NOREPLY 3", b"GET b"])

    @inlineCallbacks
    def test_setup_answered_before_client_frames(self) -> None:
        """
        Setup frames are the first thing on every new backend connection and
        are answered before any client frame is written on it; their replies
        never reach a client.
        """
        backend = self.backend()
        service = self.proxy(backend, codec=flag_codec([b"SETUP one", b"SETUP two"]),
                             mux_connections=1)
        client = yield self.ask(service, b"GET a\nGET b\n", 2)
        self.assertEqual(client.lines(), [b"GET a", b"GET b"])
        self.assertEqual(backend.connections[0].lines[:2], [b"SETUP one", b"SETUP two"])

    @inlineCallbacks
    def test_setup_refused(self) -> None:
        """
        A backend that refuses the setup counts as a failed connect: the
        client gets the codec's "unavailable" error, and the pool says why.
        """
        backend = self.backend()
        service = self.proxy(backend, codec=flag_codec([b"BADSETUP"]), mux_connections=1,
                             health_interval=30.0)
        client = yield self.ask(service, b"GET a\n", 1)
        self.assertTrue(client.lines()[0].startswith(b"ERR unavailable"), client.lines())
        self.assertIn("setup failed: NO", service.pools[0].last_error)

    @inlineCallbacks
    def test_quit_is_local(self) -> None:
        """
        A LOCAL|CLOSE frame is answered by the proxy after the earlier replies,
        then the client is closed; nothing after it is sent.
        """
        backend = self.backend()
        service = self.proxy(backend)
        client = connect(listener_port(service), LineClient(b"GET a\nQUIT\nGET b\n"))
        yield client.done
        self.assertEqual(client.lines(), [b"GET a", b"BYE"])
        self.assertEqual(backend.connections[0].lines, [b"GET a"])

    @inlineCallbacks
    def test_too_large_then_others_unaffected(self) -> None:
        """
        A client whose request exceeds max_request_size gets the codec's
        error after its earlier replies and is closed; another client, mid
        pipeline on the same backend connection, is served as before.
        """
        backend = self.backend()
        service = self.proxy(backend, max_request_size=100, mux_connections=1)
        other = connect(listener_port(service), LineClient(b"GET x\n"))
        bad = connect(listener_port(service), LineClient(b"GET ok\n" + b"y" * 500))
        yield bad.done
        self.assertEqual(bad.lines()[0], b"GET ok")
        self.assertTrue(bad.lines()[1].startswith(b"ERR too_large"), bad.lines())
        yield wait_for(lambda: other.lines() == [b"GET x"], what="other served")
        other.transport.write(b"GET y\n")
        yield wait_for(lambda: other.lines() == [b"GET x", b"GET y"], what="other still served")
        self.assertEqual(service.listeners[0].stats.requests["too_large"], 1)


class FailureTests(MultiplexTestCase):
    @inlineCallbacks
    def test_client_gone_late_reply_dropped(self) -> None:
        """
        A client that leaves with requests in flight: their late replies are
        read and dropped, and the next client's replies pair correctly.
        """
        backend = self.backend()
        service = self.proxy(backend, mux_connections=1)
        leaver = connect(listener_port(service), LineClient(b"HOLD 1\nHOLD 2\n"))
        yield wait_for(lambda: backend.connections and len(backend.connections[0].lines) == 2,
                       what="held")
        leaver.transport.abortConnection()
        yield leaver.done
        stayer = connect(listener_port(service), LineClient(b"GET mine\n"))
        yield wait_for(lambda: len(backend.connections[0].lines) == 3, what="queued")
        backend.connections[0].release()
        yield wait_for(lambda: stayer.lines() == [b"GET mine"], what="own reply")
        self.assertEqual(service.listeners[0].stats.requests["client_gone"], 2)
        yield wait_for(lambda: service.admission.in_flight == 0, what="tokens back")

    @inlineCallbacks
    def test_backend_dies_in_flight(self) -> None:
        """
        When the backend drops a shared connection, requests in flight on it
        get the codec's "unavailable" error at once; the next request is
        served on a new connection.
        """
        backend = self.backend()
        service = self.proxy(backend, mux_connections=1)
        client = connect(listener_port(service), LineClient(b"HOLD 1\nHOLD 2\n"))
        yield wait_for(lambda: backend.connections and len(backend.connections[0].lines) == 2,
                       what="held")
        backend.connections[0].transport.abortConnection()
        yield wait_for(lambda: len(client.lines()) == 2, what="errors")
        self.assertTrue(all(line.startswith(b"ERR unavailable") for line in client.lines()))
        client.transport.write(b"GET again\n")
        yield wait_for(lambda: len(client.lines()) == 3, what="served again")
        self.assertEqual(client.lines()[2], b"GET again")
        yield wait_for(lambda: service.admission.in_flight == 0, what="tokens back")

    @inlineCallbacks
    def test_safe_requests_resent_once_writes_never(self) -> None:
        """
        When a shared connection dies with requests in flight, the safe ones
        (reads) are sent again, once, on a new connection, into their places
        in the client's order; a write already sent gets the codec's error,
        never a second try.
        """
        backend = self.backend()
        service = self.proxy(backend, mux_connections=1, health_interval=30.0)
        client = connect(listener_port(service),
                         LineClient(b"GET HOLD-1\nSET HOLD-2\nGET HOLD-3\n"))
        yield wait_for(lambda: backend.connections and len(backend.connections[0].lines) == 3,
                       what="all three held")
        backend.connections[0].transport.abortConnection()
        yield wait_for(lambda: len(backend.connections) == 2
                       and len(backend.connections[1].lines) == 2, what="reads resent")
        self.assertEqual(backend.connections[1].lines, [b"GET HOLD-1", b"GET HOLD-3"])
        self.assertEqual(client.lines(), [])  # the first reply is still owed
        backend.connections[1].release()
        yield wait_for(lambda: len(client.lines()) == 3, what="replies")
        lines = client.lines()
        self.assertEqual(lines[0], b"GET HOLD-1")
        self.assertTrue(lines[1].startswith(b"ERR unavailable"), lines)
        self.assertEqual(lines[2], b"GET HOLD-3")
        self.assertEqual(service.cluster.backends[0].retries, 2)
        yield wait_for(lambda: service.admission.in_flight == 0, what="tokens back")

    @inlineCallbacks
    def test_resend_with_no_connection_to_be_had(self) -> None:
        """
        A read to resend when no new connection can be made (the backend is
        gone) gets the codec's error, in its place; nothing is left waiting.
        """
        backend = self.backend()
        service = self.proxy(backend, mux_connections=1, health_interval=30.0)
        client = connect(listener_port(service), LineClient(b"GET HOLD-1\n"))
        yield wait_for(lambda: backend.connections and backend.connections[0].lines,
                       what="held")
        yield backend.listening.stopListening()
        backend.connections[0].transport.abortConnection()
        yield wait_for(lambda: len(client.lines()) == 1, what="error")
        self.assertTrue(client.lines()[0].startswith(b"ERR unavailable"), client.lines())
        yield wait_for(lambda: service.admission.in_flight == 0, what="tokens back")

    @inlineCallbacks
    def test_resent_request_not_resent_again(self) -> None:
        """
        A read already sent twice whose second connection dies too gets the
        codec's error: there is no third try.
        """
        backend = self.backend()
        service = self.proxy(backend, mux_connections=1, health_interval=30.0)
        client = connect(listener_port(service), LineClient(b"GET HOLD-1\n"))
        yield wait_for(lambda: backend.connections and backend.connections[0].lines,
                       what="held")
        backend.connections[0].transport.abortConnection()
        yield wait_for(lambda: len(backend.connections) == 2 and backend.connections[1].lines,
                       what="resent")
        backend.connections[1].transport.abortConnection()
        yield wait_for(lambda: len(client.lines()) == 1, what="error")
        self.assertTrue(client.lines()[0].startswith(b"ERR unavailable"), client.lines())
        self.assertEqual(len(backend.connections), 2)
        self.assertEqual(service.cluster.backends[0].retries, 1)
        yield wait_for(lambda: service.admission.in_flight == 0, what="tokens back")

    @inlineCallbacks
    def test_unasked_reply_closes_connection(self) -> None:
        """
        A backend that sends a reply nobody asked for is out of step: no
        reply of that batch can be trusted to be its request's, so the
        requests in flight get the codec's error rather than a reply that
        may be another's; the connection is closed and the next request
        goes to a new one.
        """
        backend = self.backend()
        service = self.proxy(backend, mux_connections=1, health_interval=30.0)
        client = yield self.ask(service, b"EXTRA 1\n", 1)
        self.assertEqual(client.lines(), [b"ERR unavailable the backend's replies and requests "
                                          b"disagree"])
        yield wait_for(lambda: backend.open == 0, what="connection closed")
        client.transport.write(b"GET 2\n")
        yield wait_for(lambda: client.lines()[1:] == [b"GET 2"], what="served anew")
        self.assertEqual(backend.accepted, 2)

    @inlineCallbacks
    def test_overload_answers_in_order(self) -> None:
        """
        With one worker and no queue, pipelined requests beyond the one in
        flight get the codec's "overloaded" error, in their place in order.
        """
        backend = self.backend()
        service = self.proxy(backend, max_concurrency=1, queue_size=0)
        client = connect(listener_port(service), LineClient(b"HOLD 1\nGET 2\nGET 3\n"))
        yield wait_for(lambda: service.admission.rejected["queue_full"] == 2, what="rejections")
        self.assertEqual(client.lines(), [])  # the errors wait for the reply ahead of them
        backend.connections[0].release()
        yield wait_for(lambda: len(client.lines()) == 3, what="all replies")
        lines = client.lines()
        self.assertEqual(lines[0], b"HOLD 1")
        self.assertTrue(lines[1].startswith(b"ERR overloaded"))
        self.assertTrue(lines[2].startswith(b"ERR overloaded"))
        self.assertEqual(service.admission.rejected["queue_full"], 2)


class BreakerTrialTests(MultiplexTestCase):
    @inlineCallbacks
    def test_half_open_backend_gets_one_frame_of_a_batch(self) -> None:
        """
        A half-open backend's breaker lets one trial request through: when a
        client's pipelined batch is routed, the frames after the trial go to
        the other backend, even though one pass routes a whole batch.
        """
        from twisted.internet.task import Clock

        from poolproxy.backends.breaker import BreakerSettings, CircuitBreaker

        first, second = self.backend(), self.backend()
        service = start_proxy(self, first.port, codec=line_codec(), protocol="line",
                              backend=(f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"),
                              balance="round_robin")
        trial = service.cluster.backends[0]
        clock = Clock()
        trial.breaker = CircuitBreaker(BreakerSettings(failures_to_open=1, reset_timeout=1.0),
                                       clock=clock)
        trial.breaker.failure()
        clock.advance(1.0)
        self.assertEqual(trial.breaker.state, "half_open")

        batch = b"".join(b"GET %d\n" % i for i in range(4))
        client = yield self.ask(service, batch, 4)
        self.assertEqual(client.lines(), [b"GET %d" % i for i in range(4)])
        to_first = sum(len(p.lines) for p in first.connections)
        to_second = sum(len(p.lines) for p in second.connections)
        self.assertEqual((to_first, to_second), (1, 3))
        self.assertEqual(trial.breaker.state, "closed")  # the trial succeeded
        client.transport.loseConnection()
        yield client.done
