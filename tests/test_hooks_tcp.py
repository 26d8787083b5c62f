"""
Python hooks in tcp mode (poolproxy.proxy.session): on_connect and
on_disconnect, and route, called once per session before its backend
lease, over real loopback sockets with real backends; a route hook that
never answers on a task.Clock.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from poolproxy.assemble import ClusterAssembly
from poolproxy.config import ProxyConfig, codec_options
from poolproxy.hooks.calling import ListenerHooks
from poolproxy.proxy.admission import Admission
from poolproxy.service import ProxyService
from poolproxy.tap import ProxyOptions
from tests import hooks_tcp
from tests.support import BackendFactory, Client, Echo, connect, serve, wait_for


class Tagged(Echo):
    """Says its backend's tag first, then echoes; closes when the client half-closes."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(self.factory.tag)


#: Listener name -> its hooks (tests.hooks_tcp names); all on cluster a.
LISTENERS: Dict[str, Dict[str, str]] = {
    "plain": {"route": "route_plain", "on_connect": "connect_plain",
              "on_disconnect": "disconnect_plain"},
    "plain-b": {"route": "route_plain"},
    "deferred-b": {"route": "route_deferred", "on_connect": "connect_deferred",
                   "on_disconnect": "disconnect_deferred"},
    "async-b": {"route": "route_async", "on_connect": "connect_async",
                "on_disconnect": "disconnect_async"},
    "gated-b": {"route": "route_gated"},
    "raises": {"route": "route_raises"},
    "unknown": {"route": "route_unknown"},
    "nohooks": {},
}


class RouteTests(TestCase):
    """Two tcp clusters behind listeners with hooks of every style."""

    def setUp(self) -> None:
        hooks_tcp.reset()
        self.backends = {}
        for name in ("a", "b"):
            factory = BackendFactory(Tagged)
            factory.tag = b"[%s]" % name.encode()  # type: ignore[attr-defined]
            factory.port = serve(self, factory)  # type: ignore[attr-defined]
            self.backends[name] = factory
        path = self.mktemp()
        text = ['metrics = "tcp:0:interface=127.0.0.1"', "check_interval = 0",
                "shutdown_timeout = 0.5"]
        for name, hooks in LISTENERS.items():
            table = ", ".join(f'{point} = "tests.hooks_tcp:{fn}"' for point, fn in hooks.items())
            text += ["[[listener]]", f'name = "{name}"', 'listen = "tcp:0:interface=127.0.0.1"',
                     'cluster = "a"', f"hooks = {{ {table} }}"]
        for name, backend in self.backends.items():
            text += ["[[cluster]]", f'name = "{name}"', 'protocol = "tcp"',
                     "[[cluster.backend]]", f'address = "127.0.0.1:{backend.port}"']
        with open(path, "w") as f:
            f.write("\n".join(text) + "\n")
        options = ProxyOptions()
        options.parseOptions(["--config", path])
        self.service = ProxyService(options.config)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.listeners = {l.name: l for l in self.service.listeners}

    def session(self, listener: str, data: bytes = b"ping") -> Client:
        port = self.listeners[listener].service.port.getHost().port
        return connect(port, Client(data, half_close=True))

    def hook(self, listener: str, point: str = "route") -> Any:
        return getattr(self.listeners[listener].factory.hooks, point)

    def called(self, name: str) -> List[Any]:
        return [subject for hook, subject in hooks_tcp.calls if hook == name]

    @inlineCallbacks
    def test_route_styles(self) -> None:
        """
        A plain function, a Deferred and an async def each pick cluster b
        for the session; None keeps the listener's own (a).  Each is called
        once per session with a request for the listener's cluster and no key.
        """
        for listener, expected in (("plain", b"[a]ping"), ("plain-b", b"[b]ping"),
                                   ("deferred-b", b"[b]ping"), ("async-b", b"[b]ping")):
            received = yield self.session(listener).done
            self.assertEqual(received, expected, listener)
        requests = [r for hook, r in hooks_tcp.calls if hook.startswith("route")]
        self.assertEqual([r.client.listener for r in requests],
                         ["plain", "plain-b", "deferred-b", "async-b"])
        for request in requests:
            self.assertEqual((request.cluster, request.key, request.client.protocol),
                             ("a", None, "tcp"))
            self.assertEqual(request.client.host, "127.0.0.1")
        self.assertEqual(self.hook("deferred-b").asynchronous, 1)
        self.assertEqual(self.hook("async-b").asynchronous, 1)
        self.assertEqual(self.listeners["async-b"].stats.sessions["ok"], 1)

    @inlineCallbacks
    def test_bytes_wait_for_the_hook(self) -> None:
        """
        What the client sends (and its half-close) while the route hook is
        pending waits, and reaches the chosen backend once it answers.
        """
        client = self.session("gated-b", b"early bytes")
        yield wait_for(lambda: self.called("route_gated"), what="the route hook's call")
        self.assertEqual(client.received, [])
        self.assertEqual(self.service.clusters["b"].backends[0].pool.leased, 0)
        hooks_tcp.gate.callback(None)
        received = yield client.done
        self.assertEqual(received, b"[b]early bytes")

    @inlineCallbacks
    def test_route_raises(self) -> None:
        """
        A route hook that raises closes the client (tcp has no error to
        send), counted as refused and rejected, logged once per interval;
        the other listeners go on serving.
        """
        with capturedLogs() as events:
            for _ in range(3):
                received = yield self.session("raises").done
                self.assertEqual(received, b"")
        hook = self.hook("raises")
        self.assertEqual((hook.errors, hook.refused), (3, 3))
        self.assertEqual(self.listeners["raises"].stats.sessions["rejected"], 3)
        self.assertEqual(self.service.admission.in_flight, 0)
        said = [e for e in events if e.get("listener") == "raises"]
        self.assertEqual(len(said), 1, said)
        self.assertIn("RuntimeError", str(said[0].get("why")))
        received = yield self.session("plain-b").done
        self.assertEqual(received, b"[b]ping")

    @inlineCallbacks
    def test_route_to_unknown_cluster(self) -> None:
        """A cluster the listener does not have: closed, refused, logged once."""
        with capturedLogs() as events:
            for _ in range(2):
                received = yield self.session("unknown").done
                self.assertEqual(received, b"")
        hook = self.hook("unknown")
        self.assertEqual((hook.ok, hook.refused), (2, 2))
        self.assertEqual(self.listeners["unknown"].stats.sessions["rejected"], 2)
        said = [e for e in events if e.get("listener") == "unknown"]
        self.assertEqual(len(said), 1, said)
        self.assertIn("nowhere", said[0]["why"])

    @inlineCallbacks
    def test_connect_and_disconnect(self) -> None:
        """
        on_connect and on_disconnect, in each style, see the same client
        object, once each per connection.
        """
        for listener in ("plain", "deferred-b", "async-b"):
            yield self.session(listener).done
        style = {"plain": "plain", "deferred-b": "deferred", "async-b": "async"}
        for listener, kind in style.items():
            yield wait_for(lambda: self.called(f"disconnect_{kind}"), what="on_disconnect")
            connected, disconnected = (self.called(f"connect_{kind}"),
                                       self.called(f"disconnect_{kind}"))
            self.assertEqual(len(connected), 1)
            self.assertEqual(len(disconnected), 1)
            self.assertIs(connected[0], disconnected[0])
            self.assertEqual(connected[0].listener, listener)
            self.assertEqual(connected[0].protocol, "tcp")


