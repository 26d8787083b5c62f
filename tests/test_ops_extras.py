"""
Tests for the operator extras: the Grafana dashboard in
docs/grafana-dashboard.json and the JSON-lines log observer in
L{poolproxy.logs}.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from typing import Any, Dict, Iterator, List, Set, Tuple

from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from poolproxy import logs
from tests.interop import wait_port, wait_until
from tests.support import ROOT, free_port, twistd_command

DASHBOARD = os.path.join(ROOT, "docs", "grafana-dashboard.json")
METRICS_DOC = os.path.join(ROOT, "docs", "metrics.md")
OPERATIONS_DOC = os.path.join(ROOT, "docs", "operations.md")

METRIC_NAME = re.compile(r"\b(?:poolproxy|process)_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _load_dashboard() -> Dict[str, Any]:
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def _documented() -> Tuple[Set[str], Set[str]]:
    """
    The metric names docs/metrics.md lists in its tables, and the subset
    documented as histograms.
    """
    names: Set[str] = set()
    histograms: Set[str] = set()
    with open(METRICS_DOC, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\|\s*`((?:poolproxy|process)_[a-z_]+)`\s*\|\s*(\w+)", line)
            if m:
                names.add(m.group(1))
                if m.group(2) == "histogram":
                    histograms.add(m.group(1))
    return names, histograms


def _all_panels(panels: List[Dict[str, Any]]) -> Iterator[Dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def _exprs(dashboard: Dict[str, Any]) -> List[str]:
    return [target["expr"] for panel in _all_panels(dashboard["panels"])
            for target in panel.get("targets", []) if "expr" in target]


def _balanced(expr: str) -> bool:
    """Brackets nest and close, outside of double-quoted strings."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: List[str] = []
    in_string = False
    escaped = False
    for ch in expr:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and not in_string


class DashboardTests(TestCase):

    def setUp(self) -> None:
        self.dashboard = _load_dashboard()

    def test_metrics_doc_lists_metrics(self) -> None:
        """The doc parser below finds the documented tables (guards the other tests)."""
        names, histograms = _documented()
        self.assertIn("poolproxy_requests_total", names)
        self.assertIn("process_resident_memory_bytes", names)
        self.assertIn("poolproxy_pool_acquire_wait_seconds", histograms)

    def test_schema(self) -> None:
        self.assertEqual(self.dashboard["title"], "poolproxy")
        self.assertGreaterEqual(self.dashboard["schemaVersion"], 36)
        self.assertIn("DS_PROMETHEUS", [i["name"] for i in self.dashboard["__inputs"]])

    def test_template_variables(self) -> None:
        variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        self.assertEqual(variables["DS_PROMETHEUS"]["type"], "datasource")
        for name in ("cluster", "backend"):
            self.assertEqual(variables[name]["type"], "query")
            self.assertTrue(variables[name]["definition"].startswith("label_values("),
                            variables[name]["definition"])
            self.assertIn(f", {name})", variables[name]["definition"])

    def test_datasource_is_variable(self) -> None:
        """Every panel and target uses the ${DS_PROMETHEUS} data source."""
        for panel in _all_panels(self.dashboard["panels"]):
            if panel["type"] == "row":
                continue
            self.assertEqual(panel["datasource"]["uid"], "${DS_PROMETHEUS}", panel["title"])
            for target in panel["targets"]:
                self.assertEqual(target["datasource"]["uid"], "${DS_PROMETHEUS}")

    def test_panels_titled_and_unique_ids(self) -> None:
        panels = list(_all_panels(self.dashboard["panels"]))
        ids = [p["id"] for p in panels]
        self.assertEqual(len(ids), len(set(ids)), ids)
        for panel in panels:
            self.assertIsInstance(panel["id"], int)
            self.assertTrue(panel.get("title", "").strip(), panel)
            self.assertEqual(set(panel["gridPos"]), {"h", "w", "x", "y"})

    def test_exprs_use_documented_metrics(self) -> None:
        names, histograms = _documented()
        exprs = _exprs(self.dashboard)
        self.assertGreater(len(exprs), 10)
        for expr in exprs:
            self.assertTrue(_balanced(expr), f"unbalanced brackets or quotes: {expr}")
            found = METRIC_NAME.findall(expr)
            self.assertTrue(found, f"no poolproxy/process metric in {expr}")
            for name in found:
                if name not in names:
                    base = next((name[:-len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)),
                                None)
                    self.assertIn(base, histograms, f"{name} (in {expr}) is not in docs/metrics.md")

    def test_histogram_quantile_on_buckets(self) -> None:
        exprs = [e for e in _exprs(self.dashboard) if "histogram_quantile" in e]
        self.assertTrue(exprs)
        _, histograms = _documented()
        for expr in exprs:
            # Over a documented histogram's buckets, summed keeping le.
            buckets = re.findall(r"\b((?:poolproxy|process)_[a-z_]+)_bucket\b", expr)
            self.assertTrue(buckets, expr)
            for name in buckets:
                self.assertIn(name, histograms, expr)
            self.assertRegex(expr, r"by \([^)]*\ble\b")

    def test_required_panels(self) -> None:
        """The panels the brief lists are all there, each on its metric."""
        exprs = " ".join(_exprs(self.dashboard))
        for metric in ("poolproxy_requests_total", "poolproxy_admission_rejected_total",
                       "poolproxy_admission_in_flight", "poolproxy_admission_queued",
                       "poolproxy_pool_connections", "poolproxy_pool_acquire_wait_seconds_bucket",
                       "poolproxy_backend_state", "poolproxy_backend_breaker_opened_total",
                       "poolproxy_backend_health_checks_total", "poolproxy_backend_requests_total",
                       "poolproxy_backend_failures_total", "poolproxy_backend_retries_total",
                       "poolproxy_bytes_total", "process_resident_memory_bytes"):
            self.assertIn(metric, exprs)

    def test_latency_panels(self) -> None:
        """p50 and p99 per listener, and per backend, from the duration histograms."""
        exprs = _exprs(self.dashboard)
        for q in ("0.5", "0.99"):
            self.assertIn(f"histogram_quantile({q}, sum by (listener, le) "
                          "(rate(poolproxy_request_duration_seconds_bucket", " ".join(exprs))
            self.assertIn(f"histogram_quantile({q}, sum by (cluster, backend, le) "
                          "(rate(poolproxy_backend_request_duration_seconds_bucket",
                          " ".join(exprs))
        self.assertIn("poolproxy_backend_first_byte_seconds_bucket", " ".join(exprs))


