"""
Replacing the workers one at a time (SIGUSR2, or C{POST
/admin/workers/replace}), so that new code on disk is picked up without a
moment where a listener is closed.

Each worker slot's listening sockets belong to the supervisor, which keeps
its copy of each: a new worker adopts the very sockets the old one accepts
on, so that for a while both accept from one queue.  Once the new one is
ready (it reported its web port, its listeners adopted, and its /readyz
answers 200) the old one gets SIGTERM and stops as any worker does
(shutdown_delay, then the drain); closing its copy of a socket leaves the
socket, and the connections queued on it, to the new one.  Nothing is
closed, so Linux's reset of the connections queued on a closing
SO_REUSEPORT socket never happens here.

A new worker that exits, or is not ready within L{READY_TIMEOUT}, is
stopped, the old one kept, and the remaining slots left as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger

from poolproxy.util.waiting import wait_until

if TYPE_CHECKING:
    from poolproxy.workers.supervisor import Supervisor, WorkerProcess

log = Logger("poolproxy.workers.supervisor")

#: Seconds a new worker gets to start and answer /readyz with 200.
READY_TIMEOUT = 30.0

#: Seconds between two /readyz questions to a new worker.
READY_POLL = 0.2


class WorkerReplacement:
    """One pass over every worker slot, in order."""

    def __init__(self, supervisor: "Supervisor", ready_timeout: float = READY_TIMEOUT) -> None:
        self.supervisor = supervisor
        self.clock: Any = supervisor.reactor
        self.ready_timeout = ready_timeout

    @inlineCallbacks
    def run(self) -> Generator["Deferred[Any]", Any, bool]:
        """
        Replace each worker in turn; fires with whether every one was
        replaced (the supervisor stopping, or a new worker failing, ends
        the pass early).
        """
        supervisor = self.supervisor
        for slot in range(supervisor.count):
            if supervisor.stopping:
                return False
            new = supervisor.start_worker(slot, candidate=True)
            ready = yield self._ready(new)
            if supervisor.stopping:
                return False  # stopService signals the candidate with the rest
            if not ready:
                log.error("worker {worker}: its replacement (pid {pid}) did not become ready "
                          "within {timeout:g}s; keeping the running worker, replacement "
                          "abandoned", worker=slot + 1, pid=new.pid, timeout=self.ready_timeout)
                supervisor.retire(new)
                return False
            supervisor.install(slot, new)
        log.info("replaced all {n} workers", n=supervisor.count)
        return True

    @inlineCallbacks
    def _ready(self, worker: "WorkerProcess") -> Generator["Deferred[Any]", Any, bool]:
        """Whether C{worker} is serving and ready before the deadline (and still running)."""
        deadline = self.clock.seconds() + self.ready_timeout
        reported = yield wait_until(
            self.clock, lambda: worker.web_port is not None or not worker.running
            or self.supervisor.stopping, self.ready_timeout)
        if not reported or worker.web_port is None:
            return False
        while worker.running and not self.supervisor.stopping:
            _, code, _ = yield self.supervisor.web_client.ask(worker, b"GET", b"/readyz")
            if code == 200:
                return True
            if self.clock.seconds() + READY_POLL > deadline:
                return False
            yield deferLater(self.clock, READY_POLL, lambda: None)
        return False


__all__ = ["WorkerReplacement", "READY_TIMEOUT"]
