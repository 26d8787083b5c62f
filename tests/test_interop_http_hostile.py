"""
HTTP mode against slow, idle and hostile clients, through a real
C{twistd poolproxy} process in front of real servers (nginx, a small
tunnel server in a thread), driven by blocking sockets: every phase has
a deadline, and buffering keeps slow clients from holding backend
connections.
"""

from __future__ import annotations

import http.client
import os
import select
import socket
import threading
import time
from typing import Any, List

from twisted.trial.unittest import SynchronousTestCase

from tests.interop import ProxyProcess, nginx_server, recv_until, wait_until
from tests.support import free_port


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


class BufferingTests(SynchronousTestCase):
    def normal_request(self, port: int) -> None:
        """A plain GET, answered 200 within a second."""
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/ok")
        response = conn.getresponse()
        self.assertEqual(response.status, 200)
        self.assertIn(b"/ok", response.read())
        conn.close()
        self.assertLess(time.monotonic() - started, 1.0)

    def test_stalled_bodies_take_no_backend_connection(self) -> None:
        """
        50 clients each send a POST head announcing 1 MB and 3 bytes of it,
        then nothing, to a proxy with 10 backend connections: another
        client is answered 200 within a second all along, and each stalled
        client gets 408 once body_timeout has passed.  The backend is the
        demo's (twisted.web), which reads a whole body before it answers, as
        most application servers do (nginx's "return" answers at once).
        """
        demo = f"tcp:{free_port()}:interface=127.0.0.1"
        pp = ProxyProcess(self, "http", [], "--demo", demo, "--pool-size", "10",
                          "--body-timeout", "2")
        stalled = []
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", pp.port), timeout=10)
            self.addCleanup(s.close)
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc")
            stalled.append(s)
        replies = {s: b"" for s in stalled}
        still_open = set(stalled)
        deadline = time.monotonic() + 30
        served = 0
        while still_open:
            self.assertLess(time.monotonic(), deadline, f"{len(still_open)} stalled clients left")
            self.normal_request(pp.port)
            served += 1
            readable, _, _ = select.select(list(still_open), [], [], 0.05)
            for s in readable:
                data = s.recv(65536)
                replies[s] += data
                if not data:
                    still_open.discard(s)
        for s in stalled:
            self.assertTrue(replies[s].startswith(b"HTTP/1.1 408 "), replies[s][:200])
        self.assertGreater(served, 10)
        self.assertEqual(pp.metric("poolproxy_timeouts_total", phase="body"), 50)

    def test_client_not_reading_holds_no_connection(self) -> None:
        """
        A client asks for a large response and reads none of it: once the
        backend has sent it all, its connection is back in the pool, idle,
        and serves another client at once; the first then reads its response
        whole.  (8 MB with a 16 MiB response buffer: on loopback the kernel
        takes up to 4 MiB into the proxy's send buffer whatever the proxy
        does, so a 1 MB response would prove nothing; with the default 1 MiB
        buffer the proxy frees the connection of any response up to that
        much more than the kernel takes.)
        """
        backend, directory = nginx_server(self)
        payload = os.urandom(8_000_000)
        with open(os.path.join(directory, "mb"), "wb") as f:
            f.write(payload)
        pp = ProxyProcess(self, "http", [backend], "--pool-size", "1", "--mux-connections", "1",
                          "--response-buffer-size", str(16 * 1024 * 1024))
        slow = socket.socket()
        self.addCleanup(slow.close)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(10)
        slow.connect(("127.0.0.1", pp.port))
        slow.sendall(b"GET /files/mb HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: pp.metric("poolproxy_http_buffered_total", direction="response") == 1,
                   pp.process.proc, "the response read whole for the slow client", timeout=10)
        self.assertEqual((pp.metric("poolproxy_pool_connections", state="idle"),
                          pp.metric("poolproxy_pool_connections", state="active")), (1, 0))
        self.assertGreater(pp.metric("poolproxy_client_output_held_bytes"), 1_000_000)
        self.normal_request(pp.port)
        reply = bytearray()
        while not reply.endswith(payload[-100:]):
            chunk = slow.recv(1 << 20)
            self.assertTrue(chunk, "closed before the end of the response")
            reply += chunk
        self.assertEqual(bytes(reply).split(b"\r\n\r\n", 1)[1], payload)
        wait_until(lambda: pp.metric("poolproxy_client_output_held_bytes") == 0, pp.process.proc,
                   "the held bytes released", timeout=10)
