"""
Active health checks: probes, and the check that runs one periodically.

A probe is a callable C{probe() -> Deferred[None]} made for one backend's
client endpoint.  Its L{Deferred} succeeds, or fails with an exception whose
message says why (L{ProbeFailed} for a wrong, malformed or missing answer;
the endpoint's own error, such as C{ConnectionRefusedError}, when the connect
fails).  Four kinds are built here:

  - L{tcp_probe}: connect, then close at once;
  - L{codec_probe}: send the codec's C{probe()} frame (redis PING, memcached
    C{version}), read exactly one response and ask the codec's C{probe_ok};
  - L{http_probe}: C{GET path}, any 2xx passes;
  - L{postgres_probe}: log in, C{SELECT 1}, its row and ReadyForQuery pass.

Every probe uses a connection of its own and closes it whatever happens:
gracefully after a good answer, aborted after a bad one, on an error or when
cancelled.  The probe's L{Deferred} fires as soon as the answer is known; it
does not wait for the close to finish (a TLS close waits for the peer's
close_notify, which a backend may never send).  Cancelling the L{Deferred}
stops connecting, or aborts the connection; it then fails with
L{CancelledError}.

L{HealthCheck} runs one probe every C{interval} seconds, never two at once,
each bounded by C{timeout}, and turns the results into a state:

  - C{"unknown"} at start.  It counts as available: a backend is routed to
    until checks say otherwise, as HAProxy assumes a new server is up.  A
    proxy that started with every backend "down until proven up" would
    refuse every request until the first probes came back, and a backend
    that fails real requests is taken out sooner by passive health (the
    circuit breaker) anyway;
  - C{"healthy"} after the first successful probe from C{"unknown"}, or
    after C{rise} consecutive successes from C{"unhealthy"};
  - C{"unhealthy"} after C{fall} consecutive failures (from C{"unknown"} or
    C{"healthy"}).  A timed-out probe is a failure.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import (IDelayedCall, IOpenSSLClientConnectionCreator, IReactorTime,
                                         IStreamClientEndpoint)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from poolproxy.codec import IProbingCodec, ISetupConversation
from poolproxy.codecs import postgres as pg
from poolproxy.codecs.http_parse import ResponseHead, ResponseParser
from poolproxy.util.factories import OneProtocolFactory
from poolproxy.util.loops import GuardedLoop
from poolproxy.util.reactors import default_reactor

__all__ = [
    "UNKNOWN", "HEALTHY", "UNHEALTHY",
    "Probe", "ProbeFailed", "HealthCheck",
    "tcp_probe", "codec_probe", "http_probe", "postgres_probe",
]

UNKNOWN = "unknown"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"

#: A probe: call it to run one check; the Deferred succeeds or fails.
Probe = Callable[[], "Deferred[None]"]

#: How much of a wrong answer a failure message quotes.
_QUOTE = 60


class ProbeFailed(Exception):
    """The backend's answer to a probe was wrong, malformed or missing."""


# -- probes --------------------------------------------------------------------

class _ProbeProtocol(Protocol):
    """
    The client side of one probe's connection.  The plain TCP probe is done
    as soon as it is connected; subclasses send a request in L{start} and
    call L{succeeded} or L{failed} once the answer is in.
    """

    run: "Optional[_ProbeRun]" = None

    def start(self) -> None:
        """Connected (and not cancelled): send the probe."""
        self.succeeded()

    def finished(self) -> bool:
        return self.run is None or self.run.done

    def succeeded(self) -> None:
        if self.run is not None:
            self.run.finish(None)

    def failed(self, why: str) -> None:
        if self.run is not None:
            self.run.finish(ProbeFailed(why))

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        if self.run is not None:
            self.run.lost(reason)


class _CodecProbeProtocol(_ProbeProtocol):
    """Sends one codec request; the first complete response decides."""

    log = Logger()

    def __init__(self, data: bytes, framer: Any, check: Callable[[bytes], bool]) -> None:
        self._data = data
        self._framer = framer
        self._check = check

    def start(self) -> None:
        assert self.transport is not None
        self.transport.write(self._data)

    def dataReceived(self, data: bytes) -> None:
        if self.finished():
            return
        responses = self._framer.feed(data)
        if responses:
            response = responses[0]
            try:
                ok = self._check(response)
            except Exception:
                self.log.failure("probe_ok raised on {response!r}", response=response[:_QUOTE])
                self.failed(f"cannot check the answer {response[:_QUOTE]!r}")
                return
            if ok:
                self.succeeded()
            else:
                self.failed(f"unexpected answer {response[:_QUOTE]!r}")
        elif self._framer.error is not None:
            error = self._framer.error
            self.failed(f"malformed answer: {getattr(error, 'message', error)}")