class ClockTests(SynchronousTestCase):
    """A session factory on a task.Clock (MemoryReactorClock), its client on a StringTransport."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        config = ProxyConfig(listen=("tcp:0",), backend=("127.0.0.1:1",))
        self.admission = Admission(10, 10, 1.0, clock=self.reactor)
        assembly = ClusterAssembly(config.clusters[0], config, self.reactor, self.admission,
                                   codec_options(config))
        self.factory = assembly.frontend("l")
        self.factory.hooks = self.hooks = ListenerHooks("l", self.reactor, 1.0)
        self.factory.routes = {"a": assembly.cluster}
        hooks_tcp.reset()

    def client(self) -> Tuple[Any, StringTransport]:
        client = self.factory.buildProtocol(None)
        transport = StringTransport()
        client.makeConnection(transport)
        return client, transport

    def test_route_never_answers(self) -> None:
        """
        A route hook that never answers: at hook_timeout the client is
        closed, counted as refused, its admission given back, and no backend
        connection was ever asked for.
        """
        self.hooks.load({"route": "tests.hooks_tcp:route_never"})
        client, transport = self.client()
        client.dataReceived(b"waiting")
        self.reactor.advance(0.999)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.001)
        self.assertTrue(transport.disconnecting)
        route = self.hooks.route
        self.assertEqual((route.timeouts, route.refused), (1, 1))
        self.assertEqual(self.factory.stats.sessions["rejected"], 1)
        self.assertEqual(self.admission.in_flight, 0)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_client_gone_while_pending(self) -> None:
        """
        A client that leaves while its route hook is pending: on_disconnect
        is told, the hook's late answer is ignored, nothing is leased.
        """
        self.hooks.load({"route": "tests.hooks_tcp:route_never",
                         "on_disconnect": "tests.hooks_tcp:disconnect_plain"})
        client, transport = self.client()
        client.connectionLost(Failure(Exception("gone")))
        self.assertEqual(len(hooks_tcp.calls), 2)
        self.assertEqual(self.admission.in_flight, 0)
        self.reactor.advance(1.0)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.factory.stats.sessions["client_gone"], 1)

    def test_no_hooks_no_client_object(self) -> None:
        """Without hooks nothing is made for them: the session leases at once."""
        client, transport = self.client()
        self.assertIsNone(client.hook_client)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_route_to_own_cluster_leases(self) -> None:
        """A plain hook answering None: the lease is asked for in the same call."""
        self.hooks.load({"route": "tests.hooks_tcp:route_plain"})
        client, transport = self.client()
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.hooks.route.ok, 1)
