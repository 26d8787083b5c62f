"""
Hooks (poolproxy.hooks) on fakes: calling each style of hook, timeouts on
a Clock, loading and reloading, the configuration, the helpers of
poolproxy.testing, and a multiplexed client's frames through the hooks
(MultiplexHarness).
"""

from __future__ import annotations

import os
import sys
from typing import Any, List

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.codecs.memcached import MemcachedCodec
from poolproxy.codecs.redis import RedisCodec, encode_command
from poolproxy.config import ConfigError, build_config
from poolproxy.hooks.calling import HookFailure, ListenerHooks
from poolproxy.hooks.loading import HookLoadError, load_hooks
from poolproxy.testing import MultiplexHarness, call_hook, hook_client, hook_request


_WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
_NOAUTH = b"-NOAUTH Authentication required.\r\n"


def cmd(*words: str) -> bytes:
    return encode_command([w.encode() for w in words])


class LogLines:
    """The poolproxy.hooks warnings logged while a test runs."""

    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.lines: List[str] = []
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: Any) -> None:
        if event.get("log_namespace") == "poolproxy.hooks" and \
                event.get("log_level") == LogLevel.warn:
            from twisted.logger import formatEvent

            self.lines.append(formatEvent(event))


class CallingTests(SynchronousTestCase):
    """Any style of callable, one result; failures as HookFailure, never raised."""

    def test_plain_value_at_once(self) -> None:
        """A plain function's value comes back as it is: no Deferred."""
        result = call_hook(lambda r: "no", hook_request("GET", "k"))
        self.assertEqual(result, "no")
        self.assertIsNone(call_hook(lambda r: None, hook_request("GET", "k")))

    def test_deferred_and_coroutine(self) -> None:
        clock = Clock()
        pending: "Deferred[Any]" = Deferred()
        result = call_hook(lambda r: pending, hook_request("GET", "k"), clock=clock)
        self.assertIsInstance(result, Deferred)
        pending.callback("later")
        self.assertEqual(self.successResultOf(result), "later")
        self.assertEqual(call_hook(lambda r: succeed(7), hook_request("PING")), 7)

        async def hook(request: Any) -> str:
            return f"{request.command} {request.keys}"

        self.assertEqual(call_hook(hook, hook_request("MGET", "a", "b")), "MGET [b'a', b'b']")

        waiting: "Deferred[Any]" = Deferred()

        async def awaiting(request: Any) -> Any:
            return await waiting

        result = call_hook(awaiting, hook_request("PING"), clock=clock)
        self.assertNoResult(result)
        waiting.callback("fired")
        self.assertEqual(self.successResultOf(result), "fired")

    def test_raising_is_a_failure_logged_once_per_interval(self) -> None:
        logged = LogLines(self)
        hooks = ListenerHooks("l", Clock())

        def boom(request: Any) -> None:
            raise KeyError("tenant")

        hooks.use({"allow": boom})
        hook = hooks.allow
        assert hook is not None
        for _ in range(5):
            result = hook(hook_request("GET", "k"))
            self.assertIsInstance(result, HookFailure)
            self.assertEqual(result.kind, "error")
        self.assertEqual(hook.errors, 5)
        self.assertEqual(len(logged.lines), 1)
        self.assertIn("hook allow", logged.lines[0])
        self.assertIn("KeyError", logged.lines[0])
        hooks.clock.advance(10)
        hook(hook_request("GET", "k"))
        self.assertEqual(len(logged.lines), 2)
        self.assertIn("4 more since the last such line", logged.lines[1])

    def test_never_answering_times_out_on_the_clock(self) -> None:
        """hook_timeout cancels the hook's Deferred, and the coroutine behind it."""
        clock = Clock()
        cancelled: List[str] = []

        async def forever(request: Any) -> None:
            try:
                await Deferred()
            except BaseException as e:
                cancelled.append(type(e).__name__)
                raise

        result = call_hook(forever, hook_request("PING"), clock=clock, timeout=0.5)
        clock.advance(0.4)
        self.assertNoResult(result)
        clock.advance(0.2)
        failure = self.successResultOf(result)
        self.assertIsInstance(failure, HookFailure)
        self.assertEqual(failure.kind, "timeout")
        self.assertEqual(cancelled, ["CancelledError"])

    def test_failing_deferred(self) -> None:
        d: "Deferred[Any]" = Deferred()
        result = call_hook(lambda r: d, hook_request("PING"))
        d.errback(ValueError("no store"))
        failure = self.successResultOf(result)
        self.assertEqual(failure.kind, "error")
        self.assertIn("no store", failure.why)


