"""
The hook points: their names, what each receives, what it may return and
which protocols call it.  C{--help}, docs/hooks.md and the configuration's
checks all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class HookPoint:
    """
    @ivar name: the key in a C{[hooks]} table.
    @ivar receives: what it is called with.
    @ivar returns: what it may return (or a Deferred or coroutine of it).
    @ivar protocols: the listener protocols that call it.
    @ivar doc: one line for C{--help}.
    """

    name: str
    receives: str
    returns: str
    protocols: Tuple[str, ...]
    doc: str


HOOK_POINTS: Tuple[HookPoint, ...] = (
    HookPoint("authenticate", "client", "bool | identity",
              ("redis", "http", "postgres"),
              "a client's credentials (redis AUTH/HELLO, an http Authorization header, a "
              "postgres login): true or an identity to let it in, false to refuse"),
    HookPoint("route", "request", "cluster name | None",
              ("redis", "memcached", "http", "tcp", "postgres"),
              "the cluster for a request (tcp, postgres: for the client's session); None "
              "for the listener's own"),
    HookPoint("allow", "request", "None | error text",
              ("redis", "memcached", "http"),
              "None to serve a request, a text to refuse it with the protocol's error"),
    HookPoint("on_connect", "client", "anything (ignored)",
              ("redis", "memcached", "http", "tcp", "postgres"),
              "a client connected (auditing); its result is not waited for"),
    HookPoint("on_disconnect", "client", "anything (ignored)",
              ("redis", "memcached", "http", "tcp", "postgres"),
              "a client's connection closed (auditing); its result is not waited for"),
)

POINTS_BY_NAME: Dict[str, HookPoint] = {p.name: p for p in HOOK_POINTS}


def points_help() -> str:
    """The hook points, one line each, for C{--help}."""
    return "; ".join(f"{p.name}({p.receives}) -> {p.returns}" for p in HOOK_POINTS)


__all__ = ["HOOK_POINTS", "POINTS_BY_NAME", "HookPoint", "points_help"]
