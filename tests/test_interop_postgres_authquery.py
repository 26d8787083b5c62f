"""
auth_query, the users file re-read by SIGHUP, and the login health probe,
against a real PostgreSQL 15 (tests.interop.postgres_server) and a real
proxy (twistd, ProxyProcess), with psycopg 3 as the client.
"""

from __future__ import annotations

import os
import signal
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase

from poolproxy.backends.health import ProbeFailed, postgres_probe
from poolproxy.codecs.postgres_login import LoginCredentials, ServerLogin
from tests.interop import (SUPERUSER, SUPERUSER_PASSWORD, ProxyProcess, module, postgres_server,
                           wait_until)

#: A function a plain role may run to look users up (docs/postgres.md).
LOOKUP_FUNCTION = """
CREATE FUNCTION public.pooler_lookup(p_user name, OUT uname name, OUT phash text)
  RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
$$ SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END
     FROM pg_authid WHERE rolname = p_user AND rolcanlogin $$;
REVOKE ALL ON FUNCTION public.pooler_lookup(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.pooler_lookup(name) TO lookup;
"""
USERS = {"app": "app-secret", "other": "other-secret", "lookup": "lookup-secret"}


def lines(pp: ProxyProcess, fragment: str) -> List[str]:
    """The lines of the proxy's log that hold C{fragment}."""
    with open(pp.process.log, errors="replace") as f:
        return [line for line in f if fragment in line]


def users_file(testcase: Any, *entries: str) -> str:
    """A users file of C{entries} (each a whole line)."""
    path = os.path.abspath(testcase.mktemp())
    with open(path, "w") as f:
        f.write("".join(entry + "\n" for entry in entries))
    return path


class AuthQueryTests(SynchronousTestCase):
    """Users not in the users file, looked up on the server."""

    def setUp(self) -> None:
        self.psycopg = module("psycopg")
        self.server = postgres_server(self, users=USERS)

    def proxy(self, *extra: str) -> ProxyProcess:
        return ProxyProcess(self, "postgres", [self.server.port], "--pool-size", "2",
                            "--mux-connections", "1", *extra)

    def connect(self, pp: ProxyProcess, user: str, password: str) -> Any:
        return self.psycopg.connect(host="127.0.0.1", port=pp.port, user=user, password=password,
                                    dbname="app", connect_timeout=10)

    def refused(self, pp: ProxyProcess, user: str, password: str) -> str:
        with self.assertRaises(self.psycopg.OperationalError) as caught:
            self.connect(pp, user, password)
        return str(caught.exception)

    def test_default_query(self) -> None:
        """
        auth_user is the superuser (its password in the file) with
        PgBouncer's default query: app, in no users file, logs in with its
        password, and the proxy logs into the server as app by SCRAM
        pass-through (it knows no password of app's).  A wrong password, an
        unknown user, and (nothing cached) a password changed on the server
        and an expired one count at the next login.
        """
        pp = self.proxy("--auth-file", users_file(self, f'"{SUPERUSER}" "{SUPERUSER_PASSWORD}"'),
                        "--auth-user", SUPERUSER)
        with self.connect(pp, "app", "app-secret") as conn:
            self.assertEqual(conn.execute("select current_user").fetchone(), ("app",))
        self.assertIn("password authentication failed", self.refused(pp, "app", "wrong"))
        self.assertIn("password authentication failed", self.refused(pp, "nobody", "x"))

        self.server.psql("ALTER ROLE app PASSWORD 'new-secret'")
        self.assertIn("password authentication failed", self.refused(pp, "app", "app-secret"))
        with self.connect(pp, "app", "new-secret") as conn:
            self.assertEqual(conn.execute("select 1").fetchone(), (1,))

        with self.connect(pp, "other", "other-secret") as conn:
            conn.execute("select 1")
        self.server.psql("ALTER ROLE other VALID UNTIL '2000-01-01'")
        self.assertIn("password authentication failed", self.refused(pp, "other", "other-secret"))
        self.assertEqual(lines(pp, "auth_query for user"), [])  # no lookup failed

    def test_security_definer_function(self) -> None:
        """
        A plain role runs a SECURITY DEFINER function, as docs/postgres.md
        says: a user found logs in; a user the function does not find (a
        row of NULLs) is refused.
        """
        self.server.psql(LOOKUP_FUNCTION, database="app")
        pp = self.proxy("--auth-file", users_file(self, '"lookup" "lookup-secret"'),
                        "--auth-user", "lookup",
                        "--auth-query", "SELECT uname, phash FROM public.pooler_lookup($1)")
        with self.connect(pp, "other", "other-secret") as conn:
            self.assertEqual(conn.execute("select current_user").fetchone(), ("other",))
        self.assertIn("password authentication failed", self.refused(pp, "ghost", "x"))

    def test_lookup_fails(self) -> None:
        """
        A plain auth_user with the default query may not read pg_authid:
        every such login gets 28P01, and the log says why once.
        """
        pp = self.proxy("--auth-file", users_file(self, '"lookup" "lookup-secret"'),
                        "--auth-user", "lookup")
        for _ in range(3):
            self.assertIn("password authentication failed", self.refused(pp, "app", "app-secret"))
        failed = lines(pp, "auth_query for user 'app'")
        self.assertEqual(len(failed), 1, pp.log())
        self.assertIn("permission denied for table pg_authid", failed[0])

    def test_md5(self) -> None:
        """
        A server that keeps md5 hashes: the client is asked for md5 and the
        proxy logs in with the hash (md5 pass-through).
        """
        server = postgres_server(self, users=USERS, hba_method="md5")
        pp = ProxyProcess(self, "postgres", [server.port], "--mux-connections", "1",
                          "--auth-file", users_file(self, f'"{SUPERUSER}" "{SUPERUSER_PASSWORD}"'),
                          "--auth-user", SUPERUSER)
        with self.psycopg.connect(host="127.0.0.1", port=pp.port, user="app",
                                  password="app-secret", dbname="app", connect_timeout=10) as conn:
            self.assertEqual(conn.execute("select current_user").fetchone(), ("app",))


