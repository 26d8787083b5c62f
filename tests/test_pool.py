"""
Unit tests of L{poolproxy.backends.pool.BackendPool}: every timing rule on a
L{Clock}, connections through L{poolproxy.testing.FakeEndpoint}.
"""

from __future__ import annotations

from typing import Any, List

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.backends.pool import (
    AcquireTimeout,
    BackendPool,
    BackendProtocol,
    BackendUnavailable,
    LeaseError,
    PoolClosed,
    PooledConnection,
    PoolExhausted,
)
from poolproxy.testing import FakeEndpoint
from poolproxy.util.tlsclient import TLSHandshakeFailed


class PoolTestCase(SynchronousTestCase):
    def make_pool(self, **kwargs: Any) -> BackendPool:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()
        settings = dict(size=2, min_idle=0, max_waiters=10, acquire_timeout=5.0,
                        connect_timeout=3.0, idle_timeout=60.0, max_lifetime=3600.0,
                        max_uses=0, health_interval=1.0)
        settings.update(kwargs)
        pool = BackendPool("backend-a", self.endpoint, BackendProtocol,
                           clock=self.clock, **settings)  # type: ignore[arg-type]
        self.addCleanup(self.assert_closed_cleanly, pool)
        return pool

    def assert_closed_cleanly(self, pool: BackendPool) -> None:
        """
        Closing the pool ends every connection and leaves no timer behind.
        """
        done = pool.close()
        self.endpoint.deliver_losses()
        for conn in list(pool._leased):
            conn.release()
        self.successResultOf(done)
        self.assertEqual(pool.total, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def acquired(self, pool: BackendPool) -> PooledConnection:
        d = pool.acquire()
        if not self.endpoint.attempts or d.called:
            return self.successResultOf(d)
        self.endpoint.succeed()
        return self.successResultOf(d)


class LeaseTests(PoolTestCase):
    def test_connects_on_demand_and_reuses(self) -> None:
        """
        The first acquire connects; a released connection is reused by the
        next acquire without connecting again.
        """
        pool = self.make_pool()
        self.assertEqual(self.endpoint.attempts, [])
        conn = self.acquired(pool)
        self.assertTrue(conn.leased)
        conn.release()
        self.assertEqual(pool.stats(), {"idle": 1, "leased": 0, "connecting": 0, "waiters": 0})
        again = self.acquired(pool)
        self.assertIs(again, conn)
        self.assertEqual(again.uses, 2)
        self.assertEqual(len(self.endpoint.transports), 1)
        again.release()

    def test_most_recently_used_first(self) -> None:
        """
        Idle connections are reused last-in first-out, so the surplus idles
        out instead of all of them staying warm.
        """
        pool = self.make_pool()
        a, b = self.acquired(pool), self.acquired(pool)
        a.release()
        b.release()
        self.assertIs(self.acquired(pool), b)
        self.assertIs(self.acquired(pool), a)
        a.release()
        b.release()

    def test_cap_and_fifo_waiters(self) -> None:
        """
        No more than C{size} connections exist; further acquires wait and are
        served in arrival order as connections are released.
        """
        pool = self.make_pool(size=2)
        first, second = self.acquired(pool), self.acquired(pool)
        waiting = [pool.acquire() for _ in range(3)]
        self.assertEqual(self.endpoint.attempts, [])
        self.assertEqual(pool.total, 2)
        self.assertEqual(pool.waiters, 3)
        order: List[int] = []
        for i, d in enumerate(waiting):
            d.addCallback(lambda conn, i=i: order.append(i) or conn)
        first.release()
        second.release()
        self.assertEqual(order, [0, 1])
        self.successResultOf(waiting[0]).release()
        self.assertEqual(order, [0, 1, 2])
        self.successResultOf(waiting[1]).release()
        self.successResultOf(waiting[2]).release()
        self.assertEqual(len(self.endpoint.transports), 2)

    def test_waiters_bounded(self) -> None:
        """
        Past C{max_waiters} waiting acquires, another fails at once with
        L{PoolExhausted} and is counted.
        """
        pool = self.make_pool(size=1, max_waiters=2)
        held = self.acquired(pool)
        waiting = [pool.acquire(), pool.acquire()]
        self.failureResultOf(pool.acquire(), PoolExhausted)
        self.assertEqual(pool.acquire_failures["exhausted"], 1)
        held.release()
        self.successResultOf(waiting[0]).release()
        self.successResultOf(waiting[1]).release()

    def test_no_waiting_still_connects(self) -> None:
        """
        max_waiters 0 means no waiting for a busy connection, not "never
        connect": an acquire with room in the pool gets a new connection; one
        more, with the pool full, fails at once.
        """
        pool = self.make_pool(size=1, max_waiters=0)
        d = pool.acquire()
        self.assertNoResult(d)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.failureResultOf(pool.acquire(), PoolExhausted)
        self.endpoint.succeed()
        self.successResultOf(d).release()

    def test_waiters_time_out_in_order_on_one_timer(self) -> None:
        """
        Waiters that came at different times each time out acquire_timeout
        after they came, and one timer at a time serves them all.
        """
        pool = self.make_pool(size=1, acquire_timeout=5.0)
        held = self.acquired(pool)
        first = pool.acquire()
        self.clock.advance(2.0)
        second = pool.acquire()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # one expiry timer for both
        self.clock.advance(3.0)
        self.failureResultOf(first, AcquireTimeout)
        self.assertNoResult(second)
        self.clock.advance(1.9)
        self.assertNoResult(second)
        self.clock.advance(0.1)
        self.failureResultOf(second, AcquireTimeout)
        self.assertEqual(pool.acquire_failures["timeout"], 2)
        held.release()

    def test_wait_without_deferreds(self) -> None:
        """
        wait() leases through callbacks: at once when a connection is idle,
        else when one is released, in order with Deferred waiters; a
        cancelled waiter is never called; failures come as Failures.
        """
        pool = self.make_pool(size=1, max_waiters=3, acquire_timeout=5.0)
        got: List[Any] = []
        failed: List[Any] = []
        conn = self.acquired(pool)
        conn.release()
        self.assertIsNone(pool.wait(got.append, failed.append))  # idle: at once
        self.assertEqual(got, [conn])
        deferred = pool.acquire()
        waiter = pool.wait(got.append, failed.append)
        gone = pool.wait(got.append, failed.append)
        self.assertIsNotNone(waiter)
        gone.cancel()  # type: ignore[union-attr]
        self.assertEqual(pool.waiters, 2)
        conn.release()  # to the Deferred waiter first
        self.assertIs(self.successResultOf(deferred), conn)
        conn.release()
        self.assertEqual(got, [conn, conn])
        self.assertEqual(pool.waiters, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # no one waits: no timer
        for _ in range(3):
            pool.wait(got.append, failed.append)
        self.assertIsNone(pool.wait(got.append, failed.append))  # waiters full: at once
        self.assertTrue(failed[0].check(PoolExhausted))
        self.clock.advance(5.0)
        self.assertEqual([f.check(AcquireTimeout) for f in failed[1:]], [AcquireTimeout] * 3)
        conn.release()
        self.assertEqual(len(got), 2)  # the cancelled waiter was never called

    def test_fresh_connect_is_not_counted_as_serving_waiters(self) -> None:
        """
        A connect started by acquire_fresh goes to its retry, never to a
        waiter: a waiter arriving meanwhile gets a connect of its own while
        there is room, instead of waiting for a release or its timeout.
        """
        pool = self.make_pool(size=3, acquire_timeout=5.0)
        held = self.acquired(pool)
        fresh = pool.acquire_fresh()  # a retry's own connect
        self.assertEqual(len(self.endpoint.attempts), 1)
        waiting = pool.acquire()
        self.assertEqual(len(self.endpoint.attempts), 2)  # a connect for the waiter too
        self.endpoint.succeed(2)
        self.successResultOf(fresh).release()
        self.successResultOf(waiting).release()
        held.release()

    def test_acquire_timeout(self) -> None:
        """
        A waiter not served within C{acquire_timeout} fails with
        L{AcquireTimeout}; its place is freed and the next connection goes to
        the next waiter.
        """
        pool = self.make_pool(size=1, acquire_timeout=5.0)
        held = self.acquired(pool)
        late = pool.acquire()
        self.clock.advance(4.9)
        self.assertNoResult(late)
        self.clock.advance(0.1)
        self.failureResultOf(late, AcquireTimeout)
        self.assertEqual(pool.waiters, 0)
        self.assertEqual(pool.acquire_failures["timeout"], 1)
        held.release()
        self.assertEqual(pool.idle, 1)

    def test_cancelled_waiter_frees_its_place(self) -> None:
        """
        Cancelling a waiting acquire (the client left) removes it; the
        connection goes to the next waiter.
        """
        pool = self.make_pool(size=1)
        held = self.acquired(pool)
        gone, next_one = pool.acquire(), pool.acquire()
        gone.cancel()
        self.failureResultOf(gone, CancelledError)
        held.release()
        self.successResultOf(next_one).release()

    def test_acquire_wait_observed(self) -> None:
        """
        The time from acquire to lease is recorded for every lease.
        """
        pool = self.make_pool(size=1)
        held = self.acquired(pool)
        d = pool.acquire()
        self.clock.advance(0.3)
        held.release()
        self.successResultOf(d).release()
        self.assertEqual(pool.acquire_wait.count, 2)
        self.assertAlmostEqual(pool.acquire_wait.total, 0.3)

    def test_release_twice_is_an_error(self) -> None:
        """
        Each lease ends exactly once: a second release or discard raises
        L{LeaseError} and changes nothing.
        """
        pool = self.make_pool()
        conn = self.acquired(pool)
        conn.release()
        self.assertRaises(LeaseError, conn.release)
        self.assertRaises(LeaseError, conn.discard, "x")
        self.assertEqual(pool.idle, 1)

    def test_discard_closes_and_frees_slot(self) -> None:
        """
        A discarded connection is closed with its reason counted, and its
        slot serves a waiter with a new connection.
        """
        pool = self.make_pool(size=1)
        conn = self.acquired(pool)
        waiting = pool.acquire()
        conn.discard("session_end")
        self.assertTrue(self.endpoint.transports[0].disconnecting)
        self.assertEqual(pool.closes["session_end"], 1)
        self.endpoint.deliver_losses()
        self.assertEqual(pool.closes["backend_closed"], 0)
        self.endpoint.succeed()
        self.successResultOf(waiting).release()


class ConnectFailureTests(PoolTestCase):
    def test_connect_timeout(self) -> None:
        """
        A connect that does not finish within C{connect_timeout} is
        cancelled; the waiter fails with L{BackendUnavailable}, the backend is
        marked down and one log line says why.
        """
        pool = self.make_pool(connect_timeout=3.0)
        with capturedLogs() as events:
            d = pool.acquire()
            self.clock.advance(2.9)
            self.assertNoResult(d)
            self.clock.advance(0.1)
        failure = self.failureResultOf(d, BackendUnavailable)
        self.assertIn("timed out after 3s", failure.getErrorMessage())
        self.assertEqual(self.endpoint.cancelled, 1)
        self.assertEqual(pool.state, "down")
        self.assertEqual(pool.connects["timeout"], 1)
        down = [e for e in events if "is down" in e.get("log_format", "")]
        self.assertEqual(len(down), 1)
        self.assertEqual(down[0]["why"], "connect timed out after 3s")

    def test_refused_fails_waiters_at_once(self) -> None:
        """
        When connecting fails, waiters that no pending connect can serve fail
        at once instead of waiting out their acquire timeout.
        """
        pool = self.make_pool(size=2)
        waiting = [pool.acquire() for _ in range(5)]
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.endpoint.fail(1, ConnectionRefusedError("refused"))
        # One connect is still pending: it may serve one waiter.
        failed = [d for d in waiting if d.called]
        self.assertEqual(len(failed), 4)
        for d in failed:
            self.failureResultOf(d, BackendUnavailable)
        self.endpoint.succeed()
        self.successResultOf(waiting[4]).release()
        self.assertEqual(pool.state, "up")

    def test_down_logged_once_then_up(self) -> None:
        """
        Repeated failures log the down transition once; the next successful
        connect logs that the backend is up again.
        """
        pool = self.make_pool()
        with capturedLogs() as events:
            for _ in range(3):
                d = pool.acquire()
                self.endpoint.fail()
                self.failureResultOf(d, BackendUnavailable)
            conn = self.acquired(pool)
        formats = [e["log_format"] for e in events]
        self.assertEqual(formats.count("backend {backend} is down: {why}"), 1)
        self.assertEqual(formats.count("backend {backend} is up"), 1)
        conn.release()

    def test_tls_failure_counted_and_logged_once_per_interval(self) -> None:
        """
        A failed TLS handshake is a failed connect counted as tls_error, and
        says why: one line as the backend goes down, then, while the pool's
        probes keep failing, at most one line per TLS_LOG_INTERVAL with how
        many failed since.
        """
        pool = self.make_pool(health_interval=1.0)
        failure = TLSHandshakeFailed("TLS handshake failed: certificate verify failed")
        with capturedLogs() as events:
            pool.start()
            self.endpoint.fail(1, failure)
            for _ in range(int(pool.TLS_LOG_INTERVAL) * 2):  # two intervals of probes
                self.clock.advance(1.0)
                self.endpoint.fail(1, failure)
        self.assertEqual(pool.connects["tls_error"], 1 + 2 * int(pool.TLS_LOG_INTERVAL))
        self.assertEqual(pool.connects["failed"], 0)
        self.assertEqual(pool.last_error, "TLS handshake failed: certificate verify failed")
        lines = [formatEvent(e) for e in events if "down" in e.get("log_format", "")]
        interval = int(pool.TLS_LOG_INTERVAL)
        self.assertEqual(lines, [
            "backend backend-a is down: TLS handshake failed: certificate verify failed",
            "backend backend-a is still down: TLS handshake failed: certificate verify failed "
            f"({interval} TLS handshakes failed since the last line)",
            "backend backend-a is still down: TLS handshake failed: certificate verify failed "
            f"({interval} TLS handshakes failed since the last line)"])

    def test_backend_back_without_restart(self) -> None:
        """
        With no traffic, maintenance probes a backend that is down every
        C{health_interval} and notices when it is back.
        """
        pool = self.make_pool(health_interval=1.0)
        pool.start()
        self.endpoint.fail()
        self.assertEqual(pool.state, "down")
        self.assertEqual(self.endpoint.attempts, [])
        self.clock.advance(1.0)
        self.assertEqual(len(self.endpoint.attempts), 1)
        self.endpoint.succeed()
        self.assertEqual(pool.state, "up")
        self.assertTrue(pool.available)
        self.clock.advance(1.0)
        self.assertEqual(self.endpoint.attempts, [])


class RetirementTests(PoolTestCase):
    def test_idle_timeout(self) -> None:
        """
        An idle connection is closed by maintenance once idle for
        C{idle_timeout}.
        """
        pool = self.make_pool(idle_timeout=10.0, health_interval=1.0)
        pool.start()
        self.endpoint.succeed()  # the start-up probe
        self.assertEqual(pool.idle, 1)
        self.clock.advance(9.0)
        self.assertEqual(pool.idle, 1)
        self.clock.advance(1.0)
        self.assertEqual(pool.idle, 0)
        self.assertEqual(pool.closes["idle_timeout"], 1)
        self.assertTrue(self.endpoint.transports[0].disconnecting)

    def test_reuse_restarts_idle_clock(self) -> None:
        """
        Idle time counts from the last release, not from connecting.
        """
        pool = self.make_pool(idle_timeout=10.0, health_interval=1.0)
        pool.start()
        self.endpoint.succeed()
        self.clock.advance(8.0)
        conn = self.acquired(pool)
        self.clock.advance(5.0)
        conn.release()
        self.clock.advance(9.0)
        self.assertEqual(pool.idle, 1)
        self.clock.advance(1.0)
        self.assertEqual(pool.idle, 0)

    def test_lifetime_never_mid_lease(self) -> None:
        """
        A connection past C{max_lifetime} is not touched while leased; it is
        closed when released, and never handed out again.
        """
        pool = self.make_pool(max_lifetime=30.0, health_interval=1.0)
        pool.start()
        self.endpoint.succeed()
        conn = self.acquired(pool)
        self.clock.advance(60.0)
        self.assertFalse(self.endpoint.transports[0].disconnecting)
        conn.release()
        self.assertTrue(self.endpoint.transports[0].disconnecting)
        self.assertEqual(pool.closes["max_lifetime"], 1)
        self.assertEqual(pool.idle, 0)

    def test_lifetime_while_idle(self) -> None:
        """
        An idle connection past C{max_lifetime} is reaped, and an acquire
        never gets it.
        """
        pool = self.make_pool(max_lifetime=5.0, idle_timeout=0, health_interval=100.0)
        pool.start()
        self.endpoint.succeed()
        self.clock.advance(6.0)  # maintenance has not run yet
        d = pool.acquire()
        self.assertNoResult(d)
        self.assertEqual(pool.closes["max_lifetime"], 1)
        self.endpoint.succeed()
        self.successResultOf(d).release()

    def test_max_uses(self) -> None:
        """
        After C{max_uses} leases a connection is closed on release.
        """
        pool = self.make_pool(max_uses=2)
        conn = self.acquired(pool)
        conn.release()
        self.assertIs(self.acquired(pool), conn)
        conn.release()
        self.assertEqual(pool.closes["max_uses"], 1)
        self.assertEqual(pool.idle, 0)

    def test_dead_idle_connection_removed(self) -> None:
        """
        An idle connection the backend closes leaves the pool at once and is
        never handed out.
        """
        pool = self.make_pool()
        conn = self.acquired(pool)
        conn.release()
        self.endpoint.transports[0].lose()
        self.assertEqual(pool.idle, 0)
        self.assertEqual(pool.closes["backend_closed"], 1)
        d = pool.acquire()
        self.assertNoResult(d)
        self.endpoint.succeed()
        fresh = self.successResultOf(d)
        self.assertIsNot(fresh, conn)
        fresh.release()

    def test_dead_leased_connection(self) -> None:
        """
        A leased connection whose backend went away still needs its lease
        ended; releasing it then closes nothing more and frees the slot.
        """
        pool = self.make_pool(size=1)
        conn = self.acquired(pool)
        waiting = pool.acquire()
        self.endpoint.transports[0].lose()
        self.assertTrue(conn.dead)
        self.assertEqual(pool.leased, 1)
        conn.release()
        self.assertEqual(pool.leased, 0)
        self.endpoint.succeed()
        self.successResultOf(waiting).release()


class MaintenanceTests(PoolTestCase):
    def test_min_idle_kept_warm(self) -> None:
        """
        C{min_idle} connections are opened at start and refilled by
        maintenance after one is lost.
        """
        pool = self.make_pool(size=4, min_idle=2, health_interval=1.0)
        pool.start()
        self.assertEqual(len(self.endpoint.attempts), 2)
        self.endpoint.succeed(2)
        self.assertEqual(pool.idle, 2)
        self.endpoint.transports[0].lose()
        self.assertEqual(pool.idle, 1)
        self.clock.advance(1.0)
        self.endpoint.succeed()
        self.assertEqual(pool.idle, 2)

    def test_min_idle_never_exceeds_size(self) -> None:
        """
        Refilling never opens more than C{size} connections, even with every
        connection leased.
        """
        pool = self.make_pool(size=2, min_idle=2, health_interval=1.0)
        pool.start()
        self.endpoint.succeed(2)
        held = [self.acquired(pool), self.acquired(pool)]
        self.clock.advance(5.0)
        self.assertEqual(self.endpoint.attempts, [])
        self.assertEqual(pool.total, 2)
        for conn in held:
            conn.release()


class CloseTests(PoolTestCase):
    def test_close_idle_and_leased(self) -> None:
        """
        Closing closes idle and leased connections and fires once every
        lease has ended; acquiring afterwards fails with L{PoolClosed}.
        """
        pool = self.make_pool(size=3)
        held = self.acquired(pool)
        spare = self.acquired(pool)
        spare.release()
        done = pool.close()
        self.assertEqual(pool.closes["shutdown"], 2)
        self.assertTrue(all(t.disconnecting for t in self.endpoint.transports))
        self.endpoint.deliver_losses()
        self.assertNoResult(done)
        held.release()
        self.successResultOf(done)
        self.failureResultOf(pool.acquire(), PoolClosed)

    def test_close_fails_waiters_and_cancels_connects(self) -> None:
        """
        Closing fails every waiter with L{PoolClosed} and cancels pending
        connects, then fires at once.
        """
        pool = self.make_pool(size=1)
        waiting = [pool.acquire(), pool.acquire()]
        self.assertEqual(len(self.endpoint.attempts), 1)
        done = pool.close()
        for d in waiting:
            self.failureResultOf(d, PoolClosed)
        self.assertEqual(self.endpoint.cancelled, 1)
        self.assertEqual(pool.acquire_failures["closed"], 2)
        # A connect cancelled by shutdown is neither a failure nor an outage.
        self.assertEqual((pool.connects["failed"], pool.connects["timeout"]), (0, 0))
        self.assertNotEqual(pool.state, "down")
        self.successResultOf(done)

    def test_close_aborts_after_grace(self) -> None:
        """
        A leased connection whose backend never finishes closing is aborted
        after the grace period, so shutdown cannot hang on it; the timer is
        not left behind.
        """
        pool = self.make_pool()
        held = self.acquired(pool)
        transport = self.endpoint.transports[0]
        done = pool.close(grace=2.0)
        self.assertTrue(transport.disconnecting)
        self.clock.advance(1.9)
        self.assertFalse(transport.aborted)
        self.clock.advance(0.1)
        self.assertTrue(transport.aborted)
        held.release()
        self.successResultOf(done)


class EvictTests(PoolTestCase):
    def test_evict_closes_idle_and_aborts_leased(self) -> None:
        """
        A backend marked down: its idle connections are closed (never reused)
        and its leased ones aborted, so requests in flight fail at once; the
        leases still end normally and the slots free up.
        """
        pool = self.make_pool(size=3)
        held = self.acquired(pool)
        spare = self.acquired(pool)
        spare.release()
        pool.evict("unhealthy")
        idle_transport, held_transport = self.endpoint.transports[1], self.endpoint.transports[0]
        self.assertTrue(idle_transport.disconnecting)
        self.assertTrue(held_transport.aborted)
        self.assertEqual(pool.closes["unhealthy"], 1)
        self.assertEqual(pool.idle, 0)
        held_transport.lose()
        held.release()
        self.assertEqual(pool.total, 0)