class _HttpProbeProtocol(_ProbeProtocol):
    """Sends one GET; the final response's status decides."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self._parser = ResponseParser()
        self._parser.expect(b"GET")

    def start(self) -> None:
        assert self.transport is not None
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        if self.finished():
            return
        for event in self._parser.feed(data):
            if isinstance(event, ResponseHead) and not event.informational:
                if 200 <= event.status < 300:
                    self.succeeded()
                else:
                    self.failed(f"HTTP {event.status}")
                return
        if self._parser.error is not None:
            self.failed(f"malformed answer: {self._parser.error.message}")


class _PostgresProbeProtocol(_ProbeProtocol):
    """
    Logs in (a L{ISetupConversation}), sends one simple Query, and passes
    on its DataRow, CommandComplete and ReadyForQuery; then says Terminate.
    With C{tls}, it asks for TLS first (SSLRequest) and logs in under it,
    as the pool's connections do: a server that takes logins only over
    TLS (C{hostssl}) would refuse a plain one, and the check would take a
    healthy backend out.
    """

    def __init__(self, login: ISetupConversation, query: bytes,
                 tls: Optional[IOpenSSLClientConnectionCreator] = None) -> None:
        self._login = login
        self._query = query
        self._tls = tls
        self._reader = pg.MessageReader(64 * 1024)
        self._rows = 0
        self._complete = False

    def start(self) -> None:
        assert self.transport is not None
        if self._tls is not None:
            self.transport.write(pg.ssl_request())
            return
        self.transport.write(self._login.start())

    def _tls_answer(self, data: bytes) -> None:
        """The answer to the SSLRequest: C{S} alone, then TLS; anything else fails."""
        transport: Any = self.transport  # a TCP transport: an ITLSTransport
        if data == b"S":
            transport.startTLS(self._tls)
            self._tls = None
            # Written under TLS once the handshake (and the certificate's
            # verification) is done; a failed one loses the connection.
            transport.write(self._login.start())
        elif data[:1] == b"S":
            self.failed("the server sent unencrypted data after its TLS answer")
        elif data[:1] == b"N":
            self.failed("the server does not accept TLS (it answered SSLRequest with N); "
                        "backend_tls is set")
        else:
            self.failed(f"the server answered SSLRequest with {data[:1]!r}, neither S nor N")

    def dataReceived(self, data: bytes) -> None:
        if self.finished():
            return
        assert self.transport is not None
        if self._tls is not None:
            self._tls_answer(data)
            return
        login = self._login
        if not login.done:
            reply = login.receive(data)
            if reply:
                self.transport.write(reply)
            if login.error is not None:
                self.failed(f"login failed: {login.error}")
                return
            if not login.done:
                return
            self.transport.write(pg.query(self._query))
            data = login.leftover()
        for kind, body in self._reader.feed(data):
            if kind == b"E":
                fields = pg.error_fields(body)
                self.failed(f"{self._query.decode('ascii', 'replace')} failed: "
                            f"{fields.get('C', '?')}: {fields.get('M', '')[:_QUOTE]}")
                return
            if kind == b"D":
                self._rows += 1
            elif kind == b"C":
                self._complete = True
            elif kind == b"Z":
                if not (self._rows and self._complete):
                    self.failed(f"{self._query.decode('ascii', 'replace')} returned no row")
                    return
                self.transport.write(pg.TERMINATE)
                self.succeeded()
                return
            elif kind not in (b"T", b"N", b"S"):
                self.failed(f"unexpected message {kind!r} after the query")
                return
        if self._reader.error is not None:
            self.failed(f"malformed answer: {self._reader.error.message}")


class _ProbeRun:
    """
    One probe: a connect, an exchange, a close.  C{result} is the
    L{Deferred} the probe returns; it fires once, and every path to it
    closes the connection.

    @ivar done: the outcome is decided (or the run was cancelled); anything
        that happens on the connection afterwards is ignored.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, protocol: _ProbeProtocol) -> None:
        self.protocol = protocol
        protocol.run = self
        self.done = False
        self.connected = False
        self.closed = False
        self.result: "Deferred[None]" = Deferred(self._cancel)
        self._connecting: "Deferred[Any]" = maybeDeferred(endpoint.connect, OneProtocolFactory(protocol))
        self._connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, _: Any) -> None:
        self.connected = True
        if self.done:
            # Cancelled, yet the endpoint connected all the same.
            self._close(abort=True)
        elif not self.closed:
            self.protocol.start()

    def _connect_failed(self, failure: Failure) -> None:
        if self.done:
            # Cancelled: ConnectingCancelledError (TCP) or CancelledError.
            return
        self.done = True
        self.result.errback(failure)

    def finish(self, error: Optional[Exception]) -> None:
        """The answer is in: close the connection, then report."""
        if self.done:
            return
        self.done = True
        self._close(abort=error is not None)
        if error is None:
            self.result.callback(None)
        else:
            self.result.errback(error)

    def lost(self, reason: Optional[Failure]) -> None:
        self.closed = True
        if not self.done:
            why = reason.getErrorMessage() if reason is not None else "connection lost"
            self.finish(ProbeFailed(f"connection closed before the answer: {why}"))

    def _close(self, abort: bool) -> None:
        transport = self.protocol.transport
        if transport is None or self.closed:
            return
        if abort:
            getattr(transport, "abortConnection", transport.loseConnection)()
        else:
            transport.loseConnection()

    def _cancel(self, result: "Deferred[None]") -> None:
        # Deferred.cancel fails self.result with CancelledError after this,
        # since nothing here fires it.
        if self.done:
            return
        self.done = True
        if self.connected:
            self._close(abort=True)
        else:
            self._connecting.cancel()


