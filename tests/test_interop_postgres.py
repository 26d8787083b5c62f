"""
poolproxy in front of a real PostgreSQL 15, with real clients: psql,
pgbench, psycopg 3, psycopg2, asyncpg, pg8000, SQLAlchemy, and raw protocol
messages where a driver cannot be made to send what a test needs.

Each test class starts its own server (tests.interop.postgres_server) and
its proxy as C{twistd -n poolproxy --protocol postgres}.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import TestCase

from poolproxy.codecs import postgres as pg
from tests import interop
from tests.interop import ProxyProcess, module, postgres_server


def _proxy(testcase: Any, server: Any, *extra: str, kind: str = "scram",
           pool_size: int = 4) -> ProxyProcess:
    users = server.userlist(os.path.abspath(testcase.mktemp()), kind=kind)
    return ProxyProcess(testcase, "postgres", [server.port], "--auth-file", users,
                        "--pool-size", str(pool_size), "--mux-connections", "1", *extra)


class RawClient:
    """
    A PostgreSQL client speaking the protocol by hand, for message orders
    drivers do not send on demand (lib/pq's unnamed statement across Syncs,
    a Describe on a fresh connection).  Logs in with SCRAM via scramp.
    """

    def __init__(self, port: int, user: str, password: str, database: str,
                 version: int = pg.PROTOCOL_3_0, extra: Optional[Dict[bytes, bytes]] = None
                 ) -> None:
        from scramp import ScramClient
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.reader = pg.MessageReader()
        self.queue: List[Tuple[bytes, bytes]] = []
        params = {b"user": user.encode(), b"database": database.encode()}
        params.update(extra or {})
        self.sock.sendall(pg.startup_message(params, version))
        kind, body = self.read()
        self.negotiated = None
        if kind == b"v":
            self.negotiated = body
            kind, body = self.read()
        assert kind == b"R" and pg.int32(body) == pg.AUTH_SASL, (kind, body)
        client = ScramClient(["SCRAM-SHA-256"], user, password)
        first = client.get_client_first().encode()
        self.sock.sendall(pg.sasl_initial_response(b"SCRAM-SHA-256", first))
        kind, body = self.read()
        client.set_server_first(body[4:].decode())
        self.sock.sendall(pg.password_message(client.get_client_final().encode()))
        kind, body = self.read()
        assert pg.int32(body) == pg.AUTH_SASL_FINAL, (kind, body)
        self.welcome = self.until(b"Z")

    def read(self) -> Tuple[bytes, bytes]:
        while not self.queue:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.queue += self.reader.feed(data)
        return self.queue.pop(0)

    def until(self, kind: bytes) -> List[Tuple[bytes, bytes]]:
        got = []
        while True:
            message = self.read()
            got.append(message)
            if message[0] == kind:
                return got

    def send(self, *messages: bytes) -> None:
        self.sock.sendall(b"".join(messages))

    def close(self) -> None:
        self.sock.sendall(pg.TERMINATE)
        self.sock.close()


def parse(name: bytes, sql: bytes) -> bytes:
    return pg.message(b"P", name + b"\0" + sql + b"\0\x00\x00")


def bind(statement: bytes, portal: bytes = b"") -> bytes:
    return pg.message(b"B", portal + b"\0" + statement + b"\0" + b"\x00\x00\x00\x00\x00\x00")


def describe(kind: bytes, name: bytes) -> bytes:
    return pg.message(b"D", kind + name + b"\0")


def execute(portal: bytes = b"") -> bytes:
    return pg.message(b"E", portal + b"\0\x00\x00\x00\x00")


def kinds(messages: List[Tuple[bytes, bytes]]) -> bytes:
    return b"".join(kind for kind, _ in messages)


def data_values(messages: List[Tuple[bytes, bytes]]) -> List[bytes]:
    out = []
    for kind, body in messages:
        if kind == b"D":
            (n,) = struct.unpack_from("!h", body)
            pos = 2
            for _ in range(n):
                (length,) = struct.unpack_from("!i", body, pos)
                out.append(body[pos + 4:pos + 4 + length])
                pos += 4 + length
    return out


class AuthenticationTests(TestCase):
    """SCRAM to the proxy, SCRAM pass-through to the server; the errors' SQLSTATEs."""

    def setUp(self) -> None:
        self.server = postgres_server(self)
        self.proxy = _proxy(self, self.server)
        self.psycopg = module("psycopg")

    def connect(self, user: str = "app", password: Optional[str] = None,
                database: str = "app") -> Any:
        if password is None:
            password = self.server.users[user]
        return self.psycopg.connect(host="127.0.0.1", port=self.proxy.port, user=user,
                                    password=password, dbname=database, connect_timeout=10)

    def test_scram_pass_through(self) -> None:
        """
        The users file holds only SCRAM secrets: the proxy verifies the
        client, then logs into the server with the client's ClientKey.
        """
        with self.connect() as conn:
            self.assertEqual(conn.execute("select current_user").fetchone(), ("app",))
        self.assertIn(b"SCRAM-SHA-256$", open(self.server.userlist(self.mktemp()), "rb").read())

    def test_psql(self) -> None:
        out = self.server.psql("select 40 + 2", user="app", database="app", port=self.proxy.port)
        self.assertEqual(out.strip(), "42")

    def assertSqlstate(self, sqlstate: str, **kwargs: Any) -> None:
        with self.assertRaises(self.psycopg.OperationalError) as caught:
            self.connect(**kwargs)
        self.assertIn(sqlstate, str(caught.exception) + repr(getattr(caught.exception, "sqlstate", "")),
                      str(caught.exception))

    def test_protocol_versions(self) -> None:
        """
        3.0 gets a 4-byte cancel key and 3.2 a 32-byte one, neither a
        NegotiateProtocolVersion; a newer minor (libpq greases with 3.9999)
        and unknown _pq_ options get one naming 3.2 and the options.
        """
        password = self.server.users["app"]
        for version, key_length in ((pg.PROTOCOL_3_0, 4), (pg.PROTOCOL_3_2, 32)):
            client = RawClient(self.proxy.port, "app", password, "app", version=version)
            self.assertIsNone(client.negotiated)
            [key] = [body for kind, body in client.welcome if kind == b"K"]
            self.assertEqual(len(key) - 4, key_length)
            client.close()
        client = RawClient(self.proxy.port, "app", password, "app", version=(3 << 16) | 9999,
                           extra={b"_pq_.test_grease": b"x"})
        self.assertEqual(client.negotiated, struct.pack("!II", 2, 1) + b"_pq_.test_grease\0")
        client.send(pg.query(b"select 1"))
        self.assertEqual(data_values(client.until(b"Z")), [b"1"])
        client.close()

    def test_wrong_password(self) -> None:
        with self.assertRaises(self.psycopg.OperationalError) as caught:
            self.connect(password="wrong")
        self.assertIn("password authentication failed", str(caught.exception))

    def test_unknown_user(self) -> None:
        with self.assertRaises(self.psycopg.OperationalError) as caught:
            self.connect(user="nobody", password="x")
        self.assertIn("password authentication failed", str(caught.exception))

    def test_unknown_database(self) -> None:
        """The server's own 3D000 reaches the client."""
        with self.assertRaises(self.psycopg.OperationalError) as caught:
            self.connect(database="nodb")
        self.assertIn('database "nodb" does not exist', str(caught.exception))
        # ... and costs the right database nothing.
        with self.connect() as conn:
            self.assertEqual(conn.execute("select 1").fetchone(), (1,))