def _lines(out: io.StringIO) -> List[Dict[str, Any]]:
    text = out.getvalue()
    assert not text or text.endswith("\n"), "the last line is not terminated"
    return [json.loads(line) for line in text.splitlines()]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class JSONObserverTests(TestCase):

    def setUp(self) -> None:
        self.out = io.StringIO()
        self.observer = logs.JSONLinesObserver(self.out)
        self.log = Logger(namespace="poolproxy.test", observer=self.observer)

    def test_provides_ilogobserver(self) -> None:
        self.assertTrue(ILogObserver.providedBy(self.observer))
        self.assertTrue(ILogObserver.providedBy(logs.json_observer()))

    def test_one_json_object_per_line(self) -> None:
        self.log.info("backend {backend} is up", backend="127.0.0.1:6379")
        self.log.warn("backend {backend} is down: {why}", backend="127.0.0.1:6380",
                      why="Connection refused", attempts=3, ratio=0.5, fatal=False)
        records = _lines(self.out)
        self.assertEqual(len(records), 2)
        self.assertNotIn("\x1e", self.out.getvalue())
        first, second = records
        self.assertEqual(first["level"], "info")
        self.assertEqual(first["namespace"], "poolproxy.test")
        self.assertEqual(first["message"], "backend 127.0.0.1:6379 is up")
        self.assertEqual(first["backend"], "127.0.0.1:6379")
        self.assertEqual(second["level"], "warn")
        self.assertEqual(second["message"], "backend 127.0.0.1:6380 is down: Connection refused")
        self.assertEqual((second["why"], second["attempts"], second["ratio"], second["fatal"]),
                         ("Connection refused", 3, 0.5, False))
        for record in records:
            self.assertFalse([k for k in record if k.startswith("log_")], record)

    def test_time_iso8601_utc(self) -> None:
        self.observer({"log_time": 0.25, "log_level": LogLevel.error, "log_namespace": "x",
                       "log_format": "boom"})
        (record,) = _lines(self.out)
        self.assertEqual(record["time"], "1970-01-01T00:00:00.250000Z")
        self.assertEqual(record["level"], "error")
        self.assertEqual(record["message"], "boom")

    def test_failure_has_traceback(self) -> None:
        try:
            1 / 0
        except ZeroDivisionError:
            self.log.failure("handling {backend} failed", backend="b1")
        (record,) = _lines(self.out)
        self.assertEqual(record["level"], "critical")
        self.assertEqual(record["message"], "handling b1 failed")
        self.assertIn("Traceback", record["traceback"])
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertIn("test_failure_has_traceback", record["traceback"])
        self.assertEqual(record["exception"], "builtins.ZeroDivisionError")

    def test_unserializable_fields_stringified(self) -> None:
        self.log.info("odd fields", data=b"\xff\x00", mapping={"a": object()},
                      nan=float("nan"), inf=float("inf"), nothing=None, obj=Unprintable(),
                      text="caf\u00e9 \ud800")
        (record,) = _lines(self.out)
        self.assertEqual(record["data"], str(b"\xff\x00"))
        self.assertIsInstance(record["mapping"], str)
        self.assertEqual((record["nan"], record["inf"]), ("nan", "inf"))
        self.assertIsNone(record["nothing"])
        self.assertIn("Unprintable", record["obj"])
        self.assertEqual(record["text"], "caf\u00e9 \ud800")

    def test_bad_format_never_crashes(self) -> None:
        self.log.info("missing {field} and {unclosed", other=1)
        (record,) = _lines(self.out)
        self.assertIsInstance(record["message"], str)
        self.assertEqual(record["other"], 1)

    def test_fields_do_not_override_core(self) -> None:
        self.observer({"log_time": 1.0, "log_level": LogLevel.info, "log_namespace": "ns",
                       "log_format": "hello", "level": "bogus", "namespace": "bogus"})
        (record,) = _lines(self.out)
        self.assertEqual((record["level"], record["namespace"]), ("info", "ns"))

    def test_json_observer_keeps_stdout_at_creation(self) -> None:
        """
        json_observer writes to the stdout of when twistd called it, not to
        the sys.stdout twistd later replaces with a file feeding the log.
        """
        captured = io.StringIO()
        self.patch(logs.sys, "stdout", captured)
        observer = logs.json_observer()
        self.patch(logs.sys, "stdout", io.StringIO())
        Logger(namespace="n", observer=observer).info("to {where}", where="stdout")
        (record,) = _lines(captured)
        self.assertEqual(record["message"], "to stdout")

    def test_global_publisher(self) -> None:
        globalLogPublisher.addObserver(self.observer)
        try:
            Logger(namespace="poolproxy.global").info("via {route}", route="global")
        finally:
            globalLogPublisher.removeObserver(self.observer)
        records = [r for r in _lines(self.out) if r["namespace"] == "poolproxy.global"]
        self.assertEqual([r["message"] for r in records], ["via global"])
        self.assertEqual(records[0]["route"], "global")


