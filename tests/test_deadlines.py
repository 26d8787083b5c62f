"""
poolproxy.util.deadlines: many timeouts of one length on one timer, on task.Clock.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.util.deadlines import Deadlines


class DeadlinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.expired: List[Any] = []
        self.deadlines = Deadlines(self.clock, 5.0, self.expired.append)

    def test_each_expires_its_timeout_after_its_start(self) -> None:
        self.deadlines.start("a")
        self.clock.advance(2.0)
        self.deadlines.start("b")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # one timer for both
        self.clock.advance(2.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(1.9)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, ["a", "b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_never_expire_and_leave_no_timer(self) -> None:
        a = self.deadlines.start("a")
        b = self.deadlines.start("b")
        self.deadlines.cancel(b)  # in the middle: dropped when reached
        self.assertEqual(len(self.deadlines), 1)
        self.deadlines.cancel(a)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # nothing left to time
        self.clock.advance(10)
        self.assertEqual(self.expired, [])
        self.deadlines.cancel(a)  # twice: nothing happens
        self.deadlines.cancel(None)

    def test_oldest_cancelled_the_next_still_expires_on_time(self) -> None:
        a = self.deadlines.start("a")
        self.clock.advance(1.0)
        self.deadlines.start("b")
        self.deadlines.cancel(a)
        self.clock.advance(4.0)  # a's deadline: the timer finds b not due yet
        self.assertEqual(self.expired, [])
        self.clock.advance(1.0)
        self.assertEqual(self.expired, ["b"])

    def test_expiry_may_start_another(self) -> None:
        def again(item: Any) -> None:
            self.expired.append(item)
            if item == "a":
                self.deadlines.start("c")

        self.deadlines = Deadlines(self.clock, 5.0, again)
        self.deadlines.start("a")
        self.clock.advance(1.0)
        self.deadlines.start("b")
        self.clock.advance(4.0)
        self.assertEqual(self.expired, ["a"])
        self.clock.advance(1.0)  # b is due 1 s later, not 5
        self.assertEqual(self.expired, ["a", "b"])
        self.clock.advance(4.0)
        self.assertEqual(self.expired, ["a", "b", "c"])
