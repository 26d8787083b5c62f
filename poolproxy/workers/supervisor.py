"""
C{--workers N}: a supervisor process that runs N worker processes sharing
the listeners, so that one host uses all its cores.

For each tcp listener the supervisor binds N listening sockets with
SO_REUSEPORT, one per worker: the kernel spreads new connections over them
by a hash of the connection's addresses.  Each worker is a C{twistd
poolproxy} with the same arguments, which adopts its sockets (see
L{poolproxy.workers.worker}).  The supervisor keeps its copy of every socket: a
worker that dies is restarted on the same sockets, and connections queued
for it meanwhile wait in its backlog instead of being reset.

The supervisor relays the workers' log lines into its own log (tagged with
the worker's number), forwards SIGHUP (reload) and, on SIGTERM, stops every
worker and waits for them to drain (after shutdown_delay, during which its
/readyz answers 503 and the workers serve on).  SIGUSR2 replaces the
workers one at a time on the same sockets (L{poolproxy.workers.replacement}).  Its web endpoint (L{poolproxy.workers.site})
serves /metrics summed over the workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import LogLevel, Logger, globalLogPublisher
from twisted.python.failure import Failure

from poolproxy.config import ProxyConfig
from poolproxy.config import ConfigError
from poolproxy.config.endpoints import TcpListenAddress, server_endpoint, tcp_listen_address
from poolproxy.config.secrets import Secrets
from poolproxy.demo import demo_site
from poolproxy.listening import endpoint_service, fail_startup, listen_reason
from poolproxy.util.reactors import default_reactor
from poolproxy.util.shutdown_delay import ShutdownDelay
from poolproxy.workers.replacement import WorkerReplacement
from poolproxy.workers.site import WorkerClient, build_supervisor_site
from poolproxy.workers.worker import HANDOFF_ENV, Handoff

log = Logger("poolproxy.workers.supervisor")

#: A worker that dies sooner than this after starting is restarted after a
#: back-off that doubles, up to L{RESTART_MAX_DELAY}; otherwise at once.
STABLE_AFTER = 10.0
RESTART_MAX_DELAY = 30.0

#: Seconds, beyond shutdown_timeout, that stopping workers get before SIGKILL.
KILL_GRACE = 5.0

_LEVELS = {level.name: level for level in LogLevel.iterconstants()}


def bind_reuseport(address: TcpListenAddress, port: int) -> socket.socket:
    """
    A listening, non-blocking socket with SO_REUSEPORT on C{address}'s host
    and C{port}.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address.host, port))
        sock.listen(address.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def relay_log_line(line: bytes, worker: int) -> None:
    """
    Publish one line a worker wrote to its log (a JSON object from
    L{poolproxy.logs.json_observer}, or plain text) as an event of ours,
    tagged C{worker}.
    """
    text = line.decode("utf-8", "replace").rstrip()
    if not text:
        return
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError("not an object")
    except ValueError:
        record = {"message": text, "level": "info"}
    message = str(record.pop("message", ""))
    traceback = record.pop("traceback", None)
    if traceback:
        message = f"{message}\n{traceback}"
    event: Dict[str, Any] = {
        key: value for key, value in record.items()
        if key not in ("time", "level", "namespace", "system")
    }
    event.update({
        "log_format": "{log_text}",
        "log_text": message,
        "log_level": _LEVELS.get(str(record.get("level")), LogLevel.info),
        "log_namespace": str(record.get("namespace") or "poolproxy.workers.worker"),
        "log_system": f"worker {worker}",
        "log_time": time.time(),
        "worker": worker,
    })
    globalLogPublisher(event)


class WorkerProcess(ProcessProtocol):
    """
    One worker process: relays its output, reads its reports.

    @ivar number: the worker's number, from 1.
    @ivar web_port: the loopback port of the worker's web endpoint, once reported.
    @ivar ended: fires when the process has exited.
    @ivar candidate: whether it is a replacement not yet ready (not in its
        slot: another worker serves it).
    @ivar retiring: whether it was replaced and is stopping (not in its slot).
    """

    def __init__(self, supervisor: "Supervisor", number: int, started: float) -> None:
        self.supervisor = supervisor
        self.number = number
        self.started = started
        self.pid: Optional[int] = None
        self.web_port: Optional[int] = None
        self.running = False
        self.candidate = False
        self.retiring = False
        self.ended: "Deferred[None]" = Deferred()
        self._partial: Dict[int, bytes] = {}

    def connectionMade(self) -> None:
        self.running = True
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.pop(childFD, b"") + data).split(b"\n")
        if lines[-1]:
            self._partial[childFD] = lines[-1]
        for line in lines[:-1]:
            if childFD == 3:
                self._report(line)
            else:
                relay_log_line(line, self.number)

    def _report(self, line: bytes) -> None:
        words = line.split()
        # "web PORT pid PID": the worker is serving.
        if len(words) >= 2 and words[0] == b"web" and words[1].isdigit():
            self.web_port = int(words[1])

    def signal(self, name: str) -> None:
        if self.running:
            try:
                self.transport.signalProcess(name)  # type: ignore[union-attr]
            except OSError:
                pass  # exited meanwhile; processEnded is on its way

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in sorted(self._partial.items()):
            if fd != 3:
                relay_log_line(rest, self.number)
        self._partial.clear()
        self.running = False
        self.web_port = None
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)


