"""Hooks for tests/test_hooks_multiplexed.py's memcached listener."""

from __future__ import annotations

from typing import Any


def memcached_route(request: Any) -> Any:
    """Keys under b: go to the cluster memcached-b; the others to the listener's own."""
    return "memcached-b" if request.key is not None and request.key.startswith(b"b:") else None


async def memcached_allow(request: Any) -> Any:
    """Nothing under secret:; flush_all and the like (no key) refused too."""
    if not request.keys:
        return f"{request.command} is not allowed here"
    if any(key.startswith(b"secret:") for key in request.keys):
        return "secret keys are not for you"
    # route picks one cluster per request, by its first key: the others must agree.
    if len({key.startswith(b"b:") for key in request.keys}) > 1:
        return "keys of one cluster per request"
    return None
