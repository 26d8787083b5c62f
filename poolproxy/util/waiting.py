"""
Waiting, on a clock, for a condition that nothing announces: shutdown waits
for client connections to finish, a reload for a retired backend's requests
in flight.  Both are rare and short, so polling every 50 ms is simpler than
threading a notification through every place that ends a request.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall


def wait_until(clock: Any, done: Callable[[], bool], timeout: float,
               interval: float = 0.05) -> "Deferred[bool]":
    """
    Fires with C{True} once C{done()} is true (checked at once, then every
    C{interval} seconds), or with C{False} after C{timeout} seconds.
    """
    deadline = clock.seconds() + timeout
    result: "Deferred[bool]" = Deferred()

    def check() -> None:
        finished = done()
        if finished or clock.seconds() >= deadline:
            loop.stop()
            result.callback(finished)

    loop = LoopingCall(check)
    loop.clock = clock
    loop.start(min(interval, timeout) if timeout else interval, now=True)
    return result


__all__ = ["wait_until"]
