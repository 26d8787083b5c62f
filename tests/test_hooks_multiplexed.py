"""
Python hooks on redis and memcached listeners, through a real poolproxy
process, real servers and real clients (redis-py, pymemcache): the
tenants example (examples/hooks) with each hook written as a plain
function, a Deferred-returning one and an C{async def}; hooks that raise,
that never answer, and that fail to import on reload.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Dict, List, Optional

from twisted.trial.unittest import SynchronousTestCase

from tests.interop import (Process, memcached_server, module, redis_server, wait_port,
                           wait_until)
from tests.support import ROOT, free_port, twistd_command

EXAMPLES = os.path.join(ROOT, "examples", "hooks")
POINTS = ("authenticate", "route", "allow", "on_connect", "on_disconnect")
TENANTS = """\
# user   password   tenant   cluster
alice    pw-alice   acme     redis-acme
bob      pw-bob     globex   redis-globex
"""


class TenantProxy:
    """
    One listener in front of two clusters of two redis-servers each
    (redis-acme, redis-globex), with the given hooks, in a twistd process.
    """

    def __init__(self, testcase: Any, hooks: Dict[str, str], settings: str = "",
                 env: Optional[Dict[str, str]] = None) -> None:
        self.testcase = testcase
        self.clusters = {name: [redis_server(testcase), redis_server(testcase)]
                         for name in ("redis-acme", "redis-globex")}
        self.port = free_port()
        self.metrics_port = free_port()
        directory = os.path.abspath(testcase.mktemp())
        os.makedirs(directory)
        self.tenants_file = os.path.join(directory, "tenants")
        with open(self.tenants_file, "w") as f:
            f.write(TENANTS)
        self.audit = os.path.join(directory, "audit")
        lines = [f'metrics = "tcp:{self.metrics_port}:interface=127.0.0.1"',
                 "check_interval = 0", settings, "[hooks]"]
        lines += [f'{point} = "{spec}"' for point, spec in hooks.items()]
        lines += ["[[listener]]", 'name = "tenants"',
                  f'listen = "tcp:{self.port}:interface=127.0.0.1"', 'cluster = "redis-acme"']
        for name, ports in self.clusters.items():
            lines += ["[[cluster]]", f'name = "{name}"', 'protocol = "redis"']
            for port in ports:
                lines += ["[[cluster.backend]]", f'address = "127.0.0.1:{port}"']
        self.config = os.path.join(directory, "poolproxy.toml")
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        environ = dict(os.environ, TENANTS_FILE=self.tenants_file, HOOK_AUDIT=self.audit,
                       PYTHONDONTWRITEBYTECODE="1")
        environ.update(env or {})
        self.process = Process(testcase, twistd_command("poolproxy", "--config", self.config),
                               "proxy", env=environ)
        wait_port(self.port, self.process.proc, log=self.process.log)
        wait_port(self.metrics_port, self.process.proc, log=self.process.log)
        self.redis = module("redis")

    def client(self, user: Optional[str] = None, password: Optional[str] = None,
               **kwargs: Any) -> Any:
        c = self.redis.Redis(host="127.0.0.1", port=self.port, username=user, password=password,
                             socket_timeout=30, **kwargs)
        self.testcase.addCleanup(c.close)
        return c

    def keys_on(self, cluster: str) -> List[bytes]:
        """Every key held by the cluster's redis-servers, asked directly."""
        found: List[bytes] = []
        for port in self.clusters[cluster]:
            direct = self.redis.Redis(host="127.0.0.1", port=port)
            try:
                found += direct.keys("*")
            finally:
                direct.close()
        return found

    def log(self) -> str:
        with open(self.process.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for_log(self, text: str, count: int = 1) -> None:
        wait_until(lambda: self.log().count(text) >= count, self.process.proc,
                   f"{text!r} in the log", log=self.process.log)

    def metric(self, name: str, **labels: str) -> float:
        from tests.interop import ProxyProcess

        return ProxyProcess.metric(self, name, **labels)  # type: ignore[arg-type]

    def metrics(self) -> Dict[str, float]:
        from tests.interop import ProxyProcess

        return ProxyProcess.metrics(self)  # type: ignore[arg-type]


class TenantHookTests(SynchronousTestCase):
    """
    The two-tenant example: AUTH by tenant user, each tenant's requests
    routed to its cluster, its keys kept under its prefix; once with the
    example module as documented, and once per style of hook.
    """

    def start(self, hooks: Dict[str, str], **kwargs: Any) -> TenantProxy:
        self.proxy = TenantProxy(self, hooks, **kwargs)
        return self.proxy

    def exercise(self, proxy: TenantProxy) -> None:
        redis = proxy.redis
        alice = proxy.client("alice", "pw-alice")
        bob = proxy.client("bob", "pw-bob")
        for i in range(20):
            alice.set(f"acme:{i}", f"a{i}")
            bob.set(f"globex:{i}", f"g{i}")
        alice.mset({"acme:m1": "1", "acme:m2": "2"})
        pipe = bob.pipeline(transaction=False)
        for i in range(10):
            pipe.incr(f"globex:n{i}")
        self.assertEqual(pipe.execute(), [1] * 10)
        self.assertEqual(alice.get("acme:7"), b"a7")
        self.assertEqual(bob.mget("globex:1", "globex:2"), [b"g1", b"g2"])
        # RESP3: HELLO 3 AUTH, the same verdicts.
        alice3 = proxy.client("alice", "pw-alice", protocol=3)
        self.assertEqual(alice3.get("acme:1"), b"a1")

        # A tenant touching the other's prefix: NOPERM, for one key or any of several.
        with self.assertRaises(redis.exceptions.NoPermissionError) as refused:
            alice.get("globex:1")
        self.assertIn("acme may only use keys under acme:", str(refused.exception))
        with self.assertRaises(redis.exceptions.NoPermissionError):
            bob.mget("globex:1", "acme:1")
        with self.assertRaises(redis.exceptions.NoPermissionError):
            bob.delete("globex:1", "acme:1")
        self.assertEqual(alice.get("acme:1"), b"a1")  # the connection goes on

        # Wrong password, no AUTH at all.
        with self.assertRaises(redis.exceptions.AuthenticationError):
            proxy.client("alice", "pw-bob").ping()
        with self.assertRaises(redis.exceptions.AuthenticationError):
            proxy.client().get("acme:1")

        # Each tenant's keys, and only its keys, are on its own cluster.
        acme, globex = proxy.keys_on("redis-acme"), proxy.keys_on("redis-globex")
        self.assertEqual(sorted(acme), sorted(
            [f"acme:{i}".encode() for i in range(20)] + [b"acme:m1", b"acme:m2"]))
        self.assertEqual(sorted(globex), sorted(
            [f"globex:{i}".encode() for i in range(20)]
            + [f"globex:n{i}".encode() for i in range(10)]))
        # Both servers of each cluster hold some (the cluster's own hashing).
        for cluster in proxy.clusters:
            for port in proxy.clusters[cluster]:
                direct = redis.Redis(host="127.0.0.1", port=port)
                self.addCleanup(direct.close)
                self.assertGreater(direct.dbsize(), 0, (cluster, port))

        self.assertGreaterEqual(proxy.metric("poolproxy_hook_refusals_total", hook="allow"), 3)
        # redis-py may try the refused connection more than once.
        self.assertGreaterEqual(
            proxy.metric("poolproxy_hook_refusals_total", hook="authenticate"), 1)
        self.assertGreaterEqual(proxy.metric("poolproxy_hook_calls_total", hook="allow",
                                             outcome="ok"), 40)
        self.assertGreaterEqual(proxy.metric("poolproxy_auth_failures_total"), 1)

    def audit_lines(self, proxy: TenantProxy) -> List[str]:
        if not os.path.exists(proxy.audit):
            return []
        with open(proxy.audit) as f:
            return f.read().splitlines()

    def check_audit(self, proxy: TenantProxy) -> None:
        """Every connection was audited when made and when closed, with its identity."""
        alice = proxy.client("alice", "pw-alice")
        alice.ping()
        alice.close()
        wait_until(lambda: "disconnect tenants 127.0.0.1 Tenant('acme')"
                   in self.audit_lines(proxy), proxy.process.proc, "the disconnect audited",
                   log=proxy.process.log)
        lines = self.audit_lines(proxy)
        self.assertIn("connect tenants 127.0.0.1 None", lines)

    def styled(self, style: str) -> Dict[str, str]:
        return {point: f"tests.hooks_multiplexed:{style}_{point}" for point in POINTS}

    def test_example_as_documented(self) -> None:
        """The example module itself, named as docs/hooks.md names it."""
        proxy = self.start({p: f"tenants:{p}" for p in ("authenticate", "route", "allow")},
                           env={"PYTHONPATH": EXAMPLES})
        self.exercise(proxy)
        self.assertEqual(proxy.metric("poolproxy_hook_deferred_calls_total"), 0)

    def test_plain_functions(self) -> None:
        proxy = self.start(self.styled("plain"))
        self.exercise(proxy)
        self.check_audit(proxy)
        self.assertEqual(proxy.metric("poolproxy_hook_deferred_calls_total"), 0)

    def test_deferred_functions(self) -> None:
        proxy = self.start(self.styled("deferred"))
        self.exercise(proxy)
        self.check_audit(proxy)
        self.assertGreaterEqual(proxy.metric("poolproxy_hook_deferred_calls_total",
                                             hook="allow"), 40)

    def test_async_functions(self) -> None:
        proxy = self.start(self.styled("async"))
        self.exercise(proxy)
        self.check_audit(proxy)
        self.assertGreaterEqual(proxy.metric("poolproxy_hook_deferred_calls_total",
                                             hook="route"), 40)


class FailingHookTests(SynchronousTestCase):
    """Hooks that raise, never answer, or do not import: refusals, never a crash."""

    def test_raising_hook(self) -> None:
        """
        Requests the hook raises for get an error; others are served; the
        failures are logged once per interval, not once each.
        """
        proxy = TenantProxy(self, {"allow": "tests.hooks_multiplexed:raising_allow"})
        redis = proxy.redis
        c = proxy.client()
        for i in range(30):
            with self.assertRaises(redis.exceptions.NoPermissionError) as refused:
                c.get(f"boom:{i}")
        self.assertIn("the allow hook failed", str(refused.exception))
        c.set("fine", "yes")
        self.assertEqual(c.get("fine"), b"yes")
        self.assertEqual(proxy.metric("poolproxy_hook_calls_total", hook="allow",
                                      outcome="error"), 30)
        log = proxy.log()
        self.assertEqual(log.count("raised RuntimeError: policy store unreachable"), 1, log)
        self.assertNotIn("Traceback", log)

    def test_hook_that_never_answers(self) -> None:
        """
        Past hook_timeout the request is refused; while it waits, other
        clients are served, and the same client's later requests wait
        behind it (replies stay in order).
        """
        proxy = TenantProxy(self, {"allow": "tests.hooks_multiplexed:slow_allow"},
                            settings="hook_timeout = 0.3")
        redis = proxy.redis
        slow, other = proxy.client(), proxy.client()
        pipe = slow.pipeline(transaction=False)
        pipe.get("slow:1")
        pipe.set("after", "1")
        pending: List[Any] = []
        import threading

        thread = threading.Thread(target=lambda: pending.append(
            pipe.execute(raise_on_error=False)))
        thread.start()
        other.set("k", "v")
        self.assertEqual(other.get("k"), b"v")
        thread.join(30)
        [(first, second)] = pending
        self.assertIsInstance(first, redis.exceptions.NoPermissionError)
        self.assertIn("the allow hook failed", str(first))
        self.assertEqual(second, True)
        self.assertEqual(proxy.metric("poolproxy_hook_calls_total", hook="allow",
                                      outcome="timeout"), 1)
        self.assertIn("did not answer within hook_timeout (0.3 s)", proxy.log())

    def test_reload_imports_again_and_keeps_hooks_that_do_not_import(self) -> None:
        """
        SIGHUP imports a hook's module afresh: an edit takes effect; an
        edit that does not import is logged and the running hook kept.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "policy.py")

        def write(source: str) -> None:
            with open(path, "w") as f:
                f.write(source)

        write("def allow(request):\n"
              "    return 'no x' if request.key and request.key.startswith(b'x:') else None\n")
        proxy = TenantProxy(self, {"allow": "policy:allow"}, env={"PYTHONPATH": directory})
        redis = proxy.redis
        c = proxy.client()
        c.set("y:1", "ok")
        with self.assertRaises(redis.exceptions.NoPermissionError):
            c.set("x:1", "no")

        write("def allow(request):\n"
              "    return 'no y' if request.key and request.key.startswith(b'y:') else None\n")
        proxy.process.proc.send_signal(signal.SIGHUP)
        proxy.wait_for_log("reload: done")
        c.set("x:1", "now fine")
        with self.assertRaises(redis.exceptions.NoPermissionError) as refused:
            c.set("y:1", "no")
        self.assertIn("no y", str(refused.exception))

        write("def allow(request)\n    return None\n")  # a syntax error
        proxy.process.proc.send_signal(signal.SIGHUP)
        proxy.wait_for_log("reload: done", count=2)
        log = proxy.log()
        self.assertIn("cannot import policy: SyntaxError", log)
        self.assertIn("keeping the running hooks", log)
        with self.assertRaises(redis.exceptions.NoPermissionError):
            c.set("y:2", "still refused")
        c.set("x:2", "still fine")


class MemcachedHookTests(SynchronousTestCase):
    """route by key and an async allow, with pymemcache against two memcached clusters."""

    def test_route_and_allow(self) -> None:
        pymemcache = module("pymemcache.client.base")
        ports = {"memcached-a": memcached_server(self), "memcached-b": memcached_server(self)}
        port, metrics_port = free_port(), free_port()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        lines = [f'metrics = "tcp:{metrics_port}:interface=127.0.0.1"', "check_interval = 0",
                 "[hooks]", 'route = "tests.hooks_memcached:memcached_route"',
                 'allow = "tests.hooks_memcached:memcached_allow"',
                 "[[listener]]", f'listen = "tcp:{port}:interface=127.0.0.1"',
                 'cluster = "memcached-a"']
        for name, backend in ports.items():
            lines += ["[[cluster]]", f'name = "{name}"', 'protocol = "memcached"',
                      "[[cluster.backend]]", f'address = "127.0.0.1:{backend}"']
        config = os.path.join(directory, "poolproxy.toml")
        with open(config, "w") as f:
            f.write("\n".join(lines) + "\n")
        proxy = Process(self, twistd_command("poolproxy", "--config", config), "proxy")
        wait_port(port, proxy.proc, log=proxy.log)
        client = pymemcache.Client(("127.0.0.1", port), timeout=30)
        self.addCleanup(client.close)
        client.set("a:1", b"one")
        client.set("b:1", b"two")
        client.set("b:2", b"three")
        self.assertEqual(client.get_many(["b:1", "b:2"]), {"b:1": b"two", "b:2": b"three"})
        with self.assertRaises(pymemcache.MemcacheClientError) as refused:
            client.get_many(["a:1", "b:1"])
        self.assertIn("keys of one cluster per request", str(refused.exception))
        with self.assertRaises(pymemcache.MemcacheClientError) as refused:
            client.get("secret:1")
        self.assertIn("secret keys are not for you", str(refused.exception))
        with self.assertRaises(pymemcache.MemcacheClientError) as refused:
            client.version()
        self.assertIn("version is not allowed here", str(refused.exception))
        self.assertEqual(client.get("a:1"), b"one")  # the connection goes on

        def direct(cluster: str, key: str) -> Any:
            c = pymemcache.Client(("127.0.0.1", ports[cluster]), timeout=10)
            try:
                return c.get(key)
            finally:
                c.close()

        self.assertEqual((direct("memcached-a", "a:1"), direct("memcached-a", "b:1")),
                         (b"one", None))
        self.assertEqual((direct("memcached-b", "b:1"), direct("memcached-b", "a:1")),
                         (b"two", None))
