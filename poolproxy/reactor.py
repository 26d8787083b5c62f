"""
An epoll reactor without a log context per I/O event:
C{twistd --reactor=poolproxy-epoll poolproxy ...}.

Twisted's L{EPollReactor} runs every read or write event through
L{twisted.python.log.callWithLogger}: it asks the connection for its log
prefix, builds a context dict and pushes it on a thread-local context stack,
so that messages logged with the legacy L{twisted.python.log} API during the
event carry the connection's prefix as their C{system}.  For a proxy that
is two or three events per request, and it was 11% of an http request's CPU
(55.6 to 49.7 µs, C{bench/cpu_cost.py --protocol http}) and 7% of a redis
request's at pipeline 1 (18.7 to 17.3 µs), kernel time included, on
CPython; on PyPy the difference is within noise.  See docs/performance.md.

This reactor calls the same C{_doReadOrWrite} directly.  What changes:
legacy-API messages logged during an event (Twisted's own "Unhandled Error"
when a protocol raises, which still closes that connection as before) say
C{-} instead of the connection's prefix.  poolproxy logs through
L{twisted.logger.Logger}, whose events never read that context.  Everything
else is L{EPollReactor}'s.
"""

from __future__ import annotations

import errno
from typing import Any, Optional

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.python import log


class LeanEPollReactor(EPollReactor):
    """L{EPollReactor}, dispatching each event without a legacy log context."""

    def doPoll(self, timeout: Optional[float]) -> None:
        if timeout is None:
            timeout = -1  # wait until something happens
        try:
            # As EPollReactor: at most as many events as there are io objects.
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue  # removed by an earlier event of this same poll
            try:
                dispatch(selectable, fd, event)
            except Exception:
                # _doReadOrWrite handles a protocol's errors itself; this is
                # what callWithLogger would have caught around it.
                log.err(None, "error dispatching an I/O event")

    doIteration = doPoll


def install() -> Any:
    """Install L{LeanEPollReactor} as the global reactor (twistd's --reactor does this)."""
    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor


__all__ = ["LeanEPollReactor", "install"]
