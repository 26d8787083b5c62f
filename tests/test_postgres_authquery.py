"""
auth_query (poolproxy.proxy.transaction.lookup) and the users file
(poolproxy.proxy.transaction.auth.Users): a client whose user is not in the
file is looked up on the server, as auth_user, on a pooled connection; its
authentication waits for the answer, within auth_query_timeout.

The proxy's side is real (ClusterAssembly, TransactionFrontend, KeyedPools,
ServerConnection); the servers are scripted by the test on FakeEndpoint
transports, and the clients are StringTransports, on a Clock.
"""

from __future__ import annotations

import os
import struct
from typing import Any, List, Optional, Tuple

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.assemble import ClusterAssembly
from poolproxy.codecs import postgres as pg
from poolproxy.codecs.postgres import codec as postgres_codec
from poolproxy.codecs.postgres_auth import (Credential, ScramClientExchange, ScramSecret,
                                            ScramServerExchange, md5_check, md5_hash,
                                            md5_response)
from poolproxy.config import AUTH_QUERY, ConfigError, ProxyConfig, codec_options
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.transaction.auth import Users
from poolproxy.proxy.transaction.lookup import credential_of, data_row, lookup_messages
from poolproxy.testing import FakeEndpoint, FakeTransport

AUTH_OK = pg.authentication(pg.AUTH_OK)
WELCOME = (AUTH_OK + pg.parameter_status(b"server_version", b"15.0")
           + pg.backend_key_data(7, b"kkkk") + pg.ready_for_query())


def row(*values: Optional[bytes]) -> bytes:
    body = struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return pg.message(b"D", body)


def answer(*rows: bytes) -> bytes:
    """The server's answer to auth_query's Parse, Bind, Execute, Sync."""
    return (pg.PARSE_COMPLETE + pg.BIND_COMPLETE + b"".join(rows)
            + pg.message(b"C", b"SELECT %d\0" % len(rows)) + pg.ready_for_query())


def messages(data: bytes) -> List[Tuple[bytes, bytes]]:
    reader = pg.MessageReader()
    got = reader.feed(data)
    assert reader.pending() == 0, data
    return got


class Proxy:
    """
    A postgres cluster of one backend whose connections the test completes
    (C{endpoint}), with auth_user "authq"; clients are StringTransports.
    """

    def __init__(self, testcase: SynchronousTestCase, users_file: str, **settings: Any) -> None:
        self.path = os.path.abspath(testcase.mktemp())
        with open(self.path, "w") as f:
            f.write(users_file)
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        settings.setdefault("auth_user", "authq")
        config = ProxyConfig(listen=("tcp:0",), backend=("127.0.0.1:1",), protocol="postgres",
                             auth_file=self.path, check_interval=0, breaker_failures=0,
                             **settings)
        self.assembly = ClusterAssembly(config.clusters[0], config, self.clock,
                                        Admission(10, 10, 1.0, clock=self.clock),
                                        codec_options(config), postgres_codec,
                                        endpoint=lambda address: self.endpoint)
        self.factory: Any = self.assembly.frontend("pg")
        self.users: Users = self.factory.users
        self.backend = self.assembly.cluster.backends[0]
        testcase.addCleanup(self.backend.close)

    def connect(self, user: bytes, database: bytes = b"app") -> Tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(pg.startup_message({b"user": user, b"database": database}))
        return protocol, transport

    def server(self, user: bytes, database: bytes = b"app") -> FakeTransport:
        """Complete the oldest connect: a server that lets C{user} in (trust)."""
        [transport] = self.endpoint.succeed()
        startup, _ = pg.read_startup(transport.value())
        assert startup is not None
        assert (startup.user, startup.database) == (user, database), startup
        transport.clear()
        transport.protocol.dataReceived(WELCOME)
        return transport

    def keyed(self, user: bytes, database: bytes = b"app") -> Any:
        return self.backend.shared.pools[(database, user)]


def read(transport: StringTransport) -> List[Tuple[bytes, bytes]]:
    got = messages(transport.value())
    transport.clear()
    return got


