"""
The admin API end to end: a running L{ProxyService} in front of two real
echo backends on loopback, with L{poolproxy.ops.admin.build_admin} mounted as
C{/admin} on a web site of the test's own, fetched with a real HTTP client
(L{Agent}).  Waits poll a condition with a bound, never sleep.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Dict, List, Optional
from urllib.parse import quote

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase
from twisted.trial.util import suppress as SUPPRESS
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from poolproxy.config import ConfigError, build_config, read_secret
from poolproxy.ops.admin import MAX_WEIGHT, build_admin
from poolproxy.service import ProxyService
from tests.support import (
    BackendFactory,
    Client,
    connect,
    Echo,
    listener_port,
    serve,
    serve_web,
    start_proxy,
    wait_for,
)

TOKEN = "secret"

_READBODY_WARNING = SUPPRESS(category=DeprecationWarning,
                             message="Using readBody with a transport")


def _seg(name: str) -> str:
    """A name as one percent-encoded path segment."""
    return quote(name, safe="")


class AdminTestCase(TestCase):
    """
    Starts a proxy with two echo backends (round robin) and the admin API on
    a site of its own; every request made through L{post} must log exactly
    one admin line naming its action and the client's address.
    """

    suppress = [_READBODY_WARNING]

    def setUp(self) -> None:
        self.backends = [self.echo_backend(), self.echo_backend()]
        self.service: ProxyService = start_proxy(
            self, 0, backend=tuple(f"127.0.0.1:{b.port}" for b in self.backends),
            balance="round_robin")
        self.cluster = self.service.clusters["default"]
        self.a, self.b = self.cluster.backends
        root = Resource()
        root.putChild(b"admin", build_admin(self.service, TOKEN))
        self.admin_port = serve_web(self, root)  # no access log in the captured events
        captured = capturedLogs()
        self.events: List[Dict[str, Any]] = captured.__enter__()
        self.addCleanup(captured.__exit__, None, None, None)

    def echo_backend(self) -> BackendFactory:
        """An echo server on a loopback port, closed when the test ends."""
        factory = BackendFactory(Echo)
        factory.port = serve(self, factory)
        return factory

    def admin_lines(self) -> List[str]:
        """The admin API's log lines so far."""
        return [formatEvent(e) for e in self.events
                if str(e.get("log_namespace", "")).startswith("poolproxy.ops.admin")]

    @inlineCallbacks
    def post(self, path: str, token: Optional[str] = TOKEN, method: bytes = b"POST",
             authorization: Optional[bytes] = None) -> Any:
        """
        Send C{method} C{/admin/PATH}, with the bearer C{token} unless it is
        L{None} (or the raw C{authorization} header if given).

        @return: a L{Deferred} firing with (response, decoded JSON body).
        """
        headers = Headers()
        if authorization is not None:
            headers.addRawHeader(b"Authorization", authorization)
        elif token is not None:
            headers.addRawHeader(b"Authorization", f"Bearer {token}".encode("utf-8"))
        url = f"http://127.0.0.1:{self.admin_port}/admin/{path}".encode("ascii")
        before = len(self.admin_lines())
        response = yield Agent(reactor).request(method, url, headers)
        body = yield readBody(response)
        [content_type] = response.headers.getRawHeaders(b"content-type")
        self.assertEqual(content_type, b"application/json")
        new = self.admin_lines()[before:]
        self.assertEqual(len(new), 1, new)
        action = path.split("?")[0].rstrip("/").split("/")[-1]
        self.assertIn(f"admin {action} /", new[0])
        self.assertIn("127.0.0.1:", new[0])
        self.last_line = new[0]
        return response, json.loads(body)

    def backend_path(self, backend: Any, action: str) -> str:
        return f"backends/default/{_seg(backend.name)}/{action}"

    def picks(self, n: int) -> Counter:
        """How often each backend is picked in C{n} picks."""
        return Counter(self.cluster.pick() for _ in range(n))

    def assertError(self, response: Any, body: Dict[str, Any], code: int,
                    fragment: str) -> None:
        self.assertEqual(response.code, code, body)
        self.assertIs(body["ok"], False)
        self.assertIn(fragment, body["error"])
        self.assertNotIn("\n", body["error"])
        self.assertIn(f": {code} ", self.last_line)


