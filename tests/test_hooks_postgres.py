"""
Python hooks in transaction mode (postgres, poolproxy.proxy.transaction):
authenticate after the proxy's own password check, route at login (the
client's servers come from the cluster it picks), on_connect and
on_disconnect; each point in three styles, through real sockets with
psycopg against a real PostgreSQL 15 (tests.interop), and hooks that
never answer on a task.Clock.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from poolproxy.assemble import ClusterAssembly
from poolproxy.codecs import postgres as pg
from poolproxy.config import ProxyConfig, codec_options
from poolproxy.hooks.calling import ListenerHooks
from poolproxy.proxy.admission import Admission
from poolproxy.service import ProxyService
from poolproxy.tap import ProxyOptions
from tests import hooks_pg
from tests.interop import free_port, module, postgres_server, shared_postgres
from tests.support import wait_for

#: Listener name -> its hooks (tests.hooks_pg names); all on cluster a.
LISTENERS: Dict[str, Dict[str, str]] = {
    style: {"authenticate": f"authenticate_{style}", "route": f"route_{style}",
            "on_connect": f"connect_{style}", "on_disconnect": f"disconnect_{style}"}
    for style in ("plain", "deferred", "async")}
LISTENERS.update({
    "raises": {"authenticate": "authenticate_raises"},
    "route-raises": {"route": "route_raises"},
    "unknown": {"route": "route_unknown"},
    "nohooks": {},
})
#: Listeners of cluster b's own.
B_LISTENERS = ("direct-b",)


def start_proxy(testcase: Any, server: Any, b_port: int) -> ProxyService:
    """
    The proxy in this process: every listener of L{LISTENERS} on cluster
    a (C{server}), and a cluster b on C{b_port}; clients authenticate
    against a users file of plaintext passwords (so both clusters' server
    logins have a password).
    """
    users = server.userlist(os.path.abspath(testcase.mktemp()), kind="plain")
    text = ['metrics = "tcp:0:interface=127.0.0.1"', "check_interval = 0",
            "shutdown_timeout = 0.5", f'auth_file = "{users}"', "pool_size = 2"]
    for name, hooks in LISTENERS.items():
        table = ", ".join(f'{point} = "tests.hooks_pg:{fn}"' for point, fn in hooks.items())
        text += ["[[listener]]", f'name = "{name}"', 'listen = "tcp:0:interface=127.0.0.1"',
                 'cluster = "a"', f"hooks = {{ {table} }}"]
    for name in B_LISTENERS:
        text += ["[[listener]]", f'name = "{name}"', 'listen = "tcp:0:interface=127.0.0.1"',
                 'cluster = "b"']
    for name, port in (("a", server.port), ("b", b_port)):
        text += ["[[cluster]]", f'name = "{name}"', 'protocol = "postgres"',
                 "[[cluster.backend]]", f'address = "127.0.0.1:{port}"']
    path = testcase.mktemp()
    with open(path, "w") as f:
        f.write("\n".join(text) + "\n")
    options = ProxyOptions()
    options.parseOptions(["--config", path])
    service = ProxyService(options.config)
    service.startService()
    testcase.addCleanup(service.stopService)
    return service


class PostgresHookTests(TestCase):
    """psycopg 3 through the proxy's listeners to a real PostgreSQL."""

    def setUp(self) -> None:
        hooks_pg.reset()
        self.psycopg = module("psycopg")
        self.server = shared_postgres(self)
        self.service = start_proxy(self, self.server, free_port())
        self.listeners = {l.name: l for l in self.service.listeners}

    def port(self, listener: str) -> int:
        return int(self.listeners[listener].service.port.getHost().port)

    def hook(self, listener: str, point: str) -> Any:
        return getattr(self.listeners[listener].factory.hooks, point)

    def query(self, listener: str, sql: str, user: str = "app",
              application_name: str = "hooktest", times: int = 1) -> Any:
        """Connect in a thread (psycopg blocks), run C{sql} C{times}, return the last value."""
        def run() -> Any:
            with self.psycopg.connect(
                    host="127.0.0.1", port=self.port(listener), user=user,
                    password=self.server.users[user], dbname="app", connect_timeout=10,
                    application_name=application_name) as conn:
                for _ in range(times):
                    value = conn.execute(sql).fetchone()[0]
                    conn.commit()
                return value
        return deferToThread(run)

    @inlineCallbacks
    def refused(self, listener: str, **kwargs: Any) -> Any:
        """The error a login to C{listener} fails with."""
        try:
            yield self.query(listener, "SELECT 1", **kwargs)
        except self.psycopg.OperationalError as e:
            return str(e)
        self.fail(f"{listener}: the login was not refused")

    @inlineCallbacks
    def test_authenticate_styles(self) -> None:
        """
        Each style of authenticate hook is called once per login, after
        the proxy checked the password (password_ok, no password shown),
        with the startup's user, database and parameters; its identity is
        kept; its refusal is a 28000 error, counted as an auth failure.
        """
        for style in ("plain", "deferred", "async"):
            self.assertEqual((yield self.query(style, "SELECT 7")), 7)
            seen = [s for name, s in hooks_pg.calls if name == f"authenticate_{style}"]
            self.assertEqual(len(seen), 1, style)
            self.assertEqual({k: seen[0][k] for k in ("listener", "protocol", "username",
                                                       "database", "password", "password_ok",
                                                       "identity", "host")},
                             {"listener": style, "protocol": "postgres", "username": "app",
                              "database": "app", "password": None, "password_ok": True,
                              "identity": None, "host": "127.0.0.1"})
            self.assertEqual(seen[0]["parameters"]["application_name"], "hooktest")
            # The route hook runs after it and sees the identity it gave.
            routed = [s for name, s in hooks_pg.calls if name == f"route_{style}"]
            self.assertEqual([(r["identity"], r["cluster"]) for r in routed], [("id:app", "a")])

            why = yield self.refused(style, application_name="intruder")
            self.assertIn("poolproxy: authentication refused", why)
            hook = self.hook(style, "authenticate")
            self.assertEqual((hook.ok, hook.refused), (2, 1))
            self.assertEqual(self.listeners[style].stats.auth_failures, 1)
        self.assertEqual(self.hook("deferred", "authenticate").asynchronous, 2)
        self.assertEqual(self.hook("async", "authenticate").asynchronous, 2)

    @inlineCallbacks
    def test_wrong_password_never_reaches_the_hook(self) -> None:
        """The proxy's own check comes first: a wrong password is refused as ever."""
        def run() -> Any:
            return self.psycopg.connect(host="127.0.0.1", port=self.port("plain"),
                                        user="app", password="wrong", dbname="app",
                                        connect_timeout=10)
        with self.assertRaises(self.psycopg.OperationalError) as caught:
            yield deferToThread(run)
        self.assertIn("password authentication failed", str(caught.exception))
        self.assertEqual([n for n, _ in hooks_pg.calls if n.startswith("authenticate")], [])

    @inlineCallbacks
    def test_authenticate_raises(self) -> None:
        """
        A hook that raises refuses the login with its own text (never the
        exception's), logged once per interval; other clients are served.
        """
        with capturedLogs() as events:
            for _ in range(2):
                why = yield self.refused("raises")
                self.assertIn("poolproxy: the authenticate hook failed", why)
                self.assertNotIn("directory", why)
        said = [e for e in events if e.get("listener") == "raises"]
        self.assertEqual(len(said), 1, said)
        self.assertIn("RuntimeError", said[0]["why"])
        hook = self.hook("raises", "authenticate")
        self.assertEqual((hook.errors, hook.refused), (2, 2))
        self.assertEqual(self.listeners["raises"].stats.auth_failures, 2)
        self.assertEqual((yield self.query("plain", "SELECT 1")), 1)

    @inlineCallbacks
    def test_route_refusals(self) -> None:
        """
        A route hook that raises, or names a cluster the listener does not
        have: the login fails (08004) before any server connection is
        leased, logged once per interval.
        """
        with capturedLogs() as events:
            for _ in range(2):
                why = yield self.refused("unknown")
                self.assertIn("chose no cluster this listener serves ('nowhere')", why)
            why = yield self.refused("route-raises")
            self.assertIn("poolproxy: the route hook failed", why)
        self.assertEqual(len([e for e in events if e.get("listener") == "unknown"]), 1)
        self.assertEqual(len([e for e in events if e.get("listener") == "route-raises"]), 1)
        self.assertEqual(self.hook("unknown", "route").refused, 2)
        self.assertEqual(self.hook("route-raises", "route").refused, 1)
        self.assertEqual(self.listeners["unknown"].stats.requests_ok, 0)

    @inlineCallbacks
    def test_connect_and_disconnect(self) -> None:
        """on_connect and on_disconnect in each style, once per connection, the same client."""
        for style in ("plain", "deferred", "async"):
            yield self.query(style, "SELECT 1")
        for style in ("plain", "deferred", "async"):
            yield wait_for(lambda: [c for n, c in hooks_pg.calls if n == f"disconnect_{style}"],
                           what=f"on_disconnect ({style})")
            connected = [c for n, c in hooks_pg.calls if n == f"connect_{style}"]
            disconnected = [c for n, c in hooks_pg.calls if n == f"disconnect_{style}"]
            self.assertEqual((len(connected), len(disconnected)), (1, 1))
            self.assertIs(connected[0], disconnected[0])
            self.assertEqual((connected[0].username, connected[0].identity), ("app", "id:app"))


