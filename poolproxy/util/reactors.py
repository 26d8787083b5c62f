"""
The reactor (or clock) a component runs on: the one it is given, else
Twisted's global reactor.

Every timer and connection in poolproxy takes its reactor as an argument, so
that timing rules are tested on a L{twisted.internet.task.Clock}; the global
reactor is the default for a running proxy.  It is imported only when no
reactor is given, at construction: importing it at module level would
install the default reactor before C{twistd --reactor} could choose one.
"""

from __future__ import annotations

from typing import Any, Optional


def default_reactor(reactor: Optional[Any] = None) -> Any:
    """C{reactor}, or the global reactor if it is L{None}."""
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as global_reactor

    return global_reactor


__all__ = ["default_reactor"]