def tcp_probe(endpoint: IStreamClientEndpoint) -> Probe:
    """
    A probe that passes if a connection can be made; it closes it at once.
    """

    def probe() -> "Deferred[None]":
        return _ProbeRun(endpoint, _ProbeProtocol()).result

    return probe


def codec_probe(endpoint: IStreamClientEndpoint, codec: Any) -> Probe:
    """
    A probe that sends C{codec.probe()}'s request and checks the one
    response with C{codec.probe_ok(response)} (a codec that is not an
    L{IProbingCodec} passes any well-framed response).  A codec whose C{probe()} is L{None}
    gets a L{tcp_probe}.

    @raise ValueError: the probe frame expects no response.
    """
    frame = codec.probe()
    if frame is None:
        return tcp_probe(endpoint)
    if frame.replies != 1:
        raise ValueError(f"codec {codec.name!r}: a probe must expect "
                         f"one response, not {frame.replies}")
    check: Callable[[bytes], bool] = (codec.probe_ok if IProbingCodec.providedBy(codec)
                                      else lambda response: True)
    data: bytes = frame.data
    kind = frame.expect

    def probe() -> "Deferred[None]":
        framer = codec.response_framer()
        if framer.needs_expect:
            framer.expect(kind)
        return _ProbeRun(endpoint, _CodecProbeProtocol(data, framer, check)).result

    return probe


def _token(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        value = value.encode("ascii")
    value = bytes(value)
    if not value or any(b < 0x21 or b > 0x7E for b in value):
        raise ValueError(f"bad {what} {value!r}: visible ASCII only")
    return value


def http_probe(endpoint: IStreamClientEndpoint, path: bytes = b"/",
               host: bytes = b"localhost") -> Probe:
    """
    A probe that sends C{GET path} (C{Connection: close}) and passes on a
    2xx status; another status fails it with C{"HTTP 500"} and the like.
    Only the response head is read.

    @raise ValueError: C{path} does not start with C{/}, or C{path} or
        C{host} holds anything but visible ASCII.
    """
    path = _token(path, "path")
    host = _token(host, "host")
    if not path.startswith(b"/"):
        raise ValueError(f"bad path {path!r}: it must start with /")
    request = b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, host)

    def probe() -> "Deferred[None]":
        return _ProbeRun(endpoint, _HttpProbeProtocol(request)).result

    return probe


