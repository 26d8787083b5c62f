"""
Closing idle client connections.

Resetting a timer on every read would cost a callLater per read; instead each
client keeps the time of its last activity (one attribute store) and one
L{LoopingCall} per listener sweeps its clients a few times per timeout.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.logger import Logger

from poolproxy.stats import ListenerStats
from poolproxy.util.loops import GuardedLoop


class IdleSweeper:
    """
    Closes the connections in C{clients} that have been idle (nothing
    received and nothing in flight) for C{timeout} seconds.  A client
    provides C{last_active} (clock seconds), C{busy} (bool) and
    C{close_idle()}.

    @ivar closed: connections closed for idleness (also counted in
        C{stats.timeouts}, if given).
    """

    log = Logger()

    def __init__(self, clients: Iterable[Any], timeout: float, clock: Any,
                 stats: Optional[ListenerStats] = None) -> None:
        self.clients = clients
        self.timeout = timeout
        self.clock = clock
        self.stats = stats
        self.closed = 0
        self._loop = GuardedLoop(self._sweep, clock, self.log, "idle sweep failed")

    def start(self) -> None:
        # A connection is closed between timeout and 1.25 x timeout after its
        # last activity.
        self._loop.start(self.timeout / 4.0, now=False)

    def stop(self) -> None:
        self._loop.stop()

    def _sweep(self) -> None:
        deadline = self.clock.seconds() - self.timeout
        idle = [c for c in self.clients
                if c.last_active <= deadline and not c.busy
                and not c.transport.disconnecting]  # already closing: flushing
        for client in idle:
            self.closed += 1
            if self.stats is not None:
                self.stats.timeouts.add("idle")
            client.close_idle()
