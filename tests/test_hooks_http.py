"""
Python hooks in request mode (http), end to end: a ProxyService on
loopback in front of two twisted.web backends (clusters C{alpha} and
C{beta}), twisted.web's Agent and raw sockets as clients, the hooks of
tests/hooks_http.py in each style (plain, Deferred, C{async def}).  A hook
that never answers is timed on a task.Clock given to the listener's hooks.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Dict, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from poolproxy.config import build_config
from poolproxy.hooks.calling import ListenerHooks
from poolproxy.service import ProxyService
from tests import hooks_http
from tests.support import Client, connect, listener_port, serve_web, wait_for
from tests.test_http_deadlines import OK, POST_HEAD, Rig


class Named(Resource):
    """A backend that says who it is and what it got, as JSON."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.requests = 0

    def render(self, request: Any) -> bytes:
        self.requests += 1
        request.setHeader(b"content-type", b"application/json")
        authorization = request.getHeader(b"authorization")
        return json.dumps({
            "backend": self.name, "path": request.uri.decode(),
            "authorization": authorization.decode() if authorization else None,
        }).encode()


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class HookedProxyCase(TestCase):
    """Two backends, one per cluster; a listener on C{alpha} with the hooks a test asks for."""

    def setUp(self) -> None:
        hooks_http.calls.clear()
        self.backends = {"alpha": Named("alpha"), "beta": Named("beta")}
        self.ports = {name: serve_web(self, resource) for name, resource in self.backends.items()}
        self.client_pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.client_pool.closeCachedConnections)

    def proxy(self, hooks: Dict[str, str], **settings: Any) -> ProxyService:
        values: Dict[str, Any] = {
            "metrics": "tcp:0:interface=127.0.0.1", "check_interval": 0.0,
            "shutdown_timeout": 0.5,
            "hooks": {point: f"tests.hooks_http:{name}" for point, name in hooks.items()},
            "cluster": [{"name": name, "protocol": "http",
                         "backend": [{"address": f"127.0.0.1:{port}"}]}
                        for name, port in self.ports.items()],
            "listener": [{"name": "web", "listen": "tcp:0:interface=127.0.0.1",
                          "cluster": "alpha"}],
        }
        values.update(settings)
        self.service = service = ProxyService(build_config(values, {}))
        service.startService()
        self.addCleanup(service.stopService)
        self.port = listener_port(service)
        self.base = b"http://127.0.0.1:%d" % self.port
        return service

    @property
    def factory(self) -> Any:
        return self.service.listeners[0].factory

    @property
    def stats(self) -> Any:
        return self.service.listeners[0].stats

    def hook(self, point: str) -> Any:
        return getattr(self.factory.hooks, point)

    @inlineCallbacks
    def get(self, path: bytes, headers: Optional[Dict[bytes, List[bytes]]] = None,
            method: bytes = b"GET", persistent: bool = False) -> Any:
        pool = self.client_pool if persistent else HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, pool=pool)
        response = yield agent.request(method, self.base + path, Headers(headers or {}))
        body = yield readBody(response)
        return response, body

    def calls(self, point: str) -> List[Dict[str, Any]]:
        return [info for name, info in hooks_http.calls if name == point]

    @inlineCallbacks
    def raw(self, payload: bytes, until: Any) -> Any:
        client = connect(self.port, Client(payload))
        yield wait_for(lambda: until(b"".join(client.received)), what="raw reply")
        client.transport.loseConnection()
        yield client.done
        return b"".join(client.received)


# -- authenticate -----------------------------------------------------------------------

