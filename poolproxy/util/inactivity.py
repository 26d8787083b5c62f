"""
A timeout that runs from the last activity, without a timer reset per read.

Resetting a L{DelayedCall} on every read costs a call and a heap check per
read.  Here the owner records its activity where it would anyway (the time
of its last read, one attribute store) and L{Inactivity} reads it only
when its one timer fires: if there was activity since, the timer is armed
again for what is left.  An optional total deadline bounds the whole phase
whatever the activity (a body trickled a byte at a time).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

#: Slack for the float rounding of the clock's own arithmetic.
_EPSILON = 1e-9


class Inactivity:
    """
    Calls C{expired(why)} once, C{why} being C{"idle"} when C{idle} seconds
    have passed since C{last_active()} (clock seconds), or C{"total"} when
    C{total} seconds have passed since it started; 0 turns either off.
    C{last_active} is asked only when the timer fires; an owner that must
    not be blamed for a pause (the proxy stopped reading it) returns the
    current time meanwhile.
    """

    __slots__ = ("clock", "idle", "deadline", "last_active", "expired", "_call")

    def __init__(self, clock: Any, idle: float, total: float,
                 last_active: Callable[[], float], expired: Callable[[str], None]) -> None:
        self.clock = clock
        self.idle = idle
        now = clock.seconds()
        self.deadline = now + total if total else None
        self.last_active = last_active
        self.expired = expired
        self._call: Any = None
        if idle or total:
            self._call = clock.callLater(min(t for t in (idle, total) if t), self._check)

    @property
    def running(self) -> bool:
        return self._call is not None

    def cancel(self) -> None:
        """Stop it (again, or after it expired: nothing happens)."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _check(self) -> None:
        self._call = None
        now = self.clock.seconds() + _EPSILON
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            self.expired("total")
            return
        quiet_end: Optional[float] = None
        if self.idle:
            quiet_end = self.last_active() + self.idle
            if now >= quiet_end:
                self.expired("idle")
                return
        if quiet_end is None or (deadline is not None and deadline < quiet_end):
            quiet_end = deadline
        assert quiet_end is not None
        self._call = self.clock.callLater(max(0.0, quiet_end - self.clock.seconds()), self._check)
