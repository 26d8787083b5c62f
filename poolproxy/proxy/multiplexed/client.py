"""
The client side of multiplexed mode (redis, memcached, and codecs like them):
many clients share a few backend connections.

Split by connection role as twemproxy does:
  - L{MultiplexFrontend}, one per client, frames requests with the codec and
    keeps a FIFO of L{Slot}s so that replies go back in the client's own order;
  - its backend side, L{PipelineBackend} (one per backend connection) and
    L{Multiplexer} (the shared connections to one backend), is in
    L{poolproxy.proxy.multiplexed.server}; requests split across shards are in
    L{poolproxy.proxy.multiplexed.split}.

A frame flagged L{PIN} (transactions, SELECT, blocking commands...) moves the
client to a connection of its own, leased from the same pool, and only after
everything it sent on the shared connection has been answered; L{UNPIN} gives
it back once answered; L{PASSTHROUGH} turns the pinned connection into a raw
byte pipe (SUBSCRIBE).  State therefore never leaks between clients.  Which
connection a client is on is one state machine, L{Pinning} (its table is in
L{poolproxy.proxy.multiplexed.pinning}).

The hot path is one C{dataReceived} -> framer -> one write per backend, and
one C{dataReceived} -> framer -> one write per client: no Deferred, log call
or prometheus-client call per request.  Admission takes the Deferred-free fast
path while a worker is free; only a client that must queue gets a Deferred.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from poolproxy.backends.pool import PooledConnection
from poolproxy.codec import (
    AUTH_FAILED,
    BLOCKING,
    CLOSE,
    DIRTY,
    LOCAL,
    PASSTHROUGH,
    PIN,
    REFUSED,
    RETRY_SAFE,
    UNPIN,
    VARIANT,
    Frame,
    IBlockingCodec,
    ICodec,
    IShardAwareFramer,
    IShardedCodec,
    IVariantCodec,
)
from poolproxy.hooks.calling import NO_HOOKS, ListenerHooks
from poolproxy.proxy.admission import Admission, Overloaded
from poolproxy.proxy.hooked import HookSubject
from poolproxy.proxy.multiplexed.checks import RequestChecks, RoutedFrame, split_parts
from poolproxy.proxy.multiplexed.pinning import LEASING, PINNED, RAW, SHARED, UNPINNING, Pinning
from poolproxy.proxy.multiplexed.server import Multiplexer, PipelineBackend, Slot
from poolproxy.proxy.multiplexed.split import CROSS_SHARD, SplitGroup, split_by_shard
from poolproxy.proxy.output import TRANSPORT_BUFFER, OutputBudget, unsent_bytes
from poolproxy.proxy.sending import SendTimeouts
from poolproxy.stats import ListenerStats
from poolproxy.util.reactors import default_reactor
from poolproxy.util.writethrough import write_through

if TYPE_CHECKING:
    from poolproxy.backends.cluster import Cluster

# Marks the frame standing for the proxy's own error reply to a broken stream.
_PROXY_ERROR = object()
# A routing answer: no backend of the cluster is available.
_NO_BACKEND: Any = object()
#: Flags that change the client's connection state once the frame is sent.
_STATE_FLAGS = DIRTY | UNPIN | PASSTHROUGH
#: Flags that send a frame to the client's own connection.
_PINNING_FLAGS = PIN | PASSTHROUGH
#: Flags that send a frame through MultiplexFrontend._special_target.
_SPECIAL_FLAGS = VARIANT | LOCAL
#: What _special_target answers for a frame dealt with, or one that must wait.
_NEXT: Any = object()
_STOP: Any = object()


@implementer(IPushProducer, IHalfCloseableProtocol)
class MultiplexFrontend(HookSubject, Protocol):
    """
    One client connection in multiplexed mode.

    @ivar slots: replies owed to this client, in its order.
    @ivar held: frames not sent yet: waiting for admission, for a connection,
        or for earlier frames to be answered before switching connections.
    """

    #: A connected TCP transport: typed loosely, as ITransport does not
    #: declare the producer, half-close and abort methods used here.
    transport: Any

    log = Logger()

    def __init__(self, factory: "MultiplexFactory") -> None:
        self.factory = factory
        self.stats = factory.stats
        self.codec = factory.codec
        self.admission = factory.admission
        hooks = factory.hooks
        self.framer = factory.codec.request_framer(
            factory.config if hooks.authenticate is None
            else factory.hooked_config())
        self.hook_protocol = factory.codec.name
        # Its frames on their way through the hooks, once a hook needs them.
        self.checks: Optional[RequestChecks] = None
        # The backend of each other cluster a route hook sent requests to.
        self._routed_backends: "dict[Any, Any]" = {}
        # The framer, if it refuses stateful commands on a sharded cluster.
        self._shard_aware: Optional[IShardAwareFramer] = (
            IShardAwareFramer(self.framer) if IShardAwareFramer.providedBy(self.framer) else None)
        # The codec, if it names every key of a multi-key request (sharded clusters).
        self._splitter: Optional[IShardedCodec] = (
            IShardedCodec(self.codec) if IShardedCodec.providedBy(self.codec) else None)
        # The codec, if it times its BLOCKING frames (without it they wait unbounded).
        self._blocking: Optional[IBlockingCodec] = (
            IBlockingCodec(self.codec) if IBlockingCodec.providedBy(self.codec) else None)
        # The parts of split requests still held, and the group of each.
        self._split_groups: "dict[Frame, SplitGroup]" = {}
        self.slots: Deque[Slot] = deque()
        self.held: Deque[Frame] = deque()
        # The shared connection this client uses on each backend (one per
        # backend for the whole session, so its requests keep their order).
        self.shared: "dict[Any, PipelineBackend]" = {}
        self._backend: Any = None  # the cluster Backend, when not routing by key
        # Shared, leasing, pinned, unpinning, raw or ended; with the leased
        # connection, its share, whether it is dirty, and the client's variant.
        self.pin = Pinning()
        self.sent_shared = 0
        self.sent_pinned = 0
        self.touched = False
        self._waiting_on: List[Multiplexer] = []
        self._resend: Deque[Slot] = deque()
        self.retry_budget = factory.cluster.retry_budget
        self._waiting: "Optional[Deferred[Any]]" = None
        self._token = False
        self._draining = False
        self._redrain = False
        self._closing = False
        self._eof = False
        self._gone = False
        self.last_active = 0.0
        self._paused_reading = False
        self._write_blocked = False
        # While the client is not reading: bytes written to it since (what
        # its socket may hold, when the transport cannot say), and this
        # client's share of the proxy-wide OutputBudget.held.
        self._written_blocked = 0
        self._output_counted = 0
        # While it is not reading: its send_timeout (poolproxy.proxy.sending).
        self.send_deadline: Optional[List[Any]] = None

    # -- client events -------------------------------------------------------

    def connectionMade(self) -> None:
        self.stats.connections_total += 1
        self.stats.connections_open += 1
        self.factory.clients.add(self)
        self.last_active = self.factory.clock.seconds()
        # A client that does not read its replies stops being read.
        self.transport.registerProducer(self, True)
        if getattr(self.framer, "credentials", None) is not None:
            # Its credentials are the authenticate hook's to decide, with or
            # without hooks after a reload: its frames always pass the checks.
            self.checks = RequestChecks(self)
        self.hook_connected()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.last_active = self.factory.clock.seconds()
        framer = self.framer
        shard_aware = self._shard_aware
        if shard_aware is not None:
            shard_aware.sharded = self.factory.cluster.sharded
        frames = framer.feed(data)
        if framer.error is not None:
            error = framer.error
            frames = frames + [Frame(b"", flags=LOCAL | CLOSE, expect=_PROXY_ERROR,
                                     reply=self.codec.error_reply(error.kind, error.message))]
            self.stats.requests.add(error.kind)
        if frames:
            if self.checks is not None or self.factory.hooks.checks_requests:
                self._check(frames)
            else:
                self.held.extend(frames)
        if self.held:
            self._drain()

    def _check(self, frames: List[Frame]) -> None:
        """Frames through the listener's hooks (checks), in order, before they are held."""
        checks = self.checks
        if checks is None:
            checks = self.checks = RequestChecks(self)
        checks.feed(frames)
        if checks.waiting:
            self._update_reading()

    def readConnectionLost(self) -> None:
        # The client has said all it will (e.g. "printf 'GET k\n' | nc -N"):
        # answer what it sent, then close.  A raw pipe or a blocked command
        # would wait for ever (Twisted no longer reads the socket, so a peer
        # gone since would go unnoticed): they end now, as redis ends a
        # client at EOF.
        self._eof = True
        if self._endless():
            self.transport.loseConnection()
            return
        self._close_if_done()

    def _endless(self) -> bool:
        """Whether what runs now has no end of its own: a raw pipe, a blocked command."""
        pin = self.pin
        return pin.state is RAW or (pin.conn is not None and pin.conn.protocol.blocking)

    def writeConnectionLost(self) -> None:
        pass

    @property
    def busy(self) -> bool:
        """Requests in flight or waiting (for the idle sweep)."""
        return (bool(self.slots or self.held or self._resend) or self.pin.state is RAW
                or (self.checks is not None and self.checks.busy))

    def close_idle(self) -> None:
        self.transport.loseConnection()

    def finish_up(self) -> None:
        """
        The proxy is stopping: read nothing more, answer what was asked,
        then close.
        """
        self._eof = True
        if not self._paused_reading:
            self._paused_reading = True
            self.transport.pauseProducing()
        self._close_if_done()

    def _close_if_done(self) -> None:
        if (not self.slots and not self.held and not self._gone
                and (self.checks is None or not self.checks.busy)):
            self.transport.loseConnection()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self._gone = True
        self._release_output()
        self.stats.connections_open -= 1
        self.factory.clients.discard(self)
        self.factory.sends.resumed(self)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.cancel()
        if self._token:
            self._token = False
            self.admission.release()
        for slot in self.slots:
            if slot.response is None:
                slot.client = None
                self.stats.requests.add("client_gone")
        self.slots.clear()
        if self._resend:
            # Owed by no backend any more: their admission tokens come back here.
            self.admission.release(len(self._resend))
            self._resend.clear()
        self.held.clear()
        for multiplexer in self._waiting_on:
            multiplexer.forget(self)
        if self.checks is not None:
            self.checks.waiting.clear()
        self.hook_disconnected()
        pinned, share, _ = self.pin.end()
        if pinned is not None:
            backend: PipelineBackend = pinned.protocol
            backend.passthrough_to = None
            backend.owner = None
            # Its state (a transaction, a database, a blocked command) is
            # this client's: never hand it to anyone else.
            self._end_pinned(pinned, share, "session_end", abort=True)

    # -- IPushProducer: our transport says the client is not reading ----------

    def pauseProducing(self) -> None:
        self._write_blocked = True
        self._written_blocked = 0
        self.factory.sends.paused(self)
        self._update_reading()
        if self.pin.state is RAW:
            self.pin.conn.protocol.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        self._write_blocked = False
        self.factory.sends.resumed(self)
        self._release_output()  # its socket has taken everything
        self._update_reading()
        if self.pin.state is RAW:
            self.pin.conn.protocol.transport.resumeProducing()  # type: ignore[union-attr]

    def stopProducing(self) -> None:
        pass

    def _update_reading(self) -> None:
        limit = self.factory.max_pipeline
        block = self._write_blocked or len(self.held) > limit or len(self.slots) > limit
        if self.checks is not None and len(self.checks.waiting) > limit:
            block = True
        if block and not self._paused_reading:
            self._paused_reading = True
            self.transport.pauseProducing()
        elif not block and self._paused_reading and not self._closing:
            self._paused_reading = False
            self.transport.resumeProducing()

    # -- sending frames --------------------------------------------------------

    def _drain(self) -> None:
        """
        Send held frames, in order, as far as admission and connections allow.
        """
        if self._draining:
            self._redrain = True
            return
        self._draining = True
        try:
            while True:
                self._redrain = False
                self._drain_once()
                if not self._redrain:
                    break
        finally:
            self._draining = False
        self._update_reading()

    def resend(self, slots: List[Slot]) -> None:
        """
        Requests whose shared connection died before any byte of their reply
        came: send them again, ahead of anything newer, into the same slots.
        """
        self._resend.extend(slots)
        self._drain()

    def _drain_resend(self) -> bool:
        """Resend what is waiting to be; False if it must wait for a connection."""
        queue = self._resend
        while queue and not self._gone:
            slot = queue[0]
            frame: Frame = slot.frame  # type: ignore[assignment]
            target = self._shared_target(frame)
            if target is None:
                return False
            if target is _NO_BACKEND:
                self._fail_resend("no backend is available")
                continue
            queue.popleft()
            slot.retried = True
            target.owe(slot, frame)
            if target.cluster_backend is not None:
                target.cluster_backend.outstanding += 1
            target.transport.write(frame.data)
        self.answered_if_ready()
        return True

    def _fail_resend(self, why: str) -> None:
        """The oldest request waiting to be resent cannot be: it gets the error."""
        slot = self._resend.popleft()
        slot.response = self.codec.error_reply("unavailable", why)
        self.sent_shared -= 1
        self.admission.release()
        self.stats.requests.add("backend_unavailable")

    def answered_if_ready(self) -> None:
        if self.slots and self.slots[0].response is not None:
            self.answered()

    def _drain_once(self) -> None:
        """
        Send held frames in order: each goes on the client's shared
        connection to its backend (the common path, read straight down),
        unless its flags or the client's L{Pinning} state send it through
        L{_special_target}: a variant switch, a local reply, the client's
        own connection; or it is split across shards (L{_split}).
        """
        if self._resend and not self._drain_resend():
            return
        pin = self.pin
        if pin.state is RAW:
            self._drain_raw()
            return
        held = self.held
        admission = self.admission
        out: List[bytes] = []
        out_to: Optional[PipelineBackend] = None
        sent = 0
        # Without key routing every shared frame of this pass goes to the
        # same connection: look it up once, not per frame.
        reuse_shared = not self.factory.by_key and (self.checks is None or not self.checks.routed)
        splitter = self._splitter if not reuse_shared else None
        shared = None
        try:
            while held and not self._gone:
                frame = held[0]
                flags = frame.flags
                pinned = bool(flags & _PINNING_FLAGS) or pin.state is not SHARED
                if pinned or flags & _SPECIAL_FLAGS:
                    shared = None
                    target = self._special_target(frame, flags, splitter)
                    if target is _STOP:
                        return
                    if target is _NEXT:
                        continue
                    pinned = pin.state is PINNED
                elif (splitter is not None and frame not in self._split_groups
                      and self._split(frame, splitter)):
                    continue  # answered, or its parts now stand in its place
                elif shared is not None and shared.alive:
                    target = shared
                else:
                    target = self._shared_target(frame)
                    if target is None:
                        return
                    if target is _NO_BACKEND:
                        self._no_backend(frame)
                        continue
                    if reuse_shared:
                        shared = target
                if flags & PASSTHROUGH:
                    if out:
                        out_to.transport.write(b"".join(out))  # type: ignore[union-attr]
                        out = []
                    self._begin_raw(frame, target)
                    return
                if self._token:
                    self._token = False
                elif not admission.try_acquire():
                    self._wait_for_admission()
                    return
                held.popleft()
                if target is not out_to:
                    if out:
                        out_to.transport.write(b"".join(out))  # type: ignore[union-attr]
                        out = []
                    out_to = target
                out.append(frame.data)
                cluster_backend = target.cluster_backend
                if cluster_backend is not None:
                    if cluster_backend.claim():
                        shared = None  # a breaker's trial: route the next frame afresh
                    if frame.replies:
                        cluster_backend.outstanding += 1
                sent += 1
                if frame.replies:
                    slot = Slot(self, None, pinned, frame if flags & RETRY_SAFE else None,
                                self._split_groups.pop(frame, None) if self._split_groups
                                else None, self.last_active)
                    self.slots.append(slot)
                    if flags & BLOCKING:
                        self._blocking_sent(frame, target)
                    target.owe(slot, frame)
                    if pinned:
                        self.sent_pinned += 1
                    else:
                        self.sent_shared += 1
                else:
                    admission.release()
                    self.stats.requests_ok += 1
                if flags & _STATE_FLAGS and pinned:
                    if flags & DIRTY:
                        pin.mark_dirty()
                    if flags & UNPIN:
                        pin.unpin()
        finally:
            if out:
                out_to.transport.write(b"".join(out))  # type: ignore[union-attr]
            if sent:
                budget = self.retry_budget
                if budget is not None:
                    budget.deposit(sent)

    # -- the rare branches of _drain_once -------------------------------------

    def _special_target(self, frame: Frame, flags: int,
                        splitter: Optional[IShardedCodec]) -> Any:
        """
        Where a frame goes that is not plainly for the shared connection: a
        connection (the client's own, or shared after a variant switch),
        L{_NEXT} if it was dealt with here (answered, split), or L{_STOP}
        if it must wait (for earlier replies, a lease, a connection).
        """
        pin = self.pin
        if flags & VARIANT and frame.expect != pin.variant:
            if not self._switch_variant(frame, flags):
                return _STOP  # the replies owed on the old variant first
        if flags & LOCAL:
            self.held.popleft()
            self._answer_local(frame, flags)
            if self._closing:
                self.held.clear()
                return _STOP
            return _NEXT
        if pin.state is UNPINNING:
            return _STOP  # wait for the UNPIN reply before choosing a connection
        if (splitter is not None and frame not in self._split_groups
                and self._split(frame, splitter)):
            return _NEXT
        if flags & _PINNING_FLAGS or pin.state is not SHARED:
            target = self._pinned_target(frame)
        else:
            target = self._shared_target(frame)
        if target is None:
            return _STOP
        if target is _NO_BACKEND:
            self._no_backend(frame)
            return _NEXT
        return target

    def _no_backend(self, frame: Frame) -> None:
        self.held.popleft()
        self.stats.requests.add("backend_unavailable")
        self._answer_locally(self.codec.error_reply("unavailable", "no backend is available"),
                             False, frame)

    def _begin_raw(self, frame: Frame, target: PipelineBackend) -> None:
        """A PASSTHROUGH frame: once every earlier reply is in, the pipe is raw."""
        if self.slots or self.sent_pinned:
            return
        self.held.popleft()
        self._start_passthrough(frame, target)
        self._drain_raw()

    def _blocking_sent(self, frame: Frame, target: PipelineBackend) -> None:
        """A blocking command: timed by its own timeout; sent after EOF, nobody waits."""
        target.await_block(self._wait_time(frame))
        if self._eof:
            self.transport.loseConnection()

    def _switch_variant(self, frame: Frame, flags: int) -> bool:
        """
        A frame that needs another connection variant (RESP3): False while
        the replies owed on the old one are still coming.
        """
        pin = self.pin
        if pin.conn is None and not flags & PIN:
            if self.sent_shared:
                return False
            self.shared.clear()
        elif frame.expect is not None:
            pin.mark_dirty()  # it leaves the pool's variant
        pin.variant = frame.expect
        return True

    def _answer_local(self, frame: Frame, flags: int) -> None:
        """A frame the proxy answers itself (QUIT, AUTH, a refused command...)."""
        if flags & REFUSED:
            self.stats.requests.add("refused")
            if frame.key is not None:  # the command policy's; a hook's has no key
                self.stats.commands_refused.add(frame.key.decode("ascii", "replace"))
        elif flags & AUTH_FAILED:
            self.stats.requests.add("local")
            self.stats.auth_failures += 1
        elif frame.expect is not _PROXY_ERROR:
            self.stats.requests.add("local")
        self._answer_locally(frame.reply, flags & CLOSE)

    def _split(self, frame: Frame, splitter: IShardedCodec) -> bool:
        """
        A frame whose keys may live on several backends: True if it was
        answered (it cannot be split) or its parts took its place.
        """
        cluster = frame.cluster if isinstance(frame, RoutedFrame) else self.factory.cluster
        if not cluster.sharded:
            return False
        split = split_by_shard(splitter, cluster.pick, frame)
        if split is None:
            return False
        self.held.popleft()
        if split is CROSS_SHARD:
            self.stats.requests.add("cross_shard")
            self._answer_locally(self.codec.error_reply(
                "crossslot", "keys in request don't hash to the same backend"), False)
            return True
        # Its parts take its place, each routed by its own keys.
        parts, merge = split
        parts = split_parts(parts, frame)
        group = SplitGroup(len(parts), merge)
        for part in reversed(parts):
            self.held.appendleft(part)
            self._split_groups[part] = group
        return True

    def _wait_time(self, frame: Frame) -> Optional[float]:
        """How long a BLOCKING frame may wait by its own arguments (None: no limit)."""
        blocking = self._blocking
        return blocking.wait_time(frame) if blocking is not None else None

    def _drain_raw(self) -> None:
        """
        A raw pipe (after SUBSCRIBE, MONITOR...): frames go to the pinned
        connection as they come, answered by whatever the backend sends;
        what the proxy answers itself (QUIT, AUTH) still is.
        """
        held = self.held
        pinned = self.pin.conn
        if pinned is None:
            return
        out: List[bytes] = []
        while held and not self._gone:
            frame = held.popleft()
            if frame.flags & LOCAL:
                if out:
                    write_through(pinned.protocol.transport, b"".join(out))
                    out = []
                self._answer_local(frame, frame.flags)
                if self._closing:
                    held.clear()
                    return
                continue
            out.append(frame.data)
            self.stats.requests_ok += 1
        if out:
            write_through(pinned.protocol.transport, b"".join(out))
        if self._eof:
            self.transport.loseConnection()  # the pipe began after EOF

    def _route(self, frame: Frame) -> Any:
        """The cluster Backend for C{frame}, or L{None} if none is available."""
        factory = self.factory
        if frame.__class__ is RoutedFrame:
            return self._route_to(frame.cluster, frame)
        if factory.by_key:
            return factory.cluster.pick(frame.key)
        backend = self._backend
        if backend is None or not backend.available:
            backend = self._backend = factory.cluster.pick(None)
        return backend

    def _route_to(self, cluster: "Cluster", frame: Frame) -> Any:
        """A backend of another cluster, which a route hook chose for C{frame}."""
        if cluster.sharded:
            return cluster.pick(frame.key)
        backend = self._routed_backends.get(cluster)
        if backend is None or not backend.available:
            backend = self._routed_backends[cluster] = cluster.pick(None)
        return backend

    def _shared_target(self, frame: Frame) -> Any:
        if self.sent_pinned or self.pin.state is not SHARED:
            return None  # still answering on the pinned connection
        backend = self._route(frame)
        if backend is None:
            return _NO_BACKEND
        connection = self.shared.get(backend)
        if connection is not None and connection.alive:
            return connection
        # The mode gave every backend its Multiplexer (poolproxy.proxy.modes).
        multiplexer = cast(Multiplexer, backend.shared).for_variant(self.pin.variant)
        connection = multiplexer.pick(self)
        if connection is None:
            if multiplexer not in self._waiting_on:
                self._waiting_on.append(multiplexer)
            return None
        self.shared[backend] = connection
        return connection

    def _pinned_target(self, frame: Frame) -> Any:
        pin = self.pin
        if pin.state is PINNED:
            return pin.conn.protocol  # type: ignore[union-attr]
        if pin.state is LEASING or self.sent_shared or self._waiting is not None:
            return None  # earlier frames first, or a lease is on its way
        backend = self._route(frame)
        if backend is None:
            return _NO_BACKEND
        # Within the backend's pinned share (the mode gave it its Multiplexer).
        share = cast(Multiplexer, backend.shared)
        self._waiting = d = share.lease_pinned()
        pin.lease(share)  # before the callbacks: the lease may be ready now
        d.addCallbacks(self._pinned_ready, self._lease_failed)
        return None

    def _end_pinned(self, conn: PooledConnection, share: Optional[Multiplexer],
                    reason: Optional[str] = None, abort: bool = False) -> None:
        """
        End a pinned lease: released (C{reason} None) or discarded; its place
        in C{share}, the backend's pinned share, goes to the next session
        waiting.
        """
        if reason is None:
            conn.release()
        else:
            conn.discard(reason, abort=abort)
        if share is not None:
            share.pinned_ended()

    def _pinned_ready(self, conn: PooledConnection, switched: bool = False) -> None:
        self._waiting = None
        backend: PipelineBackend = conn.protocol
        pin = self.pin
        if self._gone or not backend.alive:
            self._end_pinned(conn, pin.lease_failed(), "session_end", abort=True)
            if not self._gone:
                self._no_pinned(Failure(ConnectionError("backend connection lost")))
            return
        if pin.variant is not None and not switched:
            # Pooled connections speak the pool's variant: switch this one, and
            # never give it back to the pool afterwards.
            pin.mark_dirty()
            setup = IVariantCodec(self.codec).variant_setup(self.factory.config, pin.variant)
            def on_switched(_: object) -> None:
                self._pinned_ready(conn, switched=True)

            def not_switched(failure: Failure) -> None:
                self._waiting = None
                self._end_pinned(conn, pin.lease_failed(), "setup_failed", abort=True)
                self._no_pinned(failure)

            self._waiting = d = backend.switch(setup)
            d.addCallbacks(on_switched, not_switched)
            return
        pin.leased(conn)
        backend.owner = self
        self._drain()

    def _lease_failed(self, failure: Failure) -> None:
        """No lease came: its place in the pinned share is back already."""
        self._waiting = None
        self.pin.lease_failed()
        self._no_pinned(failure)

    def _no_pinned(self, failure: Failure) -> None:
        if failure.check(CancelledError) or self._gone:
            return
        # Without its own connection the client's state (a transaction) is
        # gone: answer what is held with errors and close.
        self.stats.requests.add("backend_unavailable")
        self._break_session(self.codec.error_reply("unavailable", failure.getErrorMessage()))

    def pinned_lost(self) -> None:
        """
        The pinned connection died: its state (a transaction, a database, a
        subscription) is gone, so this client's session cannot go on.
        """
        pinned, share, _ = self.pin.lost()
        if pinned is not None:
            self._end_pinned(pinned, share)  # dead: the pool only frees the slot
        if not self._gone:
            self._break_session(self.codec.error_reply("unavailable",
                                                       "pinned backend connection lost"))

    def _break_session(self, reply: bytes) -> None:
        held, self.held = self.held, deque()
        for frame in held:
            if frame.replies or frame.flags & LOCAL:
                self.slots.append(Slot(self, reply))
        self._closing = True
        self.answered()

    def shared_ready(self, multiplexer: "Multiplexer") -> None:
        if multiplexer in self._waiting_on:
            self._waiting_on.remove(multiplexer)
        if not self._gone:
            self._drain()

    def shared_failed(self, multiplexer: "Multiplexer", why: str) -> None:
        """No shared connection could be had: the first held frame fails."""
        if multiplexer in self._waiting_on:
            self._waiting_on.remove(multiplexer)
        if self._gone:
            return
        if self._resend:
            # A resend was what waited: it fails, not the next new frame.
            self._fail_resend(why)
            self.answered_if_ready()
        elif self.held:
            self.held.popleft()
            self.stats.requests.add("backend_unavailable")
            self._answer_locally(self.codec.error_reply("unavailable", why), False)
        self._drain()

    def _wait_for_admission(self) -> None:
        if self._waiting is not None:
            return
        self._waiting = d = self.admission.acquire()
        d.addCallbacks(self._admitted, self._not_admitted)

    def _admitted(self, _: object) -> None:
        self._waiting = None
        if self._gone:
            self.admission.release()
            return
        self._token = True
        self._drain()

    def _not_admitted(self, failure: Failure) -> None:
        self._waiting = None
        if failure.check(CancelledError) or self._gone:
            return
        failure.trap(Overloaded)
        if self.held:
            frame = self.held.popleft()
            self.stats.requests.add("rejected")
            self._answer_locally(self.codec.error_reply("overloaded", failure.value.reason), False,
                                 frame)
        self._drain()

    def _start_passthrough(self, frame: Frame, backend: PipelineBackend) -> None:
        """
        From C{frame} on, the client's pinned connection is a raw pipe: the
        backend answers as it likes (confirmations, messages), nothing is
        owed, no request timeout runs.  Every earlier reply is in.
        """
        self.pin.raw()
        backend.passthrough_to = self
        if self._token:  # admitted for a request that now owes nothing
            self._token = False
            self.admission.release()
        cluster_backend = backend.cluster_backend
        if cluster_backend is not None:
            cluster_backend.claim()
        self.stats.requests_ok += 1
        write_through(backend.transport, frame.data)

    # -- replies ---------------------------------------------------------------

    def _answer_locally(self, reply: bytes, close: int, frame: Optional[Frame] = None) -> None:
        if reply:
            # A part of a split request keeps its place in the group.
            group = self._split_groups.pop(frame, None) if frame is not None else None
            self.slots.append(Slot(self, reply, group=group))
        if close:
            self._closing = True
        self.answered()

    def answered(self) -> None:
        """
        Some slots got their replies: write every one now at the head of the
        FIFO in one go, give back a pinned connection whose state is clear, and
        send what was waiting.
        """
        if self._gone:
            return
        slots = self.slots
        out: List[bytes] = []
        while slots and slots[0].response is not None:
            group = slots[0].group
            if group is None:
                out.append(slots.popleft().response)  # type: ignore[arg-type]
                continue
            # A split request: its parts' replies, merged, once all are in.
            n = group.parts
            if len(slots) < n or any(slots[i].response is None for i in range(n)):
                break
            replies = [slots.popleft().response for _ in range(n)]
            out.append(group.merge(replies))  # type: ignore[arg-type]
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            write_through(self.transport, data)
            if self._write_blocked:
                self._check_output(len(data), max(map(len, out)))
                if self._gone:
                    return
        if self.pin.state is UNPINNING and not self.sent_pinned:
            pinned, share, dirty = self.pin.release()
            if pinned is not None:
                pinned.protocol.owner = None
                # Dirty: e.g. RESET dropped its AUTH; otherwise its state is clear again.
                self._end_pinned(pinned, share, "setup_lost" if dirty else None)
        if self._closing:
            if not slots:
                self.transport.loseConnection()
            return
        if self.held:
            self._drain()
        elif self._paused_reading:
            self._update_reading()
        if self._eof:
            self._close_if_done()

    def from_backend_raw(self, data: bytes) -> None:
        # A raw pipe's backend connection is the client's own: it is paused
        # with the client (pauseProducing), so at most a read more comes.
        write_through(self.transport, data)

    # -- output limits (proxy.output) -----------------------------------------

    def _check_output(self, written: int, latest: int) -> None:
        """
        Replies of C{written} bytes, the largest C{latest}, were written
        while the client is not reading: close it if what it holds is past
        its limit or its share of the proxy's.
        """
        self._written_blocked += written
        held = unsent_bytes(self.transport)
        if held is None:
            # Not a transport that says: everything written since it filled.
            held = TRANSPORT_BUFFER + self._written_blocked
        budget = self.factory.output
        budget.held += held - self._output_counted
        self._output_counted = held
        if budget.held > budget.peak:
            budget.peak = budget.held
        limit = budget.verdict(held, held - latest)
        if limit is not None:
            self._close_for_output(limit, held)

    def _release_output(self) -> None:
        counted, self._output_counted = self._output_counted, 0
        self.factory.output.held -= counted
        self._written_blocked = 0

    def sent_mark(self) -> Optional[int]:
        """Grows as the client's socket takes bytes (see L{poolproxy.proxy.sending})."""
        unsent = unsent_bytes(self.transport)
        return None if unsent is None else self._written_blocked - unsent

    def send_timed_out(self) -> None:
        """Its socket took nothing for send_timeout: abort it, as for an output limit."""
        self._gone = True  # nothing more is written to it
        self._release_output()
        self.transport.abortConnection()

    def _close_for_output(self, limit: str, held: int) -> None:
        """
        Close a client holding too much: aborted (it is not reading), and
        counted by the limit it broke; the log sums them per interval.
        """
        self.stats.output_closed.add(limit)
        self._gone = True  # nothing more is written to it
        self._release_output()
        self.transport.abortConnection()


