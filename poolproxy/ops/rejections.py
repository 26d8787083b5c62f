"""
Rejections, summarized: under overload (or under attack) a log line per
rejected request would itself be an outage, so one line per interval says
how many were rejected and why (admission, no backend connection, a command
the policy refuses, a failed AUTH, a request that cannot be framed or is too
large, an http deadline that passed), and nothing is logged while nothing is
rejected.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable

from twisted.logger import Logger

from poolproxy.util.loops import GuardedLoop


class RejectionSummary:
    """
    Every C{interval} seconds, logs one line if requests were rejected by
    admission or got no backend connection since the last line.
    """

    log = Logger()

    def __init__(self, admission: Any, pools: Callable[[], Iterable[Any]], clock: Any,
                 interval: float = 10.0,
                 listeners: Callable[[], Iterable[Any]] = lambda: ()) -> None:
        """
        @param pools: the pools to summarise, asked at every interval: a
            reload adds and retires backends.
        @param listeners: the listeners (C{name}, C{stats}) whose refused
            commands and failed authentications are summarised.
        """
        self.admission = admission
        self.pools = pools
        self.listeners = listeners
        self.interval = interval
        self._last = self._counts()
        self._loop = GuardedLoop(self._report, clock, self.log, "rejection summary failed")

    def _counts(self) -> Dict[str, int]:
        counts = {f"admission {k}": n for k, n in self.admission.rejected.items()}
        for pool in self.pools():
            for reason, n in pool.acquire_failures.items():
                counts[f"{pool.name} {reason}"] = n
        for listener in self.listeners():
            stats = listener.stats
            if stats.auth_failures:
                counts[f"{listener.name} failed auth"] = stats.auth_failures
            for command, n in stats.commands_refused.items():
                counts[f"{listener.name} refused {command}"] = n
            for limit, n in stats.output_closed.items():
                if n:
                    counts[f"{listener.name} clients closed over the {limit} output limit"] = n
            for outcome in ("malformed", "too_large"):
                if stats.requests[outcome]:
                    counts[f"{listener.name} {outcome} requests"] = stats.requests[outcome]
            for phase, n in stats.timeouts.items():
                if n:
                    counts[f"{listener.name} {phase} timeouts"] = n
        return counts

    def start(self) -> None:
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        self._loop.stop()

    def _report(self) -> None:
        now = self._counts()
        new = {k: n - self._last.get(k, 0) for k, n in now.items()}
        self._last = now
        new = {k: n for k, n in new.items() if n > 0}
        if new:
            details = ", ".join(f"{k}: {n}" for k, n in sorted(new.items()))
            self.log.warn("rejected {total} requests or clients in the last {interval}s "
                          "({details})",
                          total=sum(new.values()), interval=self.interval,
                          details=details, counts=new)
