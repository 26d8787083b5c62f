"""
Many timeouts of one length, on one timer.

A timeout started later ends later when they all have the same length, so
they end in the order they were started: a FIFO queue and one
C{callLater} for its oldest entry serve them all.  That saves a
L{DelayedCall} (a heap push, and a cancel with its own bookkeeping) per
request on the hot path, where most timeouts are cancelled long before
they end.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, List, Optional


class Deadlines:
    """
    Timeouts of C{timeout} seconds, each calling C{expired(item)} unless
    cancelled first.
    """

    def __init__(self, clock: Any, timeout: float, expired: Callable[[Any], None]) -> None:
        self.clock = clock
        self.timeout = timeout
        self.expired = expired
        # [deadline, item] in the order started; a cancelled one's item is None.
        self._queue: Deque[List[Any]] = deque()
        self._timer: Any = None
        self._firing = False  # expiries may start timeouts: the timer is armed after them

    def __len__(self) -> int:
        return sum(1 for entry in self._queue if entry[1] is not None)

    def start(self, item: Any) -> List[Any]:
        """Start a timeout for C{item}; the returned entry cancels it."""
        entry = [self.clock.seconds() + self.timeout, item]
        self._queue.append(entry)
        if self._timer is None and not self._firing:
            self._timer = self.clock.callLater(self.timeout, self._fire)
        return entry

    def cancel(self, entry: Optional[List[Any]]) -> None:
        """Cancel a timeout (again, or after it ended: nothing happens)."""
        if entry is None:
            return
        entry[1] = None
        queue = self._queue
        while queue and queue[0][1] is None:
            queue.popleft()
        if not queue and self._timer is not None:
            timer, self._timer = self._timer, None
            if timer.active():
                timer.cancel()

    def _fire(self) -> None:
        self._timer = None
        queue = self._queue
        # A hair of slack for the float rounding of the timer's own arithmetic.
        now = self.clock.seconds() + 1e-9
        self._firing = True
        try:
            while queue and (queue[0][1] is None or queue[0][0] <= now):
                deadline, item = queue.popleft()
                if item is not None:
                    self.expired(item)
        finally:
            self._firing = False
        while queue and queue[0][1] is None:
            queue.popleft()
        if queue and self._timer is None:
            self._timer = self.clock.callLater(max(0.0, queue[0][0] - self.clock.seconds()),
                                               self._fire)
