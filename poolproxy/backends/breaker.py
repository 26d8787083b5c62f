# -*- test-case-name: tests.test_breaker -*-
"""
A circuit breaker for one backend: stop sending requests to a backend that
keeps failing, probe it with a single trial request after a pause, and back
off exponentially while it stays broken.

The public states are C{"closed"} (requests flow), C{"open"} (none do) and
C{"half_open"} (one trial request may go).  The machine behind them, built
with Automat's L{TypeMachineBuilder} the way
C{twisted/application/_client_service.py} builds L{ClientService}'s, splits
C{half_open} in two so that "a trial is in flight" is a state, not a flag to
test::

    state       input             next        what happens
    ---------   ---------------   ---------   -------------------------------
    closed      allow             closed      True
    closed      success           closed      consecutive failures := 0
    closed      failure           closed      count it; at failures_to_open,
                                              _trip if may_open() agrees
    closed      _trip             open        (see "entering open" below)
    open        allow             open        False
    open        success/failure   open        ignored: a request from before
    open        _reset_elapsed    half_open   the reset timer fired
    half_open   allow             trial       True: this request is the trial
    half_open   success/failure   half_open   ignored: a request from before
    trial       allow             trial       False until the outcome is known
    trial       success           closed      back-off := reset_timeout
    trial       failure           open        (with the doubled timeout)
    trial       cancel_trial      half_open   another trial may go
    any         stop              same        cancel the timer, arm no other

Entering C{open} arms C{clock.callLater(backoff, _reset_elapsed)} and then
doubles C{backoff} for the next opening, capped at C{max_reset_timeout}; so a
breaker whose trials keep failing stays open 5, 10, 20, 40, 60, 60... seconds
with the default settings.  Inputs not in the table (C{cancel_trial} outside
a trial, C{_trip} outside C{closed}) change nothing.

A caller that gets C{True} from L{CircuitBreaker.allow} reports the request's
outcome with exactly one of L{CircuitBreaker.success} or
L{CircuitBreaker.failure}, or, if that request was the half-open trial
(L{CircuitBreaker.trial_in_flight} is true right after C{allow()}) and it was
abandoned without an outcome, with L{CircuitBreaker.cancel_trial}.  Outcomes
carry no request identity: outcomes reported while open, or half-open
before the trial starts, come from requests sent before the breaker opened
and are ignored, but one reported while a trial is in flight counts as the
trial's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol as TypingProtocol

from automat import TypeMachineBuilder

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from poolproxy.util.reactors import default_reactor

__all__ = ["BreakerSettings", "CircuitBreaker", "STATES"]

#: The values of L{CircuitBreaker.state}.
STATES = ("closed", "open", "half_open")


@dataclass(frozen=True)
class BreakerSettings:
    """
    How eagerly a L{CircuitBreaker} opens and how long it stays open.

    @ivar failures_to_open: consecutive failures that open a closed breaker.
    @ivar reset_timeout: seconds an opened breaker waits before it lets a
        trial request through; the first wait after closing.
    @ivar max_reset_timeout: the cap on the wait, which doubles every time a
        trial fails.
    """

    failures_to_open: int = 5
    reset_timeout: float = 5.0
    max_reset_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.failures_to_open < 1:
            raise ValueError("failures_to_open must be at least 1")
        if not self.reset_timeout > 0:
            raise ValueError("reset_timeout must be positive")
        if not self.max_reset_timeout >= self.reset_timeout:
            raise ValueError("max_reset_timeout must be at least reset_timeout")


class _Breaker(TypingProtocol):
    """
    The inputs of the breaker's state machine.
    """

    def allow(self) -> bool:
        """
        May a request go to this backend now?
        """

    def success(self) -> None:
        """
        A request that was allowed has succeeded.
        """

    def failure(self) -> None:
        """
        A request that was allowed has failed.
        """

    def cancel_trial(self) -> None:
        """
        The half-open trial request was abandoned without an outcome.
        """

    def stop(self) -> None:
        """
        Shut down: cancel any pending timer and arm no new one.
        """

    def _trip(self) -> None:
        """
        The failure threshold is reached and the cluster lets us open.
        """

    def _reset_elapsed(self) -> None:
        """
        The open state's reset timer fired.
        """


@dataclass
class _Core:
    """
    The data the breaker's states share.

    @ivar state: the public state name, one of L{STATES}.
    @ivar failures: consecutive failures counted while closed.
    @ivar backoff: how long the next opening lasts.
    @ivar stopped: L{_Breaker.stop} was called; no more timers.
    """

    settings: BreakerSettings
    clock: IReactorTime
    on_change: Callable[[str, str], None]
    may_open: Callable[[], bool]
    log: Logger

    state: str = "closed"
    failures: int = 0
    backoff: float = field(init=False)
    opened_total: int = 0
    refused_total: int = 0
    trial_in_flight: bool = False
    stopped: bool = False

    def __post_init__(self) -> None:
        self.backoff = self.settings.reset_timeout

    def move(self, new: str) -> None:
        """
        Record the new public state, then tell the observer.  An observer's
        exception is logged, not raised: the transition has happened.
        """
        old, self.state = self.state, new
        try:
            self.on_change(old, new)
        except Exception:
            self.log.failure(
                "circuit breaker observer failed on {old} -> {new}", old=old, new=new
            )


@dataclass
class _ResetTimer:
    """
    The open state's data: the call that half-opens the breaker, or L{None}
    once the breaker is stopped.
    """

    call: Optional[IDelayedCall]

    def cancel(self) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


def _make_machine() -> Callable[[_Core], _Breaker]:
    machine = TypeMachineBuilder(_Breaker, _Core)

    def enter_open(c: _Breaker, s: _Core) -> _ResetTimer:
        delay = s.backoff
        s.backoff = min(delay * 2, s.settings.max_reset_timeout)
        s.failures = 0
        s.trial_in_flight = False
        s.opened_total += 1
        timer = _ResetTimer(None if s.stopped else s.clock.callLater(delay, c._reset_elapsed))
        s.move("open")
        return timer

    Closed = machine.state("Closed")
    Open = machine.state("Open", enter_open)
    HalfOpen = machine.state("HalfOpen")
    Trial = machine.state("Trial")

    # Transitions whose only work is their result (or entering open).
    Closed.upon(_Breaker.allow).loop().returns(True)
    Closed.upon(_Breaker._trip).to(Open).returns(None)
    Closed.upon(_Breaker.cancel_trial).loop().returns(None)
    Open.upon(_Breaker.allow).loop().returns(False)
    Open.upon(_Breaker.success).loop().returns(None)
    Open.upon(_Breaker.failure).loop().returns(None)
    Open.upon(_Breaker.cancel_trial).loop().returns(None)
    Open.upon(_Breaker._trip).loop().returns(None)
    HalfOpen.upon(_Breaker.success).loop().returns(None)
    HalfOpen.upon(_Breaker.failure).loop().returns(None)
    HalfOpen.upon(_Breaker.cancel_trial).loop().returns(None)
    HalfOpen.upon(_Breaker._trip).loop().returns(None)
    Trial.upon(_Breaker.allow).loop().returns(False)
    Trial.upon(_Breaker.failure).to(Open).returns(None)
    Trial.upon(_Breaker._trip).loop().returns(None)

    @Closed.upon(_Breaker.success).loop()
    def reset_count(c: _Breaker, s: _Core) -> None:
        s.failures = 0

    @Closed.upon(_Breaker.failure).loop()
    def count_failure(c: _Breaker, s: _Core) -> None:
        s.failures += 1
        if s.failures >= s.settings.failures_to_open:
            if s.may_open():
                # Automat runs an input fed from inside a transition once
                # this one is finished: the breaker is open when failure()
                # returns.
                c._trip()
            else:
                # Keep counting: the next failure asks again, so the
                # breaker opens as soon as the cluster allows it.
                s.refused_total += 1

    @Open.upon(_Breaker._reset_elapsed).to(HalfOpen)
    def half_open(c: _Breaker, s: _Core, timer: _ResetTimer) -> None:
        timer.call = None
        s.move("half_open")

    @HalfOpen.upon(_Breaker.allow).to(Trial)
    def start_trial(c: _Breaker, s: _Core) -> bool:
        s.trial_in_flight = True
        return True

    @Trial.upon(_Breaker.success).to(Closed)
    def close(c: _Breaker, s: _Core) -> None:
        s.trial_in_flight = False
        s.failures = 0
        s.backoff = s.settings.reset_timeout
        s.move("closed")

    @Trial.upon(_Breaker.cancel_trial).to(HalfOpen)
    def abandon_trial(c: _Breaker, s: _Core) -> None:
        s.trial_in_flight = False

    @Closed.upon(_Breaker.stop).loop()
    @HalfOpen.upon(_Breaker.stop).loop()
    @Trial.upon(_Breaker.stop).loop()
    def stop(c: _Breaker, s: _Core) -> None:
        s.stopped = True

    @Open.upon(_Breaker.stop).loop()
    def stop_timer(c: _Breaker, s: _Core, timer: _ResetTimer) -> None:
        s.stopped = True
        timer.cancel()

    return machine.build()


_BreakerMachine = _make_machine()


def _ignore_change(old: str, new: str) -> None:
    pass


class CircuitBreaker:
    """
    The circuit breaker of one backend.  See the module docstring for its
    transition table.

    The observer C{on_change} runs inside the transition, after L{state} and
    the counters are updated and the open state's timer is armed.  It may
    feed the breaker C{success}, C{failure} or C{cancel_trial} (Automat runs
    them after the current transition) but not L{allow}, which Automat
    refuses to run reentrantly because it returns a value.
    """

    log = Logger()

    def __init__(
        self,
        settings: Optional[BreakerSettings] = None,
        clock: Optional[IReactorTime] = None,
        on_change: Callable[[str, str], None] = _ignore_change,
        may_open: Callable[[], bool] = lambda: True,
    ) -> None:
        """
        @param settings: thresholds and timeouts; the defaults if L{None}.
        @param clock: schedules the reset timer; the global reactor if
            L{None}.
        @param on_change: called with C{(old_state, new_state)} on every
            change of L{state}.
        @param may_open: asked when the failure threshold is reached; if it
            returns false (too many backends of the cluster are ejected
            already) the breaker stays closed, keeps its failure count and
            asks again at the next failure.  A failed trial reopens the
            breaker without asking: its backend is ejected already.
        """
        self._core = _Core(
            settings if settings is not None else BreakerSettings(),
            default_reactor(clock),
            on_change,
            may_open,
            self.log,
        )
        self._machine = _BreakerMachine(self._core)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.state} failures={self._core.failures}>"

    @property
    def settings(self) -> BreakerSettings:
        """The breaker's settings."""
        return self._core.settings

    @property
    def state(self) -> str:
        """C{"closed"}, C{"open"} or C{"half_open"}."""
        return self._core.state

    @property
    def trial_in_flight(self) -> bool:
        """Half-open, and the trial request went and has no outcome yet."""
        return self._core.trial_in_flight

    @property
    def opened_total(self) -> int:
        """How many times the breaker opened (reopenings included)."""
        return self._core.opened_total

    @property
    def refused_total(self) -> int:
        """How many times C{may_open} kept the breaker closed."""
        return self._core.refused_total

    @property
    def consecutive_failures(self) -> int:
        """Failures counted since the last success while closed."""
        return self._core.failures

    def allow(self) -> bool:
        """
        May a request go to this backend now?

        @return: C{True} when closed; C{False} when open; when half-open,
            C{True} once, for the trial request, then C{False} until its
            outcome is reported.  A caller that got C{True} can tell that its
            request is the trial by L{trial_in_flight}.
        """
        return self._machine.allow()

    def success(self) -> None:
        """
        An allowed request succeeded: while closed, the failure count starts
        again; the trial's success closes the breaker.
        """
        self._machine.success()

    def failure(self) -> None:
        """
        An allowed request failed (connect error, timeout, protocol error, an
        HTTP 5xx where configured: the caller decides).  While closed, the
        C{failures_to_open}th failure in a row opens the breaker; the trial's
        failure reopens it for twice as long as last time, up to
        C{max_reset_timeout}.
        """
        self._machine.failure()

    def cancel_trial(self) -> None:
        """
        The trial request was abandoned before its outcome was known (the
        client went away): let another trial go.  Does nothing unless a trial
        is in flight.
        """
        self._machine.cancel_trial()

    def stop(self) -> None:
        """
        For shutdown: cancel the pending reset timer, if any, and arm no new
        one.  The breaker goes on answering; one that opens from now on stays
        open.
        """
        self._machine.stop()
