"""
What every part of bench/run.py shares: where things are, which CPU runs what,
the sizes of the idle and saturated parts, and a few small helpers (progress
lines, free ports, finding and pinning tools, formatting milliseconds).

A sibling module of bench/run.py, imported as `common`: bench/ is sys.path[0]
when run.py runs as a script.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTED = time.monotonic()
PROXY_CPU, LOAD_CPU = "0", "1"
IDLE_CLIENTS, SATURATED_REQUESTS = 10_000, 2_000
NAN = float("nan")
NOISY = 0.05   # other processes using more than 5% of a core during a run: noted

Figures = Dict[str, Dict[str, Any]]   # test name -> {"rps", "p50_ms", "p99_ms", ...}
Load = Callable[[float], Figures]     # runs a load for about that many seconds


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def which(*tools: str) -> Optional[str]:
    for tool in tools:
        found = shutil.which(tool) or next(
            (p for p in (f"/usr/sbin/{tool}",) if os.access(p, os.X_OK)), None)
        if found:
            return found
    return None


def need(*tools: str) -> str:
    """The first of these names that is installed (Debian calls memaslap memcaslap)."""
    found = which(*tools)
    if not found:
        sys.exit(f"bench: {' or '.join(tools)} is not installed (see the docstring of bench/run.py)")
    return found


def pinned(cpu: str, args: List[str]) -> List[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu, *args]
    return args


def ms(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"
