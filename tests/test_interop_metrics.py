"""
/metrics of real processes checked by Prometheus' own linter (C{promtool
check metrics}, Debian's prometheus package), with the latency histograms
filled by real traffic: one twistd process in front of a redis-server, and
a C{--workers 2} supervisor whose /metrics sums its workers'.  Skipped
without promtool unless POOLPROXY_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from typing import Dict, List, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase

from tests.interop import ProxyProcess, binary, recv_until, redis_server
from tests.test_workers import Supervised, _get, served_clients

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def promtool_check(testcase: TestCase, promtool: str, text: str) -> None:
    """C{promtool check metrics} reads C{text} and finds nothing to say."""
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=60)
    testcase.assertEqual((result.returncode, result.stdout + result.stderr), (0, b""))


def samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(found: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, have), v in found.items()
               if n == name and all(dict(have).get(k) == w for k, w in labels.items()))


class PromtoolTests(TestCase):
    def setUp(self) -> None:
        self.promtool = binary("promtool")

    def test_single_process_with_latency(self) -> None:
        """
        A redis listener after 20 GETs: its /metrics passes promtool, and
        the duration histograms count the 20 requests, per listener and per
        backend, their buckets cumulative up to +Inf.
        """
        backend = redis_server(self)
        proxy = ProxyProcess(self, "redis", [backend])
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            for _ in range(20):
                s.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
                self.assertEqual(recv_until(s, b"\r\n"), b"$-1\r\n")
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        promtool_check(self, self.promtool, text)
        found = samples(text)
        self.assertEqual(total(found, "poolproxy_request_duration_seconds_count", outcome="ok"),
                         20)
        self.assertEqual(total(found, "poolproxy_request_duration_seconds_bucket",
                               outcome="ok", le="+Inf"), 20)
        self.assertEqual(total(found, "poolproxy_backend_request_duration_seconds_count",
                               outcome="ok"), 20)
        buckets: List[float] = [v for (n, labels), v in found.items()
                                if n == "poolproxy_request_duration_seconds_bucket"
                                and dict(labels)["outcome"] == "ok"]
        self.assertEqual(buckets, sorted(buckets))

    def test_workers_merged_metrics(self) -> None:
        """
        --workers 2 after 40 http requests: each worker's /metrics and the
        supervisor's sum pass promtool, and the sum's histograms count all
        40 (buckets, _count and _sum the workers' added up).
        """
        proxy = Supervised(self)
        served_clients(self, proxy.port)
        per_worker = []
        for worker in proxy.status()["workers"]:
            code, body = _get(worker["web"] + "metrics")
            self.assertEqual(code, 200)
            promtool_check(self, self.promtool, body.decode())
            per_worker.append(samples(body.decode()))
        code, body = _get(proxy.url("/metrics"))
        self.assertEqual(code, 200)
        text = body.decode()
        promtool_check(self, self.promtool, text)
        summed = samples(text)
        self.assertEqual(total(summed, "poolproxy_request_duration_seconds_count", outcome="ok"),
                         40)
        for name in ("poolproxy_request_duration_seconds_sum",
                     "poolproxy_backend_first_byte_seconds_count"):
            self.assertAlmostEqual(total(summed, name),
                                   sum(total(worker, name) for worker in per_worker))
        for le in ("0.001", "0.05", "+Inf"):
            self.assertEqual(total(summed, "poolproxy_request_duration_seconds_bucket", le=le),
                             sum(total(worker, "poolproxy_request_duration_seconds_bucket",
                                       le=le) for worker in per_worker))
