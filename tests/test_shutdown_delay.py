"""
shutdown_delay, worker replacement and watch_config on fake clocks: /readyz
fails at SIGTERM while the listeners serve on for the delay, a second
signal cuts it short; a replaced worker leaves its slot to a ready one and
is not restarted; a config file swapped as kubelet swaps a ConfigMap is
noticed.  (tests.test_rolling_restarts runs them in real processes.)
"""

from __future__ import annotations

import os
import signal
from typing import Any, List, Tuple

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from poolproxy.config import ProxyConfig
from poolproxy.ops.web import ReadyzResource
from poolproxy.service import ProxyService
from poolproxy.tap import ProxyOptions, makeService
from poolproxy.util.file_watch import FileWatcher
from poolproxy.util.shutdown_delay import ShutdownDelay
from poolproxy.workers.site import SupervisorReadyzResource, WorkerClient
from poolproxy.workers.supervisor import Supervisor, WorkerProcess
from tests.support import wait_for


def service(**settings: Any) -> Tuple[ProxyService, MemoryReactorClock]:
    clock = MemoryReactorClock()
    config = ProxyConfig(listen=("tcp:6380:interface=127.0.0.1",),
                         backend=("127.0.0.1:6379",), check_interval=0, **settings)
    proxy = ProxyService(config, reactor=clock, open_files=1024)
    proxy.privilegedStartService()
    proxy.startService()
    return proxy, clock


def readyz(resource: Any) -> Tuple[int, bytes]:
    request = DummyRequest([b""])
    body = resource.render_GET(request)
    if isinstance(body, bytes):
        request.write(body)
    return request.responseCode or 200, b"".join(request.written)


class ProxyShutdownDelayTests(SynchronousTestCase):
    def test_readyz_fails_at_once_while_listeners_serve_for_the_delay(self) -> None:
        """
        With shutdown_delay 3, stopping turns /readyz to 503 at once, but
        the listener keeps its port for 3 s; only then does the drain stop
        accepting, and the stop completes.
        """
        proxy, clock = service(shutdown_delay=3.0)
        ready = ReadyzResource(proxy)
        proxy.stopping = False
        stopped = proxy.stopService()
        self.assertEqual(readyz(ready), (503, b"not ready: shutting down\n"))
        clock.advance(2.9)
        self.assertIsNotNone(proxy.listeners[0].port, "stopped accepting during the delay")
        self.assertFalse(stopped.called)
        clock.advance(0.1)
        self.assertIsNone(proxy.listeners[0].port)
        clock.advance(0.3)
        self.assertTrue(stopped.called)
        self.assertEqual(readyz(ready)[0], 503)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_without_delay_accepting_stops_at_once(self) -> None:
        """The default, 0: the listener stops at once, as before the setting."""
        proxy, clock = service()
        proxy.stopService()
        self.assertIsNone(proxy.listeners[0].port)

    def test_skip_ends_the_delay(self) -> None:
        """A second signal (skip) during the delay starts the drain at once."""
        proxy, clock = service(shutdown_delay=30.0)
        stopped = proxy.stopService()
        clock.advance(1)
        proxy.shutdown_delay.skip()
        self.assertIsNone(proxy.listeners[0].port)
        self.assertTrue(proxy.shutdown_delay.skipped)
        clock.advance(0.3)
        self.assertTrue(stopped.called)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_second_stop_is_no_news(self) -> None:
        """stopService during the delay neither restarts nor shortens it."""
        proxy, clock = service(shutdown_delay=3.0)
        proxy.stopService()
        proxy.stopService()
        clock.advance(2)
        self.assertIsNotNone(proxy.listeners[0].port)
        clock.advance(1.2)
        self.assertIsNone(proxy.listeners[0].port)


class SignalTests(TestCase):
    @inlineCallbacks
    def test_second_sigterm_cuts_the_delay_short(self) -> None:
        """
        A real SIGTERM during the delay ends it (on the reactor), and the
        handlers in place before the delay are back afterwards.
        """
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        delay = ShutdownDelay(reactor, 60.0, catch_signals=True)
        done = delay.start()
        self.addCleanup(delay.skip)
        self.assertEqual(signal.getsignal(signal.SIGTERM), delay._signalled)
        os.kill(os.getpid(), signal.SIGTERM)
        yield wait_for(lambda: done.called, what="delay over")
        self.assertTrue(delay.skipped)
        self.assertEqual((signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)),
                         before)


