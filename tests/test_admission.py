"""
Unit tests of L{poolproxy.proxy.admission.Admission} on a L{Clock}.
"""

from __future__ import annotations

from typing import List

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.proxy.admission import Admission, Overloaded


class AdmissionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def test_fast_path_without_deferred(self) -> None:
        """
        While a worker is free, L{Admission.try_acquire} admits without a
        Deferred; once all are busy it says no and queues nothing.
        """
        gate = Admission(2, 5, 1.0, clock=self.clock)
        self.assertTrue(gate.try_acquire())
        self.assertTrue(gate.try_acquire())
        self.assertFalse(gate.try_acquire())
        self.assertEqual((gate.in_flight, gate.queued, gate.admitted), (2, 0, 2))
        gate.release()
        gate.release()
        self.assertEqual(gate.in_flight, 0)

    def test_queue_then_admit_in_order(self) -> None:
        """
        Requests beyond C{max_concurrency} queue and are admitted in arrival
        order as workers are released, with their queue wait recorded.
        """
        gate = Admission(1, 5, 10.0, clock=self.clock)
        self.successResultOf(gate.acquire())
        order: List[int] = []
        waiting = [gate.acquire().addCallback(lambda _, i=i: order.append(i)) for i in range(3)]
        self.assertEqual(gate.queued, 3)
        self.clock.advance(2.0)
        gate.release()
        self.assertEqual(order, [0])
        gate.release()
        gate.release()
        self.assertEqual(order, [0, 1, 2])
        for d in waiting:
            self.successResultOf(d)
        gate.release()
        self.assertEqual(gate.queue_wait.count, 3)
        self.assertEqual(gate.in_flight, 0)

    def test_queue_full_rejects_at_once(self) -> None:
        """
        With the queue full, a request fails at once with
        L{Overloaded}C{("queue_full")} and is counted.
        """
        gate = Admission(1, 2, 10.0, clock=self.clock)
        gate.try_acquire()
        queued = [gate.acquire(), gate.acquire()]
        failure = self.failureResultOf(gate.acquire(), Overloaded)
        self.assertEqual(failure.value.reason, "queue_full")
        self.assertEqual(gate.rejected["queue_full"], 1)
        for _ in range(3):
            gate.release()
        for d in queued:
            self.successResultOf(d)

    def test_zero_queue(self) -> None:
        """
        C{queue_size} 0 means reject at once whenever every worker is busy.
        """
        gate = Admission(1, 0, 10.0, clock=self.clock)
        self.successResultOf(gate.acquire())
        self.failureResultOf(gate.acquire(), Overloaded)
        gate.release()

    def test_queue_timeout(self) -> None:
        """
        A queued request not admitted within C{queue_timeout} fails with
        L{Overloaded}C{("queue_timeout")}, leaves the queue, and a later
        release does not admit it.
        """
        gate = Admission(1, 5, 3.0, clock=self.clock)
        gate.try_acquire()
        d = gate.acquire()
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.failureResultOf(d, Overloaded).value.reason, "queue_timeout")
        self.assertEqual((gate.queued, gate.rejected["queue_timeout"]), (0, 1))
        gate.release()
        self.assertEqual(gate.in_flight, 0)

    def test_cancel_frees_place(self) -> None:
        """
        Cancelling a queued request (its client left) frees its place and
        counts it as abandoned, not rejected.
        """
        gate = Admission(1, 1, 3.0, clock=self.clock)
        gate.try_acquire()
        d = gate.acquire()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((gate.queued, gate.abandoned), (0, 1))
        self.assertEqual(gate.rejected["queue_timeout"], 0)
        # The freed place takes the next request (queue_size is 1).
        again = gate.acquire()
        self.assertEqual(gate.queued, 1)
        gate.release()
        self.successResultOf(again)
        gate.release()
        self.assertEqual(gate.in_flight, 0)
