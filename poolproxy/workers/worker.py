"""
The worker side of C{--workers N}: what a process spawned by the supervisor
(L{poolproxy.workers.supervisor}) does differently from a lone proxy.

The supervisor passes, in the environment variable L{HANDOFF_ENV}, the file
descriptors of this worker's listening sockets (already bound and listening,
one SO_REUSEPORT socket per worker and listener) and of a control pipe.
The worker:
  - adopts each socket with C{reactor.adoptStreamPort} instead of listening
    on the listener's endpoint (L{AdoptedPortService});
  - serves its web endpoint on an ephemeral loopback port and reports that
    port on the control pipe, so the supervisor can scrape and sum /metrics;
  - stops gracefully when its standard input closes: the supervisor is gone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import stdio
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from poolproxy.config import ProxyConfig
from poolproxy.util.accepting import AcceptGate

#: The environment variable carrying a worker's L{Handoff} as JSON.
HANDOFF_ENV = "POOLPROXY_WORKER"

#: Where a worker's web endpoint listens: the supervisor scrapes it.
WORKER_WEB = "tcp:0:interface=127.0.0.1"

log = Logger("poolproxy.workers.worker")


@dataclass(frozen=True)
class Handoff:
    """
    What the supervisor hands one worker.

    @ivar worker: the worker's number, from 1.
    @ivar control: the fd the worker reports on (the supervisor reads it).
    @ivar listeners: listener name -> (fd of a listening socket, address family).
    """

    worker: int
    control: int
    listeners: Mapping[str, Tuple[int, int]]

    def to_env(self) -> str:
        return json.dumps({"worker": self.worker, "control": self.control,
                           "listeners": {k: list(v) for k, v in self.listeners.items()}})

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Optional["Handoff"]:
        """The handoff in C{environ}, or L{None} outside a worker."""
        raw = environ.get(HANDOFF_ENV)
        if not raw:
            return None
        data = json.loads(raw)
        return cls(int(data["worker"]), int(data["control"]),
                   {name: (int(fd), int(family)) for name, (fd, family) in data["listeners"].items()})


def worker_config(config: ProxyConfig) -> ProxyConfig:
    """
    A worker's view of the configuration: its web endpoint is on an
    ephemeral loopback port (the supervisor serves the configured one).
    """
    return replace(config, metrics=WORKER_WEB)


class AdoptedPortService(Service):
    """
    Listens on an inherited, already listening socket.

    @ivar port: the L{IListeningPort} while running, as L{BoundService} has.
    @ivar gate: what pauses its accepting, as L{BoundService} has.
    """

    port: Any = None

    def __init__(self, reactor: Any, fd: int, family: int, factory: Any,
                 gate: Optional[AcceptGate] = None) -> None:
        """
        @param reactor: what adopts the socket: the reactor, or an
            L{poolproxy.util.accepting.AcceptingReactor} over it.
        """
        self.reactor = reactor
        self.fd = fd
        self.family = family
        self.factory = factory
        self.gate = gate if gate is not None else AcceptGate()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.port = self.reactor.adoptStreamPort(self.fd, self.family, self.factory)
        # adoptStreamPort works on a duplicate; the supervisor keeps its own
        # copy, so a restarted worker can adopt the same socket again.
        os.close(self.fd)
        self.gate.attach(self.port)

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        self.gate.detach()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)


class _Control(Protocol):
    """
    The control pipe: writes reports to the supervisor; the end of standard
    input means the supervisor is gone, so the worker stops.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stopping = False

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        if not self.stopping:
            log.warn("supervisor gone: stopping")
            self.reactor.stop()


class WorkerControl(Service):
    """
    Reports the worker's web port to the supervisor once the service runs.
    """

    def __init__(self, reactor: Any, handoff: Handoff, web_port: Any) -> None:
        self.reactor = reactor
        self.handoff = handoff
        self.web_port = web_port
        self.transport: Any = None
        self.control = _Control(reactor)

    def startService(self) -> None:
        super().startService()
        # (mypy reads the Windows StandardIO, which has no stdin/stdout.)
        self.transport = stdio.StandardIO(  # type: ignore[call-arg]
            self.control, stdin=0, stdout=self.handoff.control, reactor=self.reactor)
        port = self.web_port().getHost().port
        self.transport.write(f"web {port} pid {os.getpid()}\n".encode("ascii"))

    def stopService(self) -> None:
        super().stopService()
        self.control.stopping = True  # stopping already: the pipe closing is no news
