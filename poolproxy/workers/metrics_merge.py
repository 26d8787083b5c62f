"""
Summing the /metrics of several worker processes into one exposition, for
the supervisor of C{--workers N} (L{poolproxy.workers.supervisor}).

The proxy's counters live in each worker's memory and are read at scrape
time, so prometheus-client's multiprocess mode (which shares values through
mmap'd files written per increment) does not apply.  Instead the supervisor
scrapes every worker and adds up samples with the same name and labels:
counters, gauges and histogram buckets all sum.  A few process gauges are
not amounts, and are merged otherwise (L{_MERGE}).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List, Tuple

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

#: Samples that would mean nothing summed: the oldest worker's start time,
#: and the smallest file descriptor limit; the longest wait of any worker.
_MERGE: Dict[str, Callable[[float, float], float]] = {
    "process_start_time_seconds": min,
    "process_max_fds": min,
    "poolproxy_pool_longest_wait_seconds": max,
}

_SampleKey = Tuple[str, Tuple[Tuple[str, str], ...]]


def _add(a: float, b: float) -> float:
    return a + b


class SummedMetrics:
    """
    Metric families summed over expositions, in the order first seen; a
    prometheus-client collector (L{collect}).
    """

    def __init__(self) -> None:
        self._families: Dict[str, Metric] = {}
        self._values: Dict[str, Dict[_SampleKey, float]] = {}

    def add_text(self, text: str) -> None:
        """
        Add one worker's exposition (Prometheus text format).

        @raise ValueError: if C{text} cannot be parsed.
        """
        for family in text_string_to_metric_families(text):
            self.add_family(family)

    def add_family(self, family: Metric) -> None:
        if family.name not in self._families:
            self._families[family.name] = Metric(family.name, family.documentation, family.type,
                                                 family.unit)
            self._values[family.name] = {}
        values = self._values[family.name]
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # a creation time: neither summable nor ours to invent
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key in values:
                values[key] = _MERGE.get(sample.name, _add)(values[key], sample.value)
            else:
                values[key] = sample.value

    def collect(self) -> Iterator[Metric]:
        for name, family in self._families.items():
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            for (sample_name, labels), value in self._values[name].items():
                merged.add_sample(sample_name, dict(labels), value)
            yield merged


def sum_expositions(texts: Iterable[str]) -> List[Metric]:
    """The metric families of all C{texts}, summed sample by sample."""
    summed = SummedMetrics()
    for text in texts:
        summed.add_text(text)
    return list(summed.collect())
