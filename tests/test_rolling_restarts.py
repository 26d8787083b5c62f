"""
Rolling restarts without a refused connection, with real processes:

  - a twistd poolproxy with --shutdown-delay 3 in front of a real
    redis-server: after SIGTERM /readyz answers 503 within 100 ms, and a
    client connecting every 50 ms gets its PING answered until the delay
    ends; then the process drains and exits;
  - three instances behind Debian's HAProxy (tcp mode, health checks on
    /readyz, no retries), restarted one at a time under load: no request
    fails;
  - --workers 2 with a worker replacement (SIGUSR2) under load: no
    connection refused or reset, and both worker pids change; the same
    through the admin action;
  - watch_config with the file in a ConfigMap-style volume, updated by a
    kubelet-style symlink swap: reloaded without SIGHUP.

The load is clients that each open a connection per request (PING,
expecting +PONG), so that every request is a new connection routed anew:
the case a closed listener breaks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from twisted.trial.unittest import TestCase

from tests.interop import Process, binary, redis_server, wait_port, wait_until
from tests.support import free_port, twistd_command


def get(url: str, timeout: float = 5.0) -> Tuple[Optional[int], bytes]:
    """(status, body) of a GET; status L{None} if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


def ping(port: int) -> Optional[str]:
    """One PING on a new connection: L{None} if answered +PONG, else what went wrong."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None if reply == b"+PONG\r\n" else f"reply {reply!r}"


class Load:
    """C{threads} clients pinging C{port} on new connections until stopped."""

    def __init__(self, port: int, threads: int = 3) -> None:
        self.port = port
        self.done = threading.Event()
        self.ok = 0
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            error = ping(self.port)
            with self._lock:
                if error is None:
                    self.ok += 1
                else:
                    self.errors.append(error)

    def stop(self) -> Tuple[int, List[str]]:
        self.done.set()
        for thread in self._threads:
            thread.join(30)
        return self.ok, self.errors


class Instance:
    """One twistd poolproxy (redis mode) on fixed ports, that can be started again."""

    def __init__(self, testcase: TestCase, backend: int, *extra: str) -> None:
        self.testcase = testcase
        self.backend = backend
        self.extra = extra
        self.port = free_port()
        self.web = free_port()
        self.process: Optional[Process] = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.process = Process(self.testcase, twistd_command(
            "poolproxy", "--protocol", "redis",
            "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--metrics", f"tcp:{self.web}:interface=127.0.0.1",
            "--backend", f"127.0.0.1:{self.backend}", "--check-interval", "0",
            *self.extra), f"proxy-{self.port}-{self.starts}")
        wait_port(self.port, self.proc, log=self.process.log)
        self.wait_ready()

    @property
    def proc(self) -> subprocess.Popen:
        assert self.process is not None
        return self.process.proc

    def readyz(self) -> Optional[int]:
        return get(f"http://127.0.0.1:{self.web}/readyz", timeout=2)[0]

    def wait_ready(self) -> None:
        wait_until(lambda: self.readyz() == 200, self.proc, "ready", log=self.log_path())

    def log_path(self) -> str:
        return self.process.log if self.process is not None else ""

    def log_text(self) -> str:
        with open(self.log_path(), errors="replace") as f:
            return f.read()


class ShutdownDelayTests(TestCase):
    def test_served_during_the_delay_then_drained(self) -> None:
        """
        SIGTERM with --shutdown-delay 3: /readyz is 503 within 100 ms; a
        client connecting every 50 ms is served (PING answered through a
        real redis-server) until the delay ends; then the process exits.
        """
        proxy = Instance(self, redis_server(self), "--shutdown-delay", "3",
                         "--shutdown-timeout", "5")
        proxy.start()
        self.assertIsNone(ping(proxy.port))
        proxy.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        # No /readyz asked 100 ms or more after the signal says ready: each
        # request's start is what counts, not when its answer came (on a
        # busy machine the test's own HTTP round trip can take longer).
        while True:
            asked = time.monotonic()
            if proxy.readyz() == 503:
                break
            self.assertLess(asked - sent, 0.1, "/readyz still 200 100 ms after SIGTERM")
        self.assertLess(time.monotonic() - sent, 1.0, "/readyz took a second to fail")
        served = 0
        # Connect every 50 ms while the delay lasts (with a margin before its end).
        while time.monotonic() - sent < 2.8:
            self.assertIsNone(ping(proxy.port), f"refused after {time.monotonic() - sent:.2f}s")
            served += 1
            try:
                proxy.proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        self.assertGreaterEqual(served, 30)
        self.assertIn(proxy.proc.wait(20), (0, -signal.SIGTERM))
        self.assertGreaterEqual(time.monotonic() - sent, 3.0)
        log = proxy.log_text()
        self.assertIn("shutdown: /readyz answers 503; accepting and serving for 3s more", log)
        self.assertIn("shutdown: delay over after 3.0s; draining", log)
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", proxy.port)), 0)

    def test_second_sigterm_cuts_the_delay_short(self) -> None:
        """A second SIGTERM during a long delay starts the drain at once."""
        proxy = Instance(self, redis_server(self), "--shutdown-delay", "60")
        proxy.start()
        proxy.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: proxy.readyz() == 503, proxy.proc, "503", log=proxy.log_path())
        proxy.proc.send_signal(signal.SIGTERM)
        self.assertIn(proxy.proc.wait(20), (0, -signal.SIGTERM))
        self.assertIn("(cut short by a second signal)", proxy.log_text())


HAPROXY_CONF = """
global
    maxconn 4096
    stats socket {dir}/admin.sock mode 600 level admin
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 0
frontend front
    bind 127.0.0.1:{port}
    default_backend proxies