class RequestTests(SynchronousTestCase):
    """What a request tells hooks, worked out only when asked."""

    def test_redis(self) -> None:
        request = hook_request("MSET", "a", "1", "b", "2")
        self.assertEqual((request.command, request.key), ("MSET", b"a"))
        self.assertEqual(request.args, [b"a", b"1", b"b", b"2"])
        self.assertEqual(request.keys, [b"a", b"b"])
        self.assertEqual(hook_request("GET", "k").keys, [b"k"])
        self.assertEqual(hook_request("PING").keys, [])

    def test_memcached(self) -> None:
        request = hook_request("get", "a", "b", codec=MemcachedCodec())
        self.assertEqual(request.command, "get")
        self.assertEqual(request.keys, [b"a", b"b"])

    def test_http(self) -> None:
        request = hook_request(method="GET", path="/x", host="example.com",
                               headers={"accept": "*/*"})
        self.assertEqual((request.method, request.path, request.host),
                         ("GET", "/x", "example.com"))
        self.assertIsNone(request.command)

    def test_client(self) -> None:
        client = hook_client("alice", "pw", database="app")
        self.assertEqual((client.username, client.password, client.database, client.host),
                         ("alice", "pw", "app", "127.0.0.1"))


class LoadingTests(SynchronousTestCase):
    def module(self, name: str, source: str) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, name + ".py"), "w") as f:
            f.write(source)
        sys.path.insert(0, directory)
        self.addCleanup(sys.path.remove, directory)
        self.addCleanup(sys.modules.pop, name, None)

    def test_errors_name_the_hook(self) -> None:
        self.module("hooks_ok", "def allow(r):\n    return None\nVALUE = 3\n")
        self.module("hooks_broken", "def allow(r)\n")
        cases = [
            ({"allow": "nosuchmodule_x:allow"}, "cannot import nosuchmodule_x: "
                                                "ModuleNotFoundError"),
            ({"allow": "hooks_broken:allow"}, "cannot import hooks_broken: SyntaxError"),
            ({"allow": "hooks_ok:nothing"}, "hooks_ok has no nothing"),
            ({"allow": "hooks_ok:VALUE"}, "VALUE is not callable"),
            ({"allow": "hooks_ok"}, "expected 'module:callable'"),
            ({"permit": "hooks_ok:allow"}, "unknown hook point 'permit'"),
        ]
        for specs, message in cases:
            with self.assertRaises(HookLoadError) as e:
                load_hooks(specs, "hooks")
            self.assertIn(message, str(e.exception))
        self.assertEqual(load_hooks({"allow": "hooks_ok:allow"}, "hooks")["allow"](None), None)

    def test_reload_all_or_nothing(self) -> None:
        """A reload whose module does not import keeps every running hook."""
        self.module("hooks_reloaded", "def allow(r):\n    return 'v1'\n")
        hooks = ListenerHooks("l", Clock())
        hooks.load({"allow": "hooks_reloaded:allow", "route": "hooks_reloaded:allow"})
        self.assertEqual(hooks.allow(None), "v1")  # type: ignore[misc]
        self.module("hooks_reloaded", "def allow(r):\n    return 'v2'\n")
        self.assertEqual(hooks.load({"allow": "hooks_reloaded:allow"}, fresh=True),
                         "route = (none)")
        self.assertEqual(hooks.allow(None), "v2")  # type: ignore[misc]
        self.assertIsNone(hooks.route)
        with open(sys.modules["hooks_reloaded"].__file__, "w") as f:  # type: ignore[arg-type]
            f.write("def allow(r):\n    return (\n")
        with self.assertRaises(HookLoadError):
            hooks.load({"allow": "hooks_reloaded:allow"}, fresh=True)
        self.assertEqual(hooks.allow(None), "v2")  # type: ignore[misc]


