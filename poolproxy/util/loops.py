"""
Periodic work that survives its own failures.

A L{LoopingCall} whose function raises stops for good: one bad sweep would
end pool maintenance, health checks or idle sweeps for the life of the
process, silently.  L{GuardedLoop} logs the failure and runs again at the
next interval.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class GuardedLoop:
    """
    Calls C{body()} every C{interval} seconds on C{clock} once started; an
    exception from C{body} is logged with C{log.failure(failure, **fields)}
    and the loop goes on.
    """

    def __init__(self, body: Callable[[], None], clock: Any, log: Logger, failure: str,
                 **fields: Any) -> None:
        self._body = body
        self._log = log
        self._failure = failure
        self._fields = fields
        self._loop = LoopingCall(self._run)
        self._loop.clock = clock

    @property
    def running(self) -> bool:
        return bool(self._loop.running)

    def start(self, interval: float, now: bool = True) -> None:
        """Run every C{interval} seconds, the first time at once if C{now}; started already: nothing."""
        if not self._loop.running:
            self._loop.start(interval, now=now)

    def stop(self) -> None:
        """Stop (again, or before starting: nothing happens)."""
        if self._loop.running:
            self._loop.stop()

    def _run(self) -> None:
        try:
            self._body()
        except Exception:
            self._log.failure(self._failure, **self._fields)


__all__ = ["GuardedLoop"]
