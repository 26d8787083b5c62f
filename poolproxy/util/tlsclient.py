"""
A TLS client endpoint whose connection is made once the TLS handshake is
done.

Twisted's L{wrapClientTLS} hands the protocol its connection as soon as TCP
connects, and a handshake that fails (a certificate nobody trusts, the wrong
name, a backend that does not speak TLS) shows only later as a lost
connection.  For a pool that would be a connect that succeeded, then a
connection closed: nothing to tell the operator that TLS is what fails, and
nothing for a health check to notice.  L{TLSClientEndpoint} connects the
protocol only once the handshake is done, so that:

  - C{connect()} fires with the protocol when the connection can carry data,
    and fails with L{TLSHandshakeFailed}, saying why, when the handshake
    fails;
  - cancelling it aborts the connection, handshake included (a pool's
    connect timeout covers the handshake);
  - the protocol never sees a connection that was not set up.

The protocol talks to Twisted's TLS transport directly: nothing stands
between them once the handshake is done.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer


class TLSHandshakeFailed(Exception):
    """The TCP connection was made, but the TLS handshake on it failed."""


def handshake_error(reason: Failure) -> str:
    """
    Why a handshake failed, in one line: OpenSSL's reasons (C{certificate
    verify failed}, C{wrong version number}, a peer's alert), the names a
    certificate did not match, or how the connection ended.
    """
    error = reason.value
    mismatches = getattr(error, "errors", None)  # service_identity's VerificationError
    if isinstance(mismatches, (list, tuple)) and mismatches:
        names = ", ".join(_mismatched(m) for m in mismatches)
        return f"the certificate does not match {names}"
    args = getattr(error, "args", ())
    if args and isinstance(args[0], list) and args[0] and isinstance(args[0][0], tuple):
        # OpenSSL.SSL.Error: [(library, function, reason), ...]
        return "; ".join(str(entry[-1]) for entry in args[0])
    return reason.getErrorMessage() or reason.type.__name__


def _mismatched(mismatch: Any) -> str:
    identity = getattr(mismatch, "mismatched_id", mismatch)
    for attribute in ("hostname", "ip"):
        value = getattr(identity, attribute, None)
        if value is not None:
            return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return str(identity)


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """
    TLS over C{wrapped}, each connection's TLS made by C{creator} (whose
    C{clientConnectionForTLS} is asked again for every connection: what it
    returns may change, as certificates are reloaded).
    """

    def __init__(self, wrapped: IStreamClientEndpoint,
                 creator: IOpenSSLClientConnectionCreator,
                 clock: Optional[IReactorTime] = None) -> None:
        self.wrapped = wrapped
        self.creator = creator
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> "Deferred[Any]":
        """
        @return: a L{Deferred} firing with the protocol once the handshake is
            done; failing with the wrapped endpoint's error if TCP does not
            connect, or L{TLSHandshakeFailed} if the handshake fails.
        """
        return _Connecting(self, protocolFactory).result


class _Connecting:
    """One connect: TCP, then the handshake; C{result} fires once."""

    def __init__(self, endpoint: TLSClientEndpoint, factory: IProtocolFactory) -> None:
        self.factory = factory
        self.result: "Deferred[Any]" = Deferred(self._cancel)
        self.tls: Any = None  # the TLS protocol, once TCP is connected
        tls_factory = TLSMemoryBIOFactory(endpoint.creator, True, _StandInFactory(self),
                                          clock=endpoint._clock)
        self._tcp = endpoint.wrapped.connect(tls_factory)
        self._tcp.addCallbacks(self._tcp_connected, self._tcp_failed)

    def _tcp_connected(self, tls: Any) -> None:
        self.tls = tls
        if self.result.called:  # cancelled as TCP connected
            tls.abortConnection()

    def _tcp_failed(self, reason: Failure) -> None:
        if not self.result.called:
            self.result.errback(reason)

    def handshake_done(self, protocol: IProtocol) -> None:
        if not self.result.called:
            self.result.callback(protocol)

    def handshake_failed(self, reason: Failure) -> None:
        if not self.result.called:
            self.result.errback(TLSHandshakeFailed(f"TLS handshake failed: {handshake_error(reason)}"))

    def _cancel(self, result: "Deferred[Any]") -> None:
        # Deferred.cancel fails the result with CancelledError after this.
        if self.tls is not None:
            self.tls.abortConnection()
        else:
            self._tcp.cancel()


class _StandInFactory(Factory):
    """Builds the application's protocol, and the stand-in TLS talks to first."""

    noisy = False

    def __init__(self, connecting: _Connecting) -> None:
        self.connecting = connecting

    def buildProtocol(self, addr: Any) -> Optional[Protocol]:
        protocol = self.connecting.factory.buildProtocol(addr)
        if protocol is None:
            return None
        return _UntilHandshake(protocol, self.connecting)


@implementer(IHandshakeListener)
class _UntilHandshake(Protocol):
    """
    What the TLS layer wraps while it shakes hands; once done, it puts the
    application's protocol in its place and connects it.
    """

    def __init__(self, protocol: IProtocol, connecting: _Connecting) -> None:
        self.protocol = protocol
        self.connecting = connecting

    #: The TLS protocol (a ProtocolWrapper), once TCP is connected.
    tls: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.tls = transport  # the application's connection waits for the handshake

    def handshakeCompleted(self) -> None:
        tls = self.tls
        tls.wrappedProtocol = self.protocol  # TLS talks to the protocol itself from now on
        if self.connecting.result.called:  # cancelled meanwhile: aborted already
            return
        if tls.disconnecting:
            # Verification failed as the handshake ended (Twisted before 26
            # checks the name then): the connection is being aborted, and
            # its loss, which says why, fails the connect.
            tls.wrappedProtocol = self
            return
        self.protocol.makeConnection(tls)
        if IHandshakeListener.providedBy(self.protocol):
            self.protocol.handshakeCompleted()
        self.connecting.handshake_done(self.protocol)

    def dataReceived(self, data: bytes) -> None:
        # TLS delivers no data before the handshake, and none to this
        # afterwards; should it ever, the data is the protocol's.
        self.protocol.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connecting.handshake_failed(reason)


__all__ = ["TLSClientEndpoint", "TLSHandshakeFailed", "handshake_error"]