class FakeProcessTransport:
    """Records the signals a L{WorkerProcess} sends."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: List[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


def supervisor(*extra: str) -> Tuple[Supervisor, MemoryReactorClock]:
    clock = MemoryReactorClock()
    options = ProxyOptions()
    options.parseOptions(["--backend", "127.0.0.1:6379", "--workers", "2",
                          "--listen", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0", *extra])
    sup = Supervisor(options.config, options.argv, reactor=clock)
    sup.running = True
    return sup, clock


def running(sup: Supervisor, slot: int, pid: int) -> WorkerProcess:
    worker = WorkerProcess(sup, slot + 1, 0)
    worker.transport = FakeProcessTransport(pid)  # type: ignore[assignment]
    worker.connectionMade()
    return worker


def end(worker: WorkerProcess) -> None:
    worker.processEnded(Failure(ProcessTerminated(signal=15)))


class SupervisorTests(SynchronousTestCase):
    def test_readyz_fails_at_once_and_workers_get_sigterm(self) -> None:
        """
        SIGTERM to the supervisor: its /readyz is 503 at once, every worker
        gets SIGTERM at once (each serves on for its own delay), a second
        signal is passed on, and SIGKILL waits for delay + timeout + grace.
        """
        sup, clock = supervisor("--shutdown-delay", "3", "--shutdown-timeout", "2")
        workers = [running(sup, slot, 100 + slot) for slot in range(2)]
        sup.workers = list(workers)  # type: ignore[arg-type]
        sup.stopService()
        self.addCleanup(sup.shutdown_delay.skip)
        self.assertEqual(readyz(SupervisorReadyzResource(sup, WorkerClient(sup))),
                         (503, b"not ready: shutting down\n"))
        self.assertEqual([w.transport.signals for w in workers], [["TERM"], ["TERM"]])
        clock.advance(1)
        sup.shutdown_delay.skip()
        self.assertEqual([w.transport.signals for w in workers],
                         [["TERM", "TERM"], ["TERM", "TERM"]])
        clock.advance(3 + 2 + 5 - 1.1)
        self.assertEqual(workers[0].transport.signals, ["TERM", "TERM"])
        clock.advance(0.2)
        self.assertEqual(workers[0].transport.signals, ["TERM", "TERM", "KILL"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_replaced_worker_leaves_its_slot_and_is_not_restarted(self) -> None:
        """
        A ready candidate takes its slot; the old worker gets SIGTERM, is
        counted as replaced, and its exit does not restart anything.
        """
        sup, clock = supervisor()
        old = running(sup, 0, 100)
        sup.workers[0] = old
        new = running(sup, 0, 200)
        new.candidate = True
        sup.outgoing.append(new)
        sup.install(0, new)
        self.assertIs(sup.workers[0], new)
        self.assertEqual(old.transport.signals, ["TERM"])
        self.assertEqual(sup.outgoing, [old])
        self.assertEqual(sup.replacements, [1, 0])
        end(old)
        self.assertEqual((sup.outgoing, sup._pending, sup.restarts), ([], {}, [0, 0]))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_ready_candidate_cancels_a_pending_restart(self) -> None:
        """
        A slot whose worker died and awaits its restart back-off gets the
        ready candidate instead: the restart is cancelled (no second worker).
        """
        sup, clock = supervisor()
        dead = running(sup, 0, 100)
        sup.workers[0] = dead
        dead.started = clock.seconds()
        end(dead)
        self.assertIn(0, sup._pending)
        new = running(sup, 0, 200)
        new.candidate = True
        sup.outgoing.append(new)
        sup.install(0, new)
        self.assertIs(sup.workers[0], new)
        self.assertEqual((sup._pending, clock.getDelayedCalls()), ({}, []))

    def test_failed_candidate_is_stopped_and_the_old_worker_kept(self) -> None:
        """A candidate given up is stopped; its slot's worker stays, nothing restarts."""
        sup, clock = supervisor()
        old = running(sup, 0, 100)
        sup.workers[0] = old
        new = running(sup, 0, 200)
        new.candidate = True
        sup.outgoing.append(new)
        sup.retire(new)
        self.assertEqual(new.transport.signals, ["TERM"])
        end(new)
        self.assertIs(sup.workers[0], old)
        self.assertEqual((sup.outgoing, sup._pending, old.transport.signals), ([], {}, []))

    def test_no_replacement_while_stopping_or_twice(self) -> None:
        """replace_workers refuses while stopping, and while a pass is under way."""
        sup, clock = supervisor()
        sup.replacing = object()  # type: ignore[assignment]
        self.assertFalse(sup.replace_workers())
        sup.replacing = None
        sup.stopping = True
        self.assertFalse(sup.replace_workers())


