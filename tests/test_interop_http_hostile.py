"""
HTTP mode against slow, idle and hostile clients, through a real
C{twistd poolproxy} process in front of real servers (nginx, a small
tunnel server in a thread), driven by blocking sockets: every phase has
a deadline, and buffering keeps slow clients from holding backend
connections.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from tests.interop import ProxyProcess, nginx_server, recv_until, wait_until


class TunnelServer:
    """
    A server in a thread of the test: answers any request head with 101
    Switching Protocols, then echoes what it gets upper-cased, until the
    peer closes.
    """

    def __init__(self, testcase: Any) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._stopping = False
        self._threads: List[threading.Thread] = []
        thread = threading.Thread(target=self._serve, daemon=True)
        thread.start()
        self._threads.append(thread)
        testcase.addCleanup(self.stop)

    def _serve(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.accepted += 1
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn:
            try:
                recv_until(conn, b"\r\n\r\n")
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                             b"Upgrade: echo\r\n\r\n")
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data.upper())
            except OSError:
                return

    def stop(self) -> None:
        self._stopping = True
        self.listener.close()
        for thread in self._threads:
            thread.join(5)


class TunnelTests(SynchronousTestCase):
    def test_idle_tunnel_closed(self) -> None:
        """
        A WebSocket-style tunnel that carries no byte for tunnel_idle_timeout
        is closed, client side and backend side, and its backend connection
        leaves the pool; one that carried bytes worked until then.
        """
        server = TunnelServer(self)
        pp = ProxyProcess(self, "http", [server.port], "--tunnel-idle-timeout", "1")
        s = socket.create_connection(("127.0.0.1", pp.port), timeout=10)
        self.addCleanup(s.close)
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        self.assertIn(b" 101 ", recv_until(s, b"\r\n\r\n"))
        s.sendall(b"hello")
        self.assertEqual(recv_until(s, b"HELLO"), b"HELLO")
        started = time.monotonic()
        self.assertEqual(s.recv(100), b"")  # closed by the proxy, not the 10 s socket timeout
        self.assertLess(time.monotonic() - started, 5.0)
        wait_until(lambda: pp.metric("poolproxy_pool_connections") == 0, pp.process.proc,
                   "the tunnel's backend connection closed", timeout=10)
        self.assertEqual(pp.metric("poolproxy_timeouts_total", phase="tunnel"), 1)


class RefusedUpgradeTests(SynchronousTestCase):
    def test_nginx_answers_200_to_upgrade(self) -> None:
        """
        nginx answers a WebSocket upgrade on a plain location with 200: what
        the client sent after the head is then parsed as a request, which
        gets the proxy's X-Forwarded-For, and the connection goes on.
        """
        backend, _ = nginx_server(self)
        pp = ProxyProcess(self, "http", [backend])
        s = socket.create_connection(("127.0.0.1", pp.port), timeout=10)
        self.addCleanup(s.close)
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                  b"GET /xff HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
        reply = recv_until(s, b"127.0.0.1\n")
        self.assertEqual(reply.count(b"HTTP/1.1 200 "), 2, reply)
        self.assertIn(b"nginx says /ws\n", reply)
        self.assertTrue(reply.endswith(b"\r\n\r\n127.0.0.1\n"), reply)
        s.sendall(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(recv_until(s, b"nginx says /third\n").endswith(b"nginx says /third\n"))
