"""
C{--workers N}: a supervisor and N worker processes sharing the listeners.

The end-to-end tests run C{twistd -n poolproxy --workers 2} as a user would
(http mode in front of the demo backend, which the supervisor serves) and
talk to it with real sockets; the unit tests cover the pure parts: summing
expositions, relaying log lines, the handoff, the configuration check.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from poolproxy.config import ConfigError
from poolproxy.tap import ProxyOptions
from poolproxy.workers.metrics_merge import sum_expositions
from poolproxy.workers.supervisor import relay_log_line
from poolproxy.workers.worker import HANDOFF_ENV, Handoff
from tests.interop import Process, wait_port, wait_until
from tests.support import free_port, twistd_command


def _get(url: str) -> Tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _samples(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _exits(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit."""
    if hasattr(os, "pidfd_open"):  # Linux, CPython 3.9+: a pidfd turns readable
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return True
        try:
            return bool(select.select([fd], [], [], timeout)[0])
        finally:
            os.close(fd)
    # PyPy 3.9 has no pidfd_open: poll /proc every 20 ms.
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        select.select([], [], [], 0.02)
    return True


def _answered(socks: List[socket.socket], at_least: int) -> Optional[List[socket.socket]]:
    """The sockets with something to read now, if at least C{at_least}."""
    readable = select.select(socks, [], [], 0.02)[0]
    return readable if len(readable) >= at_least else None


class Supervised:
    """C{twistd -n poolproxy --workers 2 --protocol http} with the demo backend."""

    def __init__(self, testcase: TestCase, *extra: str, reactor: Optional[str] = None) -> None:
        self.port = free_port()
        self.web = free_port()
        demo = free_port()
        self.process = Process(testcase, twistd_command(
            *([f"--reactor={reactor}"] if reactor else []),
            "poolproxy", "--workers", "2", "--protocol", "http",
            "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--demo", f"tcp:{demo}:interface=127.0.0.1",
            "--metrics", f"tcp:{self.web}:interface=127.0.0.1",
            "--shutdown-timeout", "2", *extra), "supervisor")
        self.proc = self.process.proc
        wait_port(self.web, self.proc, log=self.process.log)
        self.wait_ready()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web}{path}"

    def wait_ready(self) -> None:
        wait_until(lambda: _get(self.url("/readyz"))[0] == 200, self.proc,
                   "ready workers", log=self.process.log)

    def status(self) -> Dict[str, Any]:
        code, body = _get(self.url("/status.json"))
        assert code == 200, (code, body)
        return json.loads(body)

    def log_text(self) -> str:
        with open(self.process.log, errors="replace") as f:
            return f.read()


def served_clients(testcase: Any, port: int, count: int = 40) -> List[socket.socket]:
    """C{count} connections to C{port}, each sent a GET and answered 200, kept open."""
    clients: List[socket.socket] = []
    testcase.addCleanup(lambda: [c.close() for c in clients])
    for _ in range(count):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        clients.append(c)
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for c in clients:
        testcase.assertTrue(c.recv(4096).startswith(b"HTTP/1.1 200 "))
    return clients