class AuthTests(AdminTestCase):
    """
    No change without the right bearer token.
    """

    @inlineCallbacks
    def test_missing_token(self) -> None:
        """
        Without an Authorization header: 401 with WWW-Authenticate: Bearer,
        and the backend stays in rotation; the refusal is logged.
        """
        response, body = yield self.post(self.backend_path(self.a, "disable"), token=None)
        self.assertError(response, body, 401, "token")
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [b"Bearer"])
        self.assertFalse(self.a.disabled)
        self.assertEqual(self.a.state, "up")
        self.assertIn("refused", self.last_line)

    @inlineCallbacks
    def test_wrong_token(self) -> None:
        """
        A wrong token, an empty one, a token with a suffix or another scheme
        is refused with 401; nothing changes.
        """
        attempts = [dict(token="wrong"), dict(token=""), dict(token=TOKEN + "x"),
                    dict(authorization=b"Basic " + TOKEN.encode("ascii")),
                    dict(authorization=b"Bearer")]
        for attempt in attempts:
            response, body = yield self.post(self.backend_path(self.a, "drain"), **attempt)
            self.assertError(response, body, 401, "token")
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [b"Bearer"])
        self.assertFalse(self.a.draining)
        response, body = yield self.post(self.backend_path(self.a, "weight?value=5"),
                                         token="nope")
        self.assertEqual(response.code, 401)
        self.assertEqual(self.a.weight, 1)

    @inlineCallbacks
    def test_scheme_case_insensitive(self) -> None:
        """
        The auth scheme is case-insensitive ("bearer TOKEN" works).
        """
        response, body = yield self.post(self.backend_path(self.a, "drain"),
                                         authorization=b"bearer " + TOKEN.encode("ascii"))
        self.assertEqual(response.code, 200, body)
        self.assertTrue(self.a.draining)


class BackendTests(AdminTestCase):
    """
    drain, disable, enable and weight change the backend and what the
    cluster picks.
    """

    @inlineCallbacks
    def test_drain(self) -> None:
        """
        drain marks the backend draining; it is never picked while the other
        one still is.  The answer describes the backend.
        """
        response, body = yield self.post(self.backend_path(self.a, "drain"))
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body, {"ok": True, "backend": {
            "cluster": "default", "name": self.a.name, "state": "draining", "weight": 1}})
        self.assertTrue(self.a.draining)
        self.assertFalse(self.a.disabled)
        self.assertEqual(self.picks(20), Counter({self.b: 20}))
        self.assertIn(f"admin drain /backends/default/{self.a.name}/drain by 127.0.0.1:",
                      self.last_line)

    @inlineCallbacks
    def test_drain_keeps_sessions(self) -> None:
        """
        A client session already on a drained backend goes on working.
        """
        client = connect(listener_port(self.service), Client())
        yield wait_for(lambda: self.a.outstanding + self.b.outstanding == 1, 5.0,
                       "the session to reach a backend")
        busy = self.a if self.a.outstanding else self.b
        response, body = yield self.post(self.backend_path(busy, "drain"))
        self.assertEqual(body["backend"]["state"], "draining")
        client.transport.write(b"still here")
        yield wait_for(lambda: b"".join(client.received) == b"still here", 5.0, "the echo")
        client.transport.loseConnection()
        yield client.done

    @inlineCallbacks
    def test_disable_and_enable(self) -> None:
        """
        disable takes the backend out (and clears draining); enable brings
        it back, and both backends are picked in turn again.
        """
        yield self.post(self.backend_path(self.a, "drain"))
        response, body = yield self.post(self.backend_path(self.a, "disable"))
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["backend"]["state"], "disabled")
        self.assertTrue(self.a.disabled)
        self.assertFalse(self.a.draining)
        self.assertEqual(self.picks(20), Counter({self.b: 20}))

        response, body = yield self.post(self.backend_path(self.a, "enable"))
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["backend"]["state"], "up")
        self.assertFalse(self.a.disabled)
        self.assertFalse(self.a.draining)
        self.assertEqual(self.picks(20), Counter({self.a: 10, self.b: 10}))

    @inlineCallbacks
    def test_enable_after_drain(self) -> None:
        """
        enable also ends a drain.
        """
        yield self.post(self.backend_path(self.b, "drain"))
        self.assertEqual(self.picks(4), Counter({self.a: 4}))
        response, body = yield self.post(self.backend_path(self.b, "enable"))
        self.assertEqual(body["backend"]["state"], "up")
        self.assertEqual(self.picks(20), Counter({self.a: 10, self.b: 10}))

    @inlineCallbacks
    def test_all_disabled(self) -> None:
        """
        With every backend disabled the cluster picks none.
        """
        for backend in (self.a, self.b):
            yield self.post(self.backend_path(backend, "disable"))
        self.assertIsNone(self.cluster.pick())

    @inlineCallbacks
    def test_weight(self) -> None:
        """
        weight?value=3 sets backend.weight, and round robin then picks that
        backend three times as often.
        """
        response, body = yield self.post(self.backend_path(self.a, "weight?value=3"))
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["backend"]["weight"], 3)
        self.assertEqual(self.a.weight, 3)
        self.assertEqual(self.picks(40), Counter({self.a: 30, self.b: 10}))

    @inlineCallbacks
    def test_bad_weight(self) -> None:
        """
        A missing, repeated, zero, negative, fractional, non-numeric or too
        large weight is a 400 with a one-line reason; the weight is unchanged.
        """
        for query in ("", "?value=", "?value=0", "?value=-2", "?value=1.5", "?value=abc",
                      "?value=%2B3", "?value=3&value=4", f"?value={MAX_WEIGHT + 1}",
                      "?value=99999999999999999999"):
            response, body = yield self.post(self.backend_path(self.a, "weight" + query))
            self.assertError(response, body, 400, "weight")
        self.assertEqual(self.a.weight, 1)
        self.assertEqual(self.picks(20), Counter({self.a: 10, self.b: 10}))

    @inlineCallbacks
    def test_unquoted_name(self) -> None:
        """
        A backend name may also be given without percent-encoding.
        """
        response, body = yield self.post(f"backends/default/{self.a.name}/drain")
        self.assertEqual(response.code, 200, body)
        self.assertTrue(self.a.draining)