class AuthenticateMixin:
    style = "plain"

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.proxy({"authenticate": f"authenticate_{self.style}",  # type: ignore[attr-defined]
                    "route": "route_plain"})

    @inlineCallbacks
    def test_basic_accepted(self) -> Any:
        """
        Basic credentials reach the hook decoded (the password only while it
        runs); the identity it returns is the client's; the request is served
        with its Authorization header forwarded as sent.
        """
        response, body = yield self.get(b"/in", {b"Authorization": [basic("alice", "secret")]})
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["authorization"], basic("alice", "secret").decode())
        [call] = self.calls("authenticate")
        self.assertEqual((call["username"], call["password"]), ("alice", "secret"))
        self.assertEqual(call["headers"]["authorization"], basic("alice", "secret").decode())
        [routed] = self.calls("route")
        self.assertEqual((routed["identity"], routed["password"]), ("alice", None))

    @inlineCallbacks
    def test_refused(self) -> Any:
        """
        A refusal is a 401 with the Basic challenge and a short text; the
        request never reaches a backend; counted as refused.
        """
        response, body = yield self.get(b"/in", {b"Authorization": [basic("alice", "wrong")]})
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                         [b'Basic realm="poolproxy"'])
        self.assertEqual(body, b"poolproxy: authentication failed\n")
        self.assertEqual(self.backends["alpha"].requests, 0)
        self.assertEqual(self.hook("authenticate").refused, 1)
        self.assertEqual(self.stats.requests["refused"], 1)
        self.assertEqual(self.calls("route"), [])

    @inlineCallbacks
    def test_no_authorization(self) -> Any:
        """A request without an Authorization header: 401; the hook is not asked."""
        response, body = yield self.get(b"/in")
        self.assertEqual(response.code, 401)
        self.assertEqual(body, b"poolproxy: authentication required\n")
        self.assertEqual(self.calls("authenticate"), [])
        self.assertEqual(self.backends["alpha"].requests, 0)

    @inlineCallbacks
    def test_bearer(self) -> Any:
        """Another scheme: no username or password; the headers carry the token."""
        response, _ = yield self.get(b"/in", {b"Authorization": [b"Bearer good-token"]})
        self.assertEqual(response.code, 200)
        [call] = self.calls("authenticate")
        self.assertEqual((call["username"], call["password"]), (None, None))
        self.assertEqual(call["headers"]["authorization"], "Bearer good-token")
        self.assertEqual(self.calls("route")[0]["identity"], "tenant-a")
        response, _ = yield self.get(b"/in", {b"Authorization": [b"Bearer bad-token"]})
        self.assertEqual(response.code, 401)

    @inlineCallbacks
    def test_malformed_basic(self) -> Any:
        """
        Basic credentials that are not base64 of user:password: 400, the hook
        not asked; the connection goes on with the next request.
        """
        reply = yield self.raw(
            b"GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: Basic !!notbase64\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + base64.b64encode(b"nocolon")
            + b"\r\n\r\n"
            b"GET /c HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic("alice", "secret")
            + b"\r\n\r\n",
            until=lambda got: b'"/c"' in got)
        statuses = re.findall(rb"HTTP/1\.1 \d+ [A-Za-z ]+", reply)
        self.assertEqual(statuses, [b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 400 Bad Request",
                                    b"HTTP/1.1 200 OK"])
        self.assertEqual(len(self.calls("authenticate")), 1)

    @inlineCallbacks
    def test_verdict_kept_per_connection(self) -> Any:
        """
        On one connection the same Authorization value is asked about once;
        a different one is asked about again, and refused.
        """
        alice = {b"Authorization": [basic("alice", "secret")]}
        for _ in range(3):
            response, _ = yield self.get(b"/in", alice, persistent=True)
            self.assertEqual(response.code, 200)
        self.assertEqual(len(self.calls("authenticate")), 1)
        response, _ = yield self.get(b"/in", {b"Authorization": [basic("alice", "x")]},
                                     persistent=True)
        self.assertEqual(response.code, 401)
        self.assertEqual(len(self.calls("authenticate")), 2)
        self.assertEqual(self.factory.stats.connections_total, 1)


class AuthenticatePlainTests(AuthenticateMixin, HookedProxyCase):
    style = "plain"


class AuthenticateDeferredTests(AuthenticateMixin, HookedProxyCase):
    style = "deferred"


class AuthenticateAsyncTests(AuthenticateMixin, HookedProxyCase):
    style = "async"


# -- route ------------------------------------------------------------------------------------

class RouteMixin:
    style = "plain"

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.proxy({"route": f"route_{self.style}"})  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_by_host(self) -> Any:
        """Each Host lands on its cluster's backend; another host on the listener's own."""
        landed = []
        for host in (b"a.example", b"b.example", b"b.example:8080", b"other.example"):
            response, body = yield self.get(b"/where?x=1", {b"Host": [host]}, persistent=True)
            self.assertEqual(response.code, 200)
            landed.append(json.loads(body)["backend"])
        self.assertEqual(landed, ["alpha", "beta", "beta", "alpha"])
        first = self.calls("route")[0]
        self.assertEqual((first["method"], first["path"], first["host"], first["cluster"]),
                         ("GET", "/where?x=1", "a.example", "alpha"))
        self.assertEqual(first["headers"]["host"], "a.example")
        self.assertTrue(all(name == name.lower() for name in first["headers"]))
        self.assertEqual(self.backends["beta"].requests, 2)

    @inlineCallbacks
    def test_unknown_cluster(self) -> Any:
        """A cluster the listener does not serve: 502 naming it; nothing sent."""
        response, body = yield self.get(b"/x", {b"Host": [b"nowhere.example"]})
        self.assertEqual(response.code, 502)
        self.assertIn(b"'gamma'", body)
        self.assertEqual(self.backends["alpha"].requests + self.backends["beta"].requests, 0)
        self.assertEqual(self.hook("route").refused, 1)
        self.assertEqual(self.stats.requests["refused"], 1)