class MD5AndPasswordTests(TestCase):
    def test_md5_users_file(self) -> None:
        """md5 hashes in the users file: md5 to the client, md5 pass-through to the server."""
        server = postgres_server(self, hba_method="md5")
        proxy = _proxy(self, server, "--auth-type", "md5", kind="md5")
        psycopg = module("psycopg")
        with psycopg.connect(host="127.0.0.1", port=proxy.port, user="app",
                             password=server.users["app"], dbname="app") as conn:
            self.assertEqual(conn.execute("select current_user").fetchone(), ("app",))

    def test_backend_password(self) -> None:
        """A configured backend password logs in with SCRAM as backend_username."""
        server = postgres_server(self)
        password_file = os.path.abspath(self.mktemp())
        with open(password_file, "w") as f:
            f.write(server.users["other"] + "\n")
        proxy = _proxy(self, server, "--backend-username", "other",
                       "--backend-password-file", password_file, kind="plain")
        psycopg = module("psycopg")
        with psycopg.connect(host="127.0.0.1", port=proxy.port, user="app",
                             password=server.users["app"], dbname="app") as conn:
            self.assertEqual(conn.execute("select current_user").fetchone(), ("other",))


class ConnectionWatch:
    """
    The most connections of C{user} the server had at once, sampled from
    pg_stat_activity (as the superuser, on its own connection) every 50 ms
    while the C{with} block runs: "never more than N" checked throughout a
    load, not only after it.
    """

    def __init__(self, server: Any, user: str) -> None:
        self.server, self.user = server, user
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "ConnectionWatch":
        psycopg = module("psycopg")
        self._conn = psycopg.connect(self.server.dsn(user=self.server.superuser,
                                                     database="postgres", sslmode="disable"),
                                     autocommit=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        query = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                 "AND usename = %s")
        while not self._stop.is_set():
            [(count,)] = self._conn.execute(query, (self.user,)).fetchall()
            self.most = max(self.most, count)
            self.samples += 1
            self._stop.wait(0.05)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)
        self._conn.close()


