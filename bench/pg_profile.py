#!/usr/bin/env python3
"""
Where poolproxy's time goes under pgbench: poolproxy --protocol postgres on
CPython, set up and pinned as in run.py's postgres part (PostgreSQL with
pgbench's tables at scale 1, a pool of 4, SCRAM against a userlist.txt),
under `pgbench -S -M simple -c 50 -j 2` with py-spy attached; prints the
functions with the most self time (the innermost Python frame of each
sample: a system call counts to the function that made it) as shares of
the samples in which poolproxy was not waiting in epoll_wait, as markdown.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/pg_profile.py --seconds 20
    .venv/bin/python bench/pg_profile.py --mode prepared --top 30
    .venv/bin/python bench/pg_profile.py --connect        # -C: the login path

py-spy samples the running process from outside (--rate per second) and
slows it: compare the TPS it prints with the bench's, not with another
profile.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, Tuple

from common import (LOAD_CPU, PG_CLIENTS, PG_POOL_SIZE, PG_SCALE, PG_THREADS, ROOT, need_pg,
                    pinned, progress)
from loads import pgbench, warm_up
from machine import cpu_seconds
from servers import REACTOR, Processes, pg_env, start_poolproxy, start_postgres

#: py-spy's raw frames: "function (path:line)".
FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::\d+)?\)$")


def self_time(raw: str) -> Tuple[int, int, Dict[str, int]]:
    """
    From py-spy's raw (collapsed) output, one "frame;frame;... count" per
    stack: the samples, those waiting in epoll_wait, and the samples each
    innermost function (path:function) had.  py-spy does not see the
    reactor's epoll_wait as idle: a sample whose innermost frame is the
    reactor's doPoll is taken for waiting (doPoll's own loop over the events
    is a few of them, 1% here).
    """
    total = waiting = 0
    by_function: Dict[str, int] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        leaf = stack.rsplit(";", 1)[-1]
        m = FRAME.match(leaf)
        if m and m.group("function").endswith(".doPoll"):
            waiting += int(count)
            continue
        name = f"{short(m.group('path'))}:{m.group('function')}" if m else leaf
        by_function[name] = by_function.get(name, 0) + int(count)
    return total, waiting, by_function


def short(path: str) -> str:
    """A module path without site-packages or the checkout in front of it."""
    for marker in ("site-packages/", "lib/python3.11/", ROOT + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="profiled seconds")
    parser.add_argument("--mode", default="simple", help="pgbench -M (default simple)")
    parser.add_argument("--connect", action="store_true",
                        help="pgbench -C: a new connection per transaction (the login path)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=20, help="functions to list")
    parser.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    args = parser.parse_args()
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(args.python), "py-spy")
    if not os.access(spy, os.X_OK):
        sys.exit("bench/pg_profile.py needs py-spy: .venv/bin/pip install py-spy")

    procs = Processes(tempfile.mkdtemp(prefix="poolproxy-pg-profile-"))
    try:
        pg = start_postgres(procs, PG_SCALE)
        proxy = start_poolproxy(procs, args.python, "postgres", pg.port, REACTOR,
                                pool_size=PG_POOL_SIZE, pool_min_idle=0, auth_file=pg.userlist)
        load = ["-S", "-M", args.mode] + (["-C"] if args.connect else [])
        warm_up(lambda s: pgbench(pg, proxy.port, "warm-up", load, s), 3.0)
        bench = subprocess.Popen(pinned(LOAD_CPU, [
            need_pg("pgbench"), "-h", "127.0.0.1", "-p", str(proxy.port), "-U", pg.user,
            "-c", str(PG_CLIENTS), "-j", str(PG_THREADS), "-T", str(round(args.seconds) + 2),
            *load, pg.database]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=pg_env(pg.password))
        time.sleep(1)   # past pgbench's logins and vacuum
        raw = os.path.join(procs.workdir, "py-spy.txt")
        before = cpu_seconds(proxy.pid)
        subprocess.run([spy, "record", "-p", str(proxy.pid), "-d", str(round(args.seconds)),
                        "-r", str(args.rate), "-f", "raw", "-o", raw],
                       check=True, capture_output=True)
        used = cpu_seconds(proxy.pid) - before
        out, _ = bench.communicate(timeout=120)
        tps = re.search(r"^tps = ([\d.]+)", out, re.M)
        with open(raw) as f:
            total, waiting, by_function = self_time(f.read())
    finally:
        procs.stop_all()

    print(f"pgbench {' '.join(load)} -c {PG_CLIENTS} -j {PG_THREADS} through poolproxy "
          f"(CPython, pool {PG_POOL_SIZE}) under py-spy -r {args.rate}: "
          f"{float(tps.group(1)) if tps else 0:,.0f} tps; poolproxy used "
          f"{100 * used / args.seconds:.0f}% of its core; {total:,} samples, "
          f"{100 * waiting / total:.0f}% of them in epoll_wait, left out below\n")
    busy = total - waiting
    print("| function (self time; a system call counts to its caller) | share of busy samples |\n"
          "| --- | ---: |")
    for name, count in sorted(by_function.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"| `{name}` | {100 * count / busy:.1f}% |")
    progress(f"py-spy's raw output: {raw}")


if __name__ == "__main__":
    main()
