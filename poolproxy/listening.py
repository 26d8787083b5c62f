"""
Listening: the services that bind the proxy's server endpoints (listeners,
the operator's web endpoint, the demo backend), each with the gate that
pauses its accepting, and what happens when one cannot be bound (one line
and exit status 1, not a traceback).  Used by the proxy service and by the
C{--workers} supervisor alike.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LoggingFile

from poolproxy.util.accepting import AcceptGate


class BoundService(StreamServerEndpointService):
    """
    A server endpoint service that remembers its listening port, so that
    tests and the status page can tell the address of a C{tcp:0} listener.

    @ivar port: the L{IListeningPort} once listening, else L{None}.
    @ivar gate: what pauses its accepting (connection limits, an operator).
    """

    port: Any = None

    def __init__(self, endpoint: Any, factory: Any, gate: Optional[AcceptGate] = None) -> None:
        super().__init__(endpoint, factory)
        self.gate = gate if gate is not None else AcceptGate()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._bound)

    def _bound(self, port: Any) -> Any:
        self.port = port
        self.gate.attach(port)
        return port

    def stopService(self) -> "Deferred[None]":
        self.port = None
        self.gate.detach()
        return super().stopService()


def endpoint_service(endpoint: Any, factory: Any, name: str,
                     gate: Optional[AcceptGate] = None) -> BoundService:
    """A L{BoundService} named C{name} that fails startup at once if it cannot listen."""
    svc = BoundService(endpoint, factory, gate)
    # Fail startup (and twistd) at once if the port cannot be bound, as
    # strports.service does.
    svc._raiseSynchronously = True
    svc.setName(name)
    return svc


class StartupError(SystemExit, Exception):
    """
    An endpoint could not be bound.  Its code is the one-line message: as a
    L{SystemExit}, twistd -n exits with status 1 printing just that line; as
    an L{Exception}, a daemonizing twistd still reports the failure to the
    launching process (which otherwise waits forever) and removes its pid file.
    """


def listen_reason(e: Exception) -> str:
    """One line saying why an endpoint could not listen."""
    socket_error = getattr(e, "socketError", None)
    if isinstance(socket_error, OSError) and socket_error.strerror:
        return socket_error.strerror
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def fail_startup(log: Logger, message: str) -> NoReturn:
    """Log C{message} and exit twistd with it (see L{StartupError})."""
    # Log it now: a daemonizing twistd reports the failure to its parent
    # (which then exits) before SystemExit is printed.
    log.error("{line}", line=message)
    if isinstance(sys.stderr, LoggingFile) and sys.__stderr__ is not None:
        # twistd points sys.stderr at the log, which has the line now; let
        # SystemExit print it on the real stderr instead.
        sys.stderr = sys.__stderr__
    raise StartupError(message) from None


__all__ = ["BoundService", "StartupError", "endpoint_service", "fail_startup", "listen_reason"]
