"""
The cluster's metrics end to end: a L{ProxyService} on loopback ports in
front of two real echo backends, with active health checks and circuit
breakers on, scraped over HTTP and parsed with prometheus-client's parser.
Waits poll a condition with a bound, never sleep.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.defer import inlineCallbacks

from poolproxy.service import ProxyService
from tests.support import (
    BackendFactory,
    Client,
    Echo,
    connect,
    listen,
    listener_port,
    start_proxy,
    wait_for,
)
from tests.test_web import WebTestCase


def _samples(families: List[Any], name: str, **labels: str) -> List[Any]:
    """The samples called C{name} whose labels include C{labels}."""
    return [s for f in families for s in f.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def _value(families: List[Any], name: str, **labels: str) -> float:
    """The value of the one sample called C{name} whose labels include C{labels}."""
    found = _samples(families, name, **labels)
    if len(found) != 1:
        raise AssertionError(f"expected one sample {name}{labels}, found {found}")
    return found[0].value


def _enum(families: List[Any], name: str, **labels: str) -> Dict[str, float]:
    """The values of an enum gauge's series, by their C{state} label."""
    return {s.labels["state"]: s.value for s in _samples(families, name, **labels)}


class ClusterMetricsTests(WebTestCase):
    """
    The per-backend and per-cluster families of /metrics, with two echo
    backends, health checks every 50 ms and breakers that open after two
    failures.
    """

    def backend(self) -> Any:
        """
        An echo server on a loopback port; its listening port is closed when
        the test ends unless the test closed it already.

        @return: the listening port.
        """
        port = listen(BackendFactory(Echo))

        def close() -> Any:
            if port.connected:
                return port.stopListening()
            return None

        self.addCleanup(close)
        return port

    def start(self, *ports: Any) -> ProxyService:
        """A proxy (tcp mode) in front of the backends listening on C{ports}."""
        names = tuple(f"127.0.0.1:{p.getHost().port}" for p in ports)
        return start_proxy(self, ports[0].getHost().port, protocol="tcp", backend=names,
                           check_interval=0.05, breaker_failures=2)

    def labels(self, service: ProxyService, index: int) -> Dict[str, str]:
        """The C{cluster} and C{backend} labels of the cluster's C{index}th backend."""
        return {"cluster": service.cluster.name,
                "backend": service.cluster.backends[index].name}

    def all_healthy(self, service: ProxyService) -> bool:
        """Whether every backend's health check has passed."""
        return all(b.health.state == "healthy" for b in service.cluster.backends)

    @inlineCallbacks
    def test_backends_up(self) -> None:
        """
        With both backends listening and their health checks passed, each has
        every per-backend series: state up=1 (the other three states 0),
        weight 1, nothing outstanding, health checks counted as ok and none
        failed, health state healthy, a closed breaker that never opened, no
        retries; the cluster counts two backends up and none in another state.
        """
        service = self.start(self.backend(), self.backend())
        yield wait_for(lambda: self.all_healthy(service), 5.0, "both health checks to pass")
        _, families = yield self.scrape(service)

        for index in (0, 1):
            labels = self.labels(service, index)
            self.assertEqual(_enum(families, "poolproxy_backend_state", **labels),
                             {"up": 1, "down": 0, "draining": 0, "ejected": 0, "disabled": 0})
            self.assertEqual(_value(families, "poolproxy_backend_weight", **labels), 1)
            self.assertEqual(_value(families, "poolproxy_backend_outstanding", **labels), 0)
            self.assertGreaterEqual(_value(families, "poolproxy_backend_health_checks_total",
                                           result="ok", **labels), 1)
            self.assertEqual(_value(families, "poolproxy_backend_health_checks_total",
                                    result="failed", **labels), 0)
            self.assertEqual(_enum(families, "poolproxy_backend_health_state", **labels),
                             {"unknown": 0, "healthy": 1, "unhealthy": 0})
            self.assertEqual(_enum(families, "poolproxy_backend_breaker_state", **labels),
                             {"closed": 1, "open": 0, "half_open": 0})
            for name in ("poolproxy_backend_breaker_opened_total",
                         "poolproxy_backend_breaker_refused_total",
                         "poolproxy_backend_requests_total",
                         "poolproxy_backend_failures_total",
                         "poolproxy_backend_retries_total"):
                self.assertEqual(_value(families, name, **labels), 0, name)
        self.assertEqual(_enum(families, "poolproxy_cluster_backends",
                               cluster=service.cluster.name),
                         {"up": 2, "down": 0, "draining": 0, "ejected": 0, "disabled": 0})

    @inlineCallbacks
    def test_backend_down(self) -> None:
        """
        Once one backend stops listening, its health checks fail until it is
        unhealthy: /metrics then shows its health state unhealthy, its state
        down (and only down), the failed checks counted, and the cluster with
        one backend down and one up; the other backend stays up and healthy.
        """
        gone = self.backend()
        service = self.start(gone, self.backend())
        yield wait_for(lambda: self.all_healthy(service), 5.0, "both health checks to pass")
        check = service.cluster.backends[0].health
        yield gone.stopListening()
        yield wait_for(lambda: check.state == "unhealthy", 5.0,
                       "the stopped backend's health check to fail")
        _, families = yield self.scrape(service)

        down = self.labels(service, 0)
        self.assertEqual(_enum(families, "poolproxy_backend_health_state", **down),
                         {"unknown": 0, "healthy": 0, "unhealthy": 1})
        self.assertEqual(_enum(families, "poolproxy_backend_state", **down),
                         {"up": 0, "down": 1, "draining": 0, "ejected": 0, "disabled": 0})
        self.assertGreaterEqual(_value(families, "poolproxy_backend_health_checks_total",
                                       result="failed", **down), check.fall)
        self.assertGreaterEqual(_value(families, "poolproxy_backend_health_checks_total",
                                       result="ok", **down), 1)

        up = self.labels(service, 1)
        self.assertEqual(_enum(families, "poolproxy_backend_state", **up),
                         {"up": 1, "down": 0, "draining": 0, "ejected": 0, "disabled": 0})
        self.assertEqual(_enum(families, "poolproxy_backend_health_state", **up),
                         {"unknown": 0, "healthy": 1, "unhealthy": 0})
        self.assertEqual(_enum(families, "poolproxy_cluster_backends",
                               cluster=service.cluster.name),
                         {"up": 1, "down": 1, "draining": 0, "ejected": 0, "disabled": 0})

    @inlineCallbacks
    def test_session_counted(self) -> None:
        """
        A client session through the proxy counts as one request of the
        backend the cluster picked, and no longer as outstanding once it has
        ended; the other backend's counters stay at 0.
        """
        service = self.start(self.backend(), self.backend())
        yield wait_for(lambda: self.all_healthy(service), 5.0, "both health checks to pass")
        client = connect(listener_port(service), Client(b"ping"))
        yield wait_for(lambda: b"".join(client.received) == b"ping", 5.0, "the echo")
        client.transport.loseConnection()
        yield client.done
        yield wait_for(lambda: all(b.outstanding == 0 for b in service.cluster.backends),
                       5.0, "the proxy to end the session")
        _, families = yield self.scrape(service)

        requests = [_value(families, "poolproxy_backend_requests_total",
                           **self.labels(service, i)) for i in (0, 1)]
        self.assertEqual(sorted(requests), [0, 1])
        for index in (0, 1):
            labels = self.labels(service, index)
            self.assertEqual(_value(families, "poolproxy_backend_outstanding", **labels), 0)
            self.assertEqual(_value(families, "poolproxy_backend_failures_total", **labels), 0)
