"""
Transaction pooling's client side on fakes: a TransactionFactory over a
real BackendPool whose connections go to a scripted server (FakeEndpoint),
on a Clock.  What the real-server tests cannot time or provoke: when
exactly a lease ends, hostile start-ups, timeouts.
"""

from __future__ import annotations

import struct
from typing import Any, List, Tuple

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.backends.breaker import BreakerSettings, CircuitBreaker
from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.backends.pool import BackendPool, BackendProtocol
from poolproxy.codecs import postgres as pg
from poolproxy.codecs.postgres_statements import ClientStatements
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.transaction.auth import Users
from poolproxy.proxy.transaction.client import TransactionFactory, TransactionFrontend
from poolproxy.proxy.transaction.server import KeyedPools
from poolproxy.testing import FakeEndpoint, FakeTransport

WELCOME = (pg.authentication(pg.AUTH_OK) + pg.parameter_status(b"server_version", b"15")
           + pg.backend_key_data(4242, b"skey") + pg.ready_for_query())
SELECT_1 = (pg.message(b"T", b"\x00\x01a\x00" + b"\x00" * 18)
            + pg.message(b"D", b"\x00\x01\x00\x00\x00\x011") + pg.message(b"C", b"SELECT 1\0"))


def messages(data: bytes) -> List[Tuple[bytes, bytes]]:
    return pg.MessageReader().feed(data)


def kinds(data: bytes) -> bytes:
    return b"".join(kind for kind, _ in messages(data))


