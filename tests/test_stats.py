"""
Tests for L{poolproxy.stats}: the plain hot-path counters.
"""

from __future__ import annotations

import math

from hypothesis import given, strategies as st
from prometheus_client import CollectorRegistry, Histogram as PromHistogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.stats import LATENCY_BUCKETS, OUTCOMES, Histogram, ListenerStats, Tally

BOUNDS = (0.5, 1.0, 2.5)


def _counts(h: Histogram) -> "list[int]":
    return [n for _, n in h.cumulative()]


class HistogramTests(SynchronousTestCase):
    """
    L{Histogram} places observations as Prometheus does (a bucket counts
    values less than or equal to its C{le} bound) and reports cumulative
    buckets, the sum and the count.
    """

    def test_empty(self) -> None:
        """
        A new histogram has one zero bucket per bound plus +Inf, and a zero
        sum and count.
        """
        h = Histogram(BOUNDS)
        self.assertEqual(h.cumulative(), [("0.5", 0), ("1.0", 0), ("2.5", 0), ("+Inf", 0)])
        self.assertEqual((h.total, h.count), (0.0, 0))

    def test_default_bounds(self) -> None:
        """
        Without bounds a histogram uses L{LATENCY_BUCKETS}, ending in +Inf.
        """
        h = Histogram()
        self.assertEqual(h.bounds, LATENCY_BUCKETS)
        self.assertEqual(len(h.counts), len(LATENCY_BUCKETS) + 1)
        labels = [le for le, _ in h.cumulative()]
        self.assertEqual(labels[-1], "+Inf")
        self.assertEqual([float(le) for le in labels[:-1]], list(LATENCY_BUCKETS))

    def test_exact_bound_is_in_that_bucket(self) -> None:
        """
        A value equal to a bound counts in that bound's bucket (C{le} means
        less than or equal), not in the next one.
        """
        for i, bound in enumerate(BOUNDS):
            h = Histogram(BOUNDS)
            h.observe(bound)
            expected = [0] * i + [1] * (len(BOUNDS) + 1 - i)
            self.assertEqual(_counts(h), expected, f"observing {bound}")

    def test_just_above_bound_is_in_next_bucket(self) -> None:
        """
        A value a hair above a bound counts only from the next bucket on.
        """
        h = Histogram(BOUNDS)
        h.observe(math.nextafter(1.0, math.inf))
        self.assertEqual(_counts(h), [0, 0, 1, 1])

    def test_below_first_bound(self) -> None:
        """
        Zero, negative values and values below the first bound land in the
        first bucket.
        """
        h = Histogram(BOUNDS)
        for value in (0.0, -3.0, 0.1):
            h.observe(value)
        self.assertEqual(_counts(h), [3, 3, 3, 3])

    def test_above_last_bound_only_in_inf(self) -> None:
        """
        A value above the last bound (or infinite) counts only in +Inf.
        """
        h = Histogram(BOUNDS)
        h.observe(2.5000001)
        h.observe(math.inf)
        self.assertEqual(h.cumulative(), [("0.5", 0), ("1.0", 0), ("2.5", 0), ("+Inf", 2)])

    def test_cumulative_sum_and_count(self) -> None:
        """
        Buckets are cumulative and non-decreasing, +Inf equals the count, and
        the sum adds every value; per-bucket C{counts} stay non-cumulative.
        """
        h = Histogram(BOUNDS)
        values = [0.2, 0.5, 0.7, 1.0, 2.0, 3.0, 10.0]
        for v in values:
            h.observe(v)
        self.assertEqual(h.counts, [2, 2, 1, 2])
        self.assertEqual(_counts(h), [2, 4, 5, 7])
        self.assertEqual(h.count, len(values))
        self.assertAlmostEqual(h.total, sum(values))
        self.assertEqual(h.cumulative()[-1], ("+Inf", h.count))

    def test_cumulative_does_not_change_state(self) -> None:
        """
        Reading the buckets (a scrape) changes nothing: two reads agree.
        """
        h = Histogram(BOUNDS)
        h.observe(0.7)
        first = h.cumulative()
        self.assertEqual(h.cumulative(), first)
        self.assertEqual(h.counts, [0, 1, 0, 0])

    @given(st.lists(st.one_of(st.sampled_from(BOUNDS),
                              st.floats(min_value=-10.0, max_value=10.0))))
    def test_agrees_with_prometheus_client(self, values: "list[float]") -> None:
        """
        For any observations, including values exactly on a bound, the
        buckets, sum and count equal those of prometheus-client's own
        Histogram with the same bounds.
        """
        ours = Histogram(BOUNDS)
        registry = CollectorRegistry()
        theirs = PromHistogram("h", "h", buckets=BOUNDS, registry=registry)
        for v in values:
            ours.observe(v)
            theirs.observe(v)
        expected = [(le, int(registry.get_sample_value("h_bucket", {"le": le})))
                    for le, _ in ours.cumulative()]
        self.assertEqual(ours.cumulative(), expected)
        self.assertEqual(ours.count, registry.get_sample_value("h_count"))
        self.assertEqual(ours.total, registry.get_sample_value("h_sum"))

    def test_exposition_round_trip(self) -> None:
        """
        The buckets make a valid Prometheus histogram: exposed through
        prometheus-client and parsed back, each C{le} is the bound as a float
        and the sum and count survive.
        """
        h = Histogram(BOUNDS)
        for v in (0.5, 1.5, 4.0):
            h.observe(v)
        family = HistogramMetricFamily("x_seconds", "x", labels=[])
        family.add_metric([], h.cumulative(), h.total)

        class One:
            def collect(self):  # type: ignore[no-untyped-def]
                yield family

        registry = CollectorRegistry(auto_describe=False)
        registry.register(One())
        text = generate_latest(registry).decode("utf-8")
        [parsed] = text_string_to_metric_families(text)
        self.assertEqual(parsed.type, "histogram")
        buckets = [(float(s.labels["le"]), s.value) for s in parsed.samples
                   if s.name == "x_seconds_bucket"]
        self.assertEqual(buckets, [(0.5, 1), (1.0, 1), (2.5, 2), (math.inf, 3)])
        values = {s.name: s.value for s in parsed.samples}
        self.assertEqual(values["x_seconds_count"], 3)
        self.assertEqual(values["x_seconds_sum"], 6.0)


