"""
The PostgreSQL harness of tests/interop.py against the server directly, no
proxy: every postgres proxy test stands on it, so these check that its
servers start, authenticate as configured (SCRAM, md5), report what the
proxy tests measure (backend connections, secrets, pgbench results), and
that the real clients (psycopg 3, pg8000, SQLAlchemy; asyncpg and psycopg2
on CPython) work against them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import platform
import pwd
import re
import shutil
import subprocess
import tempfile
from typing import Any, List

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests import interop
from tests.interop import (
    accepts,
    module,
    pg_binary,
    pgbench,
    pgbench_init,
    postgres_server,
    shared_postgres,
)

SCRAM_SECRET = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


class SharedPostgresTests(SynchronousTestCase):
    """The process's shared server, with the default roles and database."""

    def setUp(self) -> None:
        self.server = shared_postgres(self)

    def connect(self, **kwargs: Any) -> Any:
        """A psycopg 3 connection to the server (autocommit), closed by the cleanup."""
        psycopg = module("psycopg")
        connection = psycopg.connect(self.server.dsn(**kwargs), autocommit=True)
        self.addCleanup(connection.close)
        return connection

    def test_psql(self) -> None:
        """
        psql runs as the superuser by default, as any role when asked; the
        output is the rows only (no command tags), columns separated by |.
        """
        self.assertEqual(self.server.psql("SELECT current_user, current_database()"), "admin|app")
        self.assertEqual(
            self.server.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (2), (1);"
                             "SELECT x FROM t ORDER BY x;", user="app"),
            "1\n2")
        self.assertEqual(self.server.psql("SELECT current_user", user="other", database="postgres"),
                         "other")

    def test_psql_error(self) -> None:
        """
        A failing statement raises with psql's error, and the statements
        after it do not run (ON_ERROR_STOP).
        """
        with self.assertRaises(AssertionError) as caught:
            self.server.psql("CREATE TABLE before (); SELECT * FROM no_such_table; CREATE TABLE after ();")
        self.assertIn('relation "no_such_table" does not exist', str(caught.exception))
        self.assertEqual(self.server.psql("SELECT to_regclass('before') IS NOT NULL, "
                                          "to_regclass('after') IS NULL"), "t|t")

    def test_scram_required(self) -> None:
        """
        TCP clients must authenticate with SCRAM-SHA-256: pg_hba.conf says
        so, and a wrong password is refused.
        """
        self.assertEqual(self.server.psql("SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host'"),
                         "scram-sha-256")
        psycopg = module("psycopg")
        with self.assertRaises(psycopg.OperationalError) as caught:
            self.connect(password="wrong")
        self.assertIn('password authentication failed for user "app"', str(caught.exception))

    def test_psycopg(self) -> None:
        """psycopg 3 (libpq) connects with the keyword DSN and runs queries."""
        connection = self.connect()
        self.assertEqual(connection.execute("SELECT current_user, current_database(), %s::int + 1",
                                            (41,)).fetchone(), ("app", "app", 42))

    def test_psycopg_notices(self) -> None:
        """
        psycopg 3 delivers server notices to its handler (libpq calls back
        through a ctypes.py_object on PyPy, which needs interop's backport).
        """
        connection = self.connect()
        notices: List[str] = []
        connection.add_notice_handler(lambda notice: notices.append(notice.message_primary))
        connection.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        self.assertEqual(notices, ["hello 42"])

    def test_pg8000(self) -> None:
        """pg8000 (pure Python SCRAM) connects with params() and runs queries."""
        pg8000 = module("pg8000.native")
        connection = pg8000.Connection(**self.server.params(user="other"), timeout=10)
        self.addCleanup(connection.close)
        self.assertEqual(connection.run("SELECT current_user, :n::int", n=7), [["other", 7]])
        with self.assertRaises(pg8000.DatabaseError):
            pg8000.Connection(**{**self.server.params(), "password": "wrong"}, timeout=10)

    def test_asyncpg(self) -> None:
        """asyncpg (CPython only) connects with url() and runs queries."""
        asyncpg = module("asyncpg", cpython_only=True)

        async def query() -> Any:
            connection = await asyncpg.connect(self.server.url(), timeout=10)
            try:
                return await connection.fetchrow("SELECT current_user, $1::int", 5)
            finally:
                await connection.close()

        self.assertEqual(tuple(asyncio.run(query())), ("app", 5))

    def test_psycopg2(self) -> None:
        """psycopg2 (CPython only) connects with the keyword DSN."""
        psycopg2 = module("psycopg2", cpython_only=True)
        connection = psycopg2.connect(self.server.dsn(user="other"))
        self.addCleanup(connection.close)
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user, current_database()")
            self.assertEqual(cursor.fetchone(), ("other", "app"))

    def test_sqlalchemy(self) -> None:
        """SQLAlchemy connects with url(scheme=...), over psycopg 3 and over pg8000."""
        sqlalchemy = module("sqlalchemy")
        for scheme in ("postgresql+psycopg", "postgresql+pg8000"):
            engine = sqlalchemy.create_engine(self.server.url(scheme=scheme))
            try:
                with engine.connect() as connection:
                    self.assertEqual(connection.execute(sqlalchemy.text("SELECT current_user")).scalar(),
                                     "app", scheme)
            finally:
                engine.dispose()

    def test_shared_tables(self) -> None:
        """
        What one role creates in the database the others may use (so one
        user can pgbench -i and another run the benchmark).
        """
        self.server.psql("CREATE TABLE made_by_app (x serial, y int);", user="app")
        self.server.psql("INSERT INTO made_by_app (y) VALUES (1);", user="other")
        self.assertEqual(self.server.psql("SELECT x, y FROM made_by_app", user="other"), "1|1")

    def test_scram_secret(self) -> None:
        """
        scram_secret is the role's pg_authid secret, in the SCRAM format,
        and is the secret of its password (StoredKey and ServerKey made
        again from the password and salt with scramp match).
        """
        scramp = module("scramp")
        for user, password in self.server.users.items():
            secret = self.server.scram_secret(user)
            match = SCRAM_SECRET.match(secret)
            self.assertIsNotNone(match, secret)
            assert match is not None
            iterations, salt, stored_key, server_key = match.groups()
            _, stored, server, _ = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
                password, iteration_count=int(iterations), salt=base64.b64decode(salt))
            self.assertEqual((base64.b64encode(stored).decode(), base64.b64encode(server).decode()),
                             (stored_key, server_key), user)

    def test_backend_connections(self) -> None:
        """
        backend_connections counts client backends by database and user,
        not the query's own; wait_backend_connections sees them leave.
        """
        server = self.server
        self.assertEqual(server.backend_connections(user=server.superuser), 0)
        app, other = server.backend_connections("app", "app"), server.backend_connections("app", "other")
        total = server.backend_connections()
        connections = [self.connect() for _ in range(3)] + [self.connect(user="other")]
        self.assertEqual(server.backend_connections("app", "app"), app + 3)
        self.assertEqual(server.backend_connections("app", "other"), other + 1)
        self.assertEqual(server.backend_connections("postgres"), 0)
        self.assertEqual(server.backend_connections(), total + 4)
        for connection in connections:
            connection.close()
        server.wait_backend_connections(app, "app", "app")
        server.wait_backend_connections(total)

    def test_wait_backend_connections_fails(self) -> None:
        """wait_backend_connections fails, with the count it saw, when the count never comes."""
        self.connect()
        with self.assertRaises(AssertionError) as caught:
            self.server.wait_backend_connections(0, "app", "app", timeout=0.2)
        self.assertIn("the last count was 1", str(caught.exception))

    def test_userlist(self) -> None:
        """
        userlist writes PgBouncer's "user" "secret" lines: the SCRAM secrets
        from pg_authid, md5 hashes, or the passwords, for all roles or those named.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        scram = self.server.userlist(os.path.join(directory, "scram.txt"))
        self.assertEqual(read_userlist(scram), [[user, self.server.scram_secret(user)]
                                                for user in ("app", "other")])
        md5 = self.server.userlist(os.path.join(directory, "md5.txt"), ["other"], kind="md5")
        self.assertEqual(read_userlist(md5),
                         [["other", "md5" + hashlib.md5(b"other-secretother").hexdigest()]])
        plain = self.server.userlist(os.path.join(directory, "plain.txt"), kind="plain")
        self.assertEqual(read_userlist(plain), [["app", "app-secret"], ["other", "other-secret"]])
        with self.assertRaises(ValueError):
            self.server.userlist(os.path.join(directory, "x.txt"), kind="sha1")

    def test_pgbench(self) -> None:
        """
        pgbench_init fills pgbench's tables; a 2 s select-only run reports
        tps, transactions and no failures.
        """
        output = pgbench_init(self.server, 1)
        self.assertIn("done in", output)
        self.assertEqual(self.server.psql("SELECT count(*) FROM pgbench_accounts"), "100000")
        result = pgbench(self.server, "-S", "-T", "2", "-c", "2", "-j", "2")
        self.assertGreater(result.tps, 0)
        self.assertGreater(result.transactions, 0)
        self.assertEqual(result.failed, 0)
        self.assertIsNotNone(result.latency_ms)
        self.assertIn("number of clients: 2", result.output)

    def test_pgbench_error(self) -> None:
        """A pgbench that cannot run raises with its output."""
        with self.assertRaises(AssertionError) as caught:
            pgbench(self.server, "-S", "-t", "1", database="no_such_database")
        self.assertIn('database "no_such_database" does not exist', str(caught.exception))

    def test_fresh_databases_per_class(self) -> None:
        """
        A test of another class gets the same server with its databases
        emptied; tests of the same class keep them.
        """
        self.server.psql("CREATE TABLE marker ();", user="app")
        self.assertIs(shared_postgres(self), self.server)
        self.assertEqual(self.server.psql("SELECT to_regclass('marker') IS NOT NULL"), "t")

        class Other(SynchronousTestCase):
            pass

        self.assertIs(shared_postgres(Other()), self.server)
        self.assertEqual(self.server.psql("SELECT to_regclass('marker') IS NULL"), "t")
        self.assertEqual(self.server.psql("SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database "
                                          "WHERE datname = 'app'"), "app")
        shared_postgres(self)

    def test_stopped_shared_server_replaced(self) -> None:
        """A test that stops the shared server gets a new one from the next call."""
        self.server.stop()
        self.assertFalse(accepts(self.server.port))
        server = shared_postgres(self)
        self.assertTrue(server.running())
        self.assertEqual(server.psql("SELECT 1", user="app"), "1")


class PostgresServerTests(SynchronousTestCase):
    """Servers of a test's own."""

    def test_md5_and_quoting(self) -> None:
        """
        With hba_method="md5", passwords are stored and checked as md5
        (psycopg and pg8000 log in; userlist's md5 lines equal pg_authid's);
        role, database and password names needing quotes work everywhere.
        """
        users = {"legacy": "legacy-pw", 'we"ird user': "it's a \\secret"}
        server = postgres_server(self, users=users, databases=("legacy db",), hba_method="md5")
        self.assertEqual(server.psql("SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host'"), "md5")
        secrets = server.secrets(users)
        for user, password in users.items():
            self.assertEqual(secrets[user], "md5" + hashlib.md5((password + user).encode()).hexdigest())
        with self.assertRaises(AssertionError):
            server.scram_secret("legacy")
        userlist = server.userlist(os.path.join(server.directory, "userlist.txt"), kind="md5")
        self.assertEqual(read_userlist(userlist), [[user, secrets[user]] for user in users])

        psycopg = module("psycopg")
        pg8000 = module("pg8000.native")
        for user in users:
            with psycopg.connect(server.dsn(user=user)) as connection:
                self.assertEqual(connection.execute("SELECT current_user, current_database()").fetchone(),
                                 (user, "legacy db"))
            connection = pg8000.Connection(**server.params(user=user), timeout=10)
            self.assertEqual(connection.run("SELECT current_user"), [[user]])
            connection.close()
        with self.assertRaises(psycopg.OperationalError):
            psycopg.connect(server.dsn(user="legacy", password="wrong"))

    def test_settings(self) -> None:
        """
        settings override the defaults; the server listens on 127.0.0.1 only
        and, when the tests run as root, runs as the postgres user.
        """
        server = postgres_server(self, settings={"max_connections": "20"})
        self.assertEqual(server.psql("SHOW max_connections; SHOW fsync; SHOW listen_addresses;"
                                     "SHOW password_encryption;"),
                         "20\noff\n127.0.0.1\nscram-sha-256")
        assert server.process is not None
        with open(f"/proc/{server.process.proc.pid}/status") as f:
            uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
        expected = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
        self.assertEqual(int(uid), expected)

    def test_stop_and_restart(self) -> None:
        """stop() closes the port; start() brings the same cluster back on it."""
        server = postgres_server(self)
        server.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7);", user="app")
        server.stop()
        self.assertFalse(server.running())
        self.assertFalse(accepts(server.port))
        server.start()
        self.assertEqual(server.psql("SELECT x FROM kept", user="app"), "7")

    def test_remove(self) -> None:
        """remove() (the test's cleanup) stops the server and deletes its directory."""
        server = postgres_server(self, users={}, databases=())
        self.assertEqual((server.user, server.database), (server.superuser, "postgres"))
        self.assertTrue(os.path.isdir(server.data))
        server.remove()
        self.assertFalse(os.path.exists(server.directory))
        self.assertFalse(accepts(server.port))