class ConfigTests(SynchronousTestCase):
    def test_table_flags_and_listener_override(self) -> None:
        config = build_config(
            {"hooks": {"allow": "a.b:allow", "on_connect": "a.b:audit"},
             "listener": [{"listen": "tcp:1", "cluster": "c",
                           "hooks": {"allow": "", "route": "a.b:route"}}],
             "cluster": [{"name": "c", "backend": [{"address": "127.0.0.1:1"}]}]}, {})
        self.assertEqual(config.listener_hooks(config.listeners[0]),
                         {"on_connect": "a.b:audit", "route": "a.b:route"})
        flags = build_config({}, {"listen": ["tcp:1"], "backend": ["127.0.0.1:2"],
                                  "hooks": ["allow=m:allow"], "hook_timeout": "0.25"})
        self.assertEqual((flags.hooks, flags.hook_timeout), ((("allow", "m:allow"),), 0.25))

    def test_bad_tables(self) -> None:
        base = {"listen": ["tcp:1"], "backend": ["127.0.0.1:2"]}
        for hooks, message in [({"alow": "m:f"}, "unknown hook point 'alow'"),
                               ({"allow": 3}, "expected 'module:callable'"),
                               ("m:f", "expected a [hooks] table")]:
            with self.assertRaises(ConfigError) as e:
                build_config(dict(base, hooks=hooks), {})
            self.assertIn(message, str(e.exception))
        with self.assertRaises(ConfigError) as e:
            build_config({}, dict(base, hooks=["allow"]))
        self.assertIn("expected POINT=module:callable", str(e.exception))


