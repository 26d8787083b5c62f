"""
Reloading the configuration file (SIGHUP): backends added, re-weighted and
removed (after draining) without dropping client connections; a broken file
keeps the running configuration.
"""

from __future__ import annotations

import os
import signal
from typing import Any, List

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from poolproxy.service import ProxyService
from poolproxy.tap import ProxyOptions
from tests.support import serve_web, wait_for


class Named(Resource):
    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name
        self.hold = False
        self.held: List[Any] = []

    def render_GET(self, request: Any) -> Any:
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return self.name


class ReloadTests(TestCase):
    def setUp(self) -> None:
        self.resources = {}
        self.ports = {}
        for name in ("a", "b"):
            resource = Named(name.encode())
            self.resources[name] = resource
            self.ports[name] = serve_web(self, resource)
        self.path = os.path.abspath(self.mktemp())
        self.client_pool = HTTPConnectionPool(reactor, persistent=True)
        self.client_pool.maxPersistentPerHost = 1
        self.addCleanup(self.client_pool.closeCachedConnections)

    def write(self, backends: Any, extra: str = "", cluster_extra: str = "",
              addresses: Any = None, listener_extra: str = "") -> None:
        """The file: C{backends} are (name, weight); C{addresses} maps a name to another's port."""
        addresses = addresses or {}
        lines = ['metrics = "tcp:0:interface=127.0.0.1"', "check_interval = 0",
                 "shutdown_timeout = 30", extra, "",
                 "[[listener]]", 'name = "web"', 'listen = "tcp:0:interface=127.0.0.1"',
                 listener_extra, "",
                 "[[cluster]]", 'name = "web"', 'protocol = "http"', 'balance = "round_robin"',
                 cluster_extra]
        for name, weight in backends:
            port = self.ports[addresses.get(name, name)]
            lines += ["[[cluster.backend]]", f'name = "{name}"',
                      f'address = "127.0.0.1:{port}"', f"weight = {weight}"]
        with open(self.path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, **kwargs: Any) -> ProxyService:
        options = ProxyOptions()
        options.parseOptions(["--config", self.path])
        service = ProxyService(options.config, reload_config=options.reload, **kwargs)
        service.startService()
        self.addCleanup(service.stopService)
        self.port = service.listeners[0].service.port.getHost().port
        return service

    @inlineCallbacks
    def fetch(self, n: int) -> Any:
        # One keep-alive client connection throughout: a reload must not drop it.
        agent = Agent(reactor, pool=self.client_pool)
        bodies = []
        for _ in range(n):
            response = yield agent.request(b"GET", b"http://127.0.0.1:%d/" % self.port)
            bodies.append((yield readBody(response)))
        return bodies

    @inlineCallbacks
    def test_add_reweight_remove(self) -> None:
        """
        Adding b with weight 3 splits requests 1:3; removing a drains it (its
        request in flight finishes) and sends everything to b; the client's
        keep-alive connection survives every reload.
        """
        self.write([("a", 1)])
        service = self.start()
        self.assertEqual((yield self.fetch(4)), [b"a"] * 4)
        clients_before = service.listeners[0].stats.connections_total

        self.write([("a", 1), ("b", 3)])
        self.assertTrue(service.reload())
        bodies = yield self.fetch(40)
        self.assertEqual((bodies.count(b"a"), bodies.count(b"b")), (10, 30))

        self.resources["a"].hold = True
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        in_flight = None
        sent = 0
        for _ in range(4):  # round robin: one of these reaches a and is held
            sent += 1
            d = agent.request(b"GET", b"http://127.0.0.1:%d/" % self.port)
            yield wait_for(lambda: d.called or self.resources["a"].held, what="answered or held")
            if self.resources["a"].held:
                in_flight = d
                break
            yield d.addCallback(readBody)
        self.assertIsNotNone(in_flight)
        self.write([("b", 3)])
        self.assertTrue(service.reload())
        self.assertEqual((yield self.fetch(6)), [b"b"] * 6)
        a_pool = [p for p in service.pools if p.name == "a"]
        self.assertEqual(len(a_pool), 1)  # still draining
        request = self.resources["a"].held[0]
        request.write(b"a, late")
        request.finish()
        response = yield in_flight
        self.assertEqual((yield readBody(response)), b"a, late")
        yield wait_for(lambda: not any(p.name == "a" for p in service.pools), what="a closed")
        # Only the separate clients above connected anew: the keep-alive client
        # used for every fetch kept its one connection through three reloads.
        self.assertEqual(service.listeners[0].stats.connections_total, clients_before + sent)

    @inlineCallbacks
    def test_what_needs_a_restart_is_logged(self) -> None:
        """
        A reload that changes a backend's address, a cluster's setting and a
        top-level one logs each as needing a restart, by name, and keeps the
        running ones: a's requests still go to a's server.
        """
        self.write([("a", 1)])
        service = self.start()
        self.write([("a", 1)], extra="request_timeout = 5.0", cluster_extra="pool_size = 3",
                   addresses={"a": "b"})
        with capturedLogs() as events:
            self.assertTrue(service.reload())
        restart = [e for e in events if "need a restart" in e.get("log_format", "")
                   or "needs a restart" in e.get("log_format", "")]
        text = " | ".join(formatEvent(e) for e in restart)
        self.assertIn("backend a of cluster web", text)
        self.assertIn(f"127.0.0.1:{self.ports['b']}", text)
        self.assertIn("cluster web: pool_size", text)
        self.assertIn("request_timeout", text)
        self.assertEqual(len(restart), 3, text)
        self.assertEqual((yield self.fetch(2)), [b"a", b"a"])
        self.assertEqual(service.cluster.backends[0].pool.size, 10)

    @inlineCallbacks
    def test_broken_file_keeps_running_config(self) -> None:
        """
        A reload that finds a broken file logs why and changes nothing.
        """
        self.write([("a", 1)])
        service = self.start()
        with open(self.path, "a") as f:
            f.write("this is not toml = = =\n")
        with capturedLogs() as events:
            self.assertFalse(service.reload())
        errors = [e for e in events if "broken" in e.get("log_format", "")]
        self.assertEqual(len(errors), 1)
        self.assertIn("not valid TOML", errors[0]["why"])
        self.assertEqual((yield self.fetch(2)), [b"a", b"a"])

    @inlineCallbacks
    def test_sighup_reloads(self) -> None:
        """SIGHUP makes a service started with handle_sighup reload its file."""
        self.write([("a", 1)])
        service = self.start(handle_sighup=True)
        self.write([("a", 1), ("b", 1)])
        os.kill(os.getpid(), signal.SIGHUP)
        yield wait_for(lambda: service.reloader.reloads == 1, what="reload")
        self.assertEqual(sorted(b.name for b in service.cluster.backends), ["a", "b"])

    def test_added_backend_shrinks_the_client_cap(self) -> None:
        """
        A backend a reload adds takes its pool's descriptors from the
        clients' share: with a 200-descriptor budget the cap goes from 92 to
        82 (b's pool of 10), and the log says so.
        """
        self.write([("a", 1)])
        service = self.start(open_files=200)
        self.assertEqual(service.limits.cap, 200 - 10 - 33 - 1 - 64)
        self.write([("a", 1), ("b", 1)])
        with capturedLogs() as events:
            self.assertTrue(service.reload())
        self.assertEqual(service.limits.cap, 82)
        lines = [formatEvent(e) for e in events if "now capped" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        self.assertIn("backend b added: client connections now capped at 82", lines[0])

    def test_listener_cap_change_needs_restart(self) -> None:
        """A listener's max_connections changed by a reload is logged as needing a restart."""
        self.write([("a", 1)], listener_extra="max_connections = 100")
        service = self.start()
        self.write([("a", 1)], listener_extra="max_connections = 50")
        with capturedLogs() as events:
            self.assertTrue(service.reload())
        self.assertIn("reload: listener changes need a restart",
                      [formatEvent(e) for e in events])
        self.assertEqual(service.listeners[0].connection_limit, 100)


class UsersFileReloadTests(TestCase):
    """postgres: SIGHUP reads the users file (auth_file) again, as it does secrets."""

    def write(self, path: str, text: str) -> None:
        with open(path, "w") as f:
            f.write(text)

    def test_users_file_reread(self) -> None:
        """
        A line added to the users file is in use after a reload, with one
        line saying so (never a secret); a file that then does not read
        keeps the users in use, with a line saying why, and the rest of the
        reload goes on.
        """
        users_file = os.path.abspath(self.mktemp())
        self.write(users_file, '"app" "app-secret"\n')
        config = os.path.abspath(self.mktemp())
        self.write(config, "\n".join([
            'metrics = "tcp:0:interface=127.0.0.1"', "check_interval = 0",
            'listen = "tcp:0:interface=127.0.0.1"', 'protocol = "postgres"',
            'backend = "127.0.0.1:1"', f'auth_file = "{users_file}"']) + "\n")
        options = ProxyOptions()
        options.parseOptions(["--config", config])
        service = ProxyService(options.config, reload_config=options.reload)
        service.startService()
        self.addCleanup(service.stopService)
        users = service.assemblies["default"].context.kept["users"]

        self.write(users_file, '"app" "app-secret"\n"other" "other-secret"\n')
        with capturedLogs() as events:
            self.assertTrue(service.reload())
        said = [formatEvent(e) for e in events]
        self.assertIn(f"reload: auth_file: 2 users from {users_file}", said)
        self.assertNotIn("secret", " ".join(said))
        self.assertEqual(sorted(users.entries), ["app", "other"])

        self.write(users_file, '"app" "app-secret"\nnot a users file line\n')
        with capturedLogs() as events:
            self.assertTrue(service.reload())
        said = [formatEvent(e) for e in events]
        self.assertIn(f"reload: auth_file {users_file}: users file line 2: expected \"user\" "
                      "\"password\"; keeping the one in use", said)
        self.assertIn("reload: done", said)
        self.assertEqual(sorted(users.entries), ["app", "other"])
        self.assertEqual(service.reloader.files_kept, 1)