class WorkersTests(TestCase):
    def test_two_workers_take_connections_and_metrics_sum_them(self) -> None:
        proxy = Supervised(self)
        served_clients(self, proxy.port)

        per_worker = []
        for worker in proxy.status()["workers"]:
            self.assertEqual(worker["state"], "serving")
            code, text = _get(worker["web"] + "metrics")
            self.assertEqual(code, 200)
            samples = _samples(text.decode())
            per_worker.append(sum(v for (name, _), v in samples.items()
                                  if name == "poolproxy_client_connections_total"))
        # The kernel spreads connections over the workers' SO_REUSEPORT
        # sockets by a hash of their addresses: with 40 connections, each of
        # 2 workers takes some (all on one would be a 1 in 2**39 chance).
        self.assertEqual(len(per_worker), 2)
        self.assertTrue(all(n > 0 for n in per_worker), per_worker)
        self.assertEqual(sum(per_worker), 40)

        code, text = _get(proxy.url("/metrics"))
        self.assertEqual(code, 200)
        summed = _samples(text.decode())
        total = sum(v for (name, _), v in summed.items()
                    if name == "poolproxy_client_connections_total")
        self.assertEqual(total, 40)
        self.assertEqual(summed[("poolproxy_workers", ())], 2)
        self.assertEqual(summed[("poolproxy_worker_up", (("worker", "1"),))], 1)
        self.assertEqual(summed[("poolproxy_worker_up", (("worker", "2"),))], 1)
        ok = summed[("poolproxy_requests_total", (("listener", f"tcp:{proxy.port}:interface=127.0.0.1"),
                                                    ("outcome", "ok")))]
        self.assertEqual(ok, 40)

    def test_connection_limit_is_per_worker(self) -> None:
        """
        --max-client-connections 3 caps each worker (the supervisor's sum is
        6): of 40 clients, 6 are served at once, the rest wait in the
        workers' backlogs, none refused, and each is served as others leave.
        """
        proxy = Supervised(self, "--max-client-connections", "3")
        code, text = _get(proxy.url("/metrics"))
        self.assertEqual(_samples(text.decode())[("poolproxy_max_client_connections", ())], 6)
        clients = []
        self.addCleanup(lambda: [c.close() for c in clients])
        for _ in range(40):
            c = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(c)
        # With 40 connections hashed over 2 workers, each gets at least 3
        # (fewer would be a chance of about 1 in 10**9): 6 are served first.
        first = wait_until(lambda: _answered(clients, 6), proxy.proc, "6 answers",
                           log=proxy.process.log)
        self.assertEqual(len(first), 6)
        served = 0
        while clients:
            answered = wait_until(lambda: _answered(clients, 1), proxy.proc, "answers",
                                  log=proxy.process.log)
            self.assertLessEqual(len(answered), 6)
            for c in answered:
                self.assertTrue(c.recv(4096).startswith(b"HTTP/1.1 200 "))
                c.close()
                clients.remove(c)
            served += len(answered)
        self.assertEqual(served, 40)

    def test_workers_run_the_supervisors_reactor(self) -> None:
        """
        Under twistd --reactor=poolproxy-epoll the workers run that reactor
        too (their status says so), and serve.
        """
        proxy = Supervised(self, reactor="poolproxy-epoll")
        workers = proxy.status()["workers"]
        self.assertEqual([w["status"]["runtime"]["reactor"] for w in workers],
                         ["LeanEPollReactor", "LeanEPollReactor"])
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertTrue(c.recv(4096).startswith(b"HTTP/1.1 200 "))

    def test_sighup_reaches_every_worker(self) -> None:
        proxy = Supervised(self)
        os.kill(proxy.proc.pid, signal.SIGHUP)
        wait_until(lambda: all(f"[worker {n}] reload: done" in proxy.log_text() for n in (1, 2)),
                   proxy.proc, "reload in both workers", log=proxy.process.log)

    def test_sigterm_stops_every_worker(self) -> None:
        proxy = Supervised(self)
        pids = [w["pid"] for w in proxy.status()["workers"]]
        # An idle keep-alive client is closed by its worker as it stops
        # (tests.test_shutdown covers requests in flight in one process).
        c = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        self.addCleanup(c.close)
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(c.recv(4096).startswith(b"HTTP/1.1 200 "))
        os.kill(proxy.proc.pid, signal.SIGTERM)
        self.assertIn(proxy.proc.wait(30), (0, -signal.SIGTERM))
        self.assertEqual(c.recv(4096), b"")
        self.assertEqual([pid for pid in pids if _alive(pid)], [])
        with socket.socket() as s:
            self.assertNotEqual(s.connect_ex(("127.0.0.1", proxy.port)), 0)

    def test_dead_worker_is_restarted_on_the_same_socket(self) -> None:
        proxy = Supervised(self)
        first = proxy.status()["workers"][0]
        os.kill(first["pid"], signal.SIGKILL)
        wait_until(lambda: proxy.status()["workers"][0]["restarts"] == 1
                   and proxy.status()["workers"][0]["state"] == "serving",
                   proxy.proc, "worker 1 restarted", log=proxy.process.log)
        self.assertNotEqual(proxy.status()["workers"][0]["pid"], first["pid"])
        self.assertIn("worker 1 (pid", proxy.log_text())
        # Both workers serve again: every one of many new connections is answered.
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c:
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                self.assertTrue(c.recv(4096).startswith(b"HTTP/1.1 200 "))
        _, text = _get(proxy.url("/metrics"))
        self.assertEqual(_samples(text.decode())[("poolproxy_worker_restarts_total",
                                                  (("worker", "1"),))], 1)

    def test_workers_stop_when_the_supervisor_is_killed(self) -> None:
        proxy = Supervised(self)
        pids = [w["pid"] for w in proxy.status()["workers"]]
        os.kill(proxy.proc.pid, signal.SIGKILL)
        proxy.proc.wait(10)
        # Their standard input closes with the supervisor: they stop themselves.
        for pid in pids:
            self.assertTrue(_exits(pid, timeout=20), f"worker {pid} still running")

    def test_admin_action_goes_to_every_worker(self) -> None:
        token = os.path.abspath(self.mktemp())
        with open(token, "w") as f:
            f.write("s3cret\n")
        proxy = Supervised(self, "--admin-token-file", token)
        backend = proxy.status()["workers"][0]["status"]["clusters"][0]["backends"][0]["name"]
        path = f"/admin/backends/default/{backend}/disable"

        def post(auth: Optional[str]) -> Tuple[int, bytes]:
            request = urllib.request.Request(proxy.url(path), method="POST")
            if auth:
                request.add_header("Authorization", auth)
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        code, _ = post("Bearer wrong")
        self.assertEqual(code, 401)
        states = [w["status"]["clusters"][0]["backends"][0]["state"]
                  for w in proxy.status()["workers"]]
        self.assertEqual(states, ["up", "up"])

        code, body = post("Bearer s3cret")
        self.assertEqual(code, 200, body)
        self.assertEqual(sorted(r["worker"] for r in json.loads(body)["workers"]), [1, 2])
        states = [w["status"]["clusters"][0]["backends"][0]["state"]
                  for w in proxy.status()["workers"]]
        self.assertEqual(states, ["disabled", "disabled"])

    def test_admin_token_rotation_by_sighup(self) -> None:
        """
        admin_token_file rewritten, then SIGHUP to the supervisor: it and
        its workers (to which it passes the request on) take the new token
        and refuse the old.
        """
        token = os.path.abspath(self.mktemp())
        with open(token, "w") as f:
            f.write("old-token\n")
        proxy = Supervised(self, "--admin-token-file", token)
        backend = proxy.status()["workers"][0]["status"]["clusters"][0]["backends"][0]["name"]

        def enable(secret: str) -> int:
            request = urllib.request.Request(
                proxy.url(f"/admin/backends/default/{backend}/enable"), method="POST",
                headers={"Authorization": f"Bearer {secret}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        self.assertEqual(enable("old-token"), 200)
        with open(token, "w") as f:
            f.write("new-token\n")
        os.kill(proxy.proc.pid, signal.SIGHUP)
        wait_until(lambda: all(f"[worker {n}] reload: done" in proxy.log_text() for n in (1, 2)),
                   proxy.proc, "reload in both workers", log=proxy.process.log)
        self.assertEqual(enable("old-token"), 401)
        self.assertEqual(enable("new-token"), 200)
        self.assertEqual(proxy.log_text().count(f"a new secret from {token} is in use"), 3)


class MergeTests(TestCase):
    A = """# HELP poolproxy_requests_total Requests.
# TYPE poolproxy_requests_total counter
poolproxy_requests_total{listener="a",outcome="ok"} 3.0
poolproxy_requests_total{listener="a",outcome="error"} 1.0
# HELP wait_seconds Wait.
# TYPE wait_seconds histogram
wait_seconds_bucket{le="0.1"} 1.0
wait_seconds_bucket{le="+Inf"} 2.0
wait_seconds_count 2.0
wait_seconds_sum 0.5
# HELP process_start_time_seconds Start.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 200.0
"""
    B = """# HELP poolproxy_requests_total Requests.
# TYPE poolproxy_requests_total counter
poolproxy_requests_total{listener="a",outcome="ok"} 4.0
poolproxy_requests_created{listener="a",outcome="ok"} 1.7e9
# HELP wait_seconds Wait.
# TYPE wait_seconds histogram
wait_seconds_bucket{le="0.1"} 0.0
wait_seconds_bucket{le="+Inf"} 1.0
wait_seconds_count 1.0
wait_seconds_sum 0.25
# HELP process_start_time_seconds Start.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 100.0
# HELP only_b Only in B.
# TYPE only_b gauge
only_b 7.0
"""

    def test_samples_sum_by_name_and_labels(self) -> None:
        families = sum_expositions([self.A, self.B])
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in families for s in f.samples}
        self.assertEqual(samples[("poolproxy_requests_total",
                                  (("listener", "a"), ("outcome", "ok")))], 7)
        self.assertEqual(samples[("poolproxy_requests_total",
                                  (("listener", "a"), ("outcome", "error")))], 1)
        self.assertEqual(samples[("wait_seconds_bucket", (("le", "0.1"),))], 1)
        self.assertEqual(samples[("wait_seconds_bucket", (("le", "+Inf"),))], 3)
        self.assertEqual(samples[("wait_seconds_count", ())], 3)
        self.assertEqual(samples[("wait_seconds_sum", ())], 0.75)
        self.assertEqual(samples[("only_b", ())], 7)
        # Not an amount: the oldest start time; creation times are dropped.
        self.assertEqual(samples[("process_start_time_seconds", ())], 100)
        self.assertNotIn("poolproxy_requests_created", {name for name, _ in samples})
        self.assertEqual([f.type for f in families][:2], ["counter", "histogram"])

    def test_longest_wait_is_the_longest(self) -> None:
        """A pool's longest wait over the workers is the longest, not a sum."""
        text = ("# HELP poolproxy_pool_longest_wait_seconds W.\n"
                "# TYPE poolproxy_pool_longest_wait_seconds gauge\n"
                'poolproxy_pool_longest_wait_seconds{backend="b"} %s\n')
        [family] = sum_expositions([text % "0.5", text % "2.0", text % "0.0"])
        self.assertEqual([s.value for s in family.samples], [2.0])

    def test_unparseable_text_raises_value_error(self) -> None:
        with self.assertRaises(ValueError):
            sum_expositions(["this is { not metrics"])


class RelayTests(TestCase):
    def capture(self) -> List[Dict[str, Any]]:
        events: List[Dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def test_json_line_keeps_level_namespace_and_fields(self) -> None:
        events = self.capture()
        line = json.dumps({"time": "x", "level": "warn", "namespace": "poolproxy.cluster",
                           "message": "backend {not a field} is down", "backend": "b:1"})
        relay_log_line(line.encode() + b"\n", 2)
        [event] = [e for e in events if e.get("worker") == 2]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertEqual(event["log_namespace"], "poolproxy.cluster")
        self.assertEqual(event["log_system"], "worker 2")
        self.assertEqual(event["backend"], "b:1")
        from twisted.logger import formatEvent
        self.assertEqual(formatEvent(event), "backend {not a field} is down")

    def test_plain_text_and_blank_lines(self) -> None:
        events = self.capture()
        relay_log_line(b"Traceback (most recent call last):", 1)
        relay_log_line(b"   ", 1)
        mine = [e for e in events if e.get("worker") == 1]
        self.assertEqual(len(mine), 1)
        self.assertEqual(mine[0]["log_level"], LogLevel.info)
        self.assertEqual(mine[0]["log_text"], "Traceback (most recent call last):")


class HandoffTests(TestCase):
    def test_round_trip_through_the_environment(self) -> None:
        handoff = Handoff(2, 3, {"redis": (4, socket.AF_INET), "web": (5, socket.AF_INET6)})
        self.assertEqual(Handoff.from_env({HANDOFF_ENV: handoff.to_env()}), handoff)
        self.assertIsNone(Handoff.from_env({}))


class WorkerConfigTests(TestCase):
    def parse(self, *args: str) -> ProxyOptions:
        options = ProxyOptions()
        options.parseOptions(["--backend", "127.0.0.1:6379", *args])
        return options

    def test_workers_need_tcp_listeners(self) -> None:
        with self.assertRaises(ConfigError) as e:
            self.parse("--workers", "2", "--listen", "unix:/tmp/poolproxy.sock")
        self.assertIn("--workers: workers need tcp or tcp6 listeners", str(e.exception))
        self.assertIn("unix:/tmp/poolproxy.sock", str(e.exception))

    def test_workers_must_be_positive(self) -> None:
        with self.assertRaises(ConfigError) as e:
            self.parse("--workers", "0", "--listen", "tcp:0")
        self.assertIn("--workers", str(e.exception))

    def test_arguments_are_kept_for_the_workers(self) -> None:
        options = self.parse("--workers", "3", "--listen", "tcp:0")
        self.assertEqual(options.config.workers, 3)
        self.assertEqual(options.argv, ["--backend", "127.0.0.1:6379", "--workers", "3",
                                        "--listen", "tcp:0"])


class RestartBackoffTests(TestCase):
    """When a dying worker is restarted, on a fake clock."""

    def supervisor(self) -> Tuple[Any, Any]:
        from twisted.internet.testing import MemoryReactorClock
        from poolproxy.workers.supervisor import Supervisor
        clock = MemoryReactorClock()
        options = ProxyOptions()
        options.parseOptions(["--backend", "127.0.0.1:6379", "--workers", "2",
                              "--listen", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0"])
        supervisor = Supervisor(options.config, options.argv, reactor=clock)
        supervisor.running = True
        return supervisor, clock

    def die(self, supervisor: Any, clock: Any, slot: int, lived: float) -> float:
        from twisted.internet.error import ProcessTerminated
        from twisted.python.failure import Failure
        from poolproxy.workers.supervisor import WorkerProcess
        worker = WorkerProcess(supervisor, slot + 1, clock.seconds() - lived)
        supervisor.worker_ended(worker, Failure(ProcessTerminated(exitCode=1)))
        call = supervisor._pending[slot]
        return call.getTime() - clock.seconds()

    def test_quick_deaths_back_off_and_a_stable_worker_restarts_at_once(self) -> None:
        from poolproxy.workers.supervisor import RESTART_MAX_DELAY, STABLE_AFTER
        supervisor, clock = self.supervisor()
        delays = [self.die(supervisor, clock, 0, lived=0.5) for _ in range(7)]
        self.assertEqual(delays, [1, 2, 4, 8, 16, RESTART_MAX_DELAY, RESTART_MAX_DELAY])
        self.assertEqual(self.die(supervisor, clock, 0, lived=STABLE_AFTER), 0)
        # Each slot keeps its own back-off and restart count.
        self.assertEqual(self.die(supervisor, clock, 1, lived=0), 1)
        self.assertEqual(supervisor.restarts, [8, 1])

    def test_no_restart_while_stopping(self) -> None:
        from twisted.internet.error import ProcessTerminated
        from twisted.python.failure import Failure
        from poolproxy.workers.supervisor import WorkerProcess
        supervisor, clock = self.supervisor()
        supervisor.stopping = True
        supervisor.worker_ended(WorkerProcess(supervisor, 1, 0),
                                Failure(ProcessTerminated(signal=15)))
        self.assertEqual(supervisor._pending, {})
        self.assertEqual(supervisor.restarts, [0, 0])
