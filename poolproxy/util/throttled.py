"""
At most one log line per kind of problem per interval.

A problem that hits every request (a backend that sends garbage, a
backend that closes on each request) would otherwise log a line per
request, which under load is an outage of its own.  The first occurrence
of a key is logged at once; the next ones within the interval are counted,
and the count is told with the next line logged for that key.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, List


class ThrottledLog:
    """
    Logs C{warn} lines through C{log}, at most one per key every
    C{interval} seconds of C{clock}.  Keys should be few (a kind of problem,
    a backend's name), never a value a client chooses.
    """

    def __init__(self, log: Any, clock: Any, interval: float = 10.0) -> None:
        self.log = log
        self.clock = clock
        self.interval = interval
        # key -> [when last logged, occurrences not logged since]
        self._seen: Dict[Hashable, List[Any]] = {}

    def warn(self, key: Hashable, format: str, **fields: Any) -> None:
        now = self.clock.seconds()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return
        suppressed = seen[1] if seen is not None else 0
        self._seen[key] = [now, 0]
        if suppressed:
            format += " ({suppressed} more since the last such line)"
        self.log.warn(format, suppressed=suppressed, **fields)
