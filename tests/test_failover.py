"""
Failover with real servers: backends that die, come back, answer 500s or
hang, behind one listener, under continuous load.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.interop import ProxyProcess, module, redis_server
from tests.support import listener_port, serve_web, start_proxy, wait_for


class RedisFailoverTests(SynchronousTestCase):
    def test_kill_and_restart_one_of_two(self) -> None:
        """
        Two redis-servers behind one listener (consistent hashing). Killing
        one: no request waits past the request timeout, only a handful fail
        (those in flight, and those sent before the first failed health
        check), then its keys go to the survivor. Restarting it: after rise
        good checks its keys come back to it.
        """
        redis = module("redis")
        a, b = redis_server(self), redis_server(self)
        proxy = ProxyProcess(self, "redis", [a, b], "--check-interval", "0.2",
                             "--check-fall", "1", "--check-rise", "2", "--check-timeout", "0.5",
                             "--request-timeout", "2")
        client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=10)
        self.addCleanup(client.close)
        direct_a = redis.Redis(host="127.0.0.1", port=a, socket_timeout=10)
        self.addCleanup(direct_a.close)
        keys = [f"key:{i}" for i in range(200)]

        def sweep() -> Dict[str, Any]:
            """SET then GET every key once; the outcome and slowest call."""
            errors: List[str] = []
            slowest = 0.0
            for key in keys:
                started = time.monotonic()
                try:
                    client.set(key, key)
                    if client.get(key) != key.encode():
                        errors.append(f"{key}: wrong value")
                except redis.RedisError as e:
                    errors.append(f"{key}: {e}")
                slowest = max(slowest, time.monotonic() - started)
            return {"errors": errors, "slowest": slowest}

        healthy = sweep()
        self.assertEqual(healthy["errors"], [])
        on_a = [k for k in keys if direct_a.get(k) is not None]
        self.assertTrue(0 < len(on_a) < len(keys), f"consistent hashing spreads keys: {len(on_a)} on a; {proxy.log()[-1500:]}")

        self.redis_processes[a].stop()
        outcomes = [sweep() for _ in range(10)]
        failed = sum(len(o["errors"]) for o in outcomes)
        self.assertLess(failed, 20, outcomes[0]["errors"][:5])
        self.assertLess(max(o["slowest"] for o in outcomes), 3.0)
        self.assertEqual(outcomes[-1]["errors"], [])  # all keys served by the survivor

        redis_server(self, port=a)
        direct_a = redis.Redis(host="127.0.0.1", port=a, socket_timeout=10)
        self.addCleanup(direct_a.close)
        # While a's keys move back, a GET may reach a before the SET it
        # follows did (the data written to the survivor meanwhile is not on a:
        # a cache cluster, as with twemproxy); requests themselves must work.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            result = sweep()
            self.assertEqual([e for e in result["errors"] if "wrong value" not in e], [])
            if all(direct_a.get(k) is not None for k in on_a):
                break
        self.assertEqual(sweep()["errors"], [])
        self.assertTrue(all(direct_a.get(k) == k.encode() for k in on_a),
                        "keys went back to the restarted backend")
        self.assertGreater(proxy.metric("poolproxy_requests_total", outcome="ok"), 0)


class Switchable(Resource):
    """A backend that can be told to answer 500 or to hang."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.mode = "ok"
        self.hits = 0
        self.hanging: List[Any] = []

    def render(self, request: Any) -> Any:
        self.hits += 1
        if self.mode.isdigit():  # "500", "503": answer with that status
            request.setResponseCode(int(self.mode))
            return b"broken"
        if self.mode == "hang" and request.path != b"/health":
            self.hanging.append(request)
            return NOT_DONE_YET
        return self.name.encode()


class HttpFailoverTests(TestCase):
    def setUp(self) -> None:
        self.backends = [Switchable("a"), Switchable("b")]
        ports = []
        for resource in self.backends:
            ports.append(serve_web(self, resource))
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addresses = tuple(f"127.0.0.1:{p}" for p in ports)
        self.service = start_proxy(self, 0, protocol="http", backend=self.addresses,
                                   check_interval=0.2, check_fall=2, check_rise=2,
                                   check_timeout=0.5, check_path="/health",
                                   breaker_failures=3, breaker_reset_timeout=30.0,
                                   request_timeout=0.5, balance="round_robin")
        self.addCleanup(self._release_hanging)

    def _release_hanging(self) -> None:
        for resource in self.backends:
            for request in resource.hanging:
                if not request.finished and not request._disconnected:
                    request.finish()

    @inlineCallbacks
    def fetch(self, n: int) -> Any:
        agent = Agent(reactor, pool=self.pool)
        results = []
        for _ in range(n):
            response = yield agent.request(
                b"GET", b"http://127.0.0.1:%d/" % listener_port(self.service))
            body = yield readBody(response)
            results.append((response.code, body))
        return results

    @inlineCallbacks
    def check_failover(self, mode: str) -> Any:
        yield wait_for(lambda: self.service.ready, what="ready")
        first = yield self.fetch(10)
        self.assertEqual(sorted(set(first)), [(200, b"a"), (200, b"b")])
        self.backends[1].mode = mode
        results = yield self.fetch(40)
        bad = [r for r in results if r[0] != 200]
        # Only the requests b got before its breaker opened failed.
        self.assertLessEqual(len(bad), 3, bad)
        self.assertEqual(results[-20:], [(200, b"a")] * 20)
        backend_b = self.service.cluster.backends[1]
        self.assertEqual(backend_b.state, "ejected" if mode == "hang" else backend_b.state)
        return backend_b

    @inlineCallbacks
    def test_backend_answering_500s(self) -> None:
        """
        One of two backends starts answering 500: after at most
        breaker-failures 500s its breaker opens (and its health checks fail),
        and every request goes to the other.
        """
        backend_b = yield self.check_failover("500")
        yield wait_for(lambda: backend_b.state in ("down", "ejected"), what="b out")

    @inlineCallbacks
    def test_http_failures_gateway(self) -> None:
        """
        With http_failures = "gateway" (and no health checks), a backend
        answering 500 keeps its breaker closed and its 500s reach the
        clients; one answering 503 is taken out as under "5xx".
        """
        self.service = start_proxy(self, 0, protocol="http",
                                   backend=self.addresses,
                                   breaker_failures=3, breaker_reset_timeout=30.0,
                                   balance="round_robin", http_failures="gateway")
        yield wait_for(lambda: self.service.ready, what="ready")
        backend_b = self.service.cluster.backends[1]
        self.backends[1].mode = "500"
        results = yield self.fetch(40)
        self.assertEqual(sorted(set(results)), [(200, b"a"), (500, b"broken")])
        self.assertEqual(results.count((500, b"broken")), 20)
        self.assertEqual(backend_b.state, "up")
        self.backends[1].mode = "503"
        results = yield self.fetch(40)
        self.assertLessEqual(len([r for r in results if r[0] != 200]), 3, results)
        self.assertEqual(results[-20:], [(200, b"a")] * 20)
        self.assertNotEqual(backend_b.state, "up")

    @inlineCallbacks
    def test_backend_hanging(self) -> None:
        """
        One of two backends stops answering: its requests get 504 after the
        request timeout, its breaker opens after breaker-failures of them,
        and every request goes to the other.
        """
        yield self.check_failover("hang")