backend proxies
    option httpchk GET /readyz
    default-server inter 200ms fall 1 rise 2
{servers}
"""


class HAProxy:
    """Debian's haproxy in tcp mode in front of the instances, checking /readyz."""

    def __init__(self, testcase: TestCase, instances: List[Instance]) -> None:
        self.port = free_port()
        # Not under _trial_temp: a unix socket's path has at most 97 bytes here.
        self.dir = tempfile.mkdtemp(prefix="poolproxy-haproxy-")
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        servers = "\n".join(f"    server p{i} 127.0.0.1:{p.port} check port {p.web}"
                            for i, p in enumerate(instances))
        conf = os.path.join(self.dir, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(HAPROXY_CONF.format(dir=self.dir, port=self.port, servers=servers))
        self.process = Process(testcase, [binary("haproxy"), "-db", "-f", conf], "haproxy")
        wait_port(self.port, self.process.proc, log=self.process.log)

    def states(self) -> Dict[str, str]:
        """Each server's state as HAProxy sees it (UP, DOWN...)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(os.path.join(self.dir, "admin.sock"))
            s.sendall(b"show stat\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == "proxies" and row.get("svname", "").startswith("p"):
                states[row["svname"]] = row["status"]
        return states

    def wait_up(self, name: str) -> None:
        wait_until(lambda: self.states().get(name) == "UP", self.process.proc,
                   f"haproxy sees {name} up", log=self.process.log)


class HAProxyRollingRestartTests(TestCase):
    def test_restart_one_at_a_time_under_load(self) -> None:
        """
        Three instances behind HAProxy (no retries), each stopped with
        SIGTERM (shutdown_delay 1) and started again, one at a time, while
        clients connect and PING through HAProxy: every request succeeds.
        """
        backend = redis_server(self)
        instances = [Instance(self, backend, "--shutdown-delay", "1", "--shutdown-timeout", "5")
                     for _ in range(3)]
        for instance in instances:
            instance.start()
        balancer = HAProxy(self, instances)
        for i in range(3):
            balancer.wait_up(f"p{i}")
        load = Load(balancer.port)
        try:
            for i, instance in enumerate(instances):
                before = load.ok
                instance.proc.send_signal(signal.SIGTERM)
                wait_until(lambda: balancer.states().get(f"p{i}", "").startswith("DOWN"),
                           instance.proc, f"haproxy sees p{i} down", log=instance.log_path())
                self.assertIn(instance.proc.wait(20), (0, -signal.SIGTERM))
                instance.start()
                balancer.wait_up(f"p{i}")
                self.assertGreater(load.ok, before, "no request went through meanwhile")
        finally:
            ok, errors = load.stop()
        self.assertEqual(errors, [], f"{len(errors)} failed of {ok + len(errors)}")
        self.assertGreater(ok, 100)


class WorkerReplacementTests(TestCase):
    def test_sigusr2_replaces_both_workers_under_load(self) -> None:
        """
        --workers 2: SIGUSR2 to the supervisor while clients connect and
        PING replaces both workers (new pids, the old ones gone) with no
        connection refused, reset or unanswered, and counts it.
        """
        backend = redis_server(self)
        port, web = free_port(), free_port()
        supervisor = Process(self, twistd_command(
            "poolproxy", "--workers", "2", "--protocol", "redis",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--metrics", f"tcp:{web}:interface=127.0.0.1",
            "--backend", f"127.0.0.1:{backend}", "--check-interval", "0",
            "--shutdown-timeout", "5"), "supervisor")
        proc = supervisor.proc

        def status() -> Dict[str, Any]:
            code, body = get(f"http://127.0.0.1:{web}/status.json")
            return json.loads(body) if code == 200 else {"workers": []}

        def pids() -> List[Optional[int]]:
            return [w["pid"] for w in status()["workers"]]

        wait_until(lambda: get(f"http://127.0.0.1:{web}/readyz")[0] == 200, proc, "ready",
                   log=supervisor.log)
        old = pids()
        load = Load(port)
        try:
            wait_until(lambda: load.ok > 50, proc, "load running", log=supervisor.log)
            os.kill(proc.pid, signal.SIGUSR2)
            wait_until(lambda: all(p is not None and p not in old for p in pids())
                       and all(not _alive(p) for p in old if p is not None),
                       proc, "both workers replaced", timeout=60, log=supervisor.log)
            served = load.ok
            wait_until(lambda: load.ok > served + 50, proc, "load after", log=supervisor.log)
        finally:
            ok, errors = load.stop()
        self.assertEqual(errors, [], f"{len(errors)} failed of {ok + len(errors)}")
        code, text = get(f"http://127.0.0.1:{web}/metrics")
        self.assertIn(b'poolproxy_worker_replacements_total{worker="1"} 1.0', text)
        self.assertIn(b'poolproxy_worker_replacements_total{worker="2"} 1.0', text)
        with open(supervisor.log, errors="replace") as f:
            self.assertIn("replaced all 2 workers", f.read())


def _alive(pid: int) -> bool:
    """Whether C{pid} runs (a zombie, exited but not reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class AdminReplaceTests(TestCase):
    def test_admin_action_replaces_the_workers(self) -> None:
        """
        POST /admin/workers/replace on the supervisor needs the admin token,
        starts a replacement (202), refuses a second while it runs (409),
        and the workers' pids change.
        """
        token = os.path.abspath(self.mktemp())
        with open(token, "w") as f:
            f.write("s3cret\n")
        port, web = free_port(), free_port()
        supervisor = Process(self, twistd_command(
            "poolproxy", "--workers", "2", "--protocol", "redis",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--metrics", f"tcp:{web}:interface=127.0.0.1",
            "--backend", f"127.0.0.1:{redis_server(self)}", "--check-interval", "0",
            "--admin-token-file", token), "supervisor")
        proc = supervisor.proc
        url = f"http://127.0.0.1:{web}"
        wait_until(lambda: get(url + "/readyz")[0] == 200, proc, "ready", log=supervisor.log)

        def pids() -> List[Optional[int]]:
            code, body = get(url + "/status.json")
            return [w["pid"] for w in json.loads(body)["workers"]] if code == 200 else []

        def post(auth: Optional[str]) -> Optional[int]:
            request = urllib.request.Request(url + "/admin/workers/replace", method="POST",
                                             data=b"")
            if auth:
                request.add_header("Authorization", f"Bearer {auth}")
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        old = pids()
        self.assertEqual(post(None), 401)
        self.assertEqual(post("wrong"), 401)
        self.assertEqual(post("s3cret"), 202)
        self.assertEqual(post("s3cret"), 409)
        wait_until(lambda: len(pids()) == 2 and not set(pids()) & set(old), proc,
                   "new workers", timeout=60, log=supervisor.log)
        wait_until(lambda: get(url + "/readyz")[0] == 200, proc, "ready", log=supervisor.log)
        self.assertIsNone(ping(port))


class WatchConfigTests(TestCase):
    def test_configmap_swap_is_reloaded(self) -> None:
        """
        watch_config = true with the file in a ConfigMap-style volume: a
        kubelet-style swap of ..data adding a backend is reloaded without
        SIGHUP (the new backend shows in /status.json).
        """
        first, second = redis_server(self), redis_server(self)
        port, web = free_port(), free_port()
        root = tempfile.mkdtemp(prefix="poolproxy-configmap-")
        self.addCleanup(shutil.rmtree, root, True)

        def write(stamp: str, backends: List[int]) -> None:
            os.mkdir(os.path.join(root, stamp))
            with open(os.path.join(root, stamp, "config.toml"), "w") as f:
                f.write(f'protocol = "redis"\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
                        f'metrics = "tcp:{web}:interface=127.0.0.1"\ncheck_interval = 0.0\n'
                        f"watch_config = true\nbackend = {json.dumps([f'127.0.0.1:{b}' for b in backends])}\n")

        write("..2026_12_05_01", [first])
        os.symlink("..2026_12_05_01", os.path.join(root, "..data"))
        os.symlink("..data/config.toml", os.path.join(root, "config.toml"))
        proxy = Process(self, twistd_command(
            "poolproxy", "--config", os.path.join(root, "config.toml")), "proxy")
        url = f"http://127.0.0.1:{web}"
        wait_until(lambda: get(url + "/readyz")[0] == 200, proxy.proc, "ready", log=proxy.log)

        def backends() -> List[str]:
            code, body = get(url + "/status.json")
            if code != 200:
                return []
            return [b["name"] for c in json.loads(body)["clusters"] for b in c["backends"]]

        self.assertEqual(len(backends()), 1)
        write("..2026_12_05_02", [first, second])
        tmp = os.path.join(root, "..data_tmp")
        os.symlink("..2026_12_05_02", tmp)
        os.rename(tmp, os.path.join(root, "..data"))
        wait_until(lambda: len(backends()) == 2, proxy.proc, "backend added by the watcher",
                   log=proxy.log)
        with open(proxy.log, errors="replace") as f:
            log = f.read()
        self.assertIn("config.toml changed: reloading", log)
        self.assertIn("reload: done", log)
