"""
What every part of bench/run.py shares: where things are, which CPU runs what,
the sizes of the idle and saturated parts, and a few small helpers (progress
lines, free ports, finding and pinning tools, formatting milliseconds).

A sibling module of bench/run.py, imported as `common`: bench/ is sys.path[0]
when run.py runs as a script.
"""

from __future__ import annotations

import glob
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

#: The postgres part: pgbench's clients and threads, its scale (1: 100,000
#: accounts, one branch), and the server connections PgBouncer
#: (default_pool_size) and poolproxy (--pool-size) may open, the same for
#: both.  4: all of PostgreSQL shares the load CPU with pgbench, so 4 backends
#: keep that core busy (direct, 50 backends compete for it instead), and it is
#: what the pooling test (tests/test_interop_postgres.py) runs.
PG_CLIENTS, PG_THREADS, PG_SCALE, PG_POOL_SIZE = 50, 2, 1, 4
PG_SELECT = f"pgbench -S -c {PG_CLIENTS} -j {PG_THREADS}"      # its workloads
PG_TPCB = f"pgbench TPC-B -c {PG_CLIENTS} -j {PG_THREADS}"

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


#: Debian keeps PostgreSQL's server programs (initdb, postgres) off PATH, a
#: directory per major version; pgbench and psql are there too.
PG_BIN_DIRS = "/usr/lib/postgresql/*/bin"


def pg_binary(name: str) -> Optional[str]:
    """A PostgreSQL program from the newest /usr/lib/postgresql/N/bin, else from PATH."""
    def version(directory: str) -> int:
        number = os.path.basename(os.path.dirname(directory))
        return int(number) if number.isdigit() else 0

    for directory in sorted(glob.glob(PG_BIN_DIRS), key=version, reverse=True):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return which(name)


def need_pg(name: str) -> str:
    found = pg_binary(name)
    if not found:
        sys.exit(f"bench: {name} is not installed (Debian: postgresql-15; see bench/run.py)")
    return found


def pinned(cpu: str, args: List[str]) -> List[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu, *args]
    return args


def ms(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"
