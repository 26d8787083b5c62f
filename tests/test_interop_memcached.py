"""
memcached through a real poolproxy process in front of a real memcached,
driven by pymemcache.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from tests.interop import ProxyProcess, memcached_server, module, recv_until


class MemcachedInteropTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pymemcache = module("pymemcache")
        from pymemcache.client.base import Client

        self.Client = Client
        self.backend = memcached_server(self)

    def proxy(self, *extra: str) -> ProxyProcess:
        self.pp = ProxyProcess(self, "memcached", [self.backend], *extra)
        return self.pp

    def client(self, **kwargs: Any) -> Any:
        c = self.Client(("127.0.0.1", self.pp.port), timeout=30, **kwargs)
        self.addCleanup(c.close)
        return c

    def backend_stats(self) -> Any:
        direct = self.Client(("127.0.0.1", self.backend), timeout=10)
        try:
            return {k.decode(): v for k, v in direct.stats().items()}
        finally:
            direct.close()

    def test_commands(self) -> None:
        """
        Every text command pymemcache speaks works through the proxy,
        including noreply storage (pymemcache's default) and 900 KB values.
        """
        self.proxy()
        c = self.client()
        self.assertTrue(c.set("k", b"v", noreply=False))
        c.set("fast", b"noreply")  # noreply=True by default: no response slot
        self.assertEqual(c.get("k"), b"v")
        self.assertEqual(c.get("fast"), b"noreply")
        self.assertEqual(c.get_many(["k", "fast", "missing"]), {"k": b"v", "fast": b"noreply"})
        value, cas = c.gets("k")
        self.assertEqual(value, b"v")
        self.assertTrue(c.cas("k", b"v2", cas, noreply=False))
        self.assertFalse(c.cas("k", b"v3", cas, noreply=False))
        self.assertTrue(c.add("new", b"1", noreply=False))
        self.assertFalse(c.add("new", b"2", noreply=False))
        self.assertTrue(c.replace("new", b"3", noreply=False))
        self.assertTrue(c.append("new", b"4", noreply=False))
        self.assertTrue(c.prepend("new", b"2", noreply=False))
        self.assertEqual(c.get("new"), b"234")
        self.assertEqual(c.incr("n", 1), None)
        c.set("n", b"10", noreply=False)
        self.assertEqual(c.incr("n", 5), 15)
        self.assertEqual(c.decr("n", 3), 12)
        self.assertTrue(c.touch("n", 100, noreply=False))
        self.assertTrue(c.delete("n", noreply=False))
        self.assertFalse(c.delete("n", noreply=False))
        blob = os.urandom(900 * 1024)
        c.set("blob", blob, noreply=False)
        self.assertEqual(c.get("blob"), blob)
        self.assertTrue(c.version())

    def test_cross_talk(self) -> None:
        """
        200 threads, each with its own connection and keys, mix noreply sets,
        sets and multi-gets: every reply belongs to the thread that asked.
        """
        self.proxy("--mux-connections", "2")
        errors: List[str] = []

        def work(n: int) -> None:
            c = self.Client(("127.0.0.1", self.pp.port), timeout=30)
            try:
                for round_ in range(10):
                    keys = [f"t{n}:{i}" for i in range(8)]
                    for i, key in enumerate(keys):
                        c.set(key, f"{n}:{round_}:{i}".encode(), noreply=(i % 2 == 0))
                    got = c.get_many(keys)
                    want = {k: f"{n}:{round_}:{i}".encode() for i, k in enumerate(keys)}
                    if got != want:
                        errors.append(f"thread {n} round {round_}: {sorted(got.items())[:2]}")
            except Exception as e:  # pragma: no cover - reported below
                errors.append(f"thread {n}: {e!r}")
            finally:
                c.close()

        with ThreadPoolExecutor(200) as pool:
            list(pool.map(work, range(200)))
        self.assertEqual(errors, [])

    def test_bad_input_then_others_unaffected(self) -> None:
        """
        An unknown command gets ERROR and the client goes on; a storage line
        with a bad length gets CLIENT_ERROR and is closed; another client is
        served throughout.
        """
        self.proxy("--mux-connections", "1")
        good = self.client()
        good.set("k", b"v", noreply=False)
        s = socket.create_connection(("127.0.0.1", self.pp.port))
        s.settimeout(30)
        s.sendall(b"bogus\r\nget k\r\ngat 0 k\r\n")
        self.assertEqual(recv_until(s, b"END\r\nVALUE k 0 1\r\nv\r\nEND\r\n"),
                         b"ERROR\r\nVALUE k 0 1\r\nv\r\nEND\r\nVALUE k 0 1\r\nv\r\nEND\r\n")
        s.sendall(b"set k 0 0 notanumber\r\nvalue\r\n")
        self.assertTrue(recv_until(s, b"\r\n").startswith(b"CLIENT_ERROR"))
        self.assertEqual(s.recv(1000), b"")
        s.close()
        self.assertEqual(good.get("k"), b"v")

    def test_short_sessions_reuse_backend_connections(self) -> None:
        """
        10,000 short sessions (connect, one get, close) open no more than
        pool-size backend connections.
        """
        self.proxy("--pool-size", "4")
        before = int(self.backend_stats()["total_connections"])
        for _ in range(10_000):
            s = socket.create_connection(("127.0.0.1", self.pp.port))
            s.sendall(b"get k\r\n")
            self.assertEqual(s.recv(100), b"END\r\n")
            s.close()
        after = int(self.backend_stats()["total_connections"])
        self.assertLessEqual(after - before - 1, 4)

    def test_flush_all_refused_unless_allowed(self) -> None:
        """
        flush_all is refused by default (the data survives); with
        --allow-commands flush_all it reaches memcached.
        """
        self.proxy()
        c = self.client()
        c.set("keep", "me")
        with self.assertRaises(self.pymemcache.exceptions.MemcacheClientError) as e:
            c.flush_all(noreply=False)
        self.assertIn("flush_all", str(e.exception))
        self.assertEqual(c.get("keep"), b"me")
        self.assertEqual(self.pp.metric("poolproxy_commands_refused_total", command="flush_all"), 1)

        allowed = ProxyProcess(self, "memcached", [self.backend], "--allow-commands", "flush_all")
        direct = self.Client(("127.0.0.1", allowed.port), timeout=30)
        self.addCleanup(direct.close)
        self.assertTrue(direct.flush_all(noreply=False))
        self.assertIsNone(c.get("keep"))

    def test_reply_past_max_reply_size(self) -> None:
        """
        A multi-get of five 900 KB values with --max-reply-size 2000000: the
        proxy's SERVER_ERROR, the connection in step after it, counted.
        """
        self.proxy("--mux-connections", "1", "--max-reply-size", "2000000")
        c = self.client()
        keys = ["big%d" % i for i in range(5)]
        for key in keys:
            c.set(key, b"v" * 900_000, noreply=False)
        with self.assertRaises(self.pymemcache.exceptions.MemcacheServerError) as e:
            c.get_many(keys)
        self.assertIn("reply too large", str(e.exception))
        self.assertEqual(c.get("big0"), b"v" * 900_000)
        self.assertEqual(self.pp.metric("poolproxy_backend_replies_too_large_total"), 1)
