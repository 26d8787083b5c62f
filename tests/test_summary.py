"""
The rejection summary: one line per interval, only when something was
rejected; on a Clock.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.backends.pool import BackendPool, BackendProtocol, PoolExhausted
from poolproxy.ops.rejections import RejectionSummary
from poolproxy.proxy.admission import Admission, Overloaded
from poolproxy.stats import ListenerStats
from poolproxy.testing import FakeEndpoint


class SummaryTests(SynchronousTestCase):
    def test_one_line_per_interval_when_rejecting(self) -> None:
        """
        500 rejections within an interval make one log line with their
        count and reasons; a quiet interval makes none.
        """
        clock = Clock()
        admission = Admission(1, 0, 1.0, clock=clock)
        endpoint = FakeEndpoint()
        pool = BackendPool("b", endpoint, BackendProtocol, size=1, max_waiters=0,
                           clock=clock)
        summary = RejectionSummary(admission, lambda: [pool], clock, interval=10.0)
        summary.start()
        self.addCleanup(summary.stop)
        admission.try_acquire()
        first = pool.acquire()  # connecting: the pool is now full
        with capturedLogs() as events:
            for _ in range(500):
                self.failureResultOf(admission.acquire(), Overloaded)
            self.failureResultOf(pool.acquire(), PoolExhausted)
            endpoint.succeed()
            self.successResultOf(first).release()
            clock.advance(10.0)
            clock.advance(10.0)  # nothing new: no line
        lines = [e for e in events if e.get("log_format", "").startswith("rejected")]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["total"], 501)
        self.assertEqual(lines[0]["counts"], {"admission queue_full": 500, "b exhausted": 1})

    def test_pools_added_later_are_counted(self) -> None:
        """A pool a reload adds to the service's list is summarised too."""
        clock = Clock()
        admission = Admission(1, 0, 1.0, clock=clock)
        pools: list = []
        summary = RejectionSummary(admission, lambda: pools, clock, interval=10.0)
        summary.start()
        self.addCleanup(summary.stop)
        pool = BackendPool("late", FakeEndpoint(), BackendProtocol, size=1, max_waiters=0,
                           connect_timeout=60.0, acquire_timeout=60.0, clock=clock)
        pools.append(pool)
        first = pool.acquire()
        with capturedLogs() as events:
            self.failureResultOf(pool.acquire(), PoolExhausted)
            clock.advance(10.0)
        lines = [e for e in events if e.get("log_format", "").startswith("rejected")]
        self.assertEqual([line["counts"] for line in lines], [{"late exhausted": 1}])
        first.addErrback(lambda _: None)  # cancelled below: the test is over
        first.cancel()
        pool.close()

    def test_refused_commands_and_failed_auth(self) -> None:
        """
        Commands the policy refused and failed AUTHs are summed per listener
        in the same one line per interval, only for intervals that had some.
        """
        clock = Clock()
        stats = ListenerStats()
        listener = SimpleNamespace(name="front", stats=stats)
        summary = RejectionSummary(Admission(1, 0, 1.0, clock=clock), lambda: [], clock,
                                   interval=10.0, listeners=lambda: [listener])
        summary.start()
        self.addCleanup(summary.stop)
        with capturedLogs() as events:
            for _ in range(3):
                stats.auth_failures += 1
            stats.commands_refused.add("SHUTDOWN")
            clock.advance(10.0)
            clock.advance(10.0)  # nothing new: no line
            stats.commands_refused.add("(unknown)", 2)
            clock.advance(10.0)
        lines = [e["counts"] for e in events if e.get("log_format", "").startswith("rejected")]
        self.assertEqual(lines, [{"front failed auth": 3, "front refused SHUTDOWN": 1},
                                 {"front refused (unknown)": 2}])

    def test_connection_limits_and_accept_errors(self) -> None:
        """
        Connections refused per source, lost to accept errors (EMFILE),
        clients closed by send_timeout and the web endpoint's accept errors
        are summed in the one line per interval; the times connection
        limits stopped a listener accepting in a line of their own, also
        once per interval however often it happened.
        """
        from poolproxy.stats import Tally

        clock = Clock()
        stats = ListenerStats()
        web = Tally()
        listener = SimpleNamespace(name="front", stats=stats)
        summary = RejectionSummary(Admission(1, 0, 1.0, clock=clock), lambda: [], clock,
                                   interval=10.0, listeners=lambda: [listener],
                                   web_accept_errors=lambda: web)
        summary.start()
        self.addCleanup(summary.stop)
        with capturedLogs() as events:
            stats.refused.add("per_source", 40)
            stats.accept_errors.add("EMFILE", 158)
            stats.timeouts.add("send")
            stats.timeouts.add("idle", 7)  # routine: not summarised
            web.add("EMFILE", 2)
            stats.limit_pauses += 300
            clock.advance(10.0)
            clock.advance(10.0)  # nothing new: no line
        rejected = [e["counts"] for e in events if e.get("log_format", "").startswith("rejected")]
        self.assertEqual(rejected, [{
            "front connections refused (max_connections_per_source)": 40,
            "front connections lost to accept errors (EMFILE)": 158,
            "front send timeouts": 1,
            "web endpoint connections lost to accept errors (EMFILE)": 2}])
        pauses = [e["pauses"] for e in events
                  if e.get("log_format", "").startswith("connection limits")]
        self.assertEqual(pauses, [{"front": 300}])

    def test_bad_requests_and_timeouts(self) -> None:
        """
        Requests refused as malformed or too large, and http deadlines that
        passed (by phase), are summed per listener in the same line.
        """
        clock = Clock()
        stats = ListenerStats()
        listener = SimpleNamespace(name="web", stats=stats)
        summary = RejectionSummary(Admission(1, 0, 1.0, clock=clock), lambda: [], clock,
                                   interval=10.0, listeners=lambda: [listener])
        summary.start()
        self.addCleanup(summary.stop)
        with capturedLogs() as events:
            stats.requests.add("malformed", 4)
            stats.requests.add("too_large")
            stats.timeouts.add("body", 50)
            stats.timeouts.add("send")
            clock.advance(10.0)
            clock.advance(10.0)
        lines = [e["counts"] for e in events if e.get("log_format", "").startswith("rejected")]
        self.assertEqual(lines, [{"web malformed requests": 4, "web too_large requests": 1,
                                  "web body timeouts": 50, "web send timeouts": 1}])
