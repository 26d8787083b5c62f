"""
on_connect and on_disconnect hooks in each style, recording what they were
called with into a list of their module's (tests/hooks_pg.py, tests/hooks_tcp.py).
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

from twisted.internet import reactor
from twisted.internet.task import deferLater


def audit_hooks(calls: List[Tuple[str, Any]]) -> Tuple[Callable[[Any], Any], ...]:
    """
    (connect_plain, disconnect_plain, connect_deferred, disconnect_deferred,
    connect_async, disconnect_async), each appending (its name, the client)
    to C{calls}: at once, on the reactor's next turn, or after an await.
    """
    def plain(name: str) -> Callable[[Any], None]:
        def hook(client: Any) -> None:
            calls.append((name, client))
        return hook

    def deferred(name: str) -> Callable[[Any], Any]:
        def hook(client: Any) -> Any:
            return deferLater(reactor, 0, calls.append, (name, client))  # type: ignore[arg-type]
        return hook

    def coroutine(name: str) -> Callable[[Any], Any]:
        async def hook(client: Any) -> None:
            await deferLater(reactor, 0, lambda: None)  # type: ignore[arg-type]
            calls.append((name, client))
        return hook

    return (plain("connect_plain"), plain("disconnect_plain"),
            deferred("connect_deferred"), deferred("disconnect_deferred"),
            coroutine("connect_async"), coroutine("disconnect_async"))