class MultiplexedHookTests(SynchronousTestCase):
    """A redis client's frames through hooks, in memory on a Clock."""

    def harness(self, **hooks: Any) -> MultiplexHarness:
        return MultiplexHarness(RedisCodec(), hooks=hooks, hook_timeout=1.0)

    def test_replies_stay_in_order_while_a_hook_waits(self) -> None:
        answers: List["Deferred[Any]"] = []

        def allow(request: Any) -> Any:
            if request.key == b"slow":
                d: "Deferred[Any]" = Deferred()
                answers.append(d)
                return d
            return None

        h = self.harness(allow=allow)
        c = h.client()
        c.send(cmd("GET", "slow") + cmd("GET", "fast"))
        h.connect()
        self.assertEqual([t.value() for t in h.connections()], [])  # nothing sent yet
        c.send(cmd("GET", "later"))
        answers[0].callback(None)
        h.connect()
        self.assertEqual(b"".join(t.value() for t in h.connections()),
                         cmd("GET", "slow") + cmd("GET", "fast") + cmd("GET", "later"))
        h.serve(lambda connection, data: b"$1\r\nv\r\n" * data.count(b"*2"))
        self.assertEqual(c.received(), b"$1\r\nv\r\n" * 3)

    def test_refusal_in_its_place(self) -> None:
        h = self.harness(allow=lambda r: "not yours" if r.key == b"b" else None)
        c = h.client()
        c.send(cmd("GET", "a") + cmd("GET", "b") + cmd("GET", "c"))
        h.connect()
        h.serve(lambda connection, data: b"+x\r\n" * data.count(b"*2"))
        self.assertEqual(c.received(), b"+x\r\n-NOPERM not yours\r\n+x\r\n")
        self.assertEqual(h.factory.hooks.allow.refused, 1)  # type: ignore[union-attr]
        self.assertEqual(h.factory.stats.requests["refused"], 1)

    def test_timeout_refuses(self) -> None:
        h = self.harness(allow=lambda r: Deferred())
        c = h.client()
        c.send(cmd("GET", "a"))
        h.clock.advance(0.9)
        self.assertEqual(c.received(), b"")
        h.clock.advance(0.2)
        self.assertEqual(c.received(), b"-NOPERM poolproxy: the allow hook failed\r\n")

    def test_refusing_a_stateful_command_closes(self) -> None:
        """MULTI refused: the client's later commands would run outside it, so it is closed."""
        h = self.harness(allow=lambda r: "no transactions" if r.command == "MULTI" else None)
        c = h.client()
        c.send(cmd("MULTI") + cmd("SET", "k", "v"))
        self.assertEqual(c.received(), b"-NOPERM no transactions\r\n")
        self.assertTrue(c.closed)

    def test_authenticate_refused_with_commands_pipelined_behind(self) -> None:
        """Commands sent after refused credentials are not sent: NOAUTH, as redis says."""
        seen: List[Any] = []

        def authenticate(client: Any) -> Any:
            seen.append((client.username, client.password, client.password_ok))
            return client.password == "good" and "tenant-1"

        h = self.harness(authenticate=authenticate)
        c = h.client()
        c.send(cmd("GET", "k"))
        self.assertEqual(c.read(), b"-NOAUTH Authentication required.\r\n")
        c.send(cmd("AUTH", "alice", "bad") + cmd("GET", "k") + cmd("SET", "k", "v"))
        self.assertEqual(c.read(), b"-WRONGPASS invalid username-password pair or user "
                                       b"is disabled.\r\n" + b"-NOAUTH Authentication "
                                       b"required.\r\n" * 2)
        self.assertEqual(h.connections(), [])
        c.send(cmd("AUTH", "alice", "good") + cmd("GET", "k"))
        h.connect()
        h.serve(lambda connection, data: b"$1\r\nv\r\n")
        self.assertEqual(c.read(), b"+OK\r\n$1\r\nv\r\n")
        self.assertEqual(seen, [("alice", "bad", None), ("alice", "good", None)])
        self.assertEqual(c.protocol.hook_subject().identity, "tenant-1")
        self.assertIsNone(c.protocol.hook_subject().password)
        self.assertEqual(h.factory.stats.auth_failures, 1)

    def test_refused_twice_stays_refused(self) -> None:
        """
        Two refused AUTHs in one read leave the client unauthenticated (the
        framer took both as good until told); a refused then an accepted
        one leave it authenticated.
        """
        h = self.harness(authenticate=lambda client: client.password == "good")
        c = h.client()
        c.send(cmd("AUTH", "bad1") + cmd("AUTH", "bad2") + cmd("GET", "secret"))
        self.assertEqual(c.read(), _WRONGPASS * 2 + _NOAUTH)
        c.send(cmd("GET", "secret"))
        self.assertEqual(c.read(), _NOAUTH)
        self.assertEqual(h.connect(), 0)  # nothing ever reached a backend

        c2 = h.client()
        c2.send(cmd("AUTH", "bad") + cmd("AUTH", "good"))
        self.assertEqual(c2.read(), _WRONGPASS + b"+OK\r\n")
        c2.send(cmd("GET", "k"))
        h.connect()
        h.serve(lambda connection, data: b"$1\r\nv\r\n")
        self.assertEqual(c2.read(), b"$1\r\nv\r\n")

    def test_reset_takes_the_verdict_back(self) -> None:
        h = self.harness(authenticate=lambda client: True)
        c = h.client()
        c.send(cmd("AUTH", "pw") + cmd("RESET") + cmd("GET", "k"))
        self.assertEqual(c.read(), b"+OK\r\n+RESET\r\n" + _NOAUTH)
        self.assertEqual(h.connect(), 0)

    def test_nothing_sent_after_a_closing_refusal(self) -> None:
        """Frames waiting behind a hook are dropped once a refusal closes the client."""
        pending: List["Deferred[Any]"] = []

        def allow(request: Any) -> Any:
            if request.command == "MULTI":
                return "no transactions"
            if request.key == b"slow":
                pending.append(Deferred())
                return pending[-1]
            return None

        h = self.harness(allow=allow)
        c = h.client()
        c.send(cmd("MULTI") + cmd("GET", "slow") + cmd("SET", "k", "v") + cmd("EXEC"))
        self.assertEqual(c.received(), b"-NOPERM no transactions\r\n")
        self.assertTrue(c.closed)
        pending[0].callback(None)
        h.connect()
        self.assertEqual(b"".join(t.value() for t in h.connections()), b"")

    def test_a_shared_deferred_answers_every_caller(self) -> None:
        """A hook handing out one Deferred (a cache) refuses each time, fired or failed."""
        cached = {b"adm": succeed("forbidden")}
        h = self.harness(allow=lambda request: cached.get(request.key[:3], None))
        c = h.client()
        c.send(cmd("GET", "adm:1"))
        c.send(cmd("GET", "adm:2"))
        self.assertEqual(c.read(), b"-NOPERM forbidden\r\n" * 2)
        self.assertEqual(self.successResultOf(cached[b"adm"]), "forbidden")  # unchanged
        failing: "Deferred[Any]" = Deferred()
        cached[b"bad"] = failing
        c.send(cmd("GET", "bad:1"))
        failing.errback(RuntimeError("store down"))
        c.send(cmd("GET", "bad:2"))
        self.assertEqual(c.read(), b"-NOPERM poolproxy: the allow hook failed\r\n" * 2)
        self.assertEqual(h.connect(), 0)

    def test_reload_without_the_hook_leaves_the_password_file(self) -> None:
        """A connected client's credentials go to the password file once the hook is gone."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("right\n")
        h = MultiplexHarness(RedisCodec(), hooks={"authenticate": lambda c: True},
                             client_password_file=path)
        c = h.client()
        h.factory.hooks.use({})
        c.send(cmd("AUTH", "wrong") + cmd("GET", "k"))
        self.assertEqual(c.read(), _WRONGPASS + _NOAUTH)
        c.send(cmd("AUTH", "right"))
        self.assertEqual(c.read(), b"+OK\r\n")
        self.assertEqual(h.connect(), 0)

    def test_an_answer_from_a_replaced_hook_is_not_used(self) -> None:
        """A reload while a hook waits: its late answer does not stand for the new hooks'."""
        pending: List["Deferred[Any]"] = []

        def route(request: Any) -> "Deferred[Any]":
            pending.append(Deferred())
            return pending[-1]

        h = self.harness(route=route)
        c = h.client()
        c.send(cmd("GET", "k"))
        h.factory.hooks.use({"allow": lambda r: "denied now"})
        pending[0].callback(None)
        self.assertEqual(c.read(), b"-NOPERM denied now\r\n")

        h = self.harness(authenticate=lambda client: pending[-1])
        pending.append(Deferred())
        c = h.client()
        c.send(cmd("AUTH", "pw") + cmd("GET", "k"))
        h.factory.hooks.use({"allow": lambda r: "denied now"})
        pending[-1].callback(True)
        self.assertEqual(c.read(), b"+OK\r\n-NOPERM denied now\r\n")
        self.assertIsNone(c.protocol.hook_subject().password)
        self.assertEqual(h.connect(), 0)

    def test_async_authenticate_holds_what_follows(self) -> None:
        verdict: "Deferred[Any]" = Deferred()
        h = self.harness(authenticate=lambda client: verdict)
        c = h.client()
        c.send(cmd("AUTH", "pw") + cmd("GET", "k"))
        h.connect()
        self.assertEqual(c.received(), b"")
        verdict.callback(True)
        h.connect()
        h.serve(lambda connection, data: b"$1\r\nv\r\n")
        self.assertEqual(c.received(), b"+OK\r\n$1\r\nv\r\n")
        self.assertEqual(c.protocol.hook_subject().identity, "default")

    def test_route_to_no_such_cluster(self) -> None:
        h = self.harness(route=lambda r: "elsewhere")
        c = h.client()
        c.send(cmd("GET", "k"))
        self.assertIn(b"the route hook chose no cluster this listener serves", c.received())

    def test_connect_and_disconnect(self) -> None:
        events: List[str] = []
        h = self.harness(on_connect=lambda c: events.append(f"+{c.port}"),
                         on_disconnect=lambda c: events.append(f"-{c.port}"))
        c = h.client()
        c.close()
        port = c.transport.getPeer().port
        self.assertEqual(events, [f"+{port}", f"-{port}"])

    def test_without_hooks_nothing_is_checked(self) -> None:
        h = self.harness()
        c = h.client()
        c.send(cmd("GET", "k"))
        self.assertIsNone(c.protocol.checks)