class TwistdLoggerTests(TestCase):
    """twistd --logger poolproxy.logs.json_observer, in a real process."""

    def test_twistd_json_lines(self) -> None:
        listen_port, backend_port, metrics_port = free_port(), free_port(), free_port()
        base = os.path.abspath(self.mktemp())
        stdout_path, stderr_path = base + "-stdout.log", base + "-stderr.log"
        args = twistd_command(
            "--logger", "poolproxy.logs.json_observer", "poolproxy",
            "--listen", f"tcp:{listen_port}:interface=127.0.0.1",
            "--backend", f"127.0.0.1:{backend_port}",
            "--metrics", f"tcp:{metrics_port}:interface=127.0.0.1",
            "--check-interval", "0")
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(args, stdout=out, stderr=err, cwd=ROOT)

        def cleanup() -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait(20)

        self.addCleanup(cleanup)
        wait_port(listen_port, proc, log=stderr_path)

        def logged() -> bool:
            with open(stdout_path, "rb") as f:
                return b"poolproxy listening on" in f.read()

        # The port is bound before the service starts and says so: wait for
        # the line, or SIGTERM could come between the two.
        wait_until(logged, proc, "the listening line", log=stderr_path)
        proc.terminate()
        proc.wait(20)

        with open(stdout_path, encoding="utf-8") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        self.assertTrue(lines)
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                self.fail(f"not JSON: {line!r}")
        for record in records:
            self.assertIsInstance(record, dict)
            self.assertEqual({"time", "level", "namespace", "message"} - set(record), set())
        listening = [r for r in records if r["message"].startswith("poolproxy listening on")]
        self.assertEqual(len(listening), 1, records)
        self.assertIn(f"tcp:{listen_port}:interface=127.0.0.1", listening[0]["message"])
        self.assertEqual(listening[0]["listen"], f"tcp:{listen_port}:interface=127.0.0.1")
        self.assertEqual(listening[0]["namespace"], "poolproxy.service.ProxyService")


class OperationsDocTests(TestCase):

    def test_sections(self) -> None:
        with open(OPERATIONS_DOC, encoding="utf-8") as f:
            text = f.read()
        self.assertRegex(text, r"(?m)^## Logging")
        self.assertRegex(text, r"(?m)^## Grafana")
        self.assertIn("--logger poolproxy.logs.json_observer", text)
        self.assertIn("grafana-dashboard.json", text)