def postgres_probe(endpoint: IStreamClientEndpoint, login: Callable[[], ISetupConversation],
                   query: bytes = b"SELECT 1",
                   tls: Optional[IOpenSSLClientConnectionCreator] = None) -> Probe:
    """
    A probe that logs in with the conversation C{login()} makes (a
    PostgreSQL L{poolproxy.codecs.postgres_login.ServerLogin}, made anew
    for each probe so that it uses the credentials of the moment), sends
    C{query} as a simple Query, and passes on a DataRow, CommandComplete
    and ReadyForQuery; then it sends Terminate and closes; with C{tls},
    all of it under TLS asked for with SSLRequest.  A failed login
    (its reason: the server's SQLSTATE and message) or an ErrorResponse
    fails it.
    """

    def probe() -> "Deferred[None]":
        return _ProbeRun(endpoint, _PostgresProbeProtocol(login(), query, tls)).result

    return probe


# -- the check -----------------------------------------------------------------

class _Attempt:
    """One probe run by a L{HealthCheck}, and who waits for its outcome."""

    __slots__ = ("deferred", "timer", "timed_out", "waiters")

    def __init__(self) -> None:
        self.deferred: "Optional[Deferred[Any]]" = None
        self.timer: Optional[IDelayedCall] = None
        self.timed_out = False
        self.waiters: "List[Deferred[str]]" = []


