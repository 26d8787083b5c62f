"""
Plain counters for the hot path.

Counting a request must cost an attribute increment, not a locked
prometheus-client call: these objects hold ints and floats only, and
L{poolproxy.ops.metrics} reads them when /metrics is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Dict, Iterable, List, Tuple

# Seconds; wide enough for a queue wait of microseconds up to a timeout of a minute.
LATENCY_BUCKETS: Tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class Histogram:
    """
    A fixed-bucket histogram: one bisect and two additions per observation.

    @ivar counts: per-bucket counts (not cumulative); the last one is +Inf.
    @ivar total: the sum of the observations.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts: List[int] = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        """Observations: summed when read (at scrape time), not counted per observation."""
        return sum(self.counts)

    def cumulative(self) -> List[Tuple[str, int]]:
        """
        Buckets as Prometheus wants them: (upper bound, cumulative count).
        """
        out = []
        running = 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class Tally:
    """
    Counters keyed by a label value (an outcome or a reason), created on
    first use so that only what happened is exported.
    """

    __slots__ = ("counts",)

    def __init__(self, *known: str) -> None:
        self.counts: Dict[str, int] = dict.fromkeys(known, 0)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def __getitem__(self, key: str) -> int:
        return self.counts.get(key, 0)

    def items(self) -> Iterable[Tuple[str, int]]:
        return self.counts.items()


class Histograms:
    """
    Histograms keyed by a label value (an outcome), created on first use
    so that only what happened is exported.  The hot path keeps the one it
    uses most (C{self["ok"]}) in an attribute of its own.
    """

    __slots__ = ("by_key", "bounds")

    def __init__(self, *known: str, bounds: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.by_key: Dict[str, Histogram] = {key: Histogram(self.bounds) for key in known}

    def __getitem__(self, key: str) -> Histogram:
        h = self.by_key.get(key)
        if h is None:
            h = self.by_key[key] = Histogram(self.bounds)
        return h

    def observe(self, key: str, value: float) -> None:
        self[key].observe(value)

    def items(self) -> Iterable[Tuple[str, Histogram]]:
        return self.by_key.items()


# ok: served; rejected: not admitted (queue full or queue timeout);
# backend_unavailable: connecting to the backend failed or its connection was
# lost; pool_exhausted: no pooled connection became free in time; client_gone:
# the client left before being served.  Framed modes add: local (answered by the
# proxy itself, e.g. QUIT or AUTH), malformed and too_large (a broken request
# stream, answered with the codec's error before closing).
OUTCOMES = ("ok", "rejected", "backend_unavailable", "pool_exhausted", "client_gone")

# The deadlines that can pass: a client connection (or tcp session) idle too
# long; a request head or body too slow to come (http: 408); a client not
# reading what it is sent (closed, every mode); a tunnel with no traffic; a
# backend silent before or inside its response (http).
TIMEOUT_PHASES = ("idle", "head", "body", "send", "tunnel", "response")


class ListenerStats:
    """
    What one listener counts.

    @ivar sessions: completed client sessions by outcome.
    @ivar requests: requests by outcome; in tcp mode a session is one request.
    @ivar commands_refused: requests refused by the command policy, by
        command (denied by name, or "(unknown)").
    @ivar auth_failures: failed client authentications (redis AUTH, HELLO).
    @ivar output_closed: clients closed for holding too many unread replies,
        by the limit they broke (C{client}: client_output_limit, C{proxy}:
        their share of proxy_output_limit).
    @ivar refused: connections closed as soon as accepted, by reason
        (C{per_source}: max_connections_per_source; C{limit}: accepted in
        a batch past the connection limit).
    @ivar accept_errors: connections lost to an accept error, by errno name
        (EMFILE, ENFILE...).
    @ivar limit_pauses: times a connection limit stopped the listener accepting.
    @ivar timeouts: deadlines that passed, by phase (L{TIMEOUT_PHASES}).
    @ivar requests_buffered: http requests whose body was read whole,
        while it came, before a backend connection was asked for.
    @ivar responses_buffered: http responses whose backend connection was
        released while their client still had some of them to read.
    @ivar durations: request durations (seconds) by outcome, from the read
        that brought the request to its reply's last byte handed to the
        transport; C{duration_ok} is C{durations["ok"]}.
    """

    __slots__ = ("connections_total", "connections_open", "sessions", "requests",
                 "requests_ok", "bytes_upstream", "bytes_downstream", "commands_refused",
                 "auth_failures", "output_closed",
                 "refused", "accept_errors", "limit_pauses", "timeouts",
                 "requests_buffered", "responses_buffered", "durations", "duration_ok")

    def __init__(self) -> None:
        self.connections_total = 0
        self.connections_open = 0
        self.sessions = Tally(*OUTCOMES)
        self.requests = Tally(*OUTCOMES)
        # Answered by a backend, in the modes that frame requests: a plain int,
        # since it counts every request; exported as requests{outcome="ok"}.
        self.requests_ok = 0
        self.bytes_upstream = 0
        self.bytes_downstream = 0
        self.commands_refused = Tally()
        self.auth_failures = 0
        self.output_closed = Tally("client", "proxy")
        self.refused = Tally("per_source", "limit")
        self.accept_errors = Tally()
        self.limit_pauses = 0
        self.timeouts = Tally(*TIMEOUT_PHASES)
        self.requests_buffered = 0
        self.responses_buffered = 0
        self.durations = Histograms("ok")
        self.duration_ok = self.durations["ok"]
