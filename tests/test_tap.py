"""
Tests of the twistd plugin: C{makeService} builds the service the options
describe, and a real C{twistd poolproxy} process refuses a bad configuration
or a port it cannot bind with one line on stderr, a non-zero exit status and
nothing left listening.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import subprocess
import sys
from typing import Any, List, Tuple

from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LoggingFile, Logger, LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.backends.pool import BackendPool
from poolproxy.config import build_config
from poolproxy.service import ProxyService
from poolproxy.tap import ProxyOptions, makeService, pypy_gc_hint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
          "-n", "--pidfile=", "poolproxy"]


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Whether C{port} on the loopback can be bound (so nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def listening_socket() -> Tuple[socket.socket, int]:
    """A socket listening on a loopback port, and the port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


def endpoint(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


class TwistdRun:
    """The outcome of one C{twistd poolproxy} process."""

    def __init__(self, result: "subprocess.CompletedProcess[str]") -> None:
        self.returncode = result.returncode
        self.stdout = result.stdout
        self.stderr = result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.last_error_line = lines[-1] if lines else ""


class TwistdTestCase(SynchronousTestCase):
    def twistd(self, *args: str) -> TwistdRun:
        """
        Run C{twistd -n poolproxy ARGS} in a scratch directory and wait (at most
        a minute) for it to exit.
        """
        cwd = self.mktemp()
        os.mkdir(cwd)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        result = subprocess.run(TWISTD + list(args), cwd=cwd, env=env, capture_output=True,
                                text=True, timeout=60)
        return TwistdRun(result)

    def assertOneLineFailure(self, run: TwistdRun, expected_start: str) -> str:
        """
        The process exited non-zero, its last stderr line is the one-line error
        starting with C{expected_start}, and there is no traceback.
        """
        self.assertNotEqual(run.returncode, 0, run.stderr)
        self.assertTrue(run.last_error_line.startswith(expected_start),
                        f"last stderr line {run.last_error_line!r}; stderr: {run.stderr!r}")
        self.assertNotIn("Traceback", run.stderr)
        self.assertNotIn("Traceback", run.stdout)
        return run.last_error_line


class TwistdConfigErrorTests(TwistdTestCase):
    def test_bad_flag_value(self) -> None:
        """
        A bad flag value stops twistd before it listens: exit status 1, the
        last stderr line is "poolproxy: error: --pool-size: ...", no usage
        text, and neither the listener's nor the metrics port is bound.
        """
        listen, metrics = free_port(), free_port()
        run = self.twistd("--listen", endpoint(listen), "--metrics", endpoint(metrics),
                          "--backend", "127.0.0.1:6379", "--pool-size", "0")
        self.assertEqual(run.returncode, 1)
        self.assertEqual(run.last_error_line,
                         "poolproxy: error: --pool-size: must be at least 1, got '0'")
        self.assertEqual(run.stderr.strip(), run.last_error_line)
        # The reactor never started: no factory ever began listening.
        self.assertNotIn("starting on", run.stdout)
        self.assertTrue(port_is_free(listen))
        self.assertTrue(port_is_free(metrics))

    def test_bad_endpoint(self) -> None:
        """
        A bad --backend endpoint string is one line naming --backend.
        """
        run = self.twistd("--listen", endpoint(free_port()), "--backend", "nohostport")
        self.assertOneLineFailure(run, "poolproxy: error: --backend: bad backend endpoint 'nohostport'")
        self.assertNotIn("starting on", run.stdout)

    def test_bad_config_file(self) -> None:
        """
        An unknown key in the --config file is one line naming the key and
        the file.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write(f'listen = ["{endpoint(free_port())}"]\nbackend = ["127.0.0.1:6379"]\n'
                    "pool_sise = 3\n")
        run = self.twistd("--config", path)
        self.assertOneLineFailure(run, f"poolproxy: error: pool_sise (in {path}): unknown key")
        self.assertNotIn("starting on", run.stdout)


class TwistdPortInUseTests(TwistdTestCase):
    def test_listen_port_in_use(self) -> None:
        """
        If the --listen port is taken, twistd exits promptly with status 1 and
        one line "poolproxy: error: --listen ...: cannot listen: ...", with no
        traceback, and the metrics port it was given is not left listening.
        """
        taken, port = listening_socket()
        self.addCleanup(taken.close)
        metrics = free_port()
        run = self.twistd("--listen", endpoint(port), "--metrics", endpoint(metrics),
                          "--backend", "127.0.0.1:6379")
        line = self.assertOneLineFailure(
            run, f"poolproxy: error: --listen {endpoint(port)}: cannot listen: ")
        self.assertIn("in use", line)
        self.assertEqual(run.returncode, 1)
        # Once on stderr, once in the log (stdout under -n).
        self.assertEqual(run.stderr.count(line), 1)
        self.assertEqual(run.stdout.count(line), 1)
        self.assertTrue(port_is_free(metrics))

    def test_metrics_port_in_use(self) -> None:
        """
        If the --metrics port is taken, the message names --metrics, and the
        listener that was already bound is not left listening.
        """
        taken, port = listening_socket()
        self.addCleanup(taken.close)
        listen = free_port()
        run = self.twistd("--listen", endpoint(listen), "--metrics", endpoint(port),
                          "--backend", "127.0.0.1:6379")
        self.assertOneLineFailure(
            run, f"poolproxy: error: --metrics {endpoint(port)}: cannot listen: ")
        self.assertTrue(port_is_free(listen))


class TwistdDaemonTests(TwistdTestCase):
    def test_daemon_port_in_use(self) -> None:
        """
        Daemonizing (no -n), a taken --listen port still ends the launching
        process promptly with status 1 and a report on its stderr (twistd's
        parent waits for the daemon's report and would otherwise wait forever);
        the log file already has the whole one-line error, once.
        """
        taken, port = listening_socket()
        self.addCleanup(taken.close)
        cwd = os.path.abspath(self.mktemp())
        os.mkdir(cwd)
        pidfile, logfile = os.path.join(cwd, "twistd.pid"), os.path.join(cwd, "twistd.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                f"--pidfile={pidfile}", f"--logfile={logfile}", "poolproxy",
                "--listen", endpoint(port), "--metrics", endpoint(free_port()),
                "--backend", "127.0.0.1:6379"]
        result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=60)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("An error has occurred", result.stderr)
        self.assertIn("poolproxy: error: --listen", result.stderr)
        with open(logfile, encoding="utf-8") as f:
            log = f.read()
        self.assertEqual(log.count(f"poolproxy: error: --listen {endpoint(port)}: cannot listen: "), 1)
        self.assertNotIn("Traceback", log)


class RecordingPort:
    """A listening port of L{BusyPortReactor} that records being stopped."""

    def __init__(self, port: int, interface: str) -> None:
        self.address = IPv4Address("TCP", interface or "0.0.0.0", port)
        self.stopped = False

    def getHost(self) -> IPv4Address:
        return self.address

    def stopListening(self) -> None:
        self.stopped = True


class BusyPortReactor(MemoryReactorClock):
    """
    A memory reactor on which listening on one of C{busy} fails as a real
    reactor does when the address is in use.
    """

    def __init__(self, *busy: int) -> None:
        super().__init__()
        self.busy = set(busy)
        self.ports: List[RecordingPort] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.busy:
            raise CannotListenError(interface, port,
                                    OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE)))
        listening = RecordingPort(port, interface)
        self.ports.append(listening)
        return listening


class StartupFailureTests(SynchronousTestCase):
    def make(self, reactor: BusyPortReactor, **file_values: Any) -> ProxyService:
        flags = {"listen": ["tcp:7001", "tcp:7002"], "backend": ["127.0.0.1:6379"],
                 "metrics": "tcp:7009"}
        for key in file_values:
            flags.pop(key, None)
        config = build_config(file_values, flags, "proxy.toml" if file_values else "")
        return ProxyService(config, reactor=reactor)

    def test_stops_what_already_listens(self) -> None:
        """
        When the second listener cannot bind, the first one (already bound) is
        stopped, the metrics endpoint is never bound, and SystemExit carries one
        line naming the flag, the endpoint and the reason.
        """
        reactor = BusyPortReactor(7002)
        service = self.make(reactor)
        e = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertIsInstance(e, Exception)  # see StartupError
        self.assertEqual(e.code, "poolproxy: error: --listen tcp:7002: cannot listen: "
                                 + os.strerror(errno.EADDRINUSE))
        self.assertEqual([p.address.port for p in reactor.ports], [7001])
        self.assertTrue(reactor.ports[0].stopped)
        self.assertIsNone(service.listeners[0].service.port)

    def test_names_key_from_file(self) -> None:
        """
        A listener from the TOML file is named by its key and file.
        """
        reactor = BusyPortReactor(7100)
        service = self.make(reactor, listen=["tcp:7100"])
        e = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertTrue(str(e.code).startswith(
            "poolproxy: error: listen (in proxy.toml) tcp:7100: cannot listen: "), e.code)

    def test_message_logged_and_stderr_restored(self) -> None:
        """
        The line is logged before SystemExit is raised; and when sys.stderr is
        twistd's LoggingFile, the real stderr is put back so that SystemExit
        prints the line there rather than into the log a second time.
        """
        real = io.StringIO()
        self.patch(sys, "__stderr__", real)
        self.patch(sys, "stderr", LoggingFile(Logger(namespace="stderr")))
        service = self.make(BusyPortReactor(7009))
        with capturedLogs() as events:
            e = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertTrue(str(e.code).startswith("poolproxy: error: --metrics tcp:7009: "))
        self.assertEqual([formatEvent(event) for event in events
                          if event["log_level"] == LogLevel.error], [e.code])
        self.assertIs(sys.stderr, real)

    def test_all_bound(self) -> None:
        """
        When every port can be bound, privilegedStartService binds the
        listeners and then the metrics endpoint, and raises nothing.
        """
        reactor = BusyPortReactor()
        service = self.make(reactor)
        service.privilegedStartService()
        self.assertEqual([p.address.port for p in reactor.ports], [7001, 7002, 7009])
        self.assertEqual([l.service.port for l in service.listeners], reactor.ports[:2])
        self.assertFalse(any(p.stopped for p in reactor.ports))


class MakeServiceTests(SynchronousTestCase):
    def test_listeners_and_pools(self) -> None:
        """
        makeService() builds a ProxyService with one listener per --listen and
        one pool per --backend, configured from the options.
        """
        options = ProxyOptions()
        options.parseOptions([
            "--listen", "tcp:6380:interface=127.0.0.1", "--listen", "tcp:6381:interface=127.0.0.1",
            "--backend", "10.0.0.1:6379", "--backend", "tcp:host=10.0.0.2:port=6380",
            "--backend", "[::1]:6379",
            "--metrics", "tcp:9191:interface=127.0.0.1",
            "--pool-size", "7", "--pool-min-idle", "2", "--max-uses", "5",
        ])
        service = makeService(options)
        self.assertIsInstance(service, ProxyService)
        self.assertTrue(IService.providedBy(service))
        self.assertIs(service.config, options.config)
        self.assertEqual([l.name for l in service.listeners],
                         ["tcp:6380:interface=127.0.0.1", "tcp:6381:interface=127.0.0.1"])
        self.assertEqual(len(service.pools), 3)
        self.assertEqual([p.name for p in service.pools],
                         ["10.0.0.1:6379", "10.0.0.2:6380", "[::1]:6379"])
        for pool in service.pools:
            self.assertIsInstance(pool, BackendPool)
            self.assertEqual((pool.size, pool.min_idle, pool.max_uses), (7, 2, 5))
        self.assertEqual(sorted(svc.name for svc in service),
                         ["listener tcp:6380:interface=127.0.0.1",
                          "listener tcp:6381:interface=127.0.0.1", "metrics"])
        self.assertFalse(service.running)

    def test_demo_backend(self) -> None:
        """
        With --demo and no --backend, the service also runs the demo backend
        and has one pool pointing at it.
        """
        options = ProxyOptions()
        options.parseOptions(["--listen", "tcp:6380", "--demo", "tcp:8081:interface=127.0.0.1"])
        service = makeService(options)
        self.assertEqual(len(service.listeners), 1)
        self.assertEqual([p.name for p in service.pools], ["127.0.0.1:8081"])
        self.assertIn("demo-backend", [svc.name for svc in service])


class PyPyGcHintTests(SynchronousTestCase):
    """The start-up advice for PyPy's GC nursery (docs/operations.md#on-pypy)."""

    def test_pypy_without_nursery_setting(self) -> None:
        hint = pypy_gc_hint("PyPy", {})
        assert hint is not None
        self.assertIn("PYPY_GC_NURSERY=8MB", hint)

    def test_pypy_with_nursery_setting_or_cpython(self) -> None:
        self.assertIsNone(pypy_gc_hint("PyPy", {"PYPY_GC_NURSERY": "4MB"}))
        self.assertIsNone(pypy_gc_hint("CPython", {}))
