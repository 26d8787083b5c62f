"""
Connection limits in a real C{twistd poolproxy} process started with few
file descriptors (C{RLIMIT_NOFILE} set in the child before it runs), in
front of a real redis-server, with far more clients than descriptors.
"""

from __future__ import annotations

import resource
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Dict, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

from tests.interop import ProxyProcess, redis_server, wait_until
from tests.support import free_port, twistd_command

#: The child's descriptor limit, soft and hard (so that poolproxy cannot raise it).
FD_LIMIT = 256
CLIENTS = 400


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def _get(url: str) -> Tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Clients:
    """
    Blocking sockets, each of which sent C{PING}: which were answered,
    which were closed without an answer, which still wait.
    """

    def __init__(self, port: int, n: int) -> None:
        self.socks: List[socket.socket] = []
        self.got: Dict[socket.socket, bytes] = {}
        self.closed: List[socket.socket] = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"PING\r\n")
            self.socks.append(s)
            self.got[s] = b""

    def waiting(self) -> List[socket.socket]:
        return [s for s in self.socks if s not in self.closed and self.got[s] != b"+PONG\r\n"]

    def answered(self) -> List[socket.socket]:
        return [s for s in self.socks if self.got[s] == b"+PONG\r\n" and s not in self.closed]

    def poll(self) -> int:
        """Read what has come (waiting at most 20 ms); the number answered."""
        waiting = self.waiting()
        if waiting:
            readable, _, _ = select.select(waiting, [], [], 0.02)
            for s in readable:
                try:
                    data = s.recv(4096)
                except ConnectionError:
                    data = b""
                if data:
                    self.got[s] += data
                else:
                    self.closed.append(s)
        return len(self.answered())

    def close(self, socks: List[socket.socket]) -> None:
        for s in socks:
            s.close()
            self.socks.remove(s)

    def close_all(self) -> None:
        self.close(list(self.socks))


class DescriptorLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < CLIENTS + 100:  # this test process holds every client socket
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))

    def test_more_clients_than_descriptors(self) -> None:
        """
        Under a 256-descriptor limit, 400 redis clients connect and send
        PING: the proxy accepts as many as its cap (derived from the limit),
        and every one of those is answered; the others wait in the listen
        backlog, none refused, and are served as the first ones leave.
        Meanwhile /metrics and /readyz answer, health checks pass, and a
        client can still pin a new backend connection (MULTI); nothing is
        logged per waiting connection.
        """
        backend = redis_server(self)
        proxy = ProxyProcess(self, "redis", [backend], "--check-interval", "0.2",
                             preexec_fn=_limit_descriptors)
        clients = Clients(proxy.port, CLIENTS)
        self.addCleanup(clients.close_all)
        metrics = f"http://127.0.0.1:{proxy.metrics_port}"

        code, _ = _get(metrics + "/readyz")
        self.assertEqual(code, 200)
        cap = int(proxy.metric("poolproxy_client_connections_limit"))
        self.assertTrue(100 <= cap < FD_LIMIT, cap)

        served = 0
        first = True
        while clients.socks:
            batch = min(cap, len(clients.socks))
            wait_until(lambda: clients.poll() >= batch, proxy.process.proc,
                       f"{batch} answered clients", log=proxy.process.log)
            self.assertEqual(clients.closed, [])  # refused by nobody
            if first:
                first = False
                self.assertEqual(len(clients.answered()), cap)
                self.check_saturated(proxy, clients, cap)
            answered = clients.answered()
            served += len(answered)
            clients.close(answered)
        self.assertEqual(served, CLIENTS)

        with open(proxy.process.log, errors="replace") as f:
            log = f.read()
        self.assertNotIn("EMFILE", log)
        self.assertNotIn("Could not accept", log)
        # A few lines at start and one summary per 10s; never one per client.
        self.assertLess(len(log.splitlines()), 60, log[-3000:])

    def check_saturated(self, proxy: ProxyProcess, clients: Clients, cap: int) -> None:
        """At the cap, with clients waiting: the operator's and backends' side still work."""
        self.assertEqual(len(clients.waiting()), CLIENTS - cap)
        metrics = f"http://127.0.0.1:{proxy.metrics_port}"
        for _ in range(40):  # more than the web endpoint's own connection cap, one by one
            code, _ = _get(metrics + "/readyz")
            self.assertEqual(code, 200)
        self.assertEqual(proxy.metric("poolproxy_client_connections_open"), cap)
        self.assertEqual(proxy.metric("poolproxy_listener_paused", reason="proxy_limit"), 1)
        checks = proxy.metric("poolproxy_backend_health_checks_total", result="ok")
        wait_until(lambda: proxy.metric("poolproxy_backend_health_checks_total",
                                        result="ok") >= checks + 3,
                   proxy.process.proc, "health checks", log=proxy.process.log)
        self.assertEqual(proxy.metric("poolproxy_backend_health_checks_total",
                                      result="failed"), 0)
        self.assertEqual(proxy.metric("poolproxy_pool_connects_total", result="failed"), 0)
        # A transaction pins a backend connection of its own.
        pinner = clients.answered()[0]
        pinner.sendall(b"MULTI\r\nPING\r\nEXEC\r\n")
        reply = b""
        deadline = time.monotonic() + 10
        while not reply.endswith(b"*1\r\n+PONG\r\n") and time.monotonic() < deadline:
            reply += pinner.recv(4096)
        self.assertEqual(reply, b"+OK\r\n+QUEUED\r\n*1\r\n+PONG\r\n")
        self.assertEqual(proxy.metric("poolproxy_pool_connects_total", result="failed"), 0)


class StartupBudgetTests(SynchronousTestCase):
    def test_cap_that_cannot_fit_is_one_line(self) -> None:
        """
        Under a 256-descriptor limit, --max-client-connections 1000 stops
        twistd before it listens: exit status 1 and one line naming the
        numbers.
        """
        args = twistd_command("poolproxy", "--listen", f"tcp:{free_port()}:interface=127.0.0.1",
                              "--backend", "127.0.0.1:1", "--metrics",
                              f"tcp:{free_port()}:interface=127.0.0.1",
                              "--max-client-connections", "1000")
        done = subprocess.run(args, capture_output=True, text=True, timeout=60,
                              preexec_fn=_limit_descriptors)
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertEqual(done.stderr.strip().splitlines()[-1], (
            "poolproxy: error: --max-client-connections: 1000 client connections do not fit: "
            "the open file limit (256) less 10 for backend pools, 1 for health checks, 33 for "
            "the web endpoint, 1 for listeners and a margin of 64 leaves 147; raise the limit "
            "(ulimit -n, systemd LimitNOFILE=) or lower pool_size or this"))
        self.assertNotIn("Traceback", done.stdout + done.stderr)