class PoolingTests(TestCase):
    """Transaction pooling with pgbench and the drivers."""

    def setUp(self) -> None:
        self.server = postgres_server(self)
        interop.pgbench_init(self.server, user="app", database="app")
        self.proxy = _proxy(self, self.server, "--pool-acquire-timeout", "30")

    def test_pgbench_modes(self) -> None:
        """
        50 clients over a pool of 4, in each query mode: no failed
        transaction, and never more than 4 server connections.
        """
        seconds = os.environ.get("POOLPROXY_PGBENCH_SECONDS", "3")
        transactions = 0
        with ConnectionWatch(self.server, "app") as watch:
            for mode in ("simple", "extended", "prepared"):
                for script in (["-S"], []):
                    result = interop.pgbench(self.server, "-M", mode, "-c", "50", "-j", "2",
                                             "-T", seconds, *script, port=self.proxy.port,
                                             user="app", database="app")
                    self.assertEqual(result.failed, 0, result.output)
                    self.assertGreater(result.tps, 0, result.output)
                    transactions += result.transactions
        self.assertGreater(watch.samples, 10)
        self.assertGreater(watch.most, 0)
        self.assertLessEqual(watch.most, 4)
        self.assertLessEqual(self.proxy.metric("poolproxy_pool_connections", state="active"), 4)
        # Each of pgbench's transactions ended with the server idle: one each at least.
        key = {"database": "app", "user": "app"}
        self.assertGreaterEqual(self.proxy.metric("poolproxy_postgres_transactions_total", **key),
                                transactions)
        self.assertGreaterEqual(self.proxy.metric("poolproxy_postgres_queries_total", **key),
                                transactions)
        self.assertGreater(self.proxy.metric("poolproxy_pool_connections", **key), 0)

    def test_pgbench_new_connection_per_transaction(self) -> None:
        result = interop.pgbench(self.server, "-S", "-C", "-c", "10", "-j", "2", "-T", "2",
                                 port=self.proxy.port, user="app", database="app")
        self.assertEqual(result.failed, 0, result.output)
        self.assertLessEqual(self.server.backend_connections(user="app"), 4)

    def test_psycopg_pipeline(self) -> None:
        """psycopg 3's pipeline mode: many Syncs in flight on one lease."""
        psycopg = module("psycopg")
        with psycopg.connect(self.server.dsn(user="app", database="app", port=self.proxy.port),
                             autocommit=True) as conn:
            with conn.pipeline():
                cursors = [conn.execute("select %s::int * 2", (i,)) for i in range(200)]
            self.assertEqual([c.fetchone()[0] for c in cursors], [i * 2 for i in range(200)])

    def test_psycopg_prepared(self) -> None:
        """prepare_threshold=0: every query a named prepared statement, across leases."""
        psycopg = module("psycopg")
        conns = [psycopg.connect(self.server.dsn(user="app", database="app",
                                                 port=self.proxy.port),
                                 autocommit=True, prepare_threshold=0) for _ in range(6)]
        for conn in conns:
            # A small statement cache: psycopg evicts with DEALLOCATE name,
            # a name only the proxy knows.
            conn.prepared_max = 2
        try:
            for round_ in range(20):
                for i, conn in enumerate(conns):
                    row = conn.execute("select %s::int + %s::int", (round_, i)).fetchone()
                    self.assertEqual(row, (round_ + i,))
                    other = conn.execute(f"select %s::int * {round_ % 4}", (i,)).fetchone()
                    self.assertEqual(other, (i * (round_ % 4),))
        finally:
            for conn in conns:
                conn.close()

    def test_asyncpg_statement_cache(self) -> None:
        asyncpg = module("asyncpg", cpython_only=True)
        import asyncio

        async def main() -> List[int]:
            pool = await asyncpg.create_pool(host="127.0.0.1", port=self.proxy.port, user="app",
                                             password=self.server.users["app"], database="app",
                                             min_size=8, max_size=8)
            try:
                async def one(i: int) -> int:
                    total = 0
                    for j in range(25):
                        total += await pool.fetchval("select $1::int + $2::int", i, j)
                    return total
                return await asyncio.gather(*(one(i) for i in range(16)))
            finally:
                await pool.close()
        results = asyncio.run(main())
        self.assertEqual(results, [25 * i + sum(range(25)) for i in range(16)])

    def test_psycopg2(self) -> None:
        psycopg2 = module("psycopg2", cpython_only=True)
        conn = psycopg2.connect(self.server.dsn(user="app", database="app", port=self.proxy.port))
        try:
            cur = conn.cursor()
            cur.execute("select count(*) from pgbench_branches")
            self.assertEqual(cur.fetchone(), (1,))
            conn.rollback()
        finally:
            conn.close()

    def test_pg8000(self) -> None:
        pg8000 = module("pg8000")
        conn = pg8000.connect(user="app", password=self.server.users["app"], host="127.0.0.1",
                              port=self.proxy.port, database="app")
        try:
            self.assertEqual([list(row) for row in conn.run("select :a::int * 3", a=5)], [[15]])
            conn.commit()
        finally:
            conn.close()

    def test_sqlalchemy(self) -> None:
        sqlalchemy = module("sqlalchemy")
        module("psycopg")
        engine = sqlalchemy.create_engine(
            f"postgresql+psycopg://app:{self.server.users['app']}@127.0.0.1:{self.proxy.port}/app",
            pool_pre_ping=True)
        try:
            with engine.begin() as conn:
                conn.execute(sqlalchemy.text("create table if not exists sa_t (x int)"))
                conn.execute(sqlalchemy.text("insert into sa_t values (1), (2)"))
            with engine.connect() as conn:
                total = conn.execute(sqlalchemy.text("select sum(x) from sa_t")).scalar()
            self.assertEqual(total, 3)
        finally:
            engine.dispose()


