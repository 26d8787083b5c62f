"""
HTTP through a real poolproxy process in front of nginx, driven by
http.client and wrk.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import List

from twisted.trial.unittest import SynchronousTestCase

from tests.interop import ProxyProcess, binary, nginx_server, recv_until


class NginxInteropTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend, self.directory = nginx_server(self)

    def proxy(self, *extra: str, reactor: "str | None" = None) -> ProxyProcess:
        self.pp = ProxyProcess(self, "http", [self.backend], *extra, reactor=reactor)
        return self.pp

    def backend_connections(self) -> List[str]:
        """The nginx connection serial number of every request logged."""
        with open(os.path.join(self.directory, "access.log")) as f:
            return [line.split()[0] for line in f if line.strip()]

    def request(self, path: str, method: str = "GET", body: bytes = b"",
                conn: "http.client.HTTPConnection | None" = None) -> http.client.HTTPResponse:
        c = conn or http.client.HTTPConnection("127.0.0.1", self.pp.port, timeout=30)
        c.request(method, path, body=body or None)
        return c.getresponse()

    def test_requests_share_backend_connections(self) -> None:
        """
        200 requests, each on a new client connection, are served by nginx
        over no more connections than pool-size (keep-alive to the backend).
        """
        self.proxy("--pool-size", "2")
        for i in range(200):
            response = self.request(f"/item/{i}")
            self.assertEqual(response.status, 200)
            self.assertEqual(response.read(), f"nginx says /item/{i}\n".encode())
        connections = self.backend_connections()
        self.assertEqual(len(connections), 200)
        self.assertLessEqual(len(set(connections)), 2)

    def test_keep_alive_client_and_bodies(self) -> None:
        """
        One keep-alive client connection: a 1 MB download intact, a 5 MB
        upload's length seen by nginx, a HEAD with no body, in order.
        """
        self.proxy()
        conn = http.client.HTTPConnection("127.0.0.1", self.pp.port, timeout=30)
        with open(os.path.join(self.directory, "big"), "rb") as f:
            big = f.read()
        response = self.request("/big", conn=conn)
        got = response.read()
        self.assertEqual((len(got), hashlib.sha256(got).hexdigest()),
                         (len(big), hashlib.sha256(big).hexdigest()), (response.getheaders(), got[:100]))
        response = self.request("/echo", "POST", os.urandom(5 * 1024 * 1024), conn=conn)
        self.assertEqual(response.read(), b"5242880\n")
        response = self.request("/big", "HEAD", conn=conn)
        self.assertEqual(response.getheader("content-length"), str(len(big)))
        self.assertEqual(response.read(), b"")
        response = self.request("/last", conn=conn)
        self.assertEqual(response.read(), b"nginx says /last\n")
        conn.close()

    def test_concurrent_clients(self) -> None:
        """
        300 requests from 30 threads: every response is the one its request
        asked for.
        """
        self.proxy("--pool-size", "10")

        def work(n: int) -> List[str]:
            problems = []
            conn = http.client.HTTPConnection("127.0.0.1", self.pp.port, timeout=30)
            for i in range(10):
                body = self.request(f"/t{n}/{i}", conn=conn).read()
                if body != f"nginx says /t{n}/{i}\n".encode():
                    problems.append(f"{n}/{i}: {body!r}")
            conn.close()
            return problems

        with ThreadPoolExecutor(30) as pool:
            problems = sum(pool.map(work, range(30)), [])
        self.assertEqual(problems, [])
        self.assertLessEqual(len(set(self.backend_connections())), 10)

    def test_short_sessions_reuse_backend_connections(self) -> None:
        """
        10,000 short sessions (connect, one request with Connection: close,
        read to the end) reach nginx over no more than pool-size connections.
        """
        self.proxy("--pool-size", "4")
        request = b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        for _ in range(10_000):
            s = socket.create_connection(("127.0.0.1", self.pp.port), timeout=30)
            s.sendall(request)
            reply = recv_until(s, b"nginx says /s\n")
            s.close()
            self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply)
        self.assertEqual(len(self.backend_connections()), 10_000)
        self.assertLessEqual(len(set(self.backend_connections())), 4)

    def test_wrk(self) -> None:
        """
        wrk with 50 keep-alive connections for 2 seconds: requests complete,
        none fail, nginx sees at most pool-size connections.
        """
        self.wrk()

    def test_wrk_poolproxy_epoll(self) -> None:
        """
        The same under twistd --reactor=poolproxy-epoll (poolproxy.reactor),
        the reactor the benchmarks and docs/operations.md use.
        """
        self.wrk(reactor="poolproxy-epoll")

    def wrk(self, reactor: "str | None" = None) -> None:
        tool = binary("wrk")
        self.proxy("--pool-size", "10", reactor=reactor)
        out = subprocess.run([tool, "-t1", "-c50", "-d2s", f"http://127.0.0.1:{self.pp.port}/"],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        total = int(re.search(r"(\d+) requests in", out.stdout).group(1))
        self.assertGreater(total, 100, out.stdout)
        self.assertNotIn("Non-2xx", out.stdout)
        self.assertNotIn("Socket errors", out.stdout)
        self.assertLessEqual(len(set(self.backend_connections())), 10)