class RoutePlainTests(RouteMixin, HookedProxyCase):
    style = "plain"


class RouteDeferredTests(RouteMixin, HookedProxyCase):
    style = "deferred"


class RouteAsyncTests(RouteMixin, HookedProxyCase):
    style = "async"


# -- allow --------------------------------------------------------------------------------------

class AllowMixin:
    style = "plain"

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.proxy({"route": "route_plain", "allow": f"allow_{self.style}"})  # type: ignore

    @inlineCallbacks
    def test_refused_with_its_text(self) -> Any:
        """A text refuses with a 403 carrying it (text/plain); nothing is sent."""
        response, body = yield self.get(b"/forbidden/x", {b"Host": [b"b.example"]})
        self.assertEqual(response.code, 403)
        self.assertEqual(body, b"no entry to /forbidden/x on beta\n")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/plain; charset=utf-8"])
        self.assertEqual(self.backends["beta"].requests, 0)
        self.assertEqual(self.hook("allow").refused, 1)
        self.assertEqual(self.stats.requests["refused"], 1)
        # allow runs after route: it saw the chosen cluster.
        self.assertEqual(self.calls("allow"), [{"path": "/forbidden/x", "cluster": "beta"}])

    @inlineCallbacks
    def test_allowed(self) -> Any:
        response, body = yield self.get(b"/fine", {b"Host": [b"b.example"]})
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["backend"], "beta")

    @inlineCallbacks
    def test_order_kept_on_keep_alive(self) -> Any:
        """
        Pipelined requests get their replies in order, refused or served,
        HEAD's refusal without a body.
        """
        reply = yield self.raw(
            b"GET /one HTTP/1.1\r\nHost: a.example\r\n\r\n"
            b"GET /forbidden/two HTTP/1.1\r\nHost: a.example\r\n\r\n"
            b"HEAD /forbidden/three HTTP/1.1\r\nHost: a.example\r\n\r\n"
            b"GET /four HTTP/1.1\r\nHost: b.example\r\n\r\n",
            until=lambda got: b'"/four"' in got)
        one = reply.index(b'"/one"')
        two = reply.index(b"no entry to /forbidden/two")
        three = reply.index(b"HTTP/1.1 403", two)
        four = reply.index(b'"/four"')
        self.assertTrue(one < two < three < four, reply)
        self.assertNotIn(b"/forbidden/three on", reply)  # HEAD: no body


class AllowPlainTests(AllowMixin, HookedProxyCase):
    style = "plain"


class AllowDeferredTests(AllowMixin, HookedProxyCase):
    style = "deferred"


class AllowAsyncTests(AllowMixin, HookedProxyCase):
    style = "async"


# -- on_connect / on_disconnect --------------------------------------------------------------

class ConnectMixin:
    style = "plain"

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.proxy({"on_connect": f"on_connect_{self.style}",  # type: ignore[attr-defined]
                    "on_disconnect": f"on_disconnect_{self.style}"})

    @inlineCallbacks
    def test_once_each_per_connection(self) -> Any:
        """Each client connection is told of once when it comes and once when it goes."""
        for _ in range(2):
            response, _ = yield self.get(b"/x", persistent=True)
            self.assertEqual(response.code, 200)
        yield wait_for(lambda: self.calls("on_connect"), what="on_connect")
        self.assertEqual(self.calls("on_disconnect"), [])
        yield self.client_pool.closeCachedConnections()
        yield wait_for(lambda: self.calls("on_disconnect"), what="on_disconnect")
        [came], [went] = self.calls("on_connect"), self.calls("on_disconnect")
        self.assertEqual(came, went)
        self.assertEqual((came["host"], came["protocol"], came["listener"]),
                         ("127.0.0.1", "http", "web"))
        self.assertIsInstance(came["port"], int)


class ConnectPlainTests(ConnectMixin, HookedProxyCase):
    style = "plain"


class ConnectDeferredTests(ConnectMixin, HookedProxyCase):
    style = "deferred"


class ConnectAsyncTests(ConnectMixin, HookedProxyCase):
    style = "async"


# -- hooks that fail -----------------------------------------------------------------------------

