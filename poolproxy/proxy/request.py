"""
Request mode for HTTP/1.1: each request leases a pooled backend connection,
which goes back to the pool when the response has ended, the backend will
keep it alive and no byte is left over; otherwise it is closed.

Split by role: L{HttpFrontend} (here) owns a client connection: requests
are parsed as they come and served one at a time, in order (pipelined ones
wait), each in an L{Exchange} (L{poolproxy.proxy.exchange}, with
L{HttpBackend}, one backend connection).

The client's own deadlines are kept here: a request head must be whole
within C{header_timeout} of its first byte (empty lines before it count),
and a client that leaves what is written to it unread for C{send_timeout}
is closed (by the listener's L{SendTimeouts}, as in the other modes).  So is what a client that is not reading holds: up to
C{response_buffer_size} of it before its backend is paused.  L{HttpLimits}
holds every phase's limit and the buffers' sizes.

The listener's hooks (L{poolproxy.hooks}): C{on_connect} and
C{on_disconnect} are told of the connection here; each request goes
through C{authenticate}, C{route} and C{allow} before its admission
(L{poolproxy.proxy.request_hooks}).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, FrozenSet, List, Optional, Tuple

from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from poolproxy.backends.retry import RetryBudget
from poolproxy.codecs.http import HttpCodec
from poolproxy.codecs.http_parse import END, HttpError, RequestHead
from poolproxy.config.settings import HTTP_FAILURE_STATUSES
from poolproxy.hooks.calling import NO_HOOKS, ListenerHooks
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.exchange import EARLY_LIMIT, Exchange, HttpBackend, _PauseOnly
from poolproxy.proxy.forwarded import ClientForwarding, TrustedProxies
from poolproxy.proxy.hooked import HookSubject
from poolproxy.proxy.output import TRANSPORT_BUFFER, OutputBudget, unsent_bytes
from poolproxy.proxy.sending import SendTimeouts
from poolproxy.stats import ListenerStats
from poolproxy.util.deadlines import Deadlines
from poolproxy.util.throttled import ThrottledLog

if TYPE_CHECKING:
    from poolproxy.backends.cluster import Cluster

#: Pipelined events held behind the current exchange before reading pauses
#: (and EARLY_LIMIT bytes of them: bodies, or what follows an Upgrade head).
QUEUE_LIMIT = 256


@dataclass(frozen=True)
class HttpLimits:
    """
    The deadlines of an http client's phases, in seconds (0: none), and
    the sizes of its buffers, in bytes; the settings of the same names
    (docs/configuration.md) give the defaults.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_total_timeout: float = 300.0
    send_timeout: float = 60.0
    tunnel_idle_timeout: float = 300.0
    request_buffer_size: int = 64 * 1024
    response_buffer_size: int = 1024 * 1024

    @classmethod
    def from_config(cls, config: Any) -> "HttpLimits":
        """The limits a L{poolproxy.config.ProxyConfig} sets."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def route_key(spec: Optional[str]) -> Optional[Callable[[RequestHead], Optional[bytes]]]:
    """
    The routing key of a request for consistent hashing: C{"path"} (the
    request target), C{"header:NAME"}, or L{None} for no key.
    """
    if not spec:
        return None
    if spec == "path":
        return lambda head: head.target
    name = spec[len("header:"):].encode("latin-1")
    return lambda head: head.header(name)


@implementer(IPushProducer)
class HttpFrontend(HookSubject, Protocol):
    """
    One client connection: requests are parsed as they come, served one at a
    time in order, each in its own L{Exchange}.

    It is its own transport's producer, for the connection's whole life:
    the transport pauses it when the client stops reading what is written
    to it, which starts the send timer and counts what the client holds
    (in the process's L{OutputBudget}); past C{response_buffer_size}, or
    the budget's cap, the current exchange's backend is paused too.  The
    transport resumes it once the client has read everything.

    @ivar write_blocked: the client is not reading (its transport paused us).
    """

    hook_protocol = "http"

    #: A connected TCP transport: typed loosely, as ITransport does not
    #: declare the producer, half-close and abort methods used here.
    transport: Any

    def __init__(self, factory: "HttpFactory") -> None:
        self.factory = factory
        self.stats = factory.stats
        self.parser = factory.codec.request_framer(factory.config)
        self.queue: Deque[Any] = deque()
        self.exchange: Optional[Exchange] = None
        self.tunnel_to: Optional[HttpBackend] = None
        self._starting = False
        self._paused = False
        self._closing = False
        self._gone = False
        self._head_timer: Any = None
        self.last_active = 0.0
        #: Bytes (body pieces, what follows an Upgrade head) in the queue.
        self.queued_bytes = 0
        self.write_blocked = False
        self._producing = False  # registered as our transport's producer
        # While it is not reading: its send_timeout (poolproxy.proxy.sending).
        self.send_deadline: Optional[List[Any]] = None
        # While the client is not reading: bytes written since it stopped, the
        # transport's backlog then, and how much of it the client has taken.
        self._written_blocked = 0
        # This client's share of the OutputBudget's held bytes.
        self._output_counted = 0
        # (the authenticate hook, the Authorization value it accepted): the
        # same value on this connection is not asked about again.
        self.authorized: Optional[Tuple[Any, bytes]] = None

    def connectionMade(self) -> None:
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        self.factory.clients.add(self)
        self.last_active = self.factory.clock.seconds()
        peer = self.transport.getPeer()
        host = getattr(peer, "host", "")
        self.peer_host = host.encode("ascii", "replace")
        # Registered as the leased backend connection's producer by each exchange.
        self.pause_only = _PauseOnly(self.transport)
        self.transport.registerProducer(self, True)
        self._producing = True
        #: The X-Forwarded-* headers of this client's requests.
        self.forwarding = ClientForwarding(self.peer_host, ISSLTransport.providedBy(self.transport),
                                           self.factory.trusted_proxies.trusts(host))
        self.hook_connected()

    def dataReceived(self, data: bytes) -> None:
        tunnel = self.tunnel_to
        if tunnel is not None:
            self.last_active = self.factory.clock.seconds()
            tunnel.transport.write(data)
            return
        if self._closing:
            return
        clock = self.factory.clock
        self.last_active = clock.seconds()
        parser = self.parser
        events = parser.feed(data)
        exchange = self.exchange
        queue = self.queue
        for event in events:
            if exchange is not None and not exchange.request_done:
                exchange.request_event(event)
            else:
                queue.append(event)
                if event.__class__ is bytes:
                    self.queued_bytes += len(event)
        if parser.error is not None:
            exchange = self.exchange
            if exchange is not None and not exchange.request_done:
                # Inside the request under way (its body): it cannot go on.
                exchange.request_broken(parser.error)
                return
            queue.append(parser.error)
        if queue and self.exchange is None:
            self._start_next()
        elif not self._paused and (len(queue) > QUEUE_LIMIT or self.queued_bytes > EARLY_LIMIT):
            self._paused = True
            self.transport.pauseProducing()
        self._watch_head()

    def _watch_head(self) -> None:
        """
        A request head that has begun must be complete within
        header_timeout (slow clients, slowloris): else 408 and close.
        """
        timer = self._head_timer
        # Empty lines before a request line begin it too: a client sending a
        # CRLF now and then must not keep a connection without a request.
        pending = self.parser.pending() or self.parser.blank
        if timer is None and not pending:
            return  # the common case: no head begun, none timed
        timeout = self.factory.limits.header_timeout
        if not timeout:
            return
        reading_head = (pending > 0 and self.exchange is None and not self.queue
                        and not self._closing and self.tunnel_to is None)
        if reading_head and timer is None:
            self._head_timer = self.factory.clock.callLater(timeout, self._head_too_slow)
        elif not reading_head and timer is not None:
            self._head_timer = None
            if timer.active():
                timer.cancel()

    def _head_too_slow(self) -> None:
        self._head_timer = None
        self.stats.requests.add("timeout")
        self.stats.timeouts.add("head")
        self.transport.write(self.factory.codec.status_reply(
            408, f"no complete request head within {self.factory.limits.header_timeout:g}s",
            close=True))
        self._close()

    @property
    def busy(self) -> bool:
        """An exchange is under way (for the idle sweep)."""
        return self.exchange is not None or self.tunnel_to is not None

    def close_idle(self) -> None:
        self._close()

    def close(self) -> None:
        """Close the connection once what is written to it is sent."""
        self._close()

    # -- activity, as the exchange's timers read it -------------------------------

    def reading_since(self) -> float:
        """
        When the client last sent something, or now while the proxy itself
        keeps it from sending (reading paused: a backend's full buffer, or a
        request body waiting for a connection): a body timer must not blame
        the client for the proxy's pause.
        """
        exchange = self.exchange
        if self.pause_only.paused or (exchange is not None and exchange.early_paused):
            self.last_active = self.factory.clock.seconds()
        return self.last_active

    def active_since(self) -> float:
        """When a byte last went either way (for a tunnel's idle timer)."""
        return self.last_active

    def tunnel_write(self, data: bytes) -> None:
        """Bytes from the tunnel's backend side."""
        self.last_active = self.factory.clock.seconds()
        blocked = self.write_blocked
        self.transport.write(data)
        if blocked:
            self.wrote_blocked(len(data))

    # -- IPushProducer: the client is not reading what we write ---------------------

    def pauseProducing(self) -> None:
        # Called on every write while the transport's buffer is over its size.
        if not self.write_blocked:
            self.write_blocked = True
            self._written_blocked = 0
            self.factory.sends.paused(self)
        self.check_output()

    def resumeProducing(self) -> None:
        # The transport has sent everything written to it.
        self.write_blocked = False
        self.factory.sends.resumed(self)
        self._release_output()
        exchange = self.exchange
        if exchange is not None:
            exchange.resume_backend()

    def stopProducing(self) -> None:
        pass  # the connection is gone: connectionLost cleans up

    def wrote_blocked(self, n: int) -> None:
        """C{n} more bytes were written to a client that is not reading."""
        self._written_blocked += n
        self.check_output()

    def check_output(self) -> None:
        """
        The client is not reading: count what it holds, and pause the
        current exchange's backend once that is more than
        response_buffer_size (or the process holds all it may; or the
        exchange is a tunnel, a raw pipe that buffers nothing).
        """
        held = unsent_bytes(self.transport)
        if held is None:  # a transport that does not say: all written since it filled
            held = TRANSPORT_BUFFER + self._written_blocked
        budget = self.factory.output
        self._output_counted = budget.count(held, self._output_counted)
        exchange = self.exchange
        if exchange is not None and (held > self.factory.limits.response_buffer_size
                                     or exchange.tunnel or budget.full()):
            exchange.pause_backend()

    def _release_output(self) -> None:
        counted, self._output_counted = self._output_counted, 0
        self.factory.output.held -= counted

    def sent_mark(self) -> Optional[int]:
        """Grows as the client's socket takes bytes (see L{poolproxy.proxy.sending})."""
        unsent = unsent_bytes(self.transport)
        return None if unsent is None else self._written_blocked - unsent

    def send_timed_out(self) -> None:
        """Nothing written to the client was read for send_timeout: drop it."""
        self._closing = True
        self.transport.abortConnection()  # it is not reading: nothing to flush

    def finish_up(self) -> None:
        """The proxy is stopping: close after the current response, or now."""
        if self.exchange is None and self.tunnel_to is None:
            self._close()
        elif self.exchange is not None:
            self.exchange.close_client = True

    def parser_leftover(self) -> bytes:
        """Bytes a tunnelling request sent after its head, held in the queue."""
        pieces = []
        while self.queue and isinstance(self.queue[0], bytes):
            pieces.append(self.queue.popleft())
        self.queued_bytes = 0
        self._resume_if_drained()
        return b"".join(pieces)

    def _resume_http(self) -> None:
        """
        The backend refused the upgrade the last request asked for: what the
        client sent after its head was held raw; it is parsed as requests.
        """
        held = self.parser_leftover()
        self.queue.extend(self.parser.resume_http(held))
        if self.parser.error is not None:
            self.queue.append(self.parser.error)

    def _start_next(self) -> None:
        if self._starting:
            return
        self._starting = True
        try:
            queue = self.queue
            while self.exchange is None and queue and not self._closing and not self._gone:
                event = queue.popleft()
                if event.__class__ is not RequestHead:
                    # A parse error (a request the parser refused).
                    self._refuse(event)
                    return
                exchange = Exchange(self, event)
                self.exchange = exchange
                broken = None
                while queue and not exchange.request_done:
                    piece = queue[0]
                    if piece.__class__ is bytes:
                        self.queued_bytes -= len(piece)
                    elif piece is not END:
                        if piece.__class__ is HttpError:
                            broken = queue.popleft()  # inside this request's body
                        break
                    exchange.request_event(queue.popleft())
                if broken is not None:
                    exchange.request_broken(broken)
                else:
                    exchange.begin()
        finally:
            self._starting = False
        self._resume_if_drained()

    def _refuse(self, error: HttpError) -> None:
        """A request the parser refused: its error, then the close."""
        self.stats.requests.add("too_large" if error.status == 413 else "malformed")
        self.transport.write(self.factory.codec.status_reply(error.status, error.message,
                                                             close=True))
        self._close()

    def _resume_if_drained(self) -> None:
        if (self._paused and not self._closing and len(self.queue) <= QUEUE_LIMIT // 2
                and self.queued_bytes <= EARLY_LIMIT // 2):
            self._paused = False
            self.transport.resumeProducing()

    def paused_by_us(self) -> bool:
        return self._paused or self._closing

    def gone(self) -> bool:
        return self._gone

    def exchange_done(self, exchange: Exchange) -> None:
        if self.exchange is not exchange:
            return
        self.exchange = None
        self.last_active = self.factory.clock.seconds()
        if self._gone:
            return
        if exchange.close_client:
            self._close()
            return
        if exchange.head.upgrade:
            self._resume_http()  # it was answered without switching protocols
        if self.queue:
            self._start_next()
        self._watch_head()

    def _close(self) -> None:
        if self._gone:
            return
        self._closing = True
        self.queue.clear()
        self.queued_bytes = 0
        if self._producing:
            # A transport with a producer registered waits for it to go before
            # it closes; what is unsent must then be read within send_timeout.
            self._producing = False
            self.transport.unregisterProducer()
            if unsent_bytes(self.transport) != 0:
                self.factory.sends.paused(self)
        self.transport.loseConnection()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._gone = True
        self.stats.connections_open -= 1
        self.factory.clients.discard(self)
        self.queue.clear()
        timer, self._head_timer = self._head_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.factory.sends.resumed(self)
        self._release_output()
        exchange, self.exchange = self.exchange, None
        self.tunnel_to = None
        if exchange is not None:
            if exchange.tunnel:
                exchange.end_tunnel()
            else:
                if not exchange.finished:
                    self.stats.requests.add("client_gone")
                exchange.client_gone()
        self.hook_disconnected()


class HttpFactory(Factory):
    """
    Builds an L{HttpFrontend} per client of one listener.

    @ivar problems: the log of backend failures (bad responses, lost
        connections): their details are not for clients, and one line per
        kind and backend per interval is enough.
    """

    #: The listener's hooks and the clusters its route hook may choose, by
    #: name (set by the service; L{poolproxy.proxy.hooked}).
    hooks: ListenerHooks = NO_HOOKS
    routes: Dict[str, Any] = {}

    noisy = False
    log = Logger()

    def __init__(self, name: str, codec: HttpCodec, config: Any, admission: Admission,
                 cluster: "Cluster", clock: Any, request_timeout: float,
                 stats: Optional[ListenerStats] = None,
                 route_key: Optional[Callable[[RequestHead], Optional[bytes]]] = None,
                 failure_statuses: FrozenSet[int] = HTTP_FAILURE_STATUSES["5xx"],
                 retry_budget: Optional[RetryBudget] = None,
                 limits: HttpLimits = HttpLimits(), access_log_sample: float = 0.0,
                 random: Callable[[], float] = random.random,
                 trusted_proxies: TrustedProxies = TrustedProxies(),
                 output: Optional[OutputBudget] = None) -> None:
        """
        @param output: the process's bounds on what is held for slow
            clients (L{poolproxy.proxy.output}); http counts its response
            and request buffers there.
        """
        self.name = name
        self.codec = codec
        self.config = config
        self.admission = admission
        self.cluster = cluster
        self.clock = clock
        self.request_timeout = request_timeout
        # Every exchange's wait for its response, on one timer (same length).
        self.response_deadlines = Deadlines(clock, request_timeout, Exchange.timed_out)
        self.stats = stats if stats is not None else ListenerStats()
        self.clients: "set[HttpFrontend]" = set()
        self.route_key = route_key
        # The response statuses its backend's breaker counts as failures.
        self.failure_statuses = failure_statuses
        self.retry_budget = retry_budget if retry_budget is not None else RetryBudget()
        self.limits = limits
        # send_timeout, as the other modes keep it: one timer for the listener.
        self.sends = SendTimeouts(clock, limits.send_timeout, self.stats)
        self.trusted_proxies = trusted_proxies
        self.output = output if output is not None else OutputBudget()
        self.problems = ThrottledLog(self.log, clock)
        self.access_log_sample = access_log_sample
        self.random = random

    def buildProtocol(self, addr: Any) -> HttpFrontend:
        return HttpFrontend(self)


# HttpBackend is the mode's backend protocol: found here with its frontend.
__all__ = ["HttpBackend", "HttpFactory", "HttpFrontend", "HttpLimits", "route_key"]
