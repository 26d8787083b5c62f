"""
The operator's status page, C{/status} and C{/status.json}: a running
L{ProxyService} on loopback ports in front of real echo backends, fetched
with a real HTTP client (L{Agent}); plus the pure parts (rates, addresses,
escaping) on their own.  Waits poll a condition with a bound, never sleep.
"""

from __future__ import annotations

import json
import platform
import re
from typing import Any, Dict, List, Tuple

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from poolproxy import __version__
from poolproxy.backends.cluster import Backend
from poolproxy.config import BackendConfig, ClusterConfig, ListenerConfig, ProxyConfig
from poolproxy.ops.status import (
    BACKEND_STATES,
    REFRESH_SECONDS,
    RateSampler,
    backend_address,
    h,
    render_html,
)
from poolproxy.service import ProxyService
from poolproxy.stats import OUTCOMES
from tests.support import (
    BackendFactory,
    Client,
    connect,
    Echo,
    free_port,
    LeakCheckedTestCase,
    listen,
    listener_port,
    start_proxy,
    wait_for,
    web_get,
)

HOSTILE = '<script>alert("x")</script>&\''

BACKEND_KEYS = {"name", "address", "state", "weight", "health", "breaker", "in_flight", "pool",
                "requests", "failures", "retries", "request_rate", "error_rate", "last_error",
                "latency"}
POOL_KEYS = {"idle", "active", "connecting", "waiters", "size"}
LISTENER_KEYS = {"name", "endpoint", "cluster", "connections_open", "connections_total",
                 "connections_limit", "paused", "requests", "latency"}


def _media_type(value: bytes) -> str:
    return value.decode("ascii").split(";")[0].strip().lower()


