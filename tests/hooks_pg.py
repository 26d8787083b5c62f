"""
Hooks for tests/test_hooks_postgres.py, named as C{tests.hooks_pg:NAME}:
each point as a plain function, one returning a Deferred and an C{async
def}.  They refuse a client whose application_name is C{intruder} and
route user C{other} to cluster C{b}; what they were called with is kept in
L{calls} (the proxy runs in the test's process).
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.hooks_audit import audit_hooks

#: (hook name, a copy of what it saw), in call order.
calls: List[Tuple[str, Any]] = []


def reset() -> None:
    calls.clear()


def _seen(client: Any) -> dict:
    return {name: getattr(client, name) for name in (
        "listener", "protocol", "host", "username", "password", "password_ok", "identity",
        "database", "tls")} | {"parameters": dict(client.parameters)}


def _identity(client: Any) -> Any:
    if client.parameters.get("application_name") == "intruder":
        return False
    return "id:" + client.username


def _cluster(request: Any) -> Any:
    return "b" if request.client.username == "other" else None


def authenticate_plain(client: Any) -> Any:
    calls.append(("authenticate_plain", _seen(client)))
    return _identity(client)


def authenticate_deferred(client: Any) -> "Deferred[Any]":
    calls.append(("authenticate_deferred", _seen(client)))
    return deferLater(reactor, 0, _identity, client)


async def authenticate_async(client: Any) -> Any:
    calls.append(("authenticate_async", _seen(client)))
    await deferLater(reactor, 0, lambda: None)
    return _identity(client)


def authenticate_raises(client: Any) -> Any:
    raise RuntimeError("the directory is down")


def authenticate_never(client: Any) -> "Deferred[Any]":
    calls.append(("authenticate_never", _seen(client)))
    return Deferred()


def route_plain(request: Any) -> Any:
    calls.append(("route_plain", _seen(request.client) | {"cluster": request.cluster}))
    return _cluster(request)


def route_deferred(request: Any) -> "Deferred[Any]":
    calls.append(("route_deferred", _seen(request.client) | {"cluster": request.cluster}))
    return deferLater(reactor, 0, _cluster, request)


async def route_async(request: Any) -> Any:
    calls.append(("route_async", _seen(request.client) | {"cluster": request.cluster}))
    await deferLater(reactor, 0, lambda: None)
    return _cluster(request)


def route_unknown(request: Any) -> Any:
    return "nowhere"


def route_raises(request: Any) -> Any:
    raise KeyError("tenant")


def route_never(request: Any) -> "Deferred[Any]":
    return Deferred()


def route_b(request: Any) -> Any:
    return "b"


(connect_plain, disconnect_plain, connect_deferred, disconnect_deferred,
 connect_async, disconnect_async) = audit_hooks(calls)
