"""
What an operator of transaction pooling (postgres) sees: the counters a
listener keeps per (database, user), pins, cancels and resets; the pools
per (database, user) in /metrics and /status.  A real L{TransactionFactory}
and real pools on a L{Clock}, clients on L{StringTransport}s and server
connections on a L{FakeEndpoint} whose replies the test writes.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.backends.pool import BackendPool, BackendProtocol
from poolproxy.codecs import postgres as pg
from poolproxy.codecs.postgres import codec as postgres_codec
from poolproxy.codecs.postgres_sql import LABELS
from poolproxy.ops.metrics import build_registry
from poolproxy.ops.pools import serving_pools
from poolproxy.ops.rejections import RejectionSummary
from poolproxy.ops.status import RateSampler, render_html, status_snapshot
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.transaction.auth import Users
from poolproxy.proxy.transaction.client import TransactionFactory, TransactionFrontend
from poolproxy.proxy.transaction.server import KeyedPools
from poolproxy.proxy.transaction.stats import CANCEL_OUTCOMES, PIN_REASONS, RESET_KINDS
from poolproxy.testing import FakeEndpoint, FakeTransport
from tests.test_ops_view import FakeListener, FakeProxy

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "docs", "metrics.md")

#: A server's answer to a login: trust, its parameters, its key, ready.
LOGIN = (pg.authentication(pg.AUTH_OK) + pg.parameter_status(b"server_version", b"15.0")
         + pg.backend_key_data(4242, b"\0\0\0\7") + pg.ready_for_query())


def done(tag: bytes = b"SELECT 1", status: bytes = b"I") -> bytes:
    """CommandComplete, then ReadyForQuery with C{status}."""
    return pg.message(b"C", tag + b"\0") + pg.ready_for_query(status)


def parse(sql: bytes) -> bytes:
    return pg.message(b"P", b"\0" + sql + b"\0\x00\x00")


BIND = pg.message(b"B", b"\0\0" + b"\x00\x00\x00\x00\x00\x00")
EXECUTE = pg.message(b"E", b"\0\x00\x00\x00\x00")


class PgClient:
    """One client connection: what it sends, what it got."""

    def __init__(self, protocol: TransactionFrontend, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, *messages: bytes) -> None:
        self.protocol.dataReceived(b"".join(messages))

    def kinds(self) -> bytes:
        """The types of the messages received since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return b"".join(kind for kind, _ in pg.MessageReader().feed(data))

    def leave(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Harness:
    """
    One transaction-mode listener ("front") in front of one backend
    ("db1:5432", cluster "pg"), users trusted, on a L{Clock}.
    """

    def __init__(self, pool_size: int = 2, session_pooling: bool = False,
                 reset_timeout: float = 5.0, acquire_timeout: float = 5.0) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        base: BackendPool = BackendPool("db1:5432", self.endpoint, BackendProtocol,
                                        size=pool_size, acquire_timeout=acquire_timeout,
                                        clock=self.clock, cluster="pg")
        self.backend = Backend("db1:5432", base)
        self.users = Users("trust", None)
        self.backend.shared = KeyedPools(self.backend,
                                         lambda key: self.users.credentials(key[1]),
                                         self.clock, reset_timeout, 100)
        self.cluster = Cluster("pg", [self.backend])
        self.admission = Admission(10, 10, 30.0, clock=self.clock)
        self.factory = TransactionFactory("front", postgres_codec, self.admission, self.cluster,
                                          self.users, clock=self.clock,
                                          session_pooling=session_pooling)
        self.stats = self.factory.stats
        self.view = FakeProxy({"pg": self.cluster},
                              [FakeListener("front", "tcp:6432", self.cluster, self.stats)],
                              self.admission, self.clock)

    def connect(self) -> PgClient:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return PgClient(protocol, transport)

    def client(self, database: bytes = b"app", user: bytes = b"app") -> PgClient:
        """A client that sent its start-up (answered if its pair has logged in before)."""
        client = self.connect()
        client.send(pg.startup_message({b"user": user, b"database": database}))
        return client

    def login(self) -> FakeTransport:
        """Complete the oldest connect: a server connection that logs in."""
        [server] = self.endpoint.succeed()
        server.clear()
        server.protocol.dataReceived(LOGIN)
        return server

    def logged_in(self, database: bytes = b"app", user: bytes = b"app") -> PgClient:
        """A client of a pair not seen yet, past its start-up (its pair's first login)."""
        client = self.client(database, user)
        self.login()
        client.kinds()
        return client

    def counts(self, database: bytes = b"app", user: bytes = b"app") -> Any:
        return self.stats.keys[(database, user)]

    def sample(self, name: str, **labels: str) -> Optional[float]:
        value: Optional[float] = build_registry(self.view).get_sample_value(name, labels)
        return value

    def snapshot(self) -> Dict[str, Any]:
        return status_snapshot(self.view, RateSampler(self.clock))


def answer(server: FakeTransport, data: bytes) -> None:
    server.protocol.dataReceived(data)


class CountingTests(SynchronousTestCase):
    """Transactions, queries, the wait for a connection and the lease, per (database, user)."""

    def test_a_transaction(self) -> None:
        """
        The first client waits for its pair's login (a wait, a lease, no
        transaction); a query then leases the idle connection at once and
        counts one transaction, one query and how long it was held.
        """
        h = Harness()
        client = h.client()
        h.clock.advance(0.2)
        [server] = h.endpoint.succeed()
        server.clear()
        answer(server, LOGIN)
        self.assertEqual(client.kinds(), b"RSKZ")
        counts = h.counts()
        self.assertEqual((counts.wait.count, counts.wait.total), (1, 0.2))
        self.assertEqual((counts.transactions, counts.queries, counts.held.count), (0, 0, 1))

        h.clock.advance(1)
        client.send(pg.query(b"select 1"))
        self.assertEqual(server.value(), pg.query(b"select 1"))
        h.clock.advance(0.05)
        answer(server, done())
        self.assertEqual(client.kinds(), b"CZ")
        self.assertEqual((counts.transactions, counts.queries), (1, 1))
        self.assertEqual(counts.wait.count, 2)
        self.assertEqual(counts.wait.total, 0.2)  # the idle connection came at once
        self.assertEqual(counts.held.count, 2)
        self.assertAlmostEqual(counts.held.total, 0.05)
        labels = {"listener": "front", "database": "app", "user": "app"}
        self.assertEqual(h.sample("poolproxy_postgres_transactions_total", **labels), 1)
        self.assertEqual(h.sample("poolproxy_postgres_queries_total", **labels), 1)
        self.assertEqual(h.sample("poolproxy_postgres_wait_seconds_count", **labels), 2)
        self.assertEqual(h.sample("poolproxy_postgres_wait_seconds_bucket", le="0.25",
                                  **labels), 2)
        self.assertEqual(h.sample("poolproxy_postgres_wait_seconds_bucket", le="0.1",
                                  **labels), 1)
        self.assertAlmostEqual(h.sample("poolproxy_postgres_transaction_seconds_sum", **labels),
                               0.05)

    def test_statement_definitions(self) -> None:
        """Distinct named-statement definitions, and those the bound forgot."""
        h = Harness()
        client = h.logged_in()
        h.factory.statement_names.max_definitions = 1
        [server] = h.endpoint.transports
        for name, sql in [(b"s1", b"select 1"), (b"s2", b"select 2")]:
            client.send(pg.message(b"P", name + b"\0" + sql + b"\0\0\0") + pg.SYNC)
            answer(server, pg.PARSE_COMPLETE + pg.ready_for_query())
        self.assertEqual(h.sample("poolproxy_postgres_statement_definitions", listener="front"), 1)
        self.assertEqual(h.sample("poolproxy_postgres_statement_definitions_forgotten_total",
                                  listener="front"), 1)

    def test_a_transaction_block(self) -> None:
        """BEGIN ... COMMIT over several reads: one lease, one transaction, three queries."""
        h = Harness()
        client = h.logged_in()
        client.send(pg.query(b"begin"))
        [server] = h.endpoint.transports
        answer(server, done(b"BEGIN", b"T"))
        client.send(pg.query(b"insert into t values (1)"))
        answer(server, done(b"INSERT 0 1", b"T"))
        h.clock.advance(0.3)
        client.send(pg.query(b"commit"))
        answer(server, done(b"COMMIT"))
        counts = h.counts()
        self.assertEqual((counts.transactions, counts.queries), (1, 3))
        self.assertEqual(counts.held.count, 2)  # the login's lease, this one
        self.assertAlmostEqual(counts.held.total, 0.3)

    def test_extended_protocol_counts_executes(self) -> None:
        """Each Execute is a query; Parse, Bind and Sync are not; one Sync, one transaction."""
        h = Harness()
        client = h.logged_in()
        client.send(parse(b"select 1"), BIND, EXECUTE, BIND, EXECUTE, pg.SYNC)
        [server] = h.endpoint.transports
        answer(server, pg.PARSE_COMPLETE + pg.BIND_COMPLETE + pg.message(b"C", b"SELECT 1\0")
               + pg.BIND_COMPLETE + done())
        self.assertEqual(client.kinds(), b"12C2CZ")
        self.assertEqual((h.counts().transactions, h.counts().queries), (1, 2))

    def test_waiting_for_the_pool(self) -> None:
        """
        With the pool's one connection in a transaction, a second client
        waits: /status shows it waiting and for how long; its wait is
        observed once it gets the connection.
        """
        h = Harness(pool_size=1)
        first = h.logged_in()
        first.send(pg.query(b"begin"))
        [server] = h.endpoint.transports
        answer(server, done(b"BEGIN", b"T"))
        second = h.client()
        self.assertEqual(second.kinds(), b"RSKZ")  # the pair's parameters are known
        h.clock.advance(0.1)
        second.send(pg.query(b"select 2"))
        h.clock.advance(0.3)
        [pool] = h.snapshot()["clusters"][0]["pools"]
        self.assertEqual((pool["clients_active"], pool["clients_waiting"], pool["longest_wait"]),
                         (1, 1, 0.3))
        labels = {"cluster": "pg", "backend": "db1:5432", "database": "app", "user": "app"}
        self.assertEqual(h.sample("poolproxy_pool_waiters", **labels), 1)
        self.assertAlmostEqual(h.sample("poolproxy_pool_longest_wait_seconds", **labels), 0.3)
        first.send(pg.query(b"commit"))
        answer(server, done(b"COMMIT"))
        self.assertEqual(server.value()[-len(pg.query(b"select 2")):], pg.query(b"select 2"))
        counts = h.counts()
        self.assertEqual(counts.wait.count, 3)  # login, first's begin, second's select
        self.assertAlmostEqual(counts.wait.total, 0.3)
        self.assertEqual(h.sample("poolproxy_pool_longest_wait_seconds", **labels), 0)

    def test_abandoned_transaction(self) -> None:
        """
        A client that leaves mid-transaction: not a completed transaction,
        but its queries and its lease count, and the connection is rolled back.
        """
        h = Harness()
        client = h.logged_in()
        client.send(pg.query(b"begin"))
        [server] = h.endpoint.transports
        answer(server, done(b"BEGIN", b"T"))
        h.clock.advance(2)
        server.clear()
        client.leave()
        counts = h.counts()
        self.assertEqual((counts.transactions, counts.queries), (0, 1))
        self.assertEqual(counts.held.count, 2)
        self.assertEqual(counts.held.total, 2)
        self.assertEqual(server.value(), pg.query(b"ROLLBACK"))
        self.assertEqual(h.backend.shared.pools[(b"app", b"app")].resets["rollback"], 1)

    def test_keys_are_apart(self) -> None:
        """Each (database, user) its own series; a pair whose login failed gets none."""
        h = Harness()
        h.logged_in(b"app", b"app")
        h.logged_in(b"reports", b"app")
        nobody = h.client(b"nodb", b"app")
        [server] = h.endpoint.succeed()
        answer(server, pg.error_response(pg.UNKNOWN_DATABASE, 'database "nodb" does not exist',
                                         b"FATAL"))
        self.assertIn(b"E", nobody.kinds())
        h.clock.advance(1)
        self.assertEqual(sorted(h.stats.keys), [(b"app", b"app"), (b"reports", b"app")])
        families = {s.labels["database"] for f in build_registry(h.view).collect()
                    for s in f.samples if f.name == "poolproxy_postgres_transactions"}
        self.assertEqual(families, {"app", "reports"})


class PinningTests(SynchronousTestCase):
    def test_pinned_by_a_statement(self) -> None:
        """
        SET pins the client, by reason; its transactions still count one
        by one (a notification while it is idle is none); /status and the
        gauge show it pinned; when it leaves, its lease (its session) is
        observed once and the connection gets DISCARD ALL.
        """
        h = Harness()
        client = h.logged_in()
        client.send(pg.query(b"set search_path = other"))
        [server] = h.endpoint.transports
        answer(server, done(b"SET"))
        client.send(pg.query(b"select 1"))
        answer(server, done())
        answer(server, pg.message(b"A", b"\0\0\0\1chan\0payload\0"))
        counts = h.counts()
        self.assertEqual((counts.transactions, counts.queries), (2, 2))
        self.assertEqual(h.sample("poolproxy_postgres_pinned_total", listener="front",
                                  reason="set"), 1)
        self.assertEqual(h.snapshot()["clusters"][0]["pools"][0]["pinned"], 1)
        self.assertEqual(h.sample("poolproxy_postgres_pinned_clients", cluster="pg",
                                  backend="db1:5432", database="app", user="app"), 1)
        held = counts.held.count
        h.clock.advance(7)
        server.clear()
        client.leave()
        self.assertEqual(counts.held.count, held + 1)
        self.assertEqual(server.value(), pg.query(b"DISCARD ALL"))
        self.assertEqual(h.backend.shared.pools[(b"app", b"app")].resets["discard"], 1)
        self.assertEqual(h.sample("poolproxy_postgres_pinned_clients", cluster="pg",
                                  backend="db1:5432", database="app", user="app"), 0)

    def test_session_pooling(self) -> None:
        """pool_mode = session: every client is pinned, reason "session"."""
        h = Harness(session_pooling=True)
        h.logged_in()
        h.client()
        self.assertEqual(h.stats.pinned["session"], 2)

    def test_every_reason_exported(self) -> None:
        """Every pin reason, cancel outcome and reset kind is a series from the start."""
        h = Harness()
        h.logged_in()
        self.assertEqual(set(PIN_REASONS), set(LABELS) | {"session"})
        for reason in PIN_REASONS:
            self.assertEqual(h.sample("poolproxy_postgres_pinned_total", listener="front",
                                      reason=reason), 0)
        for outcome in CANCEL_OUTCOMES:
            self.assertEqual(h.sample("poolproxy_postgres_cancels_total", listener="front",
                                      outcome=outcome), 0)
        for kind in RESET_KINDS:
            self.assertEqual(h.sample("poolproxy_postgres_server_resets_total", cluster="pg",
                                      backend="db1:5432", database="app", user="app",
                                      kind=kind), 0)


class CancelTests(SynchronousTestCase):
    """CancelRequests by outcome, counted on the listener that got them."""

    def cancel(self, h: Harness, key: Tuple[int, bytes]) -> None:
        canceller = h.connect()
        canceller.send(pg.cancel_request(*key))

    def test_outcomes(self) -> None:
        h = Harness(pool_size=1)
        running = h.logged_in()
        self.cancel(h, (12345, b"nope"))
        self.cancel(h, running.protocol.key)  # idle: nothing to cancel
        running.send(pg.query(b"select pg_sleep(10)"))
        self.cancel(h, running.protocol.key)
        self.assertEqual(len(h.endpoint.attempts), 1)  # the CancelRequest's own connection
        waiting = h.client()
        waiting.kinds()
        waiting.send(pg.query(b"select 1"))
        self.cancel(h, waiting.protocol.key)
        self.assertEqual(waiting.kinds(), b"EZ")
        self.assertEqual(dict(h.stats.cancels.items()),
                         {"forwarded": 1, "dequeued": 1, "nothing_running": 1, "unknown_key": 1,
                          "forwarded_to_worker": 0})


class ResetTests(SynchronousTestCase):
    def test_reset_that_does_not_finish(self) -> None:
        """A reset unanswered within server_reset_timeout: failed, the connection closed."""
        h = Harness(reset_timeout=2.0)
        client = h.logged_in()
        client.send(pg.query(b"begin"))
        [server] = h.endpoint.transports
        answer(server, done(b"BEGIN", b"T"))
        client.leave()
        h.clock.advance(2)
        resets = h.backend.shared.pools[(b"app", b"app")].resets
        self.assertEqual((resets["rollback"], resets["failed"]), (1, 1))
        self.assertTrue(server.aborted)

    def test_connection_lost_during_reset(self) -> None:
        """A server connection that dies while it is reset: failed, once."""
        h = Harness()
        client = h.logged_in()
        client.send(pg.query(b"set role x"))
        [server] = h.endpoint.transports
        answer(server, done(b"SET"))
        client.leave()
        server.lose()
        resets = h.backend.shared.pools[(b"app", b"app")].resets
        self.assertEqual((resets["discard"], resets["failed"]), (1, 1))
        h.clock.advance(5)  # its reset timer is gone with it: not failed twice
        self.assertEqual(resets["failed"], 1)

    def test_reset_done(self) -> None:
        """A reset that completes: counted by kind, the connection idle again."""
        h = Harness()
        client = h.logged_in()
        client.send(pg.query(b"begin"))
        [server] = h.endpoint.transports
        answer(server, done(b"BEGIN", b"T"))
        client.leave()
        answer(server, done(b"ROLLBACK"))
        keyed = h.backend.shared.pools[(b"app", b"app")]
        self.assertEqual(dict(keyed.resets.items()), {"rollback": 1, "discard": 0, "failed": 0})
        self.assertEqual((keyed.pool.idle, keyed.pool.leased), (1, 0))


class PoolViewTests(SynchronousTestCase):
    """The pools per (database, user) in /metrics and /status; the backend's own is not one."""

    def test_metrics_per_database_and_user(self) -> None:
        """
        Every pool family has database and user labels; the keyed pools are
        there, the backend's own pool (which only probes) is not; its
        reachability is still poolproxy_backend_up.
        """
        h = Harness()
        h.logged_in(b"app", b"app")
        h.logged_in(b"app", b"other")
        h.backend.pool._connect()  # the own pool's probe: a connection no client can have
        h.endpoint.succeed()
        self.assertEqual(h.backend.pool.idle, 1)
        registry = build_registry(h.view)
        idle = {(s.labels["database"], s.labels["user"]): s.value
                for f in registry.collect() if f.name == "poolproxy_pool_connections"
                for s in f.samples if s.labels["state"] == "idle"}
        self.assertEqual(idle, {("app", "app"): 1, ("app", "other"): 1})
        for family in registry.collect():
            if family.name.startswith("poolproxy_pool_"):
                for s in family.samples:
                    self.assertIn("database", s.labels, family.name)
                    self.assertNotEqual(s.labels["database"], "", family.name)
        self.assertEqual(registry.get_sample_value(
            "poolproxy_backend_up", {"cluster": "pg", "backend": "db1:5432"}), 1)
        self.assertEqual(registry.get_sample_value(
            "poolproxy_pool_size", {"cluster": "pg", "backend": "db1:5432", "database": "app",
                                    "user": "other"}), 2)

    def test_status(self) -> None:
        """
        /status.json: a pool per (database, user) with its clients and
        connections; the backend's row sums them.  /status: a row each,
        every name escaped.
        """
        h = Harness(pool_size=3)
        hostile = b'<script>alert("x")</script>'
        a = h.logged_in(b"app", b"app")
        h.logged_in(hostile, b"app")
        a.send(pg.query(b"begin"))
        snapshot = h.snapshot()
        [cluster] = snapshot["clusters"]
        self.assertEqual(cluster["pools"], [
            {"backend": "db1:5432", "database": hostile.decode(), "user": "app",
             "clients_active": 0, "clients_waiting": 0, "longest_wait": 0.0, "pinned": 0,
             "idle": 1, "connecting": 0, "total": 1, "size": 3, "last_error": None},
            {"backend": "db1:5432", "database": "app", "user": "app",
             "clients_active": 1, "clients_waiting": 0, "longest_wait": 0.0, "pinned": 0,
             "idle": 0, "connecting": 0, "total": 1, "size": 3, "last_error": None},
        ])
        self.assertEqual(cluster["backends"][0]["pool"],
                         {"idle": 1, "active": 1, "connecting": 0, "waiters": 0, "size": 6})
        page = render_html(snapshot)
        self.assertNotIn("<script>", page)
        self.assertIn("<h3>Pools of cluster pg", page)
        self.assertEqual(page.count("<tr><td>db1:5432</td>"), 2)

    def test_status_says_why_a_login_failed(self) -> None:
        """A pool whose new login fails (a password changed) shows the server's reason."""
        h = Harness()
        first = h.logged_in()
        first.send(pg.query(b"begin"))
        second = h.client()
        second.send(pg.query(b"select 1"))
        [server] = h.endpoint.succeed()
        answer(server, pg.error_response(pg.INVALID_PASSWORD,
                                         'password authentication failed for user "app"',
                                         b"FATAL"))
        self.assertIn(b"E", second.kinds())
        [pool] = h.snapshot()["clusters"][0]["pools"]
        self.assertIn("password authentication failed", pool["last_error"])
        self.assertIn("password authentication failed", render_html(h.snapshot()))

    def test_other_modes_unchanged(self) -> None:
        """A backend that keeps no keyed pools is its own pool, with empty labels."""
        clock = Clock()
        pool: BackendPool = BackendPool("b", FakeEndpoint(), BackendProtocol, clock=clock,
                                        cluster="c")
        Backend("b", pool)
        [serving] = serving_pools([pool])
        self.assertIs(serving.pool, pool)
        self.assertEqual(serving.labels, ["c", "b", "", ""])

    def test_every_family_documented(self) -> None:
        """Every postgres family and pool family exported here has its row in docs/metrics.md."""
        h = Harness()
        h.logged_in()
        with open(DOCS, encoding="utf-8") as f:
            docs = f.read()
        names = [f.name + "_total" if f.type == "counter" else f.name
                 for f in build_registry(h.view).collect() if f.name.startswith("poolproxy_")]
        self.assertIn("poolproxy_postgres_server_resets_total", names)
        missing = [name for name in names
                   if not re.search(r"^\|\s*`" + re.escape(name) + r"`\s*\|", docs, re.MULTILINE)]
        self.assertEqual(missing, [])


class RejectionLineTests(SynchronousTestCase):
    def test_keyed_pool_failures_summed(self) -> None:
        """A (database, user) pool's acquire timeouts reach the per-interval rejection line."""
        h = Harness(pool_size=1, acquire_timeout=1.0)
        first = h.logged_in()
        first.send(pg.query(b"begin"))
        second = h.client()
        second.send(pg.query(b"select 1"))
        lines: List[str] = []

        def observe(event: Dict[str, Any]) -> None:
            if event.get("log_level") == LogLevel.warn and "counts" in event:
                lines.append(event["details"])
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        summary = RejectionSummary(h.admission, lambda: h.view.pools, h.clock, interval=10.0)
        summary.start()
        self.addCleanup(summary.stop)
        h.clock.advance(1)
        self.assertIn(b"E", second.kinds())
        h.clock.advance(10)
        self.assertEqual(lines, ["db1:5432 timeout: 1"])


class CostTests(SynchronousTestCase):
    def test_client_attributes_in_slots(self) -> None:
        """
        A client's attributes are all in TransactionFrontend's __slots__
        (but the transport's, BaseProtocol's): past 30 in its instance dict,
        CPython makes every attribute of every client dearer.
        """
        h = Harness(session_pooling=True)
        client = h.logged_in()
        client.send(parse(b"select 1"), BIND, EXECUTE, pg.SYNC)
        self.assertEqual(sorted(vars(client.protocol)), ["connected", "transport"])
