"""
Calling a hook, whatever style it is written in.

A hook may return a plain value, a Deferred, or a coroutine (an C{async
def}).  L{Hook.__call__} calls it directly and hands back a plain value as
it is: a synchronous hook costs the call and a type check, no Deferred.
Anything else is made a Deferred with txaio (a coroutine through
C{Deferred.fromCoroutine}) and given the hook's timeout.  An exception or
a timeout never reaches the caller as one: it gets a L{HookFailure}, which
each hook point treats as a refusal, and the problem is logged once per
interval.
"""

from __future__ import annotations

import inspect
from weakref import WeakKeyDictionary
from typing import Any, Callable, Dict, Mapping, Optional

import txaio
from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger
from twisted.python.failure import Failure

from poolproxy.hooks.loading import load_hooks
from poolproxy.hooks.points import HOOK_POINTS
from poolproxy.util.throttled import ThrottledLog

txaio.use_twisted()

#: Results handed back as they are, without looking further.
_PLAIN = frozenset({str, bytes, bool, int, float, tuple, list, dict})

log = Logger(namespace="poolproxy.hooks")


class HookFailure:
    """
    What a hook's call gives instead of a result when it raised or timed out.

    @ivar kind: C{"error"} or C{"timeout"}.
    @ivar why: one line, for the log (never sent to a client).
    """

    __slots__ = ("kind", "why")

    def __init__(self, kind: str, why: str) -> None:
        self.kind = kind
        self.why = why

    def __repr__(self) -> str:
        return f"HookFailure({self.kind!r}, {self.why!r})"


class Hook:
    """
    One configured hook of one listener, and what became of its calls.

    @ivar point: its hook point (C{allow}, C{route}...).
    @ivar spec: how it was named (C{module:callable}).
    @ivar ok: calls that returned (or fired with) a result.
    @ivar refused: calls whose result refused (the caller counts these).
    @ivar errors: calls that raised.
    @ivar timeouts: calls that did not finish within C{timeout}.
    @ivar asynchronous: calls that returned a Deferred or coroutine.
    """

    __slots__ = ("point", "spec", "fn", "timeout", "clock", "listener", "ok", "refused",
                 "errors", "timeouts", "asynchronous", "_log")

    def __init__(self, point: str, spec: str, fn: Callable[[Any], Any], timeout: float,
                 clock: Any, listener: str, throttled: ThrottledLog) -> None:
        self.point = point
        self.spec = spec
        self.fn = fn
        self.timeout = timeout
        self.clock = clock
        self.listener = listener
        self.ok = self.refused = self.errors = self.timeouts = self.asynchronous = 0
        self._log = throttled

    def __call__(self, subject: Any) -> Any:
        """
        The hook's result for C{subject}: a plain value or a L{HookFailure}
        at once if the hook gave one or raised, else a Deferred that fires
        (never fails) with one, within C{timeout}.
        """
        try:
            result = self.fn(subject)
        except Exception:
            return self.failed(Failure())
        if result is None or result.__class__ in _PLAIN:
            self.ok += 1
            return result
        return self.settled(result)

    def then(self, subject: Any, step: Callable[..., Any], *args: Any) -> None:
        """
        Call the hook on C{subject} and go on with C{step(result, *args)}:
        at once for a plain answer, when it fires for a Deferred or coroutine.
        """
        result = self(subject)
        if isinstance(result, Deferred):
            result.addCallback(step, *args)
        else:
            step(result, *args)

    def settled(self, result: Any) -> Any:
        """
        What C{fn} returned, not L{None} nor a plain value: a Deferred for a
        coroutine or a Deferred (timed), else the value itself.  For
        callers that call C{fn} themselves on their hot path.
        """
        d: "Deferred[Any]"
        if inspect.iscoroutine(result):
            # Ours alone: a timeout cancels it, and the coroutine behind it
            # gets CancelledError, so nothing of the hook runs on unwaited.
            d = Deferred.fromCoroutine(result)
        elif txaio.is_future(result):  # type: ignore[attr-defined]
            failure = _FAILED.get(result)
            if failure is not None:  # handed out again, failed before
                return self.failed(failure)
            # The hook's Deferred may be shared (a cached answer): its result
            # is passed on to a Deferred of ours, never changed or cancelled
            # by the proxy's callbacks.
            d = Deferred()
            result.addBoth(_pass_on, d, result)
        else:
            self.ok += 1  # some other object: a result like any
            return result
        self.asynchronous += 1
        if self.timeout:
            d.addTimeout(self.timeout, self.clock)
        d.addCallbacks(self._fired, self.failed)
        return d

    def _fired(self, result: Any) -> Any:
        self.ok += 1
        return result

    def failed(self, failure: Failure) -> HookFailure:
        """C{fn} raised (or its Deferred failed, or timed out): counted, logged, a HookFailure."""
        if failure.check(TimeoutError):
            self.timeouts += 1
            kind, why = "timeout", f"did not answer within hook_timeout ({self.timeout:g} s)"
        else:
            self.errors += 1
            message = txaio.failure_message(failure)  # type: ignore[attr-defined]
            kind, why = "error", f"raised {message}"
        self._log.warn((self.listener, self.point, kind),
                       "listener {listener}: hook {point} ({spec}) {why}; refused",
                       listener=self.listener, point=self.point, spec=self.spec, why=why)
        return HookFailure(kind, why)