class MultiplexFactory(Factory):
    """
    Builds a L{MultiplexFrontend} per client of one listener.  Each backend
    of C{cluster} has its L{Multiplexer} as its C{shared} connections.

    @ivar by_key: route each frame by its key (consistent hashing over more
        than one backend); otherwise a client keeps one backend.
    """

    #: The listener's hooks and the clusters its route hook may choose, by
    #: name (set by the service; L{poolproxy.proxy.hooked}).
    hooks: ListenerHooks = NO_HOOKS
    routes: Dict[str, Any] = {}

    noisy = False

    def __init__(self, name: str, codec: ICodec, config: Any, admission: Admission,
                 cluster: "Cluster", stats: Optional[ListenerStats] = None,
                 clock: Any = None, output: Optional[OutputBudget] = None,
                 max_pipeline: int = 1024, send_timeout: float = 0.0) -> None:
        """
        @param output: the process's output limits (L{poolproxy.proxy.output}).
        @param max_pipeline: requests a client may have waiting or owed
            before the proxy stops reading from it.
        @param send_timeout: seconds a client may take nothing of its
            replies before it is closed; 0 for no limit.
        """
        clock = default_reactor(clock)
        self.output = output if output is not None else OutputBudget()
        self.max_pipeline = max_pipeline
        self.name = name
        self.codec = codec
        self.config = config
        self.admission = admission
        self.cluster = cluster
        self.clock = clock
        self.stats = stats if stats is not None else ListenerStats()
        self.clients: "set[MultiplexFrontend]" = set()
        self.sends = SendTimeouts(clock, send_timeout, self.stats)
        self._hooked_config: Any = None

    @property
    def by_key(self) -> bool:
        # Read per pass, not cached here: a reload may add backends to the cluster.
        return self.cluster.sharded

    def hooked_config(self) -> Any:
        """The codec options for a framer whose credentials the authenticate hook decides on."""
        config = self._hooked_config
        if config is None:
            config = self._hooked_config = replace(self.config, authenticate_hook=True)
        return config

    def buildProtocol(self, addr: Any) -> MultiplexFrontend:
        return MultiplexFrontend(self)
