"""
Cancels between worker processes (C{--workers N}).

A CancelRequest comes on a new connection, which SO_REUSEPORT gives to any
worker; the key it names may be another worker's client.  The process id
the proxy shows each client carries its worker's number in its low byte
(L{TransactionFactory.new_pid}), so the worker that gets the request sends
it on to the right one: each worker of a listener listens on a Linux
abstract unix socket named after the supervisor, the listener and its
number (no file to leave behind or to protect: the key itself is the
secret, as on the listener).  PgBouncer solves the same with its peers
(1.19).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from poolproxy.codecs import postgres as pg
from poolproxy.util.factories import OneProtocolFactory

#: A cancel request is 16 bytes (protocol 3.0), at most 264 (3.2).
_MAX_REQUEST = 264


class _Receiver(Protocol):
    """Reads one forwarded CancelRequest."""

    transport: Any

    def __init__(self, on_cancel: Callable[[int, bytes], Any]) -> None:
        self.on_cancel = on_cancel
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _MAX_REQUEST:
            self.transport.abortConnection()
            return
        try:
            startup, used = pg.read_startup(self.buffer)
        except Exception:
            self.transport.abortConnection()
            return
        if startup is None:
            return
        if startup.code == pg.CANCEL_REQUEST:
            self.on_cancel(startup.pid, startup.key)
        self.transport.loseConnection()


class _Sender(Protocol):
    transport: Any

    def __init__(self, request: bytes) -> None:
        self.request = request

    def connectionMade(self) -> None:
        self.transport.write(self.request)
        self.transport.loseConnection()


class CancelRelay:
    """
    One worker's end of the cancel relay for one listener.

    @ivar forwarded: requests sent on to another worker.
    """

    log = Logger()

    def __init__(self, reactor: Any, listener: str, worker: int,
                 on_cancel: Callable[[int, bytes], Any],
                 supervisor: Optional[int] = None) -> None:
        self.reactor = reactor
        self.listener = listener
        self.worker = worker
        self.on_cancel = on_cancel
        self.supervisor = supervisor if supervisor is not None else os.getppid()
        self.forwarded = 0
        self.port: Any = None

    def address(self, worker: int) -> str:
        return f"\0poolproxy-{self.supervisor}-{self.listener}-cancel-{worker}"

    def start(self) -> None:
        factory = Factory.forProtocol(lambda: _Receiver(self.on_cancel))
        factory.noisy = False
        try:
            self.port = self.reactor.listenUNIX(self.address(self.worker), factory)
        except Exception as e:
            self.log.warn("worker {worker}: cancels from other workers will not reach its "
                          "clients: {why}", worker=self.worker, why=e)

    def stop(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()

    def forward(self, pid: int, key: bytes) -> bool:
        """Send a request for another worker's client on; whether it was one."""
        target = pid & 0xff
        if not target or target == self.worker:
            return False
        self.forwarded += 1
        endpoint = UNIXClientEndpoint(self.reactor, self.address(target))
        d = endpoint.connect(OneProtocolFactory(_Sender(pg.cancel_request(pid, key))))
        d.addErrback(self._lost, target)
        return True

    def _lost(self, failure: Failure, target: int) -> None:
        self.log.info("a cancel for worker {target} could not be sent on: {why}",
                      target=target, why=failure.getErrorMessage())


__all__ = ["CancelRelay"]