class PostgresRouteTests(TestCase):
    """Two PostgreSQL servers, one per cluster; the route hook picks by user."""

    @inlineCallbacks
    def test_route_by_user_to_two_servers(self) -> None:
        """
        User other is routed to cluster b: every transaction of its
        session runs on b's server, prepared statements included; app stays
        on the listener's own cluster.  In each hook style.
        """
        psycopg = module("psycopg")
        a = shared_postgres(self)
        b = postgres_server(self)
        service = start_proxy(self, a, b.port)
        listeners = {l.name: l for l in service.listeners}
        hooks_pg.reset()

        def ports(listener: str, user: str) -> List[str]:
            port = listeners[listener].service.port.getHost().port
            with psycopg.connect(host="127.0.0.1", port=port, user=user,
                                 password=a.users[user], dbname="app", connect_timeout=10,
                                 prepare_threshold=0, autocommit=True) as conn:
                return [conn.execute("SELECT current_setting('port') WHERE %s > 0",
                                     (n + 1,)).fetchone()[0] for n in range(3)]

        for style in ("plain", "deferred", "async"):
            got = yield deferToThread(ports, style, "other")
            self.assertEqual(got, [str(b.port)] * 3, style)
            got = yield deferToThread(ports, style, "app")
            self.assertEqual(got, [str(a.port)] * 3, style)

        # A client of b's own listener, on the same server connections as
        # the routed clients: its statements are its own, not theirs of
        # the same server-side name.
        def other_statement() -> Any:
            port = listeners["direct-b"].service.port.getHost().port
            with psycopg.connect(host="127.0.0.1", port=port, user="other",
                                 password=a.users["other"], dbname="app", connect_timeout=10,
                                 prepare_threshold=0, autocommit=True) as conn:
                return [conn.execute("SELECT %s::int * 1000", (n,)).fetchone()[0]
                        for n in range(3)]
        got = yield deferToThread(other_statement)
        self.assertEqual(got, [0, 1000, 2000])


