"""
Hooks for tests/test_hooks_multiplexed.py: the tenants example
(examples/hooks/tenants.py) written three ways, a plain function, one
returning a Deferred and an C{async def} (each answering on a later turn
of the reactor, as a hook that asks a service would), an audit of
connections, and hooks that fail.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples", "hooks"))
import tenants  # noqa: E402  (the example, from examples/hooks)


def _deferred(fn: Callable[[Any], Any]) -> Callable[[Any], "Deferred[Any]"]:
    def hook(subject: Any) -> "Deferred[Any]":
        return deferLater(reactor, 0.001, fn, subject)  # type: ignore[arg-type]
    return hook


def _coroutine(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    async def hook(subject: Any) -> Any:
        await deferLater(reactor, 0.001, lambda: None)  # type: ignore[arg-type]
        return fn(subject)
    return hook


def _audit(event: str) -> Callable[[Any], None]:
    def hook(client: Any) -> None:
        with open(os.environ["HOOK_AUDIT"], "a") as f:
            f.write(f"{event} {client.listener} {client.host} {client.identity!r}\n")
    return hook


plain_authenticate = tenants.authenticate
plain_route = tenants.route
plain_allow = tenants.allow
plain_on_connect = _audit("connect")
plain_on_disconnect = _audit("disconnect")

deferred_authenticate = _deferred(tenants.authenticate)
deferred_route = _deferred(tenants.route)
deferred_allow = _deferred(tenants.allow)
deferred_on_connect = _deferred(_audit("connect"))
deferred_on_disconnect = _deferred(_audit("disconnect"))

async_authenticate = _coroutine(tenants.authenticate)
async_route = _coroutine(tenants.route)
async_allow = _coroutine(tenants.allow)
async_on_connect = _coroutine(_audit("connect"))
async_on_disconnect = _coroutine(_audit("disconnect"))


def raising_allow(request: Any) -> Any:
    """Fails for keys under boom:, as a policy whose store is down would."""
    if request.key is not None and request.key.startswith(b"boom:"):
        raise RuntimeError("policy store unreachable")
    return None


def slow_allow(request: Any) -> Any:
    """Never answers for keys under slow:."""
    if request.key is not None and request.key.startswith(b"slow:"):
        return Deferred()
    return None

