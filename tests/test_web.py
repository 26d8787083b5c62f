"""
The operator's web endpoint end to end: a running L{ProxyService} on
loopback ports, fetched with a real HTTP client (L{Agent}), in front of a
real backend.  Waits poll a condition with a bound, never sleep.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import inlineCallbacks

from poolproxy.service import ProxyService
from poolproxy.stats import OUTCOMES
from tests.support import (
    BackendFactory,
    Client,
    connect,
    Echo,
    free_port,
    LeakCheckedTestCase,
    listener_port,
    serve,
    start_proxy,
    wait_for,
    web_get,
)

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "docs", "metrics.md")

def _media_type(value: str) -> Tuple[str, Dict[str, str]]:
    """Split a Content-Type value into its media type and parameters."""
    kind, *params = [p.strip() for p in value.split(";")]
    return kind.lower(), dict(p.split("=", 1) for p in params if "=" in p)


class WebTestCase(LeakCheckedTestCase):
    """
    Runs each test against a proxy service on ephemeral loopback ports and
    leaves no socket behind: the last cleanup waits until every connection
    the test made (HTTP, proxy sessions, pool connections) is closed.
    """

    def echo_backend(self) -> BackendFactory:
        """An echo server on a loopback port, closed when the test ends."""
        factory = BackendFactory(Echo)
        factory.port = serve(self, factory)
        return factory

    get = staticmethod(web_get)

    @inlineCallbacks
    def scrape(self, service: ProxyService) -> Any:
        """
        Fetch and parse /metrics.

        @return: a L{Deferred} firing with (response, list of metric families).
        """
        response, body = yield self.get(service, "/metrics")
        self.assertEqual(response.code, 200)
        return response, list(text_string_to_metric_families(body.decode("utf-8")))


def _sample(families: List[Any], name: str, **labels: str) -> float:
    """
    The value of the one sample called C{name} whose labels include C{labels}.
    """
    found = [s.value for f in families for s in f.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    if len(found) != 1:
        raise AssertionError(f"expected one sample {name}{labels}, found {found}")
    return found[0]


class HealthTests(WebTestCase):
    """
    /healthz, /readyz, the index and unknown paths.
    """

    @inlineCallbacks
    def test_healthz(self) -> None:
        """
        /healthz answers 200 "ok" as plain text whenever the process runs,
        whatever the backend's state.
        """
        service = start_proxy(self, free_port())
        response, body = yield self.get(service, "/healthz")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"ok\n")
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertEqual(_media_type(content_type.decode("ascii"))[0], "text/plain")

    @inlineCallbacks
    def test_readyz_ready_when_backend_reachable(self) -> None:
        """
        Once the pool has connected to a listening backend, /readyz answers
        200 "ready".
        """
        backend = self.echo_backend()
        service = start_proxy(self, backend.port)
        yield wait_for(lambda: service.ready, 5.0, "the backend to be up")
        response, body = yield self.get(service, "/readyz")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"ready\n")

    @inlineCallbacks
    def test_readyz_not_ready_when_backend_refuses(self) -> None:
        """
        With the backend's port closed, /readyz answers 503 and its reason
        names the backend, says it is down and gives the connect error.
        """
        port = free_port()
        service = start_proxy(self, port, health_interval=0.05)
        pool = service.pools[0]
        yield wait_for(lambda: pool.state == "down", 5.0, "a refused connect")
        self.assertFalse(service.ready)
        response, body = yield self.get(service, "/readyz")
        self.assertEqual(response.code, 503)
        text = body.decode("utf-8")
        self.assertIn("not ready", text)
        self.assertIn(f"127.0.0.1:{port}: down", text)
        self.assertTrue(pool.last_error)
        self.assertIn(pool.last_error, text)

    @inlineCallbacks
    def test_index_links(self) -> None:
        """
        / is an HTML page linking /metrics, /healthz and /readyz.
        """
        service = start_proxy(self, free_port())
        response, body = yield self.get(service, "/")
        self.assertEqual(response.code, 200)
        for path in (b"/metrics", b"/healthz", b"/readyz"):
            self.assertIn(b'href="' + path + b'"', body)

    @inlineCallbacks
    def test_unknown_path_404(self) -> None:
        """
        A path outside the tree answers 404.
        """
        service = start_proxy(self, free_port())
        response, _ = yield self.get(service, "/nope")
        self.assertEqual(response.code, 404)


class MetricsTests(WebTestCase):
    """
    /metrics over HTTP, after real traffic through the proxy.
    """

    @inlineCallbacks
    def test_content_type(self) -> None:
        """
        /metrics is served as the Prometheus text exposition format: media
        type text/plain with a format version, in UTF-8.
        """
        service = start_proxy(self, free_port())
        response, _ = yield self.scrape(service)
        [content_type] = response.headers.getRawHeaders(b"content-type")
        kind, params = _media_type(content_type.decode("ascii"))
        self.assertEqual(kind, "text/plain")
        self.assertIn(params.get("version"), ("0.0.4", "1.0.0"))
        self.assertEqual(params.get("charset", "").lower(), "utf-8")

    @inlineCallbacks
    def test_counts_one_session(self) -> None:
        """
        After one client session through the listener to an echo backend,
        /metrics parses and shows one accepted connection, one session and
        one request with outcome ok, the bytes sent and echoed, a successful
        pool connect, an acquire-wait observation, and the process metrics.
        """
        backend = self.echo_backend()
        service = start_proxy(self, backend.port)
        yield wait_for(lambda: service.ready, 5.0, "the backend to be up")
        payload = b"0123456789abcdef" * 257  # 4112 bytes: more than one read
        client = connect(listener_port(service), Client(payload))
        yield wait_for(lambda: len(b"".join(client.received)) >= len(payload), 5.0,
                       "the echo")
        self.assertEqual(b"".join(client.received), payload)
        client.transport.loseConnection()
        yield client.done
        stats = service.listeners[0].stats
        yield wait_for(lambda: stats.sessions["ok"] == 1 and stats.connections_open == 0,
                       5.0, "the proxy to end the session")

        _, families = yield self.scrape(service)
        listener = {"listener": service.listeners[0].name}
        backend_label = {"backend": service.pools[0].name}
        self.assertEqual(
            _sample(families, "poolproxy_sessions_total", outcome="ok", **listener), 1)
        self.assertEqual(
            _sample(families, "poolproxy_requests_total", outcome="ok", **listener), 1)
        for outcome in ("rejected", "backend_unavailable", "pool_exhausted", "client_gone"):
            self.assertEqual(
                _sample(families, "poolproxy_sessions_total", outcome=outcome, **listener), 0)
        self.assertEqual(
            _sample(families, "poolproxy_client_connections_total", **listener), 1)
        self.assertEqual(
            _sample(families, "poolproxy_client_connections_open", **listener), 0)
        self.assertEqual(_sample(families, "poolproxy_bytes_total",
                                 direction="upstream", **listener), len(payload))
        self.assertEqual(_sample(families, "poolproxy_bytes_total",
                                 direction="downstream", **listener), len(payload))
        self.assertGreaterEqual(_sample(families, "poolproxy_pool_connects_total",
                                        result="ok", **backend_label), 1)
        self.assertGreaterEqual(_sample(families, "poolproxy_pool_acquire_wait_seconds_count",
                                        **backend_label), 1)
        self.assertEqual(_sample(families, "poolproxy_pool_acquire_wait_seconds_bucket",
                                 le="+Inf", **backend_label),
                         _sample(families, "poolproxy_pool_acquire_wait_seconds_count",
                                 **backend_label))
        self.assertEqual(_sample(families, "poolproxy_admission_admitted_total"), 1)
        self.assertEqual(_sample(families, "poolproxy_backend_up", **backend_label), 1)
        self.assertGreater(_sample(families, "process_resident_memory_bytes"), 0)

    @inlineCallbacks
    def test_label_values_exported_from_start(self) -> None:
        """
        Before any traffic, every documented label value is exported at 0
        (so that rate() sees a series' first increment): each session and
        request outcome, rejection reason, connect result, close reason and
        acquire failure reason.
        """
        service = start_proxy(self, free_port())
        _, families = yield self.scrape(service)
        listener = {"listener": service.listeners[0].name}
        backend = {"backend": service.pools[0].name}
        for outcome in OUTCOMES:
            for name in ("poolproxy_sessions_total", "poolproxy_requests_total"):
                self.assertEqual(_sample(families, name, outcome=outcome, **listener), 0)
        for reason in ("queue_full", "queue_timeout"):
            self.assertEqual(
                _sample(families, "poolproxy_admission_rejected_total", reason=reason), 0)
        for reason in ("idle_timeout", "max_lifetime", "max_uses", "backend_closed",
                       "session_end", "shutdown"):
            self.assertEqual(
                _sample(families, "poolproxy_pool_closes_total", reason=reason, **backend), 0)
        for reason in ("timeout", "exhausted", "unavailable", "closed"):
            self.assertEqual(_sample(families, "poolproxy_pool_acquire_failures_total",
                                     reason=reason, **backend), 0)
        results = {s.labels["result"] for f in families for s in f.samples
                   if s.name == "poolproxy_pool_connects_total"}
        self.assertEqual(results, {"ok", "failed", "timeout", "tls_error"})

    @inlineCallbacks
    def test_every_family_documented(self) -> None:
        """
        Every poolproxy_* metric that /metrics exports has a table row of its
        own in docs/metrics.md, under its full exported name (counters with
        _total): a mention in an example query is not enough.
        """
        service = start_proxy(self, free_port())
        _, families = yield self.scrape(service)
        exported = sorted(f.name + "_total" if f.type == "counter" else f.name
                          for f in families if f.name.startswith("poolproxy_"))
        self.assertTrue(exported)
        with open(DOCS, encoding="utf-8") as f:
            docs = f.read()
        missing = [name for name in exported
                   if not re.search(r"^\|\s*`" + re.escape(name) + r"`\s*\|", docs, re.MULTILINE)]
        self.assertEqual(missing, [], f"exported but without a table row in {DOCS}")