class StatementTests(TestCase):
    """Prepared statements across leases, with raw protocol messages."""

    def setUp(self) -> None:
        self.server = postgres_server(self)
        self.proxy = _proxy(self, self.server, pool_size=2)

    def client(self) -> RawClient:
        return RawClient(self.proxy.port, "app", self.server.users["app"], "app")

    def test_unnamed_statement_across_sync(self) -> None:
        """
        lib/pq: Parse+Describe+Sync, then Bind+Execute+Sync; between the two,
        another client runs on the connection the first batch used.
        """
        a, b = self.client(), self.client()
        a.send(parse(b"", b"select 7"), describe(b"S", b""), pg.SYNC)
        self.assertEqual(kinds(a.until(b"Z")), b"1tTZ")
        # b takes the connection a just gave back, and replaces its unnamed statement.
        b.send(parse(b"", b"select 8"), bind(b""), execute(), pg.SYNC)
        self.assertEqual(data_values(b.until(b"Z")), [b"8"])
        a.send(bind(b""), execute(), pg.SYNC)
        self.assertEqual(data_values(a.until(b"Z")), [b"7"])
        a.close()
        b.close()

    def test_describe_on_a_connection_that_never_saw_the_parse(self) -> None:
        a, b = self.client(), self.client()
        a.send(parse(b"s1", b"select 1 as one"), pg.SYNC)
        self.assertEqual(kinds(a.until(b"Z")), b"1Z")
        # b holds a connection in a transaction, so a gets the other one.
        b.send(pg.query(b"begin"))
        b.until(b"Z")
        a.send(describe(b"S", b"s1"), pg.SYNC)
        self.assertEqual(kinds(a.until(b"Z")), b"tTZ")
        a.send(bind(b"s1"), execute(), pg.SYNC)
        self.assertEqual(data_values(a.until(b"Z")), [b"1"])
        b.send(pg.query(b"commit"))
        b.until(b"Z")

    def test_close_answered_locally_and_duplicate_refused(self) -> None:
        a = self.client()
        a.send(parse(b"s1", b"select 1"), pg.SYNC)
        a.until(b"Z")
        a.send(parse(b"s1", b"select 2"), bind(b"s1"), execute(), pg.SYNC)
        got = a.until(b"Z")
        self.assertEqual(kinds(got), b"EZ")
        self.assertEqual(pg.error_fields(got[0][1])["C"], "42P05")
        a.send(pg.message(b"C", b"Ss1\0"), pg.SYNC)
        self.assertEqual(kinds(a.until(b"Z")), b"3Z")
        a.send(parse(b"s1", b"select 2"), bind(b"s1"), execute(), pg.SYNC)
        self.assertEqual(data_values(a.until(b"Z")), [b"2"])

    def test_failed_parse_then_close(self) -> None:
        """Odyssey #1361: a Parse that fails, then Close of its name, then reuse."""
        a = self.client()
        a.send(parse(b"bad", b"selec 1"), pg.SYNC)
        got = a.until(b"Z")
        self.assertEqual(kinds(got), b"EZ")
        a.send(pg.message(b"C", b"Sbad\0"), pg.SYNC)
        self.assertEqual(kinds(a.until(b"Z")), b"3Z")
        a.send(parse(b"bad", b"select 3"), bind(b"bad"), execute(), pg.SYNC)
        self.assertEqual(data_values(a.until(b"Z")), [b"3"])

    def test_error_mid_batch_suppresses_local_replies(self) -> None:
        """A local ParseComplete after a failed message is dropped, as the server drops its own."""
        a, b = self.client(), self.client()
        a.send(parse(b"s1", b"select 1"), pg.SYNC)
        a.until(b"Z")
        # The statement is known now: b's Parse of the same text is answered locally.
        b.send(pg.query(b"begin"))
        b.until(b"Z")
        b.send(parse(b"", b"selec oops"), parse(b"s2", b"select 1"), bind(b"s2"), execute(),
               pg.SYNC)
        got = b.until(b"Z")
        self.assertEqual(kinds(got), b"EZ")
        self.assertEqual(got[-1][1], b"E")
        b.send(pg.query(b"rollback"))
        b.until(b"Z")


    def test_stale_cached_plan_retried(self) -> None:
        """
        DDL changes what a prepared statement returns: PostgreSQL says
        "cached plan must not change result type" (0A000); outside a
        transaction the proxy parses the statement again and runs the batch
        again, so the client sees the new result, not the error.
        """
        self.server.psql("create table plan_t (a int); insert into plan_t values (1)",
                         user="app", database="app")
        a = self.client()
        a.send(parse(b"s1", b"select * from plan_t"), pg.SYNC)
        a.until(b"Z")
        a.send(bind(b"s1"), execute(), pg.SYNC)
        self.assertEqual(data_values(a.until(b"Z")), [b"1"])
        self.server.psql("alter table plan_t add column b int default 2",
                         user="app", database="app")
        a.send(bind(b"s1"), execute(), pg.SYNC)
        got = a.until(b"Z")
        self.assertEqual(kinds(got), b"2DCZ", got)
        self.assertEqual(data_values(got), [b"1", b"2"])
        # In a transaction it cannot be run again: the client gets the error.
        self.server.psql("alter table plan_t add column c int default 3",
                         user="app", database="app")
        a.send(pg.query(b"begin"))
        a.until(b"Z")
        a.send(bind(b"s1"), execute(), pg.SYNC)
        got = a.until(b"Z")
        self.assertEqual(kinds(got), b"EZ")
        self.assertEqual(pg.error_fields(got[0][1])["C"], "0A000")
        a.send(pg.query(b"rollback"))
        a.until(b"Z")
        a.send(bind(b"s1"), execute(), pg.SYNC)
        self.assertEqual(data_values(a.until(b"Z")), [b"1", b"2", b"3"])


