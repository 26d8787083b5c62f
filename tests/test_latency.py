"""
Request duration histograms, on a L{Clock}: requests that a fake backend
answers after a delay the test controls land in the bucket of that delay,
per listener and per backend, in each mode (redis multiplexed, http, tcp,
postgres transactions), under the outcome they had.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.backends.pool import BackendPool
from poolproxy.codecs import postgres as pg
from poolproxy.codecs.http import codec as http_codec
from poolproxy.codecs.redis import codec as redis_codec
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.request import HttpBackend, HttpFactory, HttpLimits
from poolproxy.proxy.session import SessionBackend, SessionFactory
from poolproxy.stats import Histogram, Histograms
from poolproxy.testing import FakeEndpoint, FakeTransport, MultiplexHarness
from tests.test_transaction_mode import Rig as TransactionRig


def bucket(h: Histogram, before: "list[int] | None" = None) -> float:
    """
    The upper bound of the one bucket C{h} has observations in (since its
    counts were C{before}), failing the test's assertion if there are none,
    or several buckets hold some.
    """
    counts = h.counts if before is None else [a - b for a, b in zip(h.counts, before)]
    used = [i for i, n in enumerate(counts) if n]
    assert len(used) == 1, f"observations in buckets {used}: {h.counts}"
    return (h.bounds + (float("inf"),))[used[0]]


class HistogramsTests(SynchronousTestCase):
    def test_known_keys_exist_unknown_created_on_first_use(self) -> None:
        """Known outcomes are there from the start (exported at 0); others once observed."""
        durations = Histograms("ok")
        self.assertEqual([k for k, _ in durations.items()], ["ok"])
        durations.observe("timeout", 0.3)
        self.assertEqual(sorted(k for k, _ in durations.items()), ["ok", "timeout"])
        self.assertEqual((durations["timeout"].count, bucket(durations["timeout"])), (1, 0.5))
        self.assertEqual(durations["ok"].count, 0)

    def test_same_bounds_for_every_key(self) -> None:
        durations = Histograms(bounds=(1.0, 2.0))
        self.assertEqual(durations["a"].bounds, (1.0, 2.0))


class MultiplexedTests(SynchronousTestCase):
    """redis: per request, from the read that brought it to its reply written."""

    def setUp(self) -> None:
        self.harness = MultiplexHarness(redis_codec, mux_connections=1)
        self.stats = self.harness.factory.stats
        self.backend = self.harness.cluster.backends[0]

    def test_delayed_reply_lands_in_its_bucket(self) -> None:
        """
        Two requests read together, answered 30 ms later (the backend's
        connection made meanwhile): both in the 0.05 bucket of the listener
        and of the backend; a third answered at once is in the first bucket.
        """
        client = self.harness.client()
        client.send(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n")
        self.harness.clock.advance(0.03)
        self.harness.serve(lambda conn, data: b"$1\r\nx\r\n" * data.count(b"GET"))
        self.assertEqual(client.received(), b"$1\r\nx\r\n" * 2)
        for h in (self.stats.duration_ok, self.backend.duration_ok):
            self.assertEqual((h.count, bucket(h)), (2, 0.05))
            self.assertAlmostEqual(h.total, 0.06)
        client.send(b"*2\r\n$3\r\nGET\r\n$1\r\nc\r\n")
        self.harness.serve(lambda conn, data: b"$1\r\ny\r\n")
        self.assertEqual(self.stats.duration_ok.counts[0], 1)  # le=0.0001
        self.assertEqual(self.stats.duration_ok.count, 3)

    def test_backend_that_dies_counts_backend_unavailable(self) -> None:
        """A request in flight when its backend connection dies: its own outcome's histogram."""
        client = self.harness.client()
        client.send(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n")  # not retried
        self.harness.connect()
        self.harness.clock.advance(2.0)
        [conn] = self.harness.connections()
        conn.lose()
        self.assertTrue(client.received().startswith(b"-"), client.received())
        for durations in (self.stats.durations, self.backend.durations):
            h = durations["backend_unavailable"]
            self.assertEqual((h.count, bucket(h)), (1, 2.5))
            self.assertEqual(durations["ok"].count, 0)


class HttpTests(SynchronousTestCase):
    """http: per exchange; the backend from the head written; first byte to the response head."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        admission = Admission(100, 100, 5.0, clock=self.clock)
        self.pool = BackendPool("b", self.endpoint, lambda: HttpBackend(http_codec), size=4,
                                clock=self.clock)
        self.backend = Backend("b", self.pool)
        self.pool.backend = self.backend
        self.factory = HttpFactory("l", http_codec, None, admission, Cluster("c", [self.backend]),
                                   self.clock, request_timeout=15.0, limits=HttpLimits())
        self.stats = self.factory.stats
        self.client = self.factory.buildProtocol(None)
        self.client_transport = FakeTransport(self.client)
        self.client.makeConnection(self.client_transport)

    def test_phases_land_in_their_buckets(self) -> None:
        """
        Connect 20 ms, response head 300 ms after the request went out,
        its body a second later: the listener sees 1.32 s, the backend
        1.3 s, its first byte 0.3 s.
        """
        self.client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(0.02)
        [backend] = self.endpoint.succeed()
        self.assertTrue(backend.value().startswith(b"GET / "))
        self.clock.advance(0.3)
        backend.protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
        self.clock.advance(1.0)
        self.assertEqual(self.stats.duration_ok.count, 0)  # not yet: its end is not written
        backend.protocol.dataReceived(b"ok")
        self.assertTrue(self.client_transport.value().endswith(b"\r\n\r\nok"))
        self.assertEqual(bucket(self.stats.duration_ok), 2.5)
        self.assertAlmostEqual(self.stats.duration_ok.total, 1.32)
        self.assertAlmostEqual(self.backend.duration_ok.total, 1.3)
        self.assertEqual(bucket(self.backend.first_byte), 0.5)
        self.assertAlmostEqual(self.backend.first_byte.total, 0.3)

    def test_timeout_counted_under_its_outcome(self) -> None:
        """A backend silent for request_timeout: a 504 observed as timeout, not ok."""
        self.client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.endpoint.succeed()
        self.clock.advance(15.0)
        self.assertTrue(self.client_transport.value().startswith(b"HTTP/1.1 504 "))
        for durations in (self.stats.durations, self.backend.durations):
            self.assertEqual(bucket(durations["timeout"]), 30.0)
            self.assertEqual(durations["ok"].count, 0)
        self.assertEqual(self.backend.first_byte.count, 0)

    def test_no_backend_counts_without_backend_time(self) -> None:
        """A connect that fails: the listener observes backend_unavailable, the backend nothing."""
        self.client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(0.004)
        self.endpoint.fail()
        self.assertTrue(self.client_transport.value().startswith(b"HTTP/1.1 502 "),
                        self.client_transport.value())
        self.assertEqual(bucket(self.stats.durations["backend_unavailable"]), 0.005)
        self.assertEqual([k for k, h in self.backend.durations.items() if h.count], [])


class SessionTests(SynchronousTestCase):
    """tcp: a session is the request; the backend's first byte from the lease."""

    def test_session_durations(self) -> None:
        clock = Clock()
        endpoint = FakeEndpoint()
        pool = BackendPool("b", endpoint, SessionBackend, size=4, clock=clock)
        backend = Backend("b", pool)
        pool.backend = backend
        factory = SessionFactory("l", Admission(100, 100, 5.0, clock=clock),
                                 Cluster("c", [backend]), clock=clock)
        protocol = factory.buildProtocol(None)
        client = StringTransport()
        protocol.makeConnection(client)
        clock.advance(0.2)
        [conn] = endpoint.succeed()
        clock.advance(0.4)
        conn.protocol.dataReceived(b"220 hello\r\n")
        conn.protocol.dataReceived(b"more")  # only the first byte is timed
        clock.advance(2.0)
        protocol.connectionLost(None)
        self.assertEqual((backend.first_byte.count, bucket(backend.first_byte)), (1, 0.5))
        self.assertAlmostEqual(factory.stats.duration_ok.total, 2.6)
        self.assertEqual(bucket(factory.stats.duration_ok), 5.0)
        self.assertAlmostEqual(backend.duration_ok.total, 2.4)
        self.assertEqual(bucket(backend.duration_ok), 2.5)

    def test_rejected_session_observed(self) -> None:
        """A session refused by admission (queue full): observed as rejected, no backend."""
        clock = Clock()
        endpoint = FakeEndpoint()
        pool = BackendPool("b", endpoint, SessionBackend, size=4, clock=clock)
        backend = Backend("b", pool)
        factory = SessionFactory("l", Admission(1, 0, 5.0, clock=clock),
                                 Cluster("c", [backend]), clock=clock)
        first = factory.buildProtocol(None)
        first.makeConnection(StringTransport())
        second = factory.buildProtocol(None)
        second.makeConnection(StringTransport())
        self.assertEqual(factory.stats.durations["rejected"].count, 1)
        self.assertEqual(backend.durations["rejected"].count, 0)


class TransactionTests(SynchronousTestCase):
    """postgres: per transaction, from its first message to the ReadyForQuery passed on."""

    def test_transaction_durations(self) -> None:
        rig = TransactionRig()
        client, out = rig.logged_in()
        [server] = rig.endpoint.open_transports()
        # The start-up's wait for a server login is a request too: counted
        # from here on only.
        stats = rig.factory.stats
        watched = (stats.duration_ok, rig.backend.duration_ok, rig.backend.first_byte)
        before = [(list(h.counts), h.total) for h in watched]
        client.dataReceived(pg.query(b"begin"))
        rig.clock.advance(0.003)
        server.protocol.dataReceived(pg.message(b"C", b"BEGIN\0") + pg.ready_for_query(b"T"))
        client.dataReceived(pg.query(b"commit"))
        rig.clock.advance(0.004)
        self.assertEqual(stats.duration_ok.counts, before[0][0])  # still in the transaction
        server.protocol.dataReceived(pg.message(b"C", b"COMMIT\0") + pg.ready_for_query())
        self.assertTrue(out.value().endswith(pg.ready_for_query()))
        # The listener and the backend: both from the lease taken at once;
        # the first byte: the BEGIN's reply.
        for h, (counts, total), expected, took in zip(watched, before, (0.01, 0.01, 0.005),
                                                      (0.007, 0.007, 0.003)):
            self.assertEqual(bucket(h, counts), expected)
            self.assertAlmostEqual(h.total - total, took)