class HealthCheck:
    """
    Runs one backend's probe periodically and keeps its state (see the
    module docstring for the rules).

    @ivar state: C{"unknown"}, C{"healthy"} or C{"unhealthy"}.
    @ivar last_error: why the last probe failed; cleared when the check
        turns healthy.
    @ivar probes_ok: probes that succeeded.
    @ivar probes_failed: probes that failed or timed out (those abandoned by
        L{stop} are not counted).
    @ivar transitions: state changes so far.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        probe: Probe,
        *,
        interval: float,
        timeout: float,
        rise: int,
        fall: int,
        clock: Optional[IReactorTime] = None,
        on_change: Optional[Callable[[str, str, str], Any]] = None,
    ) -> None:
        """
        @param name: the backend's name, for logs.
        @param probe: called for each check; see L{tcp_probe} and friends.
        @param interval: seconds between the starts of two probes.  A probe
            still running when the next is due makes that one skipped.
        @param timeout: seconds a probe may take; then it is cancelled and
            counted as failed.
        @param rise: consecutive successes that make an unhealthy backend
            healthy again.
        @param fall: consecutive failures that make a backend unhealthy.
        @param on_change: called as C{on_change(old, new, why)} on every
            state change.
        """
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        self._clock: IReactorTime = default_reactor(clock)
        self.name = name
        self.probe = probe
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
        self.on_change = on_change

        self.state = UNKNOWN
        self.last_error = ""
        self.probes_ok = 0
        self.probes_failed = 0
        self.transitions = 0
        self._successes = 0  # in a row
        self._failures = 0  # in a row
        self._attempt: Optional[_Attempt] = None
        self._loop = GuardedLoop(self._tick, self._clock, self.log,
                                 "health check {check} failed", check=name)

    def __repr__(self) -> str:
        return f"<HealthCheck {self.name} {self.state}>"

    @property
    def healthy(self) -> bool:
        """Whether the backend may be routed to: not known to be unhealthy."""
        return self.state != UNHEALTHY

    @property
    def running(self) -> bool:
        """Whether periodic probing is on."""
        return self._loop.running

    @property
    def probing(self) -> bool:
        """Whether a probe is in flight."""
        return self._attempt is not None

    # -- lifecycle ----------------------------------------------------------

    def start(self, now: bool = True) -> None:
        """
        Probe every C{interval} seconds, the first time at once unless
        C{now} is false.  Starting a running check does nothing.
        """
        self._loop.start(self.interval, now=now)

    def stop(self) -> None:
        """
        Stop probing: cancel the loop and a probe in flight, whose outcome is
        then not counted.  Leaves no timer behind; L{start} may follow.
        """
        self._loop.stop()
        attempt = self._attempt
        if attempt is not None:
            self._attempt = None
            if attempt.timer is not None and attempt.timer.active():
                attempt.timer.cancel()
            if attempt.deferred is not None:
                attempt.deferred.cancel()
            self._notify(attempt)

    def check_now(self) -> "Deferred[str]":
        """
        Probe now (for "this backend just failed a request: check it"), or,
        if a probe is in flight, wait for that one: never two at once.  The
        periodic schedule is unchanged.

        @return: a L{Deferred} that fires with the state once the probe's
            outcome is counted (or, if L{stop} abandons it, with the state
            then).  It never fails.
        """
        attempt = self._attempt
        fresh = attempt is None
        if attempt is None:
            attempt = _Attempt()
        waiters = attempt.waiters

        def forget(d: "Deferred[str]") -> None:
            if d in waiters:
                waiters.remove(d)

        d: "Deferred[str]" = Deferred(forget)
        waiters.append(d)
        if fresh:
            self._launch(attempt)
        return d

    # -- probing ------------------------------------------------------------

    def _tick(self) -> None:
        if self._attempt is None:
            self._launch(_Attempt())
        else:
            self.log.debug("health check {check}: a probe is still running, skipped",
                           check=self.name)

    def _launch(self, attempt: _Attempt) -> None:
        self._attempt = attempt
        # Not Deferred.addTimeout: cancelling a TCP endpoint's connect fails
        # it with ConnectingCancelledError, which addTimeout does not turn
        # into a timeout.
        attempt.timer = self._clock.callLater(self.timeout, self._timed_out, attempt)
        # maybeDeferred: a probe that raises is a failed probe.
        attempt.deferred = maybeDeferred(self.probe)
        attempt.deferred.addBoth(self._probe_done, attempt)

    def _timed_out(self, attempt: _Attempt) -> None:
        attempt.timer = None
        if self._attempt is not attempt:
            return
        attempt.timed_out = True
        assert attempt.deferred is not None
        attempt.deferred.cancel()
        if self._attempt is attempt:
            # The probe's Deferred is stuck waiting on something that does
            # not stop when cancelled: count it now, ignore it later.
            self._probe_done(Failure(CancelledError()), attempt)

    def _probe_done(self, result: Any, attempt: _Attempt) -> None:
        if self._attempt is not attempt:
            return None  # abandoned by stop(), or counted at its timeout
        self._attempt = None
        if attempt.timer is not None:
            if attempt.timer.active():
                attempt.timer.cancel()
            attempt.timer = None
        try:
            if attempt.timed_out:
                self._failed(f"probe timed out after {self.timeout:g}s")
            elif isinstance(result, Failure):
                self._failed(result.getErrorMessage() or result.type.__name__)
            else:
                self._succeeded()
        except Exception:
            self.log.failure("health check {check}: counting a probe failed", check=self.name)
        self._notify(attempt)
        return None  # the failure is counted: nothing is left to handle

    def _notify(self, attempt: _Attempt) -> None:
        waiters, attempt.waiters = attempt.waiters, []
        for d in waiters:
            d.callback(self.state)

    # -- counting -----------------------------------------------------------

    def _succeeded(self) -> None:
        self.probes_ok += 1
        self._failures = 0
        self._successes += 1
        if self.state == UNKNOWN:
            self._change(HEALTHY, "the first probe succeeded")
        elif self.state == UNHEALTHY and self._successes >= self.rise:
            self._change(HEALTHY, f"{self._successes} probes in a row succeeded")

    def _failed(self, why: str) -> None:
        self.probes_failed += 1
        self._successes = 0
        self._failures += 1
        self.last_error = why
        self.log.debug("health check {check}: probe failed: {why}", check=self.name, why=why)
        if self.state != UNHEALTHY and self._failures >= self.fall:
            self._change(UNHEALTHY, f"{self._failures} probes in a row failed, the last: {why}")

    def _change(self, new: str, why: str) -> None:
        old, self.state = self.state, new
        self.transitions += 1
        if new == HEALTHY:
            self.last_error = ""
            self.log.info("backend {check} is healthy ({why})", check=self.name, why=why)
        else:
            self.log.warn("backend {check} is unhealthy: {why}", check=self.name, why=why)
        if self.on_change is not None:
            try:
                self.on_change(old, new, why)
            except Exception:
                self.log.failure("health check {check}: on_change failed", check=self.name)