class SessionStateTests(TestCase):
    """What outlives a transaction never reaches another client."""

    def setUp(self) -> None:
        self.server = postgres_server(self)
        self.proxy = _proxy(self, self.server, "--pool-acquire-timeout", "30", pool_size=1)
        self.psycopg = module("psycopg")

    def connect(self) -> Any:
        return self.psycopg.connect(self.server.dsn(user="app", database="app",
                                                    port=self.proxy.port), autocommit=True)

    def test_no_leak_to_the_next_client(self) -> None:
        first = self.connect()
        pid = first.execute("select pg_backend_pid()").fetchone()[0]
        first.execute("set search_path = leaked, public")
        first.execute("prepare leaked_stmt as select 1")
        first.execute("listen leaked_channel")
        first.execute("create temp table leaked_temp (x int)")
        first.execute("select pg_advisory_lock(1)")
        # Pinned: the same server connection for the rest of its session.
        self.assertEqual(first.execute("select pg_backend_pid()").fetchone()[0], pid)
        self.assertEqual(first.execute("show search_path").fetchone()[0], "leaked, public")
        # A second client waits for the only connection, and gets it reset.
        seen: Dict[str, Any] = {}

        def second_client() -> None:
            with self.connect() as second:
                seen["pid"] = second.execute("select pg_backend_pid()").fetchone()[0]
                seen["search_path"] = second.execute("show search_path").fetchone()[0]
                seen["prepared"] = second.execute(
                    "select count(*) from pg_prepared_statements").fetchone()[0]
                seen["listening"] = second.execute(
                    "select count(*) from pg_listening_channels()").fetchone()[0]
                seen["temp"] = second.execute(
                    "select count(*) from pg_class where relname = 'leaked_temp'").fetchone()[0]
                seen["locks"] = second.execute(
                    "select count(*) from pg_locks where locktype = 'advisory' "
                    "and pid = pg_backend_pid()").fetchone()[0]
        thread = threading.Thread(target=second_client)
        thread.start()
        first.close()
        thread.join(30)
        self.assertEqual(seen, {"pid": pid, "search_path": '"$user", public', "prepared": 0,
                                "listening": 0, "temp": 0, "locks": 0})
        self.assertGreaterEqual(self.proxy.metric("poolproxy_postgres_pinned_total"), 1)

    def test_abandoned_transaction_rolled_back(self) -> None:
        raw = RawClient(self.proxy.port, "app", self.server.users["app"], "app")
        raw.send(pg.query(b"begin; create table abandoned (x int)"))
        raw.until(b"Z")
        raw.sock.close()  # no Terminate, mid-transaction
        with self.connect() as conn:
            self.assertEqual(conn.execute(
                "select count(*) from pg_class where relname = 'abandoned'").fetchone(), (0,))
            self.assertEqual(conn.execute("select 1").fetchone(), (1,))

    def test_startup_parameters_applied(self) -> None:
        """application_name from one client's start-up is not another's."""
        psycopg = self.psycopg
        dsn = self.server.dsn(user="app", database="app", port=self.proxy.port)
        with psycopg.connect(dsn + " application_name=one", autocommit=True) as one:
            self.assertEqual(one.execute("show application_name").fetchone(), ("one",))
        with psycopg.connect(dsn + " application_name=two", autocommit=True) as two:
            self.assertEqual(two.execute("show application_name").fetchone(), ("two",))
            self.assertEqual(two.execute("show application_name").fetchone(), ("two",))


