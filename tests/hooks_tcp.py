"""
Hooks for tests/test_hooks_tcp.py, named as C{tests.hooks_tcp:NAME} in its
configurations: each point written as a plain function, one that returns
a Deferred and an C{async def}.  What they are called with is kept in
L{calls} (the proxy runs in the test's process).
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.hooks_audit import audit_hooks

#: (hook name, what it was called with), in call order.
calls: List[Tuple[str, Any]] = []
#: Fired by a test to let L{route_gated} answer.
gate: "Deferred[Any]" = Deferred()


def reset() -> None:
    global gate
    calls.clear()
    gate = Deferred()


def _choice(request: Any) -> Any:
    # Listeners named "...-b" send their sessions to cluster b.
    return "b" if request.client.listener.endswith("-b") else None


def route_plain(request: Any) -> Any:
    calls.append(("route_plain", request))
    return _choice(request)


def route_deferred(request: Any) -> "Deferred[Any]":
    calls.append(("route_deferred", request))
    return deferLater(reactor, 0, _choice, request)


async def route_async(request: Any) -> Any:
    calls.append(("route_async", request))
    await deferLater(reactor, 0, lambda: None)
    return _choice(request)


def route_gated(request: Any) -> "Deferred[Any]":
    """Answers b once the test fires L{gate}."""
    calls.append(("route_gated", request))
    return gate.addCallback(lambda _: "b")


def route_raises(request: Any) -> Any:
    calls.append(("route_raises", request))
    raise RuntimeError("no route for you")


def route_unknown(request: Any) -> Any:
    calls.append(("route_unknown", request))
    return "nowhere"


def route_never(request: Any) -> "Deferred[Any]":
    calls.append(("route_never", request))
    return Deferred()


(connect_plain, disconnect_plain, connect_deferred, disconnect_deferred,
 connect_async, disconnect_async) = audit_hooks(calls)