class Supervisor(MultiService):
    """
    Everything C{twistd poolproxy --workers N} runs in the supervisor
    process: the workers, the listening sockets they share, the web
    endpoint and, for the demo, the embedded backend.

    @ivar workers: the current L{WorkerProcess} of each worker slot.
    @ivar restarts: how many times each worker slot was restarted.
    @ivar replacements: how many times each worker slot's worker was
        replaced (SIGUSR2, admin action).
    @ivar outgoing: workers in no slot: replacements starting, replaced
        ones stopping.
    """

    def __init__(self, config: ProxyConfig, argv: Sequence[str], reactor: Optional[Any] = None,
                 executable: str = sys.executable) -> None:
        super().__init__()
        self.config = config
        # The admin token its web endpoint checks; SIGHUP reads it again.
        self.secrets = Secrets.read(config)
        self.argv = list(argv)
        self.reactor: Any = default_reactor(reactor)
        self.executable = executable
        self.count = config.workers
        self.addresses: Dict[str, TcpListenAddress] = {}
        for spec in config.listeners:
            address = tcp_listen_address(spec.endpoint, config.listen_backlog)
            assert address is not None, "checked when the configuration was read"
            self.addresses[spec.name] = address
        self.sockets: Dict[str, List[socket.socket]] = {}
        self.workers: List[Optional[WorkerProcess]] = [None] * self.count
        self.restarts = [0] * self.count
        self.replacements = [0] * self.count
        self.outgoing: List[WorkerProcess] = []
        self.replacing: Optional["Deferred[bool]"] = None
        self.shutdown_delay = ShutdownDelay(self.reactor, config.shutdown_delay,
                                            catch_signals=True)
        self._delays = [0.0] * self.count
        self._pending: Dict[int, Any] = {}
        self.stopping = False

        if config.demo:
            endpoint_service(server_endpoint(self.reactor, config.demo), demo_site(),
                             "demo-backend").setServiceParent(self)
        self.web_client = WorkerClient(self)
        self.web = endpoint_service(server_endpoint(self.reactor, config.metrics),
                                    build_supervisor_site(self, self.web_client), "metrics")
        self.web.setServiceParent(self)

    # -- starting ---------------------------------------------------------

    def privilegedStartService(self) -> None:
        for spec in self.config.listeners:
            address = self.addresses[spec.name]
            socks: List[socket.socket] = []
            self.sockets[spec.name] = socks
            try:
                port = address.port
                for _ in range(self.count):
                    socks.append(bind_reuseport(address, port))
                    port = socks[0].getsockname()[1]  # tcp:0 - the rest share the first's
            except OSError as e:
                self._close_sockets()
                where = (self.config.sources.get("listeners")
                         or self.config.sources.get("listen", "--listen"))
                fail_startup(log, f"poolproxy: error: {where} {spec.endpoint}: "
                                  f"cannot listen: {listen_reason(e)}")
        Service.privilegedStartService(self)
        for svc in self:
            try:
                svc.privilegedStartService()
            except Exception as e:
                self._close_sockets()
                key = "metrics" if svc is self.web else "demo"
                where = self.config.sources.get(key, "--" + key)
                fail_startup(log, f"poolproxy: error: {where} {getattr(self.config, key)}: "
                                  f"cannot listen: {listen_reason(e)}")

    def startService(self) -> None:
        super().startService()
        signal.signal(signal.SIGHUP, self._sighup)
        signal.signal(signal.SIGUSR2, self._sigusr2)
        for name, socks in self.sockets.items():
            log.info("poolproxy supervisor: listener {listener} on port {port} shared by "
                     "{n} workers", listener=name, port=socks[0].getsockname()[1], n=self.count)
        for slot in range(self.count):
            self.spawn(slot)

    def spawn(self, slot: int) -> WorkerProcess:
        """Start the worker for C{slot} (numbered from 0) on its sockets."""
        self._pending.pop(slot, None)
        return self.start_worker(slot)

    def start_worker(self, slot: int, candidate: bool = False) -> WorkerProcess:
        """
        A worker process on C{slot}'s sockets: the slot's worker, or a
        C{candidate} to replace it (kept in L{outgoing} until installed).
        """
        # The child's fds: 0 lets it notice we are gone, 1 and 2 carry its
        # log, 3 its reports, then one listening socket per listener.
        child_fds: Dict[int, Any] = {0: "w", 1: "r", 2: "r", 3: "r"}
        listeners = {}
        fd = 4
        for name, socks in self.sockets.items():
            child_fds[fd] = socks[slot].fileno()
            listeners[name] = (fd, int(self.addresses[name].family))
            fd += 1
        env = dict(os.environ)
        env[HANDOFF_ENV] = Handoff(slot + 1, 3, listeners).to_env()
        args = [self.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "--nodaemon", "--pidfile=",
                "--logger", "poolproxy.logs.json_observer", *self._reactor_args(),
                "poolproxy", *self.argv]
        worker = WorkerProcess(self, slot + 1, self.reactor.seconds())
        worker.candidate = candidate
        if candidate:
            self.outgoing.append(worker)
        else:
            self.workers[slot] = worker
        self.reactor.spawnProcess(worker, self.executable, args, env=env, childFDs=child_fds)
        log.info("worker {worker} started (pid {pid}){how}", worker=slot + 1, pid=worker.pid,
                 how=" to replace the running one" if candidate else "")
        return worker

    # -- replacing ----------------------------------------------------------

    def replace_workers(self) -> bool:
        """
        SIGUSR2: replace every worker, one at a time, on the same sockets
        (L{WorkerReplacement}); whether a pass started (not if one is under
        way, or the supervisor is stopping).
        """
        if self.stopping or not self.running:
            log.warn("worker replacement: not while stopping")
            return False
        if self.replacing is not None:
            log.warn("worker replacement: one is under way already")
            return False
        log.info("worker replacement: replacing {n} workers one at a time", n=self.count)

        def done(result: Any) -> Any:
            self.replacing = None
            return result

        self.replacing = WorkerReplacement(self).run()
        self.replacing.addBoth(done)
        return True

    def install(self, slot: int, new: WorkerProcess) -> None:
        """Ready candidate C{new} takes C{slot}; the worker it replaces stops."""
        old = self.workers[slot]
        pending = self._pending.pop(slot, None)
        if pending is not None:  # its worker had died: the new one takes the slot instead
            pending.cancel()
        new.candidate = False
        if new in self.outgoing:
            self.outgoing.remove(new)
        self.workers[slot] = new
        self._delays[slot] = 0.0
        self.replacements[slot] += 1
        log.info("worker {worker}: pid {new} is serving; stopping pid {old}",
                 worker=slot + 1, new=new.pid, old=old.pid if old is not None else None)
        if old is not None and old.running:
            self.retire(old)

    def retire(self, worker: WorkerProcess) -> None:
        """
        SIGTERM C{worker}, which is in no slot (replaced, or a candidate
        given up); SIGKILL it if it outlives shutdown_delay, shutdown_timeout
        and L{KILL_GRACE}.
        """
        worker.retiring = True
        if worker not in self.outgoing:
            self.outgoing.append(worker)
        worker.signal("TERM")
        kill = self.reactor.callLater(
            self.config.shutdown_delay + self.config.shutdown_timeout + KILL_GRACE,
            self._kill, [worker])

        def ended(_: object) -> None:
            if kill.active():
                kill.cancel()

        worker.ended.addCallback(ended)

    def _sigusr2(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.replace_workers)

    def _reactor_args(self) -> List[str]:
        """Workers run the supervisor's reactor if it is poolproxy's own."""
        if type(self.reactor).__module__ == "poolproxy.reactor":
            return ["--reactor=poolproxy-epoll"]
        return []

    # -- running ----------------------------------------------------------

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        slot = worker.number - 1
        status = getattr(reason.value, "signal", None)
        how = (f"exited with status {getattr(reason.value, 'exitCode', 0)}" if status is None
               else f"was killed by signal {status}")
        if worker in self.outgoing:
            # In no slot: a replaced worker, or a candidate (whose replacement notices).
            self.outgoing.remove(worker)
            log.info("worker {worker} (pid {pid}) {what} {how}", worker=worker.number,
                     pid=worker.pid, how=how,
                     what="replaced," if worker.retiring else "replacement")
            return
        if self.stopping or not self.running:
            # twistd ends by re-raising the SIGTERM it stopped on.
            log.info("worker {worker} (pid {pid}) stopped", worker=worker.number, pid=worker.pid)
            return
        lived = self.reactor.seconds() - worker.started
        delay = 0.0 if lived >= STABLE_AFTER else min(max(1.0, 2 * self._delays[slot]),
                                                      RESTART_MAX_DELAY)
        self._delays[slot] = delay
        self.restarts[slot] += 1
        log.warn("worker {worker} (pid {pid}) {how} unexpectedly; restarting it in {delay}s",
                 worker=worker.number, pid=worker.pid, how=how, delay=delay)
        self._pending[slot] = self.reactor.callLater(delay, self.spawn, slot)

    def _sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """
        SIGHUP: read the secret files again (its admin token), and pass the
        signal on to the workers, which reload their configuration.
        """
        for secret in self.secrets.files.values():
            try:
                changed = secret.reload()
            except ConfigError as e:
                log.error("reload: {why}; keeping the one in use", why=str(e))
                continue
            if changed:
                log.info("reload: {where}: {changed}", where=secret.where, changed=changed)
        self.signal_workers("HUP")

    def signal_workers(self, name: str) -> int:
        """Send signal C{name} to every running worker; how many there were."""
        live = [w for w in self.workers if w is not None and w.running]
        for worker in live:
            worker.signal(name)
        log.info("sent SIG{name} to {n} workers", name=name, n=len(live))
        return len(live)

    # -- stopping ---------------------------------------------------------

    def stopService(self) -> "Deferred[Any]":
        """
        SIGTERM every worker and wait for them to drain (they stop accepting
        and finish what is in flight, up to shutdown_timeout); SIGKILL what
        is left after that plus L{KILL_GRACE}; then close the sockets.
        """
        if not self.running:
            return succeed(None)
        self.stopping = True
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        # Ignored, not the default (which would end the process mid-drain).
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        for call in self._pending.values():
            call.cancel()
        self._pending.clear()
        live = [w for w in self.workers + self.outgoing if w is not None and w.running]
        # Each worker keeps serving for its own shutdown_delay; ours makes
        # /readyz fail meanwhile, and a second signal to us reaches them.
        for worker in live:
            worker.signal("TERM")

        def cut_short(_: object) -> None:
            if self.shutdown_delay.skipped:
                for worker in live:
                    worker.signal("TERM")

        self.shutdown_delay.start().addCallback(cut_short)
        kill = self.reactor.callLater(
            self.config.shutdown_delay + self.config.shutdown_timeout + KILL_GRACE,
            self._kill, live)
        ended = DeferredList([w.ended for w in live])

        def stopped(_: object) -> "Deferred[Any]":
            if kill.active():
                kill.cancel()
            self._close_sockets()
            return DeferredList([maybeDeferred(svc.stopService) for svc in reversed(list(self))]
                                + [self.web_client.close()])

        Service.stopService(self)
        return ended.addCallback(stopped)

    def _kill(self, workers: List[WorkerProcess]) -> None:
        for worker in workers:
            if worker.running:
                log.warn("worker {worker} (pid {pid}) still running after shutdown_timeout; "
                         "killing it", worker=worker.number, pid=worker.pid)
                worker.signal("KILL")

    def _close_sockets(self) -> None:
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets.clear()
