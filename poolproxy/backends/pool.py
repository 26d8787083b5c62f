"""
A bounded pool of reusable connections to one backend.

Modelled on L{twisted.web.client.HTTPConnectionPool}, with what a proxy
needs on top: a cap on connections (idle, leased and connecting together),
FIFO waiters with an acquire timeout and a bound on their number, a connect
timeout, retirement by idle time, lifetime and number of uses (only while a
connection is idle, never in the middle of a request), a maintenance
L{LoopingCall} that reaps, refills C{min_idle} and probes a backend that is
down, and L{BackendPool.close} for shutdown.

Every connection handed out by L{BackendPool.acquire} is a lease: the holder
ends it with exactly one L{PooledConnection.release} (reuse it) or
L{PooledConnection.discard} (close it).  A second call raises L{LeaseError}.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Generic, List, Optional, Set, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from poolproxy.util.deadlines import Deadlines
from poolproxy.util.factories import OneProtocolFactory
from poolproxy.util.loops import GuardedLoop
from poolproxy.util.reactors import default_reactor
from poolproxy.util.tlsclient import TLSHandshakeFailed

if TYPE_CHECKING:
    from poolproxy.backends.cluster import Backend
from poolproxy.stats import Histogram, Tally


class PoolError(Exception):
    """A backend connection could not be had."""


class BackendUnavailable(PoolError):
    """Connecting to the backend failed or timed out."""


class PoolExhausted(PoolError):
    """Every connection is busy and the waiter queue is full."""


class AcquireTimeout(PoolError):
    """No connection became free within the acquire timeout."""


class PoolClosed(PoolError):
    """The pool is shutting down."""


class LeaseError(Exception):
    """A lease was ended twice, or a connection not leased was released."""


class BackendProtocol(Protocol):
    """
    Base class for protocols that the pool manages.  The pool sets
    L{pool_entry} once connected; a subclass that overrides
    L{connectionLost} must call up to this one.
    """

    #: A connected TCP transport: typed loosely, as ITransport does not
    #: declare the producer, half-close and abort methods used here.
    transport: Any

    pool_entry: "Optional[PooledConnection[Any]]" = None

    def when_ready(self) -> "Optional[Deferred[Any]]":
        """
        L{None} if the connection can be used as soon as it is made; else a
        L{Deferred} that fires once it is set up (a codec's AUTH, SELECT...)
        or fails if setup failed.  Cancelling it must abort the connection.
        """
        return None

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        entry = self.pool_entry
        if entry is not None:
            entry.pool._connection_lost(entry)


#: The protocol of a pool's connections (the mode's backend protocol).
P = TypeVar("P", bound=BackendProtocol)


class PooledConnection(Generic[P]):
    """
    The pool's record of one backend connection.

    @ivar protocol: the connected L{BackendProtocol}.
    @ivar uses: how many times it has been leased.
    @ivar leased: whether a holder owns it now.
    @ivar dead: whether its transport is gone.
    """

    __slots__ = ("pool", "protocol", "created", "idle_since", "uses", "leased", "dead")

    def __init__(self, pool: "BackendPool[P]", protocol: P, now: float) -> None:
        self.pool = pool
        self.protocol = protocol
        self.created = now
        self.idle_since = now
        self.uses = 0
        self.leased = False
        self.dead = False

    def release(self) -> None:
        """
        End the lease and offer the connection for reuse.  The pool closes it
        instead if it is dead or due for retirement.
        """
        self.pool._end_lease(self, None, False)

    def discard(self, reason: str, abort: bool = False) -> None:
        """
        End the lease and close the connection.

        @param reason: the label for C{poolproxy_pool_closes_total}.
        @param abort: drop it at once, unsent bytes and all, instead of
            flushing first: for a backend that may never read them.
        """
        self.pool._end_lease(self, reason, abort)

    def close(self, abort: bool = False) -> None:
        transport = self.protocol.transport
        if transport is not None:
            if abort:
                transport.abortConnection()
            else:
                transport.loseConnection()


def _set_up(protocol: Any) -> Any:
    ready = protocol.when_ready()
    return protocol if ready is None else ready


class _ConnectAttempt(Generic[P]):
    __slots__ = ("deferred", "timer", "timed_out", "owner")

    def __init__(self, deferred: "Deferred[Any]") -> None:
        self.deferred = deferred
        self.timer: Optional[IDelayedCall] = None
        self.timed_out = False
        # The Deferred of an acquire_fresh() this connection is for, if any.
        self.owner: "Optional[Deferred[PooledConnection[P]]]" = None

    def time_out(self) -> None:
        self.timed_out = True
        self.deferred.cancel()


class _Waiter(Generic[P]):
    """
    A request waiting for a connection: told through a L{Deferred}
    (L{BackendPool.acquire}) or through two callables (L{BackendPool.wait},
    which allocates no Deferred).
    """

    __slots__ = ("pool", "since", "deferred", "on_ready", "on_fail", "expiry")

    def __init__(self, pool: "BackendPool[P]", since: float,
                 deferred: "Optional[Deferred[PooledConnection[P]]]" = None,
                 on_ready: Optional[Callable[["PooledConnection[P]"], None]] = None,
                 on_fail: Optional[Callable[[Failure], None]] = None) -> None:
        self.pool = pool
        self.since = since
        self.deferred = deferred
        self.on_ready = on_ready
        self.on_fail = on_fail
        self.expiry: Any = None  # its acquire timeout (a Deadlines entry)

    def ready(self, conn: "PooledConnection[P]") -> None:
        if self.deferred is not None:
            self.deferred.callback(conn)
        else:
            self.on_ready(conn)  # type: ignore[misc]

    def fail(self, error: Exception) -> None:
        if self.deferred is not None:
            self.deferred.errback(error)
        else:
            self.on_fail(Failure(error))  # type: ignore[misc]

    def cancel(self) -> None:
        """Give up waiting (the request's client left): nothing is called."""
        if self.deferred is not None:
            self.deferred.cancel()  # its canceller removes it
        else:
            self.pool._remove_waiter(self)


class BackendPool(Generic[P]):
    """
    Connections to one backend.

    @ivar state: C{"unknown"} until the first connect attempt ends, then
        C{"up"} or C{"down"} after each attempt.
    @ivar last_error: why the last connect attempt failed, for logs and /readyz.
    @ivar connects: connect attempts by result (C{ok}, C{failed}, C{timeout},
        C{tls_error}: TCP connected, the TLS handshake failed).
    @ivar closes: closed connections by reason.
    @ivar acquire_failures: failed acquires by reason.
    @ivar acquire_wait: seconds from acquire to lease, for every lease.
    @ivar protocol_factory: makes the protocol of each new connection (the
        mode's backend protocol); it may be replaced before the pool starts,
        when the protocol needs the L{Backend} built around the pool.
    @ivar cluster: the name of the cluster the pool's backend belongs to (a
        metrics label).
    @ivar backend: the cluster's L{Backend} this pool serves, told of failed
        connects (passive health); set by the L{Backend}.
    """

    log = Logger()

    #: Seconds between two log lines of a backend whose TLS handshakes keep
    #: failing while it is down (the first, as it goes down, is at once).
    TLS_LOG_INTERVAL = 60.0

    def __init__(
        self,
        name: str,
        endpoint: IStreamClientEndpoint,
        protocol_factory: Callable[[], P],
        *,
        size: int = 10,
        min_idle: int = 0,
        max_waiters: int = 1000,
        acquire_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        max_lifetime: float = 3600.0,
        max_uses: int = 0,
        health_interval: float = 2.0,
        clock: Optional[IReactorTime] = None,
        cluster: str = "",
        probe_when_down: bool = True,
    ) -> None:
        self._clock: Any = default_reactor(clock)
        self.name = name
        self.endpoint = endpoint
        self.protocol_factory = protocol_factory
        self.size = size
        self.min_idle = min_idle
        self.max_waiters = max_waiters
        self.acquire_timeout = acquire_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.max_uses = max_uses
        self.health_interval = health_interval
        # Whether maintenance connects to a backend that is down, to notice
        # when it is back; a pool of PostgreSQL logins for one (database,
        # user) does not (a failed login is not a backend to watch).
        self.probe_when_down = probe_when_down

        self._idle: List[PooledConnection[P]] = []  # a stack: the most recently used is reused first
        self._leased: Set[PooledConnection[P]] = set()
        self._connecting: Set[_ConnectAttempt[P]] = set()
        self._waiters: Deque[_Waiter[P]] = deque()
        # Waiters time out in the order they came, all after acquire_timeout:
        # one timer for them all.
        self._expiries = Deadlines(self._clock, acquire_timeout, self._waiter_timed_out)
        self._closing: Optional[List["Deferred[None]"]] = None
        self._abort_timer: Optional[IDelayedCall] = None
        self._maintenance = GuardedLoop(self._maintain, self._clock, self.log,
                                        "pool maintenance for {backend} failed", backend=name)

        self.state = "unknown"
        self.last_error = ""
        self.backend: Optional[Backend] = None
        self.cluster = cluster
        self.connects = Tally("ok", "failed", "timeout", "tls_error")
        # When TLS failures were last logged, and how many came since.
        self._tls_logged: Optional[float] = None
        self._tls_unlogged = 0
        self.closes = Tally()
        self.acquire_failures = Tally("timeout", "exhausted", "unavailable", "closed")
        self.acquire_wait = Histogram()

    # -- counts -------------------------------------------------------------

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def leased(self) -> int:
        return len(self._leased)

    @property
    def connecting(self) -> int:
        return len(self._connecting)

    @property
    def waiters(self) -> int:
        return len(self._waiters)

    @property
    def total(self) -> int:
        """Connections open or being opened; never more than C{size}."""
        return len(self._idle) + len(self._leased) + len(self._connecting)

    @property
    def longest_wait(self) -> float:
        """Seconds the oldest waiter has waited so far; 0 with none waiting."""
        waiters = self._waiters
        return self._clock.seconds() - waiters[0].since if waiters else 0.0

    def leases(self) -> List[PooledConnection[P]]:
        """The connections leased now (for the operator's views, never the request path)."""
        return list(self._leased)

    @property
    def available(self) -> bool:
        """Whether a connection can be had: one is idle, or the backend is up."""
        return self._closing is None and (bool(self._idle) or self.state == "up")

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """
        Start maintenance: it runs now (filling C{min_idle}, probing the
        backend) and every C{health_interval} seconds.
        """
        self._maintenance.start(self.health_interval, now=True)

    def close(self, grace: float = 5.0) -> "Deferred[None]":
        """
        Stop maintenance, fail every waiter with L{PoolClosed}, cancel
        connects and close every connection, idle or leased.  Leased
        connections may flush what they hold for C{grace} seconds; then they
        are aborted, so that a backend that stopped reading cannot hold up
        shutdown.

        @return: a L{Deferred} that fires once every connection is gone and
            every lease has ended.
        """
        if self._closing is None:
            self._closing = []
            self._maintenance.stop()
            while self._waiters:
                waiter = self._pop_waiter()
                self.acquire_failures.add("closed")
                waiter.fail(PoolClosed(f"pool for {self.name} is closed"))
            for attempt in list(self._connecting):
                attempt.deferred.cancel()
            while self._idle:
                self._close(self._idle.pop(), "shutdown")
            for conn in list(self._leased):
                # Holders still end their leases; the count of closes is ours.
                if not conn.dead:
                    conn.dead = True
                    conn.protocol.pool_entry = None
                    self.closes.add("shutdown")
                    conn.close()
            if self._leased:
                self._abort_timer = self._clock.callLater(grace, self._abort_leased)
        done: "Deferred[None]" = Deferred()
        if self.total == 0:
            done.callback(None)
        else:
            self._closing.append(done)
        return done

    def evict(self, reason: str) -> None:
        """
        The backend was marked down: close idle connections, so none is
        reused, and abort leased ones, so that requests in flight on them fail
        at once with their codec's error.
        """
        while self._idle:
            self._close(self._idle.pop(), reason)
        for conn in list(self._leased):
            conn.close(abort=True)

    # -- leasing ------------------------------------------------------------

    def _take_idle(self) -> "Optional[PooledConnection[P]]":
        """Lease an idle connection, if there is one (served at once: waited 0)."""
        conn = self._pop_idle()
        if conn is not None:
            self._lease(conn)
            self.acquire_wait.observe(0.0)
        return conn

    def acquire(self) -> "Deferred[PooledConnection[P]]":
        """
        Lease a connection: an idle one at once, else the next one to be
        connected or released, in FIFO order.

        @return: a L{Deferred} firing with a leased L{PooledConnection}, or
            failing with L{PoolExhausted} (at once, waiters full),
            L{AcquireTimeout}, L{BackendUnavailable} or L{PoolClosed}.  It may
            be cancelled; the waiter's place is then freed.
        """
        if self._closing is not None:
            self.acquire_failures.add("closed")
            return fail(PoolClosed(f"pool for {self.name} is closed"))
        conn = self._take_idle()
        if conn is not None:
            return succeed(conn)
        full = self._queue_full()
        if full is not None:
            return fail(full)
        d: "Deferred[PooledConnection[P]]" = Deferred(self._cancel_waiter)
        self._enqueue(_Waiter(self, self._clock.seconds(), deferred=d))
        return d

    def wait(self, on_ready: Callable[[PooledConnection[P]], None],
             on_fail: Callable[[Failure], None]) -> Optional[_Waiter]:
        """
        L{acquire} without a L{Deferred}, for a lease per request:
        C{on_ready(conn)} is called with the leased connection, or
        C{on_fail(failure)} with the same errors, now or later.

        @return: the waiter while the request waits (its C{cancel()} gives
            up), else L{None}.
        """
        error: Optional[PoolError] = None
        if self._closing is not None:
            self.acquire_failures.add("closed")
            error = PoolClosed(f"pool for {self.name} is closed")
        else:
            conn = self._take_idle()
            if conn is not None:
                on_ready(conn)
                return None
            error = self._queue_full()
        if error is not None:
            on_fail(Failure(error))
            return None
        waiter = _Waiter(self, self._clock.seconds(), on_ready=on_ready, on_fail=on_fail)
        self._enqueue(waiter)
        return waiter

    def _queue_full(self) -> Optional[PoolError]:
        # max_waiters bounds the requests waiting for a busy connection; those
        # a connect (pending, or that there is room to start) will serve do not
        # count.
        waiting = len(self._waiters)
        if waiting < self.max_waiters:
            return None  # (servable is never negative)
        servable = self._connects_for_waiters() + self.size - self.total
        if waiting >= self.max_waiters + servable:
            self.acquire_failures.add("exhausted")
            return PoolExhausted(f"all {self.size} connections to {self.name} are busy and "
                                 f"{self.max_waiters} requests are waiting")
        return None

    def _enqueue(self, waiter: _Waiter) -> None:
        self._waiters.append(waiter)
        if self.acquire_timeout > 0:
            waiter.expiry = self._expiries.start(waiter)
        self._connect_for_waiters()

    def _pop_waiter(self) -> _Waiter:
        """The oldest waiter, no longer waiting (nor timed)."""
        waiter = self._waiters.popleft()
        self._expiries.cancel(waiter.expiry)
        return waiter

    def _waiter_timed_out(self, waiter: _Waiter) -> None:
        self._waiters.remove(waiter)
        self.acquire_failures.add("timeout")
        waiter.fail(AcquireTimeout(
            f"no connection to {self.name} became free within {self.acquire_timeout:g}s"))

    def _cancel_waiter(self, d: "Deferred[PooledConnection[P]]") -> None:
        for waiter in self._waiters:
            if waiter.deferred is d:
                self._remove_waiter(waiter)
                break

    def _remove_waiter(self, waiter: _Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return  # served or failed already
        self._expiries.cancel(waiter.expiry)

    def _lease(self, conn: PooledConnection[P]) -> None:
        conn.leased = True
        conn.uses += 1
        self._leased.add(conn)

    def _pop_idle(self) -> Optional[PooledConnection[P]]:
        now = self._clock.seconds()
        while self._idle:
            conn = self._idle.pop()
            reason = self._retire_reason(conn, now, idle=False)
            if reason is None:
                return conn
            self._close(conn, reason)
        return None

    def _hand_over(self, conn: PooledConnection[P]) -> None:
        """
        Give a free connection to the oldest waiter, or keep it idle.
        """
        if self._waiters:
            waiter = self._pop_waiter()
            self._lease(conn)
            self.acquire_wait.observe(self._clock.seconds() - waiter.since)
            waiter.ready(conn)
        else:
            conn.idle_since = self._clock.seconds()
            self._idle.append(conn)

    def _end_lease(self, conn: PooledConnection[P], discard_reason: Optional[str],
                   abort: bool) -> None:
        if not conn.leased or conn.pool is not self:
            raise LeaseError(f"connection to {self.name} is not leased")
        conn.leased = False
        self._leased.discard(conn)
        if conn.dead:
            self._after_close()
            return
        if self._closing is not None:
            self._close(conn, "shutdown")
            return
        if discard_reason is None:
            discard_reason = self._retire_reason(conn, self._clock.seconds(), idle=False)
        if discard_reason is not None:
            self._close(conn, discard_reason, abort)
            return
        self._hand_over(conn)

    def _retire_reason(self, conn: PooledConnection[P], now: float, idle: bool) -> Optional[str]:
        if conn.dead:
            return "backend_closed"
        if self.max_lifetime and now - conn.created >= self.max_lifetime:
            return "max_lifetime"
        if self.max_uses and conn.uses >= self.max_uses:
            return "max_uses"
        if idle and self.idle_timeout and now - conn.idle_since >= self.idle_timeout:
            return "idle_timeout"
        return None

    # -- connecting ---------------------------------------------------------

    def _connect_for_waiters(self) -> None:
        # The pool full is the common case under load: checked first, it
        # spares the count of connects in progress.
        while self.total < self.size and len(self._waiters) > self._connects_for_waiters():
            self._connect()

    def _connects_for_waiters(self) -> int:
        """Connects in progress whose connection goes to a waiter (not to an acquire_fresh)."""
        if not self._connecting:
            return 0
        return sum(1 for attempt in self._connecting if attempt.owner is None)

    def acquire_fresh(self) -> "Deferred[PooledConnection[P]]":
        """
        Lease a newly made connection, never an idle one: for retrying a
        request whose reused connection turned out to be dead.  At the cap,
        the oldest idle connection is closed to make room; with none idle,
        this is an ordinary L{acquire} (a connection just released was alive
        a moment ago).
        """
        if self._closing is not None:
            return self.acquire()
        if self.total >= self.size:
            if not self._idle:
                return self.acquire()
            self._close(self._idle.pop(0), "replaced")
        owner: "Deferred[PooledConnection[P]]" = Deferred()
        self._connect(owner)
        return owner

    def _connect(self, owner: "Optional[Deferred[PooledConnection[P]]]" = None) -> None:
        connecting = self.endpoint.connect(OneProtocolFactory(self.protocol_factory()))
        attempt: _ConnectAttempt[P] = _ConnectAttempt(connecting.addCallback(_set_up))
        attempt.owner = owner
        self._connecting.add(attempt)
        # Not Deferred.addTimeout: cancelling a TCP endpoint's connect fails
        # it with ConnectingCancelledError, which addTimeout does not turn
        # into a timeout.
        attempt.timer = self._clock.callLater(self.connect_timeout, attempt.time_out)
        attempt.deferred.addBoth(self._connected, attempt)

    def _connected(self, result: Any, attempt: "_ConnectAttempt[P]") -> None:
        self._connecting.discard(attempt)
        if attempt.timer is not None and attempt.timer.active():
            attempt.timer.cancel()
        if isinstance(result, Failure):
            owner = attempt.owner
            self._connect_failed(result, attempt.timed_out)
            if owner is not None:
                owner.errback(BackendUnavailable(f"backend {self.name}: {self.last_error}"))
            return
        protocol: P = result
        conn = PooledConnection(self, protocol, self._clock.seconds())
        protocol.pool_entry = conn
        self.connects.add("ok")
        if self.state != "up":
            self.log.info("backend {backend} is up", backend=self.name)
            self.state = "up"
            self.last_error = ""
        if self._closing is not None:
            self._close(conn, "shutdown")
            if attempt.owner is not None:
                attempt.owner.errback(PoolClosed(f"pool for {self.name} is closed"))
            return
        if attempt.owner is not None:
            self._lease(conn)
            attempt.owner.callback(conn)
            return
        self._hand_over(conn)

    def _connect_failed(self, failure: Failure, timed_out: bool) -> None:
        if self._closing is not None:
            self._after_close()  # cancelled by close()
            return
        tls = False
        if timed_out:
            self.connects.add("timeout")
            why = f"connect timed out after {self.connect_timeout:g}s"
        elif failure.check(TLSHandshakeFailed):
            self.connects.add("tls_error")
            why = failure.getErrorMessage()
            tls = True
        else:
            self.connects.add("failed")
            why = failure.getErrorMessage() or failure.type.__name__
        if self.state != "down":
            self.log.warn("backend {backend} is down: {why}", backend=self.name, why=why)
            if tls:
                self._tls_logged, self._tls_unlogged = self._clock.seconds(), 0
        elif tls:
            self._log_tls_failure(why)
        self.state = "down"
        self.last_error = why
        if self.backend is not None:
            self.backend.failed(why)
        # Waiters that no pending connect can serve fail now rather than at
        # their acquire timeout: with the backend down, nothing else will.
        while len(self._waiters) > self._connects_for_waiters():
            waiter = self._pop_waiter()
            self.acquire_failures.add("unavailable")
            waiter.fail(BackendUnavailable(f"backend {self.name}: {why}"))
        self._after_close()

    def _log_tls_failure(self, why: str) -> None:
        """
        A backend already down fails TLS again (the pool probes it every
        health_interval): one line per L{TLS_LOG_INTERVAL} at most, with the
        count of those not logged.
        """
        now = self._clock.seconds()
        self._tls_unlogged += 1
        if self._tls_logged is not None and now - self._tls_logged < self.TLS_LOG_INTERVAL:
            return
        self.log.warn("backend {backend} is still down: {why} ({n} TLS handshakes failed "
                      "since the last line)", backend=self.name, why=why, n=self._tls_unlogged)
        self._tls_logged, self._tls_unlogged = now, 0

    # -- closing ------------------------------------------------------------

    def _close(self, conn: PooledConnection[P], reason: str, abort: bool = False) -> None:
        """
        Close a connection that is neither idle nor leased any more.
        """
        if not conn.dead:
            conn.dead = True
            self.closes.add(reason)
            conn.protocol.pool_entry = None
            conn.close(abort)
        self._after_close()

    def _connection_lost(self, conn: PooledConnection[P]) -> None:
        """
        The backend side of C{conn} went away (called by L{BackendProtocol}).
        """
        if conn.dead:
            return
        conn.dead = True
        conn.protocol.pool_entry = None
        self.closes.add("backend_closed")
        if conn.leased:
            # The holder learns of it from its protocol and ends the lease.
            return
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        self._after_close()

    def _abort_leased(self) -> None:
        self._abort_timer = None
        for conn in list(self._leased):
            conn.close(abort=True)

    def _after_close(self) -> None:
        """
        A slot may have freed: serve waiters, or finish closing.
        """
        if self._closing is not None:
            if self.total == 0:
                if self._abort_timer is not None:
                    self._abort_timer.cancel()
                    self._abort_timer = None
                waiting, self._closing[:] = list(self._closing), []
                for d in waiting:
                    d.callback(None)
            return
        self._connect_for_waiters()

    # -- maintenance --------------------------------------------------------

    def _maintain(self) -> None:
        self._reap()
        self._refill()

    def _reap(self) -> None:
        now = self._clock.seconds()
        for conn in list(self._idle):
            reason = self._retire_reason(conn, now, idle=True)
            if reason is not None:
                self._idle.remove(conn)
                self._close(conn, reason)

    def _refill(self) -> None:
        wanted = self.min_idle
        if wanted == 0 and self.state != "up" and self.probe_when_down and not self._connecting:
            # Probe a backend that is down (or not tried yet) so that it is
            # noticed when it comes back, even with no traffic.
            wanted = 1
        while len(self._idle) + len(self._connecting) < wanted and self.total < self.size:
            self._connect()
        self._connect_for_waiters()

    def stats(self) -> Dict[str, int]:
        """
        Connection counts by state, for metrics, status and tests.
        """
        return {
            "idle": self.idle,
            "leased": self.leased,
            "connecting": self.connecting,
            "waiters": self.waiters,
        }