def query_sent(server: FakeTransport) -> Tuple[bytes, bytes]:
    """The query text and $1 of the auth_query the proxy sent on C{server}."""
    sent = read(server)
    assert [kind for kind, _ in sent] == [b"P", b"B", b"E", b"S"], sent
    parse, bind = sent[0][1], sent[1][1]
    assert parse.startswith(b"\0") and parse.endswith(b"\0\0\0"), parse
    query = parse[1:-3]
    assert bind[:2] == b"\0\0", bind  # unnamed portal and statement
    (formats, params, length) = struct.unpack_from("!hhi", bind, 2)
    assert (formats, params) == (0, 1), bind
    value = bind[10:10 + length]
    assert bind[10 + length:] == b"\0\0", bind
    return query, value


def scram_login(protocol: Any, transport: StringTransport, password: str) -> List[Tuple[bytes, bytes]]:
    """Run the client's side of SCRAM; the messages after SASLFinal."""
    [(kind, body)] = read(transport)
    assert kind == b"R" and pg.int32(body) == pg.AUTH_SASL, (kind, body)
    client = ScramClientExchange(password=password)
    protocol.dataReceived(pg.sasl_initial_response(b"SCRAM-SHA-256", client.first()))
    [(kind, body)] = read(transport)
    assert pg.int32(body) == pg.AUTH_SASL_CONTINUE, body
    protocol.dataReceived(pg.password_message(client.final(body[4:])))
    got = read(transport)
    if got and got[0][0] == b"R" and pg.int32(got[0][1]) == pg.AUTH_SASL_FINAL:
        client.verify(got[0][1][4:])
        return got[1:]
    return got


def serve_scram(server: FakeTransport, secret: ScramSecret) -> None:
    """A server that verifies the proxy's login with C{secret} (pass-through)."""
    server.clear()
    server.protocol.dataReceived(pg.auth_sasl(("SCRAM-SHA-256",)))
    [(kind, body)] = read(server)
    mechanism, _, rest = body.partition(b"\0")
    exchange = ScramServerExchange(secret)
    server.protocol.dataReceived(pg.authentication(pg.AUTH_SASL_CONTINUE,
                                                   exchange.first(rest[4:])))
    [(kind, body)] = read(server)
    final = exchange.final(body)  # raises if the proof is wrong
    server.protocol.dataReceived(pg.authentication(pg.AUTH_SASL_FINAL, final) + WELCOME)


def is_auth_failure(got: List[Tuple[bytes, bytes]]) -> bool:
    return (len(got) == 1 and got[0][0] == b"E"
            and pg.error_fields(got[0][1]).get("C") == "28P01")


USERS = '"authq" "authq-password"\n"filed" "filed-password"\n'


class AuthQueryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.proxy = Proxy(self, USERS)
        self.secret = ScramSecret.from_password("alice-password")

    def look_up(self, user: bytes = b"alice") -> Tuple[Any, StringTransport, FakeTransport]:
        """A client as C{user}, and the server connection its lookup runs on."""
        protocol, transport = self.proxy.connect(user)
        self.assertEqual(transport.value(), b"")  # nothing asked until the lookup is done
        server = self.proxy.server(b"authq")
        return protocol, transport, server

    def test_scram_user_looked_up_then_pass_through(self) -> None:
        """
        A user not in the file: auth_query runs as auth_user on the client's
        database, the user name as the Bind's $1; the SCRAM secret found
        authenticates the client, and the proxy logs into the server as the
        client by pass-through (the server verifies the proof with the same
        secret).  The lookup's connection goes back to the pool.
        """
        protocol, transport, server = self.look_up()
        query, value = query_sent(server)
        self.assertEqual((query, value), (AUTH_QUERY.encode(), b"alice"))
        server.protocol.dataReceived(answer(row(b"alice", self.secret.format().encode())))
        keyed = self.proxy.keyed(b"authq")
        self.assertEqual((keyed.pool.idle, keyed.pool.leased), (1, 0))

        after = scram_login(protocol, transport, "alice-password")
        self.assertEqual(after, [])  # the client waits for its server login
        login = self.proxy.endpoint.succeed()[0]
        startup, _ = pg.read_startup(login.value())
        assert startup is not None
        self.assertEqual((startup.user, startup.database), (b"alice", b"app"))
        serve_scram(login, self.secret)
        got = read(transport)
        self.assertEqual([kind for kind, _ in got][:1] + [got[-1][0]], [b"R", b"Z"])
        self.assertEqual(pg.int32(got[0][1]), pg.AUTH_OK)

    def test_wrong_password(self) -> None:
        """The secret found does not match the client's password: 28P01."""
        protocol, transport, server = self.look_up()
        server.protocol.dataReceived(answer(row(b"alice", self.secret.format().encode())))
        self.assertTrue(is_auth_failure(scram_login(protocol, transport, "wrong")))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.proxy.factory.stats.auth_failures, 1)

    def test_user_in_the_file_is_not_looked_up(self) -> None:
        """A user in the users file is asked for SCRAM at once: no connection is made."""
        protocol, transport = self.proxy.connect(b"filed")
        [(kind, body)] = read(transport)
        self.assertEqual(pg.int32(body), pg.AUTH_SASL)
        self.assertEqual(self.proxy.endpoint.attempts, [])

    def test_no_such_user(self) -> None:
        """
        No row: the client goes through a SCRAM exchange as any unknown user
        does (nothing tells it the user does not exist), then gets 28P01;
        the log says why.
        """
        protocol, transport, server = self.look_up()
        server.protocol.dataReceived(answer())
        with capturedLogs() as events:
            self.assertTrue(is_auth_failure(scram_login(protocol, transport, "alice-password")))
        said = [formatEvent(e) for e in events]
        self.assertEqual(len(said), 1, said)
        self.assertIn("no such user (auth_query found none)", said[0])

    def test_null_user_name_is_no_user(self) -> None:
        """A row whose user name is NULL (a record-returning function's way) is no user."""
        protocol, transport, server = self.look_up()
        server.protocol.dataReceived(answer(row(None, None)))
        self.assertTrue(is_auth_failure(scram_login(protocol, transport, "alice-password")))

    def test_null_password(self) -> None:
        """
        A NULL password (no password, or an expired one with the default
        query): no password the client offers is accepted, after the same
        SCRAM exchange as an unknown user's.
        """
        protocol, transport, server = self.look_up()
        server.protocol.dataReceived(answer(row(b"alice", None)))
        with capturedLogs() as events:
            self.assertTrue(is_auth_failure(scram_login(protocol, transport, "")))
        self.assertIn("no password for this user", formatEvent(events[0]))

    def test_md5_hash(self) -> None:
        """
        An md5 hash found: the client is asked for md5, and the server login
        answers the server's md5 challenge with the hash (pass-through).
        """
        hashed = md5_hash("alice-password", "alice")
        protocol, transport, server = self.look_up()
        server.protocol.dataReceived(answer(row(b"alice", hashed.encode())))
        [(kind, body)] = read(transport)
        self.assertEqual(pg.int32(body), pg.AUTH_MD5)
        protocol.dataReceived(pg.password_message(md5_response(hashed, body[4:8]) + b"\0"))
        login = self.proxy.endpoint.succeed()[0]
        login.clear()
        login.protocol.dataReceived(pg.authentication(pg.AUTH_MD5, b"salt"))
        [(kind, body)] = read(login)
        self.assertTrue(md5_check(body.rstrip(b"\0"), hashed, b"salt"))
        login.protocol.dataReceived(WELCOME)
        self.assertEqual(read(transport)[-1][0], b"Z")

    def test_user_name_is_a_parameter(self) -> None:
        """
        A user name made to break out of a quoted literal is the Bind's
        value, byte for byte; the query text is the configured one.
        """
        hostile = b"x' OR '1'='1'; DROP TABLE pg_authid; --"
        protocol, transport, server = self.look_up(hostile)
        query, value = query_sent(server)
        self.assertEqual((query, value), (AUTH_QUERY.encode(), hostile))
        self.assertNotIn(b"DROP", query)

    def test_the_query_fails(self) -> None:
        """
        The query's error (auth_user may not read pg_authid): the client gets
        28P01 at once, the connection goes back to the pool (the server
        said ReadyForQuery), and the log says why once per interval.
        """
        with capturedLogs() as events:
            for n in range(3):
                protocol, transport = self.proxy.connect(b"alice")
                server = (self.proxy.server(b"authq") if n == 0
                          else self.proxy.endpoint.transports[0])
                server.clear()
                self.assertEqual(transport.value(), b"")
                server.protocol.dataReceived(
                    pg.error_response(b"42501", "permission denied for table pg_authid")
                    + pg.ready_for_query())
                self.assertTrue(is_auth_failure(read(transport)))
                self.assertTrue(transport.disconnecting)
                self.proxy.clock.advance(1)
        said = [formatEvent(e) for e in events if "auth_query" in formatEvent(e)]
        self.assertEqual(len(said), 1, said)
        self.assertIn("auth_query for user 'alice' on database 'app' as 'authq' failed: "
                      "42501: permission denied for table pg_authid", said[0])
        keyed = self.proxy.keyed(b"authq")
        self.assertEqual((keyed.pool.idle, keyed.pool.total), (1, 1))
        self.assertEqual(self.proxy.factory.stats.auth_failures, 3)
        self.assertEqual(self.proxy.users.auth_query.failures, 3)  # type: ignore[union-attr]

    def test_silent_server_times_out(self) -> None:
        """
        A server that never answers the query: after auth_query_timeout the
        client gets 28P01 and the connection, in the middle of a query, is
        closed, not reused.
        """
        protocol, transport, server = self.look_up()
        self.proxy.clock.advance(4.9)
        self.assertEqual(transport.value(), b"")
        with capturedLogs() as events:
            self.proxy.clock.advance(0.1)
        self.assertTrue(is_auth_failure(read(transport)))
        self.assertTrue(server.aborted)
        self.assertIn("no answer within 5s (auth_query_timeout)", formatEvent(events[0]))
        server.lose()
        self.assertEqual(self.proxy.keyed(b"authq").pool.total, 0)

    def test_connect_that_never_completes(self) -> None:
        """No connection for auth_user in time: 28P01 at the timeout, not a hang."""
        proxy = Proxy(self, USERS, auth_query_timeout=2.0, connect_timeout=10.0)
        protocol, transport = proxy.connect(b"alice")
        proxy.clock.advance(2)
        self.assertTrue(is_auth_failure(read(transport)))

    def test_auth_user_refused(self) -> None:
        """The server refuses auth_user's login: the client gets 28P01, the log the server's reason."""
        protocol, transport = self.proxy.connect(b"alice")
        [login] = self.proxy.endpoint.succeed()
        with capturedLogs() as events:
            login.protocol.dataReceived(pg.error_response(
                b"28P01", 'password authentication failed for user "authq"', b"FATAL"))
            login.lose()
        self.assertTrue(is_auth_failure(read(transport)))
        said = " | ".join(formatEvent(e) for e in events)
        self.assertIn("no connection as authq", said)
        self.assertIn('password authentication failed for user "authq"', said)

    def test_server_closes_during_the_query(self) -> None:
        """The lookup's connection dies: 28P01, and the connection is not kept."""
        protocol, transport, server = self.look_up()
        server.lose()
        self.assertTrue(is_auth_failure(read(transport)))
        self.assertEqual(self.proxy.keyed(b"authq").pool.total, 0)

    def test_auth_user_logs_in_with_its_password(self) -> None:
        """auth_user answers the server's md5 challenge with its users-file password."""
        protocol, transport = self.proxy.connect(b"alice")
        [login] = self.proxy.endpoint.succeed()
        login.clear()
        login.protocol.dataReceived(pg.authentication(pg.AUTH_MD5, b"salt"))
        [(kind, body)] = read(login)
        self.assertTrue(md5_check(body.rstrip(b"\0"), md5_hash("authq-password", "authq"),
                                  b"salt"))

    def test_logins_at_once_share_one_query(self) -> None:
        """
        Three clients of one user at once: one query; each then gets its
        own SCRAM exchange.  Another user's lookup is a query of its own.
        """
        clients = [self.proxy.connect(b"alice") for _ in range(3)]
        server = self.proxy.server(b"authq")
        query_sent(server)
        bob, bob_transport = self.proxy.connect(b"bob")
        self.assertEqual(server.value(), b"")  # bob's waits for the connection
        server.protocol.dataReceived(answer(row(b"alice", self.secret.format().encode())))
        for protocol, transport in clients:
            self.assertEqual(scram_login(protocol, transport, "alice-password"), [])
        self.assertEqual(query_sent(server)[1], b"bob")
        self.assertEqual(bob_transport.value(), b"")

    def test_messages_sent_during_the_lookup_are_kept(self) -> None:
        """
        A client that sends its SASLInitialResponse before being asked: it
        waits in the buffer and is answered once the credential is known.
        """
        protocol, transport, server = self.look_up()
        client = ScramClientExchange(password="alice-password")
        protocol.dataReceived(pg.sasl_initial_response(b"SCRAM-SHA-256", client.first()))
        self.assertEqual(transport.value(), b"")
        server.protocol.dataReceived(answer(row(b"alice", self.secret.format().encode())))
        got = read(transport)
        self.assertEqual([pg.int32(body) for _, body in got],
                         [pg.AUTH_SASL, pg.AUTH_SASL_CONTINUE])

    def test_flood_during_the_lookup(self) -> None:
        """
        A client that sends more than an authentication message's bound
        while its lookup runs is closed (08P01); the lookup's end then finds
        it gone and writes nothing.
        """
        protocol, transport, server = self.look_up()
        protocol.dataReceived(b"p" + b"\0" * (64 * 1024 + 1))
        [(kind, body)] = read(transport)
        self.assertEqual(pg.error_fields(body)["C"], "08P01")
        protocol.connectionLost(None)
        server.protocol.dataReceived(answer(row(b"alice", self.secret.format().encode())))
        self.assertEqual(transport.value(), b"")

    def test_client_leaves_during_the_lookup(self) -> None:
        """A client gone before the answer: nothing is written; the connection is pooled."""
        protocol, transport, server = self.look_up()
        protocol.connectionLost(None)
        server.protocol.dataReceived(answer(row(b"alice", self.secret.format().encode())))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.proxy.keyed(b"authq").pool.idle, 1)

    def test_no_backend(self) -> None:
        """No backend available: 28P01 at once."""
        self.proxy.backend.disabled = True
        protocol, transport = self.proxy.connect(b"alice")
        self.assertTrue(is_auth_failure(read(transport)))

    def test_trust_looks_nothing_up(self) -> None:
        """With auth_type trust there is nothing to check: no lookup."""
        proxy = Proxy(self, USERS, auth_type="trust")
        protocol, transport = proxy.connect(b"alice")
        # Straight to the client's own server login: no pool of auth_user's.
        self.assertEqual(list(proxy.backend.shared.pools), [(b"app", b"alice")])
        self.assertEqual(len(proxy.endpoint.attempts), 1)


class UsersTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_reload(self) -> None:
        """
        Unchanged: nothing to say; changed: the new entries are in use, the
        line says how many (no secret); unreadable or malformed: an error
        naming the file, the entries in use kept.
        """
        path = self.write('"a" "pw"\n')
        users = Users("scram-sha-256", path)
        self.assertEqual(users.where, "auth_file")
        self.assertIsNone(users.reload())
        self.write_to(path, '"a" "pw"\n"b" "other"\n')
        self.assertEqual(users.reload(), f"2 users from {path}")
        self.assertEqual(sorted(users.entries), ["a", "b"])
        self.write_to(path, '"c" no quotes\n')
        e = self.assertRaises(ConfigError, users.reload)
        self.assertIn(f"auth_file {path}: users file line 1", str(e))
        os.remove(path)
        self.assertRaises(ConfigError, users.reload)
        self.assertEqual(sorted(users.entries), ["a", "b"])

    def write_to(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def test_auth_user_without_a_file(self) -> None:
        """An auth_user that logs in by trust needs no users file; neither alone will do."""
        from poolproxy.proxy.transaction.lookup import AuthQuery
        users = Users("scram-sha-256", None, auth_query=AuthQuery("authq", AUTH_QUERY, 5.0,
                                                                   Clock()))
        self.assertTrue(users.needs_lookup(b"anyone"))
        self.assertRaises(ConfigError, Users, "scram-sha-256", None)

    def test_auth_user_logs_in_as_itself(self) -> None:
        """
        With backend_username and a backend password, client logins use
        them; auth_user logs in as itself with its own entry.
        """
        from poolproxy.proxy.transaction.lookup import AuthQuery
        path = self.write('"authq" "its-password"\n')
        users = Users("scram-sha-256", path, "pooled", lambda: "pooled-password",
                      AuthQuery("authq", AUTH_QUERY, 5.0, Clock()))
        client = users.credentials(b"alice")
        self.assertEqual((client.user, client.password), (b"pooled", "pooled-password"))
        own = users.credentials(b"authq")
        self.assertEqual((own.user, own.password), (None, "its-password"))

    def test_empty_password_fails_like_an_unknown_user(self) -> None:
        """
        A users-file entry with an empty password gets the SCRAM exchange of
        an unknown user (not a switch to md5 that would tell it apart).
        """
        path = self.write('"nobody" ""\n')
        auth = Users("scram-sha-256", path).authenticator(b"nobody")
        self.assertEqual(pg.int32(auth.start()[5:]), pg.AUTH_SASL)


class SettingsTests(SynchronousTestCase):
    def test_settings(self) -> None:
        """
        The defaults (PgBouncer's query, 5 s, the postgres database); a
        query that does not take the user as $1 is refused, naming the flag.
        """
        from poolproxy.tap import ProxyOptions
        base = ["--listen", "tcp:6432", "--backend", "127.0.0.1:5432", "--protocol", "postgres"]
        options = ProxyOptions()
        options.parseOptions(base + ["--auth-user", "authq"])
        config = options.config
        self.assertEqual((config.auth_user, config.auth_query, config.auth_query_timeout,
                          config.check_database), ("authq", AUTH_QUERY, 5.0, "postgres"))
        self.assertIn("WHERE rolname=$1 AND rolcanlogin", AUTH_QUERY)
        e = self.assertRaises(ConfigError, ProxyOptions().parseOptions,
                              base + ["--auth-query", "SELECT usename, passwd FROM pg_shadow"])
        self.assertIn("--auth-query: the query must take the user name as $1", str(e))
        self.assertRaises(ConfigError, ProxyOptions().parseOptions,
                          base + ["--auth-query-timeout", "0"])


class PureTests(SynchronousTestCase):
    def test_lookup_messages(self) -> None:
        """Parse, Bind with the user as the one text parameter, Execute, Sync."""
        got = messages(lookup_messages(b"SELECT $1", b"u'"))
        self.assertEqual(got, [
            (b"P", b"\0SELECT $1\0\0\0"),
            (b"B", b"\0\0\0\0\0\x01\0\0\0\x02u'\0\0"),
            (b"E", b"\0\0\0\0\0"),
            (b"S", b""),
        ])

    def test_data_row(self) -> None:
        """Values and NULLs; a row that lies about its lengths is refused."""
        self.assertEqual(data_row(row(b"a", None, b"")[5:]), [b"a", None, b""])
        for bad in (b"", b"\0\x01", b"\0\x01\0\0\0\x05ab", b"\0\x01\0\0\0\x01ab", b"\xff\xff"):
            self.assertRaises(ValueError, data_row, bad)

    def test_credential_of(self) -> None:
        """The row's kinds of password; rows auth_query must not return are errors."""
        secret = ScramSecret.from_password("pw").format()
        self.assertEqual(credential_of("u", [[b"u", secret.encode()]]), Credential.of("u", secret))
        self.assertEqual(credential_of("u", [[b"u", b"md5" + b"0" * 32]]).kind, "md5")  # type: ignore[union-attr]
        self.assertIsNone(credential_of("u", []))
        self.assertIsNone(credential_of("u", [[None, b"x"]]))
        self.assertTrue(credential_of("u", [[b"u", None]]).disabled)  # type: ignore[union-attr]
        for rows in ([[b"u", b"x"], [b"u", b"y"]], [[b"u"]], [[b"u", b"\xff"]],
                     [[b"u", b"SCRAM-SHA-256$broken"]]):
            e = self.assertRaises(ValueError, credential_of, "u", rows)
            self.assertNotIn("broken", str(e))
