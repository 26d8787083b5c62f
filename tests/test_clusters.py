"""
Several clusters in one proxy, configured by a TOML file as a user would:
each listener reaches its own cluster, with its own protocol and weights.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource

from poolproxy.service import ProxyService
from poolproxy.tap import ProxyOptions
from tests.support import BackendFactory, Client, connect, Echo, serve, serve_web, wait_for


class Named(Resource):
    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name

    def render_GET(self, request: Any) -> bytes:
        return self.name


class MultiClusterTests(TestCase):
    @inlineCallbacks
    def test_two_clusters_two_listeners(self) -> None:
        """
        A tcp listener routes to an echo cluster and an http listener to a
        weighted cluster of two web backends: each gets only its own traffic,
        and weights 3:1 give 3:1 of the requests.
        """
        echo = BackendFactory(Echo)
        echo_port = serve(self, echo)
        web_ports = [serve_web(self, Named(name)) for name in (b"heavy", b"light")]
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"""
metrics = "tcp:0:interface=127.0.0.1"
check_interval = 0

[[listener]]
name = "raw"
listen = "tcp:0:interface=127.0.0.1"
cluster = "echo"

[[listener]]
name = "web"
listen = "tcp:0:interface=127.0.0.1"
cluster = "web"

[[cluster]]
name = "echo"
protocol = "tcp"
[[cluster.backend]]
address = "127.0.0.1:{echo_port}"

[[cluster]]
name = "web"
protocol = "http"
balance = "round_robin"
[[cluster.backend]]
address = "127.0.0.1:{web_ports[0]}"
name = "heavy"
weight = 3
[[cluster.backend]]
address = "127.0.0.1:{web_ports[1]}"
name = "light"
weight = 1
""")
        options = ProxyOptions()
        options.parseOptions(["--config", path])
        service = ProxyService(options.config)
        service.startService()
        self.addCleanup(service.stopService)
        ports = {l.name: l.service.port.getHost().port for l in service.listeners}

        client = connect(ports["raw"], Client(b"raw bytes", half_close=True))
        self.assertEqual((yield client.done), b"raw bytes")

        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, pool=pool)
        bodies = []
        for _ in range(40):
            response = yield agent.request(b"GET", b"http://127.0.0.1:%d/" % ports["web"])
            bodies.append((yield readBody(response)))
        self.assertEqual((bodies.count(b"heavy"), bodies.count(b"light")), (30, 10))
        self.assertEqual(sorted(service.clusters), ["echo", "web"])
        self.assertEqual(echo.accepted, 1)
        yield wait_for(lambda: service.clusters["web"].backends[0].outstanding == 0,
                       what="requests done")