class Rig:
    def __init__(self, pool_size: int = 1, **factory_args: Any) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        pool: BackendPool = BackendPool("b", self.endpoint, BackendProtocol, size=pool_size,
                                        clock=self.clock, health_interval=3600,
                                        acquire_timeout=5.0)
        self.backend = Backend("b", pool)
        users = Users("trust", None)
        self.backend.shared = KeyedPools(self.backend, lambda key: users.credentials(key[1]),
                                         self.clock, 10.0, 200)
        self.cluster = Cluster("c", [self.backend])
        self.admission = Admission(100, 100, 5.0, clock=self.clock)
        self.factory = TransactionFactory("l", pg.codec, self.admission, self.cluster, users,
                                          clock=self.clock, **factory_args)

    def client(self) -> Tuple[TransactionFrontend, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def server(self) -> FakeTransport:
        """Complete the next server connection and its login."""
        [transport] = self.endpoint.succeed()
        startup, _ = pg.read_startup(transport.value())
        assert startup is not None and startup.is_startup
        transport.clear()
        transport.protocol.dataReceived(WELCOME)
        return transport

    def logged_in(self) -> Tuple[TransactionFrontend, StringTransport]:
        """A client through start-up (trust), the first one opening a server connection."""
        proto, transport = self.client()
        proto.dataReceived(pg.startup_message({b"user": b"app", b"database": b"db"}))
        if self.endpoint.attempts:
            self.server()
        assert kinds(transport.value()).endswith(b"KZ"), transport.value()
        transport.clear()
        return proto, transport


class LeaseTests(SynchronousTestCase):
    def test_lease_per_transaction(self) -> None:
        rig = Rig()
        client, out = rig.logged_in()
        [server] = rig.endpoint.open_transports()
        pool = rig.backend.shared.get((b"db", b"app")).pool  # type: ignore[union-attr]
        self.assertEqual(pool.leased, 0)
        client.dataReceived(pg.query(b"begin"))
        self.assertEqual(pool.leased, 1)
        self.assertEqual(server.value(), pg.query(b"begin"))
        server.protocol.dataReceived(pg.message(b"C", b"BEGIN\0") + pg.ready_for_query(b"T"))
        self.assertEqual(pool.leased, 1)  # in a transaction: kept
        client.dataReceived(pg.query(b"commit"))
        server.protocol.dataReceived(pg.message(b"C", b"COMMIT\0") + pg.ready_for_query())
        self.assertEqual(pool.leased, 0)
        self.assertEqual(kinds(out.value()), b"CZCZ")

    def test_partial_batch_keeps_the_lease(self) -> None:
        """Parse, Describe, Flush: the reply comes, no Sync yet: never released on Flush."""
        rig = Rig()
        client, out = rig.logged_in()
        [server] = rig.endpoint.open_transports()
        pool = rig.backend.shared.get((b"db", b"app")).pool  # type: ignore[union-attr]
        client.dataReceived(pg.message(b"P", b"\0select 1\0\0\0") + pg.message(b"D", b"S\0")
                            + pg.message(b"H"))
        server.protocol.dataReceived(pg.PARSE_COMPLETE + pg.message(b"t", b"\0\0")
                                     + pg.message(b"T", b"\x00\x01a\x00" + b"\x00" * 18))
        self.assertEqual(pool.leased, 1)
        client.dataReceived(pg.message(b"B", b"\0\0\0\0\0\0\0\0") + pg.message(b"E", b"\0\0\0\0\0")
                            + pg.SYNC)
        server.protocol.dataReceived(pg.BIND_COMPLETE + SELECT_1[22 + 5:] + pg.ready_for_query())
        self.assertEqual(pool.leased, 0)

    def test_connect_failures_feed_the_breaker(self) -> None:
        """
        Server connections that cannot be made count against the backend's
        breaker, as other modes' failed connects do: once it opens, clients
        are told at once (57P03) instead of each waiting for a connect.
        """
        rig = Rig()
        breaker = rig.backend.breaker = CircuitBreaker(BreakerSettings(2, 5.0, 5.0),
                                                       clock=rig.clock)
        for _ in range(2):
            client, out = rig.client()
            client.dataReceived(pg.startup_message({b"user": b"app", b"database": b"db"}))
            rig.endpoint.fail()
            [(kind, body)] = messages(out.value())
            self.assertEqual(pg.error_fields(body)["C"], "57P03")
        self.assertEqual(breaker.state, "open")
        attempts = len(rig.endpoint.attempts)
        client, out = rig.client()
        client.dataReceived(pg.startup_message({b"user": b"app", b"database": b"db"}))
        [(kind, body)] = messages(out.value())
        self.assertEqual(pg.error_fields(body)["C"], "57P03")
        self.assertEqual(len(rig.endpoint.attempts), attempts)  # no connect tried

    def test_refused_user_does_not_feed_the_breaker(self) -> None:
        """The server refusing this user (28P01) is the client's problem, not the server's."""
        rig = Rig()
        breaker = rig.backend.breaker = CircuitBreaker(BreakerSettings(1, 5.0, 5.0),
                                                       clock=rig.clock)
        client, out = rig.client()
        client.dataReceived(pg.startup_message({b"user": b"app", b"database": b"db"}))
        [transport] = rig.endpoint.succeed()
        transport.protocol.dataReceived(pg.error_response(
            b"28P01", 'password authentication failed for user "app"', b"FATAL"))
        [(kind, body)] = messages(out.value())
        self.assertEqual(pg.error_fields(body)["C"], "28P01")
        self.assertEqual(breaker.state, "closed")

    def test_sync_alone_answered_without_a_connection(self) -> None:
        rig = Rig()
        client, out = rig.logged_in()
        pool = rig.backend.shared.get((b"db", b"app")).pool  # type: ignore[union-attr]
        client.dataReceived(pg.SYNC)
        self.assertEqual(out.value(), pg.ready_for_query())
        self.assertEqual(pool.leased, 0)

    def test_waiting_client_cancelled(self) -> None:
        """A cancel for a client that waits for a connection: 57014, out of the queue."""
        rig = Rig()
        holder, _ = rig.logged_in()
        holder.dataReceived(pg.query(b"begin"))
        waiting, out = rig.logged_in()
        waiting.dataReceived(pg.query(b"select 1"))
        pool = rig.backend.shared.get((b"db", b"app")).pool  # type: ignore[union-attr]
        self.assertEqual(pool.waiters, 1)
        canceller, ctransport = rig.client()
        pid, key = waiting.key
        canceller.dataReceived(pg.cancel_request(pid, key))
        self.assertTrue(ctransport.disconnecting)
        self.assertEqual(pool.waiters, 0)
        got = messages(out.value())
        self.assertEqual([k for k, _ in got], [b"E", b"Z"])
        self.assertEqual(pg.error_fields(got[0][1])["C"], "57014")

    def test_wrong_cancel_key_does_nothing(self) -> None:
        rig = Rig()
        client, _ = rig.logged_in()
        client.dataReceived(pg.query(b"select pg_sleep(10)"))
        canceller, ctransport = rig.client()
        canceller.dataReceived(pg.cancel_request(client.key[0], b"nope"))
        self.assertTrue(ctransport.disconnecting)
        self.assertEqual(rig.endpoint.attempts, [])  # no cancel connection to the server

    def test_cancel_of_a_running_query_holds_the_connection(self) -> None:
        """The connection goes to nobody else until the server has the cancel (#717)."""
        rig = Rig()
        client, _ = rig.logged_in()
        [server] = rig.endpoint.open_transports()
        client.dataReceived(pg.query(b"select pg_sleep(10)"))
        canceller, _ = rig.client()
        canceller.dataReceived(pg.cancel_request(*client.key))
        [cancel] = rig.endpoint.succeed()  # the proxy's own cancel connection
        self.assertEqual(cancel.value(), pg.cancel_request(4242, b"skey"))
        other, other_out = rig.logged_in()
        other.dataReceived(pg.query(b"select 1"))
        server.protocol.dataReceived(pg.error_response(b"57014", "canceled")
                                     + pg.ready_for_query())
        pool = rig.backend.shared.get((b"db", b"app")).pool  # type: ignore[union-attr]
        self.assertEqual(pool.waiters, 1)  # the cancel is not done yet
        self.assertEqual(server.value().count(b"select 1"), 0)
        cancel.lose()  # the server closes the cancel connection when done
        self.assertIn(pg.query(b"select 1"), server.value())


class HostileClientTests(SynchronousTestCase):
    def test_statements_per_client_bounded(self) -> None:
        """
        A client past its bound of named statements gets 54000 for the next
        Parse, the rest of its batch skipped to Sync as PostgreSQL would, and
        nothing of it reaches the server; closing one makes room.
        """
        rig = Rig()
        client, out = rig.logged_in()
        [server] = rig.endpoint.open_transports()
        client.statements = ClientStatements(max_statements=1)
        client.dataReceived(pg.message(b"P", b"s1\0select 1\0\0\0") + pg.SYNC)
        self.assertIn(b"select 1", server.value())
        server.protocol.dataReceived(pg.PARSE_COMPLETE + pg.ready_for_query())
        self.assertEqual(kinds(out.value()), b"1Z")
        out.clear()
        server.clear()
        client.dataReceived(pg.message(b"P", b"s2\0select 2\0\0\0")
                            + pg.message(b"B", b"\0s2\0\0\0\0\0\0\0")
                            + pg.message(b"E", b"\0\0\0\0\0") + pg.SYNC)
        self.assertNotIn(b"select 2", server.value())
        self.assertNotIn(b"s2", server.value())
        server.protocol.dataReceived(pg.ready_for_query())  # the server's answer to the Sync
        got = messages(out.value())
        self.assertEqual([k for k, _ in got], [b"E", b"Z"])
        self.assertEqual(pg.error_fields(got[0][1])["C"], "54000")
        self.assertEqual(list(client.statements.named), [b"s1"])
        out.clear()
        client.dataReceived(pg.message(b"C", b"Ss1\0") + pg.SYNC)
        self.assertEqual(kinds(out.value()), b"3Z")
        out.clear()
        client.dataReceived(pg.message(b"P", b"s2\0select 2\0\0\0") + pg.SYNC)
        server.protocol.dataReceived(pg.PARSE_COMPLETE + pg.ready_for_query())
        self.assertEqual(kinds(out.value()), b"1Z")
        self.assertEqual(list(client.statements.named), [b"s2"])

    def test_garbage_start_up(self) -> None:
        rig = Rig()
        client, out = rig.client()
        client.dataReceived(struct.pack("!II", 8, 1234))
        got = messages(out.value())
        self.assertEqual(pg.error_fields(got[0][1])["C"], "08P01")
        self.assertTrue(out.disconnecting)

    def test_huge_start_up(self) -> None:
        rig = Rig()
        client, out = rig.client()
        client.dataReceived(struct.pack("!II", 1 << 20, pg.PROTOCOL_3_0))
        self.assertTrue(out.disconnecting)
        self.assertEqual(rig.endpoint.attempts, [])

    def test_start_up_never_finished(self) -> None:
        """A client that sends half a start-up packet and waits: closed at header_timeout."""
        rig = Rig(login_timeout=10.0)
        client, out = rig.client()
        client.dataReceived(pg.startup_message({b"user": b"app"})[:6])
        rig.clock.advance(9)
        self.assertFalse(out.disconnecting)
        rig.clock.advance(1)
        self.assertTrue(out.disconnecting)
        self.assertEqual(rig.factory.stats.timeouts["head"], 1)

    def test_ssl_request_without_tls(self) -> None:
        rig = Rig()
        client, out = rig.client()
        client.dataReceived(struct.pack("!II", 8, pg.SSL_REQUEST))
        self.assertEqual(out.value(), b"N")
        client.dataReceived(pg.startup_message({b"user": b"app", b"database": b"db"}))
        rig.server()
        self.assertTrue(kinds(out.value()[1:]).endswith(b"KZ"))

    def test_message_over_the_limit(self) -> None:
        rig = Rig(max_message=1000)
        client, out = rig.logged_in()
        client.dataReceived(b"Q" + struct.pack("!I", 5000) + b"x" * 100)
        got = messages(out.value())
        self.assertEqual(pg.error_fields(got[0][1])["C"], "54000")
        self.assertTrue(out.disconnecting)

    def test_client_leaves_mid_transaction(self) -> None:
        """The connection is rolled back before anyone else gets it."""
        rig = Rig()
        client, _ = rig.logged_in()
        [server] = rig.endpoint.open_transports()
        client.dataReceived(pg.query(b"begin"))
        server.protocol.dataReceived(pg.message(b"C", b"BEGIN\0") + pg.ready_for_query(b"T"))
        server.clear()
        client.connectionLost(None)
        self.assertEqual(server.value(), pg.query(b"ROLLBACK"))
        pool = rig.backend.shared.get((b"db", b"app")).pool  # type: ignore[union-attr]
        self.assertEqual(pool.leased, 1)  # still being reset
        server.protocol.dataReceived(pg.message(b"C", b"ROLLBACK\0") + pg.ready_for_query())
        self.assertEqual((pool.leased, pool.idle), (0, 1))

    def test_reset_that_never_answers(self) -> None:
        rig = Rig()
        client, _ = rig.logged_in()
        [server] = rig.endpoint.open_transports()
        client.dataReceived(pg.query(b"begin"))
        client.connectionLost(None)
        rig.clock.advance(10)
        self.assertTrue(server.aborted)