class DocumentationTests(SynchronousTestCase):
    """docs/hooks.md shows the example as it is, and names every hook point."""

    def test_example_quoted_as_it_is(self) -> None:
        from tests.support import ROOT

        with open(os.path.join(ROOT, "docs", "hooks.md")) as f:
            docs = f.read()
        with open(os.path.join(ROOT, "examples", "hooks", "tenants.py")) as f:
            example = f.read()
        marker = "# examples/hooks/tenants.py (the hooks; the file also reads the tenants file)\n"
        quoted = docs[docs.index(marker) + len(marker):]
        quoted = quoted[:quoted.index("```")]
        self.assertIn(quoted, example)
        self.assertGreater(len(quoted.splitlines()), 20)

    def test_every_point_documented(self) -> None:
        from poolproxy.hooks.points import HOOK_POINTS
        from tests.support import ROOT

        with open(os.path.join(ROOT, "docs", "hooks.md")) as f:
            docs = f.read()
        for point in HOOK_POINTS:
            self.assertIn(f"| `{point.name}` |", docs)

    def test_help_lists_hook_points(self) -> None:
        from poolproxy.hooks.points import HOOK_POINTS
        from poolproxy.tap import Options

        text = " ".join(str(Options()).split())
        for point in HOOK_POINTS:
            self.assertIn(f"{point.name}({point.receives}) -> {point.returns}", text)
        self.assertIn("--hook-timeout", text)