class FailingHookTests(HookedProxyCase):
    def setUp(self) -> None:
        super().setUp()
        self.logged: List[Dict[str, Any]] = []
        observer = self.logged.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def hook_lines(self) -> List[str]:
        return [e["log_format"].format(**e) for e in self.logged
                if e.get("log_namespace") == "poolproxy.hooks"]

    @inlineCallbacks
    def test_allow_raises(self) -> Any:
        """
        An allow hook that raises: 503 for that request, other requests
        served; one log line for the interval, however many times it raised.
        """
        self.proxy({"allow": "allow_raises"})
        for path in (b"/boom", b"/fine", b"/boom/again"):
            response, body = yield self.get(path, persistent=True)
            if b"boom" in path:
                self.assertEqual(response.code, 503)
                self.assertEqual(body, b"poolproxy: the allow hook failed\n")
                self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"1"])
            else:
                self.assertEqual(response.code, 200)
        hook = self.hook("allow")
        self.assertEqual((hook.errors, hook.refused), (2, 2))
        [line] = self.hook_lines()
        self.assertIn("RuntimeError: boom in the policy", line)
        self.assertIn("allow", line)
        self.assertEqual(self.factory.stats.connections_total, 1)  # kept alive throughout

    @inlineCallbacks
    def test_route_raises(self) -> Any:
        """A route hook that raises: 503, not sent anywhere."""
        self.proxy({"route": "route_raises"})
        response, body = yield self.get(b"/x")
        self.assertEqual((response.code, body), (503, b"poolproxy: the route hook failed\n"))
        self.assertEqual(self.backends["alpha"].requests, 0)
        self.assertEqual(len(self.hook_lines()), 1)

    @inlineCallbacks
    def test_authenticate_raises(self) -> Any:
        """An authenticate hook that raises refuses: 401."""
        self.proxy({"authenticate": "authenticate_raises"})
        response, _ = yield self.get(b"/x", {b"Authorization": [basic("alice", "secret")]})
        self.assertEqual(response.code, 401)
        self.assertEqual(self.hook("authenticate").refused, 1)
        self.assertIn("ValueError: the user directory is down", self.hook_lines()[0])