def kubelet_dir(root: str, stamp: str, text: str) -> None:
    """Write C{text} as C{config.toml} in a new timestamped directory, as kubelet does."""
    directory = os.path.join(root, stamp)
    os.mkdir(directory)
    with open(os.path.join(directory, "config.toml"), "w") as f:
        f.write(text)


def kubelet_swap(root: str, stamp: str) -> None:
    """Point C{..data} at C{stamp} in one rename (atomic), as kubelet does."""
    tmp = os.path.join(root, "..data_tmp")
    os.symlink(stamp, tmp)
    os.rename(tmp, os.path.join(root, "..data"))


class FileWatcherTests(SynchronousTestCase):
    def watch(self, path: str) -> Tuple[FileWatcher, Clock, List[int]]:
        clock = Clock()
        calls: List[int] = []
        watcher = FileWatcher(path, lambda: calls.append(1), clock)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        return watcher, clock, calls

    def test_configmap_symlink_swap(self) -> None:
        """
        A ConfigMap volume (config.toml -> ..data/config.toml, ..data -> a
        timestamped directory) updated by swapping ..data is seen within one
        interval, once, even when the new file has the same size and mtime.
        """
        root = self.mktemp()
        os.mkdir(root)
        kubelet_dir(root, "..2026_12_05_01", "pool_size = 10\n")
        os.symlink("..2026_12_05_01", os.path.join(root, "..data"))
        os.symlink("..data/config.toml", os.path.join(root, "config.toml"))
        watcher, clock, calls = self.watch(os.path.join(root, "config.toml"))
        clock.advance(1)
        self.assertEqual(calls, [])
        kubelet_dir(root, "..2026_12_05_02", "pool_size = 20\n")
        first = os.stat(os.path.join(root, "..2026_12_05_01", "config.toml"))
        os.utime(os.path.join(root, "..2026_12_05_02", "config.toml"),
                 ns=(first.st_atime_ns, first.st_mtime_ns))
        kubelet_swap(root, "..2026_12_05_02")
        clock.advance(0.5)
        self.assertEqual(calls, [])
        clock.advance(0.5)
        self.assertEqual(calls, [1])
        clock.advance(5)
        self.assertEqual(calls, [1])

    def test_edit_in_place_and_a_file_that_comes_back(self) -> None:
        """
        An edit in place is a change; a file that disappears is waited for,
        and its return is one change.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("pool_size = 10\n")
        watcher, clock, calls = self.watch(path)
        with open(path, "a") as f:
            f.write("# more\n")
        clock.advance(1)
        self.assertEqual(calls, [1])
        os.remove(path)
        clock.advance(3)
        self.assertEqual(calls, [1])
        with open(path, "w") as f:
            f.write("pool_size = 30\n")
        clock.advance(1)
        self.assertEqual(calls, [1, 1])


class WatchConfigOptionTests(SynchronousTestCase):
    def test_needs_a_config_file(self) -> None:
        """watch_config without --config is refused: there is nothing to watch."""
        from poolproxy.config import ConfigError
        options = ProxyOptions()
        e = self.assertRaises(ConfigError, options.parseOptions, [
            "--listen", "tcp:0", "--backend", "127.0.0.1:6379", "--watch-config", "true"])
        self.assertIn("--watch-config: needs a file to watch (--config)", str(e))

    def test_service_watches_the_file(self) -> None:
        """With watch_config, the service has a watcher on the --config file."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('listen = ["tcp:0:interface=127.0.0.1"]\nbackend = ["127.0.0.1:6379"]\n'
                    'watch_config = true\nmetrics = "tcp:0:interface=127.0.0.1"\n')
        options = ProxyOptions()
        options.parseOptions(["--config", path])
        built = makeService(options)
        watchers = [svc for svc in built if isinstance(svc, FileWatcher)]  # type: ignore[attr-defined]
        self.assertEqual([w.path for w in watchers], [path])
