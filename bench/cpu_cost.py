#!/usr/bin/env python3
"""
The proxy's own CPU time per request, for comparing two versions of the code.

    .venv/bin/python bench/cpu_cost.py --protocol redis --pipeline 16 --repeat 3
    .venv/bin/python bench/cpu_cost.py --protocol http --pool-size 16
    .venv/bin/python bench/cpu_cost.py --python .venv-pypy/bin/python
    .venv/bin/python bench/cpu_cost.py --protocol http --reactor default   # Twisted's epoll
    .venv/bin/python bench/cpu_cost.py --protocol redis --pipeline 1 \
        --hook allow=bench.hooks:allow_everything   # what a synchronous hook costs

Requests per second move with whatever else the machine does; the CPU time
the proxy process spent (utime + stime from /proc, kernel time included)
divided by the requests it served moves less.  It is still noisy on a shared
virtual machine (about ±10% here): use --repeat and compare medians.  The
proxy is pinned to CPU 0, the backend and the load to CPU 1, as in run.py;
each measured run follows a warm-up of the same load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from typing import Any, Callable, Dict, List

from common import ROOT, progress
from loads import redis_load, warm_up, wrk
from machine import cpu_seconds
from servers import REACTOR, Processes, start_nginx, start_poolproxy, start_redis


def measure(pid: int, load: Callable[[float], Dict[str, Dict[str, Any]]], seconds: float,
            requests_of: Callable[[Dict[str, Dict[str, Any]], float], float]) -> float:
    """Microseconds of the proxy's CPU per request over one run of C{load}."""
    before = cpu_seconds(pid)
    figures = load(seconds)
    used = cpu_seconds(pid) - before
    return used / requests_of(figures, seconds) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=("redis", "http"), default="redis")
    parser.add_argument("--pipeline", type=int, default=16, help="redis: requests per batch")
    parser.add_argument("--pool-size", type=int, default=16)
    parser.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reactor", default=REACTOR,
                        help=f"twistd --reactor for poolproxy (default {REACTOR}; "
                             "'default' for Twisted's)")
    parser.add_argument("--hook", default=None,
                        help="a hook for poolproxy, POINT=module:callable (bench/hooks.py)")
    args = parser.parse_args()
    hooks = {"hook": args.hook} if args.hook else {}

    procs = Processes(tempfile.mkdtemp(prefix="poolproxy-cpu-cost-"))
    try:
        if args.protocol == "redis":
            backend = start_redis(procs)
            proxy = start_poolproxy(procs, args.python, "redis", backend, args.reactor,
                                    pool_size=args.pool_size, **hooks)
            load = redis_load(proxy.port, args.pipeline)

            def requests_of(figures: Dict[str, Dict[str, Any]], seconds: float) -> float:
                # redis_load sizes -n for about `seconds` per test; count what ran.
                return sum(f["requests"] for f in figures.values())
        else:
            backend = start_nginx(procs)
            proxy = start_poolproxy(procs, args.python, "http", backend, args.reactor,
                                    pool_size=args.pool_size, **hooks)

            def load(seconds: float) -> Dict[str, Dict[str, Any]]:
                return wrk(proxy.port, seconds, close=False)

            def requests_of(figures: Dict[str, Dict[str, Any]], seconds: float) -> float:
                # wrk runs whole seconds, at least one (loads.wrk).
                return sum(f["rps"] * max(1, round(seconds)) for f in figures.values())
        warm_up(load, 3.0)
        costs: List[float] = []
        for i in range(args.repeat):
            costs.append(measure(proxy.pid, load, args.seconds, requests_of))
            progress(f"run {i + 1}: {costs[-1]:.2f} us of proxy CPU per request")
        print(f"{args.protocol} ({os.path.basename(args.python)}, {args.reactor} reactor, "
              f"pool {args.pool_size}{', hook ' + args.hook if args.hook else ''}"
              f"{', pipeline %d' % args.pipeline if args.protocol == 'redis' else ''}): "
              f"median {statistics.median(costs):.2f} us of proxy CPU per request "
              f"(runs: {', '.join(f'{c:.2f}' for c in costs)})")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
