"""
Accepting connections within limits.

A listening socket that the reactor stops reading accepts nothing: new
connections complete the kernel's handshake and wait in its listen backlog
(or are refused by the kernel once that is full), as with HAProxy's
C{maxconn}.  Connections already open are other descriptors and go on.

  - L{AcceptGate}: stops reading a listening port for any number of reasons
    at once (an operator's pause, a connection limit) and reads it again
    once none is left;
  - L{GatedPort}: Twisted's TCP port, accepting at most C{room()}
    connections per readable event (Twisted accepts up to 100 and more in a
    row, which would overshoot a limit), and counting accept errors (EMFILE
    and the like: Twisted logs a line for each, and for each connection it
    then drops) instead of logging them;
  - L{AcceptingReactor}: a reactor whose C{listenTCP} and C{adoptStreamPort}
    make L{GatedPort}s, for Twisted's server endpoints;
  - L{CappedFactory}: at most N connections of a factory that is not on the
    hot path (the web endpoint), the rest waiting in its backlog.
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Callable, Optional, Set, cast

from twisted.internet import tcp
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.protocols.policies import WrappingFactory


class AcceptGate:
    """
    Whether one listening port accepts: it reads while no reason holds it.
    The port is attached once listening and detached when it stops, so that
    a gate released afterwards never reads a closed socket.

    @ivar reasons: what holds the gate now.
    """

    def __init__(self) -> None:
        self.reasons: Set[str] = set()
        self._port: Any = None

    def attach(self, port: Any) -> None:
        """The port is listening; it stops reading at once if the gate is held."""
        self._port = port
        if self.reasons:
            self._stop()

    def detach(self) -> None:
        self._port = None

    def hold(self, reason: str) -> bool:
        """Stop accepting for C{reason}; whether C{reason} is new."""
        if reason in self.reasons:
            return False
        self.reasons.add(reason)
        if len(self.reasons) == 1:
            self._stop()
        return True

    def release(self, reason: str) -> None:
        """C{reason} is gone; accept again if it was the last."""
        if reason not in self.reasons:
            return
        self.reasons.discard(reason)
        port = self._port
        if not self.reasons and port is not None and not getattr(port, "disconnecting", False):
            start = getattr(port, "startReading", None)
            if start is not None:
                start()

    def _stop(self) -> None:
        stop = getattr(self._port, "stopReading", None)
        if stop is not None:
            stop()


def _unlimited() -> int:
    return sys.maxsize


def _ignore(error: str) -> None:
    pass


class GatedPort(tcp.Port):
    """
    A TCP port that accepts at most C{room()} connections each time its
    socket is readable, and reports each connection lost to an accept error
    by calling C{on_accept_error(name)} (C{"EMFILE"}, C{"ENFILE"},
    C{"ENOBUFS"}, C{"ENOMEM"}, C{"ECONNABORTED"}) instead of logging it.

    When the room is 0, the port should not be read at all (its
    L{AcceptGate} is held); if it is, one connection is accepted, for the
    factory to refuse.
    """

    room: Callable[[], int] = staticmethod(_unlimited)
    on_accept_error: Callable[[str], None] = staticmethod(_ignore)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Twisted's accept loop logs through self._logger: the events it
        # emits are counted here, anything else goes on to the log.
        self._logger = Logger(namespace="twisted.internet.tcp.Port",
                              observer=cast(ILogObserver, self._accept_event))

    def doRead(self) -> None:
        self.numberAccepts = max(1, min(self.numberAccepts, self.room()))
        super().doRead()

    def _accept_event(self, event: Any) -> None:
        if "acceptError" in event:  # "Could not accept new connection ({acceptError})"
            self.on_accept_error(str(event["acceptError"]))
        elif "address" in event:  # "EMFILE recovery: Closed socket from {address}"
            self.on_accept_error("EMFILE")
        elif "EMFILE" not in str(event.get("log_format", "")):  # releasing, re-reserving
            globalLogPublisher(event)


class AcceptingReactor:
    """
    C{reactor}, except that the TCP ports its C{listenTCP} and
    C{adoptStreamPort} make are L{GatedPort}s with C{room} and
    C{on_accept_error}; hand it to a server endpoint.  Other ports (UNIX,
    systemd's) are the reactor's own: they pause with an L{AcceptGate}, but
    may accept a batch past the room, for the factory to refuse.  A reactor
    that does not make Twisted's TCP ports (a test's fake) is left alone.
    """

    def __init__(self, reactor: Any, room: Callable[[], int] = _unlimited,
                 on_accept_error: Callable[[str], None] = _ignore) -> None:
        self._reactor = reactor
        self._room = room
        self._on_accept_error = on_accept_error
        self._gates = isinstance(reactor, PosixReactorBase)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _gated(self, port: GatedPort) -> GatedPort:
        port.room = self._room
        port.on_accept_error = self._on_accept_error
        port.startListening()
        return port

    def listenTCP(self, port: int, factory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        if not self._gates:
            return self._reactor.listenTCP(port, factory, backlog, interface)
        return self._gated(GatedPort(port, factory, backlog, interface, self._reactor))

    def adoptStreamPort(self, fd: int, family: int, factory: Any) -> Any:
        if not self._gates or family not in (socket.AF_INET, socket.AF_INET6):
            return self._reactor.adoptStreamPort(fd, family, factory)
        return self._gated(GatedPort._fromListeningDescriptor(self._reactor, fd, family,
                                                               factory))


class CappedFactory(WrappingFactory):
    """
    C{wrapped}'s connections, at most C{cap} open at once: at the cap,
    C{gate} is held (the port stops accepting) until one closes.  Each
    connection goes through a L{ProtocolWrapper}: for low-traffic endpoints.
    """

    noisy = False

    def __init__(self, wrapped: Any, cap: int, gate: AcceptGate) -> None:
        super().__init__(wrapped)
        self.cap = cap
        self.gate = gate

    def room(self) -> int:
        """How many more connections may be accepted now."""
        return self.cap - len(self.protocols)

    def buildProtocol(self, addr: Any) -> Optional[Any]:  # type: ignore[override]
        if len(self.protocols) >= self.cap:
            return None  # a batch past the cap: the port closes it
        return super().buildProtocol(addr)

    def registerProtocol(self, p: Any) -> None:
        super().registerProtocol(p)
        if len(self.protocols) >= self.cap:
            self.gate.hold("limit")

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if len(self.protocols) < self.cap:
            self.gate.release("limit")


__all__ = ["AcceptGate", "AcceptingReactor", "CappedFactory", "GatedPort"]
