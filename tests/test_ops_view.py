"""
The operator's views (status, metrics, /readyz, the admin API) read a running
proxy only through L{poolproxy.ops.view.ProxyView}: here they run on a small
fake of it, built from real clusters, backends and pools on a L{Clock}, with
no service, listener or socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from poolproxy.backends.cluster import Backend, Cluster
from poolproxy.backends.pool import BackendPool, BackendProtocol
from poolproxy.config import ProxyConfig
from poolproxy.ops.admin import build_admin
from poolproxy.ops.metrics import build_registry
from poolproxy.ops.status import RateSampler, status_snapshot
from poolproxy.ops.view import ListenerView, ProxyView
from poolproxy.ops.web import ReadyzResource
from poolproxy.config.secrets import Secrets
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.limits import ConnectionLimits
from poolproxy.proxy.output import OutputBudget
from poolproxy.stats import ListenerStats
from poolproxy.testing import FakeEndpoint
from poolproxy.util.accepting import AcceptGate


@dataclass
class FakeListener:
    name: str
    endpoint: str
    cluster: Cluster
    stats: ListenerStats = field(default_factory=ListenerStats)
    port: Optional[Any] = None
    gate: AcceptGate = field(default_factory=AcceptGate)
    connection_limit: int = 100


@dataclass
class FakeProxy:
    """Just the names a L{ProxyView} has."""

    clusters: Dict[str, Cluster]
    listeners: List[FakeListener]
    admission: Admission
    reactor: Clock
    config: ProxyConfig = field(default_factory=ProxyConfig)
    output: OutputBudget = field(default_factory=OutputBudget)
    limits: ConnectionLimits = field(default_factory=lambda: ConnectionLimits(100))
    secrets: Secrets = field(default_factory=Secrets)
    stopping: bool = False
    dns_names: List[Any] = field(default_factory=list)
    hooks: Dict[str, Any] = field(default_factory=dict)

    @property
    def pools(self) -> List[BackendPool]:
        return [b.pool for c in self.clusters.values() for b in c.backends]

    @property
    def ready(self) -> bool:
        return any(c.ready for c in self.clusters.values())


def fake_proxy() -> FakeProxy:
    clock = Clock()
    backends = [Backend(name, BackendPool(name, FakeEndpoint(), BackendProtocol, clock=clock,
                                          cluster="cache"), weight)
                for name, weight in (("a", 1), ("b", 3))]
    cluster = Cluster("cache", backends)
    listener = FakeListener("front", "tcp:6380", cluster)
    return FakeProxy({"cache": cluster}, [listener], Admission(10, 10, 1.0, clock=clock), clock)


class FakeViewTests(SynchronousTestCase):
    def test_it_is_a_view(self) -> None:
        """
        The fake has every name of a L{ProxyView}, read-only ones as plain
        attributes (structural typing, as L{ProxyService} provides it).
        """
        proxy = fake_proxy()
        view: ProxyView = proxy
        listener: ListenerView = proxy.listeners[0]
        self.assertIs(view.listeners[0], listener)
        members = [name for name in vars(ProxyView) if not name.startswith("_")]
        self.assertIn("clusters", members)
        for name in members:
            self.assertTrue(hasattr(view, name), name)

    def test_status_snapshot(self) -> None:
        """/status.json's snapshot lists the fake's listener, cluster and backends."""
        proxy = fake_proxy()
        proxy.listeners[0].stats.requests_ok = 7
        proxy.clusters["cache"].backends[1].requests = 5
        snapshot = status_snapshot(proxy, RateSampler(proxy.reactor))
        [listener] = snapshot["listeners"]
        self.assertEqual((listener["name"], listener["cluster"], listener["requests"]["ok"]),
                         ("front", "cache", 7))
        [cluster] = snapshot["clusters"]
        self.assertEqual([(b["name"], b["weight"], b["requests"]) for b in cluster["backends"]],
                         [("a", 1, 0), ("b", 3, 5)])
        self.assertEqual(snapshot["runtime"]["reactor"], "Clock")

    def test_metrics(self) -> None:
        """The collector exports the fake's pools and backends by cluster."""
        proxy = fake_proxy()
        registry = build_registry(proxy)
        self.assertEqual(registry.get_sample_value(
            "poolproxy_backend_weight", {"cluster": "cache", "backend": "b"}), 3.0)
        self.assertEqual(registry.get_sample_value(
            "poolproxy_pool_size", {"cluster": "cache", "backend": "a", "database": "",
                                    "user": ""}), 10.0)
        proxy.listeners[0].gate.hold("admin")
        self.assertEqual(registry.get_sample_value(
            "poolproxy_listener_paused", {"listener": "front", "reason": "admin"}), 1.0)
        self.assertEqual(registry.get_sample_value(
            "poolproxy_client_connections_limit", {"listener": "front"}), 100.0)

    def test_readyz_names_each_pool(self) -> None:
        """Not ready while no backend was reached: 503 naming each pool's state."""
        proxy = fake_proxy()
        request = DummyRequest([b""])
        body = ReadyzResource(proxy).render_GET(request)
        self.assertEqual(request.responseCode, 503)
        self.assertIn(b"a: unknown (not connected yet)", body)
        self.assertIn(b"b: unknown (not connected yet)", body)

    def test_admin_changes_the_fake(self) -> None:
        """The admin API disables a backend of the fake's cluster."""
        proxy = fake_proxy()
        admin = build_admin(proxy, "token")
        request = DummyRequest([b"backends", b"cache", b"a", b"disable"])
        request.method = b"POST"
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer token"])
        admin.render(request)
        self.assertTrue(proxy.clusters["cache"].backends[0].disabled)
