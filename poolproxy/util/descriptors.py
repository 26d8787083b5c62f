"""
The process's open file limit (C{RLIMIT_NOFILE}): reading it, and raising
its soft value to the hard one at start, as nginx's
C{worker_rlimit_nofile} and HAProxy do.  Every client connection, backend
connection and listening socket is a descriptor; the soft limit that
shells give (often 1024) is far below what a proxy needs, and the hard one
is what the administrator allows.
"""

from __future__ import annotations

import resource
from typing import Any, Optional, Tuple

#: select(2) watches no descriptor numbered this or above.
FD_SETSIZE = 1024

#: What "unlimited" is raised to: Linux refuses more than fs.nr_open (1048576 by default).
_UNLIMITED_TARGET = 1 << 20


def open_file_limit(reactor: Optional[Any] = None) -> int:
    """
    The soft open file limit, or for a reactor built on select(2) (Twisted's
    default on macOS) L{FD_SETSIZE} if that is lower.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = _UNLIMITED_TARGET
    if reactor is not None and type(reactor).__name__ == "SelectReactor":
        soft = min(soft, FD_SETSIZE)
    return soft


def raise_open_file_limit() -> Tuple[int, int]:
    """
    Raise the soft open file limit to the hard one (to 2**20 when the hard
    one is unlimited); keep it where it is if the system refuses.

    @return: the soft limit before and after.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


__all__ = ["FD_SETSIZE", "open_file_limit", "raise_open_file_limit"]