class CopyTests(TestCase):
    def setUp(self) -> None:
        self.server = postgres_server(self)
        self.proxy = _proxy(self, self.server, pool_size=1)
        self.psycopg = module("psycopg")
        self.dsn = self.server.dsn(user="app", database="app", port=self.proxy.port)

    def test_copy_in_and_out(self) -> None:
        with self.psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("create table copied (x int, y text)")
            with conn.cursor().copy("copy copied from stdin") as copy:
                for i in range(10000):
                    copy.write_row((i, f"row {i}"))
            out = bytearray()
            with conn.cursor().copy("copy copied to stdout") as copy:
                for chunk in copy:
                    out += chunk
            self.assertEqual(out.count(b"\n"), 10000)
            self.assertEqual(conn.execute("select count(*) from copied").fetchone(), (10000,))

    def test_server_error_mid_copy_in(self) -> None:
        """
        The server fails a COPY FROM STDIN while the client still sends data:
        the lease holds until the client's CopyDone, and the next client is fine.
        """
        with self.psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("create table strict (x int)")
            with self.assertRaises(self.psycopg.errors.InvalidTextRepresentation):
                with conn.cursor().copy("copy strict from stdin") as copy:
                    copy.write(b"1\n2\nnot a number\n")
                    for i in range(2000):
                        copy.write(b"%d\n" % i)
            self.assertEqual(conn.execute("select count(*) from strict").fetchone(), (0,))
        with self.psycopg.connect(self.dsn, autocommit=True) as other:
            self.assertEqual(other.execute("select 1").fetchone(), (1,))


