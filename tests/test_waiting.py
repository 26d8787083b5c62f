"""
poolproxy.util.waiting.wait_until, on a Clock: what shutdown and reload wait with.
"""

from __future__ import annotations

from typing import List

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.util.waiting import wait_until


class WaitUntilTests(SynchronousTestCase):
    def test_done_at_once(self) -> None:
        """A condition already true fires at once, with True, and leaves no timer."""
        clock = Clock()
        self.assertIs(self.successResultOf(wait_until(clock, lambda: True, 5.0)), True)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_done_later(self) -> None:
        """It is checked every interval, and fires with True once it holds."""
        clock, left = Clock(), [3]
        d = wait_until(clock, lambda: left[0] == 0, 5.0)
        for _ in range(3):
            self.assertNoResult(d)
            left[0] -= 1
            clock.advance(0.05)
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """A condition that never holds fires with False after the timeout, not before."""
        clock = Clock()
        checks: List[float] = []
        d = wait_until(clock, lambda: checks.append(clock.seconds()) is not None, 1.0)
        clock.pump([0.05] * 19)
        self.assertNoResult(d)
        clock.advance(0.05)
        self.assertIs(self.successResultOf(d), False)
        self.assertEqual(len(checks), 21)  # at once, then every 50 ms up to 1 s
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_zero_timeout(self) -> None:
        """A timeout of 0 checks once."""
        clock = Clock()
        self.assertIs(self.successResultOf(wait_until(clock, lambda: False, 0.0)), False)