class RefusalTests(AdminTestCase):
    """
    404 for what does not exist, 405 for other methods.
    """

    @inlineCallbacks
    def test_unknown_cluster(self) -> None:
        """
        An unknown cluster is a 404 naming it.
        """
        response, body = yield self.post(f"backends/nope/{_seg(self.a.name)}/drain")
        self.assertError(response, body, 404, "no cluster 'nope'")

    @inlineCallbacks
    def test_unknown_backend(self) -> None:
        """
        An unknown backend is a 404 naming it; nothing changes.
        """
        response, body = yield self.post("backends/default/127.0.0.1%3A1/disable")
        self.assertError(response, body, 404, "no backend '127.0.0.1:1'")
        self.assertEqual([b.state for b in self.cluster.backends], ["up", "up"])

    @inlineCallbacks
    def test_unknown_listener(self) -> None:
        """
        An unknown listener is a 404 naming it.
        """
        response, body = yield self.post("listeners/nope/pause")
        self.assertError(response, body, 404, "no listener 'nope'")

    @inlineCallbacks
    def test_unknown_action_and_path(self) -> None:
        """
        An unknown action, a path of the wrong shape and the bare root are 404s.
        """
        response, body = yield self.post(self.backend_path(self.a, "explode"))
        self.assertError(response, body, 404, "no backend action 'explode'")
        name = _seg(self.service.listeners[0].name)
        response, body = yield self.post(f"listeners/{name}/explode")
        self.assertError(response, body, 404, "no listener action 'explode'")
        for path in ("", "backends", "backends/default", "clusters/default/x/drain",
                     f"backends/default/{_seg(self.a.name)}/drain/more"):
            response, body = yield self.post(path)
            self.assertError(response, body, 404, "no such admin resource")
        self.assertEqual(self.a.state, "up")

    @inlineCallbacks
    def test_get_not_allowed(self) -> None:
        """
        GET (or PUT), even with the right token, is a 405 with Allow: POST
        and changes nothing.
        """
        for method in (b"GET", b"PUT"):
            response, body = yield self.post(self.backend_path(self.a, "disable"),
                                             method=method)
            self.assertError(response, body, 405, "use POST")
            self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])
        self.assertFalse(self.a.disabled)