class StatusTestCase(LeakCheckedTestCase):
    """
    Runs each test against a proxy service on ephemeral loopback ports and
    leaves no socket behind: the last cleanup waits until every connection
    the test made (HTTP, proxy sessions, pool connections) is closed.
    """


    def echo_backend(self) -> Tuple[BackendFactory, Any]:
        """An echo server on a loopback port, closed when the test ends (if still open)."""
        factory = BackendFactory(Echo)
        port = listen(factory)
        factory.port = port.getHost().port

        def close() -> Any:
            if port.connected:
                return port.stopListening()
            return None

        self.addCleanup(close)
        return factory, port

    get = staticmethod(web_get)

    @inlineCallbacks
    def status(self, service: ProxyService) -> Any:
        """Fetch and parse /status.json (checking it is served as JSON)."""
        response, body = yield self.get(service, "/status.json")
        self.assertEqual(response.code, 200)
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertEqual(_media_type(content_type), "application/json")
        return json.loads(body.decode("utf-8"))

    def two_backends(self, **settings: Any) -> Tuple[ProxyService, List[BackendFactory], List[Any]]:
        a, port_a = self.echo_backend()
        b, port_b = self.echo_backend()
        service = start_proxy(self, a.port,
                              backend=(f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"), **settings)
        return service, [a, b], [port_a, port_b]

    @inlineCallbacks
    def sessions(self, service: ProxyService, n: int) -> Any:
        """Run C{n} echo sessions through the first listener, one after another."""
        for i in range(n):
            payload = b"hello %d\n" % i
            client = connect(listener_port(service), Client(payload, half_close=True))
            received = yield client.done
            self.assertEqual(received, payload)


def _backends(status: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {b["name"]: b for c in status["clusters"] for b in c["backends"]}


class StatusJsonTests(StatusTestCase):
    """
    /status.json for a running service.
    """

    @inlineCallbacks
    def test_shape_and_values(self) -> None:
        """
        With two tcp echo backends, /status.json has the version, one
        listener (its endpoint, cluster, connection counts and a count per
        request outcome), the admission numbers, and one cluster "default"
        whose two backends are up, named and addressed HOST:PORT, with their
        pool numbers, counters, zero rates on the first fetch and no error.
        """
        service, (a, b), _ = self.two_backends(pool_size=7)
        yield wait_for(lambda: all(p.state == "up" for p in service.pools), 5.0,
                       "both pools to connect")
        status = yield self.status(service)

        self.assertEqual(set(status), {"version", "runtime", "listeners", "admission", "clusters"})
        self.assertEqual(status["version"], __version__)
        self.assertEqual(status["runtime"], {
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "reactor": type(reactor).__name__})

        [listener] = status["listeners"]
        self.assertEqual(set(listener), LISTENER_KEYS)
        self.assertEqual(listener["name"], service.listeners[0].name)
        self.assertEqual(listener["endpoint"], "tcp:0:interface=127.0.0.1:backlog=1024")
        self.assertEqual(listener["cluster"], "default")
        self.assertEqual(listener["connections_open"], 0)
        self.assertEqual(listener["connections_total"], 0)
        self.assertEqual(listener["connections_limit"], service.limits.cap)
        self.assertEqual(listener["paused"], [])
        self.assertEqual(listener["requests"], dict.fromkeys(OUTCOMES, 0))

        admission = status["admission"]
        self.assertEqual(admission["in_flight"], 0)
        self.assertEqual(admission["queued"], 0)
        self.assertEqual(admission["max_concurrency"], service.config.max_concurrency)

        [cluster] = status["clusters"]
        self.assertEqual(cluster["name"], "default")
        self.assertEqual(cluster["policy"], service.cluster.policy_name)
        names = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        self.assertEqual([x["name"] for x in cluster["backends"]], names)
        for backend, name in zip(cluster["backends"], names):
            self.assertEqual(set(backend), BACKEND_KEYS)
            self.assertEqual(set(backend["pool"]), POOL_KEYS)
            self.assertEqual(backend["address"], name)
            self.assertEqual(backend["state"], "up")
            self.assertEqual(backend["weight"], 1)
            self.assertIsNone(backend["health"])  # check_interval=0: no active checks
            self.assertEqual(backend["breaker"], "closed")
            self.assertEqual(backend["in_flight"], 0)
            self.assertEqual(backend["pool"]["size"], 7)
            self.assertEqual(backend["pool"]["active"], 0)
            self.assertEqual(backend["pool"]["waiters"], 0)
            for key in ("requests", "failures", "retries"):
                self.assertEqual(backend[key], 0)
            self.assertEqual(backend["request_rate"], 0)
            self.assertEqual(backend["error_rate"], 0)
            self.assertIsNone(backend["last_error"])

    @inlineCallbacks
    def test_counts_after_sessions(self) -> None:
        """
        After sessions through the listener, the listener's connection and
        ok-request counts and the backends' request counts add up to the
        number of sessions.
        """
        service, _, _ = self.two_backends()
        yield wait_for(lambda: service.ready, 5.0, "a backend to be up")
        yield self.sessions(service, 4)
        stats = service.listeners[0].stats
        yield wait_for(lambda: stats.connections_open == 0, 5.0, "the sessions to end")
        status = yield self.status(service)
        [listener] = status["listeners"]
        self.assertEqual(listener["connections_total"], 4)
        self.assertEqual(listener["requests"]["ok"], 4)
        self.assertEqual(sum(b["requests"] for b in _backends(status).values()), 4)
        self.assertEqual(status["admission"]["admitted"], 4)

    @inlineCallbacks
    def test_backend_goes_down(self) -> None:
        """
        With active health checks on, closing one backend's port makes its
        state "down" and its health "unhealthy" with a last error, while the
        other stays "up" and "healthy".
        """
        service, (a, b), (_, port_b) = self.two_backends(check_interval=0.05, check_timeout=0.5)
        backend_a, backend_b = service.cluster.backends
        yield wait_for(lambda: backend_a.health.state == "healthy"
                       and backend_b.health.state == "healthy", 5.0, "both checks to pass")
        status = yield self.status(service)
        self.assertEqual([x["health"] for x in _backends(status).values()],
                         ["healthy", "healthy"])

        yield port_b.stopListening()
        yield wait_for(lambda: backend_b.state == "down", 5.0, "the closed backend to be down")
        status = yield self.status(service)
        by_name = _backends(status)
        down = by_name[f"127.0.0.1:{b.port}"]
        self.assertEqual(down["state"], "down")
        self.assertIn(down["state"], BACKEND_STATES)
        self.assertEqual(down["health"], "unhealthy")
        self.assertTrue(down["last_error"])
        up = by_name[f"127.0.0.1:{a.port}"]
        self.assertEqual(up["state"], "up")
        self.assertEqual(up["health"], "healthy")

    @inlineCallbacks
    def test_rates_between_fetches(self) -> None:
        """
        The first fetch gives request rates of 0; after some sessions, the
        next fetch gives a positive request rate for the backends that
        served them, and no error rate.
        """
        service, _, _ = self.two_backends()
        yield wait_for(lambda: service.ready, 5.0, "a backend to be up")
        first = yield self.status(service)
        self.assertEqual([b["request_rate"] for b in _backends(first).values()], [0, 0])
        yield self.sessions(service, 6)
        second = yield self.status(service)
        rates = [b["request_rate"] for b in _backends(second).values()]
        self.assertGreater(sum(rates), 0)
        for backend in _backends(second).values():
            self.assertEqual(backend["request_rate"] > 0, backend["requests"] > 0)
            self.assertEqual(backend["error_rate"], 0)

    @inlineCallbacks
    def test_error_rate(self) -> None:
        """
        Sessions to a backend that refuses connections count as failures,
        and the next fetch gives a positive error rate.
        """
        service = start_proxy(self, free_port(), breaker_failures=0)
        yield wait_for(lambda: service.pools[0].state == "down", 5.0, "a refused connect")
        yield self.status(service)
        for _ in range(3):
            client = connect(listener_port(service), Client(b"x", half_close=True))
            yield client.done
        yield wait_for(lambda: service.cluster.backends[0].failures > 0, 5.0, "a failure")
        status = yield self.status(service)
        [backend] = _backends(status).values()
        self.assertGreater(backend["failures"], 0)
        self.assertGreater(backend["error_rate"], 0)
        self.assertTrue(backend["last_error"])


class StatusPageTests(StatusTestCase):
    """
    /status, the HTML page.
    """

    @inlineCallbacks
    def test_html_page(self) -> None:
        """
        /status is served as text/html, refreshes itself every 5 s, names
        every backend and listener, and uses no script and no external asset.
        """
        service, (a, b), _ = self.two_backends()
        yield wait_for(lambda: service.ready, 5.0, "a backend to be up")
        response, body = yield self.get(service, "/status")
        self.assertEqual(response.code, 200)
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertEqual(_media_type(content_type), "text/html")
        page = body.decode("utf-8")
        self.assertIn(f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">', page)
        self.assertEqual(REFRESH_SECONDS, 5)
        for port in (a.port, b.port):
            self.assertIn(f"<td>127.0.0.1:{port}</td>", page)
        self.assertIn(h(service.listeners[0].endpoint), page)
        self.assertIn('class="s-up"', page)
        self.assertNotIn("<script", page.lower())
        self.assertIsNone(re.search(r"""(src|href)=["']?(https?:)?//""", page))
        self.assertNotIn("<link", page.lower())

    @inlineCallbacks
    def test_hostile_backend_name_escaped(self) -> None:
        """
        A backend named with HTML markup (a config file may name backends
        freely) is shown escaped on /status and verbatim in /status.json.
        """
        backend, _ = self.echo_backend()
        config = ProxyConfig(
            metrics="tcp:0:interface=127.0.0.1", check_interval=0.0,
            listeners=(ListenerConfig("<b>in</b>", "tcp:0:interface=127.0.0.1", "default"),),
            clusters=(ClusterConfig("default", "tcp", None, None,
                                    (BackendConfig(HOSTILE, f"127.0.0.1:{backend.port}", 1),)),))
        service = ProxyService(config)
        service.startService()
        self.addCleanup(service.stopService)
        _, body = yield self.get(service, "/status")
        page = body.decode("utf-8")
        self.assertNotIn("<script", page)
        self.assertNotIn("<b>in</b>", page)
        self.assertIn("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#x27;", page)
        self.assertIn("&lt;b&gt;in&lt;/b&gt;", page)
        status = yield self.status(service)
        self.assertEqual([b["name"] for b in _backends(status).values()], [HOSTILE])
        self.assertEqual(status["listeners"][0]["name"], "<b>in</b>")

    @inlineCallbacks
    def test_index_links_status(self) -> None:
        """
        The index page links /status and /status.json.
        """
        service = start_proxy(self, free_port())
        _, body = yield self.get(service, "/")
        self.assertIn(b'href="/status"', body)
        self.assertIn(b'href="/status.json"', body)


class RenderTests(TestCase):
    """
    The pure parts: escaping, rendering a snapshot, rates, addresses.
    """

    def snapshot(self, **backend: Any) -> Dict[str, Any]:
        row = {"name": "b1", "address": "10.0.0.1:80", "state": "up", "weight": 1,
               "health": None, "breaker": None, "in_flight": 0,
               "pool": {"idle": 1, "active": 0, "connecting": 0, "waiters": 0, "size": 4},
               "requests": 0, "failures": 0, "retries": 0, "request_rate": 0.0,
               "error_rate": 0.0, "last_error": None}
        row.update(backend)
        return {"version": "1.0", "runtime": {"python": "CPython 3.11.7", "reactor": "R"},
                "listeners": [],
                "admission": {"in_flight": 0, "queued": 0, "max_concurrency": 1,
                              "queue_size": 1, "admitted": 0, "rejected": {}},
                "clusters": [{"name": "c", "policy": "round_robin", "backends": [row]}]}

    def test_h_escapes(self) -> None:
        """
        h() escapes <, >, &, and both quotes, and shows None as nothing.
        """
        self.assertEqual(h('<a href="x">\'&'), "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;")
        self.assertEqual(h(None), "")
        self.assertEqual(h(3), "3")

    def test_render_escapes_every_string(self) -> None:
        """
        Every string of a snapshot (names, address, last error, policy,
        cluster name) is escaped in the page.
        """
        snap = self.snapshot(name=HOSTILE, address=HOSTILE, last_error=HOSTILE)
        snap["clusters"][0]["name"] = HOSTILE
        snap["clusters"][0]["policy"] = HOSTILE
        snap["runtime"] = {"python": HOSTILE, "reactor": HOSTILE}
        page = render_html(snap)
        self.assertNotIn("<script", page)
        self.assertEqual(page.count(h(HOSTILE)), 7)

    def test_state_colours(self) -> None:
        """
        Each backend state gets its own CSS class, which the inline style
        sheet colours.
        """
        for state in BACKEND_STATES:
            page = render_html(self.snapshot(state=state))
            self.assertIn(f'class="s-{state}"', page)
            self.assertIn(f".s-{state}{{background:", page)

    def test_rates(self) -> None:
        """
        The first sample gives 0; later ones the counter's increase per
        clock second since the last stored sample; a second sample at the same
        clock time repeats the last rates (and is not stored); a counter that
        went down gives 0, never a negative rate.
        """
        clock = Clock()
        sampler = RateSampler(clock)
        self.assertEqual(sampler.rates("b", (10, 1)), (0.0, 0.0))
        clock.advance(2)
        self.assertEqual(sampler.rates("b", (30, 2)), (10.0, 0.5))
        self.assertEqual(sampler.rates("b", (40, 2)), (10.0, 0.5))
        clock.advance(5)
        # Measured from the last stored sample (30 at t=2), not the repeat.
        self.assertEqual(sampler.rates("b", (40, 2)), (2.0, 0.0))
        clock.advance(1)
        self.assertEqual(sampler.rates("b", (40, 2)), (0.0, 0.0))
        self.assertEqual(sampler.rates("b", (5, 0)), (0.0, 0.0))  # counters reset: not negative
        self.assertEqual(sampler.rates("other", (99, 9)), (0.0, 0.0))

    def test_backend_address(self) -> None:
        """
        The address is HOST:PORT for TCP endpoints (IPv6 in brackets), the
        socket path for UNIX ones, else the backend's name.
        """
        def backend(endpoint: Any) -> Backend:
            pool: Any = type("Pool", (), {"endpoint": endpoint})()
            return Backend("the-name", pool)

        self.assertEqual(backend_address(backend(TCP4ClientEndpoint(reactor, "10.1.2.3", 6379))),
                         "10.1.2.3:6379")
        self.assertEqual(backend_address(backend(TCP6ClientEndpoint(reactor, "::1", 80))),
                         "[::1]:80")
        self.assertEqual(backend_address(backend(UNIXClientEndpoint(reactor, "/run/r.sock"))),
                         "unix:/run/r.sock")
        self.assertEqual(backend_address(backend(object())), "the-name")