class HarnessTests(SynchronousTestCase):
    """What the harness does when something is missing."""

    def test_missing_program(self) -> None:
        """A missing PostgreSQL program skips, or fails under POOLPROXY_REQUIRE_INTEROP=1."""
        self.patch(interop, "REQUIRED", False)
        self.assertRaises(SkipTest, pg_binary, "no-such-postgres-program")
        self.patch(interop, "REQUIRED", True)
        self.assertRaises(AssertionError, pg_binary, "no-such-postgres-program")

    def test_cpython_only_module(self) -> None:
        """
        module(cpython_only=True) skips on PyPy even under
        POOLPROXY_REQUIRE_INTEROP=1, and imports on CPython; a missing
        module still fails under it.
        """
        self.patch(interop, "REQUIRED", True)
        if platform.python_implementation() == "CPython":
            self.assertEqual(module("asyncpg", cpython_only=True).__name__, "asyncpg")
        else:
            with self.assertRaises(SkipTest) as caught:
                module("asyncpg", cpython_only=True)
            self.assertIn("CPython only", str(caught.exception))
        self.assertRaises(AssertionError, module, "no_such_module_here")

    def test_sweep(self) -> None:
        """
        Directories of test processes killed before their cleanup are
        removed by the next process's first server; live ones are kept.
        """
        parent = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
        dead = subprocess.Popen(["true"])
        dead.wait()
        directories = {}
        for name, pid in (("dead", dead.pid), ("live", os.getpid())):
            directories[name] = tempfile.mkdtemp(prefix=f"poolproxy-pg-{name}-", dir=parent)
            self.addCleanup(shutil.rmtree, directories[name], True)
            with open(os.path.join(directories[name], "owner.pid"), "w") as f:
                f.write(str(pid))
        self.patch(interop, "_swept", False)
        interop._sweep(parent)
        self.assertFalse(os.path.exists(directories["dead"]))
        self.assertTrue(os.path.exists(directories["live"]))


def read_userlist(path: str) -> List[List[str]]:
    """A userlist.txt's entries: two double-quoted fields a line, "" standing for "."""
    with open(path) as f:
        return [[field.replace('""', '"') for field in re.findall(r'"((?:[^"]|"")*)"', line)]
                for line in f]
