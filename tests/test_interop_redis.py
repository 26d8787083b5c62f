"""
redis through a real poolproxy process in front of a real redis-server,
driven by redis-py and redis-benchmark.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from tests.interop import ProxyProcess, binary, module, recv_until, redis_server


class RedisInteropTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.redis = module("redis")
        self.backend = redis_server(self)

    def proxy(self, *extra: str, reactor: "str | None" = None) -> ProxyProcess:
        self.pp = ProxyProcess(self, "redis", [self.backend], *extra, reactor=reactor)
        return self.pp

    def client(self, port: int = 0, **kwargs: Any) -> Any:
        c = self.redis.Redis(host="127.0.0.1", port=port or self.pp.port, socket_timeout=30, **kwargs)
        self.addCleanup(c.close)
        return c

    def backend_info(self, section: str) -> Any:
        direct = self.redis.Redis(host="127.0.0.1", port=self.backend, password=getattr(self, "pw", None))
        try:
            return direct.info(section)
        finally:
            direct.close()

    def test_commands(self) -> None:
        """
        Strings, counters, hashes, lists, binary and 5 MB values, MGET of many
        keys and a 100-command pipeline all work through the proxy.
        """
        self.proxy()
        r = self.client()
        self.assertTrue(r.ping())
        r.set("k", "v")
        self.assertEqual(r.get("k"), b"v")
        self.assertEqual(r.incr("n", 5), 5)
        r.hset("h", mapping={"a": "1", "b": "2"})
        self.assertEqual(r.hgetall("h"), {b"a": b"1", b"b": b"2"})
        r.rpush("l", *range(10))
        self.assertEqual(r.lrange("l", 0, -1), [str(i).encode() for i in range(10)])
        blob = os.urandom(5 * 1024 * 1024)
        r.set("blob", blob)
        self.assertEqual(r.get("blob"), blob)
        r.mset({f"m{i}": i for i in range(500)})
        self.assertEqual(r.mget([f"m{i}" for i in range(500)]), [str(i).encode() for i in range(500)])
        pipe = r.pipeline(transaction=False)
        for i in range(100):
            pipe.set(f"p{i}", i).get(f"p{i}")
        results = pipe.execute()
        self.assertEqual(results[1::2], [str(i).encode() for i in range(100)])
        self.assertIsNone(r.get("missing"))
        with self.assertRaises(self.redis.ResponseError):
            r.execute_command("NOSUCHCOMMAND")
        self.assertEqual(r.get("k"), b"v")  # the error did not break the connection

    def test_cross_talk_and_transactions(self) -> None:
        """
        200 threads, each with its own connection and keys, pipeline SET/GET
        and run MULTI/EXEC transactions interleaved with unpinned traffic:
        every reply belongs to the thread that asked; WATCH-based increments
        from every thread add up exactly.
        """
        # 18 pinned connections for 200 transacting clients on a busy 2-core
        # machine: waits for one are long but fair (FIFO); don't time them out.
        self.proxy("--pool-size", "20", "--mux-connections", "2",
                   "--pool-acquire-timeout", "120")
        errors: List[str] = []

        def work(n: int) -> None:
            r = self.redis.Redis(host="127.0.0.1", port=self.pp.port, socket_timeout=30)
            try:
                for round_ in range(5):
                    pipe = r.pipeline(transaction=False)
                    for i in range(10):
                        pipe.set(f"t{n}:{i}", f"{n}:{round_}:{i}").get(f"t{n}:{i}")
                    got = pipe.execute()[1::2]
                    want = [f"{n}:{round_}:{i}".encode() for i in range(10)]
                    if got != want:
                        errors.append(f"thread {n} round {round_}: {got[:3]} != {want[:3]}")
                    tx = r.pipeline(transaction=True)
                    tx.set(f"x{n}", round_).incr(f"x{n}").get(f"x{n}")
                    if tx.execute()[2] != str(round_ + 1).encode():
                        errors.append(f"thread {n}: transaction result wrong")

                    def incr(pipe: Any) -> None:
                        value = int(pipe.get("shared") or 0)
                        pipe.multi()
                        pipe.set("shared", value + 1)

                    r.transaction(incr, "shared")
            except Exception as e:  # pragma: no cover - reported below
                errors.append(f"thread {n}: {e!r}")
            finally:
                r.close()

        with ThreadPoolExecutor(200) as pool:
            list(pool.map(work, range(200)))
        self.assertEqual(errors, [])
        self.assertEqual(self.client().get("shared"), b"1000")
        clients = self.backend_info("clients")["connected_clients"]
        self.assertLessEqual(clients, 21)  # pool-size, plus the INFO connection

    def test_resp3_and_resp2_clients_share_connections(self) -> None:
        """
        redis-py 8 opens with HELLO 3: such clients are not pinned but moved
        to shared RESP3 connections. 40 of them and 10 RESP2 clients, all
        connected at once, get correct replies over at most mux-connections
        connections per protocol version.
        """
        self.proxy("--mux-connections", "2", "--pool-size", "10")
        clients = ([self.client(protocol=3) for _ in range(40)]
                   + [self.client(protocol=2) for _ in range(10)])
        for n, c in enumerate(clients):
            c.set(f"v{n}", n)
            c.hset(f"h{n}", mapping={"n": str(n)})
        for n, c in enumerate(clients):
            self.assertEqual(c.get(f"v{n}"), str(n).encode())
            self.assertEqual(c.hgetall(f"h{n}"), {b"n": str(n).encode()})
            self.assertTrue(c.ping())
        # Two RESP3 and two RESP2 shared connections, plus our INFO connection.
        self.assertLessEqual(self.backend_info("clients")["connected_clients"], 5)
        self.assertEqual(self.pp.metric("poolproxy_pool_connections", state="active"), 4)

    def test_select_stays_with_its_client(self) -> None:
        """
        SELECT pins the client that sent it: another client, on the shared
        connections, still sees database 0.
        """
        self.proxy()
        other_db = self.client(db=3)
        other_db.set("where", "db3")
        self.assertEqual(other_db.get("where"), b"db3")
        plain = self.client()
        self.assertIsNone(plain.get("where"))
        plain.set("where", "db0")
        self.assertEqual(other_db.get("where"), b"db3")

    def test_pubsub_and_blocking(self) -> None:
        """
        A subscriber gets messages published through the proxy; BLPOP waits
        on a connection of its own and gets a value pushed by another client.
        """
        self.proxy()
        sub = self.client().pubsub()
        sub.subscribe("news")
        self.assertEqual(sub.get_message(timeout=10)["type"], "subscribe")
        self.client().publish("news", "hello")
        message = sub.get_message(timeout=10)
        self.assertEqual((message["type"], message["data"]), ("message", b"hello"))
        sub.close()

        got: List[Any] = []
        waiter = threading.Thread(target=lambda: got.append(self.client().blpop("queue", 20)))
        waiter.start()
        pusher = self.client()
        # The waiter is blocked on its own connection; the shared ones still serve.
        while not self.backend_info("clients").get("blocked_clients"):
            self.assertEqual(pusher.ping(), True)
        pusher.rpush("queue", "item")
        waiter.join(30)
        self.assertEqual(got, [(b"queue", b"item")])

    def test_backend_password_and_client_password(self) -> None:
        """
        Pooled connections AUTH with the backend password from its file; a
        client must AUTH with the proxy password first, and AUTH never
        reaches the backend.
        """
        self.pw = "backend-secret"
        self.backend = redis_server(self, password=self.pw)
        backend_file = os.path.abspath(self.mktemp())
        client_file = os.path.abspath(self.mktemp())
        with open(backend_file, "w") as f:
            f.write("backend-secret\n")
        with open(client_file, "w") as f:
            f.write("client-secret\n")
        self.proxy("--backend-password-file", backend_file, "--client-password-file", client_file)
        with self.assertRaises(self.redis.AuthenticationError):
            self.client().get("k")
        with self.assertRaises(self.redis.AuthenticationError):
            self.client(password="wrong").get("k")
        r = self.client(password="client-secret")
        r.set("k", "v")
        self.assertEqual(r.get("k"), b"v")

    def test_malformed_client_does_not_disturb_others(self) -> None:
        """
        A client sending garbage gets a protocol error and is closed; a client
        mid-pipeline on the same shared connection is served as before.
        """
        self.proxy("--mux-connections", "1")
        good = self.client()
        good.set("k", "v")
        bad = socket.create_connection(("127.0.0.1", self.pp.port))
        bad.settimeout(30)
        bad.sendall(b"*2\r\n$3\r\nGET\r\n$abc\r\n")
        reply = recv_until(bad, b"\r\n")
        self.assertTrue(reply.startswith(b"-ERR Protocol error"), reply)
        self.assertEqual(bad.recv(1000), b"")  # closed
        bad.close()
        self.assertEqual(good.get("k"), b"v")

    def test_short_sessions_reuse_backend_connections(self) -> None:
        """
        10,000 short client sessions (connect, one request, close) open no
        more than pool-size backend connections.
        """
        self.proxy("--pool-size", "4")
        before = self.backend_info("stats")["total_connections_received"]
        request = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        for _ in range(10_000):
            s = socket.create_connection(("127.0.0.1", self.pp.port))
            s.sendall(request)
            self.assertEqual(s.recv(100), b"$-1\r\n")
            s.close()
        after = self.backend_info("stats")["total_connections_received"]
        # Minus our own INFO connection; the proxy opened at most pool-size.
        self.assertLessEqual(after - before - 1, 4)
        self.assertEqual(self.pp.metric("poolproxy_requests_total", outcome="ok"), 10_000)

    def test_redis_benchmark(self) -> None:
        """
        redis-benchmark, 50 clients, pipeline 16, GET and SET: every request
        answered, no errors, over a handful of backend connections.
        """
        self.benchmark()

    def test_redis_benchmark_poolproxy_epoll(self) -> None:
        """
        The same under twistd --reactor=poolproxy-epoll (poolproxy.reactor),
        the reactor the benchmarks and docs/operations.md use.
        """
        self.benchmark(reactor="poolproxy-epoll")

    def benchmark(self, reactor: "str | None" = None) -> None:
        tool = binary("redis-benchmark")
        self.proxy("--pool-size", "8", reactor=reactor)
        out = subprocess.run(
            [tool, "-h", "127.0.0.1", "-p", str(self.pp.port), "-t", "set,get",
             "-n", "50000", "-c", "50", "-P", "16", "-q", "--csv"],
            capture_output=True, text=True, timeout=300)
        self.assertEqual(out.returncode, 0, out.stderr)
        rates = dict(re.findall(r'"(SET|GET)","([0-9.]+)"', out.stdout))
        self.assertEqual(set(rates), {"SET", "GET"}, out.stdout)
        self.assertTrue(all(float(v) > 0 for v in rates.values()))
        self.assertEqual(self.pp.metric("poolproxy_requests_total", outcome="rejected"), 0)
        self.assertLessEqual(self.backend_info("clients")["connected_clients"], 9)
