"""
Percentiles for /status from histogram buckets: the estimator (linear
interpolation within the bucket, as Prometheus' histogram_quantile), the
window of the last interval on a L{Clock}, what /status.json and /status
show, and the families /metrics exports.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.ops.metrics import build_registry
from poolproxy.ops.quantiles import IntervalQuantiles, quantile
from poolproxy.ops.status import RateSampler, render_html, status_snapshot
from poolproxy.stats import Histogram
from tests.test_ops_view import fake_proxy


class QuantileTests(SynchronousTestCase):
    def test_empty(self) -> None:
        """No observation, no percentile (not 0, which would look like a fast proxy)."""
        self.assertIsNone(quantile(0.5, (1.0, 2.0), [0, 0, 0]))

    def test_interpolates_within_the_bucket(self) -> None:
        """
        100 observations in (0.1, 0.25]: the median is halfway through that
        bucket, p99 99% of the way, as histogram_quantile computes them.
        """
        bounds = (0.1, 0.25, 0.5)
        self.assertAlmostEqual(quantile(0.5, bounds, [0, 100, 0, 0]), 0.175)
        self.assertAlmostEqual(quantile(0.99, bounds, [0, 100, 0, 0]), 0.1 + 0.15 * 0.99)

    def test_first_bucket_starts_at_zero(self) -> None:
        self.assertAlmostEqual(quantile(0.5, (0.1, 0.25), [10, 0, 0]), 0.05)

    def test_rank_across_buckets(self) -> None:
        """90 fast, 10 slow: p50 among the fast ones, p99 among the slow ones."""
        bounds = (0.001, 0.01, 1.0)
        counts = [90, 0, 10, 0]
        self.assertAlmostEqual(quantile(0.5, bounds, counts), 0.001 * 50 / 90)
        self.assertAlmostEqual(quantile(0.99, bounds, counts), 0.01 + 0.99 * 0.9)

    def test_inf_bucket_is_the_highest_bound(self) -> None:
        """Past the last finite bound a histogram knows nothing more: that bound."""
        self.assertEqual(quantile(0.99, (1.0, 2.0), [1, 0, 99]), 2.0)

    @given(st.lists(st.floats(min_value=0.0, max_value=100.0), min_size=1, max_size=200),
           st.sampled_from([0.5, 0.9, 0.99]))
    def test_within_the_true_quantile_bucket(self, values: "list[float]", q: float) -> None:
        """The estimate lies in the bucket that holds the true quantile's rank."""
        h = Histogram()
        for v in values:
            h.observe(v)
        estimate = quantile(q, h.bounds, h.counts)
        assert estimate is not None
        ordered = sorted(values)
        rank = q * len(values)
        # The observation of that rank (1-based, rounded up) is in the same bucket.
        true = ordered[max(0, min(len(values) - 1, -int(-rank // 1) - 1))]
        bounds = h.bounds + (float("inf"),)
        lower = max([0.0] + [b for b in h.bounds if b < true])
        upper = min(b for b in bounds if b >= true)
        self.assertGreaterEqual(estimate, lower - 1e-12)
        self.assertLessEqual(estimate, min(upper, h.bounds[-1]) + 1e-12)


class IntervalTests(SynchronousTestCase):
    def test_window_moves_every_interval(self) -> None:
        """
        Slow requests long ago drop out of the percentiles once an interval
        has passed: the window is the last 10 to 20 seconds.
        """
        clock = Clock()
        latency = IntervalQuantiles(clock, interval=10.0)
        h = Histogram()
        for _ in range(100):
            h.observe(2.0)  # slow, at the start
        first = latency.summary("l", h)  # since the start: the slow ones
        self.assertEqual((first["requests"], first["p50"] > 1.0), (100, True))
        clock.advance(10.0)
        for _ in range(100):
            h.observe(0.003)
        second = latency.summary("l", h)  # since the first read, 10 s ago: fast ones only
        self.assertEqual((second["requests"], second["window"]), (100, 10.0))
        self.assertLess(second["p99"], 0.005)
        clock.advance(5.0)
        h.observe(0.003)
        third = latency.summary("l", h)  # read again soon: the same older snapshot
        self.assertEqual((third["requests"], third["window"]), (101, 15.0))
        clock.advance(5.0)
        fourth = latency.summary("l", h)  # the snapshot at 10 s is 10 s old: it is the older now
        self.assertEqual((fourth["requests"], fourth["window"]), (1, 10.0))

    def test_no_requests_in_window(self) -> None:
        clock = Clock()
        latency = IntervalQuantiles(clock, interval=10.0)
        h = Histogram()
        h.observe(0.1)
        latency.summary("l", h)
        clock.advance(10.0)
        latency.summary("l", h)
        clock.advance(10.0)
        quiet = latency.summary("l", h)
        self.assertEqual((quiet["p50"], quiet["p99"], quiet["requests"]), (None, None, 0))


class StatusTests(SynchronousTestCase):
    def test_snapshot_and_page_show_percentiles(self) -> None:
        """/status.json gives p50/p99 per listener and backend; the page shows them in ms."""
        proxy = fake_proxy()
        stats = proxy.listeners[0].stats
        backend = proxy.clusters["cache"].backends[0]
        for _ in range(99):
            stats.duration_ok.observe(0.0004)  # (0.0001, 0.0005]
            backend.duration_ok.observe(0.0004)
        stats.duration_ok.observe(0.2)
        snapshot = status_snapshot(proxy, RateSampler(proxy.reactor),
                                   IntervalQuantiles(proxy.reactor))
        latency = snapshot["listeners"][0]["latency"]
        self.assertEqual(latency["requests"], 100)
        self.assertAlmostEqual(latency["p50"], 0.0001 + 0.0004 * 50 / 99, places=6)
        self.assertAlmostEqual(latency["p99"], 0.0001 + 0.0004 * 99 / 99, places=6)
        a, b = snapshot["clusters"][0]["backends"]
        self.assertEqual(a["latency"]["requests"], 99)
        self.assertEqual((b["latency"]["p50"], b["latency"]["requests"]), (None, 0))
        page = render_html(snapshot)
        self.assertIn("<th>p99 ms</th>", page)
        self.assertIn(f"<td class=\"n\">{latency['p99'] * 1000:.2f}</td>", page)


class MetricsTests(SynchronousTestCase):
    def test_exported_families(self) -> None:
        """The histograms are exported with their labels; ok from the start, others once seen."""
        proxy = fake_proxy()
        registry = build_registry(proxy)
        stats = proxy.listeners[0].stats
        backend = proxy.clusters["cache"].backends[1]
        stats.duration_ok.observe(0.03)
        stats.durations.observe("timeout", 5.0)
        backend.duration_ok.observe(0.02)
        backend.first_byte.observe(0.004)
        value = registry.get_sample_value
        self.assertEqual(value("poolproxy_request_duration_seconds_bucket",
                               {"listener": "front", "outcome": "ok", "le": "0.05"}), 1.0)
        self.assertEqual(value("poolproxy_request_duration_seconds_bucket",
                               {"listener": "front", "outcome": "ok", "le": "0.025"}), 0.0)
        self.assertEqual(value("poolproxy_request_duration_seconds_count",
                               {"listener": "front", "outcome": "timeout"}), 1.0)
        self.assertEqual(value("poolproxy_backend_request_duration_seconds_sum",
                               {"cluster": "cache", "backend": "b", "outcome": "ok"}), 0.02)
        self.assertEqual(value("poolproxy_backend_request_duration_seconds_count",
                               {"cluster": "cache", "backend": "a", "outcome": "ok"}), 0.0)
        self.assertEqual(value("poolproxy_backend_first_byte_seconds_bucket",
                               {"cluster": "cache", "backend": "b", "le": "0.005"}), 1.0)


class MergeTests(SynchronousTestCase):
    def test_workers_histograms_sum(self) -> None:
        """
        Two workers' expositions summed by the supervisor: each bucket,
        _sum and _count is the workers' added up, an outcome only one worker
        saw included, and the result is still a valid cumulative histogram.
        """
        from prometheus_client import generate_latest
        from prometheus_client.parser import text_string_to_metric_families

        from poolproxy.workers.metrics_merge import sum_expositions

        texts, combined = [], Histogram()
        for values, failed in (([0.0003, 0.02], False), ([0.02, 1.5, 90.0], True)):
            proxy = fake_proxy()
            for v in values:
                proxy.listeners[0].stats.duration_ok.observe(v)
                combined.observe(v)
            if failed:
                proxy.listeners[0].stats.durations.observe("timeout", 15.0)
            texts.append(generate_latest(build_registry(proxy)).decode())
        [family] = [f for f in sum_expositions(texts)
                    if f.name == "poolproxy_request_duration_seconds"]
        ok = {s.labels.get("le"): s.value for s in family.samples
              if s.labels["outcome"] == "ok" and s.name.endswith("_bucket")}
        self.assertEqual(ok, {le: float(n) for le, n in combined.cumulative()})
        sums = {(s.name, s.labels["outcome"]): s.value for s in family.samples
                if not s.name.endswith("_bucket")}
        self.assertAlmostEqual(sums[("poolproxy_request_duration_seconds_sum", "ok")],
                               combined.total)
        self.assertEqual(sums[("poolproxy_request_duration_seconds_count", "ok")], 5)
        self.assertEqual(sums[("poolproxy_request_duration_seconds_count", "timeout")], 1)
        # Rendered again, as the supervisor serves it, it parses as a histogram.
        from prometheus_client.core import CollectorRegistry

        class Summed:
            def collect(self):  # type: ignore[no-untyped-def]
                return [family]

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Summed())  # type: ignore[arg-type]
        [again] = text_string_to_metric_families(generate_latest(registry).decode())
        self.assertEqual(again.type, "histogram")
