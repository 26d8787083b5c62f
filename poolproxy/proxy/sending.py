"""
C{send_timeout}: closing a client that leaves what the proxy wrote to it
unread.

A client's transport pauses its producer (the frontend) when its socket and
Twisted's buffer are full, and resumes it only once everything is sent.  A
client that reads slowly but steadily stays paused for as long as a large
reply takes, and must not be closed for it; one whose socket takes nothing
at all for C{send_timeout} seconds is closed, as nginx's C{send_timeout}
and HAProxy's C{timeout client} do.  So each paused client gets a deadline;
at the deadline, a client whose socket took bytes meanwhile gets another,
and one whose socket took none is closed (aborted: it is not reading), which
frees what it holds (its replies, its backend connection).

The deadlines all have the same length and live on one timer
(L{poolproxy.util.deadlines.Deadlines}); a deadline starts and ends when the
transport pauses and resumes, never per request.
"""

from __future__ import annotations

from typing import Any, List, Optional

from poolproxy.stats import ListenerStats
from poolproxy.util.deadlines import Deadlines


class SendTimeouts:
    """
    The send deadlines of one listener's clients; C{timeout} 0 sets none.

    A client provides C{send_deadline} (the entry of its running deadline,
    or None), C{sent_mark()} (a count that grows as its socket takes bytes,
    or L{None} if its transport cannot say) and C{send_timed_out()}.
    """

    def __init__(self, clock: Any, timeout: float, stats: ListenerStats) -> None:
        self.timeout = timeout
        self.stats = stats
        self._deadlines = Deadlines(clock, timeout, self._expired) if timeout > 0 else None

    def paused(self, client: Any) -> None:
        """C{client}'s socket is full: its deadline starts (unless one runs)."""
        if self._deadlines is not None and client.send_deadline is None:
            client.send_deadline = self._deadlines.start((client, client.sent_mark()))

    def resumed(self, client: Any) -> None:
        """C{client}'s socket took everything, or it is gone: no deadline."""
        entry: Optional[List[Any]] = client.send_deadline
        if entry is not None:
            client.send_deadline = None
            self._deadlines.cancel(entry)  # type: ignore[union-attr]

    def _expired(self, item: Any) -> None:
        client, mark = item
        client.send_deadline = None
        now = client.sent_mark()
        if now is not None and mark is not None and now > mark:
            # Its socket took bytes since: slow, not stalled.
            client.send_deadline = self._deadlines.start((client, now))  # type: ignore[union-attr]
            return
        self.stats.timeouts.add("send")
        client.send_timed_out()


__all__ = ["SendTimeouts"]
