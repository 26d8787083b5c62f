"""
The pause between SIGTERM and the drain (C{shutdown_delay}): the process
goes on accepting and serving while its readiness check fails, so that the
load balancers in front (HAProxy's health checks, a Kubernetes Service, whose
endpoint removal races the SIGTERM) take it out before it stops accepting.

A second SIGTERM, or a SIGINT, during the pause ends it at once: an operator
who insists gets the drain now.
"""

from __future__ import annotations

import signal
from typing import Any, Dict, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

#: The signals that cut the pause short.
_SKIP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ShutdownDelay:
    """
    One pause of C{seconds} on C{clock}, started once, when stopping begins.

    @ivar active: whether the pause has begun (readiness answers 503 from
        its start, and stays so: the process is stopping).
    @ivar skipped: whether a second signal (or L{skip}) cut it short.
    """

    log = Logger("poolproxy.shutdown")

    def __init__(self, clock: Any, seconds: float, catch_signals: bool = False) -> None:
        """
        @param catch_signals: whether a second SIGTERM or a SIGINT during
            the pause ends it (a process run by twistd); its handlers are the
            process's only while the pause lasts.
        """
        self.clock = clock
        self.seconds = seconds
        self.catch_signals = catch_signals
        self.active = False
        self.skipped = False
        self._started = 0.0
        self._call: Any = None
        self._done: Optional["Deferred[None]"] = None
        self._previous: Dict[int, Any] = {}

    def start(self) -> "Deferred[None]":
        """Fires once the pause is over: after C{seconds}, or at L{skip}."""
        if self.seconds <= 0:
            return succeed(None)
        self.active = True
        self._started = self.clock.seconds()
        self._done = Deferred()
        self._call = self.clock.callLater(self.seconds, self._end, False)
        if self.catch_signals:
            for signum in _SKIP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._signalled)
        self.log.info("shutdown: /readyz answers 503; accepting and serving for "
                      "{delay:g}s more (shutdown_delay), then draining", delay=self.seconds)
        return self._done

    def skip(self) -> None:
        """End the pause now (a second signal); nothing if none is under way."""
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._end(True)

    def _signalled(self, signum: int, frame: Any) -> None:
        # A signal handler runs between bytecodes: hand over to the reactor.
        self.clock.callFromThread(self.skip)

    def _end(self, skipped: bool) -> None:
        self._call = None
        self.skipped = skipped
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        self.log.info("shutdown: delay over after {elapsed:.1f}s{how}; draining",
                      elapsed=self.clock.seconds() - self._started,
                      how=" (cut short by a second signal)" if skipped else "")
        done, self._done = self._done, None
        if done is not None:
            done.callback(None)


__all__ = ["ShutdownDelay"]