class ListenerTests(AdminTestCase):
    """
    Pausing a listener stops new connections from being accepted, keeps the
    existing ones, and resume accepts again.
    """

    @inlineCallbacks
    def test_pause_and_resume(self) -> None:
        """
        While paused, a new TCP connection completes in the kernel but the
        proxy never accepts it (connections_total does not grow, even after
        an echo round trip through an existing connection, which still
        works); after resume it is accepted.
        """
        listener = self.service.listeners[0]
        stats = listener.stats
        port = listener_port(self.service)
        first = connect(port, Client())
        yield wait_for(lambda: stats.connections_total == 1, 5.0, "the first connection")

        path = f"listeners/{_seg(listener.name)}/pause"
        response, body = yield self.post(path)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body, {"ok": True, "listener": {"name": listener.name,
                                                         "paused": True}})
        self.assertIn("admin pause /listeners/", self.last_line)

        second = connect(port, Client())
        yield wait_for(lambda: second.connected, 5.0, "the kernel to complete the connect")
        first.transport.write(b"ping")
        yield wait_for(lambda: b"".join(first.received) == b"ping", 5.0, "the echo")
        # Another full HTTP round trip: the reactor has had every chance to accept.
        response, body = yield self.post(path)
        self.assertEqual(body["listener"]["paused"], True)
        self.assertEqual(stats.connections_total, 1)

        response, body = yield self.post(f"listeners/{_seg(listener.name)}/resume")
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["listener"]["paused"], False)
        yield wait_for(lambda: stats.connections_total == 2, 5.0, "the waiting connection")
        second.transport.write(b"pong")
        yield wait_for(lambda: b"".join(second.received) == b"pong", 5.0, "the echo")

        third = connect(port, Client())
        yield wait_for(lambda: stats.connections_total == 3, 5.0, "a new connection")
        for client in (first, second, third):
            client.transport.loseConnection()
            yield client.done

    @inlineCallbacks
    def test_port_cannot_pause(self) -> None:
        """
        A listening port without stopReading/startReading is a 501.
        """
        listener = self.service.listeners[0]
        real = listener.service.port
        listener.service.port = object()
        self.addCleanup(setattr, listener.service, "port", real)
        response, body = yield self.post(f"listeners/{_seg(listener.name)}/pause")
        self.assertError(response, body, 501, "cannot pause")

    @inlineCallbacks
    def test_not_listening(self) -> None:
        """
        A listener that is not listening (no port) is a 409.
        """
        listener = self.service.listeners[0]
        real = listener.service.port
        listener.service.port = None
        self.addCleanup(setattr, listener.service, "port", real)
        response, body = yield self.post(f"listeners/{_seg(listener.name)}/resume")
        self.assertError(response, body, 409, "not listening")


class BuildTests(TestCase):
    """
    build_admin itself.
    """

    def test_empty_token_refused(self) -> None:
        """
        An empty token would let anyone in: build_admin refuses it.
        """
        self.assertRaises(ValueError, build_admin, object(), "")


class ConfigTests(TestCase):
    """
    The admin_token_file setting.
    """

    FLAGS = {"listen": ["tcp:0"], "backend": ["127.0.0.1:1"]}

    def test_default_off(self) -> None:
        """
        Without admin_token_file the setting is None (the API is off).
        """
        config = build_config({}, self.FLAGS)
        self.assertIsNone(config.admin_token_file)

    def test_token_file_read(self) -> None:
        """
        A readable token file is accepted; read_secret gives its first line.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("tok3n\nignored\n")
        config = build_config({}, dict(self.FLAGS, admin_token_file=path))
        self.assertEqual(config.admin_token_file, path)
        self.assertEqual(read_secret(config.admin_token_file, "admin_token_file"), "tok3n")

    def test_unreadable_or_empty_refused(self) -> None:
        """
        A missing or empty token file is a ConfigError naming the flag, at
        build time.
        """
        e = self.assertRaises(ConfigError, build_config, {},
                              dict(self.FLAGS, admin_token_file=self.mktemp()))
        self.assertTrue(str(e).startswith("--admin-token-file:"), str(e))
        path = self.mktemp()
        open(path, "w").close()
        e = self.assertRaises(ConfigError, build_config, {},
                              dict(self.FLAGS, admin_token_file=path))
        self.assertIn("no password", str(e))


class MountedTests(TestCase):
    @inlineCallbacks
    def test_admin_mounted_when_token_file_set(self) -> None:
        """
        With admin_token_file set, /admin on the metrics endpoint takes
        actions with the token and refuses without it; without the setting
        there is no /admin at all.
        """
        import os

        from tests.support import Echo, BackendFactory, start_proxy, metrics_port

        port = serve(self, BackendFactory(Echo))
        token_file = os.path.abspath(self.mktemp())
        with open(token_file, "w") as f:
            f.write("s3cret\n")
        service = start_proxy(self, port, admin_token_file=token_file)
        base = b"http://127.0.0.1:%d/admin/backends/default/" % metrics_port(service)
        name = service.cluster.backends[0].name.encode()
        agent = Agent(reactor)
        refused = yield agent.request(b"POST", base + name + b"/disable")
        yield readBody(refused)
        self.assertEqual(refused.code, 401)
        done = yield agent.request(b"POST", base + name + b"/disable",
                                   Headers({b"authorization": [b"Bearer s3cret"]}))
        yield readBody(done)
        self.assertEqual(done.code, 200)
        self.assertTrue(service.cluster.backends[0].disabled)
        plain = start_proxy(self, port)
        missing = yield agent.request(
            b"POST", b"http://127.0.0.1:%d/admin/backends/default/x/enable" % metrics_port(plain),
            Headers({b"authorization": [b"Bearer s3cret"]}))
        yield readBody(missing)
        self.assertEqual(missing.code, 404)