def _startup(user: bytes = b"app", database: bytes = b"app") -> bytes:
    return pg.startup_message({b"user": user, b"database": database})


class ClockTests(SynchronousTestCase):
    """
    A postgres listener's factory on a MemoryReactorClock (auth_type
    trust), its client on a StringTransport: hooks that never answer.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.admission = Admission(10, 10, 1.0, clock=self.reactor)
        self.factory = self.assemble("127.0.0.1:5432").frontend("l")
        self.other = self.assemble("127.0.0.1:6543").cluster
        self.factory.hooks = self.hooks = ListenerHooks("l", self.reactor, 1.0)
        self.factory.routes = {"a": self.factory.cluster, "b": self.other}
        hooks_pg.reset()

    def assemble(self, backend: str) -> ClusterAssembly:
        config = ProxyConfig(protocol="postgres", listen=("tcp:0",), backend=(backend,),
                             auth_type="trust")
        return ClusterAssembly(config.clusters[0], config, self.reactor, self.admission,
                               codec_options(config))

    def client(self) -> Tuple[Any, StringTransport]:
        client = self.factory.buildProtocol(None)
        transport = StringTransport()
        client.makeConnection(transport)
        return client, transport

    def errors(self, transport: StringTransport) -> List[Dict[str, str]]:
        return [pg.error_fields(body) for kind, body in pg.MessageReader().feed(transport.value())
                if kind == b"E"]

    def connects(self) -> List[Tuple[str, int]]:
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def test_authenticate_never_answers(self) -> None:
        """
        At hook_timeout the login is refused: FATAL 28000, closed, an auth
        failure; no server connection was asked for.  What the client sent
        meanwhile was held, not read as messages.
        """
        self.hooks.load({"authenticate": "tests.hooks_pg:authenticate_never"})
        client, transport = self.client()
        client.dataReceived(_startup() + pg.query(b"SELECT 1"))
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(1.0)
        [error] = self.errors(transport)
        self.assertEqual((error["S"], error["C"], error["M"]),
                         ("FATAL", "28000", "poolproxy: the authenticate hook failed"))
        self.assertTrue(transport.disconnecting)
        hook = self.hooks.authenticate
        self.assertEqual((hook.timeouts, hook.refused), (1, 1))
        self.assertEqual(self.factory.stats.auth_failures, 1)
        self.assertEqual(self.connects(), [])
        # What hooks_pg saw: trust checked no password.
        [(name, seen)] = hooks_pg.calls
        self.assertEqual((seen["username"], seen["password_ok"]), ("app", None))

    def test_flood_while_pending(self) -> None:
        """
        A client that sends without end while its login hook runs: what it
        sent is kept within a bound (reading pauses), not read as messages.
        """
        self.hooks.load({"authenticate": "tests.hooks_pg:authenticate_never"})
        client, transport = self.client()
        client.dataReceived(_startup())
        for _ in range(64):
            client.dataReceived(pg.query(b"SELECT 1") * 1000)
            if transport.producerState == "paused":
                break
        self.assertEqual(transport.producerState, "paused")
        self.assertLess(len(client._buffer), 2 * client.AUTH_MESSAGE_MAX)
        self.assertEqual(self.connects(), [])

    def test_reading_resumes_at_welcome(self) -> None:
        """Paused before its welcome (a slow first login), reading resumes with it."""
        client, transport = self.client()
        client.dataReceived(_startup())
        client.dataReceived(pg.SYNC * (client.AUTH_MESSAGE_MAX // 5 + 1))
        self.assertEqual(transport.producerState, "paused")
        client._welcome({b"server_version": b"15"})
        self.assertEqual(transport.producerState, "producing")

    def test_route_never_answers(self) -> None:
        """At hook_timeout the login is refused with 08004 before any lease."""
        self.hooks.load({"route": "tests.hooks_pg:route_never"})
        client, transport = self.client()
        client.dataReceived(_startup())
        self.reactor.advance(0.999)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(0.001)
        [error] = self.errors(transport)
        self.assertEqual((error["C"], error["M"]), ("08004", "poolproxy: the route hook failed"))
        self.assertEqual((self.hooks.route.timeouts, self.hooks.route.refused), (1, 1))
        self.assertEqual(self.connects(), [])

    def test_route_picks_the_servers(self) -> None:
        """The route hook's cluster is where the client's server login goes."""
        self.hooks.load({"route": "tests.hooks_pg:route_b"})
        client, transport = self.client()
        client.dataReceived(_startup())
        self.assertEqual(self.connects(), [("127.0.0.1", 6543)])
        self.assertIs(client.cluster, self.other)

    def test_client_gone_while_pending(self) -> None:
        """A client gone while its hook runs: on_disconnect told, the late answer ignored."""
        self.hooks.load({"authenticate": "tests.hooks_pg:authenticate_never",
                         "on_disconnect": "tests.hooks_pg:disconnect_plain"})
        client, transport = self.client()
        client.dataReceived(_startup())
        client.connectionLost(Failure(Exception("gone")))
        self.assertEqual([name for name, _ in hooks_pg.calls],
                         ["authenticate_never", "disconnect_plain"])
        self.reactor.advance(1.0)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.connects(), [])

    def test_no_hooks(self) -> None:
        """Without hooks nothing is made for them; the login goes on at once."""
        client, transport = self.client()
        client.dataReceived(_startup())
        self.assertIsNone(client.hook_client)
        self.assertEqual(self.connects(), [("127.0.0.1", 5432)])

    def test_statement_names_apart(self) -> None:
        """
        Two listeners' server-side statement names differ: a client routed
        to another cluster prepares on connections that listener's clients
        use too.
        """
        other = self.assemble("127.0.0.1:5432").frontend("m")
        self.assertNotEqual(self.factory.statement_names.name_for(b"SELECT 1"),
                            other.statement_names.name_for(b"SELECT 1"))