#: Hooks' Deferreds that failed: their failure was taken (so that it is not
#: logged as unhandled once per call), and is given again to whoever is
#: handed the same Deferred later.
_FAILED: "WeakKeyDictionary[Deferred[Any], Failure]" = WeakKeyDictionary()


def _pass_on(result: Any, d: "Deferred[Any]", hooks_own: "Deferred[Any]") -> Any:
    """
    A hook's Deferred fired: its result to C{d} too (unless that timed out);
    a value stays the hook's Deferred's result, for anyone else it is shared with.
    """
    if isinstance(result, Failure):
        _FAILED[hooks_own] = result
        if not d.called:
            d.errback(result)
        return None
    if not d.called:
        d.callback(result)
    return result


class ListenerHooks:
    """
    The hooks of one listener, one attribute per hook point (L{None} when
    not configured).  Frontends read the attributes at each call, so a
    reload that replaces them takes effect for connected clients too.

    @ivar checks_requests: whether a hook looks at requests or credentials
        (authenticate, route, allow): else a client's frames go straight on.
    """

    authenticate: Optional[Hook]
    route: Optional[Hook]
    allow: Optional[Hook]
    on_connect: Optional[Hook]
    on_disconnect: Optional[Hook]

    def __init__(self, listener: str, clock: Any, timeout: float = 1.0) -> None:
        self.listener = listener
        self.clock = clock
        self.timeout = timeout
        self.specs: Dict[str, str] = {}
        self.throttled = ThrottledLog(log, clock)
        self.checks_requests = False
        for point in HOOK_POINTS:
            setattr(self, point.name, None)

    @property
    def where(self) -> str:
        return f"listener {self.listener}: hooks"

    def load(self, specs: Mapping[str, str], timeout: Optional[float] = None,
             fresh: bool = False) -> Optional[str]:
        """
        Import C{specs} (point -> C{module:callable}) and use them: all of
        them, or none if one does not import (L{HookLoadError}).

        @param fresh: import their modules again (a reload).
        @return: what changed, for the reload's log, or L{None}.
        """
        found = load_hooks(specs, self.where, fresh=fresh)
        if timeout is not None:
            self.timeout = timeout
        before = dict(self.specs)
        self.use(found, specs)
        if before == self.specs:
            return "reloaded" if specs and fresh else None
        return ", ".join(f"{p} = {self.specs.get(p, '(none)')}" for p in sorted(
            set(before) | set(self.specs)) if before.get(p) != self.specs.get(p))

    def use(self, callables: Mapping[str, Callable[[Any], Any]],
            specs: Optional[Mapping[str, str]] = None) -> None:
        """
        Use these callables (point -> callable) as the hooks, in place of
        any before (embedding, tests; L{load} imports them by name).
        """
        for point in HOOK_POINTS:
            fn = callables.get(point.name)
            spec = (specs or {}).get(point.name) or str(getattr(fn, "__qualname__", repr(fn)))
            hook = (Hook(point.name, spec, fn, self.timeout, self.clock, self.listener,
                         self.throttled) if fn is not None else None)
            old = getattr(self, point.name)
            if old is not None and hook is not None:
                # Counts go on across a reload: one exported series per hook point.
                for name in ("ok", "refused", "errors", "timeouts", "asynchronous"):
                    setattr(hook, name, getattr(old, name))
            setattr(self, point.name, hook)
        self.specs = {point: hook.spec for point, hook in self.configured().items()}
        self.checks_requests = any(getattr(self, point) is not None
                                   for point in ("authenticate", "route", "allow"))

    def configured(self) -> Dict[str, Hook]:
        """The hooks configured, by point."""
        return {p.name: getattr(self, p.name) for p in HOOK_POINTS
                if getattr(self, p.name) is not None}


#: What a frontend factory has until the service gives it its listener's
#: hooks (embedding, tests): none.  Never loaded or used.
NO_HOOKS = ListenerHooks("", None)


__all__ = ["Hook", "HookFailure", "ListenerHooks", "NO_HOOKS"]
