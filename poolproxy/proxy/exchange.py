"""
One HTTP request and its response (L{Exchange}), and the backend
connection it leases (L{HttpBackend}).

An exchange reads its request body into a buffer of up to
C{request_buffer_size} bytes first (as nginx's C{proxy_request_buffering}):
only a body that is whole, or that fills the buffer, is admitted and
leases a pooled connection, so a client that trickles its body holds no
backend connection meanwhile.  It then writes the request's re-serialised
head and what it holds in one piece, streams the rest of a larger body,
relays the response, and ends its lease exactly once: released when the
connection is reusable, discarded otherwise.  The client is paused while
the backend's send buffer is full; the backend is paused only once the
client, not reading, holds more than C{response_buffer_size} of what was
written to it (L{HttpFrontend} tells the exchange), so that a response that
fits is read whole and its connection released while the client is still
reading it.  Upgrade and CONNECT turn the exchange into a raw tunnel on a
connection that is never reused.

Its deadlines: the request body (C{body_timeout} between reads,
C{body_total_timeout} in all: then 408), the response (C{request_timeout}
for its first byte and between its reads: then 504, or the close once it
has begun) and the tunnel (C{tunnel_idle_timeout} without a byte either
way).  Each ends the lease at once.  The client side (parsing, ordering,
the head and send timers) is L{poolproxy.proxy.request}'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Tuple

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from poolproxy.backends.pool import BackendProtocol, BackendUnavailable, PooledConnection
from poolproxy.codecs.http import REASONS, HttpCodec
from poolproxy.codecs.http_parse import (
    CHUNKED,
    END,
    NONE,
    UNTIL_CLOSE,
    HttpError,
    RequestHead,
    ResponseHead,
    serialize_request_head,
    serialize_response_head,
    status_response,
)
from poolproxy.proxy.admission import Overloaded
from poolproxy.proxy.request_hooks import RequestHooks
from poolproxy.util.inactivity import Inactivity
from poolproxy.util.writethrough import write_through

if TYPE_CHECKING:
    from poolproxy.proxy.request import HttpFrontend

#: Body bytes read from a client before its backend connection is ready,
#: past which reading pauses (or request_buffer_size, if larger).
EARLY_LIMIT = 64 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Most response bytes read and dropped after the client left, so that the
#: backend connection can be pooled again; a longer response closes it.
ORPHAN_DRAIN_LIMIT = 256 * 1024
# Module level: a Logger used as a class attribute takes the class's namespace.
_access = Logger(namespace="poolproxy.access")

#: Methods that are safe to send twice (RFC 9110 9.2.1): only these are retried.
RETRY_SAFE_METHODS = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE"])


@implementer(IPushProducer)
class _PauseOnly:
    """
    Registers a transport as another's producer for pausing and resuming
    only.  Registering the transport itself would let Twisted stop it
    (close it) when the other side's connection is lost: a dead backend
    connection would close a keep-alive client that is about to get a 502 or a
    retry.
    """

    __slots__ = ("transport", "paused")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class HttpBackend(BackendProtocol):
    """
    One backend connection in request mode.

    @ivar exchange: the L{Exchange} using it, while leased.
    """

    log = Logger()

    def __init__(self, codec: HttpCodec) -> None:
        self.parser = codec.response_framer()
        self.exchange: Optional[Exchange] = None
        self.tunnel_to: Optional[HttpFrontend] = None

    def dataReceived(self, data: bytes) -> None:
        tunnel = self.tunnel_to
        if tunnel is not None:
            tunnel.tunnel_write(data)
            return
        exchange = self.exchange
        if exchange is None:
            # Bytes on an idle connection: it is out of step; drop it.
            self.transport.abortConnection()
            return
        events = self.parser.feed(data)
        if events:
            exchange.from_backend(events)
        if self.parser.error is not None and self.exchange is exchange:
            exchange.backend_failed("bad response from the backend", self.parser.error.message)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        BackendProtocol.connectionLost(self, reason)
        tunnel = self.tunnel_to
        if tunnel is not None:
            tunnel.close()  # its connectionLost ends the lease
            return
        exchange = self.exchange
        if exchange is not None:
            events = self.parser.eof()
            if events:
                exchange.from_backend(events)
            if self.exchange is exchange:
                exchange.backend_failed("backend closed the connection")


class Exchange:
    """
    One request and its response: admission, a lease, the request forwarded,
    the response relayed, the lease ended exactly once.
    """

    # One per request: slots make it cheaper to build and to read.
    __slots__ = ("frontend", "head", "early", "early_size", "request_done", "response",
                 "response_started", "conn", "backend", "admitted", "finished", "tunnel",
                 "draining", "close_client", "_waiting", "_timer", "cluster_backend",
                 "reported", "retried", "sampled", "started", "orphaned", "early_paused",
                 "backend_paused", "_body_timer", "_tunnel_timer", "buffering", "continued",
                 "began", "sent", "routed", "retry_budget")

    def __init__(self, frontend: "HttpFrontend", head: RequestHead) -> None:
        self.frontend = frontend
        self.head = head
        self.early: List[bytes] = []
        self.early_size = 0
        self.request_done = False
        self.response: Optional[ResponseHead] = None
        self.response_started = False
        self.conn: "Optional[PooledConnection[HttpBackend]]" = None
        self.backend: Optional[HttpBackend] = None
        self.admitted = False
        self.finished = False
        self.tunnel = False
        self.draining = False
        self.close_client = not head.keep_alive
        self._waiting: Any = None  # a Deferred or a pool waiter: has cancel()
        self._timer: Any = None
        self.cluster_backend: Any = None
        self.reported = False  # an outcome was told to the backend's breaker
        self.retried = False
        self.sampled = False  # gets an access log line
        self.started = 0.0
        # The client left while the response was on its way: it is read and
        # dropped (up to ORPHAN_DRAIN_LIMIT bytes) so the connection can be reused.
        self.orphaned = 0
        # Reading the client paused: EARLY_LIMIT body bytes wait for a connection.
        self.early_paused = False
        # Reading the backend paused: the client is not reading its response.
        self.backend_paused = False
        self._body_timer: Optional[Inactivity] = None
        self._tunnel_timer: Optional[Inactivity] = None
        # The body is read into early before a connection is asked for.
        self.buffering = False
        # The proxy answered Expect: 100-continue itself (to read the body).
        self.continued = False
        # For the duration histograms: the read that brought the head (the
        # frontend's last_active, so no clock read), and when the request was
        # written to its backend connection (-1 until it is).
        self.began = frontend.last_active
        self.sent = -1.0
        # The cluster the route hook chose, if not the listener's own, and
        # the retry budget of the cluster that serves it.
        self.routed: Any = None
        self.retry_budget: Any = frontend.factory.retry_budget

    def begin(self) -> None:
        """
        The head, and whatever of the body came with it, are here: time the
        rest of the body; let the listener's request hooks decide, if it has
        any; read the body into the buffer if it may fit; else (or once it
        is whole: the common case) go for a backend connection.
        """
        frontend = self.frontend
        factory = frontend.factory
        coming = not self.request_done and not self.head.upgrade
        if coming:
            limits = factory.limits
            if limits.body_timeout or limits.body_total_timeout:
                self._body_timer = Inactivity(
                    factory.clock, limits.body_timeout, limits.body_total_timeout,
                    frontend.reading_since, self._body_too_slow)
        hooks = factory.hooks
        if hooks.checks_requests:  # the one test a request pays for hooks
            RequestHooks(self, hooks).authenticate()
            return  # hooks_passed or refuse, once they have decided
        if coming:
            self._go()
        else:
            self.start()

    def _go(self) -> None:
        """Read the body into the buffer if it may fit; else ask for a connection."""
        if not self.request_done and not self.head.upgrade:
            frontend = self.frontend
            factory = frontend.factory
            limits = factory.limits
            if self.early_size < limits.request_buffer_size and not factory.output.full():
                self.buffering = True
                if self.head.expect_continue:
                    # The client waits for this before it sends the body; the
                    # backend, which gets the body with the head, is not asked.
                    self.continued = True
                    frontend.transport.write(_CONTINUE)
                return
        self.start()

    # -- hooks (poolproxy.proxy.request_hooks) ------------------------------------

    def hooks_passed(self, cluster: Any) -> None:
        """The request hooks let the request through, to C{cluster}."""
        if self.finished:
            return
        if cluster is not self.frontend.factory.cluster:
            self.routed = cluster
            self.retry_budget = cluster.retry_budget
        self._go()

    def refuse(self, status: int, text: str, headers: Tuple[Tuple[bytes, bytes], ...] = (),
               prefixed: bool = True) -> None:
        """
        Answer a request the hooks refused with C{status} and C{text}
        (text/plain); it never reaches a backend.  As the proxy's other
        errors: the connection closes if part of the request is still to come.
        """
        if self.finished:
            return
        self._failed("refused")
        if self._closes_client():
            headers = (*headers, (b"Connection", b"close"))
        if status == 503:
            headers = (*headers, (b"Retry-After", b"1"))
        body = " ".join(text.split())
        reply = status_response(status, REASONS.get(status, "Error"),
                                f"poolproxy: {body}\n" if prefixed else f"{body}\n", headers)
        if self.head.method == b"HEAD":
            reply = reply[:reply.index(b"\r\n\r\n") + 4]  # its headers, not its body
        self.frontend.transport.write(reply)
        self._finish(release=False)

    # -- admission and lease ---------------------------------------------------

    def start(self) -> None:
        factory = self.frontend.factory
        budget = self.retry_budget
        if budget is not None:
            budget.deposit()
        if factory.access_log_sample and factory.random() < factory.access_log_sample:
            self.sampled = True
            self.started = factory.clock.seconds()
        admission = self.frontend.factory.admission
        if admission.try_acquire():
            self._admitted(None)
            return
        self._waiting = d = admission.acquire()
        d.addCallbacks(self._admitted, self._not_admitted)

    def _admitted(self, _: object) -> None:
        self._waiting = None
        self.admitted = True
        if self.finished:
            self._release_admission()
            return
        factory = self.frontend.factory
        key = factory.route_key(self.head) if factory.route_key is not None else None
        routed = self.routed
        backend = (factory.cluster if routed is None else routed).pick(key)
        if backend is None:
            self._failed("backend_unavailable")
            self._error("unavailable", "no backend is available")
            return
        backend.begin()
        self.cluster_backend = backend
        # No Deferred per request: the lease arrives by a plain callback.
        self._waiting = backend.pool.wait(self._leased, self._no_backend)

    def _not_admitted(self, failure: Failure) -> None:
        self._waiting = None
        if failure.check(CancelledError):
            return
        failure.trap(Overloaded)
        self._failed("rejected")
        self._error("overloaded", "overloaded, try again later")

    def _no_backend(self, failure: Failure) -> None:
        # The pool's error names the backend and the OS error: the client is
        # told only which kind it was (the pool logs a backend going down).
        self._waiting = None
        if failure.check(CancelledError):
            return
        if failure.check(BackendUnavailable):
            self._failed("backend_unavailable")
            self._error("unavailable", "backend unavailable")
        else:
            self._failed("pool_exhausted")
            self._error("unavailable", "every backend connection is busy, try again later")

    def _leased(self, conn: "PooledConnection[HttpBackend]") -> None:
        self._waiting = None
        if self.finished:
            conn.release()  # never used
            return
        frontend = self.frontend
        backend: HttpBackend = conn.protocol
        self.conn, self.backend = conn, backend
        backend.exchange = self
        # An HTTP/1.0 client cannot read chunked encoding: decode it for them.
        backend.parser.decode_chunked = self.head.version == b"HTTP/1.0"
        backend.parser.expect(self.head.method)
        transport = backend.transport
        # The connection is this exchange's alone: send at once, in one piece.
        early, self.early = self.early, []
        extra, drop = frontend.forwarding.headers(self.head)
        if self.continued:
            drop = (*drop, b"expect")
        head = serialize_request_head(self.head, extra, drop)
        write_through(transport, b"".join([head, *early]) if early else head)
        self.sent = frontend.factory.clock.seconds()
        if self.early_size:
            self._forget_early()
            if self.early_paused:
                self.early_paused = False
                if not frontend.paused_by_us():
                    frontend.transport.resumeProducing()
        # The client is paused while the backend's send buffer is full (the
        # frontend pauses the backend once the client holds too much unread).
        transport.registerProducer(frontend.pause_only, True)
        if frontend.write_blocked:
            frontend.check_output()
        if self.request_done:
            self._start_timer()

    def _forget_early(self) -> None:
        """The body bytes held are sent, or will never be: uncount them."""
        self.frontend.factory.output.bodies -= self.early_size
        self.early_size = 0

    def _start_timer(self) -> None:
        """
        The response must start within request_timeout of the request's end,
        and the backend may then be silent for as long between its reads.
        """
        factory = self.frontend.factory
        if factory.request_timeout and self._timer is None and not self.backend_paused:
            self._timer = factory.response_deadlines.start(self)

    def pause_backend(self) -> None:
        """The client is not reading: stop reading its response."""
        backend = self.backend
        if backend is not None and not self.backend_paused:
            self.backend_paused = True
            backend.transport.pauseProducing()
            self._cancel_timer()  # the backend's silence is the client's doing now

    def resume_backend(self) -> None:
        """The client has read everything written to it."""
        if self.backend_paused:
            self.backend_paused = False
            backend = self.backend
            if backend is not None:
                backend.transport.resumeProducing()
                if self.response_started and not self.finished and not self.tunnel:
                    self._start_timer()

    # -- request side ------------------------------------------------------------

    def request_event(self, event: Any) -> None:
        if self.draining:
            # The response came before the whole request body: read the rest
            # and drop it, so the client can read its response and go on.
            if event is END:
                self.request_done = True
                self.draining = False
                self._stop_body_timer()
                self.frontend.exchange_done(self)
            return
        if event is END:
            self.request_done = True
            self._stop_body_timer()
            if self.buffering:
                self.buffering = False  # whole, in the buffer: now a connection
                self.frontend.stats.requests_buffered += 1
                self.start()
            elif self.backend is not None and self.response is None:
                self._start_timer()
            return
        backend = self.backend
        if backend is not None:
            write_through(backend.transport, event)
            return
        self.early.append(event)
        size = len(event)
        self.early_size += size
        factory = self.frontend.factory
        factory.output.bodies += size
        limit = factory.limits.request_buffer_size
        if self.buffering:
            if self.early_size < limit and not factory.output.full():
                return
            self.buffering = False  # larger than the buffer: streamed from here
            self.start()
            if self.backend is not None:
                return
        if self.early_size >= max(limit, EARLY_LIMIT) and not self.early_paused:
            self.early_paused = True
            self.frontend.transport.pauseProducing()

    def request_broken(self, error: HttpError) -> None:
        """
        The rest of the request cannot be framed (a bad chunk, a body past
        max_request_size): its error at once if no response has begun, and
        the client closed; the backend connection, holding part of it, too.
        """
        frontend = self.frontend
        self._failed("too_large" if error.status == 413 else "malformed")
        self.close_client = True
        self._stop_body_timer()
        if self.finished:
            frontend.close()  # its response is out; the rest of its body is not coming
            return
        self._cancel_waiting()
        if not self.response_started:
            if self.sampled:
                self._access_log(error.status)
            frontend.transport.write(frontend.factory.codec.status_reply(
                error.status, error.message, close=True))
        self._finish(release=False, abort=True)

    def _stop_body_timer(self) -> None:
        timer, self._body_timer = self._body_timer, None
        if timer is not None:
            timer.cancel()

    def _body_too_slow(self, why: str) -> None:
        """
        The client paused too long inside its request body, or took too long
        over all of it: 408 if no response has begun, and the client closed;
        the backend connection, which has part of a request, is closed too.
        """
        self._body_timer = None
        frontend = self.frontend
        frontend.stats.timeouts.add("body")
        self._failed("timeout")
        self.close_client = True
        if self.finished:
            frontend.close()  # its response is out; the rest of its body is not coming
            return
        self._cancel_waiting()
        if not self.response_started:
            limits = frontend.factory.limits
            message = (f"request body not complete within {limits.body_total_timeout:g}s"
                       if why == "total" else
                       f"no byte of the request body for {limits.body_timeout:g}s")
            if self.sampled:
                self._access_log(408)
            frontend.transport.write(frontend.factory.codec.status_reply(408, message, close=True))
        self._finish(release=False, abort=True)

    def _cancel_waiting(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()

    # -- response side -----------------------------------------------------------

    def from_backend(self, events: List[Any]) -> None:
        if self.orphaned:
            self._drop(events)
            return
        # What this batch of events writes to the client goes out in one send.
        out: List[bytes] = []
        try:
            self._relay(events, out.append, out)
        finally:
            if out:
                data = b"".join(out)
                frontend = self.frontend
                # (A write that fills the client's socket is in the backlog the
                # send timer starts from: counted once, not also as written.)
                blocked = frontend.write_blocked
                write_through(frontend.transport, data)
                if blocked:
                    frontend.wrote_blocked(len(data))
        if self.response_started and not self.finished and not self.tunnel:
            # A response under way: the backend's silence is timed from here.
            self._cancel_timer()
            self._start_timer()

    def _relay(self, events: List[Any], write: Any, out: List[bytes]) -> None:
        for event in events:
            if self.finished:
                return
            if self.tunnel:
                write(event)
                continue
            if event.__class__ is ResponseHead:
                self._cancel_timer()
                if event.informational:
                    # 100 Continue and friends: only an HTTP/1.1 client gets them.
                    if self.head.version == b"HTTP/1.1":
                        write(serialize_response_head(event))
                    continue
                self.response = event
                self.response_started = True
                if self.cluster_backend is not None:
                    self.cluster_backend.first_byte.observe(
                        self.frontend.factory.clock.seconds() - self.sent)
                self._report(event.status)
                extra = []
                if event.body == UNTIL_CLOSE or not event.keep_alive:
                    # The client cannot tell where such a body ends but by the close.
                    self.close_client = self.close_client or event.body == UNTIL_CLOSE
                drop: Tuple[bytes, ...] = ()
                if event.body == CHUNKED and self.head.version == b"HTTP/1.0":
                    # Relayed decoded, so only the close can end it for the client.
                    self.close_client = True
                    drop = (b"transfer-encoding",)
                if event.upgrade:
                    pass  # the connection is the tunnel's now
                elif self.close_client:
                    extra.append((b"Connection", b"close"))
                elif self.head.version == b"HTTP/1.0":
                    # Persistent only if told so (RFC 9112 9.3 and its appendix C.2.2).
                    extra.append((b"Connection", b"keep-alive"))
                write(serialize_response_head(event, extra, drop))
                if event.upgrade or (self.head.method == b"CONNECT" and 200 <= event.status < 300):
                    self._become_tunnel()  # what follows in events is raw tunnel bytes
            elif event is END:
                if self.response is None:
                    continue  # the end of an informational response
                if out:  # the response's last bytes before whatever completing does
                    write_through(self.frontend.transport, b"".join(out))
                    out.clear()
                self._complete()
                return
            else:
                write(event)

    def _report(self, status: int) -> None:
        """Tell the backend's breaker how the request went."""
        backend = self.cluster_backend
        if backend is not None:
            self.reported = True
            if status in self.frontend.factory.failure_statuses:
                backend.failed(f"HTTP {status}")
            else:
                backend.succeeded()

    def _become_tunnel(self) -> None:
        # From now on both sides are raw byte pipes (their transports stay
        # each other's producers); the lease is held until either side closes.
        self.tunnel = True
        frontend, backend = self.frontend, self.backend
        backend.exchange = None  # type: ignore[union-attr]
        backend.tunnel_to = frontend  # type: ignore[union-attr]
        frontend.tunnel_to = backend
        leftover = frontend.parser_leftover()
        if leftover:
            backend.transport.write(leftover)  # type: ignore[union-attr]
        self._release_admission()
        self.frontend.stats.requests_ok += 1
        timeout = frontend.factory.limits.tunnel_idle_timeout
        if timeout:
            # Bytes either way are the frontend's activity (tunnel_write, dataReceived).
            self._tunnel_timer = Inactivity(frontend.factory.clock, timeout, 0.0,
                                            frontend.active_since, self._tunnel_idle)

    def _tunnel_idle(self, why: str) -> None:
        """No byte either way for tunnel_idle_timeout: close both sides."""
        self._tunnel_timer = None
        self.frontend.stats.timeouts.add("tunnel")
        backend = self.backend
        if backend is not None:
            backend.transport.loseConnection()
        self.frontend.close()

    def end_tunnel(self) -> None:
        """Either side of the tunnel closed: the connection is not reusable."""
        timer, self._tunnel_timer = self._tunnel_timer, None
        if timer is not None:
            timer.cancel()
        conn, self.conn = self.conn, None
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.tunnel_to = None
        if conn is not None:
            conn.discard("tunnel_end")

    def _access_log(self, status: int) -> None:
        frontend = self.frontend
        factory = frontend.factory
        backend = self.cluster_backend
        _access.info(
            "{client} {method} {target} -> {status} via {backend} in {ms:.1f} ms",
            client=frontend.peer_host.decode("ascii", "replace"),
            method=self.head.method.decode("ascii", "replace"),
            target=self.head.target.decode("ascii", "replace"), status=status,
            backend=backend.name if backend is not None else "-",
            ms=(factory.clock.seconds() - self.started) * 1000.0)

    def _complete(self) -> None:
        if self.sampled:
            self._access_log(self.response.status if self.response is not None else 0)
        response = self.response
        backend = self.backend
        reusable = (self.request_done and response is not None and response.keep_alive
                    and backend is not None and backend.parser.error is None
                    and backend.parser.pending() == 0 and backend.parser.expected == 0)
        frontend = self.frontend
        if not self.orphaned:  # an orphan was counted as client_gone
            stats = frontend.stats
            stats.requests_ok += 1
            # The response's last bytes were handed to the transport just before.
            now = frontend.factory.clock.seconds()
            stats.duration_ok.observe(now - self.began)
            if self.cluster_backend is not None:
                self.cluster_backend.duration_ok.observe(now - self.sent)
            if reusable and frontend.write_blocked:
                # The client has some of it still to read: the connection
                # goes back now rather than at the client's pace.
                frontend.stats.responses_buffered += 1
        self.draining = not self.request_done and not self.close_client
        self._finish(release=reusable)

    # -- failure -------------------------------------------------------------------

    def timed_out(self) -> None:
        """
        The backend was silent for request_timeout: before its response (504)
        or inside it (the client is cut off: a response begun cannot be
        replaced).  From the factory's deadlines.
        """
        self._timer = None
        if self.orphaned:
            # Its client is gone: stop draining; the client was counted, and a
            # slow body is not a failed request.
            self._finish(release=False, abort=True)
            return
        stats = self.frontend.stats
        self._failed("timeout")
        stats.timeouts.add("response")
        if self.cluster_backend is not None:
            self.reported = True
            self.cluster_backend.failed("request timed out")
        if self.response_started:
            self.close_client = True
            self._finish(release=False, abort=True)
            return
        self._error("timeout", f"no response within {self.frontend.factory.request_timeout:g}s")

    def _may_retry(self) -> bool:
        """
        The keep-alive race: a reused connection the backend had closed. A
        safe request without a body whose response has not begun may go again,
        once, on a fresh connection, if the retry budget allows; a request that
        may have had an effect never does.
        """
        conn = self.conn
        budget = self.retry_budget
        return (not self.retried and conn is not None and conn.uses > 1
                and self.request_done and self.head.body == NONE
                and self.head.method in RETRY_SAFE_METHODS
                and budget is not None and budget.withdraw())

    def _detach(self) -> "Optional[PooledConnection[HttpBackend]]":
        """
        Stop using the backend connection: unhook it from this exchange and
        from backpressure.  The caller ends the lease.
        """
        conn, self.conn = self.conn, None
        backend, self.backend = self.backend, None
        self.backend_paused = False  # a released connection is resumed; a discarded one closed
        if conn is None or backend is None:
            return None
        backend.exchange = None
        backend.transport.unregisterProducer()
        return conn

    def _retry(self) -> None:
        self.retried = True
        self._cancel_timer()
        conn = self._detach()
        if conn is not None:
            conn.discard("stale", abort=True)
        cluster_backend = self.cluster_backend
        cluster_backend.retries += 1
        self._waiting = d = cluster_backend.pool.acquire_fresh()
        d.addCallbacks(self._leased, self._no_backend)

    def backend_failed(self, why: str, detail: str = "") -> None:
        """
        The backend connection broke (closed, or sent garbage): the client is
        told C{why}; the log, once per interval, C{detail} too.
        """
        backend = self.cluster_backend
        name = backend.name if backend is not None else "-"
        self.frontend.factory.problems.warn(
            (why, name), "http {listener}: {why} ({backend}){detail}",
            listener=self.frontend.factory.name, why=why, backend=name,
            detail=f": {detail}" if detail else "")
        if self.orphaned:
            self._finish(release=False)  # no one to retry for, or to answer
            return
        if not self.response_started and self.cluster_backend is not None and self._may_retry():
            self._retry()
            return
        if self.response_started:
            # Part of the response is already with the client: it cannot be
            # completed or replaced, only cut.
            self.close_client = True
            self._finish(release=False)
            return
        self._failed("backend_unavailable")
        if self.cluster_backend is not None:
            self.reported = True
            self.cluster_backend.failed(f"{why}: {detail}" if detail else why)
        self._error("unavailable", why)

    def _failed(self, outcome: str) -> None:
        """
        Count the request as ended by C{outcome}, and how long it took (on
        its backend too, if it was written to one).
        """
        frontend = self.frontend
        frontend.stats.requests.add(outcome)
        now = frontend.factory.clock.seconds()
        frontend.stats.durations.observe(outcome, now - self.began)
        if self.sent >= 0 and self.cluster_backend is not None:
            self.cluster_backend.durations.observe(outcome, now - self.sent)

    def _closes_client(self) -> bool:
        """
        Whether the proxy's own answer to this request closes its client:
        yes if part of the request is still coming, or what follows an
        Upgrade head was held unread (neither can be told from a next
        request), or it was to close anyway.
        """
        if not self.request_done or self.head.upgrade:
            self.close_client = True
        return self.close_client

    def _error(self, kind: str, message: str) -> None:
        """Answer with the proxy's own error response, then end the exchange."""
        if self.finished:
            return
        self._closes_client()
        codec: HttpCodec = self.frontend.factory.codec
        if self.sampled:
            self._access_log({"overloaded": 503, "timeout": 504}.get(kind, 502))
        self.frontend.transport.write(codec.error_reply(kind, message, self.close_client))
        self._finish(release=False)

    def client_gone(self) -> None:
        self._cancel_waiting()
        self._stop_body_timer()
        backend = self.backend
        response = self.response
        if (backend is not None and self.request_done and not self.tunnel
                and not self.finished and backend.parser.error is None
                and (response is None or (response.length or 0) <= ORPHAN_DRAIN_LIMIT)):
            # The request is with the backend: closing the connection now
            # would cost a new one for the next request (clients that give up
            # on slow responses would churn the pool).  Read the response
            # and drop it instead; the request timeout still applies.  (Not a
            # response known to be longer than that: a client that stopped
            # reading a download is not worth its connection's time.)
            self.orphaned = 1
            self.close_client = True
            if self.backend_paused:
                self.backend_paused = False  # paused for the client: no longer
                backend.transport.resumeProducing()
            self._cancel_timer()
            self._start_timer()  # bounds the drain, whatever has arrived yet
            return
        self._finish(release=False, abort=True)

    def _drop(self, events: List[Any]) -> None:
        """A response whose client left: read to its end, then pool the connection."""
        for event in events:
            if self.finished:
                return
            if event is END:
                if self.response is None:
                    continue  # the end of an informational response
                self._complete()
                return
            if event.__class__ is ResponseHead:
                if not event.informational:
                    self.response = event
                    self.response_started = True
                    self._report(event.status)
                    if event.upgrade or event.body == UNTIL_CLOSE:
                        break  # the connection is not coming back: close it
                continue
            self.orphaned += len(event)
            if self.orphaned > ORPHAN_DRAIN_LIMIT:
                break
        else:
            return
        self._finish(release=False, abort=True)

    # -- ending ------------------------------------------------------------------------

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            self.frontend.factory.response_deadlines.cancel(timer)

    def _release_admission(self) -> None:
        if self.admitted:
            self.admitted = False
            self.frontend.factory.admission.release()
        backend, self.cluster_backend = self.cluster_backend, None
        if backend is not None:
            backend.end(self.reported)

    def _finish(self, release: bool, abort: bool = False) -> None:
        """End the lease (exactly once) and the exchange."""
        if self.finished:
            return
        self.finished = True
        self._cancel_timer()
        if not self.draining:
            self._stop_body_timer()
        if self.early_size:
            self.early = []
            self._forget_early()
        frontend = self.frontend
        conn = self._detach()
        if conn is not None:
            if release:
                # Backpressure may have paused it; the next exchange must read.
                conn.protocol.transport.resumeProducing()
                conn.release()
            else:
                conn.discard("not_reusable", abort=abort)
        if not frontend.paused_by_us() and not frontend.gone():
            frontend.transport.resumeProducing()
        self._release_admission()
        if not self.draining:
            frontend.exchange_done(self)
