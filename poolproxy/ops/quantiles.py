"""
Percentiles over the last interval from fixed-bucket histograms, for the
status page: the difference between the cumulative bucket counts now and a
snapshot kept from at least L{INTERVAL} seconds ago, with each quantile
estimated by linear interpolation inside its bucket, as Prometheus'
C{histogram_quantile} does.  Nothing here runs per request: snapshots are
taken when the page is read.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple

from poolproxy.stats import Histogram

#: Seconds: the shortest window percentiles are computed over (and, once a
#: page is read regularly, the longest is twice this).
INTERVAL = 10.0


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> Optional[float]:
    """
    The C{q}-quantile (0 to 1) of observations counted per bucket.

    @param bounds: the buckets' upper bounds, ascending, without +Inf.
    @param counts: observations per bucket (not cumulative), one more than
        C{bounds}: the last is the +Inf bucket.
    @return: L{None} without observations.  Within a bucket observations
        are taken as spread evenly from its lower bound (0 for the first)
        to its upper; a quantile in the +Inf bucket is the highest finite
        bound, which is all a histogram can say about it.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n and below + n >= rank:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / n
        below += n
    return bounds[-1]


class IntervalQuantiles:
    """
    p50 and p99 of histograms over a recent window, per key (a listener,
    a backend).

    For each key two snapshots of the bucket counts are kept; when the newer
    is L{INTERVAL} seconds old, it becomes the older and the counts now the
    newer.  Percentiles are of what was observed since the older one (since
    the start, until a key has one): a window between one and two intervals
    long, never a single fetch's few milliseconds.
    """

    def __init__(self, clock: Any, interval: float = INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        # key -> (older: time, counts), (newer: time, counts)
        self._snapshots: Dict[Hashable, Tuple[Tuple[float, List[int]],
                                              Tuple[float, List[int]]]] = {}
        self._started = clock.seconds()

    def summary(self, key: Hashable, histogram: Histogram) -> Dict[str, Any]:
        """
        C{{"p50", "p99"}} in seconds (L{None} with no request in the
        window), C{"requests"} in the window and C{"window"}, its seconds.
        """
        now = self.clock.seconds()
        counts = list(histogram.counts)
        kept = self._snapshots.get(key)
        if kept is None:
            zero = (self._started, [0] * len(counts))
            kept = (zero, (now, counts))
        elif now - kept[1][0] >= self.interval:
            kept = (kept[1], (now, counts))
        self._snapshots[key] = kept
        since, before = kept[0]
        window = [new - old for new, old in zip(counts, before)]
        bounds = histogram.bounds
        p50, p99 = quantile(0.5, bounds, window), quantile(0.99, bounds, window)
        return {
            "p50": None if p50 is None else round(p50, 6),
            "p99": None if p99 is None else round(p99, 6),
            "requests": sum(window),
            "window": round(now - since, 3),
        }
