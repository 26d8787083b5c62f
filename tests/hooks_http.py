"""
Hooks for tests/test_hooks_http.py, each point in three styles: a plain
function, one returning a Deferred, an C{async def}.  What they were
called with is recorded in L{calls} (the test clears it).

  - authenticate: Basic C{alice:secret} is C{"alice"}; C{Bearer good-token}
    is C{"tenant-a"}; anything else is refused.
  - route: by the Host header, C{a.example} to the cluster C{alpha},
    C{b.example} to C{beta}, C{nowhere.example} to a cluster that does not
    exist; else L{None} (the listener's own).
  - allow: a path under C{/forbidden} is refused with a text; else allowed.
  - on_connect / on_disconnect: record the client.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

calls: List[Tuple[str, Dict[str, Any]]] = []

ROUTES = {"a.example": "alpha", "b.example": "beta", "nowhere.example": "gamma"}


def _later(value: Any) -> "Deferred[Any]":
    # Answered on a later reactor turn: the request really waits for it.
    return deferLater(reactor, 0, lambda: value)


# -- authenticate --------------------------------------------------------------

def authenticate_plain(client: Any) -> Any:
    calls.append(("authenticate", {"username": client.username, "password": client.password,
                                   "headers": dict(client.headers or {})}))
    if client.username is not None:
        return "alice" if (client.username, client.password) == ("alice", "secret") else False
    if (client.headers or {}).get("authorization") == "Bearer good-token":
        return "tenant-a"
    return None


def authenticate_deferred(client: Any) -> "Deferred[Any]":
    # Read on the later turn: the password is there for as long as the hook runs.
    return deferLater(reactor, 0, authenticate_plain, client)


async def authenticate_async(client: Any) -> Any:
    await _later(None)
    return authenticate_plain(client)


# -- route ---------------------------------------------------------------------------

def route_plain(request: Any) -> Optional[str]:
    calls.append(("route", {"method": request.method, "path": request.path,
                            "host": request.host, "headers": dict(request.headers),
                            "cluster": request.cluster, "identity": request.client.identity,
                            "password": request.client.password}))
    return ROUTES.get((request.host or "").split(":")[0])


def route_deferred(request: Any) -> "Deferred[Any]":
    return _later(route_plain(request))


async def route_async(request: Any) -> Optional[str]:
    await _later(None)
    return route_plain(request)


# -- allow ------------------------------------------------------------------------------

def allow_plain(request: Any) -> Optional[str]:
    calls.append(("allow", {"path": request.path, "cluster": request.cluster}))
    if request.path.startswith("/forbidden"):
        return f"no entry to {request.path} on {request.cluster}"
    return None


def allow_deferred(request: Any) -> "Deferred[Any]":
    return _later(allow_plain(request))


async def allow_async(request: Any) -> Optional[str]:
    await _later(None)
    return allow_plain(request)


# -- on_connect / on_disconnect ---------------------------------------------------------

def _client(point: str, client: Any) -> None:
    calls.append((point, {"host": client.host, "port": client.port,
                          "protocol": client.protocol, "listener": client.listener,
                          "identity": client.identity}))


def on_connect_plain(client: Any) -> None:
    _client("on_connect", client)


def on_disconnect_plain(client: Any) -> None:
    _client("on_disconnect", client)


def on_connect_deferred(client: Any) -> "Deferred[Any]":
    return deferLater(reactor, 0, _client, "on_connect", client)


def on_disconnect_deferred(client: Any) -> "Deferred[Any]":
    return deferLater(reactor, 0, _client, "on_disconnect", client)


async def on_connect_async(client: Any) -> None:
    await _later(None)
    _client("on_connect", client)


async def on_disconnect_async(client: Any) -> None:
    await _later(None)
    _client("on_disconnect", client)


# -- misbehaving ---------------------------------------------------------------------------

def allow_raises(request: Any) -> Optional[str]:
    """Raises for a path with C{boom} in it; allows the rest."""
    calls.append(("allow", {"path": request.path}))
    if "boom" in request.path:
        raise RuntimeError("boom in the policy")
    return None


def route_raises(request: Any) -> Optional[str]:
    raise KeyError("no such tenant")


def authenticate_raises(client: Any) -> Any:
    raise ValueError("the user directory is down")


def never(subject: Any) -> "Deferred[Any]":
    """A hook that never answers."""
    calls.append(("never", {}))
    return Deferred()


def allow_hangs(request: Any) -> Any:
    """Never answers for a path under C{/hang}; allows the rest at once."""
    calls.append(("allow", {"path": request.path}))
    if request.path.startswith("/hang"):
        return Deferred()
    return None
