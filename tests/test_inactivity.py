"""
L{poolproxy.util.inactivity.Inactivity} and L{poolproxy.util.throttled.ThrottledLog}
on a L{Clock}.
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.util.inactivity import Inactivity
from poolproxy.util.throttled import ThrottledLog


class InactivityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.last = 0.0
        self.expired: List[str] = []

    def timer(self, idle: float, total: float) -> Inactivity:
        return Inactivity(self.clock, idle, total, lambda: self.last, self.expired.append)

    def test_idle_from_last_activity(self) -> None:
        """
        It expires idle seconds after the last activity recorded, however
        often activity came before; one timer, armed again only when it fires.
        """
        timer = self.timer(10.0, 0.0)
        for t in (3.0, 6.0, 9.0, 12.0):
            self.clock.advance(3.0)
            self.last = t
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(9.9)  # t = 21.9
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["idle"])
        self.assertFalse(timer.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_total_bounds_a_busy_phase(self) -> None:
        """Activity keeps the idle timeout away, not the total one."""
        self.timer(10.0, 25.0)
        for _ in range(24):
            self.clock.advance(1.0)
            self.last = self.clock.seconds()
        self.assertEqual(self.expired, [])
        self.clock.advance(1.0)
        self.assertEqual(self.expired, ["total"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_total_only(self) -> None:
        """With idle 0 only the total counts."""
        self.timer(0.0, 5.0)
        self.clock.advance(4.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["total"])

    def test_off_and_cancel(self) -> None:
        """Both 0: no timer at all; cancel stops one, twice is harmless."""
        self.assertFalse(self.timer(0.0, 0.0).running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        timer = self.timer(1.0, 0.0)
        timer.cancel()
        timer.cancel()
        self.clock.advance(10.0)
        self.assertEqual(self.expired, [])


class FakeLog:
    def __init__(self) -> None:
        self.lines: List[Dict[str, Any]] = []

    def warn(self, format: str, **fields: Any) -> None:
        self.lines.append(dict(fields, format=format))


class ThrottledLogTests(SynchronousTestCase):
    def test_one_line_per_key_per_interval(self) -> None:
        """
        The first occurrence of a key is logged; the others within the
        interval are counted and told with the next line of that key; other
        keys are not held back.
        """
        clock, log = Clock(), FakeLog()
        throttled = ThrottledLog(log, clock, interval=10.0)
        for _ in range(5):
            throttled.warn("a", "problem {what}", what="a")
            clock.advance(1.0)
        throttled.warn("b", "problem {what}", what="b")
        clock.advance(5.0)
        throttled.warn("a", "problem {what}", what="a")
        self.assertEqual([(line["what"], line["suppressed"]) for line in log.lines],
                         [("a", 0), ("b", 0), ("a", 4)])
        self.assertIn("4 more", log.lines[-1]["format"].format(**log.lines[-1]))
