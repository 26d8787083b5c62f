"""
The tcp mode: each client session leases one pooled backend connection for
its whole life and bytes flow unchanged both ways.

Split by connection role as twemproxy does: L{SessionFrontend} owns the
client side, L{SessionBackend} the backend side.  Backpressure follows
L{twisted.protocols.portforward}: each transport is registered as the other's
streaming producer, so a slow reader on either side pauses the other and
memory stays bounded when one side floods.  Half-close is forwarded both
ways.  Since the backend's protocol state after a session is unknown, its
connection is closed at the end, never reused.

Two timers, neither of which costs anything per read: a session that
passes no byte either way for C{session_idle_timeout} is closed by the
listener's L{IdleSweeper} (each read and write only marks the session
active), and a client that takes none of what the backend sent for
C{send_timeout} is closed by the listener's L{SendTimeouts}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from poolproxy.backends.pool import (
    AcquireTimeout,
    BackendProtocol,
    BackendUnavailable,
    PoolClosed,
    PooledConnection,
    PoolExhausted,
)
from poolproxy.hooks.calling import NO_HOOKS, Hook, HookFailure, ListenerHooks
from poolproxy.hooks.subjects import HookRequest
from poolproxy.proxy.admission import Admission, Overloaded
from poolproxy.proxy.hooked import HookSubject, routed_cluster
from poolproxy.proxy.output import unsent_bytes
from poolproxy.proxy.sending import SendTimeouts
from poolproxy.stats import ListenerStats
from poolproxy.util.reactors import default_reactor
from poolproxy.util.writethrough import write_through

if TYPE_CHECKING:
    from poolproxy.backends.cluster import Cluster

# Bytes read from one side before the other is ready; past this, reading pauses.
EARLY_BUFFER_LIMIT = 64 * 1024


@implementer(IHalfCloseableProtocol)
class SessionBackend(BackendProtocol):
    """
    The backend side of a tcp session.  Bytes that arrive while the
    connection is idle in the pool (a server that speaks first) are kept,
    up to L{EARLY_BUFFER_LIMIT}, and handed to the client that leases it.
    """

    peer: "Optional[SessionFrontend]" = None

    def __init__(self) -> None:
        self._early: List[bytes] = []
        self._early_size = 0
        self._eof = False

    def dataReceived(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None:
            peer.from_backend(data)
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size >= EARLY_BUFFER_LIMIT:
            self.transport.pauseProducing()

    def attach(self, peer: "SessionFrontend") -> None:
        """
        Start forwarding to C{peer}, beginning with anything already read.
        """
        self.peer = peer
        early, self._early = self._early, []
        if self._early_size >= EARLY_BUFFER_LIMIT:
            self.transport.resumeProducing()
        self._early_size = 0
        for chunk in early:
            peer.from_backend(chunk)
        if self._eof:
            peer.backend_eof()

    def readConnectionLost(self) -> None:
        if self.peer is not None:
            self.peer.backend_eof()
        elif self.pool_entry is not None and not self.pool_entry.leased:
            # Idle in the pool and the backend said goodbye: useless now.
            self.transport.loseConnection()
        else:
            self._eof = True

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        BackendProtocol.connectionLost(self, reason)
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.backend_lost()


@implementer(IHalfCloseableProtocol, IPushProducer)
class SessionFrontend(HookSubject, Protocol):
    """
    The client side of a tcp session: admission, then a lease, then bytes
    both ways until either side closes.  Once leased, it is its client
    transport's producer: a client that does not read pauses the backend
    connection's reading, and starts its send deadline.
    """

    hook_protocol = "tcp"

    #: A connected TCP transport: typed loosely, as ITransport does not
    #: declare the producer, half-close and abort methods used here.
    transport: Any

    log = Logger()

    def __init__(self, factory: "SessionFactory") -> None:
        self.factory = factory
        self.stats = factory.stats
        self._pending: "Optional[Deferred[Any]]" = None
        self._admitted = False
        self._conn: "Optional[PooledConnection[SessionBackend]]" = None
        self._backend: Any = None
        self._attached = False
        self._early: List[bytes] = []
        self._early_size = 0
        self._client_eof = False
        self._backend_eof = False
        self._outcome: Optional[str] = None
        self._gone = False
        # Set by each read and write; the idle sweep turns it into a time.
        self._active = False
        self._last_active = 0.0
        self.send_deadline: Optional[List[Any]] = None
        # For the duration histograms: when the client connected, when its
        # backend connection was leased, and whether the backend has sent
        # its first byte since.
        self._opened = 0.0
        self._leased_at = 0.0
        self._awaiting_first_byte = False

    # -- client events -------------------------------------------------------

    def connectionMade(self) -> None:
        self._last_active = self._opened = self.factory.clock.seconds()
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        self.factory.clients.add(self)
        if self.factory.hooks.specs:
            self.hook_subject()  # made now: the route hook is asked for it
        self.hook_connected()
        self._pending = d = self.factory.admission.acquire()
        d.addCallbacks(self._on_admitted, self._on_not_admitted)

    def dataReceived(self, data: bytes) -> None:
        conn = self._conn
        if conn is not None:
            self._active = True
            self.stats.bytes_upstream += len(data)
            write_through(conn.protocol.transport, data)
            return
        # Still queued: keep a little, then stop reading.
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size >= EARLY_BUFFER_LIMIT:
            self.transport.pauseProducing()

    def readConnectionLost(self) -> None:
        self._client_eof = True
        conn = self._conn
        if conn is not None:
            conn.protocol.transport.loseWriteConnection()
            if self._backend_eof:
                self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._gone = True
        self.stats.connections_open -= 1
        self.factory.clients.discard(self)
        self.factory.sends.resumed(self)
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        self._record("ok" if self._attached else "client_gone")
        # Whatever is still queued for the backend has no one to answer to, and
        # a backend that stopped reading would never let a graceful close end.
        self._end_backend(abort=True)
        self.hook_disconnected()

    # -- backend events --------------------------------------------------------

    def from_backend(self, data: bytes) -> None:
        self._active = True
        if self._awaiting_first_byte:
            self._awaiting_first_byte = False
            if self._backend is not None:
                self._backend.first_byte.observe(self.factory.clock.seconds() - self._leased_at)
        self.stats.bytes_downstream += len(data)
        write_through(self.transport, data)

    def backend_eof(self) -> None:
        self._backend_eof = True
        self.transport.loseWriteConnection()
        if self._client_eof:
            self.transport.loseConnection()

    def backend_lost(self) -> None:
        # The backend is done: free its pool slot and worker now; the client
        # transport still flushes what it holds before closing.
        self._end_backend()
        self.transport.loseConnection()

    # -- admission and lease ---------------------------------------------------

    def _on_admitted(self, _: object) -> None:
        self._admitted = True
        hooks = self.factory.hooks
        route = hooks.route
        if route is None or self.hook_client is None:
            self._lease(self.factory.cluster)
            return
        # The session's cluster, chosen once; what the client sends meanwhile
        # waits in _early, as it does while the backend connects.  A pending
        # hook is not cancelled if the client leaves (that would count as the
        # hook's error): its answer is ignored, and hook_timeout bounds it.
        self._pending = None
        route.then(HookRequest(self.hook_client, self.factory.cluster.name), self._routed, route)

    def _routed(self, result: Any, route: Hook) -> None:
        if self._gone:
            return
        cluster, why = routed_cluster(result, self.factory.routes, self.factory.cluster)
        if cluster is None:
            # tcp has no error to answer with: the client is closed.
            route.refused += 1
            if not isinstance(result, HookFailure):  # a failure is logged already
                self.factory.route_refused(why)
            self._give_up("rejected")
            return
        self._lease(cluster)

    def _lease(self, cluster: "Cluster") -> None:
        backend = cluster.pick(None)
        if backend is None:
            # Every backend is down, ejected or disabled: fail fast.
            self._give_up("backend_unavailable")
            return
        backend.begin()
        self._backend = backend
        self._pending = d = backend.pool.acquire()
        d.addCallbacks(self._on_leased, self._on_no_backend)

    def _on_not_admitted(self, failure: Failure) -> None:
        self._pending = None
        if failure.check(CancelledError):
            return
        failure.trap(Overloaded)
        self._record("rejected")
        self.transport.loseConnection()

    def _on_no_backend(self, failure: Failure) -> None:
        self._pending = None
        if failure.check(CancelledError):
            return
        if failure.check(BackendUnavailable):
            self._give_up("backend_unavailable")
        else:
            failure.trap(AcquireTimeout, PoolExhausted, PoolClosed)
            self._give_up("pool_exhausted")

    def _give_up(self, outcome: str) -> None:
        """The admitted session gets no backend: counted, its slot freed, the client closed."""
        self._record(outcome)
        self._end_backend()
        self.transport.loseConnection()

    def _on_leased(self, conn: "PooledConnection[SessionBackend]") -> None:
        self._pending = None
        if self._gone:
            conn.release()  # never used: fine for the next client
            return
        self._conn = conn
        self._attached = True
        self._leased_at = self.factory.clock.seconds()
        self._awaiting_first_byte = True
        self._active = True  # idle from now on, not from when it connected
        if self._backend is not None:
            self._backend.succeeded()
        backend: SessionBackend = conn.protocol
        backend_transport = backend.transport
        self.transport.registerProducer(self, True)
        backend_transport.registerProducer(self.transport, True)
        early, self._early = self._early, []
        for chunk in early:
            self.stats.bytes_upstream += len(chunk)
            backend_transport.write(chunk)
        if self._early_size >= EARLY_BUFFER_LIMIT:
            self.transport.resumeProducing()
        self._early_size = 0
        if self._client_eof:
            backend_transport.loseWriteConnection()
        backend.attach(self)

    # -- IPushProducer: the client transport says the client is not reading ----

    def pauseProducing(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.protocol.transport.pauseProducing()
        self.factory.sends.paused(self)

    def resumeProducing(self) -> None:
        self.factory.sends.resumed(self)
        conn = self._conn
        if conn is not None:
            conn.protocol.transport.resumeProducing()

    def stopProducing(self) -> None:
        conn = self._conn
        if conn is not None:
            conn.protocol.transport.stopProducing()

    def sent_mark(self) -> Optional[int]:
        """Grows as the client's socket takes bytes (nothing is written while paused)."""
        unsent = unsent_bytes(self.transport)
        return None if unsent is None else -unsent

    def send_timed_out(self) -> None:
        """The client took nothing for send_timeout: abort; its lease ends with it."""
        self.transport.abortConnection()

    # -- the idle sweep (poolproxy.proxy.idle) ----------------------------------

    @property
    def last_active(self) -> float:
        """
        When bytes last went either way, as the idle sweep sees it: reads
        and writes only mark the session, and the sweep that finds the mark
        takes it for the time of the activity.
        """
        if self._active:
            self._active = False
            self._last_active = self.factory.clock.seconds()
        return self._last_active

    @property
    def busy(self) -> bool:
        """Waiting for admission or a backend (their own timeouts bound that)."""
        return not self._attached

    def close_idle(self) -> None:
        """Idle past session_idle_timeout: close both sides; the lease is discarded."""
        self._end_backend()
        self.transport.loseConnection()

    # -- ending ----------------------------------------------------------------

    def finish_up(self) -> None:
        """
        The proxy is stopping: a session under way runs on (until the
        shutdown timeout); one still waiting for a backend is closed.
        """
        if not self._attached:
            self.transport.loseConnection()

    def _record(self, outcome: str) -> None:
        if self._outcome is None:
            self._outcome = outcome
            self.stats.sessions.add(outcome)
            self.stats.requests.add(outcome)
            # A session is tcp mode's request: from the client's connect to
            # its end; on the backend, from the lease to the end.
            now = self.factory.clock.seconds()
            self.stats.durations.observe(outcome, now - self._opened)
            backend = self._backend
            if backend is not None and self._attached:
                backend.durations.observe(outcome, now - self._leased_at)

    def _end_backend(self, abort: bool = False) -> None:
        """
        End the lease and give back the worker, each exactly once.
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            protocol: SessionBackend = conn.protocol
            protocol.peer = None
            conn.discard("session_end", abort)
        if self._admitted:
            self._admitted = False
            self.factory.admission.release()
        backend, self._backend = self._backend, None
        if backend is not None:
            # A client gone before its session started told the breaker nothing.
            backend.end(reported=self._attached or self._outcome != "client_gone")


class SessionFactory(Factory):
    """
    Builds a L{SessionFrontend} per client of one listener.
    """

    #: The listener's hooks and the clusters its route hook may choose, by
    #: name (set by the service; L{poolproxy.proxy.hooked}).
    hooks: ListenerHooks = NO_HOOKS
    routes: Dict[str, Any] = {}

    noisy = False

    def __init__(self, name: str, admission: Admission, cluster: "Cluster",
                 stats: Optional[ListenerStats] = None, clock: Any = None,
                 send_timeout: float = 0.0) -> None:
        """
        @param send_timeout: seconds a client may take nothing of what the
            backend sent before it is closed; 0 for no limit.
        """
        self.name = name
        self.admission = admission
        self.cluster = cluster
        self.clock = default_reactor(clock)
        self.stats = stats if stats is not None else ListenerStats()
        self.clients: "set[SessionFrontend]" = set()
        self.sends = SendTimeouts(self.clock, send_timeout, self.stats)

    def buildProtocol(self, addr: Any) -> SessionFrontend:
        return SessionFrontend(self)

    def route_refused(self, why: Optional[str]) -> None:
        """A session closed for its route hook's answer: one line per interval."""
        hooks = self.hooks
        if why is not None:
            hooks.throttled.warn((self.name, "route", "refused"),
                                 "listener {listener}: {why}; client closed",
                                 listener=self.name, why=why)
