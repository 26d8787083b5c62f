"""
Unit tests of L{poolproxy.backends.breaker.CircuitBreaker} on a L{Clock}, and a
hypothesis state-machine test against a plain model of its rules.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from poolproxy.backends.breaker import STATES, BreakerSettings, CircuitBreaker


class CircuitBreakerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.changes: List[Tuple[str, str]] = []
        # Cleanups run last-in first-out: every breaker made by make() is
        # stopped first, then no timer may be left.
        self.addCleanup(lambda: self.assertEqual(self.clock.getDelayedCalls(), []))

    def make(self, **kwargs: Any) -> CircuitBreaker:
        kwargs.setdefault("on_change", lambda old, new: self.changes.append((old, new)))
        breaker = CircuitBreaker(BreakerSettings(
            failures_to_open=kwargs.pop("failures_to_open", 5),
            reset_timeout=kwargs.pop("reset_timeout", 5.0),
            max_reset_timeout=kwargs.pop("max_reset_timeout", 60.0),
        ), clock=self.clock, **kwargs)
        self.addCleanup(breaker.stop)
        return breaker

    def trip(self, breaker: CircuitBreaker) -> None:
        for _ in range(breaker.settings.failures_to_open):
            breaker.failure()
        self.assertEqual(breaker.state, "open")

    def open_for(self) -> float:
        """Seconds until the one pending reset timer fires."""
        [call] = self.clock.getDelayedCalls()
        return call.getTime() - self.clock.seconds()

    def test_defaults(self) -> None:
        """
        A new breaker is closed and allows requests; the default settings are
        5 failures, 5 seconds, at most 60 seconds.
        """
        breaker = self.make()
        self.assertEqual(BreakerSettings(), BreakerSettings(5, 5.0, 60.0))
        self.assertEqual(CircuitBreaker(clock=self.clock).settings, BreakerSettings())
        self.assertEqual(breaker.state, "closed")
        self.assertTrue(breaker.allow())
        self.assertEqual((breaker.opened_total, breaker.trial_in_flight), (0, False))

    def test_opens_after_consecutive_failures(self) -> None:
        """
        C{failures_to_open - 1} failures leave the breaker closed; the next
        one opens it, counted once in C{opened_total}, with a reset timer of
        C{reset_timeout}.
        """
        breaker = self.make()
        for _ in range(4):
            breaker.failure()
        self.assertEqual((breaker.state, breaker.consecutive_failures), ("closed", 4))
        self.assertTrue(breaker.allow())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        breaker.failure()
        self.assertEqual(breaker.state, "open")
        self.assertEqual((breaker.opened_total, breaker.consecutive_failures), (1, 0))
        self.assertEqual(self.open_for(), 5.0)

    def test_success_resets_count(self) -> None:
        """
        A success while closed starts the count again: N-1 failures, a
        success and N-1 more failures do not open the breaker; one more does.
        """
        breaker = self.make()
        for _ in range(4):
            breaker.failure()
        breaker.success()
        self.assertEqual(breaker.consecutive_failures, 0)
        for _ in range(4):
            breaker.failure()
        self.assertEqual(breaker.state, "closed")
        breaker.failure()
        self.assertEqual(breaker.state, "open")

    def test_one_failure_opens(self) -> None:
        """
        With C{failures_to_open} 1, the first failure opens the breaker.
        """
        breaker = self.make(failures_to_open=1)
        breaker.failure()
        self.assertEqual(breaker.state, "open")

    def test_open_refuses(self) -> None:
        """
        An open breaker refuses every request, and late outcomes of requests
        sent before it opened change nothing (no second timer either).
        """
        breaker = self.make()
        self.trip(breaker)
        for _ in range(3):
            self.assertFalse(breaker.allow())
        breaker.success()
        breaker.failure()
        breaker.cancel_trial()
        self.assertEqual((breaker.state, breaker.opened_total), ("open", 1))
        self.assertEqual(self.open_for(), 5.0)

    def test_half_open_after_reset_timeout(self) -> None:
        """
        The breaker stays open until C{reset_timeout} has passed, then becomes
        half-open, with no timer left.
        """
        breaker = self.make()
        self.trip(breaker)
        self.clock.advance(4.99)
        self.assertEqual(breaker.state, "open")
        self.assertFalse(breaker.allow())
        self.clock.advance(0.01)
        self.assertEqual(breaker.state, "half_open")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_exactly_one_trial(self) -> None:
        """
        Half-open, C{allow()} is true once, for the trial, which shows as
        C{trial_in_flight}; then false until the trial's outcome is known.
        """
        breaker = self.make()
        self.trip(breaker)
        self.clock.advance(5)
        self.assertFalse(breaker.trial_in_flight)
        self.assertTrue(breaker.allow())
        self.assertTrue(breaker.trial_in_flight)
        for _ in range(3):
            self.assertFalse(breaker.allow())
        self.assertEqual(breaker.state, "half_open")

    def test_stale_outcome_before_trial_ignored(self) -> None:
        """
        Half-open before the trial went, outcomes (of requests sent before
        the breaker opened) neither close nor reopen it.
        """
        breaker = self.make()
        self.trip(breaker)
        self.clock.advance(5)
        breaker.success()
        breaker.failure()
        self.assertEqual((breaker.state, breaker.opened_total), ("half_open", 1))
        self.assertTrue(breaker.allow())

    def test_trial_success_closes(self) -> None:
        """
        The trial's success closes the breaker: requests flow and it takes
        C{failures_to_open} new failures to open it again.
        """
        breaker = self.make()
        self.trip(breaker)
        self.clock.advance(5)
        breaker.allow()
        breaker.success()
        self.assertEqual((breaker.state, breaker.trial_in_flight), ("closed", False))
        self.assertTrue(breaker.allow())
        self.assertTrue(breaker.allow())
        for _ in range(4):
            breaker.failure()
        self.assertEqual(breaker.state, "closed")

    def test_trial_failure_doubles_timeout_up_to_max(self) -> None:
        """
        Each failed trial reopens the breaker for twice as long as the last
        opening, capped at C{max_reset_timeout}: 5, 10, 20, 40, 60, 60.
        """
        breaker = self.make()
        self.trip(breaker)
        waits = [self.open_for()]
        for _ in range(5):
            self.clock.advance(waits[-1])
            self.assertTrue(breaker.allow())
            breaker.failure()
            self.assertEqual(breaker.state, "open")
            waits.append(self.open_for())
        self.assertEqual(waits, [5.0, 10.0, 20.0, 40.0, 60.0, 60.0])
        self.assertEqual(breaker.opened_total, 6)

    def test_cap_not_a_power_of_two(self) -> None:
        """
        The cap applies exactly when the doubled timeout would exceed it.
        """
        breaker = self.make(reset_timeout=5.0, max_reset_timeout=30.0)
        self.trip(breaker)
        waits = [self.open_for()]
        for _ in range(4):
            self.clock.advance(waits[-1])
            breaker.allow()
            breaker.failure()
            waits.append(self.open_for())
        self.assertEqual(waits, [5.0, 10.0, 20.0, 30.0, 30.0])

    def test_close_resets_backoff(self) -> None:
        """
        Once the breaker closes, the back-off starts again at
        C{reset_timeout}.
        """
        breaker = self.make()
        self.trip(breaker)
        for wait in (5, 10):
            self.clock.advance(wait)
            breaker.allow()
            breaker.failure()
        self.assertEqual(self.open_for(), 20.0)
        self.clock.advance(20)
        breaker.allow()
        breaker.success()
        self.assertEqual(breaker.state, "closed")
        self.trip(breaker)
        self.assertEqual(self.open_for(), 5.0)

    def test_cancel_trial_allows_another(self) -> None:
        """
        C{cancel_trial()} for an abandoned trial lets another trial go, and
        that one's outcome decides.
        """
        breaker = self.make()
        self.trip(breaker)
        self.clock.advance(5)
        changes = len(self.changes)
        self.assertTrue(breaker.allow())
        breaker.cancel_trial()
        self.assertEqual((breaker.state, breaker.trial_in_flight), ("half_open", False))
        self.assertEqual(len(self.changes), changes)
        self.assertTrue(breaker.allow())
        self.assertFalse(breaker.allow())
        breaker.success()
        self.assertEqual(breaker.state, "closed")

    def test_cancel_trial_without_trial(self) -> None:
        """
        C{cancel_trial()} does nothing when no trial is in flight: closed, it
        does not open; half-open before the trial, it does not allow two.
        """
        breaker = self.make()
        breaker.cancel_trial()
        self.assertEqual(breaker.state, "closed")
        self.trip(breaker)
        self.clock.advance(5)
        breaker.cancel_trial()
        self.assertTrue(breaker.allow())
        self.assertFalse(breaker.allow())

    def test_on_change_sequence(self) -> None:
        """
        C{on_change} gets C{(old, new)} for every change of state, and only
        for changes: closed, open, half_open, open (failed trial), half_open,
        closed.
        """
        breaker = self.make()
        self.trip(breaker)
        self.clock.advance(5)
        breaker.allow()
        breaker.failure()
        self.clock.advance(10)
        breaker.allow()
        breaker.cancel_trial()
        breaker.allow()
        breaker.success()
        breaker.success()
        self.assertEqual(self.changes, [
            ("closed", "open"),
            ("open", "half_open"),
            ("half_open", "open"),
            ("open", "half_open"),
            ("half_open", "closed"),
        ])
        self.assertEqual(breaker.opened_total, 2)

    def test_on_change_sees_new_state(self) -> None:
        """
        When C{on_change} runs, the breaker already shows the new state, the
        counters are updated and an open breaker's timer is armed.
        """
        seen: List[Tuple[str, int, int]] = []
        breaker: CircuitBreaker
        breaker = self.make(on_change=lambda old, new: seen.append(
            (breaker.state, breaker.opened_total, len(self.clock.getDelayedCalls()))))
        self.trip(breaker)
        self.clock.advance(5)
        self.assertEqual(seen, [("open", 1, 1), ("half_open", 1, 0)])

    def test_on_change_may_feed_outcomes(self) -> None:
        """
        An observer may feed the breaker an outcome from inside C{on_change};
        it takes effect once the transition that called the observer is done:
        a failure fed on closing is counted by the closed breaker.
        """
        def on_change(old: str, new: str) -> None:
            self.changes.append((old, new))
            if new == "closed":
                breaker.failure()

        breaker = self.make(failures_to_open=1, on_change=on_change)
        self.trip(breaker)
        self.clock.advance(5)
        breaker.allow()
        breaker.success()
        self.assertEqual(self.changes[-2:], [("half_open", "closed"), ("closed", "open")])
        self.assertEqual(self.open_for(), 5.0)

    def test_on_change_must_not_call_allow(self) -> None:
        """
        Automat refuses an input that returns a value from inside a
        transition, so an observer calling C{allow()} fails; the failure is
        logged and the transition still completes.
        """
        breaker: CircuitBreaker
        breaker = self.make(on_change=lambda old, new: breaker.allow())
        self.trip(breaker)
        self.assertEqual(self.open_for(), 5.0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_observer_error_logged(self) -> None:
        """
        An observer that raises does not stop the transition: the breaker
        opens, its timer is armed, and the error is logged.
        """
        breaker = self.make(on_change=lambda old, new: 1 // 0)
        self.trip(breaker)
        self.assertEqual(self.open_for(), 5.0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_may_open_refusal(self) -> None:
        """
        When C{may_open()} says no at the threshold, the breaker stays closed
        and keeps counting: each later failure asks again, and it opens as
        soon as the answer is yes.  C{may_open} is asked only at the
        threshold.
        """
        permit = [False]
        asked: List[int] = []

        def may_open() -> bool:
            asked.append(breaker.consecutive_failures)
            return permit[0]

        breaker = self.make(failures_to_open=3, may_open=may_open)
        for _ in range(4):
            breaker.failure()
        self.assertEqual(breaker.state, "closed")
        self.assertTrue(breaker.allow())
        self.assertEqual(asked, [3, 4])
        self.assertEqual(breaker.refused_total, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        permit[0] = True
        breaker.failure()
        self.assertEqual(breaker.state, "open")
        self.assertEqual(asked, [3, 4, 5])
        self.assertEqual(self.changes, [("closed", "open")])

    def test_may_open_refusal_then_success(self) -> None:
        """
        A success after a refused opening resets the count as usual.
        """
        breaker = self.make(failures_to_open=2, may_open=lambda: False)
        breaker.failure()
        breaker.failure()
        breaker.success()
        self.assertEqual(breaker.consecutive_failures, 0)

    def test_failed_trial_reopens_without_asking(self) -> None:
        """
        A failed trial reopens the breaker even if C{may_open()} now says
        no: its backend is ejected already.
        """
        permit = [True]
        breaker = self.make(may_open=lambda: permit[0])
        self.trip(breaker)
        permit[0] = False
        self.clock.advance(5)
        breaker.allow()
        breaker.failure()
        self.assertEqual(breaker.state, "open")

    def test_stop_cancels_timer(self) -> None:
        """
        C{stop()} on an open breaker cancels its reset timer, so no delayed
        call is left; the breaker stays open, and a second stop is harmless.
        """
        breaker = self.make()
        self.trip(breaker)
        breaker.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        breaker.stop()
        self.clock.advance(100)
        self.assertEqual(breaker.state, "open")
        self.assertFalse(breaker.allow())

    def test_stop_arms_no_new_timer(self) -> None:
        """
        After C{stop()} the breaker still counts and opens (whether closed or
        in a trial), but arms no timer: shutdown leaves no delayed call.
        """
        breaker = self.make()
        breaker.stop()
        self.assertTrue(breaker.allow())
        self.trip(breaker)
        self.assertEqual(self.clock.getDelayedCalls(), [])

        other = self.make()
        self.trip(other)
        self.clock.advance(5)
        self.assertTrue(other.allow())
        other.stop()
        other.failure()
        self.assertEqual((other.state, other.opened_total), ("open", 2))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_default_clock_is_global_reactor(self) -> None:
        """
        Without a clock the breaker schedules on the global reactor, and
        C{stop()} cancels that call.
        """
        from twisted.internet import reactor

        before = set(reactor.getDelayedCalls())
        breaker = CircuitBreaker(BreakerSettings(failures_to_open=1))
        breaker.failure()
        [call] = set(reactor.getDelayedCalls()) - before
        breaker.stop()
        self.assertFalse(call.active())

    def test_settings_validated(self) -> None:
        """
        Settings that make no sense are refused when made.
        """
        bads: List[Dict[str, Any]] = [
            dict(failures_to_open=0), dict(reset_timeout=0.0),
            dict(reset_timeout=10.0, max_reset_timeout=5.0)]
        for bad in bads:
            self.assertRaises(ValueError, BreakerSettings, **bad)

    def test_random_sequences_follow_model(self) -> None:
        """
        Under any sequence of requests, outcomes, cancelled trials, refusals,
        clock advances and a stop, the breaker matches a plain model of its
        rules step by step: the state is always one of the three, C{allow()}
        is never true while open, an open breaker has exactly the one timer
        due when the model says (none after stop), and no timer is left.
        """
        run_state_machine_as_test(BreakerModel, settings=settings(
            max_examples=300, stateful_step_count=60, deadline=None, database=None))


class BreakerModel(RuleBasedStateMachine):
    """
    Drives a L{CircuitBreaker} and a few lines of plain bookkeeping that
    restate its rules, and checks that they agree.
    """

    SETTINGS = BreakerSettings(failures_to_open=2, reset_timeout=1.0, max_reset_timeout=3.0)

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.permit = True
        self.changes: List[Tuple[str, str]] = []
        self.breaker = CircuitBreaker(
            self.SETTINGS, clock=self.clock,
            on_change=lambda old, new: self.changes.append((old, new)),
            may_open=lambda: self.permit)
        # The model.
        self.state = "closed"
        self.failures = 0
        self.trial = False
        self.backoff = self.SETTINGS.reset_timeout
        self.due: Optional[float] = None
        self.opened = 0
        self.stopped = False

    def open(self) -> None:
        self.state, self.failures, self.trial = "open", 0, False
        self.opened += 1
        self.due = None if self.stopped else self.clock.seconds() + self.backoff
        self.backoff = min(self.backoff * 2, self.SETTINGS.max_reset_timeout)

    @rule()
    def allow(self) -> None:
        was = self.breaker.state
        allowed = self.breaker.allow()
        if was == "open":
            assert not allowed
        expected = self.state == "closed" or (self.state == "half_open" and not self.trial)
        assert allowed == expected, (self.state, self.trial, allowed)
        if self.state == "half_open":
            self.trial = True

    @rule()
    def success(self) -> None:
        self.breaker.success()
        if self.state == "closed":
            self.failures = 0
        elif self.state == "half_open" and self.trial:
            self.state, self.trial, self.failures = "closed", False, 0
            self.backoff = self.SETTINGS.reset_timeout

    @rule()
    def failure(self) -> None:
        self.breaker.failure()
        if self.state == "closed":
            self.failures += 1
            if self.failures >= self.SETTINGS.failures_to_open and self.permit:
                self.open()
        elif self.state == "half_open" and self.trial:
            self.open()

    @rule()
    def cancel_trial(self) -> None:
        self.breaker.cancel_trial()
        self.trial = False

    @rule(permit=st.booleans())
    def set_permit(self, permit: bool) -> None:
        self.permit = permit

    @rule(quarters=st.integers(min_value=0, max_value=30))
    def advance(self, quarters: int) -> None:
        self.clock.advance(quarters / 4)
        if self.state == "open" and self.due is not None and self.clock.seconds() >= self.due:
            self.state, self.due = "half_open", None

    # Shutdown, but not so early that it ends most runs' interest.
    @precondition(lambda self: self.clock.seconds() >= 10)
    @rule()
    def stop(self) -> None:
        self.breaker.stop()
        self.stopped, self.due = True, None

    @invariant()
    def agrees(self) -> None:
        breaker = self.breaker
        assert breaker.state in STATES
        assert breaker.state == self.state, (breaker.state, self.state)
        assert breaker.trial_in_flight == self.trial
        assert not self.trial or self.state == "half_open"
        assert breaker.consecutive_failures == self.failures
        assert breaker.opened_total == self.opened
        assert [c.getTime() for c in self.clock.getDelayedCalls()] == (
            [] if self.due is None else [self.due])
        assert self.state == "open" or self.due is None

    @invariant()
    def changes_are_a_path(self) -> None:
        previous = "closed"
        for old, new in self.changes:
            assert (old, new) in {("closed", "open"), ("open", "half_open"),
                                  ("half_open", "open"), ("half_open", "closed")}
            assert old == previous
            previous = new
        assert previous == self.state
        assert sum(new == "open" for _, new in self.changes) == self.opened

    def teardown(self) -> None:
        self.breaker.stop()
        assert self.clock.getDelayedCalls() == []