class SlowHookTests(HookedProxyCase):
    """Hooks that do not answer, timed by hook_timeout on a task.Clock."""

    def clocked(self, settings: Any = None, **hooks: str) -> Clock:
        """The listener's hooks replaced by the same on a Clock (a reload does as much)."""
        self.proxy({}, **(settings or {}))
        clock = Clock()
        timed = ListenerHooks("web", clock, 1.0)
        timed.load({point: f"tests.hooks_http:{name}" for point, name in hooks.items()})
        self.factory.hooks = timed
        return clock

    @inlineCallbacks
    def _times_out(self, point: str, status: int, headers: Any = None) -> Any:
        clock = self.clocked(**{point: "never"})
        d = self.get(b"/x", headers)
        yield wait_for(lambda: self.calls("never"), what="the hook called")
        clock.advance(0.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        response, _ = yield d
        self.assertEqual(response.code, status)
        hook = self.hook(point)
        self.assertEqual((hook.timeouts, hook.refused), (1, 1))
        self.assertEqual(self.backends["alpha"].requests, 0)

    def test_allow_never_answers(self) -> Any:
        return self._times_out("allow", 503)

    def test_route_never_answers(self) -> Any:
        return self._times_out("route", 503)

    def test_authenticate_never_answers(self) -> Any:
        return self._times_out("authenticate", 401, {b"Authorization": [b"Bearer x"]})

    @inlineCallbacks
    def test_waiting_holds_no_slot(self) -> Any:
        """
        With one worker slot, a request waiting for its hook holds neither
        the slot nor a backend connection: another client is served meanwhile.
        """
        self.clocked({"max_concurrency": 1, "queue_size": 0}, allow="allow_hangs")
        waiting = self.get(b"/hang")
        yield wait_for(lambda: self.calls("allow"), what="the hook called")
        response, body = yield self.get(b"/served")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body)["path"], "/served")
        self.assertNoResult(waiting)
        self.assertEqual(self.factory.admission.in_flight, 0)
        yield self.client_pool.closeCachedConnections()
        waiting.cancel()
        yield waiting.addErrback(lambda _: None)

    @inlineCallbacks
    def test_client_leaves_while_waiting(self) -> Any:
        """A client gone while its hook runs: the late answer is dropped, nothing sent."""
        clock = self.clocked(allow="never")
        client = connect(self.port, Client(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"))
        yield wait_for(lambda: self.calls("never"), what="the hook called")
        client.transport.loseConnection()
        yield client.done
        yield wait_for(lambda: self.stats.requests["client_gone"] == 1, what="client_gone")
        clock.advance(1.0)
        self.assertEqual(self.stats.requests["refused"], 0)
        self.assertEqual(self.backends["alpha"].requests, 0)


# -- on a Clock: the proxy's protocols over StringTransports ------------------------------------

class ClockedHookTests(Rig):
    """An http listener on a Clock whose hooks the test sets (tests/hooks_http.py)."""

    def hooks(self, timeout: float = 1.0, **specs: str) -> ListenerHooks:
        hooks_http.calls.clear()
        hooks = ListenerHooks("l", self.clock, timeout)
        hooks.load({point: f"tests.hooks_http:{name}" for point, name in specs.items()})
        self.factory.hooks = hooks
        self.factory.routes = {"c": self.factory.cluster}
        return hooks

    def test_plain_hook_answers_in_the_same_call(self) -> None:
        """
        A hook that returns a value: the request goes for its backend
        connection in the read that brought it; no Deferred.
        """
        hooks = self.hooks(allow="allow_plain", route="route_plain")
        protocol, transport = self.client()
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.assertEqual((hooks.allow.asynchronous, hooks.route.asynchronous), (0, 0))

    def test_never_answers(self) -> None:
        """
        A hook that never answers: the request waits holding no worker slot
        and no backend connection; at hook_timeout, 503; no timer is left.
        """
        hooks = self.hooks(timeout=2.0, allow="never")
        protocol, transport = self.client()
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(1.9)
        self.assertEqual(transport.value(), b"")
        self.assertEqual((self.endpoint.attempts, self.admission.in_flight), ([], 0))
        self.clock.advance(0.1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "), transport.value())
        self.assertFalse(transport.disconnecting)  # the request was whole: keep-alive
        self.assertEqual((hooks.allow.timeouts, hooks.allow.refused), (1, 1))
        self.assertEqual(self.stats.requests["refused"], 1)
        self.assertEqual(self.endpoint.attempts, [])
        self.assertNoTimers()

    def test_body_timer_runs_while_hook_waits(self) -> None:
        """
        A body that stops coming while its request waits for a hook: 408 at
        body_timeout, and the close; the hook's late answer is dropped.
        """
        hooks = self.hooks(timeout=100.0, allow="never")
        protocol, transport = self.client()
        protocol.dataReceived(POST_HEAD + b"abc")
        self.clock.advance(self.limits.body_timeout)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "), transport.value())
        self.assertTrue(transport.disconnecting)
        self.settle()
        written = transport.value()
        self.clock.advance(100.0)
        self.assertEqual(transport.value(), written)
        self.assertEqual((hooks.allow.timeouts, hooks.allow.refused), (1, 0))
        self.assertNoTimers()

    def test_refusal_before_the_body_closes(self) -> None:
        """
        A refusal while the body is still to come: 401 and the close (the
        rest of the body cannot be told from a next request).
        """
        self.hooks(authenticate="authenticate_plain")
        protocol, transport = self.client()
        protocol.dataReceived(POST_HEAD + b"abc")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 401 "), transport.value())
        self.assertIn(b"Connection: close", transport.value())
        self.assertTrue(transport.disconnecting)
        self.settle()
        self.assertNoTimers()

    def test_deferred_answer_then_lease(self) -> None:
        """A hook's Deferred: the request goes for its connection when it fires."""
        hooks = self.hooks(allow="allow_hangs")
        protocol, transport = self.client()
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(len(self.endpoint.attempts), 1)
        backend = self.backend()
        backend.protocol.dataReceived(OK)
        self.assertTrue(transport.value().endswith(b"ok"))
        self.assertEqual(hooks.allow.ok, 1)

    def test_reload_asks_again(self) -> None:
        """
        An accepted Authorization value is not asked about again on its
        connection, until a reload replaces the hook: the new one is asked.
        """
        hooks = self.hooks(authenticate="authenticate_plain")
        protocol, transport = self.client()
        request = b"GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic("alice", "secret") \
            + b"\r\n\r\n"
        backend = None
        for reload in (False, False, True):
            if reload:
                hooks.load(dict(hooks.specs))
            protocol.dataReceived(request)
            if backend is None:
                backend = self.backend()
            backend.protocol.dataReceived(OK)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)
        self.assertEqual(len(self.calls_of("authenticate")), 2)

    def calls_of(self, point: str) -> List[Dict[str, Any]]:
        return [info for name, info in hooks_http.calls if name == point]
