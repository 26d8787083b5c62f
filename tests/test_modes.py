"""
The mode table (L{poolproxy.proxy.modes}): each codec's mode decides, in one
record, what serves its clients, what speaks to its backends, what is kept
beside each pool, the default policy, the health probe and the idle sweep;
a cluster assembled for a codec gets exactly those parts.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.assemble import ClusterAssembly
from poolproxy.codec import BaseCodec
from poolproxy.codecs.http import codec as http_codec
from poolproxy.codecs.memcached import codec as memcached_codec
from poolproxy.codecs.redis import codec as redis_codec
from poolproxy.codecs.tcp import codec as tcp_codec
from poolproxy.config import ProxyConfig, codec_options
from poolproxy.proxy.admission import Admission
from poolproxy.codecs import postgres as pg
from poolproxy.codecs.postgres import codec as postgres_codec
from poolproxy.proxy.transaction.client import TransactionFactory
from poolproxy.proxy.transaction.server import KeyedPools
from poolproxy.proxy.modes import MODES, mode_of
from poolproxy.proxy.multiplexed.client import MultiplexFactory
from poolproxy.proxy.multiplexed.server import Multiplexer, PipelineBackend
from poolproxy.proxy.request import HttpBackend, HttpFactory
from poolproxy.proxy.session import SessionBackend, SessionFactory
from poolproxy.testing import FakeEndpoint
from tests.support import line_codec


def assemble(codec: Any, **settings: Any) -> ClusterAssembly:
    settings.setdefault("listen", ("tcp:0",))
    settings.setdefault("backend", ("127.0.0.1:1", "127.0.0.1:2"))
    config = ProxyConfig(**settings)
    clock = Clock()
    return ClusterAssembly(config.clusters[0], config, clock, Admission(10, 10, 1.0, clock=clock),
                           codec_options(config), codec)


class ModeTableTests(SynchronousTestCase):
    def test_every_shipped_codec_has_a_mode(self) -> None:
        """The four modes, and each shipped codec (and the example) finds its own."""
        self.assertEqual(sorted(MODES), ["multiplexed", "request", "session", "transaction"])
        for codec in (tcp_codec, http_codec, redis_codec, memcached_codec, postgres_codec,
                      line_codec()):
            self.assertIs(mode_of(codec), MODES[codec.mode])

    def test_unknown_mode(self) -> None:
        """A codec naming a mode nobody serves is refused, naming the modes there are."""
        class Odd(BaseCodec):
            name, mode = "odd", "telepathic"

        error = self.assertRaises(ValueError, mode_of, Odd())
        self.assertIn("'telepathic'", str(error))
        self.assertIn("modes are session, request, multiplexed, transaction", str(error))

    def test_transaction(self) -> None:
        """postgres: TransactionFactory, a pool per (database, user) beside each backend."""
        assembly = assemble(postgres_codec, auth_type="trust")
        self.assertIsInstance(assembly.frontend("l"), TransactionFactory)
        for backend in assembly.cluster.backends:
            self.assertIsInstance(backend.shared, KeyedPools)
            keyed = backend.shared.get((b"db", b"user"))
            self.assertIs(backend.shared.get((b"db", b"user")), keyed)
            self.assertIsNot(backend.shared.get((b"db", b"other")), keyed)
            self.assertEqual(keyed.pool.size, backend.pool.size)
        self.assertEqual(assembly.cluster.policy_name, "round_robin")

    def test_transaction_probe_logs_in(self) -> None:
        """
        postgres health checks log in as auth_user (else backend_username)
        to check_database; with neither, they connect, and one line per
        cluster says why.
        """
        for settings, user in (({"auth_user": "authq", "backend_username": "pooled"}, b"authq"),
                               ({"backend_username": "pooled"}, b"pooled")):
            assembly = assemble(postgres_codec, auth_type="trust", check_database="health",
                                **settings)
            endpoint = FakeEndpoint()
            assembly.mode.probe(endpoint, assembly.context)()
            [transport] = endpoint.succeed()
            startup, _ = pg.read_startup(transport.value())
            assert startup is not None
            self.assertEqual((startup.user, startup.database), (user, b"health"))

        with capturedLogs() as events:
            assembly = assemble(postgres_codec, auth_type="trust")
        said = [formatEvent(e) for e in events if "health checks" in formatEvent(e)]
        self.assertEqual(len(said), 1, said)  # two backends, one line
        self.assertIn("neither is set", said[0])
        endpoint = FakeEndpoint()
        assembly.mode.probe(endpoint, assembly.context)()
        [transport] = endpoint.succeed()
        self.assertEqual(transport.value(), b"")  # a TCP connect

    def test_session(self) -> None:
        """tcp: SessionFactory, SessionBackend, nothing shared, round robin, its own idle timeout."""
        assembly = assemble(tcp_codec)
        self.assertIsInstance(assembly.frontend("l"), SessionFactory)
        for backend in assembly.cluster.backends:
            self.assertIs(backend.pool.protocol_factory, SessionBackend)
            self.assertIsNone(backend.shared)
        self.assertEqual(assembly.cluster.policy_name, "round_robin")
        self.assertEqual(assembly.mode.idle_timeout, "session_idle_timeout")

    def test_request(self) -> None:
        """http: HttpFactory, HttpBackend, nothing shared, least outstanding."""
        assembly = assemble(http_codec)
        factory = assembly.frontend("l")
        self.assertIsInstance(factory, HttpFactory)
        self.assertIs(factory.retry_budget, assembly.cluster.retry_budget)
        backend = assembly.cluster.backends[0]
        self.assertIsInstance(backend.pool.protocol_factory(), HttpBackend)
        self.assertIsNone(backend.shared)
        self.assertEqual(assembly.cluster.policy_name, "least_outstanding")
        self.assertEqual(assembly.mode.idle_timeout, "client_idle_timeout")

    def test_multiplexed(self) -> None:
        """
        redis: MultiplexFactory, PipelineBackend naming its backend, a
        Multiplexer of mux_connections beside each pool, consistent hashing.
        """
        assembly = assemble(redis_codec, mux_connections=3)
        self.assertIsInstance(assembly.frontend("l"), MultiplexFactory)
        for backend in assembly.cluster.backends:
            protocol = backend.pool.protocol_factory()
            self.assertIsInstance(protocol, PipelineBackend)
            self.assertIs(protocol.cluster_backend, backend)
            self.assertIsInstance(backend.shared, Multiplexer)
            self.assertEqual(backend.shared.size, 3)
            self.assertIs(backend.shared.pool, backend.pool)
        self.assertEqual(assembly.cluster.policy_name, "consistent_hash")
        self.assertTrue(assembly.cluster.sharded)

    def test_a_cluster_balance_wins(self) -> None:
        """A configured policy replaces the mode's default."""
        self.assertEqual(assemble(redis_codec, balance="random").cluster.policy_name, "random")

    def test_variants_only_for_variant_codecs(self) -> None:
        """redis's shared connections can switch to RESP3; memcached's have no variants."""
        redis = assemble(redis_codec).cluster.backends[0].shared
        self.assertEqual([f.data for f in redis.for_variant(3).setup],
                         [b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"])
        memcached = assemble(memcached_codec).cluster.backends[0].shared
        self.assertEqual(memcached.for_variant(3).setup, [])
