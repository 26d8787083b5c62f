"""
The backend side of multiplexed mode.

  - L{PipelineBackend}, one per backend connection (shared or pinned), keeps
    the FIFO of L{Slot}s it owes, cuts responses with the codec's response
    framer and fills the oldest slot with each;
  - L{Multiplexer}, one per backend, holds the shared connections leased
    from the backend's pool and assigns each client one of them for its
    whole session, so that one client's requests to one backend are never
    reordered.

Its client side is L{poolproxy.proxy.multiplexed.client}.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, List, Optional

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from poolproxy.backends.pool import (AcquireTimeout, BackendPool, BackendProtocol,
                                     PooledConnection, PoolExhausted)
from poolproxy.codec import Frame, IBoundedFramer, ICodec, IUnsolicitedFramer
from poolproxy.proxy.admission import Admission
from poolproxy.proxy.multiplexed.split import SplitGroup
from poolproxy.stats import Histogram
from poolproxy.util.reactors import default_reactor

if TYPE_CHECKING:
    from poolproxy.proxy.multiplexed.client import MultiplexFrontend


class SetupFailed(Exception):
    """A backend rejected the connection setup (AUTH, SELECT...)."""


class Slot:
    """
    One reply owed to a client.

    @ivar client: the L{MultiplexFrontend}, or L{None} once it has gone (the
        late response is then read and dropped, never handed to anyone else).
    @ivar response: the reply bytes, once known.
    @ivar pinned: whether it was sent on the client's pinned connection.
    @ivar frame: the frame, if it is L{RETRY_SAFE}; C{retried}: sent twice.
    @ivar started: when the read that brought its request was (the client's
        C{last_active}: no clock read of its own), for the duration histograms.
    """

    __slots__ = ("client", "response", "pinned", "frame", "retried", "group", "started")

    def __init__(self, client: "Optional[MultiplexFrontend]", response: Optional[bytes] = None,
                 pinned: bool = False, frame: Optional[Frame] = None,
                 group: "Optional[SplitGroup]" = None, started: float = 0.0) -> None:
        self.client = client
        self.response = response
        self.pinned = pinned
        self.frame = frame  # kept only for frames that are safe to send again
        self.retried = False
        self.group = group  # the request this is a part of, when it was split
        self.started = started


def _count_run(stats: Any, run: int, took: float, backend_ok: Optional[Histogram]) -> None:
    """
    C{run} replies answered, each C{took} seconds after its request was read:
    counted for the listener (C{stats}) and in the backend's histogram, which
    shares the listener's bounds (one bisect for both).
    """
    stats.requests_ok += run
    hist = stats.duration_ok
    bucket = bisect_left(hist.bounds, took)
    hist.counts[bucket] += run
    hist.total += took * run
    if backend_ok is not None:
        backend_ok.counts[bucket] += run
        backend_ok.total += took * run


class PipelineBackend(BackendProtocol):
    """
    One backend connection in multiplexed mode, shared or pinned.

    @ivar pending: slots owed by this connection, oldest first.
    @ivar alive: whether frames may still be sent on it.
    """

    log = Logger()

    def __init__(self, codec: ICodec, setup: List[Frame], admission: Admission,
                 cluster_backend: Any = None, clock: Any = None,
                 request_timeout: float = 0.0, max_reply_size: Optional[int] = None) -> None:
        self.codec = codec
        self.cluster_backend = cluster_backend
        self.clock = default_reactor(clock)
        self.request_timeout = request_timeout
        self._timer: Any = None
        self._progress = 0.0  # when the oldest reply owed was sent, or last came in
        # A blocking command is owed (await_block): the seconds its own
        # timeout adds to request_timeout, or None for no limit at all.
        self._blocking = False
        self._grace: Optional[float] = 0.0
        self.framer = codec.response_framer()
        if IBoundedFramer.providedBy(self.framer):
            self.framer.max_reply_size = max_reply_size
            if cluster_backend is not None:
                self.framer.on_too_large = self._too_large
        # The framer, if it sets apart what the backend sends unasked (RESP3 pushes).
        self._unasked: Optional[IUnsolicitedFramer] = (
            IUnsolicitedFramer(self.framer) if IUnsolicitedFramer.providedBy(self.framer)
            else None)
        self.needs_expect = bool(self.framer.needs_expect)
        self.admission = admission
        self.pending: Deque[Slot] = deque()
        self.alive = False
        self.passthrough_to: "Optional[MultiplexFrontend]" = None
        self.multiplexer: "Optional[Multiplexer]" = None
        self.owner: "Optional[MultiplexFrontend]" = None  # while pinned to a client
        self._setup = list(setup)
        self._ready: "Optional[Deferred[PipelineBackend]]" = None

    # -- setup ---------------------------------------------------------------

    def connectionMade(self) -> None:
        if not self._setup:
            self.alive = True
            return
        self._send_setup()

    def _send_setup(self) -> None:
        """Send the setup frames; client frames wait for their replies."""
        for frame in self._setup:
            if frame.replies and self.needs_expect:
                self.framer.expect(frame.expect)
        self.transport.write(b"".join(frame.data for frame in self._setup))

    def when_ready(self) -> "Optional[Deferred[PipelineBackend]]":
        """
        L{None} if usable now, else a L{Deferred} firing once the backend has
        answered every setup frame (cancelling it aborts the connection).
        """
        if self.alive:
            return None
        self._ready = Deferred(self._cancel_setup)
        return self._ready

    def switch(self, frames: List[Frame]) -> "Deferred[PipelineBackend]":
        """
        Switch this connection to another variant (e.g. RESP3) with setup
        frames: no client frame may use it until the returned Deferred fires.
        """
        self.alive = False
        self._setup = list(frames)
        self._send_setup()
        self._ready = Deferred(self._cancel_setup)
        return self._ready

    def _cancel_setup(self, ready: "Deferred[PipelineBackend]") -> None:
        self._ready = None
        self.transport.abortConnection()

    def _setup_answered(self, responses: List[bytes]) -> List[bytes]:
        while responses and self._setup:
            frame = self._setup.pop(0)
            why = self.codec.check_setup_reply(frame, responses.pop(0))
            if why is not None:
                self._setup_failed(why)
                return []
        if not self._setup:
            self.alive = True
            ready, self._ready = self._ready, None
            if ready is not None:
                ready.callback(self)
        return responses

    def _setup_failed(self, why: str) -> None:
        self._setup = []
        ready, self._ready = self._ready, None
        self.transport.abortConnection()
        if ready is not None:
            ready.errback(SetupFailed(f"setup failed: {why}"))

    # -- sending -------------------------------------------------------------

    def owe(self, slot: Slot, frame: Frame) -> None:
        """Record that C{frame}, about to be written, owes C{slot} a reply."""
        pending = self.pending
        if not pending and self.request_timeout:
            self._progress = self.clock.seconds()
            if self._timer is None:
                self._timer = self.clock.callLater(self.request_timeout, self._check_timeout)
        pending.append(slot)
        if self.needs_expect:
            self.framer.expect(frame.expect)

    @property
    def blocking(self) -> bool:
        """Whether a blocking command is owed (L{await_block})."""
        return self._blocking

    def await_block(self, wait: Optional[float]) -> None:
        """
        The frame about to be owed blocks at the backend (BLOCKING) for up to
        C{wait} seconds by its own timeout (L{None}: with no limit): until
        the connection owes nothing, replies are due within C{wait} plus
        request_timeout, and one that is late is the client's wait ending,
        not a failure of the backend.  Only on a connection pinned to one
        client, so no other client's reply waits that long.
        """
        grace = self._grace
        self._blocking = True
        self._grace = None if wait is None or grace is None else max(grace, wait)

    def _check_timeout(self) -> None:
        # One timer per connection, re-armed only when replies keep coming:
        # the oldest reply owed must arrive within request_timeout (plus a
        # blocking command's own wait).
        self._timer = None
        if not self.pending or not self.alive:
            return
        limit = self.request_timeout
        if self._blocking:
            if self._grace is None:
                return  # BLPOP k 0: waits as long as the client does
            limit += self._grace
        late = self.clock.seconds() - self._progress
        if late < limit:
            self._timer = self.clock.callLater(limit - late, self._check_timeout)
            return
        if self._blocking:
            self._fail(f"no reply within the command's own timeout and {self.request_timeout:g}s",
                       kind="timeout", count=False)
            return
        self.log.warn("backend {backend}: no reply within {timeout}s; closing the connection",
                      backend=self._name(), timeout=self.request_timeout)
        self._fail(f"backend timed out after {self.request_timeout:g}s", kind="timeout")

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- receiving -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        raw = self.passthrough_to
        if raw is not None:
            raw.from_backend_raw(data)
            return
        framer = self.framer
        responses = framer.feed(data)
        unasked = self._unasked
        if unasked is not None and unasked.unsolicited:
            self._unsolicited(unasked)
        if self._setup and responses:
            responses = self._setup_answered(responses)
        if responses:
            self._answer(responses)
        if framer.error is not None:
            self.log.warn("backend {backend} sent a malformed response: {why}",
                          backend=self._name(), why=self.framer.error.message)
            self._fail("malformed response from backend")

    def _answer(self, responses: List[bytes]) -> None:
        pending = self.pending
        if len(responses) > len(pending):
            # More answers than questions: the stream is out of step, so none
            # of these replies can be trusted to be its slot's.  Better to
            # fail every request on the connection than hand a reply to a
            # client that did not ask for it.
            self.log.warn("backend {backend} sent {n} replies no request was owed; closing "
                          "the connection", backend=self._name(), n=len(responses) - len(pending))
            self._fail("the backend's replies and requests disagree")
            return
        touched = []
        backend = self.cluster_backend
        # One clock read per batch of replies: each reply is written to its
        # client before this call returns (answered(), below).
        now = self.clock.seconds()
        # Replies are counted by runs: consecutive replies of one listener
        # read at the same moment (a pipeline's, or clients' read in one
        # tick) took the same time, so a run costs one _count_run (a bisect
        # and an addition per histogram) whatever its length; a reply, an
        # identity test, a comparison and an increment.
        backend_ok = backend.duration_ok if backend is not None else None
        run_stats: Any = None
        started = 0.0
        run = 0
        for response in responses:
            slot = pending.popleft()
            client = slot.client
            if client is None:
                continue  # its client left; the reply is dropped
            slot.response = response
            stats = client.stats
            if stats is not run_stats or slot.started != started:
                if run_stats is not None:
                    _count_run(run_stats, run, now - started, backend_ok)
                run_stats, started, run = stats, slot.started, 0
            run += 1
            if slot.pinned:
                client.sent_pinned -= 1
            else:
                client.sent_shared -= 1
            if not client.touched:
                client.touched = True
                touched.append(client)
        if run_stats is not None:
            _count_run(run_stats, run, now - started, backend_ok)
        self.admission.release(len(responses))
        if backend is not None:
            backend.outstanding -= len(responses)
            backend.succeeded()
        if self._timer is not None or self._blocking:
            if pending:
                self._progress = now
            else:
                self._cancel_timer()
                self._blocking = False
                self._grace = 0.0
        for client in touched:
            client.touched = False
            client.answered()

    def _too_large(self) -> None:
        """The framer answered a reply past max_reply_size with an error."""
        self.cluster_backend.replies_too_large += 1

    def _unsolicited(self, framer: IUnsolicitedFramer) -> None:
        """
        What the backend sent unasked (RESP3 pushes): the pinned client's,
        written to it as it comes; on a shared connection it is nobody's,
        and dropped (counted on the backend).
        """
        messages, framer.unsolicited = framer.unsolicited, []
        owner = self.owner
        if owner is not None:
            owner.from_backend_raw(b"".join(messages))
            return
        backend = self.cluster_backend
        if backend is not None:
            backend.unsolicited += len(messages)

    def _retryable(self, pending: Deque[Slot]) -> "set[Slot]":
        """
        The slots owed here whose request may go again on another connection:
        safe (a read), sent once, not pinned, no byte of the reply received
        (for the oldest, the response framer holds nothing), within the retry
        budget.  A write already sent is never retried.
        """
        head_started = self.framer.pending() > 0
        chosen = set()
        for i, slot in enumerate(pending):
            client = slot.client
            if (client is None or slot.frame is None or slot.retried or slot.pinned
                    or (i == 0 and head_started)):
                continue
            budget = client.retry_budget
            if budget is not None and budget.withdraw():
                chosen.add(slot)
        return chosen

    def _fail(self, why: str, kind: str = "unavailable", retry: bool = False,
              count: bool = True) -> None:
        """
        Answer everything owed with the codec's error and close; with
        C{retry}, the slots that may go again are resent by their clients.
        Unless C{count} is false (a blocking command's own wait ran out), it
        counts against the backend (passive health).
        """
        self.alive = False
        self._cancel_timer()
        pending, self.pending = self.pending, deque()
        backend = self.cluster_backend
        if backend is not None and pending:
            backend.outstanding -= len(pending)
            if count:
                backend.failed(why)
        resend = self._retryable(pending) if retry and pending else ()
        if resend:
            backend.retries += len(resend)
            by_client: "dict[MultiplexFrontend, List[Slot]]" = {}
            for slot in pending:
                if slot in resend:
                    by_client.setdefault(slot.client, []).append(slot)  # type: ignore[arg-type]
        if pending:
            # The same bookkeeping as _answer, which keeps it inline: a helper
            # call per response would cost on the hot path.
            reply = self.codec.error_reply(kind, why)
            outcome = "timeout" if kind == "timeout" else "backend_unavailable"
            now = self.clock.seconds()
            failed = backend.durations[outcome] if backend is not None else None
            touched = []
            for slot in pending:
                client = slot.client
                if client is None or slot in resend:
                    continue
                slot.response = reply
                client.stats.requests.add(outcome)
                client.stats.durations.observe(outcome, now - slot.started)
                if failed is not None:
                    failed.observe(now - slot.started)
                if slot.pinned:
                    client.sent_pinned -= 1
                else:
                    client.sent_shared -= 1
                if not client.touched:
                    client.touched = True
                    touched.append(client)
            self.admission.release(len(pending) - len(resend))  # resent ones keep theirs
            for client in touched:
                client.touched = False
                client.answered()
        if resend:
            for client, slots in by_client.items():
                client.resend(slots)
        if self.transport is not None and self.transport.connected:
            self.transport.abortConnection()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        was_setting_up = bool(self._setup)
        BackendProtocol.connectionLost(self, reason)
        if was_setting_up and self._ready is not None:
            ready, self._ready = self._ready, None
            ready.errback(reason if reason is not None else Failure(ConnectionError("lost")))
        if self.multiplexer is not None:
            # First, so that resent requests cannot be given this connection.
            self.multiplexer.lost(self)
        self._fail("backend connection lost", retry=True)
        self.passthrough_to = None
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.pinned_lost()

    def _name(self) -> str:
        entry = self.pool_entry
        return entry.pool.name if entry is not None else "?"


class _PinnedWaiter:
    """
    A pinned lease waiting for room in the pinned share: its L{Deferred},
    its acquire timeout, and once its turn came, the pool's lease it
    follows (cancelling the one cancels the other).
    """

    __slots__ = ("multiplexer", "deferred", "timer", "lease")

    def __init__(self, multiplexer: "Multiplexer") -> None:
        self.multiplexer = multiplexer
        self.deferred: "Deferred[PooledConnection[PipelineBackend]]" = Deferred(self._cancel)
        self.timer: Any = None
        self.lease: "Optional[Deferred[Any]]" = None

    def _cancel(self, _: "Deferred[Any]") -> None:
        if self.lease is not None:
            self.lease.cancel()  # its CancelledError comes down the chain
        else:
            self.multiplexer._forget_pinned_waiter(self)

    def stop_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()


class Multiplexer:
    """
    The shared connections to one backend: leased from its pool, up to
    C{size}, and handed to clients round-robin, each client keeping its own
    for the whole session.

    It also keeps the backend's pinned connections (L{lease_pinned}) to their
    share of the pool: the rest is reserved for the shared connections, so
    that sessions of their own (a subscriber may stay for hours) can never
    take every connection and leave the clients that share none.
    """

    def __init__(self, pool: "BackendPool[PipelineBackend]", size: int, setup: Optional[List[Frame]] = None,
                 variant_setup: Optional[Any] = None, clock: Any = None) -> None:
        """
        @param setup: frames that switch a pooled connection to this
            multiplexer's variant before it is shared (e.g. HELLO 3).
        @param variant_setup: C{variant -> frames}, for L{for_variant}.
        @param clock: times pinned leases waiting for their share.
        """
        self.pool = pool
        self.size = size
        self.setup = setup or []
        self.variant_setup = variant_setup
        self.clock = clock
        self.connections: "List[PooledConnection[PipelineBackend]]" = []
        self._acquiring = 0
        self._next = 0
        self._waiting: "List[MultiplexFrontend]" = []
        self._variants: "dict[Any, Multiplexer]" = {}
        #: Pinned connections leased (or being leased) now, and the leases
        #: waiting for the share to have room.
        self.pinned = 0
        self._pinned_waiting: "Deque[_PinnedWaiter]" = deque()

    # -- pinned connections: their share of the pool ---------------------------

    @property
    def pinned_limit(self) -> int:
        """
        How many pinned connections may be leased at once: the pool less one
        C{size} of shared connections per variant in use (at least one).
        """
        return max(1, self.pool.size - self.size * (1 + len(self._variants)))

    def lease_pinned(self) -> "Deferred[PooledConnection[PipelineBackend]]":
        """
        A pooled connection for one client's own use, within the pinned
        share: at once if there is room, else in turn, failing after the
        pool's acquire timeout.  End the lease with L{pinned_ended}.
        """
        if self.pinned < self.pinned_limit:
            return self._lease_pinned_now()
        pool = self.pool
        if len(self._pinned_waiting) >= pool.max_waiters:
            pool.acquire_failures.add("exhausted")
            return fail(PoolExhausted(
                f"all {self.pinned_limit} pinned connections to {pool.name} are busy and "
                f"{pool.max_waiters} sessions are waiting"))

        waiter = _PinnedWaiter(self)
        if pool.acquire_timeout > 0 and self.clock is not None:
            waiter.timer = self.clock.callLater(pool.acquire_timeout, self._pinned_wait_over,
                                                waiter)
        self._pinned_waiting.append(waiter)
        return waiter.deferred

    def _lease_pinned_now(self) -> "Deferred[PooledConnection[PipelineBackend]]":
        self.pinned += 1
        d = self.pool.acquire()

        def not_had(failure: Failure) -> Failure:
            self.pinned_ended()  # no lease came of it (failed, or cancelled)
            return failure

        d.addErrback(not_had)
        return d

    def pinned_ended(self) -> None:
        """A pinned lease ended (released, discarded, or never had): the next may start."""
        self.pinned -= 1
        while self._pinned_waiting and self.pinned < self.pinned_limit:
            waiter = self._pinned_waiting.popleft()
            waiter.stop_timer()
            waiter.lease = self._lease_pinned_now()
            waiter.lease.chainDeferred(waiter.deferred)

    def _forget_pinned_waiter(self, waiter: "_PinnedWaiter") -> None:
        if waiter in self._pinned_waiting:
            self._pinned_waiting.remove(waiter)
        waiter.stop_timer()

    def _pinned_wait_over(self, waiter: "_PinnedWaiter") -> None:
        waiter.timer = None
        self._pinned_waiting.remove(waiter)
        pool = self.pool
        pool.acquire_failures.add("timeout")
        waiter.deferred.errback(AcquireTimeout(
            f"no pinned connection to {pool.name} became free within {pool.acquire_timeout:g}s "
            f"({self.pinned_limit} of pool_size {pool.size} are for pinned sessions)"))

    def for_variant(self, variant: Any) -> "Multiplexer":
        """The shared connections of another variant (RESP3) to the same backend."""
        if variant is None:
            return self
        multiplexer = self._variants.get(variant)
        if multiplexer is None:
            frames = self.variant_setup(variant) if self.variant_setup is not None else []
            multiplexer = self._variants[variant] = Multiplexer(self.pool, self.size, frames,
                                                                clock=self.clock)
        return multiplexer

    def pick(self, client: "MultiplexFrontend") -> Optional[PipelineBackend]:
        """
        A shared connection for C{client}, or L{None}: then the client is
        told by L{MultiplexFrontend.shared_ready} or
        L{MultiplexFrontend.shared_failed}.
        """
        connections = self.connections
        if len(connections) + self._acquiring < self.size:
            self._grow()
        if connections:
            i = self._next % len(connections)
            self._next = i + 1
            return connections[i].protocol
        if client not in self._waiting:
            self._waiting.append(client)
        return None

    def forget(self, client: "MultiplexFrontend") -> None:
        if client in self._waiting:
            self._waiting.remove(client)

    def _grow(self) -> None:
        self._acquiring += 1
        self.pool.acquire().addCallbacks(self._got, self._not_got)

    def _got(self, conn: "PooledConnection[PipelineBackend]") -> None:
        backend: PipelineBackend = conn.protocol
        if not backend.alive:
            conn.discard("backend_closed")
            self._not_got(Failure(ConnectionError("connection lost before use")))
            return
        if self.setup:
            def switched(_: object) -> None:
                self._share(conn)

            def failed(failure: Failure) -> None:
                conn.discard("setup_failed", abort=True)
                self._not_got(failure)

            backend.switch(self.setup).addCallbacks(switched, failed)
            return
        self._share(conn)

    def _share(self, conn: "PooledConnection[PipelineBackend]") -> None:
        self._acquiring -= 1
        backend: PipelineBackend = conn.protocol
        backend.multiplexer = self
        self.connections.append(conn)
        waiting, self._waiting = self._waiting, []
        for client in waiting:
            client.shared_ready(self)

    def _not_got(self, failure: Failure) -> None:
        self._acquiring -= 1
        if self.connections:
            return
        waiting, self._waiting = self._waiting, []
        why = failure.getErrorMessage()
        for client in waiting:
            client.shared_failed(self, why)

    def lost(self, backend: PipelineBackend) -> None:
        """A shared connection died: end its lease."""
        for conn in self.connections:
            if conn.protocol is backend:
                self.connections.remove(conn)
                conn.release()  # dead: the pool closes it and frees the slot
                return

    def close(self) -> None:
        connections, self.connections = self.connections, []
        for conn in connections:
            conn.protocol.multiplexer = None
            conn.discard("shutdown")
        for multiplexer in self._variants.values():
            multiplexer.close()
