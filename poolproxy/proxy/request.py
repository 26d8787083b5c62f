"""
Request mode for HTTP/1.1: each request leases a pooled backend connection,
which goes back to the pool when the response has ended, the backend will
keep it alive and no byte is left over; otherwise it is closed.

Split by role: L{HttpFrontend} (here) owns a client connection: requests
are parsed as they come and served one at a time, in order (pipelined ones
wait), each in an L{Exchange} (L{poolproxy.proxy.exchange}, with
L{HttpBackend}, one backend connection).
"""

from __future__ import annotations

import random
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, FrozenSet, Optional, Tuple

from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from poolproxy.backends.retry import RetryBudget
from poolproxy.codecs.http import HttpCodec
from poolproxy.codecs.http_parse import END, RequestHead
from poolproxy.config.settings import HTTP_FAILURE_STATUSES
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.exchange import Exchange, HttpBackend, _PauseOnly
from poolproxy.stats import ListenerStats
from poolproxy.util.deadlines import Deadlines

if TYPE_CHECKING:
    from poolproxy.backends.cluster import Cluster

#: Pipelined events held behind the current exchange before reading pauses.
QUEUE_LIMIT = 256
_DROP_FORWARDED = (b"x-forwarded-for",)


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


class HttpFrontend(Protocol):
    """
    One client connection: requests are parsed as they come, served one at a
    time in order, each in its own L{Exchange}.
    """

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

    def connectionMade(self) -> None:
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        self.factory.clients.add(self)
        self.last_active = self.factory.clock.seconds()
        peer = self.transport.getPeer()
        self.peer_host = getattr(peer, "host", "").encode("ascii", "replace")
        # Registered as the leased backend connection's producer by each exchange.
        self.pause_only = _PauseOnly(self.transport)
        # What most of this client's requests add, encoded once.
        self._forwarded = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http" % (self.peer_host,)

    def forwarded(self, head: RequestHead) -> Tuple[Any, Tuple[bytes, ...]]:
        """
        X-Forwarded-For and -Proto for a request from this client, and the
        request's headers they replace (none when it has no X-Forwarded-For:
        the serialiser then need not look for one again).
        """
        previous = head.header(b"x-forwarded-for")
        if not previous:
            return self._forwarded, (() if previous is None else _DROP_FORWARDED)
        return ([(b"X-Forwarded-For", previous + b", " + self.peer_host),
                 (b"X-Forwarded-Proto", b"http")], _DROP_FORWARDED)

    def dataReceived(self, data: bytes) -> None:
        tunnel = self.tunnel_to
        if tunnel is not None:
            tunnel.transport.write(data)
            return
        if self._closing:
            return
        clock = self.factory.clock
        self.last_active = clock.seconds()
        parser = self.parser
        events = parser.feed(data)
        exchange = self.exchange
        for event in events:
            if exchange is not None and not exchange.request_done:
                exchange.request_event(event)
            else:
                self.queue.append(event)
        if parser.error is not None:
            self.queue.append(parser.error)
        if self.queue and self.exchange is None:
            self._start_next()
        elif len(self.queue) > QUEUE_LIMIT and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        self._watch_head()

    def _watch_head(self) -> None:
        """
        A request head that has begun must be complete within
        header_timeout (slow clients, slowloris): else 408 and close.
        """
        timer = self._head_timer
        pending = self.parser.pending()
        if timer is None and not pending:
            return  # the common case: no head begun, none timed
        timeout = self.factory.header_timeout
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
        self.transport.write(self.factory.codec.status_reply(
            408, f"no complete request head within {self.factory.header_timeout:g}s", close=True))
        self._close()

    @property
    def busy(self) -> bool:
        """An exchange is under way (for the idle sweep)."""
        return self.exchange is not None or self.tunnel_to is not None

    def close_idle(self) -> None:
        self._close()

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
        return b"".join(pieces)

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
                    status = getattr(event, "status", 400)
                    self.stats.requests.add("malformed")
                    self.transport.write(self.factory.codec.status_reply(
                        status, str(event), close=True))
                    self._close()
                    return
                exchange = Exchange(self, event)
                self.exchange = exchange
                while queue and queue[0].__class__ is not RequestHead and not exchange.request_done:
                    if isinstance(queue[0], bytes) or queue[0] is END:
                        exchange.request_event(queue.popleft())
                    else:
                        break
                exchange.start()
        finally:
            self._starting = False
        if self._paused and len(self.queue) <= QUEUE_LIMIT // 2:
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
        if self.queue:
            self._start_next()
        self._watch_head()

    def _close(self) -> None:
        self._closing = True
        self.queue.clear()
        self.transport.loseConnection()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._gone = True
        self.stats.connections_open -= 1
        self.factory.clients.discard(self)
        self.queue.clear()
        timer, self._head_timer = self._head_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        exchange, self.exchange = self.exchange, None
        self.tunnel_to = None
        if exchange is not None:
            if exchange.tunnel:
                exchange.end_tunnel()
            else:
                if not exchange.finished:
                    self.stats.requests.add("client_gone")
                exchange.client_gone()


class HttpFactory(Factory):
    """Builds an L{HttpFrontend} per client of one listener."""

    noisy = False

    def __init__(self, name: str, codec: HttpCodec, config: Any, admission: Admission,
                 cluster: "Cluster", clock: Any, request_timeout: float,
                 stats: Optional[ListenerStats] = None,
                 route_key: Optional[Callable[[RequestHead], Optional[bytes]]] = None,
                 failure_statuses: FrozenSet[int] = HTTP_FAILURE_STATUSES["5xx"],
                 retry_budget: Optional[RetryBudget] = None,
                 header_timeout: float = 0.0, access_log_sample: float = 0.0,
                 random: Callable[[], float] = random.random) -> None:
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
        self.header_timeout = header_timeout
        self.access_log_sample = access_log_sample
        self.random = random

    def buildProtocol(self, addr: Any) -> HttpFrontend:
        return HttpFrontend(self)


# HttpBackend is the mode's backend protocol: found here with its frontend.
__all__ = ["HttpBackend", "HttpFactory", "HttpFrontend", "route_key"]
