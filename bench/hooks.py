"""
Hooks for measuring what hooks cost (bench/cpu_cost.py --hook): each as
little as a hook can be, so that what is measured is the proxy's part.

    .venv/bin/python bench/cpu_cost.py --protocol redis --pipeline 1 \\
        --hook allow=bench.hooks:allow_everything
"""

from typing import Any


def allow_everything(request: Any) -> None:
    """A synchronous allow hook: every request is allowed."""
    return None


def allow_by_prefix(request: Any) -> Any:
    """A synchronous allow hook that reads the request's keys (every key is allowed)."""
    for key in request.keys:
        if key.startswith(b"\x00"):
            return "refused"
    return None
