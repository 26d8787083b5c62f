"""
Admission control: the worker semaphore in front of the backends.

At most C{max_concurrency} requests are served at once (a
L{DeferredSemaphore}); up to C{queue_size} more wait, each at most
C{queue_timeout} seconds; anything beyond that is rejected at once, so a
spike turns into fast, protocol-correct errors instead of unbounded memory and
latency.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
    TimeoutError as DeferredTimeoutError,
    fail,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from poolproxy.stats import Histogram, Tally
from poolproxy.util.reactors import default_reactor


class Overloaded(Exception):
    """
    A request was not admitted.

    @ivar reason: C{"queue_full"} or C{"queue_timeout"}.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Admission:
    """
    A bounded worker semaphore with a bounded, timed queue.

    Every successful L{acquire} or L{try_acquire} must be followed by exactly
    one L{release}.

    @ivar rejected: rejections by reason (C{queue_full}, C{queue_timeout}).
    @ivar abandoned: queued requests whose client went away before admission.
    @ivar queue_wait: seconds spent queued by requests that were admitted.
    """

    def __init__(
        self,
        max_concurrency: int,
        queue_size: int,
        queue_timeout: float,
        clock: Optional[IReactorTime] = None,
    ) -> None:
        self._clock: Any = default_reactor(clock)
        self._semaphore = DeferredSemaphore(max_concurrency)
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.admitted = 0
        self.rejected = Tally("queue_full", "queue_timeout")
        self.abandoned = 0
        self.queue_wait = Histogram()

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return self._semaphore.limit - self._semaphore.tokens

    @property
    def queued(self) -> int:
        """Requests waiting for admission."""
        return len(self._semaphore.waiting)

    def try_acquire(self) -> bool:
        """
        Admit a request at once if a worker is free, without allocating a
        L{Deferred}: the fast path for per-request admission.

        @return: whether the request was admitted.
        """
        semaphore = self._semaphore
        if semaphore.tokens:
            semaphore.tokens -= 1
            self.admitted += 1
            return True
        return False

    def acquire(self) -> "Deferred[None]":
        """
        Admit a request, queueing it if every worker is busy.

        @return: a L{Deferred} that fires with L{None} once admitted, or fails
            with L{Overloaded} (queue full, at once; or queue timeout).  It may
            be cancelled (the client went away), which frees its queue place
            and fails it with L{CancelledError}.
        """
        if self.try_acquire():
            return succeed(None)
        if len(self._semaphore.waiting) >= self.queue_size:
            self.rejected.add("queue_full")
            return fail(Overloaded("queue_full"))
        queued_at = self._clock.seconds()
        waiting = self._semaphore.acquire()
        waiting.addTimeout(self.queue_timeout, self._clock)

        def admitted(_: object) -> None:
            self.admitted += 1
            self.queue_wait.observe(self._clock.seconds() - queued_at)
            return None

        def not_admitted(failure: Failure) -> Failure:
            if failure.check(DeferredTimeoutError):
                self.rejected.add("queue_timeout")
                return Failure(Overloaded("queue_timeout"))
            if failure.check(CancelledError):
                self.abandoned += 1
            return failure

        return waiting.addCallbacks(admitted, not_admitted)

    def release(self, count: int = 1) -> None:
        """
        End C{count} admitted requests; as many queued ones, oldest first,
        are admitted.
        """
        semaphore = self._semaphore
        if not semaphore.waiting:
            tokens = semaphore.tokens + count
            if tokens > semaphore.limit:
                raise RuntimeError("admission released more often than acquired")
            semaphore.tokens = tokens
            return
        for _ in range(count):
            semaphore.release()