class UsersFileSighupTests(SynchronousTestCase):
    """SIGHUP to a real twistd re-reads the users file."""

    def test_new_user_after_sighup(self) -> None:
        """
        other is not in the users file, so it is refused; its line added and
        SIGHUP sent, it logs in (SCRAM pass-through with the secret copied
        from pg_authid).  A file that then does not read keeps the users in
        use, with a line saying why.
        """
        psycopg = module("psycopg")
        server = postgres_server(self)
        path = os.path.abspath(self.mktemp())
        server.userlist(path, ["app"])
        pp = ProxyProcess(self, "postgres", [server.port], "--mux-connections", "1",
                          "--auth-file", path)

        def login(user: str) -> bool:
            try:
                with psycopg.connect(host="127.0.0.1", port=pp.port, user=user,
                                     password=server.password(user), dbname="app",
                                     connect_timeout=10) as conn:
                    return conn.execute("select current_user").fetchone() == (user,)
            except psycopg.OperationalError:
                return False

        def sighup() -> None:
            done = len(lines(pp, "reload: done"))
            pp.process.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: len(lines(pp, "reload: done")) > done, pp.process.proc,
                       "the reload", log=pp.process.log)

        self.assertTrue(login("app"))
        self.assertFalse(login("other"))
        server.userlist(path, ["app", "other"])
        sighup()
        self.assertTrue(login("other"))
        self.assertEqual(len(lines(pp, f"reload: auth_file: 2 users from {path}")), 1)

        with open(path, "a") as f:
            f.write("not a users file line\n")
        sighup()
        kept = lines(pp, "keeping the one in use")
        self.assertEqual(len(kept), 1, pp.log())
        self.assertIn(f"auth_file {path}: users file line 3", kept[0])
        self.assertTrue(login("other"))


class LoginProbeTests(TestCase):
    """The login probe against a real server, directly and through the proxy's checks."""

    def setUp(self) -> None:
        self.server = postgres_server(self)

    def probe(self, user: str, password: str, database: str = "postgres") -> Any:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.server.port, timeout=10)
        return postgres_probe(endpoint, lambda: ServerLogin(
            user.encode(), database.encode(), LoginCredentials(password=password)))()

    async def test_probe(self) -> None:
        """
        The right password passes (SCRAM login, SELECT 1, Terminate); a
        wrong one or a database that does not exist fails, with the
        server's reason.
        """
        await self.probe("app", "app-secret")
        with self.assertRaises(ProbeFailed) as caught:
            await self.probe("app", "wrong")
        self.assertIn('28P01: password authentication failed for user "app"',
                      str(caught.exception))
        with self.assertRaises(ProbeFailed) as caught:
            await self.probe("app", "app-secret", "nodb")
        self.assertIn('3D000: database "nodb" does not exist', str(caught.exception))

    def test_proxy_checks(self) -> None:
        """
        With auth_user's password in the file, the proxy's checks pass and
        clients are served; with a wrong one, they fail, the backend goes
        out, and the log says why.
        """
        def proxy(password: str) -> ProxyProcess:
            return ProxyProcess(self, "postgres", [self.server.port], "--mux-connections", "1",
                                "--auth-file", users_file(self, f'"app" "{password}"'),
                                "--auth-user", "app", "--check-interval", "0.2",
                                "--check-fall", "1")

        good = proxy("app-secret")
        wait_until(lambda: good.metric("poolproxy_backend_health_state", state="healthy") == 1,
                   good.process.proc, "a healthy backend", log=good.process.log)
        self.assertEqual(self.server.psql("select 1", user="app", database="app",
                                          port=good.port), "1")
        bad = proxy("wrong")
        wait_until(lambda: bad.metric("poolproxy_backend_health_state", state="unhealthy") == 1,
                   bad.process.proc, "an unhealthy backend", log=bad.process.log)
        self.assertTrue(lines(bad, 'login failed: 28P01: password authentication failed '
                                   'for user "app"'), bad.log())