class TallyTests(SynchronousTestCase):
    """
    L{Tally} counts by label value, exporting known keys from the start and
    others once they happen.
    """

    def test_known_keys_start_at_zero(self) -> None:
        """
        Keys given at construction are present, in order, with zero counts.
        """
        t = Tally("a", "b")
        self.assertEqual(list(t.items()), [("a", 0), ("b", 0)])
        self.assertEqual(t["a"], 0)

    def test_add(self) -> None:
        """
        C{add} counts one by default, or C{n}.
        """
        t = Tally("a")
        t.add("a")
        t.add("a", 4)
        self.assertEqual(t["a"], 5)

    def test_unknown_key_created_on_first_add(self) -> None:
        """
        An unknown key is absent until added, then exported after the known
        ones; reading an absent key gives zero without creating it.
        """
        t = Tally("a")
        self.assertEqual(t["new"], 0)
        self.assertEqual(list(t.items()), [("a", 0)])
        t.add("new", 2)
        self.assertEqual(list(t.items()), [("a", 0), ("new", 2)])

    def test_empty(self) -> None:
        """
        A tally with no known keys exports nothing until something is added.
        """
        t = Tally()
        self.assertEqual(list(t.items()), [])
        t.add("x")
        self.assertEqual(list(t.items()), [("x", 1)])


class ListenerStatsTests(SynchronousTestCase):
    """
    L{ListenerStats} starts at zero with every outcome known.
    """

    def test_initial(self) -> None:
        """
        Counters start at zero; sessions and requests are separate tallies
        that already hold every outcome in L{OUTCOMES}.
        """
        s = ListenerStats()
        self.assertEqual((s.connections_total, s.connections_open,
                          s.bytes_upstream, s.bytes_downstream), (0, 0, 0, 0))
        self.assertEqual(list(s.sessions.items()), [(o, 0) for o in OUTCOMES])
        self.assertEqual(list(s.requests.items()), [(o, 0) for o in OUTCOMES])
        s.sessions.add("ok")
        self.assertEqual(s.requests["ok"], 0)