class CancelTests(TestCase):
    def setUp(self) -> None:
        self.server = postgres_server(self)
        self.proxy = _proxy(self, self.server, "--pool-acquire-timeout", "30", pool_size=2)
        self.psycopg = module("psycopg")
        self.dsn = self.server.dsn(user="app", database="app", port=self.proxy.port)

    def test_cancel_running_query(self) -> None:
        with self.psycopg.connect(self.dsn, autocommit=True) as conn:
            timer = threading.Timer(0.2, conn.cancel)
            timer.start()
            with self.assertRaises(self.psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(20)")
            timer.join()
            self.assertEqual(conn.execute("select 1").fetchone(), (1,))

    def test_cancel_never_hits_another_client(self) -> None:
        """
        Cancels fired at a client over and over while others reuse the
        same server connections: no other client's query is ever cancelled.
        """
        rounds = int(os.environ.get("POOLPROXY_CANCEL_ROUNDS", "1000"))
        victim = self.psycopg.connect(self.dsn, autocommit=True)
        others = [self.psycopg.connect(self.dsn, autocommit=True) for _ in range(3)]
        stop = threading.Event()
        wrongly_cancelled: List[str] = []
        done = [0]

        def hammer(conn: Any) -> None:
            while not stop.is_set():
                try:
                    conn.execute("select pg_sleep(0.0005)")
                    done[0] += 1
                except self.psycopg.errors.QueryCanceled as e:
                    wrongly_cancelled.append(str(e))

        def victim_loop() -> None:
            while not stop.is_set():
                try:
                    victim.execute("select pg_sleep(0.001)")
                except self.psycopg.errors.QueryCanceled:
                    pass
        threads = [threading.Thread(target=hammer, args=(c,)) for c in others]
        threads.append(threading.Thread(target=victim_loop))
        for t in threads:
            t.start()
        try:
            for _ in range(rounds):
                victim.cancel()
        finally:
            stop.set()
            for t in threads:
                t.join(30)
            for conn in [victim] + others:
                conn.close()
        self.assertEqual(wrongly_cancelled, [])
        self.assertGreater(done[0], 0)

    def test_cancel_while_waiting_for_a_connection(self) -> None:
        """PgBouncer #1222: a queued client's cancel takes it out of the queue, 57014."""
        holders = [self.psycopg.connect(self.dsn) for _ in range(2)]
        for h in holders:
            h.execute("select 1")  # a transaction left open: both connections held
        waiting = self.psycopg.connect(self.dsn, autocommit=True)
        timer = threading.Timer(0.3, waiting.cancel)
        timer.start()
        with self.assertRaises(self.psycopg.errors.QueryCanceled):
            waiting.execute("select 1")
        timer.join()
        for h in holders:
            h.rollback()
            h.close()
        self.assertEqual(waiting.execute("select 2").fetchone(), (2,))
        waiting.close()


class WorkersCancelTests(TestCase):
    def test_cancel_reaches_the_right_worker(self) -> None:
        """
        Under --workers 2 a cancel's connection lands on either worker
        (SO_REUSEPORT); the key names the client's worker, which gets it.
        """
        import time
        server = postgres_server(self)
        proxy = _proxy(self, server, "--workers", "2")
        psycopg = module("psycopg")
        dsn = server.dsn(user="app", database="app", port=proxy.port)
        workers = set()
        for _ in range(12):
            with psycopg.connect(dsn, autocommit=True) as conn:
                pid = conn.info.backend_pid
                workers.add(pid & 0xff)
                timer = threading.Timer(0.1, conn.cancel)
                timer.start()
                started = time.monotonic()
                with self.assertRaises(psycopg.errors.QueryCanceled):
                    conn.execute("select pg_sleep(30)")
                timer.join()
                # Cancelled at once, not after the 30 s a lost cancel would take.
                self.assertLess(time.monotonic() - started, 20)
        self.assertEqual(workers, {1, 2})
