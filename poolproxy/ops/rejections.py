"""
Rejections, summarized: under overload (or under attack) a log line per
rejected request would itself be an outage, so one line per interval says
how many were rejected and why (admission, no backend connection, a command
the policy refuses, a failed AUTH, a request that cannot be framed or is too
large, a client over its source's connection limit, a deadline that passed
(idle ones excepted: they are routine), an accept error such as EMFILE), and
nothing is logged while nothing is rejected.  Likewise one line per interval
says which listeners a connection limit stopped accepting (new clients wait
in the listen backlog), never one per connection.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional

from twisted.logger import Logger

from poolproxy.ops.pools import serving_pools
from poolproxy.util.loops import GuardedLoop


class RejectionSummary:
    """
    Every C{interval} seconds, logs one line if requests were rejected by
    admission or got no backend connection since the last line.
    """

    log = Logger()

    def __init__(self, admission: Any, pools: Callable[[], Iterable[Any]], clock: Any,
                 interval: float = 10.0,
                 listeners: Callable[[], Iterable[Any]] = lambda: (),
                 web_accept_errors: Optional[Callable[[], Any]] = None) -> None:
        """
        @param pools: the pools to summarise, asked at every interval: a
            reload adds and retires backends.
        @param listeners: the listeners (C{name}, C{stats}) whose refused
            commands and failed authentications are summarised.
        @param web_accept_errors: the web endpoint's accept errors (a Tally).
        """
        self.admission = admission
        self.pools = pools
        self.listeners = listeners
        self.web_accept_errors = web_accept_errors
        self.interval = interval
        self._last = self._counts()
        self._last_pauses = self._pauses()
        self._loop = GuardedLoop(self._report, clock, self.log, "rejection summary failed")

    def _counts(self) -> Dict[str, int]:
        counts = {f"admission {k}": n for k, n in self.admission.rejected.items()}
        # A transaction-mode backend's failures are its (database, user) pools'.
        for serving in serving_pools(self.pools()):
            for reason, n in serving.pool.acquire_failures.items():
                key = f"{serving.pool.name} {reason}"
                counts[key] = counts.get(key, 0) + n
        for listener in self.listeners():
            stats = listener.stats
            if stats.auth_failures:
                counts[f"{listener.name} failed auth"] = stats.auth_failures
            for command, n in stats.commands_refused.items():
                counts[f"{listener.name} refused {command}"] = n
            for limit, n in stats.output_closed.items():
                if n:
                    counts[f"{listener.name} clients closed over the {limit} output limit"] = n
            for reason, n in stats.refused.items():
                if n:
                    counts[f"{listener.name} connections refused ({_REFUSED.get(reason, reason)})"] = n
            for error, n in stats.accept_errors.items():
                counts[f"{listener.name} connections lost to accept errors ({error})"] = n
            for outcome in ("malformed", "too_large"):
                if stats.requests[outcome]:
                    counts[f"{listener.name} {outcome} requests"] = stats.requests[outcome]
            for phase, n in stats.timeouts.items():
                if n and phase != "idle":
                    counts[f"{listener.name} {phase} timeouts"] = n
        if self.web_accept_errors is not None:
            for error, n in self.web_accept_errors().items():
                counts[f"web endpoint connections lost to accept errors ({error})"] = n
        return counts

    def _pauses(self) -> Dict[str, int]:
        return {listener.name: listener.stats.limit_pauses for listener in self.listeners()}

    def start(self) -> None:
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        self._loop.stop()

    def _report(self) -> None:
        self._report_pauses()
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

    def _report_pauses(self) -> None:
        now = self._pauses()
        new = {k: n - self._last_pauses.get(k, 0) for k, n in now.items()}
        self._last_pauses = now
        new = {k: n for k, n in new.items() if n > 0}
        if new:
            details = ", ".join(f"{k}: {n}" for k, n in sorted(new.items()))
            self.log.warn("connection limits stopped listeners accepting {total} times in the "
                          "last {interval}s; new clients wait in the listen backlog until "
                          "others leave ({details})",
                          total=sum(new.values()), interval=self.interval,
                          details=details, pauses=new)


#: How the log names each reason a connection was refused as soon as accepted.
_REFUSED = {"per_source": "max_connections_per_source",
            "limit": "past the connection limit",
            "tls_required": "no TLS, client_tls_mode = require",
            "unencrypted_after_request": "bytes sent after SSLRequest before its answer",
            "direct_tls_unavailable": "direct TLS with no client_tls certificate",
            "direct_tls_without_alpn": "direct TLS without ALPN postgresql"}
